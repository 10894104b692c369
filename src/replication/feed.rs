//! The queue of one target as a transfer session sees it ([`StoreFeed`], the sender's
//! [`Feed`] over the store), and the rule that makes `bytes_sent` safe across a crash
//! (ARCHITECTURE.md, invariant 12):
//!
//! - `bytes_sent` is persisted *ahead* of the bytes it covers. A session claims items in
//!   batches of [`CLAIM_BATCH`], reserving each one's first chunk (`receiver::chunk_for`
//!   of its size, at most the size) in the same durable transaction as the claim.
//! - Before the next chunk goes out the reservation is renewed, half a chunk early, on the
//!   session's [`ReserveWriter`] (its own thread, so sending never waits for a commit
//!   unless the bytes would outrun the last reservation persisted: [`Reserver::cover`]).
//! - A reservation never goes past what the target's window allows now (what it confirmed
//!   durable plus `receiver::window_for`), nor past the file.
//!
//! So a crash can overstate `bytes_sent` by less than a chunk and by no more than the
//! window, and never understate it. Progress marks (`active`, `done`) are lazy commits
//! (redb `Durability::None`) that the next durable one carries, at most [`FLUSH_EVERY`]
//! later; failures are durable at once. Items a crash left `active` wait again at start
//! ([`recover_active`]) and resume from what the target holds.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::backups;
use super::live::{attempt_reason, Live, Peer};
use super::names::BackupName;
use super::queue::{self, Attempt, Found};
use super::receiver::chunk_for;
use super::sender::{Claimed, Feed};
use crate::model::{Chain, UnixTime};
use crate::store::{ItemStatus, QueueItem, Store, StoreError, Strategy, Txn};
use crate::sync::{lock, wait};
use crate::wire::hex;

/// Items claimed at once by a session (one durable reservation per batch).
pub const CLAIM_BATCH: usize = 32;
/// Lazy (non-durable) bookkeeping is made durable at least this often.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// Items left `active` by a process that stopped (a crash, a kill) wait again: their
/// transfer resumes from what the target holds.
pub fn recover_active(store: &Store) -> Result<u64, StoreError> {
    store.write(|tx| {
        let mut n = 0;
        for mut i in tx.open_items()? {
            if i.status == ItemStatus::Active {
                i.status = ItemStatus::Waiting;
                i.message = Some("interrupted when replgate stopped; resuming".into());
                tx.put_item(&i)?;
                n += 1;
            }
        }
        Ok(n)
    })
}

/// Of `items` (one target's open items, as just read), those the target refused for now
/// whose wait is over wait again (`queue::retry_due`), in the store and in `items`.
/// Returns how many.
pub fn requeue_refused(
    store: &Store,
    items: &mut [QueueItem],
    now: UnixTime,
) -> Result<u64, StoreError> {
    if !items.iter().any(|i| queue::retry_due(i, now)) {
        return Ok(0);
    }
    let due: Vec<u64> = store.write(|tx| {
        let mut due = Vec::new();
        for i in items.iter().filter(|i| queue::retry_due(i, now)) {
            if let Some(mut stored) = tx.open_item(i.id)? {
                if queue::retry_due(&stored, now) {
                    queue::retry(&mut stored);
                    tx.put_item(&stored)?;
                    due.push(i.id);
                }
            }
        }
        Ok::<_, StoreError>(due)
    })?;
    for i in items.iter_mut().filter(|i| due.contains(&i.id)) {
        queue::retry(i);
    }
    Ok(due.len() as u64)
}

/// The items claimed by any session of one target, so two sessions never send the same
/// item.
#[derive(Debug, Default)]
pub struct Claims(Mutex<HashSet<u64>>);

impl Claims {
    /// The items of `items` that no session claimed.
    pub fn unclaimed(&self, items: Vec<QueueItem>) -> Vec<QueueItem> {
        let claimed = lock(&self.0);
        items
            .into_iter()
            .filter(|i| !claimed.contains(&i.id))
            .collect()
    }

    fn release(&self, id: u64) {
        lock(&self.0).remove(&id);
    }
}

