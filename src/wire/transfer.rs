//! Transfer frames: the byte format of one replication session through the tunnel
//! (`POST /tunnel/v1/transfer`, full duplex). Pure functions over bytes: [`decode`] never
//! allocates, never reads past what it was given and refuses an over-long frame from its
//! header alone, so a peer cannot make the reader buffer more than one frame's cap. Names
//! arrive as checked UTF-8 here; what a valid backup name is, is `replication::names`'s
//! business, checked before any filesystem access.
//!
//! A frame is `kind: u8`, `len: u32` (big endian, payload length), then `len` payload
//! bytes. Integers are big endian; strings are `u16` length + UTF-8.
//!
//! Source → target: `Offer`, `Start`, `Data`, `End`, `Skip`, `Finish`; with the session's
//! features (below) also `ZData` (`zstd`).
//! Target → source: `Want` (a copy it wants again, after a verify found it damaged) and
//! `Ready` first, then `Decision`, `Durable`, `Outcome`, `Bye`, `Fatal`.
//!
//! With the `chunks` feature (SPEC 18) a started file may instead be described by lists of
//! its content-defined chunks (`Chunks`: length and a 16-byte SHA-256 prefix each); the
//! target answers each list with the chunks it lacks (`Lacks`, a bitmap), and the frames
//! that follow carry only those chunks' bytes, in order (as `Data`, or `ZData` when `zstd`
//! was agreed too). `Plain` ends the lists: the rest of the file follows as ordinary data
//! frames.
//!
//! **Features** are negotiated once per session, in HTTP headers of `POST
//! /tunnel/v1/transfer` ([`FEATURES_HEADER`]): the source names what it can use, the
//! target answers with the part it will use ([`Features`]); a peer that sends or gets no
//! such header uses none, so older versions interoperate. A frame of a feature that was
//! not agreed is a protocol error.

use std::fmt;

/// The header both sides name their features in (request: what the source can use;
/// response: what the target agreed to).
pub const FEATURES_HEADER: &str = "Replgate-Features";

/// The optional parts of the protocol one session uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Features {
    /// `zstd`: file content may come compressed (`ZData`).
    pub zstd: bool,
    /// `chunks`: chunk lists (`Chunks`, `Lacks`, `Plain`): only what the target lacks.
    pub chunks: bool,
}

impl Features {
    /// Everything this version implements.
    pub const ALL: Features = Features {
        zstd: true,
        chunks: true,
    };

    /// The features named in a header value: comma-separated names, blanks around them
    /// ignored, names this version does not know skipped.
    pub fn parse(value: &str) -> Features {
        let mut f = Features::default();
        for name in value.split(',').map(str::trim) {
            f.zstd |= name == "zstd";
            f.chunks |= name == "chunks";
        }
        f
    }

    /// What both `self` and `other` use.
    pub fn and(self, other: Features) -> Features {
        Features {
            zstd: self.zstd && other.zstd,
            chunks: self.chunks && other.chunks,
        }
    }

    /// The header value naming these features (empty for none).
    pub fn render(self) -> String {
        let names = [(self.zstd, "zstd"), (self.chunks, "chunks")];
        let on: Vec<&str> = names.iter().filter(|n| n.0).map(|n| n.1).collect();
        on.join(", ")
    }
}

/// Bytes in a frame header (kind + length).
pub const HEADER_LEN: usize = 5;
/// Largest `Data` payload (its 4-byte sequence number included).
pub const MAX_DATA_PAYLOAD: usize = 4 + MAX_DATA;
/// Largest `ZData` payload: sequence number, claimed length, and compressed content no
/// longer than the content it stands for (else the source sends it raw).
pub const MAX_ZDATA_PAYLOAD: usize = 8 + MAX_DATA;
/// Largest amount of file content in one `Data` frame.
pub const MAX_DATA: usize = 256 * 1024;
/// Largest payload of any other frame: names and messages are short.
pub const MAX_CONTROL_PAYLOAD: usize = 4 * 1024;
/// Longest name or message the format carries (semantic limits are tighter).
pub const MAX_TEXT: usize = 2 * 1024;
/// Most chunks one `Chunks` frame lists (and one `Lacks` frame answers).
pub const MAX_LIST: usize = 8 * 1024;
/// Bytes of one listed chunk: its length (`u16`) and the first 16 bytes of its SHA-256.
pub const LIST_ENTRY: usize = 2 + DIGEST_PREFIX;
/// The bytes of a chunk's SHA-256 that a list carries: enough to find it (the target
/// re-hashes every chunk it uses, and the whole file's SHA-256 decides).
pub const DIGEST_PREFIX: usize = 16;
/// Largest `Chunks` payload: sequence number, first index, [`MAX_LIST`] entries.
pub const MAX_CHUNKS_PAYLOAD: usize = 12 + MAX_LIST * LIST_ENTRY;
/// Largest `Lacks` payload: sequence number, first index, count, the bitmap.
pub const MAX_LACKS_PAYLOAD: usize = 16 + MAX_LIST / 8;

