//! What the target already holds, as one deduplicating session sees it ([`Holdings`]):
//! the chunk index's answer for each listed chunk, and the held chunk's bytes read back
//! and checked against its digest before they go into a new copy.
//!
//! Only ready files of the same storage count, and with the default scope only the
//! source's own (`<storage>/<uuid>/...`); each is opened below the storage one level at a
//! time without following a symlink (`fsx::open_read_under`), and used only while it is
//! the very file that was indexed (device, inode, length and times as recorded), so a
//! file that changed, moved or vanished makes its chunks lacking, and they are asked for.
//! Open files are few ([`MAX_OPEN`]) and what is known of files is bounded too.

use std::collections::{HashMap, VecDeque};
use std::fmt;

use crate::config::Storage;
use crate::fsx::{self, ReadFile};
use crate::replication::chunker::sha256;
use crate::replication::names::BackupName;
use crate::store::{
    owner_of, ChunkFileState, ChunkLoc, DigestPrefix, FileStamp, Owner, Store, StoreError,
};
use crate::wire::transfer::DIGEST_PREFIX;

/// Whether the held chunk `next` starts in `prev`'s file where `prev` ends: such chunks
/// are read back as one run.
pub(super) fn continues(prev: &ChunkLoc, next: &ChunkLoc) -> bool {
    next.file == prev.file && prev.offset.checked_add(u64::from(prev.len)) == Some(next.offset)
}

/// Which received copies a session may take chunks from (`dedup_scope`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// The source's own copies only (the default): nothing tells one tenant what another
    /// holds.
    Source,
    /// Every source's copies on the same storage.
    Target,
}

/// Held files open at once, at most; more are opened again when needed.
pub(super) const MAX_OPEN: usize = 16;
/// Files whose usability is remembered, at most (then forgotten and looked at again).
const MAX_KNOWN: usize = 4096;
/// Candidates looked at per chunk in the target's scope.
const CANDIDATES: usize = 4;

/// Why a held chunk could not be used.
#[derive(Debug)]
pub enum BorrowError {
    /// Its file is no longer usable (changed, gone), or its bytes do not match the digest.
    Changed(String),
    /// The database failed.
    Store(StoreError),
}

impl fmt::Display for BorrowError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BorrowError::Changed(m) => f.write_str(m),
            BorrowError::Store(e) => write!(f, "database: {e}"),
        }
    }
}

/// The held copies one session borrows chunks from.
pub struct Holdings<'a> {
    store: &'a Store,
    storage: &'a Storage,
    uuid: &'a str,
    scope: Scope,
    owner: Owner,
    /// File id → its open file, or None when it is not usable.
    known: HashMap<u64, Option<ReadFile>>,
    /// Open files, least recently opened first.
    open: VecDeque<u64>,
}

impl<'a> Holdings<'a> {
    pub fn new(store: &'a Store, storage: &'a Storage, uuid: &'a str, scope: Scope) -> Self {
        Holdings {
            store,
            storage,
            uuid,
            scope,
            owner: owner_of(uuid),
            known: HashMap::new(),
            open: VecDeque::new(),
        }
    }

    /// For each listed chunk (length, digest prefix), where a usable held copy of it is.
    pub fn find(
        &mut self,
        list: &[(u32, DigestPrefix)],
    ) -> Result<Vec<Option<ChunkLoc>>, StoreError> {
        let digests: Vec<DigestPrefix> = list.iter().map(|(_, d)| *d).collect();
        let owner = match self.scope {
            Scope::Source => Some(&self.owner),
            Scope::Target => None,
        };
        let found = self.store.chunk_lookups(&digests, owner, CANDIDATES)?;
        let mut out = Vec::with_capacity(list.len());
        for ((len, _), candidates) in list.iter().zip(found) {
            let mut pick = None;
            for (_, loc) in candidates {
                if loc.len == *len && self.usable(loc.file)? {
                    pick = Some(loc);
                    break;
                }
            }
            out.push(pick);
        }
        Ok(out)
    }