/// Persists `bytes_sent` reservations through its [`ReserveWriter`], which runs on a
/// thread of its own, so the sending thread does not wait for a durable commit every
/// chunk: it asks for the next reservation half a chunk early and waits only if the bytes
/// would outrun the last one persisted.
pub struct Reserver {
    tx: Sender<(u64, u64)>,
    /// Per item: the reservation persisted, and requests not yet written.
    state: Arc<(Mutex<ReserverState>, Condvar)>,
}

/// The writing half of a [`Reserver`]: [`ReserveWriter::run`] persists each requested
/// reservation in turn and returns once the `Reserver` is gone.
pub struct ReserveWriter {
    rx: Receiver<(u64, u64)>,
    state: Arc<(Mutex<ReserverState>, Condvar)>,
    store: Store,
}

#[derive(Default)]
struct ReserverState {
    persisted: HashMap<u64, u64>,
    pending: usize,
}

impl ReserveWriter {
    /// Writes reservations until the [`Reserver`] is dropped. Run it on its own thread
    /// before the session sends: [`Reserver::cover`] waits for it.
    pub fn run(self) {
        for (id, ceiling) in self.rx {
            let r = self.store.write(|tx| {
                if let Some(mut i) = tx.open_item(id)? {
                    i.bytes_sent = i.bytes_sent.max(ceiling);
                    tx.put_item(&i)?;
                }
                Ok::<_, StoreError>(())
            });
            if let Err(e) = &r {
                log::warn!("replication: reserve bytes: {}", Chain(e));
            }
            let (m, c) = &*self.state;
            let mut st = lock(m);
            st.pending -= 1;
            // A failed write still lets the transfer go on: the count then only
            // understates by what this reservation would have covered.
            let p = st.persisted.entry(id).or_default();
            *p = (*p).max(ceiling);
            c.notify_all();
        }
    }
}

impl Reserver {
    /// A reserver over `store` and the writer that persists what it asks for.
    pub fn new(store: Store) -> (Reserver, ReserveWriter) {
        let (tx, rx) = mpsc::channel::<(u64, u64)>();
        let state: Arc<(Mutex<ReserverState>, Condvar)> = Arc::default();
        let writer = ReserveWriter {
            rx,
            state: state.clone(),
            store,
        };
        (Reserver { tx, state }, writer)
    }

    fn start(&self, id: u64, persisted: u64) {
        lock(&self.state.0).persisted.insert(id, persisted);
    }

    fn request(&self, id: u64, ceiling: u64) {
        lock(&self.state.0).pending += 1;
        if self.tx.send((id, ceiling)).is_err() {
            lock(&self.state.0).pending -= 1;
        }
    }

    /// Waits until `id`'s persisted reservation covers `total`.
    fn cover(&self, id: u64, total: u64) {
        let (m, c) = &*self.state;
        let mut st = lock(m);
        while st.persisted.get(&id).copied().unwrap_or(u64::MAX) < total && st.pending > 0 {
            st = wait(c, st);
        }
    }

    /// Waits until every request is written, then forgets `id` (its outcome is next).
    fn settle(&self, id: u64) {
        let (m, c) = &*self.state;
        let mut st = lock(m);
        while st.pending > 0 {
            st = wait(c, st);
        }
        st.persisted.remove(&id);
    }
}

/// What a session's feed knows of an item it claimed.
struct Account {
    /// The item's place in the queue when claimed: a reset gives it a new one, and the
    /// old attempt is then no longer wanted.
    tail: Option<u64>,
    /// `bytes_sent` before this attempt.
    before: u64,
    /// The `bytes_sent` reservation asked for last (persisted, or being persisted).
    ceiling: u64,
    size: u64,
    /// Bytes of this attempt already counted in the target's metrics.
    counted: u64,
}

/// The queue of one target, as one session sees it: claims in batches with one durable
/// reservation of `bytes_sent` each, keeps progress as lazy (non-durable) commits that
/// the next durable one carries, and applies outcomes with the queue's rules.
pub struct StoreFeed<'a> {
    store: &'a Store,
    live: &'a Live,
    claims: &'a Claims,
    target_id: u64,
    /// The source's backup storage, where wanted backups are looked up.
    root: PathBuf,
    batch: VecDeque<QueueItem>,
    accounts: HashMap<u64, Account>,
    last_flush: Instant,
    reserver: Reserver,
    now: fn() -> UnixTime,
}

