//! The file being received ([`Current`]): its `Start`, its `Data` frames (hashed here,
//! written by the session's [`FileSink`]), checkpoints (every `chunk_for(size)` bytes or
//! second, recorded as a partial row and confirmed to the source with `Durable`, at once
//! when the source would otherwise wait out of its window), its `End` (size and SHA-256
//! checked, then sealed and handed to the group commit), and its failures.

use std::fmt;
use std::io::{self, Write};
use std::time::{Duration, Instant};

use ring::digest::{Context as Sha256, SHA256};

use super::commit::{GROUP_BYTES, GROUP_FILES};
use super::piece::{object_error, Piece, Upload};
use super::sink::FileSink;
use super::state::{Current, Decided, Offered, Session, ToCommit};
use super::{
    chunk_for, client_dir, digest_of, drop_partial, list_window, partial_path, space_of,
    storage_failure, window_for, ReceiveError, Refusal, Source,
};
use crate::config::StorageKind;
use crate::fsx::{self, PartialFile};
use crate::model::UnixTime;
use crate::replication::chunker::MAX_CHUNK;
use crate::replication::live::{code_reason, Peer};
use crate::store::{PartialRecord, StoreError};
use crate::wire::compress::Unpacker;
use crate::wire::hex;
use crate::wire::transfer::{Code, Frame, Outcome, MAX_DATA};

/// A checkpoint also happens after this long without one, while bytes arrive.
const CHECKPOINT_AFTER: Duration = Duration::from_secs(1);

/// Why the open file could not be made durable and recorded now.
#[derive(Debug)]
enum DurableError {
    /// The disk (or the file writer) failed.
    Disk(io::Error),
    /// No file is open.
    NoFile,
    /// The checkpoint's row could not be recorded.
    Record(StoreError),
}

impl fmt::Display for DurableError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DurableError::Disk(e) => write!(f, "{e}"),
            DurableError::NoFile => f.write_str("no file is open"),
            DurableError::Record(e) => write!(f, "record it: {e}"),
        }
    }
}

