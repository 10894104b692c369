//! Target-side pairing handlers: the admin endpoints (`/api/replication/...`, systems,
//! storage) and the appliance protocol (`/replication/v1/...`).

use serde::Serialize;
use serde_json::json;

use super::body::{self, parse_id, parse_limit, Body};
use super::error::ApiError;
use super::{Call, ListWriter, Reply};
use crate::config::Fault;
use crate::model::Network;
use crate::model::UnixTime;
use crate::pairing::error::{PairingError, TokenRefusal};
use crate::pairing::fields::{NewRequest, MAX_MESSAGE_CHARS};
use crate::pairing::filing::{self, Caps, FilingRules};
use crate::pairing::target::{self, Decision, SourceChange};
use crate::pairing::Actor;
use crate::store::{RequestStatus, RequestSummary};
use crate::wire::protocol::{self, SpoolToken};
use crate::wire::token::PairingToken;

/// Largest CSR accepted (an RSA-4096 CSR is about 1.7 KB of PEM).
const MAX_CSR_CHARS: usize = 16 * 1024;

pub(super) fn actor(call: &Call) -> Actor {
    Actor {
        user: call.user(),
        address: call.address(),
    }
}

/// Renders request `id`'s spool after a commit. A failure leaves the database right and
/// the spool behind; the spool retries it on its sweep (and at start), and the client
/// hears of a 500 with a reference.
fn write_spool(call: &Call, id: u64) -> Result<(), ApiError> {
    call.app.spool.sync(id, &call.app.store)?;
    Ok(())
}

// ---- /replication/v1 (appliance protocol, no AuthToken) ----

pub fn file_request(call: &Call) -> Result<Reply, ApiError> {
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

/// One request in `GET /api/replication/pending`, serialized straight from the stored
/// bytes: building a `serde_json::Value` per entry from a fully decoded record cost most
/// of the time of a 10,000-entry list (see BENCHMARKS.md). The fields are in alphabetical
/// order, as the `Value` map printed them, so the bytes on the wire did not change.
#[derive(Serialize)]
struct PendingEntry<'a> {
    asset_tag: &'a str,
    created: UnixTime,
    csr_fingerprint: &'a str,
    expires: UnixTime,
    host: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<&'a str>,
    name: &'a str,
    remote_addr: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    replaces_system_id: Option<u64>,
    request_id: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    requested_storage_id: Option<u64>,
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    system_id: Option<u64>,
    system_uuid: &'a str,
    verification_code: &'a str,
}

impl<'a> PendingEntry<'a> {
    fn new(r: &'a RequestSummary<'_>) -> Self {
        PendingEntry {
            asset_tag: r.asset_tag.as_deref().unwrap_or_default(),
            created: r.created,
            csr_fingerprint: &r.csr_fingerprint,
            expires: r.expires,
            host: &r.host,
            message: r.message.as_deref(),
            name: &r.name,
            remote_addr: &r.remote_addr,
            replaces_system_id: r.replaces_system_id,
            request_id: r.id,
            requested_storage_id: r.requested_storage_id,
            status: r.status.as_str(),
            system_id: r.system_id,
            system_uuid: &r.system_uuid,
            verification_code: &r.verification_code,
        }
    }
}

