//! Replication handlers, in the appliance's shapes: the queue (`GET /api/replication/queue`
//! with `/active` and `/inactive`, `POST` to add, `PUT` to remove or reset), the config,
//! the throttle, and on a target what a source delivered and its verify. Parse, call
//! `replication::admin`, render.

use serde::Serialize;
use serde_json::{json, Value};

use super::body::{number_value, parse_id, parse_number, quoted, Body};
use super::error::ApiError;
use super::{Call, Reply};
use crate::model::UnixTime;
use crate::replication::admin::{self, Action, Change, ItemView, ListQuery};
use crate::replication::live::Incoming;
use crate::store::{
    ItemStatus, ReceivedRecord, ReplicationConfig, RestoreStatus, Strategy, ThrottleRecord,
    ThrottleWindow,
};

/// Items per page unless `count` says otherwise, and the most it may say.
const DEFAULT_COUNT: u64 = 100;
const MAX_COUNT: u64 = 1_000;
const MIB: u64 = 1024 * 1024;

/// One queue item on the wire (`get_replication_queue`'s fields).
#[derive(Serialize)]
struct ItemJson<'a> {
    id: u64,
    target_id: u64,
    target: &'a str,
    backup: &'a str,
    client: &'a str,
    size: u64,
    mb_size: u64,
    bytes_done: u64,
    bytes_sent: u64,
    queue_position: u64,
    status: &'static str,
    queued: UnixTime,
    #[serde(skip_serializing_if = "Option::is_none")]
    started: Option<UnixTime>,
    #[serde(skip_serializing_if = "Option::is_none")]
    finished: Option<UnixTime>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rate_bps: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    eta_s: Option<u64>,
    attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_at: Option<UnixTime>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sha256: Option<&'a str>,
}

fn item_json(v: &ItemView) -> ItemJson<'_> {
    let i = &v.item;
    // While active, progress is the live count (fresh every frame), never older than the
    // last checkpoint written to the database.
    let bytes_done = v
        .progress
        .as_ref()
        .map(|p| p.bytes_done().max(i.bytes_done))
        .unwrap_or(i.bytes_done);
    ItemJson {
        id: i.id,
        target_id: i.target_id,
        target: &v.target,
        backup: &i.backup,
        client: i.backup.split('/').next().unwrap_or(""),
        size: i.size,
        mb_size: i.size.div_ceil(MIB),
        bytes_done,
        bytes_sent: i.bytes_sent,
        queue_position: v.queue_position,
        status: i.status.as_str(),
        queued: i.queued,
        started: i.started,
        finished: i.finished,
        rate_bps: v.progress.as_ref().map(|p| p.rate_bps()),
        eta_s: v.progress.as_ref().and_then(|p| p.eta_s()),
        attempts: i.attempts,
        // When a backing-off or refused item is tried next; a failed one without it
        // waits for an admin's reset.
        retry_at: i
            .retry_at
            .filter(|_| matches!(i.status, ItemStatus::Waiting | ItemStatus::Failed)),
        message: i.message.as_deref(),
        sha256: i.sha256.as_deref(),
    }
}

/// A transfer a source is sending this appliance now (target side).
fn incoming_json(i: &Incoming) -> Value {
    let p = &i.progress;
    let mut v = json!({
        "sid": i.system_id,
        "backup": i.backup,
        "client": i.backup.split('/').next().unwrap_or(""),
        "size": p.size,
        "mb_size": p.size.div_ceil(MIB),
        "bytes_done": p.bytes_done(),
        "queue_position": 0,
        "status": "active",
        "started": i.started,
        "rate_bps": p.rate_bps(),
    });
    if let Some(eta) = p.eta_s() {
        v["eta_s"] = json!(eta);
    }
    v
}

