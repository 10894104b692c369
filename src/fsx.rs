//! The only writer of files: atomic replacement (temp file, fsync, rename, directory fsync),
//! atomic creation that never replaces (temp file, fsync, hard link, directory fsync), the
//! start-up sweep of temporaries, private modes (0600 files, 0700 directories) and
//! symlink-refusing reads. Knows nothing of what the bytes mean.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Suffix of in-progress files. Never a name the spool serves, and swept at start.
pub const TEMP_SUFFIX: &str = ".tmp";

static TEMP_COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Creates `dir` (and parents) with mode 0700 if missing; tightens an existing one.
pub fn ensure_private_dir(dir: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
}

/// Replaces `path` with `bytes` so that a crash leaves either the old or the new content,
/// never a mix: write a temp file in the same directory, fsync it, rename it over `path`,
/// fsync the directory. The file gets mode 0600.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let (dir, tmp) = temp_beside(path)?;
    let written = write_temp(&tmp, bytes).and_then(|()| fs::rename(&tmp, path));
    if let Err(e) = written {
        // A temporary left by a crash is swept at start; one left by an error goes now.
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    sync_dir(dir)
}

/// Creates `path` holding `bytes` only if nothing is there yet (an existing file is never
/// replaced: that is an `AlreadyExists` error), so that a crash leaves either no file or
/// the whole file, never an empty or partial one: write a temp file in the same directory,
/// fsync it, hard-link it to `path` (which, unlike rename, refuses an existing name),
/// remove the temp, fsync the directory. Mode 0600. Used for one-time secrets such as the
/// generated admin password.
pub fn write_new_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let (dir, tmp) = temp_beside(path)?;
    let linked = write_temp(&tmp, bytes).and_then(|()| fs::hard_link(&tmp, path));
    // Either way the temporary goes; a crash before this leaves it for the start-up sweep.
    let removed = fs::remove_file(&tmp);
    linked?;
    removed?;
    sync_dir(dir)
}

/// A fresh temporary name beside `path`, and `path`'s directory. Unique per writer
/// (process id and a counter), so two writers of the same file never share a temporary;
/// every temporary ends in [`TEMP_SUFFIX`] for the start-up sweep.
fn temp_beside(path: &Path) -> io::Result<(&Path, PathBuf)> {
    let dir = path.parent().ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidInput, "path has no parent directory")
    })?;
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let mut tmp_name = name.to_os_string();
    let n = TEMP_COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    tmp_name.push(format!(".{}.{n}{TEMP_SUFFIX}", std::process::id()));
    Ok((dir, dir.join(tmp_name)))
}

/// Creates `tmp` (mode 0600, never through a symlink), writes `bytes` and fsyncs it.
fn write_temp(tmp: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(tmp)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Removes the temporaries a crash left directly in `dir` (regular files whose name ends
/// in [`TEMP_SUFFIX`]), durably; returns how many. Only for a directory no other process
/// writes: the caller holds the database lock of the data directory.
pub fn sweep_temporaries(dir: &Path) -> io::Result<u64> {
    let mut removed = 0;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let is_temp = entry.file_name().to_string_lossy().ends_with(TEMP_SUFFIX);
        if is_temp && entry.file_type()?.is_file() {
            fs::remove_file(entry.path())?;
            removed += 1;
        }
    }
    if removed > 0 {
        sync_dir(dir)?;
    }
    Ok(removed)
}

/// Makes a rename or unlink in `dir` durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    File::open(dir)?.sync_all()
}

/// Removes `dir` and everything in it, then makes the removal durable.
pub fn remove_dir_all_durable(dir: &Path) -> io::Result<()> {
    remove_durable(dir, |p| fs::remove_dir_all(p))
}

/// Removes one file if present, durably.
pub fn remove_file_durable(path: &Path) -> io::Result<()> {
    remove_durable(path, |p| fs::remove_file(p))
}

