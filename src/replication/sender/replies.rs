//! The target's frames as the sender takes them: [`forward_replies`] reads them on a thread
//! of the caller's into a bounded channel ([`Replies`]) as owned [`Reply`] values, so the
//! sender keeps writing while decisions and outcomes arrive.

use std::fmt;
use std::io::Read;
use std::sync::mpsc::{self, Receiver, SyncSender};

use crate::replication::stream::{FrameReader, StreamError};
use crate::wire::transfer::{Code, Decision, Frame, Outcome};

/// A frame from the target, owned so it can cross from the reader thread.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    New {
        seq: u32,
    },
    Resume {
        seq: u32,
        offset: u64,
        prefix: [u8; 32],
    },
    Have {
        seq: u32,
        sha256: [u8; 32],
    },
    Refuse {
        seq: u32,
        code: Code,
        message: String,
    },
    Committed {
        seq: u32,
        sha256: [u8; 32],
    },
    Failed {
        seq: u32,
        code: Code,
        message: String,
    },
    Bye,
    Fatal {
        code: Code,
        message: String,
    },
    Want {
        name: String,
    },
    Ready,
    Durable {
        seq: u32,
        offset: u64,
    },
    /// The chunks of a list the target lacks (`chunks` feature): bit `i` of `bits` (least
    /// significant first) for chunk `first + i`.
    Lacks {
        seq: u32,
        first: u64,
        count: u32,
        bits: Vec<u8>,
    },
}

/// Why the target's stream of replies ended without `Bye`.
#[derive(Debug)]
pub enum ReplyError {
    /// The target closed the stream between frames.
    Closed,
    /// The stream broke, or a frame did not decode.
    Stream(StreamError),
    /// The target sent a frame only a source sends (its `Debug` form).
    SourceFrame(String),
}

impl fmt::Display for ReplyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReplyError::Closed => f.write_str("the target closed the stream"),
            ReplyError::Stream(e) => write!(f, "{e}"),
            ReplyError::SourceFrame(frame) => {
                write!(f, "the target sent {frame}, which only a source sends")
            }
        }
    }
}

impl std::error::Error for ReplyError {}

impl Reply {
    fn from_frame(f: Frame<'_>) -> Result<Reply, ReplyError> {
        Ok(match f {
            Frame::Decision { seq, decision } => match decision {
                Decision::New => Reply::New { seq },
                Decision::Resume {
                    offset,
                    prefix_sha256,
                } => Reply::Resume {
                    seq,
                    offset,
                    prefix: prefix_sha256,
                },
                Decision::Have { sha256 } => Reply::Have { seq, sha256 },
                Decision::Refuse { code, message } => Reply::Refuse {
                    seq,
                    code,
                    message: message.to_string(),
                },
            },
            Frame::Outcome { seq, outcome } => match outcome {
                Outcome::Committed { sha256 } => Reply::Committed { seq, sha256 },
                Outcome::Failed { code, message } => Reply::Failed {
                    seq,
                    code,
                    message: message.to_string(),
                },
            },
            Frame::Bye => Reply::Bye,
            Frame::Want { name } => Reply::Want {
                name: name.to_string(),
            },
            Frame::Ready => Reply::Ready,
            Frame::Durable { seq, offset } => Reply::Durable { seq, offset },
            Frame::Lacks {
                seq,
                first,
                count,
                bits,
            } => Reply::Lacks {
                seq,
                first,
                count,
                bits: bits.to_vec(),
            },
            Frame::Fatal { code, message } => Reply::Fatal {
                code,
                message: message.to_string(),
            },
            other => return Err(ReplyError::SourceFrame(format!("{other:?}"))),
        })
    }
}

/// The target's replies as the session takes them: read on another thread (the caller's,
/// see [`forward_replies`]), so the sender can keep writing while decisions and outcomes
/// arrive. It ends with an error or `Bye`.
pub type Replies = Receiver<Result<Reply, ReplyError>>;

/// Replies read ahead of the session, at most.
const REPLIES_QUEUED: usize = 1024;

/// A channel for [`forward_replies`] to fill and [`run`] to take.
pub fn reply_channel() -> (SyncSender<Result<Reply, ReplyError>>, Replies) {
    mpsc::sync_channel(REPLIES_QUEUED)
}

/// Reads the target's frames from `input` into `tx` until the stream ends, breaks, says
/// `Bye`, or the session stops listening. Runs on a thread of its own.
pub fn forward_replies(input: impl Read, tx: &SyncSender<Result<Reply, ReplyError>>) {
    let mut r = FrameReader::new(input);
    loop {
        let item = match r.next_frame() {
            Ok(Some(f)) => Reply::from_frame(f),
            Ok(None) => Err(ReplyError::Closed),
            Err(e) => Err(ReplyError::Stream(e)),
        };
        let last = !matches!(item, Ok(ref r) if *r != Reply::Bye);
        if tx.send(item).is_err() || last {
            return;
        }
    }
}
