//! Certificate renewal, target side: a paired source renews its certificate over the
//! tunnel, authenticated by the certificate it renews (SPEC 12). The pairing is checked
//! again before anything is signed (system row present, the presented serial its current
//! one, not revoked, not expired); the new certificate is signed before the transaction,
//! and recorded as the next generation of the system's lineage in one transaction with
//! the superseding of the old one. Also ends grace windows. Writes no files; the time is
//! passed in.
//!
//! Invariants:
//! - A revoked, retired, expired or superseded certificate is never renewed. The one
//!   answer a superseded certificate gets is the successor that was issued for it, and
//!   only for a CSR with that successor's key (the source retrying a renewal whose answer
//!   it lost): nothing is signed twice for one renewal.
//! - A renewal needs a new key: a CSR for the presented certificate's own key is refused.
//! - The renewed certificate has the same subject as the one it renews (the source's
//!   `system_uuid`) and a new random serial; nothing else comes from the CSR.
//! - Renewals are bounded: a certificate that a renewal issued is renewed only once it is
//!   [`renewal_gap`] old (half its lifetime, at most an hour; a source renews at 60 to
//!   75 % of it) unless another CA than the one signing now issued it (a CA rollover asks
//!   its sources to renew at once), and the tunnel takes at most [`ATTEMPTS`] renewal calls per certificate
//!   in [`ATTEMPT_WINDOW`] seconds ([`Attempts`]); past either the answer is 429 with the
//!   wait in `Retry-After`.

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use crate::ca::{self, Ca, CsrError};
use crate::model::UnixTime;
use crate::pairing::error::time_of;
use crate::store::{AuditRecord, CertRecord, Store, StoreError, SystemRecord, Txn};
use crate::sync::lock;

/// The longest wait before a certificate a renewal issued may be renewed again.
pub const MAX_RENEWAL_GAP: i64 = 3_600;
/// Renewal calls the tunnel takes per certificate within [`ATTEMPT_WINDOW`] seconds.
pub const ATTEMPTS: u32 = 6;
pub const ATTEMPT_WINDOW: i64 = 60;

/// How old `cert` (issued by a renewal) must be before it is renewed: half its lifetime,
/// at most [`MAX_RENEWAL_GAP`]. A source renews at 60 to 75 % of the lifetime, so it
/// never meets the bound; a source that renews again and again does, at once.
pub fn renewal_gap(cert: &CertRecord) -> i64 {
    (cert.not_after.saturating_sub(cert.issued_at) / 2).clamp(0, MAX_RENEWAL_GAP)
}

/// The renewal calls each certificate made in its current window, in memory: a source
/// that calls `/tunnel/v1/renew` in a loop is answered 429 without a CSR being parsed or
/// the database read.
#[derive(Debug, Default)]
pub struct Attempts {
    seen: Mutex<HashMap<String, (UnixTime, u32)>>,
}

/// Certificates whose windows are remembered before the ended ones are dropped.
const REMEMBERED: usize = 4_096;

impl Attempts {
    /// Counts one call with `serial` at `now`; past [`ATTEMPTS`] in its window, the
    /// seconds until the window ends.
    pub fn admit(&self, serial: &str, now: UnixTime) -> Result<(), u64> {
        let mut seen = lock(&self.seen);
        if seen.len() >= REMEMBERED {
            seen.retain(|_, (start, _)| now.saturating_sub(*start) < ATTEMPT_WINDOW);
        }
        let (start, count) = seen.entry(serial.to_string()).or_insert((now, 0));
        if now.saturating_sub(*start) >= ATTEMPT_WINDOW || now < *start {
            *start = now;
            *count = 0;
        }
        if *count >= ATTEMPTS {
            let left = start.saturating_add(ATTEMPT_WINDOW).saturating_sub(now);
            return Err(u64::try_from(left).unwrap_or(1).max(1));
        }
        *count += 1;
        Ok(())
    }
}

