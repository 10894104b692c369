//! `GET /api/storage`: the configured storage as the appliance lists it, with state and
//! sizes read at the time of the call: a directory's from its filesystem, an `s3`
//! storage's from its `capacity_mb` less what the database counts as received there.
//! Decides nothing; the storage itself is declared in the config file.

use std::os::unix::fs::MetadataExt;

use serde::Serialize;
use serde_json::json;

use super::error::ApiError;
use super::{Call, Reply};
use crate::config::{S3Storage, Storage, StorageKind, StorageUsage};
use crate::store::{Store, StoreError};

const MIB: u64 = 1024 * 1024;

/// A `dir` storage: a local directory.
const TYPE_INTERNAL: &str = "internal";
/// An `s3` storage: a bucket of an object store.
const TYPE_S3: &str = "s3";

/// One storage location as probed now.
pub(super) struct Probed<'a> {
    pub storage: &'a Storage,
    /// A directory: it is one this daemon can list. A bucket: its client can be made (the
    /// endpoint, the credentials file with its mode, the CA file); nothing is sent, so a
    /// listing never waits on the network.
    pub online: bool,
    /// The filesystem a directory lives on (`st_dev`), so that totals count each
    /// filesystem once; for a bucket, its place in `storage` (each counts once).
    device: Option<Device>,
    pub mb_size: u64,
    pub mb_free: u64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Device {
    Fs(u64),
    Bucket(u64),
}

/// Probes each location: missing or unreadable is offline, with sizes 0 (the sizes of
/// whatever filesystem the missing path would fall on would be a lie). An `s3` storage's
/// size is its `capacity_mb`, its free space that less the received copies on it.
pub(super) fn probe<'a>(
    storage: &'a [Storage],
    store: &Store,
) -> Result<Vec<Probed<'a>>, StoreError> {
    storage
        .iter()
        .map(|s| match &s.kind {
            StorageKind::Dir => Ok(probe_dir(s)),
            StorageKind::S3(bucket) => {
                let online = client_can_open(bucket);
                let used = received_on(store, s.id)?.div_ceil(MIB);
                Ok(Probed {
                    storage: s,
                    online,
                    device: online.then_some(Device::Bucket(s.id)),
                    mb_size: if online { bucket.capacity_mb } else { 0 },
                    mb_free: if online {
                        bucket.capacity_mb.saturating_sub(used)
                    } else {
                        0
                    },
                })
            }
        })
        .collect()
}

fn probe_dir(s: &Storage) -> Probed<'_> {
    let online = std::fs::read_dir(&s.path).is_ok();
    let device = online
        .then(|| std::fs::metadata(&s.path).ok().map(|m| m.dev()))
        .flatten();
    let (size, free) = match device {
        Some(_) => crate::fsx::disk_space(&s.path).unwrap_or((0, 0)),
        None => (0, 0),
    };
    Probed {
        storage: s,
        online: device.is_some(),
        device: device.map(Device::Fs),
        mb_size: size / MIB,
        mb_free: free / MIB,
    }
}

/// Whether a client for `bucket` could be made (endpoint, credentials file and its mode,
/// CA file), checked without a request.
fn client_can_open(bucket: &S3Storage) -> bool {
    crate::objstore::check_settings(bucket).is_ok()
}

/// The bytes the database counts as received on `storage_id`, every source's.
fn received_on(store: &Store, storage_id: u64) -> Result<u64, StoreError> {
    let mut sum = 0u64;
    for row in store.systems()? {
        if row.storage_id != Some(storage_id) {
            continue;
        }
        let Some(uuid) = row.copies_uuid() else {
            continue;
        };
        for r in store.received(uuid)? {
            if r.storage_id == storage_id {
                sum = sum.saturating_add(r.size);
            }
        }
    }
    Ok(sum)
}

/// Size and free space in MiB of the online locations `keep` selects, each filesystem
/// counted once (two storage directories on one disk do not double it).
pub(super) fn totals<'a>(probed: &[Probed<'a>], keep: impl Fn(&Storage) -> bool) -> (u64, u64) {
    let mut seen = Vec::new();
    let (mut size, mut free) = (0u64, 0u64);
    for p in probed.iter().filter(|p| keep(p.storage)) {
        let Some(dev) = p.device else { continue };
        if seen.contains(&dev) {
            continue;
        }
        seen.push(dev);
        size = size.saturating_add(p.mb_size);
        free = free.saturating_add(p.mb_free);
    }
    (size, free)
}

pub(super) fn is_backup(s: &Storage) -> bool {
    s.usage == StorageUsage::Backup
}

#[derive(Serialize)]
struct Row<'a> {
    id: u64,
    name: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    usage: &'a str,
    status: &'static str,
    /// A directory's path; a bucket's `s3://bucket/prefix`.
    path: String,
    mb_size: u64,
    mb_free: u64,
    is_default: bool,
    /// An `s3` storage's settings, less its credentials (never shown).
    #[serde(skip_serializing_if = "Option::is_none")]
    s3: Option<S3Row<'a>>,
}

#[derive(Serialize)]
struct S3Row<'a> {
    endpoint: &'a str,
    bucket: &'a str,
    prefix: &'a str,
    region: &'a str,
    path_style: bool,
    capacity_mb: u64,
}

