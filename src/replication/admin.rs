//! What an admin does to replication through the API and `ctl`: list the queue (with live
//! progress), add a backup by hand, remove or reset items, change the config and the
//! throttle, list what a source delivered. Each change commits in one transaction with
//! its audit row, then tells the running sessions through `Live`. Time passed in; the
//! only file access is looking up a backup the admin names.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use super::backups;
use super::compress::Compression;
use super::live::{Incoming, Live, Progress};
use super::names::{check_component, BackupName, NameError};
use super::queue::{self, new_item};
use super::throttle::{self, ThrottleError};
use crate::model::UnixTime;
use crate::pairing::Actor;
use crate::store::{
    ItemStatus, QueueItem, ReceivedRecord, ReplicationConfig, Store, StoreError, TargetRecord,
    TargetStatus, ThrottleRecord,
};

#[derive(Debug)]
pub enum AdminError {
    UnknownTarget(u64),
    /// The target is not paired far enough to replicate to.
    TargetNotPaired {
        id: u64,
        status: TargetStatus,
    },
    BadName(NameError),
    NoSuchBackup {
        backup: String,
        problem: String,
    },
    /// An open item already covers this backup for this target.
    AlreadyQueued {
        backup: String,
        item_id: u64,
        status: ItemStatus,
    },
    UnknownItem(u64),
    Invalid(String),
    /// The source has no backup storage to replicate from.
    NoStorage,
    Store(StoreError),
}

impl fmt::Display for AdminError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AdminError::UnknownTarget(id) => write!(f, "no target {id}"),
            AdminError::TargetNotPaired { id, status } => write!(
                f,
                "target {id} is {}; backups replicate only to a complete pairing",
                status.as_str()
            ),
            AdminError::BadName(_) => f.write_str("field `backup`"),
            AdminError::NoSuchBackup { backup, problem } => {
                write!(f, "no backup {backup:?} in the backup storage: {problem}")
            }
            AdminError::AlreadyQueued {
                backup,
                item_id,
                status,
            } => write!(
                f,
                "{backup} is already queued for this target as item {item_id} ({}){}",
                status.as_str(),
                if *status == ItemStatus::Failed {
                    "; reset it to try again"
                } else {
                    ""
                }
            ),
            AdminError::UnknownItem(id) => write!(f, "no queue item {id}"),
            AdminError::Invalid(m) => f.write_str(m),
            AdminError::NoStorage => {
                f.write_str("this appliance has no backup storage to replicate from")
            }
            AdminError::Store(_) => f.write_str("replication state"),
        }
    }
}

impl std::error::Error for AdminError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            AdminError::Store(e) => Some(e),
            AdminError::BadName(e) => Some(e),
            _ => None,
        }
    }
}

impl From<StoreError> for AdminError {
    fn from(e: StoreError) -> Self {
        AdminError::Store(e)
    }
}

impl From<ThrottleError> for AdminError {
    fn from(e: ThrottleError) -> Self {
        AdminError::Invalid(e.0)
    }
}

/// One queue item as the API shows it: the stored item, where it stands, and its live
/// progress while active.
#[derive(Clone, Debug)]
pub struct ItemView {
    pub item: QueueItem,
    pub target: String,
    pub queue_position: u64,
    pub progress: Option<Arc<Progress>>,
}

/// `GET /api/replication/queue`.
#[derive(Debug, Default)]
pub struct Listing {
    pub active: Vec<ItemView>,
    /// What sources are sending this appliance now (target side).
    pub incoming: Vec<Arc<Incoming>>,
    pub inactive: Vec<ItemView>,
    pub total_inactive: u64,
    pub done: Vec<ItemView>,
    pub total_done: u64,
}

/// What to list.
#[derive(Clone, Copy, Debug)]
pub struct ListQuery {
    pub target_id: Option<u64>,
    pub start: u64,
    pub count: u64,
    pub include_done: bool,
}

fn known_target(store: &Store, id: u64) -> Result<TargetRecord, AdminError> {
    store.target(id)?.ok_or(AdminError::UnknownTarget(id))
}

