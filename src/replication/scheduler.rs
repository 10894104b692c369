//! The source's replication jobs: `spawn_replicator` watches the backup storage (scan plus
//! inotify), keeps every complete target's queue in step with it, and runs one job per
//! complete target that opens up to `max_concurrent` transfer sessions through the
//! target's tunnel with the pairing's certificate. Every job stops on the shared shutdown
//! flag (or when its target is no longer complete) and is joined. The one part of
//! `replication` that dials out; the queue's bookkeeping goes through [`StoreFeed`].

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::names::BackupName;
use super::queue::{self, Attempt, Found};
use super::receiver::chunk_for;
use super::scan::{self, Watcher};
use super::sender::{self, Claimed, Feed, SessionError};
use super::Shared;
use crate::identity::TargetDirs;
use crate::model::{self, Chain};
use crate::remote::tunnel::{open_transfer, OpenTransferError};
use crate::store::{
    ItemStatus, QueueItem, Store, StoreError, Strategy, TargetRecord, TargetStatus,
};

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What the jobs need, built once by the daemon.
pub struct Context {
    pub store: Store,
    pub shared: Arc<Shared>,
    /// The source's backup storage (`replicate_from`), if there is one.
    pub root: Option<PathBuf>,
    pub dirs: TargetDirs,
    /// An idle target gets a session at least this often (it learns of damaged copies).
    pub heartbeat: Duration,
}

/// How often the supervisor looks at targets when nothing wakes it.
const TICK: Duration = Duration::from_millis(250);
/// A session that could not connect waits this long, doubling up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(60);
/// Items claimed at once by a session (one durable reservation per batch).
const CLAIM_BATCH: usize = 32;
/// Lazy (non-durable) bookkeeping is made durable at least this often.
const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// Starts the replicator; it stops when `shutdown` is set, after joining every job.
pub fn spawn_replicator(
    ctx: Arc<Context>,
    shutdown: Arc<AtomicBool>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("replicator".into())
        .spawn(move || supervise(&ctx, &shutdown))
}

struct Job {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<()>,
}