/// The chunks of one `Chunks` frame, as they are on the wire: [`LIST_ENTRY`] bytes each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkList<'a>(&'a [u8]);

impl<'a> ChunkList<'a> {
    /// A list over encoded entries (see [`push_list_entry`]); None unless whole entries.
    pub fn new(bytes: &'a [u8]) -> Option<ChunkList<'a>> {
        bytes
            .len()
            .is_multiple_of(LIST_ENTRY)
            .then_some(ChunkList(bytes))
    }

    pub fn len(&self) -> usize {
        self.0.len() / LIST_ENTRY
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Each chunk's length and digest prefix, in order.
    pub fn iter(&self) -> impl Iterator<Item = (u32, [u8; DIGEST_PREFIX])> + 'a {
        self.0.chunks_exact(LIST_ENTRY).map(|e| {
            let mut d = [0u8; DIGEST_PREFIX];
            d.copy_from_slice(&e[2..]);
            (u32::from(u16::from_be_bytes([e[0], e[1]])), d)
        })
    }

    pub fn bytes(&self) -> &'a [u8] {
        self.0
    }
}

/// Appends one list entry (`len` at most `u16::MAX`) to `out`.
pub fn push_list_entry(out: &mut Vec<u8>, len: u16, digest: &[u8]) {
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&digest[..DIGEST_PREFIX]);
}

const OFFER: u8 = 0x01;
const START: u8 = 0x02;
const DATA: u8 = 0x03;
const END: u8 = 0x04;
const SKIP: u8 = 0x05;
const FINISH: u8 = 0x06;
const ZDATA: u8 = 0x07;
const DECISION: u8 = 0x81;
const OUTCOME: u8 = 0x82;
const BYE: u8 = 0x83;
const FATAL: u8 = 0x84;
const WANT: u8 = 0x85;
const READY: u8 = 0x86;
const DURABLE: u8 = 0x87;
const CHUNKS: u8 = 0x0A;
const PLAIN: u8 = 0x0B;
const LACKS: u8 = 0x8A;

/// Why a target refuses or fails a file, as a number on the wire. The source's queue
/// decides from it whether to retry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Code {
    /// The name is not a valid backup name (`..`, absolute, NUL, too long, dot component).
    BadName,
    /// The transfer would pass the source's quota.
    Quota,
    /// The storage does not have room for the file.
    NoSpace,
    /// Another session of the same source is receiving this file now.
    Busy,
    /// More or fewer bytes arrived than the offer announced.
    SizeMismatch,
    /// The SHA-256 the target computed differs from the source's.
    DigestMismatch,
    /// The target could not write or read its storage.
    Storage,
    /// The peer broke the protocol (unknown sequence number, frame out of order).
    Protocol,
    /// The source is not (or no longer) paired, or has no storage.
    NotPaired,
    /// The target is shutting down or overloaded; try again later.
    Unavailable,
    /// A code this version does not know (sent by a newer peer).
    Other(u16),
}

impl Code {
    pub fn number(self) -> u16 {
        match self {
            Code::BadName => 1,
            Code::Quota => 2,
            Code::NoSpace => 3,
            Code::Busy => 4,
            Code::SizeMismatch => 5,
            Code::DigestMismatch => 6,
            Code::Storage => 7,
            Code::Protocol => 8,
            Code::NotPaired => 9,
            Code::Unavailable => 10,
            Code::Other(n) => n,
        }
    }

    pub fn from_number(n: u16) -> Code {
        match n {
            1 => Code::BadName,
            2 => Code::Quota,
            3 => Code::NoSpace,
            4 => Code::Busy,
            5 => Code::SizeMismatch,
            6 => Code::DigestMismatch,
            7 => Code::Storage,
            8 => Code::Protocol,
            9 => Code::NotPaired,
            10 => Code::Unavailable,
            n => Code::Other(n),
        }
    }
}