/// What renewing works with, borrowed from the caller.
pub struct RenewSide<'a> {
    pub store: &'a Store,
    pub ca: &'a Ca,
    /// Lifetime of the renewed certificate (`certificate_days` / `certificate_seconds`).
    pub client_lifetime: Duration,
    /// How long the renewed certificate stays valid when the source does not prove the
    /// new one first (`renew_grace`).
    pub grace: Duration,
}

/// A renewal the target answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Renewed {
    pub system_id: u64,
    /// The certificate that authenticated the renewal.
    pub previous: String,
    pub serial: String,
    pub not_after: UnixTime,
    pub cert_pem: String,
    pub generation: u64,
    /// True when this answer hands back a certificate issued earlier for the same key.
    pub repeated: bool,
}

/// Why a renewal was refused, grouped by what the source can do.
#[derive(Debug)]
pub enum RenewError {
    /// The certificate was not issued here, or its system is no longer paired.
    NotPaired {
        serial: String,
    },
    /// The certificate is revoked (unpaired, or replaced by a new pairing).
    Revoked {
        serial: String,
    },
    /// Its grace ended after a renewal: it no longer opens the tunnel.
    Retired {
        serial: String,
    },
    /// It has ended; only a new pairing request can replace it.
    Expired {
        serial: String,
        not_after: UnixTime,
    },
    /// It was already renewed, by `by`; the source must use that one.
    Superseded {
        serial: String,
        by: String,
    },
    /// The CSR asks for the key of the certificate it renews.
    SameKey,
    /// The certificate was itself issued by a renewal less than [`renewal_gap`] ago.
    TooSoon {
        serial: String,
        retry_after: u64,
    },
    Csr(CsrError),
    Ca(ca::CaError),
    /// The time handed in is outside what a certificate can carry.
    Clock(UnixTime),
    Store(StoreError),
}

impl fmt::Display for RenewError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RenewError::NotPaired { serial } => {
                write!(f, "certificate {serial} belongs to no paired system")
            }
            RenewError::Revoked { serial } => {
                write!(f, "certificate {serial} is revoked and is never renewed")
            }
            RenewError::Retired { serial } => write!(
                f,
                "certificate {serial} was renewed and its grace has ended; it is never renewed again"
            ),
            RenewError::Expired { serial, not_after } => write!(
                f,
                "certificate {serial} expired at {}; file a new pairing request",
                crate::model::format_utc(*not_after)
            ),
            RenewError::Superseded { serial, by } => write!(
                f,
                "certificate {serial} was already renewed (by {by}); renew with that one"
            ),
            RenewError::SameKey => {
                f.write_str("field `csr` asks for the key being renewed; a renewal needs a new key")
            }
            RenewError::TooSoon {
                serial,
                retry_after,
            } => write!(
                f,
                "certificate {serial} was issued by a renewal moments ago; it may be renewed in \
                 {retry_after} s"
            ),
            RenewError::Csr(_) => f.write_str("field `csr`"),
            RenewError::Ca(_) => f.write_str("sign the renewed certificate"),
            RenewError::Clock(now) => write!(
                f,
                "the clock reads unix time {now}, outside the dates a certificate can carry"
            ),
            RenewError::Store(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for RenewError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            RenewError::Csr(e) => Some(e),
            RenewError::Ca(e) => Some(e),
            RenewError::Store(e) => e.source(),
            _ => None,
        }
    }
}

impl From<StoreError> for RenewError {
    fn from(e: StoreError) -> Self {
        RenewError::Store(e)
    }
}

/// What the stored state says to do with a renewal.
#[derive(Debug, PartialEq, Eq)]
enum Plan {
    /// Sign a new certificate for the CSR's key.
    Issue,
    /// The presented certificate's successor was issued for this very key: hand it back.
    Repeat(Box<CertRecord>),
}

/// The state a renewal is judged on, read in one transaction.
struct Judged {
    presented: CertRecord,
    row: SystemRecord,
    plan: Plan,
}

