//! When to try a call again and how long to wait first.
//!
//! Retried: connection failures and resets, timeouts, answers cut short or unparsable,
//! 500, 502, 503 (`SlowDown` among them), 504, 429, and the S3 codes that mean the same
//! (`InternalError`, `ServiceUnavailable`, `SlowDown`, `RequestTimeout`). Each wait is
//! drawn uniformly from the upper half of a doubling delay, capped, so that many
//! uploads backing off from one store do not come back in step.
//!
//! What is never retried blindly is decided by each operation (`objstore` module doc):
//! a retried `CompleteMultipartUpload` that finds the upload gone checks the object
//! instead of reporting either success or failure on faith.

use std::time::Duration;

use crate::rand;

/// How many attempts and how long between them.
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    /// Attempts in all, the first one included. Defaults to 6.
    pub attempts: u32,
    /// The wait before the second attempt (at most; at least half of it). Defaults to
    /// 250 ms; doubles for each later attempt.
    pub base: Duration,
    /// The longest wait. Defaults to 10 s.
    pub cap: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 6,
            base: Duration::from_millis(250),
            cap: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// The wait after failed attempt `n` (1 for the first), jittered.
    pub(super) fn delay(&self, n: u32) -> Duration {
        let full = self
            .base
            .saturating_mul(1u32 << n.saturating_sub(1).min(20))
            .min(self.cap);
        full.mul_f64(0.5 + 0.5 * rand::unit())
    }
}

/// Whether an S3 status and error code mean "try again".
pub(super) fn retryable(status: u16, code: &str) -> bool {
    matches!(status, 429 | 500 | 502 | 503 | 504)
        || matches!(
            code,
            "InternalError" | "ServiceUnavailable" | "SlowDown" | "RequestTimeout"
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_stay_in_their_upper_half_and_stop_at_the_cap() {
        let p = RetryPolicy::default();
        for n in 1..=12 {
            let full = (p.base * (1 << (n - 1))).min(p.cap);
            for _ in 0..50 {
                let d = p.delay(n);
                assert!(d >= full / 2 && d <= full, "attempt {n}: {d:?} vs {full:?}");
            }
        }
        assert!(p.delay(u32::MAX) <= p.cap);
        assert!(retryable(503, "SlowDown") && retryable(400, "RequestTimeout"));
        assert!(!retryable(403, "AccessDenied") && !retryable(404, "NoSuchKey"));
    }
}