/// Items left `active` by a process that stopped (a crash, a kill) wait again: their
/// transfer resumes from what the target holds.
fn recover_active(store: &Store) -> Result<u64, StoreError> {
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

fn supervise(ctx: &Arc<Context>, shutdown: &AtomicBool) {
    match recover_active(&ctx.store) {
        Ok(0) => {}
        Ok(n) => log::info!("replication: {n} transfers interrupted by the last stop will resume"),
        Err(e) => log::warn!("replication: recover interrupted transfers: {}", Chain(&e)),
    }
    let mut watcher = ctx.root.as_deref().map(Watcher::new);
    let mut jobs: HashMap<u64, Job> = HashMap::new();
    let mut scan_due = true;
    let mut refused_seen: HashSet<String> = HashSet::new();
    while !shutdown.load(Ordering::SeqCst) {
        let targets: Vec<TargetRecord> = match ctx.store.targets() {
            Ok(t) => t
                .into_iter()
                .filter(|t| t.status == TargetStatus::Complete && t.tunnel.is_some())
                .collect(),
            Err(e) => {
                log::warn!("replication: read targets: {}", Chain(&e));
                Vec::new()
            }
        };
        // Jobs of targets that are gone, revoked or failed stop; new ones start.
        let live: HashSet<u64> = targets.iter().map(|t| t.id).collect();
        for id in jobs.keys().copied().collect::<Vec<_>>() {
            if !live.contains(&id) {
                if let Some(j) = jobs.remove(&id) {
                    j.stop.store(true, Ordering::SeqCst);
                    let _ = j.handle.join();
                    log::info!(
                        "replication to target {id}: stopped (no longer a complete pairing)"
                    );
                }
            }
        }
        for t in &targets {
            if let std::collections::hash_map::Entry::Vacant(slot) = jobs.entry(t.id) {
                scan_due = true;
                match spawn_target_job(ctx.clone(), t.id) {
                    Ok(j) => {
                        slot.insert(j);
                    }
                    Err(e) => log::error!("replication to target {}: start its job: {e}", t.id),
                }
            }
        }
        if scan_due {
            scan_due = false;
            if let (Some(root), Some(w)) = (ctx.root.as_deref(), watcher.as_mut()) {
                match scan::scan(root) {
                    Ok(s) => {
                        for r in &s.refused {
                            if refused_seen.insert(r.clone()) {
                                log::warn!("replication: {r:?} in {} is not a name replication accepts; not sent", root.display());
                            }
                        }
                        w.follow(&s);
                        for t in &targets {
                            if let Err(e) = enqueue(ctx, t.id, &s.found) {
                                log::warn!("replication to target {}: queue: {}", t.id, Chain(&e));
                            }
                        }
                        ctx.shared.live.wake();
                    }
                    Err(e) => log::warn!("replication: scan {}: {e}", root.display()),
                }
            }
        }
        match watcher.as_mut() {
            Some(w) => scan_due = w.wait(TICK),
            None => std::thread::sleep(TICK),
        }
    }
    for (_, j) in jobs.drain() {
        j.stop.store(true, Ordering::SeqCst);
        let _ = j.handle.join();
    }
}

/// Applies a scan to one target's queue in one transaction.
fn enqueue(ctx: &Context, target_id: u64, found: &[Found]) -> Result<(), StoreError> {
    let strategy = ctx.shared.live.config().strategy;
    let latest: HashMap<_, _> = ctx.store.latest_items(target_id)?.into_iter().collect();
    let open = ctx.store.open_items(Some(target_id))?;
    let plan = queue::plan_scan(strategy, found, &latest, &open);
    if plan == queue::ScanPlan::default() {
        return Ok(());
    }
    let now = model::now();
    let added = plan.add.len();
    ctx.store.write(|tx| {
        for f in &plan.add {
            let item = queue::new_item(tx.next_item_id()?, target_id, f, None, now);
            tx.put_item(&item)?;
        }
        for (id, size, version) in &plan.update {
            if let Some(mut i) = tx.open_item(*id)? {
                if matches!(i.status, ItemStatus::Waiting | ItemStatus::Failed) {
                    i.size = *size;
                    i.version = *version;
                    i.status = ItemStatus::Waiting;
                    i.failures = 0;
                    i.retry_at = None;
                    i.message = Some("the backup changed before it was sent".into());
                    tx.put_item(&i)?;
                }
            }
        }
        for id in &plan.vanished {
            if let Some(mut i) = tx.open_item(*id)? {
                queue::remove(
                    &mut i,
                    "the backup no longer exists in the backup storage",
                    now,
                );
                tx.put_item(&i)?;
            }
        }
        Ok::<_, StoreError>(())
    })?;
    if added > 0 {
        log::info!("replication to target {target_id}: {added} backups queued");
    }
    Ok(())
}

/// One target's job: keeps up to `max_concurrent` sessions running while items wait, and
/// an idle session every heartbeat.
fn spawn_target_job(ctx: Arc<Context>, target_id: u64) -> std::io::Result<Job> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let handle = std::thread::Builder::new()
        .name(format!("replicate-{target_id}"))
        .spawn(move || run_target(&ctx, target_id, &flag))?;
    Ok(Job { stop, handle })
}

/// State one target's sessions share: the items claimed by any of them.
#[derive(Default)]
struct TargetState {
    claimed: Mutex<HashSet<u64>>,
    running: AtomicUsize,
    /// When the next session may try to connect (after a failure).
    retry_at: Mutex<Option<Instant>>,
    failures: AtomicUsize,
}

