//! Pairing tokens (SPEC 13), target side: issue one (only its hash is stored; the token is
//! handed back once), revoke one (never unpairs anyone), and the check a request filed
//! with a token must pass. Filing with a token, and the accept it leads to, is
//! `filing`'s: the token's use is counted in the same transaction. Time is
//! passed in; no I/O but the store. Secrets never reach `Debug`, errors or audit rows.

use crate::config::Storage;
use crate::model::{format_utc, UnixTime};
use crate::pairing::error::{PairingError, TokenRefusal};
use crate::pairing::fields::{check_host, check_system_uuid};
use crate::pairing::target::choose_storage;
use crate::pairing::Actor;
use crate::store::{Store, TokenRecord, Txn};
use crate::wire::token::PairingToken;

/// `expires_in` when none is given: 7 days, long enough to ship a box, short enough to
/// matter.
pub const DEFAULT_EXPIRES_IN: i64 = 7 * 86_400;
/// The longest `expires_in`: 90 days. No token lives forever.
pub const MAX_EXPIRES_IN: i64 = 90 * 86_400;
/// `uses` when none is given: one source.
pub const DEFAULT_USES: u32 = 1;
/// The most sources one token may pair.
pub const MAX_USES: u32 = 10_000;
/// The longest `note`, in characters.
pub const MAX_NOTE_CHARS: usize = 256;

/// Where a token stands, as `GET /api/replication/tokens` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenStatus {
    Valid,
    /// Every use taken.
    Used,
    Expired,
    Revoked,
}

impl TokenStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenStatus::Valid => "valid",
            TokenStatus::Used => "used",
            TokenStatus::Expired => "expired",
            TokenStatus::Revoked => "revoked",
        }
    }
}

/// A revocation wins over everything, a spent token shows as used even once its time ran
/// out (it was consumed, not forgotten).
pub fn status(t: &TokenRecord, now: UnixTime) -> TokenStatus {
    if t.revoked_at.is_some() {
        TokenStatus::Revoked
    } else if t.used >= t.uses {
        TokenStatus::Used
    } else if now >= t.expires {
        TokenStatus::Expired
    } else {
        TokenStatus::Valid
    }
}

/// Equality of two byte strings in time that depends on their length only.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a
        .iter()
        .zip(b)
        .fold(0u8, |acc, (x, y)| acc | std::hint::black_box(x ^ y));
    std::hint::black_box(diff) == 0
}

/// The stored form of a token: SHA-256 of its whole text, lowercase hex.
pub fn token_hash(token: &PairingToken) -> String {
    crate::wire::hex::encode(&crate::auth::token_hash(token.expose()))
}

/// The one check of a presented token against the stored one (`found`, looked up by the
/// token's id) for a request from `system_uuid` (lowercase) and `host`.
pub fn check<'a>(
    found: Option<&'a TokenRecord>,
    presented: &PairingToken,
    system_uuid: &str,
    host: &str,
    now: UnixTime,
) -> Result<&'a TokenRecord, TokenRefusal> {
    let t = found.ok_or(TokenRefusal::Unknown)?;
    if !constant_time_eq(token_hash(presented).as_bytes(), t.secret_hash.as_bytes()) {
        return Err(TokenRefusal::Unknown);
    }
    let id = || t.id.clone();
    match status(t, now) {
        TokenStatus::Valid => {}
        TokenStatus::Revoked => return Err(TokenRefusal::Revoked { id: id() }),
        TokenStatus::Used => {
            return Err(TokenRefusal::Spent {
                id: id(),
                uses: t.uses,
            })
        }
        TokenStatus::Expired => {
            return Err(TokenRefusal::Expired {
                id: id(),
                at: t.expires,
            })
        }
    }
    if t.system_uuid.as_deref().is_some_and(|u| u != system_uuid) {
        return Err(TokenRefusal::OtherSystem { id: id() });
    }
    if t.host
        .as_deref()
        .is_some_and(|h| !h.eq_ignore_ascii_case(host))
    {
        return Err(TokenRefusal::OtherHost { id: id() });
    }
    Ok(t)
}

