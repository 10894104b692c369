//! Replication state in the database: the source's queue (open items, finished history,
//! the latest item per backup), the target's received backups and durable partial copies,
//! and the replication settings (config and throttle). Records and typed access only; the
//! rules live in `replication`. Integers are fixed width; nothing stores a `usize`.

use redb::{ReadableTable, ReadableTableMetadata};
use serde::{Deserialize, Serialize};

use super::access::{self, Tables};
use super::{decode, schema, Result, Store, Txn};
use crate::model::UnixTime;

/// The queue strategies, as the appliance names and numbers them (`queue_scheme`).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// Only what an admin adds (`queue_scheme` 0).
    Manual,
    /// Every backup, oldest first (`queue_scheme` 1, the default).
    Retention,
    /// Newest first; a client's older waiting backups are dropped once its newest one has
    /// replicated (`queue_scheme` 2).
    Recency,
}

impl Strategy {
    pub const ALL: [Strategy; 3] = [Strategy::Manual, Strategy::Retention, Strategy::Recency];

    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Manual => "manual",
            Strategy::Retention => "retention",
            Strategy::Recency => "recency",
        }
    }

    /// The appliance's `queue_scheme` number.
    pub fn scheme(self) -> u8 {
        match self {
            Strategy::Manual => 0,
            Strategy::Retention => 1,
            Strategy::Recency => 2,
        }
    }

    pub fn from_scheme(n: u64) -> Option<Strategy> {
        Strategy::ALL
            .into_iter()
            .find(|s| u64::from(s.scheme()) == n)
    }

    pub fn from_name(s: &str) -> Option<Strategy> {
        Strategy::ALL.into_iter().find(|x| x.as_str() == s)
    }
}

/// `GET/PUT /api/replication/config`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReplicationConfig {
    /// Transfers at once per target.
    pub max_concurrent: u32,
    pub strategy: Strategy,
    /// Further attempts after a failed one before an item stays `failed`.
    pub retries: u32,
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        ReplicationConfig {
            max_concurrent: 2,
            strategy: Strategy::Retention,
            retries: 3,
        }
    }
}

/// One throttle window: inside it replication runs at `percentage` of `link_mbps`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ThrottleWindow {
    pub percentage: u32,
    /// Weekdays the window starts on, 0 = Sunday.
    pub days: Vec<u8>,
    /// Hour of day (local time) the window starts, 0–23.
    pub start: u32,
    /// Hour of day it ends (exclusive), 0–23; equal to `start` means the whole day.
    pub end: u32,
}

/// `GET/PUT /api/replication/throttle`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ThrottleRecord {
    pub windows: Vec<ThrottleWindow>,
    /// The link's speed in megabits per second.
    pub link_mbps: u64,
}

impl Default for ThrottleRecord {
    fn default() -> Self {
        ThrottleRecord {
            windows: Vec::new(),
            link_mbps: 1_000,
        }
    }
}

/// Where a queue item stands. Stored as a lowercase string.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum ItemStatus {
    Waiting,
    Active,
    Done,
    Failed,
    Removed,
}

impl ItemStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ItemStatus::Waiting => "waiting",
            ItemStatus::Active => "active",
            ItemStatus::Done => "done",
            ItemStatus::Failed => "failed",
            ItemStatus::Removed => "removed",
        }
    }

    /// Done and removed items leave the open queue for the history.
    pub fn is_finished(self) -> bool {
        matches!(self, ItemStatus::Done | ItemStatus::Removed)
    }
}

