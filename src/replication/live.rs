//! Live replication state shared by the sessions, the replicator (`jobs::replicator`) and
//! the API: progress of running transfers (kept in memory so `bytes_done`, `rate_bps` and
//! `eta_s` are fresh at every read without a database write per frame; the database gets
//! checkpoints), cancel requests for active items, the settings in force (a `PUT` applies
//! to running transfers at their next frame), the one rate limiter every sending session
//! shares, a wake-up for the replicator, and the counters behind the metrics (per peer:
//! each target on a source, each source on a target; `api::system` exports them). No I/O.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, Instant};

use super::queue::Attempt;
use super::throttle::{self, Bucket};
use crate::store::{ReplicationConfig, ThrottleRecord};
use crate::sync::{lock, read, write};
use crate::wire::transfer::Code;

/// Bytes per second over the last few seconds of samples.
#[derive(Debug)]
struct RateMeter {
    samples: VecDeque<(Instant, u64)>,
}

/// Samples closer than this are merged; the window spans a few of them.
const SAMPLE_EVERY: Duration = Duration::from_millis(250);
const WINDOW: Duration = Duration::from_secs(3);

impl RateMeter {
    fn new(now: Instant, bytes: u64) -> RateMeter {
        RateMeter {
            samples: VecDeque::from([(now, bytes)]),
        }
    }

    fn record(&mut self, now: Instant, bytes: u64) {
        match self.samples.back_mut() {
            Some((t, b)) if now.duration_since(*t) < SAMPLE_EVERY => *b = bytes,
            _ => self.samples.push_back((now, bytes)),
        }
        while self.samples.len() > 2
            && now.duration_since(self.samples[0].0) > WINDOW
            && now.duration_since(self.samples[1].0) >= WINDOW / 2
        {
            self.samples.pop_front();
        }
    }

    fn rate(&self, now: Instant) -> u64 {
        let (Some(first), Some(last)) = (self.samples.front(), self.samples.back()) else {
            return 0;
        };
        // A stalled transfer's rate falls to zero instead of keeping its last value.
        let span = now.duration_since(first.0).as_secs_f64();
        if span < 0.2 {
            return 0;
        }
        ((last.1.saturating_sub(first.1)) as f64 / span) as u64
    }
}

/// One running transfer's progress.
#[derive(Debug)]
pub struct Progress {
    pub size: u64,
    /// Bytes the target holds or has been sent, of this file (resume offset included).
    bytes_done: AtomicU64,
    /// Bytes put on the wire in this attempt.
    bytes_sent: AtomicU64,
    started: Instant,
    meter: Mutex<RateMeter>,
}

impl Progress {
    pub fn new(size: u64, offset: u64) -> Progress {
        let now = Instant::now();
        Progress {
            size,
            bytes_done: AtomicU64::new(offset),
            bytes_sent: AtomicU64::new(0),
            started: now,
            meter: Mutex::new(RateMeter::new(now, offset)),
        }
    }

    /// Sets the file position reached (a resume jumps forward without counting as sent).
    pub fn set_done(&self, done: u64) {
        self.bytes_done.store(done, Ordering::Relaxed);
        lock(&self.meter).record(Instant::now(), done);
    }

    /// `n` more bytes of the file went out (or came in).
    pub fn advance(&self, n: u64) {
        let done = self.bytes_done.fetch_add(n, Ordering::Relaxed) + n;
        self.bytes_sent.fetch_add(n, Ordering::Relaxed);
        lock(&self.meter).record(Instant::now(), done);
    }

    /// `n` more bytes of the file are in place without crossing the wire (a deduplicated
    /// transfer's chunks the target already held).
    pub fn advance_held(&self, n: u64) {
        let done = self.bytes_done.fetch_add(n, Ordering::Relaxed) + n;
        lock(&self.meter).record(Instant::now(), done);
    }

    /// `n` bytes went on the wire that are not file content (chunk lists).
    pub fn add_sent(&self, n: u64) {
        self.bytes_sent.fetch_add(n, Ordering::Relaxed);
    }

    pub fn bytes_done(&self) -> u64 {
        self.bytes_done.load(Ordering::Relaxed)
    }

    pub fn bytes_sent(&self) -> u64 {
        self.bytes_sent.load(Ordering::Relaxed)
    }

    pub fn rate_bps(&self) -> u64 {
        let now = Instant::now();
        let rate = lock(&self.meter).rate(now);
        if rate == 0 && now.duration_since(self.started) < Duration::from_secs(1) {
            // Too early for the window: the average so far.
            let secs = now.duration_since(self.started).as_secs_f64().max(0.001);
            return (self.bytes_sent() as f64 / secs) as u64;
        }
        rate
    }

