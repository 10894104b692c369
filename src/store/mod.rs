//! The store: the only owner of the redb database. Every table sits behind this typed API;
//! every write commits durably (fsync) before it returns. It never does network I/O and
//! never keeps a write transaction open across one.

mod records;
mod schema;
mod txn;

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, Table};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub use records::{
    AuditRecord, CertRecord, OpenRequest, RequestRecord, RequestStatus, RequestSummary,
    SessionRecord, SystemRecord, TargetRecord, TargetStatus, UserRecord,
};
pub use schema::CURRENT_VERSION as SCHEMA_VERSION;
pub use txn::{Txn, FIRST_SYSTEM_ID};

use crate::model::UnixTime;

/// redb's default page cache is 1 GiB; the whole working set here is a few MB.
const CACHE_BYTES: usize = 4 * 1024 * 1024;

#[derive(Debug)]
pub enum StoreError {
    Db(redb::Error),
    /// A stored record does not decode: the file was damaged or written by a newer version.
    Corrupt {
        table: &'static str,
        detail: String,
    },
    /// The database was written by a newer replgate.
    TooNew {
        found: u64,
    },
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Db(e) => write!(f, "database: {e}"),
            StoreError::Corrupt { table, detail } => {
                write!(f, "database table {table}: undecodable record: {detail}")
            }
            StoreError::TooNew { found } => write!(
                f,
                "database schema version {found} is newer than this replgate supports ({})",
                schema::CURRENT_VERSION
            ),
        }
    }
}

impl std::error::Error for StoreError {}

impl<E: Into<redb::Error>> From<E> for StoreError {
    fn from(e: E) -> Self {
        StoreError::Db(e.into())
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// The outcome of changing or removing a user. The last-superuser rule is checked inside
/// the same transaction, so two superusers demoting each other at once cannot both win.
#[derive(Debug, PartialEq, Eq)]
pub enum UserWrite {
    Done,
    NotFound,
    /// Nothing was written: no superuser would be left.
    LastSuperuser,
}

/// Whether any user in the table is a superuser.
fn has_superuser(t: &impl ReadableTable<&'static str, &'static [u8]>) -> Result<bool> {
    let users: Vec<UserRecord> = values(t, "users")?;
    Ok(users
        .iter()
        .any(|u| u.privilege == crate::model::Privilege::Superuser))
}

/// Cheap to clone: one shared `Arc<Database>` (redb's file lock is exclusive).
#[derive(Clone)]
pub struct Store {
    db: Arc<Database>,
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Invariant: records are plain structs of strings and integers; serializing them to a
    // Vec cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}

fn decode<'a, T: Deserialize<'a>>(table: &'static str, bytes: &'a [u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        table,
        detail: e.to_string(),
    })
}

/// Every value of a JSON-valued table, decoded, in key order.
fn values<K: redb::Key + 'static, T: DeserializeOwned>(
    t: &impl ReadableTable<K, &'static [u8]>,
    name: &'static str,
) -> Result<Vec<T>> {
    let mut out = Vec::new();
    for row in t.iter()? {
        let (_, v) = row?;
        out.push(decode(name, v.value())?);
    }
    Ok(out)
}

/// Every row of a `u64`-keyed JSON-valued table, decoded, in key order.
fn id_rows<T: DeserializeOwned>(
    t: &impl ReadableTable<u64, &'static [u8]>,
    name: &'static str,
) -> Result<Vec<(u64, T)>> {
    let mut out = Vec::new();
    for row in t.iter()? {
        let (k, v) = row?;
        out.push((k.value(), decode(name, v.value())?));
    }
    Ok(out)
}

impl Store {
    /// Opens (creating if missing) the database at `path`, mode 0600, and migrates the
    /// schema to the current version.
    pub fn open(path: &Path) -> Result<Store> {
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(path)?;
        crate::fsx::make_private(path).map_err(redb::Error::from)?;
        let store = Store { db: Arc::new(db) };
        store.migrate()?;
        Ok(store)
    }