/// One backup queued for one target (source side).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct QueueItem {
    pub id: u64,
    pub target_id: u64,
    /// `<client>/<file>`, checked by `replication::names`.
    pub backup: String,
    pub size: u64,
    /// The file's modification time in nanoseconds when it was queued: its version.
    pub version: i64,
    pub status: ItemStatus,
    pub queued: UnixTime,
    #[serde(default)]
    pub started: Option<UnixTime>,
    #[serde(default)]
    pub finished: Option<UnixTime>,
    /// Bytes the target holds durably, as of the last checkpoint.
    #[serde(default)]
    pub bytes_done: u64,
    /// Every byte put on the wire for this item over all attempts. Persisted ahead of the
    /// bytes it covers (a reservation), so a crash can overstate it a little, never
    /// understate it.
    #[serde(default)]
    pub bytes_sent: u64,
    /// Attempts started.
    #[serde(default)]
    pub attempts: u32,
    /// Attempts that failed for a reason of the item (not a dropped connection); past
    /// `retries` the item stays `failed`.
    #[serde(default)]
    pub failures: u32,
    /// Attempts in a row the target refused for now (its quota, its free space): they
    /// set the wait before the next, and never count against `retries`. (Not written
    /// while 0, so rows read as they did before the field.)
    #[serde(default, skip_serializing_if = "is_zero")]
    pub refusals: u32,
    #[serde(default)]
    pub message: Option<String>,
    /// Lowercase hex, once known (a transfer finished, or the target held the same copy).
    #[serde(default)]
    pub sha256: Option<String>,
    /// Set when an admin added or reset the item: it waits after every item the strategy
    /// queued, in this order.
    #[serde(default)]
    pub tail: Option<u64>,
    /// A failed attempt is retried no earlier than this; on a `failed` item, when it is
    /// tried again by itself (absent: only an admin's reset tries it again).
    #[serde(default)]
    pub retry_at: Option<UnixTime>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// The latest item of one backup for one target, so a scan can tell a known backup from a
/// new one (or a new version) without reading the history.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct LatestItem {
    pub item_id: u64,
    pub size: u64,
    pub version: i64,
    pub status: ItemStatus,
}

/// A backup a source delivered (target side), keyed by the source's uuid and the name.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReceivedRecord {
    pub backup: String,
    pub storage_id: u64,
    pub size: u64,
    /// Lowercase hex.
    pub sha256: String,
    /// The source's version (modification time, ns) of what was received.
    pub version: i64,
    pub received: UnixTime,
    /// The last verify that found the copy intact.
    #[serde(default)]
    pub verified: Option<UnixTime>,
    /// Set by a verify that found the copy missing or different: it is fetched again.
    #[serde(default)]
    pub damaged: Option<String>,
    /// Bytes that crossed the wire in the session that completed the copy (with
    /// deduplication far fewer than `size`; counted before any compression); None when
    /// not known (recorded by a repair).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_received: Option<u64>,
    /// Put back from the recycle bin by an admin: retention leaves it alone from then on
    /// (a new copy under its name clears it).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pinned: bool,
}

/// The last verify of one source's copies (target side), kept so that the schedule and
/// the console know it across restarts.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct VerifyRun {
    pub started: UnixTime,
    #[serde(default)]
    pub finished: Option<UnixTime>,
    /// Copies to check, checked, found damaged (missing ones among them), found missing.
    pub total: u64,
    pub checked: u64,
    pub damaged: u64,
    pub missing: u64,
    /// Bytes read.
    #[serde(default)]
    pub bytes: u64,
    /// Started by `verify_interval` rather than by an admin.
    #[serde(default)]
    pub scheduled: bool,
    /// Stopped before every copy was checked (a shutdown, a database error).
    #[serde(default)]
    pub stopped: bool,
}

/// A partial copy a target holds durably (target side), so a transfer resumes.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PartialRecord {
    pub backup: String,
    pub storage_id: u64,
    /// The size the source offered.
    pub size: u64,
    pub version: i64,
    /// Bytes fsynced in the partial file; bytes after it are cut on resume.
    pub offset: u64,
    pub started: UnixTime,
    pub updated: UnixTime,
    /// Set once the copy verified and before it is renamed into place, so a crash between
    /// the two is finished at start.
    #[serde(default)]
    pub verified_sha256: Option<String>,
    /// An `s3` storage's copy: the multipart upload it is written into (its checkpoint,
    /// `objstore::Checkpoint::encode` in hex), so a crash leaves no upload nobody aborts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload: Option<String>,
}

const CONFIG_KEY: &str = "config";
const THROTTLE_KEY: &str = "throttle";

// ---- reads, written once over `Tables` (a snapshot or the write in progress) ----

fn replication_config(tx: &impl Tables) -> Result<ReplicationConfig> {
    Ok(access::get(tx, schema::REPLICATION_SETTINGS, CONFIG_KEY)?.unwrap_or_default())
}

fn throttle(tx: &impl Tables) -> Result<ThrottleRecord> {
    Ok(access::get(tx, schema::REPLICATION_SETTINGS, THROTTLE_KEY)?.unwrap_or_default())
}

