//! The state of a file received in chunks (`chunks` feature, SPEC 18; the frames are
//! handled in `lists.rs`): the source lists the file's
//! content-defined chunks (`Chunks`), the target answers which it lacks (`Lacks`) after
//! looking each up in its chunk index ([`Holdings`]), and the bytes of the lacking ones
//! follow in `Data`, in order. The file is assembled in its partial copy, strictly in
//! order: a held chunk is read back from the copy that holds it and checked against its
//! digest before it is written, a received one is checked against its digest before it
//! is written, and at `End` the whole file's SHA-256 decides, as for any file.
//!
//! Everything the source says is checked before it costs anything: lengths within the
//! chunker's bounds and the offered size (checked sums), lists in order, at most
//! [`MAX_PENDING`] chunks listed and not yet in place, data only for chunks asked for.

use std::collections::VecDeque;

use crate::replication::index::IndexTail;
use crate::store::{ChunkLoc, DigestPrefix, StagedChunk};

/// Chunks listed and not yet in place, at most: an honest source sends the data a list
/// asked for before its next list, so this is two lists.
pub(super) const MAX_PENDING: usize = 2 * crate::wire::transfer::MAX_LIST;
/// Entries kept for the index of a copy assembled from its first byte, at most: 32 MB
/// per session, a file of 8 GiB at the average chunk size (a copy with more is indexed
/// from its file by the index job instead).
pub(super) const MAX_ENTRIES: usize = 1 << 20;

/// A listed chunk not yet in place.
pub(super) enum Pending {
    /// Its bytes come in `Data`.
    Lacking { len: u32, digest: DigestPrefix },
    /// Held in another copy; read back when the chunks before it are in place.
    Held { loc: ChunkLoc, digest: DigestPrefix },
}

/// The chunk state of the open file.
pub(super) struct Assembly {
    pub(super) pending: VecDeque<Pending>,
    /// The index of the next chunk the source lists.
    pub(super) next_index: u64,
    /// Where the next listed chunk starts in the file.
    pub(super) listed_end: u64,
    /// The bytes of the first lacking chunk received so far.
    pub(super) filling: Vec<u8>,
    /// Held chunks' bytes, read back (a run of them at a time).
    pub(super) scratch: Vec<u8>,
    /// The run of held chunks being read back.
    pub(super) run: Vec<(ChunkLoc, DigestPrefix)>,
    /// The source said `Plain`: no more lists, the rest comes as plain `Data`.
    pub(super) plain: bool,
    /// The file's chunks from its first byte (for the index), while that holds.
    pub(super) entries: Option<Vec<StagedChunk>>,
}

impl Assembly {
    pub(super) fn new(at: u64) -> Assembly {
        Assembly {
            pending: VecDeque::new(),
            next_index: 0,
            listed_end: at,
            filling: Vec::new(),
            scratch: Vec::new(),
            run: Vec::new(),
            plain: false,
            entries: (at == 0).then(Vec::new),
        }
    }

    /// Whether `Data` goes to the listed chunks (false once plain with nothing pending).
    pub(super) fn takes_data(&self) -> bool {
        !(self.plain && self.pending.is_empty())
    }

    /// Bytes received of a chunk not complete yet.
    pub(super) fn filled(&self) -> usize {
        self.filling.len()
    }

    /// Whether the source may still list chunks.
    pub(super) fn lists_more(&self) -> bool {
        !self.plain
    }

    pub(super) fn all_in_place(&self) -> bool {
        self.pending.is_empty()
    }

    pub(super) fn listed_end(&self) -> u64 {
        self.listed_end
    }

    /// Listed chunks not in place.
    pub(super) fn unplaced(&self) -> usize {
        self.pending.len()
    }

    /// The copy's chunks for the index, if it was listed whole from its first byte.
    pub(super) fn index_tail(&mut self, size: u64) -> Option<IndexTail> {
        let entries = self.entries.take()?;
        (self.listed_end == size).then_some(IndexTail {
            file: None,
            entries,
            indexed_to: size,
        })
    }

    pub(super) fn record(&mut self, offset: u64, len: u32, digest: DigestPrefix) {
        if let Some(e) = self.entries.as_mut() {
            if e.len() >= MAX_ENTRIES {
                self.entries = None;
            } else {
                e.push(StagedChunk {
                    offset,
                    len,
                    digest,
                });
            }
        }
    }
}
