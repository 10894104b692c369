//! The chunk index's life (target side, SPEC 18; the tables are `store::chunks`):
//!
//! - A copy received in chunks stages the chunks it is made of as it goes ([`stage`], lazy
//!   commits after each checkpoint, for what the checkpoint made durable), and the
//!   transaction that records it received makes its indexed file ready ([`on_commit`]);
//!   its entries are then published, the first [`PUBLISH_STEP`] in that transaction, the
//!   rest right after ([`publish_all`]).
//! - A copy that was not received in chunks from its first byte to its last (sent whole,
//!   by an older source, switched off for having nothing in common, resumed across a gap)
//!   is indexed from the file itself by the index job ([`catch_up`]), as is every copy
//!   whose indexed file is missing (a database restored, an index lost) or stale (the
//!   file changed since). The job also drops indexed files no backup names any more,
//!   publishes what a crash left staged, and purges entries of files that are gone.
//!
//! Lookups never trust the index blindly: a file is used only while it is exactly the
//! file indexed, and every borrowed chunk is read back and re-hashed (`receiver::holdings`).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};

use super::chunker::{Chunker, Params};
use super::names::BackupName;
use crate::config::Storage;
use crate::fsx;
use crate::store::{
    owner_of, ChunkFileRecord, ChunkFileState, FileStamp, ReceivedRecord, StagedChunk, Store,
    StoreError, Txn,
};
use crate::wire::transfer::DIGEST_PREFIX;

/// Files smaller than this are neither sent in chunks nor indexed: a list's round trip and
/// an index entry per chunk are not worth it for them.
pub const MIN_DEDUP_SIZE: u64 = 1024 * 1024;
/// Entries moved from staging into the index per transaction.
pub const PUBLISH_STEP: usize = 65_536;
/// Entries staged per transaction when the job indexes a file.
const STAGE_STEP: usize = 8_192;
/// Index entries looked at per transaction of a purge.
const PURGE_STEP: usize = 65_536;

/// What a copy received in chunks brings to its commit: the entries not staged yet, and
/// its indexed file if one was started.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IndexTail {
    pub file: Option<u64>,
    pub entries: Vec<StagedChunk>,
    /// The entries (staged and these) cover the copy from its start to here.
    pub indexed_to: u64,
}

/// The backup an indexed file belongs to.
pub struct FileOf<'a> {
    pub uuid: &'a str,
    pub backup: &'a str,
    pub storage_id: u64,
    pub size: u64,
    pub version: i64,
}

impl FileOf<'_> {
    fn record(&self, state: ChunkFileState, indexed_to: u64, staged: u64) -> ChunkFileRecord {
        ChunkFileRecord {
            uuid: self.uuid.to_string(),
            backup: self.backup.to_string(),
            storage_id: self.storage_id,
            size: self.size,
            version: self.version,
            state,
            stamp: None,
            indexed_to,
            staged,
        }
    }
}

/// Stages `entries` (which continue the coverage up to `indexed_to`) for the copy in
/// progress, creating its indexed file on first use (`file`). Runs in the caller's
/// transaction.
pub fn stage(
    tx: &Txn,
    of: &FileOf<'_>,
    file: &mut Option<u64>,
    entries: &[StagedChunk],
    indexed_to: u64,
) -> Result<(), StoreError> {
    let id = match *file {
        Some(id) => id,
        None => {
            let id = tx.next_chunk_file_id()?;
            let mut names = tx.chunk_names(of.uuid, of.backup)?;
            if let Some(old) = names.partial.replace(id) {
                tx.delete_chunk_file(old)?;
            }
            tx.put_chunk_names(of.uuid, of.backup, &names)?;
            *file = Some(id);
            id
        }
    };
    let staged = match tx.chunk_file(id)? {
        Some(r) => r.staged,
        None => 0,
    };
    tx.stage_chunks(id, entries)?;
    tx.put_chunk_file(
        id,
        &of.record(
            ChunkFileState::Partial,
            indexed_to,
            staged + entries.len() as u64,
        ),
    )
}