fn open_items(tx: &impl Tables, target_id: Option<u64>) -> Result<Vec<QueueItem>> {
    let all: Vec<QueueItem> = access::values(tx, schema::QUEUE)?;
    Ok(all
        .into_iter()
        .filter(|i| target_id.is_none_or(|id| id == i.target_id))
        .collect())
}

fn finished_items(
    tx: &impl Tables,
    target_id: Option<u64>,
    start: u64,
    count: u64,
) -> Result<(Vec<QueueItem>, u64)> {
    let mut out = Vec::new();
    let mut seen = 0u64;
    for row in tx.open(schema::QUEUE_DONE)?.iter()?.rev() {
        let (_, v) = row?;
        let item: QueueItem = decode("queue_done", v.value())?;
        if target_id.is_some_and(|id| id != item.target_id) {
            continue;
        }
        if seen >= start && (out.len() as u64) < count {
            out.push(item);
        }
        seen += 1;
    }
    Ok((out, seen))
}

fn latest_items(tx: &impl Tables, target_id: u64) -> Result<Vec<(String, LatestItem)>> {
    let mut out = Vec::new();
    let from = schema::QUEUE_LATEST.key((target_id, ""));
    for row in tx.open(schema::QUEUE_LATEST)?.range(from.as_slice()..)? {
        let (k, v) = row?;
        let (tid, backup) = access::key_of(schema::QUEUE_LATEST, k.value())?;
        if tid != target_id {
            break;
        }
        out.push((backup, decode("queue_latest", v.value())?));
    }
    Ok(out)
}

fn latest_item(tx: &impl Tables, target_id: u64, backup: &str) -> Result<Option<LatestItem>> {
    access::get(tx, schema::QUEUE_LATEST, (target_id, backup))
}

fn received(tx: &impl Tables, uuid: &str) -> Result<Vec<ReceivedRecord>> {
    access::values_under(tx, schema::RECEIVED, uuid)
}

fn received_one(tx: &impl Tables, uuid: &str, backup: &str) -> Result<Option<ReceivedRecord>> {
    access::get(tx, schema::RECEIVED, (uuid, backup))
}

/// The names a verify marked damaged, of one source (`Some(uuid)`) or of all, with the
/// source's uuid and the copy's storage, in key order; at most `limit`.
fn damaged(
    tx: &impl Tables,
    uuid: Option<&str>,
    limit: usize,
) -> Result<Vec<(String, String, u64)>> {
    let mut out = Vec::new();
    let prefix = uuid.map(schema::name_prefix).unwrap_or_default();
    for row in tx.open(schema::DAMAGED)?.range(prefix.as_slice()..)? {
        let (k, v) = row?;
        if out.len() >= limit || !k.value().starts_with(&prefix) {
            break;
        }
        let (uuid, backup) = access::key_of(schema::DAMAGED, k.value())?;
        out.push((uuid, backup, decode("damaged", v.value())?));
    }
    Ok(out)
}

fn partial(tx: &impl Tables, uuid: &str, backup: &str) -> Result<Option<PartialRecord>> {
    access::get(tx, schema::PARTIALS, (uuid, backup))
}

fn partials_of(tx: &impl Tables, uuid: &str) -> Result<Vec<PartialRecord>> {
    access::values_under(tx, schema::PARTIALS, uuid)
}

fn partials(tx: &impl Tables) -> Result<Vec<(String, PartialRecord)>> {
    access::values_by_first(tx, schema::PARTIALS)
}

impl Store {
    pub fn replication_config(&self) -> Result<ReplicationConfig> {
        replication_config(&self.snapshot()?)
    }

    pub fn throttle(&self) -> Result<ThrottleRecord> {
        throttle(&self.snapshot()?)
    }

    /// Open items (waiting, active, failed), of one target or all, in id order.
    pub fn open_items(&self, target_id: Option<u64>) -> Result<Vec<QueueItem>> {
        open_items(&self.snapshot()?, target_id)
    }

    /// An open item (waiting, active, failed) by id.
    pub fn open_item(&self, id: u64) -> Result<Option<QueueItem>> {
        access::get(&self.snapshot()?, schema::QUEUE, id)
    }

    /// Finished items (done, removed), newest first, after skipping `start` that match,
    /// at most `count`; and how many match in all.
    pub fn finished_items(
        &self,
        target_id: Option<u64>,
        start: u64,
        count: u64,
    ) -> Result<(Vec<QueueItem>, u64)> {
        finished_items(&self.snapshot()?, target_id, start, count)
    }