/// What an admin asks for in `POST /api/replication/tokens`, fields already typed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenSpec {
    pub storage_id: Option<u64>,
    pub quota_mb: Option<u64>,
    pub uses: u32,
    /// Seconds from now.
    pub expires_in: i64,
    pub system_uuid: Option<String>,
    pub host: Option<String>,
    pub note: Option<String>,
    /// The lost source the token's user takes over (SPEC 20); such a token has one use.
    pub replaces_system_id: Option<u64>,
}

impl Default for TokenSpec {
    fn default() -> Self {
        TokenSpec {
            storage_id: None,
            quota_mb: None,
            uses: DEFAULT_USES,
            expires_in: DEFAULT_EXPIRES_IN,
            system_uuid: None,
            host: None,
            note: None,
            replaces_system_id: None,
        }
    }
}

fn invalid(field: &'static str, problem: impl Into<String>) -> PairingError {
    PairingError::InvalidField {
        field,
        problem: problem.into(),
    }
}

impl TokenSpec {
    /// Range and shape checks, and the storage must be a backup storage here.
    pub fn validate(&self, storage: &[Storage]) -> Result<(), PairingError> {
        if !(1..=MAX_USES).contains(&self.uses) {
            return Err(invalid("uses", format!("must be from 1 to {MAX_USES}")));
        }
        if !(1..=MAX_EXPIRES_IN).contains(&self.expires_in) {
            return Err(invalid(
                "expires_in",
                format!("must be from 1 to {MAX_EXPIRES_IN} seconds (90 days)"),
            ));
        }
        if let Some(id) = self.storage_id {
            choose_storage(storage, Some(id))?;
        }
        if self.replaces_system_id.is_some() && self.uses != 1 {
            return Err(invalid(
                "uses",
                "must be 1 with `replaces_system_id`: a token that takes over a system is single-use",
            ));
        }
        if let Some(u) = &self.system_uuid {
            check_system_uuid(u)?;
        }
        if let Some(h) = &self.host {
            check_host(h)?;
        }
        if let Some(n) = &self.note {
            if n.chars().count() > MAX_NOTE_CHARS || n.chars().any(char::is_control) {
                return Err(invalid(
                    "note",
                    format!("must be at most {MAX_NOTE_CHARS} characters of printable text"),
                ));
            }
        }
        Ok(())
    }
}

/// A token just issued: its record and the token itself, which exists nowhere else.
#[derive(Debug)]
pub struct Issued {
    pub record: TokenRecord,
    pub token: PairingToken,
}

/// Tries at drawing a 48-bit id that is not taken before giving up (a broken random
/// source; a collision by chance is one in billions).
const ID_ATTEMPTS: u32 = 8;

/// Issues a token: a fresh id and secret from the CSPRNG; only the hash is stored.
pub fn create(
    store: &Store,
    storage: &[Storage],
    spec: TokenSpec,
    actor: &Actor,
    now: UnixTime,
) -> Result<Issued, PairingError> {
    spec.validate(storage)?;
    store.write(|tx| {
        let replaces_uuid = match spec.replaces_system_id {
            Some(old) => Some(replaceable(tx, old)?),
            None => None,
        };
        let mut fresh = None;
        for _ in 0..ID_ATTEMPTS {
            let id = crate::rand::hex_string(PairingToken::ID_LEN / 2);
            if tx.token(&id)?.is_none() {
                fresh = Some(id);
                break;
            }
        }
        let id = fresh.ok_or(PairingError::Ca(crate::ca::CaError::Random))?;
        let secret = crate::rand::hex_string(PairingToken::SECRET_LEN / 2);
        // Invariant: both parts are lowercase hex of the lengths `parse` wants.
        let token = PairingToken::from_parts(&id, &secret)
            .ok_or(PairingError::Ca(crate::ca::CaError::Random))?;
        let record = TokenRecord {
            id: id.clone(),
            secret_hash: token_hash(&token),
            created: now,
            created_by: actor.user.clone(),
            expires: now.saturating_add(spec.expires_in),
            uses: spec.uses,
            used: 0,
            last_used: None,
            revoked_at: None,
            storage_id: spec.storage_id,
            quota_mb: spec.quota_mb,
            system_uuid: spec.system_uuid.clone(),
            host: spec.host.clone(),
            note: spec.note.clone(),
            replaces_system_id: spec.replaces_system_id,
            replaces_uuid,
        };
        tx.put_token(&record)?;
        tx.audit(&actor.audit(
            now,
            "token created",
            format!("token:{id}"),
            describe(&record),
        ))?;
        Ok(Issued { record, token })
    })
}

