//! Typed access inside one write transaction, so that a domain operation (accept, unpair,
//! file a request, create a user) commits all its rows together or none of them. Every
//! write of the store is a method here, run through `Store::write`.

use std::cell::{Cell, RefCell};

use redb::{ReadableTable, Table, WriteTransaction};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::records::{
    AuditRecord, CertRecord, OpenRequest, RequestRecord, RequestStatus, SessionRecord,
    SystemRecord, TargetRecord, UserRecord,
};
use super::schema::{Def, Id, KeyCodec};
use super::{decode, encode, legacy, read, schema, Result, StoreError, UserWrite};
use crate::model::{Privilege, UnixTime};

/// The first id handed to a stored system; id 1 is the local appliance.
pub const FIRST_SYSTEM_ID: u64 = 2;

pub struct Txn {
    pub(super) inner: WriteTransaction,
    /// Set by [`Txn::revoke`]; `Store::write` bumps the revocation generation after the
    /// commit.
    pub(super) revoked: Cell<bool>,
    /// What [`Txn::audit`] recorded, with the row ids: `Store::write` logs each as an
    /// event line once the commit has made it true (SPEC 15).
    pub(super) audited: RefCell<Vec<(u64, AuditRecord)>>,
}

/// A table opened for writing.
pub(super) type TableMut<'t> = Table<'t, &'static [u8], &'static [u8]>;

impl Txn {
    // ---- schema and identity ----

    /// Brings the schema to the current version: each step creates what its version
    /// added (opening a table creates it). Refuses a database from a newer version.
    pub(super) fn migrate(&self) -> Result<()> {
        let found = match legacy::schema_version(&self.inner)? {
            Some(found) if found <= schema::CURRENT_VERSION => {
                legacy::rewrite_tables(self)?;
                found
            }
            Some(found) => found,
            None => read::schema_version(&self.inner)?,
        };
        if found > schema::CURRENT_VERSION {
            return Err(StoreError::TooNew { found });
        }
        if found < schema::VERSION_INITIAL {
            self.table(schema::USERS)?;
            self.table(schema::SESSIONS)?;
            self.table(schema::AUDIT)?;
        }
        if found < schema::VERSION_TARGET_PAIRING {
            self.table(schema::REQUESTS)?;
            self.table(schema::OPEN_REQUESTS)?;
            self.table(schema::SYSTEMS)?;
            self.table(schema::CERTS)?;
            self.table(schema::REVOKED)?;
        }
        if found < schema::VERSION_SOURCE_PAIRING {
            self.table(schema::TARGETS)?;
        }
        if found < schema::VERSION_REPLICATION {
            self.table(schema::QUEUE)?;
            self.table(schema::QUEUE_DONE)?;
            self.table(schema::QUEUE_LATEST)?;
            self.table(schema::RECEIVED)?;
            self.table(schema::PARTIALS)?;
            self.table(schema::REPLICATION_SETTINGS)?;
        }
        if found < schema::VERSION_PAIRING_TOKENS {
            self.table(schema::PAIRING_TOKENS)?;
        }
        if found < schema::VERSION_CERT_LINEAGE {
            self.table(schema::LINEAGE)?;
            self.table(schema::GRACE)?;
            self.table(schema::RETIRED)?;
            self.number_lineages()?;
        }
        if found != schema::CURRENT_VERSION {
            self.put(
                schema::META,
                schema::META_SCHEMA_VERSION,
                &schema::CURRENT_VERSION,
            )?;
        }
        Ok(())
    }

    /// Migration to lineages: the certificates of each system, oldest first, become its
    /// generations 1, 2, ... (earlier versions kept one serial per systems row, and a
    /// replacement key's certificate beside the revoked one it replaced).
    fn number_lineages(&self) -> Result<()> {
        let mut certs: Vec<CertRecord> = read::certs(&self.inner)?;
        certs.sort_by(|a, b| {
            (a.system_id, a.issued_at, &a.serial).cmp(&(b.system_id, b.issued_at, &b.serial))
        });
        let mut previous_system = None;
        let mut generation = 0;
        for mut c in certs {
            if previous_system != Some(c.system_id) {
                previous_system = Some(c.system_id);
                generation = read::next_generation(&self.inner, c.system_id)? - 1;
            }
            if c.generation != 0 {
                continue;
            }
            generation += 1;
            c.generation = generation;
            self.put_cert(&c)?;
            self.put(schema::LINEAGE, (c.system_id, generation), &c.serial)?;
        }
        Ok(())
    }