/// The indexed file of the partial copy of `backup`, if its entries reach exactly
/// `offset` (a resume there continues them).
pub fn resumable(store: &Store, uuid: &str, backup: &str, offset: u64) -> Option<u64> {
    let id = store.chunk_names(uuid, backup).ok()?.partial?;
    let r = store.chunk_file(id).ok()??;
    (r.state == ChunkFileState::Partial && r.indexed_to == offset).then_some(id)
}

/// Forgets the indexed file of a partial copy that is dropped. Runs in the caller's
/// transaction.
pub fn drop_partial(tx: &Txn, uuid: &str, backup: &str) -> Result<(), StoreError> {
    let mut names = tx.chunk_names(uuid, backup)?;
    if let Some(id) = names.partial.take() {
        tx.delete_chunk_file(id)?;
        tx.put_chunk_names(uuid, backup, &names)?;
    }
    Ok(())
}

/// In the transaction that records a copy received: the copy's indexed file becomes its
/// ready one (when `tail` covers it whole) with the `stamp` of the file in place, and the
/// first entries are published; otherwise the copy is left to the index job. The indexed
/// file of the copy it replaces is dropped. Returns the file whose entries are still to be
/// published.
pub fn on_commit(
    tx: &Txn,
    of: &FileOf<'_>,
    stamp: Option<FileStamp>,
    tail: Option<&IndexTail>,
) -> Result<Option<u64>, StoreError> {
    let mut names = tx.chunk_names(of.uuid, of.backup)?;
    let partial = names.partial.take();
    let old = names.ready.take();
    let whole = tail.filter(|t| t.indexed_to >= of.size && stamp.is_some());
    let ready = match whole {
        Some(t) => {
            let id = match t.file.or(partial) {
                Some(id) => id,
                None => tx.next_chunk_file_id()?,
            };
            let staged = tx.chunk_file(id)?.map(|r| r.staged).unwrap_or(0);
            tx.stage_chunks(id, &t.entries)?;
            let mut r = of.record(
                ChunkFileState::Ready,
                of.size,
                staged + t.entries.len() as u64,
            );
            r.stamp = stamp;
            tx.put_chunk_file(id, &r)?;
            Some(id)
        }
        None => None,
    };
    for stale in [partial, old].into_iter().flatten() {
        if Some(stale) != ready {
            tx.delete_chunk_file(stale)?;
        }
    }
    names.ready = ready;
    tx.put_chunk_names(of.uuid, of.backup, &names)?;
    if let Some(id) = ready {
        publish_step(tx, id)?;
    }
    Ok(ready)
}

/// Publishes up to [`PUBLISH_STEP`] staged entries of the ready file `id`; returns how
/// many are left.
fn publish_step(tx: &Txn, id: u64) -> Result<u64, StoreError> {
    let Some(mut r) = tx.chunk_file(id)? else {
        return Ok(0);
    };
    if r.state != ChunkFileState::Ready || r.staged == 0 {
        return Ok(0);
    }
    let moved = tx.publish_chunks(id, &owner_of(&r.uuid), PUBLISH_STEP)?;
    r.staged = if moved < PUBLISH_STEP as u64 {
        0
    } else {
        r.staged.saturating_sub(moved).max(1)
    };
    tx.put_chunk_file(id, &r)?;
    Ok(r.staged)
}

/// Publishes every staged entry of the ready file `id`, a step per transaction.
pub fn publish_all(store: &Store, id: u64) -> Result<(), StoreError> {
    while store.write(|tx| publish_step(tx, id))? > 0 {}
    Ok(())
}

/// What one pass of the index job did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct CatchUp {
    /// Copies indexed from their files.
    pub indexed: u64,
    /// Copies that still need it (the pass was stopped, or a file could not be read).
    pub pending: u64,
    /// Indexed files dropped (no backup names them any more).
    pub dropped: u64,
    /// Index entries of files that are gone, removed.
    pub purged: u64,
}

