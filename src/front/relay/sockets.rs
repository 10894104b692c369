//! The relay's sockets: one poll for exactly what the relay needs next, then the reads
//! and writes it allows: released bytes to the backend, the backend's responses into the
//! client-bound buffer (followed by the response tracker), and that buffer through rustls
//! to the client, with the refusal and `close_notify` once the backend is done.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use super::{Framing, Inbound, Outbound, ReadHalf, Relay, Stop, WriteHalf};
use crate::listener::{sys, would_block};
use crate::wire::error::raw_error_response;

/// How often a draining connection looks at the drain deadline again.
const DRAIN_TICK: Duration = Duration::from_millis(100);

impl Relay<'_> {
    /// Writes released bytes to the backend; once the client side is done and nothing is
    /// left, half-closes the backend so tiny_http finishes what it owes and closes.
    pub(super) fn write_backend(&mut self, now: Instant) {
        if !self.up.unsent().is_empty() && self.backend_write == WriteHalf::Ready {
            match (&self.backend).write(self.up.unsent()) {
                Ok(n) => {
                    self.up.sent += n;
                    self.last_activity = now;
                    self.up_stall_since = Some(now);
                    // A short write means the socket buffer is full; poll before the next
                    // attempt instead of paying for a write that returns EAGAIN.
                    if !self.up.unsent().is_empty() {
                        self.backend_write = WriteHalf::Blocked;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.backend_write = WriteHalf::Blocked;
                }
                Err(e) => {
                    // tiny_http closed its side (after `Connection: close` or its own
                    // 400). What it already answered still reaches the client; the rest
                    // of the client's requests cannot be served on this connection.
                    log::debug!(
                        "{}: {}: write to backend: {e}",
                        self.control.name(),
                        self.addr
                    );
                    if self.inbound == Inbound::Open {
                        self.inbound = Inbound::Stopped(Stop::Backend);
                    }
                    self.up.sent = self.up.released;
                    self.up.drop_held();
                    self.backend_write = WriteHalf::Shut;
                }
            }
        }
        if self.up.unsent().is_empty() {
            self.up_stall_since = None;
        } else {
            self.up_stall_since.get_or_insert(now);
        }
        if self.inbound != Inbound::Open
            && self.up.unsent().is_empty()
            && self.backend_write != WriteHalf::Shut
        {
            let _ = self.backend.shutdown(Shutdown::Write);
            self.backend_write = WriteHalf::Shut;
        }
    }

    /// Hands pending bytes to rustls and TLS records to the client, and once the backend
    /// has closed, appends the refusal (if any) and `close_notify`.
    pub(super) fn write_client(&mut self, now: Instant) -> io::Result<()> {
        loop {
            let mut progress = false;
            if !self.down.pending().is_empty() {
                // Takes less (or nothing) once rustls holds its 64 KiB of unsent records:
                // that is the backpressure towards the backend.
                let n = self.tls.writer().write(self.down.pending())?;
                self.down.consume(n);
                progress |= n > 0;
            }
            if self.down.pending().is_empty() && self.backend_read == ReadHalf::Ended {
                match (self.outbound, self.inbound) {
                    (Outbound::Relaying, Inbound::Stopped(Stop::Refused(refusal))) => {
                        let response = raw_error_response(refusal.status(), &refusal.message());
                        // The buffer is empty and holds far more than an error response.
                        let _ = self.down.append(&response);
                        self.outbound = Outbound::Refusing;
                        continue;
                    }
                    (Outbound::Relaying | Outbound::Refusing, _) => {
                        self.tls.send_close_notify();
                        self.outbound = Outbound::Closed;
                    }
                    (Outbound::Closed, _) => {}
                }
            }
            if self.tls.wants_write() && self.client_write == WriteHalf::Ready {
                match self.tls.write_tls(&mut self.client) {
                    Ok(0) => self.client_write = WriteHalf::Blocked,
                    Ok(_) => {
                        progress = true;
                        self.last_activity = now;
                        self.down_stall_since = Some(now);
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => progress = true,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        self.client_write = WriteHalf::Blocked;
                    }
                    Err(e) => return Err(e),
                }
            }
            if !progress {
                break;
            }
        }
        if self.tls.wants_write() {
            self.down_stall_since.get_or_insert(now);
        } else {
            self.down_stall_since = None;
        }
        Ok(())
    }

    /// Decrypted client bytes are waiting inside rustls and `up` could take some of them.
    fn plaintext_waits_for_room(&mut self) -> bool {
        self.inbound == Inbound::Open
            && !self.up.spare().is_empty()
            && self
                .tls
                .process_new_packets()
                .is_ok_and(|state| state.plaintext_bytes_to_read() > 0)
    }

    /// Polls for exactly what the relay needs next, then performs the reads that became
    /// possible (one read per ready socket) and notes which sockets became writable.
    pub(super) fn wait(&mut self, now: Instant) -> io::Result<()> {
        let limits = &self.shared.limits;
        let mut client_events = 0;
        if self.inbound == Inbound::Open
            && self.client_read == ReadHalf::Open
            && self.tls.wants_read()
            && !self.up.spare().is_empty()
        {
            client_events |= sys::POLLIN;
        }
        if self.client_write == WriteHalf::Blocked {
            client_events |= sys::POLLOUT;
        }
        let mut backend_events = 0;
        // With every forwarded request answered and the client still sending, the backend
        // has nothing to say; not watching it keeps each wait (one per request on a
        // connection served in the front) to the client socket and the wake-up.
        let backend_owes = self.responses.owed() > 0 || self.inbound != Inbound::Open;
        if backend_owes
            && self.backend_read == ReadHalf::Open
            && self.outbound != Outbound::Closed
            && self.down.spare_len() > 0
        {
            backend_events |= sys::POLLIN;
        }
        if self.backend_write == WriteHalf::Blocked {
            backend_events |= sys::POLLOUT;
        }
        let wake_events = if self.draining { 0 } else { sys::POLLIN };
        let mut fds = [
            sys::poll_fd(self.client.as_raw_fd(), client_events),
            sys::poll_fd(self.backend.as_raw_fd(), backend_events),
            sys::poll_fd(self.control.wake_fd(), wake_events),
        ];

        let mut deadline = self.last_activity + self.idle_bound();
        for since in [self.up_stall_since, self.down_stall_since]
            .into_iter()
            .flatten()
        {
            deadline = deadline.min(since + limits.idle_timeout);
        }
        // Mirrors the checks in `read_plaintext`, so a deadline that is not enforced yet
        // never turns into a busy loop of zero-length waits.
        if self.inbound == Inbound::Open && self.up.unsent().is_empty() {
            let since = match self.framing {
                Framing::Head { since, .. } | Framing::Body { since, .. } => since,
            };
            if let Some(since) = since {
                deadline = deadline.min(since + limits.head_timeout);
            }
        }
        if let Some(by) = self
            .first_request_by
            .filter(|_| self.inbound == Inbound::Open)
        {
            deadline = deadline.min(by);
        }
        if self.draining {
            deadline = deadline.min(now + DRAIN_TICK);
        }
        if self.plaintext_waits_for_room() {
            // rustls holds decrypted bytes that did not fit in `up` on the last read (a
            // request larger than the buffer was when it was read); `up` has room again
            // and no socket event will announce them, so look again at once instead of
            // sleeping until a timeout.
            deadline = now;
        }
        if sys::poll(&mut fds, Some(deadline.saturating_duration_since(now)))? == 0 {
            return Ok(());
        }
        let now = Instant::now();

        let [client, backend, wake] = fds;
        if client_events & sys::POLLIN != 0 && sys::readable(&client) {
            match self.tls.read_tls(&mut self.client) {
                Ok(0) => self.client_read = ReadHalf::Ended,
                Ok(_) => self.last_activity = now,
                Err(e) if would_block(&e) => {}
                Err(e) => return Err(e),
            }
            if let Err(e) = self.tls.process_new_packets() {
                let _ = self.tls.write_tls(&mut self.client);
                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
            }
        }
        if client_events & sys::POLLOUT != 0 && sys::writable(&client) {
            self.client_write = WriteHalf::Ready;
        }
        if backend_events & sys::POLLIN != 0 && sys::readable(&backend) {
            self.read_backend(now);
        }
        if backend_events & sys::POLLOUT != 0 && sys::writable(&backend) {
            self.backend_write = WriteHalf::Ready;
        }
        if sys::ready(&wake) {
            self.draining = true;
        }
        Ok(())
    }

    /// One read from the backend into `down`, followed by the response tracker.
    fn read_backend(&mut self, now: Instant) {
        let spare = self.down.spare();
        match (&self.backend).read(spare) {
            Ok(0) => self.backend_read = ReadHalf::Ended,
            Ok(n) => {
                let observed = self.responses.observe(&spare[..n]);
                self.down.filled(n);
                self.last_activity = now;
                if let Err(e) = observed {
                    // Never seen with tiny_http; if it happens, stop adding requests and
                    // let the connection wind down, relaying what the backend still sends.
                    log::warn!(
                        "{}: {}: cannot follow the backend's responses ({e}); closing after them",
                        self.control.name(),
                        self.addr
                    );
                    if self.inbound == Inbound::Open {
                        self.inbound = Inbound::Stopped(Stop::Backend);
                        self.up.drop_held();
                    }
                }
            }
            Err(e) if would_block(&e) => {}
            Err(e) => {
                log::debug!(
                    "{}: {}: read from backend: {e}",
                    self.control.name(),
                    self.addr
                );
                self.backend_read = ReadHalf::Ended;
            }
        }
    }
}
