//! Restores and restore drills (source side, SPEC 20): backups pulled back from a target,
//! and samples restored to check that they can be. Each kind is one record ([`RestoreBook`]
//! under `restores`, [`DrillBook`] under `drills` of `replication_settings`), so they need
//! no new table and no migration; every field has a default. The restore book holds the
//! open restores and the last [`MAX_FINISHED_RESTORES`] finished ones.

use serde::{Deserialize, Serialize};

use super::access::{self, Tables};
use super::{schema, Result, Store, Txn};
use crate::model::UnixTime;

const RESTORES_KEY: &str = "restores";
const DRILLS_KEY: &str = "drills";

/// Drill results kept; older ones are dropped.
pub(super) const MAX_DRILLS: usize = 200;

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

/// Where a restore drill stands, and how it ended.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum DrillResult {
    #[default]
    Queued,
    Running,
    Passed,
    Failed,
}

impl DrillResult {
    pub fn as_str(self) -> &'static str {
        match self {
            DrillResult::Queued => "queued",
            DrillResult::Running => "running",
            DrillResult::Passed => "passed",
            DrillResult::Failed => "failed",
        }
    }
}

/// One restore drill (SPEC 20): a random sample restored from a target into a scratch
/// directory and checked end to end.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct DrillRecord {
    pub id: u64,
    pub target_id: u64,
    /// The sample size asked for (bytes); the drill restores copies until it has this much.
    pub bytes_asked: u64,
    /// Whether `drill_interval` started it (else an admin).
    #[serde(default)]
    pub scheduled: bool,
    pub requested: UnixTime,
    #[serde(default)]
    pub result: DrillResult,
    #[serde(default)]
    pub started: Option<UnixTime>,
    #[serde(default)]
    pub finished: Option<UnixTime>,
    /// Bytes and copies restored and checked.
    #[serde(default)]
    pub bytes: u64,
    #[serde(default)]
    pub copies: u64,
    #[serde(default)]
    pub duration_ms: u64,
    #[serde(default)]
    pub message: Option<String>,
}

/// Every drill kept, oldest first, and the next id.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct DrillBook {
    #[serde(default = "first_id")]
    pub next_id: u64,
    #[serde(default)]
    pub drills: Vec<DrillRecord>,
}

fn drills(tx: &impl Tables) -> Result<DrillBook> {
    let book: Option<DrillBook> = access::get(tx, schema::REPLICATION_SETTINGS, DRILLS_KEY)?;
    Ok(book.unwrap_or(DrillBook {
        next_id: first_id(),
        drills: Vec::new(),
    }))
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

    pub fn drills(&self) -> Result<DrillBook> {
        drills(&self.snapshot()?)
    }
}

impl Txn {
    pub fn restores(&self) -> Result<RestoreBook> {
        restores(&self.inner)
    }

    pub fn put_restores(&self, book: &RestoreBook) -> Result<()> {
        self.put(schema::REPLICATION_SETTINGS, RESTORES_KEY, book)
    }

    pub fn drills(&self) -> Result<DrillBook> {
        drills(&self.inner)
    }

    /// Stores the book, keeping the newest [`MAX_DRILLS`].
    pub fn put_drills(&self, book: &mut DrillBook) -> Result<()> {
        let extra = book.drills.len().saturating_sub(MAX_DRILLS);
        book.drills.drain(..extra);
        self.put(schema::REPLICATION_SETTINGS, DRILLS_KEY, book)
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
