//! Backups in the source's backup storage, and the watch that sees new ones. A backup is a
//! regular file at `<client>/<file>` whose every component passes `names` (so nothing
//! starting with `.`: engines write there and rename into place when complete); symlinks
//! and other file types are never followed or listed. New backups are seen through
//! inotify on the storage root and on every client directory (`IN_MOVED_TO` is the rename
//! into place), debounced briefly, with a full rescan every minute as a safety net for
//! anything inotify can miss (a queue overflow, a directory created between the event and
//! its watch, a watch limit). Without inotify the watch falls back to a rescan every
//! second. Reads only; writes nothing.

use std::collections::HashMap;
use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::names::{check_component, BackupName};
use super::queue::Found;

/// What a scan saw.
#[derive(Debug, Default)]
pub struct Scan {
    /// Backups, in no particular order.
    pub found: Vec<Found>,
    /// Entries that look like backups but have a name replication refuses (not UTF-8,
    /// control characters, too long), for a log line.
    pub refused: Vec<String>,
}

fn version_of(meta: &std::fs::Metadata) -> i64 {
    meta.mtime()
        .saturating_mul(1_000_000_000)
        .saturating_add(meta.mtime_nsec())
}

/// Lists every backup under `root`. An unreadable root is an error (the caller must not
/// take an unmounted disk for "every backup was deleted"); an unreadable client directory
/// is skipped with a warning.
pub fn scan(root: &Path) -> io::Result<Scan> {
    let mut out = Scan::default();
    for entry in std::fs::read_dir(root)? {
        let entry = entry?;
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        // file_type() does not follow symlinks: a linked directory is not a client.
        if !kind.is_dir() {
            continue;
        }
        let client_os = entry.file_name();
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
        let files = match std::fs::read_dir(entry.path()) {
            Ok(f) => f,
            Err(e) => {
                log::warn!("replication scan: {}: {e}", entry.path().display());
                continue;
            }
        };
        for f in files.flatten() {
            let name_os = f.file_name();
            if name_os.as_bytes().first() == Some(&b'.') {
                continue;
            }
            // DirEntry::metadata does not follow a symlink either.
            let Ok(meta) = f.metadata() else {
                continue;
            };
            if !meta.file_type().is_file() {
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
                    size: meta.len(),
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
    if !std::fs::symlink_metadata(&dir)?.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            "client is not a directory",
        ));
    }
    let meta = std::fs::symlink_metadata(dir.join(name.file()))?;
    if !meta.file_type().is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    Ok(Found {
        name: name.clone(),
        size: meta.len(),
        version: version_of(&meta),
    })
}

/// How long events are collected after the first one before a rescan: a burst of renames
/// becomes one scan.
const DEBOUNCE: Duration = Duration::from_millis(150);
/// The safety-net rescan.
pub const RESCAN: Duration = Duration::from_secs(60);
/// Without inotify, the rescan period.
pub const POLL: Duration = Duration::from_secs(1);

const ROOT_MASK: u32 = libc::IN_CREATE
    | libc::IN_MOVED_TO
    | libc::IN_MOVED_FROM
    | libc::IN_DELETE
    | libc::IN_DELETE_SELF
    | libc::IN_MOVE_SELF
    | libc::IN_ONLYDIR;
const CLIENT_MASK: u32 = libc::IN_MOVED_TO
    | libc::IN_MOVED_FROM
    | libc::IN_CLOSE_WRITE
    | libc::IN_DELETE
    | libc::IN_DELETE_SELF
    | libc::IN_ONLYDIR;

/// The inotify watch of one storage root and its client directories.
pub struct Watcher {
    root: PathBuf,
    fd: Option<i32>,
    /// Watch descriptor → client directory name ("" for the root).
    watches: HashMap<i32, String>,
    last_scan: Instant,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        if let Some(fd) = self.fd {
            // SAFETY: closing the descriptor this watcher owns, once.
            unsafe { libc::close(fd) };
        }
    }
}

fn cstring(p: &Path) -> Option<CString> {
    CString::new(p.as_os_str().as_bytes()).ok()
}

