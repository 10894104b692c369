//! The target's ingest shared by bytes per second, in proportion to the sources' `share`
//! weights (SPEC 21: each within ±5 % of its share). The session slots (`slots`) share
//! sessions; this shares what the sessions read. Each source has a virtual time, the
//! bytes it was given divided by its weight; a session reads on while its source is no
//! more than [`LEAD`] ahead of the slowest *hungry* source, and waits (before its next
//! read, so the source's TCP window closes) while it is. A source is hungry while it
//! spends less than [`HUNGRY`] of its time blocked in its reads: its bytes are there to
//! be read, and only the target's share holds it (a read counts as blocked when it took
//! [`BLOCKED_READ`] or longer). A source that waits on its own link,
//! disk or CPU is not hungry: it holds nobody back (the rest share what it leaves, so
//! the pacing wastes no capacity), and it is lifted to the hungry sources' virtual time
//! whenever it reads, so it banks no credit for later. State is one small entry per
//! source that read lately; no thread of its own: the sessions' threads do the pacing.

use std::collections::HashMap;
use std::io::{self, Read};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::sync::{lock, wait_timeout};

/// How far (bytes per unit of weight) a source may run ahead of the slowest hungry one.
pub const LEAD: f64 = 1024.0 * 1024.0;
/// A session's reads are counted in steps of this many bytes.
pub const STEP: u64 = 64 * 1024;
/// A source blocked in its reads for more than this part of its time is not hungry.
pub const HUNGRY: f64 = 0.75;
/// A read that took this long waited for its bytes; a shorter one found them there (its
/// time is decrypting and copying, or a moment of another thread's).
pub const BLOCKED_READ: Duration = Duration::from_millis(1);
/// How far back the blocked part of a source's time is averaged.
const MEMORY: Duration = Duration::from_millis(250);
/// A source that read nothing for this long counts no more.
pub const ACTIVE: Duration = Duration::from_millis(500);
/// The longest one wait lasts, whatever the figures say: a session never stalls on them.
pub const MAX_WAIT: Duration = Duration::from_millis(500);
/// A waiting session looks again at least this often.
const RECHECK: Duration = Duration::from_millis(50);

/// One source's pacing.
#[derive(Clone, Copy, Debug)]
struct Flow {
    weight: f64,
    /// Bytes given to it over its weight, on the common clock of virtual time.
    vt: f64,
    /// Its last counted step (none yet: a heartbeat session, or one waiting for its slot,
    /// holds nobody back).
    last: Option<Instant>,
    /// The part of its time it spent blocked in reads, averaged over [`MEMORY`].
    blocked: f64,
    /// Its sessions reading now.
    sessions: u32,
}

impl Flow {
    fn hungry(&self, now: Instant) -> bool {
        self.sessions > 0
            && self.blocked < HUNGRY
            && self
                .last
                .is_some_and(|t| now.saturating_duration_since(t) < ACTIVE)
    }
}

/// The pacing's state, plain data: its methods take the time.
#[derive(Debug, Default)]
pub struct Fair {
    flows: HashMap<u64, Flow>,
}

impl Fair {
    /// The virtual time: the least of the hungry sources', if any.
    fn floor(&self, now: Instant) -> Option<f64> {
        self.flows
            .values()
            .filter(|f| f.hungry(now))
            .map(|f| f.vt)
            .min_by(f64::total_cmp)
    }

    /// A session of `id` (weight `share`) starts reading.
    pub fn open(&mut self, id: u64, share: u32, now: Instant) {
        let floor = self.floor(now);
        let f = self.flows.entry(id).or_insert(Flow {
            weight: 1.0,
            vt: 0.0,
            last: None,
            blocked: 0.0,
            sessions: 0,
        });
        f.weight = f64::from(share.max(1));
        f.sessions += 1;
        if let Some(floor) = floor {
            f.vt = f.vt.max(floor);
        }
    }

    /// A session of `id` ended; a source with none left is forgotten.
    pub fn close(&mut self, id: u64) {
        if let Some(f) = self.flows.get_mut(&id) {
            f.sessions = f.sessions.saturating_sub(1);
            if f.sessions == 0 {
                self.flows.remove(&id);
            }
        }
    }