fn list_query(call: &Call) -> Result<ListQuery, ApiError> {
    Ok(ListQuery {
        target_id: call
            .query("target_id")
            .map(|v| parse_id("target_id", v))
            .transpose()?,
        start: call
            .query("start")
            .map(|v| parse_number("start", v, 0, u64::MAX / 2))
            .transpose()?
            .unwrap_or(0),
        count: call
            .query("count")
            .map(|v| parse_number("count", v, 1, MAX_COUNT))
            .transpose()?
            .unwrap_or(DEFAULT_COUNT),
        include_done: call.query_flag("include_done").unwrap_or(false),
    })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Lists {
    All,
    Active,
    Inactive,
}

fn queue_reply(call: &Call, which: Lists) -> Result<Reply, ApiError> {
    let q = list_query(call)?;
    let shared = &call.app.replication;
    let l = admin::list(&call.app.store, &shared.live, q)?;
    let restores = restore_lists(call, q.target_id)?;
    let mut out = serde_json::Map::new();
    if which != Lists::Inactive {
        let mut active: Vec<Value> = l
            .active
            .iter()
            .map(|v| serde_json::to_value(item_json(v)))
            .collect::<Result<_, _>>()?;
        active.extend(l.incoming.iter().map(|i| incoming_json(i)));
        active.extend(restores.active);
        out.insert("active".into(), Value::Array(active));
    }
    if which != Lists::Active {
        let mut inactive: Vec<Value> = l
            .inactive
            .iter()
            .map(|v| serde_json::to_value(item_json(v)))
            .collect::<Result<_, _>>()?;
        let total = l.total_inactive + restores.inactive.len() as u64;
        inactive.extend(restores.inactive);
        out.insert("inactive".into(), Value::Array(inactive));
        out.insert("total_inactive".into(), json!(total));
        out.insert("start_position".into(), json!(q.start));
    }
    if q.include_done {
        let mut done: Vec<Value> = l
            .done
            .iter()
            .map(|v| serde_json::to_value(item_json(v)))
            .collect::<Result<_, _>>()?;
        let total = l.total_done + restores.done.len() as u64;
        done.extend(restores.done);
        out.insert("done".into(), Value::Array(done));
        out.insert("total_done".into(), json!(total));
    }
    Ok(Reply::json(200, Value::Object(out)))
}

/// Restore items (`direction: "restore"`) by list: they follow the replication items of
/// each list, unpaged (finished ones newest first).
#[derive(Default)]
struct RestoreLists {
    active: Vec<Value>,
    inactive: Vec<Value>,
    done: Vec<Value>,
}

fn restore_lists(call: &Call, target_id: Option<u64>) -> Result<RestoreLists, ApiError> {
    let book = call.app.store.restores()?;
    let mut out = RestoreLists::default();
    if book.items.is_empty() {
        return Ok(out);
    }
    let hosts: std::collections::HashMap<u64, String> = call
        .app
        .store
        .targets()?
        .into_iter()
        .map(|t| (t.id, t.host))
        .collect();
    let board = &call.app.replication.restores;
    for i in book.items.iter().rev() {
        if target_id.is_some_and(|t| t != i.target_id) {
            continue;
        }
        let host = hosts.get(&i.target_id).map(String::as_str).unwrap_or("");
        let v = super::restore::item_json(i, host, board);
        match i.status {
            RestoreStatus::Active => out.active.push(v),
            RestoreStatus::Waiting | RestoreStatus::Failed => out.inactive.push(v),
            RestoreStatus::Done => out.done.push(v),
        }
    }
    // Waiting and active ones oldest first, as the queue runs them.
    out.active.reverse();
    out.inactive.reverse();
    Ok(out)
}

/// `GET /api/replication/queue`.
pub(super) fn list(call: &Call) -> Result<Reply, ApiError> {
    queue_reply(call, Lists::All)
}

/// `GET /api/replication/queue/active`.
pub(super) fn list_active(call: &Call) -> Result<Reply, ApiError> {
    queue_reply(call, Lists::Active)
}

/// `GET /api/replication/queue/inactive`.
pub(super) fn list_inactive(call: &Call) -> Result<Reply, ApiError> {
    queue_reply(call, Lists::Inactive)
}

fn items_reply(
    status: u16,
    items: &[crate::store::QueueItem],
    call: &Call,
) -> Result<Reply, ApiError> {
    let hosts: std::collections::HashMap<u64, String> = call
        .app
        .store
        .targets()?
        .into_iter()
        .map(|t| (t.id, t.host))
        .collect();
    let views: Vec<ItemView> = items
        .iter()
        .map(|i| ItemView {
            target: hosts.get(&i.target_id).cloned().unwrap_or_default(),
            queue_position: 0,
            progress: None,
            item: i.clone(),
        })
        .collect();
    let list: Vec<ItemJson<'_>> = views.iter().map(item_json).collect();
    Ok(Reply::json(status, json!({ "items": list })))
}

/// `POST /api/replication/queue {"target_id", "backup"}`.
pub(super) fn add(call: &Call) -> Result<Reply, ApiError> {
    let body = call.json()?;
    let target_id = body.id("target_id")?;
    let backup = body.str("backup")?;
    let app = call.app;
    let root = app.config.replication_storage().map(|s| s.path.clone());
    let item = admin::add(
        &app.store,
        &app.replication.live,
        root.as_deref(),
        target_id,
        backup,
        &call.actor(),
        call.now,
    )?;
    let view = ItemView {
        target: app
            .store
            .target(target_id)?
            .map(|t| t.host)
            .unwrap_or_default(),
        queue_position: 0,
        progress: None,
        item,
    };
    Ok(Reply::json(201, serde_json::to_value(item_json(&view))?))
}

fn ids_of(body: &Body) -> Result<Vec<u64>, ApiError> {
    let Some(v) = body.value("backups") else {
        return Ok(Vec::new());
    };
    let list = v
        .as_array()
        .ok_or_else(|| ApiError::BadRequest("field `backups` must be a list of {\"id\"}".into()))?;
    list.iter()
        .enumerate()
        .map(|(i, entry)| {
            let id = match entry {
                Value::Object(m) => m.get("id"),
                // A bare id is accepted too.
                other => Some(other),
            };
            id.ok_or_else(|| ApiError::BadRequest(format!("field `backups[{i}].id` is required")))
                .and_then(|v| super::body::id_value(&format!("backups[{i}].id"), v))
        })
        .collect()
}

fn clients_of(body: &Body) -> Result<Vec<String>, ApiError> {
    let Some(v) = body.value("clients") else {
        return Ok(Vec::new());
    };
    let list = v.as_array().ok_or_else(|| {
        ApiError::BadRequest("field `clients` must be a list of client names".into())
    })?;
    list.iter()
        .enumerate()
        .map(|(i, c)| {
            c.as_str().map(String::from).ok_or_else(|| {
                ApiError::BadRequest(format!("field `clients[{i}]` must be a string"))
            })
        })
        .collect()
}

/// `PUT /api/replication/queue {"backups": [{"id"}], "clients": [...], "action"}`.
pub(super) fn change(call: &Call) -> Result<Reply, ApiError> {
    let body = call.json()?;
    let action = match body.opt_str("action")?.unwrap_or("none") {
        "none" => Action::Remove,
        "reset" => Action::Reset,
        other => {
            return Err(ApiError::BadRequest(format!(
                "field `action`: {} is not one of none, reset",
                quoted(other)
            )))
        }
    };
    let ids = ids_of(&body)?;
    let clients = clients_of(&body)?;
    let c = Change {
        ids: &ids,
        clients: &clients,
        target_id: body.opt_id("target_id")?,
        action,
    };
    let app = call.app;
    let items = admin::change(
        &app.store,
        &app.replication.live,
        &c,
        &call.actor(),
        call.now,
    )?;
    items_reply(200, &items, call)
}

fn config_json(c: &ReplicationConfig) -> Value {
    json!({ "config": {
        "max_concurrent": c.max_concurrent,
        "strategy": c.strategy.as_str(),
        "queue_scheme": c.strategy.scheme(),
        "retries": c.retries,
    }})
}

/// `GET /api/replication/config`.
pub(super) fn get_config(call: &Call) -> Result<Reply, ApiError> {
    Ok(Reply::json(
        200,
        config_json(&call.app.store.replication_config()?),
    ))
}

/// `PUT /api/replication/config`: fields given replace the stored ones. The body may be
/// the object itself or wrapped in `{"config": {...}}`, as the GET answers.
pub(super) fn put_config(call: &Call) -> Result<Reply, ApiError> {
    let outer = call.json()?;
    let body = match outer.value("config") {
        Some(v @ Value::Object(_)) => Body::parse(v.to_string().as_bytes())?,
        _ => outer,
    };
    let mut c = call.app.store.replication_config()?;
    if let Some(n) = body.opt_number(
        "max_concurrent",
        1,
        u64::from(crate::replication::queue::MAX_CONCURRENT),
    )? {
        c.max_concurrent = n as u32;
    }
    if let Some(n) = body.opt_number(
        "retries",
        0,
        u64::from(crate::replication::queue::MAX_RETRIES),
    )? {
        c.retries = n as u32;
    }
    let by_name = body
        .opt_str("strategy")?
        .map(|s| {
            Strategy::from_name(s).ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "field `strategy`: {} is not one of manual, retention, recency",
                    quoted(s)
                ))
            })
        })
        .transpose()?;
    let by_scheme = body
        .opt_number("queue_scheme", 0, 2)?
        .and_then(Strategy::from_scheme);
    match (by_name, by_scheme) {
        (Some(a), Some(b)) if a != b => {
            return Err(ApiError::BadRequest(format!(
                "fields `strategy` ({}) and `queue_scheme` ({}) disagree",
                a.as_str(),
                b.scheme()
            )))
        }
        (Some(s), _) | (None, Some(s)) => c.strategy = s,
        (None, None) => {}
    }
    let app = call.app;
    let c = admin::set_config(
        &app.store,
        &app.replication.live,
        c,
        &call.actor(),
        call.now,
    )?;
    Ok(Reply::json(200, config_json(&c)))
}

