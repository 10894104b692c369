//! Faults a unit test injects under fsx's real writes, as a failing disk would make them:
//! a directory whose fsync fails with `EIO`. Compiled only into unit tests (`cfg(test)`),
//! so the daemon's [`super::disk::Real`] is exactly std::fs. Faults are keyed by the
//! exact directory path; tests work in directories of their own, so a fault set by one
//! test never reaches another running at the same time.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

static FAILING_DIR_SYNCS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

fn failing() -> std::sync::MutexGuard<'static, Vec<PathBuf>> {
    crate::sync::lock(&FAILING_DIR_SYNCS)
}

/// Every fsync of the directory `dir` fails until the guard is dropped (the directory
/// need not exist yet).
#[must_use = "the fault lasts as long as the guard"]
pub fn fail_dir_sync(dir: &Path) -> FailingDirSync {
    failing().push(dir.to_path_buf());
    FailingDirSync {
        dir: dir.to_path_buf(),
    }
}

/// See [`fail_dir_sync`].
#[derive(Debug)]
pub struct FailingDirSync {
    dir: PathBuf,
}

impl Drop for FailingDirSync {
    fn drop(&mut self) {
        let mut f = failing();
        if let Some(i) = f.iter().position(|d| *d == self.dir) {
            f.remove(i);
        }
    }
}

/// Called by `Real::sync_dir` before the real fsync: the injected error, if any.
pub(super) fn sync_dir(dir: &Path) -> io::Result<()> {
    if failing().iter().any(|d| d == dir) {
        return Err(io::Error::from_raw_os_error(libc::EIO));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_directory_fsync_fails_until_the_guard_goes() {
        let d = std::env::temp_dir().join(format!("replgate-faults-{}", std::process::id()));
        super::super::ensure_private_dir(&d).unwrap();
        super::super::sync_dir(&d).unwrap();
        let guard = fail_dir_sync(&d);
        let e = super::super::sync_dir(&d).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EIO));
        // Only that directory.
        super::super::sync_dir(d.parent().unwrap()).unwrap();
        drop(guard);
        super::super::sync_dir(&d).unwrap();
        std::fs::remove_dir_all(&d).unwrap();
    }
}