fn run_target(ctx: &Arc<Context>, target_id: u64, stop: &Arc<AtomicBool>) {
    let state = Arc::new(TargetState::default());
    let mut sessions: Vec<JoinHandle<()>> = Vec::new();
    let mut last_session = Instant::now() - ctx.heartbeat;
    log::info!("replication to target {target_id}: job started");
    while !stop.load(Ordering::SeqCst) {
        let seen = ctx.shared.live.generation();
        sessions.retain(|h| !h.is_finished());
        let backing_off = lock(&state.retry_at).is_some_and(|t| Instant::now() < t);
        if !backing_off {
            let config = ctx.shared.live.config();
            let running = state.running.load(Ordering::SeqCst);
            let waiting = match ctx.store.open_items(Some(target_id)) {
                Ok(items) => {
                    let claimed = lock(&state.claimed);
                    let unclaimed: Vec<QueueItem> = items
                        .into_iter()
                        .filter(|i| !claimed.contains(&i.id))
                        .collect();
                    queue::startable(&unclaimed, config.strategy, 0, u32::MAX, model::now()).len()
                }
                Err(e) => {
                    log::warn!(
                        "replication to target {target_id}: read queue: {}",
                        Chain(&e)
                    );
                    0
                }
            };
            let want = if waiting > 0 {
                (config.max_concurrent as usize).min(running + waiting)
            } else if running == 0 && last_session.elapsed() >= ctx.heartbeat {
                1
            } else {
                0
            };
            if running < want {
                last_session = Instant::now();
                state.running.fetch_add(1, Ordering::SeqCst);
                let (ctx2, state2, stop2) = (ctx.clone(), state.clone(), stop.clone());
                match std::thread::Builder::new()
                    .name(format!("send-{target_id}"))
                    .spawn(move || {
                        session(&ctx2, target_id, &state2, &stop2);
                        state2.running.fetch_sub(1, Ordering::SeqCst);
                        ctx2.shared.live.wake();
                    }) {
                    Ok(h) => sessions.push(h),
                    Err(e) => {
                        state.running.fetch_sub(1, Ordering::SeqCst);
                        log::error!("replication to target {target_id}: start a session: {e}");
                    }
                }
                // Start the next one (if wanted) after a short look again.
                continue;
            }
        }
        ctx.shared.live.wait(seen, Duration::from_secs(1));
    }
    for h in sessions {
        let _ = h.join();
    }
    log::info!("replication to target {target_id}: job stopped");
}

/// One transfer session: connect, run the sender over the store's queue, settle.
fn session(ctx: &Context, target_id: u64, state: &TargetState, stop: &AtomicBool) {
    let target = match ctx.store.target(target_id) {
        Ok(Some(t)) if t.status == TargetStatus::Complete => t,
        _ => return,
    };
    let Some(root) = ctx.root.clone() else {
        return;
    };
    let Some(tunnel) = target.tunnel.clone() else {
        return;
    };
    let label = format!("target {target_id} ({tunnel})");
    // The generation installed now; a renewal during the session does not touch it (the
    // old serial stays valid through its grace, and is retired without cutting this).
    let identity = crate::identity::installed(&ctx.store, &ctx.dirs, target_id);
    let (cert_pem, key_pem) = match identity {
        Ok(Some(i)) => (i.cert_pem, i.key_pem),
        Ok(None) => return,
        Err(e) => {
            log::error!(
                "replication to {label}: the pairing's certificate: {}",
                Chain(&e)
            );
            back_off(state);
            return;
        }
    };
    let stream = match open_transfer(&tunnel, &target.ca_pem, &cert_pem, &key_pem) {
        Ok(s) => s,
        Err(e) => {
            let quiet = matches!(e, OpenTransferError::Refused { status: 503, .. });
            if quiet {
                log::info!("replication to {label}: busy: {e}");
            } else {
                log::warn!("replication to {label}: cannot open a session: {e}");
            }
            back_off(state);
            return;
        }
    };
    let replies = match sender::spawn_reader(stream.replies, format!("recv-{target_id}")) {
        Ok(r) => r,
        Err(e) => {
            log::error!("replication to {label}: start the reader: {e}");
            return;
        }
    };
    let mut feed = match StoreFeed::new(ctx, target_id, state, root.clone()) {
        Ok(f) => f,
        Err(e) => {
            log::error!("replication to {label}: start the session's bookkeeping: {e}");
            return;
        }
    };
    let sctx = sender::Context {
        root: &root,
        live: &ctx.shared.live,
        shutdown: stop,
        target: label.clone(),
    };
    let result = sender::run(&sctx, &mut feed, stream.body, &replies);
    drop(feed);
    match result {
        Ok(s) => {
            state.failures.store(0, Ordering::SeqCst);
            if s.done + s.skipped + s.failed > 0 {
                log::info!(
                    "replication to {label}: session ended: {} sent, {} already held, {} failed, {} bytes",
                    s.done,
                    s.skipped,
                    s.failed,
                    s.bytes_sent
                );
            } else {
                log::debug!("replication to {label}: idle session ended");
            }
        }
        Err(SessionError::Shutdown) => {}
        Err(e) => {
            log::warn!("replication to {label}: session broken: {e}");
            back_off(state);
        }
    }
}

