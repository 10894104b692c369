//! Target side of a transfer session. The source and its storage come from the
//! certificate's systems row ([`identify`]), never from the request; every name is
//! checked by `names` before a path is built, and every path is
//! `<storage path>/<source uuid>/<client>/<file>`, so nothing outside the source's
//! directory is written. A file streams into a dot-named partial copy (made durable at
//! checkpoints, recorded in the database, so a transfer resumes after a crash of either
//! side), its SHA-256 is recomputed, and only a match is committed: fsync, a database row
//! saying "verified", rename, directory fsync, then the received row. Verified files are
//! committed in groups (one directory fsync per directory and two database commits per
//! group), which keeps a thousand small files from costing three fsyncs each in series.
//! Quota and free space are checked when a file is offered, before any byte of it moves.

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant};

use ring::digest::{Context as Sha256, SHA256};

use super::live::{Event, Incoming, Live};
use super::names::{check_component, BackupName};
use super::sink::{Sealed, Sink};
use super::stream::{FrameReader, FrameWriter, StreamError};
use crate::config::Storage;
use crate::fsx::{self, PartialFile};
use crate::model::UnixTime;
use crate::store::{PartialRecord, ReceivedRecord, Store, StoreError};
use crate::wire::transfer::{Code, Decision, Frame, Outcome, MAX_DATA};

/// Suffix of partial copies (after a leading `.`), so a sweep recognizes them.
pub const PARTIAL_SUFFIX: &str = ".replgate-part";
/// Free space left untouched on a storage, beyond what accepted files will use.
pub const SPACE_MARGIN: u64 = 16 * 1024 * 1024;
/// Most damaged copies asked for again in one session greeting.
pub const MAX_WANTS: usize = 1_000;
/// Most offers a source may have outstanding (offered, not yet started or skipped).
pub const MAX_OUTSTANDING: usize = 256;
/// A group of verified files is committed once it holds this many files, or bytes, or
/// its oldest file waited this long.
const GROUP_FILES: usize = 64;
const GROUP_BYTES: u64 = 64 * 1024 * 1024;
const GROUP_WAIT: Duration = Duration::from_millis(50);
/// A checkpoint also happens after this long without one, while bytes arrive.
const CHECKPOINT_AFTER: Duration = Duration::from_secs(1);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn hex(d: &[u8]) -> String {
    crate::rand::hex(d)
}

/// A paired source as its certificate's systems row describes it.
#[derive(Clone, Debug)]
pub struct Source {
    pub system_id: u64,
    pub uuid: String,
    pub storage: Storage,
    pub quota_mb: Option<u64>,
}

/// Finds the source a tunnel client certificate belongs to: the issued certificate's
/// systems row, which must still name this serial, be a replication source and have a
/// storage that exists.
pub fn identify(
    store: &Store,
    storages: &[Storage],
    serial: &str,
) -> Result<Source, (Code, String)> {
    let internal = |e: StoreError| (Code::Unavailable, format!("target database: {e}"));
    let cert = store.cert(serial).map_err(internal)?.ok_or((
        Code::NotPaired,
        "this certificate was not issued to a source".to_string(),
    ))?;
    // The system's current certificate, or its predecessor still in a renewal's grace
    // (a source that has not switched yet keeps sending with it).
    let in_grace = cert.is_live() && store.grace_until(serial).map_err(internal)?.is_some();
    let row = store
        .system(cert.system_id)
        .map_err(internal)?
        .filter(|r| r.cert_serial.as_deref() == Some(serial) || in_grace)
        .filter(|r| r.role.is_source())
        .ok_or((
            Code::NotPaired,
            "this certificate belongs to no paired source".to_string(),
        ))?;
    let uuid = row.system_uuid.clone().unwrap_or_default();
    check_component(&uuid).map_err(|e| (Code::NotPaired, format!("source uuid: {e}")))?;
    let storage = row
        .storage_id
        .and_then(|id| storages.iter().find(|s| s.id == id))
        .cloned()
        .ok_or((Code::NotPaired, format!("system {} has no storage", row.id)))?;
    Ok(Source {
        system_id: row.id,
        uuid,
        storage,
        quota_mb: row.quota_mb,
    })
}

/// `<storage>/<uuid>/<client>`.
pub fn client_dir(source: &Source, name: &BackupName) -> PathBuf {
    source.storage.path.join(&source.uuid).join(name.client())
}

pub fn partial_path(dir: &Path, name: &BackupName) -> PathBuf {
    dir.join(format!(".{}{PARTIAL_SUFFIX}", name.file()))
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

/// What every receiving session shares: each source's stored bytes (for quotas), the
/// bytes accepted offers will still add per source and per storage, and the names being
/// received now (one session per file at a time).
#[derive(Debug, Default)]
pub struct Ledger {
    inner: Mutex<LedgerState>,
}

/// Receiving sessions this appliance runs at once when several sources compete; a source
/// gets `SESSIONS_SHARED / sources sending` of them (at least one), and a source with
/// none is always let in, up to [`MAX_SESSIONS`].
pub const SESSIONS_SHARED: usize = 8;
/// Receiving sessions at most, whoever asks.
pub const MAX_SESSIONS: usize = 64;

#[derive(Debug, Default)]
struct LedgerState {
    /// Receiving sessions per source system id.
    sessions: HashMap<u64, usize>,
    /// Committed bytes per source uuid, loaded from the database on first use.
    used: HashMap<String, u64>,
    reserved: HashMap<String, u64>,
    reserved_space: HashMap<u64, u64>,
    busy: HashSet<(String, String)>,
}

/// A receiving session's place, released when dropped.
pub struct Admission<'a> {
    ledger: &'a Ledger,
    system_id: u64,
}

impl Drop for Admission<'_> {
    fn drop(&mut self) {
        let mut s = lock(&self.ledger.inner);
        if let Some(n) = s.sessions.get_mut(&self.system_id) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                s.sessions.remove(&self.system_id);
            }
        }
    }
}

