//! The daemon's maintenance, one thread on fixed schedules: every second it lets a
//! database that refused writes (a full disk) take them again once space is back, expires
//! pending requests whose time ran out, retries spool writes that failed, ends renewal
//! grace windows, keeps the listener certificates fresh (and at once after a SIGHUP or a
//! change of the CAs in force, when it also rewrites the spool's `ca.pem` files) and
//! gives freed memory back once threads ended; every five seconds it removes partial
//! copies past `partial_retention`; every ten seconds it stops trusting
//! aborted CAs nobody uses any more; every minute it logs new certificate warnings and
//! applies the sources' retention policies, moving what they let go to the recycle bin and
//! purging what stayed there past `recycle_days` (and at once when an admin changed a
//! policy); every ten minutes it purges long-ended requests and expired sessions and
//! aborts uploads into `s3` storages' buckets that no partial row names (orphans). Each
//! failure is logged and tried again on the next round.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::api::App;
use crate::jobs::listener_certs::{reload_hostnames, ListenerCertificate};
use crate::model::{self, Chain};
use crate::replication::recycle::{self, Bin};
use crate::{lifecycle, memory};

/// How often the thread looks at its schedules and for a SIGHUP.
const TICK: Duration = Duration::from_millis(100);
/// How often the certificate warnings are computed (and new ones logged).
const WARN_EVERY: Duration = Duration::from_secs(60);
/// A warning still true is logged again after this.
const WARN_AGAIN: Duration = Duration::from_secs(86_400);
/// How often expired sessions and long-ended requests are swept.
const SWEEP_EVERY: Duration = Duration::from_secs(600);
/// How often pending requests are checked for expiry (a scan of the open index only).
const EXPIRY_EVERY: Duration = Duration::from_secs(1);
/// How often aborted CAs are checked for certificates still in use (a read of every
/// certificate, only while there are aborted CAs).
const ABORTED_EVERY: Duration = Duration::from_secs(10);
/// How often retention runs and the recycle bins are purged by age.
const RETENTION_EVERY: Duration = Duration::from_secs(60);
/// How often partial copies are checked against `partial_retention` (a scan of the
/// partial rows, which are few).
const PARTIALS_EVERY: Duration = Duration::from_secs(5);

/// What the maintenance job works on, handed over by the daemon once everything runs.
pub(crate) struct Maintenance {
    pub app: Arc<App>,
    /// The API and tunnel listeners' certificates, whose slots the listeners present.
    pub listener_certs: Vec<ListenerCertificate>,
    /// Where the configuration came from (`--config`, or None for the packaged file or
    /// the defaults): a SIGHUP reads it again for `hostnames`.
    pub config_path: Option<PathBuf>,
    /// Set by the daemon's SIGHUP handler; the job takes it back.
    pub reload: &'static AtomicBool,
}

/// Starts the maintenance thread; it runs each schedule once at once, and stops when
/// `shutdown` is set.
pub(crate) fn spawn_maintenance(
    maintenance: Maintenance,
    shutdown: Arc<AtomicBool>,
) -> std::io::Result<JoinHandle<()>> {
    super::spawn_named(
        "maintenance".into(),
        Box::new(move || maintenance.run(&shutdown)),
    )
}

