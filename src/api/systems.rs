//! `GET /api/systems` and `POST /api/systems`: the systems table in the appliance's own
//! field set (SPEC 4), which existing scripts display: every field on every row, with
//! `false`, `0` or `""` where a value does not apply. Rows are rendered, never decided here.

use serde::Serialize;

use super::body::parse_number;
use super::error::ApiError;
use super::pending::visit_listed;
use super::storage;
use super::{Call, ListWriter, Reply};
use crate::model::{Role, UnixTime};
use crate::pairing::target;
use crate::store::{RequestSummary, Retention, SystemRecord, TargetStatus};

/// The id of the local appliance's row in `GET /api/systems`, and the one `sid` value
/// besides none that an `/api` read accepts.
pub(super) const LOCAL_SYSTEM_ID: u64 = 1;

/// A source counts as `online` while its last tunnel contact is this recent (s).
pub(super) const ONLINE_WINDOW: i64 = 15 * 60;

/// One row of `GET /api/systems`. The first block of fields is on every row.
#[derive(Serialize)]
struct Row<'a> {
    id: i64,
    name: &'a str,
    host: &'a str,
    asset_tag: &'a str,
    role: Role,
    local: bool,
    version: &'a str,
    version_status: &'static str,
    online: bool,
    status: &'a str,
    message: &'a str,
    total_mb_size: u64,
    total_mb_free: u64,
    archiving: bool,
    replicating: bool,
    system_uuid: &'a str,
    created: UnixTime,
    updated: UnixTime,
    #[serde(skip_serializing_if = "Option::is_none")]
    storage_id: Option<u64>,
    /// A source's quota in MB, when one is set.
    #[serde(skip_serializing_if = "Option::is_none")]
    quota_mb: Option<u64>,
    /// A source's retention policy on this target, when one is set (SPEC 20).
    #[serde(skip_serializing_if = "Option::is_none")]
    retention: Option<Retention>,
    /// A source's weight in the sharing of receiving sessions (1 unless set).
    #[serde(skip_serializing_if = "Option::is_none")]
    share: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    certificate_expires: Option<UnixTime>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_seen: Option<UnixTime>,
    /// Pending rows only, with the two below.
    #[serde(skip_serializing_if = "Option::is_none")]
    is_pending: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    requested_storage_id: Option<u64>,
}

/// Compares a system's version with this appliance's: `current` (the same), `older`,
/// `newer`, or `""` when it has none or it is not a dotted version.
pub(super) fn version_status(theirs: &str) -> &'static str {
    fn parts(v: &str) -> Option<Vec<u64>> {
        v.split(['.', '-', '+'])
            .take_while(|p| p.bytes().all(|b| b.is_ascii_digit()))
            .map(|p| p.parse().ok())
            .collect::<Option<Vec<u64>>>()
            .filter(|v| !v.is_empty())
    }
    let ours = env!("CARGO_PKG_VERSION");
    if theirs == ours {
        return "current";
    }
    let (Some(mut a), Some(mut b)) = (parts(theirs), parts(ours)) else {
        return "";
    };
    let n = a.len().max(b.len());
    a.resize(n, 0);
    b.resize(n, 0);
    match a.cmp(&b) {
        std::cmp::Ordering::Less => "older",
        std::cmp::Ordering::Greater => "newer",
        std::cmp::Ordering::Equal => "current",
    }
}

fn stored<'a>(s: &'a SystemRecord, now: UnixTime) -> Row<'a> {
    let source = s.role.is_source();
    let status = match (source, s.last_seen) {
        (true, Some(_)) => "connected",
        (true, None) => "paired",
        (false, _) => "managed",
    };
    let version = s.version.as_deref().unwrap_or_default();
    Row {
        id: s.id as i64,
        name: &s.name,
        host: &s.host,
        asset_tag: s.asset_tag.as_deref().unwrap_or_default(),
        role: s.role,
        local: false,
        version,
        version_status: version_status(version),
        online: source && s.last_seen.is_some_and(|t| now - t < ONLINE_WINDOW),
        status,
        message: "",
        total_mb_size: 0,
        total_mb_free: 0,
        archiving: false,
        replicating: source && s.last_seen.is_some(),
        system_uuid: s.system_uuid.as_deref().unwrap_or_default(),
        created: s.created,
        updated: s.updated,
        storage_id: s.storage_id,
        quota_mb: s.quota_mb,
        retention: s.retention,
        share: source.then(|| s.share()),
        certificate_expires: s.certificate_expires,
        last_seen: s.last_seen,
        is_pending: None,
        request_id: None,
        requested_storage_id: None,
    }
}