pub fn list(store: &Store, live: &Live, q: ListQuery) -> Result<Listing, AdminError> {
    let hosts: HashMap<u64, String> = store
        .targets()?
        .into_iter()
        .map(|t| (t.id, t.host))
        .collect();
    if let Some(id) = q.target_id {
        if !hosts.contains_key(&id) {
            return Err(AdminError::UnknownTarget(id));
        }
    }
    let strategy = live.config().strategy;
    let open = store.open_items(q.target_id)?;
    // One queue per target: positions count within each target's queue.
    let mut by_target: HashMap<u64, Vec<QueueItem>> = HashMap::new();
    for i in &open {
        by_target.entry(i.target_id).or_default().push(i.clone());
    }
    let mut positions: HashMap<u64, u64> = HashMap::new();
    for items in by_target.values() {
        positions.extend(queue::positions(items, strategy));
    }
    let view = |item: QueueItem| ItemView {
        target: hosts.get(&item.target_id).cloned().unwrap_or_default(),
        queue_position: positions.get(&item.id).copied().unwrap_or(0),
        progress: (item.status == ItemStatus::Active)
            .then(|| live.progress_of(item.id))
            .flatten(),
        item,
    };
    let mut active: Vec<ItemView> = open
        .iter()
        .filter(|i| i.status == ItemStatus::Active)
        .cloned()
        .map(view)
        .collect();
    active.sort_by_key(|v| (v.item.started, v.item.id));
    let mut inactive: Vec<ItemView> = open
        .iter()
        .filter(|i| i.status != ItemStatus::Active)
        .cloned()
        .map(view)
        .collect();
    // Waiting items by position (targets interleaved), then failed ones, newest first.
    inactive.sort_by_key(|v| match v.item.status {
        ItemStatus::Waiting => (0, v.queue_position, v.item.target_id, 0),
        _ => (1, 0, 0, u64::MAX - v.item.id),
    });
    let total_inactive = inactive.len() as u64;
    let inactive = inactive
        .into_iter()
        .skip(q.start as usize)
        .take(q.count as usize)
        .collect();
    let (done, total_done) = if q.include_done {
        let (items, total) = store.finished_items(q.target_id, q.start, q.count)?;
        (items.into_iter().map(view).collect(), total)
    } else {
        (Vec::new(), 0)
    };
    Ok(Listing {
        active,
        incoming: if q.target_id.is_none() {
            live.incoming()
        } else {
            Vec::new()
        },
        inactive,
        total_inactive,
        done,
        total_done,
    })
}

/// `POST /api/replication/queue {"target_id", "backup"}`: queues one backup by hand, at
/// the tail of the queue, whatever the strategy.
pub fn add(
    store: &Store,
    live: &Live,
    root: Option<&Path>,
    target_id: u64,
    backup: &str,
    actor: &Actor,
    now: UnixTime,
) -> Result<QueueItem, AdminError> {
    let name = BackupName::parse(backup).map_err(AdminError::BadName)?;
    let target = known_target(store, target_id)?;
    if !matches!(
        target.status,
        TargetStatus::Complete | TargetStatus::Accepted
    ) {
        return Err(AdminError::TargetNotPaired {
            id: target_id,
            status: target.status,
        });
    }
    let root = root.ok_or(AdminError::NoStorage)?;
    let found = backups::stat(root, &name).map_err(|e| AdminError::NoSuchBackup {
        backup: name.to_string(),
        problem: e.to_string(),
    })?;
    let item = store.write(|tx| {
        if let Some(open) = tx
            .open_items()?
            .into_iter()
            .find(|i| i.target_id == target_id && i.backup == name.as_str())
        {
            return Err(AdminError::AlreadyQueued {
                backup: name.to_string(),
                item_id: open.id,
                status: open.status,
            });
        }
        let item = new_item(
            tx.next_item_id()?,
            target_id,
            &found,
            Some(tx.next_tail()?),
            now,
        );
        tx.put_item(&item)?;
        tx.audit(&actor.audit(
            now,
            "queue item added",
            format!("item:{}", item.id),
            format!("target {target_id} backup {name}"),
        ))?;
        Ok(item)
    })?;
    live.wake();
    Ok(item)
}

/// What `PUT /api/replication/queue` does to the items it names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Remove them from the queue.
    Remove,
    /// Remove them and queue them again at the end.
    Reset,
}

/// `PUT /api/replication/queue`: the items named by id, plus every open item of the
/// named clients (of one target, or all).
pub struct Change<'a> {
    pub ids: &'a [u64],
    pub clients: &'a [String],
    pub target_id: Option<u64>,
    pub action: Action,
}

