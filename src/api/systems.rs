//! `GET /api/systems` and `POST /api/systems`: the systems table in the appliance's own
//! field set (SPEC 4), which existing scripts display: every field on every row, with
//! `false`, `0` or `""` where a value does not apply. Rows are rendered, never decided here.

use std::ops::Range;
use std::sync::{Arc, Mutex};

use serde::Serialize;

use super::body::parse_number;
use super::error::ApiError;
use super::pending::visit_listed;
use super::storage;
use super::{Call, ListWriter, Reply};
use crate::model::{Role, UnixTime};
use crate::pairing::target;
use crate::store::{RequestSummary, Retention, Store, SystemRecord, TargetStatus};
use crate::sync::lock;

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
        online: online_until(s, now).is_some(),
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

/// The stored systems' rows of the whole `GET /api/systems`, rendered and joined, kept
/// between calls (5,000 rows are 2.3 MB of JSON: reading and rendering them was most of a
/// call). A call reads and renders again only the rows the store changed since
/// (`Store::systems_changed_since`: a hello's `last_seen` too), and every row once the
/// clock reaches the time a kept row's `online` turns false, or goes back.
#[derive(Default)]
pub struct SystemRows {
    slot: Mutex<Option<Rendered>>,
}

struct Rendered {
    /// The store's systems generation the rows were read at.
    generation: u64,
    /// The last time rows were rendered at, and the first time after it that a kept
    /// row's `online` turns false: the rows hold for a `now` in `[at, until)`.
    at: UnixTime,
    until: UnixTime,
    /// In id order: each row's id, its bytes in `joined`, and when its `online` ends.
    rows: Vec<Kept>,
    /// The rows, comma-separated.
    joined: Arc<Vec<u8>>,
}

struct Kept {
    id: u64,
    bytes: Range<usize>,
    offline_at: Option<UnixTime>,
}

impl SystemRows {
    /// The rows of every stored system at `now`, comma-separated, as `stored` renders them.
    pub(super) fn get(&self, store: &Store, now: UnixTime) -> Result<Arc<Vec<u8>>, ApiError> {
        let mut slot = lock(&self.slot);
        let kept = slot.take().filter(|r| r.at <= now && now < r.until);
        let since = kept.as_ref().map_or(u64::MAX, |r| r.generation);
        let (generation, changed) = store.systems_changed_since(since);
        let rendered = match (kept, changed) {
            (Some(r), Some(ids)) if ids.is_empty() => r,
            // A few changed rows are read one by one; many, all at once.
            (Some(r), Some(ids)) if ids.len() <= r.rows.len() / 4 => {
                let mut fresh = Vec::with_capacity(ids.len());
                for id in ids {
                    fresh.push((id, store.system(id)?));
                }
                r.update(fresh, now, generation)?
            }
            _ => Rendered::default().update(
                store
                    .systems()?
                    .into_iter()
                    .map(|s| (s.id, Some(s)))
                    .collect(),
                now,
                generation,
            )?,
        };
        let joined = rendered.joined.clone();
        *slot = Some(rendered);
        Ok(joined)
    }
}

impl Default for Rendered {
    fn default() -> Self {
        Rendered {
            generation: 0,
            at: UnixTime::MIN,
            until: UnixTime::MAX,
            rows: Vec::new(),
            joined: Arc::default(),
        }
    }
}

impl Rendered {
    /// These rows with `fresh` (in id order; None: the row is gone) put in, rendered at
    /// `now`; the other rows' bytes are copied as they are.
    fn update(
        &self,
        fresh: Vec<(u64, Option<SystemRecord>)>,
        now: UnixTime,
        generation: u64,
    ) -> Result<Rendered, ApiError> {
        let mut out = Rendered {
            generation,
            at: now,
            ..Rendered::default()
        };
        let mut joined = Vec::with_capacity(self.joined.len());
        let mut fresh = fresh.into_iter().peekable();
        let mut kept = self.rows.iter().peekable();
        loop {
            let next_kept = kept.peek().map(|k| k.id);
            match fresh.peek().map(|(id, _)| *id) {
                Some(id) if next_kept.is_none_or(|k| id <= k) => {
                    if next_kept == Some(id) {
                        kept.next();
                    }
                    if let Some((_, Some(s))) = fresh.next() {
                        let bytes = serde_json::to_vec(&stored(&s, now))?;
                        out.push(&mut joined, s.id, &bytes, online_until(&s, now));
                    }
                }
                _ => {
                    let Some(k) = kept.next() else {
                        break;
                    };
                    out.push(
                        &mut joined,
                        k.id,
                        &self.joined[k.bytes.clone()],
                        k.offline_at,
                    );
                }
            }
        }
        out.joined = Arc::new(joined);
        Ok(out)
    }

    fn push(&mut self, joined: &mut Vec<u8>, id: u64, row: &[u8], offline_at: Option<UnixTime>) {
        if !joined.is_empty() {
            joined.push(b',');
        }
        let start = joined.len();
        joined.extend_from_slice(row);
        self.rows.push(Kept {
            id,
            bytes: start..joined.len(),
            offline_at,
        });
        if let Some(t) = offline_at {
            self.until = self.until.min(t);
        }
    }
}

