//! The source's replication jobs: `spawn_replicator` watches the backup storage (a scan
//! plus `jobs::watch`), keeps every complete target's queue in step with it
//! (`replication::backups::apply_scan`), and runs one job per complete target that opens
//! up to `max_concurrent` transfer sessions through the target's tunnel
//! (`remote::tunnel`) with the pairing's certificate. Every job stops on the shared
//! shutdown flag (or when its target is no longer complete) and is joined. A session's
//! queue bookkeeping is `replication::feed`; the session itself `replication::sender`.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::watch::Watcher;
use crate::identity::TargetDirs;
use crate::listener::sys::apply_congestion;
use crate::model::{self, Chain};
use crate::remote::tunnel::{open_transfer, tcp_figures, OpenTransferError};
use crate::replication::compress::{Compression, Readings};
use crate::replication::feed::{recover_active, requeue_refused, Claims, Reserver, StoreFeed};
use crate::replication::live::Peer;
use crate::replication::sender::{self, SessionError};
use crate::replication::{admin, backups, queue, Shared};
use crate::store::{Store, TargetRecord, TargetStatus};
use crate::sync::lock;
use crate::wire::transfer::{Code, Features};

/// What the jobs need, built once by the daemon.
pub(crate) struct Context {
    pub store: Store,
    pub shared: Arc<Shared>,
    /// The source's backup storage (`replicate_from`), if there is one.
    pub root: Option<PathBuf>,
    pub dirs: TargetDirs,
    /// An idle target gets a session at least this often (it learns of damaged copies).
    pub heartbeat: Duration,
    /// The daemon's `compression` of the content sent (a target's own setting wins).
    pub compression: Compression,
    /// `tunnel_congestion`, set on each session's connection.
    pub congestion: String,
    /// Offer targets the `chunks` feature (`dedup = "auto"`).
    pub dedup: bool,
}

/// How often the supervisor looks at targets when nothing wakes it.
const TICK: Duration = Duration::from_millis(250);
/// A session that could not connect waits this long, doubling up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_secs(1);
/// A session refused for want of a slot (429 without `Retry-After`) or ended to give
/// another source its turn asks again after this long.
const BUSY_RETRY: Duration = Duration::from_secs(2);
const MAX_RETRY: Duration = Duration::from_secs(60);
/// A session that broke or could not open this soon after one worked retries within
/// [`RECONNECT_RETRY`] to twice that, not by doubling.
const RECONNECT_WINDOW: Duration = Duration::from_secs(120);
const RECONNECT_RETRY: Duration = Duration::from_secs(1);
/// A broken session that ran this long had a working link (a cut, not a refusal).
const WORKED_FOR: Duration = Duration::from_secs(5);

