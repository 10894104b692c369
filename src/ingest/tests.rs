//! Sender and receiver against each other over a real socket pair (no TLS: the tunnel
//! adds that), and the receiver against hand-made frames for every class of bad input.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use crate::fsx::power_loss::replay;
use crate::fsx::trace::{Op, Recording};
use crate::replication::compress::{Compression, Readings};
use crate::replication::live::Live;
use crate::replication::names::BackupName;
use crate::replication::queue::Attempt;
use crate::replication::receiver::{self, Ledger, Scope, Scratch};
use crate::replication::sender::{self, Claimed, Feed};
use crate::replication::stream::{FrameReader, FrameWriter};
use crate::store::{ReplicationConfig, ThrottleRecord};
use crate::wire::transfer::{Decision, Features, Frame, MAX_DATA};

/// The receiver's scratch store and source (`receiver::Scratch`), with a source side:
/// its backup storage (`src`), live state and the target's ledger.
pub(super) struct Fixture {
    pub(super) scratch: Scratch,
    pub(super) src: PathBuf,
    pub(super) live: Live,
    pub(super) ledger: Ledger,
    /// The target accepts chunk lists (`dedup`), from these copies.
    pub(super) dedup: Option<Scope>,
    /// The source sends large files as chunk lists (the session agreed `chunks`).
    pub(super) chunks: bool,
    /// The sender's `compression`, and the features the receiver agreed to besides
    /// `chunks` (which follows `dedup`: [`Fixture::agreed`]).
    pub(super) compression: Compression,
    pub(super) features: Features,
    /// What the sender reads of its connection (none: a socket pair tells nothing).
    pub(super) readings: fn() -> Readings,
}

impl Fixture {
    /// The features the receiver agreed to: `chunks` when it accepts chunk lists.
    pub(super) fn agreed(&self) -> Features {
        Features {
            chunks: self.dedup.is_some(),
            ..self.features
        }
    }

    /// The receiver's context over this fixture, for a peer logged as `peer`.
    pub(super) fn context(&self, peer: &str) -> receiver::Context<'_> {
        receiver::Context {
            store: &self.store,
            live: &self.live,
            ledger: &self.ledger,
            dedup: self.dedup,
            slots: None,
            peer: peer.into(),
            now: || 1_000,
            features: self.agreed(),
        }
    }
}

impl std::ops::Deref for Fixture {
    type Target = Scratch;
    fn deref(&self) -> &Scratch {
        &self.scratch
    }
}

impl std::ops::DerefMut for Fixture {
    fn deref_mut(&mut self) -> &mut Scratch {
        &mut self.scratch
    }
}

pub(super) fn fixture(name: &str) -> Fixture {
    let scratch = Scratch::new(&format!("session-{name}"));
    let src = scratch.dir.join("src");
    std::fs::create_dir_all(&src).unwrap();
    Fixture {
        scratch,
        src,
        live: Live::with_clock(
            ReplicationConfig::default(),
            ThrottleRecord::default(),
            || (1, 12),
        ),
        ledger: Ledger::default(),
        dedup: None,
        chunks: false,
        compression: Compression::Off,
        features: Features::ALL,
        readings: Readings::default,
    }
}

fn content(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

pub(super) fn put(f: &Fixture, name: &str, bytes: &[u8]) {
    let p = f.src.join(name);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, bytes).unwrap();
}

pub(super) fn received_path(f: &Fixture, name: &str) -> PathBuf {
    f.source.storage.path.join(&f.source.uuid).join(name)
}

#[derive(Default)]
pub(super) struct MemFeed {
    queue: VecDeque<Claimed>,
    pub(super) results: Vec<(u64, Attempt, u64)>,
    released: Vec<u64>,
    pub(super) started: Vec<(u64, u64)>,
    /// What the target's window let the first attempt send at its first frame, as the
    /// sender said (before any confirmation: the window itself).
    pub(super) first_allowed: Option<u64>,
}

impl MemFeed {
    pub(super) fn of(names: &[&str]) -> MemFeed {
        let mut f = MemFeed::default();
        for (i, n) in names.iter().enumerate() {
            f.queue.push_back(Claimed {
                item_id: i as u64 + 1,
                backup: BackupName::parse(n).unwrap(),
                version: 0,
                known_sha256: None,
            });
        }
        f
    }

    fn sent_total(&self) -> u64 {
        self.results.iter().map(|r| r.2).sum()
    }
}

impl Feed for MemFeed {
    fn next(&mut self) -> Option<Claimed> {
        self.queue.pop_front()
    }
    fn started(&mut self, item_id: u64, offset: u64, _size: u64) {
        self.started.push((item_id, offset));
    }
    fn sent(&mut self, _: u64, _: u64, allowed: u64) {
        self.first_allowed.get_or_insert(allowed);
    }
    fn finished(&mut self, item_id: u64, attempt: Attempt, sent: u64) {
        self.results.push((item_id, attempt, sent));
    }
    fn release(&mut self, item_id: u64) {
        self.released.push(item_id);
    }
    fn still_wanted(&mut self, _: u64) -> bool {
        true
    }
    fn wanted(&mut self, names: Vec<BackupName>) {
        for (i, n) in names.into_iter().enumerate() {
            self.queue.push_back(Claimed {
                item_id: 1000 + i as u64,
                backup: n,
                version: 0,
                known_sha256: None,
            });
        }
    }
}

/// A writer that fails after `left` bytes: a connection that breaks mid-chunk.
struct Breaking<W> {
    inner: W,
    left: usize,
}

impl<W: Write> Write for Breaking<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Err(io::Error::new(io::ErrorKind::BrokenPipe, "cut"));
        }
        let n = buf.len().min(self.left);
        let n = self.inner.write(&buf[..n])?;
        self.left -= n;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Runs a sender session of `feed` that writes to `out` and reads the target's frames
/// from `sock`.
fn run_sender(
    f: &Fixture,
    feed: &mut MemFeed,
    sock: &UnixStream,
    out: impl Write,
) -> Result<sender::Summary, sender::SessionError> {
    let shutdown = AtomicBool::new(false);
    let (tx, replies) = sender::reply_channel();
    let input = sock.try_clone().unwrap();
    std::thread::spawn(move || sender::forward_replies(input, &tx));
    let ctx = sender::Context {
        root: &f.src,
        live: &f.live,
        shutdown: &shutdown,
        target: "target 1".into(),
        chunks: f.chunks,
        compression: f.compression,
        zstd: f.features.zstd,
        readings: &f.readings,
    };
    sender::run(&ctx, feed, out, &replies)
}