    /// The latest item of every backup known for `target_id`, by backup name.
    pub fn latest_items(&self, target_id: u64) -> Result<Vec<(String, LatestItem)>> {
        latest_items(&self.snapshot()?, target_id)
    }

    /// Everything received from the source with `uuid`, in name order.
    pub fn received(&self, uuid: &str) -> Result<Vec<ReceivedRecord>> {
        received(&self.snapshot()?, uuid)
    }

    pub fn received_one(&self, uuid: &str, backup: &str) -> Result<Option<ReceivedRecord>> {
        received_one(&self.snapshot()?, uuid, backup)
    }

    /// The bytes that the copies received onto storage `storage_id` (of every source) and
    /// the partial copies on it hold: what an `s3` storage's `capacity_mb` is counted
    /// against.
    pub fn bytes_on_storage(&self, storage_id: u64) -> Result<u64> {
        let tx = self.snapshot()?;
        let received: Vec<ReceivedRecord> = access::values(&tx, schema::RECEIVED)?;
        let partials: Vec<(String, PartialRecord)> = partials(&tx)?;
        let held = received
            .iter()
            .filter(|r| r.storage_id == storage_id)
            .fold(0u64, |sum, r| sum.saturating_add(r.size));
        Ok(partials
            .iter()
            .filter(|(_, p)| p.storage_id == storage_id)
            .fold(held, |sum, (_, p)| sum.saturating_add(p.offset)))
    }

    /// The copies a verify marked damaged and no new copy replaced yet: (source uuid,
    /// backup, storage id), of one source or of all, at most `limit`.
    pub fn damaged(&self, uuid: Option<&str>, limit: usize) -> Result<Vec<(String, String, u64)>> {
        damaged(&self.snapshot()?, uuid, limit)
    }

    /// How many copies are marked damaged now, over every source.
    pub fn damaged_count(&self) -> Result<u64> {
        Ok(self.snapshot()?.open(schema::DAMAGED)?.len()?)
    }

    /// The last verify of source `system_id`, if one ran.
    pub fn verify_run(&self, system_id: u64) -> Result<Option<VerifyRun>> {
        access::get(&self.snapshot()?, schema::VERIFY_RUNS, system_id)
    }

    /// Every source's last verify, by system id.
    pub fn verify_runs(&self) -> Result<Vec<(u64, VerifyRun)>> {
        let mut out = Vec::new();
        for row in self.snapshot()?.open(schema::VERIFY_RUNS)?.iter()? {
            let (k, v) = row?;
            let id = access::key_of(schema::VERIFY_RUNS, k.value())?;
            out.push((id, decode("verify_runs", v.value())?));
        }
        Ok(out)
    }

    pub fn partial(&self, uuid: &str, backup: &str) -> Result<Option<PartialRecord>> {
        partial(&self.snapshot()?, uuid, backup)
    }

    /// One source's partial copies (its quota counts them).
    pub fn partials_of(&self, uuid: &str) -> Result<Vec<PartialRecord>> {
        partials_of(&self.snapshot()?, uuid)
    }

    /// Every partial copy, with its source's uuid (start-up repair).
    pub fn partials(&self) -> Result<Vec<(String, PartialRecord)>> {
        partials(&self.snapshot()?)
    }
}

impl Txn {
    pub fn put_replication_config(&self, c: &ReplicationConfig) -> Result<()> {
        self.put(schema::REPLICATION_SETTINGS, CONFIG_KEY, c)
    }

    pub fn put_throttle(&self, v: &ThrottleRecord) -> Result<()> {
        self.put(schema::REPLICATION_SETTINGS, THROTTLE_KEY, v)
    }

    /// A fresh item id, never reused.
    pub fn next_item_id(&self) -> Result<u64> {
        self.take_id(schema::META_NEXT_ITEM_ID, 1)
    }

    /// The next position at the tail of the queue (admin adds and resets).
    pub fn next_tail(&self) -> Result<u64> {
        self.take_id(schema::META_NEXT_TAIL, 1)
    }

    pub fn open_item(&self, id: u64) -> Result<Option<QueueItem>> {
        access::get(&self.inner, schema::QUEUE, id)
    }