    /// A value of `meta` written once: the stored one, or what `fresh` computes (in this
    /// same transaction), stored now.
    fn meta_or_insert<T: Serialize + DeserializeOwned>(
        &self,
        key: &str,
        fresh: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        if let Some(value) = read::get(&self.inner, schema::META, key)? {
            return Ok(value);
        }
        let value = fresh()?;
        self.put(schema::META, key, &value)?;
        Ok(value)
    }

    /// The appliance's stable identity, created once.
    pub fn system_uuid_or_insert(&self, fresh: impl FnOnce() -> String) -> Result<String> {
        self.meta_or_insert(schema::META_SYSTEM_UUID, || Ok(fresh()))
    }

    /// The time of the appliance's first start, recorded once. A database from before it
    /// was recorded gets the oldest time it holds (the first audit row or user, both
    /// written at the first start), else `now`.
    pub fn first_start_or_insert(&self, now: UnixTime) -> Result<UnixTime> {
        self.meta_or_insert(schema::META_FIRST_START, || {
            let first_audit = read::audit(&self.inner, 0, 1)?.first().map(|(_, a)| a.time);
            Ok(read::users(&self.inner)?
                .iter()
                .map(|u| u.created)
                .chain(first_audit)
                .min()
                .unwrap_or(now))
        })
    }

    /// Hands out the counter `key` (at least `floor`) and advances it.
    pub(super) fn take_id(&self, key: &str, floor: u64) -> Result<u64> {
        let stored: Option<u64> = read::get(&self.inner, schema::META, key)?;
        let id = stored.unwrap_or(floor).max(floor);
        self.put(schema::META, key, &(id + 1))?;
        Ok(id)
    }