impl<W: Write, S: FileSink> Session<'_, '_, W, S> {
    pub(super) fn start(&mut self, seq: u32, offset: u64) -> Result<(), ReceiveError> {
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
        let opened = self.open_piece(&offer, keep);
        match opened.and_then(|f| self.sink.open(f)) {
            Ok(()) => {}
            Err(e) => {
                log::error!(
                    "replication from system {}: cannot write {} on storage {}: {e}",
                    self.source.system_id,
                    offer.name,
                    self.source.storage.id
                );
                let what = format!("cannot write {}", offer.name);
                let r = storage_failure(self.source.storage.id, &what, &e);
                self.summary.failed += 1;
                let peer = Peer::Source(self.source.system_id);
                self.ctx
                    .live
                    .count_failure(peer, code_reason(Code::Storage));
                self.poisoned = Some(seq);
                self.send(&Frame::Outcome {
                    seq,
                    outcome: Outcome::Failed {
                        code: r.code,
                        message: &r.message,
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
            chunked: None,
            wire: 0,
        });
        self.poisoned = None;
        Ok(())
    }

    /// The open file's [`Piece`]: a partial file kept up to `keep`, or a new upload into
    /// the storage's bucket, its partial row recorded at once (so a crash leaves no upload
    /// that nothing names).
    fn open_piece(&mut self, offer: &Offered<'_>, keep: u64) -> io::Result<Piece> {
        let storage = &self.source.storage;
        let bucket = crate::objstore::for_storage(storage).map_err(object_error)?;
        let (Some(bucket), StorageKind::S3(s3)) = (bucket, &storage.kind) else {
            let dir = client_dir(self.source, &offer.name);
            fsx::ensure_dir_under(&storage.path, &[&self.source.uuid, offer.name.client()])?;
            let file = PartialFile::open(&partial_path(&dir, &offer.name), keep)?;
            return Ok(Piece::File(file));
        };
        if keep > 0 {
            return Err(io::Error::other("an upload into a bucket is not resumed"));
        }
        let key = crate::objstore::backup_key(s3, &self.source.uuid, offer.name.as_str())
            .map_err(object_error)?;
        let mut upload = Upload::create(bucket, storage.id, key, offer.size)?;
        let now = (self.ctx.now)();
        let row = PartialRecord {
            backup: offer.name.as_str().to_string(),
            storage_id: storage.id,
            size: offer.size,
            version: offer.version,
            offset: 0,
            started: now,
            updated: now,
            verified_sha256: None,
            upload: Some(upload.record()?),
        };
        let uuid = &self.source.uuid;
        if let Err(e) = self.ctx.store.write(|tx| tx.put_partial(uuid, &row)) {
            let _ = Piece::Object(Box::new(upload)).discard();
            return Err(io::Error::other(format!("record the upload: {e}")));
        }
        Ok(Piece::Object(Box::new(upload)))
    }

    /// A `ZData` frame: content that decodes to exactly `raw_len` bytes, at most
    /// [`MAX_DATA`] (the bound, checked before anything is decoded; libzstd writes no
    /// further than it). A frame that claims more, decodes to more or less, or is not
    /// zstd ends the session: the source is broken or hostile.
    pub(super) fn zdata(
        &mut self,
        seq: u32,
        raw_len: u32,
        packed: &[u8],
    ) -> Result<(), ReceiveError> {
        if !self.ctx.features.zstd {
            let m = "a compressed frame, but the session did not agree to zstd".to_string();
            return self.fatal(Code::Protocol, m);
        }
        let raw_len = raw_len as usize;
        if raw_len > MAX_DATA {
            let m = format!("a compressed frame claims {raw_len} bytes, more than {MAX_DATA}");
            return self.fatal(Code::Protocol, m);
        }
        if self.poisoned == Some(seq) {
            return Ok(());
        }
        if self.unpacker.is_none() {
            match Unpacker::new() {
                Ok(u) => self.unpacker = Some(u),
                Err(e) => {
                    let m = format!("cannot start a decompressor: {e}");
                    return self.fatal(Code::Unavailable, m);
                }
            }
        }
        let mut out = std::mem::take(&mut self.unpacked);
        out.resize(MAX_DATA, 0);
        let unpacked = match &mut self.unpacker {
            Some(u) => u.unpack(packed, &mut out[..raw_len]),
            None => Ok(()),
        };
        let result = match unpacked {
            Ok(()) => self.data(seq, &out[..raw_len]),
            Err(e) => self.fatal(Code::Protocol, format!("compressed data for {seq}: {e}")),
        };
        self.unpacked = out;
        result
    }

    pub(super) fn data(&mut self, seq: u32, bytes: &[u8]) -> Result<(), ReceiveError> {
        if self.poisoned == Some(seq) {
            return Ok(());
        }
        let Some(cur) = self.current.as_mut().filter(|c| c.seq == seq) else {
            return self.fatal(
                Code::Protocol,
                format!("data for {seq}, which is not the open file"),
            );
        };
        if cur.chunked.as_ref().is_some_and(|a| a.takes_data()) {
            return self.chunk_data(seq, bytes);
        }
        let len = bytes.len() as u64;
        if cur.written + len > cur.offer.size {
            let m = format!(
                "the source sent more than the {} bytes it offered for {}; the copy was discarded",
                cur.offer.size, cur.offer.name
            );
            self.fail_current(Code::SizeMismatch, m);
            return Ok(());
        }
        if self.place(bytes, true) {
            self.maybe_checkpoint();
            self.confirm_durable(seq);
        }
        Ok(())
    }

    /// Appends `bytes` to the open file (the caller checked they fit its size), hashed
    /// and counted: as received when `over_wire`, else as taken from a held copy. False
    /// when the write failed (the file failed then, what it holds durably kept).
    pub(super) fn place(&mut self, bytes: &[u8], over_wire: bool) -> bool {
        let Some(cur) = self.current.as_mut() else {
            return false;
        };
        let len = bytes.len() as u64;
        // Space is taken as the bytes arrive, a window ahead of them (`Ledger`).
        let source = self.source;
        let store = self.ctx.store;
        let (written, size) = (cur.written, cur.offer.size);
        let covered =
            cur.offer
                .reservation
                .cover(written, written + len, size, 2 * chunk_for(size), || {
                    space_of(store, &source.storage)
                        .map(|(_, free)| free)
                        .map_err(|e| {
                            storage_failure(source.storage.id, "cannot read the free space", &e)
                        })
                });
        if let Err(r) = covered {
            self.checkpoint_current();
            self.fail_current_keep(r.code, r.message);
            return false;
        }
        if let Err(e) = self.sink.write(bytes) {
            log::error!(
                "replication from system {}: cannot write {} on storage {}: {e}",
                source.system_id,
                cur.offer.name,
                source.storage.id
            );
            let r = storage_failure(
                source.storage.id,
                &format!("cannot write {}", cur.offer.name),
                &e,
            );
            self.checkpoint_current();
            self.fail_current_keep(r.code, r.message);
            return false;
        }
        cur.hasher.update(bytes);
        cur.written += len;
        if over_wire {
            cur.wire += len;
            cur.incoming.progress.advance(len);
            self.ctx
                .live
                .count_bytes(Peer::Source(self.source.system_id), len);
            self.summary.bytes += len;
        } else {
            cur.incoming.progress.advance_held(len);
        }
        true
    }

    /// Asks the sink for a checkpoint of the open file when one is due: every
    /// `chunk_for(size)` bytes, or a second after the last while bytes arrive; in a file
    /// received in chunks only between whole chunks.
    pub(super) fn maybe_checkpoint(&mut self) {
        let Some(cur) = self.current.as_mut() else {
            return;
        };
        // A complete file needs none: `End` comes next and the seal makes it durable (a
        // file of up to a chunk would otherwise pay an fdatasync and a directory fsync
        // for nothing; if the stream breaks first, the session's end checkpoints it).
        let complete = cur.written == cur.offer.size;
        let between_chunks = cur.chunked.as_ref().is_none_or(|a| a.filled() == 0);
        if !complete
            && between_chunks
            && (cur.written >= cur.next_checkpoint
                || (cur.last_checkpoint.elapsed() >= CHECKPOINT_AFTER
                    && cur.written > cur.recorded))
        {
            // On the sink's threads: the stream keeps flowing while the disk catches up.
            cur.next_checkpoint = cur.written + chunk_for(cur.offer.size);
            cur.last_checkpoint = Instant::now();
            cur.recorded = cur.written;
            let row = partial_row(self.source, cur, cur.written, (self.ctx.now)());
            if let Err(e) = self.sink.checkpoint(row) {
                log::warn!("replication: checkpoint of {}: {e}", cur.offer.name);
            }
        }
    }

    /// Tells the source how much of the open file is durable once a checkpoint recorded
    /// more than it was told. When the source may be out of window (it could not send
    /// another whole frame), makes everything written durable now, so the source never
    /// waits on a checkpoint nobody takes.
    pub(super) fn confirm_durable(&mut self, seq: u32) {
        let Some(cur) = self.current.as_mut().filter(|c| c.seq == seq) else {
            return;
        };
        let mut durable = self.sink.recorded().unwrap_or(0).max(cur.confirmed);
        let size = cur.offer.size;
        let stalled = match cur.chunked.as_ref().filter(|a| a.lists_more()) {
            // In chunks: the source lists no further than the list window past what is
            // confirmed; once all it listed is in place, confirm what is.
            Some(a) => {
                a.all_in_place() && a.listed_end() + MAX_CHUNK as u64 > durable + list_window(size)
            }
            None => cur.written + MAX_DATA as u64 > durable + window_for(size),
        } && cur.written < size
            && cur.written > durable;
        if stalled {
            match self.checkpoint_now() {
                Ok(offset) => durable = durable.max(offset),
                Err(e) => {
                    let what = format!("cannot make {} durable", self.current_name());
                    log::error!(
                        "replication from system {}: {what}: {e}",
                        self.source.system_id
                    );
                    let r = match e {
                        DurableError::Disk(e) => storage_failure(self.source.storage.id, &what, &e),
                        other => Refusal::new(Code::Storage, format!("{what}: {other}")),
                    };
                    self.fail_current_keep(r.code, r.message);
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
    fn checkpoint_now(&mut self) -> Result<u64, DurableError> {
        let mut file = self.sink.close().map_err(DurableError::Disk)?;
        let recorded = self.record_durable(&mut file);
        self.sink.open(file).map_err(DurableError::Disk)?;
        let written = recorded?;
        if let Some(cur) = self.current.as_mut() {
            cur.last_checkpoint = Instant::now();
            cur.next_checkpoint = written + chunk_for(cur.offer.size);
        }
        Ok(written)
    }

    /// Makes the open file durable up to what was written and records that offset, now
    /// (the session is ending). The file stays in progress, resumable.
    pub(super) fn checkpoint_current(&mut self) {
        let Some(cur) = self.current.as_mut() else {
            return;
        };
        let mut file = match self.sink.close() {
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
        if let Err(e) = self.record_durable(&mut file) {
            log::warn!("replication: checkpoint of {}: {e}", self.current_name());
        }
    }

    /// Makes `file` (the open file, out of the sink) durable up to its length and
    /// records that offset; returns it.
    fn record_durable(&mut self, file: &mut Piece) -> Result<u64, DurableError> {
        let written = file.len();
        file.checkpoint().map_err(DurableError::Disk)?;
        let Some(cur) = self.current.as_mut() else {
            return Err(DurableError::NoFile);
        };
        cur.written = written;
        let mut row = partial_row(self.source, cur, written, (self.ctx.now)());
        file.fill(&mut row).map_err(DurableError::Disk)?;
        let uuid = &self.source.uuid;
        self.ctx
            .store
            .write(|tx| tx.put_partial(uuid, &row))
            .map_err(DurableError::Record)?;
        #[cfg(test)]
        if let Piece::File(file) = file {
            crate::fsx::trace::recorded(file.path(), written);
        }
        cur.recorded = written;
        Ok(written)
    }

    /// The open file failed for good: discard the copy, tell the source.
    pub(super) fn fail_current(&mut self, code: Code, message: String) {
        let Some(cur) = self.current.take() else {
            return;
        };
        if let Ok(file) = self.sink.close() {
            let _ = file.discard();
        }
        drop_partial(self.ctx.store, self.source, &cur.offer.name);
        self.report_failure(cur.seq, &cur.offer.name, code, &message);
    }

    /// The open file failed but what it holds durably stays for a resume.
    pub(super) fn fail_current_keep(&mut self, code: Code, message: String) {
        let Some(cur) = self.current.take() else {
            return;
        };
        let _ = self.sink.close();
        self.report_failure(cur.seq, &cur.offer.name, code, &message);
    }

    pub(super) fn end(&mut self, seq: u32, sha256: [u8; 32]) -> Result<(), ReceiveError> {
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
        let Some(mut cur) = self.current.take() else {
            return Ok(());
        };
        let unplaced = cur.chunked.as_ref().map_or(0, |a| a.unplaced());
        if unplaced > 0 {
            let m = format!(
                "the source ended {} with {unplaced} listed chunks not in place; the copy was discarded",
                cur.offer.name
            );
            self.current = Some(cur);
            self.fail_current(Code::SizeMismatch, m);
            self.poisoned = None;
            return Ok(());
        }
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
                hex::encode(&sha256),
                hex::encode(&ours)
            );
            self.current = Some(cur);
            self.fail_current(Code::DigestMismatch, m);
            self.poisoned = None;
            return Ok(());
        }
        let sealed = match self.sink.seal() {
            Ok(s) => s,
            Err(e) => {
                let what = format!("cannot write {}", cur.offer.name);
                log::error!(
                    "replication from system {}: {what}: {e}",
                    self.source.system_id
                );
                let r = storage_failure(self.source.storage.id, &what, &e);
                self.report_failure(seq, &cur.offer.name, r.code, &r.message);
                self.poisoned = None;
                return Ok(());
            }
        };
        let size = cur.offer.size;
        let index = cur.chunked.as_mut().and_then(|a| a.index_tail(size));
        self.group.push(ToCommit {
            seq,
            name: cur.offer.name.clone(),
            size,
            version: cur.offer.version,
            sha256: ours,
            started: cur.started,
            sealed,
            index,
            wire: cur.wire,
        });
        self.committing.insert(seq, (cur.offer, ours));
        self.group_bytes += size;
        self.group_since.get_or_insert_with(Instant::now);
        if self.group.len() >= GROUP_FILES || self.group_bytes >= GROUP_BYTES {
            self.hand_over();
        }
        Ok(())
    }
}

/// The partial row of the file in progress, durable up to `offset`.
fn partial_row(source: &Source, cur: &Current<'_>, offset: u64, now: UnixTime) -> PartialRecord {
    PartialRecord {
        backup: cur.offer.name.as_str().to_string(),
        storage_id: source.storage.id,
        size: cur.offer.size,
        version: cur.offer.version,
        offset,
        started: cur.started,
        updated: now,
        verified_sha256: None,
        upload: None,
    }
}