fn throttle_json(t: &ThrottleRecord) -> Value {
    json!({
        "throttle": t.windows.iter().map(|w| json!({
            "percentage": w.percentage,
            "days": w.days,
            "start": w.start,
            "end": w.end,
        })).collect::<Vec<_>>(),
        "link_mbps": t.link_mbps,
    })
}

/// `GET /api/replication/throttle`.
pub(super) fn get_throttle(call: &Call) -> Result<Reply, ApiError> {
    Ok(Reply::json(200, throttle_json(&call.app.store.throttle()?)))
}

fn window(i: usize, v: &Value) -> Result<ThrottleWindow, ApiError> {
    let field = |name: &str| format!("throttle[{i}].{name}");
    let m = v
        .as_object()
        .ok_or_else(|| ApiError::BadRequest(format!("field `throttle[{i}]` must be an object")))?;
    let number = |name: &str, min: u64, max: u64| -> Result<u64, ApiError> {
        let v = m
            .get(name)
            .ok_or_else(|| ApiError::BadRequest(format!("field `{}` is required", field(name))))?;
        number_value(&field(name), v, min, max)
    };
    let days = m
        .get("days")
        .and_then(Value::as_array)
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "field `{}` must be a list of weekdays 0-6",
                field("days")
            ))
        })?
        .iter()
        .map(|d| number_value(&field("days"), d, 0, 6).map(|d| d as u8))
        .collect::<Result<Vec<u8>, ApiError>>()?;
    Ok(ThrottleWindow {
        percentage: number("percentage", 1, 100)? as u32,
        days,
        start: number("start", 0, 23)? as u32,
        end: number("end", 0, 23)? as u32,
    })
}

