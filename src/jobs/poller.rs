//! The source's background poller: one scheduling thread that polls each open target's
//! `status.json` (each poll on its own short-lived thread, a few at a time),
//! installs a delivered certificate after checking it, proves the tunnel, and keeps a slow
//! heartbeat afterwards to learn of revocation and to follow a rollover of the target's
//! CA (`renewer::heartbeat`). It also runs each pairing's certificate upkeep when it is
//! due (`renewer`: renew, prove, file again once expired), as a job of the same kind: one
//! job per target at a time. A target that no longer verifies because it replaced its CA
//! while this appliance was away is said so plainly (`renewer::replaced_ca_message`). The rules it follows are
//! `pairing::source`'s; the network calls are `remote`'s.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::ca::{self, DeliveryError};
use crate::identity::IdentityError;
use crate::jobs::renewer::{self, SourceContext};
use crate::model::{self, Chain, UnixTime};
use crate::pairing::source::{self, Step, Upkeep};
use crate::remote::{Remote, RemoteError};
use crate::store::{AuditRecord, Store, StoreError, TargetRecord, TargetStatus};
use crate::wire::protocol::{SpoolStatus, CA_FILE, CERT_FILE};

/// How often the loop looks for due polls and new targets.
const TICK: Duration = Duration::from_millis(200);
/// A target seen for the first time (new, or after a restart) is polled this soon.
const FIRST_POLL: Duration = Duration::from_millis(500);
/// At shutdown, polls still running get this long to finish; the rest are abandoned (a
/// remote call can take up to the client's 30 s bound) and their targets logged.
const JOIN_POLLS: Duration = Duration::from_secs(3);

struct Schedule {
    next: Instant,
    failures: u32,
    /// When certificate upkeep may run next (after a failure it backs off).
    upkeep_next: Instant,
    upkeep_failures: u32,
}

/// What a job thread does for one target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Job {
    Poll,
    Upkeep,
}

/// At most this many polls run at once, each on its own short-lived thread, so one
/// target that does not answer (up to the client's 30 s bound) never delays the others.
const MAX_PARALLEL_POLLS: usize = 8;
/// When a poll thread could not start, try again after this.
const RESPAWN_AFTER: Duration = Duration::from_secs(5);

/// Starts the poller thread; it stops when `shutdown` is set, after waiting (bounded by
/// `JOIN_POLLS`) for the polls still running.
pub(crate) fn spawn_poller(
    ctx: Arc<SourceContext>,
    shutdown: Arc<AtomicBool>,
) -> std::io::Result<JoinHandle<()>> {
    super::spawn_named(
        "poller".into(),
        Box::new(move || Poller::new(ctx).run(&shutdown)),
    )
}

/// The scheduler's state: when each target is due, and the polls running now.
struct Poller {
    ctx: Arc<SourceContext>,
    schedule: HashMap<u64, Schedule>,
    in_flight: HashMap<u64, JoinHandle<()>>,
    done_tx: mpsc::Sender<(u64, Job, bool)>,
    done_rx: mpsc::Receiver<(u64, Job, bool)>,
}

impl Poller {
    fn new(ctx: Arc<SourceContext>) -> Poller {
        let (done_tx, done_rx) = mpsc::channel();
        Poller {
            ctx,
            schedule: HashMap::new(),
            in_flight: HashMap::new(),
            done_tx,
            done_rx,
        }
    }

    fn run(mut self, shutdown: &AtomicBool) {
        renewer::backfill_starts(&self.ctx);
        while !shutdown.load(Ordering::SeqCst) {
            std::thread::sleep(TICK);
            while let Ok((id, job, ok)) = self.done_rx.try_recv() {
                self.finished(id, job, ok);
            }
            self.start_due();
        }
        self.join_in_flight(Instant::now() + JOIN_POLLS);
    }

