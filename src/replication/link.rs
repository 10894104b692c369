//! The link a sending session crosses, as it measures it, and the application windows that
//! follow from it (SPEC 17): how far past what the target confirmed durable a file may run
//! (the `Durable` window), and how many offers may be out at once. Pure: the sender reads
//! the connection's `TCP_INFO` (through `compress::Readings`) and passes the figures and
//! the time in.
//!
//! The windows follow the measured rate and round trip so that no application window caps
//! a transfer below the link (1 Gbit/s at 100 ms is 12.5 MB in flight), and stay no larger
//! than the link needs, because a cut or a crash of the target costs up to one window
//! again (SPEC 17's bound: bytes on the wire ≤ size + 1 % + one window). Without a
//! measurement (before the first, or where the kernel does not tell) SPEC 11's windows
//! (`receiver::window_for`, [`MIN_OFFERS`]) stand. The target needs no word of it: it
//! makes what it holds durable whenever the source could not send another frame within
//! `receiver::window_for`, which any larger window passes too.

use std::time::{Duration, Instant};

use super::receiver::{chunk_for, window_for, MAX_OUTSTANDING};

/// The rate estimate is the largest delivery rate seen in the last 5 to 10 s: rates
/// measured while a window or the application held the sender back understate the link.
const RATE_MEMORY: Duration = Duration::from_secs(10);

/// The link as measured: the largest recent delivery rate and the latest round trip.
#[derive(Debug, Default)]
pub struct Estimate {
    /// The largest rate since `since`, and the largest of the half-memory before it.
    peak: u64,
    older: u64,
    since: Option<Instant>,
    rtt: Duration,
}

impl Estimate {
    /// Records what TCP measured at `now`: its latest delivery rate (content bytes per
    /// second: the caller scales wire bytes by what compression saved) and round trip.
    pub fn record(&mut self, now: Instant, rate: u64, rtt: Duration) {
        self.rtt = rtt;
        let age = self
            .since
            .map_or(RATE_MEMORY, |t| now.saturating_duration_since(t));
        if age >= RATE_MEMORY / 2 {
            self.older = if age >= RATE_MEMORY { 0 } else { self.peak };
            self.peak = 0;
            self.since = Some(now);
        }
        self.peak = self.peak.max(rate);
    }

    /// The link's rate and round trip, once a rate was measured.
    pub fn link(&self) -> Option<Link> {
        let rate = Some(self.peak.max(self.older)).filter(|r| *r > 0)?;
        Some(Link {
            rate,
            rtt: self.rtt,
        })
    }
}

/// How often a session reads its link's figures (`TCP_INFO`).
pub const MEASURE_EVERY: Duration = Duration::from_millis(500);

/// A session's view of its link: the [`Estimate`], and when it was last read.
#[derive(Debug, Default)]
pub struct Meter {
    estimate: Estimate,
    read_at: Option<Instant>,
}

impl Meter {
    /// Whether the figures are to be read at `now` (at most every [`MEASURE_EVERY`]);
    /// true marks them read.
    pub fn due(&mut self, now: Instant) -> bool {
        if self
            .read_at
            .is_some_and(|t| now.saturating_duration_since(t) < MEASURE_EVERY)
        {
            return false;
        }
        self.read_at = Some(now);
        true
    }

    /// Records TCP's latest delivery `rate` (wire bytes per second) and round trip, the
    /// rate scaled to content bytes by `(content, wire)` bytes the session sent so far.
    pub fn record(&mut self, now: Instant, rate: u64, rtt: Duration, (raw, wire): (u64, u64)) {
        let content_per_wire = if wire > 0 && raw > wire {
            raw as f64 / wire as f64
        } else {
            1.0
        };
        let rate = (rate as f64 * content_per_wire) as u64;
        self.estimate.record(now, rate, rtt);
    }

    pub fn link(&self) -> Option<Link> {
        self.estimate.link()
    }
}

/// A measured link: content bytes per second and round trip.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Link {
    pub rate: u64,
    pub rtt: Duration,
}

