//! Compression of a sending session's file content (SPEC 17): the setting
//! ([`Compression`]: `auto`, `off`, `zstd:<level>`), and for `auto` the level chooser
//! ([`Chooser`]), which re-decides every few seconds from what the sender measured:
//! whether the link held it back (it waited on the socket) or its own CPU did, how well the
//! content compresses and what that costs. Pure: the time, the CPU clock's readings and
//! the socket's figures are passed in; the codec itself is `wire::compress`.
//!
//! The model ([`decide`]): a period's content bytes cost `b` seconds of the sender's CPU
//! each besides compressing, compressing at a level costs `k` and leaves a fraction `r`
//! on the wire. If the link carries `L` wire bytes per second, a level delivers `min(L /
//! r, 1 / (b + k))` content bytes per second, no compression `min(L, 1 / b)`. `L` is what
//! the socket took while it held the sender back, else the link's rate as TCP measured it
//! (`TCP_INFO`'s delivery rate); with neither (loopback, a fast LAN) only the CPU term counts, so
//! compression never wins there. The levels not measured are estimated from the one that
//! was, by zstd's ratios on backup data (docs/decisions.md, "Compression of transfer frames"). Ties go
//! to less compression; more must promise 5 % more throughput.

use std::time::{Duration, Instant};

pub use crate::wire::compress::Compression;
use crate::wire::compress::{MAX_LEVEL, MIN_LEVEL};

/// What a sender measured over one period.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Period {
    pub elapsed: Duration,
    /// The sending thread's CPU time, if the platform tells.
    pub cpu: Option<Duration>,
    /// Time spent waiting on the target (its window, its decisions): the link did not
    /// hold the sender back then. Throttle waits are not in it: the throttle counts wire
    /// bytes, so for the chooser it is the link (compressing moves more content under it).
    pub waited: Duration,
    /// Content bytes sent, and the bytes they took in frames.
    pub raw: u64,
    pub wire: u64,
    /// Content bytes that went through the compressor (sent compressed or not), what
    /// they took in frames, the compressor's time, and its level.
    pub packed_raw: u64,
    pub packed_wire: u64,
    pub pack_time: Duration,
    pub packed_level: i32,
    /// Time the receiver's window held the connection back (`TCP_INFO`), if known.
    pub rwnd_limited: Option<Duration>,
    /// The link's rate in bytes per second as TCP measured it lately, if known.
    pub link_rate: Option<u64>,
}

/// What the sender reads at a review: its thread's CPU time so far, the connection's
/// receive-window-limited time so far, the link's measured rate and its smoothed round
/// trip (each if known; the round trip sizes the windows, `link`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Readings {
    pub cpu: Option<Duration>,
    pub rwnd_limited: Option<Duration>,
    pub link_rate: Option<u64>,
    pub rtt: Option<Duration>,
}

/// Relative ratio and cost of the levels used, estimated (only the level measured is
/// known in a period): level 3 leaves 3 % less on the wire than level 1 and costs 30 %
/// more.
fn model(level: i32) -> (f64, f64) {
    if level >= 3 {
        (0.97, 1.3)
    } else {
        (1.0, 1.0)
    }
}

/// The levels the chooser moves between (None: no compression).
const LADDER: [Option<i32>; 3] = [None, Some(MIN_LEVEL), Some(MAX_LEVEL)];
/// A period shorter than this, or with less content, says too little.
const MIN_ELAPSED: Duration = Duration::from_millis(300);
const MIN_BYTES: u64 = 1024 * 1024;
/// More compression must promise this much more throughput than the level in force; less
/// is taken when it delivers within [`TIE`] of the best.
const HYSTERESIS: f64 = 1.05;
const TIE: f64 = 1.02;