fn back_off(state: &TargetState) {
    let n = state.failures.fetch_add(1, Ordering::SeqCst).min(6) as u32;
    let wait = (FIRST_RETRY * 2u32.pow(n)).min(MAX_RETRY);
    *lock(&state.retry_at) = Some(Instant::now() + wait);
}

/// Persists `bytes_sent` reservations on its own thread, so the sending thread does not
/// wait for a durable commit every chunk: it asks for the next reservation half a chunk
/// early and waits only if the bytes would outrun the last one persisted.
struct Reserver {
    tx: Option<Sender<(u64, u64)>>,
    /// Per item: the reservation persisted, and requests not yet written.
    state: Arc<(Mutex<ReserverState>, Condvar)>,
    handle: Option<JoinHandle<()>>,
}

#[derive(Default)]
struct ReserverState {
    persisted: HashMap<u64, u64>,
    pending: usize,
}

impl Reserver {
    fn spawn(store: Store) -> std::io::Result<Reserver> {
        let (tx, rx) = std::sync::mpsc::channel::<(u64, u64)>();
        let state: Arc<(Mutex<ReserverState>, Condvar)> = Arc::default();
        let shared = state.clone();
        let handle = std::thread::Builder::new()
            .name("reserve".into())
            .stack_size(128 * 1024)
            .spawn(move || {
                for (id, ceiling) in rx {
                    let r = store.write(|tx| {
                        if let Some(mut i) = tx.open_item(id)? {
                            i.bytes_sent = i.bytes_sent.max(ceiling);
                            tx.put_item(&i)?;
                        }
                        Ok::<_, StoreError>(())
                    });
                    if let Err(e) = &r {
                        log::warn!("replication: reserve bytes: {}", Chain(e));
                    }
                    let (m, c) = &*shared;
                    let mut st = lock(m);
                    st.pending -= 1;
                    // A failed write still lets the transfer go on: the count then only
                    // understates by what this reservation would have covered.
                    let p = st.persisted.entry(id).or_default();
                    *p = (*p).max(ceiling);
                    c.notify_all();
                }
            })?;
        Ok(Reserver {
            tx: Some(tx),
            state,
            handle: Some(handle),
        })
    }

    fn start(&self, id: u64, persisted: u64) {
        lock(&self.state.0).persisted.insert(id, persisted);
    }

    fn request(&self, id: u64, ceiling: u64) {
        if let Some(tx) = &self.tx {
            lock(&self.state.0).pending += 1;
            if tx.send((id, ceiling)).is_err() {
                lock(&self.state.0).pending -= 1;
            }
        }
    }

