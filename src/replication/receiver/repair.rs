//! The receiver's start-up repair ([`repair`]): what a crash of the target left between a
//! file's first byte and its received row is finished or undone before any session runs.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use super::{digest_of, partial_path, prefix_hash, upload_of, Ledger, PARTIAL_SUFFIX};
use crate::config::{S3Storage, Storage, StorageKind};
use crate::fsx;
use crate::model::UnixTime;
use crate::objstore::ObjStoreError;
use crate::replication::names::{check_component, BackupName};
use crate::store::{PartialRecord, ReceivedRecord, Store, StoreError};
use crate::wire::hex;

/// What the start-up repair did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Repair {
    /// Verified copies whose rename or record a crash interrupted, now in place.
    pub finished: u64,
    /// Partial rows without a usable file, dropped.
    pub dropped: u64,
    /// Partial files no row describes, removed.
    pub swept: u64,
    /// Uploads into a bucket that a crash cut, aborted: the next offer of the file starts
    /// it again.
    pub aborted: u64,
}

/// At start: finishes commits a crash interrupted (a partial row marked verified), drops
/// partial rows whose file is gone or too short, and removes partial files that no row
/// describes (a crash before their first checkpoint).
pub fn repair(store: &Store, storages: &[Storage], now: UnixTime) -> Result<Repair, StoreError> {
    let mut out = Repair::default();
    let rows = store.partials()?;
    let mut known: HashSet<PathBuf> = HashSet::new();
    for (uuid, p) in &rows {
        let (Ok(name), Some(storage)) = (
            BackupName::parse(&p.backup),
            storages.iter().find(|s| s.id == p.storage_id),
        ) else {
            store.write(|tx| tx.delete_partial(uuid, &p.backup))?;
            out.dropped += 1;
            continue;
        };
        if check_component(uuid).is_err() {
            store.write(|tx| tx.delete_partial(uuid, &p.backup))?;
            out.dropped += 1;
            continue;
        }
        if let StorageKind::S3(s3) = &storage.kind {
            repair_upload(store, storage, s3, uuid, p, now, &mut out)?;
            continue;
        }
        let dir = storage.path.join(uuid).join(name.client());
        let partial = partial_path(&dir, &name);
        let target = dir.join(name.file());
        if let Some(sha) = &p.verified_sha256 {
            if partial.exists() {
                if let Err(e) = fsx::rename_durable(&partial, &target) {
                    log::error!("repair: rename {}: {e}", partial.display());
                    continue;
                }
            } else if let Err(e) = fsx::sync_dir(&dir) {
                // Renamed before the crash; its directory's fsync may not have run, or
                // failed: the name is durable, and the copy received, only once it did.
                log::error!("repair: fsync of {}: {e}", dir.display());
                continue;
            }
            let actual = prefix_hash(&target, p.size).map(|h| hex::encode(&digest_of(&h)));
            let p2 = p.clone();
            store.write(|tx| {
                if actual.as_deref() == Some(sha.as_str()) {
                    tx.put_received(
                        uuid,
                        &ReceivedRecord {
                            backup: p2.backup.clone(),
                            storage_id: p2.storage_id,
                            size: p2.size,
                            sha256: sha.clone(),
                            version: p2.version,
                            received: now,
                            verified: None,
                            damaged: None,
                            bytes_received: None,
                            pinned: false,
                        },
                    )?;
                }
                tx.delete_partial(uuid, &p2.backup)?;
                Ok::<_, StoreError>(())
            })?;
            if actual.as_deref() == Some(sha.as_str()) {
                out.finished += 1;
                log::info!("repair: finished the commit of {} from {uuid}", p.backup);
            } else {
                out.dropped += 1;
            }
            continue;
        }
        let usable = fsx::lstat(&partial)
            .map(|m| m.is_file && m.len >= p.offset)
            .unwrap_or(false);
        if usable {
            known.insert(partial);
        } else {
            store.write(|tx| tx.delete_partial(uuid, &p.backup))?;
            out.dropped += 1;
        }
    }
    for storage in storages {
        for path in partial_files(&storage.path) {
            if !known.contains(&path) {
                match fsx::remove_file_durable(&path) {
                    Ok(()) => out.swept += 1,
                    Err(e) => log::warn!("repair: remove {}: {e}", path.display()),
                }
            }
        }
    }
    Ok(out)
}

