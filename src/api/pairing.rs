//! Target-side pairing handlers: the admin endpoints (`/api/replication/...`, systems,
//! storage) and the appliance protocol (`/replication/v1/...`).

use serde_json::{json, Value};

use super::body::{number_value, parse_id, Body};
use super::error::ApiError;
use super::{Call, Reply};
use crate::config::Fault;
use crate::model::Network;
use crate::pairing::error::{PairingError, TokenRefusal};
use crate::pairing::fields::{NewRequest, MAX_MESSAGE_CHARS};
use crate::pairing::filing::{self, Caps, FilingRules};
use crate::pairing::target::{self, Decision, SourceChange};
use crate::store::{RequestStatus, Retention, MAX_SHARE};
use crate::wire::protocol::{self, SpoolToken};
use crate::wire::token::PairingToken;

/// Largest CSR accepted (an RSA-4096 CSR is about 1.7 KB of PEM).
const MAX_CSR_CHARS: usize = 16 * 1024;

/// Renders request `id`'s spool after a commit. A failure leaves the database right and
/// the spool behind; the spool retries it on its sweep (and at start), and the client
/// hears of a 500 with a reference.
fn write_spool(call: &Call, id: u64) -> Result<(), ApiError> {
    call.app.spool.sync(id, &call.app.store)?;
    Ok(())
}

// ---- /replication/v1 (appliance protocol, no AuthToken) ----

pub(super) fn file_request(call: &Call) -> Result<Reply, ApiError> {
    let body = call.json()?;
    let csr = body.str("csr")?;
    if csr.chars().count() > MAX_CSR_CHARS {
        return Err(ApiError::BadRequest(format!(
            "field `csr` exceeds {MAX_CSR_CHARS} characters"
        )));
    }
    let new = NewRequest {
        system_uuid: body.str("system_uuid")?.to_ascii_lowercase(),
        name: body.str("name")?.to_string(),
        host: body.str("host")?.to_string(),
        asset_tag: body
            .opt_str("asset_tag")?
            .filter(|t| !t.is_empty())
            .map(String::from),
        version: body.str("version")?.to_string(),
        csr_pem: csr.to_string(),
        remote_addr: call.address(),
        requested_storage_id: body.opt_id("storage_id")?,
        token: presented_token(&body)?,
    };
    let config = &call.app.config;
    let ttl = config.request_ttl.min(config.unverified_request_ttl);
    let rules = FilingRules {
        caps: Caps {
            max_pending: config.max_pending,
            per_address: config.max_pending_per_address,
            network_v4: config.pending_prefix_v4,
            network_v6: config.pending_prefix_v6,
            ttl_seconds: ttl.as_secs() as i64,
            crowded_ttl_seconds: config.crowded_request_ttl.min(ttl).as_secs() as i64,
            retry_after: config.poll_interval.as_secs(),
        },
        require_token: config.require_token,
    };
    let cas = call.app.cas.get();
    let side = target::TargetSide {
        store: &call.app.store,
        cas: &cas,
        storage: &config.storage,
        client_lifetime: config.client_cert_lifetime,
    };
    // Each audited event (a token used or refused, the filing, the accept) is its own info
    // line once committed (`Store::write`); a refusal is also the worker's 4xx line.
    let spool_token = crate::rand::hex_string(SpoolToken::LEN / 2);
    let filed = filing::file_request(&side, new, &rules, spool_token, call.now)?;
    let r = &filed.request;
    for other in filed.replaced.iter().chain(&filed.superseded) {
        write_spool(call, *other)?;
    }
    // Also on the idempotent path: a retry after a failed spool write repairs it.
    write_spool(call, r.id)?;
    let answer = protocol::Filed {
        request_id: r.id,
        poll: format!("/replication/v1/spool/{}/", r.token),
        retry_after: config.poll_interval.as_secs(),
        expires: r.expires,
        verification_code: r.verification_code.clone(),
        ca_fingerprint: cas.fingerprint(),
        status: Some(r.status.as_str().to_string()),
        replaces_system_id: r.took_over,
    };
    let value = serde_json::to_value(answer)?;
    Ok(Reply::json(if filed.created { 202 } else { 200 }, value))
}