/// An accepted offer's share of the quota and the storage, released when dropped.
pub struct Reservation<'a> {
    ledger: &'a Ledger,
    uuid: String,
    storage_id: u64,
    quota_bytes: u64,
    space_bytes: u64,
    name: String,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        let mut s = lock(&self.ledger.inner);
        if let Some(r) = s.reserved.get_mut(&self.uuid) {
            *r = r.saturating_sub(self.quota_bytes);
        }
        if let Some(r) = s.reserved_space.get_mut(&self.storage_id) {
            *r = r.saturating_sub(self.space_bytes);
        }
        s.busy.remove(&(self.uuid.clone(), self.name.clone()));
    }
}

const MIB: u64 = 1024 * 1024;

impl Ledger {
    /// Lets a session of `system_id` in, fairly: a source that has none is always let in
    /// (up to [`MAX_SESSIONS`]); one that has some gets another only while it holds less
    /// than its share of [`SESSIONS_SHARED`] among the sources sending now.
    pub fn admit(&self, system_id: u64) -> Result<Admission<'_>, String> {
        let mut s = lock(&self.inner);
        let total: usize = s.sessions.values().sum();
        let mine = s.sessions.get(&system_id).copied().unwrap_or(0);
        let sources = s.sessions.len() + usize::from(mine == 0);
        let share = (SESSIONS_SHARED / sources.max(1)).max(1);
        if total >= MAX_SESSIONS || (mine > 0 && mine >= share) {
            return Err(format!(
                "this source has {mine} transfer sessions open, its share of this target now; try again shortly"
            ));
        }
        *s.sessions.entry(system_id).or_default() += 1;
        Ok(Admission {
            ledger: self,
            system_id,
        })
    }

    /// Reserves room for one offered file, or says why not. `grows` is what the file adds
    /// to the source's stored bytes once committed (its size minus the copy it replaces),
    /// `writes` what it still has to write to the storage, `free` the storage's free bytes.
    #[allow(clippy::too_many_arguments)]
    fn reserve(
        &self,
        source: &Source,
        name: &BackupName,
        grows: u64,
        writes: u64,
        free: u64,
        load_used: impl FnOnce() -> Result<u64, StoreError>,
    ) -> Result<Reservation<'_>, (Code, String)> {
        let mut s = lock(&self.inner);
        let key = (source.uuid.clone(), name.as_str().to_string());
        if s.busy.contains(&key) {
            return Err((
                Code::Busy,
                format!("{name} is being received in another session"),
            ));
        }
        if let Some(quota) = source.quota_mb {
            let used = match s.used.get(&source.uuid) {
                Some(u) => *u,
                None => {
                    let u = load_used()
                        .map_err(|e| (Code::Unavailable, format!("target database: {e}")))?;
                    s.used.insert(source.uuid.clone(), u);
                    u
                }
            };
            let reserved = s.reserved.get(&source.uuid).copied().unwrap_or(0);
            let limit = quota.saturating_mul(MIB);
            if used + reserved + grows > limit {
                return Err((
                    Code::Quota,
                    format!(
                        "refused before the transfer: {name} ({} MB) would pass this source's quota of {quota} MB \
                         ({} MB stored, {} MB in transfer)",
                        grows.div_ceil(MIB),
                        used.div_ceil(MIB),
                        reserved.div_ceil(MIB)
                    ),
                ));
            }
        }
        let pending = s
            .reserved_space
            .get(&source.storage.id)
            .copied()
            .unwrap_or(0);
        if writes + pending + SPACE_MARGIN > free {
            return Err((
                Code::NoSpace,
                format!(
                    "refused before the transfer: storage {} has {} MB free, {name} needs {} MB \
                     (plus {} MB for transfers in progress and a {} MB reserve)",
                    source.storage.id,
                    free / MIB,
                    writes.div_ceil(MIB),
                    pending.div_ceil(MIB),
                    SPACE_MARGIN / MIB
                ),
            ));
        }
        *s.reserved.entry(source.uuid.clone()).or_default() += grows;
        *s.reserved_space.entry(source.storage.id).or_default() += writes;
        s.busy.insert(key);
        Ok(Reservation {
            ledger: self,
            uuid: source.uuid.clone(),
            storage_id: source.storage.id,
            quota_bytes: grows,
            space_bytes: writes,
            name: name.as_str().to_string(),
        })
    }

    /// The file of `r` was committed: its growth moves from reserved to used.
    fn committed(&self, r: &Reservation<'_>, grows: u64) {
        let mut s = lock(&self.inner);
        if let Some(u) = s.used.get_mut(&r.uuid) {
            *u += grows;
        }
    }

    /// Forgets a source's cached usage (a verify or an admin changed what it stores).
    pub fn forget(&self, uuid: &str) {
        lock(&self.inner).used.remove(uuid);
    }
}

/// What the receiver needs besides the streams.
pub struct Context<'a> {
    pub store: &'a Store,
    pub live: &'a Live,
    pub ledger: &'a Ledger,
    /// The peer's address, for log lines.
    pub peer: String,
    pub now: fn() -> UnixTime,
}

/// What a session did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub committed: u64,
    pub failed: u64,
    pub bytes: u64,
    /// Why the session ended early, if it did.
    pub error: Option<String>,
}

enum Decided {
    New,
    Resume { offset: u64, hasher: Box<Sha256> },
    Have,
}

struct Offered<'l> {
    name: BackupName,
    size: u64,
    version: i64,
    decided: Decided,
    /// What the file adds to the source's stored bytes once committed.
    grows: u64,
    reservation: Reservation<'l>,
}

