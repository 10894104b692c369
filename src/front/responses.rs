//! Which forwarded requests the backend has fully answered: follows the framing of the
//! backend's response stream (heads, `Content-Length` and chunked bodies) as its bytes
//! pass by, so the relay knows when nothing is in flight and may add bytes of its own (a
//! `100 Continue`, an answer made in the front) without overtaking a response. Observes
//! bytes only; never changes them.

use std::collections::VecDeque;
use std::fmt;

use crate::wire::http::find_end;

/// A response head larger than this is not one tiny_http writes.
const MAX_RESPONSE_HEAD: usize = 16 * 1024;

/// The backend sent something that is not a well-framed answer to a forwarded request.
/// The relay then stops taking requests on the connection and lets it wind down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Unframed(&'static str);

impl fmt::Display for Unframed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// Responses owed by the backend, in request order, and where the current one stands.
///
/// Invariant: `owed` has one entry per forwarded request whose response has not ended
/// yet (true when that request was a `HEAD`, whose response has no body); `state` is
/// `Head` with an empty `head` exactly when no response has begun.
pub(super) struct Responses {
    owed: VecDeque<bool>,
    state: State,
    /// The current response head, while it arrives in pieces.
    head: Vec<u8>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Reading a head (or waiting for one).
    Head,
    /// This many body bytes to go.
    Body(u64),
    /// Inside a chunked body.
    Chunked(Chunk),
    /// A body delimited by the end of the connection: nothing after it is a response.
    UntilClose,
    /// The stream stopped making sense; nothing more is tracked.
    Lost,
}

/// Position inside a chunked body (RFC 9112 section 7.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Chunk {
    /// Chunk size digits so far; `ext` once past them (extensions, ignored).
    Size {
        size: u64,
        digits: u8,
        ext: bool,
    },
    /// Seen the CR after the size line.
    SizeLf {
        size: u64,
    },
    /// Data bytes to go.
    Data(u64),
    /// The CRLF after the data.
    DataCr,
    DataLf,
    /// Trailer section; `empty` while the current line has no byte yet.
    Trailer {
        empty: bool,
    },
    TrailerLf {
        empty: bool,
    },
}

impl Responses {
    pub(super) fn new() -> Self {
        Responses {
            owed: VecDeque::new(),
            state: State::Head,
            head: Vec::new(),
        }
    }

    /// A request was forwarded; its response comes after those already owed.
    pub(super) fn expect(&mut self, head_request: bool) {
        self.owed.push_back(head_request);
    }

    /// Forwarded requests whose responses have not ended.
    pub(super) fn owed(&self) -> usize {
        self.owed.len()
    }

    /// Follows `bytes`, the next bytes the backend sent.
    pub(super) fn observe(&mut self, mut bytes: &[u8]) -> Result<(), Unframed> {
        let result = self.advance(&mut bytes);
        if result.is_err() {
            self.state = State::Lost;
            self.head = Vec::new();
        }
        result
    }

    fn advance(&mut self, bytes: &mut &[u8]) -> Result<(), Unframed> {
        while !bytes.is_empty() {
            match self.state {
                // Its body runs to the end of the connection; the response stays owed.
                State::Lost | State::UntilClose => return Ok(()),
                State::Head => self.head_bytes(bytes)?,
                State::Body(left) => {
                    let take = usize::try_from(left).map_or(bytes.len(), |l| l.min(bytes.len()));
                    *bytes = &bytes[take..];
                    let left = left - take as u64;
                    self.state = State::Body(left);
                    if left == 0 {
                        self.finish();
                    }
                }
                State::Chunked(chunk) => self.chunk_bytes(chunk, bytes)?,
            }
        }
        Ok(())
    }