    /// Seconds left at the current rate, if it moves at all.
    pub fn eta_s(&self) -> Option<u64> {
        let rate = self.rate_bps();
        (rate > 0).then(|| self.size.saturating_sub(self.bytes_done()).div_ceil(rate))
    }
}

/// A transfer the target is receiving now, for `GET /api/replication/queue` on a target.
#[derive(Debug)]
pub struct Incoming {
    pub system_id: u64,
    pub backup: String,
    pub started: crate::model::UnixTime,
    pub progress: Progress,
}

/// The other end of transfers: a target this appliance sends to (its target id), or a
/// source that sends to this appliance (its system id).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Peer {
    Target(u64),
    Source(u64),
}

/// What was moved with one peer since the process started (counters), and its sessions
/// now (a gauge).
#[derive(Debug, Default)]
struct PeerCounters {
    /// File content bytes sent to a target, or received from a source.
    bytes: AtomicU64,
    /// Files the target verified and committed (sent), or committed here (received).
    files: AtomicU64,
    /// Files not sent because the target already held them (source side).
    skipped: AtomicU64,
    /// Transfer sessions open now.
    sessions: AtomicU64,
    /// Files (or offers) that did not end committed, by reason: how an attempt ended on a
    /// source (`refused`, `failed`, `interrupted`), the target's code on a target.
    failures: Mutex<BTreeMap<&'static str, u64>>,
}

/// [`Live::peers`]: one peer's counters at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerStats {
    pub bytes: u64,
    pub files: u64,
    pub skipped: u64,
    pub sessions: u64,
    pub failures: BTreeMap<&'static str, u64>,
}

/// Why an attempt to send did not end done, as a metric label.
pub fn attempt_reason(attempt: &Attempt) -> Option<&'static str> {
    match attempt {
        Attempt::Done { .. } => None,
        Attempt::Refused(_) | Attempt::Rejected(_) => Some("refused"),
        Attempt::Failed(_) => Some("failed"),
        Attempt::Interrupted(_) => Some("interrupted"),
    }
}

/// Why a target refused or failed a file, as a metric label (a small fixed set).
pub fn code_reason(code: Code) -> &'static str {
    match code {
        Code::BadName => "bad_name",
        Code::Quota => "quota",
        Code::NoSpace => "no_space",
        Code::Busy => "busy",
        Code::SizeMismatch => "size_mismatch",
        Code::DigestMismatch => "digest_mismatch",
        Code::Storage => "storage",
        Code::Protocol => "protocol",
        Code::NotPaired => "not_paired",
        Code::Unavailable => "unavailable",
        Code::Other(_) => "other",
    }
}

/// An open transfer session with a peer, counted while it lives ([`Live::session`]).
pub struct Session {
    counters: Arc<PeerCounters>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.counters.sessions.fetch_sub(1, Ordering::Relaxed);
    }
}

pub struct Live {
    config: RwLock<ReplicationConfig>,
    throttle: RwLock<ThrottleRecord>,
    bucket: Mutex<Bucket>,
    epoch: Instant,
    sending: Mutex<HashMap<u64, Arc<Progress>>>,
    receiving: Mutex<HashMap<u64, Arc<Incoming>>>,
    next_incoming: AtomicU64,
    cancelled: Mutex<HashSet<u64>>,
    wake: (Mutex<u64>, Condvar),
    peers: Mutex<HashMap<Peer, Arc<PeerCounters>>>,
    /// Local weekday and hour for the throttle; replaced in tests.
    clock: fn() -> (u8, u32),
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live").finish_non_exhaustive()
    }
}

/// Removes a running transfer from the live table when dropped.
pub struct Registered<'a> {
    live: &'a Live,
    key: Key,
    pub progress: Arc<Progress>,
}

enum Key {
    Sending(u64),
    Receiving(u64),
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        match self.key {
            Key::Sending(id) => {
                lock(&self.live.sending).remove(&id);
            }
            Key::Receiving(id) => {
                lock(&self.live.receiving).remove(&id);
            }
        }
    }
}

impl Live {
    pub fn new(config: ReplicationConfig, throttle: ThrottleRecord) -> Live {
        Live::with_clock(config, throttle, crate::model::local_weekday_hour)
    }

    pub fn with_clock(
        config: ReplicationConfig,
        throttle: ThrottleRecord,
        clock: fn() -> (u8, u32),
    ) -> Live {
        Live {
            config: RwLock::new(config),
            throttle: RwLock::new(throttle),
            bucket: Mutex::new(Bucket::default()),
            epoch: Instant::now(),
            sending: Mutex::new(HashMap::new()),
            receiving: Mutex::new(HashMap::new()),
            next_incoming: AtomicU64::new(1),
            cancelled: Mutex::new(HashSet::new()),
            wake: (Mutex::new(0), Condvar::new()),
            peers: Mutex::new(HashMap::new()),
            clock,
        }
    }