/// Runs a sender session against a receiver over a socket pair; the sender's writes
/// break after `cut` bytes if given.
pub(super) fn session(
    f: &Fixture,
    feed: &mut MemFeed,
    cut: Option<usize>,
) -> (
    Result<sender::Summary, sender::SessionError>,
    receiver::Summary,
) {
    let (a, b) = UnixStream::pair().unwrap();
    std::thread::scope(|scope| {
        let rx_side = scope.spawn(|| {
            let ctx = f.context("test");
            let input = a.try_clone().unwrap();
            let summary = super::serve(&ctx, &f.source, input, &a);
            let _ = a.shutdown(std::net::Shutdown::Both);
            summary
        });
        let result = match cut {
            None => run_sender(f, feed, &b, &b),
            Some(n) => run_sender(f, feed, &b, Breaking { inner: &b, left: n }),
        };
        let _ = b.shutdown(std::net::Shutdown::Both);
        (result, rx_side.join().unwrap())
    })
}

pub(super) fn done(a: &Attempt) -> bool {
    matches!(a, Attempt::Done { skipped: false, .. })
}

#[test]
fn files_arrive_byte_identical_verified_and_recorded() {
    let f = fixture("arrive");
    let big = content(1, 3 * 1024 * 1024 + 17);
    put(&f, "web/big.img", &big);
    let mut names = vec!["web/big.img".to_string()];
    for i in 0..40 {
        let n = format!("db/small-{i:02}");
        put(&f, &n, &content(i as u8, 1000 + i * 37));
        names.push(n);
    }
    put(&f, "web/empty", b"");
    names.push("web/empty".into());
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut feed = MemFeed::of(&refs);
    let (result, rx) = session(&f, &mut feed, None);
    let summary = result.unwrap();
    assert_eq!(summary.done, names.len() as u64, "{:?}", feed.results);
    assert_eq!(rx.committed, names.len() as u64);
    assert!(
        feed.results.iter().all(|r| done(&r.1)),
        "{:?}",
        feed.results
    );
    for n in &names {
        let want = std::fs::read(f.src.join(n)).unwrap();
        assert_eq!(std::fs::read(received_path(&f, n)).unwrap(), want, "{n}");
        let row = f.store.received_one(&f.source.uuid, n).unwrap().unwrap();
        assert_eq!(row.sha256, crate::ca::sha256_hex(&want));
        assert_eq!(row.size, want.len() as u64);
    }
    // No partial copy and no partial row is left behind.
    assert!(f.store.partials().unwrap().is_empty());
    let leftovers: Vec<_> = std::fs::read_dir(received_path(&f, "web"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty());
    let total: u64 = names
        .iter()
        .map(|n| std::fs::metadata(f.src.join(n)).unwrap().len())
        .sum();
    assert_eq!(summary.bytes_sent, total);
}

/// The calling thread's nice value (Linux: each thread has its own).
fn thread_nice() -> i32 {
    // SAFETY: getpriority takes and returns plain integers; -1 is a valid nice value here
    // only if the test runs at -1, which it does not.
    unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) }
}

/// Runs the receiving side of a session on a thread of its own; its nice value before and
/// after.
fn receiving_thread_nice(f: &Fixture, feed: &mut MemFeed) -> (i32, i32) {
    let (a, b) = UnixStream::pair().unwrap();
    std::thread::scope(|scope| {
        let rx_side = scope.spawn(|| {
            let ctx = f.context("test");
            let before = thread_nice();
            super::serve(&ctx, &f.source, a.try_clone().unwrap(), &a);
            let _ = a.shutdown(std::net::Shutdown::Both);
            (before, thread_nice())
        });
        run_sender(f, feed, &b, &b).unwrap();
        let _ = b.shutdown(std::net::Shutdown::Both);
        rx_side.join().unwrap()
    })
}

#[test]
fn a_session_runs_as_bulk_from_its_first_file_and_a_heartbeat_does_not() {
    let f = fixture("nice");
    let (before, after) = receiving_thread_nice(&f, &mut MemFeed::of(&[]));
    assert_eq!(after, before, "a session that received no file");
    put(&f, "c/a", &content(3, 100_000));
    let mut feed = MemFeed::of(&["c/a"]);
    let (before, after) = receiving_thread_nice(&f, &mut feed);
    assert!(
        feed.results.iter().all(|r| done(&r.1)),
        "{:?}",
        feed.results
    );
    assert_eq!(
        after,
        (before + super::BULK_NICE).min(19),
        "a session that received a file"
    );
    assert_eq!(thread_nice(), before, "the test's own thread is untouched");
}

#[test]
fn a_held_copy_is_not_sent_again_and_a_changed_one_replaces_it_after_verifying() {
    let f = fixture("idem");
    put(&f, "c/a", &content(1, 200_000));
    put(&f, "c/b", &content(2, 300_000));
    let mut feed = MemFeed::of(&["c/a", "c/b"]);
    session(&f, &mut feed, None).0.unwrap();
    let mut again = MemFeed::of(&["c/a", "c/b"]);
    let summary = session(&f, &mut again, None).0.unwrap();
    assert_eq!((summary.skipped, summary.bytes_sent), (2, 0));
    assert!(again
        .results
        .iter()
        .all(|r| matches!(r.1, Attempt::Done { skipped: true, .. })));
    // Same size, new content: sent again, and the copy on the target is the new one.
    let changed = content(9, 300_000);
    put(&f, "c/b", &changed);
    let mut third = MemFeed::of(&["c/a", "c/b"]);
    let summary = session(&f, &mut third, None).0.unwrap();
    assert_eq!((summary.skipped, summary.done), (1, 1));
    assert_eq!(std::fs::read(received_path(&f, "c/b")).unwrap(), changed);
}

#[test]
fn a_transfer_cut_mid_chunk_resumes_from_what_the_target_holds_durably() {
    let f = fixture("resume");
    let data = content(3, 6 * 1024 * 1024);
    put(&f, "c/big", &data);
    let mut first = MemFeed::of(&["c/big"]);
    let (result, rx) = session(&f, &mut first, Some(4 * 1024 * 1024 + 1234));
    assert!(result.is_err());
    assert!(rx.error.is_some());
    assert!(
        matches!(first.results[0].1, Attempt::Interrupted(_)),
        "{:?}",
        first.results
    );
    let partial = f.store.partial(&f.source.uuid, "c/big").unwrap().unwrap();
    assert!(partial.offset > 3 * 1024 * 1024, "{partial:?}");
    assert!(
        !received_path(&f, "c/big").exists(),
        "nothing visible before it verified"
    );
    let mut second = MemFeed::of(&["c/big"]);
    let summary = session(&f, &mut second, None).0.unwrap();
    assert_eq!(summary.done, 1);
    assert_eq!(second.started, vec![(1, partial.offset)]);
    assert_eq!(summary.bytes_sent, data.len() as u64 - partial.offset);
    assert_eq!(std::fs::read(received_path(&f, "c/big")).unwrap(), data);
    let sent = first.sent_total() + second.sent_total();
    let bound = data.len() as u64 + data.len() as u64 / 20 + receiver::chunk_for(data.len() as u64);
    assert!(sent <= bound, "sent {sent}, bound {bound}");
}

