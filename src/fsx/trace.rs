//! Test only: a record of the durable-write operations [`Real`](super::disk::Real)
//! performed under a directory, in the order they returned, so that the power-loss model
//! (`fsx/power_loss.rs`, [`replay`](super::power_loss::replay)) can replay what production
//! code really did — the receiver's whole session: its sink's writes, checkpoints and
//! seals, its committer's renames and directory fsyncs, its directory creation — and
//! check every state a power loss could leave. Not compiled into the daemon.

use std::collections::HashSet;
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

/// One operation as `Real` did it. Files are named by their inode (a file's name can
/// change under an open handle); a path is the caller's.
#[derive(Clone, Debug)]
pub(crate) enum Op {
    CreateNew {
        path: PathBuf,
        ino: u64,
    },
    OpenPartial {
        path: PathBuf,
        ino: u64,
    },
    Write {
        ino: u64,
        bytes: Vec<u8>,
    },
    Truncate {
        ino: u64,
        len: u64,
    },
    SyncAll {
        ino: u64,
    },
    SyncData {
        ino: u64,
    },
    Rename {
        from: PathBuf,
        to: PathBuf,
    },
    HardLink {
        from: PathBuf,
        to: PathBuf,
    },
    Remove {
        path: PathBuf,
    },
    CreateDir {
        path: PathBuf,
    },
    SyncDir {
        dir: PathBuf,
    },
    /// Not a file operation: the caller recorded in its database that the file at `path`
    /// holds `offset` bytes durably (a checkpoint's row).
    Recorded {
        path: PathBuf,
        offset: u64,
    },
}

struct Recorder {
    id: usize,
    root: PathBuf,
    /// (device, inode) of the files opened under `root`.
    files: HashSet<(u64, u64)>,
    ops: Vec<Op>,
}

static ACTIVE: AtomicUsize = AtomicUsize::new(0);
static NEXT_ID: AtomicUsize = AtomicUsize::new(0);
static RECORDERS: Mutex<Vec<Recorder>> = Mutex::new(Vec::new());

/// Records what `Real` does under a directory (paths must be given under it, as the
/// receiver gives its storage path), until dropped. Tests running beside it that write
/// elsewhere are not recorded.
pub(crate) struct Recording {
    id: usize,
}

impl Recording {
    pub(crate) fn start(root: &Path) -> Recording {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        lock(&RECORDERS).push(Recorder {
            id,
            root: root.to_path_buf(),
            files: HashSet::new(),
            ops: Vec::new(),
        });
        ACTIVE.fetch_add(1, Ordering::Release);
        Recording { id }
    }

    /// The operations so far, oldest first.
    pub(crate) fn take(&self) -> Vec<Op> {
        let mut all = lock(&RECORDERS);
        all.iter_mut()
            .find(|r| r.id == self.id)
            .map(|r| std::mem::take(&mut r.ops))
            .unwrap_or_default()
    }
}

impl Drop for Recording {
    fn drop(&mut self) {
        lock(&RECORDERS).retain(|r| r.id != self.id);
        ACTIVE.fetch_sub(1, Ordering::Release);
    }
}

/// A test that panicked while holding the lock leaves the records usable.
fn lock(m: &Mutex<Vec<Recorder>>) -> MutexGuard<'_, Vec<Recorder>> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn active() -> bool {
    ACTIVE.load(Ordering::Acquire) > 0
}

/// An operation on `path` returned.
pub(super) fn path_op(path: &Path, op: impl FnOnce() -> Op) {
    if !active() {
        return;
    }
    let mut all = lock(&RECORDERS);
    if let Some(r) = all.iter_mut().find(|r| path.starts_with(&r.root)) {
        r.ops.push(op());
    }
}

fn key(file: &File) -> Option<(u64, u64)> {
    file.metadata().ok().map(|m| (m.dev(), m.ino()))
}

/// `file` was opened (or created) at `path`: its operations are recorded from now on.
pub(super) fn opened(path: &Path, file: &File, op: impl FnOnce(PathBuf, u64) -> Op) {
    if !active() {
        return;
    }
    let Some(k) = key(file) else {
        return;
    };
    let mut all = lock(&RECORDERS);
    if let Some(r) = all.iter_mut().find(|r| path.starts_with(&r.root)) {
        r.files.insert(k);
        r.ops.push(op(path.to_path_buf(), k.1));
    }
}

/// An operation on the open `file` returned.
pub(super) fn file_op(file: &File, op: impl FnOnce(u64) -> Op) {
    if !active() {
        return;
    }
    let Some(k) = key(file) else {
        return;
    };
    let mut all = lock(&RECORDERS);
    if let Some(r) = all.iter_mut().find(|r| r.files.contains(&k)) {
        r.ops.push(op(k.1));
    }
}

/// The caller recorded that the partial file at `path` holds `offset` bytes durably (its
/// checkpoint's row is committed): the model checks that from here on it does.
pub(crate) fn recorded(path: &Path, offset: u64) {
    path_op(path, || Op::Recorded {
        path: path.to_path_buf(),
        offset,
    });
}
