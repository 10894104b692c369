//! HTTP/1.1 chunked transfer coding (RFC 9112 section 7.1) as `Read` and `Write` adapters
//! over any stream: the tunnel server decodes chunked request bodies and encodes streamed
//! responses with them, and a client can do the same on its side. Framing only: no
//! sockets, no timeouts (the stream underneath has those), no allocation per chunk.

use std::io::{self, Read, Write};

/// Longest chunk-size line accepted, extensions included. Sizes need at most 16 hex
/// digits; extensions are ignored, so anything long is abuse.
const MAX_SIZE_LINE: usize = 1024;
/// Most trailer bytes read (and ignored) after the last chunk.
const MAX_TRAILERS: usize = 16 * 1024;

/// Where a decoder stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk with this many data bytes left.
    Data(u64),
    /// After a chunk's data: expecting its CRLF.
    DataEnd,
    /// The last chunk and the trailers were read: end of body.
    Done,
    /// A read failed (malformed framing, the stream ended or failed): the position in
    /// the framing is lost, so every later read fails too, with this kind.
    Failed(io::ErrorKind),
}

/// Decodes a chunked body from `inner`; `read` returns 0 once the last chunk and the
/// trailer section were read, and leaves `inner` just after the body, so a keep-alive
/// connection can go on with the next request. Malformed framing is `InvalidData`; a
/// stream that ends inside the body is `UnexpectedEof`. After an error every read fails:
/// reading on would take up the framing at some byte inside the body and could read the
/// rest of the body as a request of its own.
pub struct ChunkedReader<R> {
    inner: R,
    state: State,
}

impl<R: Read> ChunkedReader<R> {
    pub fn new(inner: R) -> Self {
        ChunkedReader {
            inner,
            state: State::Size,
        }
    }

    /// Whether the whole body (last chunk and trailers) has been read.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// The stream underneath.
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// The stream underneath, given back (after the body, a keep-alive connection goes on).
    pub fn into_inner(self) -> R {
        self.inner
    }

    fn byte(&mut self) -> io::Result<u8> {
        let mut b = [0u8; 1];
        loop {
            match self.inner.read(&mut b) {
                Ok(0) => return Err(eof()),
                Ok(_) => return Ok(b[0]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads one line up to its CRLF (a bare LF is refused), at most `max` bytes, and
    /// returns its length without the CRLF; `line` receives its first bytes.
    fn line(&mut self, line: &mut [u8], max: usize) -> io::Result<usize> {
        let mut len = 0;
        loop {
            match self.byte()? {
                b'\r' => {
                    return match self.byte()? {
                        b'\n' => Ok(len),
                        _ => Err(malformed("bare cr in a chunk line")),
                    }
                }
                b'\n' => return Err(malformed("bare lf in a chunk line")),
                b => {
                    if let Some(slot) = line.get_mut(len) {
                        *slot = b;
                    }
                    len += 1;
                    if len > max {
                        return Err(malformed("chunk line too long"));
                    }
                }
            }
        }
    }

    fn read_size(&mut self) -> io::Result<u64> {
        let mut line = [0u8; MAX_SIZE_LINE];
        let len = self.line(&mut line, MAX_SIZE_LINE)?;
        let line = &line[..len];
        let digits_end = line
            .iter()
            .position(|b| !b.is_ascii_hexdigit())
            .unwrap_or(line.len());
        let (digits, rest) = line.split_at(digits_end);
        if digits.is_empty() || digits.len() > 16 {
            return Err(malformed("invalid chunk size"));
        }
        // Only optional whitespace and `;extensions` may follow the size.
        let rest = trim_start(rest);
        if !(rest.is_empty() || rest[0] == b';') {
            return Err(malformed("invalid chunk size"));
        }
        Ok(digits.iter().fold(0u64, |acc, &d| {
            // At most 16 hex digits: fits in u64.
            (acc << 4) | u64::from((d as char).to_digit(16).unwrap_or(0))
        }))
    }

    fn skip_trailers(&mut self) -> io::Result<()> {
        let mut total = 0;
        loop {
            let len = self.line(&mut [], MAX_TRAILERS)?;
            if len == 0 {
                return Ok(());
            }
            total += len + 2;
            if total > MAX_TRAILERS {
                return Err(malformed("trailer section too long"));
            }
        }
    }
}

impl<R: Read> Read for ChunkedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if let State::Failed(kind) = self.state {
            return Err(io::Error::new(
                kind,
                "chunked body: an earlier read failed; the body cannot be read on",
            ));
        }
        let read = self.decode(buf);
        // An interrupted read of the data consumed nothing (lines retry their own), so
        // it may be tried again; any other error may have left a line half read.
        if let Err(e) = &read {
            if e.kind() != io::ErrorKind::Interrupted {
                self.state = State::Failed(e.kind());
            }
        }
        read
    }
}

impl<R: Read> ChunkedReader<R> {
    /// One step of [`Read::read`] on a reader that has not failed.
    fn decode(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.state {
                State::Done => return Ok(0),
                State::Size => {
                    let size = self.read_size()?;
                    if size == 0 {
                        self.skip_trailers()?;
                        self.state = State::Done;
                        return Ok(0);
                    }
                    self.state = State::Data(size);
                }
                State::Data(left) => {
                    let want = usize::try_from(left).map_or(buf.len(), |l| l.min(buf.len()));
                    let n = self.inner.read(&mut buf[..want])?;
                    if n == 0 {
                        return Err(eof());
                    }
                    let left = left - n as u64;
                    self.state = if left == 0 {
                        State::DataEnd
                    } else {
                        State::Data(left)
                    };
                    return Ok(n);
                }
                State::DataEnd => {
                    if self.line(&mut [], 0)? != 0 {
                        return Err(malformed("chunk data longer than its size"));
                    }
                    self.state = State::Size;
                }
                State::Failed(kind) => return Err(io::Error::from(kind)),
            }
        }
    }
}

/// Encodes what is written as chunks on `inner`: each non-empty `write` becomes one
/// chunk, so write in large pieces. [`ChunkedWriter::finish`] writes the last chunk; a
/// writer dropped without it leaves the body visibly truncated, which is what a reader
/// should see when the sender failed.
pub struct ChunkedWriter<W: Write> {
    inner: W,
}

impl<W: Write> ChunkedWriter<W> {
    pub fn new(inner: W) -> Self {
        ChunkedWriter { inner }
    }