/// Plays the target by hand against a real sender: it never sends more than
/// `window_for(size)` past the offset the target last confirmed durable, and goes on as
/// soon as the target confirms more.
#[test]
fn the_sender_stays_within_a_window_of_what_the_target_confirmed_durable() {
    let f = fixture("window");
    let size = 8 * 1024 * 1024;
    let data = content(7, size);
    put(&f, "c/w", &data);
    let window = receiver::window_for(size as u64);
    let (a, b) = UnixStream::pair().unwrap();
    let mut feed = MemFeed::of(&["c/w"]);
    let result = std::thread::scope(|scope| {
        let target = scope.spawn(|| {
            let mut out = FrameWriter::new(&a);
            let mut input = FrameReader::new(&a);
            let mut next = || match input.next_frame() {
                Ok(Some(Frame::Data { bytes, .. })) => Some(bytes.len() as u64),
                Ok(Some(_)) => Some(0),
                _ => None,
            };
            out.send(&Frame::Ready).unwrap();
            assert_eq!(next(), Some(0), "the offer");
            out.send(&Frame::Decision {
                seq: 1,
                decision: Decision::New,
            })
            .unwrap();
            assert_eq!(next(), Some(0), "the start");
            let mut got = 0u64;
            for confirmed in [0, 1024 * 1024, 2 * 1024 * 1024 + 5] {
                while got < confirmed + window {
                    got += next().expect("a data frame");
                }
                assert_eq!(got, confirmed + window, "exactly up to the window");
                // Nothing more comes until the target confirms more.
                a.set_read_timeout(Some(std::time::Duration::from_millis(300)))
                    .unwrap();
                let mut probe = [0u8; 1];
                assert!((&a).read(&mut probe).is_err(), "sent past the window");
                a.set_read_timeout(None).unwrap();
                let offset = if confirmed == 0 {
                    1024 * 1024
                } else if confirmed == 1024 * 1024 {
                    2 * 1024 * 1024 + 5
                } else {
                    size as u64
                };
                out.send(&Frame::Durable { seq: 1, offset }).unwrap();
            }
            while got < size as u64 {
                got += next().expect("the rest");
            }
            assert_eq!(next(), Some(0), "the end");
            out.send(&Frame::Outcome {
                seq: 1,
                outcome: crate::wire::transfer::Outcome::Committed { sha256: sha(&data) },
            })
            .unwrap();
            assert_eq!(next(), Some(0), "finish");
            out.send(&Frame::Bye).unwrap();
        });
        let result = run_sender(&f, &mut feed, &b, &b);
        target.join().unwrap();
        result
    });
    assert_eq!(result.unwrap().done, 1, "{:?}", feed.results);
}

/// A gigabit link at 100 ms, as `TCP_INFO` would tell it.
fn long_fast_link() -> Readings {
    Readings {
        link_rate: Some(125_000_000),
        rtt: Some(std::time::Duration::from_millis(100)),
        ..Readings::default()
    }
}

#[test]
fn a_measured_long_fast_link_widens_the_window_and_the_target_keeps_up() {
    // 20 MiB: SPEC 11's window is 2 MiB, a sixth of what a gigabit at 100 ms holds in
    // flight. With the link measured, the sender runs as far as the link needs past what
    // the target confirmed; the target (which knows nothing of it) still confirms and
    // commits.
    let size = 20 * 1024 * 1024;
    let data = content(9, size);
    let mut lengths = Vec::new();
    for (i, readings) in [Readings::default as fn() -> Readings, long_fast_link]
        .into_iter()
        .enumerate()
    {
        let mut f = fixture(&format!("link-window-{i}"));
        f.readings = readings;
        put(&f, "c/wide", &data);
        let mut feed = MemFeed::of(&["c/wide"]);
        let (result, rx) = session(&f, &mut feed, None);
        assert_eq!(result.unwrap().done, 1, "{:?}", feed.results);
        assert_eq!(rx.committed, 1);
        assert_eq!(std::fs::read(received_path(&f, "c/wide")).unwrap(), data);
        lengths.push(feed.first_allowed.expect("data was sent"));
    }
    let spec11 = receiver::window_for(size as u64);
    assert_eq!(lengths[0], spec11, "no measurement: SPEC 11's window");
    assert!(lengths[1] >= 3 * 12_500_000, "{lengths:?}");
}

#[test]
fn a_stale_partial_of_another_version_is_not_resumed() {
    let f = fixture("stale");
    let old = content(4, 3 * 1024 * 1024);
    put(&f, "c/x", &old);
    let mut first = MemFeed::of(&["c/x"]);
    let _ = session(&f, &mut first, Some(2 * 1024 * 1024));
    assert!(f.store.partial(&f.source.uuid, "c/x").unwrap().is_some());
    // The file changes (new mtime, new content) before the retry.
    std::thread::sleep(std::time::Duration::from_millis(20));
    let new = content(5, 3 * 1024 * 1024);
    put(&f, "c/x", &new);
    let mut second = MemFeed::of(&["c/x"]);
    session(&f, &mut second, None).0.unwrap();
    assert_eq!(second.started, vec![(1, 0)]);
    assert_eq!(std::fs::read(received_path(&f, "c/x")).unwrap(), new);
}

#[test]
fn a_quota_refuses_before_any_byte_moves() {
    let mut f = fixture("quota");
    f.source.quota_mb = Some(1);
    put(&f, "c/small", &content(1, 300_000));
    put(&f, "c/big", &content(2, 900_000));
    let mut feed = MemFeed::of(&["c/small", "c/big"]);
    let summary = session(&f, &mut feed, None).0.unwrap();
    assert_eq!(summary.done, 1);
    let refused = &feed.results.iter().find(|r| r.0 == 2).unwrap().1;
    let Attempt::Refused(m) = refused else {
        panic!("{refused:?}");
    };
    assert!(m.contains("quota of 1 MB"), "{m}");
    assert_eq!(summary.bytes_sent, 300_000);
    assert!(!received_path(&f, "c/big").exists());
    assert!(f.store.partial(&f.source.uuid, "c/big").unwrap().is_none());
}