/// The level for the next period (None: no compression), given the one in force and what
/// the last period measured. Keeps the current level when the period says too little,
/// when nothing was compressed to learn from, or when the receiver was the limit (its
/// window held the sender back a quarter of the time: compressing changes what it does
/// per byte, not whether it keeps up).
pub fn decide(current: Option<i32>, p: &Period) -> Option<i32> {
    if p.elapsed < MIN_ELAPSED || p.raw < MIN_BYTES || p.packed_raw == 0 || p.packed_wire == 0 {
        return current;
    }
    let Some(cpu) = p.cpu else {
        return current;
    };
    let elapsed = p.elapsed.as_secs_f64();
    if p.rwnd_limited
        .is_some_and(|r| r.as_secs_f64() > 0.25 * elapsed)
    {
        return current;
    }
    let active = (elapsed - p.waited.as_secs_f64()).max(1e-6);
    let cpu = cpu.as_secs_f64();
    let pack_time = p.pack_time.as_secs_f64();
    // Seconds of CPU per content byte besides compressing, and compressing at the level
    // measured; the fraction left on the wire there.
    let base = ((cpu - pack_time).max(0.0) / p.raw as f64).max(1e-12);
    let cost = pack_time / p.packed_raw as f64;
    let ratio = p.packed_wire as f64 / p.packed_raw as f64;
    let (ratio_at, cost_at) = model(p.packed_level);
    // The link held the sender back if it was blocked (neither running nor waiting on the
    // target) for a good part of the time: then it took `wire / active` bytes a second.
    // Otherwise it can carry what TCP measured.
    let blocked = active - cpu;
    let link = if blocked > 0.15 * active {
        Some(p.wire as f64 / active)
    } else {
        p.link_rate.map(|r| r as f64)
    };
    let rate = |level: Option<i32>| -> f64 {
        let (r, k) = match level {
            None => (1.0, 0.0),
            // Content that hardly compresses does not compress better at a higher level.
            Some(l) => {
                let (rl, kl) = model(l);
                let r = if ratio < 0.95 {
                    ratio * rl / ratio_at
                } else {
                    ratio
                };
                (r.min(1.0), cost * kl / cost_at)
            }
        };
        let by_cpu = 1.0 / (base + k);
        link.map_or(by_cpu, |l| by_cpu.min(l / r))
    };
    let best = LADDER.into_iter().map(rate).fold(0.0f64, f64::max);
    // The least compression within a tie of the best.
    let Some(pick) = LADDER.into_iter().find(|l| rate(*l) * TIE >= best) else {
        return current;
    };
    let rank = |l: Option<i32>| l.unwrap_or(0);
    if rank(pick) < rank(current) || rate(pick) > rate(current) * HYSTERESIS {
        pick
    } else {
        current
    }
}

/// With no compression in force, one chunk in this many is compressed anyway (sent
/// compressed if that pays): the chooser learns how well the content compresses, at a
/// cost of a few per cent of the compressor's time on content that does not.
pub const PROBE_EVERY: u64 = 32;
/// The first review after this long, then every [`REVIEW_EVERY`].
const FIRST_REVIEW: Duration = Duration::from_secs(1);
pub const REVIEW_EVERY: Duration = Duration::from_secs(2);

/// One session's compression: the level in force, the measurements of the period under
/// way, and the reviews.
#[derive(Debug)]
pub struct Chooser {
    setting: Compression,
    level: Option<i32>,
    chunks: u64,
    period: Period,
    started: Option<Instant>,
    at_start: Readings,
    /// Content and wire bytes over the session, for its summary.
    pub total_raw: u64,
    pub total_wire: u64,
}

impl Chooser {
    /// `setting` as the session may use it: `usable` is false when the target did not
    /// agree to compressed frames.
    pub fn new(setting: Compression, usable: bool) -> Chooser {
        let setting = if usable { setting } else { Compression::Off };
        Chooser {
            setting,
            level: match setting {
                Compression::Zstd(l) => Some(l),
                _ => None,
            },
            chunks: 0,
            period: Period::default(),
            started: None,
            at_start: Readings::default(),
            total_raw: 0,
            total_wire: 0,
        }
    }

    /// The level in force (None: none).
    pub fn level(&self) -> Option<i32> {
        self.level
    }

    /// The level to compress the next chunk at, or None to send it raw: the level in
    /// force, or under `auto` with none in force a probe every [`PROBE_EVERY`] chunks
    /// (the first one included).
    pub fn plan(&mut self) -> Option<i32> {
        let n = self.chunks;
        self.chunks += 1;
        match (self.setting, self.level) {
            (_, Some(l)) => Some(l),
            (Compression::Auto, None) if n.is_multiple_of(PROBE_EVERY) => Some(MIN_LEVEL),
            _ => None,
        }
    }

