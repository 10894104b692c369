//! The chunk index (target side, SPEC 18): for each source, where the target holds each
//! chunk it has received, so a deduplicated transfer sends only what is lacking.
//!
//! - `chunks`: (first 16 bytes of the chunk's SHA-256, the owner) → (file, offset,
//!   length), 44 bytes an entry, raw fixed-width integers (not JSON: there is one entry
//!   per distinct chunk a source stored). The owner ([`owner_of`]) is 8 bytes of the
//!   SHA-256 of the source's uuid, so a lookup in one source's scope is one point read and
//!   one in the whole target's a range. An entry names the newest ready file holding the
//!   chunk: a file's entries are published when it is recorded received, replacing those
//!   of older files.
//! - `chunk_files`: file id → [`ChunkFileRecord`]: whose file, which backup, its state
//!   (`partial` while it is received or rebuilt, `ready` once recorded), the stamp of the
//!   file that was indexed (device, inode, length, times), how far from its start the
//!   entries cover it.
//! - `chunk_stage`: (file id, offset) → (digest prefix, length): the entries of a file
//!   that is not ready yet, published (moved into `chunks`) once it is.
//! - `chunk_names`: (source uuid, backup name) → [`ChunkNames`]: the ready file of a
//!   received backup and the partial one of a copy in progress.
//!
//! Entries of deleted files stay until a purge ([`Txn::purge_chunks`]): a lookup that
//! finds one treats it as a miss, and a chunk sent again replaces it.

use std::collections::HashSet;

use redb::{ReadableTable, ReadableTableMetadata};
use serde::{Deserialize, Serialize};

use super::access::{self, Tables};
use super::schema::{self, DIGEST_KEY_LEN};
use super::{Result, Store, StoreError, Txn};
use crate::fsx::Stat;

/// The bytes of a chunk's SHA-256 the index keeps.
pub type DigestPrefix = [u8; 16];
/// A source's key in the index.
pub type Owner = [u8; 8];

/// The owner key of the source with `uuid`.
pub fn owner_of(uuid: &str) -> Owner {
    let d = ring::digest::digest(&ring::digest::SHA256, uuid.as_bytes());
    let mut o = [0u8; 8];
    o.copy_from_slice(&d.as_ref()[..8]);
    o
}

/// Where the target holds a chunk: a range of an indexed file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkLoc {
    pub file: u64,
    pub offset: u64,
    pub len: u32,
}

/// One chunk of a file not ready yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StagedChunk {
    pub offset: u64,
    pub len: u32,
    pub digest: DigestPrefix,
}

/// What identifies the bytes of an indexed file: a file whose stamp differs was changed,
/// replaced or moved since, and its entries are not used.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileStamp {
    pub dev: u64,
    pub ino: u64,
    pub len: u64,
    pub mtime: (i64, i64),
    pub ctime: (i64, i64),
}

impl FileStamp {
    pub fn of(s: &Stat) -> FileStamp {
        FileStamp {
            dev: s.dev,
            ino: s.ino,
            len: s.len,
            mtime: s.mtime,
            ctime: s.ctime,
        }
    }
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ChunkFileState {
    /// Being received or indexed: its entries are staged, never used.
    Partial,
    /// Recorded received: its entries are (being) published and used.
    Ready,
}

/// An indexed file.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChunkFileRecord {
    /// The source's uuid and the backup's name: the file is
    /// `<storage>/<uuid>/<backup>`.
    pub uuid: String,
    pub backup: String,
    pub storage_id: u64,
    pub size: u64,
    /// The source's version of the backup (modification time, ns).
    pub version: i64,
    pub state: ChunkFileState,
    /// The indexed file as it was when it became ready.
    #[serde(default)]
    pub stamp: Option<FileStamp>,
    /// The entries cover the file from its start to here without a gap.
    pub indexed_to: u64,
    /// Entries staged, not yet published.
    #[serde(default)]
    pub staged: u64,
}

impl ChunkFileRecord {
    /// Whether the entries cover the whole file.
    pub fn complete(&self) -> bool {
        self.indexed_to >= self.size
    }
}

/// The indexed files of one received backup.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChunkNames {
    /// The file of the copy recorded received.
    #[serde(default)]
    pub ready: Option<u64>,
    /// The file of a copy being received.
    #[serde(default)]
    pub partial: Option<u64>,
}

/// The size of the index, for the metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChunkCounts {
    pub entries: u64,
    pub staged: u64,
    pub files: u64,
}

fn loc_bytes(l: &ChunkLoc) -> [u8; 20] {
    let mut v = [0u8; 20];
    v[..8].copy_from_slice(&l.file.to_be_bytes());
    v[8..16].copy_from_slice(&l.offset.to_be_bytes());
    v[16..].copy_from_slice(&l.len.to_be_bytes());
    v
}

