//! Ingest: a received transfer session written into a storage. [`serve`] runs
//! `replication::receiver`'s session on the connection's thread, with the threads it
//! hands its work to: the committer (group commits, `receiver::Committer`) and the file
//! writer's [`Pipeline`] (`pipeline.rs`). The target's tunnel calls it for each
//! `POST /tunnel/v1/transfer`; the rules are all the receiver's.

mod pipeline;

use std::io::{Read, Write};

pub(crate) use pipeline::Pipeline;

use crate::fsx::PartialFile;
use crate::replication::live::Peer;
use crate::replication::receiver::{
    self, Context, FileSink, ReceiveError, Sealed, Source, Summary,
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

/// The session's [`Pipeline`], started when its first file opens: most sessions of a
/// target with many sources are heartbeats that open none, and a session waiting for a
/// slot has no file open yet.
struct OnDemand {
    store: Store,
    uuid: String,
    pipeline: Option<Pipeline>,
}

impl OnDemand {
    fn running(&mut self) -> std::io::Result<&mut Pipeline> {
        self.pipeline
            .as_mut()
            .ok_or_else(|| std::io::Error::other("no file is open"))
    }
}

impl FileSink for OnDemand {
    fn open(&mut self, file: PartialFile) -> std::io::Result<()> {
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
        self.pipeline.as_ref().and_then(FileSink::recorded)
    }

    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.running()?.write(bytes)
    }

    fn checkpoint(&mut self, row: PartialRecord) -> std::io::Result<()> {
        self.running()?.checkpoint(row)
    }

    fn seal(&mut self) -> std::io::Result<Sealed> {
        self.running()?.seal()
    }

    fn close(&mut self) -> std::io::Result<PartialFile> {
        self.running()?.close()
    }
}

#[cfg(test)]
mod dedup_tests;
#[cfg(test)]
mod tests;
