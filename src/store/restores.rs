//! Restores (source side, SPEC 20): backups pulled back from a target. Kept as one record,
//! [`RestoreBook`], under the key `restores` of `replication_settings`, so restores need
//! no new table and no migration; every field has a default. The book holds the open
//! restores and the last [`MAX_FINISHED_RESTORES`] finished ones.

use serde::{Deserialize, Serialize};

use super::access::{self, Tables};
use super::{schema, Result, Store, Txn};
use crate::model::UnixTime;

const RESTORES_KEY: &str = "restores";

/// Finished restores kept for the queue's history; older ones are dropped.
pub const MAX_FINISHED_RESTORES: usize = 1_000;

/// Where a restore stands.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum RestoreStatus {
    #[default]
    Waiting,
    Active,
    Done,
    Failed,
}

impl RestoreStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RestoreStatus::Waiting => "waiting",
            RestoreStatus::Active => "active",
            RestoreStatus::Done => "done",
            RestoreStatus::Failed => "failed",
        }
    }

    pub fn is_finished(self) -> bool {
        matches!(self, RestoreStatus::Done | RestoreStatus::Failed)
    }
}

/// One backup to pull back from a target into a local storage.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct RestoreItem {
    pub id: u64,
    pub target_id: u64,
    /// `<client>/<file>`, checked by `replication::names`.
    pub backup: String,
    /// The size and SHA-256 (lowercase hex) the target announced: what is committed must
    /// match both.
    pub size: u64,
    pub sha256: String,
    /// The local storage written into.
    pub storage_id: u64,
    /// Whether an existing different file at the same name may be replaced.
    #[serde(default)]
    pub overwrite: bool,
    #[serde(default)]
    pub status: RestoreStatus,
    pub queued: UnixTime,
    #[serde(default)]
    pub started: Option<UnixTime>,
    #[serde(default)]
    pub finished: Option<UnixTime>,
    /// Bytes held durably in the local copy, as of the last attempt's end.
    #[serde(default)]
    pub bytes_done: u64,
    /// Every byte received for it over all attempts.
    #[serde(default)]
    pub bytes_received: u64,
    #[serde(default)]
    pub attempts: u32,
    #[serde(default)]
    pub message: Option<String>,
    /// A failed attempt is retried no earlier than this.
    #[serde(default)]
    pub retry_at: Option<UnixTime>,
}

/// Every restore this appliance knows of, and the next id to hand out.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct RestoreBook {
    #[serde(default = "first_id")]
    pub next_id: u64,
    #[serde(default)]
    pub items: Vec<RestoreItem>,
}

fn first_id() -> u64 {
    1
}

impl RestoreBook {
    /// Drops the oldest finished items past [`MAX_FINISHED_RESTORES`].
    pub fn trim(&mut self) {
        let finished = self.items.iter().filter(|i| i.status.is_finished()).count();
        let mut drop = finished.saturating_sub(MAX_FINISHED_RESTORES);
        self.items.retain(|i| {
            if drop > 0 && i.status.is_finished() {
                drop -= 1;
                return false;
            }
            true
        });
    }
}

fn restores(tx: &impl Tables) -> Result<RestoreBook> {
    let book: Option<RestoreBook> = access::get(tx, schema::REPLICATION_SETTINGS, RESTORES_KEY)?;
    Ok(book.unwrap_or(RestoreBook {
        next_id: first_id(),
        items: Vec::new(),
    }))
}

impl Store {
    pub fn restores(&self) -> Result<RestoreBook> {
        restores(&self.snapshot()?)
    }
}

impl Txn {
    pub fn restores(&self) -> Result<RestoreBook> {
        restores(&self.inner)
    }

    pub fn put_restores(&self, book: &RestoreBook) -> Result<()> {
        self.put(schema::REPLICATION_SETTINGS, RESTORES_KEY, book)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trim_keeps_open_items_and_the_newest_finished_ones() {
        let mut book = RestoreBook::default();
        for id in 0..(MAX_FINISHED_RESTORES as u64 + 5) {
            book.items.push(RestoreItem {
                id,
                status: RestoreStatus::Done,
                ..RestoreItem::default()
            });
        }
        book.items.insert(
            2,
            RestoreItem {
                id: 99_999,
                ..RestoreItem::default()
            },
        );
        book.trim();
        assert_eq!(book.items.len(), MAX_FINISHED_RESTORES + 1);
        assert!(book.items.iter().any(|i| i.id == 99_999));
        assert!(!book.items.iter().any(|i| i.id < 5), "the oldest went");
    }
}
