//! The only writer of files: atomic replacement (temp file, fsync, rename, directory fsync),
//! private modes (0600 files, 0700 directories) and symlink-refusing reads. Knows nothing of
//! what the bytes mean.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

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
    let dir = path.parent().ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidInput, "path has no parent directory")
    })?;
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    // Unique per writer (process id and a counter), so two writers of the same file never
    // share a temporary; every temporary still ends in TEMP_SUFFIX for the start-up sweep.
    let mut tmp_name = name.to_os_string();
    let n = TEMP_COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    tmp_name.push(format!(".{}.{n}{TEMP_SUFFIX}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let written = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        // A temporary left by a crash is swept at start; one left by an error goes now.
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    sync_dir(dir)
}

/// Writes `bytes` to `path` only if it does not exist yet (mode 0600, fsynced, directory
/// fsynced). Used for one-time secrets such as the generated admin password.
pub fn write_new_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    if let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    Ok(())
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
    match fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    }
    match dir.parent() {
        Some(parent) => sync_dir(parent),
        None => Ok(()),
    }
}

/// Removes one file if present, durably.
pub fn remove_file_durable(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
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
}
