//! The target's verify job: one thread that takes the verify requests the API queued
//! (`replication::verify::Verifier`) and re-reads one source's copies at a time, until
//! shutdown. Every second it also queues the verifies `verify_interval` makes due, so a
//! damaged copy is found, and then fetched again, with no admin action. What a verify
//! checks and records is `replication::verify`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::config::Storage;
use crate::model;
use crate::replication::verify::{self, Verifier, VerifyError};
use crate::store::Store;

/// The most threads one verify reads on.
const MAX_VERIFY_THREADS: usize = 4;

/// Runs `work` on one thread per core (at most [`MAX_VERIFY_THREADS`]; SPEC 20: a verify
/// uses both cores of a small box) and waits for them all. A thread that cannot be
/// started leaves its share to the others, and the verify job's own thread always works.
fn on_each_core(work: &(dyn Fn() + Sync)) {
    let cores = cores();
    std::thread::scope(|scope| {
        for i in 1..cores.clamp(1, MAX_VERIFY_THREADS) {
            let spawned = std::thread::Builder::new()
                .name(format!("verify-{i}"))
                .spawn_scoped(scope, work);
            if let Err(e) = spawned {
                log::warn!("verify: a reader thread could not start: {e}");
            }
        }
        work();
    });
}

/// The cores this process may run on: its CPU affinity (`taskset` narrows it), at least
/// one; two when it cannot be read. (`std::thread::available_parallelism` also reads the
/// cgroup's quota, which costs the binary 7 KB of parsing for a box that sets none.)
fn cores() -> usize {
    // SAFETY: an all-zero `cpu_set_t` is a valid empty set, and the kernel writes at most
    // the size it is given.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::cpu_set_t>();
    // SAFETY: `set` is a valid, writable `cpu_set_t` of `size` bytes.
    if unsafe { libc::sched_getaffinity(0, size, &mut set) } != 0 {
        return 2;
    }
    // SAFETY: `set` was filled by the kernel above.
    usize::try_from(unsafe { libc::CPU_COUNT(&set) }).map_or(2, |n| n.max(1))
}

/// How often the schedule is looked at.
const SCHEDULE_EVERY: Duration = Duration::from_secs(1);

/// What the scheduled verifies need: the configured storages and `verify_interval`
/// (zero: none).
pub(crate) struct Schedule {
    pub storages: Vec<Storage>,
    pub interval: Duration,
}

/// Starts the verify job; it stops when `shutdown` is set.
pub(crate) fn spawn_verifier(
    verifier: Arc<Verifier>,
    store: Store,
    schedule: Schedule,
    shutdown: Arc<AtomicBool>,
) -> std::io::Result<JoinHandle<()>> {
    let rx = verifier.open();
    verify::damaged_counter();
    std::thread::Builder::new()
        .name("verifier".into())
        .spawn(move || {
            let mut looked = None::<Instant>;
            while !shutdown.load(Ordering::SeqCst) {
                if looked.is_none_or(|t| t.elapsed() >= SCHEDULE_EVERY) {
                    queue_due(&verifier, &store, &schedule);
                    looked = Some(Instant::now());
                }
                let job = match rx.recv_timeout(Duration::from_millis(200)) {
                    Ok(j) => j,
                    Err(RecvTimeoutError::Timeout) => continue,
                    Err(RecvTimeoutError::Disconnected) => return,
                };
                let sid = job.system_id;
                match verify::run(
                    &verifier,
                    &store,
                    &job,
                    (&shutdown, &on_each_core),
                    model::now,
                ) {
                    Ok(()) => {}
                    Err(e) => log::error!("verify of system {sid}: {e}"),
                }
                let s = verifier.finished(sid, model::now());
                log::info!(
                    "verify of system {sid}: {} of {} copies checked, {} damaged, {} missing",
                    s.checked,
                    s.total,
                    s.damaged,
                    s.missing
                );
            }
            verifier.close();
        })
}

/// Queues every source whose scheduled verify is due (one already running is left).
fn queue_due(verifier: &Verifier, store: &Store, schedule: &Schedule) {
    let now = model::now();
    let due = match verify::due(store, &schedule.storages, schedule.interval.as_secs(), now) {
        Ok(d) => d,
        Err(e) => {
            log::error!("the verify schedule: {e}");
            return;
        }
    };
    for target in due {
        let sid = target.system_id;
        match verifier.request(target, true, now) {
            Ok(_) => log::info!("scheduled verify of system {sid} queued (verify_interval)"),
            Err(VerifyError::Running) => {}
            Err(e) => log::warn!("scheduled verify of system {sid}: {e}"),
        }
    }
}