fn corrupt(table: &str, what: &str) -> StoreError {
    StoreError::Corrupt {
        table: table.into(),
        detail: what.into(),
    }
}

fn be64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(b);
    u64::from_be_bytes(a)
}

fn loc_of(v: &[u8]) -> Result<ChunkLoc> {
    if v.len() != 20 {
        return Err(corrupt("chunks", "entry is not 20 bytes"));
    }
    Ok(ChunkLoc {
        file: be64(&v[..8]),
        offset: be64(&v[8..16]),
        len: u32::from_be_bytes([v[16], v[17], v[18], v[19]]),
    })
}

fn staged_of(offset: u64, v: &[u8]) -> Result<StagedChunk> {
    if v.len() != 20 {
        return Err(corrupt("chunk_stage", "entry is not 20 bytes"));
    }
    let mut digest = [0u8; 16];
    digest.copy_from_slice(&v[..16]);
    Ok(StagedChunk {
        offset,
        len: u32::from_be_bytes([v[16], v[17], v[18], v[19]]),
        digest,
    })
}

/// Where the chunk `digest` is held: in `owner`'s scope (one entry at most), or, with
/// None, by any source (up to `limit`).
fn lookup(
    tx: &impl Tables,
    digest: &DigestPrefix,
    owner: Option<&Owner>,
    limit: usize,
) -> Result<Vec<(Owner, ChunkLoc)>> {
    let t = tx.open(schema::CHUNKS)?;
    let mut out = Vec::new();
    match owner {
        Some(o) => {
            if let Some(v) = t.get(schema::CHUNKS.key((digest, o)).as_slice())? {
                out.push((*o, loc_of(v.value())?));
            }
        }
        None => {
            let from = schema::CHUNKS.key((digest, &[0; 8]));
            let to = schema::CHUNKS.key((digest, &[0xff; 8]));
            for row in t.range(from.as_slice()..=to.as_slice())? {
                if out.len() >= limit {
                    break;
                }
                let (k, v) = row?;
                let mut o = [0u8; 8];
                o.copy_from_slice(&k.value()[16..DIGEST_KEY_LEN]);
                out.push((o, loc_of(v.value())?));
            }
        }
    }
    Ok(out)
}

impl Store {
    /// Looks each digest up in one snapshot (see [`lookup`]).
    pub fn chunk_lookups(
        &self,
        digests: &[DigestPrefix],
        owner: Option<&Owner>,
        limit: usize,
    ) -> Result<Vec<Vec<(Owner, ChunkLoc)>>> {
        let tx = self.snapshot()?;
        digests
            .iter()
            .map(|d| lookup(&tx, d, owner, limit))
            .collect()
    }

    pub fn chunk_file(&self, id: u64) -> Result<Option<ChunkFileRecord>> {
        access::get(&self.snapshot()?, schema::CHUNK_FILES, id)
    }

    /// Every indexed file, by id.
    pub fn chunk_files(&self) -> Result<Vec<(u64, ChunkFileRecord)>> {
        access::id_rows(&self.snapshot()?, schema::CHUNK_FILES, 0, usize::MAX)
    }

    pub fn chunk_names(&self, uuid: &str, backup: &str) -> Result<ChunkNames> {
        Ok(
            access::get(&self.snapshot()?, schema::CHUNK_NAMES, (uuid, backup))?
                .unwrap_or_default(),
        )
    }

    /// The staged entries of `file` from `offset` on, at most `limit`, in offset order.
    pub fn staged_chunks(&self, file: u64, offset: u64, limit: usize) -> Result<Vec<StagedChunk>> {
        staged(&self.snapshot()?, file, offset, limit)
    }

    pub fn chunk_counts(&self) -> Result<ChunkCounts> {
        let tx = self.snapshot()?;
        let entries = tx.open(schema::CHUNKS)?.len()?;
        let staged = tx.open(schema::CHUNK_STAGE)?.len()?;
        let files = tx.open(schema::CHUNK_FILES)?.len()?;
        Ok(ChunkCounts {
            entries,
            staged,
            files,
        })
    }
}

fn staged(tx: &impl Tables, file: u64, offset: u64, limit: usize) -> Result<Vec<StagedChunk>> {
    let from = schema::CHUNK_STAGE.key((file, offset));
    let to = schema::CHUNK_STAGE.key((file, u64::MAX));
    let mut out = Vec::new();
    for row in tx
        .open(schema::CHUNK_STAGE)?
        .range(from.as_slice()..=to.as_slice())?
    {
        if out.len() >= limit {
            break;
        }
        let (k, v) = row?;
        let (_, at) = access::key_of(schema::CHUNK_STAGE, k.value())?;
        out.push(staged_of(at, v.value())?);
    }
    Ok(out)
}

