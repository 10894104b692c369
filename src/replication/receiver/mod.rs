//! Target side of a transfer session. The source and its storage come from the
//! certificate's systems row ([`identify`]), never from the request; every name is
//! checked by `names` before a path is built, and every path is
//! `<storage path>/<source uuid>/<client>/<file>`, so nothing outside the source's
//! directory is written. A file streams into a dot-named partial copy (made durable at
//! checkpoints, recorded in the database, so a transfer resumes after a crash of either
//! side), its SHA-256 is recomputed, and only a match is committed: fsync, a database row
//! saying "verified", rename, directory fsync, then the received row (`commit`). Quota and
//! free space are checked when a file is offered, before any byte of it moves (`offer`,
//! `ledger`).
//!
//! The session (`session`'s loop over `offer`, `current` and `commit`, which share
//! `state`) is plain code over a `Read`/`Write` pair: the open file's bytes go to a
//! [`FileSink`] and verified groups to a [`Committer`], which the daemon runs on threads of
//! their own (`ingest`), and files are touched only through `fsx`. `repair` runs at start.

mod assembly;
mod commit;
mod current;
mod holdings;
mod ledger;
mod lists;
mod offer;
mod piece;
mod repair;
mod session;
mod sink;
mod state;

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use ring::digest::{Context as Sha256, SHA256};

pub use commit::{channel as commit_channel, commit, Committer};
pub use holdings::{Holdings, Scope};
pub use ledger::{quota_usage, Ledger, Reservation, Space, SPACE_MARGIN, STALL};
pub use piece::{object_error, upload_of, Piece, Upload};
pub use repair::{expire_partials, repair, sweep_uploads, Repair};
pub use session::serve;
pub use sink::{FileSink, Sealed};
pub use state::{CommitQueue, Committed, ToCommit};

use super::live::Live;
use super::names::{check_component, BackupName};
use super::stream::StreamError;
use crate::config::{Storage, StorageKind};
use crate::fsx;
use crate::model::UnixTime;
use crate::store::{Store, StoreError};
use crate::wire::protocol::is_system_uuid;
use crate::wire::transfer::{Code, Features};

/// Suffix of partial copies (after a leading `.`), so a sweep recognizes them.
pub const PARTIAL_SUFFIX: &str = ".replgate-part";
/// Most damaged copies asked for again in one session greeting.
pub const MAX_WANTS: usize = 1_000;
/// Most offers a source may have outstanding (offered, not yet started or skipped).
pub const MAX_OUTSTANDING: usize = 256;

/// Why the target turns a file or a session away, as the source is told: a code it acts
/// on (`queue::attempt_for`) and a message for its admin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub code: Code,
    pub message: String,
}

impl Refusal {
    pub fn new(code: Code, message: impl Into<String>) -> Refusal {
        Refusal {
            code,
            message: message.into(),
        }
    }

    /// The target's database failed: the source tries again later.
    pub fn database<E: fmt::Display>(e: E) -> Refusal {
        Refusal::new(Code::Unavailable, format!("target database: {e}"))
    }
}

/// A failure of the target's storage as the source is told it: what failed, on which
/// storage, and the kind of error, never a path of the target (the target's log line has
/// the whole error). A full disk or quota is `NoSpace`, which the source retries by itself
/// once there is room; a bucket that cannot be reached now (`NetworkDown`, see
/// [`object_error`]) is `Unavailable`, which it retries without counting an attempt, as
/// for a target that is down; anything else is `Storage`.
pub(crate) fn storage_failure(storage_id: u64, what: &str, e: &io::Error) -> Refusal {
    let code = match e.kind() {
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => Code::NoSpace,
        io::ErrorKind::NetworkDown => Code::Unavailable,
        _ => Code::Storage,
    };
    Refusal::new(
        code,
        format!("{what} on storage {storage_id}: {}", plain(e)),
    )
}

