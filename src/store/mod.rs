//! The store: the only owner of the redb database. Every table sits behind this typed API.
//! It never does network I/O and never keeps a write transaction open across any.
//!
//! Invariants:
//! - One `Database` per process: redb's file lock is exclusive, so every `Store` is a
//!   clone sharing one slot holding an `Arc<Database>`, and the command line never opens
//!   the file. Every read and write takes a clone of the `Arc` for its whole length; a
//!   reopen (`health.rs`: after a failed write redb refuses everything until reopened)
//!   takes the slot, waits until it holds the only clone, closes the file and opens it
//!   again, so reads and writes in flight finish on the old handle.
//! - Every write goes through [`Store::write`]: one write transaction, committed durably
//!   (redb's default, fsync before `commit` returns) when the closure returns `Ok`, and
//!   dropped, leaving nothing, when it returns `Err`. The closure does store work only:
//!   no network I/O, no sleep, no file writes. After a failed write (a full disk) every
//!   write is refused with [`StoreError::Unavailable`] until it is worth trying again;
//!   reads go on.
//! - One file per entity (`requests.rs`, `systems.rs`, `certs.rs`, `targets.rs`,
//!   `users.rs`, `audit.rs`, `tokens.rs`, `queue.rs`, `recycle.rs`, `restores.rs`,
//!   `chunks.rs`, `meta.rs`, `ca.rs`) holds its records and every read and write of its
//!   tables, each read written once over `access::Tables`: a
//!   `Store` read sees one snapshot per call, a `Txn` read sees the transaction's own
//!   uncommitted writes. Re-exported here, so every name is `store::Name`.
//! - Values are JSON records, so fields can be added with `#[serde(default)]`
//!   without a migration. A record that does not encode is [`StoreError::Encode`], never an
//!   empty value; a value that does not decode is [`StoreError::Corrupt`], never skipped
//!   (the one exception: purging sessions drops undecodable ones).
//! - Every redb table is bytes → bytes (`schema.rs` says why and how keys are encoded);
//!   keys and stored integers are fixed width (`u64` ids, `i64` times); nothing stores a
//!   `usize`. Ids come from counters in `meta` that never go back, so a deleted row's id is
//!   never handed out again.
//! - `open_requests` holds exactly the ids of the requests whose status is pending
//!   (`Txn::put_request` keeps it in step, `requests.rs`); `damaged` holds exactly the
//!   received rows whose `damaged` is set (`Txn::put_received` and `delete_received`,
//!   `queue.rs`).
//! - The schema version lives in `meta`; migration (`migrate.rs`) runs on open, in one
//!   transaction; a database from a newer version is refused, never rewritten.
//! - Every issued certificate is in `certs` and in its system's `lineage` under its
//!   generation (1, 2, ... in issue order); `systems.cert_serial` names the newest live one.
//!   A certificate is live, revoked (`revoked`: the tunnel cuts what it carries) or
//!   retired (`retired`: superseded and past its grace; new handshakes are refused, open
//!   connections run on). A superseded certificate is in `grace` until it is retired or
//!   revoked, never in two of `grace`, `retired`, `revoked` at once (`certs.rs`).
//! - The last superuser is never removed: the check runs inside the write that would
//!   remove it, so two superusers demoting each other at once cannot both win
//!   (`users.rs`).

mod access;
mod audit;
mod ca;
mod certs;
mod chunks;
#[cfg(test)]
mod fixture;
mod health;
mod legacy;
mod meta;
mod migrate;
mod queue;
mod recycle;
mod requests;
mod restores;
mod schema;
mod systems;
mod targets;
mod tokens;
mod users;

use std::cell::{Cell, RefCell};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use redb::{Database, ReadTransaction, ReadableDatabase, WriteTransaction};
use serde::{Deserialize, Serialize};

use crate::sync::{lock, read, write};