/// The checks on the lost source a new token is to take over, inside the issuing
/// transaction: it exists and is a replication source here. Returns its `system_uuid`,
/// which the token records: an appliance that takes the system over before the token is
/// used (an accept, or another such token) makes the token refuse, so two tokens for one
/// system replace one appliance, not two.
fn replaceable(tx: &Txn, old: u64) -> Result<String, PairingError> {
    let row = tx.system(old)?.ok_or(PairingError::UnknownSystem(old))?;
    if !row.role.is_source() {
        return Err(PairingError::NotASource(old));
    }
    row.system_uuid.ok_or(PairingError::NotASource(old))
}

/// A token's terms for the audit log (never its secret or hash).
fn describe(t: &TokenRecord) -> String {
    let mut parts = vec![
        format!("uses {}", t.uses),
        format!("expires {}", format_utc(t.expires)),
    ];
    if let Some(s) = t.storage_id {
        parts.push(format!("storage {s}"));
    }
    if let Some(q) = t.quota_mb {
        parts.push(format!("quota {q} MB"));
    }
    if let Some(u) = &t.system_uuid {
        parts.push(format!("bound to system {u}"));
    }
    if let Some(h) = &t.host {
        parts.push(format!("bound to host {h}"));
    }
    if let Some(old) = t.replaces_system_id {
        parts.push(format!("takes over system {old}"));
    }
    parts.join(", ")
}

