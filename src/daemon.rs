//! Wiring: prepare the data directory (database, CA, listener certificates, first user),
//! start the API front, the tiny_http backend and its workers, the tunnel server, run
//! maintenance, and shut down in order on SIGTERM/SIGINT. Owns no policy of its own.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::api::{self, App};
use crate::auth::{AuthError, Authenticator, SessionRules, Throttle};
use crate::ca::{Ca, CaError};
use crate::config::Config;
use crate::front::{self, PeerTable};
use crate::identity::{IdentityError, ListenerCert, ListenerFiles, TargetDirs};
use crate::listener::{self, Endpoint};
use crate::model::Chain;
use crate::pairing::poller::{spawn_poller, SourceContext};
use crate::pairing::source::request::Outgoing;
use crate::spool::{Spool, SpoolError};
use crate::store::{Store, StoreError};
use crate::tls::{ServerCertSlot, TlsError};
use crate::{fsx, lifecycle, memory, model, notify, tls, tunnel};

/// How long shutdown waits for requests in flight.
const DRAIN: Duration = Duration::from_secs(10);
/// How often the certificate warnings are computed (and new ones logged).
const WARN_EVERY: Duration = Duration::from_secs(60);
/// A warning still true is logged again after this.
const WARN_AGAIN: Duration = Duration::from_secs(86_400);
/// How often expired sessions and long-ended requests are swept.
const SWEEP_EVERY: Duration = Duration::from_secs(600);
/// How often pending requests are checked for expiry (a scan of the open index only).
const EXPIRY_EVERY: Duration = Duration::from_secs(1);

/// Why the daemon could not start, each with what to look at.
#[derive(Debug)]
pub enum DaemonError {
    /// A file or directory of the daemon's own could not be read, written or created
    /// (permissions, a full disk, a symlink where a file belongs).
    File { path: PathBuf, source: io::Error },
    /// A file of the daemon's own is not text (damaged or replaced).
    NotText {
        path: PathBuf,
        source: std::string::FromUtf8Error,
    },
    /// `ca.pem` exists without `ca.key`: restore the key from backup. A new CA would
    /// invalidate every certificate it issued, so the daemon refuses to make one.
    CaKeyMissing { cert: PathBuf, key: PathBuf },
    /// The appliance CA or a listener certificate could not be loaded, created or issued.
    Ca { action: String, source: CaError },
    /// The database could not be opened or read.
    Store {
        action: &'static str,
        source: StoreError,
    },
    /// A listener's TLS configuration was refused (its certificate or key).
    Tls {
        listener: &'static str,
        source: TlsError,
    },
    /// A listen address could not be bound (in use, not local, no permission).
    Bind {
        setting: &'static str,
        addr: SocketAddr,
        source: io::Error,
    },
    /// The internal loopback listener for tiny_http could not be set up.
    Backend(Box<dyn std::error::Error + Send + Sync>),
    /// The spool could not be opened or reconciled with the database.
    Spool {
        action: &'static str,
        source: SpoolError,
    },
    /// The authenticator could not start, or the first user not be created.
    Auth {
        action: &'static str,
        source: AuthError,
    },
    /// The pairing directories could not be prepared.
    Identity(IdentityError),
    /// A thread could not be started (a process or memory limit).
    Spawn {
        what: &'static str,
        source: io::Error,
    },
}

impl fmt::Display for DaemonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DaemonError::File { path, .. } | DaemonError::NotText { path, .. } => {
                write!(f, "{}", path.display())
            }
            DaemonError::CaKeyMissing { cert, key } => write!(
                f,
                "{} exists but {} is missing: restore the ca key from backup (refusing to create a new ca, \
                 which would invalidate every issued certificate)",
                cert.display(),
                key.display()
            ),
            DaemonError::Ca { action, .. } => f.write_str(action),
            DaemonError::Store { action, .. }
            | DaemonError::Spool { action, .. }
            | DaemonError::Auth { action, .. } => f.write_str(action),
            DaemonError::Tls { listener, .. } => write!(f, "{listener} tls"),
            DaemonError::Bind { setting, addr, .. } => write!(f, "{setting} {addr}"),
            DaemonError::Backend(_) => f.write_str("internal listener"),
            DaemonError::Identity(e) => write!(f, "{e}"),
            DaemonError::Spawn { what, .. } => write!(f, "start {what}"),
        }
    }
}

