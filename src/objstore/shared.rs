//! The daemon's one client per `s3` storage: opened the first time a session, a verify
//! or a restore needs the bucket, then shared (its idle connections too). A storage's
//! settings are fixed for the life of the process, so the client is kept by storage id.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use super::{Key, Location, ObjStore, ObjStoreError, Settings};
use crate::config::{S3Storage, Storage, StorageKind};
use crate::sync::lock;

static CLIENTS: OnceLock<Mutex<HashMap<u64, Arc<ObjStore>>>> = OnceLock::new();
/// Storages whose bucket failed the last call the receiver made of it: since when (unix
/// seconds), and why. For the health warning; cleared by the next call that succeeds.
static FAILING: OnceLock<Mutex<HashMap<u64, (i64, String)>>> = OnceLock::new();

/// Notes how the last call of the receiver into storage `id`'s bucket ended: a failure
/// keeps the time of the first one in a row.
pub fn note_outcome<T>(id: u64, result: &Result<T, ObjStoreError>, now: i64) {
    let mut failing = lock(FAILING.get_or_init(Mutex::default));
    match result {
        Ok(_) => {
            failing.remove(&id);
        }
        Err(e) => {
            let why = e.to_string();
            failing
                .entry(id)
                .and_modify(|(_, w)| w.clone_from(&why))
                .or_insert((now, why));
        }
    }
}

/// The storages whose bucket's last call failed: `(id, since, why)`, by id.
pub fn failing() -> Vec<(u64, i64, String)> {
    let failing = lock(FAILING.get_or_init(Mutex::default));
    let mut out: Vec<_> = failing
        .iter()
        .map(|(id, (since, why))| (*id, *since, why.clone()))
        .collect();
    out.sort_by_key(|f| f.0);
    out
}

/// The client of `storage`'s bucket; None for a `dir` storage.
pub fn for_storage(storage: &Storage) -> Result<Option<Arc<ObjStore>>, ObjStoreError> {
    let StorageKind::S3(s3) = &storage.kind else {
        return Ok(None);
    };
    let clients = CLIENTS.get_or_init(Mutex::default);
    if let Some(c) = lock(clients).get(&storage.id) {
        return Ok(Some(c.clone()));
    }
    // Opened outside the lock (it reads the credentials and CA files); a race opens two
    // and keeps the first.
    let opened = Arc::new(ObjStore::open(
        &location_of(s3),
        &s3.credentials_file,
        Settings::default(),
    )?);
    Ok(Some(
        lock(clients).entry(storage.id).or_insert(opened).clone(),
    ))
}

/// Where `s3`'s bucket is.
pub fn location_of(s3: &S3Storage) -> Location {
    Location {
        endpoint: s3.endpoint.clone(),
        bucket: s3.bucket.clone(),
        region: s3.region.clone(),
        path_style: s3.path_style,
        ca_file: s3.ca_file.clone(),
    }
}

/// The key of backup `<client>/<file>` of source `uuid` on `s3`.
pub fn backup_key(s3: &S3Storage, uuid: &str, backup: &str) -> Result<Key, ObjStoreError> {
    let (client, file) = backup.split_once('/').ok_or_else(|| {
        ObjStoreError::Config(format!("backup name {backup:?} is not <client>/<file>"))
    })?;
    Key::backup(&s3.prefix, uuid, client, file)
}

/// The key prefix every object of `s3` is under (`<prefix>/`, or empty).
pub fn storage_prefix(s3: &S3Storage) -> String {
    let p = s3.prefix.trim_matches('/');
    if p.is_empty() {
        String::new()
    } else {
        format!("{p}/")
    }
}