fn pending<'a>(r: &'a RequestSummary<'_>) -> Row<'a> {
    Row {
        id: -(r.id as i64),
        name: &r.name,
        host: &r.host,
        asset_tag: r.asset_tag.as_deref().unwrap_or_default(),
        role: Role::PendingSource,
        local: false,
        version: &r.version,
        version_status: version_status(&r.version),
        online: false,
        status: r.status.as_str(),
        message: r.message.as_deref().unwrap_or_default(),
        total_mb_size: 0,
        total_mb_free: 0,
        archiving: false,
        replicating: false,
        system_uuid: &r.system_uuid,
        created: r.created,
        updated: r.resolved_at.unwrap_or(r.created),
        storage_id: None,
        quota_mb: None,
        retention: None,
        share: None,
        certificate_expires: None,
        last_seen: None,
        is_pending: Some(true),
        request_id: Some(r.id),
        requested_storage_id: r.requested_storage_id,
    }
}

/// A stored systems row as the answer of a call that changed it.
pub(super) fn stored_json(s: &SystemRecord, now: UnixTime) -> Result<serde_json::Value, ApiError> {
    Ok(serde_json::to_value(stored(s, now))?)
}

/// The most stored systems one page of `GET /api/systems` lists (`count`).
const MAX_PAGE: u64 = 10_000;

/// A page of the stored systems (`start`, `count`): None when neither is given (all of
/// them, the answer scripts know).
fn page(call: &Call) -> Result<Option<(u64, usize)>, ApiError> {
    let start = call
        .query("start")
        .map(|v| parse_number("start", v, 0, u64::MAX / 2))
        .transpose()?;
    let count = call
        .query("count")
        .map(|v| parse_number("count", v, 1, MAX_PAGE))
        .transpose()?;
    Ok((start.is_some() || count.is_some())
        .then(|| (start.unwrap_or(0), count.unwrap_or(MAX_PAGE) as usize)))
}

/// `GET /api/systems`: the local row, the stored systems in id order, then the pending
/// rows (`include_pending`, paged by `after` and `limit`). With `start` or `count` the
/// stored systems are paged: `count` of them (10,000 at most) after skipping `start`;
/// the local row comes on the first page (`start` 0) and the pending rows on the page
/// whose systems run out (fewer than `count`), so the pages together are the whole list.
pub(super) fn list(call: &Call) -> Result<Reply, ApiError> {
    let page = page(call)?;
    let include_pending = call.query_flag("include_pending").unwrap_or(true);
    let include_rejected = call.query_flag("include_rejected").unwrap_or(false);
    let app = call.app;
    let config = &app.config;
    let probed = storage::probe(&config.storage, &app.store)?;
    let (size, free) = storage::totals(&probed, storage::is_backup);
    let replicating = app
        .store
        .targets()?
        .iter()
        .any(|t| t.status == TargetStatus::Complete);
    let name = config.name();
    let host = config.api_listen.to_string();
    let local = Row {
        id: LOCAL_SYSTEM_ID as i64,
        name,
        host: &host,
        asset_tag: &config.asset_tag,
        role: Role::Local,
        local: true,
        version: env!("CARGO_PKG_VERSION"),
        version_status: "current",
        online: true,
        status: "online",
        message: "",
        total_mb_size: size,
        total_mb_free: free,
        archiving: false,
        replicating,
        system_uuid: &app.system_uuid,
        created: app.first_start,
        updated: app.started,
        storage_id: None,
        quota_mb: None,
        retention: None,
        share: None,
        certificate_expires: None,
        last_seen: None,
        is_pending: None,
        request_id: None,
        requested_storage_id: None,
    };
    // Written while read, as the pending list is (thousands of pending rows).
    let mut list = ListWriter::new("appliance");
    let (systems, last_page) = match page {
        None => (app.store.systems()?, true),
        Some((start, count)) => {
            let rows = app.store.systems_page(start, count)?;
            let last = rows.len() < count;
            (rows, last)
        }
    };
    if page.is_none_or(|(start, _)| start == 0) {
        list.push(&local);
    }
    for s in &systems {
        list.push(&stored(s, call.now));
    }
    if include_pending && last_page {
        visit_listed(call, include_rejected, |r| list.push(&pending(r)))?;
    }
    list.finish()
}

pub(super) fn register(call: &Call) -> Result<Reply, ApiError> {
    let body = call.json()?;
    let row = target::register_managed(
        &call.app.store,
        body.str("name")?,
        body.str("host")?,
        body.opt_str("system_uuid")?.filter(|u| !u.is_empty()),
        body.opt_str("asset_tag")?.filter(|t| !t.is_empty()),
        &call.actor(),
        call.now,
    )?;
    Ok(Reply::json(201, stored_json(&row, call.now)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_status_compares_dotted_versions() {
        let ours = env!("CARGO_PKG_VERSION");
        assert_eq!(version_status(ours), "current");
        assert_eq!(version_status("0.0.1"), "older");
        assert_eq!(version_status("999.0"), "newer");
        assert_eq!(version_status(""), "");
        assert_eq!(version_status("banana"), "");
        let padded = format!("{ours}.0");
        assert_eq!(version_status(&padded), "current");
    }
}