impl Maintenance {
    fn run(mut self, shutdown: &AtomicBool) {
        let app = self.app.clone();
        let mut last_sweep = Instant::now();
        let mut last_expiry = Instant::now();
        let mut last_partials = Instant::now();
        let mut threads = memory::thread_count();
        let mut last_warning = Instant::now();
        let mut warned = HashMap::new();
        let mut hostnames = app.config.hostnames.clone();
        let mut last_aborted = Instant::now();
        // The spool's `ca.pem` files were rendered at start from the CAs of epoch 0.
        let mut spool_epoch = 0;
        let mut last_retention = Instant::now();
        keep_retention(&app);
        sweep_expired(&app);
        purge_ended(&app);
        end_graces(&app);
        log_warnings(&app, &mut warned);
        while !shutdown.load(Ordering::SeqCst) {
            std::thread::sleep(TICK);
            let reload = self.reload.swap(false, Ordering::SeqCst);
            if reload {
                hostnames = reload_hostnames(self.config_path.as_deref(), &hostnames);
            }
            let epoch = app.cas.epoch();
            if reload || epoch != spool_epoch || last_expiry.elapsed() >= EXPIRY_EVERY {
                for cert in &mut self.listener_certs {
                    cert.keep_fresh(&app.cas.get(), &app.config, &hostnames);
                }
            }
            if epoch != spool_epoch && refresh_spool(&app) {
                spool_epoch = epoch;
            }
            if last_aborted.elapsed() >= ABORTED_EVERY {
                last_aborted = Instant::now();
                end_aborted(&app);
            }
            if last_warning.elapsed() >= WARN_EVERY {
                last_warning = Instant::now();
                log_warnings(&app, &mut warned);
            }
            if last_expiry.elapsed() >= EXPIRY_EVERY {
                last_expiry = Instant::now();
                // A database that refuses writes (a full disk) takes them again once space
                // is back, without waiting for a request to ask.
                let _ = app.store.degraded();
                sweep_expired(&app);
                end_graces(&app);
                // Threads ended since the last look (connection threads when connections
                // close, tiny_http's pool threads 5 s later): what they allocated is free
                // now, so give those pages back (at most once a second, never under steady
                // load).
                let now_threads = memory::thread_count();
                if now_threads < threads {
                    memory::release_free();
                }
                threads = now_threads;
            }
            let kicked = app.replication.recycler.take_due();
            if kicked || last_retention.elapsed() >= RETENTION_EVERY {
                last_retention = Instant::now();
                keep_retention(&app);
            }
            if last_partials.elapsed() >= PARTIALS_EVERY {
                last_partials = Instant::now();
                expire_partials(&app);
            }
            if last_sweep.elapsed() >= SWEEP_EVERY {
                last_sweep = Instant::now();
                purge_ended(&app);
                sweep_uploads(&app);
                purge_sessions(&app);
            }
        }
    }
}

/// Logs each certificate warning when it first appears, and again a day later while it
/// holds (the same warnings `GET /api/health` lists).
fn log_warnings(app: &App, logged: &mut HashMap<String, Instant>) {
    let certs = match app.certificates() {
        Ok(c) => c,
        Err(e) => {
            log::warn!("certificate warnings: {}", Chain(&e));
            return;
        }
    };
    let now = model::now();
    let mut current = Vec::new();
    for e in certs.iter().filter(|e| lifecycle::needs_warning(e, now)) {
        let key = format!("{}:{:?}", e.kind.label(), e.kind.id());
        let again = logged.get(&key).is_none_or(|at| at.elapsed() >= WARN_AGAIN);
        if again {
            for w in lifecycle::warnings(std::slice::from_ref(e), now) {
                log::warn!("{w}");
            }
            logged.insert(key.clone(), Instant::now());
        }
        current.push(key);
    }
    logged.retain(|k, _| current.contains(k));
}

/// After the CAs in force changed: every accepted request's `ca.pem` in the spool gets
/// the new bundle. False when the rewrite failed (tried again on the next tick).
fn refresh_spool(app: &App) -> bool {
    app.spool.set_ca_pem(app.cas.get().bundle_pem());
    match app.spool.reconcile(&app.store) {
        Ok(repair) => {
            log::info!(
                "the spool's ca.pem files now hold the cas in force ({} files written)",
                repair.files_written
            );
            true
        }
        Err(e) => {
            log::warn!("rewrite the spool after the cas changed: {}", Chain(&e));
            false
        }
    }
}

/// Stops trusting aborted CAs whose certificates are all renewed, revoked or ended.
fn end_aborted(app: &App) {
    if app.cas.get().aborted.is_empty() {
        return;
    }
    let _changing = app.cas.changing();
    match crate::pairing::rollover::end_aborted(&app.store, &app.cas.get(), model::now()) {
        Ok(Some(set)) => app.apply_cas(set),
        Ok(None) => {}
        Err(e) => log::warn!("aborted ca sweep: {}", Chain(&e)),
    }
}

