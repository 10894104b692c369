//! The recycle bin's handlers (target side, SPEC 20): list a source's bin, purge it (all
//! or one backup), put one back. Parse, call `replication::recycle`, render. The retention
//! policy itself is set with `PUT /api/replication/source` (`pairing.rs`).

use serde_json::{json, Value};

use super::error::ApiError;
use super::replication::{received_json, source_of};
use super::{Call, Reply};
use crate::replication::receiver::Source;
use crate::replication::recycle::{self, Bin};
use crate::store::{RecycleRecord, RecycleState, Retention};

const MIB: u64 = 1024 * 1024;

/// The source `sid` names, as the bin's operations take it, and its retention policy.
fn source(call: &Call) -> Result<(Source, Option<Retention>), ApiError> {
    let (sid, uuid, storage) = source_of(call)?;
    let row = call.app.store.system(sid)?;
    let source = Source {
        system_id: sid,
        uuid,
        storage,
        quota_mb: row.as_ref().and_then(|r| r.quota_mb),
        share: row
            .as_ref()
            .map_or(crate::store::DEFAULT_SHARE, |r| r.share()),
    };
    Ok((source, row.and_then(|r| r.retention)))
}

fn bin<'a>(call: &Call<'a>) -> Bin<'a> {
    let app = call.app;
    Bin {
        store: &app.store,
        ledger: &app.replication.ledger,
        storages: &app.config.storage,
        recycler: &app.replication.recycler,
    }
}

fn entry_json(r: &RecycleRecord, recycle_days: u64) -> Value {
    let mut v = json!({
        "backup": r.backup,
        "client": r.backup.split('/').next().unwrap_or(""),
        "size": r.size,
        "mb_size": r.size.div_ceil(MIB),
        "sha256": r.sha256,
        "received": r.received,
        "removed": r.removed,
        "purge_after": recycle::purge_after(r, recycle_days),
        "storage_id": r.storage_id,
    });
    if let Some(m) = &r.damaged {
        v["damaged"] = json!(m);
    }
    v
}

/// `GET /api/replication/recycle?sid=N`: the source's bin, oldest removal first, with the
/// retention policy that fills it.
pub(super) fn list(call: &Call) -> Result<Reply, ApiError> {
    let (s, retention) = source(call)?;
    let days = call.app.config.recycle_days;
    let rows: Vec<RecycleRecord> = call
        .app
        .store
        .recycle(&s.uuid)?
        .into_iter()
        .filter(|r| r.state == RecycleState::Binned)
        .collect();
    Ok(Reply::json(
        200,
        json!({
            "sid": s.system_id,
            "retention": retention,
            "recycle_days": days,
            "bytes": recycle::bin_bytes(&rows),
            "recycle": rows.iter().map(|r| entry_json(r, days)).collect::<Vec<_>>(),
        }),
    ))
}

/// `DELETE /api/replication/recycle?sid=N[&backup=]`: purges the whole bin, or every
/// entry of that backup (404 when there is none).
pub(super) fn purge(call: &Call) -> Result<Reply, ApiError> {
    let (s, _) = source(call)?;
    let backup = call.query("backup");
    let purged = recycle::purge(&bin(call), &s, backup, &call.actor(), call.now)?;
    Ok(Reply::json(
        200,
        json!({
            "sid": s.system_id,
            "purged": purged.backups,
            "count": purged.backups.len(),
            "bytes": purged.bytes,
        }),
    ))
}

/// `POST /api/replication/recycle/restore?sid=N {"backup"}`: puts the newest bin entry
/// of that backup back among the received backups (409 while one of that name is
/// received, or being received).
pub(super) fn restore(call: &Call) -> Result<Reply, ApiError> {
    let (s, _) = source(call)?;
    let body = call.json()?;
    let backup = body.str("backup")?;
    let row = recycle::restore(&bin(call), &s, backup, &call.actor(), call.now)?;
    Ok(Reply::json(
        200,
        json!({ "sid": s.system_id, "restored": received_json(&row) }),
    ))
}
