//! The only writer of files: atomic replacement (temp file, fsync, rename, directory fsync),
//! atomic creation that never replaces (temp file, fsync, hard link, directory fsync),
//! streamed files that appear only when complete ([`PartialFile`]), the start-up sweep of
//! temporaries, private modes (0600 files, 0700 directories) and symlink-refusing reads
//! and looks ([`Dir::lstat`]). Knows nothing of what the bytes mean.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

mod disk;
#[cfg(test)]
pub mod faults;
#[cfg(test)]
pub(crate) mod power_loss;
#[cfg(test)]
pub(crate) mod trace;

use disk::{Disk, Real};

/// Suffix of in-progress files. Never a name the spool serves, and swept at start.
pub(crate) const TEMP_SUFFIX: &str = ".tmp";

static TEMP_COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Creates `dir` (and parents) with mode 0700 if missing; tightens an existing one.
pub(crate) fn ensure_private_dir(dir: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
}

/// Replaces `path` with `bytes` so that a crash leaves either the old or the new content,
/// never a mix: write a temp file in the same directory, fsync it, rename it over `path`,
/// fsync the directory. The file gets mode 0600.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic_on(&Real, path, bytes)
}

fn write_atomic_on<D: Disk>(disk: &D, path: &Path, bytes: &[u8]) -> io::Result<()> {
    let (dir, tmp) = temp_beside(path)?;
    let written = write_temp(disk, &tmp, bytes).and_then(|()| disk.rename(&tmp, path));
    if let Err(e) = written {
        // A temporary left by a crash is swept at start; one left by an error goes now.
        let _ = disk.remove_file(&tmp);
        return Err(e);
    }
    disk.sync_dir(dir)
}

/// Creates `path` holding `bytes` only if nothing is there yet (an existing file is never
/// replaced: that is an `AlreadyExists` error), so that a crash leaves either no file or
/// the whole file, never an empty or partial one: write a temp file in the same directory,
/// fsync it, hard-link it to `path` (which, unlike rename, refuses an existing name),
/// remove the temp, fsync the directory. Mode 0600. Used for one-time secrets such as the
/// generated admin password.
pub(crate) fn write_new_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_new_private_on(&Real, path, bytes)
}

fn write_new_private_on<D: Disk>(disk: &D, path: &Path, bytes: &[u8]) -> io::Result<()> {
    let (dir, tmp) = temp_beside(path)?;
    let linked = write_temp(disk, &tmp, bytes).and_then(|()| disk.hard_link(&tmp, path));
    // Either way the temporary goes; a crash before this leaves it for the start-up sweep.
    let removed = disk.remove_file(&tmp);
    linked?;
    removed?;
    disk.sync_dir(dir)
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
fn write_temp<D: Disk>(disk: &D, tmp: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut f = disk.create_new(tmp)?;
    disk.write_all(&mut f, bytes)?;
    disk.sync_all(&f)
}

/// Removes the temporaries a crash left directly in `dir` (regular files whose name ends
/// in [`TEMP_SUFFIX`]), durably; returns how many. Only for a directory no other process
/// writes: the caller holds the database lock of the data directory.
pub(crate) fn sweep_temporaries(dir: &Path) -> io::Result<u64> {
    sweep_temporaries_on(&Real, dir)
}

fn sweep_temporaries_on<D: Disk>(disk: &D, dir: &Path) -> io::Result<u64> {
    let mut removed = 0;
    for name in disk.files_in(dir)? {
        if name.to_string_lossy().ends_with(TEMP_SUFFIX) {
            disk.remove_file(&dir.join(name))?;
            removed += 1;
        }
    }
    if removed > 0 {
        disk.sync_dir(dir)?;
    }
    Ok(removed)
}

/// Makes a rename or unlink in `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    Real.sync_dir(dir)
}

/// Removes `dir` and everything in it, then makes the removal durable.
pub(crate) fn remove_dir_all_durable(dir: &Path) -> io::Result<()> {
    remove_durable(&Real, dir, |p| fs::remove_dir_all(p))
}

