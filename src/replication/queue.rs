//! The source's queue rules, as plain functions over stored items with the time passed
//! in: the order each strategy gives (`retention` oldest first, `recency` newest first,
//! `manual` only what an admin added), what a scan adds, updates or drops, the recency
//! drop rule, which items may start under `max_concurrent`, and what an outcome does to
//! an item (done, retried with backoff, or failed for good). No I/O.

use std::cmp::Ordering;
use std::collections::HashMap;

use super::names::BackupName;
use crate::model::UnixTime;
use crate::store::{ItemStatus, LatestItem, QueueItem, ReplicationConfig, Strategy};
use crate::wire::transfer::Code;

/// Most transfers at once per target the config accepts.
pub const MAX_CONCURRENT: u32 = 16;
/// Most retries the config accepts.
pub const MAX_RETRIES: u32 = 100;
/// First wait after a failed attempt; it doubles per failure up to [`MAX_BACKOFF_S`].
pub const FIRST_BACKOFF_S: i64 = 2;
pub const MAX_BACKOFF_S: i64 = 600;
/// Longest wait between the tries of an item the target refused for now (its quota, its
/// free space): the first waits [`FIRST_BACKOFF_S`], each next one twice as long.
pub const MAX_REFUSED_BACKOFF_S: i64 = 900;

/// Checks a config as `PUT /api/replication/config` would store it.
pub fn validate_config(c: &ReplicationConfig) -> Result<(), String> {
    if !(1..=MAX_CONCURRENT).contains(&c.max_concurrent) {
        return Err(format!(
            "field `max_concurrent` must be from 1 to {MAX_CONCURRENT}"
        ));
    }
    if c.retries > MAX_RETRIES {
        return Err(format!("field `retries` must be from 0 to {MAX_RETRIES}"));
    }
    Ok(())
}

/// A backup a scan of the source's storage found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    pub name: BackupName,
    pub size: u64,
    /// Modification time in nanoseconds: the backup's version, and its age.
    pub version: i64,
}

/// The sort key of a waiting item: strategy-queued items first in the strategy's order,
/// then admin-added or reset items in the order they were added.
fn order(a: &QueueItem, b: &QueueItem, strategy: Strategy) -> Ordering {
    let by_strategy = match strategy {
        Strategy::Retention => a.version.cmp(&b.version),
        Strategy::Recency => b.version.cmp(&a.version),
        Strategy::Manual => Ordering::Equal,
    };
    match (a.tail, b.tail) {
        (None, Some(_)) => Ordering::Less,
        (Some(_), None) => Ordering::Greater,
        (Some(x), Some(y)) => x.cmp(&y),
        (None, None) => by_strategy,
    }
    .then(a.id.cmp(&b.id))
}

/// The waiting items in the order they will start.
pub fn waiting_in_order(items: &[QueueItem], strategy: Strategy) -> Vec<&QueueItem> {
    let mut w: Vec<&QueueItem> = items
        .iter()
        .filter(|i| i.status == ItemStatus::Waiting)
        .collect();
    w.sort_by(|a, b| order(a, b, strategy));
    w
}

/// `queue_position` of every waiting item: 1 is next. Other items have position 0.
pub fn positions(items: &[QueueItem], strategy: Strategy) -> HashMap<u64, u64> {
    waiting_in_order(items, strategy)
        .into_iter()
        .enumerate()
        .map(|(i, item)| (item.id, i as u64 + 1))
        .collect()
}

/// Items that may start now for one target, in order: waiting, not backing off, and no
/// more than `max_concurrent` minus what is active (or claimed by a running session).
pub fn startable(
    items: &[QueueItem],
    strategy: Strategy,
    busy: usize,
    max_concurrent: u32,
    now: UnixTime,
) -> Vec<u64> {
    let room = (max_concurrent as usize).saturating_sub(busy);
    waiting_in_order(items, strategy)
        .into_iter()
        .filter(|i| i.retry_at.is_none_or(|t| t <= now))
        .take(room)
        .map(|i| i.id)
        .collect()
}

