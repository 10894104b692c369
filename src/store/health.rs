//! Whether the database takes writes now, and the way back after a failed one.
//!
//! redb answers every call after a failed write (a full disk, an I/O error) with "previous
//! I/O error" until its `Database` is opened again. So the store notes such a failure
//! ([`note`], on the thread that met it), reopens the file at once (`Store::reopen`: reads
//! go on, from the last commit; a failed commit never reached redb's header, so nothing
//! that was acknowledged is lost) and refuses writes with [`Degraded`] until it is worth
//! trying again: [`RETRY_AFTER`] has passed and, after a full disk, at least
//! [`RESUME_FREE_BYTES`] are free on the database's filesystem. No restart needed.

use std::cell::RefCell;
use std::fmt;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::model::UnixTime;
use crate::sync::lock;

/// Writes resume after a full disk once this much is free again: enough for redb to grow
/// its file a few times and for the spool and key files beside it.
pub const RESUME_FREE_BYTES: u64 = 8 * 1024 * 1024;
/// Writes are refused for at least this long after a failure, so a disk that keeps
/// failing is not hammered by every request.
pub const RETRY_AFTER: Duration = Duration::from_secs(2);

/// Why the database refuses writes now: the error every write returns meanwhile
/// (`StoreError::Unavailable`), and what `GET /api/health` reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Degraded {
    /// The database's disk is full (`ENOSPC`, `EDQUOT`): writes resume once space is freed.
    pub full: bool,
    /// What failed, as the operating system or redb said it.
    pub detail: String,
    /// When the database first failed (this time).
    pub since: UnixTime,
}

impl fmt::Display for Degraded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.full {
            write!(
                f,
                "the data directory's disk is full ({}): changes are refused until at least {} MiB \
                 are free again; reads still work",
                self.detail,
                RESUME_FREE_BYTES >> 20
            )
        } else {
            write!(
                f,
                "the database could not write ({}): changes are refused for a moment and tried \
                 again; reads still work",
                self.detail
            )
        }
    }
}

impl std::error::Error for Degraded {}

/// One write failure as [`note`] saw it.
#[derive(Clone, Debug)]
pub(super) struct Failure {
    pub full: bool,
    pub detail: String,
}

thread_local! {
    /// The I/O failure this thread's last store call met, if any: a write's closure may
    /// turn a store error into its own type (or drop it), but redb stays failed, so
    /// `Store::write` looks here rather than at the error it gets back.
    static NOTED: RefCell<Option<Failure>> = const { RefCell::new(None) };
}

/// Notes `e` if it means redb's file failed (every redb error passes here on its way into
/// a `StoreError`).
pub(super) fn note(e: &redb::Error) {
    let failure = match e {
        redb::Error::Io(io) => Failure {
            full: is_full(io),
            detail: io.to_string(),
        },
        redb::Error::PreviousIo => Failure {
            full: false,
            detail: "an earlier write failed".into(),
        },
        _ => return,
    };
    NOTED.with(|n| *n.borrow_mut() = Some(failure));
}

/// Takes (and clears) what [`note`] saw on this thread.
pub(super) fn take_noted() -> Option<Failure> {
    NOTED.with(|n| n.borrow_mut().take())
}

fn is_full(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    )
}

/// The store's side of it: the state, and when writes may be tried again.
#[derive(Debug, Default)]
pub(super) struct Health {
    /// Set while degraded: the one load every write pays when all is well.
    degraded: AtomicBool,
    state: Mutex<State>,
    /// Times the database entered the degraded state since start.
    failures: AtomicU64,
}

#[derive(Debug, Default)]
struct State {
    current: Option<Degraded>,
    /// The last failure, for [`RETRY_AFTER`].
    failed_at: Option<Instant>,
    /// The failed `Database` is still the one in place (its reopen has not succeeded yet).
    reopen: bool,
}

/// What [`Health::due`] says a degraded store should do now.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Due {
    /// Nothing: healthy.
    Healthy,
    /// Still degraded; not yet.
    Wait(Degraded),
    /// Try again: reopen first if `reopen`, then writes resume ([`Health::clear`] with
    /// `failed_at`, so a failure meanwhile is not forgotten).
    Resume { reopen: bool, failed_at: Instant },
}

impl Health {
    pub(super) fn is_degraded(&self) -> bool {
        self.degraded.load(Ordering::Acquire)
    }

    pub(super) fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    pub(super) fn current(&self) -> Option<Degraded> {
        lock(&self.state).current.clone()
    }