/// The optional `token` of a filing: absent, `null` or `""` is none; anything else must
/// be a string, and one that is not a token is refused like a wrong token (403, nothing
/// filed).
fn presented_token(body: &Body) -> Result<Option<PairingToken>, ApiError> {
    match body.opt_str("token")?.filter(|t| !t.is_empty()) {
        None => Ok(None),
        Some(text) => PairingToken::parse(text.trim())
            .map(Some)
            .ok_or_else(|| PairingError::Token(TokenRefusal::Malformed).into()),
    }
}

// ---- /api/replication (target-side admin) ----

pub(super) fn resolve(call: &Call) -> Result<Reply, ApiError> {
    let body = call.json()?;
    let id = body.id("request_id")?;
    let accept = body.flag("accept")?;
    let message = body.opt_str("message")?.unwrap_or("");
    if message.chars().count() > MAX_MESSAGE_CHARS {
        return Err(ApiError::BadRequest(format!(
            "field `message` must be at most {} characters",
            MAX_MESSAGE_CHARS
        )));
    }
    let decision = if accept {
        Decision::Accept {
            storage_id: body.opt_id("storage_id")?,
            quota_mb: body.opt_limit("quota_mb")?,
            replaces_system_id: body.opt_id("replaces_system_id")?,
        }
    } else {
        Decision::Reject {
            message: message.to_string(),
        }
    };
    let app = call.app;
    let cas = app.cas.get();
    let side = target::TargetSide {
        store: &app.store,
        cas: &cas,
        storage: &app.config.storage,
        client_lifetime: app.config.client_cert_lifetime,
    };
    let resolved = target::resolve(&side, id, decision, &call.actor(), call.now)?;
    let r = resolved.request;
    if app.config.fault == Fault::CrashAfterAcceptCommit && r.status == RequestStatus::Accepted {
        log::error!("fault injection: aborting after committing request {id}, before its spool");
        std::process::abort();
    }
    if let Some(old) = resolved.replaced {
        write_spool(call, old)?;
    }
    write_spool(call, r.id)?;
    let mut v = json!({ "request_id": r.id, "status": r.status.as_str() });
    if let Some(sid) = r.system_id {
        v["system_id"] = json!(sid);
    }
    Ok(Reply::json(201, v))
}

fn sid(call: &Call) -> Result<u64, ApiError> {
    let v = call
        .query("sid")
        .ok_or_else(|| ApiError::BadRequest("query parameter `sid` is required".into()))?;
    parse_id("sid", v)
}

/// The most backups per client a retention policy may keep by count, and days by age.
const MAX_KEEP_LAST: u64 = 1_000_000;
const MAX_KEEP_DAYS: u64 = 36_500;

/// `retention`: absent (no change), `null` or an object without rules (keep all), or
/// `{"keep_last"?, "keep_days"?}`.
fn retention_of(body: &Body) -> Result<Option<Option<Retention>>, ApiError> {
    let Some(v) = body.nullable("retention") else {
        return Ok(None);
    };
    let m = match v {
        Value::Null => return Ok(Some(None)),
        Value::Object(m) => m,
        _ => {
            return Err(ApiError::BadRequest(
                "field `retention` must be {\"keep_last\"?, \"keep_days\"?} or null (keep all)"
                    .into(),
            ))
        }
    };
    if let Some(other) = m
        .keys()
        .find(|k| !["keep_last", "keep_days"].contains(&k.as_str()))
    {
        return Err(ApiError::BadRequest(format!(
            "field `retention.{other}` is not known; a policy has keep_last and keep_days"
        )));
    }
    let rule = |name: &str, max: u64| -> Result<Option<u32>, ApiError> {
        match m.get(name).filter(|v| !v.is_null()) {
            None => Ok(None),
            Some(v) => Ok(Some(
                number_value(&format!("retention.{name}"), v, 1, max)? as u32
            )),
        }
    };
    let policy = Retention {
        keep_last: rule("keep_last", MAX_KEEP_LAST)?,
        keep_days: rule("keep_days", MAX_KEEP_DAYS)?,
    };
    Ok(Some(policy.normalized()))
}

