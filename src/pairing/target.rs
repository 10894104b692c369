//! Target side of pairing: file a request (idempotency, caps, expiry), accept (sign, then
//! one transaction for resolution, certificate and systems row), reject, ignore, unpair,
//! move storage, and the role rules. Writes no files: the caller renders the spool after
//! the commit returns.

use std::fmt;

use crate::ca::{self, Ca, ValidCsr};
use crate::config::{Storage, StorageUsage};
use crate::model::{Network, Role, UnixTime};
use crate::pairing::tokens::{self, TokenRefusal};
use crate::pairing::Actor;
use crate::store::{
    AuditRecord, CertRecord, OpenRequest, RequestRecord, RequestStatus, Store, StoreError,
    SystemRecord, Txn,
};
use crate::wire::token::PairingToken;

/// The limits on open requests.
#[derive(Clone, Copy, Debug)]
pub struct Caps {
    pub max_pending: u32,
    /// Open requests per network (`max_pending_per_address`).
    pub per_address: u32,
    /// The network an address counts in: its first `network_v4` bits for IPv4
    /// (`pending_prefix_v4`), `network_v6` bits for IPv6 (`pending_prefix_v6`).
    pub network_v4: u8,
    pub network_v6: u8,
    pub ttl_seconds: i64,
    /// What a refused source is told to wait.
    pub retry_after: u64,
}

/// How requests are filed: the caps on open requests, and whether a token is required.
#[derive(Clone, Copy, Debug)]
pub struct FilingRules {
    pub caps: Caps,
    /// `require_token`: every request without a valid token is refused.
    pub require_token: bool,
}

#[derive(Debug)]
pub enum PairingError {
    UnknownRequest(u64),
    UnknownSystem(u64),
    /// The request is no longer pending (accepted, rejected, ignored, revoked).
    NotPending {
        id: u64,
        status: RequestStatus,
    },
    Expired(u64),
    MessageRequired,
    UnknownStorage(u64),
    StorageNotBackup(u64),
    NoBackupStorage,
    NotASource(u64),
    /// The accept named no storage and the one the source asked for cannot hold it.
    RequestedStorageUnusable(u64),
    /// Past a cap on open requests; the source may try again after `retry_after` seconds.
    Busy {
        cap: Cap,
        retry_after: u64,
    },
    InvalidField {
        field: &'static str,
        problem: String,
    },
    /// The presented pairing token does not let the request in; nothing was filed.
    Token(TokenRefusal),
    /// `require_token` is on and the request came without a token.
    TokenRequired,
    UnknownToken(String),
    TokenAlreadyRevoked(String),
    Csr(ca::CsrError),
    Ca(ca::CaError),
    /// The time handed in is outside what a certificate can carry (a broken clock).
    Clock(UnixTime),
    Store(StoreError),
}

impl fmt::Display for PairingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PairingError::UnknownRequest(id) => write!(f, "no pairing request with id {id}"),
            PairingError::UnknownSystem(id) => write!(f, "no system with id {id}"),
            PairingError::NotPending { id, status } => {
                write!(f, "request {id} is already {}", status.as_str())
            }
            PairingError::Expired(id) => write!(f, "request {id} has expired"),
            PairingError::MessageRequired => {
                f.write_str("field `message` is required to reject a request")
            }
            PairingError::UnknownStorage(id) => write!(f, "no storage with id {id}"),
            PairingError::StorageNotBackup(id) => write!(f, "storage {id} is not a backup storage"),
            PairingError::NoBackupStorage => f.write_str("no backup storage is configured"),
            PairingError::NotASource(id) => write!(f, "system {id} is not a replication source"),
            PairingError::RequestedStorageUnusable(id) => write!(
                f,
                "field `storage_id` is required: the source asked for storage {id}, which is not a backup storage here"
            ),
            PairingError::Busy { cap, .. } => write!(f, "{cap}"),
            PairingError::InvalidField { field, problem } => write!(f, "field `{field}` {problem}"),
            PairingError::Token(r) => write!(f, "{r}"),
            PairingError::TokenRequired => f.write_str(
                "this appliance takes pairing requests only with a valid pairing token; ask its admin for one",
            ),
            PairingError::UnknownToken(id) => write!(f, "no pairing token with id {id:?}"),
            PairingError::TokenAlreadyRevoked(id) => {
                write!(f, "pairing token {id} is already revoked")
            }
            PairingError::Csr(_) => f.write_str("field `csr`"),
            PairingError::Ca(_) => f.write_str("sign csr"),
            PairingError::Clock(now) => write!(
                f,
                "the clock reads unix time {now}, outside the dates a certificate can carry"
            ),
            PairingError::Store(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for PairingError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PairingError::Csr(e) => Some(e),
            PairingError::Ca(e) => Some(e),
            PairingError::Store(e) => e.source(),
            _ => None,
        }
    }
}

/// Which cap on open requests refused a filing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cap {
    /// This source already has an open request with another key.
    OtherKey { system_uuid: String, request: u64 },
    /// Too many open requests from this address's network (`max_pending_per_address`,
    /// counted per `pending_prefix_v4`/`_v6` network); `address` names the network.
    PerAddress { address: String },
    /// Too many open requests on this appliance (`max_pending`).
    Total,
}

impl fmt::Display for Cap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cap::OtherKey { system_uuid, request } => write!(
                f,
                "system {system_uuid} already has open request {request} with another key; wait for it to be resolved or expire"
            ),
            Cap::PerAddress { address } => write!(f, "too many open requests from {address}"),
            Cap::Total => f.write_str("too many open pairing requests on this appliance"),
        }
    }
}

