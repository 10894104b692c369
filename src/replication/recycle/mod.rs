//! The recycle bin on the target (SPEC 20): what a source's retention policy lets go
//! (`retention`) moves into `<storage>/<uuid>/.recycle/<bin id>` (dot-named: no scan lists
//! it, nothing replicates it), stays there `recycle_days` outside the source's quota, can
//! be put back, and is purged only by age or by the target's admin. Deletions on the
//! source are never mirrored: only the target's own policy moves anything here.
//!
//! Every move is recorded before and after the file moves, so the database stays the
//! truth whatever a crash interrupts: (1) one transaction writes the bin row in state
//! `Moving` (or `Restoring`) while the received row still holds; (2) the file moves with
//! [`fsx::move_durable`] (link, fsync, unlink, fsync: never lost, never replacing
//! anything); (3) one transaction finishes: the received row goes and the bin row says
//! `Binned` (or the received row comes back, pinned, and the bin row goes). [`repair`]
//! finishes or undoes at start what a crash left between (1) and (3), and removes bin
//! files no row names (a purge deletes its rows first, its files after). While a name
//! moves, the [`Ledger`] holds it out of every receiving session. One [`Recycler`] lock
//! serializes the bin's work (the maintenance job's runs, the admin's purges and
//! restores).

mod repair;
#[cfg(test)]
mod tests;

pub use repair::{repair, BinRepair};

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use super::names::{check_component, BackupName, NameError};
use super::receiver::{client_dir, Ledger, Source};
use super::retention;
use crate::config::Storage;
use crate::fsx;
use crate::model::{Chain, UnixTime};
use crate::pairing::Actor;
use crate::store::{
    AuditRecord, ReceivedRecord, RecycleRecord, RecycleState, Retention, Store, StoreError,
    SystemRecord,
};
use crate::sync::lock;

/// The bin's directory below a source's directory.
pub const BIN_DIR: &str = ".recycle";
const DAY: i64 = 86_400;
const MIB: u64 = 1024 * 1024;
/// Names an audit row lists before it says "and N more".
const NAMES_SHOWN: usize = 10;

/// What the bin's users share: the lock that serializes its work, and the flag that asks
/// the maintenance job for a retention run soon (a policy changed).
#[derive(Debug, Default)]
pub struct Recycler {
    lock: Mutex<()>,
    due: AtomicBool,
}

impl Recycler {
    /// Asks for a retention run at the maintenance job's next round.
    pub fn kick(&self) {
        self.due.store(true, Ordering::SeqCst);
    }

    /// Whether a run was asked for since the last call.
    pub fn take_due(&self) -> bool {
        self.due.swap(false, Ordering::SeqCst)
    }
}

/// What the bin's operations work on.
pub struct Bin<'a> {
    pub store: &'a Store,
    pub ledger: &'a Ledger,
    pub storages: &'a [Storage],
    pub recycler: &'a Recycler,
}

#[derive(Debug)]
pub enum RecycleError {
    BadName(NameError),
    /// Nothing of that name is in the source's bin.
    NotInBin(String),
    /// A backup of that name is received now: a restore would replace it.
    Exists(String),
    /// A session is receiving that name now.
    Busy(String),
    /// A file of the bin could not be moved or removed.
    Io {
        what: String,
        cause: std::io::Error,
    },
    Store(StoreError),
}

impl std::fmt::Display for RecycleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecycleError::BadName(_) => f.write_str("field `backup`"),
            RecycleError::NotInBin(b) => write!(f, "{b} is not in this source's recycle bin"),
            RecycleError::Exists(b) => write!(
                f,
                "a backup named {b} is received now; it would be replaced, so nothing was restored"
            ),
            RecycleError::Busy(b) => write!(
                f,
                "{b} is being received from the source right now; try again shortly"
            ),
            RecycleError::Io { what, .. } => f.write_str(what),
            RecycleError::Store(_) => f.write_str("recycle bin state"),
        }
    }
}

impl std::error::Error for RecycleError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            RecycleError::BadName(e) => Some(e),
            RecycleError::Io { cause, .. } => Some(cause),
            RecycleError::Store(e) => Some(e),
            _ => None,
        }
    }
}

impl From<StoreError> for RecycleError {
    fn from(e: StoreError) -> Self {
        RecycleError::Store(e)
    }
}

