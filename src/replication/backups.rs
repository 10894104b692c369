//! Backups in the source's backup storage: what a storage holds, as a scan lists it and
//! as one backup looks (`stat`), and a scan applied to a target's queue. A backup is a
//! regular file at `<client>/<file>` whose every component passes `names` (so nothing
//! starting with `.`: engines write there and rename into place when complete); symlinks
//! and other file types are never followed or listed. Reads only, through `fsx`; the
//! watch that says when to scan again is `jobs::watch`.

use std::collections::HashMap;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::names::{check_component, BackupName};
use super::queue::{self, Found};
use crate::fsx::{self, Stat};
use crate::model::UnixTime;
use crate::store::{ItemStatus, Store, StoreError, Strategy};

/// What a scan saw.
#[derive(Debug, Default)]
pub struct Scan {
    /// Backups, in no particular order.
    pub found: Vec<Found>,
    /// Entries that look like backups but have a name replication refuses (not UTF-8,
    /// control characters, too long), for a log line.
    pub refused: Vec<String>,
}

/// A backup's version: its modification time in nanoseconds.
pub fn version_of(stat: &Stat) -> i64 {
    let (secs, nsecs) = stat.mtime;
    secs.saturating_mul(1_000_000_000).saturating_add(nsecs)
}

/// Lists every backup under `root`. An unreadable root is an error (the caller must not
/// take an unmounted disk for "every backup was deleted"); an unreadable client directory
/// is skipped with a warning.
pub fn scan(root: &Path) -> io::Result<Scan> {
    let mut out = Scan::default();
    for entry in fsx::entries(root)? {
        let entry = entry?;
        // The entry's own lstat: a linked directory is not a client.
        if !entry.stat.as_ref().is_ok_and(|s| s.is_dir) {
            continue;
        }
        let client_os = entry.name;
        let Some(client) = client_os.to_str() else {
            out.refused.push(client_os.to_string_lossy().into_owned());
            continue;
        };
        if client.starts_with('.') {
            continue;
        }
        if check_component(client).is_err() {
            out.refused.push(client.to_string());
            continue;
        }
        let client_dir = root.join(&client_os);
        let files = match fsx::entries(&client_dir) {
            Ok(f) => f,
            Err(e) => {
                log::warn!("replication scan: {}: {e}", client_dir.display());
                continue;
            }
        };
        for f in files.flatten() {
            let name_os = f.name;
            if name_os.as_bytes().first() == Some(&b'.') {
                continue;
            }
            // lstat: a symlink is not a backup either.
            let Ok(meta) = f.stat else {
                continue;
            };
            if !meta.is_file {
                continue;
            }
            let Some(file) = name_os.to_str() else {
                out.refused
                    .push(format!("{client}/{}", name_os.to_string_lossy()));
                continue;
            };
            match BackupName::from_parts(client, file) {
                Ok(name) => out.found.push(Found {
                    name,
                    size: meta.len,
                    version: version_of(&meta),
                }),
                Err(_) => out.refused.push(format!("{client}/{file}")),
            }
        }
    }
    Ok(out)
}

/// One backup, looked up by name (for an admin's `POST /api/replication/queue`).
pub fn stat(root: &Path, name: &BackupName) -> io::Result<Found> {
    let dir = root.join(name.client());
    if !fsx::lstat(&dir)?.is_dir {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            "client is not a directory",
        ));
    }
    let meta = fsx::lstat(&dir.join(name.file()))?;
    if !meta.is_file {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    Ok(Found {
        name: name.clone(),
        size: meta.len,
        version: version_of(&meta),
    })
}

/// Applies a scan to one target's queue in one transaction: new backups are queued,
/// changed ones waiting or failed take their new size and version, vanished ones leave.
/// Returns how many were queued.
pub fn apply_scan(
    store: &Store,
    strategy: Strategy,
    target_id: u64,
    found: &[Found],
    now: UnixTime,
) -> Result<usize, StoreError> {
    let latest: HashMap<_, _> = store.latest_items(target_id)?.into_iter().collect();
    let open = store.open_items(Some(target_id))?;
    let plan = queue::plan_scan(strategy, found, &latest, &open);
    if plan == queue::ScanPlan::default() {
        return Ok(0);
    }
    let added = plan.add.len();
    store.write(|tx| {
        for f in &plan.add {
            let item = queue::new_item(tx.next_item_id()?, target_id, f, None, now);
            tx.put_item(&item)?;
        }
        for (id, size, version) in &plan.update {
            if let Some(mut i) = tx.open_item(*id)? {
                if matches!(i.status, ItemStatus::Waiting | ItemStatus::Failed) {
                    i.size = *size;
                    i.version = *version;
                    i.status = ItemStatus::Waiting;
                    i.failures = 0;
                    i.refusals = 0;
                    i.retry_at = None;
                    i.message = Some("the backup changed before it was sent".into());
                    tx.put_item(&i)?;
                }
            }
        }
        for id in &plan.vanished {
            if let Some(mut i) = tx.open_item(*id)? {
                queue::remove(
                    &mut i,
                    "the backup no longer exists in the backup storage",
                    now,
                );
                tx.put_item(&i)?;
            }
        }
        Ok::<_, StoreError>(())
    })?;
    Ok(added)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("replgate-scan-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn names(s: &Scan) -> Vec<String> {
        let mut v: Vec<String> = s.found.iter().map(|f| f.name.to_string()).collect();
        v.sort();
        v
    }

    #[test]
    fn only_regular_client_files_without_dot_names_are_backups() {
        let root = scratch("rules");
        std::fs::create_dir_all(root.join("web")).unwrap();
        std::fs::create_dir_all(root.join(".engine")).unwrap();
        std::fs::create_dir_all(root.join("web/sub")).unwrap();
        std::fs::write(root.join("web/a.img"), b"1").unwrap();
        std::fs::write(root.join("web/.b.img.partial"), b"2").unwrap();
        std::fs::write(root.join(".engine/c"), b"3").unwrap();
        std::fs::write(root.join("web/sub/deep"), b"4").unwrap();
        std::fs::write(root.join("toplevel"), b"5").unwrap();
        std::fs::write(root.join("web/bad\nname"), b"6").unwrap();
        let outside = scratch("rules-outside");
        std::fs::write(outside.join("secret"), b"7").unwrap();
        std::os::unix::fs::symlink(outside.join("secret"), root.join("web/link")).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("linked")).unwrap();
        let s = scan(&root).unwrap();
        assert_eq!(names(&s), vec!["web/a.img"]);
        assert_eq!(s.refused, vec!["web/bad\nname".to_string()]);
        assert_eq!(s.found[0].size, 1);
        assert!(scan(&root.join("missing")).is_err());
        let n = BackupName::parse("web/a.img").unwrap();
        assert_eq!(stat(&root, &n).unwrap().size, 1);
        assert!(stat(&root, &BackupName::parse("web/link").unwrap()).is_err());
        std::fs::remove_dir_all(&root).unwrap();
        std::fs::remove_dir_all(&outside).unwrap();
    }
}
