//! Certificate lifetimes as rules (SPEC 12): when a source renews its certificate (a
//! jittered point between 60 % and 75 % of its lifetime), when a listener certificate is
//! re-issued (two thirds), how a failed renewal is retried (backing off, but still trying
//! until the certificate actually ends), and which certificates deserve a warning. Plain
//! functions over plain numbers, the time passed in; [`expiries`] gathers the
//! certificates those rules (and the metrics) look at, from the store's rows
//! ([`Certified`], kept between changes by [`CertCache`]) and what the caller hands in.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::pki_types::CertificateDer;

use crate::ca::{self, CaSet};
use crate::model::{format_utc, UnixTime};
use crate::store::{CertRecord, Store, StoreError, SystemRecord, TargetRecord};
use crate::sync::lock;

/// A source renews no earlier than this share of its certificate's lifetime...
const RENEW_FROM: f64 = 0.60;
/// ...and no later than this one.
const RENEW_UNTIL: f64 = 0.75;
/// Listener certificates are re-issued at two thirds of their lifetime.
const LISTENER_RENEW_AT: f64 = 2.0 / 3.0;
/// The first retry after a failed renewal; each further failure doubles it.
const RETRY_FIRST: Duration = Duration::from_secs(5);
/// Retries never wait longer than this.
const RETRY_MAX: Duration = Duration::from_secs(600);
/// Near the end, retries come at least this often.
const RETRY_MIN: Duration = Duration::from_secs(1);
/// A certificate ending within this is warned about...
const WARN_WITHIN: i64 = 30 * 86_400;

/// When a source should renew the certificate valid from `not_before` to `not_after`: a
/// point between 60 % and 75 % of its lifetime, chosen by `serial`, so the sources of one
/// target spread out, and one source's plan is the same after every restart.
pub(crate) fn source_renew_at(not_before: UnixTime, not_after: UnixTime, serial: &str) -> UnixTime {
    let share = RENEW_FROM + (RENEW_UNTIL - RENEW_FROM) * unit_of(serial);
    at_share(not_before, not_after, share)
}

/// When a listener certificate valid from `not_before` to `not_after` is re-issued.
pub(crate) fn listener_renew_at(not_before: UnixTime, not_after: UnixTime) -> UnixTime {
    at_share(not_before, not_after, LISTENER_RENEW_AT)
}

fn at_share(not_before: UnixTime, not_after: UnixTime, share: f64) -> UnixTime {
    let lifetime = not_after.saturating_sub(not_before).max(0);
    not_before.saturating_add((lifetime as f64 * share) as i64)
}

/// A stable number in [0, 1) derived from `key`: FNV-1a, then the splitmix64 finalizer
/// so that keys differing in one character land far apart (spread, not secrecy).
fn unit_of(key: &str) -> f64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash = (hash ^ (hash >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    hash = (hash ^ (hash >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    hash ^= hash >> 31;
    (hash >> 11) as f64 / (1u64 << 53) as f64
}

/// How long to wait after `failures` failed renewals in a row (at least one) of a
/// certificate that ends at `not_after`: doubling from 5 s up to 10 minutes, but never
/// more than a quarter of the time left (and at least a second), so the attempts grow
/// more frequent towards the end instead of sleeping through it.
pub(crate) fn retry_wait(failures: u32, now: UnixTime, not_after: UnixTime) -> Duration {
    let backoff = RETRY_FIRST
        .saturating_mul(1u32 << failures.saturating_sub(1).min(10))
        .min(RETRY_MAX);
    let left = u64::try_from(not_after.saturating_sub(now)).unwrap_or(0);
    backoff.min(Duration::from_secs(left / 4)).max(RETRY_MIN)
}

/// A certificate the appliance depends on, as warnings and metrics see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expiry {
    pub kind: CertKind,
    pub not_before: UnixTime,
    pub not_after: UnixTime,
}

/// Which certificate an [`Expiry`] is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CertKind {
    /// The appliance CA.
    Ca,
    /// A listener's server certificate (`api` or `tunnel`).
    Listener(&'static str),
    /// This appliance's client certificate for the target with this id (source side).
    Target(u64),
    /// The client certificate of the paired source with this system id (target side).
    System(u64),
}

impl CertKind {
    /// The metric label and warning subject: `ca`, `api`, `tunnel`, `target`, `system`.
    pub fn label(&self) -> &'static str {
        match self {
            CertKind::Ca => "ca",
            CertKind::Listener(name) => name,
            CertKind::Target(_) => "target",
            CertKind::System(_) => "system",
        }
    }

    /// The id of the target or system, if it is one.
    pub fn id(&self) -> Option<u64> {
        match self {
            CertKind::Target(id) | CertKind::System(id) => Some(*id),
            _ => None,
        }
    }

    fn subject(&self) -> String {
        match self {
            CertKind::Ca => "the appliance CA".into(),
            CertKind::Listener(name) => format!("the {name} listener certificate"),
            CertKind::Target(id) => format!("the certificate for target {id}"),
            CertKind::System(id) => format!("the certificate of system {id}"),
        }
    }

    /// What an admin does about it.
    fn advice(&self, expired: bool) -> &'static str {
        match (self, expired) {
            (CertKind::Ca, false) => {
                "replace it with a CA rollover before then (`replgate ctl ca rollover start`, docs/operations.md)"
            }
            (CertKind::Ca, true) => {
                "every pairing ended with it: pair every source again (docs/operations.md)"
            }
            (CertKind::Listener(_), _) => {
                "it renews while running; check the log for why renewal failed"
            }
            (CertKind::Target(_), false) => {
                "it renews over the tunnel; check that the target is reachable"
            }
            (CertKind::Target(_), true) => {
                "a new pairing request was filed: ask the target's admin to accept it"
            }
            (CertKind::System(_), false) => {
                "the source renews it over the tunnel; check that it is running and can reach this appliance"
            }
            (CertKind::System(_), true) => {
                "the source must file a new request, which replaces this system when accepted"
            }
        }
    }
}