/// `<storage>/<uuid>/.recycle`.
pub fn bin_dir(storage: &Storage, uuid: &str) -> PathBuf {
    storage.path.join(uuid).join(BIN_DIR)
}

/// When a bin row is purged by age: its removal plus `recycle_days` as configured now.
pub fn purge_after(r: &RecycleRecord, recycle_days: u64) -> UnixTime {
    let days = i64::try_from(recycle_days).unwrap_or(i64::MAX / DAY);
    r.removed.saturating_add(days.saturating_mul(DAY))
}

/// The source a systems row describes, with its storage, if it is a paired source whose
/// uuid is a safe path component and whose storage exists as a directory (the bin moves
/// files: a source in a bucket keeps what it received, docs/decisions.md).
pub fn source_of(row: &SystemRecord, storages: &[Storage]) -> Option<Source> {
    let uuid = row.copies_uuid()?.to_string();
    check_component(&uuid).ok()?;
    let storage = storages
        .iter()
        .find(|s| Some(s.id) == row.storage_id)
        .filter(|s| s.kind == crate::config::StorageKind::Dir)?;
    row.role.is_source().then(|| Source {
        system_id: row.id,
        uuid,
        storage: storage.clone(),
        quota_mb: row.quota_mb,
        share: row.share(),
    })
}

/// The bytes in a source's bin (every storage).
pub fn bin_bytes(rows: &[RecycleRecord]) -> u64 {
    rows.iter().fold(0u64, |s, r| s.saturating_add(r.size))
}

fn audit(
    actor: Option<&Actor>,
    now: UnixTime,
    action: &str,
    sid: u64,
    detail: String,
) -> AuditRecord {
    let (user, address) = match actor {
        Some(a) => (a.user.clone(), a.address.clone()),
        None => ("-".to_string(), "local".to_string()),
    };
    AuditRecord {
        time: now,
        user,
        address,
        action: action.into(),
        object: format!("system:{sid}"),
        detail,
    }
}

/// `a/1, a/2, … and 8 more`.
fn listed<'n>(names: impl ExactSizeIterator<Item = &'n str>) -> String {
    let n = names.len();
    let shown: Vec<&str> = names.take(NAMES_SHOWN).collect();
    let more = n.saturating_sub(shown.len());
    let mut out = shown.join(", ");
    if more > 0 {
        out.push_str(&format!(" and {more} more"));
    }
    out
}

/// What one retention run did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RetentionRun {
    /// Backups moved into bins, and their bytes.
    pub moved: u64,
    pub bytes: u64,
    /// Backups the policy let go that stayed: received right now, or the bin is full.
    pub held: u64,
}

/// Applies every paired source's retention policy at `now`: what a policy lets go moves
/// to the source's bin, one audit row per source that moved anything.
pub fn apply_retention(bin: &Bin<'_>, now: UnixTime) -> Result<RetentionRun, StoreError> {
    let _serial = lock(&bin.recycler.lock);
    let mut run = RetentionRun::default();
    for row in bin.store.systems()? {
        let (Some(policy), Some(source)) = (row.retention, source_of(&row, bin.storages)) else {
            continue;
        };
        let one = retain_source(bin, &source, &policy, now)?;
        run.moved += one.moved;
        run.bytes += one.bytes;
        run.held += one.held;
    }
    Ok(run)
}