    /// Reads the held chunks of `run` into `buf` (resized to them) with one read and
    /// checks each against its digest. The run must lie in one file, each chunk where the
    /// one before it ends ([`continues`]; anything else is refused unread). On a mismatch
    /// the file is not used again in this session.
    pub fn read_run(
        &mut self,
        run: &[(ChunkLoc, DigestPrefix)],
        buf: &mut Vec<u8>,
    ) -> Result<(), BorrowError> {
        buf.clear();
        let Some((first, _)) = run.first() else {
            return Ok(());
        };
        let file = first.file;
        if run.windows(2).any(|w| !continues(&w[0].0, &w[1].0)) {
            return Err(BorrowError::Changed(format!(
                "held chunks of file {file} that do not follow each other"
            )));
        }
        if !self.usable(file).map_err(BorrowError::Store)? {
            return Err(BorrowError::Changed(format!(
                "held file {file} is no longer usable"
            )));
        }
        let total: usize = run.iter().map(|(loc, _)| loc.len as usize).sum();
        buf.resize(total, 0);
        let read = match self.known.get(&file) {
            Some(Some(f)) => f.read_exact_at(buf, first.offset),
            _ => Err(std::io::Error::other("not open")),
        };
        let mut at = 0usize;
        let mut wrong = None;
        if read.is_ok() {
            for (loc, digest) in run {
                let end = at + loc.len as usize;
                if sha256(&buf[at..end])[..DIGEST_PREFIX] != digest[..] {
                    wrong = Some(loc.offset);
                    break;
                }
                at = end;
            }
            if wrong.is_none() {
                return Ok(());
            }
        }
        self.forget(file);
        Err(BorrowError::Changed(match (read, wrong) {
            (Err(e), _) => format!("read of held file {file}: {e}"),
            (Ok(()), offset) => format!(
                "the chunk at {} of held file {file} no longer has its digest",
                offset.unwrap_or(first.offset)
            ),
        }))
    }

    /// Marks `file` unusable for the rest of the session.
    pub fn forget(&mut self, file: u64) {
        self.open.retain(|f| *f != file);
        self.known.insert(file, None);
    }

    /// Whether `file` is a ready copy this session may read, as it was indexed; opens it.
    /// (A file closed to make room is forgotten, so it is opened and checked again.)
    fn usable(&mut self, file: u64) -> Result<bool, StoreError> {
        if let Some(known) = self.known.get(&file) {
            return Ok(known.is_some());
        }
        if self.known.len() >= MAX_KNOWN {
            self.known.clear();
            self.open.clear();
        }
        let opened = self.open_file(file)?;
        let usable = opened.is_some();
        self.known.insert(file, opened);
        if usable {
            self.open.push_back(file);
            while self.open.len() > MAX_OPEN {
                if let Some(old) = self.open.pop_front() {
                    self.known.remove(&old);
                }
            }
        }
        Ok(usable)
    }

    /// The file's record, checked, and the file opened and compared with its stamp.
    fn open_file(&self, file: u64) -> Result<Option<ReadFile>, StoreError> {
        let Some(r) = self.store.chunk_file(file)? else {
            return Ok(None);
        };
        let in_scope = self.scope == Scope::Target || r.uuid == self.uuid;
        if r.state != ChunkFileState::Ready || r.storage_id != self.storage.id || !in_scope {
            return Ok(None);
        }
        let Ok(name) = BackupName::parse(&r.backup) else {
            return Ok(None);
        };
        let parts = [r.uuid.as_str(), name.client(), name.file()];
        let Ok(f) = fsx::open_read_under(&self.storage.path, &parts) else {
            return Ok(None);
        };
        let same = r.stamp == Some(FileStamp::of(f.stat()));
        Ok(same.then_some(f))
    }
}
