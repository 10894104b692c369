//! The store: the only owner of the redb database. Every table sits behind this typed API.
//! It never does network I/O and never keeps a write transaction open across any.
//!
//! Invariants:
//! - One `Database` per process: redb's file lock is exclusive, so every `Store` is a
//!   clone sharing one `Arc<Database>`, and the command line never opens the file.
//! - Every write goes through [`Store::write`]: one write transaction, committed durably
//!   (redb's default, fsync before `commit` returns) when the closure returns `Ok`, and
//!   dropped, leaving nothing, when it returns `Err`. The closure does store work only:
//!   no network I/O, no sleep, no file writes.
//! - One file per entity (`requests.rs`, `systems.rs`, `certs.rs`, `targets.rs`,
//!   `users.rs`, `audit.rs`, `tokens.rs`, `queue.rs`, `chunks.rs`, `meta.rs`, `ca.rs`) holds
//!   its records and every read and write of its tables, each read written once over `access::Tables`: a
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
//!   (`Txn::put_request` keeps it in step, `requests.rs`).
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
mod legacy;
mod meta;
mod migrate;
mod queue;
mod requests;
mod schema;
mod systems;
mod targets;
mod tokens;
mod users;

use std::cell::{Cell, RefCell};
use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use redb::{Database, ReadTransaction, ReadableDatabase, WriteTransaction};
use serde::{Deserialize, Serialize};

pub use audit::{event_line, AuditRecord};
pub use ca::{AbortedCa, CaState, Endorsement, Rollover};
pub use certs::CertRecord;
pub use chunks::{
    owner_of, ChunkCounts, ChunkFileRecord, ChunkFileState, ChunkLoc, ChunkNames, DigestPrefix,
    FileStamp, Owner, StagedChunk,
};
pub use queue::{
    ItemStatus, LatestItem, PartialRecord, QueueItem, ReceivedRecord, ReplicationConfig, Strategy,
    ThrottleRecord, ThrottleWindow,
};
pub use requests::{OpenRequest, RequestRecord, RequestStatus, RequestSummary};
pub use schema::CURRENT_VERSION as SCHEMA_VERSION;
pub use systems::{SystemRecord, FIRST_SYSTEM_ID};
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
            _ => None,
        }
    }
}

impl<E: Into<redb::Error>> From<E> for StoreError {
    fn from(e: E) -> Self {
        StoreError::Db(e.into())
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

/// Cheap to clone: one shared `Arc<Database>` (redb's file lock is exclusive).
#[derive(Clone)]
pub struct Store {
    db: Arc<Database>,
    /// Counts commits that revoked a serial ([`Store::revocation_generation`]).
    revocations: Arc<AtomicU64>,
}

/// One write transaction: every write of the store is a method on it, run through
/// [`Store::write`], so that a domain operation (accept, unpair, file a request, create a
/// user) commits all its rows together or none of them. Its generic access is in
/// `access.rs`, each entity's reads and writes in the entity's file.
pub struct Txn {
    inner: WriteTransaction,
    /// Set by [`Txn::revoke`]; `Store::write` bumps the revocation generation after the
    /// commit.
    revoked: Cell<bool>,
    /// What [`Txn::audit`] recorded, with the row ids: `Store::write` logs each as an
    /// event line once the commit has made it true (SPEC 15).
    audited: RefCell<Vec<(u64, AuditRecord)>>,
}

impl Store {
    /// Opens (creating if missing) the database at `path`, mode 0600, and migrates the
    /// schema to the current version.
    pub fn open(path: &Path) -> Result<Store> {
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
        let store = Store {
            db: Arc::new(db),
            revocations: Arc::new(AtomicU64::new(0)),
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
        let mut inner = self.db.begin_write().map_err(StoreError::from)?;
        inner
            .set_durability(durability)
            .map_err(|e| StoreError::from(redb::Error::from(e)))?;
        let txn = Txn {
            inner,
            revoked: Cell::new(false),
            audited: Default::default(),
        };
        let value = f(&txn)?;
        let audited = txn.audited.take();
        let revoked = txn.revoked.get();
        txn.inner.commit().map_err(StoreError::from)?;
        if revoked {
            // After the commit: whoever sees the new generation and reads again finds the
            // revocation.
            self.revocations.fetch_add(1, Ordering::Release);
        }
        for (id, a) in &audited {
            log::info!("{}", event_line(*id, a));
        }
        Ok(value)
    }

    /// A number that grows after every commit that revoked a serial, so that holders of
    /// long-lived connections (the tunnel's streams) can notice a revocation with one
    /// atomic load per read instead of a database read, and look the serial up only when
    /// it changed.
    pub fn revocation_generation(&self) -> u64 {
        self.revocations.load(Ordering::Acquire)
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
    fn snapshot(&self) -> Result<ReadTransaction> {
        Ok(self.db.begin_read()?)
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
