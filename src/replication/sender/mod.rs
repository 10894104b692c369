//! Source side of a transfer session. Offers run ahead of the data by a bounded window, so
//! the target's decisions come back while earlier files stream and no round trip idles
//! the link; outcomes (verified and durable, or failed) come back later and settle items
//! without the sender ever waiting for one file before the next. The SHA-256 is computed
//! while sending; a resume hashes the local prefix and compares it with the target's; a
//! copy the target already holds with the same digest is not sent again. Every item a
//! session claimed is settled (done, failed, interrupted or released) before it returns,
//! however it ends. Files are read through `fsx`, never written.

use std::collections::{HashMap, VecDeque};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use ring::digest::{Context as Sha256, SHA256};

mod chunked;
mod packing;
mod replies;

pub use replies::{forward_replies, reply_channel, Replies, Reply, ReplyError};

use super::backups::version_of;
use super::compress::{Compression, Readings};
use super::link::{self, Meter};
use super::live::{Live, Registered};
use super::names::BackupName;
use super::queue::{attempt_for, Attempt};
use super::stream::FrameWriter;
use crate::fsx::{self, ReadFile};
use crate::wire::hex;
use crate::wire::transfer::{self, Code, Frame, HEADER_LEN, MAX_DATA};

/// Files sent and awaiting their outcome, at most.
pub const MAX_AWAITING: usize = 128;
/// How long the target may take to answer an offer (it may hash a long prefix to resume).
const DECISION_WAIT: Duration = Duration::from_secs(600);
/// How long the target may take to commit what is outstanding after `Finish`.
const BYE_WAIT: Duration = Duration::from_secs(600);

/// An item a session took from the queue.
#[derive(Clone, Debug)]
pub struct Claimed {
    pub item_id: u64,
    pub backup: BackupName,
    /// The file's version when it was queued (its modification time, ns).
    pub version: i64,
    /// The digest of that version, if a transfer already computed it.
    pub known_sha256: Option<[u8; 32]>,
}

/// The queue as one session sees it (`feed::StoreFeed` implements it over the store).
pub trait Feed {
    /// The next item to offer, claimed for this session; None when nothing is waiting.
    fn next(&mut self) -> Option<Claimed>;
    /// The item's data starts (an attempt begins) at `offset` of `size` bytes.
    fn started(&mut self, item_id: u64, offset: u64, size: u64);
    /// `sent` content bytes went on the wire for the item in this attempt so far; the
    /// target's window lets the attempt send `allowed` bytes in all for now (a count of
    /// bytes sent never needs to be reserved past it).
    fn sent(&mut self, item_id: u64, sent: u64, allowed: u64);
    /// The attempt ended; `sent` content bytes of this attempt went on the wire.
    fn finished(&mut self, item_id: u64, attempt: Attempt, sent: u64);
    /// The item was claimed but nothing of it was sent: it waits again as it was.
    fn release(&mut self, item_id: u64);
    /// Whether the item is still to be sent in this attempt (an admin may have removed or
    /// reset it, or a newer backup superseded it). Asked before its data starts and about
    /// once a second while it streams.
    fn still_wanted(&mut self, item_id: u64) -> bool;
    /// The target wants these backups again (its copies were found damaged); called once
    /// at the start of a session, before the first [`Feed::next`].
    fn wanted(&mut self, names: Vec<BackupName>);
}

/// What the sender needs besides the streams.
pub struct Context<'a> {
    /// The source's backup storage; backup names are relative to it.
    pub root: &'a Path,
    pub live: &'a Live,
    pub shutdown: &'a AtomicBool,
    /// The target, for log lines: `target 3 (host:port)`.
    pub target: String,
    /// The session agreed the `chunks` feature: large files go as chunk lists, and only
    /// the chunks the target lacks are sent.
    pub chunks: bool,
    /// The `compression` setting, and whether the target agreed to compressed frames.
    pub compression: Compression,
    pub zstd: bool,
    /// What `auto` compression reviews its level by (this thread's CPU time, the
    /// connection's figures) and the windows are sized from (`link`), read on the
    /// session's thread.
    pub readings: &'a dyn Fn() -> Readings,
}

/// Why a session ended before `Bye`.
#[derive(Debug, PartialEq, Eq)]
pub enum SessionError {
    /// The connection broke or the target did not answer.
    Connection(String),
    /// The target ended the session (not paired, storage offline, protocol error).
    Target { code: Code, message: String },
    /// The daemon is shutting down.
    Shutdown,
}