impl<'a> StoreFeed<'a> {
    /// The queue of `target_id` for one session; `claims` is shared with the target's
    /// other sessions, `reserver` is this session's own (its writer already running).
    pub fn new(
        store: &'a Store,
        live: &'a Live,
        claims: &'a Claims,
        target_id: u64,
        root: PathBuf,
        reserver: Reserver,
        now: fn() -> UnixTime,
    ) -> Self {
        StoreFeed {
            store,
            live,
            claims,
            target_id,
            root,
            batch: VecDeque::new(),
            accounts: HashMap::new(),
            last_flush: Instant::now(),
            reserver,
            now,
        }
    }

    fn unclaim(&self, id: u64) {
        self.claims.release(id);
    }

    /// Claims the next items in queue order and reserves their first bytes durably.
    fn refill(&mut self) {
        let strategy = self.live.config().strategy;
        let now = (self.now)();
        let items = match self.store.open_items(Some(self.target_id)) {
            Ok(i) => i,
            Err(e) => {
                log::warn!("replication: read queue: {}", Chain(&e));
                return;
            }
        };
        let mut claimed = lock(&self.claims.0);
        let picked: Vec<u64> = queue::waiting_in_order(&items, strategy)
            .into_iter()
            .filter(|i| i.retry_at.is_none_or(|t| t <= now) && !claimed.contains(&i.id))
            .take(CLAIM_BATCH)
            .map(|i| i.id)
            .collect();
        if picked.is_empty() {
            return;
        }
        for id in &picked {
            claimed.insert(*id);
        }
        drop(claimed);
        let reserved = self.store.write(|tx| {
            let mut out = Vec::new();
            for id in &picked {
                let Some(mut item) = tx.open_item(*id)? else {
                    continue;
                };
                if item.status != ItemStatus::Waiting {
                    continue;
                }
                let before = item.bytes_sent;
                item.bytes_sent = before + item.size.min(chunk_for(item.size));
                tx.put_item(&item)?;
                out.push((item, before));
            }
            Ok::<_, StoreError>(out)
        });
        match reserved {
            Ok(list) => {
                let kept: HashSet<u64> = list.iter().map(|(i, _)| i.id).collect();
                for id in &picked {
                    if !kept.contains(id) {
                        self.unclaim(*id);
                    }
                }
                for (item, before) in list {
                    self.reserver.start(item.id, item.bytes_sent);
                    self.accounts.insert(
                        item.id,
                        Account {
                            tail: item.tail,
                            before,
                            ceiling: item.bytes_sent,
                            size: item.size,
                            counted: 0,
                        },
                    );
                    self.batch.push_back(item);
                }
                self.last_flush = Instant::now();
            }
            Err(e) => {
                log::warn!("replication: claim items: {}", Chain(&e));
                for id in &picked {
                    self.unclaim(*id);
                }
            }
        }
    }

    /// Counts an attempt's end in the target's metrics: `fresh` bytes not counted yet, the
    /// file (sent, or held already) or the reason it did not end done.
    fn count(&self, attempt: &Attempt, fresh: u64) {
        let peer = Peer::Target(self.target_id);
        self.live.count_bytes(peer, fresh);
        match (attempt, attempt_reason(attempt)) {
            (Attempt::Done { skipped: true, .. }, _) => self.live.count_skipped(peer),
            (Attempt::Done { .. }, _) => self.live.count_file(peer),
            (_, Some(reason)) => self.live.count_failure(peer, reason),
            (_, None) => {}
        }
    }

    /// A lazy commit: durable with the next durable one, or within [`FLUSH_EVERY`].
    fn lazily(&mut self, f: impl FnOnce(&Txn) -> Result<(), StoreError>) {
        let durable = self.last_flush.elapsed() >= FLUSH_EVERY;
        let r = if durable {
            self.last_flush = Instant::now();
            self.store.write(f)
        } else {
            self.store.write_lazy(f)
        };
        if let Err(e) = r {
            log::warn!("replication: record progress: {}", Chain(&e));
        }
    }
}