/// What the certificate expiries (and a CA rollover's status) are read from in the
/// store: every stored system with its current certificate's row, and the targets. Its
/// `last_seen` values may be older than the store's (a hello does not make it stale: see
/// [`CertCache`]).
#[derive(Debug)]
pub struct Certified {
    pub systems: Vec<(SystemRecord, Option<CertRecord>)>,
    pub targets: Vec<TargetRecord>,
}

impl Certified {
    /// One read of targets, and one snapshot of systems and their certificates.
    pub fn read(store: &Store) -> Result<Certified, StoreError> {
        Ok(Certified {
            targets: store.targets()?,
            systems: store.systems_with_certs()?,
        })
    }
}

/// The last [`Certified`] read, kept while the store's certificate generation is the one
/// it was read at (`Store::certificate_generation`: a renewal, a pairing, an unpair, a
/// rollover's new certificates, a revocation change it), so that `GET /api/health` and
/// each metrics scrape do not read thousands of systems and certificates again. Time is
/// never cached: what ends when is decided at each call from the rows.
#[derive(Debug, Default)]
pub struct CertCache {
    slot: Mutex<Option<(u64, Arc<Certified>)>>,
}

impl CertCache {
    /// The rows as the store holds them now: the kept ones, or a fresh read.
    pub fn get(&self, store: &Store) -> Result<Arc<Certified>, StoreError> {
        // The generation first: a write that commits during the read below leaves a
        // newer generation than the one kept, so the next call reads again.
        let generation = store.certificate_generation();
        if let Some((g, kept)) = lock(&self.slot).as_ref() {
            if *g == generation {
                return Ok(kept.clone());
            }
        }
        let fresh = Arc::new(Certified::read(store)?);
        *lock(&self.slot) = Some((generation, fresh.clone()));
        Ok(fresh)
    }
}

/// Every certificate this appliance depends on: the CA in force (and a rollover's new CA),
/// the listeners' server certificates (`listeners`: name and leaf), its own client
/// certificates for targets (source side; not for pairings that ended) and the current
/// certificates of its paired sources (target side), from `rows`.
pub(crate) fn expiries(
    rows: &Certified,
    cas: &CaSet,
    listeners: &[(&'static str, CertificateDer<'static>)],
) -> Vec<Expiry> {
    let mut out = Vec::new();
    let mut authorities = vec![cas.current.cert_der()];
    authorities.extend(cas.next.as_ref().map(|n| n.ca.cert_der()));
    for der in authorities {
        if let Ok(info) = ca::cert_info(&der) {
            out.push(Expiry {
                kind: CertKind::Ca,
                not_before: info.not_before,
                not_after: info.not_after,
            });
        }
    }
    for (name, leaf) in listeners {
        if let Ok(info) = ca::cert_info(leaf) {
            out.push(Expiry {
                kind: CertKind::Listener(name),
                not_before: info.not_before,
                not_after: info.not_after,
            });
        }
    }
    for t in &rows.targets {
        if let (false, Some(not_before), Some(not_after)) = (
            t.status.is_final(),
            t.certificate_starts,
            t.certificate_expires,
        ) {
            out.push(Expiry {
                kind: CertKind::Target(t.id),
                not_before,
                not_after,
            });
        }
    }
    for (s, c) in &rows.systems {
        if let (true, Some(c)) = (s.role.is_source(), c) {
            out.push(Expiry {
                kind: CertKind::System(s.id),
                not_before: c.issued_at,
                not_after: c.not_after,
            });
        }
    }
    out
}

