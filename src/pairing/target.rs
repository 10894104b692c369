//! Target side of pairing once a request is filed: accept (sign, then one transaction
//! for resolution, certificate and systems row), reject, ignore, unpair, move storage,
//! register a managed system, expire and purge requests, the hello that collects a
//! pairing, and the role rules. Writes no files: the caller renders the spool after the
//! commit returns.

use crate::ca::{self, Ca, CaSet, ValidCsr};
use crate::config::{Storage, StorageUsage};
use crate::model::{Network, Role, UnixTime};
use crate::pairing::error::{time_of, PairingError};
use crate::pairing::fields::{check_managed, rejection_message};
use crate::pairing::Actor;
use crate::store::{
    AuditRecord, CertRecord, RequestRecord, RequestStatus, Retention, Store, StoreError,
    SystemRecord, Txn,
};

/// What an admin decided.
#[derive(Clone, Debug)]
pub enum Decision {
    /// `quota_mb`: `Some(None)` clears the quota, `None` keeps what a re-paired row had.
    /// `replaces_system_id`: the request comes from a replacement appliance that takes
    /// over this lost source's pairing and copies (SPEC 20).
    Accept {
        storage_id: Option<u64>,
        quota_mb: Option<Option<u64>>,
        replaces_system_id: Option<u64>,
    },
    Reject {
        message: String,
    },
}

