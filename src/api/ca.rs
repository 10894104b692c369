//! The CA rollover's handlers (SPEC 22): `GET /api/ca/rollover` shows the phase and the
//! chain every paired source is on, `POST /api/ca/rollover {"phase"}` starts, finishes or
//! aborts a rollover (superuser, audited), and the appliance protocol's public
//! `GET /replication/v1/ca` shows the CAs (certificates only). Parse, call
//! `pairing::rollover`, put the new set of CAs in place, map.

use serde_json::{json, Value};

use super::error::ApiError;
use super::{Call, Reply};
use crate::identity::CaFiles;
use crate::pairing::rollover::{self, RolloverSide, SourceChain, Status};

fn source_json(s: &SourceChain) -> Value {
    let mut v = json!({
        "sid": s.system_id,
        "name": s.name,
        "chain": s.chain.as_str(),
        "active": s.active,
    });
    if let Some(seen) = s.last_seen {
        v["last_seen"] = json!(seen);
    }
    v
}

/// The status as `GET /api/ca/rollover` answers it.
fn status_json(st: &Status) -> Value {
    let mut v = json!({
        "phase": st.phase.as_str(),
        "ca_fingerprint": st.fingerprint,
        "sources": st.sources.iter().map(source_json).collect::<Vec<_>>(),
        "old_chain": st.stragglers().count(),
        "aborted_cas": st.aborted,
    });
    if let Some(next) = &st.next {
        v["new_ca_fingerprint"] = json!(next);
    }
    if let Some(started) = st.started {
        v["started"] = json!(started);
    }
    if let Some(ends) = st.window_ends {
        v["window_ends"] = json!(ends);
    }
    v
}

/// `GET /api/ca/rollover`.
pub(super) fn status(call: &Call) -> Result<Reply, ApiError> {
    let app = call.app;
    let st = rollover::status(
        &app.store,
        &app.cas.get(),
        app.config.rollover_window,
        call.now,
    )?;
    Ok(Reply::json(200, status_json(&st)))
}

/// `POST /api/ca/rollover {"phase": "start" | "finish" | "abort"}`: the phase, then the
/// status as it is after it (`finish` also lists the sources it left behind, which must
/// pair again).
pub(super) fn change(call: &Call) -> Result<Reply, ApiError> {
    let body = call.json()?;
    let phase = body.str("phase")?;
    if !matches!(phase, "start" | "finish" | "abort") {
        return Err(ApiError::BadRequest(format!(
            "field `phase` must be `start`, `finish` or `abort`, not {}",
            super::body::quoted(phase)
        )));
    }
    let app = call.app;
    let _changing = app.cas.changing();
    let set = app.cas.get();
    let files = CaFiles::new(&app.config.data_dir);
    let name = rollover::ca_name(&app.system_uuid);
    let side = RolloverSide {
        store: &app.store,
        keys: &files,
        set: &set,
        window: app.config.rollover_window,
        name: &name,
        fault: app.config.fault,
    };
    let actor = call.actor();
    let (fresh, left) = match phase {
        "start" => (rollover::start(&side, &actor, call.now)?, Vec::new()),
        "finish" => rollover::finish(&side, &actor, call.now)?,
        _ => (rollover::abort(&side, &actor, call.now)?, Vec::new()),
    };
    app.apply_cas(fresh);
    if !left.is_empty() {
        log::warn!(
            "ca rollover finished with {} sources still on the old ca (systems {}): they must \
             pair again",
            left.len(),
            left.iter()
                .map(|s| s.system_id.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let st = rollover::status(
        &app.store,
        &app.cas.get(),
        app.config.rollover_window,
        call.now,
    )?;
    let mut v = status_json(&st);
    if phase == "finish" {
        v["left_behind"] = left.iter().map(source_json).collect();
    }
    Ok(Reply::json(200, v))
}

/// `GET /replication/v1/ca` (public): the CA in force, during a rollover the new CA and
/// its cross-certificate, and the cross-certificates of finished rollovers. What a source
/// that was off through a rollover reads to tell its admin why it must pair again.
pub(super) fn public(call: &Call) -> Result<Reply, ApiError> {
    let answer = rollover::answer(&call.app.cas.get(), None);
    Ok(Reply::json(200, serde_json::to_value(answer)?))
}