/// `PUT /api/replication/throttle {"throttle": [...], "link_mbps"}`: either or both.
pub(super) fn put_throttle(call: &Call) -> Result<Reply, ApiError> {
    let body = call.json()?;
    let mut t = call.app.store.throttle()?;
    if let Some(v) = body.value("throttle") {
        let list = v.as_array().ok_or_else(|| {
            ApiError::BadRequest("field `throttle` must be a list of windows".into())
        })?;
        t.windows = list
            .iter()
            .enumerate()
            .map(|(i, w)| window(i, w))
            .collect::<Result<_, _>>()?;
    }
    if let Some(n) = body.opt_number("link_mbps", 1, crate::replication::throttle::MAX_LINK_MBPS)? {
        t.link_mbps = n;
    }
    let app = call.app;
    let t = admin::set_throttle(
        &app.store,
        &app.replication.live,
        t,
        &call.actor(),
        call.now,
    )?;
    Ok(Reply::json(200, throttle_json(&t)))
}

/// The paired source `sid` names, with its uuid and storage.
pub(super) fn source_of(call: &Call) -> Result<(u64, String, crate::config::Storage), ApiError> {
    let sid = parse_id(
        "sid",
        call.query("sid")
            .ok_or_else(|| ApiError::BadRequest("query parameter `sid` is required".into()))?,
    )?;
    let row = call
        .app
        .store
        .system(sid)?
        .filter(|r| r.role.is_source())
        .ok_or_else(|| ApiError::NotFound(format!("no replication source with sid {sid}")))?;
    let uuid = row.copies_uuid().unwrap_or_default().to_string();
    let storage = row
        .storage_id
        .and_then(|id| call.app.config.storage.iter().find(|s| s.id == id))
        .cloned()
        .ok_or_else(|| ApiError::Conflict(format!("source {sid} has no storage")))?;
    Ok((sid, uuid, storage))
}