impl From<StoreError> for PairingError {
    fn from(e: StoreError) -> Self {
        PairingError::Store(e)
    }
}

/// A request as it arrives, fields already checked for shape.
#[derive(Clone, Debug)]
pub struct NewRequest {
    pub system_uuid: String,
    pub name: String,
    pub host: String,
    pub asset_tag: Option<String>,
    pub version: String,
    pub csr_pem: String,
    pub remote_addr: String,
    /// The storage the source asks for (`storage_id` in its request); checked at accept.
    pub requested_storage_id: Option<u64>,
    /// The pairing token it came with: then it is accepted at once, or refused.
    pub token: Option<PairingToken>,
}

/// What filing decided.
#[derive(Debug, PartialEq, Eq)]
pub enum Filing {
    /// The same source and key already have an open request: answer with it.
    Existing(u64),
    Create,
    Refuse(Cap),
}

/// The idempotency and cap rules over the open requests (expired ones already excluded).
pub fn decide_filing(
    open: &[(u64, OpenRequest)],
    system_uuid: &str,
    csr_fingerprint: &str,
    address: &str,
    caps: &Caps,
) -> Filing {
    if let Some((id, o)) = open.iter().find(|(_, o)| o.system_uuid == system_uuid) {
        if o.csr_fingerprint == csr_fingerprint {
            return Filing::Existing(*id);
        }
        return Filing::Refuse(Cap::OtherKey {
            system_uuid: system_uuid.to_string(),
            request: *id,
        });
    }
    // Per network, not per address: one host owns a whole /64, and a /24 of addresses
    // is cheap. An address that does not parse (never from the front) counts alone.
    let (network, same) = match address.parse::<std::net::IpAddr>() {
        Ok(ip) => {
            let net = Network::of(ip, caps.network_v4, caps.network_v6);
            (
                net.to_string(),
                Box::new(move |a: &str| a.parse().is_ok_and(|ip| net.contains(ip)))
                    as Box<dyn Fn(&str) -> bool>,
            )
        }
        Err(_) => (
            address.to_string(),
            Box::new(move |a: &str| a == address) as _,
        ),
    };
    if open.iter().filter(|(_, o)| same(&o.remote_addr)).count() >= caps.per_address as usize {
        return Filing::Refuse(Cap::PerAddress { address: network });
    }

    if open.len() >= caps.max_pending as usize {
        return Filing::Refuse(Cap::Total);
    }
    Filing::Create
}

fn check_text(
    field: &'static str,
    value: &str,
    max: usize,
    allow: impl Fn(char) -> bool,
) -> Result<(), PairingError> {
    if value.is_empty() || value.chars().count() > max || !value.chars().all(allow) {
        return Err(PairingError::InvalidField {
            field,
            problem: format!("must be 1 to {max} characters of the allowed set"),
        });
    }
    Ok(())
}

fn printable(c: char) -> bool {
    !c.is_control()
}

/// A `system_uuid` as sources send it: 1 to 64 letters, digits and `-`.
pub(crate) fn check_system_uuid(value: &str) -> Result<(), PairingError> {
    check_text("system_uuid", value, 64, |c| {
        c.is_ascii_alphanumeric() || c == '-'
    })
}

/// A `host` as sources send it: a name or an address, 1 to 255 characters.
pub(crate) fn check_host(value: &str) -> Result<(), PairingError> {
    check_text("host", value, 255, |c| {
        c.is_ascii_alphanumeric() || "-.:[]".contains(c)
    })
}

impl NewRequest {
    /// Shape checks before anything is parsed or stored.
    pub fn validate(&self) -> Result<(), PairingError> {
        check_system_uuid(&self.system_uuid)?;
        check_text("name", &self.name, 255, printable)?;
        check_host(&self.host)?;

        check_text("version", &self.version, 64, printable)?;
        check_asset_tag(self.asset_tag.as_deref())
    }
}

/// An asset tag may be empty (none), else at most 255 printable characters.
fn check_asset_tag(tag: Option<&str>) -> Result<(), PairingError> {
    match tag {
        Some(tag) if tag.chars().count() > 255 || !tag.chars().all(printable) => {
            Err(PairingError::InvalidField {
                field: "asset_tag",
                problem: "must be at most 255 printable characters".into(),
            })
        }
        _ => Ok(()),
    }
}

/// Result of filing: the request, whether it was created now, and what else changed that
/// the caller must re-render in the spool.
#[derive(Debug)]
pub struct Filed {
    pub request: RequestRecord,
    pub created: bool,
    /// The earlier request of the same source that an accepted replacement key revoked.
    pub replaced: Option<u64>,
    /// Open requests of the same source that a request with a token closed.
    pub superseded: Vec<u64>,
}

