//! Verify on the target (`POST /api/replication/verify?sid=N`): re-read every copy a
//! source delivered, recompute its SHA-256 and compare it with the one recorded at
//! commit. A copy that differs or is missing is marked damaged; the source's next
//! transfer session learns of it (a `Want` frame) and sends it again. Verifying reads
//! gigabytes, so it runs on its own job thread (`jobs::verify`), one source at a time, and
//! stops at shutdown; the API only queues the request ([`Verifier`]) and reports progress.
//! `verify_interval` queues each source's verify on its own when it is due ([`due`]), with
//! no admin action; each verify's result is kept ([`VerifyRun`]), and one that found
//! damage is audited (the metrics and `GET /api/health` count the damaged copies).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Mutex;

use ring::digest::{Context as Sha256, SHA256};

use super::names::BackupName;
use crate::config::{S3Storage, Storage, StorageKind};
use crate::fsx;
use crate::model::UnixTime;
use crate::objstore::ObjStoreError;
use crate::store::{AuditRecord, Store, StoreError, SystemRecord, VerifyRun};
use crate::sync::lock;

/// Most damaged copies an audit row names.
const NAMES_AUDITED: usize = 10;

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
    storage: Storage,
    /// Queued by `verify_interval`, not by an admin.
    scheduled: bool,
}