/// What a scan changes in one target's queue.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ScanPlan {
    /// New backups (or new versions of done ones) to queue, oldest first.
    pub add: Vec<Found>,
    /// Waiting or failed items whose file changed before it was sent: (item id, new size,
    /// new version); they wait again with a clean slate.
    pub update: Vec<(u64, u64, i64)>,
    /// Waiting or failed items whose backup is gone from the storage.
    pub vanished: Vec<u64>,
}

/// Plans a complete scan's effect on one target's queue. `latest` is the latest item per
/// backup name; `open` the target's open items. Under `manual` nothing is added, but
/// changed and vanished backups are still followed.
pub fn plan_scan(
    strategy: Strategy,
    found: &[Found],
    latest: &HashMap<String, LatestItem>,
    open: &[QueueItem],
) -> ScanPlan {
    let mut plan = ScanPlan::default();
    let open_by_id: HashMap<u64, &QueueItem> = open.iter().map(|i| (i.id, i)).collect();
    let mut sorted: Vec<&Found> = found.iter().collect();
    sorted.sort_by(|a, b| a.version.cmp(&b.version).then(a.name.cmp(&b.name)));
    for f in sorted {
        match latest.get(f.name.as_str()) {
            None => {
                if strategy != Strategy::Manual {
                    plan.add.push(f.clone());
                }
            }
            Some(l) if l.size == f.size && l.version == f.version => {}
            Some(l) => match l.status {
                ItemStatus::Waiting | ItemStatus::Failed => {
                    if open_by_id.contains_key(&l.item_id) {
                        plan.update.push((l.item_id, f.size, f.version));
                    }
                }
                // The sender holds the old version open and finishes it; the new one waits.
                ItemStatus::Active | ItemStatus::Done | ItemStatus::Removed => {
                    if strategy != Strategy::Manual || l.status == ItemStatus::Active {
                        plan.add.push(f.clone());
                    }
                }
            },
        }
    }
    let present: std::collections::HashSet<&str> = found.iter().map(|f| f.name.as_str()).collect();
    plan.vanished = open
        .iter()
        .filter(|i| matches!(i.status, ItemStatus::Waiting | ItemStatus::Failed))
        .filter(|i| !present.contains(i.backup.as_str()))
        .map(|i| i.id)
        .collect();
    plan
}

/// A new item for `found`, waiting.
pub fn new_item(
    id: u64,
    target_id: u64,
    found: &Found,
    tail: Option<u64>,
    now: UnixTime,
) -> QueueItem {
    QueueItem {
        id,
        target_id,
        backup: found.name.as_str().to_string(),
        size: found.size,
        version: found.version,
        status: ItemStatus::Waiting,
        queued: now,
        started: None,
        finished: None,
        bytes_done: 0,
        bytes_sent: 0,
        attempts: 0,
        failures: 0,
        refusals: 0,
        message: None,
        sha256: None,
        tail,
        retry_at: None,
    }
}

/// Under `recency`, once `done` (a client's newest backup) has replicated, that client's
/// older waiting items for the same target are dropped, and older ones already under way
/// are stopped. Returns their ids; nothing while a newer backup of the client is still
/// waiting or active (it drops them when it is done).
pub fn superseded(strategy: Strategy, done: &QueueItem, open: &[QueueItem]) -> Vec<u64> {
    if strategy != Strategy::Recency {
        return Vec::new();
    }
    let client = client_of(&done.backup);
    let same_client = |i: &&QueueItem| {
        i.target_id == done.target_id && i.id != done.id && client_of(&i.backup) == client
    };
    let newer_pending = open.iter().filter(same_client).any(|i| {
        matches!(i.status, ItemStatus::Waiting | ItemStatus::Active) && i.version > done.version
    });
    if newer_pending {
        return Vec::new();
    }
    // Older ones that already started go too: with offers running ahead of the data the
    // next backup is always under way when the newest one's outcome arrives.
    open.iter()
        .filter(same_client)
        .filter(|i| {
            matches!(i.status, ItemStatus::Waiting | ItemStatus::Active)
                && i.version <= done.version
        })
        .map(|i| i.id)
        .collect()
}