/// Files a request: verify the CSR, then with a token check it and accept at once
/// ([`tokens::file_with_token`]), else apply idempotency and caps and store it pending,
/// with a fresh sequential id and `spool_token` as its poll token. The spool is written by
/// the caller.
pub fn file_request(
    side: &TargetSide,
    new: NewRequest,
    rules: &FilingRules,
    spool_token: String,
    now: UnixTime,
) -> Result<Filed, PairingError> {
    new.validate()?;
    if new.token.is_none() && rules.require_token {
        return Err(PairingError::TokenRequired);
    }
    let csr: ValidCsr = ca::parse_csr(&new.csr_pem).map_err(PairingError::Csr)?;
    if let Some(token) = &new.token {
        return tokens::file_with_token(side, &new, &csr, token, rules, spool_token, now);
    }
    let (store, ca) = (side.store, side.ca);
    let caps = &rules.caps;
    let fingerprint = csr.fingerprint();
    store.write(|tx| {
        let open: Vec<_> = tx
            .open_requests()?
            .into_iter()
            .filter(|(_, o)| o.expires > now)
            .collect();
        match decide_filing(
            &open,
            &new.system_uuid,
            &fingerprint,
            &new.remote_addr,
            caps,
        ) {
            Filing::Existing(id) => {
                let request = tx.request(id)?.ok_or(PairingError::UnknownRequest(id))?;
                Ok(Filed {
                    request,
                    created: false,
                    replaced: None,
                    superseded: Vec::new(),
                })
            }
            Filing::Refuse(cap) => Err(PairingError::Busy {
                cap,
                retry_after: caps.retry_after,
            }),
            Filing::Create => {
                let request = insert_request(
                    tx,
                    ca,
                    &new,
                    &csr,
                    spool_token.clone(),
                    caps.ttl_seconds,
                    now,
                )?;
                Ok(Filed {
                    request,
                    created: true,
                    replaced: None,
                    superseded: Vec::new(),
                })
            }
        }
    })
}

/// The longest message an admin may give a decision, in characters.
pub const MAX_MESSAGE_CHARS: usize = 1_024;

/// A rejection's message as stored: at most [`MAX_MESSAGE_CHARS`], trimmed of spaces,
/// tabs and line breaks, not empty.
pub fn rejection_message(message: &str) -> Result<String, PairingError> {
    if message.chars().count() > MAX_MESSAGE_CHARS {
        return Err(PairingError::InvalidField {
            field: "message",
            problem: format!("must be at most {MAX_MESSAGE_CHARS} characters"),
        });
    }
    let trimmed = message.trim_matches([' ', '\t', '\r', '\n']);
    if trimmed.is_empty() {
        return Err(PairingError::MessageRequired);
    }
    Ok(trimmed.to_string())
}

/// Stores `new` as a fresh pending request (the next id, its verification code, the
/// systems row it would replace) and audits the filing.
pub(crate) fn insert_request(
    tx: &Txn,
    ca: &Ca,
    new: &NewRequest,
    csr: &ValidCsr,
    spool_token: String,
    ttl_seconds: i64,
    now: UnixTime,
) -> Result<RequestRecord, PairingError> {
    let id = tx.next_request_id()?;
    let replaces_system_id = paired_system(tx, &new.system_uuid)?.map(|s| s.id);
    let request = RequestRecord {
        id,
        system_uuid: new.system_uuid.clone(),
        name: new.name.clone(),
        host: new.host.clone(),
        asset_tag: new.asset_tag.clone(),
        version: new.version.clone(),
        csr_pem: new.csr_pem.clone(),
        csr_fingerprint: csr.fingerprint(),
        remote_addr: new.remote_addr.clone(),
        token: spool_token,
        verification_code: ca::verification_code(&ca.fingerprint(), csr.spki_der(), id),
        created: now,
        expires: now.saturating_add(ttl_seconds),
        status: RequestStatus::Pending,
        message: None,
        resolved_at: None,
        resolved_by: None,
        replaces_system_id,
        system_id: None,
        cert_serial: None,
        requested_storage_id: new.requested_storage_id,
        pairing_token: new.token.as_ref().map(|t| t.id().to_string()),
    };
    tx.put_request(&request)?;
    let actor = Actor {
        user: "-".into(),
        address: new.remote_addr.clone(),
    };
    let with_token = match &new.token {
        Some(t) => format!(" with token {}", t.id()),
        None => String::new(),
    };
    tx.audit(&actor.audit(
        now,
        "request filed",
        format!("request:{id}"),
        format!(
            "system {} ({}) key {}{with_token}",
            new.system_uuid,
            new.host,
            csr.key_kind()
        ),
    ))?;
    Ok(request)
}

/// The systems row of a paired source with this `system_uuid`, if any.
pub(crate) fn paired_system(
    tx: &Txn,
    system_uuid: &str,
) -> Result<Option<SystemRecord>, StoreError> {
    Ok(tx
        .systems()?
        .into_iter()
        .find(|s| s.role.is_source() && s.system_uuid.as_deref() == Some(system_uuid)))
}

/// What an admin decided.
#[derive(Clone, Debug)]
pub enum Decision {
    /// `quota_mb`: `Some(None)` clears the quota, `None` keeps what a re-paired row had.
    Accept {
        storage_id: Option<u64>,
        quota_mb: Option<Option<u64>>,
    },
    Reject {
        message: String,
    },
}

/// Picks the storage for an accept: the named one (must be `backup`) or the default.
pub fn choose_storage(storage: &[Storage], wanted: Option<u64>) -> Result<&Storage, PairingError> {
    match wanted {
        Some(id) => {
            let s = storage
                .iter()
                .find(|s| s.id == id)
                .ok_or(PairingError::UnknownStorage(id))?;
            if s.usage != StorageUsage::Backup {
                return Err(PairingError::StorageNotBackup(id));
            }
            Ok(s)
        }
        None => storage
            .iter()
            .find(|s| s.usage == StorageUsage::Backup)
            .ok_or(PairingError::NoBackupStorage),
    }
}