impl Watcher {
    /// Watches `root` (and, after [`Watcher::follow`], its client directories). When
    /// inotify is unavailable the watcher still works, as a rescan every [`POLL`].
    pub fn new(root: &Path) -> Watcher {
        // SAFETY: plain syscall; the result is checked.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        let mut w = Watcher {
            root: root.to_path_buf(),
            fd: (fd >= 0).then_some(fd),
            watches: HashMap::new(),
            last_scan: Instant::now(),
        };
        if w.fd.is_none() {
            log::warn!(
                "replication: inotify unavailable ({}); scanning {} every second instead",
                io::Error::last_os_error(),
                root.display()
            );
        }
        w.add("");
        w
    }

    /// Whether events (not only the timer) watch this storage.
    pub fn is_inotify(&self) -> bool {
        self.fd.is_some()
    }

    fn add(&mut self, client: &str) {
        let Some(fd) = self.fd else {
            return;
        };
        if self.watches.values().any(|c| c == client) {
            return;
        }
        let (path, mask) = if client.is_empty() {
            (self.root.clone(), ROOT_MASK)
        } else {
            (self.root.join(client), CLIENT_MASK | libc::IN_DONT_FOLLOW)
        };
        let Some(c) = cstring(&path) else {
            return;
        };
        // SAFETY: fd is our inotify descriptor; c is NUL-terminated.
        let wd = unsafe { libc::inotify_add_watch(fd, c.as_ptr(), mask) };
        if wd >= 0 {
            self.watches.insert(wd, client.to_string());
        } else {
            log::debug!(
                "replication: watch {}: {}",
                path.display(),
                io::Error::last_os_error()
            );
        }
    }

    /// Watches every client directory the last scan saw (new ones appear between scans).
    pub fn follow(&mut self, scan: &Scan) {
        if !self.watches.values().any(String::is_empty) {
            self.add("");
        }
        let mut clients: Vec<&str> = scan.found.iter().map(|f| f.name.client()).collect();
        clients.sort_unstable();
        clients.dedup();
        for c in clients {
            self.add(c);
        }
        // Also empty client directories, so their first backup is an event.
        if let Ok(rd) = std::fs::read_dir(&self.root) {
            for e in rd.flatten() {
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    if let Some(n) = e.file_name().to_str() {
                        if !n.starts_with('.') && check_component(n).is_ok() {
                            self.add(n);
                        }
                    }
                }
            }
        }
    }

    /// Waits up to `timeout` for a change; true when a rescan is due (events arrived, or
    /// the safety-net period passed).
    pub fn wait(&mut self, timeout: Duration) -> bool {
        let Some(fd) = self.fd else {
            std::thread::sleep(timeout.min(POLL));
            if self.last_scan.elapsed() >= POLL {
                self.last_scan = Instant::now();
                return true;
            }
            return false;
        };
        if self.last_scan.elapsed() >= RESCAN {
            self.last_scan = Instant::now();
            return true;
        }
        if !poll_readable(fd, timeout) {
            return false;
        }
        // Collect the burst: read until quiet for the debounce period.
        let deadline = Instant::now() + DEBOUNCE * 4;
        loop {
            self.drain(fd);
            if Instant::now() >= deadline || !poll_readable(fd, DEBOUNCE) {
                break;
            }
        }
        self.last_scan = Instant::now();
        true
    }

    /// Reads pending events; drops watches of directories that went away.
    fn drain(&mut self, fd: i32) {
        let mut buf = [0u8; 8192];
        loop {
            // SAFETY: reading into our buffer from our non-blocking descriptor.
            let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                return;
            }
            let mut at = 0usize;
            let n = n as usize;
            let header = std::mem::size_of::<libc::inotify_event>();
            while at + header <= n {
                // SAFETY: the kernel wrote whole events; read_unaligned copes with the
                // byte buffer's alignment.
                let ev: libc::inotify_event =
                    unsafe { std::ptr::read_unaligned(buf[at..].as_ptr().cast()) };
                if ev.mask & (libc::IN_IGNORED | libc::IN_DELETE_SELF) != 0 {
                    self.watches.remove(&ev.wd);
                }
                at += header + ev.len as usize;
            }
        }
    }
}

fn poll_readable(fd: i32, timeout: Duration) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: one pollfd we own.
    let r = unsafe { libc::poll(&mut p, 1, ms) };
    r > 0 && p.revents & libc::POLLIN != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
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

    #[test]
    fn a_rename_into_a_client_directory_wakes_the_watcher_within_the_debounce() {
        let root = scratch("watch");
        std::fs::create_dir_all(root.join("c")).unwrap();
        let mut w = Watcher::new(&root);
        assert!(w.is_inotify(), "inotify is available on the test machine");
        w.follow(&scan(&root).unwrap());
        assert!(!w.wait(Duration::from_millis(50)));
        std::fs::write(root.join("c/.x.tmp"), b"data").unwrap();
        // Drain the write of the dot file: it wakes the watcher too, harmlessly.
        let _ = w.wait(Duration::from_millis(300));
        let t = Instant::now();
        std::fs::rename(root.join("c/.x.tmp"), root.join("c/x")).unwrap();
        assert!(w.wait(Duration::from_secs(2)));
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
        assert_eq!(names(&scan(&root).unwrap()), vec!["c/x"]);
        // A new client directory is an event on the root; its files after follow().
        std::fs::create_dir_all(root.join("d")).unwrap();
        assert!(w.wait(Duration::from_secs(2)));
        w.follow(&scan(&root).unwrap());
        std::fs::write(root.join("d/y"), b"1").unwrap();
        assert!(w.wait(Duration::from_secs(2)));
        std::fs::remove_dir_all(&root).unwrap();
    }
}