/// Applies a change; returns the items as they are afterwards (a reset done item becomes
/// a new item). Active items are stopped by their session within a frame.
pub fn change(
    store: &Store,
    live: &Live,
    c: &Change<'_>,
    actor: &Actor,
    now: UnixTime,
) -> Result<Vec<QueueItem>, AdminError> {
    if c.ids.is_empty() && c.clients.is_empty() {
        return Err(AdminError::Invalid(
            "field `backups` or `clients` must name at least one item".into(),
        ));
    }
    for client in c.clients {
        check_component(client)
            .map_err(|e| AdminError::Invalid(format!("field `clients`: {client:?}: {e}")))?;
    }
    if let Some(id) = c.target_id {
        known_target(store, id)?;
    }
    let history: Vec<QueueItem> = if c.ids.is_empty() {
        Vec::new()
    } else {
        store.finished_items(c.target_id, 0, u64::MAX)?.0
    };
    let (changed, cancel) = store.write(|tx| {
        let open = tx.open_items()?;
        let mut chosen: Vec<QueueItem> = Vec::new();
        let mut finished: Vec<QueueItem> = Vec::new();
        for id in c.ids {
            if let Some(i) = open.iter().find(|i| i.id == *id) {
                chosen.push(i.clone());
            } else if let Some(h) = history.iter().find(|i| i.id == *id) {
                finished.push(h.clone());
            } else {
                return Err(AdminError::UnknownItem(*id));
            }
        }
        for i in &open {
            let client = i.backup.split('/').next().unwrap_or("");
            if c.clients.iter().any(|cl| cl == client)
                && c.target_id.is_none_or(|t| t == i.target_id)
                && !chosen.iter().any(|x| x.id == i.id)
            {
                chosen.push(i.clone());
            }
        }
        let mut out = Vec::new();
        let mut cancel = Vec::new();
        for mut item in chosen {
            if item.status == ItemStatus::Active {
                cancel.push(item.id);
            }
            match c.action {
                Action::Remove => {
                    queue::remove(&mut item, &format!("removed by {}", actor.user), now)
                }
                Action::Reset => queue::reset(&mut item, tx.next_tail()?, now),
            }
            tx.put_item(&item)?;
            out.push(item);
        }
        for old in finished {
            if c.action == Action::Remove {
                out.push(old);
                continue;
            }
            // A finished item stays history; the reset queues its backup anew.
            let reopened = open.iter().chain(out.iter()).any(|i| {
                i.target_id == old.target_id && i.backup == old.backup && !i.status.is_finished()
            });
            if reopened {
                continue;
            }
            let mut item = old.clone();
            item.id = tx.next_item_id()?;
            item.bytes_sent = 0;
            item.sha256 = None;
            queue::reset(&mut item, tx.next_tail()?, now);
            tx.put_item(&item)?;
            out.push(item);
        }
        let ids: Vec<String> = out.iter().map(|i| i.id.to_string()).collect();
        tx.audit(&actor.audit(
            now,
            match c.action {
                Action::Remove => "queue items removed",
                Action::Reset => "queue items reset",
            },
            "queue".into(),
            format!("items {}", ids.join(",")),
        ))?;
        Ok::<_, AdminError>((out, cancel))
    })?;
    for id in cancel {
        live.cancel(id);
    }
    live.wake();
    Ok(changed)
}

/// `PUT /api/replication/config`: the fields given replace the stored ones.
pub fn set_config(
    store: &Store,
    live: &Live,
    config: ReplicationConfig,
    actor: &Actor,
    now: UnixTime,
) -> Result<ReplicationConfig, AdminError> {
    queue::validate_config(&config).map_err(AdminError::Invalid)?;
    store.write(|tx| {
        tx.put_replication_config(&config)?;
        tx.audit(&actor.audit(
            now,
            "replication config changed",
            "replication:config".into(),
            format!(
                "max_concurrent {} strategy {} retries {}",
                config.max_concurrent,
                config.strategy.as_str(),
                config.retries
            ),
        ))?;
        Ok::<_, AdminError>(())
    })?;
    live.set_config(config.clone());
    Ok(config)
}

/// `PUT /api/replication/throttle`: replaces the windows and the link speed. Running
/// transfers follow at their next frame.
pub fn set_throttle(
    store: &Store,
    live: &Live,
    t: ThrottleRecord,
    actor: &Actor,
    now: UnixTime,
) -> Result<ThrottleRecord, AdminError> {
    throttle::validate(&t)?;
    store.write(|tx| {
        tx.put_throttle(&t)?;
        tx.audit(&actor.audit(
            now,
            "replication throttle changed",
            "replication:throttle".into(),
            format!("{} windows, link {} Mbit/s", t.windows.len(), t.link_mbps),
        ))?;
        Ok::<_, AdminError>(())
    })?;
    live.set_throttle(t.clone());
    Ok(t)
}

