//! Systems (target side): the rows of the appliances known here, paired sources among
//! them, and their reads and writes. Ids come from a counter that never goes back.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::access::{get, values, values_page, Tables};
use super::{schema, Result, Store, Txn};
use crate::model::{Role, UnixTime};
use crate::sync::lock;

/// The first id handed to a stored system; id 1 is the local appliance.
pub const FIRST_SYSTEM_ID: u64 = 2;

/// A row of the systems table.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SystemRecord {
    pub id: u64,
    pub name: String,
    pub host: String,
    /// Stored as the appliance API's string (`Managed DPU`, `Replication Source`,
    /// `Non-Managed Replication Source`).
    pub role: Role,
    #[serde(default)]
    pub system_uuid: Option<String>,
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub storage_id: Option<u64>,
    pub created: UnixTime,
    pub updated: UnixTime,
    /// The certificate that currently lets this source open the tunnel.
    #[serde(default)]
    pub cert_serial: Option<String>,
    #[serde(default)]
    pub certificate_expires: Option<UnixTime>,
    /// The last successful tunnel hello.
    #[serde(default)]
    pub last_seen: Option<UnixTime>,
    /// The serial of the certificate that last said hello: what the source holds (a CA
    /// rollover counts a source as moved once it was seen with its new-chain certificate).
    #[serde(default)]
    pub last_serial: Option<String>,
    /// True when the row was a managed system before it became a replication source, so
    /// unpairing returns it to `Managed DPU` instead of dropping it.
    #[serde(default)]
    pub was_managed: bool,
    #[serde(default)]
    pub request_id: Option<u64>,
    /// The appliance's asset tag, as the source reported it (or as registered).
    #[serde(default)]
    pub asset_tag: Option<String>,
    /// The most this source may store here, in MB (MiB, as every `mb_` size of the API);
    /// None means no quota.
    #[serde(default)]
    pub quota_mb: Option<u64>,
    /// This source's weight in the sharing of receiving sessions (SPEC 21); None is 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share: Option<u32>,
    /// The uuid under which this source's copies are kept (`<storage>/<uuid>/`, the
    /// received records) when it replaced another appliance and took over its copies
    /// (SPEC 20); None: its own `system_uuid`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copies_uuid: Option<String>,
    /// What the target keeps of this source's received backups (SPEC 20); None keeps all.
    #[serde(default)]
    pub retention: Option<Retention>,
}

/// A source's retention policy on the target: a received backup is kept while any rule
/// that is set keeps it (`replication::retention` applies it). A policy with no rule set
/// is stored as no policy (keep all).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Retention {
    /// Keep the newest this many backups of each client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_last: Option<u32>,
    /// Keep backups received within this many days.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_days: Option<u32>,
}

impl Retention {
    /// The policy, or None when it keeps everything (no rule set).
    pub fn normalized(self) -> Option<Retention> {
        (self.keep_last.is_some() || self.keep_days.is_some()).then_some(self)
    }
}

/// A source's weight in the sharing of receiving sessions when none is set, and the
/// largest one may set (`share`, SPEC 21).
pub const DEFAULT_SHARE: u32 = 1;
pub const MAX_SHARE: u32 = 100;

impl SystemRecord {
    /// This source's weight in the sharing of receiving sessions.
    pub fn share(&self) -> u32 {
        self.share.unwrap_or(DEFAULT_SHARE)
    }

    /// The uuid this source's copies are kept under: inherited, or its own.
    pub fn copies_uuid(&self) -> Option<&str> {
        self.copies_uuid.as_deref().or(self.system_uuid.as_deref())
    }
}

/// The systems rows changed most recently, by commit: what lets a reader that rendered
/// every row (`GET /api/systems`) read again only the rows that changed since
/// ([`Store::systems_changed_since`]). Bounded: the oldest entries are dropped first.
#[derive(Debug, Default)]
pub(super) struct ChangeLog {
    /// Counts the commits that changed a systems row.
    generation: u64,
    /// `(generation, id)` of the last [`CHANGES_KEPT`] changes, oldest first.
    changes: VecDeque<(u64, u64)>,
    /// The newest generation some of whose changes were dropped.
    dropped: u64,
}

/// How many changed rows the [`ChangeLog`] keeps: a minute of hellos from 5,000 sources
/// at a 60 s heartbeat.
const CHANGES_KEPT: usize = 8_192;

impl ChangeLog {
    /// Notes a commit that changed the rows `ids`.
    pub(super) fn record(&mut self, ids: Vec<u64>) {
        self.generation += 1;
        for id in ids {
            if self.changes.len() == CHANGES_KEPT {
                if let Some((generation, _)) = self.changes.pop_front() {
                    self.dropped = generation;
                }
            }
            self.changes.push_back((self.generation, id));
        }
    }

    fn since(&self, since: u64) -> (u64, Option<Vec<u64>>) {
        if since > self.generation || since < self.dropped {
            return (self.generation, None);
        }
        let mut ids: Vec<u64> = (self.changes.iter().rev())
            .take_while(|(generation, _)| *generation > since)
            .map(|(_, id)| *id)
            .collect();
        ids.sort_unstable();
        ids.dedup();
        (self.generation, Some(ids))
    }
}

fn system(tx: &impl Tables, id: u64) -> Result<Option<SystemRecord>> {
    get(tx, schema::SYSTEMS, id)
}

pub(super) fn systems(tx: &impl Tables) -> Result<Vec<SystemRecord>> {
    values(tx, schema::SYSTEMS)
}

impl Store {
    pub fn system(&self, id: u64) -> Result<Option<SystemRecord>> {
        system(&self.snapshot()?, id)
    }