impl Feed for StoreFeed<'_> {
    fn next(&mut self) -> Option<Claimed> {
        loop {
            if self.batch.is_empty() {
                self.refill();
            }
            let item = self.batch.pop_front()?;
            let Ok(backup) = BackupName::parse(&item.backup) else {
                self.finished(
                    item.id,
                    Attempt::Rejected("not a valid backup name".into()),
                    0,
                );
                continue;
            };
            return Some(Claimed {
                item_id: item.id,
                backup,
                version: item.version,
                known_sha256: item.sha256.as_deref().and_then(hex::decode_array),
            });
        }
    }

    fn started(&mut self, item_id: u64, offset: u64, size: u64) {
        let now = (self.now)();
        self.lazily(|tx| {
            if let Some(mut i) = tx.open_item(item_id)? {
                if i.status == ItemStatus::Waiting {
                    i.status = ItemStatus::Active;
                    i.started = Some(now);
                    i.attempts += 1;
                    i.bytes_done = offset;
                    i.size = size;
                    i.message = None;
                    tx.put_item(&i)?;
                }
            }
            Ok(())
        });
        if let Some(a) = self.accounts.get_mut(&item_id) {
            a.size = size;
        }
    }

    fn sent(&mut self, item_id: u64, sent: u64, allowed: u64) {
        let Some(a) = self.accounts.get_mut(&item_id) else {
            return;
        };
        let fresh = sent.saturating_sub(a.counted);
        a.counted = a.counted.max(sent);
        self.live.count_bytes(Peer::Target(self.target_id), fresh);
        let total = a.before + sent;
        let chunk = chunk_for(a.size);
        // Ask for the next chunk's reservation half a chunk early; it is durable before
        // those bytes go out, so a crash can only overstate `bytes_sent`. An attempt never
        // sends more than the file, so a reservation that covers it is the last one (a
        // small file's first one already does); nor more than the target's window allows
        // now, so after a crash of the source `bytes_sent` overstates by at most the
        // window (what the target did not confirm), SPEC 11's resume bound.
        let most = a.before + a.size.min(allowed.max(sent));
        if total + chunk / 2 > a.ceiling && a.ceiling < most {
            a.ceiling = (a.ceiling.max(total) + chunk).min(most);
            self.reserver.request(item_id, a.ceiling);
        }
        self.reserver.cover(item_id, total);
    }

    fn finished(&mut self, item_id: u64, attempt: Attempt, sent: u64) {
        self.reserver.settle(item_id);
        let account = self.accounts.remove(&item_id);
        let before = account.as_ref().map(|a| a.before);
        let target_id = self.target_id;
        self.count(
            &attempt,
            sent.saturating_sub(account.map_or(0, |a| a.counted)),
        );
        let config = self.live.config();
        let now = (self.now)();
        let done = matches!(attempt, Attempt::Done { .. });
        let durable = done || !matches!(attempt, Attempt::Interrupted(_));
        let mut superseded = Vec::new();
        let f = |tx: &Txn| -> Result<(), StoreError> {
            let Some(mut item) = tx.open_item(item_id)? else {
                return Ok(());
            };
            if let Some(b) = before {
                item.bytes_sent = b + sent;
            }
            // An admin may have removed or reset it meanwhile: their decision stands.
            if matches!(item.status, ItemStatus::Active | ItemStatus::Waiting) {
                queue::finish_attempt(&mut item, attempt, config.retries, now);
            }
            tx.put_item(&item)?;
            // Only recency drops anything; the other strategies skip reading the queue.
            if item.status == ItemStatus::Done && config.strategy == Strategy::Recency {
                let open: Vec<QueueItem> = tx
                    .open_items()?
                    .into_iter()
                    .filter(|i| i.target_id == target_id)
                    .collect();
                for id in queue::superseded(config.strategy, &item, &open) {
                    superseded.push(id);
                    if let Some(mut old) = tx.open_item(id)? {
                        queue::remove(
                            &mut old,
                            &format!(
                                "superseded by {}, the client's newest backup, which replicated",
                                item.backup
                            ),
                            now,
                        );
                        tx.put_item(&old)?;
                    }
                }
            }
            Ok(())
        };
        if durable && !done {
            // A failure is rare and an admin looks at it: record it durably now.
            if let Err(e) = self.store.write(f) {
                log::warn!("replication: record outcome: {}", Chain(&e));
            }
        } else {
            self.lazily(f);
        }
        // Only now may another session claim it: before the outcome is written it would
        // see the item still waiting, with this attempt's reservation as its own start.
        self.unclaim(item_id);
        self.live.clear_cancel(item_id);
        for id in superseded {
            self.live.cancel(id);
        }
    }

    fn release(&mut self, item_id: u64) {
        // Claimed, never started: nothing was sent, nothing to count.
        self.reserver.settle(item_id);
        if let Some(a) = self.accounts.remove(&item_id) {
            self.lazily(|tx| {
                if let Some(mut i) = tx.open_item(item_id)? {
                    i.bytes_sent = a.before;
                    tx.put_item(&i)?;
                }
                Ok(())
            });
        }
        // After the reservation is undone, as in `finished`.
        self.unclaim(item_id);
    }

    fn still_wanted(&mut self, item_id: u64) -> bool {
        let Some(a) = self.accounts.get(&item_id) else {
            return false;
        };
        match self.store.open_item(item_id) {
            Ok(Some(i)) => {
                matches!(i.status, ItemStatus::Waiting | ItemStatus::Active) && i.tail == a.tail
            }
            Ok(None) => false,
            // Keep going on a read error; the outcome is recorded against the row anyway.
            Err(_) => true,
        }
    }

    fn wanted(&mut self, names: Vec<BackupName>) {
        let now = (self.now)();
        let target_id = self.target_id;
        let found: Vec<Found> = names
            .iter()
            .filter_map(|n| backups::stat(&self.root, n).ok())
            .collect();
        let r = self.store.write(|tx| {
            let open = tx.open_items()?;
            for f in &found {
                if open
                    .iter()
                    .any(|i| i.target_id == target_id && i.backup == f.name.as_str())
                {
                    continue;
                }
                let mut item = queue::new_item(tx.next_item_id()?, target_id, f, None, now);
                item.message = Some("the target's copy was found damaged; sending it again".into());
                tx.put_item(&item)?;
            }
            Ok::<_, StoreError>(())
        });
        if let Err(e) = r {
            log::warn!("replication: queue wanted backups: {}", Chain(&e));
        }
    }
}

