//! Pairing tokens (SPEC 13), target side: issue one (only its hash is stored; the token is
//! handed back once), revoke one (never unpairs anyone), and the check a request filed
//! with a token must pass. Filing with a token, and the accept it leads to, is
//! `target::file_request`'s: the token's use is counted in the same transaction. Time is
//! passed in; no I/O but the store. Secrets never reach `Debug`, errors or audit rows.

use std::fmt;

use crate::ca::ValidCsr;
use crate::config::Storage;
use crate::model::{format_utc, UnixTime};
use crate::pairing::target::{
    accept_in, choose_storage, ignore_in, insert_request, paired_system, sign, Filed, FilingRules,
    NewRequest, PairingError, TargetSide,
};
use crate::pairing::Actor;
use crate::store::{RequestStatus, Store, TokenRecord};
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

/// Why a presented token does not let a request in. Each is a 403 to the source, and
/// nothing is filed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenRefusal {
    /// Not `<id>.<secret>` at all.
    Malformed,
    /// No token with this id, or the secret does not match: one answer for both, so ids
    /// cannot be probed.
    Unknown,
    Revoked {
        id: String,
    },
    Spent {
        id: String,
        uses: u32,
    },
    Expired {
        id: String,
        at: UnixTime,
    },
    /// Bound to another `system_uuid`.
    OtherSystem {
        id: String,
    },
    /// Bound to another `host`.
    OtherHost {
        id: String,
    },
    /// The source is paired here already; replacing its key takes a token bound to its
    /// `system_uuid` (or an admin's accept), so a token cannot take over another pairing.
    Replaces {
        id: String,
        system_id: u64,
    },
}

impl TokenRefusal {
    /// The token's id, when the secret was right: the refusal then goes to the audit log.
    pub fn verified_id(&self) -> Option<&str> {
        match self {
            TokenRefusal::Malformed | TokenRefusal::Unknown => None,
            TokenRefusal::Revoked { id }
            | TokenRefusal::Spent { id, .. }
            | TokenRefusal::Expired { id, .. }
            | TokenRefusal::OtherSystem { id }
            | TokenRefusal::OtherHost { id }
            | TokenRefusal::Replaces { id, .. } => Some(id),
        }
    }
}