/// Runs `remove` on `path` (nothing to do when it is already gone), then fsyncs the parent
/// directory so the removal survives a crash.
fn remove_durable(path: &Path, remove: fn(&Path) -> io::Result<()>) -> io::Result<()> {
    match remove(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    }
    match path.parent() {
        Some(parent) => sync_dir(parent),
        None => Ok(()),
    }
}

/// Sets mode 0600 on an existing file (keys and the database).
pub fn make_private(path: &Path) -> io::Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))
}

/// Reads a regular file without following a symlink at its last component, up to `limit`
/// bytes. A symlink, a directory or a larger file is an error.
pub fn read_regular_nofollow(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    read_regular_nofollow_with_metadata(path, limit).map(|(bytes, _)| bytes)
}

/// [`read_regular_nofollow`], also returning the metadata of the file that was read (from
/// the open descriptor, so it describes exactly those bytes even if the path was replaced
/// meanwhile).
pub fn read_regular_nofollow_with_metadata(
    path: &Path,
    limit: u64,
) -> io::Result<(Vec<u8>, fs::Metadata)> {
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    let meta = f.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    if meta.len() > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "file larger than expected",
        ));
    }
    let mut out = Vec::with_capacity(meta.len() as usize);
    f.take(limit).read_to_end(&mut out)?;
    Ok((out, meta))
}

/// Total and free bytes of the filesystem holding `path` (or its nearest existing
/// ancestor, so a storage directory not created yet still reports its disk).
pub fn disk_space(path: &Path) -> io::Result<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let mut p = path;
    while !p.exists() {
        p = p.parent().unwrap_or(Path::new("/"));
    }
    let c = std::ffi::CString::new(p.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))?;
    // SAFETY: statvfs writes only into the zeroed struct we pass; the path is NUL-terminated.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let block = st.f_frsize as u64;
    Ok((st.f_blocks as u64 * block, st.f_bavail as u64 * block))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("replgate-fsx-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        ensure_private_dir(&d).unwrap();
        d
    }

    #[test]
    fn atomic_write_replaces_content_with_mode_0600_and_leaves_no_temp() {
        let d = scratch("atomic");
        let p = d.join("status.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(fs::read_dir(&d).unwrap().count(), 1);
        assert_eq!(
            fs::metadata(&d).unwrap().permissions().mode() & 0o777,
            0o700
        );
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn nofollow_read_refuses_symlinks_and_oversize_files() {
        let d = scratch("nofollow");
        let target = d.join("secret");
        fs::write(&target, b"outside").unwrap();
        let link = d.join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(read_regular_nofollow(&link, 100).is_err());
        assert_eq!(read_regular_nofollow(&target, 100).unwrap(), b"outside");
        assert!(read_regular_nofollow(&target, 3).is_err());
        assert!(read_regular_nofollow(&d, 100).is_err());
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn disk_space_reports_a_real_filesystem_even_for_missing_paths() {
        let (total, free) = disk_space(Path::new("/tmp/replgate-no-such-dir/x")).unwrap();
        assert!(total > 0 && free <= total);
    }

    #[test]
    fn write_new_private_never_overwrites() {
        let d = scratch("new");
        let p = d.join("pw");
        write_new_private(&p, b"a").unwrap();
        assert!(write_new_private(&p, b"b").is_err());
        assert_eq!(fs::read(&p).unwrap(), b"a");
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn write_new_private_is_whole_and_private_and_leaves_no_temp() {
        let d = scratch("new-atomic");
        let p = d.join("admin-password");
        write_new_private(&p, b"secret\n").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"secret\n");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // The refused second write cleans up after itself too.
        let err = write_new_private(&p, b"other\n").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        let names: Vec<_> = fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["admin-password"]);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn sweep_removes_only_temporaries() {
        let d = scratch("sweep");
        fs::write(d.join("ca.key.77.0.tmp"), b"half").unwrap();
        fs::write(d.join("ca.key"), b"whole").unwrap();
        ensure_private_dir(&d.join("spool.tmp")).unwrap();
        assert_eq!(sweep_temporaries(&d).unwrap(), 1);
        let mut names: Vec<_> = fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["ca.key", "spool.tmp"]);
        fs::remove_dir_all(&d).unwrap();
    }
}