impl Drop for StoreFeed<'_> {
    fn drop(&mut self) {
        // Whatever is still claimed and not started goes back as it was.
        for item in std::mem::take(&mut self.batch) {
            self.release(item.id);
        }
        // One durable commit carries the lazy ones before the session goes.
        if let Err(e) = self.store.write(|_| Ok::<_, StoreError>(())) {
            log::warn!("replication: flush progress: {}", Chain(&e));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::transfer::Code;

    #[test]
    fn items_refused_for_space_wait_again_once_their_time_comes_and_bad_names_do_not() {
        let dir =
            std::env::temp_dir().join(format!("replgate-feed-requeue-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        crate::fsx::ensure_private_dir(&dir).unwrap();
        let store = Store::open(&dir.join("db.redb")).unwrap();
        let found = |n: &str| Found {
            name: BackupName::parse(n).unwrap(),
            size: 100,
            version: 1,
        };
        let mut space = queue::new_item(1, 7, &found("c/space"), None, 0);
        queue::finish_attempt(
            &mut space,
            queue::attempt_for(Code::NoSpace, "full"),
            3,
            100,
        );
        let mut name = queue::new_item(2, 7, &found("c/name"), None, 0);
        queue::finish_attempt(&mut name, queue::attempt_for(Code::BadName, "no"), 3, 100);
        store
            .write(|tx| {
                tx.put_item(&space)?;
                tx.put_item(&name)
            })
            .unwrap();
        let mut items = store.open_items(Some(7)).unwrap();
        // Before its wait (2 s) is over nothing changes.
        assert_eq!(requeue_refused(&store, &mut items, 101).unwrap(), 0);
        assert_eq!(requeue_refused(&store, &mut items, 102).unwrap(), 1);
        let stored = store.open_items(Some(7)).unwrap();
        for list in [&items[..], &stored[..]] {
            let status = |id| list.iter().find(|i| i.id == id).unwrap().status;
            assert_eq!(status(1), ItemStatus::Waiting);
            assert_eq!(status(2), ItemStatus::Failed);
        }
        assert_eq!(requeue_refused(&store, &mut items, i64::MAX).unwrap(), 0);
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