    /// Writes the last chunk (no trailers), flushes, and returns the stream.
    pub fn finish(mut self) -> io::Result<W> {
        self.inner.write_all(b"0\r\n\r\n")?;
        self.inner.flush()?;
        Ok(self.inner)
    }
}

impl<W: Write> Write for ChunkedWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let mut size = [0u8; 20];
        let size_len = {
            let mut cursor = io::Cursor::new(&mut size[..]);
            write!(cursor, "{:x}\r\n", buf.len())?;
            cursor.position() as usize
        };
        self.inner.write_all(&size[..size_len])?;
        self.inner.write_all(buf)?;
        self.inner.write_all(b"\r\n")?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn trim_start(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    s
}

fn malformed(what: &'static str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("malformed chunked body: {what}"),
    )
}

fn eof() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "stream ended inside a chunked body",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `tunnel_requests` fuzz target: after a chunk's data ran past its size
    /// the reader failed, but a second read (the server draining the body) took the
    /// framing up again inside the body, found a last chunk there, and the connection
    /// went on to read the rest of the body as the next request.
    #[test]
    fn a_reader_that_failed_stays_failed() {
        let body = b"5\r\nhell\to\r\n0\r\n\r\nPUT /smuggled HTTP/1.1\r\n\r\n";
        let mut reader = ChunkedReader::new(&body[..]);
        let mut out = Vec::new();
        let first = reader.read_to_end(&mut out);
        assert_eq!(first.map_err(|e| e.kind()), Err(io::ErrorKind::InvalidData));
        for _ in 0..3 {
            let again = io::copy(&mut reader, &mut io::sink());
            assert_eq!(again.map_err(|e| e.kind()), Err(io::ErrorKind::InvalidData));
        }
        assert!(!reader.is_done());
        // A stream that ended inside the body stays ended too.
        let mut cut = ChunkedReader::new(&b"5\r\nhe"[..]);
        let mut out = Vec::new();
        assert_eq!(
            cut.read_to_end(&mut out).map_err(|e| e.kind()),
            Err(io::ErrorKind::UnexpectedEof)
        );
        assert_eq!(
            cut.read(&mut [0u8; 8]).map_err(|e| e.kind()),
            Err(io::ErrorKind::UnexpectedEof)
        );
    }

    fn decode(bytes: &[u8]) -> io::Result<(Vec<u8>, usize)> {
        let mut reader = ChunkedReader::new(bytes);
        let mut out = Vec::new();
        reader.read_to_end(&mut out)?;
        assert!(reader.is_done());
        Ok((out, bytes.len() - reader.inner.len()))
    }

    #[test]
    fn chunks_decode_and_stop_right_after_the_body() {
        let body = b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nX-Trailer: y\r\n\r\nGET /next";
        let (out, used) = decode(body).unwrap();
        assert_eq!(out, b"hello, world");
        assert_eq!(&body[used..], b"GET /next");
        let (out, _) = decode(b"A \r\n0123456789\r\n0\r\n\r\n").unwrap();
        assert_eq!(out, b"0123456789");
        assert_eq!(decode(b"0\r\n\r\n").unwrap().0, b"");
    }

    #[test]
    fn what_is_written_reads_back_whatever_the_piece_sizes() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut writer = ChunkedWriter::new(Vec::new());
        for piece in data.chunks(4_093) {
            writer.write_all(piece).unwrap();
        }
        writer.write_all(b"").unwrap();
        let encoded = writer.finish().unwrap();
        let mut reader = ChunkedReader::new(&encoded[..]);
        let mut out = Vec::new();
        let mut buf = [0u8; 1000];
        loop {
            let n = reader.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        assert_eq!(out, data);
    }

    #[test]
    fn bad_framing_is_invalid_data_and_a_cut_is_unexpected_eof() {
        for bad in [
            &b"x\r\n"[..],
            b"\r\n",
            b"5 x\r\nhello\r\n0\r\n\r\n",
            b"-5\r\nhello\r\n",
            b"5\nhello\r\n0\r\n\r\n",
            b"5\r\nhelloX\r\n0\r\n\r\n",
            b"11111111111111111\r\n",
            b"5\r\nhello\r\n0\r\nA: b\n\r\n",
        ] {
            let err = decode(bad).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{bad:?}: {err}");
        }
        let long = format!("5;{}\r\nhello\r\n0\r\n\r\n", "e".repeat(2000));
        assert_eq!(
            decode(long.as_bytes()).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        for cut in [&b"5\r\nhel"[..], b"5\r\nhello", b"5\r\nhello\r\n", b"0\r\n"] {
            let err = decode(cut).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{cut:?}: {err}");
        }
    }
}
