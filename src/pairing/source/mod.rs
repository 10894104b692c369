//! Source side of pairing, the one home for it: the rules here, as plain functions over
//! plain types with the time passed in (parse a target address, decide whether its CA is
//! trusted, turn a polled status into the next state, schedule the next poll), and in
//! `request` asking a target and forgetting one, with their I/O passed in. No I/O of its
//! own.

pub mod request;
pub mod rollover;

use std::time::Duration;

use crate::model::UnixTime;
use crate::store::{TargetRecord, TargetStatus};
use crate::wire::protocol::SpoolStatus;

/// The API port of an appliance when the admin gives only a host.
pub const DEFAULT_PORT: u16 = 8443;
/// Error backoff never waits longer than this.
pub const MAX_BACKOFF: Duration = Duration::from_secs(600);
/// The longest wait a target may ask for (`retry_after`); more is clamped to it.
pub const MAX_RETRY_AFTER: u64 = 86_400;

/// A target's `retry_after`, bounded so a broken or hostile peer cannot stall or overflow
/// the schedule.
pub fn clamp_retry_after(seconds: u64) -> u64 {
    seconds.min(MAX_RETRY_AFTER)
}

/// Checks the spool path a target told us to poll: exactly
/// `/replication/v1/spool/<token>/`, so it can only ever name a spool entry on that target.
pub fn valid_poll_path(poll: &str) -> bool {
    poll.strip_prefix("/replication/v1/spool/")
        .and_then(|rest| rest.strip_suffix('/'))
        .and_then(crate::wire::protocol::SpoolToken::parse)
        .is_some()
}

/// Normalizes `host[:port]` to `host:port` (IPv6 in brackets); None if it is not one.
pub fn parse_target(input: &str) -> Option<String> {
    let s = input.trim();
    if s.is_empty() || s.len() > 260 {
        return None;
    }
    if let Ok(ip) = s.parse::<std::net::Ipv6Addr>() {
        return Some(format!("[{ip}]:{DEFAULT_PORT}"));
    }
    if let Ok(addr) = s.parse::<std::net::SocketAddr>() {
        return (addr.port() != 0).then(|| addr.to_string());
    }
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) => (h, p.parse::<u16>().ok().filter(|p| *p != 0)?),
        None => (s, DEFAULT_PORT),
    };
    let valid = !host.is_empty()
        && host.len() <= 253
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        && !host.starts_with('-')
        && !host.starts_with('.');
    valid.then(|| format!("{}:{port}", host.to_ascii_lowercase()))
}

/// Whether `target` names the stored `host:port` (a bare host matches its default port).
pub fn same_target(stored: &str, given: &str) -> bool {
    parse_target(given).is_some_and(|g| g == stored)
}

/// Why a presented CA is not trusted.
#[derive(Debug, PartialEq, Eq)]
pub enum Distrust {
    /// Nothing pinned and no fingerprint given: the admin must compare and confirm.
    Unknown,
    /// A fingerprint was given (or pinned) and the presented CA is another one.
    Mismatch { expected: String },
}

/// Trust rules for the presented CA: a pinned or given fingerprint must match exactly;
/// `insecure` trusts whatever is presented (trust on first use).
pub fn trust(
    presented: &str,
    given: Option<&str>,
    insecure: bool,
    pinned: Option<&str>,
) -> Result<(), Distrust> {
    if let Some(expected) = given.or(pinned) {
        return if expected == presented {
            Ok(())
        } else {
            Err(Distrust::Mismatch {
                expected: expected.to_string(),
            })
        };
    }
    if insecure {
        Ok(())
    } else {
        Err(Distrust::Unknown)
    }
}

/// What the poller must do after reading `status.json`.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Nothing to change beyond `last_poll`.
    Wait,
    /// Fetch, check and install the certificate, then prove the tunnel at this address.
    Install { tunnel: String },
    /// The delivered certificate is installed already (or renewed since): prove the tunnel
    /// with the installed one.
    Prove { tunnel: String },
    /// Record a new status (a final outcome, or back to pending after a failure).
    Record {
        status: TargetStatus,
        message: Option<String>,
    },
}

