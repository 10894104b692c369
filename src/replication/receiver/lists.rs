//! The frames of a file received in chunks (`chunks` feature, SPEC 18; its state is an
//! [`Assembly`]): `Chunks` lists looked up in the chunk index and answered with `Lacks`,
//! `Data` that fills the lacking chunks (each checked against its digest before it is
//! written, the held chunks after it read back and checked), and `Plain`.

use std::io::Write;

use super::assembly::{Assembly, Pending, MAX_PENDING};
use super::holdings::{BorrowError, Holdings, Scope};
use super::sink::FileSink;
use super::state::Session;
use super::ReceiveError;
use crate::replication::chunker::{sha256, MAX_CHUNK, MIN_CHUNK};
use crate::replication::live::Peer;
use crate::store::DigestPrefix;
use crate::wire::transfer::{ChunkList, Code, Frame, DIGEST_PREFIX, HEADER_LEN, LIST_ENTRY};

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

    /// Looks the listed chunks up, places the held ones that nothing lacking precedes,
    /// queues the rest, and answers with `Lacks`.
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
            let held = match loc {
                // Nothing ahead of it is missing: in place now, or asked for.
                Some(loc) if a.pending.is_empty() => {
                    match holdings.read(&loc, &digest, &mut a.scratch) {
                        Ok(()) => {
                            if !self.place(&a.scratch, false) {
                                self.holdings = Some(holdings);
                                return;
                            }
                            true
                        }
                        Err(e) => {
                            log::info!("replication: {name}: held chunk asked for instead: {e}");
                            false
                        }
                    }
                }
                Some(loc) => {
                    a.pending.push_back(Pending::Held { loc, digest });
                    true
                }
                None => false,
            };
            if !held {
                bits[i / 8] |= 1 << (i % 8);
                a.pending.push_back(Pending::Lacking { len, digest });
            }
        }
        self.holdings = Some(holdings);
        self.send(&Frame::Lacks {
            seq,
            first,
            count,
            bits: &bits,
        });
        self.flush();
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
    /// Each completed chunk is checked against its digest and written, then the held
    /// chunks after it are read back, checked and written.
    pub(super) fn chunk_data(&mut self, seq: u32, bytes: &[u8]) -> Result<(), ReceiveError> {
        let Some(cur) = self.current.as_mut().filter(|c| c.seq == seq) else {
            return Ok(());
        };
        let Some(mut a) = cur.chunked.take() else {
            return Ok(());
        };
        let name = cur.offer.name.to_string();
        let mut rest = bytes;
        while !rest.is_empty() {
            let (len, digest) = match a.pending.front() {
                Some(Pending::Lacking { len, digest }) => (*len as usize, *digest),
                Some(Pending::Held { .. }) => {
                    // Not reached: held chunks are placed as soon as nothing precedes them.
                    if !self.place_held(&mut a, &name) {
                        return Ok(());
                    }
                    continue;
                }
                None if a.plain => {
                    self.put_back(a);
                    return self.data(seq, rest);
                }
                None => {
                    let m = format!(
                        "the source sent data for {name} beyond the chunks the target asked for; the copy was discarded"
                    );
                    self.fail_current(Code::SizeMismatch, m);
                    return Ok(());
                }
            };
            let n = (len - a.filling.len()).min(rest.len());
            a.filling.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
            if a.filling.len() < len {
                break;
            }
            if sha256(&a.filling)[..DIGEST_PREFIX] != digest[..] {
                let m = format!(
                    "a chunk of {name} at offset {} does not match the digest its list gave; the copy was discarded",
                    self.current.as_ref().map_or(0, |c| c.written)
                );
                self.fail_current(Code::DigestMismatch, m);
                return Ok(());
            }
            a.pending.pop_front();
            let chunk = std::mem::take(&mut a.filling);
            if !self.place(&chunk, true) {
                return Ok(());
            }
            a.filling = chunk;
            a.filling.clear();
            if !self.place_held(&mut a, &name) {
                return Ok(());
            }
        }
        self.put_back(a);
        self.maybe_checkpoint();
        self.confirm_durable(seq);
        Ok(())
    }

    /// Places the held chunks at the front of `a`'s queue. False when the file failed: a
    /// held chunk no longer matching its digest fails it (its source sends it again; the
    /// copy it came from is dropped from the index so the next try asks for the chunk).
    fn place_held(&mut self, a: &mut Assembly, name: &str) -> bool {
        while let Some(Pending::Held { loc, digest }) = a.pending.front() {
            let (loc, digest) = (*loc, *digest);
            let Some(holdings) = self.holdings.as_mut() else {
                return false;
            };
            match holdings.read(&loc, &digest, &mut a.scratch) {
                Ok(()) => {}
                Err(e) => {
                    if let BorrowError::Changed(_) = e {
                        let dropped = self.ctx.store.write(|tx| tx.delete_chunk_file(loc.file));
                        if let Err(d) = dropped {
                            log::warn!("replication: drop stale indexed file {}: {d}", loc.file);
                        }
                    }
                    let m = format!(
                        "a chunk of {name} held by the target changed while the copy was assembled ({e}); sent again later"
                    );
                    self.checkpoint_current();
                    self.fail_current_keep(Code::Unavailable, m);
                    return false;
                }
            }
            a.pending.pop_front();
            if !self.place(&a.scratch, false) {
                return false;
            }
        }
        true
    }

    fn put_back(&mut self, a: Box<Assembly>) {
        if let Some(cur) = self.current.as_mut() {
            cur.chunked = Some(a);
        }
    }
}
