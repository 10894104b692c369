//! An object's bytes as a [`Read`] ([`object_reader`]), for a caller that pulls (a
//! restore's streamed answer) from a client that pushes (`ObjStore::read_object`): the
//! read runs on a thread of its own and hands its bytes over a short channel, so at
//! most a few buffers are held whatever the object's size.

use std::io::{self, Read, Write};
use std::ops::Range;
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::Arc;

use super::{Key, ObjStore};

/// Buffers in flight between the reading thread and the reader.
const IN_FLIGHT: usize = 4;

/// The bytes of `key` in `range`, read on a thread of its own. A read that fails, or
/// ends short of `range`, is an error of the reader (after the bytes that came).
pub fn object_reader(
    store: Arc<ObjStore>,
    key: Key,
    range: Range<u64>,
) -> io::Result<ObjectReader> {
    let (tx, rx) = mpsc::sync_channel(IN_FLIGHT);
    let want = range.end.saturating_sub(range.start);
    std::thread::Builder::new()
        .name("objstore-read".into())
        .stack_size(128 * 1024)
        .spawn(move || {
            let mut sink = Channel(tx.clone());
            let outcome = match store.read_object(&key, Some(range), &mut sink) {
                Ok(n) if n == want => return,
                Ok(n) => format!("{key}: {n} bytes read, {want} expected"),
                Err(e) => e.to_string(),
            };
            let _ = tx.send(Err(outcome));
        })?;
    Ok(ObjectReader {
        rx,
        buf: Vec::new(),
        pos: 0,
    })
}

/// See [`object_reader`].
pub struct ObjectReader {
    rx: Receiver<Result<Vec<u8>, String>>,
    buf: Vec<u8>,
    pos: usize,
}

impl Read for ObjectReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.buf.len() {
            match self.rx.recv() {
                Ok(Ok(next)) => {
                    self.buf = next;
                    self.pos = 0;
                }
                Ok(Err(e)) => return Err(io::Error::other(e)),
                // The thread finished: every byte came.
                Err(_) => return Ok(0),
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// The reading thread's end: each write handed over whole.
struct Channel(SyncSender<Result<Vec<u8>, String>>);

impl Write for Channel {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.0
            .send(Ok(bytes.to_vec()))
            .map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe))?;
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
