//! The seam under fsx's durable writes: the few file operations they are made of, as a
//! trait, so that the power-loss test (`fsx/power_loss.rs`) runs the very same sequences
//! over a recording model that keeps only what was made durable. Production uses
//! [`Real`]: std::fs and the same flags as ever, nothing else (unit tests may make its
//! directory fsyncs fail, `fsx/faults.rs`, and record what it did, `fsx/trace.rs`, so the
//! model can replay a whole receiving session; that code is not compiled into the daemon).

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

#[cfg(test)]
use super::trace::{self, Op};

/// File operations in the order fsx issues them (public only so that `PartialFile` can
/// name it: the module is private to fsx, so nothing else can reach or implement it).
/// Paths are the caller's; a file is the handle `create_new`/`open_partial` returned.
pub trait Disk {
    type File;
    /// Creates a new regular file (mode 0600, never through a symlink, never over an
    /// existing name), open for writing.
    fn create_new(&self, path: &Path) -> io::Result<Self::File>;
    /// Opens a regular file for appending, creating it (0600) if missing, never through a
    /// symlink; and its length.
    fn open_partial(&self, path: &Path) -> io::Result<(Self::File, u64)>;
    fn write_all(&self, file: &mut Self::File, bytes: &[u8]) -> io::Result<()>;
    /// Cuts the file to `len` bytes; the next write goes there.
    fn truncate(&self, file: &mut Self::File, len: u64) -> io::Result<()>;
    /// fsync: the file's content and metadata are durable.
    fn sync_all(&self, file: &Self::File) -> io::Result<()>;
    /// fdatasync: the file's content (and its length) are durable.
    fn sync_data(&self, file: &Self::File) -> io::Result<()>;
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    fn hard_link(&self, from: &Path, to: &Path) -> io::Result<()>;
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Names of the regular files directly in `dir`.
    fn files_in(&self, dir: &Path) -> io::Result<Vec<OsString>>;
    /// fsync of a directory: renames, links and removals in it are durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Creates the directory `path` (mode 0700); its name is durable once its parent
    /// was fsynced.
    fn create_dir(&self, path: &Path) -> io::Result<()>;
}

/// The real filesystem.
#[derive(Clone, Copy, Debug, Default)]
pub struct Real;

impl Disk for Real {
    type File = File;

    fn create_new(&self, path: &Path) -> io::Result<File> {
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)?;
        #[cfg(test)]
        trace::opened(path, &file, |path, ino| Op::CreateNew { path, ino });
        Ok(file)
    }

    fn open_partial(&self, path: &Path) -> io::Result<(File, u64)> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)?;
        let meta = file.metadata()?;
        if !meta.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "partial copy is not a regular file",
            ));
        }
        #[cfg(test)]
        trace::opened(path, &file, |path, ino| Op::OpenPartial { path, ino });
        Ok((file, meta.len()))
    }

    fn write_all(&self, file: &mut File, bytes: &[u8]) -> io::Result<()> {
        file.write_all(bytes)?;
        #[cfg(test)]
        trace::file_op(file, |ino| Op::Write {
            ino,
            bytes: bytes.to_vec(),
        });
        Ok(())
    }

    fn truncate(&self, file: &mut File, len: u64) -> io::Result<()> {
        file.set_len(len)?;
        file.seek(io::SeekFrom::Start(len))?;
        #[cfg(test)]
        trace::file_op(file, |ino| Op::Truncate { ino, len });
        Ok(())
    }

    fn sync_all(&self, file: &File) -> io::Result<()> {
        file.sync_all()?;
        #[cfg(test)]
        trace::file_op(file, |ino| Op::SyncAll { ino });
        Ok(())
    }

    fn sync_data(&self, file: &File) -> io::Result<()> {
        file.sync_data()?;
        #[cfg(test)]
        trace::file_op(file, |ino| Op::SyncData { ino });
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)?;
        #[cfg(test)]
        trace::path_op(from, || Op::Rename {
            from: from.to_path_buf(),
            to: to.to_path_buf(),
        });
        Ok(())
    }

    fn hard_link(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::hard_link(from, to)?;
        #[cfg(test)]
        trace::path_op(to, || Op::HardLink {
            from: from.to_path_buf(),
            to: to.to_path_buf(),
        });
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)?;
        #[cfg(test)]
        trace::path_op(path, || Op::Remove {
            path: path.to_path_buf(),
        });
        Ok(())
    }

    fn files_in(&self, dir: &Path) -> io::Result<Vec<OsString>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                names.push(entry.file_name());
            }
        }
        Ok(names)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        #[cfg(test)]
        super::faults::sync_dir(dir)?;
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        File::open(dir)?.sync_all()?;
        #[cfg(test)]
        trace::path_op(dir, || Op::SyncDir {
            dir: dir.to_path_buf(),
        });
        Ok(())
    }

    fn create_dir(&self, path: &Path) -> io::Result<()> {
        fs::DirBuilder::new().mode(0o700).create(path)?;
        #[cfg(test)]
        trace::path_op(path, || Op::CreateDir {
            path: path.to_path_buf(),
        });
        Ok(())
    }
}

/// A borrowed disk is a disk (the power-loss test lends its model to a `PartialFile`).
impl<D: Disk> Disk for &D {
    type File = D::File;

    fn create_new(&self, path: &Path) -> io::Result<D::File> {
        (**self).create_new(path)
    }

    fn open_partial(&self, path: &Path) -> io::Result<(D::File, u64)> {
        (**self).open_partial(path)
    }

    fn write_all(&self, file: &mut D::File, bytes: &[u8]) -> io::Result<()> {
        (**self).write_all(file, bytes)
    }

    fn truncate(&self, file: &mut D::File, len: u64) -> io::Result<()> {
        (**self).truncate(file, len)
    }

    fn sync_all(&self, file: &D::File) -> io::Result<()> {
        (**self).sync_all(file)
    }

    fn sync_data(&self, file: &D::File) -> io::Result<()> {
        (**self).sync_data(file)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        (**self).rename(from, to)
    }

    fn hard_link(&self, from: &Path, to: &Path) -> io::Result<()> {
        (**self).hard_link(from, to)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        (**self).remove_file(path)
    }

    fn files_in(&self, dir: &Path) -> io::Result<Vec<OsString>> {
        (**self).files_in(dir)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        (**self).sync_dir(dir)
    }

    fn create_dir(&self, path: &Path) -> io::Result<()> {
        (**self).create_dir(path)
    }
}
