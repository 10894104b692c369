//! `POST /api/replication/restore` (SPEC 20), source side: asks the target what it holds
//! for this source (through the tunnel, with the pairing's certificate), picks what the
//! body names, and queues the restore items the restore job pulls; and the items'
//! shape in the queue lists (`direction: "restore"`). `POST/GET /api/replication/drill`:
//! queue a restore drill, list the results. Parse, call `replication::restore` and
//! `replication::drill`, render.

use serde_json::{json, Value};

use super::body::Body;
use super::error::ApiError;
use super::{Call, Reply};
use crate::remote::restore::RestoreClient;
use crate::replication::drill;
use crate::replication::restore::{self, Board, Request, Selection};
use crate::store::{DrillRecord, RestoreItem, RestoreStatus};

const MIB: u64 = 1024 * 1024;

/// A restore item as the queue lists show it.
pub(super) fn item_json(i: &RestoreItem, target: &str, board: &Board) -> Value {
    let (bytes_done, bytes_received) = match i.status {
        RestoreStatus::Active => board.get(i.id).unwrap_or((i.bytes_done, i.bytes_received)),
        _ => (i.bytes_done, i.bytes_received),
    };
    let mut v = json!({
        "id": i.id,
        "direction": "restore",
        "target_id": i.target_id,
        "target": target,
        "backup": i.backup,
        "client": i.backup.split('/').next().unwrap_or(""),
        "storage_id": i.storage_id,
        "size": i.size,
        "mb_size": i.size.div_ceil(MIB),
        "bytes_done": bytes_done,
        "bytes_received": bytes_received,
        "queue_position": 0,
        "status": i.status.as_str(),
        "queued": i.queued,
        "attempts": i.attempts,
        "sha256": i.sha256,
        "overwrite": i.overwrite,
    });
    for (k, t) in [("started", i.started), ("finished", i.finished)] {
        if let Some(t) = t {
            v[k] = json!(t);
        }
    }
    if let Some(m) = &i.message {
        v["message"] = json!(m);
    }
    v
}

fn names(body: &Body, field: &str) -> Result<Option<Vec<String>>, ApiError> {
    let Some(v) = body.value(field) else {
        return Ok(None);
    };
    let list = v.as_array().filter(|l| !l.is_empty()).ok_or_else(|| {
        ApiError::BadRequest(format!(
            "field `{field}` must be a non-empty list of strings"
        ))
    })?;
    list.iter()
        .map(|n| {
            n.as_str().map(String::from).ok_or_else(|| {
                ApiError::BadRequest(format!("field `{field}` must be a list of strings"))
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

fn selection(body: &Body) -> Result<Selection, ApiError> {
    let backups = names(body, "backups")?;
    let clients = names(body, "clients")?;
    let all = body.opt_flag("all")?.unwrap_or(false);
    match (backups, clients, all) {
        (Some(b), None, false) => Ok(Selection::Backups(b)),
        (None, Some(c), false) => Ok(Selection::Clients(c)),
        (None, None, true) => Ok(Selection::All),
        _ => Err(ApiError::BadRequest(
            "give exactly one of the fields `backups`, `clients` or `all` (true)".into(),
        )),
    }
}

/// `POST /api/replication/restore {"target_id", "backups" | "clients" | "all",
/// "storage_id"?, "overwrite"?}` → 202 `{"restore": [items]}`.
pub(super) fn restore(call: &Call) -> Result<Reply, ApiError> {
    let body = call.json()?;
    let target_id = body.id("target_id")?;
    let selection = selection(&body)?;
    let overwrite = body.opt_flag("overwrite")?.unwrap_or(false);
    let app = call.app;
    let storage = match body.opt_id("storage_id")? {
        Some(id) => app
            .config
            .storage
            .iter()
            .find(|s| s.id == id)
            .ok_or_else(|| ApiError::NotFound(format!("no storage with id {id}")))?,
        None => app.config.replication_storage().ok_or_else(|| {
            ApiError::Conflict("this appliance has no backup storage to restore into".into())
        })?,
    };
    let target = restore::target_for_restore(&app.store, target_id)?;
    let identity = crate::identity::installed(&app.store, &app.target_dirs, target_id)
        .map_err(|e| ApiError::Internal(Box::new(e)))?
        .ok_or_else(|| {
            ApiError::Conflict(format!("target {target_id} has no installed certificate"))
        })?;
    let tunnel = target.tunnel.clone().unwrap_or_default();
    let client = RestoreClient {
        addr: &tunnel,
        ca_pem: &target.ca_pem,
        cert_pem: &identity.cert_pem,
        key_pem: &identity.key_pem,
    };
    let listing = client
        .listing()
        .map_err(|e| ApiError::BadGateway(format!("target {target_id} ({tunnel}): {e}")))?;
    let offered = restore::check_listing(&listing)?;
    let chosen = restore::choose(offered, &selection)?;
    let req = Request {
        target_id,
        storage_id: storage.id,
        overwrite,
    };
    let items = restore::start(&app.store, &req, &chosen, &call.actor(), call.now)?;
    log::info!(
        "restore of {} backups from target {target_id} into storage {} queued by {}",
        items.len(),
        storage.id,
        call.actor().user
    );
    let board = &app.replication.restores;
    let list: Vec<Value> = items
        .iter()
        .map(|i| item_json(i, &target.host, board))
        .collect();
    Ok(Reply::json(202, json!({ "restore": list })))
}

fn drill_json(d: &DrillRecord) -> Value {
    let mut v = json!({
        "id": d.id,
        "target_id": d.target_id,
        "bytes_asked": d.bytes_asked,
        "scheduled": d.scheduled,
        "requested": d.requested,
        "result": d.result.as_str(),
        "bytes": d.bytes,
        "copies": d.copies,
        "duration_ms": d.duration_ms,
    });
    for (k, t) in [("started", d.started), ("finished", d.finished)] {
        if let Some(t) = t {
            v[k] = json!(t);
        }
    }
    if let Some(m) = &d.message {
        v["message"] = json!(m);
    }
    v
}

/// `POST /api/replication/drill {"target_id", "bytes"?}` → 202 `{"drill"}`: the restore
/// job runs it next.
pub(super) fn request_drill(call: &Call) -> Result<Reply, ApiError> {
    let body = call.json()?;
    let target_id = body.id("target_id")?;
    let bytes = body.opt_number("bytes", 1, u64::MAX / 2)?;
    let d = drill::request(
        &call.app.store,
        target_id,
        bytes,
        false,
        &call.actor(),
        call.now,
    )?;
    Ok(Reply::json(202, json!({ "drill": drill_json(&d) })))
}

/// `GET /api/replication/drill` → `{"drills": [...] (newest first), "last_success"?}`.
pub(super) fn list_drills(call: &Call) -> Result<Reply, ApiError> {
    let book = call.app.store.drills()?;
    let drills: Vec<Value> = book.drills.iter().rev().map(drill_json).collect();
    let mut v = json!({ "drills": drills });
    if let Some(t) = drill::last_success(&book.drills) {
        v["last_success"] = json!(t);
    }
    Ok(Reply::json(200, v))
}