impl Txn {
    /// A fresh indexed-file id, never reused.
    pub fn next_chunk_file_id(&self) -> Result<u64> {
        self.take_id(schema::META_NEXT_CHUNK_FILE, 1)
    }

    pub fn chunk_file(&self, id: u64) -> Result<Option<ChunkFileRecord>> {
        access::get(&self.inner, schema::CHUNK_FILES, id)
    }

    pub fn put_chunk_file(&self, id: u64, r: &ChunkFileRecord) -> Result<()> {
        self.put(schema::CHUNK_FILES, id, r)
    }

    /// Forgets an indexed file: its record and staged entries. Its published entries
    /// stay until a purge (lookups that find them treat them as misses).
    pub fn delete_chunk_file(&self, id: u64) -> Result<()> {
        self.remove(schema::CHUNK_FILES, id)?;
        let from = schema::CHUNK_STAGE.key((id, 0));
        let to = schema::CHUNK_STAGE.key((id, u64::MAX));
        let mut t = self.table(schema::CHUNK_STAGE)?;
        let keys: Vec<Vec<u8>> = t
            .range(from.as_slice()..=to.as_slice())?
            .map(|r| r.map(|(k, _)| k.value().to_vec()))
            .collect::<std::result::Result<_, _>>()?;
        for k in keys {
            t.remove(k.as_slice())?;
        }
        Ok(())
    }

    pub fn chunk_names(&self, uuid: &str, backup: &str) -> Result<ChunkNames> {
        Ok(access::get(&self.inner, schema::CHUNK_NAMES, (uuid, backup))?.unwrap_or_default())
    }

    pub fn put_chunk_names(&self, uuid: &str, backup: &str, n: &ChunkNames) -> Result<()> {
        if *n == ChunkNames::default() {
            self.remove(schema::CHUNK_NAMES, (uuid, backup))?;
            return Ok(());
        }
        self.put(schema::CHUNK_NAMES, (uuid, backup), n)
    }

    /// Stages entries of the not yet ready `file`.
    pub fn stage_chunks(&self, file: u64, chunks: &[StagedChunk]) -> Result<()> {
        let mut t = self.table(schema::CHUNK_STAGE)?;
        for c in chunks {
            let mut v = [0u8; 20];
            v[..16].copy_from_slice(&c.digest);
            v[16..].copy_from_slice(&c.len.to_be_bytes());
            t.insert(schema::CHUNK_STAGE.key((file, c.offset)).as_slice(), &v[..])?;
        }
        Ok(())
    }

    /// Publishes up to `limit` staged entries of `file` (owned by `owner`): each becomes
    /// the index entry of its chunk for that owner, replacing an older file's. Returns how
    /// many it moved.
    pub fn publish_chunks(&self, file: u64, owner: &Owner, limit: usize) -> Result<u64> {
        let batch = staged(&self.inner, file, 0, limit)?;
        let mut index = self.table(schema::CHUNKS)?;
        let mut stage = self.table(schema::CHUNK_STAGE)?;
        for c in &batch {
            let loc = ChunkLoc {
                file,
                offset: c.offset,
                len: c.len,
            };
            index.insert(
                schema::CHUNKS.key((&c.digest, owner)).as_slice(),
                &loc_bytes(&loc)[..],
            )?;
            stage.remove(schema::CHUNK_STAGE.key((file, c.offset)).as_slice())?;
        }
        Ok(batch.len() as u64)
    }