pub use audit::{event_line, AuditRecord};
pub use ca::{AbortedCa, CaState, Endorsement, Rollover};
pub use certs::CertRecord;
pub use chunks::{
    owner_of, ChunkCounts, ChunkFileRecord, ChunkFileState, ChunkLoc, ChunkNames, DigestPrefix,
    FileStamp, Owner, StagedChunk,
};
pub use health::{Degraded, RESUME_FREE_BYTES, RETRY_AFTER};
pub use queue::{
    ItemStatus, LatestItem, PartialRecord, QueueItem, ReceivedRecord, ReplicationConfig, Strategy,
    ThrottleRecord, ThrottleWindow, VerifyRun,
};
pub use recycle::{RecycleRecord, RecycleState};
pub use requests::{OpenRequest, RequestRecord, RequestStatus, RequestSummary};
pub use restores::{
    DrillBook, DrillRecord, DrillResult, RestoreBook, RestoreItem, RestoreStatus,
    MAX_FINISHED_RESTORES,
};
pub use schema::CURRENT_VERSION as SCHEMA_VERSION;
pub use systems::{Retention, SystemRecord, DEFAULT_SHARE, FIRST_SYSTEM_ID, MAX_SHARE};
pub use targets::{TargetRecord, TargetStatus};
pub use tokens::TokenRecord;
pub use users::{SessionRecord, UserRecord, UserWrite};

/// redb's default page cache is 1 GiB; the whole working set here is a few MB.
const CACHE_BYTES: usize = 4 * 1024 * 1024;

#[derive(Debug)]
pub enum StoreError {
    Db(redb::Error),
    /// A stored record does not decode: the file was damaged or written by a newer version.
    Corrupt {
        table: String,
        detail: String,
    },
    /// A record does not encode (a bug: records are plain strings and integers). Nothing
    /// was written.
    Encode {
        table: String,
        detail: String,
    },
    /// The database was written by a newer replgate.
    TooNew {
        found: u64,
    },
    /// Another process holds the database's lock: another replgate on this data directory.
    Locked {
        path: std::path::PathBuf,
    },
    /// The database refuses writes for now (a full disk): see [`Degraded`]. Nothing was
    /// written; reads still work.
    Unavailable(Degraded),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Db(_) => write!(f, "database"),
            StoreError::Corrupt { table, detail } => {
                write!(f, "database table {table}: undecodable record: {detail}")
            }
            StoreError::Encode { table, detail } => {
                write!(
                    f,
                    "database table {table}: record does not encode: {detail}"
                )
            }
            StoreError::Locked { path } => write!(
                f,
                "database {} is held by another process: is another replgate serving {}?",
                path.display(),
                path.parent().unwrap_or(path).display()
            ),
            StoreError::Unavailable(d) => write!(f, "{d}"),
            StoreError::TooNew { found } => write!(
                f,
                "database schema version {found} is newer than this replgate supports ({})",
                schema::CURRENT_VERSION
            ),
        }
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StoreError::Db(e) => Some(e),
            // So that an error wrapping this one (whose `source` is this one's) still says
            // why: `api::error` finds the `Degraded` in the chain and answers 507.
            StoreError::Unavailable(d) => Some(d),
            _ => None,
        }
    }
}

impl<E: Into<redb::Error>> From<E> for StoreError {
    fn from(e: E) -> Self {
        let e = e.into();
        health::note(&e);
        StoreError::Db(e)
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;

fn encode<T: Serialize + ?Sized>(table: &str, value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| StoreError::Encode {
        table: table.to_owned(),
        detail: e.to_string(),
    })
}

fn decode<'a, T: Deserialize<'a>>(table: &str, bytes: &'a [u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        table: table.to_owned(),
        detail: e.to_string(),
    })
}

/// Cheap to clone: every clone shares the one database (redb's file lock is exclusive).
#[derive(Clone)]
pub struct Store {
    shared: Arc<Shared>,
}

