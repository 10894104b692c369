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
//! - Every read is written once in `read.rs`; a `Store` read sees one snapshot per call, a
//!   `Txn` read sees the transaction's own uncommitted writes.
//! - Values are JSON records (`records.rs`), so fields can be added with `#[serde(default)]`
//!   without a migration. A record that does not encode is [`StoreError::Encode`], never an
//!   empty value; a value that does not decode is [`StoreError::Corrupt`], never skipped
//!   (the one exception: purging sessions drops undecodable ones).
//! - Every redb table is bytes → bytes (`schema.rs` says why and how keys are encoded);
//!   keys and stored integers are fixed width (`u64` ids, `i64` times); nothing stores a
//!   `usize`. Ids come from counters in `meta` that never go back, so a deleted row's id is
//!   never handed out again.
//! - `open_requests` holds exactly the ids of the requests whose status is pending
//!   (`Txn::put_request` keeps it in step).
//! - The schema version lives in `meta`; migration runs on open, in one transaction; a
//!   database from a newer version is refused, never rewritten.
//! - Every issued certificate is in `certs` and in its system's `lineage` under its
//!   generation (1, 2, ... in issue order); `systems.cert_serial` names the newest live one.
//!   A certificate is live, revoked (`revoked`: the tunnel cuts what it carries) or
//!   retired (`retired`: superseded and past its grace; new handshakes are refused, open
//!   connections run on). A superseded certificate is in `grace` until it is retired or
//!   revoked, never in two of `grace`, `retired`, `revoked` at once.
//! - The last superuser is never removed: the check runs inside the write that would
//!   remove it, so two superusers demoting each other at once cannot both win.

#[cfg(test)]
mod fixture;
mod legacy;
mod queue;
mod read;
mod records;
mod schema;
mod tokens;
mod txn;

use std::cell::Cell;
use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use redb::{Database, ReadTransaction, ReadableDatabase};
use serde::{Deserialize, Serialize};

pub use queue::{
    ItemStatus, LatestItem, PartialRecord, QueueItem, ReceivedRecord, ReplicationConfig, Strategy,
    ThrottleRecord, ThrottleWindow,
};
pub use records::{
    AuditRecord, CertRecord, OpenRequest, RequestRecord, RequestStatus, RequestSummary,
    SessionRecord, SystemRecord, TargetRecord, TargetStatus, UserRecord,
};
pub use schema::CURRENT_VERSION as SCHEMA_VERSION;
pub use tokens::TokenRecord;
pub use txn::{Txn, FIRST_SYSTEM_ID};

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

/// The outcome of changing or removing a user.
#[derive(Debug, PartialEq, Eq)]
pub enum UserWrite {
    Done,
    NotFound,
    /// Nothing was written: no superuser would be left.
    LastSuperuser,
}

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