/// The two reads a renewal is judged on, from a read snapshot or the write in progress.
trait View {
    fn cert(&self, serial: &str) -> Result<Option<CertRecord>, StoreError>;
    fn system(&self, id: u64) -> Result<Option<SystemRecord>, StoreError>;
}

impl View for Store {
    fn cert(&self, serial: &str) -> Result<Option<CertRecord>, StoreError> {
        Store::cert(self, serial)
    }
    fn system(&self, id: u64) -> Result<Option<SystemRecord>, StoreError> {
        Store::system(self, id)
    }
}

impl View for Txn {
    fn cert(&self, serial: &str) -> Result<Option<CertRecord>, StoreError> {
        Txn::cert(self, serial)
    }
    fn system(&self, id: u64) -> Result<Option<SystemRecord>, StoreError> {
        Txn::system(self, id)
    }
}

/// The renewal rules over the stored state (see the module invariants).
fn judge(
    tx: &impl View,
    serial: &str,
    csr_fingerprint: &str,
    signing: &str,
    now: UnixTime,
) -> Result<Judged, RenewError> {
    let not_paired = || RenewError::NotPaired {
        serial: serial.to_string(),
    };
    let presented = tx.cert(serial)?.ok_or_else(not_paired)?;
    if presented.revoked_at.is_some() {
        return Err(RenewError::Revoked {
            serial: serial.to_string(),
        });
    }
    if presented.retired_at.is_some() {
        return Err(RenewError::Retired {
            serial: serial.to_string(),
        });
    }
    if presented.not_after <= now {
        return Err(RenewError::Expired {
            serial: serial.to_string(),
            not_after: presented.not_after,
        });
    }
    let row = tx
        .system(presented.system_id)?
        .filter(|r| r.role.is_source())
        .ok_or_else(not_paired)?;
    let current = row.cert_serial.clone().ok_or_else(not_paired)?;
    let key_of = |c: &CertRecord| {
        ca::cert_pem_to_der(&c.pem)
            .and_then(|der| ca::cert_info(&der))
            .map(|i| i.key_fingerprint)
            .ok()
    };
    if current == serial {
        if key_of(&presented).as_deref() == Some(csr_fingerprint) {
            return Err(RenewError::SameKey);
        }
        // The gap bounds a source renewing again and again; a certificate of another CA
        // than the one signing now (a CA rollover, or its abort) is asked to renew at
        // once, and may.
        let other_ca = presented.issuer.as_deref().is_some_and(|i| i != signing);
        if presented.renews.is_some() && !other_ca {
            let due = presented.issued_at.saturating_add(renewal_gap(&presented));
            if now < due {
                return Err(RenewError::TooSoon {
                    serial: serial.to_string(),
                    retry_after: u64::try_from(due - now).unwrap_or(1),
                });
            }
        }
        return Ok(Judged {
            presented,
            row,
            plan: Plan::Issue,
        });
    }
    let successor = tx.cert(&current)?;
    match successor {
        Some(next)
            if next.renews.as_deref() == Some(serial)
                && next.is_live()
                && key_of(&next).as_deref() == Some(csr_fingerprint) =>
        {
            Ok(Judged {
                presented,
                row,
                plan: Plan::Repeat(Box::new(next)),
            })
        }
        _ => Err(RenewError::Superseded {
            serial: serial.to_string(),
            by: current,
        }),
    }
}

