//! Throttle windows and the rate limiter every sending session shares. Pure: the weekday,
//! hour and clock are passed in, so a window boundary is a plain function of the time and
//! the limiter reacts to a new rate at its next call (the sender calls it per frame, and
//! at least every 50 ms while it waits, so a boundary applies within a second).

use crate::store::{ThrottleRecord, ThrottleWindow};

/// Why a throttle setting is refused.
#[derive(Debug, PartialEq, Eq)]
pub struct ThrottleError(pub String);

impl std::fmt::Display for ThrottleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ThrottleError {}

/// Most windows one appliance keeps (an hour per weekday is 168).
pub const MAX_WINDOWS: usize = 200;
/// Fastest link the setting accepts, in Mbit/s (400 GbE).
pub const MAX_LINK_MBPS: u64 = 400_000;

/// Checks a setting as `PUT /api/replication/throttle` would store it.
pub fn validate(t: &ThrottleRecord) -> Result<(), ThrottleError> {
    if t.link_mbps == 0 || t.link_mbps > MAX_LINK_MBPS {
        return Err(ThrottleError(format!(
            "field `link_mbps` must be from 1 to {MAX_LINK_MBPS}"
        )));
    }
    if t.windows.len() > MAX_WINDOWS {
        return Err(ThrottleError(format!(
            "field `throttle` has {} windows, at most {MAX_WINDOWS} are allowed",
            t.windows.len()
        )));
    }
    for (i, w) in t.windows.iter().enumerate() {
        let bad =
            |what: &str, rule: &str| ThrottleError(format!("field `throttle[{i}].{what}` {rule}"));
        if !(1..=100).contains(&w.percentage) {
            return Err(bad("percentage", "must be from 1 to 100"));
        }
        if w.days.is_empty() || w.days.iter().any(|d| *d > 6) {
            return Err(bad("days", "must list weekdays from 0 (Sunday) to 6"));
        }
        if w.start > 23 {
            return Err(bad("start", "must be an hour from 0 to 23"));
        }
        if w.end > 23 {
            return Err(bad("end", "must be an hour from 0 to 23"));
        }
    }
    Ok(())
}

/// Whether `w` covers `weekday` (0 = Sunday) at `hour` (0–23, local time). A window with
/// `start > end` runs past midnight into the next day; `start == end` is the whole day.
pub fn covers(w: &ThrottleWindow, weekday: u8, hour: u32) -> bool {
    let on = |d: u8| w.days.contains(&d);
    let yesterday = (weekday + 6) % 7;
    if w.start == w.end {
        on(weekday)
    } else if w.start < w.end {
        on(weekday) && (w.start..w.end).contains(&hour)
    } else {
        (on(weekday) && hour >= w.start) || (on(yesterday) && hour < w.end)
    }
}

/// The replication rate allowed now in bytes per second, or None (full speed) outside
/// every window. Where windows overlap the lowest percentage wins.
pub fn limit_bps(t: &ThrottleRecord, weekday: u8, hour: u32) -> Option<u64> {
    let pct = t
        .windows
        .iter()
        .filter(|w| covers(w, weekday, hour))
        .map(|w| w.percentage)
        .min()?;
    // Mbit/s to bytes/s: ×10^6 / 8.
    Some((t.link_mbps * 1_000_000 / 8) * u64::from(pct) / 100)
}

/// A token bucket over a clock given in seconds, in bytes on the wire: a sender takes a
/// grant of content bytes and refunds what compression saved. It holds at most a tenth of
/// a second of tokens, so a transfer never bursts far above the rate, and forgets its debt
/// when the rate changes, so a new window applies at once instead of after paying off the
/// old one.
#[derive(Debug, Default)]
pub struct Bucket {
    tokens: f64,
    last: f64,
    rate: Option<u64>,
}

/// The bucket's depth in seconds of the rate.
const DEPTH_S: f64 = 0.1;

impl Bucket {
    /// Grants up to `want` bytes at `now` under `rate` (None: unlimited). Zero means wait
    /// (see [`Bucket::wait_s`]).
    pub fn take(&mut self, now: f64, want: u64, rate: Option<u64>) -> u64 {
        if rate != self.rate {
            self.rate = rate;
            self.tokens = 0.0;
            self.last = now;
        }
        let Some(r) = rate else {
            return want;
        };
        let r = r.max(1) as f64;
        let elapsed = (now - self.last).max(0.0);
        self.last = now;
        self.tokens = (self.tokens + elapsed * r).min(r * DEPTH_S);
        let granted = self.tokens.floor().min(want as f64).max(0.0);
        // Small grants cost a frame each; wait for at least a few KiB unless the rate is
        // so low that a tenth of a second holds less.
        let floor = (4096.0f64).min(r * DEPTH_S).min(want as f64).max(1.0);
        if granted < floor {
            return 0;
        }
        self.tokens -= granted;
        granted as u64
    }

    /// Gives back `bytes` of a grant that cost less on the wire than granted (a frame that
    /// compressed), so the rate holds in wire bytes. Up to the bucket's depth, as ever.
    pub fn refund(&mut self, bytes: u64) {
        if let Some(r) = self.rate {
            self.tokens = (self.tokens + bytes as f64).min(r.max(1) as f64 * DEPTH_S);
        }
    }