/// One source's retention run. The bin holds at most the source's quota (when it has
/// one): past that, what the policy lets go stays received (and counts against the
/// quota) until the bin's oldest are purged, so a source cannot grow its footprint
/// without bound by sending ever new backups.
fn retain_source(
    bin: &Bin<'_>,
    source: &Source,
    policy: &Retention,
    now: UnixTime,
) -> Result<RetentionRun, StoreError> {
    let rows: Vec<ReceivedRecord> = bin
        .store
        .received(&source.uuid)?
        .into_iter()
        .filter(|r| r.storage_id == source.storage.id)
        .collect();
    let binned = bin.store.recycle(&source.uuid)?;
    let mut in_bin = bin_bytes(&binned);
    let cap = source.quota_mb.map(|q| q.saturating_mul(MIB));
    let mut run = RetentionRun::default();
    let mut moved: Vec<&str> = Vec::new();
    for r in retention::expired(&rows, policy, now) {
        // A move a crash left half done waits for the start-up repair.
        if binned
            .iter()
            .any(|b| b.backup == r.backup && b.state != RecycleState::Binned)
        {
            continue;
        }
        if cap.is_some_and(|cap| in_bin.saturating_add(r.size) > cap) {
            run.held += 1;
            continue;
        }
        match move_to_bin(bin, source, r, now) {
            Ok(true) => {
                in_bin = in_bin.saturating_add(r.size);
                run.moved += 1;
                run.bytes += r.size;
                moved.push(&r.backup);
            }
            Ok(false) => run.held += 1,
            Err(e) => {
                run.held += 1;
                log::error!(
                    "retention of system {}: {}: {}",
                    source.system_id,
                    r.backup,
                    Chain(&e)
                );
            }
        }
    }
    if run.held > 0 {
        log::warn!(
            "retention of system {}: {} backups the policy lets go stay received for now \
             (being received, a full bin at the source's quota, or a storage error)",
            source.system_id,
            run.held
        );
    }
    if !moved.is_empty() {
        bin.ledger.forget(&source.uuid);
        let detail = format!(
            "{} backups ({} MB) moved to the recycle bin by keep_last={} keep_days={}: {}",
            moved.len(),
            run.bytes.div_ceil(MIB),
            policy.keep_last.map_or("-".into(), |n| n.to_string()),
            policy.keep_days.map_or("-".into(), |n| n.to_string()),
            listed(moved.iter().copied())
        );
        bin.store.write(|tx| {
            tx.audit(&audit(None, now, "retention", source.system_id, detail))
                .map(|_| ())
        })?;
    }
    Ok(run)
}

/// Where a moving file is found.
#[derive(Debug, PartialEq, Eq)]
enum Found {
    From,
    To,
    Both,
    Neither,
}

fn found(from: &Path, to: &Path) -> Found {
    let is_file = |p: &Path| fsx::lstat(p).is_ok_and(|m| m.is_file);
    match (is_file(from), is_file(to)) {
        (true, true) => Found::Both,
        (true, false) => Found::From,
        (false, true) => Found::To,
        (false, false) => Found::Neither,
    }
}

/// The received copy's path and its bin path.
fn paths(source: &Source, name: &BackupName, rec: &RecycleRecord) -> (PathBuf, PathBuf) {
    (
        client_dir(source, name).join(name.file()),
        bin_dir(&source.storage, &source.uuid).join(rec.file_name()),
    )
}

/// Moves one received copy into the bin; false when it changed since the run read it or
/// a session receives it now (it stays).
fn move_to_bin(
    bin: &Bin<'_>,
    source: &Source,
    row: &ReceivedRecord,
    now: UnixTime,
) -> Result<bool, RecycleError> {
    let name = BackupName::parse(&row.backup).map_err(RecycleError::BadName)?;
    let uuid = source.uuid.as_str();
    let Some(_hold) = bin.ledger.hold(uuid, name.as_str()) else {
        return Ok(false);
    };
    let rec = bin.store.write(|tx| {
        let same = tx
            .received_one(uuid, name.as_str())?
            .is_some_and(|cur| cur.received == row.received && cur.sha256 == row.sha256);
        if !same {
            return Ok::<_, StoreError>(None);
        }
        let rec = RecycleRecord {
            id: tx.next_recycle_id()?,
            backup: row.backup.clone(),
            storage_id: row.storage_id,
            size: row.size,
            sha256: row.sha256.clone(),
            version: row.version,
            received: row.received,
            verified: row.verified,
            damaged: row.damaged.clone(),
            bytes_received: row.bytes_received,
            removed: now,
            state: RecycleState::Moving,
        };
        tx.put_recycle(uuid, &rec)?;
        Ok(Some(rec))
    })?;
    let Some(rec) = rec else {
        return Ok(false);
    };
    let (from, to) = paths(source, &name, &rec);
    let moved = fsx::ensure_dir_under(&source.storage.path, &[uuid, BIN_DIR])
        .and_then(|_| fsx::move_durable(&from, &to));
    if let Err(cause) = moved {
        // Undo what is undone for sure; anything else is the start-up repair's.
        if found(&from, &to) == Found::From {
            bin.store.write(|tx| tx.delete_recycle(uuid, rec.id))?;
        }
        return Err(RecycleError::Io {
            what: format!("cannot move {name} into the recycle bin"),
            cause,
        });
    }
    finish_move(bin.store, uuid, &rec)?;
    log::info!(
        "retention: {name} of system {} moved to the recycle bin",
        source.system_id
    );
    Ok(true)
}