/// Renews the certificate `serial` (the one that authenticated the tunnel connection) for
/// the key in `csr_pem`. `peer` is the source's address, for the audit row.
pub fn renew(
    side: &RenewSide,
    serial: &str,
    csr_pem: &str,
    peer: &str,
    now: UnixTime,
) -> Result<Renewed, RenewError> {
    let csr = ca::parse_csr(csr_pem).map_err(RenewError::Csr)?;
    let fingerprint = csr.fingerprint();
    let store = side.store;
    // Judge first without signing anything; sign outside the transaction; judge again
    // inside it, so a concurrent renewal or unpair in between wins cleanly.
    let signing = side.ca.fingerprint();
    let first = judge(store, serial, &fingerprint, &signing, now)?;
    let issued = match first.plan {
        Plan::Repeat(next) => return Ok(repeated(&first.row, serial, *next)),
        Plan::Issue => side
            .ca
            .sign_client(
                &csr,
                &first.presented.subject,
                side.client_lifetime,
                time_of(now).map_err(|_| RenewError::Clock(now))?,
            )
            .map_err(RenewError::Ca)?,
    };
    let grace = i64::try_from(side.grace.as_secs()).unwrap_or(i64::MAX);
    store.write(|tx| {
        let Judged {
            presented,
            mut row,
            plan,
        } = judge(tx, serial, &fingerprint, &signing, now)?;
        if let Plan::Repeat(next) = plan {
            return Ok(repeated(&row, serial, *next));
        }
        let generation = tx.next_generation(row.id)?;
        let fresh = tx.insert_cert(&CertRecord {
            serial: issued.serial.clone(),
            request_id: presented.request_id,
            system_id: row.id,
            subject: presented.subject.clone(),
            issued_at: now,
            not_after: issued.not_after,
            pem: issued.cert_pem.clone(),
            revoked_at: None,
            generation,
            renews: Some(serial.to_string()),
            superseded_at: None,
            retired_at: None,
            issuer: Some(issued.issuer.clone()),
        })?;
        if !fresh {
            // 128 random bits colliding means the random source is broken.
            return Err(RenewError::Ca(ca::CaError::Random));
        }
        tx.supersede(serial, now, now.saturating_add(grace))?;
        row.cert_serial = Some(issued.serial.clone());
        row.certificate_expires = Some(issued.not_after);
        row.updated = now;
        tx.put_system(&row)?;
        tx.audit(&AuditRecord {
            time: now,
            user: "-".into(),
            address: peer.to_string(),
            action: "certificate renewed".into(),
            object: format!("system:{}", row.id),
            detail: format!(
                "serial {serial} -> {} generation {generation} until {}",
                issued.serial, issued.not_after
            ),
        })?;
        Ok(Renewed {
            system_id: row.id,
            previous: serial.to_string(),
            serial: issued.serial.clone(),
            not_after: issued.not_after,
            cert_pem: issued.cert_pem.clone(),
            generation,
            repeated: false,
        })
    })
}

fn repeated(row: &SystemRecord, previous: &str, next: CertRecord) -> Renewed {
    Renewed {
        system_id: row.id,
        previous: previous.to_string(),
        serial: next.serial,
        not_after: next.not_after,
        cert_pem: next.pem,
        generation: next.generation,
        repeated: true,
    }
}

/// A superseded certificate whose grace window ended, now retired.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GraceEnded {
    pub system_id: u64,
    pub serial: String,
}