/// The target's answer to an offer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision<'a> {
    /// Nothing held: send from byte 0.
    New,
    /// `offset` bytes are durable in a partial copy whose SHA-256 is `prefix_sha256`; send
    /// from there if the source's own prefix has the same digest, else from 0.
    Resume {
        offset: u64,
        prefix_sha256: [u8; 32],
    },
    /// A complete, verified copy of the offered size is held with this digest.
    Have { sha256: [u8; 32] },
    /// Not accepted; `code` says why.
    Refuse { code: Code, message: &'a str },
}

/// How a file ended on the target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome<'a> {
    /// Verified and durable at its final name.
    Committed { sha256: [u8; 32] },
    /// Discarded (or, for a broken connection, kept as a partial for resume).
    Failed { code: Code, message: &'a str },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// "I would send file `name` of `size` bytes" (`version`: the source's modification
    /// time in nanoseconds, so a partial copy of an older version is never resumed).
    Offer {
        seq: u32,
        size: u64,
        version: i64,
        name: &'a str,
    },
    /// Content of file `seq` follows, from `offset` (0, or the offset of a `Resume`).
    Start {
        seq: u32,
        offset: u64,
    },
    /// The next bytes of the started file.
    Data {
        seq: u32,
        bytes: &'a [u8],
    },
    /// The next `raw_len` bytes of the started file, as one zstd frame (`wire::compress`).
    /// `raw_len` is at most [`MAX_DATA`] (the receiver checks, and never trusts it further
    /// than decoding into that many bytes).
    ZData {
        seq: u32,
        raw_len: u32,
        bytes: &'a [u8],
    },
    /// The started file is complete; the source's SHA-256 over all of it.
    End {
        seq: u32,
        sha256: [u8; 32],
    },
    /// The source will not send offered file `seq` (the target holds it, or it went away).
    Skip {
        seq: u32,
    },
    /// No more files in this session.
    Finish,
    Decision {
        seq: u32,
        decision: Decision<'a>,
    },
    Outcome {
        seq: u32,
        outcome: Outcome<'a>,
    },
    /// The target has answered everything; the session is over.
    Bye,
    /// The target ends the session early (not paired, storage offline, protocol broken).
    Fatal {
        code: Code,
        message: &'a str,
    },
    /// The target wants this backup sent again (a verify found its copy damaged).
    Want {
        name: &'a str,
    },
    /// The target's greeting is complete (after any `Want`s); offers may be answered.
    Ready,
    /// The first `offset` bytes of the started file `seq` are durable on the target (a
    /// checkpoint recorded them): a transfer cut now resumes from at least there. The
    /// source keeps what it sends within a window of this (`receiver::window_for`).
    Durable {
        seq: u32,
        offset: u64,
    },
    /// The next chunks of the started file `seq` (`chunks` feature): `first` is the index
    /// of the first of them among the file's chunks since its `Start`.
    Chunks {
        seq: u32,
        first: u64,
        list: ChunkList<'a>,
    },
    /// No more chunk lists for file `seq`: after the listed chunks, its bytes come as
    /// ordinary `Data`.
    Plain {
        seq: u32,
    },
    /// The target's answer to the list of file `seq` that starts at `first`: bit `i`
    /// (least significant first in each byte) set means chunk `first + i` is lacking and
    /// its bytes should follow in `Data`; clear means the target holds it.
    Lacks {
        seq: u32,
        first: u64,
        count: u32,
        bits: &'a [u8],
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FrameError {
    UnknownKind(u8),
    /// The header announces more than this kind of frame may carry.
    TooLong {
        kind: u8,
        len: u32,
    },
    /// The payload does not have the layout of its kind.
    Malformed {
        kind: u8,
        what: &'static str,
    },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::UnknownKind(k) => write!(f, "unknown frame kind 0x{k:02x}"),
            FrameError::TooLong { kind, len } => {
                write!(
                    f,
                    "frame kind 0x{kind:02x} announces {len} bytes, over its limit"
                )
            }
            FrameError::Malformed { kind, what } => {
                write!(f, "frame kind 0x{kind:02x}: {what}")
            }
        }
    }
}

impl std::error::Error for FrameError {}

/// The most payload a frame of `kind` may carry, or None for an unknown kind.
pub fn payload_limit(kind: u8) -> Option<usize> {
    match kind {
        DATA => Some(MAX_DATA_PAYLOAD),
        ZDATA => Some(MAX_ZDATA_PAYLOAD),
        CHUNKS => Some(MAX_CHUNKS_PAYLOAD),
        LACKS => Some(MAX_LACKS_PAYLOAD),
        OFFER | START | END | SKIP | FINISH | DECISION | OUTCOME | BYE | FATAL | WANT | READY
        | DURABLE | PLAIN => Some(MAX_CONTROL_PAYLOAD),
        _ => None,
    }
}

