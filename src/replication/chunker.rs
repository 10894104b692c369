//! Content-defined chunks (SPEC 18): where a file is cut, and each piece's SHA-256. The
//! cut is FastCDC 2020 (the `fastcdc` crate's gear hash and normalized masks): a cut
//! depends only on the bytes just before it, so an insertion or a rewrite moves the cuts
//! of the one or two chunks around it and no later one. Both sides cut the same way: the
//! source to list a file's chunks, the target to index what it holds (`dedup`), so the
//! parameters below are part of the `chunks` feature of the transfer protocol; changing
//! them is a new feature name.
//!
//! Pure code over any `Read`: the caller opens the file (through `fsx`).

use std::io::{self, Read};

use fastcdc::v2020::{self, Normalization};

/// The smallest chunk (but a file's last), the average aimed at, and the largest.
/// Chosen by measurement on SPEC 18's second-day image (BENCHMARKS.md, "Chunk size"):
/// smaller chunks send less around each change, larger ones cost less to list and index.
pub const MIN_CHUNK: usize = 2 * 1024;
pub const AVG_CHUNK: usize = 8 * 1024;
pub const MAX_CHUNK: usize = 32 * 1024;

/// How a file is cut: FastCDC's sizes and the masks they select.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Params {
    pub min: usize,
    pub avg: usize,
    pub max: usize,
    mask_s: u64,
    mask_l: u64,
}

impl Params {
    /// The protocol's parameters ([`MIN_CHUNK`], [`AVG_CHUNK`], [`MAX_CHUNK`]).
    pub fn standard() -> Params {
        Params::new(MIN_CHUNK, AVG_CHUNK, MAX_CHUNK)
    }

    /// Other sizes, for measuring (bench/chunking.rs). Sizes must be even, `min < avg <
    /// max`, within FastCDC's ranges (64 B – 1 MiB, 256 B – 4 MiB, 1 KiB – 16 MiB).
    pub fn new(min: usize, avg: usize, max: usize) -> Params {
        let (mask_s, mask_l) = v2020::select_masks(avg, Normalization::Level1);
        Params {
            min,
            avg,
            max,
            mask_s,
            mask_l,
        }
    }

    /// The length of the first chunk of `data`, or None when more bytes are needed to
    /// know it (`data` is shorter than the largest chunk and the file goes on).
    pub fn cut(&self, data: &[u8], at_end: bool) -> Option<usize> {
        if data.is_empty() {
            return None;
        }
        let (_, len) = v2020::cut(
            data,
            self.min,
            self.avg,
            self.max,
            self.mask_s,
            self.mask_l,
            self.mask_s << 1,
            self.mask_l << 1,
        );
        // A cut found before the end of `data` is final: more bytes would not move it
        // (the masks up to it are the same); one at the end of `data` is final only at
        // the largest size or at the end of the file.
        let final_cut = len < data.len() || len >= self.max || at_end;
        final_cut.then_some(len)
    }
}

/// One chunk of a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chunk {
    /// Where it starts in the file.
    pub offset: u64,
    pub len: u32,
    pub digest: [u8; 32],
}

impl Chunk {
    pub fn end(&self) -> u64 {
        self.offset + u64::from(self.len)
    }
}

/// The SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref());
    out
}

/// Cuts a file read in order into [`Chunk`]s, from a given offset on (a resumed transfer
/// starts its first chunk where the target's copy ends). Reads in large blocks into one
/// reused buffer.
pub struct Chunker {
    params: Params,
    buf: Vec<u8>,
    /// The unread part of `buf` is `start..end`; `buf[start]` is at file offset `offset`.
    start: usize,
    end: usize,
    offset: u64,
    at_end: bool,
}

/// Bytes read at once (at least four of the largest chunks).
const READ_BLOCK: usize = 1024 * 1024;

impl Chunker {
    /// A chunker whose first chunk starts at file offset `offset` (where `r` is).
    pub fn new(params: Params, offset: u64) -> Chunker {
        Chunker {
            buf: vec![0u8; READ_BLOCK.max(4 * params.max)],
            params,
            start: 0,
            end: 0,
            offset,
            at_end: false,
        }
    }

    /// Where the next chunk starts.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Whether every byte of the file was cut.
    pub fn is_done(&self) -> bool {
        self.at_end && self.start == self.end
    }

