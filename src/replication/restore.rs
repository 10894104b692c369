//! Restore (SPEC 20), source side: pull backups a target holds for this source back into
//! a local storage. The target's listing and bytes are hostile input: names pass
//! `names` before any path is built, nothing is written outside `<storage>/<client>/`,
//! no more than the announced size is read, and a copy appears under its final name only
//! after its SHA-256 matched and it was fsynced (temp name, fsync, rename, directory
//! fsync). An existing different file is replaced only when the restore asked for it.
//! A pull resumes from what the local partial copy holds (`.<file>.restore`).
//!
//! Plain functions: the store, the clock and the network (a `fetch` closure that opens
//! the bytes at an offset) are handed in; files only through `fsx`.

use std::collections::HashMap;
use std::fmt;
use std::io::{self, Read, Seek};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use ring::digest::{Context as Sha256, SHA256};

use super::names::{check_component, BackupName, NameError};
use crate::fsx;
use crate::model::UnixTime;
use crate::pairing::Actor;
use crate::store::{
    ReceivedRecord, RestoreItem, RestoreStatus, Store, StoreError, TargetRecord, TargetStatus,
};
use crate::sync::lock;
use crate::wire::hex;
use crate::wire::protocol::RestoreListing;

/// Suffix of a partial restored copy, next to its final name: `.<file>.restore`.
pub const PARTIAL_SUFFIX: &str = ".restore";
/// Bytes between durable checkpoints of a partial copy (a cut costs at most this).
const CHECKPOINT_BYTES: u64 = 16 * 1024 * 1024;
/// Read and write size.
const BUFFER: usize = 256 * 1024;
/// Attempts that failed for a reason of the copy (a digest that does not match, more
/// bytes than announced) before the item stays `failed`.
pub const MAX_COPY_FAILURES: u32 = 3;
/// Longest wait before a retry after a broken connection.
const MAX_BACKOFF: UnixTime = 60;

/// What a restore asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selection {
    Backups(Vec<String>),
    Clients(Vec<String>),
    All,
}

/// One copy a target offers, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Offered {
    pub name: BackupName,
    pub size: u64,
    pub sha256: String,
}

#[derive(Debug)]
pub enum RestoreError {
    UnknownTarget(u64),
    TargetNotPaired {
        id: u64,
        status: TargetStatus,
    },
    /// The target's listing breaks the protocol (a bad name, digest or size).
    BadListing(String),
    /// A backup or client the restore names that the target does not hold.
    NotOnTarget(String),
    /// The target holds nothing that matches.
    Nothing,
    /// A field of the request.
    Invalid(String),
    /// Already being restored into this storage.
    AlreadyRestoring {
        backup: String,
        item_id: u64,
    },
    /// A drill of this target is queued or running.
    DrillOpen {
        drill_id: u64,
        target_id: u64,
    },
    Store(StoreError),
}

impl fmt::Display for RestoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RestoreError::UnknownTarget(id) => write!(f, "no target {id}"),
            RestoreError::TargetNotPaired { id, status } => write!(
                f,
                "target {id} is {}; backups are restored only from a complete pairing",
                status.as_str()
            ),
            RestoreError::BadListing(m) => write!(f, "the target's list of backups: {m}"),
            RestoreError::NotOnTarget(what) => write!(f, "the target holds no {what}"),
            RestoreError::Nothing => f.write_str("the target holds no backup of this source"),
            RestoreError::Invalid(m) => f.write_str(m),
            RestoreError::AlreadyRestoring { backup, item_id } => {
                write!(f, "{backup} is already being restored as item {item_id}")
            }
            RestoreError::DrillOpen {
                drill_id,
                target_id,
            } => write!(
                f,
                "drill {drill_id} of target {target_id} is queued or running already"
            ),
            RestoreError::Store(_) => f.write_str("restore state"),
        }
    }
}

impl std::error::Error for RestoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            RestoreError::Store(e) => Some(e),
            _ => None,
        }
    }
}

