//! The frames of a file received in chunks (`chunks` feature, SPEC 18; its state is an
//! [`Assembly`]): `Chunks` lists looked up in the chunk index and answered with `Lacks`,
//! `Data` that fills the lacking chunks (each checked against its digest before it is
//! written, the held chunks after it read back and checked), and `Plain`.

use std::io::Write;

use super::assembly::{Assembly, Pending, MAX_PENDING};
use super::holdings::{continues, BorrowError, Holdings, Scope};
use super::sink::FileSink;
use super::state::Session;
use super::ReceiveError;
use crate::replication::chunker::{sha256, MAX_CHUNK, MIN_CHUNK};
use crate::replication::live::Peer;
use crate::store::DigestPrefix;
use crate::wire::transfer::{
    ChunkList, Code, Frame, DIGEST_PREFIX, HEADER_LEN, LIST_ENTRY, MAX_DATA,
};

/// Held chunks that follow each other in one file are read back and written as one, up
/// to this many bytes: one read, one hand-over to the sink and one write instead of one
/// per chunk, in buffers no larger than a `Data` frame's.
const HELD_RUN: usize = MAX_DATA;

/// Checks one listed chunk's length against the bounds and the offered size; returns
/// where it ends.
fn listed_end(start: u64, len: u32, size: u64) -> Option<u64> {
    let end = start.checked_add(u64::from(len))?;
    let within = len > 0 && len as usize <= MAX_CHUNK && end <= size;
    // Only a file's last chunk is shorter than the smallest cut.
    (within && (len as usize >= MIN_CHUNK || end == size)).then_some(end)
}