    pub fn systems(&self) -> Result<Vec<SystemRecord>> {
        systems(&self.snapshot()?)
    }

    /// At most `limit` systems in id order after the first `skip` (a page of
    /// `GET /api/systems`): only those rows are decoded.
    pub fn systems_page(&self, skip: u64, limit: usize) -> Result<Vec<SystemRecord>> {
        values_page(&self.snapshot()?, schema::SYSTEMS, skip, limit)
    }

    /// The systems generation (it grows after every commit that changed, added or deleted
    /// a systems row, a hello's `last_seen` included), and the ids of the rows changed
    /// after generation `since`, in id order; None for the ids when that is further back
    /// than the store remembers (read every row). Read it before the rows: a row changed
    /// meanwhile is read new and named again at the next call.
    pub fn systems_changed_since(&self, since: u64) -> (u64, Option<Vec<u64>>) {
        lock(&self.shared.systems).since(since)
    }
}

impl Txn {
    pub fn system(&self, id: u64) -> Result<Option<SystemRecord>> {
        system(&self.inner, id)
    }

    pub fn systems(&self) -> Result<Vec<SystemRecord>> {
        systems(&self.inner)
    }

    pub fn put_system(&self, s: &SystemRecord) -> Result<()> {
        let counted = |r: &SystemRecord| {
            (
                r.role,
                r.name.clone(),
                r.cert_serial.clone(),
                r.last_serial.clone(),
                r.certificate_expires,
            )
        };
        let old = system(&self.inner, s.id)?;
        if old.as_ref().is_none_or(|old| counted(old) != counted(s)) {
            self.certificates_changed();
        }
        if old.as_ref() != Some(s) {
            self.systems.borrow_mut().push(s.id);
        }
        self.put(schema::SYSTEMS, s.id, s)
    }

    pub fn delete_system(&self, id: u64) -> Result<bool> {
        self.certificates_changed();
        self.systems.borrow_mut().push(id);
        self.remove(schema::SYSTEMS, id)
    }

    /// A fresh system id. Ids are never reused, even after an unpair deleted the row, so a
    /// stale `sid` in a script can never name another source.
    pub fn next_system_id(&self) -> Result<u64> {
        let floor = self.after_last(schema::SYSTEMS, FIRST_SYSTEM_ID)?;
        self.take_id(schema::META_NEXT_SYSTEM_ID, floor.max(FIRST_SYSTEM_ID))
    }
}

#[cfg(test)]
impl SystemRecord {
    /// A paired source's row for unit tests: id `id`, seen at 1,000.
    pub fn fixture(id: u64) -> SystemRecord {
        SystemRecord {
            id,
            name: format!("source-{id}"),
            host: format!("source-{id}.example"),
            role: Role::NonManagedSource,
            system_uuid: Some(format!("uuid-{id}")),
            version: Some("1.0".into()),
            storage_id: Some(1),
            created: 10,
            updated: 20,
            cert_serial: Some(format!("{id:02x}")),
            certificate_expires: Some(1_000_000),
            last_seen: Some(1_000),
            last_serial: Some(format!("{id:02x}")),
            was_managed: false,
            request_id: Some(id),
            asset_tag: None,
            quota_mb: None,
            share: None,
            copies_uuid: None,
            retention: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{temp_store, test_audit};

    /// A reader learns exactly the rows changed since its generation: a write that leaves
    /// a row as it was, or touches no row, names none; a hello (only `last_seen`) does.
    #[test]
    fn the_change_log_names_the_rows_changed_since_a_generation() {
        let (store, dir) = temp_store("systems-changes");
        let (g0, none) = store.systems_changed_since(0);
        assert_eq!((g0, none), (0, Some(Vec::new())));
        let (a, b) = (SystemRecord::fixture(2), SystemRecord::fixture(3));
        store
            .write(|tx| {
                tx.put_system(&a)?;
                tx.put_system(&b)
            })
            .unwrap();
        let (g1, ids) = store.systems_changed_since(g0);
        assert_eq!((g1, ids), (1, Some(vec![2, 3])));
        store.write(|tx| tx.put_system(&a)).unwrap();
        store.write(|tx| tx.audit(&test_audit("no row"))).unwrap();
        assert_eq!(store.systems_changed_since(g1), (1, Some(Vec::new())));
        let seen = SystemRecord {
            last_seen: Some(2_000),
            ..b.clone()
        };
        store.write(|tx| tx.put_system(&seen)).unwrap();
        store.write(|tx| tx.delete_system(2).map(|_| ())).unwrap();
        assert_eq!(store.systems_changed_since(g1), (3, Some(vec![2, 3])));
        assert_eq!(store.systems_changed_since(2), (3, Some(vec![2])));
        let failed: Result<()> = store.write(|tx| {
            tx.put_system(&a)?;
            Err(super::super::StoreError::Corrupt {
                table: "systems".into(),
                detail: "a test".into(),
            })
        });
        assert!(failed.is_err());
        assert_eq!(
            store.systems_changed_since(3),
            (3, Some(Vec::new())),
            "no commit"
        );
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Past what the log keeps, a reader is told to read every row.
    #[test]
    fn a_reader_further_back_than_the_log_reads_everything() {
        let mut log = ChangeLog::default();
        log.record(vec![2]);
        for _ in 0..CHANGES_KEPT {
            log.record(vec![3]);
        }
        assert_eq!(log.since(0), (CHANGES_KEPT as u64 + 1, None));
        assert_eq!(log.since(1).1, Some(vec![3]));
        assert_eq!(
            log.since(CHANGES_KEPT as u64 + 2).1,
            None,
            "from the future"
        );
    }
}