    fn migrate(&self) -> Result<()> {
        let txn = self.db.begin_write()?;
        {
            let mut meta = txn.open_table(schema::META)?;
            let found = match meta.get(schema::META_SCHEMA_VERSION)? {
                Some(v) => decode::<u64>("meta", v.value())?,
                None => 0,
            };
            if found > schema::CURRENT_VERSION {
                return Err(StoreError::TooNew { found });
            }
            // Each step creates what its version added; opening a table creates it.
            if found < schema::VERSION_INITIAL {
                txn.open_table(schema::USERS)?;
                txn.open_table(schema::SESSIONS)?;
                txn.open_table(schema::AUDIT)?;
            }
            if found < schema::VERSION_TARGET_PAIRING {
                txn.open_table(schema::REQUESTS)?;
                txn.open_table(schema::OPEN_REQUESTS)?;
                txn.open_table(schema::SYSTEMS)?;
                txn.open_table(schema::CERTS)?;
                txn.open_table(schema::REVOKED)?;
            }
            if found < schema::VERSION_SOURCE_PAIRING {
                txn.open_table(schema::TARGETS)?;
            }
            if found != schema::CURRENT_VERSION {
                meta.insert(
                    schema::META_SCHEMA_VERSION,
                    encode(&schema::CURRENT_VERSION).as_slice(),
                )?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    pub fn schema_version(&self) -> Result<u64> {
        let txn = self.db.begin_read()?;
        let meta = txn.open_table(schema::META)?;
        match meta.get(schema::META_SCHEMA_VERSION)? {
            Some(v) => decode("meta", v.value()),
            None => Ok(0),
        }
    }

    /// A value of `meta` written once: read it, or store what `fresh` computes (inside
    /// the same transaction) and return that.
    fn meta_or_insert<T: Serialize + DeserializeOwned>(
        &self,
        key: &str,
        fresh: impl FnOnce(&redb::WriteTransaction) -> Result<T>,
    ) -> Result<T> {
        let txn = self.db.begin_write()?;
        let existing = match txn.open_table(schema::META)?.get(key)? {
            Some(v) => Some(decode::<T>("meta", v.value())?),
            None => None,
        };
        let value = match existing {
            Some(v) => v,
            None => {
                let v = fresh(&txn)?;
                txn.open_table(schema::META)?
                    .insert(key, encode(&v).as_slice())?;
                v
            }
        };
        txn.commit()?;
        Ok(value)
    }

    /// The appliance's stable identity, created once.
    pub fn system_uuid_or_insert(&self, fresh: impl FnOnce() -> String) -> Result<String> {
        self.meta_or_insert(schema::META_SYSTEM_UUID, |_| Ok(fresh()))
    }

    /// The time of the appliance's first start, recorded once. A database from before it
    /// was recorded gets the oldest time it holds (the first audit row or user, both
    /// written at the first start), else `now`.
    pub fn first_start_or_insert(&self, now: UnixTime) -> Result<UnixTime> {
        self.meta_or_insert(schema::META_FIRST_START, |txn| {
            let first_audit = match txn.open_table(schema::AUDIT)?.first()? {
                Some((_, v)) => Some(decode::<AuditRecord>("audit", v.value())?.time),
                None => None,
            };
            let users: Vec<UserRecord> = values(&txn.open_table(schema::USERS)?, "users")?;
            Ok(users
                .iter()
                .map(|u| u.created)
                .chain(first_audit)
                .min()
                .unwrap_or(now))
        })
    }

    /// Runs `f` in one write transaction: commits durably when it returns Ok, discards
    /// everything when it returns Err.
    pub fn write<T, E: From<StoreError>>(
        &self,
        f: impl FnOnce(&Txn) -> std::result::Result<T, E>,
    ) -> std::result::Result<T, E> {
        let txn = Txn {
            inner: self.db.begin_write().map_err(StoreError::from)?,
        };
        let value = f(&txn)?;
        txn.inner.commit().map_err(StoreError::from)?;
        Ok(value)
    }

    // ---- pairing (reads) ----

    pub fn request(&self, id: u64) -> Result<Option<RequestRecord>> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(schema::REQUESTS)?;
        t.get(id)?
            .map(|v| decode("requests", v.value()))
            .transpose()
    }

    /// Requests with id > `after`, in id order, that `keep` selects, at most `limit`.
    pub fn requests(
        &self,
        after: u64,
        limit: usize,
        keep: impl Fn(&RequestRecord) -> bool,
    ) -> Result<Vec<RequestRecord>> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(schema::REQUESTS)?;
        let mut out = Vec::new();
        for row in t.range(after.saturating_add(1)..)? {
            if out.len() >= limit {
                break;
            }
            let (_, v) = row?;
            let r: RequestRecord = decode("requests", v.value())?;
            if keep(&r) {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// Pending requests with id > `after`, at most `limit`, through the open index (cost
    /// grows with the page, not with the history of resolved requests).
    pub fn pending_requests(&self, after: u64, limit: usize) -> Result<Vec<RequestRecord>> {
        let txn = self.db.begin_read()?;
        let open = txn.open_table(schema::OPEN_REQUESTS)?;
        let requests = txn.open_table(schema::REQUESTS)?;
        let mut out = Vec::new();
        for row in open.range(after.saturating_add(1)..)? {
            if out.len() >= limit {
                break;
            }
            let (k, _) = row?;
            if let Some(v) = requests.get(k.value())? {
                out.push(decode("requests", v.value())?);
            }
        }
        Ok(out)
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
        mut visit: impl FnMut(&RequestSummary<'_>),
    ) -> Result<()> {
        if limit == 0 {
            return Ok(());
        }
        let txn = self.db.begin_read()?;
        let requests = txn.open_table(schema::REQUESTS)?;
        let mut taken = 0;
        let mut take = |bytes: &[u8]| -> Result<bool> {
            let r: RequestSummary<'_> = decode("requests", bytes)?;
            if keep(&r) {
                visit(&r);
                taken += 1;
            }
            Ok(taken < limit)
        };
        if open_only {
            let open = txn.open_table(schema::OPEN_REQUESTS)?;
            for row in open.range(after.saturating_add(1)..)? {
                let (k, _) = row?;
                if let Some(v) = requests.get(k.value())? {
                    if !take(v.value())? {
                        break;
                    }
                }
            }
        } else {
            for row in requests.range(after.saturating_add(1)..)? {
                let (_, v) = row?;
                if !take(v.value())? {
                    break;
                }
            }
        }
        Ok(())
    }

    pub fn open_requests(&self) -> Result<Vec<(u64, OpenRequest)>> {
        let txn = self.db.begin_read()?;
        id_rows(&txn.open_table(schema::OPEN_REQUESTS)?, "open_requests")
    }

    pub fn system(&self, id: u64) -> Result<Option<SystemRecord>> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(schema::SYSTEMS)?;
        t.get(id)?.map(|v| decode("systems", v.value())).transpose()
    }

    pub fn systems(&self) -> Result<Vec<SystemRecord>> {
        let txn = self.db.begin_read()?;
        values(&txn.open_table(schema::SYSTEMS)?, "systems")
    }

    pub fn cert(&self, serial: &str) -> Result<Option<CertRecord>> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(schema::CERTS)?;
        t.get(serial)?
            .map(|v| decode("certs", v.value()))
            .transpose()
    }

    /// Every issued certificate, for crash-consistency checks and audits.
    pub fn certs(&self) -> Result<Vec<CertRecord>> {
        let txn = self.db.begin_read()?;
        values(&txn.open_table(schema::CERTS)?, "certs")
    }

    pub fn is_revoked(&self, serial: &str) -> Result<bool> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(schema::REVOKED)?;
        Ok(t.get(serial)?.is_some())
    }

    pub fn revoked_serials(&self) -> Result<Vec<String>> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(schema::REVOKED)?;
        let mut out = Vec::new();
        for row in t.iter()? {
            let (k, _) = row?;
            out.push(k.value().to_string());
        }
        Ok(out)
    }

    // ---- targets (source side) ----

    pub fn targets(&self) -> Result<Vec<TargetRecord>> {
        let txn = self.db.begin_read()?;
        values(&txn.open_table(schema::TARGETS)?, "targets")
    }

    pub fn target(&self, id: u64) -> Result<Option<TargetRecord>> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(schema::TARGETS)?;
        t.get(id)?.map(|v| decode("targets", v.value())).transpose()
    }