    /// Counts `bytes` read by a session of `id`, which spent `blocked` of the last
    /// `span` inside its reads. True if the source was the slowest hungry one (its step
    /// may let others on).
    pub fn charge(
        &mut self,
        id: u64,
        bytes: u64,
        blocked: Duration,
        span: Duration,
        now: Instant,
    ) -> bool {
        let floor = self.floor(now);
        let Some(f) = self.flows.get_mut(&id) else {
            return false;
        };
        let was_hungry = f.hungry(now);
        if span > Duration::ZERO {
            let part = (blocked.as_secs_f64() / span.as_secs_f64()).min(1.0);
            let alpha = (span.as_secs_f64() / MEMORY.as_secs_f64()).min(1.0);
            f.blocked += alpha * (part - f.blocked);
        }
        let slowest = was_hungry && floor.is_some_and(|v| f.vt <= v);
        if let Some(v) = floor {
            // Not hungry (or back from idle): no credit for the time it did not read.
            f.vt = f.vt.max(v);
        }
        f.vt += bytes as f64 / f.weight;
        f.last = Some(now);
        slowest
    }

    /// Whether `id` is ahead of the slowest hungry source by more than [`LEAD`].
    pub fn ahead(&self, id: u64, now: Instant) -> bool {
        let (Some(f), Some(v)) = (self.flows.get(&id), self.floor(now)) else {
            return false;
        };
        f.vt > v + LEAD
    }

    /// Sources with an entry now.
    pub fn sources(&self) -> usize {
        self.flows.len()
    }
}

/// The pacing of one target's ingest, shared by its receiving sessions.
#[derive(Debug)]
pub struct Pacer {
    state: Mutex<Fair>,
    /// Notified when the slowest hungry source moved on.
    moved: Condvar,
    clock: fn() -> Instant,
}

impl Pacer {
    pub fn new(clock: fn() -> Instant) -> Pacer {
        Pacer {
            state: Mutex::new(Fair::default()),
            moved: Condvar::new(),
            clock,
        }
    }

    /// `input` of a session of source `id` (weight `share`), read at its share.
    pub fn reader<R: Read>(&self, input: R, id: u64, share: u32) -> Paced<'_, R> {
        lock(&self.state).open(id, share, (self.clock)());
        Paced {
            inner: input,
            pacer: self,
            id,
            read: 0,
            blocked: Duration::ZERO,
            since: (self.clock)(),
        }
    }

    /// Counts a step and waits while the source is ahead (at most [`MAX_WAIT`]).
    fn step(&self, id: u64, bytes: u64, blocked: Duration, span: Duration) {
        let start = (self.clock)();
        let mut state = lock(&self.state);
        if state.charge(id, bytes, blocked, span, start) {
            self.moved.notify_all();
        }
        loop {
            let now = (self.clock)();
            let waited = now.saturating_duration_since(start);
            if waited >= MAX_WAIT || !state.ahead(id, now) {
                return;
            }
            state = wait_timeout(&self.moved, state, (MAX_WAIT - waited).min(RECHECK));
        }
    }

    /// Sources with pacing state now (for tests).
    pub fn sources(&self) -> usize {
        lock(&self.state).sources()
    }
}

/// A session's input, read at its source's share ([`Pacer::reader`]).
pub struct Paced<'a, R> {
    inner: R,
    pacer: &'a Pacer,
    id: u64,
    /// Bytes read, time blocked in reads, since the last step and when it ended.
    read: u64,
    blocked: Duration,
    since: Instant,
}

impl<R: Read> Read for Paced<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.read >= STEP {
            let now = (self.pacer.clock)();
            let span = now.saturating_duration_since(self.since);
            self.pacer.step(self.id, self.read, self.blocked, span);
            self.read = 0;
            self.blocked = Duration::ZERO;
            self.since = (self.pacer.clock)();
        }
        let t = (self.pacer.clock)();
        let n = self.inner.read(buf)?;
        let took = (self.pacer.clock)().saturating_duration_since(t);
        if took >= BLOCKED_READ {
            self.blocked += took;
        }
        self.read += n as u64;
        Ok(n)
    }
}

