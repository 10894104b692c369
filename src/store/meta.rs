//! The `meta` table: the schema version, the appliance's identity and first start, written
//! once each, and the id counters that never go back (so an id is never handed out twice).

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::access::{get, Tables};
use super::{audit, schema, users, Result, Store, Txn};
use crate::model::UnixTime;

pub(super) fn schema_version(tx: &impl Tables) -> Result<u64> {
    Ok(get(tx, schema::META, schema::META_SCHEMA_VERSION)?.unwrap_or(0))
}

impl Store {
    pub fn schema_version(&self) -> Result<u64> {
        schema_version(&self.snapshot()?)
    }
}

impl Txn {
    /// A value of `meta` written once: the stored one, or what `fresh` computes (in this
    /// same transaction), stored now.
    fn meta_or_insert<T: Serialize + DeserializeOwned>(
        &self,
        key: &str,
        fresh: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        if let Some(value) = get(&self.inner, schema::META, key)? {
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
            let first_audit = audit::audit(&self.inner, 0, 1)?
                .first()
                .map(|(_, a)| a.time);
            Ok(users::users(&self.inner)?
                .iter()
                .map(|u| u.created)
                .chain(first_audit)
                .min()
                .unwrap_or(now))
        })
    }

    /// Hands out the counter `key` (at least `floor`) and advances it.
    pub(super) fn take_id(&self, key: &str, floor: u64) -> Result<u64> {
        let stored: Option<u64> = get(&self.inner, schema::META, key)?;
        let id = stored.unwrap_or(floor).max(floor);
        self.put(schema::META, key, &(id + 1))?;
        Ok(id)
    }
}
