//! What the fleet measures, as plain data: latency samples with their percentiles,
//! Jain's fairness index, the time a late source takes to reach its share, and a
//! process's resident memory, threads and descriptors read from /proc.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Latency samples of one kind of call (microseconds), and its outcomes.
#[derive(Default)]
pub struct Endpoint {
    samples: Mutex<Vec<u32>>,
    /// Calls answered with the expected status.
    pub ok: AtomicU64,
    /// Calls answered with another status (counted by class in `statuses`).
    pub refused: AtomicU64,
    /// TLS handshakes that failed (or connections broken during one).
    pub handshake_failures: AtomicU64,
    /// Connect failures and broken requests after the handshake.
    pub errors: AtomicU64,
    statuses: Mutex<BTreeMap<u16, u64>>,
    last_error: Mutex<Option<String>>,
}

impl Endpoint {
    pub fn record(&self, took: Duration) {
        let us = took.as_micros().min(u128::from(u32::MAX)) as u32;
        lock(&self.samples).push(us);
        self.ok.fetch_add(1, Ordering::Relaxed);
    }

    pub fn refused(&self, status: u16, took: Duration) {
        let us = took.as_micros().min(u128::from(u32::MAX)) as u32;
        lock(&self.samples).push(us);
        self.refused.fetch_add(1, Ordering::Relaxed);
        *lock(&self.statuses).entry(status).or_default() += 1;
    }

    pub fn failed(&self, handshake: bool, error: String) {
        if handshake {
            self.handshake_failures.fetch_add(1, Ordering::Relaxed);
        } else {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        *lock(&self.last_error) = Some(error);
    }

    /// Everything recorded so far, sorted.
    pub fn sorted(&self) -> Vec<u32> {
        let mut v = lock(&self.samples).clone();
        v.sort_unstable();
        v
    }

    /// `<prefix>_n`, `_p50_ms`, `_p99_ms`, `_max_ms`, `_refused`, `_hs_fail`, `_errors`
    /// lines.
    pub fn report(&self, prefix: &str) -> String {
        let v = self.sorted();
        let mut out = format!(
            "{prefix}_n={}\n{prefix}_p50_ms={:.2}\n{prefix}_p99_ms={:.2}\n{prefix}_max_ms={:.2}\n",
            v.len(),
            percentile(&v, 0.50) as f64 / 1000.0,
            percentile(&v, 0.99) as f64 / 1000.0,
            v.last().copied().unwrap_or(0) as f64 / 1000.0,
        );
        out.push_str(&format!(
            "{prefix}_refused={}\n{prefix}_hs_fail={}\n{prefix}_errors={}\n",
            self.refused.load(Ordering::Relaxed),
            self.handshake_failures.load(Ordering::Relaxed),
            self.errors.load(Ordering::Relaxed)
        ));
        let statuses = lock(&self.statuses);
        if !statuses.is_empty() {
            let s: Vec<String> = statuses.iter().map(|(k, v)| format!("{k}:{v}")).collect();
            out.push_str(&format!("{prefix}_statuses={}\n", s.join(",")));
        }
        if let Some(e) = lock(&self.last_error).as_ref() {
            out.push_str(&format!("{prefix}_last_error={e}\n"));
        }
        out
    }
}

pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The `q` quantile of sorted samples (nearest rank); 0 when empty.
pub fn percentile<T: Copy + Default>(sorted: &[T], q: f64) -> T {
    if sorted.is_empty() {
        return T::default();
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Jain's fairness index of `rates`: (Σx)² / (n·Σx²), 1 when all are equal, 1/n when one
/// has everything. 1 for an empty or all-zero set (nobody is treated unequally).
pub fn jain(rates: &[f64]) -> f64 {
    let n = rates.len() as f64;
    let sum: f64 = rates.iter().sum();
    let squares: f64 = rates.iter().map(|x| x * x).sum();
    if n == 0.0 || squares == 0.0 {
        return 1.0;
    }
    sum * sum / (n * squares)
}

/// Jain's index of each source's mean rate over consecutive windows of `window` samples
/// (one sample per second per source, all series the same length). A trailing window
/// shorter than half of `window` is left out.
pub fn jain_windows(series: &BTreeMap<u64, Vec<f64>>, window: usize) -> Vec<f64> {
    let len = series.values().map(Vec::len).max().unwrap_or(0);
    let mut out = Vec::new();
    let mut start = 0;
    while start < len {
        let end = (start + window).min(len);
        if end - start < window.div_ceil(2) && !out.is_empty() {
            break;
        }
        let rates: Vec<f64> = series
            .values()
            .map(|s| {
                let part = &s[start.min(s.len())..end.min(s.len())];
                part.iter().sum::<f64>() / (end - start) as f64
            })
            .collect();
        out.push(jain(&rates));
        start = end;
    }
    out
}

/// Seconds from `from` (an index into the series) until the late source's rate, averaged
/// over `smooth` seconds, first reaches `fraction` of an equal share of the total rate
/// among the sources sending then; None if it never does.
pub fn time_to_share(
    series: &BTreeMap<u64, Vec<f64>>,
    late: u64,
    from: usize,
    smooth: usize,
    fraction: f64,
) -> Option<usize> {
    let mine = series.get(&late)?;
    let len = mine.len();
    let smooth = smooth.max(1);
    for t in from..len {
        let lo = (t + 1).saturating_sub(smooth).max(from);
        let span = (t + 1 - lo) as f64;
        let avg = |s: &Vec<f64>| s[lo..=t.min(s.len() - 1)].iter().sum::<f64>() / span;
        let own = avg(mine);
        let total: f64 = series.values().filter(|s| s.len() > t).map(avg).sum();
        let sending = series
            .values()
            .filter(|s| s.len() > t && avg(s) > 0.0)
            .count()
            .max(1);
        if own > 0.0 && own >= fraction * total / sending as f64 {
            return Some(t - from);
        }
    }
    None
}

/// A process as /proc shows it: resident memory (KiB), threads, open descriptors.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcSample {
    pub rss_kib: u64,
    pub threads: u64,
    pub fds: u64,
    /// User plus system CPU time so far, in clock ticks.
    pub cpu_ticks: u64,
}

pub fn proc_sample(pid: u32) -> Option<ProcSample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count() as u64)
        .unwrap_or(0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    Some(ProcSample {
        rss_kib: field("VmRSS:"),
        threads: field("Threads:"),
        fds,
        // utime and stime are fields 14 and 15 of stat; 11 and 12 after "(comm) ".
        cpu_ticks: num(11) + num(12),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jain_is_one_for_equal_and_one_over_n_for_one_hog() {
        assert!((jain(&[5.0, 5.0, 5.0, 5.0]) - 1.0).abs() < 1e-9);
        assert!((jain(&[8.0, 0.0, 0.0, 0.0]) - 0.25).abs() < 1e-9);
    }
}
