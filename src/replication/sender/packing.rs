//! A sending session's compression of file content (SPEC 17): for each chunk read, the
//! session's [`Chooser`] says whether to compress and at which level; a chunk goes as a
//! `ZData` frame only if it shrank by at least 1/32 (else raw, as `Data`), and every
//! chunk is recorded so that `auto` re-decides from what it measured. The SHA-256 the
//! session sends stays over the original bytes.

use std::time::{Duration, Instant};

use crate::replication::compress::{Chooser, Compression, Readings};
use crate::wire::compress::Packer;
use crate::wire::transfer::{self, HEADER_LEN, MAX_DATA};

/// Bytes before the compressed content in a `ZData` frame.
const ZHEADER: usize = HEADER_LEN + 8;

pub(super) struct Packing<'a> {
    chooser: Chooser,
    /// Created on first use (libzstd allocates its context then).
    packer: Option<Packer>,
    /// A `ZData` frame is assembled here.
    buf: Vec<u8>,
    readings: &'a dyn Fn() -> Readings,
    target: &'a str,
}

impl<'a> Packing<'a> {
    /// `setting` as configured; `agreed` is whether the target agreed to `zstd`.
    pub(super) fn new(
        setting: Compression,
        agreed: bool,
        readings: &'a dyn Fn() -> Readings,
        target: &'a str,
    ) -> Packing<'a> {
        Packing {
            chooser: Chooser::new(setting, agreed),
            packer: None,
            buf: Vec::new(),
            readings,
            target,
        }
    }

    /// The `ZData` frame that carries `body` (the next content of file `seq`), if it is
    /// to go compressed and compressing paid; None: send it as `Data`. Either way the
    /// chunk is recorded (its wire size is the frame's).
    pub(super) fn frame(&mut self, seq: u32, body: &[u8]) -> Option<&[u8]> {
        // Reviewed before the chunk, so the first period starts with the first chunk and
        // counts its probe.
        let now = Instant::now();
        if self.chooser.due(now) {
            if let Some(level) = self.chooser.review(now, (self.readings)()) {
                log::info!(
                    "replication to {}: compression {}",
                    self.target,
                    level.map_or("off".to_string(), |l| format!("zstd:{l}"))
                );
            }
        }
        let packed = match self.chooser.plan() {
            Some(level) => self.pack(level, seq, body),
            None => None,
        };
        let wire = match packed {
            Some((_, _, Some(len))) => len,
            _ => HEADER_LEN + 4 + body.len(),
        };
        self.chooser.record(
            body.len() as u64,
            wire as u64,
            packed.map(|(level, time, _)| (level, time)),
        );
        match packed {
            Some((_, _, Some(len))) => Some(&self.buf[..len]),
            _ => None,
        }
    }

    /// Compresses `body` at `level` into `buf` as a `ZData` frame: its level, the time it
    /// took, and the frame's length if it shrank by 1/32 at least.
    fn pack(
        &mut self,
        level: i32,
        seq: u32,
        body: &[u8],
    ) -> Option<(i32, Duration, Option<usize>)> {
        if self.packer.is_none() {
            match Packer::new() {
                Ok(p) => self.packer = Some(p),
                Err(e) => {
                    log::warn!(
                        "replication to {}: no compression this session: {e}",
                        self.target
                    );
                    self.chooser = Chooser::new(Compression::Off, false);
                    return None;
                }
            }
        }
        let packer = self.packer.as_mut()?;
        if self.buf.len() < ZHEADER + MAX_DATA {
            self.buf.resize(ZHEADER + MAX_DATA, 0);
        }
        let limit = body.len() - body.len() / 32;
        let start = Instant::now();
        let len = packer.pack(level, body, &mut self.buf[ZHEADER..ZHEADER + limit]);
        let time = start.elapsed();
        if let Some(len) = len {
            self.buf[..ZHEADER].copy_from_slice(&transfer::zdata_header(seq, body.len(), len));
        }
        Some((level, time, len.map(|l| ZHEADER + l)))
    }

    /// The sender waited `d` on the target (the link did not hold it). A throttle wait is
    /// not reported: the throttle counts wire bytes, so it limits as a slower link would.
    pub(super) fn waited(&mut self, d: Duration) {
        self.chooser.waited(d);
    }

    /// Content bytes sent and the bytes they took in frames, over the session.
    pub(super) fn totals(&self) -> (u64, u64) {
        (self.chooser.total_raw, self.chooser.total_wire)
    }
}