    /// Takes head bytes from `bytes`; once the head is complete, decides how its body
    /// ends. Parses in place when the whole head is in `bytes` (the usual case).
    fn head_bytes(&mut self, bytes: &mut &[u8]) -> Result<(), Unframed> {
        if self.owed.is_empty() {
            return Err(Unframed("response without a request"));
        }
        let (status, framing) = if self.head.is_empty() {
            match find_end(bytes, 0) {
                Some(end) => {
                    let parsed = parse_head(&bytes[..end])?;
                    *bytes = &bytes[end..];
                    parsed
                }
                None => return self.keep_partial_head(bytes),
            }
        } else {
            let before = self.head.len();
            let scan_from = before;
            self.head.extend_from_slice(bytes);
            match find_end(&self.head, scan_from) {
                Some(end) => {
                    let parsed = parse_head(&self.head[..end])?;
                    *bytes = &bytes[end - before..];
                    self.head.clear();
                    parsed
                }
                None => {
                    *bytes = &[];
                    if self.head.len() > MAX_RESPONSE_HEAD {
                        return Err(Unframed("response head too large"));
                    }
                    return Ok(());
                }
            }
        };
        let head_request = self.owed.front().copied().unwrap_or(false);
        self.state = match (status, framing) {
            (101, _) => return Err(Unframed("protocol switch")),
            // Interim: the final response to the same request follows.
            (100..=199, _) => State::Head,
            (204 | 304, _) => {
                self.finish();
                State::Head
            }
            _ if head_request => {
                self.finish();
                State::Head
            }
            (_, Framing::Length(0)) => {
                self.finish();
                State::Head
            }
            (_, Framing::Length(n)) => State::Body(n),
            (_, Framing::Chunked) => State::Chunked(Chunk::Size {
                size: 0,
                digits: 0,
                ext: false,
            }),
            (_, Framing::UntilClose) => State::UntilClose,
        };
        Ok(())
    }

    fn keep_partial_head(&mut self, bytes: &mut &[u8]) -> Result<(), Unframed> {
        if bytes.len() > MAX_RESPONSE_HEAD {
            return Err(Unframed("response head too large"));
        }
        self.head.extend_from_slice(bytes);
        *bytes = &[];
        Ok(())
    }

    fn chunk_bytes(&mut self, chunk: Chunk, bytes: &mut &[u8]) -> Result<(), Unframed> {
        if let Chunk::Data(left) = chunk {
            let take = usize::try_from(left).map_or(bytes.len(), |l| l.min(bytes.len()));
            *bytes = &bytes[take..];
            let left = left - take as u64;
            self.state = State::Chunked(if left == 0 {
                Chunk::DataCr
            } else {
                Chunk::Data(left)
            });
            return Ok(());
        }
        let b = bytes[0];
        *bytes = &bytes[1..];
        let next = match chunk {
            Chunk::Size { size, digits, ext } => match b {
                b'\r' if digits > 0 => Chunk::SizeLf { size },
                _ if ext => Chunk::Size { size, digits, ext },
                b';' | b' ' | b'\t' if digits > 0 => Chunk::Size {
                    size,
                    digits,
                    ext: true,
                },
                _ => {
                    let digit = (b as char).to_digit(16).ok_or(Unframed("bad chunk size"))?;
                    if digits >= 15 {
                        return Err(Unframed("chunk size too large"));
                    }
                    Chunk::Size {
                        size: size * 16 + u64::from(digit),
                        digits: digits + 1,
                        ext: false,
                    }
                }
            },
            Chunk::SizeLf { size } if b == b'\n' => {
                if size == 0 {
                    Chunk::Trailer { empty: true }
                } else {
                    Chunk::Data(size)
                }
            }
            Chunk::DataCr if b == b'\r' => Chunk::DataLf,
            Chunk::DataLf if b == b'\n' => Chunk::Size {
                size: 0,
                digits: 0,
                ext: false,
            },
            Chunk::Trailer { empty } => match b {
                b'\r' => Chunk::TrailerLf { empty },
                _ => Chunk::Trailer { empty: false },
            },
            Chunk::TrailerLf { empty: true } if b == b'\n' => {
                self.finish();
                self.state = State::Head;
                return Ok(());
            }
            Chunk::TrailerLf { empty: false } if b == b'\n' => Chunk::Trailer { empty: true },
            _ => return Err(Unframed("bad chunked framing")),
        };
        self.state = State::Chunked(next);
        Ok(())
    }

    /// The current response ended.
    fn finish(&mut self) {
        self.owed.pop_front();
        self.state = State::Head;
    }
}

/// How a response body ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    Length(u64),
    Chunked,
    UntilClose,
}