pub fn step(current: &TargetRecord, polled: &SpoolStatus) -> Step {
    match polled {
        // The target answers as itself again after a failed check: the request is open.
        SpoolStatus::Pending { .. } if current.status == TargetStatus::Failed => Step::Record {
            status: TargetStatus::Pending,
            message: None,
        },
        SpoolStatus::Pending { .. } => Step::Wait,
        SpoolStatus::Accepted { tunnel, .. } => match current.status {
            TargetStatus::Complete => Step::Wait,
            _ if parse_target(tunnel).is_none() => Step::Record {
                status: TargetStatus::Failed,
                message: Some(format!(
                    "the target named an invalid tunnel address {:?}",
                    tunnel.chars().take(80).collect::<String>()
                )),
            },
            _ if current.is_installed() => Step::Prove {
                tunnel: tunnel.clone(),
            },
            _ => Step::Install {
                tunnel: tunnel.clone(),
            },
        },
        SpoolStatus::Rejected { message } => Step::Record {
            status: TargetStatus::Rejected,
            message: Some(message.clone()),
        },
        SpoolStatus::Expired => Step::Record {
            status: TargetStatus::Expired,
            message: None,
        },
        SpoolStatus::Revoked => Step::Record {
            status: TargetStatus::Revoked,
            message: Some("the target revoked this pairing".into()),
        },
    }
}

/// When to poll next. `unit` in [0, 1) is the random draw for jitter; jitter only shortens
/// the interval (by up to 20%), so "complete within one poll interval plus a second" holds.
/// `failures` counts consecutive network errors: each doubles the wait, up to `MAX_BACKOFF`.
/// None when the pairing is final and needs no polling.
pub fn next_poll(
    r: &TargetRecord,
    poll_interval: Duration,
    heartbeat: Duration,
    failures: u32,
    unit: f64,
) -> Option<Duration> {
    if r.status.is_final() {
        return None;
    }
    let base = match r.status {
        TargetStatus::Complete => heartbeat,
        _ => poll_interval.max(Duration::from_secs(clamp_retry_after(r.retry_after))),
    };
    let backed_off = if failures == 0 {
        base
    } else {
        base.saturating_mul(1u32 << failures.min(10))
            .min(MAX_BACKOFF.max(base))
    };
    let factor = 1.0 - 0.2 * unit.clamp(0.0, 1.0);
    Some(backed_off.mul_f64(factor))
}

/// What the installed certificate of a pairing needs now (SPEC 12), if anything.
#[derive(Debug, PartialEq, Eq)]
pub enum Upkeep {
    /// A renewed generation is installed but not yet proven: say hello with it.
    Prove { generation: u64 },
    /// Renew over the tunnel (the key of `next_key`, or a new one).
    Renew,
    /// The certificate ended: file a new request (replacing this system on the target).
    Refile,
}

/// The upkeep due at `now` for `r`; None when nothing is due (or the pairing has nothing
/// installed, is waiting for its admin, or ended). A renewed generation not yet proven
/// comes first; an expired certificate cannot renew, so it files again.
pub fn upkeep(r: &TargetRecord, now: UnixTime) -> Option<Upkeep> {
    if r.status.is_final() || r.status == TargetStatus::Pending || !r.is_installed() {
        return None;
    }
    let tunnel_known = r.tunnel.is_some();
    if let Some(generation) = r.previous_generation.map(|_| r.generation) {
        return tunnel_known.then_some(Upkeep::Prove { generation });
    }
    let (starts, expires) = (r.certificate_starts?, r.certificate_expires?);
    if now >= expires {
        return Some(Upkeep::Refile);
    }
    let serial = r.cert_serial.as_deref().unwrap_or("");
    let due = now >= crate::lifecycle::source_renew_at(starts, expires, serial);
    (due && tunnel_known).then_some(Upkeep::Renew)
}