/// What the target's checkpoint (fdatasync and record) may add to a round trip.
const CHECKPOINT_ALLOWANCE: Duration = Duration::from_millis(100);
/// The most a link may add to a file's window.
pub const MAX_LINK_CHUNK: u64 = 64 * 1024 * 1024;
/// The largest window a measured link gives a file (a file's own SPEC 11 window may be
/// larger: 5 % of a very large file).
pub const MAX_WINDOW: u64 = 256 * 1024 * 1024;

/// What a link needs between the bytes the source sends and the target's confirmation
/// that they are durable: three times what crosses it in a round trip plus a checkpoint
/// (the path, the sockets' buffers, which the kernel sizes to a few round trips, and the
/// bytes written since the target's last checkpoint).
pub fn link_chunk(link: Link) -> u64 {
    let secs = (link.rtt + CHECKPOINT_ALLOWANCE).as_secs_f64();
    let need = 3.0 * link.rate as f64 * secs;
    (need as u64).min(MAX_LINK_CHUNK)
}

/// How far past the offset the target confirmed durable a file of `size` bytes may run:
/// 5 % of it plus a chunk (`receiver::window_for`), the chunk as large as the link needs,
/// never less than `window_for(size)`.
pub fn window(size: u64, link: Option<Link>) -> u64 {
    let chunk = chunk_for(size).max(link.map_or(0, link_chunk));
    (size / 20 + chunk).min(MAX_WINDOW.max(window_for(size)))
}

/// Offers out at once at least, and at most (the target refuses more than
/// `receiver::MAX_OUTSTANDING`).
pub const MIN_OFFERS: usize = 32;
pub const MAX_OFFERS: usize = MAX_OUTSTANDING;

/// How many offers may be out at once so that files of `mean_size` bytes keep the link
/// full while their decisions cross it: twice the files that cross in a round trip.
pub fn offers(link: Option<Link>, mean_size: u64) -> usize {
    let Some(link) = link else {
        return MIN_OFFERS;
    };
    let per_trip = link.rate as f64 * (link.rtt + Duration::from_millis(50)).as_secs_f64();
    let files = (2.0 * per_trip / mean_size.max(1) as f64).ceil() as usize;
    files.clamp(MIN_OFFERS, MAX_OFFERS)
}

/// How many round trips a file's bytes must take at the link's rate before a chunk list's
/// round trip is worth it to a session that found nothing held lately: 32, so that the
/// list's wait costs at most about 3 % of sending the file whole (SPEC 18's bound on what
/// dedup may cost on unique data).
pub const LIST_TRIPS: u32 = 32;