/// `PUT /api/replication/source?sid=N {"storage_id"?, "quota_mb"?, "retention"?,
/// "share"?}`: at least one.
pub(super) fn change_source(call: &Call) -> Result<Reply, ApiError> {
    let system_id = sid(call)?;
    let body = call.json()?;
    let change = SourceChange {
        storage_id: body.opt_id("storage_id")?,
        quota_mb: body.opt_limit("quota_mb")?,
        retention: retention_of(&body)?,
        share: body
            .opt_reset("share", 1, u64::from(MAX_SHARE))?
            .map(|w| w.map(|w| w as u32)),
    };
    if change.storage_id.is_none()
        && change.quota_mb.is_none()
        && change.retention.is_none()
        && change.share.is_none()
    {
        return Err(ApiError::BadRequest(
            "field `storage_id`, `quota_mb`, `retention` or `share` is required".into(),
        ));
    }
    let retention_changed = change.retention.is_some();
    let app = call.app;
    let row = target::change_source(
        &app.store,
        &app.config.storage,
        system_id,
        change,
        &call.actor(),
        call.now,
    )?;
    if retention_changed {
        // Applied within a second by the maintenance job, not in this request: moving
        // many copies takes time.
        app.replication.recycler.kick();
    }
    Ok(Reply::json(
        200,
        super::systems::stored_json(&row, call.now)?,
    ))
}

pub(super) fn unpair(call: &Call) -> Result<Reply, ApiError> {
    let system_id = sid(call)?;
    let revoked = target::unpair(&call.app.store, system_id, &call.actor(), call.now)?;
    if let Some(r) = &revoked {
        write_spool(call, r.id)?;
    }
    Ok(Reply::json(
        200,
        json!({ "system_id": system_id, "status": "unpaired" }),
    ))
}

/// `DELETE /api/replication/pending?remote_addr=<address or network>`: ignores every open
/// request filed from there in one call (a flood from one network).
pub(super) fn ignore_from(call: &Call) -> Result<Reply, ApiError> {
    let given = call.query("remote_addr").ok_or_else(|| {
        ApiError::BadRequest(
            "query parameter `remote_addr` (an address or a network such as 192.0.2.0/24) is required"
                .into(),
        )
    })?;
    let network = Network::parse(given).ok_or_else(|| {
        ApiError::BadRequest(format!(
            "query parameter `remote_addr`: {} is not an address or a network such as 192.0.2.0/24",
            super::body::quoted(given)
        ))
    })?;
    let ignored = target::ignore_from(&call.app.store, network, &call.actor(), call.now)?;
    let ids: Vec<u64> = ignored.iter().map(|r| r.id).collect();
    log::info!(
        "{} ignored {} open requests from {network} (from {})",
        call.user(),
        ids.len(),
        call.address()
    );
    for id in &ids {
        write_spool(call, *id)?;
    }
    Ok(Reply::json(
        200,
        json!({ "remote_addr": network.to_string(), "ignored": ids.len(), "request_ids": ids }),
    ))
}

pub(super) fn ignore(call: &Call) -> Result<Reply, ApiError> {
    let id = parse_id("request_id", call.param(0))?;
    let r = target::ignore(&call.app.store, id, &call.actor(), call.now)?;
    write_spool(call, r.id)?;
    Ok(Reply::json(
        200,
        json!({ "request_id": id, "status": "ignored" }),
    ))
}