fn client_of(backup: &str) -> &str {
    backup.split('/').next().unwrap_or("")
}

/// How an attempt ended, as the queue sees it (docs/decisions.md, "Which failures an
/// item retries").
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attempt {
    /// Verified and durable on the target (or already there with the same SHA-256).
    Done { sha256: String, skipped: bool },
    /// The target has no room for the item now (its quota, its free space): `failed`
    /// with the target's message, and tried again by itself after a backoff (doubling up
    /// to [`MAX_REFUSED_BACKOFF_S`]), however often; it never counts against `retries`.
    /// Once room is back, the item goes on without an admin.
    Refused(String),
    /// The item can never succeed as it stands (a name the target refuses): `failed`
    /// until an admin resets it.
    Rejected(String),
    /// This attempt failed (digest or size mismatch, a storage error other than a full
    /// disk, an unreadable file): counts against `retries`.
    Failed(String),
    /// The connection or the target went away, or it was busy: try again later without
    /// counting against `retries` (a target that is down for a day must not fail items).
    Interrupted(String),
}

/// What the target's refusal or failure code means for the item.
pub fn attempt_for(code: Code, message: &str) -> Attempt {
    match code {
        Code::Quota | Code::NoSpace => Attempt::Refused(message.to_string()),
        Code::BadName => Attempt::Rejected(message.to_string()),
        Code::Busy | Code::Unavailable | Code::NotPaired => {
            Attempt::Interrupted(message.to_string())
        }
        Code::SizeMismatch
        | Code::DigestMismatch
        | Code::Storage
        | Code::Protocol
        | Code::Other(_) => Attempt::Failed(message.to_string()),
    }
}

/// Applies an attempt's end to `item`: done, waiting again after a backoff, or failed once
/// more than `retries` attempts failed.
pub fn finish_attempt(item: &mut QueueItem, attempt: Attempt, retries: u32, now: UnixTime) {
    match attempt {
        Attempt::Done { sha256, skipped } => {
            item.status = ItemStatus::Done;
            item.finished = Some(now);
            item.bytes_done = item.size;
            item.sha256 = Some(sha256);
            item.retry_at = None;
            item.refusals = 0;
            item.message = skipped.then(|| "the target already holds this backup".to_string());
        }
        Attempt::Refused(m) => {
            // An offer refused before it started is an attempt too.
            if item.status == ItemStatus::Waiting {
                item.attempts += 1;
            }
            item.refusals = item.refusals.saturating_add(1);
            item.status = ItemStatus::Failed;
            item.finished = Some(now);
            item.retry_at = Some(now + refused_backoff(item.refusals));
            item.message = Some(m);
        }
        Attempt::Rejected(m) => {
            if item.status == ItemStatus::Waiting {
                item.attempts += 1;
            }
            item.status = ItemStatus::Failed;
            item.finished = Some(now);
            item.retry_at = None;
            item.message = Some(m);
        }
        Attempt::Failed(m) => {
            let failures = item.failures + 1;
            if failures > retries {
                item.status = ItemStatus::Failed;
                item.finished = Some(now);
                item.retry_at = None;
                item.message = Some(format!("{m} (after {failures} failed attempts)"));
            } else {
                item.status = ItemStatus::Waiting;
                item.retry_at = Some(now + backoff(failures));
                item.message = Some(format!("attempt failed, retrying: {m}"));
            }
            item.failures = failures;
        }
        Attempt::Interrupted(m) => {
            item.status = ItemStatus::Waiting;
            item.retry_at = Some(now + FIRST_BACKOFF_S);
            item.message = Some(format!("interrupted, resuming: {m}"));
        }
    }
}