impl<R> Drop for Paced<'_, R> {
    fn drop(&mut self) {
        lock(&self.pacer.state).close(self.id);
        self.pacer.moved.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Two hungry sources (never blocked) read in turns of 64 KiB whenever they are not
    /// ahead, as their sessions would: their bytes follow their weights.
    fn race(weights: &[u32], steps: usize) -> Vec<u64> {
        let t0 = Instant::now();
        let mut fair = Fair::default();
        for (id, w) in weights.iter().enumerate() {
            fair.open(id as u64, *w, t0);
        }
        let mut got = vec![0u64; weights.len()];
        for i in 0..steps {
            let now = t0 + Duration::from_micros(i as u64 * 100);
            for (id, bytes) in got.iter_mut().enumerate() {
                if !fair.ahead(id as u64, now) {
                    fair.charge(id as u64, STEP, Duration::ZERO, ms(1), now);
                    *bytes += STEP;
                }
            }
        }
        got
    }

    #[test]
    fn hungry_sources_get_bytes_in_proportion_to_their_weights() {
        let got = race(&[1, 2, 3], 20_000);
        let ratio = |a: usize, b: usize| got[a] as f64 / got[b] as f64;
        assert!((ratio(1, 0) - 2.0).abs() < 0.05, "{got:?}");
        assert!((ratio(2, 0) - 3.0).abs() < 0.05, "{got:?}");
        // Equal weights, equal bytes.
        let got = race(&[1, 1], 10_000);
        assert!(got[0].abs_diff(got[1]) <= 2 * MIB, "{got:?}");
        // Alone, a source is never held.
        let t0 = Instant::now();
        let mut fair = Fair::default();
        fair.open(7, 1, t0);
        for _ in 0..1000 {
            fair.charge(7, STEP, Duration::ZERO, ms(1), t0);
            assert!(!fair.ahead(7, t0));
        }
    }

    #[test]
    fn a_source_limited_by_its_own_link_holds_nobody_back_and_banks_nothing() {
        let t0 = Instant::now();
        let mut fair = Fair::default();
        fair.open(1, 1, t0);
        fair.open(2, 4, t0);
        // Source 2 (weight 4) spends 90 % of its time waiting for its bytes: not hungry.
        // It starts as hungry; within a few hundred ms it is taken for what it is.
        let mut now = t0;
        for i in 0..100 {
            now += ms(10);
            fair.charge(2, STEP, ms(9), ms(10), now);
            for _ in 0..10 {
                if fair.ahead(1, now) {
                    assert!(i < 50, "source 1 still waits for a slow source at {i}");
                    continue;
                }
                fair.charge(1, STEP, Duration::ZERO, ms(1), now);
            }
        }
        // Then source 2 gets fast: it is lifted to source 1's time, not 60 MiB behind it,
        // so source 1 is held within a few steps of it, not for the next 60 MiB.
        for _ in 0..4 {
            fair.charge(2, STEP, Duration::ZERO, ms(250), now);
        }
        let mut one = 0;
        while !fair.ahead(1, now) {
            fair.charge(1, STEP, Duration::ZERO, ms(1), now);
            one += STEP;
            assert!(one < 4 * MIB, "source 2 banked credit");
        }
    }

    #[test]
    fn a_source_that_stops_or_starts_is_counted_at_once() {
        let t0 = Instant::now();
        let mut fair = Fair::default();
        fair.open(1, 1, t0);
        fair.open(2, 1, t0);
        // A session that read nothing yet (a heartbeat, one waiting for its slot).
        fair.open(9, 1, t0);
        fair.charge(2, STEP, Duration::ZERO, ms(1), t0);
        for _ in 0..100 {
            fair.charge(1, STEP, Duration::ZERO, ms(1), t0);
        }
        assert!(fair.ahead(1, t0), "source 2 is hungry and behind");
        fair.close(9);
        // Source 2's session ends: source 1 reads on, and the entry is gone.
        fair.close(2);
        assert!(!fair.ahead(1, t0));
        assert_eq!(fair.sources(), 1);
        // One that starts later starts at the others' virtual time, not at zero: neither
        // it nor they wait for it to catch up on bytes it never asked for.
        fair.open(3, 1, t0 + ms(10));
        assert!(!fair.ahead(1, t0 + ms(10)));
        assert!(!fair.ahead(3, t0 + ms(10)));
        // A source idle for longer than ACTIVE counts no more.
        fair.open(4, 1, t0 + ms(10));
        fair.charge(3, STEP, Duration::ZERO, ms(1), t0 + ms(10));
        fair.charge(4, 64 * MIB, Duration::ZERO, ms(1), t0 + ms(10));
        assert!(fair.ahead(4, t0 + ms(20)));
        assert!(!fair.ahead(4, t0 + ms(10) + ACTIVE), "1 and 3 went quiet");
    }

    #[test]
    fn a_paced_reader_passes_every_byte_and_forgets_its_source_when_dropped() {
        let pacer = Pacer::new(Instant::now);
        let data: Vec<u8> = (0..1_000_000u32).map(|i| i as u8).collect();
        let mut r = pacer.reader(&data[..], 5, 2);
        assert_eq!(pacer.sources(), 1);
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        assert_eq!(out, data);
        drop(r);
        assert_eq!(pacer.sources(), 0);
    }
}