/// When the `online` of `s`'s row turns false, if it is true at `now`: a source seen
/// within [`ONLINE_WINDOW`].
fn online_until(s: &SystemRecord, now: UnixTime) -> Option<UnixTime> {
    let seen = s.last_seen.filter(|_| s.role.is_source())?;
    (now - seen < ONLINE_WINDOW).then(|| seen.saturating_add(ONLINE_WINDOW))
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
    if page.is_none_or(|(start, _)| start == 0) {
        list.push(&local);
    }
    let last_page = match page {
        None => {
            list.push_joined(&app.system_rows.get(&app.store, call.now)?);
            true
        }
        Some((start, count)) => {
            let rows = app.store.systems_page(start, count)?;
            for s in &rows {
                list.push(&stored(s, call.now));
            }
            rows.len() < count
        }
    };
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
    use crate::store::StoreError;

    fn temp_store(name: &str) -> (Store, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("replgate-rows-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        crate::fsx::ensure_private_dir(&dir).unwrap();
        (Store::open(&dir.join("replgate.redb")).unwrap(), dir)
    }

    fn put(store: &Store, s: &SystemRecord) {
        store.write(|tx| tx.put_system(s)).unwrap();
    }

    fn parsed(rows: &[u8]) -> Vec<serde_json::Value> {
        let text = format!("[{}]", std::str::from_utf8(rows).unwrap());
        serde_json::from_str(&text).unwrap()
    }

    /// What a fresh render of every row says at `now`: the kept rows must equal it.
    fn fresh(store: &Store, now: UnixTime) -> Vec<serde_json::Value> {
        parsed(&SystemRows::default().get(store, now).unwrap())
    }

    /// The rows are rendered again exactly when a row changed (a hello's `last_seen`, a
    /// rename, a new or deleted row), never for a write that changed none, and what is
    /// served always equals a fresh render.
    #[test]
    fn kept_rows_are_served_until_a_row_changes() {
        let (store, dir) = temp_store("kept");
        for id in 2..14 {
            put(&store, &SystemRecord::fixture(id));
        }
        let rows = SystemRows::default();
        let now = 1_100;
        let first = rows.get(&store, now).unwrap();
        assert_eq!(parsed(&first).len(), 12);
        assert!(
            Arc::ptr_eq(&first, &rows.get(&store, now + 5).unwrap()),
            "unchanged"
        );
        put(&store, &SystemRecord::fixture(3));
        let audit = crate::store::AuditRecord {
            time: now,
            user: "root".into(),
            address: "local".into(),
            action: "nothing".into(),
            object: "-".into(),
            detail: String::new(),
        };
        store.write(|tx| tx.audit(&audit)).unwrap();
        assert!(
            Arc::ptr_eq(&first, &rows.get(&store, now).unwrap()),
            "no row changed"
        );

        let seen = SystemRecord {
            last_seen: Some(now),
            ..SystemRecord::fixture(5)
        };
        put(&store, &seen);
        let after_hello = rows.get(&store, now).unwrap();
        assert!(!Arc::ptr_eq(&first, &after_hello));
        assert_eq!(parsed(&after_hello)[3]["last_seen"], now);
        assert_eq!(parsed(&after_hello), fresh(&store, now));

        let renamed = SystemRecord {
            name: "north \"box\"".into(),
            ..SystemRecord::fixture(13)
        };
        put(&store, &renamed);
        store.write(|tx| tx.delete_system(2).map(|_| ())).unwrap();
        put(&store, &SystemRecord::fixture(20));
        let changed = parsed(&rows.get(&store, now).unwrap());
        let ids: Vec<u64> = changed.iter().map(|r| r["id"].as_u64().unwrap()).collect();
        assert_eq!(ids, [3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 20]);
        assert_eq!(changed[10]["name"], "north \"box\"");
        assert_eq!(changed, fresh(&store, now));

        // Many changes at once: every row read again, the same answer.
        store
            .write(|tx| {
                for id in 3..10 {
                    tx.delete_system(id)?;
                }
                Ok::<_, StoreError>(())
            })
            .unwrap();
        let few = parsed(&rows.get(&store, now).unwrap());
        assert_eq!(few.len(), 5);
        assert_eq!(few, fresh(&store, now));
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// `online` depends on the time: kept rows are rendered again once the clock reaches
    /// the end of a row's online window, and when the clock went back.
    #[test]
    fn rows_follow_the_clock_across_the_online_window() {
        let (store, dir) = temp_store("online");
        put(&store, &SystemRecord::fixture(2));
        let managed = SystemRecord {
            role: Role::Managed,
            ..SystemRecord::fixture(3)
        };
        put(&store, &managed);
        let rows = SystemRows::default();
        let end = 1_000 + ONLINE_WINDOW;
        let before = rows.get(&store, end - 1).unwrap();
        assert_eq!(parsed(&before)[0]["online"], true);
        assert_eq!(parsed(&before)[1]["online"], false, "a managed system");
        assert!(Arc::ptr_eq(&before, &rows.get(&store, end - 1).unwrap()));
        let after = rows.get(&store, end).unwrap();
        assert_eq!(parsed(&after)[0]["online"], false);
        assert_eq!(parsed(&after), fresh(&store, end));
        assert!(Arc::ptr_eq(&after, &rows.get(&store, end + 3_600).unwrap()));
        let back = rows.get(&store, end - 1).unwrap();
        assert_eq!(parsed(&back)[0]["online"], true, "the clock went back");
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

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