/// Seconds to wait after the `n`th failure (n ≥ 1).
pub fn backoff(n: u32) -> i64 {
    let shift = n.saturating_sub(1).min(16);
    (FIRST_BACKOFF_S << shift).min(MAX_BACKOFF_S)
}

/// Seconds to wait after the `n`th refusal for now in a row (n ≥ 1).
pub fn refused_backoff(n: u32) -> i64 {
    let shift = n.saturating_sub(1).min(16);
    (FIRST_BACKOFF_S << shift).min(MAX_REFUSED_BACKOFF_S)
}

/// Whether `item` is one the target refused for now whose wait is over: it waits again.
pub fn retry_due(item: &QueueItem, now: UnixTime) -> bool {
    item.status == ItemStatus::Failed && item.retry_at.is_some_and(|t| t <= now)
}

/// Puts an item whose wait is over ([`retry_due`]) back in line; its place, message and
/// counts stay.
pub fn retry(item: &mut QueueItem) {
    item.status = ItemStatus::Waiting;
    item.finished = None;
    item.retry_at = None;
}

/// Puts an item back at the tail of the queue with a clean slate (PUT action `reset`).
pub fn reset(item: &mut QueueItem, tail: u64, now: UnixTime) {
    item.status = ItemStatus::Waiting;
    item.tail = Some(tail);
    item.queued = now;
    item.started = None;
    item.finished = None;
    item.bytes_done = 0;
    item.attempts = 0;
    item.failures = 0;
    item.refusals = 0;
    item.message = None;
    item.retry_at = None;
}