/// An I/O error without the paths its text may carry: the system's description of its
/// code, our own words for our own errors (`io::Error::other`, which name no path), or
/// else its kind.
fn plain(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(code) => io::Error::from_raw_os_error(code).to_string(),
        None if matches!(e.kind(), io::ErrorKind::Other | io::ErrorKind::NetworkDown) => {
            e.to_string()
        }
        None => e.kind().to_string(),
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Refusal {}

/// A paired source as its certificate's systems row describes it.
#[derive(Clone, Debug)]
pub struct Source {
    pub system_id: u64,
    pub uuid: String,
    pub storage: Storage,
    pub quota_mb: Option<u64>,
    /// Its weight in the sharing of receiving sessions (`share`, 1 unless set).
    pub share: u32,
}

/// Finds the source a tunnel client certificate belongs to: the issued certificate's
/// systems row, which must still name this serial, be a replication source and have a
/// storage that exists.
pub fn identify(store: &Store, storages: &[Storage], serial: &str) -> Result<Source, Refusal> {
    let internal = Refusal::database::<StoreError>;
    let cert = store.cert(serial).map_err(internal)?.ok_or_else(|| {
        Refusal::new(
            Code::NotPaired,
            "this certificate was not issued to a source",
        )
    })?;
    // The system's current certificate, or its predecessor still in a renewal's grace
    // (a source that has not switched yet keeps sending with it).
    let in_grace = cert.is_live() && store.grace_until(serial).map_err(internal)?.is_some();
    let row = store
        .system(cert.system_id)
        .map_err(internal)?
        .filter(|r| r.cert_serial.as_deref() == Some(serial) || in_grace)
        .filter(|r| r.role.is_source())
        .ok_or_else(|| {
            Refusal::new(
                Code::NotPaired,
                "this certificate belongs to no paired source",
            )
        })?;
    // The uuid its copies are kept under: its own, or the one of the appliance it replaced.
    let uuid = row.copies_uuid().unwrap_or_default().to_string();
    // Its directory is named by it: only a UUID is kept apart from every other name a
    // storage holds (a row from before filings checked it is refused here).
    if !is_system_uuid(&uuid) {
        return Err(Refusal::new(
            Code::NotPaired,
            format!(
                "system {}'s system_uuid is not a UUID; unpair it and pair it again",
                row.id
            ),
        ));
    }
    check_component(&uuid)
        .map_err(|e| Refusal::new(Code::NotPaired, format!("source uuid: {e}")))?;
    let storage = row
        .storage_id
        .and_then(|id| storages.iter().find(|s| s.id == id))
        .cloned()
        .ok_or_else(|| {
            Refusal::new(Code::NotPaired, format!("system {} has no storage", row.id))
        })?;
    Ok(Source {
        system_id: row.id,
        uuid,
        storage,
        quota_mb: row.quota_mb,
        share: row.share(),
    })
}

/// `<storage>/<uuid>/<client>`.
pub fn client_dir(source: &Source, name: &BackupName) -> PathBuf {
    source.storage.path.join(&source.uuid).join(name.client())
}

pub fn partial_path(dir: &Path, name: &BackupName) -> PathBuf {
    dir.join(format!(".{}{PARTIAL_SUFFIX}", name.file()))
}

/// Aborts upload `upload_id` of `name` into `source`'s bucket.
fn abort_upload(
    source: &Source,
    name: &BackupName,
    upload_id: &str,
) -> Result<(), crate::objstore::ObjStoreError> {
    let StorageKind::S3(s3) = &source.storage.kind else {
        return Ok(());
    };
    let Some(bucket) = crate::objstore::for_storage(&source.storage)? else {
        return Ok(());
    };
    let key = crate::objstore::backup_key(s3, &source.uuid, name.as_str())?;
    bucket.abort_multipart(&key, upload_id)
}

/// A storage's `(total, free)` bytes as the space check counts them: its file system's
/// for a `dir` storage; for an `s3` storage (a bucket has no free-space figure) its
/// `capacity_mb`, less what the copies on it hold, received and partial, of every source.
pub(crate) fn space_of(store: &Store, storage: &Storage) -> io::Result<(u64, u64)> {
    match &storage.kind {
        StorageKind::Dir => fsx::disk_space(&storage.path),
        StorageKind::S3(s3) => {
            let total = s3.capacity_mb.saturating_mul(1024 * 1024);
            let used = store
                .bytes_on_storage(storage.id)
                .map_err(|e| io::Error::other(format!("target database: {e}")))?;
            Ok((total, total.saturating_sub(used)))
        }
    }
}

/// Bytes between durable checkpoints of a file of `size` bytes: a 128th of it, at least
/// 1 MiB, at most 16 MiB. A crash loses about this much of the transfer (plus what was in
/// flight and what one checkpoint takes); the source's `bytes_sent` reservations use the
/// same step, so a resume after a crash sends at most a few percent more than the file.
pub fn chunk_for(size: u64) -> u64 {
    (size / 128).clamp(1024 * 1024, 16 * 1024 * 1024)
}

/// How far the source may send past the last offset of a file of `size` bytes that the
/// target confirmed durable (`Frame::Durable`): 5 % of it plus one chunk, so however far
/// the target's disk falls behind, a crash of the target costs at most that much again
/// (SPEC 11's resume bound). At least one chunk, more than a frame: there is always room
/// once the target confirms what it holds, and files up to a chunk never wait.
pub fn window_for(size: u64) -> u64 {
    size / 20 + chunk_for(size)
}

/// The most a deduplicated transfer lists past what the target confirmed durable.
pub const LIST_WINDOW: u64 = 64 * 1024 * 1024;

/// How far past the confirmed durable offset a source may list the chunks of a file of
/// `size` bytes (`chunks` feature): its window ([`window_for`]), at most [`LIST_WINDOW`].
/// The target holds what is listed and not yet in place, so this bounds its state.
pub fn list_window(size: u64) -> u64 {
    window_for(size).min(LIST_WINDOW)
}

/// What the receiver needs besides the streams.
pub struct Context<'a> {
    pub store: &'a Store,
    pub live: &'a Live,
    pub ledger: &'a Ledger,
    /// The session agreed chunk lists (`chunks`), with the copies it may borrow from; None:
    /// files come whole.
    pub dedup: Option<Scope>,
    /// The target's session slots: a session takes one at its first offer (waiting for
    /// it up to `slots::QUEUE_WAIT`) and asks it at each file whether to end so a waiting
    /// source gets a turn (None: no sharing).
    pub slots: Option<&'a crate::replication::slots::Slots>,
    /// The peer's address, for log lines.
    pub peer: String,
    pub now: fn() -> UnixTime,
    /// What the session agreed to use (`Replgate-Features`): a frame of another feature
    /// is a protocol error.
    pub features: Features,
}