/// One pass of the index job over every storage: drops indexed files nothing names,
/// publishes leftovers, indexes every received copy of at least [`MIN_DEDUP_SIZE`] whose
/// indexed file is missing, incomplete or stale, and with `purge` removes the entries of
/// files that are gone. Stops early (counting what is left as pending) once `stop` is set.
pub fn catch_up(
    store: &Store,
    storages: &[Storage],
    purge: bool,
    stop: &AtomicBool,
) -> Result<CatchUp, StoreError> {
    let mut out = CatchUp::default();
    let files = store.chunk_files()?;
    let partial_rows: HashSet<(String, String)> = store
        .partials()?
        .into_iter()
        .map(|(u, p)| (u, p.backup))
        .collect();
    let mut live = HashSet::new();
    for (id, r) in &files {
        let names = store.chunk_names(&r.uuid, &r.backup)?;
        let named = match r.state {
            ChunkFileState::Ready => names.ready == Some(*id),
            ChunkFileState::Partial => {
                names.partial == Some(*id)
                    && partial_rows.contains(&(r.uuid.clone(), r.backup.clone()))
            }
        };
        if !named {
            let dropped = store.write(|tx| {
                // Looked at again inside the write: a session may have just named it.
                let n = tx.chunk_names(&r.uuid, &r.backup)?;
                if n.ready == Some(*id) || n.partial == Some(*id) {
                    return Ok::<_, StoreError>(false);
                }
                tx.delete_chunk_file(*id)?;
                Ok(true)
            })?;
            if dropped {
                out.dropped += 1;
                continue;
            }
        }
        live.insert(*id);
        if r.state == ChunkFileState::Ready && r.staged > 0 {
            publish_all(store, *id)?;
        }
    }
    for storage in storages {
        for uuid in sources_on(storage) {
            for rec in store.received(&uuid)? {
                if stop.load(Ordering::SeqCst) {
                    out.pending += 1;
                    continue;
                }
                match index_copy(store, storage, &uuid, &rec, stop)? {
                    Indexed::Already => {}
                    Indexed::Now(id) => {
                        live.insert(id);
                        out.indexed += 1;
                    }
                    Indexed::NotNow => out.pending += 1,
                }
            }
        }
    }
    if purge && !stop.load(Ordering::SeqCst) {
        out.purged = purge_entries(store, stop)?;
    }
    Ok(out)
}