/// Removes one file if present, durably.
pub(crate) fn remove_file_durable(path: &Path) -> io::Result<()> {
    remove_file_durable_on(&Real, path)
}

fn remove_file_durable_on<D: Disk>(disk: &D, path: &Path) -> io::Result<()> {
    remove_durable(disk, path, |p| disk.remove_file(p))
}

/// Runs `remove` on `path` (nothing to do when it is already gone), then fsyncs the parent
/// directory so the removal survives a crash.
fn remove_durable<D: Disk>(
    disk: &D,
    path: &Path,
    remove: impl FnOnce(&Path) -> io::Result<()>,
) -> io::Result<()> {
    match remove(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    }
    match path.parent() {
        Some(parent) => disk.sync_dir(parent),
        None => Ok(()),
    }
}

/// Sets mode 0600 on an existing file (keys and the database).
pub(crate) fn make_private(path: &Path) -> io::Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))
}

/// Reads a regular file without following a symlink at its last component, up to `limit`
/// bytes. A symlink, a directory or a larger file is an error.
pub(crate) fn read_regular_nofollow(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    read_regular_nofollow_with_metadata(path, limit).map(|(bytes, _)| bytes)
}

/// [`read_regular_nofollow`], also returning the metadata of the file that was read (from
/// the open descriptor, so it describes exactly those bytes even if the path was replaced
/// meanwhile).
pub(crate) fn read_regular_nofollow_with_metadata(
    path: &Path,
    limit: u64,
) -> io::Result<(Vec<u8>, fs::Metadata)> {
    let (f, meta) = open_regular_nofollow(path)?;
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

/// A file received in pieces that becomes visible under its final name only once it is
/// complete: it is written under a partial name in the same directory (the caller picks a
/// dot name, which nothing lists as a backup), made durable at checkpoints with
/// [`PartialFile::checkpoint`] (or a [`SyncHandle`] on another thread), made whole with
/// [`PartialFile::sync_all`] and moved into place with [`PartialFile::rename_into`]; then
/// [`sync_dir`] once per directory, so many files share one directory sync. A crash
/// leaves the partial, whose durable prefix the caller recorded, for a resume.
pub struct PartialFile<D: Disk = Real> {
    disk: D,
    file: D::File,
    path: std::path::PathBuf,
    len: u64,
    /// Whether the directory was fsynced since this open (see [`PartialFile::checkpoint`]);
    /// shared with the file's [`SyncHandle`]s.
    name_durable: Arc<AtomicBool>,
}

impl std::fmt::Debug for PartialFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartialFile")
            .field("path", &self.path)
            .field("len", &self.len)
            .finish()
    }
}

impl PartialFile {
    /// Opens the partial at `path` (mode 0600, never through a symlink), creating it if
    /// missing, and keeps its first `keep` bytes: anything after them (written after the
    /// last checkpoint) is cut. A file shorter than `keep` is an error.
    pub fn open(path: &Path, keep: u64) -> io::Result<PartialFile> {
        PartialFile::open_on(Real, path, keep)
    }