/// The systems row after an accept. A source the target already manages becomes
/// `Replication Source`; any other gets `Non-Managed Replication Source`. A replacement
/// key for a paired source updates the same row.
pub fn source_row(
    existing: Option<SystemRecord>,
    request: &RequestRecord,
    storage_id: u64,
    serial: &str,
    not_after: UnixTime,
    new_id: u64,
    now: UnixTime,
) -> SystemRecord {
    match existing {
        Some(mut row) => {
            let managed = row.role == Role::Managed || row.was_managed;
            row.was_managed = managed;
            row.role = if managed {
                Role::Source
            } else {
                Role::NonManagedSource
            };
            row.system_uuid = Some(request.system_uuid.clone());
            row.version = Some(request.version.clone());
            row.storage_id = Some(storage_id);
            row.cert_serial = Some(serial.into());
            row.certificate_expires = Some(not_after);
            row.request_id = Some(request.id);
            if request.asset_tag.is_some() {
                row.asset_tag = request.asset_tag.clone();
            }
            row.updated = now;
            row
        }
        None => SystemRecord {
            id: new_id,
            name: request.name.clone(),
            host: request.host.clone(),
            role: Role::NonManagedSource,
            system_uuid: Some(request.system_uuid.clone()),
            version: Some(request.version.clone()),
            storage_id: Some(storage_id),
            created: now,
            updated: now,
            cert_serial: Some(serial.into()),
            certificate_expires: Some(not_after),
            last_seen: None,
            was_managed: false,
            request_id: Some(request.id),
            asset_tag: request.asset_tag.clone(),
            quota_mb: None,
        },
    }
}

/// The systems row a request's source corresponds to: same `system_uuid`, else a managed
/// system registered with the same host.
fn matching_system(tx: &Txn, request: &RequestRecord) -> Result<Option<SystemRecord>, StoreError> {
    let systems = tx.systems()?;
    if let Some(s) = systems
        .iter()
        .find(|s| s.system_uuid.as_deref() == Some(request.system_uuid.as_str()))
    {
        return Ok(Some(s.clone()));
    }
    Ok(systems.into_iter().find(|s| {
        s.role == Role::Managed
            && s.system_uuid.is_none()
            && s.host.eq_ignore_ascii_case(&request.host)
    }))
}

fn check_pending(r: &RequestRecord, now: UnixTime) -> Result<(), PairingError> {
    if r.status != RequestStatus::Pending {
        return Err(PairingError::NotPending {
            id: r.id,
            status: r.status,
        });
    }
    if now >= r.expires {
        return Err(PairingError::Expired(r.id));
    }
    Ok(())
}

/// What a decision changed: the decided request, and the earlier request of the same
/// source that an accepted replacement key revoked. The caller re-renders both spools.
#[derive(Debug)]
pub struct Resolved {
    pub request: RequestRecord,
    pub replaced: Option<u64>,
}

/// What deciding a request works with, borrowed from the caller.
pub struct TargetSide<'a> {
    pub store: &'a Store,
    pub ca: &'a Ca,
    /// The configured storage, to pick the one an accepted source replicates into.
    pub storage: &'a [Storage],
    /// Lifetime of an issued client certificate.
    pub client_lifetime: std::time::Duration,
}

/// Accepts or rejects a pending request. On accept the CSR is signed first, then the
/// resolution, the certificate and the systems row commit in one transaction.
pub fn resolve(
    side: &TargetSide,
    id: u64,
    decision: Decision,
    actor: &Actor,
    now: UnixTime,
) -> Result<Resolved, PairingError> {
    let TargetSide {
        store,
        ca,
        storage,
        client_lifetime,
    } = *side;
    // The input first, then the state: a bad message is a 400 whatever the request is.
    let decision = match decision {
        Decision::Reject { message } => Decision::Reject {
            message: rejection_message(&message)?,
        },
        accept => accept,
    };
    let current = store.request(id)?.ok_or(PairingError::UnknownRequest(id))?;
    check_pending(&current, now)?;
    match decision {
        Decision::Reject { message } => store.write(|tx| {
            let mut r = tx.request(id)?.ok_or(PairingError::UnknownRequest(id))?;
            check_pending(&r, now)?;
            r.status = RequestStatus::Rejected;
            r.message = Some(message.clone());
            r.resolved_at = Some(now);
            r.resolved_by = Some(actor.user.clone());
            tx.put_request(&r)?;
            tx.audit(&actor.audit(
                now,
                "request rejected",
                format!("request:{id}"),
                message.clone(),
            ))?;
            Ok(Resolved {
                request: r,
                replaced: None,
            })
        }),
        Decision::Accept {
            storage_id,
            quota_mb,
        } => {
            let storage = match (storage_id, current.requested_storage_id) {
                (None, Some(asked)) => choose_storage(storage, Some(asked))
                    .map_err(|_| PairingError::RequestedStorageUnusable(asked))?,
                (chosen, _) => choose_storage(storage, chosen)?,
            };
            let csr = ca::parse_csr(&current.csr_pem).map_err(PairingError::Csr)?;
            let issued = sign(ca, &csr, &current.system_uuid, client_lifetime, now)?;
            store.write(|tx| {
                let r = tx.request(id)?.ok_or(PairingError::UnknownRequest(id))?;
                check_pending(&r, now)?;
                accept_in(tx, r, storage, &issued, quota_mb, actor, now)
            })
        }
    }
}

/// Signs a source's CSR: outside any transaction, before the accept commits.
pub(crate) fn sign(
    ca: &Ca,
    csr: &ValidCsr,
    system_uuid: &str,
    lifetime: std::time::Duration,
    now: UnixTime,
) -> Result<ca::IssuedCert, PairingError> {
    ca.sign_client(csr, system_uuid, lifetime, time_of(now)?)
        .map_err(PairingError::Ca)
}

