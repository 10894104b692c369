//! Users and their sessions: the records (a password only as its argon2id hash, a session
//! only under its token's hash), their reads and writes. The last superuser is never
//! removed: the check runs inside the write that would remove it, so two superusers
//! demoting each other at once cannot both win.

use std::fmt;

use redb::ReadableTableMetadata;
use serde::{Deserialize, Serialize};

use super::access::{get, values, Tables};
use super::audit::AuditRecord;
use super::{decode, schema, Result, Store, Txn};
use crate::model::{Privilege, UnixTime};

#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct UserRecord {
    pub name: String,
    /// Argon2id PHC string.
    pub password_hash: String,
    pub privilege: Privilege,
    pub created: UnixTime,
    pub updated: UnixTime,
}

impl fmt::Debug for UserRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserRecord")
            .field("name", &self.name)
            .field("password_hash", &"…")
            .field("privilege", &self.privilege)
            .finish()
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SessionRecord {
    pub user: String,
    pub created: UnixTime,
    /// Refreshed at most once a minute, so reads do not turn into a write each.
    pub last_used: UnixTime,
    /// A scraper's token (`POST /api/metrics/token`): never expires, and acts with at most
    /// `monitor` privilege whatever its user's. Ends with a logout, a password change or
    /// the user's removal, like any session.
    #[serde(default)]
    pub scraper: bool,
}

/// The outcome of changing or removing a user.
#[derive(Debug, PartialEq, Eq)]
pub enum UserWrite {
    Done,
    NotFound,
    /// Nothing was written: no superuser would be left.
    LastSuperuser,
}

fn user(tx: &impl Tables, name: &str) -> Result<Option<UserRecord>> {
    get(tx, schema::USERS, name)
}

pub(super) fn users(tx: &impl Tables) -> Result<Vec<UserRecord>> {
    values(tx, schema::USERS)
}

fn user_count(tx: &impl Tables) -> Result<u64> {
    Ok(tx.open(schema::USERS)?.len()?)
}

fn session(tx: &impl Tables, token_hash: &[u8]) -> Result<Option<SessionRecord>> {
    get(tx, schema::SESSIONS, token_hash)
}

impl Store {
    pub fn user(&self, name: &str) -> Result<Option<UserRecord>> {
        user(&self.snapshot()?, name)
    }

    pub fn users(&self) -> Result<Vec<UserRecord>> {
        users(&self.snapshot()?)
    }

    pub fn user_count(&self) -> Result<u64> {
        user_count(&self.snapshot()?)
    }

    pub fn session(&self, token_hash: &[u8]) -> Result<Option<SessionRecord>> {
        session(&self.snapshot()?, token_hash)
    }
}

impl Txn {
    /// Inserts a user that must not exist yet; returns false (and writes nothing) if it does.
    pub fn create_user(&self, user: &UserRecord, audit: &AuditRecord) -> Result<bool> {
        if self::user(&self.inner, &user.name)?.is_some() {
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
        if self::user(&self.inner, &user.name)?.is_none() {
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
        if self::user(&self.inner, name)?.is_none() {
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
            || users(&self.inner)?
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
        if let Some(mut s) = session(&self.inner, token_hash)? {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{temp_store, test_audit as audit, SCHEMA_VERSION};

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