    /// Starts writing back what has been written so far without waiting for it, so the
    /// next checkpoint (and the final fsync) finds little left to do and dirty pages do
    /// not pile up in memory.
    pub fn start_writeback(&self) {
        #[cfg(target_os = "linux")]
        {
            use std::os::unix::io::AsRawFd;
            // SAFETY: a plain syscall on a descriptor we own; errors only lose the hint.
            unsafe {
                libc::sync_file_range(self.file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
            }
        }
    }

    /// A second handle that can only make the file durable, for a checkpoint taken on
    /// another thread while writing goes on: what was written before the call is durable
    /// when it returns.
    pub fn sync_handle(&self) -> io::Result<SyncHandle> {
        Ok(SyncHandle {
            file: self.file.try_clone()?,
            path: self.path.clone(),
            name_durable: self.name_durable.clone(),
        })
    }
}

/// Makes the name of the partial at `path` durable once per open: an fdatasync does not
/// make a new file's name durable, so without a directory fsync a power loss could take
/// away the very partial a recorded checkpoint points at (found by the power-loss test,
/// fsx/power_loss.rs). Files that never checkpoint (small ones) pay nothing.
fn make_name_durable<D: Disk>(disk: &D, path: &Path, done: &AtomicBool) -> io::Result<()> {
    if done.load(Ordering::Acquire) {
        return Ok(());
    }
    if let Some(dir) = path.parent() {
        disk.sync_dir(dir)?;
    }
    done.store(true, Ordering::Release);
    Ok(())
}

impl<D: Disk> PartialFile<D> {
    fn open_on(disk: D, path: &Path, keep: u64) -> io::Result<PartialFile<D>> {
        let (mut file, len) = disk.open_partial(path)?;
        if len < keep {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("partial copy holds {len} bytes, {keep} expected"),
            ));
        }
        disk.truncate(&mut file, keep)?;
        Ok(PartialFile {
            disk,
            file,
            path: path.to_path_buf(),
            len: keep,
            name_durable: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Appends `bytes`.
    pub fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.disk.write_all(&mut self.file, bytes)?;
        self.len += bytes.len() as u64;
        Ok(())
    }

    /// The partial's path (for the power-loss test's record, `fsx/trace.rs`).
    #[cfg(test)]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes in the file.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Makes everything written so far durable (fdatasync).
    pub fn sync_data(&self) -> io::Result<()> {
        self.disk.sync_data(&self.file)
    }

    /// A checkpoint whose offset the caller will record: [`PartialFile::sync_data`], and
    /// the first one after an open also fsyncs the directory (see [`make_name_durable`]).
    pub fn checkpoint(&self) -> io::Result<()> {
        self.sync_data()?;
        make_name_durable(&self.disk, &self.path, &self.name_durable)
    }

    /// Makes the whole file durable, data and metadata (fsync).
    pub fn sync_all(&self) -> io::Result<()> {
        self.disk.sync_all(&self.file)
    }

    /// Renames the file to `final_path` (same directory), replacing what was there. Call
    /// [`PartialFile::sync_all`] first; the rename is durable after [`sync_dir`] of the
    /// directory, so many files can share one directory sync.
    pub fn rename_into(self, final_path: &Path) -> io::Result<()> {
        drop(self.file);
        self.disk.rename(&self.path, final_path)
    }

    /// Removes the partial (a failed verification or an abandoned file), durably.
    pub fn discard(self) -> io::Result<()> {
        drop(self.file);
        remove_file_durable_on(&self.disk, &self.path)
    }
}

/// See [`PartialFile::sync_handle`].
#[derive(Debug)]
pub struct SyncHandle {
    file: File,
    path: PathBuf,
    name_durable: Arc<AtomicBool>,
}

impl SyncHandle {
    /// fdatasync.
    pub fn sync_data(&self) -> io::Result<()> {
        Real.sync_data(&self.file)
    }

    /// A checkpoint whose offset the caller will record (see [`PartialFile::checkpoint`]).
    pub fn checkpoint(&self) -> io::Result<()> {
        self.sync_data()?;
        make_name_durable(&Real, &self.path, &self.name_durable)
    }