    /// How long to wait before asking again for `want` bytes, in seconds (at most 50 ms,
    /// so a changed rate is noticed quickly).
    pub fn wait_s(&self, want: u64) -> f64 {
        match self.rate {
            None => 0.0,
            Some(r) => {
                let r = r.max(1) as f64;
                let need = (want as f64).min(4096.0f64.min(r * DEPTH_S)) - self.tokens;
                (need / r).clamp(0.001, 0.05)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(pct: u32, days: &[u8], start: u32, end: u32) -> ThrottleWindow {
        ThrottleWindow {
            percentage: pct,
            days: days.to_vec(),
            start,
            end,
        }
    }

    #[test]
    fn windows_cover_their_days_and_hours_including_past_midnight() {
        let office = window(10, &[1, 2, 3, 4, 5], 8, 18);
        assert!(covers(&office, 1, 8));
        assert!(covers(&office, 5, 17));
        assert!(!covers(&office, 5, 18));
        assert!(!covers(&office, 0, 12));
        let night = window(50, &[5], 22, 6);
        assert!(covers(&night, 5, 23));
        assert!(
            covers(&night, 6, 5),
            "Saturday early morning belongs to Friday's window"
        );
        assert!(!covers(&night, 6, 6));
        assert!(
            !covers(&night, 5, 5),
            "Friday early morning belongs to Thursday's"
        );
        let all_day = window(5, &[0], 3, 3);
        assert!(covers(&all_day, 0, 0) && covers(&all_day, 0, 23));
        assert!(!covers(&all_day, 1, 0));
    }

    #[test]
    fn the_limit_is_a_percentage_of_the_link_and_the_lowest_window_wins() {
        let t = ThrottleRecord {
            windows: vec![window(50, &[1], 0, 0), window(10, &[1], 9, 10)],
            link_mbps: 100,
        };
        assert_eq!(limit_bps(&t, 1, 8), Some(6_250_000));
        assert_eq!(limit_bps(&t, 1, 9), Some(1_250_000));
        assert_eq!(limit_bps(&t, 2, 9), None);
    }

    #[test]
    fn validation_names_the_field() {
        let mut t = ThrottleRecord {
            windows: vec![window(10, &[1], 8, 18)],
            link_mbps: 100,
        };
        assert!(validate(&t).is_ok());
        t.windows[0].percentage = 0;
        assert!(validate(&t)
            .unwrap_err()
            .0
            .contains("throttle[0].percentage"));
        t.windows[0].percentage = 10;
        t.windows[0].days = vec![7];
        assert!(validate(&t).unwrap_err().0.contains("days"));
        t.windows[0].days = vec![0];
        t.windows[0].end = 24;
        assert!(validate(&t).unwrap_err().0.contains("throttle[0].end"));
        t.windows[0].end = 3;
        t.link_mbps = 0;
        assert!(validate(&t).unwrap_err().0.contains("link_mbps"));
    }

    /// Simulates a sender asking for 64 KiB frames for `secs` seconds at `rate`.
    fn simulate(bucket: &mut Bucket, start: f64, secs: f64, rate: Option<u64>) -> u64 {
        let mut now = start;
        let mut sent = 0;
        while now < start + secs {
            let got = bucket.take(now, 64 * 1024, rate);
            sent += got;
            if got == 0 {
                now += bucket.wait_s(64 * 1024);
            }
        }
        sent
    }

    #[test]
    fn the_bucket_holds_the_rate_and_follows_a_change_at_once() {
        let mut b = Bucket::default();
        let rate = 1_000_000;
        let sent = simulate(&mut b, 0.0, 10.0, Some(rate));
        let got = sent as f64 / 10.0;
        assert!((got - rate as f64).abs() / (rate as f64) < 0.03, "{got}");
        // The window ends: full speed on the very next call.
        assert_eq!(b.take(10.0, 64 * 1024, None), 64 * 1024);
        // A new, lower rate does not inherit credit from the unlimited period.
        let sent = simulate(&mut b, 10.0, 2.0, Some(100_000));
        let got = sent as f64 / 2.0;
        assert!((got - 100_000.0).abs() / 100_000.0 < 0.05, "{got}");
        // A very low rate still moves, in small grants.
        let sent = simulate(&mut b, 12.0, 10.0, Some(1_000));
        assert!((9_000..=11_000).contains(&sent), "{sent}");
    }

    #[test]
    fn what_compression_saved_comes_back_so_the_rate_holds_in_wire_bytes() {
        let rate = Some(100_000);
        let mut b = Bucket::default();
        assert_eq!(b.take(0.0, 1, rate), 0);
        // A tenth of a second holds 10,000 bytes; all of it is granted.
        assert_eq!(b.take(0.1, 50_000, rate), 10_000);
        assert_eq!(b.take(0.1, 50_000, rate), 0);
        // The frame took 4,000 bytes on the wire: 6,000 come back, at once.
        b.refund(6_000);
        assert_eq!(b.take(0.1, 50_000, rate), 6_000);
        // Never past the depth, and nothing when unlimited.
        b.refund(1 << 40);
        assert_eq!(b.take(0.1, 50_000, rate), 10_000);
        let mut free = Bucket::default();
        free.refund(1_000);
        assert_eq!(free.take(0.0, 7, None), 7);
        assert_eq!(free.tokens, 0.0);
    }
}