    /// Records a failure; true when it starts a degraded state (not one already going on).
    pub(super) fn fail(&self, failure: &Failure, now: UnixTime) -> bool {
        let mut st = lock(&self.state);
        st.failed_at = Some(Instant::now());
        st.reopen = true;
        let first = st.current.is_none();
        match &mut st.current {
            Some(d) => {
                // A full disk stays the reason until it is over: a later "previous I/O
                // error" is its echo.
                if failure.full || !d.full {
                    d.full = failure.full;
                    d.detail.clone_from(&failure.detail);
                }
            }
            None => {
                st.current = Some(Degraded {
                    full: failure.full,
                    detail: failure.detail.clone(),
                    since: now,
                });
                self.failures.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.degraded.store(true, Ordering::Release);
        first
    }

    /// The failed database was replaced by a fresh one.
    pub(super) fn reopened(&self) {
        lock(&self.state).reopen = false;
    }

    /// What to do now, given the free bytes on the database's filesystem (asked only after
    /// a full disk, and only once [`RETRY_AFTER`] has passed).
    pub(super) fn due(&self, free_bytes: impl FnOnce() -> io::Result<u64>) -> Due {
        let st = lock(&self.state);
        let Some(current) = st.current.clone() else {
            return Due::Healthy;
        };
        if st.failed_at.is_some_and(|t| t.elapsed() < RETRY_AFTER) {
            return Due::Wait(current);
        }
        let (reopen, failed_at) = (st.reopen, st.failed_at.unwrap_or_else(Instant::now));
        drop(st);
        if current.full && !free_bytes().is_ok_and(|free| free >= RESUME_FREE_BYTES) {
            return Due::Wait(current);
        }
        Due::Resume { reopen, failed_at }
    }

    /// Writes resume, unless the database failed again since `failed_at`; true if they do.
    pub(super) fn clear(&self, failed_at: Instant) -> bool {
        let mut st = lock(&self.state);
        if st.failed_at.is_some_and(|t| t != failed_at) || st.reopen {
            return false;
        }
        st.current = None;
        self.degraded.store(false, Ordering::Release);
        true
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::CString;
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;

    use super::super::{test_audit, Store, StoreError};
    use super::*;

    /// Runs `f` on a thread of its own, in a mount namespace of its own (threads it starts
    /// share it), with a tmpfs of `size` mounted on a fresh directory: a disk that fills
    /// up, which the rest of the machine never sees. Needs root (the tests run as root).
    fn on_small_tmpfs(name: &str, size: &str, f: impl FnOnce(&Path) + Send + 'static) {
        let dir = std::env::temp_dir().join(format!("replgate-full-{name}-{}", std::process::id()));
        crate::fsx::ensure_private_dir(&dir).unwrap();
        let (mount_at, options) = (dir.clone(), format!("size={size}"));
        let run = std::thread::spawn(move || {
            let c = |s: &str| CString::new(s).unwrap();
            let (root, tmpfs) = (c("/"), c("tmpfs"));
            let (at, opts) = (c(mount_at.to_str().unwrap()), c(&options));
            // SAFETY: plain syscalls with NUL-terminated strings that outlive them; they
            // change this thread's mount namespace only (unshare gives it its own).
            unsafe {
                assert_eq!(libc::unshare(libc::CLONE_NEWNS), 0, "unshare -m (root?)");
                let private = libc::MS_REC | libc::MS_PRIVATE;
                let none = std::ptr::null();
                assert_eq!(
                    libc::mount(none, root.as_ptr(), none, private, none.cast()),
                    0
                );
                let data = opts.as_ptr().cast();
                assert_eq!(
                    libc::mount(tmpfs.as_ptr(), at.as_ptr(), tmpfs.as_ptr(), 0, data),
                    0,
                    "mount tmpfs: {}",
                    std::io::Error::last_os_error()
                );
            }
            f(&mount_at);
        });
        let result = run.join();
        // The namespace, and its tmpfs, ended with the thread.
        let _ = std::fs::remove_dir_all(&dir);
        if let Err(panic) = result {
            std::panic::resume_unwind(panic);
        }
    }

    /// Fills the filesystem of `dir` with one file; its path.
    fn fill(dir: &Path) -> PathBuf {
        use std::io::Write;
        let path = dir.join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        let block = vec![0x5au8; 64 * 1024];
        loop {
            match f.write(&block) {
                Ok(0) => break,
                Ok(_) => continue,
                Err(e) => {
                    assert_eq!(e.kind(), std::io::ErrorKind::StorageFull, "{e}");
                    break;
                }
            }
        }
        path
    }

    /// The failure at the heart of it: a full disk under the database. The write that
    /// meets it fails with `Unavailable` (full), and so does every write after it without
    /// touching the disk; reads go on (also from threads that were reading all along),
    /// and nothing acknowledged is lost; once space is freed, writes resume by
    /// themselves, on a reopened database, with no restart.
    #[test]
    fn a_full_disk_refuses_writes_keeps_reads_and_recovers_once_space_is_freed() {
        on_small_tmpfs("store", "16m", |dir| {
            let store = Store::open(&dir.join("replgate.redb")).unwrap();
            let mut acknowledged = 0u64;
            for _ in 0..50 {
                store.write(|tx| tx.audit(&test_audit("before"))).unwrap();
                acknowledged += 1;
            }
            let stop = Arc::new(AtomicBool::new(false));
            let (reads, read_errors) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
            let readers: Vec<_> = (0..2)
                .map(|_| {
                    let (store, stop) = (store.clone(), stop.clone());
                    let (reads, read_errors) = (reads.clone(), read_errors.clone());
                    std::thread::spawn(move || {
                        while !stop.load(Ordering::Relaxed) {
                            match store.audit(0, 20) {
                                Ok(rows) => assert_eq!(rows.len(), 20),
                                Err(e) => {
                                    eprintln!("read failed: {e:?}");
                                    read_errors.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                            reads.fetch_add(1, Ordering::Relaxed);
                        }
                    })
                })
                .collect();
            let filler = fill(dir);
            // Rows that grow the file until the disk refuses one.
            let detail = "x".repeat(2_000);
            let refused = (0..100_000)
                .find_map(|_| {
                    let mut row = test_audit("while full");
                    row.detail.clone_from(&detail);
                    match store.write(|tx| tx.audit(&row)) {
                        Ok(_) => {
                            acknowledged += 1;
                            None
                        }
                        Err(e) => Some(e),
                    }
                })
                .expect("the disk never filled");
            let StoreError::Unavailable(d) = &refused else {
                panic!("not Unavailable: {refused:?}");
            };
            assert!(d.full, "{d:?}");
            assert!(d.to_string().contains("full"), "{d}");
            assert_eq!(store.degraded().as_ref(), Some(d));
            assert_eq!(store.failures(), 1);
            // Refused without trying, however long it lasts.
            for _ in 0..3 {
                let e = store
                    .write(|tx| tx.audit(&test_audit("refused")))
                    .unwrap_err();
                assert!(matches!(&e, StoreError::Unavailable(d) if d.full), "{e:?}");
            }
            std::thread::sleep(RETRY_AFTER + Duration::from_millis(200));
            assert!(store.degraded().is_some_and(|d| d.full), "still full");
            // Reads, from here and from the readers that ran through it all.
            let rows = store.audit(0, u32::MAX as usize).unwrap();
            assert_eq!(rows.len() as u64, acknowledged);
            std::fs::remove_file(&filler).unwrap();
            // Free again: writes resume without a restart.
            assert_eq!(store.degraded(), None);
            store.write(|tx| tx.audit(&test_audit("after"))).unwrap();
            acknowledged += 1;
            stop.store(true, Ordering::Relaxed);
            for r in readers {
                r.join().unwrap();
            }
            assert!(reads.load(Ordering::Relaxed) > 10);
            assert_eq!(read_errors.load(Ordering::Relaxed), 0);
            drop(store);
            // And all of it is in the file.
            let again = Store::open(&dir.join("replgate.redb")).unwrap();
            let rows = again.audit(0, u32::MAX as usize).unwrap();
            assert_eq!(rows.len() as u64, acknowledged);
            assert_eq!(rows.last().unwrap().1.action, "after");
        });
    }

    #[test]
    fn a_failure_counts_once_and_waits_before_writes_are_tried_again() {
        let h = Health::default();
        let full = Failure {
            full: true,
            detail: "No space left on device (os error 28)".into(),
        };
        assert!(h.fail(&full, 5));
        // Its echo keeps the full disk as the reason.
        let echo = Failure {
            full: false,
            detail: "an earlier write failed".into(),
        };
        assert!(!h.fail(&echo, 6));
        assert_eq!(h.failures(), 1);
        let d = h.current().unwrap();
        assert!(
            d.full && d.since == 5 && d.detail.contains("os error 28"),
            "{d:?}"
        );
        assert!(matches!(h.due(|| Ok(u64::MAX)), Due::Wait(_)));
        lock(&h.state).failed_at = Some(Instant::now() - RETRY_AFTER);
        // Not while the disk is still full; the old handle is still in place.
        assert!(matches!(h.due(|| Ok(RESUME_FREE_BYTES - 1)), Due::Wait(_)));
        assert!(matches!(
            h.due(|| Err(io::ErrorKind::Other.into())),
            Due::Wait(_)
        ));
        let Due::Resume { reopen, failed_at } = h.due(|| Ok(RESUME_FREE_BYTES)) else {
            panic!("not due");
        };
        assert!(reopen);
        assert!(!h.clear(failed_at), "cleared before the reopen");
        h.reopened();
        assert!(h.clear(failed_at));
        assert!(!h.is_degraded() && h.current().is_none());
        assert_eq!(h.due(|| unreachable!()), Due::Healthy);
    }
}