/// The file being received; its bytes go to the session's [`Sink`], which holds it.
struct Current<'l> {
    seq: u32,
    offer: Offered<'l>,
    hasher: Sha256,
    written: u64,
    /// The durable offset recorded in the database (0: no row yet).
    recorded: u64,
    /// The durable offset last confirmed to the source (`Frame::Durable`).
    confirmed: u64,
    next_checkpoint: u64,
    last_checkpoint: Instant,
    started: UnixTime,
    incoming: std::sync::Arc<Incoming>,
    _registered: super::live::Registered<'l>,
}

/// A verified file on its way into place: sealed (fsynced) by the sink, then committed
/// with its group on the committer thread.
pub struct ToCommit {
    pub seq: u32,
    pub name: BackupName,
    pub size: u64,
    pub version: i64,
    pub sha256: [u8; 32],
    pub started: UnixTime,
    pub sealed: Sealed,
}

/// What the committer says of one file: in place and recorded, or why not.
type Committed = (u32, Result<(), (Code, String)>);

/// One session's state on the target.
struct Session<'c, 'l, W: Write> {
    ctx: &'c Context<'l>,
    source: &'c Source,
    out: FrameWriter<W>,
    /// False once writing to the source failed; work still finishes durably.
    out_ok: bool,
    offered: HashMap<u32, Offered<'l>>,
    last_seq: Option<u32>,
    current: Option<Current<'l>>,
    /// Writes the current file on its own threads.
    sink: Sink,
    /// The current file failed already; its remaining frames are ignored.
    poisoned: Option<u32>,
    /// Verified files not yet handed to the committer.
    group: Vec<ToCommit>,
    group_bytes: u64,
    group_since: Option<Instant>,
    /// Files the committer has, by sequence number, with their reservations.
    committing: HashMap<u32, (Offered<'l>, [u8; 32])>,
    to_committer: Option<mpsc::Sender<Vec<ToCommit>>>,
    from_committer: mpsc::Receiver<Vec<Committed>>,
    summary: Summary,
}

/// Runs one session: frames in from `input`, decisions and outcomes out to `output`,
/// until the source finishes, the stream breaks or the source breaks the protocol.
/// Whatever was verified is committed, and the file in progress is checkpointed, however
/// the session ends.
pub fn serve(ctx: &Context<'_>, source: &Source, input: impl Read, output: impl Write) -> Summary {
    let (to_committer, groups) = mpsc::channel::<Vec<ToCommit>>();
    let (results, from_committer) = mpsc::channel::<Vec<Committed>>();
    std::thread::scope(|scope| {
        let committer = std::thread::Builder::new()
            .name("recv-commit".into())
            .stack_size(256 * 1024)
            .spawn_scoped(scope, move || {
                for group in groups {
                    if results
                        .send(commit(ctx.store, source, group, (ctx.now)()))
                        .is_err()
                    {
                        return;
                    }
                }
            });
        match committer {
            Ok(_) => serve_with(ctx, source, input, output, to_committer, from_committer),
            Err(e) => {
                let m = format!("cannot start the committer: {e}");
                log::error!("replication: {m}");
                Summary {
                    error: Some(m),
                    ..Summary::default()
                }
            }
        }
    })
}

fn serve_with(
    ctx: &Context<'_>,
    source: &Source,
    input: impl Read,
    output: impl Write,
    to_committer: mpsc::Sender<Vec<ToCommit>>,
    from_committer: mpsc::Receiver<Vec<Committed>>,
) -> Summary {
    let sink = match Sink::spawn(ctx.store.clone(), source.uuid.clone()) {
        Ok(s) => s,
        Err(e) => {
            let m = format!("cannot start a file writer: {e}");
            let mut out = FrameWriter::new(output);
            let _ = out.send(&Frame::Fatal {
                code: Code::Unavailable,
                message: &m,
            });
            let _ = out.flush();
            return Summary {
                error: Some(m),
                ..Summary::default()
            };
        }
    };
    let mut session = Session {
        sink,
        ctx,
        source,
        out: FrameWriter::new(output),
        out_ok: true,
        offered: HashMap::new(),
        last_seq: None,
        current: None,
        poisoned: None,
        group: Vec::new(),
        group_bytes: 0,
        group_since: None,
        committing: HashMap::new(),
        to_committer: Some(to_committer),
        from_committer,
        summary: Summary::default(),
    };
    log::info!(
        "replication from system {} ({}) at {}: session started, storage {}",
        source.system_id,
        source.uuid,
        ctx.peer,
        source.storage.id
    );
    let mut reader = FrameReader::new(input);
    let end = if !source.storage.path.is_dir() {
        let m = format!("storage {} is offline", source.storage.id);
        session.send(&Frame::Fatal {
            code: Code::Storage,
            message: &m,
        });
        Err(m)
    } else {
        session.greet();
        session.run(&mut reader)
    };
    // However it ended: what verified is committed, what is in progress is resumable.
    session.checkpoint_current();
    session.commit_all();
    session.to_committer = None;
    if let Err(e) = &end {
        session.summary.error = Some(e.clone());
    }
    let s = &session.summary;
    log::info!(
        "replication from system {} at {}: session ended, {} files committed, {} failed, {} bytes{}",
        source.system_id,
        ctx.peer,
        s.committed,
        s.failed,
        s.bytes,
        s.error.as_ref().map(|e| format!(" ({e})")).unwrap_or_default()
    );
    session.summary
}

impl<'c, 'l, W: Write> Session<'c, 'l, W> {
    fn send(&mut self, frame: &Frame<'_>) {
        if self.out_ok && self.out.send(frame).is_err() {
            self.out_ok = false;
        }
    }

    fn flush(&mut self) {
        if self.out_ok && self.out.flush().is_err() {
            self.out_ok = false;
        }
    }

