//! Ingest: a received transfer session written into a storage. [`serve`] runs
//! `replication::receiver`'s session on the connection's thread, with the threads it
//! hands its work to: the committer (group commits, `receiver::Committer`) and the file
//! writer's [`Pipeline`] (`pipeline.rs`). The target's tunnel calls it for each
//! `POST /tunnel/v1/transfer`; the rules are all the receiver's.

mod pipeline;

use std::io::{Read, Write};

pub(crate) use pipeline::Pipeline;

use crate::replication::live::Peer;
use crate::replication::receiver::{self, Context, ReceiveError, Refusal, Source, Summary};
use crate::wire::transfer::Code;

/// Runs one receiving session: frames in from `input`, decisions and outcomes out to
/// `output` (see `receiver::serve`), its committer and file writer on threads that end
/// with it.
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
        match Pipeline::spawn(ctx.store.clone(), source.uuid.clone()) {
            Ok(sink) => receiver::serve(ctx, source, input, output, sink, commits),
            Err(e) => {
                let m = format!("cannot start a file writer: {e}");
                receiver::turn_away(output, Refusal::new(Code::Unavailable, m))
            }
        }
    })
}

#[cfg(test)]
mod dedup_tests;
#[cfg(test)]
mod tests;