impl std::error::Error for DaemonError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DaemonError::File { source, .. }
            | DaemonError::Bind { source, .. }
            | DaemonError::Spawn { source, .. } => Some(source),
            DaemonError::NotText { source, .. } => Some(source),
            DaemonError::CaKeyMissing { .. } => None,
            DaemonError::Ca { source, .. } => Some(source),
            DaemonError::Store { source, .. } => Some(source),
            DaemonError::Tls { source, .. } => Some(source),
            DaemonError::Backend(e) => Some(e.as_ref()),
            DaemonError::Spool { source, .. } => Some(source),
            DaemonError::Auth { source, .. } => Some(source),
            DaemonError::Identity(e) => e.source(),
        }
    }
}

fn file_error(path: &Path) -> impl FnOnce(io::Error) -> DaemonError + '_ {
    move |source| DaemonError::File {
        path: path.to_path_buf(),
        source,
    }
}

fn spawn_error(what: &'static str) -> impl FnOnce(io::Error) -> DaemonError {
    move |source| DaemonError::Spawn { what, source }
}

/// Files under `data_dir`.
pub struct Paths {
    pub root: PathBuf,
}

impl Paths {
    pub fn database(&self) -> PathBuf {
        self.root.join("replgate.redb")
    }
    pub fn ca_cert(&self) -> PathBuf {
        self.root.join("ca.pem")
    }
    pub fn ca_key(&self) -> PathBuf {
        self.root.join("ca.key")
    }
    pub fn listener_cert(&self, name: &str) -> PathBuf {
        self.root.join(format!("{name}.pem"))
    }
    pub fn listener_key(&self, name: &str) -> PathBuf {
        self.root.join(format!("{name}.key"))
    }
    pub fn admin_password(&self) -> PathBuf {
        self.root.join("admin-password")
    }
    pub fn spool(&self) -> PathBuf {
        self.root.join("spool")
    }
    /// One directory per pairing with a target (laid out by `identity`).
    pub fn targets(&self) -> PathBuf {
        self.root.join("targets")
    }
}

static STOP: AtomicBool = AtomicBool::new(false);
/// The signal that asked to stop, and the process that sent it (for the log).
static STOP_SIGNAL: AtomicI32 = AtomicI32::new(0);
static STOP_SENDER: AtomicI32 = AtomicI32::new(0);
/// Set by SIGHUP: read the configuration again (for `hostnames`).
static RELOAD: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(sig: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel hands a valid siginfo_t to an SA_SIGINFO handler.
    let sender = if info.is_null() {
        0
    } else {
        unsafe { (*info).si_pid() }
    };
    STOP_SIGNAL.store(sig, Ordering::SeqCst);
    STOP_SENDER.store(sender, Ordering::SeqCst);
    STOP.store(true, Ordering::SeqCst);
}

extern "C" fn on_hangup(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    RELOAD.store(true, Ordering::SeqCst);
}

type Handler = extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void);

