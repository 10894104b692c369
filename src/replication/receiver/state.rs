//! One receiving session's state, shared by the parts that handle its frames (`offer`,
//! `current`, `commit`, and `session`'s loop above them): the [`Session`] with the offers
//! it accepted ([`Offered`]), the file it receives ([`Current`]) and its line to the
//! committer ([`CommitQueue`]); and what every part does with it: send a frame, refuse
//! an offer, fail a file, end the session.

use std::collections::HashMap;
use std::io::Write;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;
use std::time::Instant;

use ring::digest::Context as Sha256;

use super::assembly::Assembly;
use super::holdings::Holdings;
use super::ledger::Reservation;
use super::sink::{FileSink, Sealed};
use super::{Context, ReceiveError, Refusal, Source, Summary};
use crate::model::UnixTime;
use crate::replication::index::IndexTail;
use crate::replication::live::{code_reason, Incoming, Peer, Registered};
use crate::replication::names::BackupName;
use crate::replication::slots::Admission;
use crate::replication::stream::FrameWriter;
use crate::wire::compress::Unpacker;
use crate::wire::transfer::{Code, Decision, Frame, Outcome};

/// One session's state on the target.
pub(super) struct Session<'c, 'l, W: Write, S: FileSink> {
    pub(super) ctx: &'c Context<'l>,
    pub(super) source: &'c Source,
    pub(super) out: FrameWriter<W>,
    /// False once writing to the source failed; work still finishes durably.
    pub(super) out_ok: bool,
    pub(super) offered: HashMap<u32, Offered<'l>>,
    pub(super) last_seq: Option<u32>,
    pub(super) current: Option<Current<'l>>,
    /// Writes the current file (the daemon's on threads of its own).
    pub(super) sink: S,
    /// The current file failed already; its remaining frames are ignored.
    pub(super) poisoned: Option<u32>,
    /// Verified files not yet handed to the committer.
    pub(super) group: Vec<ToCommit>,
    pub(super) group_bytes: u64,
    pub(super) group_since: Option<Instant>,
    /// Files the committer has, by sequence number, with their reservations.
    pub(super) committing: HashMap<u32, (Offered<'l>, [u8; 32])>,
    pub(super) commits: CommitQueue,
    pub(super) summary: Summary,
    /// The copies chunks are borrowed from (deduplicated sessions, made on first use).
    pub(super) holdings: Option<Holdings<'c>>,
    /// Decodes `ZData` frames into `unpacked` (made on the first one).
    pub(super) unpacker: Option<Unpacker>,
    pub(super) unpacked: Vec<u8>,
    /// The session's slot, taken at its first offer (`Context::slots`).
    pub(super) slot: Option<Admission<'l>>,
}

/// What the target holds of an offered file.
pub(super) enum Decided {
    New,
    Resume { offset: u64, hasher: Box<Sha256> },
    Have,
}

/// An offer the target accepted, holding its reservation until it ends.
pub(super) struct Offered<'l> {
    pub(super) name: BackupName,
    pub(super) size: u64,
    pub(super) version: i64,
    pub(super) decided: Decided,
    /// What the file adds to the source's stored bytes once committed.
    pub(super) grows: u64,
    pub(super) reservation: Reservation<'l>,
}

/// The file being received; its bytes go to the session's [`FileSink`], which holds it.
pub(super) struct Current<'l> {
    pub(super) seq: u32,
    pub(super) offer: Offered<'l>,
    pub(super) hasher: Sha256,
    pub(super) written: u64,
    /// The durable offset recorded in the database (0: no row yet).
    pub(super) recorded: u64,
    /// The durable offset last confirmed to the source (`Frame::Durable`).
    pub(super) confirmed: u64,
    pub(super) next_checkpoint: u64,
    pub(super) last_checkpoint: Instant,
    pub(super) started: UnixTime,
    pub(super) incoming: Arc<Incoming>,
    pub(super) _registered: Registered<'l>,
    /// Set once the source lists the file's chunks (`chunks` feature).
    pub(super) chunked: Option<Box<Assembly>>,
    /// Bytes that crossed the wire for this file in this session (lists included).
    pub(super) wire: u64,
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
    /// The copy's chunks, when it was received in chunks from its first byte.
    pub index: Option<IndexTail>,
    /// Bytes that crossed the wire for it in the session that completed it.
    pub wire: u64,
}

/// What the committer says of one file: in place and recorded, or why not.
pub type Committed = (u32, Result<(), Refusal>);

/// The session's end of the line to its committer: groups go out, results come back.
pub struct CommitQueue {
    /// None once the session handed over its last group (the committer then ends).
    pub(super) groups: Option<Sender<Vec<ToCommit>>>,
    pub(super) results: Receiver<Vec<Committed>>,
}

impl<W: Write, S: FileSink> Session<'_, '_, W, S> {
    pub(super) fn send(&mut self, frame: &Frame<'_>) {
        if self.out_ok && self.out.send(frame).is_err() {
            self.out_ok = false;
        }
    }

    pub(super) fn flush(&mut self) {
        if self.out_ok && self.out.flush().is_err() {
            self.out_ok = false;
        }
    }

    /// Ends the session: tells the source why (`Fatal`) and returns it as the error.
    pub(super) fn fatal(&mut self, code: Code, message: String) -> Result<(), ReceiveError> {
        self.send(&Frame::Fatal {
            code,
            message: &message,
        });
        self.flush();
        Err(ReceiveError::Fatal(Refusal::new(code, message)))
    }

    pub(super) fn refuse(&mut self, seq: u32, code: Code, message: &str) {
        let peer = Peer::Source(self.source.system_id);
        self.ctx.live.count_failure(peer, code_reason(code));
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

    pub(super) fn report_failure(
        &mut self,
        seq: u32,
        name: &BackupName,
        code: Code,
        message: &str,
    ) {
        log::warn!(
            "replication from system {} at {}: transfer of {name} failed: {message}",
            self.source.system_id,
            self.ctx.peer
        );
        self.poisoned = Some(seq);
        self.summary.failed += 1;
        let peer = Peer::Source(self.source.system_id);
        self.ctx.live.count_failure(peer, code_reason(code));
        self.send(&Frame::Outcome {
            seq,
            outcome: Outcome::Failed { code, message },
        });
        self.flush();
    }
}