/// Status code and body framing of one complete response head.
fn parse_head(head: &[u8]) -> Result<(u16, Framing), Unframed> {
    let text = std::str::from_utf8(head).map_err(|_| Unframed("response head not text"))?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.splitn(3, ' ');
    let (Some(version), Some(code)) = (parts.next(), parts.next()) else {
        return Err(Unframed("bad status line"));
    };
    if !version.starts_with("HTTP/1.") || code.len() != 3 {
        return Err(Unframed("bad status line"));
    }
    let status: u16 = code.parse().map_err(|_| Unframed("bad status code"))?;
    let mut length = None;
    let mut chunked = None;
    for line in lines.filter(|l| !l.is_empty()) {
        let (name, value) = line
            .split_once(':')
            .ok_or(Unframed("bad response header"))?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            let n: u64 = value.parse().map_err(|_| Unframed("bad content-length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(Unframed("conflicting content-length"));
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            let last = value.rsplit(',').next().unwrap_or("").trim();
            chunked = Some(last.eq_ignore_ascii_case("chunked"));
        }
    }
    let framing = match (chunked, length) {
        (Some(true), _) => Framing::Chunked,
        (Some(false), _) => Framing::UntilClose,
        (None, Some(n)) => Framing::Length(n),
        (None, None) => Framing::UntilClose,
    };
    Ok((status, framing))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `stream` in pieces of `step` bytes and returns `owed()` after each piece.
    fn feed(r: &mut Responses, stream: &[u8], step: usize) -> Vec<usize> {
        stream
            .chunks(step)
            .map(|piece| {
                r.observe(piece).expect("well framed");
                r.owed()
            })
            .collect()
    }

    const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nDate: x\r\n\r\nhello";
    const CHUNKED: &[u8] = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
        A\r\n0123456789\r\n3;ext=1\r\nabc\r\n0\r\nTrailer: t\r\n\r\n";

    #[test]
    fn a_response_ends_exactly_at_its_last_byte_whatever_the_pieces() {
        for stream in [OK, CHUNKED] {
            for step in 1..=stream.len() {
                let mut r = Responses::new();
                r.expect(false);
                let seen = feed(&mut r, stream, step);
                let last = seen.len() - 1;
                assert!(
                    seen[..last].iter().all(|&n| n == 1),
                    "step {step}: {seen:?}"
                );
                assert_eq!(seen[last], 0, "step {step}");
            }
        }
    }

    #[test]
    fn pipelined_responses_are_counted_in_order_and_head_has_no_body() {
        let mut r = Responses::new();
        r.expect(false);
        r.expect(true);
        r.expect(false);
        let mut stream = OK.to_vec();
        // The response to HEAD announces a length but carries no body.
        stream.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n");
        stream.extend_from_slice(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 0\r\n\r\n");
        r.observe(&stream).expect("well framed");
        assert_eq!(r.owed(), 0);
    }

    #[test]
    fn interim_responses_do_not_end_a_request() {
        let mut r = Responses::new();
        r.expect(false);
        r.observe(b"HTTP/1.1 100 Continue\r\n\r\n")
            .expect("interim");
        assert_eq!(r.owed(), 1);
        r.observe(OK).expect("final");
        assert_eq!(r.owed(), 0);
    }

    #[test]
    fn anything_unframed_is_reported_and_then_ignored() {
        let cases: &[&[u8]] = &[
            b"garbage\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
        ];
        for stream in cases {
            let mut r = Responses::new();
            r.expect(false);
            assert!(
                r.observe(stream).is_err(),
                "{:?}",
                String::from_utf8_lossy(stream)
            );
            assert!(r.observe(OK).is_ok(), "lost state ignores the rest");
            assert_eq!(r.owed(), 1, "nothing counted as answered once lost");
        }
        let mut r = Responses::new();
        assert!(r.observe(OK).is_err(), "a response nobody asked for");
        let mut r = Responses::new();
        r.expect(false);
        r.observe(b"HTTP/1.0 200 OK\r\n\r\nbody until close")
            .expect("framed by close");
        r.expect(false);
        r.observe(OK).expect("still the same body");
        assert_eq!(r.owed(), 2, "a body without length never ends while open");
    }
}