/// Sets target `target_id`'s own `compression` (None: back to the daemon's key). Read at
/// each session's start, so it takes effect with the next session.
pub fn set_compression(
    store: &Store,
    target_id: u64,
    setting: Option<Compression>,
    actor: &Actor,
    now: UnixTime,
) -> Result<TargetRecord, AdminError> {
    store.write(|tx| {
        let mut t = tx
            .target(target_id)?
            .ok_or(AdminError::UnknownTarget(target_id))?;
        t.compression = setting.map(|c| c.to_string());
        t.updated = now;
        tx.put_target(&t)?;
        tx.audit(&actor.audit(
            now,
            "target compression changed",
            format!("target:{}", t.host),
            match &t.compression {
                Some(c) => format!("compression {c}"),
                None => "compression as the daemon's setting".into(),
            },
        ))?;
        Ok::<_, AdminError>(t)
    })
}

/// The `compression` a session to `target` uses: its own setting, else the daemon's.
pub fn compression_of(target: &TargetRecord, daemon: Compression) -> Compression {
    target
        .compression
        .as_deref()
        .and_then(|c| Compression::parse(c).ok())
        .unwrap_or(daemon)
}

/// What a source delivered to this appliance, in its current storage.
pub fn received(
    store: &Store,
    uuid: &str,
    storage_id: Option<u64>,
) -> Result<Vec<ReceivedRecord>, AdminError> {
    Ok(store
        .received(uuid)?
        .into_iter()
        .filter(|r| storage_id.is_none_or(|s| s == r.storage_id))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Strategy;

    fn actor() -> Actor {
        Actor {
            user: "root".into(),
            address: "127.0.0.1".into(),
        }
    }

    fn setup(name: &str) -> (Store, Live, std::path::PathBuf) {
        let dir =
            std::env::temp_dir().join(format!("replgate-admin-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("backups/c")).unwrap();
        std::fs::write(dir.join("backups/c/a"), b"aaaa").unwrap();
        std::fs::write(dir.join("backups/c/b"), b"bb").unwrap();
        let store = Store::open(&dir.join("db.redb")).unwrap();
        store
            .write(|tx| {
                let id = tx.next_target_id()?;
                let mut t: TargetRecord = serde_json::from_str(
                    r#"{"id":0,"host":"t:8443","status":"complete","created":0,"updated":0,"ca_fingerprint":"","ca_pem":"","request_id":1,"poll":"","verification_code":"","dir":"d"}"#,
                )
                .unwrap();
                t.id = id;
                t.tunnel = Some("t:8444".into());
                tx.put_target(&t)?;
                Ok::<_, StoreError>(())
            })
            .unwrap();
        let live = Live::with_clock(
            ReplicationConfig::default(),
            ThrottleRecord::default(),
            || (0, 0),
        );
        (store, live, dir)
    }

    #[test]
    fn a_targets_compression_overrides_the_daemons_until_reset() {
        let (store, _live, dir) = setup("compression");
        let t = store.target(1).unwrap().unwrap();
        assert_eq!(compression_of(&t, Compression::Auto), Compression::Auto);
        let t = set_compression(&store, 1, Some(Compression::Zstd(2)), &actor(), 20).unwrap();
        assert_eq!(t.compression.as_deref(), Some("zstd:2"));
        let stored = store.target(1).unwrap().unwrap();
        assert_eq!(
            compression_of(&stored, Compression::Auto),
            Compression::Zstd(2)
        );
        assert_eq!(stored.updated, 20);
        let t = set_compression(&store, 1, Some(Compression::Off), &actor(), 21).unwrap();
        assert_eq!(compression_of(&t, Compression::Zstd(1)), Compression::Off);
        let t = set_compression(&store, 1, None, &actor(), 22).unwrap();
        assert_eq!(
            compression_of(&t, Compression::Zstd(1)),
            Compression::Zstd(1)
        );
        assert!(matches!(
            set_compression(&store, 9, None, &actor(), 23),
            Err(AdminError::UnknownTarget(9))
        ));
        let audit = store.audit(0, 10).unwrap();
        assert!(
            audit
                .iter()
                .any(|(_, a)| a.action == "target compression changed"
                    && a.detail == "compression zstd:2"),
            "{audit:?}"
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn hand_added_items_go_to_the_tail_and_duplicates_are_refused() {
        let (store, live, dir) = setup("add");
        let root = dir.join("backups");
        let a = add(&store, &live, Some(&root), 1, "c/a", &actor(), 10).unwrap();
        assert_eq!(
            (a.size, a.status, a.tail.is_some()),
            (4, ItemStatus::Waiting, true)
        );
        assert!(matches!(
            add(&store, &live, Some(&root), 1, "c/a", &actor(), 11),
            Err(AdminError::AlreadyQueued { item_id, .. }) if item_id == a.id
        ));
        assert!(matches!(
            add(&store, &live, Some(&root), 1, "c/../x", &actor(), 11),
            Err(AdminError::BadName(_))
        ));
        assert!(matches!(
            add(&store, &live, Some(&root), 1, "c/none", &actor(), 11),
            Err(AdminError::NoSuchBackup { .. })
        ));
        assert!(matches!(
            add(&store, &live, Some(&root), 9, "c/b", &actor(), 11),
            Err(AdminError::UnknownTarget(9))
        ));
        let b = add(&store, &live, Some(&root), 1, "c/b", &actor(), 12).unwrap();
        let q = ListQuery {
            target_id: None,
            start: 0,
            count: 10,
            include_done: true,
        };
        let l = list(&store, &live, q).unwrap();
        let order: Vec<(u64, u64)> = l
            .inactive
            .iter()
            .map(|v| (v.item.id, v.queue_position))
            .collect();
        assert_eq!(order, vec![(a.id, 1), (b.id, 2)]);
        assert_eq!(l.inactive[0].target, "t:8443");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn remove_and_reset_by_id_and_by_client() {
        let (store, live, dir) = setup("change");
        let root = dir.join("backups");
        let a = add(&store, &live, Some(&root), 1, "c/a", &actor(), 10).unwrap();
        let b = add(&store, &live, Some(&root), 1, "c/b", &actor(), 10).unwrap();
        let reset = change(
            &store,
            &live,
            &Change {
                ids: &[a.id],
                clients: &[],
                target_id: None,
                action: Action::Reset,
            },
            &actor(),
            20,
        )
        .unwrap();
        assert_eq!(reset[0].status, ItemStatus::Waiting);
        let q = ListQuery {
            target_id: Some(1),
            start: 0,
            count: 10,
            include_done: true,
        };
        let order: Vec<u64> = list(&store, &live, q)
            .unwrap()
            .inactive
            .iter()
            .map(|v| v.item.id)
            .collect();
        assert_eq!(order, vec![b.id, a.id], "reset re-adds at the end");
        let removed = change(
            &store,
            &live,
            &Change {
                ids: &[],
                clients: &["c".to_string()],
                target_id: Some(1),
                action: Action::Remove,
            },
            &actor(),
            30,
        )
        .unwrap();
        assert_eq!(removed.len(), 2);
        let l = list(&store, &live, q).unwrap();
        assert!(l.inactive.is_empty());
        assert_eq!(l.total_done, 2);
        assert!(l.done.iter().all(|v| v.item.status == ItemStatus::Removed));
        // Resetting a finished item queues its backup anew.
        let again = change(
            &store,
            &live,
            &Change {
                ids: &[a.id],
                clients: &[],
                target_id: None,
                action: Action::Reset,
            },
            &actor(),
            40,
        )
        .unwrap();
        assert_ne!(again[0].id, a.id);
        assert_eq!(again[0].status, ItemStatus::Waiting);
        assert!(matches!(
            change(
                &store,
                &live,
                &Change {
                    ids: &[999],
                    clients: &[],
                    target_id: None,
                    action: Action::Remove
                },
                &actor(),
                50
            ),
            Err(AdminError::UnknownItem(999))
        ));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn config_and_throttle_are_validated_and_reach_the_live_state() {
        let (store, live, dir) = setup("settings");
        let c = ReplicationConfig {
            max_concurrent: 0,
            strategy: Strategy::Recency,
            retries: 1,
        };
        assert!(matches!(
            set_config(&store, &live, c.clone(), &actor(), 1),
            Err(AdminError::Invalid(_))
        ));
        let c = ReplicationConfig {
            max_concurrent: 3,
            ..c
        };
        set_config(&store, &live, c.clone(), &actor(), 1).unwrap();
        assert_eq!(store.replication_config().unwrap(), c);
        assert_eq!(live.config(), c);
        let t = ThrottleRecord {
            windows: vec![],
            link_mbps: 0,
        };
        assert!(set_throttle(&store, &live, t, &actor(), 1).is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
