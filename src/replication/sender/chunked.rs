//! Sending a file in chunks (`chunks` feature, SPEC 18): the file is cut into
//! content-defined chunks as it is read once from its start (the whole file's SHA-256
//! computed on the way), the chunks go to the target in lists of up to
//! [`MAX_LIST`], the target answers which it lacks, and only those chunks' bytes follow,
//! read again from the file and checked against the digest that was listed. One round
//! trip per list; nothing is listed further than the target's list window past what it
//! confirmed durable, so a crash of the target costs at most that again.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

use ring::digest::{Context as Sha256, SHA256};

use super::{digest, Awaiting, Feed, Offer, Reply, Session, SessionError, DECISION_WAIT};
use crate::replication::chunker::{sha256, Chunk, Chunker, Params};
use crate::replication::index::MIN_DEDUP_SIZE;
use crate::replication::link::{self, LIST_TRIPS};
use crate::replication::live::Progress;
use crate::replication::queue::Attempt;
use crate::replication::receiver::list_window;
use crate::wire::transfer::{
    self, ChunkList, Frame, DIGEST_PREFIX, HEADER_LEN, LIST_ENTRY, MAX_DATA, MAX_LIST,
};

/// The file cut as it is read: the chunker, the whole file's hash, the chunk cut but not
/// listed yet, and the list being made.
struct Cuts {
    chunker: Chunker,
    hasher: Sha256,
    next: Option<Chunk>,
    list: Vec<u8>,
    listed: Vec<Chunk>,
}

impl Cuts {
    /// Cuts from `offset` on; `hasher` holds the SHA-256 state of the bytes before it.
    fn new(offset: u64, hasher: Sha256) -> Cuts {
        Cuts {
            chunker: Chunker::new(Params::standard(), offset),
            hasher,
            next: None,
            list: Vec::with_capacity(MAX_LIST * LIST_ENTRY),
            listed: Vec::with_capacity(MAX_LIST),
        }
    }

    /// Makes the next list: as many chunks as a list holds that end by `limit`.
    fn fill(&mut self, file: &mut impl Read, limit: u64) -> std::io::Result<()> {
        self.list.clear();
        self.listed.clear();
        while self.listed.len() < MAX_LIST {
            if self.next.is_none() {
                let hasher = &mut self.hasher;
                self.next = self.chunker.next_chunk(file, |b| hasher.update(b))?;
            }
            let Some(c) = self.next else { break };
            if c.end() > limit {
                break;
            }
            transfer::push_list_entry(&mut self.list, c.len as u16, &c.digest);
            self.listed.push(c);
            self.next = None;
        }
        Ok(())
    }
}

/// What a session learned of its chunk lists, to tell whether the next file's is worth a
/// round trip (`Session::lists_pay`).
#[derive(Debug, Default)]
pub(super) struct Lists {
    /// The last file sent in chunks found at least 1/[`LIST_TRIPS`] of its chunks held
    /// (a chunk or two that every file has, such as zeros, does not pay for the lists).
    held: bool,
    /// When the last file's first list went.
    last: Option<Instant>,
}

impl<F: Feed, W: Write> Session<'_, '_, F, W> {
    /// Whether a file of `size` bytes goes in chunks: the session agreed them, the file is
    /// large enough to be indexed, and its list's round trip is worth it. It is when the
    /// file takes many round trips to send (`link::list_pays`), when the last file sent in
    /// chunks found enough held (day two of a set of files), or as a probe when no list
    /// went for [`LIST_TRIPS`] round trips (so a probe costs ≤ 1/32 of the time). Else
    /// the file goes whole, with no round trip before its bytes: on a fast link each of
    /// 1,000 new 1 MiB files waited one (P4, BENCHMARKS.md). A copy sent whole is indexed
    /// by the target's index job, so it still serves the days after.
    fn lists_pay(&self, size: u64) -> bool {
        if !self.ctx.chunks || size < MIN_DEDUP_SIZE {
            return false;
        }
        let link = self.link.link();
        if self.lists.held || link::list_pays(size, link) {
            return true;
        }
        let probe = link.map_or(Duration::ZERO, |l| l.rtt * LIST_TRIPS);
        self.lists.last.is_none_or(|t| t.elapsed() >= probe)
    }

    /// Streams a file from its start: in chunks when the session agreed them and a
    /// list is worth it ([`Self::lists_pay`]), else whole.
    pub(super) fn stream_whole(&mut self, o: Offer) -> Result<(), SessionError> {
        if self.lists_pay(o.size) {
            self.stream_chunks(o, 0, Sha256::new(&SHA256))
        } else {
            self.stream(o, 0, Sha256::new(&SHA256))
        }
    }