/// Applies a final outcome or a failure message to a record.
pub fn finish(r: &mut TargetRecord, status: TargetStatus, message: Option<String>, now: UnixTime) {
    r.status = status;
    r.message = message;
    r.updated = now;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(status: TargetStatus) -> TargetRecord {
        TargetRecord {
            status,
            ..TargetRecord::fixture(1)
        }
    }

    #[test]
    fn peer_supplied_paths_and_waits_are_bounded() {
        assert!(valid_poll_path(
            "/replication/v1/spool/0123456789abcdef0123456789abcdef/"
        ));
        for bad in [
            "@evil:443/",
            "/replication/v1/spool/../",
            "/replication/v1/spool/0123456789abcdef0123456789abcdef",
            "//evil/replication/v1/spool/0123456789abcdef0123456789abcdef/",
        ] {
            assert!(!valid_poll_path(bad), "{bad}");
        }
        let mut r = record(TargetStatus::Pending);
        r.retry_after = u64::MAX;
        let wait = next_poll(
            &r,
            Duration::from_secs(30),
            Duration::from_secs(300),
            0,
            0.0,
        )
        .unwrap();
        assert_eq!(wait, Duration::from_secs(MAX_RETRY_AFTER));
        assert!(std::time::Instant::now().checked_add(wait).is_some());
    }

    #[test]
    fn targets_are_normalized() {
        assert_eq!(
            parse_target("Backup.Example").as_deref(),
            Some("backup.example:8443")
        );
        assert_eq!(
            parse_target("10.0.0.1:9443").as_deref(),
            Some("10.0.0.1:9443")
        );
        assert_eq!(parse_target("::1").as_deref(), Some("[::1]:8443"));
        assert_eq!(parse_target("[::1]:9000").as_deref(), Some("[::1]:9000"));
        for bad in ["", "a b", "host:0", "host:99999", "-x", "x/y", "http://x"] {
            assert_eq!(parse_target(bad), None, "{bad}");
        }
        assert!(same_target("backup.example:8443", "BACKUP.example"));
    }

    #[test]
    fn trust_needs_a_matching_fingerprint_or_insecure() {
        assert_eq!(trust("aa", None, false, None), Err(Distrust::Unknown));
        assert_eq!(trust("aa", None, true, None), Ok(()));
        assert_eq!(trust("aa", Some("aa"), false, None), Ok(()));
        assert_eq!(
            trust("aa", Some("bb"), true, None),
            Err(Distrust::Mismatch {
                expected: "bb".into()
            })
        );
        assert_eq!(
            trust("aa", None, true, Some("bb")),
            Err(Distrust::Mismatch {
                expected: "bb".into()
            })
        );
    }

    #[test]
    fn polled_status_drives_the_state() {
        let pending = record(TargetStatus::Pending);
        let open = SpoolStatus::Pending {
            retry_after: 1,
            expires: 9,
        };
        assert_eq!(step(&pending, &open), Step::Wait);
        assert_eq!(
            step(&record(TargetStatus::Failed), &open),
            Step::Record {
                status: TargetStatus::Pending,
                message: None
            }
        );
        let accepted = SpoolStatus::Accepted {
            certificate: "c".into(),
            ca: "a".into(),
            tunnel: "t:8444".into(),
            replaces_system_id: None,
        };
        assert_eq!(
            step(&pending, &accepted),
            Step::Install {
                tunnel: "t:8444".into()
            }
        );
        assert_eq!(
            step(&record(TargetStatus::Failed), &accepted),
            Step::Install {
                tunnel: "t:8444".into()
            }
        );
        assert_eq!(step(&record(TargetStatus::Complete), &accepted), Step::Wait);
        // Installed before (and renewed since): a failed poll in between does not bring the
        // original delivery back, the installed certificate is proven again.
        let mut renewed = record(TargetStatus::Failed);
        renewed.cert_serial = Some("ab".into());
        renewed.generation = 2;
        assert_eq!(
            step(&renewed, &accepted),
            Step::Prove {
                tunnel: "t:8444".into()
            }
        );
        // A new request after an expired certificate installs its delivery.
        renewed.request_generation = 3;
        renewed.status = TargetStatus::Pending;
        assert_eq!(
            step(&renewed, &accepted),
            Step::Install {
                tunnel: "t:8444".into()
            }
        );
        assert!(matches!(
            step(&record(TargetStatus::Complete), &SpoolStatus::Revoked),
            Step::Record {
                status: TargetStatus::Revoked,
                ..
            }
        ));
        assert_eq!(
            step(
                &pending,
                &SpoolStatus::Rejected {
                    message: "no".into()
                }
            ),
            Step::Record {
                status: TargetStatus::Rejected,
                message: Some("no".into())
            }
        );
    }

    #[test]
    fn installed_certificates_renew_on_plan_prove_first_and_file_again_once_expired() {
        let mut r = record(TargetStatus::Complete);
        assert_eq!(upkeep(&r, 0), None, "nothing installed");
        r.cert_serial = Some("ab".into());
        r.tunnel = Some("t:8444".into());
        r.certificate_starts = Some(1_000);
        r.certificate_expires = Some(2_000);
        let at = crate::lifecycle::source_renew_at(1_000, 2_000, "ab");
        assert_eq!(upkeep(&r, at - 1), None);
        assert_eq!(upkeep(&r, at), Some(Upkeep::Renew));
        assert_eq!(upkeep(&r, 1_999), Some(Upkeep::Renew), "until the very end");
        assert_eq!(upkeep(&r, 2_000), Some(Upkeep::Refile));
        assert_eq!(r.generations_in_use(), [0]);
        r.previous_generation = Some(0);
        r.generation = 1;
        assert_eq!(upkeep(&r, 2_000), Some(Upkeep::Prove { generation: 1 }));
        assert_eq!(r.generations_in_use(), [0, 1], "the old one until proven");
        r.previous_generation = None;
        assert_eq!(
            r.generations_in_use(),
            [1],
            "the first request's key is done with"
        );
        assert_eq!(r.fresh_generation(), 2);
        r.previous_generation = Some(0);
        for status in [
            TargetStatus::Revoked,
            TargetStatus::Rejected,
            TargetStatus::Pending,
        ] {
            r.status = status;
            assert_eq!(upkeep(&r, at), None, "{status:?}");
        }
        r.status = TargetStatus::Complete;
        r.previous_generation = None;
        r.request_generation = 2;
        assert_eq!(
            upkeep(&r, 2_000),
            None,
            "a new request is open: its admin decides"
        );
    }

    #[test]
    fn polls_are_jittered_down_backed_off_and_stop_when_final() {
        let p = Duration::from_secs(30);
        let h = Duration::from_secs(300);
        let mut r = record(TargetStatus::Pending);
        assert_eq!(next_poll(&r, p, h, 0, 0.0), Some(p));
        let j = next_poll(&r, p, h, 0, 0.999).unwrap();
        assert!(j >= Duration::from_secs(24) && j <= p);
        r.retry_after = 60;
        assert_eq!(next_poll(&r, p, h, 0, 0.0), Some(Duration::from_secs(60)));
        assert_eq!(next_poll(&r, p, h, 2, 0.0), Some(Duration::from_secs(240)));
        assert_eq!(next_poll(&r, p, h, 20, 0.0), Some(MAX_BACKOFF));
        assert_eq!(
            next_poll(&record(TargetStatus::Complete), p, h, 0, 0.0),
            Some(h)
        );
        assert_eq!(
            next_poll(&record(TargetStatus::Rejected), p, h, 0, 0.0),
            None
        );
    }
}
