//! What the open file of a session is written into ([`Piece`]): a partial file below a
//! `dir` storage, or a multipart upload into an `s3` storage's bucket (SPEC 19). The
//! session treats both alike (bytes in, checkpoints, seal, commit); this is where they
//! differ.
//!
//! An upload's partial row keeps its [`Checkpoint`] (`PartialRecord::upload`, hex), so
//! the start-up repair and the next offer of the same file find the upload to abort. An
//! upload is not resumed: the session's SHA-256 state lives in the session, and the
//! upload's parts are at least 8 MiB, so a crash costs at most what the restart sends
//! again (decisions.md). Its offset counts the bytes taken, for quotas.

use std::io;
use std::sync::Arc;

use crate::fsx::PartialFile;
use crate::objstore::{Checkpoint, Completed, Key, MultipartWriter, ObjStore, ObjStoreError};
use crate::store::PartialRecord;
use crate::wire::hex;

/// The open file of a session.
pub enum Piece {
    File(PartialFile),
    Object(Box<Upload>),
}

/// A file on its way into a bucket.
pub struct Upload {
    pub(super) writer: MultipartWriter,
    storage_id: u64,
}

impl Upload {
    /// Starts the upload of `key`, sized for an object of `size` bytes.
    pub(super) fn create(
        store: Arc<ObjStore>,
        storage_id: u64,
        key: Key,
        size: u64,
    ) -> io::Result<Upload> {
        let part = crate::objstore::PartSize::for_object(size).map_err(object_error)?;
        let created = MultipartWriter::create(store, key, part, None);
        crate::objstore::note_outcome(storage_id, &created, crate::model::now());
        Ok(Upload {
            writer: created.map_err(object_error)?,
            storage_id,
        })
    }

    /// Appends `bytes`; each full part goes out on a thread of its own while the next
    /// fills.
    pub fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        let written = self.writer.write_all(bytes);
        if written.is_err() {
            crate::objstore::note_outcome(self.storage_id, &written, crate::model::now());
        }
        written.map_err(object_error)
    }

    /// What the partial row keeps of the upload: its checkpoint (parts that finished
    /// taken in), hex-encoded.
    pub fn record(&mut self) -> io::Result<String> {
        let c = self.writer.checkpoint().map_err(object_error)?;
        Ok(hex::encode(&c.encode()))
    }

    /// Completes the upload, which becomes the object, once the SHA-256 the writer
    /// computed over every byte is `sha256` and its size `size` (the session checked its
    /// own digest already; this one is the writer's, over the bytes that went out).
    pub(super) fn complete(self, size: u64, sha256: &[u8; 32]) -> io::Result<Completed> {
        if self.writer.written() != size || self.writer.sha256() != *sha256 {
            let key = self.writer.key().clone();
            let _ = self.writer.abort();
            return Err(io::Error::other(format!(
                "the upload of {key} does not hold the bytes that were verified"
            )));
        }
        let storage_id = self.storage_id;
        let completed = self.writer.complete();
        crate::objstore::note_outcome(storage_id, &completed, crate::model::now());
        completed.map_err(object_error)
    }
}

impl Piece {
    /// Bytes taken.
    pub fn len(&self) -> u64 {
        match self {
            Piece::File(f) => f.len(),
            Piece::Object(u) => u.writer.written(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends `bytes`.
    pub fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Piece::File(f) => f.write_all(bytes),
            Piece::Object(u) => u.write_all(bytes),
        }
    }

    /// A checkpoint whose offset the caller records: a file's data made durable; an
    /// upload's parts that finished taken in (its row then names the upload).
    pub fn checkpoint(&mut self) -> io::Result<()> {
        match self {
            Piece::File(f) => f.checkpoint(),
            Piece::Object(u) => u.writer.checkpoint().map(|_| ()).map_err(object_error),
        }
    }

    /// `row` as this piece records it: an upload's row names its checkpoint.
    pub fn fill(&mut self, row: &mut PartialRecord) -> io::Result<()> {
        if let Piece::Object(u) = self {
            row.upload = Some(u.record()?);
        }
        Ok(())
    }

    /// Removes the partial copy: a file deleted, an upload aborted.
    pub fn discard(self) -> io::Result<()> {
        match self {
            Piece::File(f) => f.discard(),
            Piece::Object(u) => u.writer.abort().map_err(object_error),
        }
    }
}

/// An object store's failure as the session's I/O error: one that retries could not get
/// past (the store down, 5xx, resets) is `NetworkDown`, which the source is told as
/// `unavailable` and waits out; settings, refusals and corrupt answers are `Other`
/// (`storage`). The text names the key, never a path of the target.
pub fn object_error(e: ObjStoreError) -> io::Error {
    let kind = if e.is_transient() {
        io::ErrorKind::NetworkDown
    } else {
        io::ErrorKind::Other
    };
    io::Error::new(kind, e.to_string())
}

/// The upload a partial row names, if it names one that decodes.
pub fn upload_of(row: &PartialRecord) -> Option<Checkpoint> {
    let bytes = hex::decode(row.upload.as_deref()?)?;
    Checkpoint::decode(&bytes).ok()
}