impl From<StoreError> for RestoreError {
    fn from(e: StoreError) -> Self {
        RestoreError::Store(e)
    }
}

/// The target a restore pulls from: it must exist and be paired (complete, with a tunnel).
pub fn target_for_restore(store: &Store, id: u64) -> Result<TargetRecord, RestoreError> {
    let t = store.target(id)?.ok_or(RestoreError::UnknownTarget(id))?;
    if t.status != TargetStatus::Complete || t.tunnel.is_none() {
        return Err(RestoreError::TargetNotPaired {
            id,
            status: t.status,
        });
    }
    Ok(t)
}

/// Checks a target's listing entry by entry: a name that is not `<client>/<file>`, a
/// digest that is not 64 hex digits or a name listed twice refuses the whole listing (the
/// target is broken or hostile).
pub fn check_listing(listing: &RestoreListing) -> Result<Vec<Offered>, RestoreError> {
    let mut out: Vec<Offered> = Vec::with_capacity(listing.backups.len());
    for e in &listing.backups {
        let name = BackupName::parse(&e.backup)
            .map_err(|err| RestoreError::BadListing(format!("{:?}: {err}", e.backup)))?;
        if hex::decode_array::<32>(&e.sha256).is_none() {
            return Err(RestoreError::BadListing(format!(
                "{}: sha256 is not 64 hex digits",
                name
            )));
        }
        if out.iter().any(|o| o.name == name) {
            return Err(RestoreError::BadListing(format!("{name} is listed twice")));
        }
        out.push(Offered {
            name,
            size: e.size,
            sha256: e.sha256.to_ascii_lowercase(),
        });
    }
    Ok(out)
}

/// What of `offered` the selection names. Every backup or client it names must be there.
pub fn choose(offered: Vec<Offered>, selection: &Selection) -> Result<Vec<Offered>, RestoreError> {
    let chosen: Vec<Offered> = match selection {
        Selection::All => offered,
        Selection::Backups(names) => {
            let mut out = Vec::new();
            for n in names {
                let name = BackupName::parse(n)
                    .map_err(|e| RestoreError::Invalid(format!("field `backups`: {n:?}: {e}")))?;
                let o = offered
                    .iter()
                    .find(|o| o.name == name)
                    .ok_or_else(|| RestoreError::NotOnTarget(format!("backup {name}")))?;
                if !out.contains(o) {
                    out.push(o.clone());
                }
            }
            out
        }
        Selection::Clients(clients) => {
            for c in clients {
                check_component(c).map_err(|e: NameError| {
                    RestoreError::Invalid(format!("field `clients`: {c:?}: {e}"))
                })?;
                if !offered.iter().any(|o| o.name.client() == c) {
                    return Err(RestoreError::NotOnTarget(format!("backup of client {c}")));
                }
            }
            offered
                .into_iter()
                .filter(|o| clients.iter().any(|c| c == o.name.client()))
                .collect()
        }
    };
    if chosen.is_empty() {
        return Err(RestoreError::Nothing);
    }
    Ok(chosen)
}

/// A restore as asked: from which target, into which storage, replacing what.
#[derive(Clone, Debug)]
pub struct Request {
    pub target_id: u64,
    pub storage_id: u64,
    pub overwrite: bool,
}