    /// Removes up to `limit` index entries whose file is not in `live`, scanning from
    /// `after` (a key, exclusive); returns the removed count and where to go on (None at
    /// the end of the table).
    pub fn purge_chunks(
        &self,
        after: Option<&[u8]>,
        limit: usize,
        live: &HashSet<u64>,
    ) -> Result<(u64, Option<Vec<u8>>)> {
        let mut t = self.table(schema::CHUNKS)?;
        let mut dead = Vec::new();
        let mut last = None;
        let mut seen = 0;
        {
            let rows = match after {
                Some(a) => {
                    t.range::<&[u8]>((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded))?
                }
                None => t.range::<&[u8]>(..)?,
            };
            for row in rows {
                let (k, v) = row?;
                seen += 1;
                if !live.contains(&loc_of(v.value())?.file) {
                    dead.push(k.value().to_vec());
                }
                last = Some(k.value().to_vec());
                if seen >= limit {
                    break;
                }
            }
        }
        for k in &dead {
            t.remove(k.as_slice())?;
        }
        Ok((dead.len() as u64, if seen >= limit { last } else { None }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn staged_chunk(offset: u64, d: u8) -> StagedChunk {
        StagedChunk {
            offset,
            len: 100,
            digest: [d; 16],
        }
    }

    fn record(uuid: &str, state: ChunkFileState) -> ChunkFileRecord {
        ChunkFileRecord {
            uuid: uuid.into(),
            backup: "c/b".into(),
            storage_id: 1,
            size: 300,
            version: 1,
            state,
            stamp: None,
            indexed_to: 300,
            staged: 3,
        }
    }

    #[test]
    fn published_entries_are_found_in_their_owners_scope_and_replace_older_files() {
        let (store, dir) = super::super::temp_store("chunks");
        let (a, b) = (owner_of("u-a"), owner_of("u-b"));
        store
            .write(|tx| {
                let f1 = tx.next_chunk_file_id()?;
                tx.put_chunk_file(f1, &record("u-a", ChunkFileState::Ready))?;
                tx.stage_chunks(f1, &[staged_chunk(0, 1), staged_chunk(100, 2)])?;
                assert_eq!(tx.publish_chunks(f1, &a, 1)?, 1);
                assert_eq!(tx.publish_chunks(f1, &a, 10)?, 1);
                assert_eq!(tx.publish_chunks(f1, &a, 10)?, 0);
                let f2 = tx.next_chunk_file_id()?;
                tx.stage_chunks(f2, &[staged_chunk(200, 2)])?;
                tx.publish_chunks(f2, &a, 10)?;
                let f3 = tx.next_chunk_file_id()?;
                tx.stage_chunks(f3, &[staged_chunk(0, 2)])?;
                tx.publish_chunks(f3, &b, 10)?;
                Ok::<_, StoreError>(())
            })
            .unwrap();
        let found = store
            .chunk_lookups(&[[1; 16], [2; 16], [3; 16]], Some(&a), 8)
            .unwrap();
        assert_eq!(
            found[0][0].1,
            ChunkLoc {
                file: 1,
                offset: 0,
                len: 100
            }
        );
        // The newer file of the same owner replaced the entry; another owner's is apart.
        assert_eq!(
            found[1],
            vec![(
                a,
                ChunkLoc {
                    file: 2,
                    offset: 200,
                    len: 100
                }
            )]
        );
        assert!(found[2].is_empty());
        let everyone = store.chunk_lookups(&[[2; 16]], None, 8).unwrap();
        assert_eq!(everyone[0].len(), 2);
        assert_eq!(store.chunk_counts().unwrap().entries, 3);
        assert_eq!(store.chunk_counts().unwrap().staged, 0);
        // Files 2 and 3 are gone: a purge in small steps removes their entries.
        let live: HashSet<u64> = [1].into();
        let mut after = None;
        let mut removed = 0;
        loop {
            let (n, next) = store
                .write(|tx| tx.purge_chunks(after.as_deref(), 1, &live))
                .unwrap();
            removed += n;
            match next {
                Some(k) => after = Some(k),
                None => break,
            }
        }
        assert_eq!(removed, 2);
        assert_eq!(store.chunk_counts().unwrap().entries, 1);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn deleting_a_file_drops_its_record_and_staged_entries_only() {
        let (store, dir) = super::super::temp_store("chunk-files");
        store
            .write(|tx| {
                tx.put_chunk_file(5, &record("u", ChunkFileState::Partial))?;
                tx.stage_chunks(5, &[staged_chunk(0, 1), staged_chunk(100, 2)])?;
                tx.stage_chunks(6, &[staged_chunk(0, 3)])?;
                tx.put_chunk_names(
                    "u",
                    "c/b",
                    &ChunkNames {
                        ready: None,
                        partial: Some(5),
                    },
                )?;
                Ok::<_, StoreError>(())
            })
            .unwrap();
        assert_eq!(
            store.staged_chunks(5, 50, 10).unwrap(),
            vec![staged_chunk(100, 2)]
        );
        assert_eq!(store.chunk_names("u", "c/b").unwrap().partial, Some(5));
        store
            .write(|tx| {
                tx.delete_chunk_file(5)?;
                tx.put_chunk_names("u", "c/b", &ChunkNames::default())
            })
            .unwrap();
        assert!(store.chunk_file(5).unwrap().is_none());
        assert!(store.staged_chunks(5, 0, 10).unwrap().is_empty());
        assert_eq!(store.staged_chunks(6, 0, 10).unwrap().len(), 1);
        assert_eq!(
            store.chunk_names("u", "c/b").unwrap(),
            ChunkNames::default()
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