impl std::fmt::Display for SessionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SessionError::Connection(m) => write!(f, "{m}"),
            SessionError::Target { message, .. } => {
                write!(f, "the target ended the session: {message}")
            }
            SessionError::Shutdown => f.write_str("shutting down"),
        }
    }
}

impl std::error::Error for SessionError {}

/// What a session did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub done: u64,
    pub skipped: u64,
    pub failed: u64,
    /// Content bytes sent (with dedup: the chunk lists and the lacking chunks, as the
    /// queue items' `bytes_sent` count them), and the bytes they took in frames (less
    /// where compressed).
    pub bytes_sent: u64,
    pub wire_bytes: u64,
}

struct Offer {
    seq: u32,
    claimed: Claimed,
    file: ReadFile,
    size: u64,
    version: i64,
    reply: Option<Reply>,
}

struct Awaiting {
    claimed: Claimed,
    sent: u64,
    sha256: [u8; 32],
}

struct Session<'a, 'f, F: Feed, W: Write> {
    ctx: &'a Context<'a>,
    feed: &'f mut F,
    out: FrameWriter<W>,
    replies: &'a Replies,
    offers: VecDeque<Offer>,
    awaiting: HashMap<u32, Awaiting>,
    next_seq: u32,
    /// `Data` frames are assembled here: header, then content read straight in.
    buf: Vec<u8>,
    summary: Summary,
    /// A failure reported for the file being streamed now.
    current_failed: Option<(u32, Code, String)>,
    /// The item being acted on now and the bytes sent for it: settled as interrupted if
    /// the session breaks before it is settled otherwise.
    current: Option<(u64, u64)>,
    /// The most the target confirmed durable of a started file (sequence, offset).
    durable: Option<(u32, u64)>,
    /// The target's answers to chunk lists, not yet acted on, oldest first.
    lacks: VecDeque<Reply>,
    /// Whether the last lists found anything held, and when one went.
    lists: chunked::Lists,
    packing: packing::Packing<'a>,
    /// The link as measured, and the files offered so far (their count and bytes): the
    /// windows follow them (`link`).
    link: Meter,
    offered: (u64, u64),
}

fn digest(h: &Sha256) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(h.clone().finish().as_ref());
    out
}

/// Runs one session: offers what `feed` hands out, streams what the target asks for,
/// settles every item through `feed`, and ends with `Finish`/`Bye` when nothing is left.
pub fn run<F: Feed, W: Write>(
    ctx: &Context<'_>,
    feed: &mut F,
    out: W,
    replies: &Replies,
) -> Result<Summary, SessionError> {
    let mut s = Session {
        ctx,
        feed,
        out: FrameWriter::new(out),
        replies,
        offers: VecDeque::new(),
        awaiting: HashMap::new(),
        next_seq: 1,
        buf: vec![0u8; HEADER_LEN + 4 + MAX_DATA],
        summary: Summary::default(),
        current_failed: None,
        current: None,
        durable: None,
        lacks: VecDeque::new(),
        lists: chunked::Lists::default(),
        packing: packing::Packing::new(ctx.compression, ctx.zstd, ctx.readings, &ctx.target),
        link: Meter::default(),
        offered: (0, 0),
    };
    let result = s.run();
    s.summary.wire_bytes += s.packing.totals().1;
    // Settle whatever is still claimed: nothing of an unsent offer moved; a file sent but
    // not confirmed is interrupted (the next session finds it held or resumable).
    let reason = match &result {
        Ok(_) => "the session ended".to_string(),
        Err(e) => e.to_string(),
    };
    if let Some((id, sent)) = s.current.take() {
        s.feed.finished(
            id,
            Attempt::Interrupted(format!("transfer broken: {reason}")),
            sent,
        );
    }
    for o in std::mem::take(&mut s.offers) {
        s.feed.release(o.claimed.item_id);
    }
    for (_, a) in std::mem::take(&mut s.awaiting) {
        s.feed.finished(
            a.claimed.item_id,
            Attempt::Interrupted(format!("no answer from the target: {reason}")),
            a.sent,
        );
    }
    result.map(|()| s.summary)
}