    /// Tells the source which copies it should send again (damaged, per a verify), then
    /// that offers will be answered.
    fn greet(&mut self) {
        let wanted: Vec<String> = match self.ctx.store.received(&self.source.uuid) {
            Ok(rows) => rows
                .into_iter()
                .filter(|r| r.storage_id == self.source.storage.id && r.damaged.is_some())
                .take(MAX_WANTS)
                .map(|r| r.backup)
                .collect(),
            Err(e) => {
                log::warn!(
                    "replication: damaged copies of system {}: {e}",
                    self.source.system_id
                );
                Vec::new()
            }
        };
        for name in &wanted {
            self.send(&Frame::Want { name });
        }
        self.send(&Frame::Ready);
        self.flush();
    }

    fn fatal(&mut self, code: Code, message: String) -> Result<(), String> {
        self.send(&Frame::Fatal {
            code,
            message: &message,
        });
        self.flush();
        Err(message)
    }

    fn run<R: Read>(&mut self, reader: &mut FrameReader<R>) -> Result<(), String> {
        loop {
            if self.group_since.is_some_and(|t| t.elapsed() >= GROUP_WAIT) {
                self.hand_over();
            }
            self.collect(false);
            let frame = match reader.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => return Err("the source closed the stream before finishing".into()),
                Err(StreamError::Frame(e)) => {
                    return self.fatal(Code::Protocol, format!("malformed frame: {e}"))
                }
                Err(e) => return Err(e.to_string()),
            };
            match frame {
                Frame::Offer {
                    seq,
                    size,
                    version,
                    name,
                } => self.offer(seq, size, version, name)?,
                Frame::Start { seq, offset } => self.start(seq, offset)?,
                Frame::Data { seq, bytes } => self.data(seq, bytes)?,
                Frame::End { seq, sha256 } => self.end(seq, sha256)?,
                Frame::Skip { seq } => self.skip(seq)?,
                Frame::Finish => {
                    if self.current.is_some() {
                        return self.fatal(Code::Protocol, "finish while a file is open".into());
                    }
                    self.commit_all();
                    self.send(&Frame::Bye);
                    self.flush();
                    return Ok(());
                }
                other => {
                    return self.fatal(
                        Code::Protocol,
                        format!("frame {other:?} is not one a source sends"),
                    )
                }
            }
        }
    }

    fn refuse(&mut self, seq: u32, code: Code, message: &str) {
        log::info!(
            "replication from system {} at {}: offer {seq} refused: {message}",
            self.source.system_id,
            self.ctx.peer
        );
        self.send(&Frame::Decision {
            seq,
            decision: Decision::Refuse { code, message },
        });
    }

    fn offer(&mut self, seq: u32, size: u64, version: i64, name: &str) -> Result<(), String> {
        if self.last_seq.is_some_and(|last| seq <= last) {
            return self.fatal(
                Code::Protocol,
                format!("offer {seq} is not after the last one"),
            );
        }
        self.last_seq = Some(seq);
        if self.offered.len() >= MAX_OUTSTANDING {
            return self.fatal(
                Code::Protocol,
                format!("more than {MAX_OUTSTANDING} offers outstanding"),
            );
        }
        let name = match BackupName::parse(name) {
            Ok(n) => n,
            Err(e) => {
                self.refuse(seq, Code::BadName, &e.to_string());
                return Ok(());
            }
        };
        match self.decide(&name, size, version) {
            Ok(offer) => {
                let decision = match &offer.decided {
                    Decided::New => Decision::New,
                    Decided::Resume { offset, hasher } => Decision::Resume {
                        offset: *offset,
                        prefix_sha256: digest_of(hasher),
                    },
                    Decided::Have => {
                        let sha = self
                            .ctx
                            .store
                            .received_one(&self.source.uuid, name.as_str())
                            .ok()
                            .flatten()
                            .and_then(|r| parse_digest(&r.sha256))
                            .unwrap_or([0; 32]);
                        Decision::Have { sha256: sha }
                    }
                };
                self.send(&Frame::Decision { seq, decision });
                self.offered.insert(seq, offer);
            }
            Err((code, message)) => self.refuse(seq, code, &message),
        }
        Ok(())
    }