/// What a session did.
#[derive(Debug, Default)]
pub struct Summary {
    pub committed: u64,
    pub failed: u64,
    pub bytes: u64,
    /// Why the session ended early, if it did.
    pub error: Option<ReceiveError>,
}

/// Why a receiving session ended before the source finished it.
#[derive(Debug)]
pub enum ReceiveError {
    /// The target ended it and told the source why (`Fatal`): a protocol error, an
    /// offline storage, a file writer that would not start.
    Fatal(Refusal),
    /// The source closed the stream between frames without `Finish`.
    Closed,
    /// The stream broke: a read failed, or it ended inside a frame.
    Stream(StreamError),
    /// The daemon could not start what the session runs on (`what`), and could not say so.
    Start {
        what: &'static str,
        cause: std::io::Error,
    },
}

impl fmt::Display for ReceiveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReceiveError::Fatal(r) => f.write_str(&r.message),
            ReceiveError::Closed => f.write_str("the source closed the stream before finishing"),
            ReceiveError::Stream(e) => write!(f, "{e}"),
            ReceiveError::Start { what, cause } => write!(f, "cannot start {what}: {cause}"),
        }
    }
}

impl std::error::Error for ReceiveError {}

fn digest_of(h: &Sha256) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(h.clone().finish().as_ref());
    out
}

/// The SHA-256 state over the first `len` bytes of the partial at `path`, if it holds them.
fn prefix_hash(path: &Path, len: u64) -> Option<Sha256> {
    let mut f = fsx::open_read(path).ok()?;
    if f.stat().len < len {
        return None;
    }
    let mut h = Sha256::new(&SHA256);
    let mut buf = vec![0u8; 256 * 1024];
    fsx::read_prefix(&mut f, len, &mut buf, |b| h.update(b)).ok()?;
    Some(h)
}