struct Shared {
    path: PathBuf,
    /// The open database; `None` only while a reopen failed to open it again.
    db: RwLock<Option<Arc<Database>>>,
    /// One reopen at a time.
    reopening: Mutex<()>,
    /// Counts commits that revoked a serial ([`Store::revocation_generation`]).
    revocations: AtomicU64,
    /// Counts commits that changed what certificates are read from
    /// ([`Store::certificate_generation`]).
    certificates: AtomicU64,
    /// Counts commits that added, removed or changed the status of a pairing request
    /// ([`Store::request_generation`]).
    requests: AtomicU64,
    /// Counts commits that changed a systems row, with the ids they changed
    /// ([`Store::systems_changed_since`]).
    systems: Mutex<systems::ChangeLog>,
    health: health::Health,
}

/// A read snapshot with the database it reads (the transaction drops first).
pub(crate) struct Snapshot {
    txn: ReadTransaction,
    _db: Arc<Database>,
}

/// How long a reopen waits for the reads and writes in flight on the failed database.
const REOPEN_WAIT: Duration = Duration::from_secs(5);

/// One write transaction: every write of the store is a method on it, run through
/// [`Store::write`], so that a domain operation (accept, unpair, file a request, create a
/// user) commits all its rows together or none of them. Its generic access is in
/// `access.rs`, each entity's reads and writes in the entity's file.
pub struct Txn {
    inner: WriteTransaction,
    /// Set by [`Txn::revoke`]; `Store::write` bumps the revocation generation after the
    /// commit.
    revoked: Cell<bool>,
    /// Set by the writes [`Store::certificate_generation`] counts; bumped after the
    /// commit.
    certificates: Cell<bool>,
    /// Set by the writes [`Store::request_generation`] counts.
    requests: Cell<bool>,
    /// The systems rows this transaction changed ([`Store::systems_changed_since`]).
    systems: RefCell<Vec<u64>>,
    /// What [`Txn::audit`] recorded, with the row ids: `Store::write` logs each as an
    /// event line once the commit has made it true (SPEC 15).
    audited: RefCell<Vec<(u64, AuditRecord)>>,
}

impl Txn {
    /// A write transaction on `db` with `durability`.
    fn begin(db: &Database, durability: redb::Durability) -> Result<Txn> {
        let mut inner = db.begin_write().map_err(StoreError::from)?;
        inner
            .set_durability(durability)
            .map_err(|e| StoreError::from(redb::Error::from(e)))?;
        Ok(Txn {
            inner,
            revoked: Cell::new(false),
            certificates: Cell::new(false),
            requests: Cell::new(false),
            systems: Default::default(),
            audited: Default::default(),
        })
    }
}

/// Opens (creating if missing) the database file at `path`, mode 0600.
fn open_database(path: &Path) -> Result<Database> {
    let db = Database::builder()
        .set_cache_size(CACHE_BYTES)
        .create(path)
        .map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => StoreError::Locked {
                path: path.to_path_buf(),
            },
            e => StoreError::from(e),
        })?;
    crate::fsx::make_private(path).map_err(redb::Error::from)?;
    Ok(db)
}

impl Store {
    /// Opens (creating if missing) the database at `path`, mode 0600, and migrates the
    /// schema to the current version.
    pub fn open(path: &Path) -> Result<Store> {
        let db = open_database(path)?;
        let store = Store {
            shared: Arc::new(Shared {
                path: path.to_path_buf(),
                db: RwLock::new(Some(Arc::new(db))),
                reopening: Mutex::new(()),
                revocations: AtomicU64::new(0),
                certificates: AtomicU64::new(0),
                requests: AtomicU64::new(0),
                systems: Mutex::default(),
                health: health::Health::default(),
            }),
        };
        store.write(|tx| tx.migrate())?;
        Ok(store)
    }

    /// Runs `f` in one write transaction: commits durably when it returns Ok, discards
    /// everything when it returns Err.
    pub fn write<T, E: From<StoreError>>(
        &self,
        f: impl FnOnce(&Txn) -> std::result::Result<T, E>,
    ) -> std::result::Result<T, E> {
        self.write_with(redb::Durability::Immediate, f)
    }