/// Queues one restore item per chosen copy, in one transaction with its audit row. A
/// copy already being restored into the same storage refuses the whole request.
pub fn start(
    store: &Store,
    req: &Request,
    chosen: &[Offered],
    actor: &Actor,
    now: UnixTime,
) -> Result<Vec<RestoreItem>, RestoreError> {
    store.write(|tx| {
        let mut book = tx.restores()?;
        for o in chosen {
            if let Some(open) = book.items.iter().find(|i| {
                !i.status.is_finished()
                    && i.storage_id == req.storage_id
                    && i.backup == o.name.as_str()
            }) {
                return Err(RestoreError::AlreadyRestoring {
                    backup: open.backup.clone(),
                    item_id: open.id,
                });
            }
        }
        let mut added = Vec::with_capacity(chosen.len());
        for o in chosen {
            let item = RestoreItem {
                id: book.next_id,
                target_id: req.target_id,
                backup: o.name.to_string(),
                size: o.size,
                sha256: o.sha256.clone(),
                storage_id: req.storage_id,
                overwrite: req.overwrite,
                status: RestoreStatus::Waiting,
                queued: now,
                ..RestoreItem::default()
            };
            book.next_id += 1;
            book.items.push(item.clone());
            added.push(item);
        }
        book.trim();
        tx.put_restores(&book)?;
        tx.audit(&actor.audit(
            now,
            "restore requested",
            format!("target:{}", req.target_id),
            format!(
                "{} backups into storage {}{}",
                added.len(),
                req.storage_id,
                if req.overwrite { ", overwrite" } else { "" }
            ),
        ))?;
        Ok(added)
    })
}

/// The next waiting item due now (oldest first), marked active; items left active by a
/// crash are due again ([`reset_active`] at start).
pub fn claim_next(store: &Store, now: UnixTime) -> Result<Option<RestoreItem>, StoreError> {
    store.write(|tx| {
        let mut book = tx.restores()?;
        let Some(item) = book
            .items
            .iter_mut()
            .find(|i| i.status == RestoreStatus::Waiting && i.retry_at.is_none_or(|t| t <= now))
        else {
            return Ok(None);
        };
        item.status = RestoreStatus::Active;
        item.started.get_or_insert(now);
        item.attempts += 1;
        let claimed = item.clone();
        tx.put_restores(&book)?;
        Ok(Some(claimed))
    })
}

/// At start: items a crash left active wait again (their partial copy resumes).
pub fn reset_active(store: &Store) -> Result<u64, StoreError> {
    store.write(|tx| {
        let mut book = tx.restores()?;
        let mut n = 0;
        for i in book.items.iter_mut() {
            if i.status == RestoreStatus::Active {
                i.status = RestoreStatus::Waiting;
                n += 1;
            }
        }
        if n > 0 {
            tx.put_restores(&book)?;
        }
        Ok(n)
    })
}

/// How one pull ended, for [`settle`].
#[derive(Debug)]
pub enum PullError {
    /// A different file is at the name and the restore did not ask to overwrite it.
    Exists,
    /// The name or the local path is unusable (a component is not a directory...).
    Local(io::Error),
    /// The bytes do not have the announced SHA-256: nothing was committed.
    Digest,
    /// The target sent more than the announced size: cut off, nothing committed.
    TooLong,
    /// The connection ended early or broke, or the target refused: resume later.
    Cut(String),
    /// The target no longer holds the copy.
    Gone(String),
    /// The daemon is stopping; the partial copy is kept.
    Stopped,
}

impl fmt::Display for PullError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PullError::Exists => f.write_str(
                "a different file exists at this name; restore with overwrite to replace it",
            ),
            PullError::Local(e) => write!(f, "local storage: {e}"),
            PullError::Digest => f.write_str(
                "the bytes the target sent do not have the SHA-256 it announced; nothing was written",
            ),
            PullError::TooLong => f.write_str(
                "the target sent more bytes than it announced; cut off, nothing was written",
            ),
            PullError::Cut(m) => write!(f, "interrupted: {m}"),
            PullError::Gone(m) => write!(f, "the target no longer holds it: {m}"),
            PullError::Stopped => f.write_str("stopped"),
        }
    }
}

/// How a pull that worked ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pulled {
    /// Written and committed; `received` bytes came over the link this time.
    Restored { received: u64 },
    /// The same bytes were already at the name: nothing to do.
    AlreadyThere,
}

/// What a fetch of the bytes from `offset` on gives: the bytes, or why not (`Gone` when
/// the target answered that it does not hold the copy, `Cut` otherwise).
pub type Fetch<'a> = dyn FnMut(u64) -> Result<Box<dyn Read + 'a>, PullError> + 'a;