    /// A job reported back: join its thread, reschedule from the record as it now stands.
    fn finished(&mut self, id: u64, job: Job, ok: bool) {
        if let Some(handle) = self.in_flight.remove(&id) {
            if handle.join().is_err() {
                log::error!("poller: the {job:?} job of target {id} panicked");
            }
        }
        let Some(entry) = self.schedule.get_mut(&id) else {
            return;
        };
        let current = match self.ctx.store.target(id) {
            Ok(Some(t)) => t,
            _ => return,
        };
        let now = Instant::now();
        if job == Job::Upkeep {
            entry.upkeep_failures = if ok {
                0
            } else {
                entry.upkeep_failures.saturating_add(1)
            };
            entry.upkeep_next = if ok {
                now
            } else {
                let ends = current.certificate_expires.unwrap_or(0);
                let wait = crate::lifecycle::retry_wait(entry.upkeep_failures, model::now(), ends);
                now.checked_add(wait).unwrap_or(now + source::MAX_BACKOFF)
            };
            return;
        }
        entry.failures = if ok {
            0
        } else {
            entry.failures.saturating_add(1)
        };
        let ctx = &self.ctx;
        match source::next_poll(
            &current,
            ctx.poll_interval,
            ctx.heartbeat,
            entry.failures,
            crate::rand::unit(),
        ) {
            Some(wait) => {
                entry.next = now.checked_add(wait).unwrap_or(now + source::MAX_BACKOFF);
            }
            None => {
                self.schedule.remove(&id);
            }
        }
    }

    /// Starts a job thread for every target that is due, up to `MAX_PARALLEL_POLLS`: its
    /// poll, else its certificate upkeep.
    fn start_due(&mut self) {
        let targets = match self.ctx.store.targets() {
            Ok(t) => t,
            Err(e) => {
                log::warn!("poller: read targets: {}", Chain(&e));
                return;
            }
        };
        self.schedule
            .retain(|id, _| targets.iter().any(|t| t.id == *id));
        let unix_now = model::now();
        for t in targets {
            if t.status.is_final()
                || self.in_flight.contains_key(&t.id)
                || self.in_flight.len() >= MAX_PARALLEL_POLLS
            {
                continue;
            }
            let now = Instant::now();
            let entry = self.schedule.entry(t.id).or_insert(Schedule {
                next: now + FIRST_POLL,
                failures: 0,
                upkeep_next: now,
                upkeep_failures: 0,
            });
            let job = if now >= entry.next {
                // Not due again until this poll reports back.
                entry.next = now + source::MAX_BACKOFF;
                Job::Poll
            } else if now >= entry.upkeep_next {
                match source::upkeep(&t, unix_now) {
                    Some(_) => {
                        entry.upkeep_next = now + source::MAX_BACKOFF;
                        Job::Upkeep
                    }
                    None => continue,
                }
            } else {
                continue;
            };
            let (ctx, done) = (self.ctx.clone(), self.done_tx.clone());
            let id = t.id;
            let name = match job {
                Job::Poll => format!("poll-{id}"),
                Job::Upkeep => format!("renew-{id}"),
            };
            let spawned = super::spawn_named(
                name,
                Box::new(move || {
                    let ok = match job {
                        Job::Poll => poll_once(&ctx, &t),
                        Job::Upkeep => upkeep_once(&ctx, &t),
                    };
                    let _ = done.send((id, job, ok));
                }),
            );
            match spawned {
                Ok(handle) => {
                    self.in_flight.insert(id, handle);
                }
                Err(e) => {
                    log::warn!("poller: start a {job:?} job for target {id}: {e}");
                    match job {
                        Job::Poll => entry.next = now + RESPAWN_AFTER,
                        Job::Upkeep => entry.upkeep_next = now + RESPAWN_AFTER,
                    }
                }
            }
        }
    }

