//! The source's background poller: one scheduling thread that polls each open target's
//! `status.json` (each poll on its own short-lived thread, a few at a time),
//! installs a delivered certificate after checking it, proves the tunnel, and keeps a slow
//! heartbeat afterwards to learn of revocation. The only network code in `pairing/`.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::ca;
use crate::fsx;
use crate::model::{self, UnixTime};
use crate::pairing::source::{self, Step};
use crate::remote::{Remote, RemoteError};
use crate::store::{Store, StoreError, TargetRecord, TargetStatus};
use crate::wire::protocol::{SpoolStatus, CA_FILE, CERT_FILE};

/// File names inside a target's directory.
pub const KEY_FILE: &str = "key.pem";
pub const INSTALLED_CERT: &str = "cert.pem";
pub const INSTALLED_CA: &str = "ca.pem";

/// How often the loop looks for due polls and new targets.
const TICK: Duration = Duration::from_millis(200);
/// A target seen for the first time (new, or after a restart) is polled this soon.
const FIRST_POLL: Duration = Duration::from_millis(500);

/// What the poller needs, built once by the daemon.
pub struct SourceContext {
    pub store: Store,
    /// `<data_dir>/targets`: one directory per pairing with its key and certificates.
    pub targets_dir: PathBuf,
    pub poll_interval: Duration,
    pub heartbeat: Duration,
}

impl SourceContext {
    pub fn dir_of(&self, r: &TargetRecord) -> PathBuf {
        self.targets_dir.join(&r.dir)
    }
}

struct Schedule {
    next: Instant,
    failures: u32,
}

/// At most this many polls run at once, each on its own short-lived thread, so one
/// target that does not answer (up to the client's 30 s bound) never delays the others.
const MAX_PARALLEL_POLLS: usize = 8;
/// When a poll thread could not start, try again after this.
const RESPAWN_AFTER: Duration = Duration::from_secs(5);

/// Starts the poller thread; it stops when `shutdown` is set.
pub fn spawn_poller(
    ctx: Arc<SourceContext>,
    shutdown: Arc<AtomicBool>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("poller".into())
        .spawn(move || {
            let mut schedule: HashMap<u64, Schedule> = HashMap::new();
            let mut in_flight: HashSet<u64> = HashSet::new();
            let (done_tx, done_rx) = mpsc::channel::<(u64, bool)>();
            while !shutdown.load(Ordering::SeqCst) {
                std::thread::sleep(TICK);
                // Finished polls: reschedule from the record as it now stands.
                while let Ok((id, ok)) = done_rx.try_recv() {
                    in_flight.remove(&id);
                    let Some(entry) = schedule.get_mut(&id) else {
                        continue;
                    };
                    entry.failures = if ok {
                        0
                    } else {
                        entry.failures.saturating_add(1)
                    };
                    let current = match ctx.store.target(id) {
                        Ok(Some(t)) => t,
                        _ => continue,
                    };
                    match source::next_poll(
                        &current,
                        ctx.poll_interval,
                        ctx.heartbeat,
                        entry.failures,
                        crate::rand::unit(),
                    ) {
                        Some(wait) => {
                            let now = Instant::now();
                            entry.next = now.checked_add(wait).unwrap_or(now + source::MAX_BACKOFF);
                        }
                        None => {
                            schedule.remove(&id);
                        }
                    }
                }
                let targets = match ctx.store.targets() {
                    Ok(t) => t,
                    Err(e) => {
                        log::warn!("poller: read targets: {e}");
                        continue;
                    }
                };
                schedule.retain(|id, _| targets.iter().any(|t| t.id == *id));
                for t in targets {
                    if t.status.is_final()
                        || in_flight.contains(&t.id)
                        || in_flight.len() >= MAX_PARALLEL_POLLS
                    {
                        continue;
                    }
                    let entry = schedule.entry(t.id).or_insert(Schedule {
                        next: Instant::now() + FIRST_POLL,
                        failures: 0,
                    });
                    if Instant::now() < entry.next {
                        continue;
                    }
                    // Not due again until this poll reports back.
                    entry.next = Instant::now() + source::MAX_BACKOFF;
                    let (ctx, done) = (ctx.clone(), done_tx.clone());
                    let id = t.id;
                    let spawned = std::thread::Builder::new()
                        .name(format!("poll-{id}"))
                        .spawn(move || {
                            let ok = poll_once(&ctx, &t);
                            let _ = done.send((id, ok));
                        });
                    match spawned {
                        Ok(_) => {
                            in_flight.insert(id);
                        }
                        Err(e) => {
                            log::warn!("poller: start a poll of target {id}: {e}");
                            entry.next = Instant::now() + RESPAWN_AFTER;
                        }
                    }
                }
            }
        })
}

/// Applies `change` to the stored target `id` (if it still exists) in one transaction.
fn update(
    store: &Store,
    id: u64,
    change: impl FnOnce(&mut TargetRecord),
) -> Result<Option<TargetRecord>, StoreError> {
    store.write(|tx| {
        let Some(mut r) = tx.target(id)? else {
            return Ok(None);
        };
        change(&mut r);
        tx.put_target(&r)?;
        Ok(Some(r))
    })
}