    // ---- users ----

    pub fn user(&self, name: &str) -> Result<Option<UserRecord>> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(schema::USERS)?;
        t.get(name)?.map(|v| decode("users", v.value())).transpose()
    }

    pub fn users(&self) -> Result<Vec<UserRecord>> {
        let txn = self.db.begin_read()?;
        values(&txn.open_table(schema::USERS)?, "users")
    }

    pub fn user_count(&self) -> Result<u64> {
        let txn = self.db.begin_read()?;
        Ok(txn.open_table(schema::USERS)?.len()?)
    }

    /// Inserts a user that must not exist yet; returns false (and writes nothing) if it does.
    pub fn create_user(&self, user: &UserRecord, audit: &AuditRecord) -> Result<bool> {
        let txn = self.db.begin_write()?;
        {
            let mut t = txn.open_table(schema::USERS)?;
            if t.get(user.name.as_str())?.is_some() {
                return Ok(false);
            }
            t.insert(user.name.as_str(), encode(user).as_slice())?;
            append_audit(&txn, audit)?;
        }
        txn.commit()?;
        Ok(true)
    }

    /// Replaces an existing user; when `end_sessions` the user's sessions end too (a new
    /// password or a lower privilege must not leave old tokens working). False if unknown.
    pub fn update_user(
        &self,
        user: &UserRecord,
        end_sessions: bool,
        audit: &AuditRecord,
    ) -> Result<UserWrite> {
        let txn = self.db.begin_write()?;
        {
            let mut t = txn.open_table(schema::USERS)?;
            if t.get(user.name.as_str())?.is_none() {
                return Ok(UserWrite::NotFound);
            }
            t.insert(user.name.as_str(), encode(user).as_slice())?;
            if !has_superuser(&t)? {
                return Ok(UserWrite::LastSuperuser);
            }
            if end_sessions {
                delete_sessions_of(&txn, &user.name)?;
            }
            append_audit(&txn, audit)?;
        }
        txn.commit()?;
        Ok(UserWrite::Done)
    }