    pub fn open_items(&self) -> Result<Vec<QueueItem>> {
        open_items(&self.inner, None)
    }

    pub fn latest_item(&self, target_id: u64, backup: &str) -> Result<Option<LatestItem>> {
        latest_item(&self.inner, target_id, backup)
    }

    /// Writes an item where its status says it belongs: open items in the queue, finished
    /// ones moved to the history (newest last). Keeps the latest-item index in step.
    pub fn put_item(&self, item: &QueueItem) -> Result<()> {
        if item.status.is_finished() {
            self.remove(schema::QUEUE, item.id)?;
            let seq = self.take_id(schema::META_NEXT_DONE_SEQ, 1)?;
            self.put(schema::QUEUE_DONE, seq, item)?;
        } else {
            self.put(schema::QUEUE, item.id, item)?;
        }
        let key = (item.target_id, item.backup.as_str());
        let current = latest_item(&self.inner, item.target_id, &item.backup)?;
        // Only the newest item of a backup speaks for it.
        if current.as_ref().is_none_or(|c| c.item_id <= item.id) {
            let entry = LatestItem {
                item_id: item.id,
                size: item.size,
                version: item.version,
                status: item.status,
            };
            self.put(schema::QUEUE_LATEST, key, &entry)?;
        }
        Ok(())
    }

    /// Drops every item and index entry of a forgotten target.
    pub fn delete_items_of(&self, target_id: u64) -> Result<u64> {
        let mut n = 0;
        let of_target = |v: &[u8]| {
            serde_json::from_slice::<QueueItem>(v)
                .map(|i| i.target_id == target_id)
                .unwrap_or(false)
        };
        self.table(schema::QUEUE)?.retain(|_, v| {
            let drop = of_target(v);
            n += u64::from(drop);
            !drop
        })?;
        self.table(schema::QUEUE_DONE)?
            .retain(|_, v| !of_target(v))?;
        let prefix = target_id.to_be_bytes();
        self.table(schema::QUEUE_LATEST)?
            .retain(|k, _| !k.starts_with(&prefix))?;
        Ok(n)
    }

    pub fn received_one(&self, uuid: &str, backup: &str) -> Result<Option<ReceivedRecord>> {
        received_one(&self.inner, uuid, backup)
    }

    /// Writes a received row and keeps the `damaged` index in step. Returns whether the
    /// write cleared a damage mark (a new copy healed a damaged one).
    pub fn put_received(&self, uuid: &str, r: &ReceivedRecord) -> Result<bool> {
        self.put(schema::RECEIVED, (uuid, &r.backup), r)?;
        match &r.damaged {
            Some(_) => {
                self.put(schema::DAMAGED, (uuid, &r.backup), &r.storage_id)?;
                Ok(false)
            }
            None => self.remove(schema::DAMAGED, (uuid, &r.backup)),
        }
    }

    /// Deletes a received row (it moved to the recycle bin) and its `damaged` entry.
    pub fn delete_received(&self, uuid: &str, backup: &str) -> Result<bool> {
        self.remove(schema::DAMAGED, (uuid, backup))?;
        self.remove(schema::RECEIVED, (uuid, backup))
    }

    /// Migration to `VERSION_RECYCLE`: the `damaged` index of the rows already marked.
    pub(super) fn index_damaged(&self) -> Result<()> {
        let mut marked = Vec::new();
        for row in self.inner.open(schema::RECEIVED)?.iter()? {
            let (k, v) = row?;
            let r: ReceivedRecord = decode("received", v.value())?;
            if r.damaged.is_some() {
                let (uuid, _) = access::key_of(schema::RECEIVED, k.value())?;
                marked.push((uuid, r));
            }
        }
        for (uuid, r) in marked {
            self.put(
                schema::DAMAGED,
                (uuid.as_str(), r.backup.as_str()),
                &r.storage_id,
            )?;
        }
        Ok(())
    }

    pub fn put_verify_run(&self, system_id: u64, run: &VerifyRun) -> Result<()> {
        self.put(schema::VERIFY_RUNS, system_id, run)
    }

    pub fn partial(&self, uuid: &str, backup: &str) -> Result<Option<PartialRecord>> {
        partial(&self.inner, uuid, backup)
    }

    pub fn put_partial(&self, uuid: &str, p: &PartialRecord) -> Result<()> {
        self.put(schema::PARTIALS, (uuid, &p.backup), p)
    }