// ---- the receiver against hand-made frames ----

/// Sends `frames` to a receiver and returns every frame it answered, decoded.
pub(super) fn against_receiver(f: &Fixture, frames: &[Frame<'_>], then_close: bool) -> Vec<String> {
    against_receiver_raw(f, frames, &[], then_close)
}

/// As [`against_receiver`], writing `tail` (raw bytes, say half a frame) after the frames.
fn against_receiver_raw(
    f: &Fixture,
    frames: &[Frame<'_>],
    tail: &[u8],
    then_close: bool,
) -> Vec<String> {
    against_receiver_as(f, &f.source, frames, tail, then_close)
}

/// As [`against_receiver_raw`], for `source` (another source sharing the fixture's store,
/// storage and ledger).
fn against_receiver_as(
    f: &Fixture,
    source: &receiver::Source,
    frames: &[Frame<'_>],
    tail: &[u8],
    then_close: bool,
) -> Vec<String> {
    let (a, b) = UnixStream::pair().unwrap();
    let answers = Arc::new(Mutex::new(Vec::new()));
    std::thread::scope(|scope| {
        let rx = scope.spawn(|| {
            let ctx = f.context("test");
            super::serve(&ctx, source, a.try_clone().unwrap(), &a);
            let _ = a.shutdown(std::net::Shutdown::Both);
        });
        let mut w = FrameWriter::new(&b);
        for fr in frames {
            if let Err(e) = w.send(fr) {
                eprintln!("send {fr:?}: {e}");
                break;
            }
        }
        let _ = (&b).write_all(tail);
        if then_close {
            b.shutdown(std::net::Shutdown::Write).unwrap();
        }
        let mut r = FrameReader::new(&b);
        while let Ok(Some(fr)) = r.next_frame() {
            answers.lock().unwrap().push(format!("{fr:?}"));
        }
        rx.join().unwrap();
    });
    let v = answers.lock().unwrap().clone();
    v
}

pub(super) fn sha(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref());
    out
}

pub(super) fn nothing_visible(f: &Fixture) {
    let root = &f.source.storage.path;
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                panic!("unexpected file {}", e.path().display());
            }
        }
    }
    assert!(f.store.received(&f.source.uuid).unwrap().is_empty());
}

#[test]
fn bad_names_are_refused_before_any_filesystem_access() {
    let f = fixture("names");
    let long = format!("c/{}", "x".repeat(300));
    let bad = [
        "../../etc/passwd",
        "/etc/passwd",
        "c/../../x",
        "c/a\0b",
        long.as_str(),
        "c/.hidden",
        "11111111-2222-4333-8444-555555555555/c/x",
        "other-uuid/../c/x",
        "c",
    ];
    let mut frames = Vec::new();
    for (i, n) in bad.iter().enumerate() {
        frames.push(Frame::Offer {
            seq: i as u32 + 1,
            size: 10,
            version: 0,
            name: n,
        });
    }
    frames.push(Frame::Finish);
    let answers = against_receiver(&f, &frames, false);
    let refusals = answers
        .iter()
        .filter(|a| a.contains("Refuse") && a.contains("BadName"))
        .count();
    assert_eq!(refusals, bad.len(), "{answers:#?}");
    assert!(answers.last().unwrap().contains("Bye"));
    nothing_visible(&f);
    assert!(std::fs::read_dir(&f.source.storage.path)
        .unwrap()
        .next()
        .is_none());
}

#[test]
fn a_size_that_lies_is_refused_and_nothing_half_written_stays() {
    let f = fixture("size");
    let body = content(1, 5000);
    // More bytes than offered.
    let over = against_receiver(
        &f,
        &[
            Frame::Offer {
                seq: 1,
                size: 100,
                version: 0,
                name: "c/over",
            },
            Frame::Start { seq: 1, offset: 0 },
            Frame::Data {
                seq: 1,
                bytes: &body,
            },
            Frame::End {
                seq: 1,
                sha256: sha(&body),
            },
            // Fewer bytes than offered.
            Frame::Offer {
                seq: 2,
                size: 10_000,
                version: 0,
                name: "c/under",
            },
            Frame::Start { seq: 2, offset: 0 },
            Frame::Data {
                seq: 2,
                bytes: &body,
            },
            Frame::End {
                seq: 2,
                sha256: sha(&body),
            },
            Frame::Finish,
        ],
        false,
    );
    let failures: Vec<&String> = over.iter().filter(|a| a.contains("SizeMismatch")).collect();
    assert_eq!(failures.len(), 2, "{over:#?}");
    assert!(
        failures[0].contains("more than the 100 bytes"),
        "{}",
        failures[0]
    );
    assert!(
        failures[1].contains("offered 10000 bytes for c/under but sent 5000"),
        "{}",
        failures[1]
    );
    nothing_visible(&f);
    assert!(f.store.partials().unwrap().is_empty());
}

#[test]
fn a_wrong_digest_discards_the_copy() {
    let f = fixture("digest");
    let body = content(1, 5000);
    let answers = against_receiver(
        &f,
        &[
            Frame::Offer {
                seq: 1,
                size: 5000,
                version: 0,
                name: "c/x",
            },
            Frame::Start { seq: 1, offset: 0 },
            Frame::Data {
                seq: 1,
                bytes: &body,
            },
            Frame::End {
                seq: 1,
                sha256: [7; 32],
            },
            Frame::Finish,
        ],
        false,
    );
    assert!(
        answers
            .iter()
            .any(|a| a.contains("DigestMismatch") && a.contains("discarded")),
        "{answers:#?}"
    );
    nothing_visible(&f);
    assert!(f.store.partials().unwrap().is_empty());
}