    pub fn config(&self) -> ReplicationConfig {
        read(&self.config).clone()
    }

    pub fn set_config(&self, c: ReplicationConfig) {
        *write(&self.config) = c;
        self.wake();
    }

    pub fn throttle(&self) -> ThrottleRecord {
        read(&self.throttle).clone()
    }

    pub fn set_throttle(&self, t: ThrottleRecord) {
        *write(&self.throttle) = t;
    }

    /// The rate in force now, bytes per second (None: full speed).
    pub fn limit_bps(&self) -> Option<u64> {
        let (day, hour) = (self.clock)();
        throttle::limit_bps(&read(&self.throttle), day, hour)
    }

    /// Up to `want` bytes that may go on the wire now (0: wait [`Live::wait_for`]).
    pub fn take(&self, want: u64) -> u64 {
        let rate = self.limit_bps();
        let now = self.epoch.elapsed().as_secs_f64();
        lock(&self.bucket).take(now, want, rate)
    }

    /// The throttle counts wire bytes: of `granted` content bytes that went as a frame of
    /// `on_wire` bytes, gives back what compression saved ([`throttle::Bucket::refund`]).
    pub fn refund(&self, granted: usize, on_wire: usize) {
        if let Some(saved) = granted.checked_sub(on_wire).filter(|s| *s > 0) {
            lock(&self.bucket).refund(saved as u64);
        }
    }

    /// How long to wait before asking [`Live::take`] again.
    pub fn wait_for(&self, want: u64) -> Duration {
        Duration::from_secs_f64(lock(&self.bucket).wait_s(want))
    }

