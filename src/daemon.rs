//! Wiring: prepare the data directory (`startup`), bind the listeners (`listeners`),
//! start the API workers, the fronts and the jobs, wait for a signal (`signals`), and shut
//! down in order. Owns no policy and runs no schedule of its own: the threads that do are
//! in `jobs`.

mod error;
mod listeners;
mod signals;
mod startup;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use self::error::spawn_error;
pub use self::error::DaemonError;
pub use self::startup::Paths;
use self::startup::Prepared;
use crate::api::{self, App};
use crate::config::{Config, Fault};
use crate::front::PeerTable;
use crate::identity::TargetDirs;
use crate::jobs::listener_certs::ListenerCertificate;
use crate::jobs::maintenance::{spawn_maintenance, Maintenance};
use crate::jobs::poller::spawn_poller;
use crate::jobs::renewer::SourceContext;
use crate::listener::Listener;
use crate::pairing::source::request::Outgoing;
use crate::spool::Spool;
use crate::{memory, notify, replication};

/// How long shutdown waits for requests in flight.
const DRAIN: Duration = Duration::from_secs(10);

/// Runs the daemon until SIGTERM or SIGINT. `config_path` is where `config` came from
/// (`--config`, or None for the packaged file or the defaults): SIGHUP reads it again for
/// `hostnames`.
pub fn run(config: Config, config_path: Option<&Path>) -> Result<(), DaemonError> {
    signals::install();
    memory::configure();
    if config.fault != Fault::None {
        log::warn!(
            "fault injection is on (fault = {:?}): this daemon will crash on purpose; \
             remove `fault` outside crash tests",
            config.fault
        );
    }
    let paths = Paths {
        root: config.data_dir.clone(),
    };
    let prepared = startup::prepare(&paths, &config)?;
    let sockets = listeners::open(&config, &prepared)?;
    let spool = startup::open_spool(&paths, &config, &prepared.cas.get(), &prepared.store)?;
    let replication = startup::prepare_replication(&paths, &config, &prepared.store)?;
    let target_dirs = startup::prepare_target_dirs(&paths, &prepared.store)?;
    let (app, listener_certs) = shared_state(
        prepared,
        config,
        spool,
        replication,
        target_dirs,
        sockets.peers.clone(),
    );

    let shutdown = Arc::new(AtomicBool::new(false));
    let mut jobs = spawn_jobs(&app, &shutdown)?;
    let backend = sockets.backend.clone();
    let workers = api::spawn_workers(
        app.clone(),
        backend.clone(),
        app.config.workers,
        shutdown.clone(),
    )
    .map_err(spawn_error("the api workers"))?;
    let fronts = listeners::serve(sockets, &app, &shutdown)?;
    log::info!(
        "replgate {} serving: api https://{} tunnel {} internal {} data {} system {} ca {}",
        env!("CARGO_PKG_VERSION"),
        fronts[0].local_addr(),
        fronts[1].local_addr(),
        backend.server_addr(),
        paths.root.display(),
        app.system_uuid,
        app.ca_fingerprint()
    );
    notify::send("READY=1");

    let maintenance = Maintenance {
        app: app.clone(),
        listener_certs,
        config_path: config_path.map(Path::to_path_buf),
        reload: signals::hangup(),
    };
    jobs.push(
        spawn_maintenance(maintenance, shutdown.clone())
            .map_err(spawn_error("the maintenance job"))?,
    );
    signals::wait_for_stop();
    stop(Running {
        shutdown,
        fronts,
        backend,
        workers,
        jobs,
    });
    Ok(())
}

/// The state the API workers, the fronts and the jobs share, and the listener
/// certificates, which go to the maintenance job once the listeners run.
fn shared_state(
    prepared: Prepared,
    config: Config,
    spool: Spool,
    replication: Arc<replication::Shared>,
    target_dirs: TargetDirs,
    peers: Arc<PeerTable>,
) -> (Arc<App>, Vec<ListenerCertificate>) {
    let Prepared {
        store,
        system_uuid,
        started,
        first_start,
        cas,
        client_trust,
        listener_certs,
        auth,
    } = prepared;
    let app = App {
        api_cert: listener_certs[0].slot(),
        tunnel_cert: listener_certs[1].slot(),
        cas,
        client_trust,
        spool,
        config,
        store,
        auth,
        peers,
        system_uuid,
        target_dirs,
        outgoing: Outgoing::new(),
        first_start,
        started,
        replication,
        certified: Default::default(),
        request_counts: Default::default(),
        system_rows: Default::default(),
        receive_lines: Default::default(),
        expiry_lines: Default::default(),
    };
    (Arc::new(app), listener_certs)
}

