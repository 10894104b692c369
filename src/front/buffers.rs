//! The relay's two plaintext buffers: client-to-backend (`UpBuffer`), which holds each
//! request until it is complete, and backend-to-client (`DownBuffer`), which carries the
//! backend's responses and the front's own answers in the order the client must read
//! them. Plain byte bookkeeping; no I/O, no HTTP.

use std::ops::Range;

/// Growth step of the up buffer beyond its base size, so that a run of requests with
/// slightly different bodies does not reallocate each time.
const GROW_STEP: usize = 4096;

/// Client-to-backend plaintext.
///
/// Invariant: `sent <= released <= filled <= buf.len()`. `[sent, released)` is cleared
/// for the backend and not yet written; `[released, filled)` is held: after each framing
/// pass it is one incomplete request (a head shorter than `max_head_bytes`, or a checked
/// head and part of its body), and [`UpBuffer::reserve`] has made room for all of it. The
/// buffer is `base` bytes except while a request larger than that is held or sent; it
/// returns to `base` once empty.
pub(super) struct UpBuffer {
    buf: Vec<u8>,
    base: usize,
    pub(super) sent: usize,
    pub(super) released: usize,
    pub(super) filled: usize,
}

impl UpBuffer {
    pub(super) fn new(base: usize) -> Self {
        UpBuffer {
            buf: vec![0; base],
            base,
            sent: 0,
            released: 0,
            filled: 0,
        }
    }

    pub(super) fn unsent(&self) -> &[u8] {
        &self.buf[self.sent..self.released]
    }

    pub(super) fn held(&self) -> &[u8] {
        &self.buf[self.released..self.filled]
    }

    /// Free space at the end, after moving data to the front when little is left.
    /// Moving happens only once a quarter or less is free, so a steady stream of small
    /// requests, each written out before the next arrives, never copies.
    pub(super) fn spare(&mut self) -> &mut [u8] {
        if self.sent == self.filled {
            self.sent = 0;
            self.released = 0;
            self.filled = 0;
            if self.buf.len() > self.base {
                self.buf.truncate(self.base);
                self.buf.shrink_to_fit();
            }
        } else if self.sent > 0 && self.buf.len() - self.filled <= self.buf.len() / 4 {
            self.compact();
        }
        &mut self.buf[self.filled..]
    }

    /// Makes sure the first `len` held bytes fit, so that a held request can always be
    /// completed: moves data to the front, then grows the buffer if it is still short.
    pub(super) fn reserve(&mut self, len: usize) {
        if self.released + len <= self.buf.len() {
            return;
        }
        self.compact();
        let needed = self.released + len;
        if needed > self.buf.len() {
            self.buf.resize(needed.next_multiple_of(GROW_STEP), 0);
        }
    }

    /// Clears the first `len` held bytes for the backend.
    pub(super) fn release(&mut self, len: usize) {
        self.released = (self.released + len).min(self.filled);
    }

    /// Drops the first `len` held bytes without sending them (a request the front
    /// answered itself). Only when nothing is waiting to be sent before them.
    pub(super) fn skip(&mut self, len: usize) {
        debug_assert_eq!(self.sent, self.released);
        self.released = (self.released + len).min(self.filled);
        self.sent = self.released;
    }

    /// Removes `range` (relative to the start of the held bytes) from the held bytes,
    /// closing the gap: a header line the backend must not see.
    pub(super) fn cut(&mut self, range: Range<usize>) {
        let start = self.released + range.start;
        let end = (self.released + range.end).min(self.filled);
        if start >= end {
            return;
        }
        self.buf.copy_within(end..self.filled, start);
        self.filled -= end - start;
    }

    pub(super) fn drop_held(&mut self) {
        self.filled = self.released;
    }

    fn compact(&mut self) {
        if self.sent == 0 {
            return;
        }
        self.buf.copy_within(self.sent..self.filled, 0);
        self.released -= self.sent;
        self.filled -= self.sent;
        self.sent = 0;
    }
}

/// Backend-to-client plaintext (and the front's own answers) not yet taken by rustls.
///
/// Invariant: `start <= end <= buf.len()`; `[start, end)` is pending, in the order the
/// client must receive it.
pub(super) struct DownBuffer {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
}

impl DownBuffer {
    pub(super) fn new(capacity: usize) -> Self {
        DownBuffer {
            buf: vec![0; capacity].into_boxed_slice(),
            start: 0,
            end: 0,
        }
    }

    pub(super) fn pending(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    pub(super) fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.end);
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Room for the next read from the backend.
    pub(super) fn spare(&mut self) -> &mut [u8] {
        &mut self.buf[self.end..]
    }

    pub(super) fn spare_len(&self) -> usize {
        self.buf.len() - self.end
    }

    /// Marks `n` bytes of [`DownBuffer::spare`] as filled.
    pub(super) fn filled(&mut self, n: usize) {
        self.end = (self.end + n).min(self.buf.len());
    }

    /// Appends `bytes` after what is pending, moving the pending bytes to the front if
    /// that makes room. Returns false, changing nothing, when they do not fit.
    pub(super) fn append(&mut self, bytes: &[u8]) -> bool {
        if self.end - self.start + bytes.len() > self.buf.len() {
            return false;
        }
        if self.end + bytes.len() > self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        self.buf[self.end..self.end + bytes.len()].copy_from_slice(bytes);
        self.end += bytes.len();
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fill(up: &mut UpBuffer, bytes: &[u8]) {
        up.spare()[..bytes.len()].copy_from_slice(bytes);
        up.filled += bytes.len();
    }

    #[test]
    fn up_buffer_grows_for_a_held_request_and_shrinks_back_once_empty() {
        let mut up = UpBuffer::new(16);
        fill(&mut up, b"0123456789");
        up.reserve(40);
        assert!(up.buf.len() >= 40);
        assert_eq!(up.held(), b"0123456789");
        let rest = [b'x'; 30];
        fill(&mut up, &rest);
        up.release(40);
        assert_eq!(up.unsent().len(), 40);
        up.sent = up.released;
        assert_eq!(up.spare().len(), 16, "back to the base size");
    }

    #[test]
    fn cut_removes_a_line_from_the_held_bytes_and_keeps_what_follows() {
        let mut up = UpBuffer::new(64);
        fill(&mut up, b"ab");
        up.release(1);
        fill(&mut up, b"HEAD\r\nExpect: 1\r\n\r\nBODY");
        // held is "bHEAD\r\nExpect: 1\r\n\r\nBODY"; cut "Expect: 1\r\n".
        up.cut(7..18);
        assert_eq!(up.held(), b"bHEAD\r\n\r\nBODY");
        assert_eq!(up.unsent(), b"a");
    }

    #[test]
    fn skip_drops_an_answered_request_without_sending_it() {
        let mut up = UpBuffer::new(64);
        fill(&mut up, b"GET1GET2");
        up.skip(4);
        assert!(up.unsent().is_empty());
        assert_eq!(up.held(), b"GET2");
    }

    #[test]
    fn down_buffer_appends_in_order_and_refuses_what_cannot_fit() {
        let mut down = DownBuffer::new(8);
        assert!(down.append(b"abcdef"));
        down.consume(4);
        // 2 pending + 5 new fits once the pending bytes move to the front.
        assert!(down.append(b"ghijk"));
        assert_eq!(down.pending(), b"efghijk");
        assert!(!down.append(b"lm"));
        assert_eq!(down.pending(), b"efghijk");
    }
}