    /// Joins the polls that finish before `deadline`; logs and returns the targets of the
    /// ones abandoned.
    fn join_in_flight(mut self, deadline: Instant) -> Vec<u64> {
        while !self.in_flight.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.done_rx.recv_timeout(left) {
                Ok((id, job, ok)) => self.finished(id, job, ok),
                Err(_) => break,
            }
        }
        let mut ids: Vec<u64> = self.in_flight.keys().copied().collect();
        ids.sort_unstable();
        if !ids.is_empty() {
            log::warn!(
                "poller: abandoned {} polls still running at shutdown (targets {ids:?})",
                ids.len()
            );
        }
        ids
    }
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
    let text = message.clone();
    match update(&ctx.store, id, |r| source::finish(r, status, message, now)) {
        // The event line names the target's address, after the status is recorded.
        Ok(row) => {
            let host = row.map(|r| r.host).unwrap_or_else(|| "?".into());
            match text {
                Some(m) => log::warn!("target {id} ({host}): {} ({m})", status.as_str()),
                None => log::info!("target {id} ({host}): {}", status.as_str()),
            }
        }
        Err(e) => log::error!(
            "target {id}: record status {}: {}",
            status.as_str(),
            Chain(&e)
        ),
    }
}

/// Whether `e` or one of its causes is a peer that did not verify, or refused our
/// certificate.
fn untrusted(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(err) = cause {
        if matches!(
            err.downcast_ref::<RemoteError>(),
            Some(RemoteError::Untrusted(_))
        ) {
            return true;
        }
        cause = err.source();
    }
    false
}