#[test]
fn a_disconnect_mid_chunk_keeps_a_resumable_partial_and_nothing_visible() {
    let f = fixture("cut");
    let body = content(1, 2 * 1024 * 1024);
    let mut frames = vec![
        Frame::Offer {
            seq: 1,
            size: 4 * 1024 * 1024,
            version: 3,
            name: "c/x",
        },
        Frame::Start { seq: 1, offset: 0 },
    ];
    for piece in body.chunks(200_000) {
        frames.push(Frame::Data {
            seq: 1,
            bytes: piece,
        });
    }
    // Then half of one more frame, and the connection drops.
    let mut half = Vec::new();
    crate::wire::transfer::encode(
        &Frame::Data {
            seq: 1,
            bytes: &[9; 100_000],
        },
        &mut half,
    );
    half.truncate(50_000);
    let answers = against_receiver_raw(&f, &frames, &half, true);
    assert_eq!(answers[0], "Ready");
    assert!(answers[1].contains("New"), "{answers:?}");
    assert!(!received_path(&f, "c/x").exists());
    let p = f.store.partial(&f.source.uuid, "c/x").unwrap().unwrap();
    assert_eq!((p.offset, p.version), (body.len() as u64, 3));
    // This source ignored the window: once it could not have sent another whole frame,
    // the target made what it held durable and said so, rather than leave it waiting.
    let confirmed: Vec<u64> = answers
        .iter()
        .filter_map(|a| a.strip_prefix("Durable { seq: 1, offset: "))
        .filter_map(|a| a.trim_end_matches(" }").parse().ok())
        .collect();
    let window = receiver::window_for(4 * 1024 * 1024);
    assert!(
        confirmed
            .first()
            .is_some_and(|&c| c + MAX_DATA as u64 > window && c <= window),
        "{answers:?}"
    );
    assert!(confirmed.iter().all(|&c| c <= p.offset), "{answers:?}");
    // The next offer of the same version resumes there, with the prefix's digest.
    let answers = against_receiver(
        &f,
        &[
            Frame::Offer {
                seq: 1,
                size: 4 * 1024 * 1024,
                version: 3,
                name: "c/x",
            },
            Frame::Finish,
        ],
        false,
    );
    let want = format!(
        "{:?}",
        Decision::Resume {
            offset: body.len() as u64,
            prefix_sha256: sha(&body)
        }
    );
    assert!(answers[1].contains(&want), "{answers:?}");
}

#[test]
fn frames_out_of_order_end_the_session_with_a_protocol_error() {
    let f = fixture("proto");
    for frames in [
        vec![Frame::Data {
            seq: 1,
            bytes: b"x",
        }],
        vec![Frame::Start { seq: 4, offset: 0 }],
        vec![
            Frame::Offer {
                seq: 2,
                size: 1,
                version: 0,
                name: "c/a",
            },
            Frame::Offer {
                seq: 1,
                size: 1,
                version: 0,
                name: "c/b",
            },
        ],
        vec![
            Frame::Offer {
                seq: 1,
                size: 10,
                version: 0,
                name: "c/a",
            },
            Frame::Start { seq: 1, offset: 5 },
        ],
        vec![Frame::Bye],
    ] {
        let answers = against_receiver(&f, &frames, false);
        assert!(
            answers
                .last()
                .is_some_and(|a| a.contains("Fatal") && a.contains("Protocol")),
            "{frames:?}: {answers:?}"
        );
    }
    nothing_visible(&f);
}

#[test]
fn a_failed_directory_fsync_at_commit_is_a_failed_file_that_the_source_sends_again() {
    let f = fixture("dir-fsync");
    let data = content(4, 50_000);
    put(&f, "c/a", &data);
    let client_dir = f.source.storage.path.join(&f.source.uuid).join("c");
    let fault = crate::fsx::faults::fail_dir_sync(&client_dir);
    let mut first = MemFeed::of(&["c/a"]);
    let (result, rx) = session(&f, &mut first, None);
    drop(fault);
    let summary = result.unwrap();
    // Not `Committed`: the source settles the item as a failed attempt, to be retried.
    assert_eq!(
        (summary.done, summary.failed),
        (0, 1),
        "{:?}",
        first.results
    );
    assert!(
        matches!(&first.results[0].1, Attempt::Failed(m) if m.contains("fsync of its directory")),
        "{:?}",
        first.results
    );
    assert_eq!((rx.committed, rx.failed), (0, 1));
    assert!(f
        .store
        .received_one(&f.source.uuid, "c/a")
        .unwrap()
        .is_none());
    // The retry sends it in full and commits it.
    let mut retry = MemFeed::of(&["c/a"]);
    let summary = session(&f, &mut retry, None).0.unwrap();
    assert_eq!((summary.done, summary.bytes_sent), (1, 50_000));
    assert!(done(&retry.results[0].1), "{:?}", retry.results);
    assert_eq!(std::fs::read(received_path(&f, "c/a")).unwrap(), data);
    let row = f
        .store
        .received_one(&f.source.uuid, "c/a")
        .unwrap()
        .unwrap();
    assert_eq!(row.sha256, crate::ca::sha256_hex(&data));
    assert!(f.store.partials().unwrap().is_empty());
}

#[test]
fn a_copy_marked_damaged_is_wanted_again_and_replaced() {
    let f = fixture("wanted");
    let data = content(6, 100_000);
    put(&f, "c/a", &data);
    let mut feed = MemFeed::of(&["c/a"]);
    session(&f, &mut feed, None).0.unwrap();
    // Someone flips bytes on the target; a verify marks the row damaged.
    std::fs::write(received_path(&f, "c/a"), content(7, 100_000)).unwrap();
    let mut row = f
        .store
        .received_one(&f.source.uuid, "c/a")
        .unwrap()
        .unwrap();
    row.damaged = Some("the copy differs".into());
    f.store
        .write(|tx| tx.put_received(&f.source.uuid, &row))
        .unwrap();
    // The next session with nothing queued learns of it and sends it again.
    let mut next = MemFeed::default();
    let summary = session(&f, &mut next, None).0.unwrap();
    assert_eq!((summary.done, summary.bytes_sent), (1, 100_000));
    assert_eq!(std::fs::read(received_path(&f, "c/a")).unwrap(), data);
    let row = f
        .store
        .received_one(&f.source.uuid, "c/a")
        .unwrap()
        .unwrap();
    assert!(row.damaged.is_none());
}

