//! The recycle bin's start-up repair ([`repair`]): before any session runs, every bin row a
//! crash left between its two transactions is finished or undone by where its file is,
//! and bin files that no row names (a purge that crashed between its commit and its
//! unlinks) are removed.

use std::collections::HashSet;
use std::path::Path;

use super::{bin_dir, finish_move, finish_restore, found, paths, Found, BIN_DIR};
use crate::config::Storage;
use crate::fsx;
use crate::model::UnixTime;
use crate::replication::names::{check_component, BackupName};
use crate::replication::receiver::Source;
use crate::store::{RecycleRecord, RecycleState, Store, StoreError, SystemRecord};

/// What the start-up repair did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct BinRepair {
    /// Moves into or out of the bin a crash interrupted, finished.
    pub finished: u64,
    /// Moves that had not moved the file yet, undone.
    pub undone: u64,
    /// Rows whose file is gone from both places, dropped (the received row, if any,
    /// stays: a verify reports it missing).
    pub lost: u64,
    /// Bin files no row names, removed.
    pub swept: u64,
}

/// Finishes or undoes each interrupted move, then sweeps files no row names.
pub fn repair(store: &Store, storages: &[Storage], now: UnixTime) -> Result<BinRepair, StoreError> {
    let mut out = BinRepair::default();
    let systems = store.systems()?;
    for (uuid, rec) in store.recycle_all()? {
        repair_row(store, storages, &systems, &uuid, &rec, now, &mut out)?;
    }
    sweep(store, storages, &mut out)?;
    Ok(out)
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (fsx::lstat(a), fsx::lstat(b)) {
        (Ok(x), Ok(y)) => (x.dev, x.ino) == (y.dev, y.ino),
        _ => false,
    }
}

/// Removes `stale`, the second name of a file a crash left linked twice.
fn unlink_twin(stale: &Path, kept: &Path) -> bool {
    if !same_file(stale, kept) {
        log::error!(
            "recycle bin repair: {} and {} are different files; left for the admin",
            stale.display(),
            kept.display()
        );
        return false;
    }
    match fsx::remove_file_durable(stale) {
        Ok(()) => true,
        Err(e) => {
            log::error!("recycle bin repair: remove {}: {e}", stale.display());
            false
        }
    }
}

fn repair_row(
    store: &Store,
    storages: &[Storage],
    systems: &[SystemRecord],
    uuid: &str,
    rec: &RecycleRecord,
    now: UnixTime,
    out: &mut BinRepair,
) -> Result<(), StoreError> {
    let (Some(storage), Ok(name), Ok(())) = (
        storages.iter().find(|s| s.id == rec.storage_id),
        BackupName::parse(&rec.backup),
        check_component(uuid),
    ) else {
        log::warn!(
            "recycle bin repair: {} of source {uuid} is on no configured storage (or unnamed); left",
            rec.backup
        );
        return Ok(());
    };
    let source = Source {
        system_id: systems
            .iter()
            .find(|s| s.system_uuid.as_deref() == Some(uuid))
            .map_or(0, |s| s.id),
        uuid: uuid.to_string(),
        storage: storage.clone(),
        quota_mb: None,
        share: crate::store::DEFAULT_SHARE,
    };
    let (received, in_bin) = paths(&source, &name, rec);
    let lost = |out: &mut BinRepair| {
        log::error!(
            "recycle bin repair: {} of source {uuid} is neither received nor in the bin; its bin row is dropped",
            rec.backup
        );
        out.lost += 1;
        store.write(|tx| tx.delete_recycle(uuid, rec.id).map(|_| ()))
    };
    match (rec.state, found(&received, &in_bin)) {
        (RecycleState::Binned, Found::To | Found::Both) => {}
        (RecycleState::Binned, Found::From | Found::Neither) => lost(out)?,
        (RecycleState::Moving, Found::Both) if !unlink_twin(&received, &in_bin) => {}
        (RecycleState::Moving, Found::To | Found::Both) => {
            finish_move(store, uuid, rec)?;
            out.finished += 1;
        }
        (RecycleState::Moving, Found::From) => {
            store.write(|tx| tx.delete_recycle(uuid, rec.id))?;
            out.undone += 1;
        }
        (RecycleState::Restoring, Found::Both) if !unlink_twin(&in_bin, &received) => {}
        (RecycleState::Restoring, Found::From | Found::Both) => {
            finish_restore(store, &source, rec, None, now)?;
            out.finished += 1;
        }
        (RecycleState::Restoring, Found::To) => {
            store.write(|tx| {
                let mut back = rec.clone();
                back.state = RecycleState::Binned;
                tx.put_recycle(uuid, &back)
            })?;
            out.undone += 1;
        }
        (RecycleState::Moving | RecycleState::Restoring, Found::Neither) => lost(out)?,
    }
    Ok(())
}

/// Whether `name` is one the bin gives its files (16 lowercase hex digits).
fn is_bin_name(name: &str) -> bool {
    name.len() == 16 && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Removes bin files no row names, below every source directory of every storage.
fn sweep(store: &Store, storages: &[Storage], out: &mut BinRepair) -> Result<(), StoreError> {
    let known: HashSet<(String, u64, String)> = store
        .recycle_all()?
        .into_iter()
        .map(|(uuid, r)| (uuid, r.storage_id, r.file_name()))
        .collect();
    for storage in storages {
        let Ok(sources) = fsx::entries(&storage.path) else {
            continue;
        };
        for entry in sources.flatten() {
            let Some(uuid) = entry.name.to_str().filter(|u| check_component(u).is_ok()) else {
                continue;
            };
            if !entry.stat.as_ref().is_ok_and(|s| s.is_dir) {
                continue;
            }
            let dir = bin_dir(storage, uuid);
            let Ok(files) = fsx::entries(&dir) else {
                continue;
            };
            for f in files.flatten() {
                let Some(name) = f.name.to_str().filter(|n| is_bin_name(n)) else {
                    continue;
                };
                if known.contains(&(uuid.to_string(), storage.id, name.to_string())) {
                    continue;
                }
                match fsx::remove_file_durable(&dir.join(name)) {
                    Ok(()) => out.swept += 1,
                    Err(e) => log::warn!(
                        "recycle bin repair: remove {}/{BIN_DIR}/{name} of source {uuid}: {e}",
                        storage.path.display()
                    ),
                }
            }
        }
    }
    Ok(())
}