pub(super) fn received_json(r: &ReceivedRecord) -> Value {
    let mut v = json!({
        "backup": r.backup,
        "client": r.backup.split('/').next().unwrap_or(""),
        "size": r.size,
        "mb_size": r.size.div_ceil(MIB),
        "sha256": r.sha256,
        "received": r.received,
        "storage_id": r.storage_id,
        "status": if r.damaged.is_some() { "damaged" } else { "ok" },
    });
    if let Some(t) = r.verified {
        v["verified"] = json!(t);
    }
    if let Some(m) = &r.damaged {
        v["message"] = json!(m);
    }
    if let Some(n) = r.bytes_received {
        v["bytes_received"] = json!(n);
    }
    if r.pinned {
        v["pinned"] = json!(true);
    }
    v
}

fn verify_json(s: &crate::replication::verify::VerifyStatus) -> Value {
    let mut v = json!({
        "running": s.running,
        "started": s.started,
        "total": s.total,
        "checked": s.checked,
        "damaged": s.damaged,
        "missing": s.missing,
    });
    if let Some(t) = s.finished {
        v["finished"] = json!(t);
    }
    v
}

/// `GET /api/replication/received?sid=N` (target).
pub(super) fn received(call: &Call) -> Result<Reply, ApiError> {
    let (sid, uuid, storage) = source_of(call)?;
    let rows = admin::received(&call.app.store, &uuid, Some(storage.id))?;
    let mut v = json!({
        "sid": sid,
        "received": rows.iter().map(received_json).collect::<Vec<_>>(),
    });
    // The verify running or run since the start, else the last one kept.
    let status = match call.app.replication.verifier.status(sid) {
        Some(s) => Some(s),
        None => call
            .app
            .store
            .verify_run(sid)?
            .map(|r| crate::replication::verify::status_of_run(&r)),
    };
    if let Some(s) = status {
        v["verify"] = verify_json(&s);
    }
    Ok(Reply::json(200, v))
}

/// `POST /api/replication/verify?sid=N` (target): starts re-reading every copy; answers
/// 202 at once, progress and results show in `GET /api/replication/received`.
pub(super) fn verify(call: &Call) -> Result<Reply, ApiError> {
    let (sid, uuid, storage) = source_of(call)?;
    let copies = admin::received(&call.app.store, &uuid, Some(storage.id))?.len() as u64;
    let target = crate::replication::verify::VerifyTarget {
        system_id: sid,
        uuid,
        storage_id: storage.id,
        storage: storage.clone(),
        copies,
    };
    let status = call
        .app
        .replication
        .verifier
        .request(target, false, call.now)
        .map_err(|e| match e {
            crate::replication::verify::VerifyError::Running => ApiError::Conflict(e.to_string()),
            crate::replication::verify::VerifyError::Stopped => {
                ApiError::Unavailable(e.to_string())
            }
        })?;
    let mut v = json!({ "sid": sid, "status": "verifying" });
    v["verify"] = verify_json(&status);
    Ok(Reply::json(202, v))
}