/// The accept, inside the caller's transaction, for a pending request `r` and the
/// certificate already issued for its CSR: revoke the key it replaces, write the systems
/// row (with `quota_mb` when given: `Some(None)` clears it), the certificate and the
/// resolution, and audit. The one accept, whether an admin decided or a token did.
pub(crate) fn accept_in(
    tx: &Txn,
    mut r: RequestRecord,
    storage: &Storage,
    issued: &ca::IssuedCert,
    quota_mb: Option<Option<u64>>,
    actor: &Actor,
    now: UnixTime,
) -> Result<Resolved, PairingError> {
    let id = r.id;
    let existing = matching_system(tx, &r)?;
    // A replaced key stops working the moment the new one is accepted: its certificate,
    // and a predecessor still in its renewal grace.
    let mut replaced = None;
    if let Some(system) = existing.as_ref().filter(|s| s.role.is_source()) {
        tx.revoke_lineage(system.id, now)?;
    }
    if let Some(old) = existing.as_ref().and_then(|s| s.cert_serial.clone()) {
        if let Some(old_req) = existing.as_ref().and_then(|s| s.request_id) {
            if let Some(mut o) = tx.request(old_req)? {
                if o.status == RequestStatus::Accepted {
                    o.status = RequestStatus::Revoked;
                    tx.put_request(&o)?;
                    tx.audit(&actor.audit(
                        now,
                        "request revoked",
                        format!("request:{old_req}"),
                        format!("replaced by request {id}, serial {old}"),
                    ))?;
                    replaced = Some(old_req);
                }
            }
        }
    }
    let mut row = source_row(
        existing,
        &r,
        storage.id,
        &issued.serial,
        issued.not_after,
        tx.next_system_id()?,
        now,
    );
    if let Some(q) = quota_mb {
        row.quota_mb = q;
    }
    tx.put_system(&row)?;
    let fresh = tx.insert_cert(&CertRecord {
        serial: issued.serial.clone(),
        request_id: id,
        system_id: row.id,
        subject: r.system_uuid.clone(),
        issued_at: now,
        not_after: issued.not_after,
        pem: issued.cert_pem.clone(),
        revoked_at: None,
        generation: tx.next_generation(row.id)?,
        renews: None,
        superseded_at: None,
        retired_at: None,
    })?;
    if !fresh {
        // 128 random bits colliding means the random source is broken.
        return Err(PairingError::Ca(ca::CaError::Random));
    }
    r.status = RequestStatus::Accepted;
    r.resolved_at = Some(now);
    r.resolved_by = Some(actor.user.clone());
    r.system_id = Some(row.id);
    r.cert_serial = Some(issued.serial.clone());
    tx.put_request(&r)?;
    let quota = match row.quota_mb {
        Some(q) => format!(" quota {q} MB"),
        None => String::new(),
    };
    tx.audit(&actor.audit(
        now,
        "request accepted",
        format!("request:{id}"),
        format!(
            "system {} role {} storage {}{quota} serial {}",
            row.id, row.role, storage.id, issued.serial
        ),
    ))?;
    Ok(Resolved {
        request: r,
        replaced,
    })
}

/// `now` as a calendar time for a certificate; a clock outside the calendar is an error,
/// never quietly replaced by another reading.
pub(crate) fn time_of(now: UnixTime) -> Result<time::OffsetDateTime, PairingError> {
    time::OffsetDateTime::from_unix_timestamp(now).map_err(|_| PairingError::Clock(now))
}

/// Drops a pending request silently; the source will see `expired`.
pub fn ignore(
    store: &Store,
    id: u64,
    actor: &Actor,
    now: UnixTime,
) -> Result<RequestRecord, PairingError> {
    store.write(|tx| {
        let r = tx.request(id)?.ok_or(PairingError::UnknownRequest(id))?;
        if r.status != RequestStatus::Pending {
            return Err(PairingError::NotPending {
                id,
                status: r.status,
            });
        }
        ignore_in(tx, r, actor, "request ignored", String::new(), now)
    })
}

/// Marks a pending request ignored inside the caller's transaction, with an audit row.
pub(crate) fn ignore_in(
    tx: &Txn,
    mut r: RequestRecord,
    actor: &Actor,
    action: &str,
    detail: String,
    now: UnixTime,
) -> Result<RequestRecord, PairingError> {
    r.status = RequestStatus::Ignored;
    r.resolved_at = Some(now);
    r.resolved_by = Some(actor.user.clone());
    tx.put_request(&r)?;
    tx.audit(&actor.audit(now, action, format!("request:{}", r.id), detail))?;
    Ok(r)
}

/// Ignores every open request filed from an address in `network`, in one transaction
/// (the answer to a flood from one network). Returns them for the spool, in id order.
pub fn ignore_from(
    store: &Store,
    network: Network,
    actor: &Actor,
    now: UnixTime,
) -> Result<Vec<RequestRecord>, PairingError> {
    store.write(|tx| {
        let mut out = Vec::new();
        for (id, o) in tx.open_requests()? {
            let inside = o.remote_addr.parse().is_ok_and(|ip| network.contains(ip));
            if !inside {
                continue;
            }
            let Some(r) = tx.request(id)? else { continue };
            if r.status == RequestStatus::Pending {
                let detail = format!("bulk ignore of {network}");
                out.push(ignore_in(tx, r, actor, "request ignored", detail, now)?);
            }
        }
        Ok(out)
    })
}

