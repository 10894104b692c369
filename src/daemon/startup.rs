//! Before anything serves: the data directory and the database (and the temporaries a
//! crash left), the system's uuid and first start, the CAs the database names (and what a
//! crash during a rollover phase left repaired), the listener certificates, the first
//! user, the spool brought in line with the database, replication's repair of what a
//! crash interrupted, and the pairing directories no row names removed.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::error::{file_error, DaemonError};
use crate::auth::{Authenticator, SessionRules, Throttle};
use crate::ca::{Authority, Ca, CaSet};
use crate::config::Config;
use crate::identity::{CaFiles, TargetDirs};
use crate::jobs::listener_certs::ListenerCertificate;
use crate::model::{self, Chain, Secret, UnixTime};
use crate::pairing::rollover;
use crate::spool::Spool;
use crate::store::{CaState, Store};
use crate::tls::ClientTrust;
use crate::{fsx, replication};

/// Files under `data_dir`.
pub struct Paths {
    pub root: PathBuf,
}

impl Paths {
    pub fn database(&self) -> PathBuf {
        self.root.join("replgate.redb")
    }
    /// The appliance CA's files, one key and certificate per generation.
    pub fn ca_files(&self) -> CaFiles {
        CaFiles::new(&self.root)
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

/// What `prepare` made ready: the database and what it says about this appliance, the
/// CA, the listeners' certificates, the authenticator (with a first user).
pub(super) struct Prepared {
    pub store: Store,
    pub system_uuid: String,
    /// This process's start, and the appliance's first, recorded once.
    pub started: UnixTime,
    pub first_start: UnixTime,
    /// The CAs in force (during a rollover, old and new).
    pub cas: Arc<Authority>,
    /// The CAs whose client certificates open the tunnel, in step with `cas`.
    pub client_trust: Arc<ClientTrust>,
    /// The API listener's, then the tunnel listener's.
    pub listener_certs: Vec<ListenerCertificate>,
    pub auth: Authenticator,
}

/// Opens the data directory and the database, loads or creates the CA and the listener
/// certificates, and makes sure root exists.
pub(super) fn prepare(paths: &Paths, config: &Config) -> Result<Prepared, DaemonError> {
    let store = open_store(paths)?;
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
    let set = load_cas(paths, &store, &system_uuid)?;
    let client_trust =
        ClientTrust::new(set.client_anchors()).map_err(|source| DaemonError::Tls {
            listener: "tunnel",
            source,
        })?;
    let listener_certs = vec![
        ListenerCertificate::open(&paths.root, &set, "api", config)?,
        ListenerCertificate::open(&paths.root, &set, "tunnel", config)?,
    ];
    let auth = authenticator(&store, config)?;
    bootstrap_root(&auth, &store, paths, config.admin_password())?;
    Ok(Prepared {
        store,
        system_uuid,
        started,
        first_start,
        cas: Arc::new(Authority::new(set)),
        client_trust,
        listener_certs,
        auth,
    })
}

/// Creates the data directory if needed, opens the database, and removes the temporary
/// files a crash left.
fn open_store(paths: &Paths) -> Result<Store, DaemonError> {
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
    Ok(store)
}

fn authenticator(store: &Store, config: &Config) -> Result<Authenticator, DaemonError> {
    Authenticator::new(
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
    })
}

/// Opens the spool and brings it in line with the database.
pub(super) fn open_spool(
    paths: &Paths,
    config: &Config,
    cas: &CaSet,
    store: &Store,
) -> Result<Spool, DaemonError> {
    let spool = Spool::open(
        paths.spool(),
        cas.bundle_pem(),
        tunnel_endpoint(config),
        config.poll_interval.as_secs(),
    )
    .map_err(|source| DaemonError::Spool {
        action: "open the spool",
        source,
    })?;
    let repair = spool
        .reconcile(store)
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
    Ok(spool)
}

/// Replication: the default storage's directory, what a crash interrupted on the target
/// side finished, the settings loaded.
pub(super) fn prepare_replication(
    paths: &Paths,
    config: &Config,
    store: &Store,
) -> Result<Arc<replication::Shared>, DaemonError> {
    if let Some(default) = config
        .storage
        .iter()
        .find(|s| s.path == paths.root.join("storage"))
    {
        fsx::ensure_private_dir(&default.path).map_err(file_error(&default.path))?;
    }
    // A bucket whose credentials cannot be read is shown offline, not a reason to stop.
    if let Err(e) = crate::objstore::check_storages(&config.storage) {
        log::error!("storage: {e}");
    }
    match replication::receiver::repair(store, &config.storage, model::now()) {
        Ok(r) if r != Default::default() => log::warn!(
            "replication repaired at start: {} interrupted commits finished, {} partial copies dropped, {} stray partial files removed, {} cut uploads aborted",
            r.finished, r.dropped, r.swept, r.aborted
        ),
        Ok(_) => {}
        Err(source) => {
            return Err(DaemonError::Store {
                action: "repair received backups",
                source,
            })
        }
    }
    // No session runs yet: every upload under an s3 storage's prefix that no partial row
    // names is an orphan of a crash.
    let orphans = replication::receiver::sweep_uploads(store, &config.storage, i64::MAX);
    if orphans > 0 {
        log::warn!("replication: {orphans} orphaned uploads aborted at start");
    }
    match replication::recycle::repair(store, &config.storage, model::now()) {
        Ok(r) if r != Default::default() => log::warn!(
            "recycle bins repaired at start: {} interrupted moves finished, {} undone, {} rows of lost copies dropped, {} stray files removed",
            r.finished, r.undone, r.lost, r.swept
        ),
        Ok(_) => {}
        Err(source) => {
            return Err(DaemonError::Store {
                action: "repair the recycle bins",
                source,
            })
        }
    }
    let shared =
        replication::Shared::load(store, config.max_receive_sessions).map_err(|source| {
            DaemonError::Store {
                action: "load the replication settings",
                source,
            }
        })?;
    Ok(Arc::new(shared))
}

/// The pairing directories, without what no target row names.
pub(super) fn prepare_target_dirs(paths: &Paths, store: &Store) -> Result<TargetDirs, DaemonError> {
    let target_dirs = TargetDirs::new(paths.targets());
    target_dirs.ensure().map_err(DaemonError::Identity)?;
    remove_orphan_target_dirs(store, &target_dirs);
    Ok(target_dirs)
}

/// The CAs as the database names them (`rollover::load`: a named file missing or
/// replaced is an error, what a crash left unnamed is removed, `ca.pem` is brought in
/// line), after creating the first CA on the first start.
fn load_cas(paths: &Paths, store: &Store, system_uuid: &str) -> Result<CaSet, DaemonError> {
    let files = paths.ca_files();
    let state = store.ca_state().map_err(|source| DaemonError::Store {
        action: "read the ca state",
        source,
    })?;
    if state == CaState::default() {
        create_first_ca(&files, system_uuid)?;
    }
    let (set, removed) = rollover::load(store, &files).map_err(DaemonError::Rollover)?;
    for path in removed {
        log::warn!(
            "removed {}: no ca generation in the database names it (a crash during a ca \
             rollover phase)",
            path.display()
        );
    }
    if let Some(next) = &set.next {
        log::info!(
            "a ca rollover is in progress since {}: ca {} in force, new ca {} signs",
            model::format_utc(next.started),
            set.fingerprint(),
            next.ca.fingerprint()
        );
    }
    Ok(set)
}

/// Creates the appliance CA (generation 0) on the first start. A key without its
/// certificate is what a crash during the very first start leaves: nothing was issued
/// yet, so start over; a certificate without its key is refused.
fn create_first_ca(files: &CaFiles, system_uuid: &str) -> Result<(), DaemonError> {
    let (cert, key) = (files.cert_path(0), files.key_path(0));
    match (cert.exists(), key.exists()) {
        (true, true) => Ok(()),
        (true, false) => Err(DaemonError::CaKeyMissing { cert, key }),
        _ => {
            let ca = Ca::generate(
                &rollover::ca_name(system_uuid),
                time::OffsetDateTime::now_utc(),
            )
            .map_err(|source| DaemonError::Ca {
                action: "create the appliance ca".into(),
                source,
            })?;
            files
                .write(0, ca.cert_pem(), &ca.key_pem())
                .map_err(DaemonError::Identity)?;
            log::info!("created the appliance CA, fingerprint {}", ca.fingerprint());
            Ok(())
        }
    }
}

/// Creates `root` when the database has no users: the password is `given`
/// (`REPLGATE_ADMIN_PASSWORD`, [`Config::admin_password`]), or is generated and written
/// once to a 0600 file.
fn bootstrap_root(
    auth: &Authenticator,
    store: &Store,
    paths: &Paths,
    given: Option<&Secret<String>>,
) -> Result<(), DaemonError> {
    let count = store.user_count().map_err(|source| DaemonError::Store {
        action: "count users",
        source,
    })?;
    if count > 0 {
        if given.is_some() {
            log::warn!(
                "REPLGATE_ADMIN_PASSWORD ignored: the database in {} already has users; it \
                 only sets root's password at the first start (change a password with \
                 `replgate ctl users set NAME --password`)",
                paths.root.display()
            );
        }
        return Ok(());
    }
    let password = match given {
        Some(p) => p.expose().clone(),
        None => {
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

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
            bootstrap_root(&auth, &store, &paths, None).unwrap();
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
        bootstrap_root(&auth, &store, &paths, None).unwrap();
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
