//! Transfer frames over any byte stream: a reader that holds at most one frame (its cap
//! is checked from the header before the payload is read) and a writer. The codec itself
//! is `wire::transfer`; this adds only `Read`/`Write`.

use std::fmt;
use std::io::{self, Read, Write};

use crate::wire::transfer::{self, Frame, FrameError, HEADER_LEN};

#[derive(Debug)]
pub enum StreamError {
    Io(io::Error),
    Frame(FrameError),
    /// The stream ended inside a frame (a disconnect mid-chunk).
    Truncated,
}

impl fmt::Display for StreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StreamError::Io(e) => write!(f, "connection: {e}"),
            StreamError::Frame(e) => write!(f, "protocol: {e}"),
            StreamError::Truncated => f.write_str("connection ended in the middle of a frame"),
        }
    }
}

impl std::error::Error for StreamError {}

impl From<io::Error> for StreamError {
    fn from(e: io::Error) -> Self {
        StreamError::Io(e)
    }
}

/// Reads frames one at a time into a reused buffer, allocated (and zeroed) once: a
/// `Data` frame is read straight into it, with no per-frame fill.
pub struct FrameReader<R> {
    inner: R,
    buf: Vec<u8>,
}

/// Fills `buf` completely; `Ok(false)` if the stream ended before the first byte.
fn fill(r: &mut impl Read, buf: &mut [u8]) -> Result<bool, StreamError> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) if got == 0 => return Ok(false),
            Ok(0) => return Err(StreamError::Truncated),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(StreamError::Io(e)),
        }
    }
    Ok(true)
}

impl<R: Read> FrameReader<R> {
    pub fn new(inner: R) -> Self {
        FrameReader {
            inner,
            buf: Vec::new(),
        }
    }

    /// The next frame, or `None` when the stream ended cleanly between frames.
    pub fn next_frame(&mut self) -> Result<Option<Frame<'_>>, StreamError> {
        let mut header = [0u8; HEADER_LEN];
        if !fill(&mut self.inner, &mut header)? {
            return Ok(None);
        }
        let len = transfer::check_header(&header).map_err(StreamError::Frame)?;
        if self.buf.len() < HEADER_LEN + len {
            // Grows to the largest frame seen, at most one `Data` frame, and stays.
            self.buf.resize(HEADER_LEN + len, 0);
        }
        let frame = &mut self.buf[..HEADER_LEN + len];
        frame[..HEADER_LEN].copy_from_slice(&header);
        if len > 0 && !fill(&mut self.inner, &mut frame[HEADER_LEN..])? {
            return Err(StreamError::Truncated);
        }
        match transfer::decode(&self.buf[..HEADER_LEN + len]).map_err(StreamError::Frame)? {
            Some((frame, _)) => Ok(Some(frame)),
            // Invariant: the buffer holds exactly the announced payload.
            None => Err(StreamError::Truncated),
        }
    }
}

/// Writes frames; control frames through one reused buffer.
pub struct FrameWriter<W> {
    inner: W,
    buf: Vec<u8>,
}

impl<W: Write> FrameWriter<W> {
    pub fn new(inner: W) -> Self {
        FrameWriter {
            inner,
            buf: Vec::with_capacity(256),
        }
    }

    pub fn send(&mut self, frame: &Frame<'_>) -> io::Result<()> {
        self.buf.clear();
        transfer::encode(frame, &mut self.buf);
        self.inner.write_all(&self.buf)
    }

    /// Writes bytes that already hold whole frames (a `Data` frame assembled in place).
    pub fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.inner.write_all(bytes)
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }

    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_cross_a_stream_and_a_cut_inside_one_is_truncation() {
        let mut out = FrameWriter::new(Vec::new());
        out.send(&Frame::Skip { seq: 1 }).unwrap();
        out.send(&Frame::Data {
            seq: 2,
            bytes: &[7; 1000],
        })
        .unwrap();
        let bytes = out.inner.clone();
        let mut r = FrameReader::new(&bytes[..]);
        assert_eq!(r.next_frame().unwrap(), Some(Frame::Skip { seq: 1 }));
        assert!(
            matches!(r.next_frame().unwrap(), Some(Frame::Data { seq: 2, bytes }) if bytes.len() == 1000)
        );
        assert_eq!(r.next_frame().unwrap(), None);
        let cut = &bytes[..bytes.len() - 10];
        let mut r = FrameReader::new(cut);
        r.next_frame().unwrap();
        assert!(matches!(r.next_frame(), Err(StreamError::Truncated)));
        let mut r = FrameReader::new(&[0x03u8, 0xff, 0xff, 0xff, 0xff][..]);
        assert!(matches!(
            r.next_frame(),
            Err(StreamError::Frame(FrameError::TooLong { .. }))
        ));
    }
}