    /// Resumes a file at `offset` (`hasher` covers the bytes before it): in chunks as
    /// [`Self::stream_whole`] would send it, else plain. The cuts from `offset` meet the
    /// file's own within a chunk or two, so what the target holds still counts.
    pub(super) fn stream_resumed(
        &mut self,
        o: Offer,
        offset: u64,
        hasher: Sha256,
    ) -> Result<(), SessionError> {
        if offset < o.size && self.lists_pay(o.size) {
            self.stream_chunks(o, offset, hasher)
        } else {
            self.stream(o, offset, hasher)
        }
    }

    /// Sends offer `o` from `offset` as chunk lists and the chunks the target lacks.
    fn stream_chunks(
        &mut self,
        mut o: Offer,
        offset: u64,
        hasher: Sha256,
    ) -> Result<(), SessionError> {
        let id = o.claimed.item_id;
        let seq = o.seq;
        let Some(registered) = self.start_file(&mut o, offset)? else {
            return Ok(());
        };
        self.current_failed = None;
        self.durable = Some((seq, offset));
        self.lacks.clear();
        let window = list_window(o.size);
        let mut cut = Cuts::new(offset, hasher);
        let (mut listed_n, mut held_n) = (0usize, 0usize);
        self.lists = Lists {
            held: false,
            last: Some(Instant::now()),
        };
        // Lists sent whose chunks are not sent yet (first index, chunks): one is kept
        // ahead of the data, so its answer comes back while the one before it streams.
        let mut ahead: VecDeque<(u64, Vec<Chunk>)> = VecDeque::new();
        let mut first = 0u64;
        let mut sent = 0u64;
        let mut out_of_window: Option<Instant> = None;
        let mut last_check = Instant::now();
        loop {
            let Some(durable) =
                self.next_frame(seq, id, offset, &o.claimed.backup, &mut last_check)?
            else {
                return Ok(());
            };
            let limit = durable + window;
            while ahead.len() < 2 {
                // The next list: as many chunks as fit the list and the window.
                if let Err(e) = cut.fill(&mut o.file, limit) {
                    let m = format!("cannot read {}: {e}", o.claimed.backup);
                    self.settle(id, Attempt::Failed(m));
                    return self.send(&Frame::Skip { seq });
                }
                if cut.listed.is_empty() {
                    break;
                }
                let wire = self.send_list(seq, first, &cut.list)?;
                sent += wire;
                registered.progress.add_sent(wire);
                // Counted as the queue counts it (its `bytes_sent`), and in frames.
                self.summary.bytes_sent += wire;
                self.summary.wire_bytes += wire;
                let listed = std::mem::take(&mut cut.listed);
                first += listed.len() as u64;
                ahead.push_back((first - listed.len() as u64, listed));
            }
            let Some((from, listed)) = ahead.pop_front() else {
                if cut.next.is_none() {
                    break;
                }
                // Out of window: let the target confirm what it holds.
                let since = *out_of_window.get_or_insert_with(Instant::now);
                if since.elapsed() >= DECISION_WAIT {
                    return Err(SessionError::Connection(
                        "the target did not confirm what it holds".into(),
                    ));
                }
                self.flush()?;
                let t = Instant::now();
                self.wait_reply(Duration::from_millis(200))?;
                self.packing.waited(t.elapsed());
                continue;
            };
            out_of_window = None;
            let Some(bits) = self.await_lacks(seq, from, listed.len())? else {
                // The target failed the file meanwhile.
                self.settle_if_failed(seq, id, &o.claimed.backup);
                return self.send(&Frame::Skip { seq });
            };
            let lacking: usize = bits.iter().map(|b| b.count_ones() as usize).sum();
            listed_n += listed.len();
            held_n += listed.len() - lacking;
            self.lists.held = held_n * LIST_TRIPS as usize >= listed_n && held_n > 0;
            let allowed = limit.saturating_sub(offset);
            if !self.send_lacking(&o, &listed, &bits, &registered.progress, &mut sent, allowed)? {
                let m = format!(
                    "{} changed or became unreadable while sending",
                    o.claimed.backup
                );
                self.settle(id, Attempt::Failed(m));
                return self.send(&Frame::Skip { seq });
            }
        }
        if cut.chunker.offset() != o.size {
            let m = format!("{} changed size while sending", o.claimed.backup);
            self.settle(id, Attempt::Failed(m));
            return self.send(&Frame::Skip { seq });
        }
        let sha256 = digest(&cut.hasher);
        self.send(&Frame::End { seq, sha256 })?;
        self.current = None;
        self.awaiting.insert(
            seq,
            Awaiting {
                claimed: o.claimed,
                sent,
                sha256,
            },
        );
        Ok(())
    }

