//! The recycle bin (target side, SPEC 20): what retention took out of a source's received
//! backups, kept for `recycle_days` outside its quota. Records and typed access only; the
//! rules and the file moves live in `replication::recycle`.
//!
//! A bin row is written before its file moves and finished after (`state`), so the
//! start-up repair can tell a move a crash interrupted from one that never began: the
//! database stays the truth.

use serde::{Deserialize, Serialize};

use super::access::{self, Tables};
use super::{schema, Result, Store, Txn};
use crate::model::UnixTime;

/// Where a bin row stands.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RecycleState {
    /// The copy is being moved into the bin: its received row still holds.
    Moving,
    /// In the bin.
    #[default]
    Binned,
    /// Being put back: the received row is written once the file is in place.
    Restoring,
}

/// A backup in a source's recycle bin, with the received row it came from.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RecycleRecord {
    /// The bin's id, never reused: the file's name in the bin (16 hex digits).
    pub id: u64,
    pub backup: String,
    pub storage_id: u64,
    pub size: u64,
    /// Lowercase hex, as received.
    pub sha256: String,
    pub version: i64,
    pub received: UnixTime,
    #[serde(default)]
    pub verified: Option<UnixTime>,
    /// A verify's damage mark, carried along so a restored copy is still fetched again.
    #[serde(default)]
    pub damaged: Option<String>,
    /// The received row's wire bytes (deduplicated transfers), carried along likewise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_received: Option<u64>,
    /// When retention moved it here.
    pub removed: UnixTime,
    #[serde(default)]
    pub state: RecycleState,
}

impl RecycleRecord {
    /// The row's key after the source's uuid, and the copy's file name in the bin.
    pub fn file_name(&self) -> String {
        format!("{:016x}", self.id)
    }
}

fn recycle(tx: &impl Tables, uuid: &str) -> Result<Vec<RecycleRecord>> {
    access::values_under(tx, schema::RECYCLE, uuid)
}

fn recycle_all(tx: &impl Tables) -> Result<Vec<(String, RecycleRecord)>> {
    access::values_by_first(tx, schema::RECYCLE)
}

impl Store {
    /// A source's bin, oldest removal first.
    pub fn recycle(&self, uuid: &str) -> Result<Vec<RecycleRecord>> {
        recycle(&self.snapshot()?, uuid)
    }

    /// Every bin row with its source's uuid (the age purge, the start-up repair).
    pub fn recycle_all(&self) -> Result<Vec<(String, RecycleRecord)>> {
        recycle_all(&self.snapshot()?)
    }
}

impl Txn {
    pub fn recycle(&self, uuid: &str) -> Result<Vec<RecycleRecord>> {
        recycle(&self.inner, uuid)
    }

    pub fn recycle_one(&self, uuid: &str, id: u64) -> Result<Option<RecycleRecord>> {
        access::get(
            &self.inner,
            schema::RECYCLE,
            (uuid, format!("{id:016x}").as_str()),
        )
    }

    /// A fresh bin id, never reused.
    pub fn next_recycle_id(&self) -> Result<u64> {
        self.take_id(schema::META_NEXT_RECYCLE_ID, 1)
    }

    pub fn put_recycle(&self, uuid: &str, r: &RecycleRecord) -> Result<()> {
        self.put(schema::RECYCLE, (uuid, r.file_name().as_str()), r)
    }

    pub fn delete_recycle(&self, uuid: &str, id: u64) -> Result<bool> {
        self.remove(schema::RECYCLE, (uuid, format!("{id:016x}").as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: u64, backup: &str) -> RecycleRecord {
        RecycleRecord {
            id,
            backup: backup.into(),
            storage_id: 1,
            size: 10,
            sha256: "ab".into(),
            version: 5,
            received: 100,
            verified: None,
            damaged: None,
            bytes_received: None,
            removed: 200,
            state: RecycleState::Binned,
        }
    }

    #[test]
    fn bins_list_per_source_in_the_order_of_their_ids() {
        let (store, dir) = crate::store::temp_store("recycle");
        store
            .write(|tx| {
                for (uuid, name) in [
                    ("u-1", "c/a"),
                    ("u-2", "c/x"),
                    ("u-1", "c/a"),
                    ("u-1", "b/z"),
                ] {
                    let id = tx.next_recycle_id()?;
                    tx.put_recycle(uuid, &row(id, name))?;
                }
                Ok::<_, crate::store::StoreError>(())
            })
            .unwrap();
        let ids: Vec<u64> = store.recycle("u-1").unwrap().iter().map(|r| r.id).collect();
        assert_eq!(ids, [1, 3, 4]);
        assert_eq!(store.recycle("u-2").unwrap().len(), 1);
        assert!(store.recycle("u").unwrap().is_empty());
        assert_eq!(store.recycle_all().unwrap().len(), 4);
        store
            .write(|tx| {
                assert_eq!(
                    tx.recycle_one("u-1", 3)?.map(|r| r.backup),
                    Some("c/a".into())
                );
                assert!(tx.delete_recycle("u-1", 3)?);
                assert!(!tx.delete_recycle("u-2", 3)?);
                // Ids are never handed out again.
                assert_eq!(tx.next_recycle_id()?, 5);
                Ok::<_, crate::store::StoreError>(())
            })
            .unwrap();
        assert_eq!(store.recycle("u-1").unwrap().len(), 2);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
