//! Verify on the target (`POST /api/replication/verify?sid=N`): re-read every copy a
//! source delivered, recompute its SHA-256 and compare it with the one recorded at
//! commit. A copy that differs or is missing is marked damaged; the source's next
//! transfer session learns of it (a `Want` frame) and sends it again. Verifying reads
//! gigabytes, so it runs on its own job thread (`jobs::verify`), one source at a time, and
//! stops at shutdown; the API only queues the request ([`Verifier`]) and reports progress.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Mutex;

use ring::digest::{Context as Sha256, SHA256};

use super::names::BackupName;
use crate::fsx;
use crate::model::UnixTime;
use crate::store::{Store, StoreError};
use crate::sync::lock;

/// Where a source's verify stands.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerifyStatus {
    pub running: bool,
    pub started: UnixTime,
    pub finished: Option<UnixTime>,
    /// Copies to check, and checked so far.
    pub total: u64,
    pub checked: u64,
    pub damaged: u64,
    pub missing: u64,
}

/// One queued verify: a source's copies on one storage.
#[derive(Debug)]
pub struct VerifyJob {
    pub system_id: u64,
    uuid: String,
    storage_id: u64,
    storage_path: PathBuf,
}

/// The queue of verify requests and their status, shared with the API.
#[derive(Default)]
pub struct Verifier {
    tx: Mutex<Option<Sender<VerifyJob>>>,
    status: Mutex<HashMap<u64, VerifyStatus>>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier").finish_non_exhaustive()
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum VerifyError {
    /// A verify of this source is queued or running.
    Running,
    /// The verify job is not running (shutting down).
    Stopped,
}

impl std::fmt::Display for VerifyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VerifyError::Running => f.write_str("a verify of this source is already running"),
            VerifyError::Stopped => f.write_str("the verify job is not running"),
        }
    }
}

impl std::error::Error for VerifyError {}

impl Verifier {
    /// Queues a verify of what the source with `uuid` delivered to the storage.
    pub fn request(
        &self,
        system_id: u64,
        uuid: &str,
        storage_id: u64,
        storage_path: PathBuf,
        copies: u64,
        now: UnixTime,
    ) -> Result<VerifyStatus, VerifyError> {
        let mut status = lock(&self.status);
        if status.get(&system_id).is_some_and(|s| s.running) {
            return Err(VerifyError::Running);
        }
        let tx = lock(&self.tx);
        let tx = tx.as_ref().ok_or(VerifyError::Stopped)?;
        let s = VerifyStatus {
            running: true,
            started: now,
            total: copies,
            ..VerifyStatus::default()
        };
        tx.send(VerifyJob {
            system_id,
            uuid: uuid.to_string(),
            storage_id,
            storage_path,
        })
        .map_err(|_| VerifyError::Stopped)?;
        status.insert(system_id, s.clone());
        Ok(s)
    }

    pub fn status(&self, system_id: u64) -> Option<VerifyStatus> {
        lock(&self.status).get(&system_id).cloned()
    }

    fn update(&self, system_id: u64, f: impl FnOnce(&mut VerifyStatus)) {
        if let Some(s) = lock(&self.status).get_mut(&system_id) {
            f(s);
        }
    }

    /// Opens the queue to requests; the verify job takes them from the receiver.
    pub fn open(&self) -> Receiver<VerifyJob> {
        let (tx, rx) = mpsc::channel();
        *lock(&self.tx) = Some(tx);
        rx
    }

    /// Closes the queue: a request now is refused as [`VerifyError::Stopped`].
    pub fn close(&self) {
        *lock(&self.tx) = None;
    }

    /// The verify of `system_id` ended (finished, stopped or failed) at `now`; its status.
    pub fn finished(&self, system_id: u64, now: UnixTime) -> VerifyStatus {
        self.update(system_id, |s| {
            s.running = false;
            s.finished = Some(now);
        });
        self.status(system_id).unwrap_or_default()
    }
}

/// The SHA-256 of a regular file (never through a symlink), hex.
pub fn file_sha256(path: &std::path::Path) -> std::io::Result<(String, u64)> {
    let (mut f, meta) = fsx::open_regular_nofollow(path)?;
    let mut h = Sha256::new(&SHA256);
    let mut buf = vec![0u8; 256 * 1024];
    fsx::read_prefix(&mut f, meta.len(), &mut buf, |b| h.update(b))?;
    Ok((crate::wire::hex::encode(h.finish().as_ref()), meta.len()))
}

/// Verifies the copies of `job` one by one, recording each against its row; returns early
/// (Ok) once `stop` is set.
pub fn run(
    verifier: &Verifier,
    store: &Store,
    job: &VerifyJob,
    stop: &AtomicBool,
    now: fn() -> UnixTime,
) -> Result<(), StoreError> {
    let rows = store.received(&job.uuid)?;
    for row in rows.into_iter().filter(|r| r.storage_id == job.storage_id) {
        if stop.load(Ordering::SeqCst) {
            return Ok(());
        }
        let Ok(name) = BackupName::parse(&row.backup) else {
            continue;
        };
        let path = job
            .storage_path
            .join(&job.uuid)
            .join(name.client())
            .join(name.file());
        let (damage, missing) = match file_sha256(&path) {
            Ok((sha, len)) if sha == row.sha256 && len == row.size => (None, false),
            Ok((sha, len)) => (
                Some(format!(
                    "the copy differs from what was received: {len} bytes with SHA-256 {sha}, expected {} bytes with {}",
                    row.size, row.sha256
                )),
                false,
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                (Some("the copy is missing".to_string()), true)
            }
            Err(e) => (Some(format!("the copy cannot be read: {e}")), false),
        };
        let now = now();
        // Record against the row as it is now: a transfer that replaced the copy while
        // it was read wins.
        store.write(|tx| {
            if let Some(mut current) = tx.received_one(&job.uuid, &row.backup)? {
                if current.received == row.received && current.sha256 == row.sha256 {
                    match &damage {
                        None => {
                            current.verified = Some(now);
                            current.damaged = None;
                        }
                        Some(m) => current.damaged = Some(m.clone()),
                    }
                    tx.put_received(&job.uuid, &current)?;
                }
            }
            Ok::<_, StoreError>(())
        })?;
        if let Some(m) = &damage {
            log::warn!("verify of system {}: {}: {m}", job.system_id, row.backup);
        }
        verifier.update(job.system_id, |s| {
            s.checked += 1;
            if damage.is_some() {
                s.damaged += 1;
            }
            if missing {
                s.missing += 1;
            }
        });
    }
    Ok(())
}