    /// A chunk of `raw` content bytes went out as `wire` bytes; `packed` says whether it
    /// went through the compressor (at `level`, taking `time`).
    pub fn record(&mut self, raw: u64, wire: u64, packed: Option<(i32, Duration)>) {
        self.period.raw += raw;
        self.period.wire += wire;
        self.total_raw += raw;
        self.total_wire += wire;
        if let Some((level, time)) = packed {
            self.period.packed_raw += raw;
            self.period.packed_wire += wire;
            self.period.pack_time += time;
            self.period.packed_level = level;
        }
    }

    /// The sender waited this long on the target.
    pub fn waited(&mut self, d: Duration) {
        self.period.waited += d;
    }

    /// Whether a review is due at `now` (the caller then takes its readings).
    pub fn due(&self, now: Instant) -> bool {
        if self.setting != Compression::Auto {
            return false;
        }
        let Some(started) = self.started else {
            return true;
        };
        let due = if self.total_raw == self.period.raw {
            FIRST_REVIEW
        } else {
            REVIEW_EVERY
        };
        now.saturating_duration_since(started) >= due
    }

    /// Reviews the level if a period is due, with the readings taken now. Returns the new
    /// level when it changed.
    pub fn review(&mut self, now: Instant, readings: Readings) -> Option<Option<i32>> {
        if !self.due(now) {
            return None;
        }
        let Some(started) = self.started else {
            self.start_period(now, readings);
            return None;
        };
        let delta = |now: Option<Duration>, then: Option<Duration>| {
            now.zip(then).map(|(n, t)| n.saturating_sub(t))
        };
        let p = Period {
            elapsed: now.saturating_duration_since(started),
            cpu: delta(readings.cpu, self.at_start.cpu),
            rwnd_limited: delta(readings.rwnd_limited, self.at_start.rwnd_limited),
            link_rate: readings.link_rate,
            ..self.period
        };
        let next = decide(self.level, &p);
        self.start_period(now, readings);
        (next != self.level).then(|| {
            self.level = next;
            next
        })
    }