/// The source uuids with a directory on `storage` (those are the ones that received).
fn sources_on(storage: &Storage) -> Vec<String> {
    fsx::entries(&storage.path)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.stat.as_ref().is_ok_and(|s| s.is_dir))
                .filter_map(|e| e.name.into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

enum Indexed {
    Already,
    Now(u64),
    NotNow,
}

/// Indexes one received copy from its file unless its ready indexed file is whole and is
/// still the file in place.
fn index_copy(
    store: &Store,
    storage: &Storage,
    uuid: &str,
    rec: &ReceivedRecord,
    stop: &AtomicBool,
) -> Result<Indexed, StoreError> {
    if rec.storage_id != storage.id || rec.size < MIN_DEDUP_SIZE || rec.damaged.is_some() {
        return Ok(Indexed::Already);
    }
    let Ok(name) = BackupName::parse(&rec.backup) else {
        return Ok(Indexed::Already);
    };
    let parts = [uuid, name.client(), name.file()];
    let current = store.chunk_names(uuid, &rec.backup)?.ready;
    let on_disk = fsx::lstat(&storage.path.join(uuid).join(name.as_str()))
        .ok()
        .map(|s| FileStamp::of(&s));
    if let Some(id) = current {
        if let Some(r) = store.chunk_file(id)? {
            if r.complete() && r.stamp.is_some() && r.stamp == on_disk {
                return Ok(Indexed::Already);
            }
        }
    }
    let Ok(mut file) = fsx::open_read_under(&storage.path, &parts) else {
        return Ok(Indexed::NotNow);
    };
    let before = FileStamp::of(file.stat());
    if before.len != rec.size {
        return Ok(Indexed::NotNow);
    }
    let of = FileOf {
        uuid,
        backup: &rec.backup,
        storage_id: storage.id,
        size: rec.size,
        version: rec.version,
    };
    let mut id = None;
    let mut chunker = Chunker::new(Params::standard(), 0);
    let mut batch = Vec::with_capacity(STAGE_STEP);
    let cut = |batch: &mut Vec<StagedChunk>, id: &mut Option<u64>, to: u64| {
        let r = store.write_lazy(|tx| stage(tx, &of, id, batch, to));
        batch.clear();
        r
    };
    loop {
        if stop.load(Ordering::SeqCst) {
            abandon(store, uuid, &rec.backup, id)?;
            return Ok(Indexed::NotNow);
        }
        let next = match chunker.next_chunk(&mut file, |_| {}) {
            Ok(n) => n,
            Err(e) => {
                log::warn!("chunk index: read {uuid}/{}: {e}", rec.backup);
                abandon(store, uuid, &rec.backup, id)?;
                return Ok(Indexed::NotNow);
            }
        };
        let Some(c) = next else { break };
        let mut digest = [0u8; DIGEST_PREFIX];
        digest.copy_from_slice(&c.digest[..DIGEST_PREFIX]);
        batch.push(StagedChunk {
            offset: c.offset,
            len: c.len,
            digest,
        });
        if batch.len() >= STAGE_STEP {
            cut(&mut batch, &mut id, c.end())?;
        }
    }
    cut(&mut batch, &mut id, rec.size)?;
    let Some(new) = id else {
        return Ok(Indexed::NotNow);
    };
    // The file must not have changed while it was read, nor the record meanwhile.
    let after = fsx::open_read_under(&storage.path, &parts)
        .ok()
        .map(|f| FileStamp::of(f.stat()));
    let made_ready = store.write(|tx| {
        let same = tx.received_one(uuid, &rec.backup)?.as_ref() == Some(rec)
            && after == Some(before)
            && tx.chunk_names(uuid, &rec.backup)?.ready == current;
        if !same {
            drop_partial(tx, uuid, &rec.backup)?;
            return Ok::<_, StoreError>(false);
        }
        let tail = IndexTail {
            file: Some(new),
            entries: Vec::new(),
            indexed_to: rec.size,
        };
        let mut names = tx.chunk_names(uuid, &rec.backup)?;
        names.partial = Some(new);
        tx.put_chunk_names(uuid, &rec.backup, &names)?;
        on_commit(tx, &of, Some(before), Some(&tail))?;
        Ok(true)
    })?;
    if !made_ready {
        return Ok(Indexed::NotNow);
    }
    publish_all(store, new)?;
    log::info!(
        "chunk index: {uuid}/{} indexed from its file ({} bytes)",
        rec.backup,
        rec.size
    );
    Ok(Indexed::Now(new))
}

/// Drops what an interrupted indexing of a copy staged.
fn abandon(store: &Store, uuid: &str, backup: &str, id: Option<u64>) -> Result<(), StoreError> {
    if id.is_some() {
        store.write(|tx| drop_partial(tx, uuid, backup))?;
    }
    Ok(())
}

/// Removes the index entries of files that are gone, a step per transaction.
fn purge_entries(store: &Store, stop: &AtomicBool) -> Result<u64, StoreError> {
    let live: HashSet<u64> = store.chunk_files()?.into_iter().map(|(id, _)| id).collect();
    let mut after: Option<Vec<u8>> = None;
    let mut purged = 0;
    loop {
        let (n, next) = store.write(|tx| tx.purge_chunks(after.as_deref(), PURGE_STEP, &live))?;
        purged += n;
        match next {
            Some(k) if !stop.load(Ordering::SeqCst) => after = Some(k),
            _ => return Ok(purged),
        }
    }
}