/// Checks a frame header: the payload length it announces, if the kind is known and the
/// length within its limit.
pub fn check_header(header: &[u8; HEADER_LEN]) -> Result<usize, FrameError> {
    let kind = header[0];
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
    let limit = payload_limit(kind).ok_or(FrameError::UnknownKind(kind))?;
    if len as usize > limit {
        return Err(FrameError::TooLong { kind, len });
    }
    Ok(len as usize)
}

/// Decodes one frame from the start of `buf`: `Ok(None)` when more bytes are needed,
/// otherwise the frame and the number of bytes it used.
pub fn decode(buf: &[u8]) -> Result<Option<(Frame<'_>, usize)>, FrameError> {
    let Some(header) = buf.get(..HEADER_LEN) else {
        return Ok(None);
    };
    let mut h = [0u8; HEADER_LEN];
    h.copy_from_slice(header);
    let len = check_header(&h)?;
    let Some(payload) = buf.get(HEADER_LEN..HEADER_LEN + len) else {
        return Ok(None);
    };
    Ok(Some((decode_payload(h[0], payload)?, HEADER_LEN + len)))
}

/// A cursor over a payload that fails with the frame's kind named.
struct Cursor<'a> {
    kind: u8,
    rest: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn bytes(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], FrameError> {
        if self.rest.len() < n {
            return Err(FrameError::Malformed {
                kind: self.kind,
                what,
            });
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, FrameError> {
        Ok(self.bytes(1, what)?[0])
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, FrameError> {
        let b = self.bytes(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, FrameError> {
        let b = self.bytes(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, FrameError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.bytes(8, what)?);
        Ok(u64::from_be_bytes(a))
    }

    fn digest(&mut self, what: &'static str) -> Result<[u8; 32], FrameError> {
        let mut a = [0u8; 32];
        a.copy_from_slice(self.bytes(32, what)?);
        Ok(a)
    }

    fn text(&mut self, what: &'static str) -> Result<&'a str, FrameError> {
        let n = self.u16(what)? as usize;
        if n > MAX_TEXT {
            return Err(FrameError::Malformed {
                kind: self.kind,
                what,
            });
        }
        std::str::from_utf8(self.bytes(n, what)?).map_err(|_| FrameError::Malformed {
            kind: self.kind,
            what,
        })
    }

    fn end(self) -> Result<(), FrameError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(FrameError::Malformed {
                kind: self.kind,
                what: "trailing bytes",
            })
        }
    }
}

fn decode_payload(kind: u8, payload: &[u8]) -> Result<Frame<'_>, FrameError> {
    let mut c = Cursor {
        kind,
        rest: payload,
    };
    let frame = match kind {
        OFFER => Frame::Offer {
            seq: c.u32("sequence number")?,
            size: c.u64("size")?,
            version: c.u64("version")? as i64,
            name: c.text("name")?,
        },
        START => Frame::Start {
            seq: c.u32("sequence number")?,
            offset: c.u64("offset")?,
        },
        DATA => {
            let seq = c.u32("sequence number")?;
            let bytes = c.rest;
            c.rest = &[];
            Frame::Data { seq, bytes }
        }
        ZDATA => {
            let seq = c.u32("sequence number")?;
            let raw_len = c.u32("length")?;
            let bytes = c.rest;
            c.rest = &[];
            Frame::ZData {
                seq,
                raw_len,
                bytes,
            }
        }
        END => Frame::End {
            seq: c.u32("sequence number")?,
            sha256: c.digest("sha256")?,
        },
        SKIP => Frame::Skip {
            seq: c.u32("sequence number")?,
        },
        FINISH => Frame::Finish,
        DECISION => {
            let seq = c.u32("sequence number")?;
            let decision = match c.u8("decision")? {
                0 => Decision::New,
                1 => Decision::Resume {
                    offset: c.u64("offset")?,
                    prefix_sha256: c.digest("prefix sha256")?,
                },
                2 => Decision::Have {
                    sha256: c.digest("sha256")?,
                },
                3 => Decision::Refuse {
                    code: Code::from_number(c.u16("code")?),
                    message: c.text("message")?,
                },
                _ => {
                    return Err(FrameError::Malformed {
                        kind,
                        what: "unknown decision",
                    })
                }
            };
            Frame::Decision { seq, decision }
        }
        OUTCOME => {
            let seq = c.u32("sequence number")?;
            let outcome = match c.u8("outcome")? {
                0 => Outcome::Committed {
                    sha256: c.digest("sha256")?,
                },
                1 => Outcome::Failed {
                    code: Code::from_number(c.u16("code")?),
                    message: c.text("message")?,
                },
                _ => {
                    return Err(FrameError::Malformed {
                        kind,
                        what: "unknown outcome",
                    })
                }
            };
            Frame::Outcome { seq, outcome }
        }
        BYE => Frame::Bye,
        FATAL => Frame::Fatal {
            code: Code::from_number(c.u16("code")?),
            message: c.text("message")?,
        },
        WANT => Frame::Want {
            name: c.text("name")?,
        },
        READY => Frame::Ready,
        DURABLE => Frame::Durable {
            seq: c.u32("sequence number")?,
            offset: c.u64("offset")?,
        },
        CHUNKS | LACKS => decode_list(kind, &mut c)?,
        PLAIN => Frame::Plain {
            seq: c.u32("sequence number")?,
        },
        other => return Err(FrameError::UnknownKind(other)),
    };
    c.end()?;
    Ok(frame)
}

/// A `Chunks` list or its `Lacks` answer (`chunks` feature), whole or refused.
fn decode_list<'a>(kind: u8, c: &mut Cursor<'a>) -> Result<Frame<'a>, FrameError> {
    let seq = c.u32("sequence number")?;
    let first = c.u64("first index")?;
    if kind == CHUNKS {
        let list =
            ChunkList::new(c.rest)
                .filter(|l| !l.is_empty())
                .ok_or(FrameError::Malformed {
                    kind,
                    what: "chunk list",
                })?;
        c.rest = &[];
        return Ok(Frame::Chunks { seq, first, list });
    }
    let count = c.u32("count")?;
    if count == 0 || count as usize > MAX_LIST {
        return Err(FrameError::Malformed {
            kind,
            what: "count",
        });
    }
    let bits = c.bytes((count as usize).div_ceil(8), "bitmap")?;
    Ok(Frame::Lacks {
        seq,
        first,
        count,
        bits,
    })
}

