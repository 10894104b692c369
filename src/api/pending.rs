//! `GET /api/replication/pending`: the open requests, and which of them a list shows
//! ([`visit_listed`], which the pending rows of `GET /api/systems` read too).

use serde::Serialize;

use super::body::{self, parse_limit};
use super::error::ApiError;
use super::{Call, ListWriter, Reply};
use crate::model::UnixTime;
use crate::store::{RequestStatus, RequestSummary};

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

pub(super) fn pending(call: &Call) -> Result<Reply, ApiError> {
    let include_rejected = call.query_flag("include_rejected").unwrap_or(false);
    let mut list = ListWriter::new("pending");
    visit_listed(call, include_rejected, |r| list.push(&PendingEntry::new(r)))?;
    list.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::RequestRecord;
    use serde_json::{json, Value};

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
            took_over: None,
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