    /// The partial's path (for the power-loss test's record, `fsx/trace.rs`).
    #[cfg(test)]
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Creates (0700) or opens the directory `base/<components...>` one level at a time,
/// refusing any level that exists as a symlink or a non-directory, so nothing outside
/// `base` is ever reached. `base` itself must exist. Components are the caller's checked
/// names.
pub(crate) fn ensure_dir_under(base: &Path, components: &[&str]) -> io::Result<std::path::PathBuf> {
    ensure_dir_under_on(&Real, base, components)
}

fn ensure_dir_under_on<D: Disk>(
    disk: &D,
    base: &Path,
    components: &[&str],
) -> io::Result<std::path::PathBuf> {
    let mut p = base.to_path_buf();
    for c in components {
        if c.is_empty() || *c == "." || *c == ".." || c.contains('/') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("invalid directory component {c:?}"),
            ));
        }
        p.push(c);
        match fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => continue,
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::NotADirectory,
                    format!("{} is not a directory", p.display()),
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        match disk.create_dir(&p) {
            Ok(()) => {
                if let Some(parent) = p.parent() {
                    disk.sync_dir(parent)?;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                if !fs::symlink_metadata(&p)?.is_dir() {
                    return Err(io::Error::new(
                        io::ErrorKind::NotADirectory,
                        format!("{} is not a directory", p.display()),
                    ));
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(p)
}

/// Renames `from` to `to` (same directory) and makes the rename durable.
pub(crate) fn rename_durable(from: &Path, to: &Path) -> io::Result<()> {
    rename_durable_on(&Real, from, to)
}

fn rename_durable_on<D: Disk>(disk: &D, from: &Path, to: &Path) -> io::Result<()> {
    disk.rename(from, to)?;
    match to.parent() {
        Some(dir) => disk.sync_dir(dir),
        None => Ok(()),
    }
}

/// Moves the file `from` to `to` (another directory of the same filesystem) durably and
/// without ever replacing anything at `to` (that is an `AlreadyExists` error): hard-link
/// it to `to`, fsync `to`'s directory, remove `from`, fsync `from`'s directory. A crash
/// leaves the file under `from`, under both names (the link was durable, the removal not
/// yet), or under `to`, never under neither; the caller's records say which move it was
/// and finish it (the recycle bin's start-up repair).
pub(crate) fn move_durable(from: &Path, to: &Path) -> io::Result<()> {
    move_durable_on(&Real, from, to)
}

fn move_durable_on<D: Disk>(disk: &D, from: &Path, to: &Path) -> io::Result<()> {
    let no_parent = || io::Error::new(io::ErrorKind::InvalidInput, "path has no parent directory");
    let (from_dir, to_dir) = (
        from.parent().ok_or_else(no_parent)?,
        to.parent().ok_or_else(no_parent)?,
    );
    disk.hard_link(from, to)?;
    disk.sync_dir(to_dir)?;
    disk.remove_file(from)?;
    disk.sync_dir(from_dir)
}

/// Opens a regular file for reading without following a symlink at its last component;
/// with its metadata (from the descriptor).
pub(crate) fn open_regular_nofollow(path: &Path) -> io::Result<(File, fs::Metadata)> {
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
    Ok((f, meta))
}

/// A regular file open for reading ([`open_read`]), never reached through a symlink at its
/// last component, with what `fstat` said of exactly the file that was opened.
#[derive(Debug)]
pub(crate) struct ReadFile {
    file: File,
    stat: Stat,
}

impl ReadFile {
    /// Length, times and kind of the opened file (from its descriptor).
    pub(crate) fn stat(&self) -> &Stat {
        &self.stat
    }

    /// Fills `buf` from `offset` without moving the read position (`pread`); a file that
    /// ends first is an `UnexpectedEof` error.
    pub(crate) fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        self.file.read_exact_at(buf, offset)
    }
}

impl Read for ReadFile {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.file.read(buf)
    }
}

impl io::Seek for ReadFile {
    fn seek(&mut self, pos: io::SeekFrom) -> io::Result<u64> {
        self.file.seek(pos)
    }
}

/// Opens a regular file for reading (see [`open_regular_nofollow`]).
pub(crate) fn open_read(path: &Path) -> io::Result<ReadFile> {
    let (file, meta) = open_regular_nofollow(path)?;
    Ok(ReadFile {
        file,
        stat: Stat::of(&meta),
    })
}

/// Opens the regular file `base/<parts...>` for reading one level at a time below `base`,
/// following no symlink at any level (each directory is opened `O_NOFOLLOW` relative to
/// the one before, the file too), so nothing outside `base` is reached whatever the levels
/// below it were replaced with. `parts` are the caller's checked names.
pub(crate) fn open_read_under(base: &Path, parts: &[&str]) -> io::Result<ReadFile> {
    use std::ffi::CString;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::ffi::OsStrExt;
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidInput, what.to_string());
    let Some((last, dirs)) = parts.split_last() else {
        return Err(bad("no file named"));
    };
    let c = |s: &[u8]| CString::new(s).map_err(|_| bad("name contains a NUL byte"));
    let mut dir: OwnedFd = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
        .open(base)?
        .into();
    for part in parts {
        if part.is_empty() || *part == "." || *part == ".." || part.contains('/') {
            return Err(bad("invalid path component"));
        }
    }
    for part in dirs {
        let name = c(part.as_bytes())?;
        // SAFETY: `dir` is an open descriptor and `name` NUL-terminated; the result is
        // checked and owned at once.
        let fd = unsafe {
            libc::openat(
                dir.as_raw_fd(),
                name.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: openat returned a new descriptor that nothing else owns.
        dir = unsafe { OwnedFd::from_raw_fd(fd) };
    }
    let name = c(std::ffi::OsStr::new(last).as_bytes())?;
    // SAFETY: as above.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: openat returned a new descriptor that nothing else owns.
    let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(bad("not a regular file"));
    }
    Ok(ReadFile {
        file,
        stat: Stat::of(&meta),
    })
}

/// `lstat` of `path`: the entry itself, never a symlink's target.
pub(crate) fn lstat(path: &Path) -> io::Result<Stat> {
    fs::symlink_metadata(path).map(|m| Stat::of(&m))
}

/// One entry of a directory listing ([`entries`]).
#[derive(Debug)]
pub(crate) struct Entry {
    pub name: std::ffi::OsString,
    /// What `lstat` says of the entry (never a symlink's target), or why it could not.
    pub stat: io::Result<Stat>,
}

/// The entries of `dir`, in no particular order, as the directory is read: an error
/// opening it is the `Err`, an error reading one entry is that item's.
pub(crate) fn entries(dir: &Path) -> io::Result<impl Iterator<Item = io::Result<Entry>>> {
    Ok(fs::read_dir(dir)?.map(|entry| {
        entry.map(|e| Entry {
            name: e.file_name(),
            stat: e.metadata().map(|m| Stat::of(&m)),
        })
    }))
}

/// Feeds the first `len` bytes of `file` (from its current position) to `each`, in pieces
/// of at most `buf.len()` bytes. A shorter file is an `UnexpectedEof` error.
pub(crate) fn read_prefix(
    file: &mut impl Read,
    len: u64,
    buf: &mut [u8],
    mut each: impl FnMut(&[u8]),
) -> io::Result<()> {
    let mut left = len;
    while left > 0 {
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = file.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("file ended {left} bytes early"),
            ));
        }
        each(&buf[..n]);
        left -= n as u64;
    }
    Ok(())
}