    /// Decides an offer: what the target holds of it, and whether it fits.
    fn decide(
        &self,
        name: &BackupName,
        size: u64,
        version: i64,
    ) -> Result<Offered<'l>, (Code, String)> {
        let store = self.ctx.store;
        let internal = |e: StoreError| (Code::Unavailable, format!("target database: {e}"));
        let uuid = &self.source.uuid;
        let storage = &self.source.storage;
        let dir = client_dir(self.source, name);
        let held = store
            .received_one(uuid, name.as_str())
            .map_err(internal)?
            .filter(|r| r.storage_id == storage.id);
        let final_len = std::fs::symlink_metadata(dir.join(name.file()))
            .ok()
            .filter(|m| m.is_file())
            .map(|m| m.len());
        let have = held
            .as_ref()
            .is_some_and(|r| r.size == size && r.damaged.is_none() && final_len == Some(size));
        let replaced = held.as_ref().map(|r| r.size).unwrap_or(0);
        let grows = size.saturating_sub(replaced);
        // A partial copy of this very version resumes; any other is dropped.
        let mut resume = None;
        if !have {
            if let Some(p) = store.partial(uuid, name.as_str()).map_err(internal)? {
                if p.storage_id == storage.id
                    && p.size == size
                    && p.version == version
                    && p.verified_sha256.is_none()
                    && p.offset > 0
                {
                    resume =
                        prefix_hash(&partial_path(&dir, name), p.offset).map(|h| (p.offset, h));
                }
                if resume.is_none() {
                    drop_partial(store, uuid, &dir, name);
                }
            }
        }
        let offset = resume.as_ref().map(|(o, _)| *o).unwrap_or(0);
        let free = fsx::disk_space(&storage.path)
            .map(|(_, free)| free)
            .map_err(|e| (Code::Storage, format!("storage {}: {e}", storage.id)))?;
        let writes = if have { 0 } else { size - offset };
        let reservation =
            self.ctx
                .ledger
                .reserve(self.source, name, grows, writes, free, || {
                    Ok(store
                        .received(uuid)?
                        .iter()
                        .filter(|r| r.storage_id == storage.id)
                        .map(|r| r.size)
                        .sum())
                })?;
        let decided = match (have, resume) {
            (true, _) => Decided::Have,
            (false, Some((offset, hasher))) => Decided::Resume {
                offset,
                hasher: Box::new(hasher),
            },
            (false, None) => Decided::New,
        };
        Ok(Offered {
            name: name.clone(),
            size,
            version,
            decided,
            grows,
            reservation,
        })
    }

    fn start(&mut self, seq: u32, offset: u64) -> Result<(), String> {
        if self.current.is_some() {
            return self.fatal(
                Code::Protocol,
                format!("start {seq} while another file is open"),
            );
        }
        let Some(offer) = self.offered.remove(&seq) else {
            return self.fatal(
                Code::Protocol,
                format!("start of {seq}, which is not an open offer"),
            );
        };
        let (keep, hasher) = match offer.decided {
            Decided::Resume {
                offset: o,
                ref hasher,
            } if offset == o => (o, (**hasher).clone()),
            _ if offset == 0 => (0, Sha256::new(&SHA256)),
            _ => {
                return self.fatal(
                    Code::Protocol,
                    format!("start of {seq} at {offset}, which the target did not offer"),
                )
            }
        };
        let dir = client_dir(self.source, &offer.name);
        let opened = fsx::ensure_dir_under(
            &self.source.storage.path,
            &[&self.source.uuid, offer.name.client()],
        )
        .and_then(|_| PartialFile::open(&partial_path(&dir, &offer.name), keep));
        match opened.and_then(|f| self.sink.open(f)) {
            Ok(()) => {}
            Err(e) => {
                let m = format!(
                    "cannot write {} on storage {}: {e}",
                    offer.name, self.source.storage.id
                );
                log::error!("replication from system {}: {m}", self.source.system_id);
                self.summary.failed += 1;
                self.ctx.live.count(Event::ReceiveFailed);
                self.poisoned = Some(seq);
                self.send(&Frame::Outcome {
                    seq,
                    outcome: Outcome::Failed {
                        code: Code::Storage,
                        message: &m,
                    },
                });
                self.flush();
                return Ok(());
            }
        };
        let now = (self.ctx.now)();
        let (registered, incoming) = self.ctx.live.receiving(
            self.source.system_id,
            offer.name.as_str(),
            offer.size,
            keep,
            now,
        );
        log::info!(
            "replication from system {} at {}: receiving {} ({} bytes{})",
            self.source.system_id,
            self.ctx.peer,
            offer.name,
            offer.size,
            if keep > 0 {
                format!(", resuming at {keep}")
            } else {
                String::new()
            }
        );
        let chunk = chunk_for(offer.size);
        self.current = Some(Current {
            seq,
            hasher,
            written: keep,
            recorded: keep,
            confirmed: keep,
            next_checkpoint: keep + chunk,
            last_checkpoint: Instant::now(),
            started: now,
            incoming,
            _registered: registered,
            offer,
        });
        self.poisoned = None;
        Ok(())
    }

    fn data(&mut self, seq: u32, bytes: &[u8]) -> Result<(), String> {
        if self.poisoned == Some(seq) {
            return Ok(());
        }
        let Some(cur) = self.current.as_mut().filter(|c| c.seq == seq) else {
            return self.fatal(
                Code::Protocol,
                format!("data for {seq}, which is not the open file"),
            );
        };
        let len = bytes.len() as u64;
        if cur.written + len > cur.offer.size {
            let m = format!(
                "the source sent more than the {} bytes it offered for {}; the copy was discarded",
                cur.offer.size, cur.offer.name
            );
            self.fail_current(Code::SizeMismatch, m);
            return Ok(());
        }
        if let Err(e) = self.sink.write(bytes) {
            let m = format!(
                "cannot write {} on storage {}: {e}",
                cur.offer.name, self.source.storage.id
            );
            self.checkpoint_current();
            self.fail_current_keep(Code::Storage, m);
            return Ok(());
        }
        cur.hasher.update(bytes);
        cur.written += len;
        cur.incoming.progress.advance(len);
        self.ctx.live.count_received(len);
        self.summary.bytes += len;
        // A complete file needs none: `End` comes next and the seal makes it durable (a
        // file of up to a chunk would otherwise pay an fdatasync and a directory fsync
        // for nothing; if the stream breaks first, the session's end checkpoints it).
        let complete = cur.written == cur.offer.size;
        if !complete
            && (cur.written >= cur.next_checkpoint
                || (cur.last_checkpoint.elapsed() >= CHECKPOINT_AFTER
                    && cur.written > cur.recorded))
        {
            // On the sink's threads: the stream keeps flowing while the disk catches up.
            cur.next_checkpoint = cur.written + chunk_for(cur.offer.size);
            cur.last_checkpoint = Instant::now();
            cur.recorded = cur.written;
            let row = partial_row(self.source, cur, (self.ctx.now)());
            if let Err(e) = self.sink.checkpoint(row) {
                log::warn!("replication: checkpoint of {}: {e}", cur.offer.name);
            }
        }
        self.confirm_durable(seq);
        Ok(())
    }

    /// Tells the source how much of the open file is durable once a checkpoint recorded
    /// more than it was told. When the source may be out of window (it could not send
    /// another whole frame), makes everything written durable now, so the source never
    /// waits on a checkpoint nobody takes.
    fn confirm_durable(&mut self, seq: u32) {
        let Some(cur) = self.current.as_mut().filter(|c| c.seq == seq) else {
            return;
        };
        let mut durable = self.sink.recorded().unwrap_or(0).max(cur.confirmed);
        let size = cur.offer.size;
        let stalled = cur.written < size
            && cur.written + MAX_DATA as u64 > durable + window_for(size)
            && cur.written > durable;
        if stalled {
            match self.checkpoint_now() {
                Ok(offset) => durable = durable.max(offset),
                Err(e) => {
                    let m = format!("cannot make {} durable: {e}", self.current_name());
                    self.fail_current_keep(Code::Storage, m);
                    return;
                }
            }
        }
        let Some(cur) = self.current.as_mut() else {
            return;
        };
        if durable > cur.confirmed {
            cur.confirmed = durable;
            self.send(&Frame::Durable {
                seq,
                offset: durable,
            });
            self.flush();
        }
    }

    fn current_name(&self) -> String {
        self.current
            .as_ref()
            .map(|c| c.offer.name.to_string())
            .unwrap_or_default()
    }

    /// Makes what the open file holds durable and records it, waiting; the file stays
    /// open. Returns the offset now durable.
    fn checkpoint_now(&mut self) -> Result<u64, String> {
        let file = self.sink.close().map_err(|e| e.to_string())?;
        let recorded = self.record_durable(&file);
        self.sink.open(file).map_err(|e| e.to_string())?;
        let written = recorded?;
        if let Some(cur) = self.current.as_mut() {
            cur.last_checkpoint = Instant::now();
            cur.next_checkpoint = written + chunk_for(cur.offer.size);
        }
        Ok(written)
    }

    /// Makes the open file durable up to what was written and records that offset, now
    /// (the session is ending). The file stays in progress, resumable.
    fn checkpoint_current(&mut self) {
        let Some(cur) = self.current.as_mut() else {
            return;
        };
        let file = match self.sink.close() {
            Ok(f) => f,
            Err(e) => {
                log::warn!("replication: checkpoint of {}: {e}", cur.offer.name);
                return;
            }
        };
        // What was written so far: the sink wrote everything queued before close.
        if self.poisoned == Some(cur.seq) || file.is_empty() {
            return;
        }
        if let Err(e) = self.record_durable(&file) {
            log::warn!("replication: checkpoint of {}: {e}", self.current_name());
        }
    }

    /// Makes `file` (the open file, out of the sink) durable up to its length and
    /// records that offset; returns it.
    fn record_durable(&mut self, file: &PartialFile) -> Result<u64, String> {
        let written = file.len();
        file.checkpoint().map_err(|e| e.to_string())?;
        let Some(cur) = self.current.as_mut() else {
            return Err("no file is open".into());
        };
        cur.written = written;
        let row = partial_row(self.source, cur, (self.ctx.now)());
        let uuid = &self.source.uuid;
        self.ctx
            .store
            .write(|tx| tx.put_partial(uuid, &row))
            .map_err(|e| format!("record it: {e}"))?;
        cur.recorded = written;
        Ok(written)
    }

    /// The open file failed for good: discard the copy, tell the source.
    fn fail_current(&mut self, code: Code, message: String) {
        let Some(cur) = self.current.take() else {
            return;
        };
        let dir = client_dir(self.source, &cur.offer.name);
        if let Ok(file) = self.sink.close() {
            let _ = file.discard();
        }
        drop_partial(self.ctx.store, &self.source.uuid, &dir, &cur.offer.name);
        self.report_failure(cur.seq, &cur.offer.name, code, &message);
    }

    /// The open file failed but what it holds durably stays for a resume.
    fn fail_current_keep(&mut self, code: Code, message: String) {
        let Some(cur) = self.current.take() else {
            return;
        };
        let _ = self.sink.close();
        self.report_failure(cur.seq, &cur.offer.name, code, &message);
    }

    fn report_failure(&mut self, seq: u32, name: &BackupName, code: Code, message: &str) {
        log::warn!(
            "replication from system {} at {}: transfer of {name} failed: {message}",
            self.source.system_id,
            self.ctx.peer
        );
        self.poisoned = Some(seq);
        self.summary.failed += 1;
        self.ctx.live.count(Event::ReceiveFailed);
        self.send(&Frame::Outcome {
            seq,
            outcome: Outcome::Failed { code, message },
        });
        self.flush();
    }

    fn end(&mut self, seq: u32, sha256: [u8; 32]) -> Result<(), String> {
        if self.poisoned == Some(seq) {
            self.poisoned = None;
            return Ok(());
        }
        if self.current.as_ref().is_none_or(|c| c.seq != seq) {
            return self.fatal(
                Code::Protocol,
                format!("end of {seq}, which is not the open file"),
            );
        }
        let Some(cur) = self.current.take() else {
            return Ok(());
        };
        if cur.written != cur.offer.size {
            let m = format!(
                "the source offered {} bytes for {} but sent {}; the copy was discarded",
                cur.offer.size, cur.offer.name, cur.written
            );
            self.current = Some(cur);
            self.fail_current(Code::SizeMismatch, m);
            self.poisoned = None;
            return Ok(());
        }
        let ours: [u8; 32] = digest_of(&cur.hasher);
        if ours != sha256 {
            let m = format!(
                "SHA-256 mismatch for {}: the source computed {}, the target {}; the copy was discarded",
                cur.offer.name,
                hex(&sha256),
                hex(&ours)
            );
            self.current = Some(cur);
            self.fail_current(Code::DigestMismatch, m);
            self.poisoned = None;
            return Ok(());
        }
        let sealed = match self.sink.seal() {
            Ok(s) => s,
            Err(e) => {
                let m = format!(
                    "cannot write {} on storage {}: {e}",
                    cur.offer.name, self.source.storage.id
                );
                self.report_failure(seq, &cur.offer.name, Code::Storage, &m);
                self.poisoned = None;
                return Ok(());
            }
        };
        let size = cur.offer.size;
        self.group.push(ToCommit {
            seq,
            name: cur.offer.name.clone(),
            size,
            version: cur.offer.version,
            sha256: ours,
            started: cur.started,
            sealed,
        });
        self.committing.insert(seq, (cur.offer, ours));
        self.group_bytes += size;
        self.group_since.get_or_insert_with(Instant::now);
        if self.group.len() >= GROUP_FILES || self.group_bytes >= GROUP_BYTES {
            self.hand_over();
        }
        Ok(())
    }

    fn skip(&mut self, seq: u32) -> Result<(), String> {
        if self.offered.remove(&seq).is_some() {
            return Ok(());
        }
        if self.poisoned == Some(seq) {
            self.poisoned = None;
            return Ok(());
        }
        if self.current.as_ref().is_some_and(|c| c.seq == seq) {
            // The source abandoned the file (removed by its admin, or it changed on disk).
            if let Some(cur) = self.current.take() {
                let dir = client_dir(self.source, &cur.offer.name);
                if let Ok(file) = self.sink.close() {
                    let _ = file.discard();
                }
                drop_partial(self.ctx.store, &self.source.uuid, &dir, &cur.offer.name);
                log::info!(
                    "replication from system {} at {}: {} abandoned by the source",
                    self.source.system_id,
                    self.ctx.peer,
                    cur.offer.name
                );
            }
            return Ok(());
        }
        self.fatal(
            Code::Protocol,
            format!("skip of {seq}, which is not an open offer or file"),
        )
    }

    /// Hands the verified files collected so far to the committer.
    fn hand_over(&mut self) {
        self.group_since = None;
        self.group_bytes = 0;
        if self.group.is_empty() {
            return;
        }
        let group = std::mem::take(&mut self.group);
        let Some(tx) = &self.to_committer else {
            return;
        };
        if let Err(mpsc::SendError(group)) = tx.send(group) {
            for f in group {
                if let Some((offer, _)) = self.committing.remove(&f.seq) {
                    let m = "the committer stopped".to_string();
                    self.report_failure(f.seq, &offer.name, Code::Unavailable, &m);
                }
            }
        }
    }

    /// Hands over what is collected and waits until the committer said how every file
    /// ended.
    fn commit_all(&mut self) {
        self.hand_over();
        while !self.committing.is_empty() {
            if !self.collect(true) {
                break;
            }
        }
    }

    /// Applies what the committer finished: the source hears of each file. With `block`,
    /// waits for one answer first; false when the committer is gone.
    fn collect(&mut self, block: bool) -> bool {
        let mut sent = false;
        loop {
            let next = if block && !sent {
                self.from_committer
                    .recv()
                    .map_err(|_| mpsc::TryRecvError::Disconnected)
            } else {
                self.from_committer.try_recv()
            };
            let results = match next {
                Ok(r) => r,
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => return false,
            };
            sent = true;
            for (seq, result) in results {
                let Some((offer, sha256)) = self.committing.remove(&seq) else {
                    continue;
                };
                match result {
                    Ok(()) => {
                        self.ctx.ledger.committed(&offer.reservation, offer.grows);
                        self.summary.committed += 1;
                        self.ctx.live.count(Event::Received);
                        log::info!(
                            "replication from system {} at {}: {} received and verified ({} bytes, sha256 {})",
                            self.source.system_id,
                            self.ctx.peer,
                            offer.name,
                            offer.size,
                            hex(&sha256)
                        );
                        self.send(&Frame::Outcome {
                            seq,
                            outcome: Outcome::Committed { sha256 },
                        });
                    }
                    Err((code, message)) => self.report_failure(seq, &offer.name, code, &message),
                }
            }
        }
        if sent {
            self.flush();
        }
        true
    }
}