    pub fn delete_partial(&self, uuid: &str, backup: &str) -> Result<bool> {
        self.remove(schema::PARTIALS, (uuid, backup))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_store(name: &str) -> (Store, std::path::PathBuf) {
        let dir =
            std::env::temp_dir().join(format!("replgate-queue-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        crate::fsx::ensure_private_dir(&dir).unwrap();
        (Store::open(&dir.join("db.redb")).unwrap(), dir)
    }

    fn item(id: u64, target_id: u64, backup: &str, status: ItemStatus) -> QueueItem {
        QueueItem {
            id,
            target_id,
            backup: backup.into(),
            size: 10,
            version: 5,
            status,
            queued: 1,
            started: None,
            finished: None,
            bytes_done: 0,
            bytes_sent: 0,
            attempts: 0,
            failures: 0,
            refusals: 0,
            message: None,
            sha256: None,
            tail: None,
            retry_at: None,
        }
    }

    #[test]
    fn strategies_keep_the_appliance_numbers() {
        assert_eq!(Strategy::from_scheme(0), Some(Strategy::Manual));
        assert_eq!(Strategy::from_scheme(1), Some(Strategy::Retention));
        assert_eq!(Strategy::from_scheme(2), Some(Strategy::Recency));
        assert_eq!(Strategy::from_scheme(3), None);
        assert_eq!(Strategy::from_name("recency"), Some(Strategy::Recency));
    }

    #[test]
    fn finished_items_move_to_the_history_newest_first_and_the_index_follows() {
        let (store, dir) = temp_store("history");
        store
            .write(|tx| {
                tx.put_item(&item(1, 7, "c/a", ItemStatus::Waiting))?;
                tx.put_item(&item(2, 7, "c/b", ItemStatus::Waiting))?;
                tx.put_item(&item(3, 8, "c/a", ItemStatus::Waiting))?;
                Ok::<_, crate::store::StoreError>(())
            })
            .unwrap();
        assert_eq!(store.open_items(Some(7)).unwrap().len(), 2);
        store
            .write(|tx| {
                tx.put_item(&item(2, 7, "c/b", ItemStatus::Done))?;
                tx.put_item(&item(1, 7, "c/a", ItemStatus::Removed))?;
                Ok::<_, crate::store::StoreError>(())
            })
            .unwrap();
        assert!(store.open_items(Some(7)).unwrap().is_empty());
        let (done, total) = store.finished_items(Some(7), 0, 10).unwrap();
        assert_eq!(total, 2);
        assert_eq!(done.iter().map(|i| i.id).collect::<Vec<_>>(), vec![1, 2]);
        let (page, _) = store.finished_items(Some(7), 1, 10).unwrap();
        assert_eq!(page[0].id, 2);
        let latest = store.latest_items(7).unwrap();
        assert_eq!(latest.len(), 2);
        assert_eq!(latest[0].0, "c/a");
        assert_eq!(latest[0].1.status, ItemStatus::Removed);
        assert_eq!(store.latest_items(8).unwrap().len(), 1);
        // An older item never overwrites a newer one's index entry.
        store
            .write(|tx| {
                tx.put_item(&item(9, 8, "c/a", ItemStatus::Waiting))?;
                tx.put_item(&item(3, 8, "c/a", ItemStatus::Removed))?;
                Ok::<_, crate::store::StoreError>(())
            })
            .unwrap();
        assert_eq!(store.latest_items(8).unwrap()[0].1.item_id, 9);
        store.write(|tx| tx.delete_items_of(8).map(|_| ())).unwrap();
        assert!(store.latest_items(8).unwrap().is_empty());
        assert!(store.open_items(Some(8)).unwrap().is_empty());
        assert_eq!(store.latest_items(7).unwrap().len(), 2);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn settings_default_until_written() {
        let (store, dir) = temp_store("settings");
        assert_eq!(
            store.replication_config().unwrap(),
            ReplicationConfig::default()
        );
        let t = ThrottleRecord {
            windows: vec![ThrottleWindow {
                percentage: 10,
                days: vec![1, 2],
                start: 8,
                end: 18,
            }],
            link_mbps: 100,
        };
        store.write(|tx| tx.put_throttle(&t)).unwrap();
        assert_eq!(store.throttle().unwrap(), t);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