    /// The next chunk of `r` (None at the end of the file); `each` sees its bytes (every
    /// byte of the file once, in order: the whole file's SHA-256 goes there).
    pub fn next_chunk(
        &mut self,
        r: &mut impl Read,
        each: impl FnOnce(&[u8]),
    ) -> io::Result<Option<Chunk>> {
        loop {
            let data = &self.buf[self.start..self.end];
            if let Some(len) = self.params.cut(data, self.at_end) {
                let bytes = &data[..len];
                each(bytes);
                let chunk = Chunk {
                    offset: self.offset,
                    len: len as u32,
                    digest: sha256(bytes),
                };
                self.start += len;
                self.offset += len as u64;
                return Ok(Some(chunk));
            }
            if self.at_end {
                return Ok(None);
            }
            self.fill(r)?;
        }
    }

    /// Moves the unread bytes to the front and reads until the buffer is full or the file
    /// ends.
    fn fill(&mut self, r: &mut impl Read) -> io::Result<()> {
        self.buf.copy_within(self.start..self.end, 0);
        self.end -= self.start;
        self.start = 0;
        while self.end < self.buf.len() {
            match r.read(&mut self.buf[self.end..]) {
                Ok(0) => {
                    self.at_end = true;
                    break;
                }
                Ok(n) => self.end += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Deterministic incompressible bytes.
    pub(crate) fn noise(seed: u64, len: usize) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    fn chunks(data: &[u8], offset: u64) -> Vec<Chunk> {
        let mut c = Chunker::new(Params::standard(), offset);
        let mut r = data;
        let mut out = Vec::new();
        let mut seen = Vec::new();
        while let Some(ch) = c.next_chunk(&mut r, |b| seen.extend_from_slice(b)).unwrap() {
            out.push(ch);
        }
        assert!(c.is_done());
        assert_eq!(seen, data, "every byte once, in order");
        out
    }

    #[test]
    fn chunks_cover_the_file_within_the_sizes_and_name_their_bytes() {
        let data = noise(1, 3 << 20);
        let list = chunks(&data, 100);
        let mut at = 100u64;
        for (i, c) in list.iter().enumerate() {
            assert_eq!(c.offset, at);
            let last = i + 1 == list.len();
            assert!(c.len as usize <= MAX_CHUNK);
            assert!(last || c.len as usize >= MIN_CHUNK, "{c:?}");
            let s = (c.offset - 100) as usize;
            assert_eq!(c.digest, sha256(&data[s..s + c.len as usize]));
            at = c.end();
        }
        assert_eq!(at, 100 + data.len() as u64);
        let avg = data.len() / list.len();
        assert!(
            (AVG_CHUNK / 2..AVG_CHUNK * 2).contains(&avg),
            "average {avg}"
        );
    }

    #[test]
    fn an_insertion_moves_only_the_cuts_next_to_it() {
        let a = noise(2, 4 << 20);
        let mut b = a.clone();
        b.splice(2_000_000..2_000_000, noise(3, 37));
        let before: std::collections::HashSet<[u8; 32]> =
            chunks(&a, 0).iter().map(|c| c.digest).collect();
        let after = chunks(&b, 0);
        let new: Vec<&Chunk> = after
            .iter()
            .filter(|c| !before.contains(&c.digest))
            .collect();
        assert!(
            (1..=3).contains(&new.len()),
            "{} new chunks: {new:?}",
            new.len()
        );
        assert!(new
            .iter()
            .all(|c| c.offset <= 2_000_000 && c.end() >= 2_000_037));
    }

    #[test]
    fn a_reader_that_hands_out_little_at_a_time_cuts_the_same() {
        struct Trickle<'a>(&'a [u8]);
        impl Read for Trickle<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                let n = buf.len().min(self.0.len()).min(777);
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let data = noise(4, 2 << 20);
        let mut c = Chunker::new(Params::standard(), 0);
        let mut r = Trickle(&data);
        let mut got = Vec::new();
        while let Some(ch) = c.next_chunk(&mut r, |_| {}).unwrap() {
            got.push(ch);
        }
        assert_eq!(got, chunks(&data, 0));
        // Empty files have no chunks; a tiny one is one chunk.
        assert!(chunks(&[], 0).is_empty());
        assert_eq!(chunks(b"x", 0).len(), 1);
    }
}