    fn write_with<T, E: From<StoreError>>(
        &self,
        durability: redb::Durability,
        f: impl FnOnce(&Txn) -> std::result::Result<T, E>,
    ) -> std::result::Result<T, E> {
        self.writable()?;
        health::take_noted();
        let result = self.database().map_err(E::from).and_then(|db| {
            let value = self.write_on(&db, durability, f);
            drop(db);
            value
        });
        match health::take_noted() {
            Some(failure) => {
                self.fail(&failure);
                // The caller hears why writes fail now, whatever error it got.
                match self.shared.health.current() {
                    Some(d) if result.is_err() => Err(E::from(StoreError::Unavailable(d))),
                    _ => result,
                }
            }
            None => result,
        }
    }

    fn write_on<T, E: From<StoreError>>(
        &self,
        db: &Database,
        durability: redb::Durability,
        f: impl FnOnce(&Txn) -> std::result::Result<T, E>,
    ) -> std::result::Result<T, E> {
        let txn = Txn::begin(db, durability)?;
        let value = f(&txn)?;
        self.commit(txn)?;
        Ok(value)
    }

    /// Commits `txn`, then moves the generations its writes count and logs its audited
    /// events. Not generic, unlike `write_on`: one copy in the binary for every write.
    fn commit(&self, txn: Txn) -> Result<()> {
        let Txn {
            inner,
            revoked,
            certificates,
            requests,
            systems,
            audited,
        } = txn;
        inner.commit().map_err(StoreError::from)?;
        // After the commit: whoever sees a new generation and reads again finds the write.
        if revoked.get() {
            self.shared.revocations.fetch_add(1, Ordering::Release);
        }
        if certificates.get() {
            self.shared.certificates.fetch_add(1, Ordering::Release);
        }
        if requests.get() {
            self.shared.requests.fetch_add(1, Ordering::Release);
        }
        let systems = systems.into_inner();
        if !systems.is_empty() {
            lock(&self.shared.systems).record(systems);
        }
        for (id, a) in &audited.into_inner() {
            log::info!("{}", event_line(*id, a));
        }
        Ok(())
    }

    /// A number that grows after every commit that revoked a serial, so that holders of
    /// long-lived connections (the tunnel's streams) can notice a revocation with one
    /// atomic load per read instead of a database read, and look the serial up only when
    /// it changed.
    pub fn revocation_generation(&self) -> u64 {
        self.shared.revocations.load(Ordering::Acquire)
    }

    /// A number that grows after every commit that changed a certificate row, a system's
    /// role, name or serials (current and last seen with), its certificate's expiry, or a
    /// target's certificate or status, or added or removed a system or a target: what
    /// certificate expiries and a CA rollover's status are read from. A cache of those
    /// reads (`lifecycle::CertCache`) is current while this number is the one it read
    /// before them. A hello that only moves `last_seen` does not count.
    pub fn certificate_generation(&self) -> u64 {
        self.shared.certificates.load(Ordering::Acquire)
    }

    /// A number that grows after every commit that added or removed a pairing request or
    /// changed its status: counts of requests by status are current while it is the one
    /// read before them.
    pub fn request_generation(&self) -> u64 {
        self.shared.requests.load(Ordering::Acquire)
    }

    /// As [`Store::write`], but the commit is not made durable by itself: it becomes
    /// durable with the next durable commit (redb's `Durability::None`). For bookkeeping
    /// a crash may lose without harm (progress marks that a restart redoes); never for a
    /// decision or a reservation.
    pub fn write_lazy<T, E: From<StoreError>>(
        &self,
        f: impl FnOnce(&Txn) -> std::result::Result<T, E>,
    ) -> std::result::Result<T, E> {
        self.write_with(redb::Durability::None, f)
    }

    /// A read snapshot for one read.
    fn snapshot(&self) -> Result<Snapshot> {
        let db = self.database()?;
        match db.begin_read() {
            Ok(txn) => Ok(Snapshot { txn, _db: db }),
            Err(e) => {
                drop(db);
                let e = StoreError::from(e);
                if let Some(failure) = health::take_noted() {
                    self.fail(&failure);
                }
                Err(e)
            }
        }
    }