fn row<'a>(p: &Probed<'a>, default_id: Option<u64>) -> Row<'a> {
    let s = p.storage;
    let (kind, path, s3) = match &s.kind {
        StorageKind::Dir => (TYPE_INTERNAL, s.path.display().to_string(), None),
        StorageKind::S3(b) => (
            TYPE_S3,
            match b.prefix.as_str() {
                "" => format!("s3://{}", b.bucket),
                prefix => format!("s3://{}/{prefix}", b.bucket),
            },
            Some(S3Row {
                endpoint: &b.endpoint,
                bucket: &b.bucket,
                prefix: &b.prefix,
                region: &b.region,
                path_style: b.path_style,
                capacity_mb: b.capacity_mb,
            }),
        ),
    };
    Row {
        id: s.id,
        name: &s.name,
        kind,
        usage: s.usage.as_str(),
        status: if p.online { "online" } else { "offline" },
        path,
        mb_size: p.mb_size,
        mb_free: p.mb_free,
        is_default: Some(s.id) == default_id,
        s3,
    }
}

pub(super) fn list(call: &Call) -> Result<Reply, ApiError> {
    let config = &call.app.config;
    let usage = call.query("usage");
    let default_id = config.default_storage().map(|s| s.id);
    let probed = probe(&config.storage, &call.app.store)?;
    let rows: Vec<Row<'_>> = probed
        .iter()
        .filter(|p| usage.is_none_or(|u| u == p.storage.usage.as_str()))
        .map(|p| row(p, default_id))
        .collect();
    let (backup_size, backup_free) = totals(&probed, is_backup);
    let (total_size, total_free) = totals(&probed, |_| true);
    Ok(Reply::json(
        200,
        json!({
            "storage": rows,
            "totals": {
                "backup_mb_size": backup_size,
                "backup_mb_free": backup_free,
                "total_mb_size": total_size,
                "total_mb_free": total_free,
            },
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn storage(id: u64, path: std::path::PathBuf, usage: &str) -> Storage {
        Storage {
            id,
            name: format!("s{id}"),
            path,
            usage: usage.parse().unwrap(),
            kind: crate::config::StorageKind::Dir,
        }
    }

    #[test]
    fn missing_paths_are_offline_and_filesystems_count_once() {
        let dir = std::env::temp_dir().join(format!("replgate-storage-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("a")).unwrap();
        std::fs::create_dir_all(dir.join("b")).unwrap();
        let store = Store::open(&dir.join("db.redb")).unwrap();
        let list = vec![
            storage(1, dir.join("a"), "backup"),
            storage(2, dir.join("b"), "archive"),
            storage(3, dir.join("missing"), "backup"),
        ];
        let probed = probe(&list, &store).unwrap();
        assert!(probed[0].online && probed[1].online && !probed[2].online);
        assert_eq!((probed[2].mb_size, probed[2].mb_free), (0, 0));
        assert!(probed[0].mb_size > 0 && probed[0].mb_free <= probed[0].mb_size);
        // a and b share one filesystem: the total is that filesystem once.
        let (size, free) = totals(&probed, |_| true);
        assert_eq!((size, free), (probed[0].mb_size, probed[0].mb_free));
        assert_eq!(totals(&probed, is_backup).0, probed[0].mb_size);
        assert_eq!(totals(&probed, |s| s.usage.as_str() == "none"), (0, 0));
        drop(store);
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// A bucket counts its capacity once, online only when its credentials file is
    /// usable (mode 0600), and its row shows its settings but never the secret.
    #[test]
    fn an_s3_storage_shows_its_capacity_and_settings_never_its_secret() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("replgate-storage-s3-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let store = Store::open(&dir.join("db.redb")).unwrap();
        let creds = dir.join("s3.toml");
        std::fs::write(
            &creds,
            "access_key_id = \"AKIDEXAMPLE\"\nsecret_access_key = \"very-secret-value\"\n",
        )
        .unwrap();
        std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o600)).unwrap();
        let bucket = |id: u64, creds: std::path::PathBuf| Storage {
            id,
            name: format!("b{id}"),
            path: dir.join("s3").join(id.to_string()),
            usage: StorageUsage::Backup,
            kind: StorageKind::S3(Box::new(S3Storage {
                endpoint: "http://127.0.0.1:1".into(),
                bucket: "backups".into(),
                prefix: "site-a".into(),
                region: "us-east-1".into(),
                credentials_file: creds,
                path_style: true,
                ca_file: None,
                capacity_mb: 5000,
            })),
        };
        let list = vec![bucket(1, creds.clone()), bucket(2, dir.join("absent.toml"))];
        let probed = probe(&list, &store).unwrap();
        assert!(probed[0].online && !probed[1].online);
        assert_eq!((probed[0].mb_size, probed[0].mb_free), (5000, 5000));
        assert_eq!((probed[1].mb_size, probed[1].mb_free), (0, 0));
        assert_eq!(totals(&probed, |_| true), (5000, 5000));
        let shown = serde_json::to_string(&row(&probed[0], Some(1))).unwrap();
        assert!(shown.contains("\"type\":\"s3\""), "{shown}");
        assert!(
            shown.contains("\"path\":\"s3://backups/site-a\""),
            "{shown}"
        );
        assert!(
            shown.contains("\"endpoint\":\"http://127.0.0.1:1\""),
            "{shown}"
        );
        assert!(
            !shown.contains("very-secret-value") && !shown.contains("AKIDEXAMPLE"),
            "{shown}"
        );
        // Readable by others: refused, so offline.
        std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(!probe(&list, &store).unwrap()[0].online);
        drop(store);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