/// Commits a group of verified files (the committer thread): waits until each is durable,
/// records them verified in one transaction, renames each into place, fsyncs each
/// directory once, records them received in one transaction. A crash at any point is
/// finished or undone by [`repair`] at start.
fn commit(store: &Store, source: &Source, group: Vec<ToCommit>, now: UnixTime) -> Vec<Committed> {
    let uuid = &source.uuid;
    let storage_id = source.storage.id;
    let mut out: Vec<Committed> = Vec::new();
    let mut ok: Vec<(ToCommit, PartialFile)> = Vec::new();
    for f in group {
        match f.sealed.recv() {
            Ok(Ok(file)) => ok.push((f, file)),
            Ok(Err(e)) => {
                drop_partial(store, uuid, &client_dir(source, &f.name), &f.name);
                let m = format!("cannot make {} durable: {e}", f.name);
                out.push((f.seq, Err((Code::Storage, m))));
            }
            Err(_) => out.push((
                f.seq,
                Err((Code::Storage, "the file writer stopped".into())),
            )),
        }
    }
    let marked = store.write(|tx| {
        for (f, _) in &ok {
            tx.put_partial(
                uuid,
                &PartialRecord {
                    backup: f.name.as_str().to_string(),
                    storage_id,
                    size: f.size,
                    version: f.version,
                    offset: f.size,
                    started: f.started,
                    updated: now,
                    verified_sha256: Some(hex(&f.sha256)),
                },
            )?;
        }
        Ok::<_, StoreError>(())
    });
    if let Err(e) = marked {
        out.extend(ok.into_iter().map(|(f, _)| {
            (
                f.seq,
                Err((Code::Unavailable, format!("target database: {e}"))),
            )
        }));
        return out;
    }
    let mut renamed: Vec<ToCommit> = Vec::new();
    let mut dirs: Vec<PathBuf> = Vec::new();
    for (f, file) in ok {
        let dir = client_dir(source, &f.name);
        match file.rename_into(&dir.join(f.name.file())) {
            Ok(()) => {
                if !dirs.contains(&dir) {
                    dirs.push(dir);
                }
                renamed.push(f);
            }
            Err(e) => {
                let m = format!("cannot rename {} into place: {e}", f.name);
                out.push((f.seq, Err((Code::Storage, m))));
            }
        }
    }
    for d in &dirs {
        if let Err(e) = fsx::sync_dir(d) {
            log::error!("replication: fsync of {}: {e}", d.display());
        }
    }
    let recorded = store.write(|tx| {
        for f in &renamed {
            tx.put_received(
                uuid,
                &ReceivedRecord {
                    backup: f.name.as_str().to_string(),
                    storage_id,
                    size: f.size,
                    sha256: hex(&f.sha256),
                    version: f.version,
                    received: now,
                    verified: None,
                    damaged: None,
                },
            )?;
            tx.delete_partial(uuid, f.name.as_str())?;
        }
        Ok::<_, StoreError>(())
    });
    match recorded {
        Ok(()) => out.extend(renamed.into_iter().map(|f| (f.seq, Ok(())))),
        // The files are in place and their partial rows say verified: the start-up repair
        // records them. The source is told to try again later.
        Err(e) => out.extend(renamed.into_iter().map(|f| {
            (
                f.seq,
                Err((Code::Unavailable, format!("target database: {e}"))),
            )
        })),
    }
    out
}