/// An open directory (an `O_PATH` descriptor), for looking at entries below it by a short
/// relative name: the kernel walks only that name, not the whole path from `/` again, which
/// on the spool's hot path (two looks per poll) was a tenth of the daemon's CPU time.
pub(crate) struct Dir {
    fd: std::os::fd::OwnedFd,
}

/// What [`Dir::lstat`] reports about an entry (the entry itself, never a symlink's target).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stat {
    pub is_dir: bool,
    pub is_file: bool,
    pub nlink: u64,
    pub dev: u64,
    pub ino: u64,
    pub len: u64,
    pub mtime: (i64, i64),
    pub ctime: (i64, i64),
}

impl Stat {
    /// The same fields from std's metadata (of an opened file, say).
    pub fn of(meta: &fs::Metadata) -> Stat {
        use std::os::unix::fs::MetadataExt;
        Stat {
            is_dir: meta.is_dir(),
            is_file: meta.is_file(),
            nlink: meta.nlink(),
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }
}

/// Longest relative name [`Dir::lstat`] takes (it is built on the stack).
const MAX_RELATIVE_NAME: usize = 255;

impl Dir {
    pub(crate) fn open(path: &Path) -> io::Result<Dir> {
        let f = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW)
            .open(path)?;
        Ok(Dir { fd: f.into() })
    }