/// The power-loss model (`fsx/power_loss.rs`) over a real receiving session: the sink's
/// writes and seals, the committer's renames and directory fsyncs, the directory it makes
/// for a new client, all as `Real` did them (`fsx/trace.rs`), replayed over the model and
/// checked at every state a power loss could leave. A new version of a held copy is the
/// old or the new one, never torn or missing; a copy for a new client is absent or whole;
/// once the source was told `Committed`, every state holds both new copies and no
/// partial. docs/testing.md names the mutants this catches.
#[test]
fn a_power_loss_anywhere_in_a_real_session_leaves_the_old_or_the_new_copy() {
    let f = fixture("power-loss");
    let (old, new, fresh) = (content(1, 20_000), content(2, 30_000), content(3, 25_000));
    put(&f, "c/a", &old);
    let (first, _) = session(&f, &mut MemFeed::of(&["c/a"]), None);
    assert_eq!(first.unwrap().done, 1);
    put(&f, "c/a", &new);
    put(&f, "d/b", &fresh);
    let storage = f.source.storage.path.clone();
    let mine = storage.join(&f.source.uuid);
    let (a, b) = (received_path(&f, "c/a"), received_path(&f, "d/b"));
    let recording = Recording::start(&storage);
    let (second, _) = session(&f, &mut MemFeed::of(&["c/a", "d/b"]), None);
    let ops = recording.take();
    drop(recording);
    assert_eq!(second.unwrap().done, 2);
    let dirs = [storage.clone(), mine.clone(), mine.join("c")];
    let partial = |p: &PathBuf| {
        p.file_name()
            .is_some_and(|n| n.as_encoded_bytes()[0] == b'.')
    };
    let (found, states) = replay(&dirs, &[(a.clone(), old.clone())], &ops, |_, last, s| {
        match s.get(&a) {
            Some(c) if *c == new => {}
            Some(c) if *c == old && last => return Some("c/a is old after Committed".into()),
            Some(c) if *c == old => {}
            Some(_) => return Some("c/a is neither the old nor the new copy".into()),
            None => return Some("c/a is missing".into()),
        }
        match s.get(&b) {
            Some(c) if *c == fresh => {}
            None if !last => {}
            Some(_) => return Some("d/b is torn".into()),
            None => return Some("d/b is missing after Committed".into()),
        }
        (last && s.keys().any(partial)).then(|| "a partial is left after Committed".into())
    });
    assert!(found.is_empty(), "{}", found.join("\n"));
    // The run did what is checked: each file's seal, both renames, the directory made
    // for the new client, the directory fsyncs, and enough states.
    let count = |what: fn(&Op) -> bool| ops.iter().filter(|o| what(o)).count();
    assert_eq!(count(|o| matches!(o, Op::SyncAll { .. })), 2, "{ops:?}");
    assert_eq!(count(|o| matches!(o, Op::Rename { .. })), 2, "{ops:?}");
    assert_eq!(count(|o| matches!(o, Op::CreateDir { .. })), 1, "{ops:?}");
    assert!(count(|o| matches!(o, Op::SyncDir { .. })) >= 3, "{ops:?}");
    assert!(states >= 50, "only {states} states checked: {ops:?}");
    eprintln!(
        "power loss, a real session: {} operations, {states} recovery states, 0 violations",
        ops.len()
    );
}

/// The same over a real session cut mid-file: the sink's checkpoints (taken on its own
/// thread through a `SyncHandle`, then recorded) and the receiver's last one when the
/// connection breaks. From each recorded checkpoint on, every state a power loss could
/// leave holds the partial with at least the recorded bytes, the source's; the final name
/// never appears.
#[test]
fn a_power_loss_after_a_recorded_checkpoint_keeps_what_it_recorded() {
    let f = fixture("power-loss-cut");
    let data = content(4, 3 * 1024 * 1024 + 5);
    put(&f, "c/big", &data);
    let storage = f.source.storage.path.clone();
    let dir = storage.join(&f.source.uuid).join("c");
    let name = BackupName::parse("c/big").unwrap();
    let (part, fin) = (receiver::partial_path(&dir, &name), dir.join("big"));
    let recording = Recording::start(&storage);
    let cut = 2 * 1024 * 1024 + 700 * 1024;
    let (result, _) = session(&f, &mut MemFeed::of(&["c/big"]), Some(cut));
    let ops = recording.take();
    drop(recording);
    assert!(result.is_err());
    let row = f.store.partial(&f.source.uuid, "c/big").unwrap().unwrap();
    let (found, states) = replay(std::slice::from_ref(&storage), &[], &ops, |point, _, s| {
        if s.contains_key(&fin) {
            return Some("the final name appeared".into());
        }
        let keep = point.note as usize;
        match s.get(&part) {
            _ if keep == 0 => None,
            None => Some(format!(
                "the partial is gone after {keep} bytes were recorded"
            )),
            Some(c) if c.len() < keep || c[..keep] != data[..keep] => {
                Some(format!("the partial lost its recorded {keep} bytes"))
            }
            Some(_) => None,
        }
    });
    assert!(found.is_empty(), "{}", found.join("\n"));
    // The run did what is checked: the sink recorded at least one checkpoint before the
    // cut and the receiver its last one, the row's.
    let recorded: Vec<u64> = ops
        .iter()
        .filter_map(|o| match o {
            Op::Recorded { offset, .. } => Some(*offset),
            _ => None,
        })
        .collect();
    assert!(recorded.len() >= 2, "{recorded:?}");
    assert!(recorded[0] >= 1024 * 1024, "{recorded:?}");
    assert_eq!(recorded.last(), Some(&row.offset));
    assert!(row.offset > recorded[0], "{recorded:?} {row:?}");
    assert!(states > 40, "only {states} states checked");
    eprintln!(
        "power loss, a real session cut mid-file: {} operations, {} checkpoints, {states} recovery states, 0 violations",
        ops.len(),
        recorded.len()
    );
}
// ---- a source is a tenant: its sizes, offers and partial copies are hostile input ----

/// The frames of a whole file `name` sent as new: offer, start, data, end.
fn whole_file<'a>(seq: u32, name: &'a str, body: &'a [u8]) -> Vec<Frame<'a>> {
    let mut frames = vec![
        Frame::Offer {
            seq,
            size: body.len() as u64,
            version: 0,
            name,
        },
        Frame::Start { seq, offset: 0 },
    ];
    for piece in body.chunks(MAX_DATA) {
        frames.push(Frame::Data { seq, bytes: piece });
    }
    frames.push(Frame::End {
        seq,
        sha256: sha(body),
    });
    frames
}

#[test]
fn offers_of_sizes_near_two_to_the_64_are_refused_and_nothing_is_written() {
    let mut f = fixture("huge");
    f.source.quota_mb = Some(5);
    let body = content(1, 300_000);
    let mut frames = Vec::new();
    for (i, size) in [
        u64::MAX,
        u64::MAX - 4 * 1024 * 1024,
        1 << 63,
        u64::MAX / 2 + 17,
    ]
    .into_iter()
    .enumerate()
    {
        frames.push(Frame::Offer {
            seq: i as u32 + 1,
            size,
            version: 0,
            name: "c/huge",
        });
    }
    // Then a starting file that claims to be nearly 2^64 bytes: its data is never taken.
    frames.push(Frame::Start { seq: 4, offset: 0 });
    frames.push(Frame::Data {
        seq: 4,
        bytes: &body,
    });
    let answers = against_receiver(&f, &frames, false);
    let refused: Vec<&String> = answers
        .iter()
        .filter(|a| a.contains("Refuse") && a.contains("NoSpace"))
        .collect();
    assert_eq!(refused.len(), 4, "{answers:#?}");
    assert!(
        refused.iter().all(|a| a.contains("could ever hold")),
        "{refused:#?}"
    );
    assert!(
        answers
            .last()
            .is_some_and(|a| a.contains("Fatal") && a.contains("Protocol")),
        "{answers:#?}"
    );
    nothing_visible(&f);
    assert!(f.store.partials().unwrap().is_empty());
}