/// Removes a partial copy and its row (a stale version, a failed or abandoned file): the
/// file, or the upload the row names (aborted; one the store cannot abort now is left to
/// the orphan sweep).
fn drop_partial(store: &Store, source: &Source, name: &BackupName) {
    let uuid = source.uuid.as_str();
    let row = store.partial(uuid, name.as_str()).ok().flatten();
    match row.as_ref().and_then(upload_of) {
        Some(checkpoint) => {
            if let Err(e) = abort_upload(source, name, &checkpoint.upload_id) {
                log::warn!("replication: abort the upload of {name}: {e}");
            }
        }
        None => {
            let dir = client_dir(source, name);
            if let Err(e) = fsx::remove_file_durable(&partial_path(&dir, name)) {
                log::warn!("replication: remove partial copy of {name}: {e}");
            }
        }
    }
    let forgotten = store.write(|tx| {
        tx.delete_partial(uuid, name.as_str())?;
        crate::replication::index::drop_partial(tx, uuid, name.as_str())
    });
    if let Err(e) = forgotten {
        log::warn!("replication: forget partial copy of {name}: {e}");
    }
}

/// A target's store and one source with its storage, in a scratch directory of their own,
/// for the receiver's unit tests and the sessions' (`ingest`).
#[cfg(test)]
pub(crate) struct Scratch {
    pub dir: PathBuf,
    pub store: Store,
    pub source: Source,
}

#[cfg(test)]
impl Scratch {
    pub(crate) fn new(name: &str) -> Scratch {
        let dir =
            std::env::temp_dir().join(format!("replgate-receiver-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("storage")).unwrap();
        Scratch {
            store: Store::open(&dir.join("target.redb")).unwrap(),
            source: Source {
                system_id: 2,
                uuid: "11111111-2222-4333-8444-555555555555".into(),
                storage: Storage {
                    id: 1,
                    name: "s".into(),
                    path: dir.join("storage"),
                    usage: crate::config::StorageUsage::Backup,
                    kind: crate::config::StorageKind::Dir,
                },
                quota_mb: None,
                share: 1,
            },
            dir,
        }
    }

    /// `<storage>/<uuid>/<client>`, created.
    pub(crate) fn client_dir(&self, client: &str) -> PathBuf {
        let d = self
            .source
            .storage
            .path
            .join(&self.source.uuid)
            .join(client);
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}

#[cfg(test)]
impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod space_tests {
    use super::*;
    use crate::config::S3Storage;
    use crate::store::{PartialRecord, ReceivedRecord};

    const MIB: u64 = 1024 * 1024;

    /// A bucket's free space is its `capacity_mb` less what every source's copies on it
    /// hold, received and partial; copies on another storage do not count.
    #[test]
    fn a_buckets_space_is_its_capacity_less_the_copies_on_it() {
        let s = Scratch::new("space-s3");
        let bucket = Storage {
            id: 7,
            name: "bucket".into(),
            path: s.dir.join("s3/7"),
            usage: crate::config::StorageUsage::Backup,
            kind: StorageKind::S3(Box::new(S3Storage {
                endpoint: "http://127.0.0.1:9".into(),
                bucket: "b".into(),
                prefix: String::new(),
                region: "us-east-1".into(),
                credentials_file: s.dir.join("none.toml"),
                path_style: true,
                ca_file: None,
                capacity_mb: 10,
            })),
        };
        assert_eq!(space_of(&s.store, &bucket).unwrap(), (10 * MIB, 10 * MIB));
        let received = |backup: &str, storage_id: u64, size: u64| ReceivedRecord {
            backup: backup.into(),
            storage_id,
            size,
            sha256: String::new(),
            version: 1,
            received: 1,
            verified: None,
            damaged: None,
            bytes_received: None,
            pinned: false,
        };
        let partial = PartialRecord {
            backup: "c/p".into(),
            storage_id: 7,
            size: 4 * MIB,
            version: 1,
            offset: MIB,
            started: 1,
            updated: 1,
            verified_sha256: None,
            upload: Some("00".into()),
        };
        s.store
            .write(|tx| {
                tx.put_received("aaaa", &received("c/a", 7, 3 * MIB))?;
                tx.put_received("bbbb", &received("c/b", 7, 2 * MIB))?;
                tx.put_received("bbbb", &received("c/elsewhere", 1, 5 * MIB))?;
                tx.put_partial("bbbb", &partial)
            })
            .unwrap();
        assert_eq!(space_of(&s.store, &bucket).unwrap(), (10 * MIB, 4 * MIB));
        // Past its capacity: no space, never an underflow.
        s.store
            .write(|tx| tx.put_received("aaaa", &received("c/big", 7, 20 * MIB)))
            .unwrap();
        assert_eq!(space_of(&s.store, &bucket).unwrap(), (10 * MIB, 0));
    }
}