/// Unpairs a source: revoke its certificate, mark its request revoked, drop the systems
/// row or return it to `Managed DPU`. Returns the revoked request (for the spool), if any.
pub fn unpair(
    store: &Store,
    system_id: u64,
    actor: &Actor,
    now: UnixTime,
) -> Result<Option<RequestRecord>, PairingError> {
    store.write(|tx| {
        let row = tx
            .system(system_id)?
            .ok_or(PairingError::UnknownSystem(system_id))?;
        if !row.role.is_source() {
            return Err(PairingError::NotASource(system_id));
        }
        let serials = tx.revoke_lineage(system_id, now)?;
        let mut revoked = None;
        if let Some(req_id) = row.request_id {
            if let Some(mut r) = tx.request(req_id)? {
                r.status = RequestStatus::Revoked;
                tx.put_request(&r)?;
                revoked = Some(r);
            }
        }
        if row.was_managed {
            let mut back = row.clone();
            back.role = Role::Managed;
            back.storage_id = None;
            back.cert_serial = None;
            back.certificate_expires = None;
            back.request_id = None;
            back.was_managed = false;
            back.updated = now;
            tx.put_system(&back)?;
        } else {
            tx.delete_system(system_id)?;
        }
        tx.audit(&actor.audit(
            now,
            "source unpaired",
            format!("system:{system_id}"),
            unpair_detail(row.cert_serial.as_deref(), &serials),
        ))?;
        Ok(revoked)
    })
}

/// The audit detail of an unpair: `serial <current>`, and the superseded certificates
/// still in their grace window that were revoked with it.
fn unpair_detail(current: Option<&str>, revoked: &[String]) -> String {
    let current = current.unwrap_or_default();
    let others: Vec<&str> = revoked
        .iter()
        .map(String::as_str)
        .filter(|s| *s != current)
        .collect();
    if others.is_empty() {
        format!("serial {current}")
    } else {
        format!(
            "serial {current} (also revoked in grace: {})",
            others.join(" ")
        )
    }
}

/// What `PUT /api/replication/source?sid=` changes: the storage, the quota, or both.
#[derive(Clone, Copy, Debug, Default)]
pub struct SourceChange {
    pub storage_id: Option<u64>,
    /// `Some(None)` clears the quota.
    pub quota_mb: Option<Option<u64>>,
}

/// Moves a source to another storage and/or sets its quota.
pub fn change_source(
    store: &Store,
    storage: &[Storage],
    system_id: u64,
    change: SourceChange,
    actor: &Actor,
    now: UnixTime,
) -> Result<SystemRecord, PairingError> {
    let chosen = change
        .storage_id
        .map(|id| choose_storage(storage, Some(id)))
        .transpose()?;
    store.write(|tx| {
        let mut row = tx
            .system(system_id)?
            .ok_or(PairingError::UnknownSystem(system_id))?;
        if !row.role.is_source() {
            return Err(PairingError::NotASource(system_id));
        }
        let mut details = Vec::new();
        if let Some(chosen) = chosen {
            let before = row.storage_id;
            row.storage_id = Some(chosen.id);
            details.push(format!(
                "storage {} -> {}",
                before.map(|s| s.to_string()).unwrap_or_else(|| "-".into()),
                chosen.id
            ));
        }
        if let Some(q) = change.quota_mb {
            let shown = |q: Option<u64>| {
                q.map(|q| format!("{q} MB"))
                    .unwrap_or_else(|| "none".into())
            };
            details.push(format!("quota {} -> {}", shown(row.quota_mb), shown(q)));
            row.quota_mb = q;
        }
        row.updated = now;
        tx.put_system(&row)?;
        tx.audit(&actor.audit(
            now,
            "source changed",
            format!("system:{system_id}"),
            details.join(", "),
        ))?;
        Ok(row)
    })
}

/// Registers a managed system (role `Managed DPU`).
pub fn register_managed(
    store: &Store,
    name: &str,
    host: &str,
    system_uuid: Option<&str>,
    asset_tag: Option<&str>,
    actor: &Actor,
    now: UnixTime,
) -> Result<SystemRecord, PairingError> {
    check_text("name", name, 255, printable)?;
    check_asset_tag(asset_tag)?;
    check_text("host", host, 255, |c| {
        c.is_ascii_alphanumeric() || "-.:[]".contains(c)
    })?;
    if let Some(u) = system_uuid {
        check_text("system_uuid", u, 64, |c| {
            c.is_ascii_alphanumeric() || c == '-'
        })?;
    }
    store.write(|tx| {
        let row = SystemRecord {
            id: tx.next_system_id()?,
            name: name.into(),
            host: host.into(),
            role: Role::Managed,
            system_uuid: system_uuid.map(String::from),
            version: None,
            storage_id: None,
            created: now,
            updated: now,
            cert_serial: None,
            certificate_expires: None,
            last_seen: None,
            was_managed: false,
            request_id: None,
            asset_tag: asset_tag.map(String::from),
            quota_mb: None,
        };
        tx.put_system(&row)?;
        tx.audit(&actor.audit(
            now,
            "system registered",
            format!("system:{}", row.id),
            format!("{name} ({host})"),
        ))?;
        Ok(row)
    })
}

/// Marks every pending request whose time ran out as expired; returns them for the spool.
pub fn expire_due(store: &Store, now: UnixTime) -> Result<Vec<RequestRecord>, PairingError> {
    let due: Vec<u64> = store
        .open_requests()?
        .into_iter()
        .filter(|(_, o)| o.expires <= now)
        .map(|(id, _)| id)
        .collect();
    if due.is_empty() {
        return Ok(Vec::new());
    }
    store.write(|tx| {
        let mut out = Vec::new();
        for id in due {
            if let Some(mut r) = tx.request(id)? {
                if r.status == RequestStatus::Pending && r.expires <= now {
                    r.status = RequestStatus::Expired;
                    r.resolved_at = Some(now);
                    tx.put_request(&r)?;
                    tx.audit(&AuditRecord {
                        time: now,
                        user: "-".into(),
                        address: "local".into(),
                        action: "request expired".into(),
                        object: format!("request:{id}"),
                        detail: String::new(),
                    })?;
                    out.push(r);
                }
            }
        }
        Ok(out)
    })
}