    /// `lstat` of the entry `parts` (joined by `/`) names below this directory. Every
    /// component but the last is still followed if it is a symlink, so callers look at
    /// each level.
    pub(crate) fn lstat(&self, parts: &[&str]) -> io::Result<Stat> {
        use std::os::fd::AsRawFd;
        let bad = || io::Error::new(io::ErrorKind::InvalidInput, "bad relative name");
        let mut buf = [0u8; MAX_RELATIVE_NAME + 1];
        let mut len = 0;
        for (i, part) in parts.iter().enumerate() {
            let bytes = part.as_bytes();
            let sep = usize::from(i > 0);
            if bytes.is_empty() || bytes.contains(&0) || len + sep + bytes.len() > MAX_RELATIVE_NAME
            {
                return Err(bad());
            }
            if sep == 1 {
                buf[len] = b'/';
            }
            buf[len + sep..len + sep + bytes.len()].copy_from_slice(bytes);
            len += sep + bytes.len();
        }
        if len == 0 {
            return Err(bad());
        }
        let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
        // SAFETY: `buf` is NUL-terminated (it is one byte longer than any accepted name and
        // zeroed), the descriptor is open for as long as `self`, and `st` is a valid place
        // for fstatat to write one stat struct.
        let rc = unsafe {
            libc::fstatat(
                self.fd.as_raw_fd(),
                buf.as_ptr().cast(),
                st.as_mut_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fstatat returned 0, so it filled the struct.
        let st = unsafe { st.assume_init() };
        let kind = st.st_mode & libc::S_IFMT;
        // Field widths differ between targets (32-bit time and sizes on armv7).
        #[allow(clippy::unnecessary_cast, clippy::useless_conversion)]
        Ok(Stat {
            is_dir: kind == libc::S_IFDIR,
            is_file: kind == libc::S_IFREG,
            nlink: st.st_nlink as u64,
            dev: st.st_dev as u64,
            ino: st.st_ino as u64,
            len: st.st_size as u64,
            mtime: (st.st_mtime as i64, st.st_mtime_nsec as i64),
            ctime: (st.st_ctime as i64, st.st_ctime_nsec as i64),
        })
    }
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
    fn reads_below_a_base_follow_no_symlink_at_any_level() {
        let d = scratch("under");
        fs::create_dir_all(d.join("base/u/c")).unwrap();
        fs::write(d.join("base/u/c/f"), b"0123456789").unwrap();
        fs::create_dir_all(d.join("outside/c")).unwrap();
        fs::write(d.join("outside/c/f"), b"secret").unwrap();
        let f = open_read_under(&d.join("base"), &["u", "c", "f"]).unwrap();
        let mut buf = [0u8; 4];
        f.read_exact_at(&mut buf, 3).unwrap();
        assert_eq!(&buf, b"3456");
        assert_eq!(f.stat().len, 10);
        assert!(f.read_exact_at(&mut buf, 8).is_err(), "past the end");
        // A directory level or the file itself replaced by a symlink is refused.
        std::os::unix::fs::symlink(d.join("outside"), d.join("base/v")).unwrap();
        assert!(open_read_under(&d.join("base"), &["v", "c", "f"]).is_err());
        std::os::unix::fs::symlink(d.join("outside/c/f"), d.join("base/u/c/g")).unwrap();
        assert!(open_read_under(&d.join("base"), &["u", "c", "g"]).is_err());
        assert!(open_read_under(&d.join("base"), &["u", "..", "u", "c", "f"]).is_err());
        assert!(
            open_read_under(&d.join("base"), &["u", "c"]).is_err(),
            "a directory"
        );
        fs::remove_dir_all(d).unwrap();
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
    fn a_partial_file_resumes_from_its_checkpoint_and_appears_only_on_rename() {
        let d = scratch("partial");
        let part = d.join(".b.part");
        let fin = d.join("b");
        let mut p = PartialFile::open(&part, 0).unwrap();
        p.write_all(b"hello ").unwrap();
        p.sync_data().unwrap();
        p.write_all(b"lost after a crash").unwrap();
        drop(p);
        // Resume from the checkpoint: the unsynced tail is cut.
        let mut p = PartialFile::open(&part, 6).unwrap();
        assert_eq!(p.len(), 6);
        p.write_all(b"world").unwrap();
        p.start_writeback();
        p.sync_handle().unwrap().sync_data().unwrap();
        assert!(!fin.exists());
        p.sync_all().unwrap();
        p.rename_into(&fin).unwrap();
        sync_dir(&d).unwrap();
        assert_eq!(fs::read(&fin).unwrap(), b"hello world");
        assert!(!part.exists());
        assert_eq!(
            fs::metadata(&fin).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // A partial shorter than the recorded checkpoint is refused, not extended.
        fs::write(&part, b"abc").unwrap();
        assert!(PartialFile::open(&part, 10).is_err());
        PartialFile::open(&part, 0).unwrap().discard().unwrap();
        assert!(!part.exists());
        // Never through a symlink.
        std::os::unix::fs::symlink(&fin, &part).unwrap();
        assert!(PartialFile::open(&part, 0).is_err());
        assert_eq!(fs::read(&fin).unwrap(), b"hello world");
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn directories_under_a_base_refuse_symlinks_and_dot_components() {
        let d = scratch("under");
        let p = ensure_dir_under(&d, &["uuid", "client"]).unwrap();
        assert!(p.is_dir() && p.ends_with("uuid/client"));
        assert_eq!(ensure_dir_under(&d, &["uuid", "client"]).unwrap(), p);
        let outside = scratch("outside");
        std::os::unix::fs::symlink(&outside, d.join("evil")).unwrap();
        assert!(ensure_dir_under(&d, &["evil", "x"]).is_err());
        assert!(!outside.join("x").exists());
        assert!(ensure_dir_under(&d, &[".."]).is_err());
        assert!(ensure_dir_under(&d, &["a/b"]).is_err());
        let mut f = open_regular_nofollow(&{
            let f = d.join("f");
            fs::write(&f, b"0123456789").unwrap();
            f
        })
        .unwrap()
        .0;
        let mut seen = Vec::new();
        read_prefix(&mut f, 4, &mut [0u8; 3], |b| seen.extend_from_slice(b)).unwrap();
        assert_eq!(seen, b"0123");
        assert!(read_prefix(&mut f, 100, &mut [0u8; 3], |_| {}).is_err());
        fs::remove_dir_all(&d).unwrap();
        fs::remove_dir_all(&outside).unwrap();
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

    #[test]
    fn lstat_below_a_dir_sees_entries_and_never_follows_the_last_symlink() {
        let root = std::env::temp_dir().join(format!("replgate-fsx-dir-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        ensure_private_dir(&root.join("sub")).unwrap();
        fs::write(root.join("sub/file"), b"abc").unwrap();
        std::os::unix::fs::symlink(root.join("sub/file"), root.join("link")).unwrap();
        let dir = Dir::open(&root).unwrap();
        let sub = dir.lstat(&["sub"]).unwrap();
        assert!(sub.is_dir && !sub.is_file);
        let file = dir.lstat(&["sub", "file"]).unwrap();
        assert!(file.is_file && file.len == 3 && file.nlink == 1);
        assert_eq!(
            file,
            Stat::of(&fs::symlink_metadata(root.join("sub/file")).unwrap())
        );
        let link = dir.lstat(&["link"]).unwrap();
        assert!(!link.is_file && !link.is_dir, "a symlink is not followed");
        assert_eq!(
            dir.lstat(&["missing"]).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        assert!(dir.lstat(&[]).is_err() && dir.lstat(&[""]).is_err());
        assert!(dir.lstat(&["a\0b"]).is_err());
        fs::remove_dir_all(&root).unwrap();
    }
}