fn set_status(
    ctx: &SourceContext,
    id: u64,
    status: TargetStatus,
    message: Option<String>,
    now: UnixTime,
) {
    if let Some(m) = &message {
        log::warn!("target {id}: {} ({m})", status.as_str());
    } else {
        log::info!("target {id}: {}", status.as_str());
    }
    if let Err(e) = update(&ctx.store, id, |r| source::finish(r, status, message, now)) {
        log::error!("target {id}: record status {}: {e}", status.as_str());
    }
}

/// One poll of one target. Returns false on a network error (for backoff).
pub fn poll_once(ctx: &SourceContext, t: &TargetRecord) -> bool {
    let now = model::now();
    let remote = match Remote::api(&t.host, &t.ca_pem) {
        Ok(r) => r,
        Err(e) => {
            set_status(ctx, t.id, TargetStatus::Failed, Some(e.to_string()), now);
            return false;
        }
    };
    let polled = remote.status(&t.poll);
    let _ = update(&ctx.store, t.id, |r| r.last_poll = Some(now));
    let polled = match polled {
        Ok(p) => p,
        Err(RemoteError::Untrusted(e)) => {
            set_status(
                ctx,
                t.id,
                TargetStatus::Failed,
                Some(format!(
                    "{} presented a certificate that does not chain to the pinned CA {}: {e}",
                    t.host, t.ca_fingerprint
                )),
                now,
            );
            return false;
        }
        Err(e) => {
            log::info!("target {}: poll {}: {e}", t.id, t.host);
            let message = format!("last poll failed: {e}");
            let _ = update(&ctx.store, t.id, |r| r.message = Some(message));
            return false;
        }
    };
    if let SpoolStatus::Pending { retry_after, .. } = &polled {
        let retry_after = source::clamp_retry_after(*retry_after);
        if retry_after != t.retry_after {
            let _ = update(&ctx.store, t.id, |r| r.retry_after = retry_after);
        }
    }
    match source::step(t, &polled) {
        Step::Wait => {
            if t.message.is_some() && t.status != TargetStatus::Failed {
                let _ = update(&ctx.store, t.id, |r| r.message = None);
            }
        }
        Step::Record { status, message } => {
            if t.status != status {
                set_status(ctx, t.id, status, message, now);
            }
        }
        Step::Install { tunnel } => match install_and_prove(ctx, &remote, t, &tunnel, now) {
            Ok(()) => set_status(ctx, t.id, TargetStatus::Complete, None, now),
            Err(message) => set_status(ctx, t.id, TargetStatus::Failed, Some(message), now),
        },
    }
    true
}

fn read_text(path: &Path) -> Result<String, String> {
    fsx::read_regular_nofollow(path, 64 * 1024)
        .map_err(|e| format!("{}: {e}", path.display()))
        .and_then(|b| String::from_utf8(b).map_err(|e| format!("{}: {e}", path.display())))
}

/// Fetches and checks the delivered certificate, installs it atomically, records
/// `accepted`, then opens the tunnel once. Any failed check leaves the installed state as
/// it was and returns a message an admin can act on.
fn install_and_prove(
    ctx: &SourceContext,
    remote: &Remote,
    t: &TargetRecord,
    tunnel: &str,
    now: UnixTime,
) -> Result<(), String> {
    let cert_pem = remote
        .fetch(&t.poll, CERT_FILE)
        .map_err(|e| format!("fetch {CERT_FILE} from {}: {e}", t.host))?;
    let ca_pem = remote
        .fetch(&t.poll, CA_FILE)
        .map_err(|e| format!("fetch {CA_FILE} from {}: {e}", t.host))?;
    let dir = ctx.dir_of(t);
    let key_pem = read_text(&dir.join(KEY_FILE))?;
    let delivered = ca::check_delivered(&cert_pem, &ca_pem, &key_pem, &t.ca_fingerprint, now)
        .map_err(|e| format!("delivered certificate refused: {e}"))?;
    fsx::write_atomic(&dir.join(INSTALLED_CA), ca_pem.as_bytes())
        .map_err(|e| format!("install {INSTALLED_CA}: {e}"))?;
    fsx::write_atomic(&dir.join(INSTALLED_CERT), cert_pem.as_bytes())
        .map_err(|e| format!("install {INSTALLED_CERT}: {e}"))?;
    update(&ctx.store, t.id, |r| {
        r.status = TargetStatus::Accepted;
        r.message = None;
        r.tunnel = Some(tunnel.to_string());
        r.certificate_expires = Some(delivered.not_after);
        r.cert_serial = Some(delivered.serial.clone());
        r.updated = now;
    })
    .map_err(|e| format!("record the installed certificate: {e}"))?;
    log::info!(
        "target {}: certificate {} installed; proving the tunnel at {tunnel}",
        t.id,
        delivered.serial
    );
    let hello = Remote::tunnel(tunnel, &t.ca_pem, &cert_pem, &key_pem)
        .and_then(|r| r.hello())
        .map_err(|e| format!("tunnel {tunnel}: {e}"))?;
    log::info!(
        "target {}: tunnel proven, target calls us system {}",
        t.id,
        hello.system_id
    );
    Ok(())
}
