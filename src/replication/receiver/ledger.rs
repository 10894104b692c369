//! What every receiving session shares ([`Ledger`]): each source's stored bytes for its
//! quota, the bytes accepted offers will still add per source and per storage, and the
//! names being received now. One tenant cannot take another's quota or disk (nor its
//! sessions: `replication::slots`): every reservation is taken when a file is offered,
//! before any byte of it moves, and given back when its offer, file or session ends.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use super::{Refusal, Source};
use crate::replication::names::BackupName;
use crate::store::StoreError;
use crate::sync::lock;
use crate::wire::transfer::Code;

/// Free space left untouched on a storage, beyond what accepted files will use.
pub const SPACE_MARGIN: u64 = 16 * 1024 * 1024;

/// What every receiving session shares: each source's stored bytes (for quotas), the
/// bytes accepted offers will still add per source and per storage, and the names being
/// received now (one session per file at a time).
#[derive(Debug, Default)]
pub struct Ledger {
    inner: Mutex<LedgerState>,
}

#[derive(Debug, Default)]
struct LedgerState {
    /// Committed bytes per source uuid, loaded from the database on first use.
    used: HashMap<String, u64>,
    reserved: HashMap<String, u64>,
    reserved_space: HashMap<u64, u64>,
    busy: HashSet<(String, String)>,
}

/// An accepted offer's share of the quota and the storage, released when dropped.
pub struct Reservation<'a> {
    ledger: &'a Ledger,
    uuid: String,
    storage_id: u64,
    quota_bytes: u64,
    space_bytes: u64,
    name: String,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        let mut s = lock(&self.ledger.inner);
        if let Some(r) = s.reserved.get_mut(&self.uuid) {
            *r = r.saturating_sub(self.quota_bytes);
        }
        if let Some(r) = s.reserved_space.get_mut(&self.storage_id) {
            *r = r.saturating_sub(self.space_bytes);
        }
        s.busy.remove(&(self.uuid.clone(), self.name.clone()));
    }
}

const MIB: u64 = 1024 * 1024;

impl Ledger {
    /// Reserves room for one offered file, or says why not. `grows` is what the file adds
    /// to the source's stored bytes once committed (its size minus the copy it replaces),
    /// `writes` what it still has to write to the storage, `free` the storage's free bytes.
    pub(super) fn reserve(
        &self,
        source: &Source,
        name: &BackupName,
        grows: u64,
        writes: u64,
        free: u64,
        load_used: impl FnOnce() -> Result<u64, StoreError>,
    ) -> Result<Reservation<'_>, Refusal> {
        let mut s = lock(&self.inner);
        let key = (source.uuid.clone(), name.as_str().to_string());
        if s.busy.contains(&key) {
            return Err(Refusal::new(
                Code::Busy,
                format!("{name} is being received in another session"),
            ));
        }
        if let Some(quota) = source.quota_mb {
            let used = match s.used.get(&source.uuid) {
                Some(u) => *u,
                None => {
                    let u = load_used().map_err(Refusal::database)?;
                    s.used.insert(source.uuid.clone(), u);
                    u
                }
            };
            let reserved = s.reserved.get(&source.uuid).copied().unwrap_or(0);
            let limit = quota.saturating_mul(MIB);
            if used + reserved + grows > limit {
                return Err(Refusal::new(
                    Code::Quota,
                    format!(
                        "refused before the transfer: {name} ({} MB) would pass this source's quota of {quota} MB \
                         ({} MB stored, {} MB in transfer)",
                        grows.div_ceil(MIB),
                        used.div_ceil(MIB),
                        reserved.div_ceil(MIB)
                    ),
                ));
            }
        }
        let pending = s
            .reserved_space
            .get(&source.storage.id)
            .copied()
            .unwrap_or(0);
        if writes + pending + SPACE_MARGIN > free {
            return Err(Refusal::new(
                Code::NoSpace,
                format!(
                    "refused before the transfer: storage {} has {} MB free, {name} needs {} MB \
                     (plus {} MB for transfers in progress and a {} MB reserve)",
                    source.storage.id,
                    free / MIB,
                    writes.div_ceil(MIB),
                    pending.div_ceil(MIB),
                    SPACE_MARGIN / MIB
                ),
            ));
        }
        *s.reserved.entry(source.uuid.clone()).or_default() += grows;
        *s.reserved_space.entry(source.storage.id).or_default() += writes;
        s.busy.insert(key);
        Ok(Reservation {
            ledger: self,
            uuid: source.uuid.clone(),
            storage_id: source.storage.id,
            quota_bytes: grows,
            space_bytes: writes,
            name: name.as_str().to_string(),
        })
    }

    /// The file of `r` was committed: its growth moves from reserved to used.
    pub(super) fn committed(&self, r: &Reservation<'_>, grows: u64) {
        let mut s = lock(&self.inner);
        if let Some(u) = s.used.get_mut(&r.uuid) {
            *u += grows;
        }
    }

    /// Forgets a source's cached usage (a verify or an admin changed what it stores).
    pub fn forget(&self, uuid: &str) {
        lock(&self.inner).used.remove(uuid);
    }
}