/// Retires superseded source certificates whose renewal grace ended (each is an audited
/// event, logged as such).
fn end_graces(app: &App) {
    if let Err(e) = crate::pairing::renewal::end_graces(&app.store, model::now()) {
        log::warn!("renewal grace sweep: {}", Chain(&e));
    }
}

/// Removes partial copies of cut transfers that no session resumed within
/// `partial_retention` (each removal is logged).
fn expire_partials(app: &App) {
    let retention = i64::try_from(app.config.partial_retention.as_secs()).unwrap_or(i64::MAX);
    if let Err(e) = crate::replication::receiver::expire_partials(
        &app.store,
        &app.config.storage,
        &app.replication.ledger,
        retention,
        model::now(),
    ) {
        log::warn!("partial copy sweep: {}", Chain(&e));
    }
}

/// Aborts the uploads into `s3` storages' buckets that no partial row names, started over
/// an hour ago (a session records its upload right after starting it).
fn sweep_uploads(app: &App) {
    let before = model::now().saturating_sub(3600);
    crate::replication::receiver::sweep_uploads(&app.store, &app.config.storage, before);
}

/// Deletes long-ended requests and their spool directories.
fn purge_ended(app: &App) {
    let retention = app.config.request_retention.as_secs() as i64;
    match crate::pairing::target::purge_ended(&app.store, retention, model::now()) {
        Ok(tokens) => {
            if !tokens.is_empty() {
                log::info!(
                    "purged {} requests that ended over {retention} s ago",
                    tokens.len()
                );
            }
            for t in tokens {
                if let Err(e) = app.spool.remove(&t) {
                    log::warn!("{}", Chain(&e));
                }
            }
        }
        Err(e) => log::warn!("purge: {}", Chain(&e)),
    }
}

/// Marks requests whose time ran out and rewrites their spool.
fn sweep_expired(app: &App) {
    match crate::pairing::target::expire_due(&app.store, model::now()) {
        Ok(expired) => {
            for r in expired {
                log::info!("request {} expired", r.id);
                if let Err(e) = app.spool.sync(r.id, &app.store) {
                    log::error!("spool for expired request {}: {}", r.id, Chain(&e));
                }
            }
        }
        Err(e) => log::warn!("expiry sweep: {}", Chain(&e)),
    }
    let behind = app.spool.retry_dirty(&app.store);
    if behind > 0 {
        log::warn!("{behind} spool entries are behind the database; retrying");
    }
}

/// Applies every source's retention policy (what it lets go moves to the recycle bin),
/// then purges what stayed in the bins past `recycle_days`.
fn keep_retention(app: &App) {
    let bin = Bin {
        store: &app.store,
        ledger: &app.replication.ledger,
        storages: &app.config.storage,
        recycler: &app.replication.recycler,
    };
    let now = model::now();
    match recycle::apply_retention(&bin, now) {
        Ok(run) if run.moved > 0 => log::info!(
            "retention moved {} backups ({} bytes) to the recycle bins",
            run.moved,
            run.bytes
        ),
        Ok(_) => {}
        Err(e) => log::warn!("retention: {}", Chain(&e)),
    }
    match recycle::purge_expired(&bin, app.config.recycle_days, now) {
        Ok(0) => {}
        Ok(n) => log::info!("purged {n} backups older than recycle_days from the recycle bins"),
        Err(e) => log::warn!("recycle bin purge: {}", Chain(&e)),
    }
}

/// Deletes sessions past their idle or absolute end.
fn purge_sessions(app: &App) {
    match app.auth.purge_expired(model::now()) {
        Ok(n) if n > 0 => log::info!("swept {n} expired sessions"),
        Ok(_) => {}
        Err(e) => log::warn!("session sweep: {}", Chain(&e)),
    }
}