/// Cuts `s` to at most [`MAX_TEXT`] bytes at a character boundary.
fn clip(s: &str) -> &str {
    if s.len() <= MAX_TEXT {
        return s;
    }
    let mut end = MAX_TEXT;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn put_text(out: &mut Vec<u8>, s: &str) {
    let s = clip(s);
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Appends `frame` to `out`. Texts longer than [`MAX_TEXT`] are cut; a `Data` frame's
/// bytes must not exceed [`MAX_DATA`] (callers read at most that much).
pub fn encode(frame: &Frame<'_>, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER_LEN]);
    let kind = match frame {
        Frame::Offer {
            seq,
            size,
            version,
            name,
        } => {
            out.extend_from_slice(&seq.to_be_bytes());
            out.extend_from_slice(&size.to_be_bytes());
            out.extend_from_slice(&(*version as u64).to_be_bytes());
            put_text(out, name);
            OFFER
        }
        Frame::Start { seq, offset } => {
            out.extend_from_slice(&seq.to_be_bytes());
            out.extend_from_slice(&offset.to_be_bytes());
            START
        }
        Frame::Data { seq, bytes } => {
            out.extend_from_slice(&seq.to_be_bytes());
            out.extend_from_slice(bytes);
            DATA
        }
        Frame::ZData {
            seq,
            raw_len,
            bytes,
        } => {
            out.extend_from_slice(&seq.to_be_bytes());
            out.extend_from_slice(&raw_len.to_be_bytes());
            out.extend_from_slice(bytes);
            ZDATA
        }
        Frame::End { seq, sha256 } => {
            out.extend_from_slice(&seq.to_be_bytes());
            out.extend_from_slice(sha256);
            END
        }
        Frame::Skip { seq } => {
            out.extend_from_slice(&seq.to_be_bytes());
            SKIP
        }
        Frame::Finish => FINISH,
        Frame::Decision { seq, decision } => {
            out.extend_from_slice(&seq.to_be_bytes());
            put_decision(out, decision);
            DECISION
        }
        Frame::Outcome { seq, outcome } => {
            out.extend_from_slice(&seq.to_be_bytes());
            match outcome {
                Outcome::Committed { sha256 } => {
                    out.push(0);
                    out.extend_from_slice(sha256);
                }
                Outcome::Failed { code, message } => {
                    out.push(1);
                    out.extend_from_slice(&code.number().to_be_bytes());
                    put_text(out, message);
                }
            }
            OUTCOME
        }
        Frame::Bye => BYE,
        Frame::Fatal { code, message } => {
            out.extend_from_slice(&code.number().to_be_bytes());
            put_text(out, message);
            FATAL
        }
        Frame::Want { name } => {
            put_text(out, name);
            WANT
        }
        Frame::Ready => READY,
        Frame::Durable { seq, offset } => {
            out.extend_from_slice(&seq.to_be_bytes());
            out.extend_from_slice(&offset.to_be_bytes());
            DURABLE
        }
        Frame::Chunks { seq, first, list } => {
            out.extend_from_slice(&seq.to_be_bytes());
            out.extend_from_slice(&first.to_be_bytes());
            out.extend_from_slice(list.bytes());
            CHUNKS
        }
        Frame::Plain { seq } => {
            out.extend_from_slice(&seq.to_be_bytes());
            PLAIN
        }
        Frame::Lacks {
            seq,
            first,
            count,
            bits,
        } => {
            out.extend_from_slice(&seq.to_be_bytes());
            out.extend_from_slice(&first.to_be_bytes());
            out.extend_from_slice(&count.to_be_bytes());
            out.extend_from_slice(bits);
            LACKS
        }
    };
    let len = (out.len() - start - HEADER_LEN) as u32;
    out[start] = kind;
    out[start + 1..start + HEADER_LEN].copy_from_slice(&len.to_be_bytes());
}

/// A `Decision` frame's answer: its tag and fields.
fn put_decision(out: &mut Vec<u8>, decision: &Decision<'_>) {
    match decision {
        Decision::New => out.push(0),
        Decision::Resume {
            offset,
            prefix_sha256,
        } => {
            out.push(1);
            out.extend_from_slice(&offset.to_be_bytes());
            out.extend_from_slice(prefix_sha256);
        }
        Decision::Have { sha256 } => {
            out.push(2);
            out.extend_from_slice(sha256);
        }
        Decision::Refuse { code, message } => {
            out.push(3);
            out.extend_from_slice(&code.number().to_be_bytes());
            put_text(out, message);
        }
    }
}

/// The header of a `Data` frame carrying `len` content bytes of file `seq`, so a sender
/// can write header and content without copying the content into a frame buffer.
pub fn data_header(seq: u32, len: usize) -> [u8; HEADER_LEN + 4] {
    let mut h = [0u8; HEADER_LEN + 4];
    h[0] = DATA;
    h[1..5].copy_from_slice(&((4 + len) as u32).to_be_bytes());
    h[5..9].copy_from_slice(&seq.to_be_bytes());
    h
}

/// The header of a `ZData` frame of file `seq` whose `len` compressed bytes stand for
/// `raw_len` bytes of content.
pub fn zdata_header(seq: u32, raw_len: usize, len: usize) -> [u8; HEADER_LEN + 8] {
    let mut h = [0u8; HEADER_LEN + 8];
    h[0] = ZDATA;
    h[1..5].copy_from_slice(&((8 + len) as u32).to_be_bytes());
    h[5..9].copy_from_slice(&seq.to_be_bytes());
    h[9..13].copy_from_slice(&(raw_len as u32).to_be_bytes());
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<Frame<'static>> {
        vec![
            Frame::Offer {
                seq: 7,
                size: 1 << 40,
                version: -5,
                name: "client/backup-1.img",
            },
            Frame::Start {
                seq: 7,
                offset: 123,
            },
            Frame::Data {
                seq: 7,
                bytes: b"hello",
            },
            Frame::Data { seq: 8, bytes: b"" },
            Frame::ZData {
                seq: 7,
                raw_len: 262_144,
                bytes: b"(zstd)",
            },
            Frame::End {
                seq: 7,
                sha256: [9; 32],
            },
            Frame::Skip { seq: 3 },
            Frame::Finish,
            Frame::Decision {
                seq: 1,
                decision: Decision::New,
            },
            Frame::Decision {
                seq: 2,
                decision: Decision::Resume {
                    offset: 77,
                    prefix_sha256: [1; 32],
                },
            },
            Frame::Decision {
                seq: 3,
                decision: Decision::Have { sha256: [2; 32] },
            },
            Frame::Decision {
                seq: 4,
                decision: Decision::Refuse {
                    code: Code::Quota,
                    message: "quota of 10 MB exceeded",
                },
            },
            Frame::Outcome {
                seq: 5,
                outcome: Outcome::Committed { sha256: [3; 32] },
            },
            Frame::Outcome {
                seq: 6,
                outcome: Outcome::Failed {
                    code: Code::Other(999),
                    message: "später",
                },
            },
            Frame::Bye,
            Frame::Fatal {
                code: Code::NotPaired,
                message: "no",
            },
            Frame::Want { name: "c/x" },
            Frame::Ready,
            Frame::Durable {
                seq: 7,
                offset: 1 << 33,
            },
            Frame::Chunks {
                seq: 7,
                first: 8192,
                list: ChunkList::new(&SAMPLE_LIST).unwrap(),
            },
            Frame::Plain { seq: 7 },
            Frame::Lacks {
                seq: 7,
                first: 8192,
                count: 10,
                bits: &[0b1000_0001, 0b10],
            },
        ]
    }

    const SAMPLE_LIST: [u8; 2 * LIST_ENTRY] = {
        let mut l = [7u8; 2 * LIST_ENTRY];
        l[0] = 0x20;
        l[1] = 0;
        l
    };

    #[test]
    fn every_frame_round_trips_and_needs_all_its_bytes() {
        for f in samples() {
            let mut buf = Vec::new();
            encode(&f, &mut buf);
            let (back, used) = decode(&buf).unwrap().unwrap();
            assert_eq!(back, f);
            assert_eq!(used, buf.len());
            for cut in 0..buf.len() {
                assert_eq!(decode(&buf[..cut]).unwrap(), None, "{f:?} cut at {cut}");
            }
        }
    }

    #[test]
    fn frames_follow_each_other_in_one_buffer() {
        let mut buf = Vec::new();
        for f in samples() {
            encode(&f, &mut buf);
        }
        let mut at = 0;
        let mut n = 0;
        while let Some((_, used)) = decode(&buf[at..]).unwrap() {
            at += used;
            n += 1;
        }
        assert_eq!((n, at), (samples().len(), buf.len()));
    }

    #[test]
    fn data_header_matches_the_encoder() {
        let mut a = Vec::new();
        encode(
            &Frame::Data {
                seq: 42,
                bytes: b"xyz",
            },
            &mut a,
        );
        let mut b = data_header(42, 3).to_vec();
        b.extend_from_slice(b"xyz");
        assert_eq!(a, b);
    }

    #[test]
    fn zdata_header_matches_the_encoder() {
        let mut a = Vec::new();
        encode(
            &Frame::ZData {
                seq: 9,
                raw_len: 1000,
                bytes: b"abc",
            },
            &mut a,
        );
        let mut b = zdata_header(9, 1000, 3).to_vec();
        b.extend_from_slice(b"abc");
        assert_eq!(a, b);
    }

    #[test]
    fn features_parse_skip_unknown_names_and_intersect() {
        assert_eq!(Features::parse(""), Features::default());
        let both = Features::parse(" zstd ,window,chunks, brotli");
        assert_eq!(both, Features::ALL);
        assert_eq!(Features::parse(&both.render()), both);
        assert_eq!(both.render(), "zstd, chunks");
        assert_eq!(
            Features::parse("window").and(Features::ALL),
            Features::default()
        );
        assert_eq!(Features::ALL.and(Features::default()).render(), "");
        assert_eq!(
            Features::parse("ZSTD"),
            Features::default(),
            "names are exact"
        );
    }

    #[test]
    fn oversized_and_unknown_frames_are_refused_from_the_header_alone() {
        let mut h = [ZDATA, 0, 0, 0, 0];
        h[1..5].copy_from_slice(&(MAX_ZDATA_PAYLOAD as u32 + 1).to_be_bytes());
        assert!(matches!(decode(&h), Err(FrameError::TooLong { .. })));
        let mut h = [DATA, 0, 0, 0, 0];
        h[1..5].copy_from_slice(&(MAX_DATA_PAYLOAD as u32 + 1).to_be_bytes());
        assert!(matches!(decode(&h), Err(FrameError::TooLong { .. })));
        let mut h = [OFFER, 0, 0, 0, 0];
        h[1..5].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(decode(&h), Err(FrameError::TooLong { .. })));
        assert_eq!(
            decode(&[0x7f, 0, 0, 0, 0]),
            Err(FrameError::UnknownKind(0x7f))
        );
    }

    #[test]
    fn malformed_payloads_are_errors_not_panics() {
        // Truncated fields, trailing bytes, bad UTF-8, unknown decision.
        let cases: Vec<Vec<u8>> = vec![
            vec![START, 0, 0, 0, 3, 0, 0, 1],
            vec![SKIP, 0, 0, 0, 5, 0, 0, 0, 1, 9],
            vec![OFFER, 0, 0, 0, 6, 0, 0, 0, 1, 0, 0],
            {
                let mut v = vec![OFFER, 0, 0, 0, 0];
                v.extend_from_slice(&1u32.to_be_bytes());
                v.extend_from_slice(&1u64.to_be_bytes());
                v.extend_from_slice(&1u64.to_be_bytes());
                v.extend_from_slice(&2u16.to_be_bytes());
                v.extend_from_slice(&[0xff, 0xfe]);
                let len = (v.len() - 5) as u32;
                v[1..5].copy_from_slice(&len.to_be_bytes());
                v
            },
            vec![DECISION, 0, 0, 0, 5, 0, 0, 0, 1, 9],
            vec![FINISH, 0, 0, 0, 1, 0],
        ];
        for c in cases {
            assert!(
                matches!(decode(&c), Err(FrameError::Malformed { .. })),
                "{c:?}: {:?}",
                decode(&c)
            );
        }
    }

    #[test]
    fn long_texts_are_cut_at_a_character_boundary() {
        let long = "é".repeat(MAX_TEXT);
        let mut buf = Vec::new();
        encode(
            &Frame::Fatal {
                code: Code::Storage,
                message: &long,
            },
            &mut buf,
        );
        let Some((Frame::Fatal { message, .. }, _)) = decode(&buf).unwrap() else {
            panic!("not a fatal frame");
        };
        assert!(message.len() <= MAX_TEXT && message.chars().all(|c| c == 'é'));
    }

    #[test]
    fn chunk_lists_and_answers_are_bounded_and_whole() {
        // A full list fits its limit; one more entry is refused from the header alone.
        let full = vec![1u8; MAX_LIST * LIST_ENTRY];
        let mut buf = Vec::new();
        encode(
            &Frame::Chunks {
                seq: 1,
                first: 0,
                list: ChunkList::new(&full).unwrap(),
            },
            &mut buf,
        );
        let Some((Frame::Chunks { list, .. }, _)) = decode(&buf).unwrap() else {
            panic!("not a list");
        };
        assert_eq!(list.len(), MAX_LIST);
        assert_eq!(list.iter().next(), Some((0x0101, [1; DIGEST_PREFIX])));
        let mut h = [CHUNKS, 0, 0, 0, 0];
        h[1..5].copy_from_slice(&(MAX_CHUNKS_PAYLOAD as u32 + 1).to_be_bytes());
        assert!(matches!(decode(&h), Err(FrameError::TooLong { .. })));
        let mut h = [LACKS, 0, 0, 0, 0];
        h[1..5].copy_from_slice(&(MAX_LACKS_PAYLOAD as u32 + 1).to_be_bytes());
        assert!(matches!(decode(&h), Err(FrameError::TooLong { .. })));
        // An empty list, a part of an entry, a bitmap shorter than its count, a count of
        // zero or over the limit: malformed.
        let mut bad = vec![CHUNKS, 0, 0, 0, 0];
        bad.extend_from_slice(&[0; 12]);
        bad.extend_from_slice(&[0; LIST_ENTRY + 1]);
        let len = (bad.len() - 5) as u32;
        bad[1..5].copy_from_slice(&len.to_be_bytes());
        assert!(matches!(decode(&bad), Err(FrameError::Malformed { .. })));
        let empty = [CHUNKS, 0, 0, 0, 12, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0];
        assert!(matches!(decode(&empty), Err(FrameError::Malformed { .. })));
        for (count, bitmap) in [(9u32, 1usize), (0, 0), (MAX_LIST as u32 + 8, 1025)] {
            let mut v = vec![LACKS, 0, 0, 0, 0];
            v.extend_from_slice(&1u32.to_be_bytes());
            v.extend_from_slice(&0u64.to_be_bytes());
            v.extend_from_slice(&count.to_be_bytes());
            v.extend(std::iter::repeat_n(0xff, bitmap));
            let len = (v.len() - 5) as u32;
            v[1..5].copy_from_slice(&len.to_be_bytes());
            assert!(decode(&v).is_err(), "count {count}");
        }
    }

    #[test]
    fn features_are_agreed_by_name_and_unknown_names_are_ignored() {
        let offered = Features::parse("zstd, chunks, brotli");
        assert_eq!(
            offered,
            Features {
                zstd: true,
                chunks: true
            }
        );
        let ours = Features {
            zstd: false,
            chunks: true,
        };
        assert_eq!(offered.and(ours).render(), "chunks");
        assert_eq!(Features::parse(""), Features::default());
        assert_eq!(Features::default().render(), "");
        assert_eq!(Features::parse(&offered.render()), offered);
    }

    #[test]
    fn codes_round_trip_through_numbers() {
        for n in 0..20u16 {
            assert_eq!(Code::from_number(n).number(), n);
        }
    }
}