/// Step (3) of a move into the bin: the received row goes (if it is still the one that
/// moved), the bin row says `Binned`.
fn finish_move(store: &Store, uuid: &str, rec: &RecycleRecord) -> Result<(), StoreError> {
    store.write(|tx| {
        if tx
            .received_one(uuid, &rec.backup)?
            .is_some_and(|cur| cur.received == rec.received && cur.sha256 == rec.sha256)
        {
            tx.delete_received(uuid, &rec.backup)?;
        }
        let mut done = rec.clone();
        done.state = RecycleState::Binned;
        tx.put_recycle(uuid, &done)
    })
}

/// Step (3) of a restore: the received row comes back, pinned (retention leaves it
/// alone), with the damage mark it had; the bin row goes.
fn finish_restore(
    store: &Store,
    source: &Source,
    rec: &RecycleRecord,
    actor: Option<&Actor>,
    now: UnixTime,
) -> Result<ReceivedRecord, StoreError> {
    let row = ReceivedRecord {
        backup: rec.backup.clone(),
        storage_id: rec.storage_id,
        size: rec.size,
        sha256: rec.sha256.clone(),
        version: rec.version,
        received: rec.received,
        verified: rec.verified,
        damaged: rec.damaged.clone(),
        bytes_received: rec.bytes_received,
        pinned: true,
    };
    store.write(|tx| {
        tx.put_received(&source.uuid, &row)?;
        tx.delete_recycle(&source.uuid, rec.id)?;
        let detail = format!("{} put back from the recycle bin", rec.backup);
        tx.audit(&audit(
            actor,
            now,
            "recycle restored",
            source.system_id,
            detail,
        ))?;
        Ok(row)
    })
}

/// Puts the newest bin entry named `backup` back among the received backups, pinned.
/// Refused while a backup of that name is received (it would be replaced) or a session
/// receives it now. The copy may take the source past its quota: the admin decided.
pub fn restore(
    bin: &Bin<'_>,
    source: &Source,
    backup: &str,
    actor: &Actor,
    now: UnixTime,
) -> Result<ReceivedRecord, RecycleError> {
    let name = BackupName::parse(backup).map_err(RecycleError::BadName)?;
    let uuid = source.uuid.as_str();
    let _serial = lock(&bin.recycler.lock);
    let Some(_hold) = bin.ledger.hold(uuid, name.as_str()) else {
        return Err(RecycleError::Busy(name.to_string()));
    };
    let rec = bin.store.write(|tx| {
        if tx.received_one(uuid, name.as_str())?.is_some() {
            return Err(RecycleError::Exists(name.to_string()));
        }
        let mut rec = tx
            .recycle(uuid)?
            .into_iter()
            .rev()
            .find(|r| r.backup == name.as_str() && r.state == RecycleState::Binned)
            .ok_or_else(|| RecycleError::NotInBin(name.to_string()))?;
        rec.state = RecycleState::Restoring;
        tx.put_recycle(uuid, &rec)?;
        Ok(rec)
    })?;
    let (dest, in_bin) = paths(source, &name, &rec);
    let moved = fsx::ensure_dir_under(&source.storage.path, &[uuid, name.client()])
        .and_then(|_| fsx::move_durable(&in_bin, &dest));
    if let Err(cause) = moved {
        if found(&in_bin, &dest) != Found::To {
            if found(&in_bin, &dest) == Found::Both {
                // Linked, not yet unlinked: take the new name away again.
                let _ = fsx::remove_file_durable(&dest);
            }
            let mut back = rec.clone();
            back.state = RecycleState::Binned;
            bin.store.write(|tx| tx.put_recycle(uuid, &back))?;
        }
        return Err(match cause.kind() {
            std::io::ErrorKind::AlreadyExists => RecycleError::Exists(name.to_string()),
            _ => RecycleError::Io {
                what: format!("cannot move {name} out of the recycle bin"),
                cause,
            },
        });
    }
    let row = finish_restore(bin.store, source, &rec, Some(actor), now)?;
    bin.ledger.forget(uuid);
    Ok(row)
}