/// After a failure with target `t` that `e` describes: when the target did not verify (or
/// refused our certificate) because it replaced its CA while this appliance was away,
/// the row becomes `failed` with the message that says what to do, and true is
/// returned.
fn replaced_ca(
    ctx: &SourceContext,
    t: &TargetRecord,
    e: &(dyn std::error::Error + 'static),
    now: UnixTime,
) -> bool {
    let Some(message) = untrusted(e)
        .then(|| renewer::replaced_ca_message(t, now))
        .flatten()
    else {
        return false;
    };
    if t.status != TargetStatus::Failed || t.message.as_deref() != Some(message.as_str()) {
        set_status(ctx, t.id, TargetStatus::Failed, Some(message), now);
    }
    true
}

/// A complete pairing's heartbeat after a good poll: follow the target's CAs (and renew
/// at once when it asks). A failure is logged and shown as the target's `message`.
fn heartbeat(ctx: &SourceContext, t: &TargetRecord, now: UnixTime) {
    let followed = if t.status == TargetStatus::Complete {
        renewer::heartbeat(ctx, t, now)
    } else {
        Ok(())
    };
    match followed {
        Ok(()) => {
            if t.message.is_some() && t.status != TargetStatus::Failed {
                let _ = update(&ctx.store, t.id, |r| r.message = None);
            }
        }
        Err(e) if replaced_ca(ctx, t, &e, now) => {}
        Err(e) => {
            let text = format!("following the target's ca failed (retrying): {}", Chain(&e));
            log::warn!("target {}: {text}", t.id);
            let _ = update(&ctx.store, t.id, |r| r.message = Some(text));
        }
    }
}

/// The certificate upkeep due for one target (see `source::upkeep`). Returns false when
/// it failed and is to be retried after a backoff; the reason is logged and shown as the
/// target's `message`.
fn upkeep_once(ctx: &SourceContext, t: &TargetRecord) -> bool {
    let now = model::now();
    let Some(job) = source::upkeep(t, now) else {
        return true;
    };
    match renewer::run(ctx, t, &job, now) {
        Ok(()) => true,
        Err(e) if replaced_ca(ctx, t, &e, now) => false,
        Err(e) => {
            let what = match job {
                Upkeep::Prove { .. } => "proving the renewed certificate",
                Upkeep::Renew => "renewing the certificate",
                Upkeep::Refile => "filing a new request for the expired certificate",
            };
            let text = format!("{what} failed (retrying): {}", Chain(&e));
            log::warn!("target {}: {text}", t.id);
            let _ = update(&ctx.store, t.id, |r| r.message = Some(text));
            false
        }
    }
}

/// One poll of one target. Returns false on a network error (for backoff).
pub(crate) fn poll_once(ctx: &SourceContext, t: &TargetRecord) -> bool {
    let now = model::now();
    let remote = match Remote::api(t.connect_to(), &t.ca_pem) {
        Ok(r) => r,
        Err(e) => {
            set_status(
                ctx,
                t.id,
                TargetStatus::Failed,
                Some(Chain(&e).to_string()),
                now,
            );
            return false;
        }
    };
    let polled = remote.status(&t.poll);
    let _ = update(&ctx.store, t.id, |r| r.last_poll = Some(now));
    let polled = match polled {
        Ok(p) => p,
        Err(RemoteError::Untrusted(e)) => {
            let message = renewer::replaced_ca_message(t, now).unwrap_or_else(|| {
                format!(
                    "{} presented a certificate that does not chain to the pinned CA {}: {e}",
                    t.host, t.ca_fingerprint
                )
            });
            set_status(ctx, t.id, TargetStatus::Failed, Some(message), now);
            return false;
        }
        Err(e) => {
            let e = Chain(&e);
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
        Step::Wait => heartbeat(ctx, t, now),
        Step::Record { status, message } => {
            if t.status != status {
                set_status(ctx, t.id, status, message, now);
            }
        }
        Step::Install { tunnel } => {
            let takes_over = match &polled {
                SpoolStatus::Accepted {
                    replaces_system_id, ..
                } => *replaces_system_id,
                _ => None,
            };
            let installed = install_and_prove(ctx, &remote, t, (&tunnel, takes_over), now);
            conclude(ctx, t, installed, now);
        }
        Step::Prove { tunnel } => {
            let proven = renewer::prove(ctx, t.id, &tunnel)
                .map(|_| ())
                .map_err(|source| InstallError::Tunnel {
                    address: tunnel.clone(),
                    source: Box::new(source),
                });
            conclude(ctx, t, proven, now);
        }
    }
    true
}

/// Records how installing or proving ended: `complete`, or `failed` with the reason.
fn conclude(
    ctx: &SourceContext,
    t: &TargetRecord,
    result: Result<(), InstallError>,
    now: UnixTime,
) {
    match result {
        Ok(()) => set_status(ctx, t.id, TargetStatus::Complete, None, now),
        Err(e) if replaced_ca(ctx, t, &e, now) => {}
        Err(e) => set_status(
            ctx,
            t.id,
            TargetStatus::Failed,
            Some(Chain(&e).to_string()),
            now,
        ),
    }
}

/// Why a delivered certificate was not installed or its tunnel not proven. The text
/// (with its causes) is what the admin sees as the target's `message`.
#[derive(Debug)]
pub(crate) enum InstallError {
    /// A spool file could not be fetched from the target.
    Fetch {
        file: &'static str,
        host: String,
        source: RemoteError,
    },
    /// The pairing's directory or key could not be used.
    Identity(IdentityError),
    /// The delivered certificate failed a check (another key, another CA, expired...).
    Refused(DeliveryError),
    /// The installed certificate could not be recorded.
    Record(StoreError),
    /// The tunnel did not answer a hello with the installed certificate.
    Tunnel {
        address: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl fmt::Display for InstallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InstallError::Fetch { file, host, .. } => write!(f, "fetch {file} from {host}"),
            InstallError::Identity(e) => write!(f, "{e}"),
            InstallError::Refused(_) => f.write_str("delivered certificate refused"),
            InstallError::Record(_) => f.write_str("record the installed certificate"),
            InstallError::Tunnel { address, .. } => write!(f, "tunnel {address}"),
        }
    }
}

impl std::error::Error for InstallError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            InstallError::Fetch { source, .. } => Some(source),
            InstallError::Tunnel { source, .. } => Some(source.as_ref()),
            InstallError::Identity(e) => e.source(),
            InstallError::Refused(e) => Some(e),
            InstallError::Record(e) => Some(e),
        }
    }
}