    fn start_period(&mut self, now: Instant, readings: Readings) {
        self.period = Period::default();
        self.started = Some(now);
        self.at_start = readings;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 1_000_000;

    fn s(x: f64) -> Duration {
        Duration::from_secs_f64(x)
    }

    /// A 2 s period that sent `raw` content bytes as `wire`, `cpu` seconds busy of which
    /// `pack` compressing everything at `level` (0: probes of 1/32 at level 1).
    fn period(raw: u64, ratio: f64, cpu: f64, pack: f64, level: i32) -> Period {
        let wire = (raw as f64 * ratio) as u64;
        let (packed_raw, packed_level) = if level == 0 {
            (raw / 32, MIN_LEVEL)
        } else {
            (raw, level)
        };
        Period {
            elapsed: s(2.0),
            cpu: Some(s(cpu)),
            waited: Duration::ZERO,
            raw,
            wire: if level == 0 { raw } else { wire },
            packed_raw,
            packed_wire: (packed_raw as f64 * ratio) as u64,
            pack_time: s(pack),
            packed_level,
            rwnd_limited: Some(Duration::ZERO),
            link_rate: None,
        }
    }

    #[test]
    fn settings_parse_and_print() {
        for (text, c) in [
            ("auto", Compression::Auto),
            ("off", Compression::Off),
            ("zstd:1", Compression::Zstd(1)),
            ("zstd:3", Compression::Zstd(3)),
        ] {
            assert_eq!(Compression::parse(text), Ok(c));
            assert_eq!(c.to_string(), text);
        }
        for bad in ["zstd:0", "zstd:4", "zstd:", "zstd", "lz4", "ZSTD:1", ""] {
            assert!(Compression::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_link_bound_sender_with_compressible_data_turns_compression_on() {
        // 100 Mbit/s: 25 MB in 2 s raw, the CPU busy 0.2 s of it; probes show 0.36 at
        // 300 MB/s.
        let p = period(25 * MB, 0.36, 0.2, 25.0 / 32.0 / 300.0, 0);
        assert_eq!(decide(None, &p), Some(3));
        // At level 3 the link stays the limit: it stays.
        let p = period(69 * MB, 0.35, 0.9, 69.0 / 230.0, 3);
        assert_eq!(decide(Some(3), &p), Some(3));
    }

    #[test]
    fn a_cpu_bound_sender_keeps_compression_off_on_loopback() {
        // Loopback: 900 MB in 2 s, the thread busy all the time; the data compresses.
        let p = period(900 * MB, 0.36, 2.0, 900.0 / 32.0 / 300.0, 0);
        assert_eq!(decide(None, &p), None);
        // Compressing there (level 1, CPU-bound): back off.
        let p = period(400 * MB, 0.36, 2.0, 400.0 / 300.0, 1);
        assert_eq!(decide(Some(1), &p), None);
    }

    #[test]
    fn a_link_that_outruns_the_compressor_takes_the_cheaper_level() {
        // 1 Gbit/s (TCP measured 125 MB/s), level 3 makes the CPU the limit at 230 MB/s:
        // level 1 delivers more, and no compression far less.
        let mut p = period(400 * MB, 0.35, 2.0, 400.0 / 230.0, 3);
        p.link_rate = Some(125 * MB);
        assert_eq!(decide(Some(3), &p), Some(1));
        // Without the link's rate the CPU-bound sender could only assume no link limit.
        p.link_rate = None;
        assert_eq!(decide(Some(3), &p), None);
    }

    #[test]
    fn incompressible_data_goes_raw() {
        let p = period(25 * MB, 0.999, 0.2, 25.0 / 32.0 / 1000.0, 0);
        assert_eq!(decide(None, &p), None);
        let p = period(25 * MB, 0.999, 0.3, 25.0 / 1000.0, 1);
        assert_eq!(decide(Some(1), &p), None);
    }

    #[test]
    fn too_little_or_the_receiver_as_the_limit_changes_nothing() {
        let mut p = period(25 * MB, 0.36, 0.2, 0.01, 0);
        p.rwnd_limited = Some(s(1.0));
        assert_eq!(decide(None, &p), None);
        assert_eq!(decide(Some(1), &p), Some(1));
        let mut p = period(25 * MB, 0.36, 0.2, 0.01, 0);
        p.raw = 100_000;
        assert_eq!(decide(None, &p), None);
        let mut p = period(25 * MB, 0.36, 0.2, 0.01, 0);
        p.cpu = None;
        assert_eq!(decide(None, &p), None);
        // Waiting on the target's window is not the link holding the sender back.
        let mut p = period(25 * MB, 0.36, 0.2, 0.01, 0);
        p.waited = s(1.8);
        assert_eq!(decide(None, &p), None);
    }

    #[test]
    fn the_chooser_probes_when_off_and_reviews_on_schedule() {
        let mut c = Chooser::new(Compression::Auto, true);
        let plans: Vec<Option<i32>> = (0..64).map(|_| c.plan()).collect();
        assert_eq!(plans.iter().filter(|p| p.is_some()).count(), 2);
        assert_eq!((plans[0], plans[32]), (Some(1), Some(1)));
        let t0 = Instant::now();
        let at = |cpu: f64| Readings {
            cpu: Some(s(cpu)),
            rwnd_limited: Some(Duration::ZERO),
            link_rate: None,
            rtt: None,
        };
        assert!(c.due(t0));
        assert_eq!(c.review(t0, at(0.0)), None);
        // A link-bound second: 12.5 MB raw, probes at 0.36.
        for i in 0..48 {
            let packed = (i % 32 == 0).then_some((1, s(0.001)));
            let wire = if packed.is_some() { 94_000 } else { 262_144 };
            c.record(262_144, wire, packed);
        }
        assert!(!c.due(t0 + s(0.5)));
        assert_eq!(c.review(t0 + s(0.5), at(0.05)), None, "not due");
        assert_eq!(c.review(t0 + s(1.0), at(0.1)), Some(Some(3)));
        assert!(!c.due(t0 + s(2.9)) && c.due(t0 + s(3.0)));
        assert_eq!(c.plan(), Some(3));
        assert_eq!(c.total_raw, 48 * 262_144);
        // Fixed settings never review; off, or a target without zstd, never compresses.
        let mut fixed = Chooser::new(Compression::Zstd(2), true);
        assert_eq!(
            (fixed.plan(), fixed.review(t0, Readings::default())),
            (Some(2), None)
        );
        assert!(!fixed.due(t0));
        let mut off = Chooser::new(Compression::Off, true);
        assert!((0..100).all(|_| off.plan().is_none()));
        let mut old = Chooser::new(Compression::Zstd(3), false);
        assert!((0..100).all(|_| old.plan().is_none()));
    }
}