impl fmt::Display for TokenRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenRefusal::Malformed => {
                f.write_str("field `token` is not a pairing token (<id>.<secret>)")
            }
            TokenRefusal::Unknown => f.write_str("unknown pairing token"),
            TokenRefusal::Revoked { id } => write!(f, "pairing token {id} has been revoked"),
            TokenRefusal::Spent { id, uses } => write!(
                f,
                "pairing token {id} has been used up ({uses} of {uses} uses)"
            ),
            TokenRefusal::Expired { id, at } => {
                write!(f, "pairing token {id} expired at {}", format_utc(*at))
            }
            TokenRefusal::OtherSystem { id } => write!(
                f,
                "pairing token {id} is bound to another system_uuid"
            ),
            TokenRefusal::OtherHost { id } => {
                write!(f, "pairing token {id} is bound to another host")
            }
            TokenRefusal::Replaces { id, system_id } => write!(
                f,
                "this source is already paired here as system {system_id}; pairing token {id} is not bound to its system_uuid, so an admin must accept the new key"
            ),
        }
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
    crate::rand::hex(&crate::auth::token_hash(token.expose()))
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
        if let Some(u) = &self.system_uuid {
            super::target::check_system_uuid(u)?;
        }
        if let Some(h) = &self.host {
            super::target::check_host(h)?;
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

/// Files `new` with its token `token` and accepts it at once, in one transaction: check
/// the token, close the source's other open requests, store the request, accept it with
/// the token's storage and quota (the request cannot name others), count the use. Two
/// filings racing for a token's last use are serialized by the write transaction: the
/// second sees it spent and files nothing. The caps on open requests do not apply: the
/// request never stays open. Refusals by a verified token are audited.
#[allow(clippy::too_many_arguments)]
pub(crate) fn file_with_token(
    side: &TargetSide,
    new: &NewRequest,
    csr: &ValidCsr,
    token: &PairingToken,
    rules: &FilingRules,
    spool_token: String,
    now: UnixTime,
) -> Result<Filed, PairingError> {
    let (store, ca) = (side.store, side.ca);
    let refused = |r: TokenRefusal| refuse(store, new, r, now);
    // Checked once before signing, so a refused token costs no signature; the check inside
    // the transaction is the one that counts.
    let found = store.token(token.id())?;
    let t = check(found.as_ref(), token, &new.system_uuid, &new.host, now).map_err(refused)?;
    let storage = choose_storage(side.storage, t.storage_id)?;
    let issued = sign(ca, csr, &new.system_uuid, side.client_lifetime, now)?;
    let filed = store.write(|tx| {
        let current = tx.token(token.id())?;
        let mut t = check(current.as_ref(), token, &new.system_uuid, &new.host, now)
            .map_err(PairingError::Token)?
            .clone();
        if let Some(row) = paired_system(tx, &new.system_uuid)? {
            if t.system_uuid.as_deref() != Some(new.system_uuid.as_str()) {
                return Err(PairingError::Token(TokenRefusal::Replaces {
                    id: t.id.clone(),
                    system_id: row.id,
                }));
            }
        }
        let actor = Actor {
            user: format!("token:{}", t.id),
            address: new.remote_addr.clone(),
        };
        let mut superseded = Vec::new();
        for (id, open) in tx.open_requests()? {
            if open.system_uuid != new.system_uuid {
                continue;
            }
            if let Some(r) = tx
                .request(id)?
                .filter(|r| r.status == RequestStatus::Pending)
            {
                let detail = format!("by a request with pairing token {}", t.id);
                ignore_in(tx, r, &actor, "request superseded", detail, now)?;
                superseded.push(id);
            }
        }
        let request = insert_request(tx, ca, new, csr, spool_token, rules.caps.ttl_seconds, now)?;
        let resolved = accept_in(
            tx,
            request,
            storage,
            &issued,
            t.quota_mb.map(Some),
            &actor,
            now,
        )?;
        t.used += 1;
        t.last_used = Some(now);
        tx.put_token(&t)?;
        tx.audit(&actor.audit(
            now,
            "token used",
            format!("token:{}", t.id),
            format!(
                "request {} system {} ({}), use {} of {}",
                resolved.request.id,
                resolved.request.system_id.unwrap_or_default(),
                new.system_uuid,
                t.used,
                t.uses
            ),
        ))?;
        Ok(Filed {
            request: resolved.request,
            created: true,
            replaced: resolved.replaced,
            superseded,
        })
    });
    filed.map_err(|e| match e {
        PairingError::Token(r) => refused(r),
        other => other,
    })
}

/// A refusal as the source hears it; when the secret was right, also an audit row (a
/// wrong or unknown secret is a stranger's guess and gets none, so guessing cannot grow
/// the log).
fn refuse(store: &Store, new: &NewRequest, r: TokenRefusal, now: UnixTime) -> PairingError {
    if let Some(id) = r.verified_id() {
        let actor = Actor {
            user: "-".into(),
            address: new.remote_addr.clone(),
        };
        let row = actor.audit(
            now,
            "token refused",
            format!("token:{id}"),
            format!(
                "request from system {} ({}): {r}",
                new.system_uuid, new.host
            ),
        );
        if let Err(e) = store.write(|tx| tx.audit(&row)) {
            log::warn!("audit a refused pairing token: {}", crate::model::Chain(&e));
        }
    }
    PairingError::Token(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::StorageUsage;

    const NOW: UnixTime = 1_767_225_600;
    const UUID: &str = "5f0c7a52-3f5e-4a6b-9c0d-2b1e8f7a6c11";

    /// The default spec with `change` applied.
    fn spec(change: fn(&mut TokenSpec)) -> TokenSpec {
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
    }

    #[test]
    fn the_hash_is_compared_whole() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert_eq!(token_hash(&token()).len(), 64);
    }

    // ---- filing with a token, over a real store and CA ----

    use crate::ca::Ca;
    use crate::pairing::target::{file_request, Caps, FilingRules, NewRequest};
    use crate::store::RequestStatus;

    fn temp_store(name: &str) -> Store {
        let dir =
            std::env::temp_dir().join(format!("replgate-tokens-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        crate::fsx::ensure_private_dir(&dir).unwrap();
        Store::open(&dir.join("replgate.redb")).unwrap()
    }

    fn test_ca() -> Ca {
        Ca::generate(
            "tokens test",
            time::OffsetDateTime::from_unix_timestamp(NOW - 60).unwrap(),
        )
        .unwrap()
    }

    fn two_storages() -> Vec<Storage> {
        [1, 2]
            .map(|id| Storage {
                id,
                name: format!("s{id}"),
                path: format!("/s{id}").into(),
                usage: StorageUsage::Backup,
            })
            .to_vec()
    }

    fn rules() -> FilingRules {
        FilingRules {
            caps: Caps {
                max_pending: 100,
                per_address: 1,
                network_v4: 24,
                network_v6: 64,
                ttl_seconds: 600,
                retry_after: 30,
            },
            require_token: false,
        }
    }

    fn side<'a>(store: &'a Store, ca: &'a Ca, storage: &'a [Storage]) -> TargetSide<'a> {
        TargetSide {
            store,
            ca,
            storage,
            client_lifetime: std::time::Duration::from_secs(30 * 86_400),
        }
    }

    fn new_request(uuid: &str, token: Option<&PairingToken>) -> NewRequest {
        let (_, csr) = crate::ca::generate_client_key_and_csr(uuid).unwrap();
        NewRequest {
            system_uuid: uuid.into(),
            name: "src".into(),
            host: "src.example".into(),
            asset_tag: None,
            version: "1".into(),
            csr_pem: csr,
            remote_addr: "192.0.2.7".into(),
            requested_storage_id: Some(1),
            token: token.cloned(),
        }
    }

    fn admin() -> Actor {
        Actor {
            user: "root".into(),
            address: "192.0.2.1".into(),
        }
    }

    /// A store, a CA and two backup storages, for filings with tokens.
    struct Fixture {
        store: Store,
        ca: Ca,
        storage: Vec<Storage>,
    }

    impl Fixture {
        fn new(name: &str) -> Fixture {
            Fixture {
                store: temp_store(name),
                ca: test_ca(),
                storage: two_storages(),
            }
        }

        fn issue(&self, spec: TokenSpec) -> Issued {
            create(&self.store, &self.storage, spec, &admin(), NOW).unwrap()
        }

        /// Files a request for `uuid` (with a fresh key) under the default rules.
        fn file(
            &self,
            uuid: &str,
            token: Option<&PairingToken>,
        ) -> Result<crate::pairing::target::Filed, PairingError> {
            self.file_new(new_request(uuid, token))
        }

        fn file_new(&self, new: NewRequest) -> Result<crate::pairing::target::Filed, PairingError> {
            file_request(
                &side(&self.store, &self.ca, &self.storage),
                new,
                &rules(),
                crate::rand::hex_string(16),
                NOW,
            )
        }
    }

    fn request_count(store: &Store) -> usize {
        store.requests(0, usize::MAX, |_| true).unwrap().len()
    }

    #[test]
    fn a_token_accepts_at_once_with_its_storage_and_quota_and_is_spent_after_its_uses() {
        let fx = Fixture::new("accept");
        let store = &fx.store;
        let issued = fx.issue(spec(|s| {
            s.storage_id = Some(2);
            s.quota_mb = Some(500);
        }));
        let secret = &issued.token.expose()[PairingToken::ID_LEN + 1..];
        let stored = store.token(issued.token.id()).unwrap().unwrap();
        assert_ne!(stored.secret_hash, issued.token.expose());
        assert!(
            !stored.secret_hash.contains(secret),
            "only a hash is stored"
        );

        // The request asks for storage 1; the token's storage 2 wins.
        let filed = fx.file(UUID, Some(&issued.token)).unwrap();
        let r = &filed.request;
        assert_eq!(r.status, RequestStatus::Accepted);
        assert_eq!(r.pairing_token.as_deref(), Some(issued.token.id()));
        assert_eq!(
            r.resolved_by.as_deref(),
            Some(format!("token:{}", issued.token.id()).as_str())
        );
        let row = store.system(r.system_id.unwrap()).unwrap().unwrap();
        assert_eq!((row.storage_id, row.quota_mb), (Some(2), Some(500)));
        assert!(store
            .cert(r.cert_serial.as_deref().unwrap())
            .unwrap()
            .is_some());
        let t = store.token(issued.token.id()).unwrap().unwrap();
        assert_eq!((t.used, t.last_used), (1, Some(NOW)));
        assert_eq!(status(&t, NOW), TokenStatus::Used);

        // Spent: 403 material, and nothing filed; the refusal is audited.
        let before = request_count(store);
        let e = fx.file("other-uuid", Some(&issued.token)).unwrap_err();
        assert!(
            matches!(&e, PairingError::Token(TokenRefusal::Spent { uses: 1, .. })),
            "{e:?}"
        );
        assert_eq!(request_count(store), before);
        let audit = store.audit(0, 100).unwrap();
        let actions: Vec<&str> = audit.iter().map(|(_, a)| a.action.as_str()).collect();
        for wanted in [
            "token created",
            "request filed",
            "request accepted",
            "token used",
            "token refused",
        ] {
            assert!(actions.contains(&wanted), "{wanted} in {actions:?}");
        }
        for (_, a) in &audit {
            let text = format!("{a:?}");
            assert!(!text.contains(secret), "the secret in an audit row: {text}");
        }
        let used = audit
            .iter()
            .find(|(_, a)| a.action == "token used")
            .unwrap();
        assert_eq!(used.1.object, format!("token:{}", issued.token.id()));

        // A wrong secret is an unknown token, and a stranger's guess is not audited.
        let guess = PairingToken::from_parts(issued.token.id(), &"0".repeat(32)).unwrap();
        let rows = store.audit(0, 1_000).unwrap().len();
        let e = fx.file("x-uuid", Some(&guess)).unwrap_err();
        assert!(
            matches!(e, PairingError::Token(TokenRefusal::Unknown)),
            "{e:?}"
        );
        assert_eq!(store.audit(0, 1_000).unwrap().len(), rows);
    }

    #[test]
    fn two_filings_racing_for_the_last_use_let_exactly_one_in() {
        let fx = Fixture::new("race");
        let store = &fx.store;
        let issued = fx.issue(TokenSpec::default());
        let barrier = std::sync::Barrier::new(2);
        let results: Vec<_> = std::thread::scope(|s| {
            let handles: Vec<_> = ["race-a", "race-b"]
                .map(|uuid| {
                    let new = new_request(uuid, Some(&issued.token));
                    let (fx, barrier) = (&fx, &barrier);
                    s.spawn(move || {
                        barrier.wait();
                        fx.file_new(new)
                    })
                })
                .into_iter()
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let ok = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(ok, 1, "{results:?}");
        assert!(results
            .iter()
            .any(|r| matches!(r, Err(PairingError::Token(TokenRefusal::Spent { .. })))));
        assert_eq!(request_count(store), 1);
        assert_eq!(store.systems().unwrap().len(), 1);
        assert_eq!(store.token(issued.token.id()).unwrap().unwrap().used, 1);
    }

    #[test]
    fn a_token_replaces_a_paired_key_only_when_bound_to_that_system() {
        let fx = Fixture::new("replace");
        let store = &fx.store;
        let free = fx.issue(spec(|s| s.uses = 5));
        let first = fx.file(UUID, Some(&free.token)).unwrap();
        // The same system_uuid again with an unbound token: refused, the pairing untouched.
        let e = fx.file(UUID, Some(&free.token)).unwrap_err();
        let system_id = first.request.system_id.unwrap();
        assert_eq!(
            e.to_string(),
            TokenRefusal::Replaces {
                id: free.token.id().into(),
                system_id
            }
            .to_string()
        );
        let serial = first.request.cert_serial.clone().unwrap();
        assert!(!store.is_revoked(&serial).unwrap());
        // Bound to it: the new key replaces the old one, whose certificate is revoked.
        let bound = fx.issue(spec(|s| s.system_uuid = Some(UUID.into())));
        let second = fx.file(UUID, Some(&bound.token)).unwrap();
        assert_eq!(second.replaced, Some(first.request.id));
        assert_eq!(second.request.system_id, Some(system_id));
        assert!(store.is_revoked(&serial).unwrap());
        // And a token bound to this system refuses any other.
        let e = fx.file("intruder", Some(&bound.token)).unwrap_err();
        assert!(
            matches!(
                e,
                PairingError::Token(TokenRefusal::Spent { .. } | TokenRefusal::OtherSystem { .. })
            ),
            "{e:?}"
        );
    }

    #[test]
    fn a_token_closes_the_sources_open_request_and_needs_no_room_under_the_caps() {
        let fx = Fixture::new("supersede");
        let store = &fx.store;
        // Per-network cap 1: the open request fills this /24.
        let open = fx.file(UUID, None).unwrap();
        assert_eq!(open.request.status, RequestStatus::Pending);
        let e = fx.file("neighbour", None).unwrap_err();
        assert!(matches!(e, PairingError::Busy { .. }), "{e:?}");
        let issued = fx.issue(TokenSpec::default());
        let filed = fx.file(UUID, Some(&issued.token)).unwrap();
        assert_eq!(filed.superseded, vec![open.request.id]);
        let closed = store.request(open.request.id).unwrap().unwrap();
        assert_eq!(closed.status, RequestStatus::Ignored);
        assert!(store.open_requests().unwrap().is_empty());
    }

    #[test]
    fn require_token_refuses_a_request_without_one_and_files_nothing() {
        let fx = Fixture::new("require");
        let store = &fx.store;
        let mut p = rules();
        p.require_token = true;
        let side = side(store, &fx.ca, &fx.storage);
        let e = file_request(&side, new_request(UUID, None), &p, "t".into(), NOW).unwrap_err();
        assert!(matches!(e, PairingError::TokenRequired), "{e:?}");
        assert_eq!(request_count(store), 0);
        let issued = fx.issue(TokenSpec::default());
        let filed = file_request(
            &side,
            new_request(UUID, Some(&issued.token)),
            &p,
            crate::rand::hex_string(16),
            NOW,
        )
        .unwrap();
        assert_eq!(filed.request.status, RequestStatus::Accepted);
    }

    #[test]
    fn revoking_refuses_further_uses_and_leaves_pairings_up() {
        let fx = Fixture::new("revoke");
        let store = &fx.store;
        let issued = fx.issue(spec(|s| s.uses = 3));
        let filed = fx.file(UUID, Some(&issued.token)).unwrap();
        let t = revoke(store, issued.token.id(), &admin(), NOW).unwrap();
        assert_eq!(status(&t, NOW), TokenStatus::Revoked);
        let serial = filed.request.cert_serial.unwrap();
        assert!(!store.is_revoked(&serial).unwrap(), "the pairing stays");
        assert!(store
            .system(filed.request.system_id.unwrap())
            .unwrap()
            .is_some());
        let e = fx.file("b", Some(&issued.token)).unwrap_err();
        assert!(
            matches!(e, PairingError::Token(TokenRefusal::Revoked { .. })),
            "{e:?}"
        );
        assert!(matches!(
            revoke(store, issued.token.id(), &admin(), NOW),
            Err(PairingError::TokenAlreadyRevoked(_))
        ));
        assert!(matches!(
            revoke(store, "000000000000", &admin(), NOW),
            Err(PairingError::UnknownToken(_))
        ));
        assert!(matches!(
            revoke(store, "../x", &admin(), NOW),
            Err(PairingError::UnknownToken(_))
        ));
    }
}
