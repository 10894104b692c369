//! The watch that sees new backups in the source's backup storage: inotify on the storage
//! root and on every client directory (`IN_MOVED_TO` is the rename into place), debounced
//! briefly, with a full rescan every minute as a safety net for anything inotify can miss
//! (a queue overflow, a directory created between the event and its watch, a watch
//! limit). Without inotify the watch falls back to a rescan every second. It only says
//! when to scan; what a scan finds is `replication::backups`.

use std::collections::HashMap;
use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::replication::backups::Scan;
use crate::replication::names::check_component;

/// How long events are collected after the first one before a rescan: a burst of renames
/// becomes one scan.
const DEBOUNCE: Duration = Duration::from_millis(150);
/// The safety-net rescan.
pub(crate) const RESCAN: Duration = Duration::from_secs(60);
/// Without inotify, the rescan period.
pub(crate) const POLL: Duration = Duration::from_secs(1);

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
pub(crate) struct Watcher {
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
    pub(crate) fn new(root: &Path) -> Watcher {
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
    #[cfg(test)]
    pub(crate) fn is_inotify(&self) -> bool {
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
    pub(crate) fn follow(&mut self, scan: &Scan) {
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
    pub(crate) fn wait(&mut self, timeout: Duration) -> bool {
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
    use crate::replication::backups::scan;

    #[test]
    fn a_rename_into_a_client_directory_wakes_the_watcher_within_the_debounce() {
        let root = std::env::temp_dir().join(format!("replgate-watch-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
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
        let found = scan(&root).unwrap().found;
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].name.as_str(), "c/x");
        // A new client directory is an event on the root; its files after follow().
        std::fs::create_dir_all(root.join("d")).unwrap();
        assert!(w.wait(Duration::from_secs(2)));
        w.follow(&scan(&root).unwrap());
        std::fs::write(root.join("d/y"), b"1").unwrap();
        assert!(w.wait(Duration::from_secs(2)));
        std::fs::remove_dir_all(&root).unwrap();
    }
}