#[test]
fn partial_copies_of_cut_transfers_count_against_the_quota() {
    let mut f = fixture("partial-quota");
    f.source.quota_mb = Some(10);
    // A transfer of 8 MiB cut after 7 MiB: its partial copy stays, resumable.
    let body = content(2, 7 * 1024 * 1024);
    let mut frames = vec![
        Frame::Offer {
            seq: 1,
            size: 8 * 1024 * 1024,
            version: 1,
            name: "c/a",
        },
        Frame::Start { seq: 1, offset: 0 },
    ];
    for piece in body.chunks(MAX_DATA) {
        frames.push(Frame::Data {
            seq: 1,
            bytes: piece,
        });
    }
    against_receiver_raw(&f, &frames, &[], true);
    let p = f.store.partial(&f.source.uuid, "c/a").unwrap().unwrap();
    assert_eq!(p.offset, body.len() as u64);
    // Another 5 MB would put 12 MB under a 10 MB quota: refused before any byte moves.
    let answers = against_receiver(
        &f,
        &[
            Frame::Offer {
                seq: 1,
                size: 5 * 1024 * 1024,
                version: 1,
                name: "c/b",
            },
            Frame::Finish,
        ],
        false,
    );
    assert!(
        answers[1].contains("Quota") && answers[1].contains("7 MB in partial copies"),
        "{answers:#?}"
    );
    // The cut file itself still resumes (its partial counts once, with its offer).
    let answers = against_receiver(
        &f,
        &[
            Frame::Offer {
                seq: 1,
                size: 8 * 1024 * 1024,
                version: 1,
                name: "c/a",
            },
            Frame::Finish,
        ],
        false,
    );
    assert!(answers[1].contains("Resume"), "{answers:#?}");
    // Once no session resumed it for `partial_retention`, the sweep removes it, and the
    // quota has room again.
    let dir = received_path(&f, "c");
    let swept = receiver::expire_partials(
        &f.store,
        std::slice::from_ref(&f.source.storage),
        &f.ledger,
        60,
        1_000 + 59,
    )
    .unwrap();
    assert_eq!(swept, 0, "not yet");
    let swept = receiver::expire_partials(
        &f.store,
        std::slice::from_ref(&f.source.storage),
        &f.ledger,
        60,
        1_000 + 60,
    )
    .unwrap();
    assert_eq!(swept, 1);
    assert!(f.store.partials().unwrap().is_empty());
    assert!(!dir.join(".a.replgate-part").exists());
    let small = content(3, 5 * 1024 * 1024);
    let mut frames = whole_file(1, "c/b", &small);
    frames.push(Frame::Finish);
    let answers = against_receiver(&f, &frames, false);
    assert!(
        answers.iter().any(|a| a.contains("Committed")),
        "{answers:#?}"
    );
}

#[test]
fn offers_never_sent_by_one_source_do_not_starve_another() {
    let f = fixture("starve");
    let other = receiver::Source {
        system_id: 3,
        uuid: "99999999-2222-4333-8444-555555555555".into(),
        ..f.source.clone()
    };
    let (_, free) = crate::fsx::disk_space(&f.source.storage.path).unwrap();
    // Source A offers files that together take every byte of free space above the
    // reserve (halving sizes fill it to within 64 KiB), and never sends one.
    let names: Vec<String> = (1..=40).map(|k| format!("c/hold-{k}")).collect();
    let (a, b) = UnixStream::pair().unwrap();
    std::thread::scope(|scope| {
        let a_side = scope.spawn(|| {
            let ctx = f.context("a");
            let summary = super::serve(&ctx, &f.source, a.try_clone().unwrap(), &a);
            let _ = a.shutdown(std::net::Shutdown::Both);
            summary
        });
        let mut w = FrameWriter::new(&b);
        for (k, name) in names.iter().enumerate() {
            let size = (free.saturating_sub(receiver::SPACE_MARGIN) >> (k + 1)).max(64 * 1024);
            w.send(&Frame::Offer {
                seq: k as u32 + 1,
                size,
                version: 0,
                name,
            })
            .unwrap();
        }
        w.flush().unwrap();
        let mut r = FrameReader::new(&b);
        let mut decided = 0;
        while decided < names.len() {
            let fr = format!("{:?}", r.next_frame().unwrap().unwrap());
            assert!(!fr.contains("Refuse") && !fr.contains("Fatal"), "{fr}");
            decided += usize::from(fr.contains("Decision"));
        }
        // Source B, with A's offers open: its 1 MiB backup goes through.
        let body = content(4, 1024 * 1024);
        let mut frames = whole_file(1, "c/b", &body);
        frames.push(Frame::Finish);
        let answers = against_receiver_as(&f, &other, &frames, &[], false);
        assert!(
            answers.iter().any(|a| a.contains("Committed")),
            "{answers:#?}"
        );
        let copy = f.source.storage.path.join(&other.uuid).join("c/b");
        assert_eq!(std::fs::read(copy).unwrap(), body);
        w.send(&Frame::Finish).unwrap();
        w.flush().unwrap();
        while let Ok(Some(_)) = r.next_frame() {}
        a_side.join().unwrap();
    });
}

#[test]
fn a_refusal_names_what_failed_and_never_a_path_of_the_target() {
    let f = fixture("no-path");
    // Something that is not a directory where the client's directory would go.
    let uuid_dir = f.source.storage.path.join(&f.source.uuid);
    std::fs::create_dir_all(&uuid_dir).unwrap();
    std::fs::write(uuid_dir.join("c"), b"not a directory").unwrap();
    let body = content(5, 1000);
    let mut frames = whole_file(1, "c/x", &body);
    frames.push(Frame::Finish);
    let answers = against_receiver(&f, &frames, false);
    let failed = answers
        .iter()
        .find(|a| a.contains("Failed"))
        .unwrap_or_else(|| panic!("{answers:#?}"));
    assert!(failed.contains("cannot write c/x on storage 1"), "{failed}");
    assert!(failed.contains("not a directory"), "{failed}");
    let root = f.dir.display().to_string();
    for a in &answers {
        assert!(!a.contains(&root), "a path of the target: {a}");
        assert!(!a.contains("/tmp"), "a path of the target: {a}");
    }
}

