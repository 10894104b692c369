//! The storage-sink interface: where a session writes the file being received. The session
//! decides what goes into the file and when a checkpoint is due; a [`FileSink`] does the
//! writing, the checkpoints' fdatasync and record, and the final fsync. The daemon's sink
//! (`ingest`) does them on threads of its own for a file (`Pipeline`), so that
//! decrypting and hashing, copying into the page cache and waiting for the disk overlap;
//! an upload into a bucket ([`Piece::Object`]) uploads its parts on a thread of its own.

use std::io;
use std::sync::mpsc::Receiver;

use super::piece::Piece;
use crate::store::PartialRecord;

/// A file on its way to durable: `recv` yields it once its fsync returned (or the error
/// that kept it from being durable).
pub type Sealed = Receiver<io::Result<Piece>>;

/// The open file of one session, as the session hands it on.
pub trait FileSink {
    /// Starts a file: its bytes go to `file` from now on.
    fn open(&mut self, file: Piece) -> io::Result<()>;

    /// The offset of the open file that the last finished checkpoint made durable and
    /// recorded, if one did since it was opened.
    fn recorded(&self) -> Option<u64>;

    /// Queues `bytes` for the file. Fails with an earlier write's error.
    fn write(&mut self, bytes: &[u8]) -> io::Result<()>;

    /// Asks for a checkpoint after what was queued so far: make it durable, then record
    /// `row` (whose offset must be the bytes the file holds then). May be skipped while an
    /// earlier one still runs; a later one covers its bytes.
    fn checkpoint(&mut self, row: PartialRecord) -> io::Result<()>;

    /// Ends the file: once everything queued is written and no checkpoint runs, it is
    /// fsynced, and the returned [`Sealed`] yields it. Does not wait for the fsync.
    fn seal(&mut self) -> io::Result<Sealed>;

    /// Waits until everything queued is written and no checkpoint runs, and hands the file
    /// back (for a checkpoint the session takes itself, or its discard).
    fn close(&mut self) -> io::Result<Piece>;
}