/// Picks the storage for an accept: the named one (must be `backup`) or the default, a
/// directory or a bucket alike.
pub fn choose_storage(storage: &[Storage], wanted: Option<u64>) -> Result<&Storage, PairingError> {
    let s = match wanted {
        Some(id) => {
            let s = storage
                .iter()
                .find(|s| s.id == id)
                .ok_or(PairingError::UnknownStorage(id))?;
            if s.usage != StorageUsage::Backup {
                return Err(PairingError::StorageNotBackup(id));
            }
            s
        }
        None => storage
            .iter()
            .find(|s| s.usage == StorageUsage::Backup)
            .ok_or(PairingError::NoBackupStorage)?,
    };
    Ok(s)
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
            last_serial: None,
            was_managed: false,
            request_id: Some(request.id),
            asset_tag: request.asset_tag.clone(),
            quota_mb: None,
            retention: None,
            share: None,
            copies_uuid: None,
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

/// The lost source a replacement appliance's request takes over: a replication source
/// here, and the requesting appliance is not already paired here as another system.
pub(crate) fn replaced_system(
    tx: &Txn,
    r: &RequestRecord,
    old: u64,
) -> Result<SystemRecord, PairingError> {
    let row = tx.system(old)?.ok_or(PairingError::UnknownSystem(old))?;
    if !row.role.is_source() {
        return Err(PairingError::NotASource(old));
    }
    if let Some(other) = matching_system(tx, r)?.filter(|s| s.id != old) {
        return Err(PairingError::InvalidField {
            field: "replaces_system_id",
            problem: format!(
                "cannot be used: the requesting appliance is already paired here as system {}",
                other.id
            ),
        });
    }
    Ok(row)
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
    /// The CAs in force: the signing one issues, the one in force is what sources pin.
    pub cas: &'a CaSet,
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
        cas,
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
            replaces_system_id,
        } => {
            // A replacement keeps the lost source's storage unless the admin names one.
            let inherited = match replaces_system_id {
                Some(old) => store.system(old)?.and_then(|s| s.storage_id),
                None => None,
            };
            let storage = match (storage_id.or(inherited), current.requested_storage_id) {
                (None, Some(asked)) => choose_storage(storage, Some(asked))
                    .map_err(|_| PairingError::RequestedStorageUnusable(asked))?,
                (chosen, _) => choose_storage(storage, chosen)?,
            };
            let csr = ca::parse_csr(&current.csr_pem).map_err(PairingError::Csr)?;
            let issued = sign(
                cas.signing(),
                &csr,
                &current.system_uuid,
                client_lifetime,
                now,
            )?;
            store.write(|tx| {
                let r = tx.request(id)?.ok_or(PairingError::UnknownRequest(id))?;
                check_pending(&r, now)?;
                let replaces = replaces_system_id
                    .map(|old| replaced_system(tx, &r, old))
                    .transpose()?;
                accept_in(tx, r, storage, &issued, quota_mb, replaces, actor, now)
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
/// With `replaces` (a row [`replaced_system`] checked), the request's appliance takes
/// over that row: its id, lineage, quota and copies; its certificates are revoked here.
#[allow(clippy::too_many_arguments)]
pub(crate) fn accept_in(
    tx: &Txn,
    mut r: RequestRecord,
    storage: &Storage,
    issued: &ca::IssuedCert,
    quota_mb: Option<Option<u64>>,
    replaces: Option<SystemRecord>,
    actor: &Actor,
    now: UnixTime,
) -> Result<Resolved, PairingError> {
    let id = r.id;
    let replacing = replaces.is_some();
    let existing = match replaces {
        Some(old) => Some(old),
        None => matching_system(tx, &r)?,
    };
    // The copies stay where they are: under the uuid the replaced system kept them.
    let copies_uuid = existing
        .as_ref()
        .filter(|_| replacing)
        .and_then(|s| s.copies_uuid().map(String::from))
        .filter(|u| *u != r.system_uuid);
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
    if replacing {
        row.copies_uuid = copies_uuid.clone();
        tx.audit(&actor.audit(
            now,
            "system replaced",
            format!("system:{}", row.id),
            format!(
                "by request {id} from {} ({}): old certificates revoked, copies of {} inherited",
                r.host,
                r.system_uuid,
                copies_uuid.as_deref().unwrap_or(&r.system_uuid)
            ),
        ))?;
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
        issuer: Some(issued.issuer.clone()),
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
    r.took_over = replacing.then_some(row.id);
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

/// What `PUT /api/replication/source?sid=` changes: the storage, the quota, the share of
/// receiving sessions, or several.
#[derive(Clone, Copy, Debug, Default)]
pub struct SourceChange {
    pub storage_id: Option<u64>,
    /// `Some(None)` clears the quota.
    pub quota_mb: Option<Option<u64>>,
    /// `Some(None)` keeps every received backup (no retention policy).
    pub retention: Option<Option<Retention>>,
    /// `Some(None)` sets the weight back to the default (1).
    pub share: Option<Option<u32>>,
}

/// Moves a source to another storage, sets its quota, its retention policy and/or its
/// share.
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
        if let Some(policy) = change.retention {
            let shown = |p: Option<Retention>| match p {
                None => "keep all".to_string(),
                Some(p) => format!(
                    "keep_last {} keep_days {}",
                    p.keep_last.map_or("-".into(), |n| n.to_string()),
                    p.keep_days.map_or("-".into(), |n| n.to_string())
                ),
            };
            details.push(format!(
                "retention {} -> {}",
                shown(row.retention),
                shown(policy)
            ));
            row.retention = policy;
        }
        if let Some(w) = change.share {
            let before = row.share();
            row.share = w;
            details.push(format!("share {before} -> {}", row.share()));
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
    check_managed(name, host, system_uuid, asset_tag)?;
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
            last_serial: None,
            was_managed: false,
            request_id: None,
            asset_tag: asset_tag.map(String::from),
            quota_mb: None,
            retention: None,
            share: None,
            copies_uuid: None,
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
        row.last_serial = Some(serial.to_string());
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
        let cas = CaSet::single(Ca::generate("target ca", at).unwrap());
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
            kind: crate::config::StorageKind::Dir,
        }];
        let side = TargetSide {
            store: &store,
            cas: &cas,
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
            replaces_system_id: None,
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
                kind: crate::config::StorageKind::Dir,
            },
            Storage {
                id: 2,
                name: "b".into(),
                path: "/b".into(),
                usage: StorageUsage::Backup,
                kind: crate::config::StorageKind::Dir,
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

    /// A bucket takes a source by name and as the default, as a directory does.
    #[test]
    fn an_s3_storage_takes_a_source() {
        let bucket = Storage {
            id: 3,
            name: "bucket".into(),
            path: "/data/s3/3".into(),
            usage: StorageUsage::Backup,
            kind: crate::config::StorageKind::S3(Box::new(crate::config::S3Storage {
                endpoint: "https://s3.example.net".into(),
                bucket: "b".into(),
                prefix: String::new(),
                region: "us-east-1".into(),
                credentials_file: "/etc/replgate/s3.toml".into(),
                path_style: false,
                ca_file: None,
                capacity_mb: 1,
            })),
        };
        let s = vec![bucket];
        for wanted in [None, Some(3)] {
            let chosen = choose_storage(&s, wanted).unwrap();
            assert_eq!((chosen.id, chosen.kind.as_str()), (3, "s3"));
        }
    }
}