/// The local paths of an item: its client directory under `root` (created, never through
/// a symlink), its final name and its partial name.
pub fn local_paths(root: &Path, name: &BackupName) -> io::Result<(PathBuf, PathBuf, PathBuf)> {
    let dir = fsx::ensure_dir_under(root, &[name.client()])?;
    let final_path = dir.join(name.file());
    let partial = dir.join(format!(".{}{PARTIAL_SUFFIX}", name.file()));
    Ok((dir, final_path, partial))
}

fn sha256_of(reader: &mut dyn Read, limit: u64, ctx: &mut Sha256) -> io::Result<u64> {
    let mut buf = vec![0u8; BUFFER];
    let mut done = 0u64;
    let mut r = reader.take(limit);
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            return Ok(done);
        }
        ctx.update(&buf[..n]);
        done += n as u64;
    }
}

/// Whether the regular file at `path` has the SHA-256 `expected` (false when absent).
fn holds(path: &Path, size: u64, expected: &[u8; 32]) -> Result<Option<bool>, PullError> {
    let mut f = match fsx::open_read(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(PullError::Local(e)),
    };
    if f.stat().len != size {
        return Ok(Some(false));
    }
    let mut ctx = Sha256::new(&SHA256);
    sha256_of(&mut f, size, &mut ctx).map_err(PullError::Local)?;
    Ok(Some(ctx.finish().as_ref() == expected))
}

/// The durable prefix of a partial copy to resume from, hashed into `ctx`: its length, or
/// 0 when there is none (or it is longer than the copy, or unreadable).
fn resume_point(partial: &Path, size: u64, ctx: &mut Sha256) -> u64 {
    let Ok(mut f) = fsx::open_read(partial) else {
        return 0;
    };
    let len = f.stat().len;
    if len > size {
        return 0;
    }
    match sha256_of(&mut f, len, ctx) {
        Ok(n) if n == len => len,
        _ => {
            *ctx = Sha256::new(&SHA256);
            0
        }
    }
}

