//! One receiving session's frame loop: greet, then take the source's frames in order
//! (offers in `offer.rs`, the open file's in `current.rs`, verified files to the group
//! commit in `commit.rs`, the state they share in `state.rs`) until `Finish`, a break, or
//! a protocol error.

use std::collections::HashMap;
use std::io::{Read, Write};

use super::commit::GROUP_WAIT;
use super::sink::FileSink;
use super::state::{CommitQueue, Session};
use super::{drop_partial, Context, ReceiveError, Refusal, Source, Summary, MAX_WANTS};
use crate::replication::slots::QUEUE_WAIT;
use crate::replication::stream::{FrameReader, FrameWriter, StreamError};
use crate::wire::transfer::{Code, Frame};

/// Why a session ends at a file boundary while another source waits for a slot.
pub(super) const YIELD: &str =
    "other sources are waiting for a transfer session: this one had its turn; try again shortly";

/// Runs one session: frames in from `input`, decisions and outcomes out to `output`,
/// until the source finishes, the stream breaks or the source breaks the protocol. The
/// open file's bytes go to `sink`, verified files to the committer at the other end of
/// `commits`. Whatever was verified is committed, and the file in progress is
/// checkpointed, however the session ends.
pub fn serve<S: FileSink>(
    ctx: &Context<'_>,
    source: &Source,
    input: impl Read,
    output: impl Write,
    sink: S,
    commits: CommitQueue,
) -> Summary {
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
        commits,
        summary: Summary::default(),
        holdings: None,
        unpacker: None,
        unpacked: Vec::new(),
        slot: None,
    };
    // Most sessions of a target with many sources are heartbeats (nothing offered): they
    // are logged at debug, a session that moved or refused anything at info.
    log::debug!(
        "replication from system {} ({}) at {}: session started, storage {}",
        source.system_id,
        source.uuid,
        ctx.peer,
        source.storage.id
    );
    let mut reader = FrameReader::new(input);
    // A directory that is gone, or a bucket whose client cannot be made (its credentials
    // or CA file unreadable), is offline. A bucket that does not answer fails each file
    // it is asked for instead (the source tries again later).
    let offline = match &source.storage.kind {
        crate::config::StorageKind::Dir => !source.storage.path.is_dir(),
        crate::config::StorageKind::S3(_) => crate::objstore::for_storage(&source.storage).is_err(),
    };
    let end = if offline {
        let m = format!("storage {} is offline", source.storage.id);
        session.send(&Frame::Fatal {
            code: Code::Storage,
            message: &m,
        });
        Err(ReceiveError::Fatal(Refusal::new(Code::Storage, m)))
    } else {
        session.greet();
        session.run(&mut reader)
    };
    // However it ended: what verified is committed, what is in progress is resumable.
    session.checkpoint_current();
    session.commit_all();
    session.commits.groups = None;
    if let Err(e) = end {
        session.summary.error = Some(e);
    }
    let s = &session.summary;
    let level = if s.committed + s.failed + s.bytes > 0 || s.error.is_some() {
        log::Level::Info
    } else {
        log::Level::Debug
    };
    log::log!(
        level,
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

impl<W: Write, S: FileSink> Session<'_, '_, W, S> {
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

    fn run<R: Read>(&mut self, reader: &mut FrameReader<R>) -> Result<(), ReceiveError> {
        loop {
            if self.group_since.is_some_and(|t| t.elapsed() >= GROUP_WAIT) {
                self.hand_over();
            }
            self.collect(false);
            let frame = match reader.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => return Err(ReceiveError::Closed),
                Err(StreamError::Frame(e)) => {
                    return self.fatal(Code::Protocol, format!("malformed frame: {e}"))
                }
                Err(e) => return Err(ReceiveError::Stream(e)),
            };
            match frame {
                Frame::Offer {
                    seq,
                    size,
                    version,
                    name,
                } => {
                    self.take_slot()?;
                    self.offer(seq, size, version, name)?
                }
                Frame::Start { seq, offset } => {
                    // A file boundary: the session's turn may be over (`replication::slots`).
                    // The files it finished are committed and the source hears of them
                    // first, so it does not offer them again.
                    if self.slot.as_ref().is_some_and(|slot| slot.should_yield()) {
                        self.commit_all();
                        return self.fatal(Code::Busy, YIELD.into());
                    }
                    self.start(seq, offset)?
                }
                Frame::Data { seq, bytes } => self.data(seq, bytes)?,
                Frame::ZData {
                    seq,
                    raw_len,
                    bytes,
                } => self.zdata(seq, raw_len, bytes)?,
                Frame::End { seq, sha256 } => self.end(seq, sha256)?,
                Frame::Skip { seq } => self.skip(seq)?,
                Frame::Chunks { seq, first, list } => self.chunks(seq, first, list)?,
                Frame::Plain { seq } => self.plain(seq)?,
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

    /// Takes the session's slot before its first offer is answered, waiting for one
    /// while others hold them all; if none comes, the session ends with `Fatal` busy and
    /// the source asks again (keeping its place in the queue). A session that offers
    /// nothing never takes one.
    fn take_slot(&mut self) -> Result<(), ReceiveError> {
        let Some(slots) = self.ctx.slots.filter(|_| self.slot.is_none()) else {
            return Ok(());
        };
        match slots.admit(self.source.system_id, self.source.share, QUEUE_WAIT) {
            Ok(slot) => {
                self.slot = Some(slot);
                Ok(())
            }
            Err(busy) => {
                self.commit_all();
                self.fatal(Code::Busy, busy.to_string())
            }
        }
    }

    fn skip(&mut self, seq: u32) -> Result<(), ReceiveError> {
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
                if let Ok(file) = self.sink.close() {
                    let _ = file.discard();
                }
                drop_partial(self.ctx.store, self.source, &cur.offer.name);
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
}