/// Deletes requests that ended without a pairing (rejected, expired, ignored) more than
/// `retention` seconds ago, so unauthenticated filers cannot grow the database without
/// bound. Returns their spool tokens for the caller to remove.
pub fn purge_ended(
    store: &Store,
    retention: i64,
    now: UnixTime,
) -> Result<Vec<String>, PairingError> {
    let cutoff = now.saturating_sub(retention);
    let old = store.requests(0, usize::MAX, |r| {
        matches!(
            r.status,
            RequestStatus::Rejected | RequestStatus::Expired | RequestStatus::Ignored
        ) && r.resolved_at.is_some_and(|t| t < cutoff)
    })?;
    if old.is_empty() {
        return Ok(Vec::new());
    }
    store.write(|tx| {
        for r in &old {
            tx.delete_request(r.id)?;
        }
        tx.audit(&AuditRecord {
            time: now,
            user: "-".into(),
            address: "local".into(),
            action: "requests purged".into(),
            object: format!("requests:{}", old.len()),
            detail: format!("ended before {cutoff}"),
        })?;
        Ok(old.iter().map(|r| r.token.clone()).collect())
    })
}

/// Records a successful tunnel hello: the pairing is collected. A hello with the system's
/// current certificate ends the grace of the predecessor it renewed (retired now: the
/// source has proven the new one); a hello with a predecessor still in its grace is
/// answered too (the source has not switched yet). Any other certificate of the system
/// (retired, revoked, unknown) gets None.
pub fn record_hello(
    store: &Store,
    serial: &str,
    now: UnixTime,
) -> Result<Option<SystemRecord>, PairingError> {
    let Some(cert) = store.cert(serial)? else {
        return Ok(None);
    };
    store.write(|tx| {
        let Some(mut row) = tx.system(cert.system_id)? else {
            return Ok(None);
        };
        let current = row.cert_serial.as_deref() == Some(serial);
        if !current && tx.grace_until(serial)?.is_none() {
            return Ok(None);
        }
        let first = row.last_seen.is_none();
        row.last_seen = Some(now);
        tx.put_system(&row)?;
        if first {
            tx.audit(&AuditRecord {
                time: now,
                user: "-".into(),
                address: "tunnel".into(),
                action: "pairing collected".into(),
                object: format!("system:{}", row.id),
                detail: format!("serial {serial}"),
            })?;
        }
        if let Some(old) = cert.renews.as_deref().filter(|_| current) {
            if tx.retire(old, now)? {
                tx.audit(&AuditRecord {
                    time: now,
                    user: "-".into(),
                    address: "tunnel".into(),
                    action: "certificate retired".into(),
                    object: format!("system:{}", row.id),
                    detail: format!("serial {old}, first hello with {serial}"),
                })?;
            }
        }
        Ok(Some(row))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::protocol::SpoolStatus;

    fn open(uuid: &str, fp: &str, addr: &str) -> OpenRequest {
        OpenRequest {
            system_uuid: uuid.into(),
            csr_fingerprint: fp.into(),
            remote_addr: addr.into(),
            expires: 100,
        }
    }

    const CAPS: Caps = Caps {
        max_pending: 3,
        per_address: 2,
        network_v4: 24,
        network_v6: 64,
        ttl_seconds: 60,
        retry_after: 30,
    };

    #[test]
    fn same_source_and_key_is_the_existing_request() {
        let o = vec![(7, open("u1", "k1", "a"))];
        assert_eq!(
            decide_filing(&o, "u1", "k1", "a", &CAPS),
            Filing::Existing(7)
        );
        assert!(matches!(
            decide_filing(&o, "u1", "k2", "a", &CAPS),
            Filing::Refuse(_)
        ));
        assert_eq!(decide_filing(&o, "u2", "k1", "a", &CAPS), Filing::Create);
    }

    #[test]
    fn address_and_global_caps_refuse() {
        let o = vec![(1, open("u1", "k", "a")), (2, open("u2", "k", "a"))];
        assert!(
            matches!(decide_filing(&o, "u3", "k", "a", &CAPS), Filing::Refuse(r) if r.to_string().contains("from a"))
        );
        assert_eq!(decide_filing(&o, "u3", "k", "b", &CAPS), Filing::Create);
        let o = vec![
            (1, open("u1", "k", "a")),
            (2, open("u2", "k", "b")),
            (3, open("u3", "k", "c")),
        ];
        assert!(matches!(
            decide_filing(&o, "u4", "k", "d", &CAPS),
            Filing::Refuse(_)
        ));
    }

    #[test]
    fn the_address_cap_counts_per_network() {
        let caps = Caps {
            per_address: 2,
            max_pending: 100,
            ..CAPS
        };
        let o = vec![
            (1, open("u1", "k", "198.51.100.7")),
            (2, open("u2", "k", "198.51.100.200")),
            (3, open("u3", "k", "2001:db8:0:1::1")),
        ];
        let refused = decide_filing(&o, "u9", "k", "198.51.100.99", &caps);
        assert_eq!(
            refused,
            Filing::Refuse(Cap::PerAddress {
                address: "198.51.100.0/24".into()
            })
        );
        assert!(refused_text(&refused).contains("from 198.51.100.0/24"));
        assert_eq!(
            decide_filing(&o, "u9", "k", "198.51.101.1", &caps),
            Filing::Create
        );
        let o6 = vec![
            (1, open("u1", "k", "2001:db8:0:1::1")),
            (2, open("u2", "k", "2001:db8:0:1:ffff::9")),
        ];
        assert!(matches!(
            decide_filing(&o6, "u9", "k", "2001:db8:0:1::77", &caps),
            Filing::Refuse(Cap::PerAddress { address }) if address == "2001:db8:0:1::/64"
        ));
        assert_eq!(
            decide_filing(&o6, "u9", "k", "2001:db8:0:2::1", &caps),
            Filing::Create
        );
        // Prefix lengths of a whole address count per address again.
        let exact = Caps {
            network_v4: 32,
            ..caps
        };
        assert_eq!(
            decide_filing(&o, "u9", "k", "198.51.100.99", &exact),
            Filing::Create
        );
    }

    fn refused_text(f: &Filing) -> String {
        match f {
            Filing::Refuse(c) => c.to_string(),
            other => format!("{other:?}"),
        }
    }

    #[test]
    fn roles_follow_the_appliance_rules() {
        let r = RequestRecord::fixture(3);
        let fresh = source_row(None, &r, 1, "ab", 99, 5, 1);
        assert_eq!(fresh.role.as_str(), "Non-Managed Replication Source");
        assert_eq!(fresh.id, 5);
        let managed = SystemRecord {
            role: Role::Managed,
            ..fresh.clone()
        };
        let row = source_row(Some(managed), &r, 2, "cd", 99, 6, 1);
        assert_eq!(row.role.as_str(), "Replication Source");
        assert!(row.was_managed);
        assert_eq!(row.id, 5);
        assert_eq!(row.storage_id, Some(2));
    }

    #[test]
    fn system_rows_stored_with_role_strings_still_decode_and_encode_the_same() {
        // As the database held them when the role was a plain string.
        let managed = r#"{"id":2,"name":"dpu","host":"dpu.example","role":"Managed DPU","created":1,"updated":1}"#;
        let paired = r#"{"id":3,"name":"src","host":"src.example","role":"Non-Managed Replication Source","system_uuid":"u","version":"1","storage_id":2,"created":1,"updated":2,"cert_serial":"ab","certificate_expires":9,"last_seen":null,"was_managed":false,"request_id":4}"#;
        let was_managed = r#"{"id":5,"name":"m","host":"m.example","role":"Replication Source","created":1,"updated":1,"was_managed":true}"#;
        for (stored, role) in [
            (managed, Role::Managed),
            (paired, Role::NonManagedSource),
            (was_managed, Role::Source),
        ] {
            let row: SystemRecord = serde_json::from_str(stored).unwrap();
            assert_eq!(row.role, role);
            let again = serde_json::to_value(&row).unwrap();
            assert_eq!(again["role"], role.as_str());
        }
        let unknown = managed.replace("Managed DPU", "Toaster");
        assert!(serde_json::from_str::<SystemRecord>(&unknown).is_err());
    }

    #[test]
    fn a_source_sees_an_ignored_request_as_expired() {
        let mut r = RequestRecord::fixture(3);
        r.status = RequestStatus::Ignored;
        assert_eq!(r.spool_status(30, "t:8444"), SpoolStatus::Expired);
        r.status = RequestStatus::Pending;
        assert_eq!(
            r.spool_status(30, "t:8444"),
            SpoolStatus::Pending {
                retry_after: 30,
                expires: 10
            }
        );
    }

    fn temp_store(name: &str) -> Store {
        let dir =
            std::env::temp_dir().join(format!("replgate-target-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        crate::fsx::ensure_private_dir(&dir).unwrap();
        Store::open(&dir.join("replgate.redb")).unwrap()
    }

    #[test]
    fn accepting_with_a_clock_outside_the_calendar_fails_and_leaves_the_request_pending() {
        let store = temp_store("clock");
        let at = time::OffsetDateTime::from_unix_timestamp(1_767_225_600).unwrap();
        let ca = Ca::generate("target ca", at).unwrap();
        let (_, csr_pem) = ca::generate_client_key_and_csr("u").unwrap();
        // Year 11476: past the last date `time` (and X.509's GeneralizedTime) can hold.
        let now: UnixTime = 300_000_000_000;
        let mut r = RequestRecord::fixture(3);
        r.csr_pem = csr_pem;
        r.created = now - 10;
        r.expires = now + 600;
        store.write(|tx| tx.put_request(&r)).unwrap();
        let storage = [Storage {
            id: 1,
            name: "b".into(),
            path: "/b".into(),
            usage: StorageUsage::Backup,
        }];
        let side = TargetSide {
            store: &store,
            ca: &ca,
            storage: &storage,
            client_lifetime: std::time::Duration::from_secs(30 * 86_400),
        };
        let actor = Actor {
            user: "root".into(),
            address: "-".into(),
        };
        let accept = Decision::Accept {
            storage_id: None,
            quota_mb: None,
        };
        let e = resolve(&side, r.id, accept, &actor, now).unwrap_err();
        assert!(matches!(e, PairingError::Clock(t) if t == now), "{e:?}");
        assert_eq!(
            store.request(r.id).unwrap().unwrap().status,
            RequestStatus::Pending
        );
        assert!(store.certs().unwrap().is_empty());
    }

    #[test]
    fn storage_must_exist_and_be_backup() {
        let s = vec![
            Storage {
                id: 1,
                name: "a".into(),
                path: "/a".into(),
                usage: StorageUsage::Archive,
            },
            Storage {
                id: 2,
                name: "b".into(),
                path: "/b".into(),
                usage: StorageUsage::Backup,
            },
        ];
        assert_eq!(choose_storage(&s, None).unwrap().id, 2);
        assert!(matches!(
            choose_storage(&s, Some(1)),
            Err(PairingError::StorageNotBackup(1))
        ));
        assert!(matches!(
            choose_storage(&s, Some(9)),
            Err(PairingError::UnknownStorage(9))
        ));
    }
}