/// A source's copies to verify: what the API's request and the schedule queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyTarget {
    pub system_id: u64,
    pub uuid: String,
    pub storage_id: u64,
    pub storage: Storage,
    /// Copies on that storage now (the progress' total).
    pub copies: u64,
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
    /// Queues a verify of what a source delivered to its storage; `scheduled` when
    /// `verify_interval` asks rather than an admin.
    pub fn request(
        &self,
        target: VerifyTarget,
        scheduled: bool,
        now: UnixTime,
    ) -> Result<VerifyStatus, VerifyError> {
        let mut status = lock(&self.status);
        if status.get(&target.system_id).is_some_and(|s| s.running) {
            return Err(VerifyError::Running);
        }
        let tx = lock(&self.tx);
        let tx = tx.as_ref().ok_or(VerifyError::Stopped)?;
        let s = VerifyStatus {
            running: true,
            started: now,
            total: target.copies,
            ..VerifyStatus::default()
        };
        let system_id = target.system_id;
        tx.send(VerifyJob {
            system_id,
            uuid: target.uuid,
            storage_id: target.storage_id,
            storage: target.storage,
            scheduled,
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

/// The SHA-256 of the object of `backup` in an `s3` storage's bucket, hex, read back
/// whole (never taken from an ETag or the object's metadata); a missing object is
/// `NotFound`.
pub fn object_sha256(
    storage: &Storage,
    s3: &S3Storage,
    uuid: &str,
    backup: &str,
) -> std::io::Result<(String, u64)> {
    let read = crate::objstore::for_storage(storage).and_then(|bucket| {
        let bucket = bucket.ok_or_else(|| ObjStoreError::Config("not a bucket".into()))?;
        bucket.sha256_of(&crate::objstore::backup_key(s3, uuid, backup)?)
    });
    match read {
        Ok((len, sha)) => Ok((crate::wire::hex::encode(&sha), len)),
        Err(ObjStoreError::NotFound { .. }) => Err(std::io::ErrorKind::NotFound.into()),
        Err(e) => Err(std::io::Error::other(e.to_string())),
    }
}

/// The copies of `row`'s source, if it is a paired source whose storage is configured.
pub fn target_of(
    store: &Store,
    row: &SystemRecord,
    storages: &[Storage],
) -> Result<Option<VerifyTarget>, StoreError> {
    let (Some(uuid), Some(storage)) = (
        row.system_uuid.as_ref(),
        storages.iter().find(|s| Some(s.id) == row.storage_id),
    ) else {
        return Ok(None);
    };
    if !row.role.is_source() {
        return Ok(None);
    }
    let copies = store
        .received(uuid)?
        .iter()
        .filter(|r| r.storage_id == storage.id)
        .count() as u64;
    Ok(Some(VerifyTarget {
        system_id: row.id,
        uuid: uuid.clone(),
        storage_id: storage.id,
        storage: storage.clone(),
        copies,
    }))
}

/// When a source's next scheduled verify is due: `interval` seconds after its last one
/// started, or after it was paired when none ran; at once when the last one did not end
/// (a shutdown or a crash stopped it). Never when `interval` is zero.
pub fn next_due(last: Option<&VerifyRun>, paired: UnixTime, interval: u64) -> Option<UnixTime> {
    if interval == 0 {
        return None;
    }
    let every = i64::try_from(interval).unwrap_or(i64::MAX);
    Some(match last {
        Some(r) if r.finished.is_none() || r.stopped => r.started,
        Some(r) => r.started.saturating_add(every),
        None => paired.saturating_add(every),
    })
}

/// The sources whose scheduled verify is due at `now`.
pub fn due(
    store: &Store,
    storages: &[Storage],
    interval: u64,
    now: UnixTime,
) -> Result<Vec<VerifyTarget>, StoreError> {
    let runs = store.verify_runs()?;
    let mut out = Vec::new();
    for row in store.systems()? {
        let last = runs.iter().find(|(id, _)| *id == row.id).map(|(_, r)| r);
        if next_due(last, row.created, interval).is_none_or(|t| t > now) {
            continue;
        }
        if let Some(t) = target_of(store, &row, storages)? {
            out.push(t);
        }
    }
    Ok(out)
}

/// A kept [`VerifyRun`] as the API shows a status (after a restart, the last one).
pub fn status_of_run(r: &VerifyRun) -> VerifyStatus {
    VerifyStatus {
        running: false,
        started: r.started,
        finished: r.finished,
        total: r.total,
        checked: r.checked,
        damaged: r.damaged,
        missing: r.missing,
    }
}

/// What one copy's re-read found: None when it is intact, else the damage, and whether
/// the copy is missing; the bytes read.
fn check_copy(
    found: std::io::Result<(String, u64)>,
    size: u64,
    sha256: &str,
) -> (Option<String>, bool, u64) {
    match found {
        Ok((sha, len)) if sha == sha256 && len == size => (None, false, len),
        Ok((sha, len)) => (
            Some(format!(
                "the copy differs from what was received: {len} bytes with SHA-256 {sha}, \
                 expected {size} bytes with {sha256}"
            )),
            false,
            len,
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            (Some("the copy is missing".to_string()), true, 0)
        }
        Err(e) => (Some(format!("the copy cannot be read: {e}")), false, 0),
    }
}

/// Runs a piece of work on each of the caller's worker threads at once and returns when
/// every one returned (`jobs::verify` uses one thread per core; a test, the caller's own
/// thread). The work takes the next copy until none is left.
pub type Workers<'a> = &'a dyn Fn(&(dyn Fn() + Sync));

/// Verifies the copies of `job`, as many at a time as `workers` runs threads (a copy's
/// SHA-256 is one sequence, so the cores share the copies), recording each against its
/// row, and keeps the run's result; returns early (Ok, the run kept as stopped) once
/// `stop` is set.
pub fn run(
    verifier: &Verifier,
    store: &Store,
    job: &VerifyJob,
    (stop, workers): (&AtomicBool, Workers<'_>),
    now: fn() -> UnixTime,
) -> Result<(), StoreError> {
    let rows: Vec<_> = store
        .received(&job.uuid)?
        .into_iter()
        .filter(|r| r.storage_id == job.storage_id)
        .collect();
    let kept = VerifyRun {
        started: now(),
        total: rows.len() as u64,
        scheduled: job.scheduled,
        ..VerifyRun::default()
    };
    store.write(|tx| tx.put_verify_run(job.system_id, &kept))?;
    let tally = Mutex::new((kept, vec![false; rows.len()]));
    let result = check_rows(verifier, store, job, &rows, (stop, workers), now, &tally);
    let (mut kept, damaged) = tally.into_inner().unwrap_or_else(|p| p.into_inner());
    // In the rows' order, whichever thread found them.
    let damaged_names: Vec<String> = rows
        .iter()
        .zip(damaged)
        .filter(|(_, d)| *d)
        .map(|(row, _)| row.backup.clone())
        .collect();
    kept.stopped = !matches!(result, Ok(true));
    kept.finished = Some(now());
    store.write(|tx| {
        tx.put_verify_run(job.system_id, &kept)?;
        if kept.damaged > 0 {
            tx.audit(&damage_audit(job, &kept, &damaged_names))?;
        }
        Ok::<_, StoreError>(())
    })?;
    damaged_counter().add(kept.damaged);
    result.map(|_| ())
}

/// `replgate_verify_damaged_total`; the verify job registers it at start, at zero.
pub fn damaged_counter() -> crate::metrics::Counter {
    crate::metrics::counter(
        "replgate_verify_damaged_total",
        "Copies a verify found damaged or missing (each is fetched again from its source).",
        &[],
    )
}

/// The audit row of a verify that found damage.
fn damage_audit(job: &VerifyJob, run: &VerifyRun, names: &[String]) -> AuditRecord {
    let mut listed = names
        .iter()
        .take(NAMES_AUDITED)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > NAMES_AUDITED {
        listed.push_str(&format!(" and {} more", names.len() - NAMES_AUDITED));
    }
    AuditRecord {
        time: run.finished.unwrap_or(run.started),
        user: "-".into(),
        address: "local".into(),
        action: "verify found damage".into(),
        object: format!("system:{}", job.system_id),
        detail: format!(
            "{} of {} copies damaged ({} missing), fetched again from the source at its next \
             session: {listed}",
            run.damaged, run.total, run.missing
        ),
    }
}

/// Re-reads `rows` on `workers`' threads, each taking the next row until none is left,
/// recording each; counts into `tally` (the run kept, which rows are damaged). Whether it went
/// through them all (false: `stop` was set); the first failed write ends every worker.
fn check_rows(
    verifier: &Verifier,
    store: &Store,
    job: &VerifyJob,
    rows: &[crate::store::ReceivedRecord],
    (stop, workers): (&AtomicBool, Workers<'_>),
    now: fn() -> UnixTime,
    tally: &Mutex<(VerifyRun, Vec<bool>)>,
) -> Result<bool, StoreError> {
    let next = AtomicUsize::new(0);
    let failed = Mutex::new(None::<StoreError>);
    let stopped = AtomicBool::new(false);
    workers(&|| loop {
        if lock(&failed).is_some() {
            return;
        }
        let index = next.fetch_add(1, Ordering::SeqCst);
        let Some(row) = rows.get(index) else {
            return;
        };
        if stop.load(Ordering::SeqCst) {
            stopped.store(true, Ordering::SeqCst);
            return;
        }
        if let Err(e) = check_row(verifier, store, job, (index, row), now, tally) {
            lock(&failed).get_or_insert(e);
        }
    });
    if let Some(e) = lock(&failed).take() {
        return Err(e);
    }
    Ok(!stopped.load(Ordering::SeqCst))
}

/// Re-reads one copy and records what it found against its row and in `tally`.
fn check_row(
    verifier: &Verifier,
    store: &Store,
    job: &VerifyJob,
    (index, row): (usize, &crate::store::ReceivedRecord),
    now: fn() -> UnixTime,
    tally: &Mutex<(VerifyRun, Vec<bool>)>,
) -> Result<(), StoreError> {
    let Ok(name) = BackupName::parse(&row.backup) else {
        return Ok(());
    };
    let found = match &job.storage.kind {
        StorageKind::Dir => file_sha256(
            &job.storage
                .path
                .join(&job.uuid)
                .join(name.client())
                .join(name.file()),
        ),
        StorageKind::S3(s3) => object_sha256(&job.storage, s3, &job.uuid, &row.backup),
    };
    let (damage, missing, read) = check_copy(found, row.size, &row.sha256);
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
    let mut guard = lock(tally);
    let (kept, damaged) = &mut *guard;
    if let Some(m) = &damage {
        log::warn!("verify of system {}: {}: {m}", job.system_id, row.backup);
        if let Some(d) = damaged.get_mut(index) {
            *d = true;
        }
    }
    kept.checked += 1;
    kept.bytes = kept.bytes.saturating_add(read);
    kept.damaged += u64::from(damage.is_some());
    kept.missing += u64::from(missing);
    verifier.update(job.system_id, |s| {
        s.checked += 1;
        if damage.is_some() {
            s.damaged += 1;
        }
        if missing {
            s.missing += 1;
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replication::receiver::Scratch;
    use crate::store::ReceivedRecord;

    fn receive(s: &Scratch, file: &str, body: &[u8]) {
        std::fs::write(s.client_dir("c").join(file), body).unwrap();
        let row = ReceivedRecord {
            backup: format!("c/{file}"),
            storage_id: s.source.storage.id,
            size: body.len() as u64,
            sha256: crate::wire::hex::encode(
                ring::digest::digest(&ring::digest::SHA256, body).as_ref(),
            ),
            version: 1,
            received: 1,
            verified: None,
            damaged: None,
            bytes_received: None,
            pinned: false,
        };
        s.store
            .write(|tx| tx.put_received(&s.source.uuid, &row))
            .unwrap();
    }

    /// Two threads, as `jobs::verify` runs on two cores.
    fn two_threads(work: &(dyn Fn() + Sync)) {
        std::thread::scope(|s| {
            s.spawn(work);
            s.spawn(work);
        });
    }

    fn job(s: &Scratch) -> VerifyJob {
        VerifyJob {
            system_id: s.source.system_id,
            uuid: s.source.uuid.clone(),
            storage_id: s.source.storage.id,
            storage: s.source.storage.clone(),
            scheduled: true,
        }
    }

    #[test]
    fn a_run_marks_what_differs_keeps_its_result_and_audits_the_damage_once() {
        let s = Scratch::new("verify-run");
        receive(&s, "good", b"intact bytes");
        receive(&s, "rot", b"bytes that will rot");
        receive(&s, "gone", b"bytes that will vanish");
        std::fs::write(s.client_dir("c").join("rot"), b"bytes that will rut").unwrap();
        std::fs::remove_file(s.client_dir("c").join("gone")).unwrap();
        let verifier = Verifier::default();
        let stop = AtomicBool::new(false);
        run(&verifier, &s.store, &job(&s), (&stop, &two_threads), || {
            5_000
        })
        .unwrap();

        let kept = s.store.verify_run(s.source.system_id).unwrap().unwrap();
        assert_eq!(
            (kept.total, kept.checked, kept.damaged, kept.missing),
            (3, 3, 2, 1)
        );
        assert!(kept.scheduled && !kept.stopped && kept.finished == Some(5_000));
        assert_eq!(kept.bytes, 12 + 19, "the bytes read");
        let damaged = s.store.damaged(Some(&s.source.uuid), 10).unwrap();
        let names: Vec<&str> = damaged.iter().map(|(_, b, _)| b.as_str()).collect();
        assert_eq!(names, ["c/gone", "c/rot"]);
        let audit = s.store.audit(0, 100).unwrap();
        let rows: Vec<_> = audit
            .iter()
            .filter(|(_, a)| a.action == "verify found damage")
            .collect();
        assert_eq!(rows.len(), 1, "{audit:?}");
        assert!(rows[0]
            .1
            .detail
            .starts_with("2 of 3 copies damaged (1 missing)"));
        assert_eq!(
            next_due(Some(&kept), 1, 60),
            Some(5_060),
            "an ended run waits an interval"
        );

        // A run stopped at once is kept as stopped: the schedule takes it up again at once.
        stop.store(true, Ordering::SeqCst);
        run(&verifier, &s.store, &job(&s), (&stop, &two_threads), || {
            6_000
        })
        .unwrap();
        let kept = s.store.verify_run(s.source.system_id).unwrap().unwrap();
        assert!(kept.stopped && kept.checked == 0, "{kept:?}");
        assert_eq!(next_due(Some(&kept), 1, 60), Some(6_000));
    }

    #[test]
    fn a_verify_is_due_an_interval_after_the_last_start_or_at_once_after_one_that_stopped() {
        let day = 86_400;
        assert_eq!(next_due(None, 1_000, day), Some(1_000 + 86_400));
        assert_eq!(next_due(None, 1_000, 0), None, "0 turns the schedule off");
        let ended = VerifyRun {
            started: 5_000,
            finished: Some(9_000),
            ..VerifyRun::default()
        };
        assert_eq!(next_due(Some(&ended), 1_000, day), Some(5_000 + 86_400));
        let stopped = VerifyRun {
            stopped: true,
            ..ended.clone()
        };
        assert_eq!(next_due(Some(&stopped), 1_000, day), Some(5_000));
        let cut = VerifyRun {
            finished: None,
            ..ended
        };
        assert_eq!(next_due(Some(&cut), 1_000, day), Some(5_000));
        assert_eq!(next_due(None, i64::MAX - 1, u64::MAX), Some(i64::MAX));
    }
}