/// Hands `visit` the pending requests (not yet expired), and with `include_rejected` the
/// rejected ones too, in id order after the query's `after`, at most the query's `limit`.
pub(super) fn visit_listed(
    call: &Call,
    include_rejected: bool,
    visit: impl FnMut(&RequestSummary<'_>),
) -> Result<(), ApiError> {
    let after = body::after(call.query("after"))?;
    let limit = match call.query("limit") {
        Some(v) => parse_limit("limit", v, None)?,
        None => usize::MAX,
    };
    let now = call.now;
    let live = move |r: &RequestSummary<'_>| r.status == RequestStatus::Pending && r.expires > now;
    let store = &call.app.store;
    if include_rejected {
        let keep = |r: &RequestSummary<'_>| live(r) || r.status == RequestStatus::Rejected;
        store.visit_requests(false, after, limit, keep, visit)?;
    } else {
        store.visit_requests(true, after, limit, live, visit)?;
    }
    Ok(())
}

pub fn pending(call: &Call) -> Result<Reply, ApiError> {
    let include_rejected = call.query_flag("include_rejected").unwrap_or(false);
    let mut list = ListWriter::new("pending");
    visit_listed(call, include_rejected, |r| list.push(&PendingEntry::new(r)))?;
    list.finish()
}

pub fn resolve(call: &Call) -> Result<Reply, ApiError> {
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
    let resolved = target::resolve(&side, id, decision, &actor(call), call.now)?;
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

/// `PUT /api/replication/source?sid=N {"storage_id"?, "quota_mb"?}`: at least one.
pub fn change_source(call: &Call) -> Result<Reply, ApiError> {
    let system_id = sid(call)?;
    let body = call.json()?;
    let change = SourceChange {
        storage_id: body.opt_id("storage_id")?,
        quota_mb: body.opt_limit("quota_mb")?,
    };
    if change.storage_id.is_none() && change.quota_mb.is_none() {
        return Err(ApiError::BadRequest(
            "field `storage_id` or `quota_mb` is required".into(),
        ));
    }
    let app = call.app;
    let row = target::change_source(
        &app.store,
        &app.config.storage,
        system_id,
        change,
        &actor(call),
        call.now,
    )?;
    Ok(Reply::json(
        200,
        super::systems::stored_json(&row, call.now)?,
    ))
}

pub fn unpair(call: &Call) -> Result<Reply, ApiError> {
    let system_id = sid(call)?;
    let revoked = target::unpair(&call.app.store, system_id, &actor(call), call.now)?;
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
pub fn ignore_from(call: &Call) -> Result<Reply, ApiError> {
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
    let ignored = target::ignore_from(&call.app.store, network, &actor(call), call.now)?;
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

pub fn ignore(call: &Call) -> Result<Reply, ApiError> {
    let id = parse_id("request_id", call.param(0))?;
    let r = target::ignore(&call.app.store, id, &actor(call), call.now)?;
    write_spool(call, r.id)?;
    Ok(Reply::json(
        200,
        json!({ "request_id": id, "status": "ignored" }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::RequestRecord;
    use serde_json::Value;

    fn record(optional: bool) -> RequestRecord {
        RequestRecord {
            id: 42,
            system_uuid: "11111111-2222-4333-8444-555555555555".into(),
            name: "src \"one\"".into(),
            host: "source.example".into(),
            asset_tag: optional.then(|| "TAG-1".into()),
            version: "1.0".into(),
            csr_pem: "-----BEGIN CERTIFICATE REQUEST-----\n...".into(),
            csr_fingerprint: "ab".repeat(32),
            remote_addr: "192.0.2.7".into(),
            token: "0123456789abcdef0123456789abcdef".into(),
            verification_code: "482-913".into(),
            created: 1_700_000_000,
            expires: 1_700_604_800,
            status: if optional {
                RequestStatus::Rejected
            } else {
                RequestStatus::Pending
            },
            message: optional.then(|| "call us first".into()),
            resolved_at: optional.then_some(1_700_000_100),
            resolved_by: optional.then(|| "root".into()),
            replaces_system_id: optional.then_some(3),
            system_id: optional.then_some(9),
            cert_serial: None,
            requested_storage_id: optional.then_some(2),
            pairing_token: None,
        }
    }

    /// What the handler built before it serialized straight from the record.
    fn value_map(r: &RequestRecord) -> Value {
        let mut v = json!({
            "request_id": r.id,
            "host": r.host,
            "name": r.name,
            "asset_tag": r.asset_tag.clone().unwrap_or_default(),
            "system_uuid": r.system_uuid,
            "status": r.status.as_str(),
            "created": r.created,
            "expires": r.expires,
            "verification_code": r.verification_code,
            "csr_fingerprint": r.csr_fingerprint,
            "remote_addr": r.remote_addr,
        });
        if let Some(id) = r.replaces_system_id {
            v["replaces_system_id"] = json!(id);
        }
        if let Some(m) = &r.message {
            v["message"] = json!(m);
        }
        if let Some(id) = r.system_id {
            v["system_id"] = json!(id);
        }
        if let Some(id) = r.requested_storage_id {
            v["requested_storage_id"] = json!(id);
        }
        v
    }

    #[test]
    fn pending_entries_serialize_to_the_same_bytes_as_the_old_value_map() {
        for optional in [false, true] {
            let r = record(optional);
            let stored = serde_json::to_vec(&r).unwrap();
            let summary: RequestSummary<'_> = serde_json::from_slice(&stored).unwrap();
            let direct = serde_json::to_string(&PendingEntry::new(&summary)).unwrap();
            assert_eq!(
                direct,
                value_map(&r).to_string(),
                "optional fields: {optional}"
            );
        }
    }
}