/// The log line of an audited event, written after its commit: what, to what, the
/// detail, who and from where, and the audit row that holds it.
pub fn event_line(id: u64, a: &AuditRecord) -> String {
    let detail = if a.detail.is_empty() {
        String::new()
    } else {
        format!(": {}", a.detail)
    };
    format!(
        "{} {}{detail} (by {} from {}, audit {id})",
        a.action, a.object, a.user, a.address
    )
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

    pub fn schema_version(&self) -> Result<u64> {
        read::schema_version(&self.snapshot()?)
    }

    // ---- pairing (target side) ----

    pub fn request(&self, id: u64) -> Result<Option<RequestRecord>> {
        read::request(&self.snapshot()?, id)
    }

    /// Requests with id > `after`, in id order, that `keep` selects, at most `limit`.
    pub fn requests(
        &self,
        after: u64,
        limit: usize,
        keep: impl Fn(&RequestRecord) -> bool,
    ) -> Result<Vec<RequestRecord>> {
        read::requests(&self.snapshot()?, after, limit, keep)
    }

    /// Pending requests with id > `after`, at most `limit`, through the open index (cost
    /// grows with the page, not with the history of resolved requests).
    pub fn pending_requests(&self, after: u64, limit: usize) -> Result<Vec<RequestRecord>> {
        read::pending_requests(&self.snapshot()?, after, limit)
    }

    /// Hands `visit` each request with id > `after`, in id order, as a [`RequestSummary`]
    /// borrowed from the stored bytes, until it has been handed `limit` requests that
    /// `keep` selects. With `open_only` only requests in the open index are looked at (cost
    /// grows with the page, not with the history of resolved requests); otherwise all.
    /// Nothing is copied or collected: a list is rendered while it is read.
    pub fn visit_requests(
        &self,
        open_only: bool,
        after: u64,
        limit: usize,
        keep: impl Fn(&RequestSummary<'_>) -> bool,
        visit: impl FnMut(&RequestSummary<'_>),
    ) -> Result<()> {
        read::visit_requests(&self.snapshot()?, open_only, after, limit, keep, visit)
    }

    pub fn open_requests(&self) -> Result<Vec<(u64, OpenRequest)>> {
        read::open_requests(&self.snapshot()?)
    }

    pub fn system(&self, id: u64) -> Result<Option<SystemRecord>> {
        read::system(&self.snapshot()?, id)
    }

    pub fn systems(&self) -> Result<Vec<SystemRecord>> {
        read::systems(&self.snapshot()?)
    }

    pub fn cert(&self, serial: &str) -> Result<Option<CertRecord>> {
        read::cert(&self.snapshot()?, serial)
    }

    /// Every issued certificate, for crash-consistency checks and audits.
    pub fn certs(&self) -> Result<Vec<CertRecord>> {
        read::certs(&self.snapshot()?)
    }

    /// Whether `serial` is revoked: one read transaction, asked on every tunnel handshake.
    pub fn is_revoked(&self, serial: &str) -> Result<bool> {
        read::is_revoked(&self.snapshot()?, serial)
    }

    pub fn revoked_serials(&self) -> Result<Vec<String>> {
        read::revoked_serials(&self.snapshot()?)
    }

    /// Whether a new tunnel handshake with `serial` is refused: revoked, or retired after
    /// its grace. Asked on every handshake.
    pub fn refuses_handshake(&self, serial: &str) -> Result<bool> {
        read::refuses_handshake(&self.snapshot()?, serial)
    }

    /// Every certificate of `system_id`, oldest generation first.
    pub fn lineage(&self, system_id: u64) -> Result<Vec<CertRecord>> {
        read::lineage(&self.snapshot()?, system_id)
    }

    /// The end of `serial`'s renewal grace window, while it is in one.
    pub fn grace_until(&self, serial: &str) -> Result<Option<i64>> {
        read::grace_until(&self.snapshot()?, serial)
    }

    /// Superseded serials whose grace window ended at or before `now`.
    pub fn grace_ended(&self, now: i64) -> Result<Vec<String>> {
        read::grace_ended(&self.snapshot()?, now)
    }

    // ---- targets (source side) ----

    pub fn targets(&self) -> Result<Vec<TargetRecord>> {
        read::targets(&self.snapshot()?)
    }

    pub fn target(&self, id: u64) -> Result<Option<TargetRecord>> {
        read::target(&self.snapshot()?, id)
    }

    // ---- users, sessions, audit ----

    pub fn user(&self, name: &str) -> Result<Option<UserRecord>> {
        read::user(&self.snapshot()?, name)
    }

    pub fn users(&self) -> Result<Vec<UserRecord>> {
        read::users(&self.snapshot()?)
    }

    pub fn user_count(&self) -> Result<u64> {
        read::user_count(&self.snapshot()?)
    }

    pub fn session(&self, token_hash: &[u8]) -> Result<Option<SessionRecord>> {
        read::session(&self.snapshot()?, token_hash)
    }

    /// Audit rows with id > `after`, oldest first, at most `limit`.
    pub fn audit(&self, after: u64, limit: usize) -> Result<Vec<(u64, AuditRecord)>> {
        read::audit(&self.snapshot()?, after, limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Privilege;

    fn temp_store(name: &str) -> (Store, std::path::PathBuf) {
        let dir =
            std::env::temp_dir().join(format!("replgate-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        crate::fsx::ensure_private_dir(&dir).unwrap();
        let path = dir.join("replgate.redb");
        (Store::open(&path).unwrap(), dir)
    }

    fn audit(action: &str) -> AuditRecord {
        AuditRecord {
            time: 1,
            user: "root".into(),
            address: "127.0.0.1".into(),
            action: action.into(),
            object: "user:x".into(),
            detail: String::new(),
        }
    }

    #[test]
    fn the_revocation_generation_moves_only_after_a_commit_that_revoked() {
        let (store, dir) = temp_store("revocation-generation");
        let before = store.revocation_generation();
        store
            .write(|tx| tx.audit(&audit("nothing revoked")))
            .unwrap();
        assert_eq!(store.revocation_generation(), before);
        let failed: std::result::Result<(), StoreError> = store.write(|tx| {
            tx.revoke("abc", 7)?;
            Err(StoreError::Corrupt {
                table: "test".into(),
                detail: "rolled back".into(),
            })
        });
        assert!(failed.is_err());
        assert_eq!(store.revocation_generation(), before, "rolled back");
        assert!(!store.is_revoked("abc").unwrap());
        store.write(|tx| tx.revoke("abc", 7)).unwrap();
        assert_eq!(store.revocation_generation(), before + 1);
        assert!(store.is_revoked("abc").unwrap());
        let clone = store.clone();
        clone.write(|tx| tx.revoke("def", 8)).unwrap();
        assert_eq!(
            store.revocation_generation(),
            before + 2,
            "shared by clones"
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn users_sessions_and_audit_survive_reopen() {
        let (store, dir) = temp_store("reopen");
        let u = UserRecord {
            name: "alice".into(),
            password_hash: "h".into(),
            privilege: Privilege::Monitor,
            created: 5,
            updated: 5,
        };
        assert!(store
            .write(|tx| tx.create_user(&u, &audit("user created")))
            .unwrap());
        assert!(!store
            .write(|tx| tx.create_user(&u, &audit("user created")))
            .unwrap());
        let s = SessionRecord {
            user: "alice".into(),
            created: 5,
            scraper: false,
            last_used: 5,
        };
        store
            .write(|tx| tx.insert_session(b"hash", &s, &audit("login")))
            .unwrap();
        let uuid = store
            .write(|tx| tx.system_uuid_or_insert(|| "u-1".into()))
            .unwrap();
        drop(store);

        let store = Store::open(&dir.join("replgate.redb")).unwrap();
        assert_eq!(store.user("alice").unwrap().unwrap(), u);
        assert_eq!(store.session(b"hash").unwrap().unwrap(), s);
        assert_eq!(
            store
                .write(|tx| tx.system_uuid_or_insert(|| "u-2".into()))
                .unwrap(),
            uuid
        );
        // Recorded before it existed: the oldest time the database holds (the user).
        assert_eq!(store.write(|tx| tx.first_start_or_insert(99)).unwrap(), 1);
        assert_eq!(store.write(|tx| tx.first_start_or_insert(200)).unwrap(), 1);
        let rows = store.audit(0, 10).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].0, 1);
        assert_eq!(rows[1].1.action, "login");
        assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn summary_decodes_what_a_record_encodes() {
        for full in [false, true] {
            let r = RequestRecord {
                // Escapes make serde own the string instead of borrowing it.
                name: "box \"north\"\n2".into(),
                host: "source.example".into(),
                asset_tag: full.then(|| "TAG-7".into()),
                csr_pem: "-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n".into(),
                remote_addr: "192.0.2.9".into(),
                created: 10,
                expires: 20,
                status: if full {
                    RequestStatus::Rejected
                } else {
                    RequestStatus::Pending
                },
                message: full.then(|| "no".into()),
                resolved_at: full.then_some(15),
                resolved_by: full.then(|| "root".into()),
                replaces_system_id: full.then_some(4),
                system_id: full.then_some(5),
                cert_serial: full.then(|| "ab12".into()),
                requested_storage_id: full.then_some(3),
                pairing_token: full.then(|| "0123456789ab".into()),
                ..RequestRecord::fixture(12)
            };
            let bytes = encode("requests", &r).unwrap();
            let s: RequestSummary<'_> = decode("requests", &bytes).unwrap();
            assert_eq!(s.id, r.id);
            assert_eq!(s.system_uuid, r.system_uuid);
            assert_eq!(s.name, r.name);
            assert_eq!(s.host, r.host);
            assert_eq!(s.asset_tag.as_deref(), r.asset_tag.as_deref());
            assert_eq!(s.version, r.version);
            assert_eq!(s.csr_fingerprint, r.csr_fingerprint);
            assert_eq!(s.remote_addr, r.remote_addr);
            assert_eq!(s.verification_code, r.verification_code);
            assert_eq!((s.created, s.expires), (r.created, r.expires));
            assert_eq!(s.status, r.status);
            assert_eq!(s.message.as_deref(), r.message.as_deref());
            assert_eq!(s.resolved_at, r.resolved_at);
            assert_eq!(s.replaces_system_id, r.replaces_system_id);
            assert_eq!(s.system_id, r.system_id);
            assert_eq!(s.requested_storage_id, r.requested_storage_id);
        }
    }

    /// A target's database as the release before lineages wrote it (commit 663872f, one
    /// paired source: see tests/it/fixtures/release-663872f/make.sh).
    #[test]
    fn a_database_from_the_release_before_lineages_migrates_its_certificates_into_one() {
        let (_, dir) = temp_store("migrate");
        let path = dir.join("old.redb");
        std::fs::copy(
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/it/fixtures/release-663872f/target/replgate.redb"
            ),
            &path,
        )
        .unwrap();
        {
            let db = redb::Database::open(&path).unwrap();
            // Typed tables, as every version before byte keys wrote them.
            let before = legacy::schema_version(&db.begin_write().unwrap()).unwrap();
            assert_eq!(before, Some(schema::VERSION_SOURCE_PAIRING));
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
        let systems = store.systems().unwrap();
        assert_eq!(systems.len(), 1);
        let row = &systems[0];
        let serial = row.cert_serial.clone().unwrap();
        let lineage = store.lineage(row.id).unwrap();
        assert_eq!(lineage.len(), 1);
        assert_eq!(lineage[0].serial, serial);
        assert_eq!(lineage[0].generation, 1);
        assert_eq!(Some(lineage[0].not_after), row.certificate_expires);
        assert!(lineage[0].is_live());
        assert!(!store.refuses_handshake(&serial).unwrap());
        assert_eq!(
            store.write(|tx| tx.next_generation(row.id)).unwrap(),
            2,
            "the next renewal continues the migrated lineage"
        );
        drop(store);
        // Opening again migrates nothing twice.
        let store = Store::open(&path).unwrap();
        assert_eq!(store.lineage(row.id).unwrap().len(), 1);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn deleting_a_user_ends_its_sessions() {
        let (store, dir) = temp_store("delete");
        let u = UserRecord {
            name: "bob".into(),
            password_hash: "h".into(),
            privilege: Privilege::Manage,
            created: 1,
            updated: 1,
        };
        store.write(|tx| tx.create_user(&u, &audit("c"))).unwrap();
        let s = SessionRecord {
            user: "bob".into(),
            created: 1,
            scraper: false,
            last_used: 1,
        };
        store
            .write(|tx| tx.insert_session(b"t1", &s, &audit("login")))
            .unwrap();
        assert_eq!(
            store
                .write(|tx| tx.delete_user("bob", &audit("d")))
                .unwrap(),
            UserWrite::LastSuperuser
        );
        let root = UserRecord {
            name: "root".into(),
            password_hash: "h".into(),
            privilege: Privilege::Superuser,
            created: 1,
            updated: 1,
        };
        store
            .write(|tx| tx.create_user(&root, &audit("c")))
            .unwrap();
        assert_eq!(
            store
                .write(|tx| tx.delete_user("bob", &audit("d")))
                .unwrap(),
            UserWrite::Done
        );
        assert!(store.session(b"t1").unwrap().is_none());
        assert_eq!(
            store
                .write(|tx| tx.delete_user("bob", &audit("d")))
                .unwrap(),
            UserWrite::NotFound
        );
        let demoted = UserRecord {
            privilege: Privilege::Monitor,
            ..root
        };
        assert_eq!(
            store
                .write(|tx| tx.update_user(&demoted, false, &audit("u")))
                .unwrap(),
            UserWrite::LastSuperuser
        );
        assert_eq!(
            store.user("root").unwrap().unwrap().privilege,
            Privilege::Superuser
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