/// What a purge removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Purged {
    pub backups: Vec<String>,
    pub bytes: u64,
}

/// Deletes bin rows chosen by `pick` in one transaction with one audit row, then their
/// files (a file left by a crash in between is removed by the start-up repair).
fn purge_rows(
    bin: &Bin<'_>,
    uuid: &str,
    system_id: u64,
    pick: impl Fn(&RecycleRecord) -> bool,
    audited: impl FnOnce(&Purged) -> AuditRecord,
) -> Result<Purged, RecycleError> {
    let (purged, files) = bin.store.write(|tx| {
        let mut purged = Purged::default();
        let mut files = Vec::new();
        for r in tx.recycle(uuid)? {
            if r.state == RecycleState::Binned && pick(&r) {
                tx.delete_recycle(uuid, r.id)?;
                purged.bytes = purged.bytes.saturating_add(r.size);
                purged.backups.push(r.backup.clone());
                files.push(r);
            }
        }
        if !files.is_empty() {
            tx.audit(&audited(&purged))?;
        }
        Ok::<_, StoreError>((purged, files))
    })?;
    for r in files {
        let Some(storage) = bin.storages.iter().find(|s| s.id == r.storage_id) else {
            continue;
        };
        let path = bin_dir(storage, uuid).join(r.file_name());
        if let Err(e) = fsx::remove_file_durable(&path) {
            log::warn!(
                "recycle bin of system {system_id}: remove {}: {e}",
                path.display()
            );
        }
    }
    Ok(purged)
}

/// The admin's purge: every bin entry of the source, or those named `backup`.
pub fn purge(
    bin: &Bin<'_>,
    source: &Source,
    backup: Option<&str>,
    actor: &Actor,
    now: UnixTime,
) -> Result<Purged, RecycleError> {
    // A name that can never be a backup is a bad request, not one that is not there.
    if let Some(b) = backup {
        BackupName::parse(b).map_err(RecycleError::BadName)?;
    }
    let _serial = lock(&bin.recycler.lock);
    let sid = source.system_id;
    let purged = purge_rows(
        bin,
        &source.uuid,
        sid,
        |r| backup.is_none_or(|b| r.backup == b),
        |p| {
            let detail = format!(
                "{} backups ({} MB) purged from the recycle bin: {}",
                p.backups.len(),
                p.bytes.div_ceil(MIB),
                listed(p.backups.iter().map(String::as_str))
            );
            audit(Some(actor), now, "recycle purged", sid, detail)
        },
    )?;
    if let (Some(b), true) = (backup, purged.backups.is_empty()) {
        return Err(RecycleError::NotInBin(b.to_string()));
    }
    Ok(purged)
}

/// The age purge: every bin entry past `recycle_days`, of every source (paired or not).
pub fn purge_expired(bin: &Bin<'_>, recycle_days: u64, now: UnixTime) -> Result<u64, RecycleError> {
    let _serial = lock(&bin.recycler.lock);
    let mut uuids: Vec<String> = bin
        .store
        .recycle_all()?
        .into_iter()
        .filter(|(_, r)| r.state == RecycleState::Binned && purge_after(r, recycle_days) <= now)
        .map(|(uuid, _)| uuid)
        .collect();
    uuids.dedup();
    let systems = bin.store.systems()?;
    let mut n = 0;
    for uuid in uuids {
        let sid = systems
            .iter()
            .find(|s| s.system_uuid.as_deref() == Some(uuid.as_str()))
            .map_or(0, |s| s.id);
        let purged = purge_rows(
            bin,
            &uuid,
            sid,
            |r| purge_after(r, recycle_days) <= now,
            |p| {
                let detail = format!(
                    "{} backups ({} MB) older than recycle_days ({recycle_days}) purged from the \
                     recycle bin of source {uuid}: {}",
                    p.backups.len(),
                    p.bytes.div_ceil(MIB),
                    listed(p.backups.iter().map(String::as_str))
                );
                audit(None, now, "recycle purged", sid, detail)
            },
        )?;
        n += purged.backups.len() as u64;
    }
    Ok(n)
}