/// Retires every superseded certificate whose grace window ended by `now`: the tunnel
/// refuses new handshakes with it from then on. Returns what it retired.
pub fn end_graces(store: &Store, now: UnixTime) -> Result<Vec<GraceEnded>, StoreError> {
    let due = store.grace_ended(now)?;
    if due.is_empty() {
        return Ok(Vec::new());
    }
    store.write(|tx| {
        let mut ended = Vec::new();
        for serial in due {
            if tx.grace_until(&serial)?.is_some_and(|until| until <= now)
                && tx.retire(&serial, now)?
            {
                let system_id = tx.cert(&serial)?.map_or(0, |c| c.system_id);
                tx.audit(&AuditRecord {
                    time: now,
                    user: "-".into(),
                    address: "local".into(),
                    action: "certificate retired".into(),
                    object: format!("system:{system_id}"),
                    detail: format!("serial {serial}, grace ended"),
                })?;
                ended.push(GraceEnded { system_id, serial });
            }
        }
        Ok(ended)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::CaSet;
    use crate::config::{Storage, StorageUsage};
    use crate::pairing::target::{self, Decision, TargetSide};
    use crate::pairing::Actor;
    use crate::store::RequestRecord;

    const NOW: UnixTime = 1_767_225_600;
    const DAY: u64 = 86_400;

    struct Paired {
        store: Store,
        ca: CaSet,
        system_id: u64,
        serial: String,
    }

    fn side(p: &Paired) -> RenewSide<'_> {
        RenewSide {
            store: &p.store,
            ca: p.ca.signing(),
            client_lifetime: Duration::from_secs(30 * DAY),
            grace: Duration::from_secs(DAY),
        }
    }

    /// A target with one accepted source, as an admin's accept leaves it.
    fn paired(name: &str) -> Paired {
        let dir =
            std::env::temp_dir().join(format!("replgate-renewal-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        crate::fsx::ensure_private_dir(&dir).unwrap();
        let store = Store::open(&dir.join("replgate.redb")).unwrap();
        let ca = CaSet::single(Ca::generate("target ca", time_of(NOW).unwrap()).unwrap());
        let (_, csr_pem) = ca::generate_client_key_and_csr("src-uuid").unwrap();
        let request = RequestRecord {
            system_uuid: "src-uuid".into(),
            csr_pem,
            created: NOW - 10,
            expires: NOW + 600,
            ..RequestRecord::fixture(1)
        };
        store.write(|tx| tx.put_request(&request)).unwrap();
        let storage = [Storage {
            id: 1,
            name: "b".into(),
            path: "/b".into(),
            usage: StorageUsage::Backup,
            kind: crate::config::StorageKind::Dir,
        }];
        let accept = TargetSide {
            store: &store,
            cas: &ca,
            storage: &storage,
            client_lifetime: Duration::from_secs(30 * DAY),
        };
        let actor = Actor {
            user: "root".into(),
            address: "-".into(),
        };
        let resolved = target::resolve(
            &accept,
            1,
            Decision::Accept {
                storage_id: None,
                quota_mb: None,
                replaces_system_id: None,
            },
            &actor,
            NOW,
        )
        .unwrap();
        Paired {
            system_id: resolved.request.system_id.unwrap(),
            serial: resolved.request.cert_serial.unwrap(),
            store,
            ca,
        }
    }

    fn csr() -> String {
        ca::generate_client_key_and_csr("src-uuid").unwrap().1
    }

    #[test]
    fn a_renewal_records_the_next_generation_beside_the_old_one_in_its_grace() {
        let p = paired("issue");
        let csr = csr();
        let r = renew(&side(&p), &p.serial, &csr, "192.0.2.1", NOW + 100).unwrap();
        assert!(!r.repeated);
        assert_eq!((r.system_id, r.generation), (p.system_id, 2));
        assert_ne!(r.serial, p.serial);
        assert_eq!(r.not_after, NOW + 100 + 30 * DAY as i64);
        let info = ca::cert_info(&ca::cert_pem_to_der(&r.cert_pem).unwrap()).unwrap();
        assert_eq!(info.common_name.as_deref(), Some("src-uuid"));
        assert_eq!(info.serial, r.serial);

        let lineage = p.store.lineage(p.system_id).unwrap();
        let serials: Vec<_> = lineage.iter().map(|c| c.serial.as_str()).collect();
        assert_eq!(serials, [p.serial.as_str(), r.serial.as_str()]);
        assert_eq!(lineage[0].superseded_at, Some(NOW + 100));
        assert_eq!(lineage[1].renews.as_deref(), Some(p.serial.as_str()));
        let row = p.store.system(p.system_id).unwrap().unwrap();
        assert_eq!(row.cert_serial.as_deref(), Some(r.serial.as_str()));
        assert_eq!(row.certificate_expires, Some(r.not_after));
        // The old one still opens the tunnel until its grace ends, then never again; it
        // was retired, not revoked (open connections are not cut).
        assert!(!p.store.refuses_handshake(&p.serial).unwrap());
        let until = NOW + 100 + DAY as i64;
        assert!(end_graces(&p.store, until - 1).unwrap().is_empty());
        let ended = end_graces(&p.store, until).unwrap();
        assert_eq!(
            ended,
            [GraceEnded {
                system_id: p.system_id,
                serial: p.serial.clone()
            }]
        );
        assert!(p.store.refuses_handshake(&p.serial).unwrap());
        assert!(!p.store.is_revoked(&p.serial).unwrap());
        assert!(!p.store.refuses_handshake(&r.serial).unwrap());
        // Retired certificates are never renewed.
        assert!(matches!(
            renew(&side(&p), &p.serial, &csr, "-", until + 1),
            Err(RenewError::Retired { .. })
        ));
    }

    #[test]
    fn a_superseded_certificate_gets_only_its_successor_and_never_a_second_renewal() {
        let p = paired("superseded");
        let (key_a, csr_a) = ca::generate_client_key_and_csr("src-uuid").unwrap();
        let first = renew(&side(&p), &p.serial, &csr_a, "-", NOW + 1).unwrap();
        // The answer was lost; the source asks again with a new CSR for the same key: the
        // same certificate comes back, nothing new is signed.
        let retry = ca::csr_for_key(&key_a, "src-uuid").unwrap();
        let again = renew(&side(&p), &p.serial, &retry, "-", NOW + 2).unwrap();
        assert!(again.repeated);
        assert_eq!(again.serial, first.serial);
        assert_eq!(again.generation, 2);
        assert_eq!(again.cert_pem, first.cert_pem);
        // Another key from the superseded certificate: refused, nothing signed.
        let e = renew(&side(&p), &p.serial, &csr(), "-", NOW + 3).unwrap_err();
        assert!(
            matches!(&e, RenewError::Superseded { serial, by } if *serial == p.serial && *by == first.serial),
            "{e:?}"
        );
        assert_eq!(p.store.lineage(p.system_id).unwrap().len(), 2);
        // The current one renews on, and its own key is refused.
        assert!(matches!(
            renew(&side(&p), &first.serial, &csr_a, "-", NOW + 4),
            Err(RenewError::SameKey)
        ));
        // (Once it is an hour old: a certificate a renewal issued is not renewed sooner.)
        let later = NOW + 1 + MAX_RENEWAL_GAP;
        let second = renew(&side(&p), &first.serial, &csr(), "-", later).unwrap();
        assert_eq!(second.generation, 3);
        // Once the second renewal exists, the first one's successor is no longer current:
        // the original certificate gets nothing, not even its old answer.
        assert!(matches!(
            renew(&side(&p), &p.serial, &retry, "-", later + 1),
            Err(RenewError::Superseded { .. })
        ));
    }

    #[test]
    fn a_renewed_certificate_renews_again_only_after_its_gap_and_calls_are_counted() {
        let p = paired("gap");
        let first = renew(&side(&p), &p.serial, &csr(), "-", NOW + 1).unwrap();
        // 30 renewals in a row: each is refused with the wait, nothing more is signed.
        for n in 0..30 {
            let e = renew(&side(&p), &first.serial, &csr(), "-", NOW + 2 + n).unwrap_err();
            let RenewError::TooSoon { retry_after, .. } = e else {
                panic!("{e:?}");
            };
            assert_eq!(
                retry_after,
                (NOW + 1 + MAX_RENEWAL_GAP - (NOW + 2 + n)) as u64
            );
        }
        assert_eq!(p.store.lineage(p.system_id).unwrap().len(), 2);
        let due = NOW + 1 + MAX_RENEWAL_GAP;
        assert!(renew(&side(&p), &first.serial, &csr(), "-", due).is_ok());
        // A lab lifetime of a minute: the gap is half of it.
        let mut short = p.store.cert(&first.serial).unwrap().unwrap();
        short.not_after = short.issued_at + 60;
        assert_eq!(renewal_gap(&short), 30);
        // Calls are counted per certificate and window.
        let calls = Attempts::default();
        for _ in 0..ATTEMPTS {
            assert_eq!(calls.admit("aa", 100), Ok(()));
        }
        assert_eq!(calls.admit("aa", 110), Err(50));
        assert_eq!(calls.admit("bb", 110), Ok(()));
        assert_eq!(calls.admit("aa", 160), Ok(()));
    }

    #[test]
    fn a_revoked_or_unpaired_certificate_is_never_renewed_and_stays_revoked() {
        let p = paired("revoked");
        let actor = Actor {
            user: "root".into(),
            address: "-".into(),
        };
        let renewed = renew(&side(&p), &p.serial, &csr(), "-", NOW + 1).unwrap();
        target::unpair(&p.store, p.system_id, &actor, NOW + 2).unwrap();
        // Unpairing during a grace window revokes both the current and the old one.
        for serial in [&p.serial, &renewed.serial] {
            assert!(p.store.is_revoked(serial).unwrap(), "{serial}");
            let e = renew(&side(&p), serial, &csr(), "-", NOW + 3).unwrap_err();
            assert!(matches!(e, RenewError::Revoked { .. }), "{e:?}");
        }
        assert_eq!(p.store.lineage(p.system_id).unwrap().len(), 2);
        assert!(p.store.grace_ended(i64::MAX).unwrap().is_empty());
        let unknown = renew(&side(&p), "abcd", &csr(), "-", NOW + 3).unwrap_err();
        assert!(
            matches!(unknown, RenewError::NotPaired { .. }),
            "{unknown:?}"
        );
    }

    #[test]
    fn an_expired_certificate_or_a_csr_for_its_own_key_is_refused() {
        let p = paired("expired");
        let end = p.store.cert(&p.serial).unwrap().unwrap().not_after;
        let e = renew(&side(&p), &p.serial, &csr(), "-", end).unwrap_err();
        assert!(
            matches!(e, RenewError::Expired { not_after, .. } if not_after == end),
            "{e:?}"
        );
        assert!(e.to_string().contains("file a new pairing request"), "{e}");
        let own = p.store.request(1).unwrap().unwrap().csr_pem;
        assert!(matches!(
            renew(&side(&p), &p.serial, &own, "-", NOW + 1),
            Err(RenewError::SameKey)
        ));
        assert!(matches!(
            renew(&side(&p), &p.serial, "not a csr", "-", NOW + 1),
            Err(RenewError::Csr(_))
        ));
        assert_eq!(p.store.lineage(p.system_id).unwrap().len(), 1);
    }

    #[test]
    fn the_first_hello_with_the_new_certificate_retires_the_old_one_at_once() {
        let p = paired("hello");
        let r = renew(&side(&p), &p.serial, &csr(), "-", NOW + 1).unwrap();
        // The old one still says hello during its grace, and that changes nothing.
        assert!(target::record_hello(&p.store, &p.serial, NOW + 2)
            .unwrap()
            .is_some());
        assert!(!p.store.refuses_handshake(&p.serial).unwrap());
        let row = target::record_hello(&p.store, &r.serial, NOW + 3)
            .unwrap()
            .unwrap();
        assert_eq!(row.last_seen, Some(NOW + 3));
        assert!(p.store.refuses_handshake(&p.serial).unwrap());
        assert!(!p.store.is_revoked(&p.serial).unwrap());
        assert!(target::record_hello(&p.store, &p.serial, NOW + 4)
            .unwrap()
            .is_none());
        assert!(end_graces(&p.store, i64::MAX).unwrap().is_empty());
        let old = p.store.cert(&p.serial).unwrap().unwrap();
        assert_eq!(old.retired_at, Some(NOW + 3));
    }
}