/// Starts the jobs that run beside the listeners: the target's verify job, the source's
/// replicator, its pairing poller and its restore job. Each stops when `shutdown` is set.
fn spawn_jobs(
    app: &Arc<App>,
    shutdown: &Arc<AtomicBool>,
) -> Result<Vec<JoinHandle<()>>, DaemonError> {
    let config = &app.config;
    let verifier = crate::jobs::verify::spawn_verifier(
        app.replication.verifier.clone(),
        app.store.clone(),
        crate::jobs::verify::Schedule {
            storages: config.storage.clone(),
            interval: config.verify_interval,
        },
        shutdown.clone(),
    )
    .map_err(spawn_error("the verify job"))?;
    let replicator = crate::jobs::replicator::spawn_replicator(
        Arc::new(crate::jobs::replicator::Context {
            store: app.store.clone(),
            shared: app.replication.clone(),
            root: config.replication_storage().map(|s| s.path.clone()),
            dirs: app.target_dirs.clone(),
            heartbeat: config.heartbeat_interval,
            dedup: config.dedup,
            compression: config.compression,
            congestion: config.tunnel_congestion.clone(),
        }),
        shutdown.clone(),
    )
    .map_err(spawn_error("the replicator"))?;
    let poller = spawn_poller(
        Arc::new(SourceContext {
            store: app.store.clone(),
            dirs: app.target_dirs.clone(),
            poll_interval: config.poll_interval,
            heartbeat: config.heartbeat_interval,
            system_uuid: app.system_uuid.clone(),
            name: config.name().to_string(),
            asset_tag: config.asset_tag.clone(),
            fault: config.fault,
        }),
        shutdown.clone(),
    )
    .map_err(spawn_error("the poller"))?;
    let restorer = crate::jobs::restore::spawn_restorer(
        crate::jobs::restore::Context {
            store: app.store.clone(),
            shared: app.replication.clone(),
            storages: config.storage.clone(),
            dirs: app.target_dirs.clone(),
            scratch: config.data_dir.join("drill-scratch"),
            drill_interval: config.drill_interval.as_secs(),
            dedup: config.dedup,
        },
        shutdown.clone(),
    )
    .map_err(spawn_error("the restore job"))?;
    let mut jobs = vec![verifier, replicator, poller, restorer];
    if config.dedup {
        jobs.push(
            crate::jobs::chunk_index::spawn_chunk_index(
                app.store.clone(),
                config.storage.clone(),
                shutdown.clone(),
            )
            .map_err(spawn_error("the chunk index job"))?,
        );
    }
    Ok(jobs)
}

/// What `run` started, for `stop`.
struct Running {
    shutdown: Arc<AtomicBool>,
    fronts: Vec<Listener>,
    backend: Arc<tiny_http::Server>,
    workers: Vec<JoinHandle<()>>,
    jobs: Vec<JoinHandle<()>>,
}

/// Stops in order: the listeners stop accepting and drain (bounded by `DRAIN`), the API
/// workers finish, then each job, last started first. (A job's panic aborts the process
/// in release builds, so a join has nothing to report.)
fn stop(running: Running) {
    let (signal, sender) = signals::stop_cause();
    log::info!(
        "shutting down on signal {signal} from pid {sender}: no new connections, draining requests in flight"
    );
    notify::send("STOPPING=1");
    running.shutdown.store(true, Ordering::SeqCst);
    let deadline = Instant::now() + DRAIN;
    for f in running.fronts {
        f.join(deadline.saturating_duration_since(Instant::now()));
    }
    running.backend.unblock();
    for w in running.workers {
        let _ = w.join();
    }
    for job in running.jobs.into_iter().rev() {
        let _ = job.join();
    }
    log::info!("stopped");
}