/// Pulls one item into `root` (the local storage's path): see the module's rules.
/// `progress` is told the bytes held after each write.
pub fn pull(
    root: &Path,
    item: &RestoreItem,
    stop: &AtomicBool,
    progress: &dyn Fn(u64),
    fetch: &mut Fetch<'_>,
) -> Result<Pulled, PullError> {
    let name = BackupName::parse(&item.backup)
        .map_err(|e| PullError::Local(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
    let expected = hex::decode_array::<32>(&item.sha256).ok_or_else(|| {
        PullError::Local(io::Error::new(io::ErrorKind::InvalidInput, "bad sha256"))
    })?;
    let (dir, final_path, partial_path) = local_paths(root, &name).map_err(PullError::Local)?;
    match holds(&final_path, item.size, &expected)? {
        Some(true) => return Ok(Pulled::AlreadyThere),
        Some(false) if !item.overwrite => return Err(PullError::Exists),
        _ => {}
    }
    let mut ctx = Sha256::new(&SHA256);
    let keep = resume_point(&partial_path, item.size, &mut ctx);
    let mut partial = fsx::PartialFile::open(&partial_path, keep).map_err(PullError::Local)?;
    progress(keep);
    let mut received = 0u64;
    if keep < item.size {
        let mut source = fetch(keep)?;
        let copied = copy_exactly(
            &mut *source,
            &mut partial,
            item.size,
            &mut ctx,
            stop,
            progress,
        );
        received = partial.len() - keep;
        if let Err(e) = copied {
            return Err(match e {
                PullError::TooLong => {
                    let _ = partial.discard();
                    PullError::TooLong
                }
                other => {
                    // Keep what arrived for the next attempt.
                    partial.checkpoint().map_err(PullError::Local)?;
                    other
                }
            });
        }
    }
    if ctx.finish().as_ref() != expected {
        partial.discard().map_err(PullError::Local)?;
        return Err(PullError::Digest);
    }
    partial.sync_all().map_err(PullError::Local)?;
    // A file that appeared at the name during the pull is not replaced unless asked.
    if !item.overwrite && holds(&final_path, item.size, &expected)? == Some(false) {
        return Err(PullError::Exists);
    }
    partial.rename_into(&final_path).map_err(PullError::Local)?;
    fsx::sync_dir(&dir).map_err(PullError::Local)?;
    Ok(Pulled::Restored { received })
}

/// Copies from `source` into `partial` until it holds `size` bytes, hashing; reads one
/// byte past the end to refuse a target that sends more than it announced.
fn copy_exactly(
    source: &mut dyn Read,
    partial: &mut fsx::PartialFile,
    size: u64,
    ctx: &mut Sha256,
    stop: &AtomicBool,
    progress: &dyn Fn(u64),
) -> Result<(), PullError> {
    let mut buf = vec![0u8; BUFFER];
    let mut since_checkpoint = 0u64;
    while partial.len() < size {
        if stop.load(Ordering::Relaxed) {
            return Err(PullError::Stopped);
        }
        let want = (size - partial.len()).min(BUFFER as u64) as usize;
        let n = match source.read(&mut buf[..want]) {
            Ok(0) => {
                return Err(PullError::Cut(format!(
                    "the target's answer ended after {} of {size} bytes",
                    partial.len()
                )))
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(PullError::Cut(e.to_string())),
        };
        partial.write_all(&buf[..n]).map_err(PullError::Local)?;
        ctx.update(&buf[..n]);
        since_checkpoint += n as u64;
        if since_checkpoint >= CHECKPOINT_BYTES {
            partial.checkpoint().map_err(PullError::Local)?;
            since_checkpoint = 0;
        }
        progress(partial.len());
    }
    let mut probe = [0u8; 1];
    loop {
        match source.read(&mut probe) {
            Ok(0) => return Ok(()),
            Ok(_) => return Err(PullError::TooLong),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // The bytes are all here; how the stream ended after them does not matter.
            Err(_) => return Ok(()),
        }
    }
}

/// Records how an attempt ended: done, waiting again (with a backoff) or failed.
pub fn settle(
    store: &Store,
    id: u64,
    result: &Result<Pulled, PullError>,
    bytes_done: u64,
    actor: &Actor,
    now: UnixTime,
) -> Result<Option<RestoreItem>, StoreError> {
    store.write(|tx| {
        let mut book = tx.restores()?;
        let Some(item) = book.items.iter_mut().find(|i| i.id == id) else {
            return Ok(None);
        };
        item.bytes_done = bytes_done;
        let failed_copy = |item: &mut RestoreItem, why: String| {
            if item.attempts >= MAX_COPY_FAILURES {
                item.status = RestoreStatus::Failed;
                item.finished = Some(now);
            } else {
                item.status = RestoreStatus::Waiting;
                item.retry_at = Some(now + 2);
            }
            item.message = Some(why);
        };
        match result {
            Ok(pulled) => {
                if let Pulled::Restored { received } = pulled {
                    item.bytes_received = item.bytes_received.saturating_add(*received);
                }
                item.status = RestoreStatus::Done;
                item.finished = Some(now);
                item.bytes_done = item.size;
                item.message = (*pulled == Pulled::AlreadyThere)
                    .then(|| "already present with the same SHA-256".to_string());
            }
            Err(PullError::Exists) | Err(PullError::Local(_)) => {
                item.status = RestoreStatus::Failed;
                item.finished = Some(now);
                item.message = result.as_ref().err().map(ToString::to_string);
            }
            Err(e @ (PullError::Digest | PullError::TooLong | PullError::Gone(_))) => {
                failed_copy(item, e.to_string())
            }
            Err(e @ PullError::Cut(_)) => {
                item.status = RestoreStatus::Waiting;
                let backoff = 1i64 << item.attempts.min(6);
                item.retry_at = Some(now + backoff.min(MAX_BACKOFF));
                item.message = Some(e.to_string());
            }
            Err(PullError::Stopped) => {
                item.status = RestoreStatus::Waiting;
                item.attempts = item.attempts.saturating_sub(1);
            }
        }
        let settled = item.clone();
        if settled.status.is_finished() {
            tx.audit(&actor.audit(
                now,
                match settled.status {
                    RestoreStatus::Done => "backup restored",
                    _ => "restore failed",
                },
                format!("restore:{}", settled.id),
                format!(
                    "target {} backup {} storage {}{}",
                    settled.target_id,
                    settled.backup,
                    settled.storage_id,
                    settled
                        .message
                        .as_deref()
                        .map(|m| format!(": {m}"))
                        .unwrap_or_default()
                ),
            ))?;
        }
        tx.put_restores(&book)?;
        Ok(Some(settled))
    })
}

/// The copies a target holds for the source with `uuid` in its storage, that a restore
/// may read: a copy a verify found damaged is left out until it was fetched again.
pub fn held_for(
    store: &Store,
    uuid: &str,
    storage_id: u64,
) -> Result<Vec<ReceivedRecord>, StoreError> {
    Ok(store
        .received(uuid)?
        .into_iter()
        .filter(|r| r.storage_id == storage_id && r.damaged.is_none())
        .collect())
}

/// Opens a held copy for reading from `offset`, exactly up to its recorded `size`: a file
/// whose length is not the recorded one is refused (it changed since it was verified).
pub fn open_held(path: &Path, size: u64, offset: u64) -> io::Result<Box<dyn Read + Send>> {
    let mut f = fsx::open_read(path)?;
    if f.stat().len != size {
        return Err(io::Error::other(format!(
            "it holds {} bytes, {size} were recorded",
            f.stat().len
        )));
    }
    f.seek(io::SeekFrom::Start(offset))?;
    Ok(Box::new(f.take(size - offset)))
}

/// Live progress of the restores being pulled, for the queue API: bytes held locally and
/// bytes received over the link (over all attempts).
#[derive(Debug, Default)]
pub struct Board {
    held: Mutex<HashMap<u64, (u64, u64)>>,
}

impl Board {
    pub fn set(&self, id: u64, held: u64, received: u64) {
        lock(&self.held).insert(id, (held, received));
    }

    pub fn clear(&self, id: u64) {
        lock(&self.held).remove(&id);
    }

    pub fn get(&self, id: u64) -> Option<(u64, u64)> {
        lock(&self.held).get(&id).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::protocol::RestoreEntry;

    fn dir(name: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("replgate-restore-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("root")).unwrap();
        d
    }

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 3000) as u8).collect()
    }

    fn item(backup: &str, bytes: &[u8]) -> RestoreItem {
        RestoreItem {
            id: 1,
            backup: backup.into(),
            size: bytes.len() as u64,
            sha256: hex::encode(ring::digest::digest(&SHA256, bytes).as_ref()),
            ..RestoreItem::default()
        }
    }

    /// Gives `n` bytes, then fails as a cut connection does.
    struct CutAfter(Vec<u8>, usize);

    impl Read for CutAfter {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.1 >= self.0.len() {
                return Err(io::Error::new(io::ErrorKind::ConnectionReset, "cut"));
            }
            let n = buf.len().min(self.0.len() - self.1);
            buf[..n].copy_from_slice(&self.0[self.1..self.1 + n]);
            self.1 += n;
            Ok(n)
        }
    }

    fn no_progress(_: u64) {}

    #[test]
    fn a_cut_pull_resumes_from_the_partial_copy_and_commits_only_the_verified_bytes() {
        let d = dir("resume");
        let root = d.join("root");
        let bytes = data(3 * 1024 * 1024 + 17);
        let it = item("web01/mon.vbk", &bytes);
        let stop = AtomicBool::new(false);
        let cut_at = 1024 * 1024 + 5;
        let first = bytes[..cut_at].to_vec();
        let r = pull(&root, &it, &stop, &no_progress, &mut |off| {
            assert_eq!(off, 0);
            Ok(Box::new(CutAfter(first.clone(), 0)))
        });
        assert!(matches!(r, Err(PullError::Cut(_))), "{r:?}");
        assert!(!root.join("web01/mon.vbk").exists(), "nothing committed");
        assert_eq!(
            std::fs::metadata(root.join("web01/.mon.vbk.restore"))
                .unwrap()
                .len(),
            cut_at as u64
        );
        let mut offsets = Vec::new();
        let r = pull(&root, &it, &stop, &no_progress, &mut |off| {
            offsets.push(off);
            Ok(Box::new(io::Cursor::new(bytes[off as usize..].to_vec())))
        });
        assert_eq!(
            r.unwrap(),
            Pulled::Restored {
                received: (bytes.len() - cut_at) as u64
            }
        );
        assert_eq!(offsets, vec![cut_at as u64], "resumed, not restarted");
        assert_eq!(std::fs::read(root.join("web01/mon.vbk")).unwrap(), bytes);
        assert!(!root.join("web01/.mon.vbk.restore").exists());
        // Pulled again: the same bytes are there, nothing is fetched.
        let r = pull(&root, &it, &stop, &no_progress, &mut |_| {
            panic!("nothing to fetch")
        });
        assert_eq!(r.unwrap(), Pulled::AlreadyThere);
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn bytes_that_do_not_match_the_digest_commit_nothing() {
        let d = dir("digest");
        let root = d.join("root");
        let bytes = data(100_000);
        let it = item("c/b", &bytes);
        let mut evil = bytes.clone();
        evil[50_000] ^= 1;
        let r = pull(
            &root,
            &it,
            &AtomicBool::new(false),
            &no_progress,
            &mut |_| Ok(Box::new(io::Cursor::new(evil.clone()))),
        );
        assert!(matches!(r, Err(PullError::Digest)), "{r:?}");
        assert_eq!(std::fs::read_dir(root.join("c")).unwrap().count(), 0);
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn endless_data_is_cut_off_at_the_announced_size_and_commits_nothing() {
        let d = dir("endless");
        let root = d.join("root");
        let bytes = vec![7u8; 300_000];
        let it = item("c/b", &bytes);
        // The right bytes, and then more forever: cut at size + 1.
        let r = pull(
            &root,
            &it,
            &AtomicBool::new(false),
            &no_progress,
            &mut |_| Ok(Box::new(io::repeat(7))),
        );
        assert!(matches!(r, Err(PullError::TooLong)), "{r:?}");
        assert_eq!(std::fs::read_dir(root.join("c")).unwrap().count(), 0);
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn names_outside_the_storage_are_refused_before_any_path_is_built() {
        let d = dir("names");
        let root = d.join("root");
        for bad in [
            "../evil/x",
            "/etc/x",
            "c/../../evil",
            "c/.x",
            "a/b/c",
            "..",
            "",
        ] {
            let listing = RestoreListing {
                backups: vec![RestoreEntry {
                    backup: bad.into(),
                    size: 1,
                    sha256: "00".repeat(32),
                }],
            };
            assert!(
                matches!(check_listing(&listing), Err(RestoreError::BadListing(_))),
                "{bad:?}"
            );
            let it = item(bad, b"x");
            let r = pull(
                &root,
                &it,
                &AtomicBool::new(false),
                &no_progress,
                &mut |_| panic!("{bad:?} fetched"),
            );
            assert!(matches!(r, Err(PullError::Local(_))), "{bad:?}: {r:?}");
        }
        let written: Vec<_> = std::fs::read_dir(&d)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(written, vec![std::ffi::OsString::from("root")]);
        assert_eq!(std::fs::read_dir(&root).unwrap().count(), 0);
        // A digest that is not one, or a name listed twice, refuses the listing too.
        let entry = |b: &str, s: &str| RestoreEntry {
            backup: b.into(),
            size: 1,
            sha256: s.into(),
        };
        let good = "ab".repeat(32);
        for backups in [
            vec![entry("c/a", "xyz")],
            vec![entry("c/a", &good), entry("c/a", &good)],
        ] {
            assert!(check_listing(&RestoreListing { backups }).is_err());
        }
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn a_different_file_is_replaced_only_when_asked() {
        let d = dir("overwrite");
        let root = d.join("root");
        std::fs::create_dir_all(root.join("c")).unwrap();
        std::fs::write(root.join("c/b"), b"local, different").unwrap();
        let bytes = data(5000);
        let mut it = item("c/b", &bytes);
        let mut fetch = |_| -> Result<Box<dyn Read>, PullError> {
            Ok(Box::new(io::Cursor::new(bytes.clone())))
        };
        let stop = AtomicBool::new(false);
        let r = pull(&root, &it, &stop, &no_progress, &mut fetch);
        assert!(matches!(r, Err(PullError::Exists)), "{r:?}");
        assert_eq!(
            std::fs::read(root.join("c/b")).unwrap(),
            b"local, different"
        );
        it.overwrite = true;
        pull(&root, &it, &stop, &no_progress, &mut fetch).unwrap();
        assert_eq!(std::fs::read(root.join("c/b")).unwrap(), bytes);
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn selection_start_claim_and_settle() {
        let d = dir("flow");
        let store = Store::open(&d.join("db.redb")).unwrap();
        let e = |b: &str| RestoreEntry {
            backup: b.into(),
            size: 3,
            sha256: "AB".repeat(32),
        };
        let offered = check_listing(&RestoreListing {
            backups: vec![e("web/a"), e("web/b"), e("db/a")],
        })
        .unwrap();
        assert_eq!(offered[0].sha256, "ab".repeat(32));
        let web = choose(offered.clone(), &Selection::Clients(vec!["web".into()])).unwrap();
        assert_eq!(web.len(), 2);
        assert!(matches!(
            choose(offered.clone(), &Selection::Backups(vec!["db/zz".into()])),
            Err(RestoreError::NotOnTarget(_))
        ));
        assert!(matches!(
            choose(offered.clone(), &Selection::Clients(vec!["none".into()])),
            Err(RestoreError::NotOnTarget(_))
        ));
        assert!(matches!(
            choose(Vec::new(), &Selection::All),
            Err(RestoreError::Nothing)
        ));
        let actor = Actor {
            user: "root".into(),
            address: "127.0.0.1".into(),
        };
        let req = Request {
            target_id: 1,
            storage_id: 1,
            overwrite: false,
        };
        let items = start(&store, &req, &web, &actor, 10).unwrap();
        assert_eq!(items.iter().map(|i| i.id).collect::<Vec<_>>(), vec![1, 2]);
        assert!(matches!(
            start(&store, &req, &web[..1], &actor, 11),
            Err(RestoreError::AlreadyRestoring { item_id: 1, .. })
        ));
        let first = claim_next(&store, 12).unwrap().unwrap();
        assert_eq!(
            (first.id, first.status, first.attempts),
            (1, RestoreStatus::Active, 1)
        );
        let cut = Err(PullError::Cut("reset".into()));
        let s = settle(&store, 1, &cut, 2, &actor, 13).unwrap().unwrap();
        assert_eq!((s.status, s.bytes_done), (RestoreStatus::Waiting, 2));
        assert!(s.retry_at.unwrap() > 13);
        // Not due yet: the second item goes first.
        assert_eq!(claim_next(&store, 13).unwrap().unwrap().id, 2);
        assert_eq!(reset_active(&store).unwrap(), 1);
        let mut last = None;
        for now in [100, 200, 300] {
            let c = claim_next(&store, now).unwrap().unwrap();
            last = settle(&store, c.id, &Err(PullError::Digest), 0, &actor, now).unwrap();
            if c.id == 1 && last.as_ref().unwrap().status == RestoreStatus::Failed {
                break;
            }
        }
        let book = store.restores().unwrap();
        assert!(
            book.items.iter().any(|i| i.status == RestoreStatus::Failed),
            "{last:?}"
        );
        std::fs::remove_dir_all(d).unwrap();
    }
}