fn install_signal_handlers() {
    // SAFETY: the handlers only store to atomics, which is async-signal-safe; the
    // sigaction struct is zeroed (an empty mask) before its fields are set.
    unsafe {
        let install = |sig: libc::c_int, handler: Handler| {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = handler as usize;
            action.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
            libc::sigaction(sig, &action, std::ptr::null_mut());
        };
        install(libc::SIGTERM, on_signal);
        install(libc::SIGINT, on_signal);
        install(libc::SIGHUP, on_hangup);
        // A peer closing a socket mid-write must not kill the daemon.
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
}

fn read_text(path: &Path) -> Result<String, DaemonError> {
    let bytes = fsx::read_regular_nofollow(path, 1024 * 1024).map_err(file_error(path))?;
    String::from_utf8(bytes).map_err(|source| DaemonError::NotText {
        path: path.to_path_buf(),
        source,
    })
}

/// Loads the appliance CA, creating it on first start. A key without its certificate is
/// what a crash during the very first start leaves: nothing was issued yet, so start over.
fn load_or_create_ca(paths: &Paths, system_uuid: &str) -> Result<Ca, DaemonError> {
    let (cert, key) = (paths.ca_cert(), paths.ca_key());
    match (cert.exists(), key.exists()) {
        (true, true) => {
            Ca::from_pem(&read_text(&cert)?, &read_text(&key)?).map_err(|source| DaemonError::Ca {
                action: "load the appliance ca".into(),
                source,
            })
        }
        (true, false) => Err(DaemonError::CaKeyMissing { cert, key }),
        _ => {
            let cn = format!("replgate CA {}", &system_uuid[..8.min(system_uuid.len())]);
            let ca = Ca::generate(&cn, time::OffsetDateTime::now_utc()).map_err(|source| {
                DaemonError::Ca {
                    action: "create the appliance ca".into(),
                    source,
                }
            })?;
            fsx::write_atomic(&key, ca.key_pem().as_bytes()).map_err(file_error(&key))?;
            fsx::write_atomic(&cert, ca.cert_pem().as_bytes()).map_err(file_error(&cert))?;
            log::info!("created the appliance CA, fingerprint {}", ca.fingerprint());
            Ok(ca)
        }
    }
}

/// Names and addresses a listener certificate must cover, for `hostnames`.
fn certificate_names(config: &Config, hostnames: &[String]) -> (Vec<String>, Vec<IpAddr>) {
    let mut ips: Vec<IpAddr> = vec![
        config.api_listen.ip(),
        config.tunnel_listen.ip(),
        IpAddr::from([127, 0, 0, 1]),
    ];
    let mut names = Vec::new();
    for h in hostnames {
        match h.parse::<IpAddr>() {
            Ok(ip) => ips.push(ip),
            Err(_) => names.push(h.clone()),
        }
    }
    ips.retain(|ip| !ip.is_unspecified());
    ips.sort();
    ips.dedup();
    (names, ips)
}

/// One listener's server certificate: its files, the slot its listener presents at each
/// handshake, and what the certificate in the slot was issued for and until when.
struct ListenerCertificate {
    name: &'static str,
    files: ListenerFiles,
    slot: Arc<ServerCertSlot>,
    current: ListenerCert,
    names: String,
}

impl ListenerCertificate {
    /// Loads the stored certificate of listener `name`, or issues one when it is missing,
    /// damaged (a crash between its files), issued for other names or due.
    fn open(
        paths: &Paths,
        ca: &Ca,
        name: &'static str,
        config: &Config,
    ) -> Result<ListenerCertificate, DaemonError> {
        let files = ListenerFiles::new(&paths.root, name);
        let names = names_text(config, &config.hostnames);
        let stored = files.load(&names).map_err(DaemonError::Identity)?;
        let current = match stored {
            Some(c) if model::now() < lifecycle::listener_renew_at(c.not_before, c.not_after) => c,
            _ => issue_listener_cert(ca, name, config, &config.hostnames, &files)?,
        };
        let slot = ServerCertSlot::new(&current.chain_pem, &current.key_pem).map_err(|source| {
            DaemonError::Tls {
                listener: name,
                source,
            }
        })?;
        Ok(ListenerCertificate {
            name,
            files,
            slot,
            current,
            names,
        })
    }

    /// Re-issues the certificate when it is due or `hostnames` changed, and swaps it in
    /// under the running listener (open connections keep theirs). A failure is logged and
    /// tried again on the next look.
    fn keep_fresh(&mut self, ca: &Ca, config: &Config, hostnames: &[String]) {
        let names = names_text(config, hostnames);
        let due = model::now()
            >= lifecycle::listener_renew_at(self.current.not_before, self.current.not_after);
        if !due && names == self.names {
            return;
        }
        let renewed = issue_listener_cert(ca, self.name, config, hostnames, &self.files)
            .map_err(|e| Chain(&e).to_string())
            .and_then(|fresh| {
                self.slot
                    .replace(&fresh.chain_pem, &fresh.key_pem)
                    .map(|()| fresh)
                    .map_err(|e| Chain(&e).to_string())
            });
        match renewed {
            Ok(fresh) => {
                log::info!(
                    "renewed the {} listener certificate while running: serial {} -> {}, valid until {}{}",
                    self.name,
                    self.current.serial,
                    fresh.serial,
                    model::format_utc(fresh.not_after),
                    if names == self.names { "" } else { " (hostnames changed)" }
                );
                self.current = fresh;
                self.names = names;
            }
            Err(e) => log::error!("renew the {} listener certificate: {e}", self.name),
        }
    }
}

/// What a listener certificate's `.names` file records: the names and addresses it covers.
fn names_text(config: &Config, hostnames: &[String]) -> String {
    let (names, ips) = certificate_names(config, hostnames);
    format!("{names:?} {ips:?}")
}

/// Issues a fresh certificate (leaf + CA) for listener `name` and stores it.
fn issue_listener_cert(
    ca: &Ca,
    name: &str,
    config: &Config,
    hostnames: &[String],
    files: &ListenerFiles,
) -> Result<ListenerCert, DaemonError> {
    let (names, ips) = certificate_names(config, hostnames);
    let issued = ca
        .issue_server_cert(
            &names,
            &ips,
            config.server_cert_lifetime,
            time::OffsetDateTime::now_utc(),
        )
        .map_err(|source| DaemonError::Ca {
            action: format!("issue the {name} certificate"),
            source,
        })?;
    let chain = format!("{}{}", issued.cert_pem, ca.cert_pem());
    files
        .store(&chain, &issued.key_pem, &names_text(config, hostnames))
        .map_err(DaemonError::Identity)?;
    log::info!(
        "issued the {name} listener certificate {} for {names:?} {ips:?}, valid until {}",
        issued.serial,
        model::format_utc(issued.not_after)
    );
    let not_before = crate::ca::cert_pem_to_der(&issued.cert_pem)
        .and_then(|der| crate::ca::cert_info(&der))
        .map(|i| i.not_before)
        .unwrap_or_else(|_| model::now());
    Ok(ListenerCert {
        chain_pem: chain,
        key_pem: issued.key_pem,
        not_before,
        not_after: issued.not_after,
        serial: issued.serial,
    })
}

/// The hostnames after a SIGHUP: the config file and environment read again, as at start.
/// Only `hostnames` is taken; other keys take effect at the next start.
fn reload_hostnames(config_path: Option<&Path>, current: &[String]) -> Vec<String> {
    match Config::load(config_path) {
        Ok(fresh) => {
            if fresh.hostnames == current {
                log::info!("SIGHUP: configuration read again; hostnames unchanged {current:?}");
            } else {
                log::info!(
                    "SIGHUP: hostnames {current:?} -> {:?}; re-issuing the listener certificates \
                     (other settings take effect at the next start)",
                    fresh.hostnames
                );
            }
            fresh.hostnames
        }
        Err(e) => {
            log::warn!("SIGHUP: {e}; keeping hostnames {current:?}");
            current.to_vec()
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

/// Retires superseded source certificates whose renewal grace ended (each is an audited
/// event, logged as such).
fn end_graces(app: &App) {
    if let Err(e) = crate::pairing::renewal::end_graces(&app.store, model::now()) {
        log::warn!("renewal grace sweep: {}", Chain(&e));
    }
}

/// Creates `root` when the database has no users: the password comes from
/// `REPLGATE_ADMIN_PASSWORD`, or is generated and written once to a 0600 file.
fn bootstrap_root(auth: &Authenticator, store: &Store, paths: &Paths) -> Result<(), DaemonError> {
    let count = store.user_count().map_err(|source| DaemonError::Store {
        action: "count users",
        source,
    })?;
    if count > 0 {
        if std::env::var_os("REPLGATE_ADMIN_PASSWORD").is_some_and(|p| !p.is_empty()) {
            log::warn!(
                "REPLGATE_ADMIN_PASSWORD ignored: the database in {} already has users; it \
                 only sets root's password at the first start (change a password with \
                 `replgate ctl users set NAME --password`)",
                paths.root.display()
            );
        }
        return Ok(());
    }
    let password = match std::env::var("REPLGATE_ADMIN_PASSWORD") {
        Ok(p) if !p.is_empty() => p,
        _ => {
            let path = paths.admin_password();
            let password = generated_password(&path).map_err(file_error(&path))?;
            log::warn!(
                "created user root; its generated password is in {} (mode 0600)",
                path.display()
            );
            password
        }
    };
    auth.bootstrap_root(&password, model::now())
        .map_err(|source| DaemonError::Auth {
            action: "create user root",
            source,
        })?;
    Ok(())
}

/// The generated root password in `path`, written once. A crash after writing the file
/// but before creating the user leaves the file: reuse it, so the password an admin may
/// already have read stays true. An empty or blank file (what a crash during the
/// non-atomic write of older versions left) counts as missing: it is replaced by a fresh
/// password rather than giving root an empty one.
fn generated_password(path: &Path) -> std::io::Result<String> {
    let existing = match fsx::read_regular_nofollow(path, 1024) {
        Ok(bytes) => Some(String::from_utf8_lossy(&bytes).trim().to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    match existing {
        Some(password) if !password.is_empty() => return Ok(password),
        Some(_) => {
            log::warn!("{} is empty; writing a new password", path.display());
            fsx::remove_file_durable(path)?;
        }
        None => {}
    }
    let password = crate::rand::hex_string(12);
    fsx::write_new_private(path, format!("{password}\n").as_bytes())?;
    Ok(password)
}

fn bind(addr: SocketAddr, setting: &'static str) -> Result<TcpListener, DaemonError> {
    TcpListener::bind(addr).map_err(|source| DaemonError::Bind {
        setting,
        addr,
        source,
    })
}

/// What accepted sources are told to dial: the tunnel listener, with the first of
/// `hostnames` (an address its certificate names, unlike the free-form `name`) when it
/// listens on every address.
fn tunnel_endpoint(config: &Config) -> String {
    let addr = config.tunnel_listen;
    if addr.ip().is_unspecified() {
        let host = config.hostnames.first().map_or("localhost", String::as_str);
        format!("{host}:{}", addr.port())
    } else {
        addr.to_string()
    }
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

/// A crash between writing a new pairing key and committing its target row leaves a
/// directory no row names, and one during a renewal or a new request a key generation no
/// row names: remove them.
fn remove_orphan_target_dirs(store: &Store, dirs: &TargetDirs) {
    let targets = match store.targets() {
        Ok(t) => t,
        Err(e) => {
            log::warn!("targets: {}", Chain(&e));
            return;
        }
    };
    for t in &targets {
        let removed = dirs
            .open(&t.dir)
            .and_then(|d| d.remove_generations_except(&t.generations_in_use()));
        match removed {
            Ok(paths) => {
                for path in paths {
                    log::warn!(
                        "removed {}: no generation of target {} uses it",
                        path.display(),
                        t.id
                    );
                }
            }
            Err(e) => log::warn!("target {}: unused key generations: {}", t.id, Chain(&e)),
        }
    }
    let known: Vec<&str> = targets.iter().map(|t| t.dir.as_str()).collect();
    match dirs.remove_unknown(&known) {
        Ok(removed) => {
            for path in removed {
                log::warn!("removed {}: no target uses it", path.display());
            }
        }
        Err(e) => log::warn!("remove unused pairing directories: {}", Chain(&e)),
    }
}

/// The two listeners' limits from the configuration. They share the process's
/// descriptors, so the connection cap is clamped to what the open-file limit carries with
/// both listeners full.
fn listener_limits(config: &Config) -> (front::Limits, tunnel::Limits) {
    let per_listener = listener::clamp_to_fd_limit(
        config.max_connections,
        front::FDS_PER_CONNECTION + tunnel::FDS_PER_CONNECTION,
    );
    let connections = listener::Limits {
        max_connections: per_listener,
        max_connections_per_address: config.max_connections_per_address.min(per_listener),
        handshake_timeout: config.handshake_timeout,
    };
    let api = front::Limits {
        connections: connections.clone(),
        idle_timeout: config.idle_timeout,
        head_timeout: config.head_timeout,
        max_head_bytes: config.max_head_bytes,
        max_body_bytes: config.max_body_bytes,
    };
    let tunnel = tunnel::Limits {
        connections,
        idle_timeout: config.idle_timeout,
        head_timeout: config.head_timeout,
        max_head_bytes: config.max_head_bytes,
    };
    (api, tunnel)
}

/// Runs the daemon until SIGTERM or SIGINT. `config_path` is where `config` came from
/// (`--config`, or None for the packaged file or the defaults): SIGHUP reads it again for
/// `hostnames`.
pub fn run(config: Config, config_path: Option<&Path>) -> Result<(), DaemonError> {
    install_signal_handlers();
    memory::configure();
    if config.fault != crate::config::Fault::None {
        log::warn!(
            "fault injection is on (fault = {:?}): this daemon will crash on purpose; \
             remove `fault` outside crash tests",
            config.fault
        );
    }
    let paths = Paths {
        root: config.data_dir.clone(),
    };
    fsx::ensure_private_dir(&paths.root).map_err(file_error(&paths.root))?;
    let store = Store::open(&paths.database()).map_err(|source| DaemonError::Store {
        action: "open the database",
        source,
    })?;
    // Holding the database lock, this is the only process writing the data directory.
    match fsx::sweep_temporaries(&paths.root) {
        Ok(0) => {}
        Ok(n) => log::info!(
            "removed {n} temporary files a crash left in {}",
            paths.root.display()
        ),
        Err(e) => log::warn!("{}: {e}", paths.root.display()),
    }
    let system_uuid = store
        .write(|tx| tx.system_uuid_or_insert(crate::rand::uuid_v4))
        .map_err(|source| DaemonError::Store {
            action: "system uuid",
            source,
        })?;
    let started = model::now();
    let first_start = store
        .write(|tx| tx.first_start_or_insert(started))
        .map_err(|source| DaemonError::Store {
            action: "first start time",
            source,
        })?;
    let ca = Arc::new(load_or_create_ca(&paths, &system_uuid)?);
    let mut listener_certs = [
        ListenerCertificate::open(&paths, &ca, "api", &config)?,
        ListenerCertificate::open(&paths, &ca, "tunnel", &config)?,
    ];

    let auth = Authenticator::new(
        store.clone(),
        SessionRules {
            idle: config.session_idle,
            lifetime: config.session_lifetime,
        },
        Throttle::new(
            config.login_max_failures,
            config.login_window,
            config.login_delay_max,
        ),
    )
    .map_err(|source| DaemonError::Auth {
        action: "authenticator",
        source,
    })?;
    bootstrap_root(&auth, &store, &paths)?;

    let api_tls = tls::api_server_config(listener_certs[0].slot.clone()).map_err(|source| {
        DaemonError::Tls {
            listener: "api",
            source,
        }
    })?;
    let tunnel_tls = tls::tunnel_server_config(
        listener_certs[1].slot.clone(),
        ca.cert_der(),
        Arc::new(tunnel::StoreRevocations(store.clone())),
    )
    .map_err(|source| DaemonError::Tls {
        listener: "tunnel",
        source,
    })?;

    // The backend: tiny_http on a private loopback port that only the fronts connect to.
    // TCP_NODELAY on the accepted sockets: tiny_http writes a response's head and body
    // separately, and Nagle would hold the body for the delayed ACK (about 40 ms).
    let backend_listener = front::bind_backend().map_err(|e| DaemonError::Backend(Box::new(e)))?;
    let backend =
        tiny_http::Server::from_listener(backend_listener, None).map_err(DaemonError::Backend)?;
    let backend_addr = backend
        .server_addr()
        .to_ip()
        .ok_or_else(|| DaemonError::Backend("the listener has no ip address".into()))?;
    let backend = Arc::new(backend);

    let (api_limits, tunnel_limits) = listener_limits(&config);
    let peers = Arc::new(PeerTable::new());
    let shutdown = Arc::new(AtomicBool::new(false));
    let api_listener = bind(config.api_listen, "api_listen")?;
    let tunnel_listener = bind(config.tunnel_listen, "tunnel_listen")?;

    let spool = Spool::open(
        paths.spool(),
        ca.cert_pem().to_string(),
        tunnel_endpoint(&config),
        config.poll_interval.as_secs(),
    )
    .map_err(|source| DaemonError::Spool {
        action: "open the spool",
        source,
    })?;
    let repair = spool
        .reconcile(&store)
        .map_err(|source| DaemonError::Spool {
            action: "reconcile the spool",
            source,
        })?;
    if repair != Default::default() {
        // Normal after a crash between a commit and its spool write, or after a restore
        // (the spool is derived and not backed up): nothing is lost, the files now say
        // what the database says.
        log::info!(
            "spool brought in line with the database at start: {} files written, {} removed, \
             {} stray directories removed (expected after a crash or a restore; the database \
             is the truth)",
            repair.files_written,
            repair.files_removed,
            repair.dirs_removed
        );
    }
    if let Some(default) = config
        .storage
        .iter()
        .find(|s| s.path == paths.root.join("storage"))
    {
        fsx::ensure_private_dir(&default.path).map_err(file_error(&default.path))?;
    }

    // Replication: finish what a crash interrupted on the target side, load the settings.
    match crate::replication::receiver::repair(&store, &config.storage, model::now()) {
        Ok(r) if r != Default::default() => log::warn!(
            "replication repaired at start: {} interrupted commits finished, {} partial copies dropped, {} stray partial files removed",
            r.finished, r.dropped, r.swept
        ),
        Ok(_) => {}
        Err(source) => {
            return Err(DaemonError::Store {
                action: "repair received backups",
                source,
            })
        }
    }
    let replication = Arc::new(crate::replication::Shared::load(&store).map_err(|source| {
        DaemonError::Store {
            action: "load the replication settings",
            source,
        }
    })?);
    let verifier = crate::jobs::verify::spawn_verifier(
        replication.verifier.clone(),
        store.clone(),
        shutdown.clone(),
    )
    .map_err(spawn_error("the verify job"))?;

    let target_dirs = TargetDirs::new(paths.targets());
    target_dirs.ensure().map_err(DaemonError::Identity)?;
    remove_orphan_target_dirs(&store, &target_dirs);
    let app = Arc::new(App {
        api_cert: listener_certs[0].slot.clone(),
        tunnel_cert: listener_certs[1].slot.clone(),
        ca_fingerprint: ca.fingerprint(),
        ca: ca.clone(),
        spool,
        config: config.clone(),
        store: store.clone(),
        auth,
        peers: peers.clone(),
        system_uuid: system_uuid.clone(),
        target_dirs: target_dirs.clone(),
        outgoing: Outgoing::new(),
        first_start,
        started,
        replication: replication.clone(),
    });
    let replicator = crate::jobs::replicator::spawn_replicator(
        Arc::new(crate::jobs::replicator::Context {
            store: store.clone(),
            shared: replication.clone(),
            root: config.replication_storage().map(|s| s.path.clone()),
            dirs: target_dirs.clone(),
            heartbeat: config.heartbeat_interval,
        }),
        shutdown.clone(),
    )
    .map_err(spawn_error("the replicator"))?;
    let poller = spawn_poller(
        Arc::new(SourceContext {
            store: store.clone(),
            dirs: target_dirs,
            poll_interval: config.poll_interval,
            heartbeat: config.heartbeat_interval,
            system_uuid: system_uuid.clone(),
            name: config.name().to_string(),
            asset_tag: config.asset_tag.clone(),
            fault: config.fault,
        }),
        shutdown.clone(),
    )
    .map_err(spawn_error("the poller"))?;
    let workers = api::spawn_workers(
        app.clone(),
        backend.clone(),
        config.workers,
        shutdown.clone(),
    )
    .map_err(spawn_error("the api workers"))?;
    let endpoint = |name: &str, socket, tls| Endpoint {
        name: name.to_owned(),
        socket,
        tls,
        shutdown: shutdown.clone(),
    };
    let fronts = vec![
        front::spawn(
            endpoint("api", api_listener, api_tls),
            api_limits,
            front::Backend {
                addr: backend_addr,
                peers: peers.clone(),
                local: Some(Arc::new(api::SpoolAnswerer::new(app.clone()))),
            },
        )
        .map_err(spawn_error("the api listener"))?,
        tunnel::spawn(
            endpoint("tunnel", tunnel_listener, tunnel_tls),
            tunnel::Server {
                state: tunnel::App {
                    store: store.clone(),
                    storage: config.storage.clone(),
                    replication: replication.clone(),
                    ca: ca.clone(),
                    client_lifetime: config.client_cert_lifetime,
                    renew_grace: config.renew_grace,
                    fault: config.fault,
                },
                routes: tunnel::routes::table(),
                limits: tunnel_limits,
                revocations: Arc::new(tunnel::StoreRevocations(store.clone())),
            },
        )
        .map_err(spawn_error("the tunnel listener"))?,
    ];
    log::info!(
        "replgate {} serving: api https://{} tunnel {} internal {} data {} system {} ca {}",
        env!("CARGO_PKG_VERSION"),
        fronts[0].local_addr(),
        fronts[1].local_addr(),
        backend_addr,
        paths.root.display(),
        system_uuid,
        app.ca_fingerprint
    );
    notify::send("READY=1");

    let mut last_sweep = Instant::now();
    let mut last_expiry = Instant::now();
    let mut threads = memory::thread_count();
    let mut last_warning = Instant::now();
    let mut warned = HashMap::new();
    let mut hostnames = config.hostnames.clone();
    sweep_expired(&app);
    purge_ended(&app);
    end_graces(&app);
    log_warnings(&app, &mut warned);
    while !STOP.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(100));
        let reload = RELOAD.swap(false, Ordering::SeqCst);
        if reload {
            hostnames = reload_hostnames(config_path, &hostnames);
        }
        if reload || last_expiry.elapsed() >= EXPIRY_EVERY {
            for cert in &mut listener_certs {
                cert.keep_fresh(&app.ca, &config, &hostnames);
            }
        }
        if last_warning.elapsed() >= WARN_EVERY {
            last_warning = Instant::now();
            log_warnings(&app, &mut warned);
        }
        if last_expiry.elapsed() >= EXPIRY_EVERY {
            last_expiry = Instant::now();
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
        if last_sweep.elapsed() >= SWEEP_EVERY {
            last_sweep = Instant::now();
            purge_ended(&app);
            match app.auth.purge_expired(model::now()) {
                Ok(n) if n > 0 => log::info!("swept {n} expired sessions"),
                Ok(_) => {}
                Err(e) => log::warn!("session sweep: {}", Chain(&e)),
            }
        }
    }

    log::info!(
        "shutting down on signal {} from pid {}: no new connections, draining requests in flight",
        STOP_SIGNAL.load(Ordering::SeqCst),
        STOP_SENDER.load(Ordering::SeqCst)
    );
    notify::send("STOPPING=1");
    shutdown.store(true, Ordering::SeqCst);
    let deadline = Instant::now() + DRAIN;
    for f in fronts {
        f.join(deadline.saturating_duration_since(Instant::now()));
    }
    backend.unblock();
    for w in workers {
        let _ = w.join();
    }
    let _ = poller.join();
    let _ = replicator.join();
    let _ = verifier.join();
    log::info!("stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A data directory with a database and an authenticator over it, as `run` makes them.
    fn first_start(name: &str) -> (Paths, Store, Authenticator) {
        let root =
            std::env::temp_dir().join(format!("replgate-daemon-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        fsx::ensure_private_dir(&root).unwrap();
        let paths = Paths { root };
        let store = Store::open(&paths.database()).unwrap();
        let rules = SessionRules {
            idle: Duration::from_secs(60),
            lifetime: Duration::from_secs(600),
        };
        let auth = Authenticator::new(
            store.clone(),
            rules,
            Throttle::new(5, Duration::from_secs(60), Duration::from_secs(30)),
        )
        .unwrap();
        (paths, store, auth)
    }

    /// Regression: the password file used to be created, then written; a kill between the
    /// two left it empty, and the next start gave root the empty password.
    #[test]
    fn an_empty_admin_password_file_at_first_start_never_becomes_roots_password() {
        for (name, left_by_a_crash) in [("empty", ""), ("blank", " \n")] {
            let (paths, store, auth) = first_start(name);
            std::fs::write(paths.admin_password(), left_by_a_crash).unwrap();
            bootstrap_root(&auth, &store, &paths).unwrap();
            let root = store.user("root").unwrap().unwrap();
            assert!(!crate::auth::verify_password("", &root.password_hash));
            assert!(!crate::auth::verify_password(
                left_by_a_crash,
                &root.password_hash
            ));
            let file = std::fs::read_to_string(paths.admin_password()).unwrap();
            let password = file.trim();
            assert_eq!(password.len(), 24, "{file:?}");
            assert_eq!(file, format!("{password}\n"));
            assert!(crate::auth::verify_password(password, &root.password_hash));
            std::fs::remove_dir_all(&paths.root).unwrap();
        }
    }

    #[test]
    fn a_written_admin_password_is_reused_after_a_crash_before_the_user_was_created() {
        let (paths, store, auth) = first_start("reuse-password");
        std::fs::write(paths.admin_password(), "kept-from-before\n").unwrap();
        bootstrap_root(&auth, &store, &paths).unwrap();
        let root = store.user("root").unwrap().unwrap();
        assert!(crate::auth::verify_password(
            "kept-from-before",
            &root.password_hash
        ));
        assert_eq!(
            std::fs::read_to_string(paths.admin_password()).unwrap(),
            "kept-from-before\n"
        );
        std::fs::remove_dir_all(&paths.root).unwrap();
    }
}