    /// The database in place, for one read or write.
    fn database(&self) -> Result<Arc<Database>> {
        match &*read(&self.shared.db) {
            Some(db) => Ok(db.clone()),
            None => Err(StoreError::Unavailable(self.degraded_or_closed())),
        }
    }

    fn degraded_or_closed(&self) -> Degraded {
        self.shared.health.current().unwrap_or_else(|| Degraded {
            full: false,
            detail: "the database is being reopened".into(),
            since: crate::model::now(),
        })
    }

    /// Why writes are refused now, if they are; first ends a degraded state that is over
    /// (see `health.rs`). Reads work either way.
    pub fn degraded(&self) -> Option<Degraded> {
        if !self.shared.health.is_degraded() {
            return None;
        }
        self.recover();
        self.shared.health.current()
    }

    /// Times the database failed a write and refused writes for a while, since start.
    pub fn failures(&self) -> u64 {
        self.shared.health.failures()
    }

    /// Err while writes are refused.
    fn writable(&self) -> Result<()> {
        match self.degraded() {
            None => Ok(()),
            Some(d) => Err(StoreError::Unavailable(d)),
        }
    }

    /// A write (or a read) met a failed database: refuse writes for now, and reopen the
    /// file so that reads go on.
    fn fail(&self, failure: &health::Failure) {
        if self.shared.health.fail(failure, crate::model::now()) {
            log::error!(
                "database {}: a write failed ({}): changes are refused until {}",
                self.shared.path.display(),
                failure.detail,
                if failure.full {
                    "space is freed"
                } else {
                    "it is tried again"
                }
            );
        }
        self.reopen();
    }

    /// Ends a degraded state once writes are worth trying again.
    fn recover(&self) {
        let path = &self.shared.path;
        let due = self
            .shared
            .health
            .due(|| crate::fsx::disk_space(path.parent().unwrap_or(path)).map(|(_, free)| free));
        let health::Due::Resume { reopen, failed_at } = due else {
            return;
        };
        if reopen && !self.reopen() {
            return;
        }
        if self.shared.health.clear(failed_at) {
            log::info!("database {}: writes resume", path.display());
        }
    }

    /// Closes the failed database and opens the file again, once the reads and writes in
    /// flight on it have finished (they hold it; redb's lock is exclusive). True if a
    /// fresh database is in place.
    fn reopen(&self) -> bool {
        let _one = lock(&self.shared.reopening);
        let mut slot = write(&self.shared.db);
        if let Some(mut db) = slot.take() {
            let waited = Instant::now();
            let old = loop {
                match Arc::try_unwrap(db) {
                    Ok(old) => break old,
                    Err(shared) if waited.elapsed() < REOPEN_WAIT => {
                        db = shared;
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    Err(shared) => {
                        log::warn!("database: reopen postponed: it is still in use");
                        *slot = Some(shared);
                        return false;
                    }
                }
            };
            // Closing a failed database reports its failure again; the file is released
            // either way.
            if let Err(e) = old.close() {
                log::debug!("database: close of the failed handle: {e}");
            }
        }
        health::take_noted();
        match open_database(&self.shared.path) {
            Ok(db) => {
                *slot = Some(Arc::new(db));
                self.shared.health.reopened();
                log::info!("database {}: reopened", self.shared.path.display());
                true
            }
            Err(e) => {
                health::take_noted();
                log::error!(
                    "database {}: reopen failed: {}",
                    self.shared.path.display(),
                    crate::model::Chain(&e)
                );
                false
            }
        }
    }
}

/// A fresh store in its own directory below the temporary one, for unit tests.
#[cfg(test)]
fn temp_store(name: &str) -> (Store, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("replgate-store-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    crate::fsx::ensure_private_dir(&dir).unwrap();
    let path = dir.join("replgate.redb");
    (Store::open(&path).unwrap(), dir)
}

/// An audit row for unit tests.
#[cfg(test)]
fn test_audit(action: &str) -> AuditRecord {
    AuditRecord {
        time: 1,
        user: "root".into(),
        address: "127.0.0.1".into(),
        action: action.into(),
        object: "user:x".into(),
        detail: String::new(),
    }
}