/// Removes an item (PUT action `none`, a vanished backup, recency's drop rule).
pub fn remove(item: &mut QueueItem, message: &str, now: UnixTime) {
    item.status = ItemStatus::Removed;
    item.finished = Some(now);
    item.retry_at = None;
    item.message = Some(message.to_string());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(id: u64, backup: &str, version: i64, status: ItemStatus) -> QueueItem {
        let found = Found {
            name: BackupName::parse(backup).unwrap(),
            size: 100,
            version,
        };
        let mut i = new_item(id, 1, &found, None, 0);
        i.status = status;
        i
    }

    fn found(backup: &str, version: i64) -> Found {
        Found {
            name: BackupName::parse(backup).unwrap(),
            size: 100,
            version,
        }
    }

    fn ids(v: &[&QueueItem]) -> Vec<u64> {
        v.iter().map(|i| i.id).collect()
    }

    #[test]
    fn retention_is_oldest_first_recency_newest_first_and_tail_items_come_last() {
        let mut items = vec![
            item(1, "a/x", 30, ItemStatus::Waiting),
            item(2, "a/y", 10, ItemStatus::Waiting),
            item(3, "b/z", 20, ItemStatus::Waiting),
            item(4, "b/w", 5, ItemStatus::Done),
        ];
        assert_eq!(
            ids(&waiting_in_order(&items, Strategy::Retention)),
            vec![2, 3, 1]
        );
        assert_eq!(
            ids(&waiting_in_order(&items, Strategy::Recency)),
            vec![1, 3, 2]
        );
        assert_eq!(
            ids(&waiting_in_order(&items, Strategy::Manual)),
            vec![1, 2, 3]
        );
        items[1].tail = Some(2);
        items[0].tail = Some(1);
        assert_eq!(
            ids(&waiting_in_order(&items, Strategy::Retention)),
            vec![3, 1, 2]
        );
        let pos = positions(&items, Strategy::Retention);
        assert_eq!((pos[&3], pos[&1], pos[&2]), (1, 2, 3));
        assert!(!pos.contains_key(&4));
    }

    #[test]
    fn startable_respects_max_concurrent_and_backoff() {
        let mut items = vec![
            item(1, "a/x", 1, ItemStatus::Waiting),
            item(2, "a/y", 2, ItemStatus::Waiting),
            item(3, "a/z", 3, ItemStatus::Waiting),
        ];
        assert_eq!(
            startable(&items, Strategy::Retention, 0, 2, 100),
            vec![1, 2]
        );
        assert_eq!(startable(&items, Strategy::Retention, 1, 2, 100), vec![1]);
        assert!(startable(&items, Strategy::Retention, 2, 2, 100).is_empty());
        items[0].retry_at = Some(150);
        assert_eq!(
            startable(&items, Strategy::Retention, 0, 2, 100),
            vec![2, 3]
        );
        assert_eq!(
            startable(&items, Strategy::Retention, 0, 2, 150),
            vec![1, 2]
        );
    }

    #[test]
    fn a_scan_adds_new_backups_follows_changes_and_drops_vanished_ones() {
        let latest: HashMap<String, LatestItem> = [
            (
                "a/done".to_string(),
                LatestItem {
                    item_id: 1,
                    size: 100,
                    version: 1,
                    status: ItemStatus::Done,
                },
            ),
            (
                "a/waiting".to_string(),
                LatestItem {
                    item_id: 2,
                    size: 100,
                    version: 2,
                    status: ItemStatus::Waiting,
                },
            ),
            (
                "a/gone".to_string(),
                LatestItem {
                    item_id: 3,
                    size: 100,
                    version: 3,
                    status: ItemStatus::Waiting,
                },
            ),
            (
                "a/removed".to_string(),
                LatestItem {
                    item_id: 4,
                    size: 100,
                    version: 4,
                    status: ItemStatus::Removed,
                },
            ),
        ]
        .into_iter()
        .collect();
        let open = vec![
            item(2, "a/waiting", 2, ItemStatus::Waiting),
            item(3, "a/gone", 3, ItemStatus::Waiting),
        ];
        let scanned = vec![
            found("a/new2", 9),
            found("a/done", 1),
            found("a/waiting", 7),
            found("a/new1", 8),
            found("a/removed", 4),
        ];
        let plan = plan_scan(Strategy::Retention, &scanned, &latest, &open);
        let added: Vec<&str> = plan.add.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(
            added,
            vec!["a/new1", "a/new2"],
            "oldest first; the removed one stays removed"
        );
        assert_eq!(plan.update, vec![(2, 100, 7)]);
        assert_eq!(plan.vanished, vec![3]);
        // A new version of a done backup is queued again.
        let changed = vec![found("a/done", 5)];
        let plan = plan_scan(Strategy::Retention, &changed, &latest, &[]);
        assert_eq!(plan.add.len(), 1);
        // Manual queues nothing by itself but still follows what is there.
        let plan = plan_scan(Strategy::Manual, &scanned, &latest, &open);
        assert!(plan.add.is_empty());
        assert_eq!(plan.vanished, vec![3]);
    }

    #[test]
    fn recency_drops_older_waiting_backups_of_the_client_once_its_newest_is_done() {
        let done = item(5, "a/new", 50, ItemStatus::Done);
        let open = vec![
            item(1, "a/old1", 10, ItemStatus::Waiting),
            item(2, "a/old2", 20, ItemStatus::Active),
            item(3, "b/other", 5, ItemStatus::Waiting),
            item(4, "a/failed", 5, ItemStatus::Failed),
        ];
        assert_eq!(superseded(Strategy::Recency, &done, &open), vec![1, 2]);
        assert!(superseded(Strategy::Retention, &done, &open).is_empty());
        let mut with_newer = open.clone();
        with_newer.push(item(6, "a/newest", 60, ItemStatus::Waiting));
        assert!(superseded(Strategy::Recency, &done, &with_newer).is_empty());
    }

    #[test]
    fn failures_back_off_then_fail_while_interruptions_never_exhaust_retries() {
        let mut i = item(1, "a/x", 1, ItemStatus::Active);
        finish_attempt(&mut i, Attempt::Failed("digest mismatch".into()), 2, 100);
        assert_eq!((i.status, i.retry_at), (ItemStatus::Waiting, Some(102)));
        finish_attempt(&mut i, Attempt::Failed("digest mismatch".into()), 2, 200);
        assert_eq!((i.status, i.retry_at), (ItemStatus::Waiting, Some(204)));
        for n in 0..50 {
            finish_attempt(
                &mut i,
                Attempt::Interrupted("connection reset".into()),
                2,
                300 + n,
            );
            assert_eq!(i.status, ItemStatus::Waiting);
        }
        finish_attempt(&mut i, Attempt::Failed("digest mismatch".into()), 2, 400);
        assert_eq!(i.status, ItemStatus::Failed);
        assert!(i
            .message
            .as_deref()
            .unwrap()
            .contains("after 3 failed attempts"));
        let mut q = item(2, "a/y", 1, ItemStatus::Active);
        finish_attempt(
            &mut q,
            attempt_for(Code::Quota, "quota of 1 MB exceeded"),
            5,
            10,
        );
        assert_eq!(q.status, ItemStatus::Failed);
        assert_eq!(q.message.as_deref(), Some("quota of 1 MB exceeded"));
        reset(&mut q, 7, 20);
        assert_eq!(
            (q.status, q.tail, q.failures, q.message.clone()),
            (ItemStatus::Waiting, Some(7), 0, None)
        );
        assert_eq!(backoff(1), 2);
        assert_eq!(backoff(40), MAX_BACKOFF_S);
    }

    #[test]
    fn a_refusal_for_now_is_retried_by_itself_with_backoff_and_a_bad_name_waits_for_an_admin() {
        // Refused for space: failed with the target's message, and due again after a wait
        // that doubles, however often, never exhausting `retries`.
        let mut i = item(1, "a/x", 1, ItemStatus::Waiting);
        let mut now = 1_000;
        let mut waits = Vec::new();
        for _ in 0..20 {
            finish_attempt(
                &mut i,
                attempt_for(Code::NoSpace, "storage 1 is full"),
                2,
                now,
            );
            assert_eq!(i.status, ItemStatus::Failed);
            assert_eq!(i.message.as_deref(), Some("storage 1 is full"));
            let at = i
                .retry_at
                .expect("a failed-for-space item has a retry time");
            assert!(!retry_due(&i, at - 1));
            assert!(retry_due(&i, at));
            waits.push(at - now);
            retry(&mut i);
            assert_eq!((i.status, i.retry_at), (ItemStatus::Waiting, None));
            now = at;
        }
        assert_eq!(&waits[..5], &[2, 4, 8, 16, 32]);
        assert_eq!(*waits.last().unwrap(), MAX_REFUSED_BACKOFF_S);
        assert_eq!((i.attempts, i.refusals, i.failures), (20, 20, 0));
        // Room is back: it is sent, and the next refusal starts from the first wait.
        i.status = ItemStatus::Active;
        let done = Attempt::Done {
            sha256: "ab".into(),
            skipped: false,
        };
        finish_attempt(&mut i, done, 2, now);
        assert_eq!((i.status, i.refusals), (ItemStatus::Done, 0));
        // A quota refusal is the same; a name the target refuses is permanent.
        let mut q = item(2, "a/y", 1, ItemStatus::Active);
        finish_attempt(&mut q, attempt_for(Code::Quota, "quota"), 2, 10);
        assert_eq!((q.status, q.retry_at), (ItemStatus::Failed, Some(12)));
        let mut b = item(3, "a/z", 1, ItemStatus::Waiting);
        finish_attempt(&mut b, attempt_for(Code::BadName, "bad name"), 2, 10);
        assert_eq!((b.status, b.retry_at), (ItemStatus::Failed, None));
        assert!(!retry_due(&b, i64::MAX));
        assert_eq!(refused_backoff(u32::MAX), MAX_REFUSED_BACKOFF_S);
    }
}