/// Revokes a token from now on. Sources that already used it stay paired: their
/// certificates are theirs, and unpairing one is `unpair`'s job.
pub fn revoke(
    store: &Store,
    id: &str,
    actor: &Actor,
    now: UnixTime,
) -> Result<TokenRecord, PairingError> {
    let unknown = || PairingError::UnknownToken(id.chars().take(64).collect());
    if !PairingToken::valid_id(id) {
        return Err(unknown());
    }
    store.write(|tx| {
        let mut t = tx.token(id)?.ok_or_else(unknown)?;
        if t.revoked_at.is_some() {
            return Err(PairingError::TokenAlreadyRevoked(t.id));
        }
        t.revoked_at = Some(now);
        tx.put_token(&t)?;
        tx.audit(&actor.audit(
            now,
            "token revoked",
            format!("token:{id}"),
            format!(
                "used {} of {}; sources paired with it stay paired",
                t.used, t.uses
            ),
        ))?;
        Ok(t)
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::StorageUsage;

    pub(crate) const NOW: UnixTime = 1_767_225_600;
    pub(crate) const UUID: &str = "5f0c7a52-3f5e-4a6b-9c0d-2b1e8f7a6c11";

    /// The default spec with `change` applied.
    pub(crate) fn spec(change: fn(&mut TokenSpec)) -> TokenSpec {
        let mut spec = TokenSpec::default();
        change(&mut spec);
        spec
    }

    fn token() -> PairingToken {
        PairingToken::from_parts("0123456789ab", "00112233445566778899aabbccddeeff").unwrap()
    }

    fn record(change: impl Fn(&mut TokenRecord)) -> TokenRecord {
        let mut r = TokenRecord {
            id: "0123456789ab".into(),
            secret_hash: token_hash(&token()),
            created: NOW - 10,
            created_by: "root".into(),
            expires: NOW + 60,
            uses: 2,
            used: 1,
            last_used: None,
            revoked_at: None,
            storage_id: None,
            quota_mb: None,
            system_uuid: None,
            host: None,
            note: None,
            replaces_system_id: None,
            replaces_uuid: None,
        };
        change(&mut r);
        r
    }

    fn refusal(r: &TokenRecord, presented: &PairingToken) -> Option<TokenRefusal> {
        check(Some(r), presented, UUID, "src.example", NOW).err()
    }

    #[test]
    fn a_valid_token_passes_and_each_fault_has_its_refusal() {
        let t = token();
        assert!(refusal(&record(|_| {}), &t).is_none());
        assert_eq!(
            check(None, &t, UUID, "h", NOW).unwrap_err(),
            TokenRefusal::Unknown
        );
        let other = PairingToken::from_parts("0123456789ab", &"0".repeat(32)).unwrap();
        assert_eq!(
            refusal(&record(|_| {}), &other),
            Some(TokenRefusal::Unknown),
            "a wrong secret looks like an unknown token"
        );
        let id = || "0123456789ab".to_string();
        let cases: Vec<(TokenRecord, TokenRefusal)> = vec![
            (
                record(|r| r.revoked_at = Some(NOW - 1)),
                TokenRefusal::Revoked { id: id() },
            ),
            (
                record(|r| r.used = 2),
                TokenRefusal::Spent { id: id(), uses: 2 },
            ),
            (
                record(|r| r.expires = NOW),
                TokenRefusal::Expired { id: id(), at: NOW },
            ),
            (
                record(|r| r.system_uuid = Some("another".into())),
                TokenRefusal::OtherSystem { id: id() },
            ),
            (
                record(|r| r.host = Some("other.example".into())),
                TokenRefusal::OtherHost { id: id() },
            ),
        ];
        for (r, expected) in cases {
            let got = refusal(&r, &t);
            assert_eq!(got.as_ref(), Some(&expected), "{r:?}");
            assert_eq!(expected.verified_id(), Some("0123456789ab"));
            assert!(!expected.to_string().contains("00112233"), "{expected}");
        }
        // Bindings that match pass, hosts in any case.
        let bound = record(|r| {
            r.system_uuid = Some(UUID.into());
            r.host = Some("SRC.example".into());
        });
        assert!(refusal(&bound, &t).is_none());
        assert_eq!(TokenRefusal::Unknown.verified_id(), None);
    }

    #[test]
    fn status_orders_revoked_used_expired() {
        assert_eq!(status(&record(|_| {}), NOW), TokenStatus::Valid);
        assert_eq!(
            status(
                &record(|r| {
                    r.used = 2;
                    r.expires = NOW - 1;
                    r.revoked_at = Some(NOW)
                }),
                NOW
            ),
            TokenStatus::Revoked
        );
        assert_eq!(
            status(
                &record(|r| {
                    r.used = 2;
                    r.expires = NOW - 1
                }),
                NOW
            ),
            TokenStatus::Used
        );
        assert_eq!(
            status(&record(|r| r.expires = NOW - 1), NOW),
            TokenStatus::Expired
        );
    }

    #[test]
    fn specs_are_range_checked() {
        let storage = vec![Storage {
            id: 1,
            name: "a".into(),
            path: "/a".into(),
            usage: StorageUsage::Backup,
            kind: crate::config::StorageKind::Dir,
        }];
        assert!(TokenSpec::default().validate(&storage).is_ok());
        let bad: Vec<(TokenSpec, &str)> = vec![
            (spec(|s| s.uses = 0), "uses"),
            (spec(|s| s.uses = MAX_USES + 1), "uses"),
            (spec(|s| s.expires_in = 0), "expires_in"),
            (spec(|s| s.expires_in = MAX_EXPIRES_IN + 1), "expires_in"),
            (
                spec(|s| s.note = Some("x".repeat(MAX_NOTE_CHARS + 1))),
                "note",
            ),
            (spec(|s| s.note = Some("a\nb".into())), "note"),
            (spec(|s| s.system_uuid = Some("a b".into())), "system_uuid"),
            (spec(|s| s.host = Some("a/b".into())), "host"),
            (
                spec(|s| {
                    s.replaces_system_id = Some(3);
                    s.uses = 2;
                }),
                "uses",
            ),
        ];
        for (bad, field) in bad {
            let e = bad.validate(&storage).unwrap_err();
            assert!(e.to_string().contains(&format!("`{field}`")), "{e}");
        }
        let unknown = spec(|s| s.storage_id = Some(9));
        assert!(matches!(
            unknown.validate(&storage),
            Err(PairingError::UnknownStorage(9))
        ));
        let max = spec(|s| {
            s.expires_in = MAX_EXPIRES_IN;
            s.uses = MAX_USES;
        });
        assert!(max.validate(&storage).is_ok());
        assert!(spec(|s| s.replaces_system_id = Some(3))
            .validate(&storage)
            .is_ok());
    }

    #[test]
    fn the_hash_is_compared_whole() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert_eq!(token_hash(&token()).len(), 64);
    }
}