/// The start-up repair of one partial row of an `s3` storage. A copy whose commit a crash
/// cut (its row says verified) is received once the object at its key reads back with
/// the row's size and SHA-256 (read from the bucket, never taken from an ETag); anything
/// else is dropped and its upload aborted, so the next offer starts it again. A store
/// that cannot be read now keeps a verified row for the next start (the next offer of
/// the file drops it).
fn repair_upload(
    store: &Store,
    storage: &Storage,
    s3: &S3Storage,
    uuid: &str,
    p: &PartialRecord,
    now: UnixTime,
    out: &mut Repair,
) -> Result<(), StoreError> {
    let bucket = match crate::objstore::for_storage(storage) {
        Ok(Some(b)) => b,
        Ok(None) => return Ok(()),
        Err(e) => {
            log::error!("repair: storage {}: {e}", storage.id);
            return Ok(());
        }
    };
    let key = match crate::objstore::backup_key(s3, uuid, &p.backup) {
        Ok(k) => k,
        Err(e) => {
            log::error!("repair: {} from {uuid}: {e}", p.backup);
            store.write(|tx| tx.delete_partial(uuid, &p.backup))?;
            out.dropped += 1;
            return Ok(());
        }
    };
    if let Some(sha) = &p.verified_sha256 {
        let read = match bucket.sha256_of(&key) {
            Ok(r) => Some(r),
            Err(ObjStoreError::NotFound { .. }) => None,
            Err(e) => {
                log::error!("repair: read back {key}: {e}");
                return Ok(());
            }
        };
        if read.is_some_and(|(size, got)| size == p.size && hex::encode(&got) == *sha) {
            store.write(|tx| {
                tx.put_received(
                    uuid,
                    &ReceivedRecord {
                        backup: p.backup.clone(),
                        storage_id: p.storage_id,
                        size: p.size,
                        sha256: sha.clone(),
                        version: p.version,
                        received: now,
                        verified: None,
                        damaged: None,
                        bytes_received: None,
                        pinned: false,
                    },
                )?;
                tx.delete_partial(uuid, &p.backup)
            })?;
            out.finished += 1;
            log::info!("repair: finished the commit of {} from {uuid}", p.backup);
            return Ok(());
        }
    }
    if let Some(c) = upload_of(p) {
        match bucket.abort_multipart(&key, &c.upload_id) {
            Ok(()) => out.aborted += 1,
            // The orphan sweep that follows takes it.
            Err(e) => log::warn!("repair: abort the upload of {key}: {e}"),
        }
    }
    store.write(|tx| tx.delete_partial(uuid, &p.backup))?;
    out.dropped += 1;
    Ok(())
}

/// The orphan sweep of every `s3` storage: aborts each multipart upload under its prefix
/// started before `initiated_before` (unix seconds, the store's clock) that no partial row
/// names. At start every unnamed upload is an orphan (no session runs yet); the
/// maintenance pass leaves the last hour's alone (a session records its upload right
/// after starting it). Returns how many it aborted; a store that cannot be reached is
/// logged and left for the next pass.
pub fn sweep_uploads(store: &Store, storages: &[Storage], initiated_before: i64) -> u64 {
    let claimed: HashSet<String> = match store.partials() {
        Ok(rows) => rows
            .iter()
            .filter_map(|(_, p)| upload_of(p).map(|c| c.upload_id))
            .collect(),
        Err(e) => {
            log::warn!("replication: orphan sweep: {e}");
            return 0;
        }
    };
    let mut aborted = 0;
    for storage in storages {
        let StorageKind::S3(s3) = &storage.kind else {
            continue;
        };
        let swept = crate::objstore::for_storage(storage).and_then(|b| match b {
            Some(b) => b
                .sweep_uploads(
                    &crate::objstore::storage_prefix(s3),
                    initiated_before,
                    |u| claimed.contains(&u.upload_id),
                )
                .map(Some),
            None => Ok(None),
        });
        match swept {
            Ok(Some(report)) => {
                for u in &report.aborted {
                    log::info!(
                        "replication: aborted the orphaned upload {} of {} on storage {}",
                        u.upload_id,
                        u.key,
                        storage.id
                    );
                }
                aborted += report.aborted.len() as u64;
            }
            Ok(None) => {}
            Err(e) => log::warn!("replication: orphan sweep of storage {}: {e}", storage.id),
        }
    }
    aborted
}