/// Whether a file of `size` bytes takes at least [`LIST_TRIPS`] round trips at the link's
/// rate. Without a measurement, yes (a list's round trip is not known to cost anything).
pub fn list_pays(size: u64, link: Option<Link>) -> bool {
    let Some(link) = link else {
        return true;
    };
    let trip = link.rate as f64 * link.rtt.as_secs_f64();
    size as f64 >= f64::from(LIST_TRIPS) * trip
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 1_000_000;
    const MIB: u64 = 1024 * 1024;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_estimate_keeps_the_largest_recent_rate_and_the_latest_round_trip() {
        let t0 = Instant::now();
        let mut e = Estimate::default();
        assert_eq!(e.link(), None);
        e.record(t0, 5 * MB, ms(100));
        e.record(t0 + ms(500), 12 * MB, ms(110));
        e.record(t0 + ms(900), 3 * MB, ms(120));
        assert_eq!(
            e.link(),
            Some(Link {
                rate: 12 * MB,
                rtt: ms(120)
            })
        );
        // Half a memory later the peak is still known; a whole one later, forgotten.
        e.record(t0 + ms(5_000), 2 * MB, ms(100));
        assert_eq!(e.link().map(|l| l.rate), Some(12 * MB));
        e.record(t0 + ms(15_100), 2 * MB, ms(100));
        assert_eq!(e.link().map(|l| l.rate), Some(2 * MB));
        e.record(t0 + ms(30_000), 0, ms(100));
        assert_eq!(e.link(), None, "a zero rate is no measurement");
    }

    #[test]
    fn the_meter_reads_twice_a_second_and_counts_what_compression_saved() {
        let t0 = Instant::now();
        let mut m = Meter::default();
        assert!(m.due(t0));
        assert!(!m.due(t0 + ms(499)));
        assert!(m.due(t0 + ms(500)));
        // A third of the content on the wire: the link carries three times the content.
        m.record(t0, 10 * MB, ms(50), (300 * MB, 100 * MB));
        assert_eq!(m.link().map(|l| (l.rate, l.rtt)), Some((30 * MB, ms(50))));
        // Content that did not shrink (or nothing sent yet) is taken as it is.
        let mut m = Meter::default();
        m.record(t0, 10 * MB, ms(50), (0, 0));
        assert_eq!(m.link().map(|l| l.rate), Some(10 * MB));
    }

    #[test]
    fn windows_follow_the_link_and_never_cap_a_gigabit_at_100_ms() {
        let gigabit_100ms = Link {
            rate: 125 * MB,
            rtt: ms(100),
        };
        // 12.5 MB are in flight on such a link: a file of any size gets well more than
        // that past its durable offset (SPEC 11's own window gave a 20 MiB file 2 MiB).
        for size in [20 * MIB, 100 * MIB, 1024 * MIB, 100 * 1024 * MIB] {
            let w = window(size, Some(gigabit_100ms));
            assert!(w >= 3 * 12_500_000, "{size}: {w}");
            assert!(w >= window_for(size));
            assert!(w <= MAX_WINDOW.max(window_for(size)));
        }
        assert!(window_for(20 * MIB) < 12_500_000);
        // Without a measurement, or on a slow link, the SPEC 11 window stands.
        let slow = Link {
            rate: 125_000,
            rtt: ms(200),
        };
        for size in [MIB, 20 * MIB, 1024 * MIB] {
            assert_eq!(window(size, None), window_for(size));
            assert_eq!(window(size, Some(slow)), window_for(size));
        }
        // 100 Mbit/s at 50 ms: a few MB, growing with the round trip.
        let p1 = link_chunk(Link {
            rate: 12_500_000,
            rtt: ms(50),
        });
        let p2 = link_chunk(Link {
            rate: 12_500_000,
            rtt: ms(100),
        });
        assert!((5 * MB..6 * MB).contains(&p1), "{p1}");
        assert!(p2 > p1);
        // Loopback rates hit the cap.
        let lo = Link {
            rate: 3_000 * MB,
            rtt: ms(0),
        };
        assert_eq!(link_chunk(lo), MAX_LINK_CHUNK);
        assert_eq!(window(MIB, Some(lo)), MIB / 20 + MAX_LINK_CHUNK);
    }

    #[test]
    fn a_chunk_list_pays_for_files_of_many_round_trips() {
        let p4 = Link {
            rate: 125 * MB,
            rtt: ms(10),
        };
        // 1 Gbit/s at 10 ms: 1.25 MB a round trip, a list pays from 40 MB on.
        assert!(!list_pays(MIB, Some(p4)));
        assert!(!list_pays(39 * MB, Some(p4)));
        assert!(list_pays(40 * MB, Some(p4)));
        assert!(list_pays(1024 * MIB, Some(p4)));
        // Unmeasured: every file. Loopback (3 GB/s, 20 µs): from 2 MB on.
        assert!(list_pays(MIB, None));
        let lo = Link {
            rate: 3_000 * MB,
            rtt: Duration::from_micros(20),
        };
        assert!(list_pays(2 * MB, Some(lo)));
    }

    #[test]
    fn offers_cover_two_round_trips_of_small_files_within_the_targets_cap() {
        assert_eq!(offers(None, 4096), MIN_OFFERS);
        let p2 = Link {
            rate: 12_500_000,
            rtt: ms(100),
        };
        assert_eq!(offers(Some(p2), 256 * 1024), MIN_OFFERS);
        assert_eq!(offers(Some(p2), 16 * 1024), 229);
        assert_eq!(offers(Some(p2), 1024), MAX_OFFERS);
        assert_eq!(offers(Some(p2), 0), MAX_OFFERS);
    }
}