    /// Waits until `id`'s persisted reservation covers `total`.
    fn cover(&self, id: u64, total: u64) {
        let (m, c) = &*self.state;
        let mut st = lock(m);
        while st.persisted.get(&id).copied().unwrap_or(u64::MAX) < total && st.pending > 0 {
            st = c.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Waits until every request is written, then forgets `id` (its outcome is next).
    fn settle(&self, id: u64) {
        let (m, c) = &*self.state;
        let mut st = lock(m);
        while st.pending > 0 {
            st = c.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        st.persisted.remove(&id);
    }
}

impl Drop for Reserver {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
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
}

/// The queue of one target, as one session sees it: claims in batches with one durable
/// reservation of `bytes_sent` each, keeps progress as lazy (non-durable) commits that
/// the next durable one carries, and applies outcomes with the queue's rules.
pub struct StoreFeed<'a> {
    ctx: &'a Context,
    target_id: u64,
    state: &'a TargetState,
    root: PathBuf,
    batch: VecDeque<QueueItem>,
    accounts: HashMap<u64, Account>,
    last_flush: Instant,
    reserver: Reserver,
}

impl<'a> StoreFeed<'a> {
    fn new(
        ctx: &'a Context,
        target_id: u64,
        state: &'a TargetState,
        root: PathBuf,
    ) -> std::io::Result<Self> {
        Ok(StoreFeed {
            ctx,
            target_id,
            state,
            root,
            batch: VecDeque::new(),
            accounts: HashMap::new(),
            last_flush: Instant::now(),
            reserver: Reserver::spawn(ctx.store.clone())?,
        })
    }

    fn unclaim(&self, id: u64) {
        lock(&self.state.claimed).remove(&id);
    }

    /// Claims the next items in queue order and reserves their first bytes durably.
    fn refill(&mut self) {
        let strategy = self.ctx.shared.live.config().strategy;
        let now = model::now();
        let items = match self.ctx.store.open_items(Some(self.target_id)) {
            Ok(i) => i,
            Err(e) => {
                log::warn!("replication: read queue: {}", Chain(&e));
                return;
            }
        };
        let mut claimed = lock(&self.state.claimed);
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
        let reserved = self.ctx.store.write(|tx| {
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

    /// A lazy commit: durable with the next durable one, or within [`FLUSH_EVERY`].
    fn lazily(&mut self, f: impl FnOnce(&crate::store::Txn) -> Result<(), StoreError>) {
        let durable = self.last_flush.elapsed() >= FLUSH_EVERY;
        let r = if durable {
            self.last_flush = Instant::now();
            self.ctx.store.write(f)
        } else {
            self.ctx.store.write_lazy(f)
        };
        if let Err(e) = r {
            log::warn!("replication: record progress: {}", Chain(&e));
        }
    }
}

fn parse_digest(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
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
                    Attempt::Refused("not a valid backup name".into()),
                    0,
                );
                continue;
            };
            return Some(Claimed {
                item_id: item.id,
                backup,
                version: item.version,
                known_sha256: item.sha256.as_deref().and_then(parse_digest),
            });
        }
    }

    fn started(&mut self, item_id: u64, offset: u64, size: u64) {
        let now = model::now();
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
        self.unclaim(item_id);
        let before = self.accounts.remove(&item_id).map(|a| a.before);
        let config = self.ctx.shared.live.config();
        let target_id = self.target_id;
        let now = model::now();
        let done = matches!(attempt, Attempt::Done { .. });
        let durable = done || !matches!(attempt, Attempt::Interrupted(_));
        let mut superseded = Vec::new();
        let f = |tx: &crate::store::Txn| -> Result<(), StoreError> {
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
            if let Err(e) = self.ctx.store.write(f) {
                log::warn!("replication: record outcome: {}", Chain(&e));
            }
        } else {
            self.lazily(f);
        }
        self.ctx.shared.live.clear_cancel(item_id);
        for id in superseded {
            self.ctx.shared.live.cancel(id);
        }
    }

    fn release(&mut self, item_id: u64) {
        self.reserver.settle(item_id);
        self.unclaim(item_id);
        let Some(a) = self.accounts.remove(&item_id) else {
            return;
        };
        self.lazily(|tx| {
            if let Some(mut i) = tx.open_item(item_id)? {
                i.bytes_sent = a.before;
                tx.put_item(&i)?;
            }
            Ok(())
        });
    }

    fn still_wanted(&mut self, item_id: u64) -> bool {
        let Some(a) = self.accounts.get(&item_id) else {
            return false;
        };
        match self.ctx.store.open_item(item_id) {
            Ok(Some(i)) => {
                matches!(i.status, ItemStatus::Waiting | ItemStatus::Active) && i.tail == a.tail
            }
            Ok(None) => false,
            // Keep going on a read error; the outcome is recorded against the row anyway.
            Err(_) => true,
        }
    }

    fn wanted(&mut self, names: Vec<BackupName>) {
        let now = model::now();
        let target_id = self.target_id;
        let found: Vec<Found> = names
            .iter()
            .filter_map(|n| scan::stat(&self.root, n).ok())
            .collect();
        let r = self.ctx.store.write(|tx| {
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
        if let Err(e) = self.ctx.store.write(|_| Ok::<_, StoreError>(())) {
            log::warn!("replication: flush progress: {}", Chain(&e));
        }
    }
}