/// Starts the replicator; it stops when `shutdown` is set, after joining every job.
pub(crate) fn spawn_replicator(
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
                match backups::scan(root) {
                    Ok(s) => {
                        for r in &s.refused {
                            if refused_seen.insert(r.clone()) {
                                log::warn!("replication: {r:?} in {} is not a name replication accepts; not sent", root.display());
                            }
                        }
                        w.follow(&s);
                        let strategy = ctx.shared.live.config().strategy;
                        for t in &targets {
                            match backups::apply_scan(
                                &ctx.store,
                                strategy,
                                t.id,
                                &s.found,
                                model::now(),
                            ) {
                                Ok(0) => {}
                                Ok(added) => log::info!(
                                    "replication to target {}: {added} backups queued",
                                    t.id
                                ),
                                Err(e) => log::warn!(
                                    "replication to target {}: queue: {}",
                                    t.id,
                                    Chain(&e)
                                ),
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
    claimed: Claims,
    running: AtomicUsize,
    /// When the next session may try to connect (after a failure).
    retry_at: Mutex<Option<Instant>>,
    failures: AtomicUsize,
    /// When a session last worked (ended with `Bye`, or ran for [`WORKED_FOR`] before it
    /// broke): a link that worked a moment ago is tried again soon. A session the target
    /// ends at once (its storage offline) does not count, so it is not asked again every
    /// second.
    worked_at: Mutex<Option<Instant>>,
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
                Ok(mut items) => {
                    let now = model::now();
                    // Items the target refused for now go on by themselves after their wait.
                    match requeue_refused(&ctx.store, &mut items, now) {
                        Ok(0) => {}
                        Ok(n) => log::info!(
                            "replication to target {target_id}: {n} items the target refused for now are tried again"
                        ),
                        Err(e) => log::warn!(
                            "replication to target {target_id}: retry refused items: {}",
                            Chain(&e)
                        ),
                    }
                    let unclaimed = state.claimed.unclaimed(items);
                    queue::startable(&unclaimed, config.strategy, 0, u32::MAX, now).len()
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
    let offered = Features {
        chunks: ctx.dedup,
        ..Features::ALL
    };
    let stream = match open_transfer(&tunnel, &target.ca_pem, &cert_pem, &key_pem, offered) {
        Ok(s) => s,
        Err(e) => return not_opened(state, &label, e),
    };
    let replies = match spawn_reader(stream.replies, format!("recv-{target_id}")) {
        Ok(r) => r,
        Err(e) => {
            log::error!("replication to {label}: start the reader: {e}");
            return;
        }
    };
    let (reserver, writer) = Reserver::new(ctx.store.clone());
    let reserving = match std::thread::Builder::new()
        .name("reserve".into())
        .stack_size(128 * 1024)
        .spawn(move || writer.run())
    {
        Ok(h) => h,
        Err(e) => {
            log::error!("replication to {label}: start the session's bookkeeping: {e}");
            return;
        }
    };
    let mut feed = StoreFeed::new(
        &ctx.store,
        &ctx.shared.live,
        &state.claimed,
        target_id,
        root.clone(),
        reserver,
        model::now,
    );
    let opened = Instant::now();
    let socket = stream.socket;
    let cc = congestion_of(&socket, &ctx.congestion, &label);
    let readings = move || readings_of(&socket);
    let sctx = sender::Context {
        root: &root,
        live: &ctx.shared.live,
        shutdown: stop,
        target: label.clone(),
        chunks: stream.features.chunks,
        compression: admin::compression_of(&target, ctx.compression),
        zstd: stream.features.zstd,
        readings: &readings,
    };
    let session = ctx.shared.live.session(Peer::Target(target_id));
    let result = sender::run(&sctx, &mut feed, stream.body, &replies);
    if worked(result.is_ok(), opened.elapsed()) {
        *lock(&state.worked_at) = Some(Instant::now());
    }
    drop(session);
    // The feed settles what it holds; its reservations are all written once the writer
    // returns.
    drop(feed);
    let _ = reserving.join();
    match result {
        Ok(s) => {
            count_sent(&s);
            state.failures.store(0, Ordering::SeqCst);
            if s.done + s.skipped + s.failed > 0 {
                log::info!(
                    "replication to {label}: session ended: {} sent, {} already held, {} failed, {} bytes ({} on the wire), congestion control {cc}",
                    s.done,
                    s.skipped,
                    s.failed,
                    s.bytes_sent,
                    s.wire_bytes
                );
            } else {
                log::debug!("replication to {label}: idle session ended");
            }
        }
        Err(SessionError::Shutdown) => {}
        Err(SessionError::Target {
            code: Code::Busy,
            message,
        }) => {
            // Its turn is over while other sources wait (the files it finished are kept).
            log::info!("replication to {label}: session ended by the target: {message}");
            retry_in(state, BUSY_RETRY);
        }
        Err(e) => {
            log::warn!("replication to {label}: session broken: {e}");
            back_off(state);
        }
    }
}

/// When the next session may try after this one could not open.
fn not_opened(state: &TargetState, label: &str, e: OpenTransferError) {
    match e {
        OpenTransferError::Refused {
            status: 429,
            message,
            retry_after,
        } => {
            // The target shares its sessions between sources and queues this one: ask
            // again when it says, without counting a failure (a longer wait would lose
            // this source its place).
            log::info!("replication to {label}: waiting for a session slot: {message}");
            retry_in(state, retry_after.map_or(BUSY_RETRY, Duration::from_secs));
        }
        e => {
            if matches!(e, OpenTransferError::Refused { status: 503, .. }) {
                log::info!("replication to {label}: busy: {e}");
            } else {
                log::warn!("replication to {label}: cannot open a session: {e}");
            }
            back_off(state);
        }
    }
}

/// The next session waits `wait` (at most a minute), without counting a failure.
fn retry_in(state: &TargetState, wait: Duration) {
    *lock(&state.retry_at) = Some(Instant::now() + wait.min(MAX_RETRY));
}

/// Sets `tunnel_congestion` on a session's connection (after the handshake and the head,
/// before any data) and counts the session by the algorithm it got; and dead-peer
/// detection (`listener::sys::DEAD_PEER_AFTER`).
fn congestion_of(socket: &std::net::TcpStream, setting: &str, label: &str) -> String {
    if let Err(e) = crate::listener::sys::set_dead_peer_detection(socket) {
        log::warn!("replication to {label}: dead-peer detection: {e}");
    }
    let cc = apply_congestion(socket, setting, "tunnel connections");
    let cc = cc.unwrap_or_else(|| "unknown".into());
    crate::metrics::counter(
        "replgate_replication_sessions_total",
        "Replication sessions opened to targets, by their connection's TCP congestion control.",
        &[("congestion", &cc)],
    )
    .inc();
    cc
}

/// What `auto` compression reviews its level by, and the session's windows are sized
/// from (`replication::link`): this thread's CPU time and the connection's `TCP_INFO`.
fn readings_of(socket: &std::net::TcpStream) -> Readings {
    let tcp = tcp_figures(socket);
    Readings {
        cpu: thread_cpu_time(),
        rwnd_limited: tcp.map(|t| t.rwnd_limited),
        link_rate: tcp.map(|t| t.delivery_rate).filter(|r| *r > 0),
        rtt: tcp.map(|t| t.rtt),
    }
}

/// Counts what a session that ended with `Bye` sent: content, and its bytes in frames.
fn count_sent(s: &sender::Summary) {
    for (form, bytes) in [("content", s.bytes_sent), ("wire", s.wire_bytes)] {
        crate::metrics::counter(
            "replgate_replication_session_bytes_total",
            "File content sent to targets by sessions that ended with Bye (form content), and \
             the bytes it took in frames (form wire: less where compressed).",
            &[("form", form)],
        )
        .add(bytes);
    }
}

/// The calling thread's CPU time (user and system), if the platform tells.
fn thread_cpu_time() -> Option<Duration> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the kernel to fill.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return None;
    }
    let secs = u64::try_from(ts.tv_sec).ok()?;
    let nanos = u32::try_from(ts.tv_nsec).ok()?;
    Some(Duration::new(secs, nanos))
}

fn back_off(state: &TargetState) {
    let failures = state.failures.fetch_add(1, Ordering::SeqCst);
    let since_worked = lock(&state.worked_at).map(|t| t.elapsed());
    let wait = retry_wait(failures, since_worked, crate::rand::unit());
    *lock(&state.retry_at) = Some(Instant::now() + wait);
}

/// Whether a session shows the link worked: it ended with `Bye`, or ran [`WORKED_FOR`]
/// before it broke (a cut, not a target that ends every session at once).
fn worked(ended_well: bool, ran: Duration) -> bool {
    ended_well || ran >= WORKED_FOR
}

/// How long a session waits after `failures` sessions in a row failed. Within
/// [`RECONNECT_WINDOW`] of the last session that worked (a cut link, a restarted target)
/// it is one to two seconds, so a transfer resumes within seconds of the link's return
/// (SPEC 17); after that it doubles from [`FIRST_RETRY`] up to [`MAX_RETRY`]. `jitter` in
/// `[0, 1)` spreads the sources a target lost together.
fn retry_wait(failures: usize, since_worked: Option<Duration>, jitter: f64) -> Duration {
    if since_worked.is_some_and(|d| d < RECONNECT_WINDOW) {
        return RECONNECT_RETRY.mul_f64(1.0 + jitter.clamp(0.0, 1.0));
    }
    let n = failures.min(6) as u32;
    (FIRST_RETRY * 2u32.pow(n)).min(MAX_RETRY)
}

/// Reads the target's frames on their own thread, so the sender can keep writing while
/// decisions and outcomes arrive. The channel ends with an error or `Bye`.
pub(crate) fn spawn_reader(
    input: impl std::io::Read + Send + 'static,
    name: String,
) -> std::io::Result<sender::Replies> {
    let (tx, rx) = sender::reply_channel();
    std::thread::Builder::new()
        .name(name)
        .stack_size(256 * 1024)
        .spawn(move || sender::forward_replies(input, &tx))?;
    Ok(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_worked_if_it_ended_well_or_ran_a_while_before_it_broke() {
        assert!(worked(true, Duration::ZERO));
        assert!(worked(false, WORKED_FOR));
        assert!(!worked(false, WORKED_FOR - Duration::from_millis(1)));
    }

    #[test]
    fn a_link_that_worked_a_moment_ago_is_retried_within_two_seconds_else_by_doubling() {
        let recent = Some(Duration::from_secs(30));
        for failures in [0, 5, 50] {
            assert_eq!(retry_wait(failures, recent, 0.0), Duration::from_secs(1));
            assert_eq!(
                retry_wait(failures, recent, 0.5),
                Duration::from_millis(1500)
            );
            assert!(retry_wait(failures, recent, 0.999) < Duration::from_secs(2));
        }
        let long_ago = Some(RECONNECT_WINDOW + Duration::from_secs(1));
        for since in [None, long_ago] {
            assert_eq!(retry_wait(0, since, 0.7), Duration::from_secs(1));
            assert_eq!(retry_wait(3, since, 0.7), Duration::from_secs(8));
            assert_eq!(retry_wait(50, since, 0.7), MAX_RETRY);
        }
    }
}
