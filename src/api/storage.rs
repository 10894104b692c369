//! `GET /api/storage`: the configured storage as the appliance lists it, with state and
//! sizes read from the filesystem at the time of the call. Decides nothing; the storage
//! itself is declared in the config file.

use std::os::unix::fs::MetadataExt;

use serde::Serialize;
use serde_json::json;

use super::error::ApiError;
use super::{Call, Reply};
use crate::config::{Storage, StorageUsage};

const MIB: u64 = 1024 * 1024;

/// Every storage location here is a local directory.
const TYPE_INTERNAL: &str = "internal";

/// One storage location as probed now.
pub(super) struct Probed<'a> {
    pub storage: &'a Storage,
    /// The path is a directory this daemon can list.
    pub online: bool,
    /// The filesystem it lives on (`st_dev`), so that totals count each filesystem once.
    device: Option<u64>,
    pub mb_size: u64,
    pub mb_free: u64,
}

/// Probes each location: missing or unreadable is offline, with sizes 0 (the sizes of
/// whatever filesystem the missing path would fall on would be a lie).
pub(super) fn probe(storage: &[Storage]) -> Vec<Probed<'_>> {
    storage
        .iter()
        .map(|s| {
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
                device,
                mb_size: size / MIB,
                mb_free: free / MIB,
            }
        })
        .collect()
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
    path: String,
    mb_size: u64,
    mb_free: u64,
    is_default: bool,
}

pub(super) fn list(call: &Call) -> Result<Reply, ApiError> {
    let config = &call.app.config;
    let usage = call.query("usage");
    let default_id = config.default_storage().map(|s| s.id);
    let probed = probe(&config.storage);
    let rows: Vec<Row<'_>> = probed
        .iter()
        .filter(|p| usage.is_none_or(|u| u == p.storage.usage.as_str()))
        .map(|p| Row {
            id: p.storage.id,
            name: &p.storage.name,
            kind: TYPE_INTERNAL,
            usage: p.storage.usage.as_str(),
            status: if p.online { "online" } else { "offline" },
            path: p.storage.path.display().to_string(),
            mb_size: p.mb_size,
            mb_free: p.mb_free,
            is_default: Some(p.storage.id) == default_id,
        })
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
        }
    }

    #[test]
    fn missing_paths_are_offline_and_filesystems_count_once() {
        let dir = std::env::temp_dir().join(format!("replgate-storage-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("a")).unwrap();
        std::fs::create_dir_all(dir.join("b")).unwrap();
        let list = vec![
            storage(1, dir.join("a"), "backup"),
            storage(2, dir.join("b"), "archive"),
            storage(3, dir.join("missing"), "backup"),
        ];
        let probed = probe(&list);
        assert!(probed[0].online && probed[1].online && !probed[2].online);
        assert_eq!((probed[2].mb_size, probed[2].mb_free), (0, 0));
        assert!(probed[0].mb_size > 0 && probed[0].mb_free <= probed[0].mb_size);
        // a and b share one filesystem: the total is that filesystem once.
        let (size, free) = totals(&probed, |_| true);
        assert_eq!((size, free), (probed[0].mb_size, probed[0].mb_free));
        assert_eq!(totals(&probed, is_backup).0, probed[0].mb_size);
        assert_eq!(totals(&probed, |s| s.usage.as_str() == "none"), (0, 0));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