    /// The table `def`, opened for writing (opening creates it).
    pub(super) fn table<K: KeyCodec>(&self, def: Def<K>) -> Result<TableMut<'_>> {
        Ok(self.inner.open_table(def.raw())?)
    }

    /// Encodes `value` and stores it under `key` in `def`.
    pub(super) fn put<K: KeyCodec, T: Serialize + ?Sized>(
        &self,
        def: Def<K>,
        key: K::Ref<'_>,
        value: &T,
    ) -> Result<()> {
        let value = encode(def.name(), value)?;
        self.table(def)?
            .insert(def.key(key).as_slice(), value.as_slice())?;
        Ok(())
    }

    /// Removes `key` from the table `def`; returns whether it was there.
    pub(super) fn remove<K: KeyCodec>(&self, def: Def<K>, key: K::Ref<'_>) -> Result<bool> {
        Ok(self.table(def)?.remove(def.key(key).as_slice())?.is_some())
    }

    /// One past the largest key of an id-keyed table, or `empty` for an empty table.
    fn after_last(&self, def: Def<Id>, empty: u64) -> Result<u64> {
        let t = self.table(def)?;
        let last = match t.last()? {
            Some((k, _)) => Some(read::key_of(def, k.value())?),
            None => None,
        };
        Ok(last.map_or(empty, |k| k + 1))
    }

    // ---- pairing requests (target side) ----

    pub fn request(&self, id: u64) -> Result<Option<RequestRecord>> {
        read::request(&self.inner, id)
    }

    /// Writes a request and keeps the open-request index in step with its status.
    pub fn put_request(&self, r: &RequestRecord) -> Result<()> {
        self.put(schema::REQUESTS, r.id, r)?;
        if r.status == RequestStatus::Pending {
            let entry = OpenRequest {
                system_uuid: r.system_uuid.clone(),
                csr_fingerprint: r.csr_fingerprint.clone(),
                remote_addr: r.remote_addr.clone(),
                expires: r.expires,
            };
            self.put(schema::OPEN_REQUESTS, r.id, &entry)?;
        } else {
            self.remove(schema::OPEN_REQUESTS, r.id)?;
        }
        Ok(())
    }

    /// Deletes a request row (and its open-index entry); its id is never handed out again.
    pub fn delete_request(&self, id: u64) -> Result<bool> {
        self.remove(schema::OPEN_REQUESTS, id)?;
        self.remove(schema::REQUESTS, id)
    }

    /// The next sequential request id, never reused (purged requests keep theirs).
    pub fn next_request_id(&self) -> Result<u64> {
        let floor = self.after_last(schema::REQUESTS, 1)?;
        self.take_id(schema::META_NEXT_REQUEST_ID, floor)
    }

    pub fn open_requests(&self) -> Result<Vec<(u64, OpenRequest)>> {
        read::open_requests(&self.inner)
    }

    // ---- systems and certificates (target side) ----

    pub fn system(&self, id: u64) -> Result<Option<SystemRecord>> {
        read::system(&self.inner, id)
    }

    pub fn systems(&self) -> Result<Vec<SystemRecord>> {
        read::systems(&self.inner)
    }

    pub fn put_system(&self, s: &SystemRecord) -> Result<()> {
        self.put(schema::SYSTEMS, s.id, s)
    }

    pub fn delete_system(&self, id: u64) -> Result<bool> {
        self.remove(schema::SYSTEMS, id)
    }

    /// A fresh system id. Ids are never reused, even after an unpair deleted the row, so a
    /// stale `sid` in a script can never name another source.
    pub fn next_system_id(&self) -> Result<u64> {
        let floor = self.after_last(schema::SYSTEMS, FIRST_SYSTEM_ID)?;
        self.take_id(schema::META_NEXT_SYSTEM_ID, floor.max(FIRST_SYSTEM_ID))
    }

    pub fn cert(&self, serial: &str) -> Result<Option<CertRecord>> {
        read::cert(&self.inner, serial)
    }

    /// Records an issued certificate as generation `c.generation` of its system's lineage
    /// (see [`Txn::next_generation`]); false (nothing written) if the serial or that
    /// generation already exists.
    pub fn insert_cert(&self, c: &CertRecord) -> Result<bool> {
        let key = (c.system_id, c.generation);
        if self.cert(&c.serial)?.is_some() || read::contains(&self.inner, schema::LINEAGE, key)? {
            return Ok(false);
        }
        self.put_cert(c)?;
        self.put(schema::LINEAGE, key, &c.serial)?;
        Ok(true)
    }

    fn put_cert(&self, c: &CertRecord) -> Result<()> {
        self.put(schema::CERTS, &c.serial, c)
    }

    /// Applies `change` to the stored certificate `serial`, if there is one.
    fn change_cert(&self, serial: &str, change: impl FnOnce(&mut CertRecord)) -> Result<()> {
        if let Some(mut c) = self.cert(serial)? {
            change(&mut c);
            self.put_cert(&c)?;
        }
        Ok(())
    }

    /// The generation the next certificate of `system_id` takes.
    pub fn next_generation(&self, system_id: u64) -> Result<u64> {
        read::next_generation(&self.inner, system_id)
    }

    /// Every certificate of `system_id`, oldest generation first.
    pub fn lineage(&self, system_id: u64) -> Result<Vec<CertRecord>> {
        read::lineage(&self.inner, system_id)
    }

    /// Revokes a serial from now on; the tunnel checks this table on every handshake. A
    /// certificate in its grace window leaves it.
    pub fn revoke(&self, serial: &str, now: UnixTime) -> Result<()> {
        self.revoked.set(true);
        self.put(schema::REVOKED, serial, &now)?;
        self.remove(schema::GRACE, serial)?;
        self.change_cert(serial, |c| c.revoked_at = Some(now))
    }

    /// Revokes every certificate of `system_id` that still opens the tunnel (the current
    /// one and a predecessor in its grace window); returns their serials.
    pub fn revoke_lineage(&self, system_id: u64, now: UnixTime) -> Result<Vec<String>> {
        let mut revoked = Vec::new();
        for c in self.lineage(system_id)? {
            if c.is_live() {
                self.revoke(&c.serial, now)?;
                revoked.push(c.serial);
            }
        }
        Ok(revoked)
    }

    /// Marks `serial` superseded by a renewal at `now`: it stays valid until `until`
    /// (or until [`Txn::retire`]).
    pub fn supersede(&self, serial: &str, now: UnixTime, until: UnixTime) -> Result<()> {
        self.put(schema::GRACE, serial, &until)?;
        self.change_cert(serial, |c| c.superseded_at = Some(now))
    }

    /// Ends a superseded certificate's grace: new handshakes with it are refused from now
    /// on. Not a revocation: connections already open with it run to their end. Nothing
    /// for a certificate that is not in its grace window.
    pub fn retire(&self, serial: &str, now: UnixTime) -> Result<bool> {
        if !self.remove(schema::GRACE, serial)? {
            return Ok(false);
        }
        self.put(schema::RETIRED, serial, &now)?;
        self.change_cert(serial, |c| c.retired_at = Some(now))?;
        Ok(true)
    }

    /// The end of `serial`'s grace window, while it is in one.
    pub fn grace_until(&self, serial: &str) -> Result<Option<UnixTime>> {
        read::grace_until(&self.inner, serial)
    }

    // ---- targets (source side) ----

    pub fn targets(&self) -> Result<Vec<TargetRecord>> {
        read::targets(&self.inner)
    }

    pub fn target(&self, id: u64) -> Result<Option<TargetRecord>> {
        read::target(&self.inner, id)
    }

    pub fn put_target(&self, r: &TargetRecord) -> Result<()> {
        self.put(schema::TARGETS, r.id, r)
    }

    pub fn delete_target(&self, id: u64) -> Result<bool> {
        self.remove(schema::TARGETS, id)
    }

    /// A fresh target id, never reused (the poller keys its schedule by it).
    pub fn next_target_id(&self) -> Result<u64> {
        let floor = self.after_last(schema::TARGETS, 1)?;
        self.take_id(schema::META_NEXT_TARGET_ID, floor)
    }

    // ---- users and sessions ----

    /// Inserts a user that must not exist yet; returns false (and writes nothing) if it does.
    pub fn create_user(&self, user: &UserRecord, audit: &AuditRecord) -> Result<bool> {
        if read::user(&self.inner, &user.name)?.is_some() {
            return Ok(false);
        }
        self.put_user(user)?;
        self.audit(audit)?;
        Ok(true)
    }

    /// Replaces an existing user; when `end_sessions` the user's sessions end too (a new
    /// password or a lower privilege must not leave old tokens working). Writes nothing
    /// when the user is unknown or when no superuser would be left.
    pub fn update_user(
        &self,
        user: &UserRecord,
        end_sessions: bool,
        audit: &AuditRecord,
    ) -> Result<UserWrite> {
        if read::user(&self.inner, &user.name)?.is_none() {
            return Ok(UserWrite::NotFound);
        }
        if !self.superuser_remains(&user.name, Some(user))? {
            return Ok(UserWrite::LastSuperuser);
        }
        self.put_user(user)?;
        if end_sessions {
            self.delete_sessions_of(&user.name)?;
        }
        self.audit(audit)?;
        Ok(UserWrite::Done)
    }

    /// Deletes a user and its sessions. Writes nothing when the user is unknown or is the
    /// last superuser.
    pub fn delete_user(&self, name: &str, audit: &AuditRecord) -> Result<UserWrite> {
        if read::user(&self.inner, name)?.is_none() {
            return Ok(UserWrite::NotFound);
        }
        if !self.superuser_remains(name, None)? {
            return Ok(UserWrite::LastSuperuser);
        }
        self.remove(schema::USERS, name)?;
        self.delete_sessions_of(name)?;
        self.audit(audit)?;
        Ok(UserWrite::Done)
    }

    fn put_user(&self, user: &UserRecord) -> Result<()> {
        self.put(schema::USERS, &user.name, user)
    }

    /// Whether a superuser would be left if `name` were replaced by `with` (or removed).
    fn superuser_remains(&self, name: &str, with: Option<&UserRecord>) -> Result<bool> {
        let is_super = |u: &UserRecord| u.privilege == Privilege::Superuser;
        Ok(with.is_some_and(is_super)
            || read::users(&self.inner)?
                .iter()
                .any(|u| u.name != name && is_super(u)))
    }

    pub fn insert_session(
        &self,
        token_hash: &[u8],
        session: &SessionRecord,
        audit: &AuditRecord,
    ) -> Result<()> {
        self.put(schema::SESSIONS, token_hash, session)?;
        self.audit(audit)?;
        Ok(())
    }

    /// Marks a session used at `now`; nothing when it is gone.
    pub fn touch_session(&self, token_hash: &[u8], now: UnixTime) -> Result<()> {
        if let Some(mut s) = read::session(&self.inner, token_hash)? {
            s.last_used = now;
            self.put(schema::SESSIONS, token_hash, &s)?;
        }
        Ok(())
    }

    /// Ends a session; returns whether it existed.
    pub fn delete_session(&self, token_hash: &[u8], audit: Option<&AuditRecord>) -> Result<bool> {
        let existed = self.remove(schema::SESSIONS, token_hash)?;
        if let Some(a) = audit {
            self.audit(a)?;
        }
        Ok(existed)
    }

    /// Drops sessions for which `expired` says so, and undecodable ones (useless to
    /// anyone); returns how many.
    pub fn purge_sessions(&self, expired: impl Fn(&SessionRecord) -> bool) -> Result<u64> {
        let mut n = 0;
        self.table(schema::SESSIONS)?.retain(|_, v| {
            match decode::<SessionRecord>("sessions", v) {
                Ok(s) if !expired(&s) => true,
                _ => {
                    n += 1;
                    false
                }
            }
        })?;
        Ok(n)
    }

    fn delete_sessions_of(&self, user: &str) -> Result<()> {
        self.purge_sessions(|s| s.user == user)?;
        Ok(())
    }

    // ---- audit ----

    /// Appends an audit row; returns its sequential id.
    pub fn audit(&self, a: &AuditRecord) -> Result<u64> {
        let id = self.after_last(schema::AUDIT, 1)?;
        self.put(schema::AUDIT, id, a)?;
        self.audited.borrow_mut().push((id, a.clone()));
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::UnixTime;
    use crate::store::Store;

    /// A value whose serialization fails, as a record with a bug in its `Serialize` would.
    struct Unencodable;

    impl Serialize for Unencodable {
        fn serialize<S: serde::Serializer>(&self, _: S) -> std::result::Result<S::Ok, S::Error> {
            Err(serde::ser::Error::custom("refused"))
        }
    }

    /// What version 3 held for a source that filed a replacement key: two certificates of
    /// one system (the first revoked), unnumbered, and another system's one.
    #[test]
    fn migration_numbers_each_systems_certificates_oldest_first() {
        let dir = std::env::temp_dir().join(format!("replgate-txn-lineage-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        crate::fsx::ensure_private_dir(&dir).unwrap();
        let path = dir.join("replgate.redb");
        let cert = |serial: &str, system_id: u64, issued_at: UnixTime| CertRecord {
            serial: serial.into(),
            request_id: 1,
            system_id,
            subject: "u".into(),
            issued_at,
            not_after: issued_at + 100,
            pem: String::new(),
            revoked_at: None,
            generation: 0,
            renews: None,
            superseded_at: None,
            retired_at: None,
        };
        {
            let store = Store::open(&path).unwrap();
            store
                .write(|tx| {
                    for c in [cert("bb", 2, 20), cert("aa", 2, 10), cert("cc", 3, 5)] {
                        tx.put_cert(&c)?;
                    }
                    tx.revoke("aa", 15)?;
                    tx.put(schema::META, schema::META_SCHEMA_VERSION, &3u64)
                })
                .unwrap();
        }
        let store = Store::open(&path).unwrap();
        let two: Vec<_> = store
            .lineage(2)
            .unwrap()
            .into_iter()
            .map(|c| (c.serial, c.generation, c.revoked_at))
            .collect();
        assert_eq!(
            two,
            [("aa".to_string(), 1, Some(15)), ("bb".to_string(), 2, None)]
        );
        assert_eq!(store.lineage(3).unwrap()[0].generation, 1);
        assert!(store.lineage(4).unwrap().is_empty());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_record_that_does_not_encode_fails_the_write_and_stores_nothing() {
        let dir = std::env::temp_dir().join(format!("replgate-txn-encode-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        crate::fsx::ensure_private_dir(&dir).unwrap();
        let store = Store::open(&dir.join("replgate.redb")).unwrap();
        let err = store
            .write(|tx| tx.put(schema::META, "probe", &Unencodable))
            .unwrap_err();
        assert!(
            matches!(&err, StoreError::Encode { table, detail } if table == "meta" && detail.contains("refused")),
            "{err:?}"
        );
        let stored: Option<String> =
            read::get(&store.snapshot().unwrap(), schema::META, "probe").unwrap();
        assert_eq!(stored, None);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