/// Whether `e` deserves a warning at `now`: it ends within 30 days, or, for a lifetime
/// shorter than 120 days (a lab's), within the last quarter of it, so that certificates
/// that renew on schedule never warn. An ended one always does.
pub(crate) fn needs_warning(e: &Expiry, now: UnixTime) -> bool {
    let lifetime = e.not_after.saturating_sub(e.not_before).max(0);
    let window = WARN_WITHIN.min(lifetime / 4);
    e.not_after.saturating_sub(now) <= window
}

/// The warnings for `certs` at `now`, in the order given: one sentence each, for the log
/// and `GET /api/health`.
pub(crate) fn warnings(certs: &[Expiry], now: UnixTime) -> Vec<String> {
    certs
        .iter()
        .filter(|e| needs_warning(e, now))
        .map(|e| {
            let expired = e.not_after <= now;
            let when = if expired {
                format!("expired at {}", format_utc(e.not_after))
            } else {
                let days = (e.not_after - now) / 86_400;
                format!(
                    "ends at {} ({})",
                    format_utc(e.not_after),
                    match days {
                        0 => "in less than a day".to_string(),
                        1 => "in 1 day".to_string(),
                        d => format!("in {d} days"),
                    }
                )
            };
            format!("{} {when}: {}", e.kind.subject(), e.kind.advice(expired))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Role;

    const YEAR: i64 = 365 * 86_400;
    const T0: UnixTime = 1_767_225_600;

    fn source(id: u64, serial: &str) -> SystemRecord {
        SystemRecord {
            id,
            name: format!("source {id}"),
            host: "10.0.0.9".into(),
            role: Role::Source,
            system_uuid: Some(format!("uuid-{id}")),
            version: None,
            storage_id: Some(1),
            created: T0,
            updated: T0,
            cert_serial: Some(serial.into()),
            certificate_expires: Some(T0 + YEAR),
            last_seen: None,
            last_serial: None,
            was_managed: false,
            request_id: Some(1),
            asset_tag: None,
            quota_mb: None,
            retention: None,
            share: None,
            copies_uuid: None,
        }
    }

    fn cert(system_id: u64, serial: &str, generation: u64, not_after: UnixTime) -> CertRecord {
        CertRecord {
            serial: serial.into(),
            request_id: 1,
            system_id,
            subject: "s".into(),
            issued_at: T0,
            not_after,
            pem: String::new(),
            revoked_at: None,
            generation,
            renews: None,
            superseded_at: None,
            retired_at: None,
            issuer: None,
        }
    }

    fn system_expiry(rows: &Certified, id: u64) -> Option<UnixTime> {
        rows.systems
            .iter()
            .find(|(s, _)| s.id == id)
            .and_then(|(_, c)| c.as_ref().map(|c| c.not_after))
    }

    /// The cache keeps its rows while nothing they come from changed (a hello moving
    /// `last_seen` does not count), and reads again after a renewal, a new pairing, a
    /// revocation or an unpair.
    #[test]
    fn the_cert_cache_is_read_again_exactly_when_a_certificate_changed() {
        let dir = std::env::temp_dir().join(format!("replgate-certcache-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        crate::fsx::ensure_private_dir(&dir).unwrap();
        let store = Store::open(&dir.join("replgate.redb")).unwrap();
        let cache = CertCache::default();
        store
            .write(|tx| {
                tx.put_system(&source(2, "aa"))?;
                tx.insert_cert(&cert(2, "aa", 1, T0 + YEAR)).map(|_| ())
            })
            .unwrap();
        let first = cache.get(&store).unwrap();
        assert_eq!(system_expiry(&first, 2), Some(T0 + YEAR));
        assert!(Arc::ptr_eq(&first, &cache.get(&store).unwrap()), "kept");

        // A hello: `last_seen` moves, nothing a certificate is read from.
        store
            .write(|tx| {
                let mut row = tx.system(2)?.unwrap();
                row.last_seen = Some(T0 + 60);
                tx.put_system(&row)
            })
            .unwrap();
        assert!(Arc::ptr_eq(&first, &cache.get(&store).unwrap()), "a hello");

        // A renewal: a new certificate, the row naming it.
        store
            .write(|tx| {
                tx.insert_cert(&cert(2, "bb", 2, T0 + 2 * YEAR))?;
                let mut row = tx.system(2)?.unwrap();
                row.cert_serial = Some("bb".into());
                tx.put_system(&row)
            })
            .unwrap();
        let renewed = cache.get(&store).unwrap();
        assert_eq!(system_expiry(&renewed, 2), Some(T0 + 2 * YEAR));

        // The first hello with the new certificate (the rollover's status reads it).
        store
            .write(|tx| {
                let mut row = tx.system(2)?.unwrap();
                row.last_serial = Some("bb".into());
                tx.put_system(&row)
            })
            .unwrap();
        let seen = cache.get(&store).unwrap();
        assert!(!Arc::ptr_eq(&renewed, &seen));
        assert_eq!(seen.systems[0].0.last_serial.as_deref(), Some("bb"));

        // A revocation changes the certificate's row.
        store.write(|tx| tx.revoke("bb", T0 + 100)).unwrap();
        let revoked = cache.get(&store).unwrap();
        assert_eq!(
            revoked.systems[0].1.as_ref().and_then(|c| c.revoked_at),
            Some(T0 + 100)
        );

        // A new pairing, then an unpair.
        store
            .write(|tx| {
                tx.put_system(&source(3, "cc"))?;
                tx.insert_cert(&cert(3, "cc", 1, T0 + YEAR)).map(|_| ())
            })
            .unwrap();
        assert_eq!(
            system_expiry(&cache.get(&store).unwrap(), 3),
            Some(T0 + YEAR)
        );
        store.write(|tx| tx.delete_system(3)).unwrap();
        assert_eq!(system_expiry(&cache.get(&store).unwrap(), 3), None);

        // And the expiries follow the rows: the renewed certificate's end.
        let rows = cache.get(&store).unwrap();
        assert!(rows.systems.iter().all(|(s, _)| s.id == 2));
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn sources_renew_between_sixty_and_seventy_five_percent_the_same_way_every_time() {
        let mut seen = Vec::new();
        for n in 0..200 {
            let serial = format!("{n:032x}");
            let at = source_renew_at(T0, T0 + YEAR, &serial);
            assert!(
                (T0 + YEAR * 60 / 100..=T0 + YEAR * 75 / 100).contains(&at),
                "{n}: {at}"
            );
            assert_eq!(at, source_renew_at(T0, T0 + YEAR, &serial));
            seen.push(at);
        }
        seen.sort_unstable();
        seen.dedup();
        assert!(seen.len() > 150, "jittered, not one point: {}", seen.len());
        let spread = seen.last().unwrap() - seen.first().unwrap();
        assert!(spread > YEAR / 10, "spread over the window: {spread}");
        // A lab certificate of a minute (backdated 6 s) renews 34 to 44 s after issue.
        let at = source_renew_at(T0 - 6, T0 + 60, "ab");
        assert!((T0 + 33..=T0 + 44).contains(&at), "{}", at - T0);
        assert_eq!(listener_renew_at(T0, T0 + 90), T0 + 60);
        assert_eq!(
            listener_renew_at(T0, T0 - 5),
            T0,
            "a nonsense span renews now"
        );
    }

    #[test]
    fn retries_back_off_but_grow_frequent_near_the_end() {
        let far = T0 + YEAR;
        let waits: Vec<u64> = (1..=9).map(|f| retry_wait(f, T0, far).as_secs()).collect();
        assert_eq!(waits, [5, 10, 20, 40, 80, 160, 320, 600, 600]);
        assert_eq!(retry_wait(40, T0, far), Duration::from_secs(600));
        assert_eq!(retry_wait(9, T0, T0 + 100), Duration::from_secs(25));
        assert_eq!(retry_wait(9, T0, T0 + 2), Duration::from_secs(1));
        assert_eq!(retry_wait(9, T0, T0 - 50), Duration::from_secs(1));
    }

    #[test]
    fn warnings_name_what_ends_within_thirty_days_or_the_last_quarter_of_a_lab_lifetime() {
        let day = 86_400;
        let certs = [
            Expiry {
                kind: CertKind::Ca,
                not_before: T0 - 20 * YEAR,
                not_after: T0 + 29 * day,
            },
            Expiry {
                kind: CertKind::Listener("api"),
                not_before: T0 - YEAR,
                not_after: T0 + YEAR,
            },
            Expiry {
                kind: CertKind::Target(4),
                not_before: T0 - 100,
                not_after: T0 - 1,
            },
            // A minute's lab certificate 30 s before its end: renewing on schedule.
            Expiry {
                kind: CertKind::System(3),
                not_before: T0 - 36,
                not_after: T0 + 30,
            },
            Expiry {
                kind: CertKind::System(5),
                not_before: T0 - 56,
                not_after: T0 + 10,
            },
        ];
        let w = warnings(&certs, T0);
        assert_eq!(w.len(), 3, "{w:#?}");
        assert!(
            w[0].starts_with("the appliance CA ends at ") && w[0].contains("(in 29 days)"),
            "{}",
            w[0]
        );
        assert!(
            w[1].starts_with("the certificate for target 4 expired at ")
                && w[1].contains("ask the target's admin to accept it"),
            "{}",
            w[1]
        );
        assert!(
            w[2].starts_with("the certificate of system 5 ends at ")
                && w[2].contains("in less than a day"),
            "{}",
            w[2]
        );
        assert_eq!(CertKind::Listener("tunnel").label(), "tunnel");
        assert_eq!(CertKind::System(5).id(), Some(5));
    }
}
