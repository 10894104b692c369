//! Ingest: a received transfer session written into a storage. [`serve`] runs
//! `replication::receiver`'s session on the connection's thread, with the threads it
//! hands its work to: the committer (group commits, `receiver::Committer`) and the file
//! writer's [`Pipeline`] (`pipeline.rs`), or, for a storage in a bucket, the upload
//! (`receiver::Upload`, whose parts go out on a thread of their own). The target's
//! tunnel calls it for each `POST /tunnel/v1/transfer`; the rules are all the receiver's.

mod pipeline;

use std::io::{Read, Write};

pub(crate) use pipeline::Pipeline;

use crate::replication::live::Peer;
use crate::replication::receiver::{
    self, Context, FileSink, Piece, ReceiveError, Sealed, Source, Summary, Upload,
};
use crate::store::{PartialRecord, Store};

/// Runs one receiving session: frames in from `input`, decisions and outcomes out to
/// `output` (see `receiver::serve`), its committer and file writer on threads that end
/// with it (the file writer's from its first file on: a heartbeat session starts none).
pub(crate) fn serve(
    ctx: &Context<'_>,
    source: &Source,
    input: impl Read,
    output: impl Write,
) -> Summary {
    let _session = ctx.live.session(Peer::Source(source.system_id));
    let (commits, committer) = receiver::commit_channel();
    std::thread::scope(|scope| {
        let spawned = std::thread::Builder::new()
            .name("recv-commit".into())
            .stack_size(256 * 1024)
            .spawn_scoped(scope, move || committer.run(ctx, source));
        if let Err(cause) = spawned {
            let error = ReceiveError::Start {
                what: "the committer",
                cause,
            };
            log::error!("replication: {error}");
            return Summary {
                error: Some(error),
                ..Summary::default()
            };
        }
        let sink = OnDemand {
            store: ctx.store.clone(),
            uuid: source.uuid.clone(),
            pipeline: None,
            upload: None,
            bulk: false,
        };
        // Read at the source's share of the ingest's bytes (`replication::pacing`).
        match ctx.slots {
            Some(slots) => {
                let input = slots.pacer.reader(input, source.system_id, source.share);
                receiver::serve(ctx, source, input, output, sink, commits)
            }
            None => receiver::serve(ctx, source, input, output, sink, commits),
        }
    })
}

/// How much nicer than the daemon's other threads a session's bulk work runs: the
/// connection's thread from its session's first file on, and the writer threads it starts
/// then, which inherit it. On a busy box the API, the tunnel's control calls (hello,
/// renew, the CAs) and heartbeat sessions go first (SPEC 17, control beside bulk; SPEC
/// 21's API latency with hundreds of transfers). Idle CPU still goes to the sessions, so
/// a quiet box ingests as fast as before.
const BULK_NICE: libc::c_int = 5;

/// Lowers the calling thread's CPU priority by [`BULK_NICE`]. On Linux the nice value is
/// the thread's own (`nice` sets it for the caller only). An unprivileged thread cannot
/// raise it back, and need not: a connection's thread ends with its connection.
fn run_as_bulk() {
    // SAFETY: nice takes and returns plain integers.
    if unsafe { libc::nice(BULK_NICE) } == -1 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error().unwrap_or(0) != 0 {
            log::debug!("replication: cannot lower a session's CPU priority: {e}");
        }
    }
}

/// The session's [`Pipeline`], started when its first file opens: most sessions of a
/// target with many sources are heartbeats that open none, and a session waiting for a
/// slot has no file open yet. An upload into a bucket is written here, on the session's
/// thread: its writer uploads each full part on a thread of its own while the next fills.
struct OnDemand {
    store: Store,
    uuid: String,
    pipeline: Option<Pipeline>,
    /// The open upload, and the offset its last checkpoint recorded.
    upload: Option<(Box<Upload>, Option<u64>)>,
    /// Whether this thread runs as bulk yet ([`run_as_bulk`], at the first file).
    bulk: bool,
}

impl OnDemand {
    fn running(&mut self) -> std::io::Result<&mut Pipeline> {
        self.pipeline
            .as_mut()
            .ok_or_else(|| std::io::Error::other("no file is open"))
    }

    /// Records `row` for the open upload: its parts that finished taken in, the row
    /// naming the upload.
    fn record_upload(&mut self, mut row: PartialRecord) -> std::io::Result<()> {
        let Some((upload, recorded)) = self.upload.as_mut() else {
            return Err(std::io::Error::other("no file is open"));
        };
        row.upload = Some(upload.record()?);
        let uuid = &self.uuid;
        self.store
            .write(|tx| tx.put_partial(uuid, &row))
            .map_err(|e| std::io::Error::other(format!("record a checkpoint: {e}")))?;
        *recorded = Some(row.offset);
        Ok(())
    }
}

impl FileSink for OnDemand {
    fn open(&mut self, file: Piece) -> std::io::Result<()> {
        if !self.bulk {
            run_as_bulk();
            self.bulk = true;
        }
        let file = match file {
            Piece::Object(upload) => {
                self.upload = Some((upload, None));
                return Ok(());
            }
            file => file,
        };
        if self.pipeline.is_none() {
            let started = Pipeline::spawn(self.store.clone(), self.uuid.clone());
            self.pipeline =
                Some(started.map_err(|e| {
                    std::io::Error::other(format!("cannot start a file writer: {e}"))
                })?);
        }
        self.running()?.open(file)
    }

    fn recorded(&self) -> Option<u64> {
        match &self.upload {
            Some((_, recorded)) => *recorded,
            None => self.pipeline.as_ref().and_then(FileSink::recorded),
        }
    }

    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self.upload.as_mut() {
            Some((upload, _)) => upload.write_all(bytes),
            None => self.running()?.write(bytes),
        }
    }

    fn checkpoint(&mut self, row: PartialRecord) -> std::io::Result<()> {
        match self.upload {
            Some(_) => self.record_upload(row),
            None => self.running()?.checkpoint(row),
        }
    }

    fn seal(&mut self) -> std::io::Result<Sealed> {
        match self.upload.take() {
            Some((upload, _)) => {
                // Completed by the commit, once the session's digest matched.
                let (tx, rx) = std::sync::mpsc::channel();
                let _ = tx.send(Ok(Piece::Object(upload)));
                Ok(rx)
            }
            None => self.running()?.seal(),
        }
    }

    fn close(&mut self) -> std::io::Result<Piece> {
        match self.upload.take() {
            Some((upload, _)) => Ok(Piece::Object(upload)),
            None => self.running()?.close(),
        }
    }
}

#[cfg(test)]
mod dedup_tests;
#[cfg(test)]
mod tests;