/// Removes the partial copies that no session resumed for `retention` seconds (their row
/// was last updated before `now - retention`), file and row, but those a session holds
/// now and those whose commit is under way. A cut transfer's partial copy counts against
/// its source's quota until then (`Ledger`). Returns how many it removed.
pub fn expire_partials(
    store: &Store,
    storages: &[Storage],
    ledger: &Ledger,
    retention: i64,
    now: UnixTime,
) -> Result<u64, StoreError> {
    let mut removed = 0;
    for (uuid, p) in store.partials()? {
        if p.verified_sha256.is_some() || p.updated.saturating_add(retention) > now {
            continue;
        }
        let Some(_held) = ledger.hold_partial(&uuid, p.storage_id, &p.backup) else {
            continue;
        };
        let storage = storages.iter().find(|s| s.id == p.storage_id);
        if let Some(
            storage @ Storage {
                kind: StorageKind::S3(s3),
                ..
            },
        ) = storage
        {
            // An upload is aborted (the orphan sweep takes one the store refuses now).
            let aborted =
                crate::objstore::for_storage(storage).and_then(|b| match (b, upload_of(&p)) {
                    (Some(b), Some(c)) => {
                        let key = crate::objstore::backup_key(s3, &uuid, &p.backup)?;
                        b.abort_multipart(&key, &c.upload_id)
                    }
                    _ => Ok(()),
                });
            if let Err(e) = aborted {
                log::warn!("replication: abort the expired upload of {}: {e}", p.backup);
            }
        }
        let file = match (BackupName::parse(&p.backup), storage) {
            (Ok(name), Some(storage))
                if check_component(&uuid).is_ok() && storage.kind == StorageKind::Dir =>
            {
                Some(partial_path(
                    &storage.path.join(&uuid).join(name.client()),
                    &name,
                ))
            }
            _ => None,
        };
        if let Some(file) = &file {
            if let Err(e) = fsx::remove_file_durable(file) {
                log::warn!(
                    "replication: remove expired partial copy {}: {e}",
                    file.display()
                );
                continue;
            }
        }
        store.write(|tx| tx.delete_partial(&uuid, &p.backup))?;
        removed += 1;
        log::info!(
            "replication: removed the partial copy of {} from {uuid} ({} bytes), not resumed for {retention} s",
            p.backup,
            p.offset
        );
    }
    Ok(removed)
}

/// Every `<storage>/<uuid>/<client>/.<file>.replgate-part` (real directories only).
fn partial_files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let dirs = |p: &Path| -> Vec<PathBuf> {
        fsx::entries(p)
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.stat.as_ref().is_ok_and(|s| s.is_dir))
                    .map(|e| p.join(e.name))
                    .collect()
            })
            .unwrap_or_default()
    };
    for uuid_dir in dirs(root) {
        for client_dir in dirs(&uuid_dir) {
            if let Ok(rd) = fsx::entries(&client_dir) {
                for e in rd.flatten() {
                    let n = e.name.to_string_lossy();
                    if n.starts_with('.')
                        && n.ends_with(PARTIAL_SUFFIX)
                        && e.stat.as_ref().is_ok_and(|s| s.is_file)
                    {
                        out.push(client_dir.join(&e.name));
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::Scratch;
    use super::*;

    fn verified_row(backup: &str, body: &[u8]) -> PartialRecord {
        PartialRecord {
            backup: backup.into(),
            storage_id: 1,
            size: body.len() as u64,
            version: 0,
            offset: body.len() as u64,
            started: 1,
            updated: 1,
            verified_sha256: Some(crate::ca::sha256_hex(body)),
            upload: None,
        }
    }

    #[test]
    fn repair_finishes_a_verified_commit_and_sweeps_orphans() {
        let f = Scratch::new("repair");
        let body = b"verified body".repeat(300);
        let dir = f.client_dir("c");
        // A verified copy whose rename a crash interrupted.
        std::fs::write(dir.join(".done.replgate-part"), &body).unwrap();
        // A partial no row knows (crash before its first checkpoint).
        std::fs::write(dir.join(".orphan.replgate-part"), b"junk").unwrap();
        let row = verified_row("c/done", &body);
        f.store
            .write(|tx| tx.put_partial(&f.source.uuid, &row))
            .unwrap();
        let r = repair(&f.store, std::slice::from_ref(&f.source.storage), 5).unwrap();
        assert_eq!((r.finished, r.swept), (1, 1));
        assert_eq!(std::fs::read(dir.join("done")).unwrap(), body);
        assert!(!dir.join(".orphan.replgate-part").exists());
        assert!(f
            .store
            .received_one(&f.source.uuid, "c/done")
            .unwrap()
            .is_some());
        assert!(f.store.partials().unwrap().is_empty());
    }

    #[test]
    fn a_copy_renamed_before_the_crash_is_received_only_once_its_directory_syncs() {
        let f = Scratch::new("repair-fsync");
        let body = b"renamed, name not yet durable".to_vec();
        let dir = f.client_dir("c");
        std::fs::write(dir.join("done"), &body).unwrap();
        let row = verified_row("c/done", &body);
        f.store
            .write(|tx| tx.put_partial(&f.source.uuid, &row))
            .unwrap();
        let storages = std::slice::from_ref(&f.source.storage);
        let fault = crate::fsx::faults::fail_dir_sync(&dir);
        let r = repair(&f.store, storages, 5).unwrap();
        drop(fault);
        assert_eq!((r.finished, r.dropped), (0, 0));
        assert!(f
            .store
            .received_one(&f.source.uuid, "c/done")
            .unwrap()
            .is_none());
        assert_eq!(f.store.partials().unwrap().len(), 1);
        // The next start finishes it.
        let r = repair(&f.store, storages, 6).unwrap();
        assert_eq!(r.finished, 1);
        assert!(f
            .store
            .received_one(&f.source.uuid, "c/done")
            .unwrap()
            .is_some());
    }
}