// ---- compressed content (`zstd`) ----

/// Text-like content: compresses to well under half with zstd's fastest level.
pub(super) fn text(len: usize) -> Vec<u8> {
    let words = ["backup ", "replgate ", "block ", "tar ", "0042 ", "\n"];
    let mut out = Vec::with_capacity(len);
    let mut x = 7u64;
    while out.len() < len {
        x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        out.extend_from_slice(words[(x >> 33) as usize % words.len()].as_bytes());
    }
    out.truncate(len);
    out
}

fn noise(len: usize) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn compressible_content_crosses_compressed_and_arrives_identical() {
    let mut f = fixture("zstd");
    f.compression = Compression::Zstd(1);
    let doc = text(3 * 1024 * 1024 + 5);
    let rnd = noise(1024 * 1024 + 3);
    put(&f, "c/doc", &doc);
    put(&f, "c/rnd", &rnd);
    let mut feed = MemFeed::of(&["c/doc"]);
    let (result, rx) = session(&f, &mut feed, None);
    let s = result.unwrap();
    assert_eq!((s.done, rx.committed), (1, 1), "{:?}", feed.results);
    assert_eq!(s.bytes_sent, doc.len() as u64);
    assert!(s.wire_bytes < s.bytes_sent / 2, "{s:?}");
    assert_eq!(std::fs::read(received_path(&f, "c/doc")).unwrap(), doc);
    let row = f
        .store
        .received_one(&f.source.uuid, "c/doc")
        .unwrap()
        .unwrap();
    assert_eq!(row.sha256, crate::ca::sha256_hex(&doc));
    // Content that does not shrink goes raw: every chunk as `Data`, nothing saved.
    let mut feed = MemFeed::of(&["c/rnd"]);
    let (result, _) = session(&f, &mut feed, None);
    let s = result.unwrap();
    assert_eq!(s.done, 1, "{:?}", feed.results);
    assert_eq!(s.bytes_sent, rnd.len() as u64);
    assert_eq!(
        s.wire_bytes,
        rnd.len() as u64 + 9 * rnd.len().div_ceil(MAX_DATA) as u64
    );
    assert_eq!(std::fs::read(received_path(&f, "c/rnd")).unwrap(), rnd);
}

#[test]
fn a_target_without_zstd_gets_raw_frames_and_a_source_without_it_sends_them() {
    let mut f = fixture("nozstd");
    f.compression = Compression::Zstd(3);
    f.features = Features::default();
    let doc = text(1024 * 1024);
    put(&f, "c/doc", &doc);
    let mut feed = MemFeed::of(&["c/doc"]);
    let (result, _) = session(&f, &mut feed, None);
    let s = result.unwrap();
    assert_eq!(s.done, 1, "{:?}", feed.results);
    assert!(s.wire_bytes > s.bytes_sent, "{s:?}");
    assert_eq!(std::fs::read(received_path(&f, "c/doc")).unwrap(), doc);
}

/// Offer and start `c/z` of `size` bytes, then `zdata`.
fn zframes<'a>(size: u64, zdata: Frame<'a>) -> Vec<Frame<'a>> {
    vec![
        Frame::Offer {
            seq: 1,
            size,
            version: 0,
            name: "c/z",
        },
        Frame::Start { seq: 1, offset: 0 },
        zdata,
    ]
}

fn ended_for_protocol(answers: &[String]) -> bool {
    answers
        .last()
        .is_some_and(|a| a.contains("Fatal") && a.contains("Protocol"))
}

#[test]
fn a_decompression_bomb_or_a_false_claim_ends_the_session_and_nothing_is_kept() {
    // 64 MiB of zeros in a few KB, claimed as the most a frame may hold.
    let bomb = zstd::bulk::compress(&vec![0u8; 64 << 20], 3).unwrap();
    assert!(bomb.len() < 8192, "{}", bomb.len());
    let small = text(100_000);
    let packed = zstd::bulk::compress(&small, 1).unwrap();
    let cases: Vec<(&str, Frame<'_>)> = vec![
        (
            "bomb",
            Frame::ZData {
                seq: 1,
                raw_len: MAX_DATA as u32,
                bytes: &bomb,
            },
        ),
        (
            "claims past the bound",
            Frame::ZData {
                seq: 1,
                raw_len: 64 << 20,
                bytes: &bomb,
            },
        ),
        (
            "claims less than it holds",
            Frame::ZData {
                seq: 1,
                raw_len: 99_999,
                bytes: &packed,
            },
        ),
        (
            "claims more than it holds",
            Frame::ZData {
                seq: 1,
                raw_len: 100_001,
                bytes: &packed,
            },
        ),
        (
            "not zstd",
            Frame::ZData {
                seq: 1,
                raw_len: 1000,
                bytes: &small[..1000],
            },
        ),
    ];
    for (what, zdata) in cases {
        let f = fixture("bomb");
        let answers = against_receiver(&f, &zframes(64 << 20, zdata), false);
        assert!(ended_for_protocol(&answers), "{what}: {answers:#?}");
        nothing_written(&f, what);
    }
    // The honest frame is taken; without `zstd` agreed the same frame is refused.
    let honest = Frame::ZData {
        seq: 1,
        raw_len: 100_000,
        bytes: &packed,
    };
    let mut frames = zframes(100_000, honest.clone());
    frames.push(Frame::End {
        seq: 1,
        sha256: sha(&small),
    });
    frames.push(Frame::Finish);
    let f = fixture("honest");
    let answers = against_receiver(&f, &frames, false);
    assert!(answers.last().unwrap().contains("Bye"), "{answers:#?}");
    assert_eq!(std::fs::read(received_path(&f, "c/z")).unwrap(), small);
    let mut f = fixture("unagreed");
    f.features = Features::default();
    let answers = against_receiver(&f, &zframes(100_000, honest), false);
    assert!(ended_for_protocol(&answers), "{answers:#?}");
    nothing_written(&f, "unagreed");
}

/// No copy of `c/z`, and not a byte of it in its partial file (kept, empty, to resume).
fn nothing_written(f: &Fixture, what: &str) {
    assert!(
        f.store.received(&f.source.uuid).unwrap().is_empty(),
        "{what}"
    );
    assert!(!received_path(f, "c/z").exists(), "{what}");
    let partial = received_path(f, "c/.z.replgate-part");
    let len = std::fs::metadata(&partial).map_or(0, |m| m.len());
    assert_eq!(len, 0, "{what}");
}