/// The partial row of the file in progress, at what it holds now.
fn partial_row(source: &Source, cur: &Current<'_>, now: UnixTime) -> PartialRecord {
    PartialRecord {
        backup: cur.offer.name.as_str().to_string(),
        storage_id: source.storage.id,
        size: cur.offer.size,
        version: cur.offer.version,
        offset: cur.written,
        started: cur.started,
        updated: now,
        verified_sha256: None,
    }
}

fn digest_of(h: &Sha256) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(h.clone().finish().as_ref());
    out
}

fn parse_digest(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
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

/// Removes a partial copy and its row (a stale version, a failed or abandoned file).
fn drop_partial(store: &Store, uuid: &str, dir: &Path, name: &BackupName) {
    if let Err(e) = fsx::remove_file_durable(&partial_path(dir, name)) {
        log::warn!("replication: remove partial copy of {name}: {e}");
    }
    if let Err(e) = store.write(|tx| tx.delete_partial(uuid, name.as_str())) {
        log::warn!("replication: forget partial copy of {name}: {e}");
    }
}

/// What the start-up repair did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Repair {
    /// Verified copies whose rename or record a crash interrupted, now in place.
    pub finished: u64,
    /// Partial rows without a usable file, dropped.
    pub dropped: u64,
    /// Partial files no row describes, removed.
    pub swept: u64,
}