/// Fetches and checks the delivered certificate, installs it atomically as the
/// generation its request was filed with, records `accepted`, then opens the tunnel once
/// (and, for a new request after an expired certificate, drops the old generation). Any
/// failed check leaves the installed state as it was and says what an admin can act on.
/// `takes_over`: the lost source the target's answer says this appliance took over,
/// recorded and audited with the install.
fn install_and_prove(
    ctx: &SourceContext,
    remote: &Remote,
    t: &TargetRecord,
    (tunnel, takes_over): (&str, Option<u64>),
    now: UnixTime,
) -> Result<(), InstallError> {
    let fetch = |file: &'static str| {
        remote
            .fetch(&t.poll, file)
            .map_err(|source| InstallError::Fetch {
                file,
                host: t.host.clone(),
                source,
            })
    };
    let cert_pem = fetch(CERT_FILE)?;
    let ca_pem = fetch(CA_FILE)?;
    let dir = ctx.dirs.open(&t.dir).map_err(InstallError::Identity)?;
    let generation = t.request_generation;
    let key_pem = dir.key_of(generation).map_err(InstallError::Identity)?;
    let delivered = ca::check_delivered(&cert_pem, &ca_pem, &key_pem, &t.ca_fingerprint, now)
        .map_err(InstallError::Refused)?;
    dir.install(generation, &cert_pem, &ca_pem)
        .map_err(InstallError::Identity)?;
    ctx.store
        .write(|tx| {
            let Some(mut r) = tx.target(t.id)? else {
                return Ok(());
            };
            install_row(&mut r, generation, tunnel, &delivered, now);
            let newly = takes_over.filter(|old| r.took_over != Some(*old));
            if let Some(old) = newly {
                r.took_over = Some(old);
                tx.audit(&AuditRecord {
                    time: now,
                    user: "-".into(),
                    address: tunnel.to_string(),
                    action: "system taken over".into(),
                    object: format!("target:{}", r.host),
                    detail: format!(
                        "this appliance took over system {old} on the target (request {}): its copies are restorable from here",
                        r.request_id
                    ),
                })?;
            }
            tx.put_target(&r)
        })
        .map_err(InstallError::Record)?;
    log::info!(
        "target {}: certificate {} installed; proving the tunnel at {tunnel}",
        t.id,
        delivered.serial
    );
    let hello = renewer::prove(ctx, t.id, tunnel).map_err(|source| InstallError::Tunnel {
        address: tunnel.to_string(),
        source: Box::new(source),
    })?;
    log::info!(
        "target {}: tunnel proven, target calls us system {}",
        t.id,
        hello.system_id
    );
    Ok(())
}

/// The row once the delivered certificate of `generation` is installed.
fn install_row(
    r: &mut TargetRecord,
    generation: u64,
    tunnel: &str,
    delivered: &ca::DeliveredCert,
    now: UnixTime,
) {
    {
        if r.generation != generation && r.cert_serial.is_some() {
            r.previous_generation = Some(r.generation);
        }
        r.generation = generation;
        r.status = TargetStatus::Accepted;
        r.message = None;
        r.tunnel = Some(tunnel.to_string());
        r.certificate_expires = Some(delivered.not_after);
        r.certificate_starts = Some(delivered.not_before);
        r.cert_serial = Some(delivered.serial.clone());
        // The pinned CA, and during a rollover of the target's CA the new one it
        // endorsed (the delivered certificate may be of either).
        r.ca_pem = delivered.trust_pem.clone();
        r.updated = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Fault;
    use crate::identity::TargetDirs;

    #[test]
    fn shutdown_joins_polls_that_finish_in_time_and_abandons_the_rest() {
        let dir = std::env::temp_dir().join(format!("replgate-poller-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        crate::fsx::ensure_private_dir(&dir).unwrap();
        let ctx = SourceContext {
            store: Store::open(&dir.join("replgate.redb")).unwrap(),
            dirs: TargetDirs::new(dir.join("targets")),
            poll_interval: Duration::from_secs(30),
            heartbeat: Duration::from_secs(300),
            system_uuid: "u".into(),
            name: "src".into(),
            asset_tag: String::new(),
            fault: Fault::None,
        };
        let mut poller = Poller::new(Arc::new(ctx));
        for (id, takes) in [(1, Duration::from_millis(20)), (2, Duration::from_secs(5))] {
            let done = poller.done_tx.clone();
            let handle = std::thread::spawn(move || {
                std::thread::sleep(takes);
                let _ = done.send((id, Job::Poll, true));
            });
            poller.in_flight.insert(id, handle);
        }
        let start = Instant::now();
        let abandoned = poller.join_in_flight(start + Duration::from_millis(500));
        assert_eq!(abandoned, vec![2]);
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
    }
}