impl<'c, W: Write, S: FileSink> Session<'c, '_, W, S> {
    /// A `Chunks` list of the open file: looks each chunk up, puts the held ones at the
    /// front in place at once, and answers which it lacks.
    pub(super) fn chunks(
        &mut self,
        seq: u32,
        first: u64,
        list: ChunkList<'_>,
    ) -> Result<(), ReceiveError> {
        if self.poisoned == Some(seq) {
            return Ok(());
        }
        let Some(scope) = self.ctx.dedup else {
            return self.fatal(
                Code::Protocol,
                "a chunk list, but chunks were not agreed for this session".into(),
            );
        };
        let Some(cur) = self.current.as_mut().filter(|c| c.seq == seq) else {
            return self.fatal(
                Code::Protocol,
                format!("a chunk list for {seq}, which is not the open file"),
            );
        };
        let written = cur.written;
        let a = cur
            .chunked
            .get_or_insert_with(|| Box::new(Assembly::new(written)));
        if a.plain || first != a.next_index {
            let m = format!(
                "a chunk list of {seq} from chunk {first}, expected {}{}",
                a.next_index,
                if a.plain { " and none after plain" } else { "" }
            );
            return self.fatal(Code::Protocol, m);
        }
        if a.pending.len() + list.len() > MAX_PENDING {
            return self.fatal(
                Code::Protocol,
                format!("more than {MAX_PENDING} chunks listed ahead of their data"),
            );
        }
        let (size, name) = (cur.offer.size, cur.offer.name.to_string());
        let mut end = a.listed_end;
        let mut listed: Vec<(u32, DigestPrefix)> = Vec::with_capacity(list.len());
        for (i, (len, digest)) in list.iter().enumerate() {
            let Some(e) = listed_end(end, len, size) else {
                let m = format!(
                    "chunk {} of {name} is {len} bytes at offset {end}, outside the chunk bounds or the {size} bytes offered; the copy was discarded",
                    first + i as u64
                );
                self.fail_current(Code::SizeMismatch, m);
                return Ok(());
            };
            end = e;
            listed.push((len, digest));
        }
        let wire = (HEADER_LEN + 12 + list.len() * LIST_ENTRY) as u64;
        cur.wire += wire;
        self.ctx
            .live
            .count_bytes(Peer::Source(self.source.system_id), wire);
        self.summary.bytes += wire;
        let a = cur
            .chunked
            .take()
            .unwrap_or_else(|| Box::new(Assembly::new(written)));
        self.answer(seq, first, listed, a, scope, &name);
        Ok(())
    }

    /// Looks the listed chunks up, answers with `Lacks`, then places the held ones that
    /// nothing lacking precedes (the rest wait in order for the data before them).
    fn answer(
        &mut self,
        seq: u32,
        first: u64,
        listed: Vec<(u32, DigestPrefix)>,
        mut a: Box<Assembly>,
        scope: Scope,
        name: &str,
    ) {
        let count = listed.len() as u32;
        let mut holdings = self.holdings.take().unwrap_or_else(|| {
            Holdings::new(
                self.ctx.store,
                &self.source.storage,
                &self.source.uuid,
                scope,
            )
        });
        let found = match holdings.find(&listed) {
            Ok(f) => f,
            Err(e) => {
                log::warn!("replication: chunk index lookup for {name}: {e}");
                vec![None; listed.len()]
            }
        };
        let mut bits = vec![0u8; listed.len().div_ceil(8)];
        for (i, ((len, digest), loc)) in listed.into_iter().zip(found).enumerate() {
            let offset = a.listed_end;
            a.listed_end += u64::from(len);
            a.next_index += 1;
            a.record(offset, len, digest);
            match loc {
                Some(loc) => a.pending.push_back(Pending::Held { loc, digest }),
                None => {
                    bits[i / 8] |= 1 << (i % 8);
                    a.pending.push_back(Pending::Lacking { len, digest });
                }
            }
        }
        self.holdings = Some(holdings);
        // The answer goes out before any held chunk is copied: the source sends what
        // lacks (and cuts its next list) while the target copies what it holds.
        self.send(&Frame::Lacks {
            seq,
            first,
            count,
            bits: &bits,
        });
        self.flush();
        if !self.place_held(&mut a, name) {
            return;
        }
        self.put_back(a);
        self.maybe_checkpoint();
        self.confirm_durable(seq);
    }

    /// `Plain`: the source lists no more chunks of the open file; after the listed ones,
    /// its bytes come as plain `Data`.
    pub(super) fn plain(&mut self, seq: u32) -> Result<(), ReceiveError> {
        if self.poisoned == Some(seq) {
            return Ok(());
        }
        if self.ctx.dedup.is_none() {
            return self.fatal(
                Code::Protocol,
                "plain, but chunks were not agreed for this session".into(),
            );
        }
        let Some(cur) = self.current.as_mut().filter(|c| c.seq == seq) else {
            return self.fatal(
                Code::Protocol,
                format!("plain for {seq}, which is not the open file"),
            );
        };
        let written = cur.written;
        let a = cur
            .chunked
            .get_or_insert_with(|| Box::new(Assembly::new(written)));
        a.plain = true;
        Ok(())
    }

    /// `Data` of a file received in chunks: the bytes of the lacking chunks, in order.
    /// Each completed chunk is checked against its digest; whole chunks checked in the
    /// frame itself are written together, and the held chunks after them are read back,
    /// checked and written.
    pub(super) fn chunk_data(&mut self, seq: u32, bytes: &[u8]) -> Result<(), ReceiveError> {
        let Some(cur) = self.current.as_mut().filter(|c| c.seq == seq) else {
            return Ok(());
        };
        let Some(mut a) = cur.chunked.take() else {
            return Ok(());
        };
        let name = cur.offer.name.to_string();
        // `rest[..run]`: whole lacking chunks checked in place, not written yet.
        let mut rest = bytes;
        let mut run = 0usize;
        loop {
            let (len, digest) = match a.pending.front() {
                Some(Pending::Lacking { len, digest }) => (*len as usize, *digest),
                Some(Pending::Held { .. }) => {
                    if !self.place_run(&mut rest, &mut run) || !self.place_held(&mut a, &name) {
                        return Ok(());
                    }
                    continue;
                }
                None if a.plain && rest.len() > run => {
                    if !self.place_run(&mut rest, &mut run) {
                        return Ok(());
                    }
                    self.put_back(a);
                    return self.data(seq, rest);
                }
                None if rest.len() > run => {
                    let m = format!(
                        "the source sent data for {name} beyond the chunks the target asked for; the copy was discarded"
                    );
                    self.fail_current(Code::SizeMismatch, m);
                    return Ok(());
                }
                None => break,
            };
            if rest.len() == run {
                break;
            }
            if a.filling.is_empty() && rest.len() - run >= len {
                // A whole chunk in this frame: checked where it lies.
                if sha256(&rest[run..run + len])[..DIGEST_PREFIX] != digest[..] {
                    self.chunk_mismatch(&name, run);
                    return Ok(());
                }
                a.pending.pop_front();
                run += len;
                continue;
            }
            if !self.place_run(&mut rest, &mut run) {
                return Ok(());
            }
            let n = (len - a.filling.len()).min(rest.len());
            a.filling.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
            if a.filling.len() < len {
                break;
            }
            if sha256(&a.filling)[..DIGEST_PREFIX] != digest[..] {
                self.chunk_mismatch(&name, 0);
                return Ok(());
            }
            a.pending.pop_front();
            let chunk = std::mem::take(&mut a.filling);
            if !self.place(&chunk, true) {
                return Ok(());
            }
            a.filling = chunk;
            a.filling.clear();
        }
        if !self.place_run(&mut rest, &mut run) {
            return Ok(());
        }
        self.put_back(a);
        self.maybe_checkpoint();
        self.confirm_durable(seq);
        Ok(())
    }

    /// Writes the checked chunks at the front of `rest` (`run` bytes) and moves past them.
    fn place_run(&mut self, rest: &mut &[u8], run: &mut usize) -> bool {
        if *run == 0 {
            return true;
        }
        let (checked, after) = rest.split_at(*run);
        *rest = after;
        *run = 0;
        self.place(checked, true)
    }

    /// A received chunk, `ahead` bytes past what is written, does not match its listed
    /// digest: the copy is discarded.
    fn chunk_mismatch(&mut self, name: &str, ahead: usize) {
        let at = self.current.as_ref().map_or(0, |c| c.written) + ahead as u64;
        let m = format!(
            "a chunk of {name} at offset {at} does not match the digest its list gave; the copy was discarded"
        );
        self.fail_current(Code::DigestMismatch, m);
    }

    /// Places the held chunks at the front of `a`'s queue, runs of them that follow each
    /// other in one file read and written as one (up to [`HELD_RUN`] bytes). False when
    /// the file failed: a held chunk no longer matching its digest fails it (its source
    /// sends it again; the copy it came from is dropped from the index so the next try
    /// asks for the chunk).
    fn place_held(&mut self, a: &mut Assembly, name: &str) -> bool {
        loop {
            a.run.clear();
            let mut bytes = 0usize;
            for p in &a.pending {
                let Pending::Held { loc, digest } = p else {
                    break;
                };
                if let Some((last, _)) = a.run.last() {
                    if !continues(last, loc) || bytes + loc.len as usize > HELD_RUN {
                        break;
                    }
                }
                bytes += loc.len as usize;
                a.run.push((*loc, *digest));
            }
            let Some(file) = a.run.first().map(|(loc, _)| loc.file) else {
                return true;
            };
            let Some(holdings) = self.holdings.as_mut() else {
                return false;
            };
            if let Err(e) = holdings.read_run(&a.run, &mut a.scratch) {
                if let BorrowError::Changed(_) = e {
                    let dropped = self.ctx.store.write(|tx| tx.delete_chunk_file(file));
                    if let Err(d) = dropped {
                        log::warn!("replication: drop stale indexed file {file}: {d}");
                    }
                }
                let m = format!(
                    "a chunk of {name} held by the target changed while the copy was assembled ({e}); sent again later"
                );
                self.checkpoint_current();
                self.fail_current_keep(Code::Unavailable, m);
                return false;
            }
            a.pending.drain(..a.run.len());
            if !self.place(&a.scratch, false) {
                return false;
            }
            self.held_progress();
        }
    }

    /// While held chunks are copied: the checkpoint that is due, and `Durable` for what
    /// the last one recorded, so the source's window moves on (and it lists further)
    /// while the target copies.
    fn held_progress(&mut self) {
        self.maybe_checkpoint();
        let recorded = self.sink.recorded();
        let Some(cur) = self.current.as_mut() else {
            return;
        };
        let Some(durable) = recorded.filter(|d| *d > cur.confirmed) else {
            return;
        };
        cur.confirmed = durable;
        let seq = cur.seq;
        self.send(&Frame::Durable {
            seq,
            offset: durable,
        });
        self.flush();
    }

    fn put_back(&mut self, a: Box<Assembly>) {
        if let Some(cur) = self.current.as_mut() {
            cur.chunked = Some(a);
        }
    }
}