    /// Registers an item being sent; the entry goes when the guard drops.
    pub fn sending(&self, item_id: u64, size: u64, offset: u64) -> Registered<'_> {
        let progress = Arc::new(Progress::new(size, offset));
        lock(&self.sending).insert(item_id, progress.clone());
        Registered {
            live: self,
            key: Key::Sending(item_id),
            progress,
        }
    }

    pub fn progress_of(&self, item_id: u64) -> Option<Arc<Progress>> {
        lock(&self.sending).get(&item_id).cloned()
    }

    /// Registers a file being received; the entry goes when the guard drops.
    pub fn receiving(
        &self,
        system_id: u64,
        backup: &str,
        size: u64,
        offset: u64,
        now: crate::model::UnixTime,
    ) -> (Registered<'_>, Arc<Incoming>) {
        let id = self.next_incoming.fetch_add(1, Ordering::Relaxed);
        let incoming = Arc::new(Incoming {
            system_id,
            backup: backup.to_string(),
            started: now,
            progress: Progress::new(size, offset),
        });
        lock(&self.receiving).insert(id, incoming.clone());
        // The guard's own progress is unused for incoming files; the Incoming carries it.
        let guard = Registered {
            live: self,
            key: Key::Receiving(id),
            progress: Arc::new(Progress::new(0, 0)),
        };
        (guard, incoming)
    }

    /// Everything being received now, oldest first.
    pub fn incoming(&self) -> Vec<Arc<Incoming>> {
        let mut v: Vec<(u64, Arc<Incoming>)> = lock(&self.receiving)
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect();
        v.sort_by_key(|(k, _)| *k);
        v.into_iter().map(|(_, i)| i).collect()
    }

    /// Asks the session sending `item_id` to stop it (the admin removed or reset it).
    pub fn cancel(&self, item_id: u64) {
        lock(&self.cancelled).insert(item_id);
        self.wake();
    }

    pub fn is_cancelled(&self, item_id: u64) -> bool {
        lock(&self.cancelled).contains(&item_id)
    }

    /// Forgets a cancel request once the session acted on it (or the item never ran).
    pub fn clear_cancel(&self, item_id: u64) {
        lock(&self.cancelled).remove(&item_id);
    }

    /// Wakes the replicator: items were added, settings changed, something finished.
    pub fn wake(&self) {
        let (m, c) = &self.wake;
        *lock(m) += 1;
        c.notify_all();
    }

    /// The current wake generation; pass it to [`Live::wait`].
    pub fn generation(&self) -> u64 {
        *lock(&self.wake.0)
    }

    /// Waits until woken after `seen`, or `timeout`.
    pub fn wait(&self, seen: u64, timeout: Duration) {
        let (m, c) = &self.wake;
        let guard = lock(m);
        let _ = c.wait_timeout_while(guard, timeout, |g| *g == seen);
    }

    fn peer(&self, peer: Peer) -> Arc<PeerCounters> {
        lock(&self.peers).entry(peer).or_default().clone()
    }

    /// `n` content bytes went to a target, or came from a source.
    pub fn count_bytes(&self, peer: Peer, n: u64) {
        self.peer(peer).bytes.fetch_add(n, Ordering::Relaxed);
    }

    /// A file was committed: verified by the target (source side), or here.
    pub fn count_file(&self, peer: Peer) {
        self.peer(peer).files.fetch_add(1, Ordering::Relaxed);
    }

    /// A file was not sent: the target holds it already.
    pub fn count_skipped(&self, peer: Peer) {
        self.peer(peer).skipped.fetch_add(1, Ordering::Relaxed);
    }

    /// A file (or an offer) did not end committed, for `reason` ([`attempt_reason`],
    /// [`code_reason`]).
    pub fn count_failure(&self, peer: Peer, reason: &'static str) {
        *lock(&self.peer(peer).failures).entry(reason).or_default() += 1;
    }

    /// A transfer session with `peer` is open until the guard drops.
    pub fn session(&self, peer: Peer) -> Session {
        let counters = self.peer(peer);
        counters.sessions.fetch_add(1, Ordering::Relaxed);
        Session { counters }
    }

    /// Every peer that moved anything or had a session since start, with its counters.
    pub fn peers(&self) -> BTreeMap<Peer, PeerStats> {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let peers: Vec<(Peer, Arc<PeerCounters>)> = lock(&self.peers)
            .iter()
            .map(|(p, c)| (*p, c.clone()))
            .collect();
        peers
            .into_iter()
            .map(|(p, c)| {
                let stats = PeerStats {
                    bytes: get(&c.bytes),
                    files: get(&c.files),
                    skipped: get(&c.skipped),
                    sessions: get(&c.sessions),
                    failures: lock(&c.failures).clone(),
                };
                (p, stats)
            })
            .collect()
    }

    /// Bytes per second moving now from each source, by system id.
    pub fn receive_rates(&self) -> BTreeMap<u64, u64> {
        let mut out = BTreeMap::new();
        for i in self.incoming() {
            *out.entry(i.system_id).or_default() += i.progress.rate_bps();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_reports_rate_and_eta_and_a_stall_falls_to_zero() {
        let p = Progress::new(10_000_000, 1_000_000);
        let t0 = Instant::now();
        {
            let mut m = lock(&p.meter);
            *m = RateMeter::new(t0, 1_000_000);
            m.record(t0 + Duration::from_secs(1), 2_000_000);
            m.record(t0 + Duration::from_secs(2), 3_000_000);
            assert_eq!(m.rate(t0 + Duration::from_secs(2)), 1_000_000);
            // No new bytes for a long time: the rate decays with the span.
            assert!(m.rate(t0 + Duration::from_secs(20)) < 200_000);
        }
        p.bytes_done.store(3_000_000, Ordering::Relaxed);
        p.advance(500);
        assert_eq!(p.bytes_done(), 3_000_500);
        assert_eq!(p.bytes_sent(), 500);
    }

    #[test]
    fn registrations_leave_the_table_when_dropped_and_cancels_are_per_item() {
        let live = Live::with_clock(
            ReplicationConfig::default(),
            ThrottleRecord::default(),
            || (1, 12),
        );
        {
            let g = live.sending(7, 100, 0);
            g.progress.advance(10);
            assert_eq!(live.progress_of(7).unwrap().bytes_done(), 10);
            let (_r, inc) = live.receiving(3, "c/x", 100, 5, 0);
            inc.progress.advance(1);
            assert_eq!(live.incoming().len(), 1);
            assert_eq!(live.receive_rates().len(), 1);
        }
        assert!(live.progress_of(7).is_none());
        assert!(live.incoming().is_empty());
        live.cancel(7);
        assert!(live.is_cancelled(7) && !live.is_cancelled(8));
        live.clear_cancel(7);
        assert!(!live.is_cancelled(7));
    }

    #[test]
    fn a_window_in_force_limits_take_and_a_change_applies_at_once() {
        let live = Live::with_clock(
            ReplicationConfig::default(),
            ThrottleRecord::default(),
            || (1, 12),
        );
        assert_eq!(live.take(1 << 20), 1 << 20);
        live.set_throttle(ThrottleRecord {
            windows: vec![crate::store::ThrottleWindow {
                percentage: 1,
                days: vec![1],
                start: 0,
                end: 0,
            }],
            link_mbps: 8,
        });
        assert_eq!(live.limit_bps(), Some(10_000));
        // Fresh bucket under the new rate: nothing yet, then small grants only.
        assert_eq!(live.take(1 << 20), 0);
        std::thread::sleep(Duration::from_millis(120));
        let got = live.take(1 << 20);
        assert!(got > 0 && got <= 1_000, "{got}");
    }
}