    /// Sends the chunks of a list that the target lacks (`bits`), adding them to `sent`;
    /// false when the file no longer holds one of them. Lacking chunks are gathered into
    /// batches of up to [`MAX_DATA`] bytes, so each data frame (compressed when the
    /// session agreed `zstd` and the chooser says so) carries as much as a whole file's.
    fn send_lacking(
        &mut self,
        o: &Offer,
        listed: &[Chunk],
        bits: &[u8],
        progress: &Progress,
        sent: &mut u64,
        allowed: u64,
    ) -> Result<bool, SessionError> {
        let id = o.claimed.item_id;
        let mut batch = 0usize;
        for (i, c) in listed.iter().enumerate() {
            if bits[i / 8] & (1 << (i % 8)) == 0 {
                progress.advance_held(u64::from(c.len));
                continue;
            }
            let len = c.len as usize;
            if batch + len > MAX_DATA {
                self.send_batch(o.seq, batch)?;
                self.sent_batch(id, batch, progress, sent, allowed);
                batch = 0;
            }
            let at = HEADER_LEN + 4 + batch;
            let body = &mut self.buf[at..at + len];
            if o.file.read_exact_at(body, c.offset).is_err()
                || sha256(body)[..DIGEST_PREFIX] != c.digest[..DIGEST_PREFIX]
            {
                return Ok(false);
            }
            batch += len;
        }
        if batch > 0 {
            self.send_batch(o.seq, batch)?;
            self.sent_batch(id, batch, progress, sent, allowed);
        }
        Ok(true)
    }

    /// Records a batch of `n` bytes sent for item `id`.
    fn sent_batch(&mut self, id: u64, n: usize, progress: &Progress, sent: &mut u64, allowed: u64) {
        *sent += n as u64;
        progress.advance(n as u64);
        self.current = Some((id, *sent));
        self.feed.sent(id, *sent, allowed);
    }

    /// Sends one chunk list and pushes it out; returns its bytes on the wire.
    fn send_list(&mut self, seq: u32, first: u64, list: &[u8]) -> Result<u64, SessionError> {
        let chunks = ChunkList::new(list)
            .ok_or_else(|| SessionError::Connection("a chunk list of partial entries".into()))?;
        self.send(&Frame::Chunks {
            seq,
            first,
            list: chunks,
        })?;
        self.flush()?;
        Ok((HEADER_LEN + 12 + list.len()) as u64)
    }

    /// Waits for the target's answer to the list of `count` chunks from `first`: the
    /// bitmap of those it lacks, or None if it failed the file first. The wait is one on
    /// the target, as `auto` compression counts it (the link did not hold the sender).
    fn await_lacks(
        &mut self,
        seq: u32,
        first: u64,
        count: usize,
    ) -> Result<Option<Vec<u8>>, SessionError> {
        let deadline = Instant::now() + DECISION_WAIT;
        loop {
            match self.lacks.pop_front() {
                Some(Reply::Lacks {
                    seq: s,
                    first: f,
                    count: n,
                    bits,
                }) if s == seq && f == first && n as usize == count => return Ok(Some(bits)),
                Some(other) => {
                    return Err(SessionError::Connection(format!(
                        "the target answered a chunk list it was not sent: {other:?}"
                    )))
                }
                None => {}
            }
            if matches!(&self.current_failed, Some((s, ..)) if *s == seq) {
                return Ok(None);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(SessionError::Connection(
                    "the target did not answer a chunk list".into(),
                ));
            }
            let t = Instant::now();
            self.wait_reply(left)?;
            self.packing.waited(t.elapsed());
        }
    }

    /// Sends the first `len` content bytes of the buffer (lacking chunks, read and
    /// checked) as file `seq`'s next data, in as many frames as the throttle grants, each
    /// packed as the session's compression says.
    fn send_batch(&mut self, seq: u32, len: usize) -> Result<(), SessionError> {
        let mut at = 0usize;
        while at < len {
            let want = (len - at) as u64;
            let grant = self.ctx.live.take(want);
            if grant == 0 {
                // The throttle holds the sender back as a link would (not counted waited).
                self.flush()?;
                self.wait_reply(self.ctx.live.wait_for(want))?;
                continue;
            }
            let n = grant.min(want) as usize;
            let body = HEADER_LEN + 4 + at;
            let frame = match self.packing.frame(seq, &self.buf[body..body + n]) {
                Some(zdata) => zdata,
                None => {
                    // The header goes just before the bytes it covers (over bytes already
                    // sent).
                    self.buf[at..body].copy_from_slice(&transfer::data_header(seq, n));
                    &self.buf[at..body + n]
                }
            };
            self.ctx.live.refund(n, frame.len());
            self.out
                .send_raw(frame)
                .map_err(|e| SessionError::Connection(format!("send to the target: {e}")))?;
            at += n;
            self.summary.bytes_sent += n as u64;
        }
        Ok(())
    }
}