/// At start: finishes commits a crash interrupted (a partial row marked verified), drops
/// partial rows whose file is gone or too short, and removes partial files that no row
/// describes (a crash before their first checkpoint).
pub fn repair(store: &Store, storages: &[Storage], now: UnixTime) -> Result<Repair, StoreError> {
    let mut out = Repair::default();
    let rows = store.partials()?;
    let mut known: HashSet<PathBuf> = HashSet::new();
    for (uuid, p) in &rows {
        let (Ok(name), Some(storage)) = (
            BackupName::parse(&p.backup),
            storages.iter().find(|s| s.id == p.storage_id),
        ) else {
            store.write(|tx| tx.delete_partial(uuid, &p.backup))?;
            out.dropped += 1;
            continue;
        };
        if check_component(uuid).is_err() {
            store.write(|tx| tx.delete_partial(uuid, &p.backup))?;
            out.dropped += 1;
            continue;
        }
        let dir = storage.path.join(uuid).join(name.client());
        let partial = partial_path(&dir, &name);
        let target = dir.join(name.file());
        if let Some(sha) = &p.verified_sha256 {
            if partial.exists() {
                if let Err(e) = fsx::rename_durable(&partial, &target) {
                    log::error!("repair: rename {}: {e}", partial.display());
                    continue;
                }
            }
            let actual = prefix_hash(&target, p.size).map(|h| hex(&digest_of(&h)));
            let p2 = p.clone();
            store.write(|tx| {
                if actual.as_deref() == Some(sha.as_str()) {
                    tx.put_received(
                        uuid,
                        &ReceivedRecord {
                            backup: p2.backup.clone(),
                            storage_id: p2.storage_id,
                            size: p2.size,
                            sha256: sha.clone(),
                            version: p2.version,
                            received: now,
                            verified: None,
                            damaged: None,
                        },
                    )?;
                }
                tx.delete_partial(uuid, &p2.backup)?;
                Ok::<_, StoreError>(())
            })?;
            if actual.as_deref() == Some(sha.as_str()) {
                out.finished += 1;
                log::info!("repair: finished the commit of {} from {uuid}", p.backup);
            } else {
                out.dropped += 1;
            }
            continue;
        }
        let usable = std::fs::symlink_metadata(&partial)
            .map(|m| m.is_file() && m.len() >= p.offset)
            .unwrap_or(false);
        if usable {
            known.insert(partial);
        } else {
            store.write(|tx| tx.delete_partial(uuid, &p.backup))?;
            out.dropped += 1;
        }
    }
    for storage in storages {
        for path in partial_files(&storage.path) {
            if !known.contains(&path) {
                match fsx::remove_file_durable(&path) {
                    Ok(()) => out.swept += 1,
                    Err(e) => log::warn!("repair: remove {}: {e}", path.display()),
                }
            }
        }
    }
    Ok(out)
}

/// Every `<storage>/<uuid>/<client>/.<file>.replgate-part` (real directories only).
fn partial_files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let dirs = |p: &Path| -> Vec<PathBuf> {
        std::fs::read_dir(p)
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
                    .map(|e| e.path())
                    .collect()
            })
            .unwrap_or_default()
    };
    for uuid_dir in dirs(root) {
        for client_dir in dirs(&uuid_dir) {
            if let Ok(rd) = std::fs::read_dir(&client_dir) {
                for e in rd.flatten() {
                    let n = e.file_name();
                    let n = n.to_string_lossy();
                    if n.starts_with('.')
                        && n.ends_with(PARTIAL_SUFFIX)
                        && e.file_type().map(|t| t.is_file()).unwrap_or(false)
                    {
                        out.push(e.path());
                    }
                }
            }
        }
    }
    out
}