    /// Deletes a user and its sessions.
    pub fn delete_user(&self, name: &str, audit: &AuditRecord) -> Result<UserWrite> {
        let txn = self.db.begin_write()?;
        {
            let mut t = txn.open_table(schema::USERS)?;
            if t.remove(name)?.is_none() {
                return Ok(UserWrite::NotFound);
            }
            if !has_superuser(&t)? {
                return Ok(UserWrite::LastSuperuser);
            }
            delete_sessions_of(&txn, name)?;
            append_audit(&txn, audit)?;
        }
        txn.commit()?;
        Ok(UserWrite::Done)
    }

    // ---- sessions ----

    pub fn insert_session(
        &self,
        token_hash: &[u8],
        session: &SessionRecord,
        audit: &AuditRecord,
    ) -> Result<()> {
        let txn = self.db.begin_write()?;
        {
            txn.open_table(schema::SESSIONS)?
                .insert(token_hash, encode(session).as_slice())?;
            append_audit(&txn, audit)?;
        }
        txn.commit()?;
        Ok(())
    }

    pub fn session(&self, token_hash: &[u8]) -> Result<Option<SessionRecord>> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(schema::SESSIONS)?;
        t.get(token_hash)?
            .map(|v| decode("sessions", v.value()))
            .transpose()
    }

    pub fn touch_session(&self, token_hash: &[u8], now: UnixTime) -> Result<()> {
        let txn = self.db.begin_write()?;
        {
            let mut t = txn.open_table(schema::SESSIONS)?;
            let current = t
                .get(token_hash)?
                .map(|v| decode::<SessionRecord>("sessions", v.value()))
                .transpose()?;
            if let Some(mut s) = current {
                s.last_used = now;
                t.insert(token_hash, encode(&s).as_slice())?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// Ends a session; returns whether it existed.
    pub fn delete_session(&self, token_hash: &[u8], audit: Option<&AuditRecord>) -> Result<bool> {
        let txn = self.db.begin_write()?;
        let existed = {
            let existed = txn
                .open_table(schema::SESSIONS)?
                .remove(token_hash)?
                .is_some();
            if let Some(a) = audit {
                append_audit(&txn, a)?;
            }
            existed
        };
        txn.commit()?;
        Ok(existed)
    }

    /// Drops sessions for which `expired` says so; returns how many.
    pub fn purge_sessions(&self, expired: impl Fn(&SessionRecord) -> bool) -> Result<u64> {
        let txn = self.db.begin_write()?;
        let mut n = 0;
        {
            let mut t = txn.open_table(schema::SESSIONS)?;
            t.retain(|_, v| match serde_json::from_slice::<SessionRecord>(v) {
                Ok(s) if expired(&s) => {
                    n += 1;
                    false
                }
                Ok(_) => true,
                // An undecodable session is useless; drop it.
                Err(_) => {
                    n += 1;
                    false
                }
            })?;
        }
        txn.commit()?;
        Ok(n)
    }

    // ---- audit ----

    pub fn append_audit(&self, audit: &AuditRecord) -> Result<u64> {
        let txn = self.db.begin_write()?;
        let id = append_audit(&txn, audit)?;
        txn.commit()?;
        Ok(id)
    }

    /// Audit rows with id > `after`, oldest first, at most `limit`.
    pub fn audit(&self, after: u64, limit: usize) -> Result<Vec<(u64, AuditRecord)>> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(schema::AUDIT)?;
        let mut out = Vec::new();
        for row in t.range(after.saturating_add(1)..)? {
            if out.len() >= limit {
                break;
            }
            let (k, v) = row?;
            out.push((k.value(), decode("audit", v.value())?));
        }
        Ok(out)
    }
}

fn append_audit(txn: &redb::WriteTransaction, audit: &AuditRecord) -> Result<u64> {
    let mut t = txn.open_table(schema::AUDIT)?;
    let next = next_id(&t)?;
    t.insert(next, encode(audit).as_slice())?;
    Ok(next)
}

/// The next sequential id of a `u64`-keyed table: one past the largest key.
fn next_id(t: &Table<u64, &[u8]>) -> Result<u64> {
    Ok(t.last()?.map(|(k, _)| k.value() + 1).unwrap_or(1))
}

fn delete_sessions_of(txn: &redb::WriteTransaction, user: &str) -> Result<()> {
    let mut t = txn.open_table(schema::SESSIONS)?;
    t.retain(|_, v| {
        serde_json::from_slice::<SessionRecord>(v)
            .map(|s| s.user != user)
            .unwrap_or(false)
    })?;
    Ok(())
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
    fn users_sessions_and_audit_survive_reopen() {
        let (store, dir) = temp_store("reopen");
        let u = UserRecord {
            name: "alice".into(),
            password_hash: "h".into(),
            privilege: Privilege::Monitor,
            created: 5,
            updated: 5,
        };
        assert!(store.create_user(&u, &audit("user created")).unwrap());
        assert!(!store.create_user(&u, &audit("user created")).unwrap());
        let s = SessionRecord {
            user: "alice".into(),
            created: 5,
            last_used: 5,
        };
        store.insert_session(b"hash", &s, &audit("login")).unwrap();
        let uuid = store.system_uuid_or_insert(|| "u-1".into()).unwrap();
        drop(store);

        let store = Store::open(&dir.join("replgate.redb")).unwrap();
        assert_eq!(store.user("alice").unwrap().unwrap(), u);
        assert_eq!(store.session(b"hash").unwrap().unwrap(), s);
        assert_eq!(store.system_uuid_or_insert(|| "u-2".into()).unwrap(), uuid);
        // Recorded before it existed: the oldest time the database holds (the user).
        assert_eq!(store.first_start_or_insert(99).unwrap(), 1);
        assert_eq!(store.first_start_or_insert(200).unwrap(), 1);
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
                id: 12,
                system_uuid: "11111111-2222-4333-8444-555555555555".into(),
                // Escapes make serde own the string instead of borrowing it.
                name: "box \"north\"\n2".into(),
                host: "source.example".into(),
                asset_tag: full.then(|| "TAG-7".into()),
                version: "1.0".into(),
                csr_pem: "-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n".into(),
                csr_fingerprint: "cd".repeat(32),
                remote_addr: "192.0.2.9".into(),
                token: "0123456789abcdef0123456789abcdef".into(),
                verification_code: "123-456".into(),
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
            };
            let bytes = encode(&r);
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
        store.create_user(&u, &audit("c")).unwrap();
        let s = SessionRecord {
            user: "bob".into(),
            created: 1,
            last_used: 1,
        };
        store.insert_session(b"t1", &s, &audit("login")).unwrap();
        assert_eq!(
            store.delete_user("bob", &audit("d")).unwrap(),
            UserWrite::LastSuperuser
        );
        let root = UserRecord {
            name: "root".into(),
            password_hash: "h".into(),
            privilege: Privilege::Superuser,
            created: 1,
            updated: 1,
        };
        store.create_user(&root, &audit("c")).unwrap();
        assert_eq!(
            store.delete_user("bob", &audit("d")).unwrap(),
            UserWrite::Done
        );
        assert!(store.session(b"t1").unwrap().is_none());
        assert_eq!(
            store.delete_user("bob", &audit("d")).unwrap(),
            UserWrite::NotFound
        );
        let demoted = UserRecord {
            privilege: Privilege::Monitor,
            ..root
        };
        assert_eq!(
            store.update_user(&demoted, false, &audit("u")).unwrap(),
            UserWrite::LastSuperuser
        );
        assert_eq!(
            store.user("root").unwrap().unwrap().privilege,
            Privilege::Superuser
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