impl<'a, F: Feed, W: Write> Session<'a, '_, F, W> {
    fn send(&mut self, f: &Frame<'_>) -> Result<(), SessionError> {
        self.out
            .send(f)
            .map_err(|e| SessionError::Connection(format!("send to the target: {e}")))
    }

    fn flush(&mut self) -> Result<(), SessionError> {
        self.out
            .flush()
            .map_err(|e| SessionError::Connection(format!("send to the target: {e}")))
    }

    /// Waits for the target's greeting and hands its wants to the feed.
    fn greeting(&mut self) -> Result<(), SessionError> {
        let deadline = Instant::now() + DECISION_WAIT;
        let mut wanted = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(SessionError::Connection("the target did not greet".into()));
            }
            match self
                .replies
                .recv_timeout(left.min(Duration::from_millis(200)))
            {
                Ok(Ok(Reply::Want { name })) => {
                    if let Ok(n) = BackupName::parse(&name) {
                        wanted.push(n);
                    }
                }
                Ok(Ok(Reply::Ready)) => break,
                Ok(Ok(Reply::Fatal { code, message })) => {
                    return Err(SessionError::Target { code, message })
                }
                Ok(Ok(other)) => {
                    return Err(SessionError::Connection(format!(
                        "the target answered {other:?} before its greeting"
                    )))
                }
                Ok(Err(e)) => return Err(SessionError::Connection(e.to_string())),
                Err(RecvTimeoutError::Timeout) => {
                    if self.ctx.shutdown.load(Ordering::SeqCst) {
                        return Err(SessionError::Shutdown);
                    }
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(SessionError::Connection("the target's stream ended".into()))
                }
            }
        }
        if !wanted.is_empty() {
            log::info!(
                "replication to {}: the target wants {} damaged copies again",
                self.ctx.target,
                wanted.len()
            );
            self.feed.wanted(wanted);
        }
        Ok(())
    }

    fn run(&mut self) -> Result<(), SessionError> {
        self.greeting()?;
        let mut feed_empty = false;
        loop {
            if self.ctx.shutdown.load(Ordering::SeqCst) {
                return Err(SessionError::Shutdown);
            }
            self.drain()?;
            self.measure();
            let (files, bytes) = self.offered;
            let window = link::offers(self.link.link(), bytes / files.max(1));
            while !feed_empty && self.offers.len() < window && self.awaiting.len() < MAX_AWAITING {
                match self.feed.next() {
                    Some(c) => self.offer(c)?,
                    None => feed_empty = true,
                }
            }
            if self.offers.is_empty() {
                if feed_empty {
                    break;
                }
                // Too many files await their outcome: let the target catch up.
                self.flush()?;
                self.wait_reply(DECISION_WAIT)?;
                continue;
            }
            if self.offers.front().is_some_and(|o| o.reply.is_none()) {
                self.flush()?;
                let deadline = Instant::now() + DECISION_WAIT;
                while self.offers.front().is_some_and(|o| o.reply.is_none()) {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(SessionError::Connection(
                            "the target did not answer an offer".into(),
                        ));
                    }
                    self.wait_reply(left)?;
                }
            }
            if let Some(head) = self.offers.pop_front() {
                self.act(head)?;
            }
        }
        self.send(&Frame::Finish)?;
        self.flush()?;
        let deadline = Instant::now() + BYE_WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(SessionError::Connection(
                    "the target did not finish the session".into(),
                ));
            }
            if self.wait_reply(left)? {
                return Ok(());
            }
        }
    }

    /// Reads the link's figures when the meter is due (`link::Meter`).
    fn measure(&mut self) {
        let now = Instant::now();
        if self.link.due(now) {
            let r = (self.ctx.readings)();
            if let (Some(rate), Some(rtt)) = (r.link_rate, r.rtt) {
                self.link.record(now, rate, rtt, self.packing.totals());
            }
        }
    }

    /// Applies replies that arrived, without waiting.
    fn drain(&mut self) -> Result<(), SessionError> {
        loop {
            match self.replies.try_recv() {
                Ok(r) => {
                    self.apply(r)?;
                }
                Err(mpsc::TryRecvError::Empty) => return Ok(()),
                Err(mpsc::TryRecvError::Disconnected) => {
                    return Err(SessionError::Connection("the target's stream ended".into()))
                }
            }
        }
    }

    /// Waits up to `timeout` for one reply and applies it; true if it was `Bye`.
    fn wait_reply(&mut self, timeout: Duration) -> Result<bool, SessionError> {
        let step = timeout.min(Duration::from_millis(200));
        match self.replies.recv_timeout(step) {
            Ok(r) => self.apply(r),
            Err(RecvTimeoutError::Timeout) => {
                if self.ctx.shutdown.load(Ordering::SeqCst) {
                    return Err(SessionError::Shutdown);
                }
                Ok(false)
            }
            Err(RecvTimeoutError::Disconnected) => {
                Err(SessionError::Connection("the target's stream ended".into()))
            }
        }
    }

    fn apply(&mut self, r: Result<Reply, ReplyError>) -> Result<bool, SessionError> {
        let r = r.map_err(|e| SessionError::Connection(e.to_string()))?;
        match r {
            Reply::New { seq }
            | Reply::Resume { seq, .. }
            | Reply::Have { seq, .. }
            | Reply::Refuse { seq, .. } => {
                let Some(o) = self.offers.iter_mut().find(|o| o.seq == seq) else {
                    return Err(SessionError::Connection(format!(
                        "the target answered offer {seq}, which is not open"
                    )));
                };
                o.reply = Some(r);
            }
            Reply::Committed { seq, sha256 } => {
                if let Some(a) = self.awaiting.remove(&seq) {
                    if sha256 != a.sha256 {
                        self.settle_failed(
                            a,
                            Code::DigestMismatch,
                            "the target committed another digest".into(),
                        );
                    } else {
                        log::info!(
                            "replication to {}: {} finished, verified by the target (item {}, sha256 {})",
                            self.ctx.target,
                            a.claimed.backup,
                            a.claimed.item_id,
                            hex::encode(&sha256)
                        );
                        self.summary.done += 1;
                        self.feed.finished(
                            a.claimed.item_id,
                            Attempt::Done {
                                sha256: hex::encode(&sha256),
                                skipped: false,
                            },
                            a.sent,
                        );
                    }
                }
            }
            Reply::Failed { seq, code, message } => {
                if let Some(a) = self.awaiting.remove(&seq) {
                    self.settle_failed(a, code, message);
                } else {
                    // The file being streamed now; the stream loop acts on it.
                    self.current_failed = Some((seq, code, message));
                }
            }
            Reply::Durable { seq, offset } => match &mut self.durable {
                Some((s, o)) if *s == seq => *o = (*o).max(offset),
                other => *other = Some((seq, offset)),
            },
            Reply::Lacks { .. } => self.lacks.push_back(r),
            Reply::Bye => return Ok(true),
            Reply::Want { .. } | Reply::Ready => {
                return Err(SessionError::Connection(
                    "the target greeted in the middle of a session".into(),
                ))
            }
            Reply::Fatal { code, message } => {
                return Err(SessionError::Target { code, message });
            }
        }
        Ok(false)
    }

    fn settle_failed(&mut self, a: Awaiting, code: Code, message: String) {
        log::warn!(
            "replication to {}: {} failed (item {}): {message}",
            self.ctx.target,
            a.claimed.backup,
            a.claimed.item_id
        );
        self.summary.failed += 1;
        self.feed
            .finished(a.claimed.item_id, attempt_for(code, &message), a.sent);
    }

    fn offer(&mut self, c: Claimed) -> Result<(), SessionError> {
        let path = self.ctx.root.join(c.backup.client()).join(c.backup.file());
        let file = match fsx::open_read(&path) {
            Ok(f) => f,
            Err(e) => {
                self.feed.finished(
                    c.item_id,
                    Attempt::Failed(format!("cannot read {}: {e}", c.backup)),
                    0,
                );
                return Ok(());
            }
        };
        let seq = self.next_seq;
        self.next_seq += 1;
        let (size, version) = (file.stat().len, version_of(file.stat()));
        self.send(&Frame::Offer {
            seq,
            size,
            version,
            name: c.backup.as_str(),
        })?;
        self.offered = (self.offered.0 + 1, self.offered.1.saturating_add(size));
        self.offers.push_back(Offer {
            seq,
            claimed: c,
            file,
            size,
            version,
            reply: None,
        });
        Ok(())
    }

    /// Acts on the target's answer to the oldest offer.
    fn act(&mut self, mut o: Offer) -> Result<(), SessionError> {
        let id = o.claimed.item_id;
        if self.ctx.live.is_cancelled(id) || !self.feed.still_wanted(id) {
            self.ctx.live.clear_cancel(id);
            self.feed.release(id);
            return self.send(&Frame::Skip { seq: o.seq });
        }
        self.current = Some((id, 0));
        match o.reply.take() {
            Some(Reply::Refuse { code, message, .. }) => {
                log::warn!(
                    "replication to {}: {} refused (item {id}): {message}",
                    self.ctx.target,
                    o.claimed.backup
                );
                self.summary.failed += 1;
                self.current = None;
                self.feed.finished(id, attempt_for(code, &message), 0);
                Ok(())
            }
            Some(Reply::Have { sha256, .. }) => {
                let ours = match o
                    .claimed
                    .known_sha256
                    .filter(|_| o.claimed.version == o.version)
                {
                    Some(d) => Some(d),
                    None => self.hash_prefix(&mut o.file, o.size).map(|h| digest(&h)),
                };
                if ours == Some(sha256) {
                    self.current = None;
                    log::info!(
                        "replication to {}: {} already held with the same SHA-256, not sent (item {id})",
                        self.ctx.target,
                        o.claimed.backup
                    );
                    self.summary.skipped += 1;
                    self.feed.finished(
                        id,
                        Attempt::Done {
                            sha256: hex::encode(&sha256),
                            skipped: true,
                        },
                        0,
                    );
                    self.send(&Frame::Skip { seq: o.seq })
                } else {
                    // A changed file: the new copy replaces the old once it verified.
                    self.stream_whole(o)
                }
            }
            Some(Reply::Resume { offset, prefix, .. }) if offset <= o.size => {
                match self.hash_prefix(&mut o.file, offset) {
                    Some(h) if digest(&h) == prefix => self.stream_resumed(o, offset, h),
                    _ => self.stream(o, 0, Sha256::new(&SHA256)),
                }
            }
            _ => self.stream_whole(o),
        }
    }

    /// The SHA-256 state over the first `len` bytes of `file`, read from its start.
    fn hash_prefix(&mut self, file: &mut ReadFile, len: u64) -> Option<Sha256> {
        file.seek(SeekFrom::Start(0)).ok()?;
        let mut h = Sha256::new(&SHA256);
        let buf = &mut self.buf[HEADER_LEN + 4..];
        fsx::read_prefix(file, len, buf, |b| h.update(b)).ok()?;
        Some(h)
    }

    /// Streams offer `o` from `offset` (the hasher covers the bytes before it).
    fn stream(
        &mut self,
        mut o: Offer,
        offset: u64,
        mut hasher: Sha256,
    ) -> Result<(), SessionError> {
        let id = o.claimed.item_id;
        let seq = o.seq;
        let Some(registered) = self.start_file(&mut o, offset)? else {
            return Ok(());
        };
        let mut left = o.size - offset;
        let mut sent = 0u64;
        let mut last_check = Instant::now();
        self.current_failed = None;
        // What the target holds durably, as it confirmed; nothing goes further past it
        // than the window (as large as the measured link needs), so a crash of the target
        // costs at most that again.
        self.durable = Some((seq, offset));
        let mut out_of_window: Option<Instant> = None;
        while left > 0 {
            let Some(durable) =
                self.next_frame(seq, id, offset, &o.claimed.backup, &mut last_check)?
            else {
                return Ok(());
            };
            let window = link::window(o.size, self.link.link());
            let room = (durable + window).saturating_sub(offset + sent);
            if room == 0 {
                // The target's disk is behind: let it confirm what it holds.
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
            }
            out_of_window = None;
            let want = left.min(MAX_DATA as u64).min(room);
            let grant = self.ctx.live.take(want);
            if grant == 0 {
                // Under a throttle window: push out what is buffered, then wait a little
                // (taking the target's replies meanwhile). Not a wait on the target: the
                // throttle counts wire bytes and holds the sender back as a link would.
                self.flush()?;
                self.wait_reply(self.ctx.live.wait_for(want))?;
                continue;
            }
            let n = grant.min(want) as usize;
            let body = &mut self.buf[HEADER_LEN + 4..HEADER_LEN + 4 + n];
            if let Err(e) = o.file.read_exact(body) {
                self.settle(
                    id,
                    Attempt::Failed(format!(
                        "{} changed or became unreadable while sending: {e}",
                        o.claimed.backup
                    )),
                );
                return self.send(&Frame::Skip { seq });
            }
            hasher.update(body);
            let frame = match self.packing.frame(seq, body) {
                Some(zdata) => zdata,
                None => {
                    self.buf[..HEADER_LEN + 4].copy_from_slice(&transfer::data_header(seq, n));
                    &self.buf[..HEADER_LEN + 4 + n]
                }
            };
            self.ctx.live.refund(n, frame.len());
            self.out
                .send_raw(frame)
                .map_err(|e| SessionError::Connection(format!("send to the target: {e}")))?;
            left -= n as u64;
            sent += n as u64;
            self.current = Some((id, sent));
            registered.progress.advance(n as u64);
            self.summary.bytes_sent += n as u64;
            self.feed.sent(id, sent, durable + window - offset);
        }
        let sha256 = digest(&hasher);
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

    /// Tells the target that offer `o`'s data starts at `offset`, and the feed, the
    /// counters and the log.
    fn announce_start(&mut self, o: &Offer, offset: u64) -> Result<(), SessionError> {
        let id = o.claimed.item_id;
        self.send(&Frame::Start { seq: o.seq, offset })?;
        self.feed.started(id, offset, o.size);
        log::info!(
            "replication to {}: {} started (item {id}, {} bytes{})",
            self.ctx.target,
            o.claimed.backup,
            o.size,
            if offset > 0 {
                format!(", resuming at {offset}")
            } else {
                String::new()
            }
        );
        Ok(())
    }

    /// Starts sending offer `o` from `offset`: seeks there, tells the target, registers
    /// the progress. `None`: the file could not be read (settled failed, and skipped).
    fn start_file(
        &mut self,
        o: &mut Offer,
        offset: u64,
    ) -> Result<Option<Registered<'a>>, SessionError> {
        let id = o.claimed.item_id;
        if let Err(e) = o.file.seek(SeekFrom::Start(offset)) {
            self.settle(
                id,
                Attempt::Failed(format!("cannot read {}: {e}", o.claimed.backup)),
            );
            self.send(&Frame::Skip { seq: o.seq })?;
            return Ok(None);
        }
        self.announce_start(o, offset)?;
        Ok(Some(self.ctx.live.sending(id, o.size, offset)))
    }

    /// What a file's data loop checks before each frame: shutdown, a cancel or a removal
    /// from the queue (the store is asked at most once a second), then the target's
    /// replies and a failure it reported. `None`: the file was skipped (and the target
    /// told); else what the target holds of it durably.
    fn next_frame(
        &mut self,
        seq: u32,
        id: u64,
        offset: u64,
        backup: &BackupName,
        last_check: &mut Instant,
    ) -> Result<Option<u64>, SessionError> {
        if self.ctx.shutdown.load(Ordering::SeqCst) {
            return Err(SessionError::Shutdown);
        }
        let recheck = last_check.elapsed() >= Duration::from_secs(1);
        if recheck {
            *last_check = Instant::now();
        }
        if self.ctx.live.is_cancelled(id) || (recheck && !self.feed.still_wanted(id)) {
            self.ctx.live.clear_cancel(id);
            self.settle(id, Attempt::Interrupted("removed from the queue".into()));
            self.send(&Frame::Skip { seq })?;
            return Ok(None);
        }
        self.drain()?;
        self.measure();
        if self.settle_if_failed(seq, id, backup) {
            self.send(&Frame::Skip { seq })?;
            return Ok(None);
        }
        Ok(Some(match self.durable {
            Some((s, d)) if s == seq => d,
            _ => offset,
        }))
    }

    /// Whether the target reported the file being streamed (`seq`, item `id`) failed;
    /// settles it if so. A report for another file is dropped.
    fn settle_if_failed(&mut self, seq: u32, id: u64, backup: &BackupName) -> bool {
        let Some((fseq, code, message)) = self.current_failed.take() else {
            return false;
        };
        if fseq != seq {
            return false;
        }
        log::warn!(
            "replication to {}: {backup} failed (item {id}): {message}",
            self.ctx.target
        );
        self.summary.failed += 1;
        self.settle(id, attempt_for(code, &message));
        true
    }

    /// Ends the current item's attempt.
    fn settle(&mut self, id: u64, attempt: Attempt) {
        let sent = match self.current.take() {
            Some((cid, sent)) if cid == id => sent,
            other => {
                self.current = other;
                0
            }
        };
        self.feed.finished(id, attempt, sent);
    }
}
