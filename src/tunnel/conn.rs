//! One tunnel connection's plaintext stream: rustls over a non-blocking socket, with the
//! timeouts and cut-offs every read and write obeys. Knows heads only as far as finding
//! where one ends; never routes or answers.
//!
//! Every blocking wait polls in ticks of [`TICK`], and every read, write and tick checks
//! three things before going on: the drain deadline of a shutdown, the revocation
//! generation (one atomic load; only when it moved is the serial looked up), and the
//! progress timeout. So an open stream whose certificate is revoked is cut within a tick,
//! whether it is moving data or stalled.

use std::cell::RefCell;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use rustls::ServerConnection;

use super::Revocations;
use crate::listener::{self, sys, Control};
use crate::wire::http;

/// Longest a blocked read or write waits before it looks at revocation and shutdown
/// again: the bound on how late a revocation cuts a stalled stream.
pub(super) const TICK: Duration = Duration::from_millis(250);
/// Plaintext taken from rustls per read while collecting a head.
const HEAD_READ_BYTES: usize = 4096;
/// How long closing may wait for the last bytes (and `close_notify`) to go out.
const CLOSE_FLUSH: Duration = Duration::from_secs(1);
/// After an error response, how long to read and discard what the peer still sends so
/// that it reads the response instead of a reset.
const LINGER: Duration = Duration::from_millis(500);

/// Where the response of the current request stands (for duplex handlers that write it
/// themselves).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Response {
    NotStarted,
    /// The head went out; chunks follow.
    Streaming,
    /// The last chunk went out.
    Finished,
}

/// What collecting a request head gave.
pub(super) enum HeadRead {
    /// A complete head (terminator included), at most `max_head_bytes` long.
    Head(Vec<u8>),
    /// The peer closed, went idle or the listener drained before a head began: close
    /// without a word.
    Closed,
    /// The head began but did not complete within the head deadline.
    TimedOut,
    /// No complete head within `max_head_bytes`.
    TooLarge,
}

/// Cuts a stream when the peer's certificate is revoked: remembers the revocation
/// generation it last saw and looks the serial up again only when it moved.
struct Guard<'c> {
    revocations: &'c dyn Revocations,
    serial: &'c str,
    seen: u64,
    /// Only while a request is served: between requests the next request's own check
    /// answers a revoked peer with 403.
    watching: bool,
}

impl Guard<'_> {
    fn revoked(&mut self) -> bool {
        if !self.watching {
            return false;
        }
        let now = self.revocations.generation();
        if now == self.seen {
            return false;
        }
        self.seen = now;
        // A database error counts as revoked: the stream must not outlive an unpair
        // because the lookup failed.
        self.revocations.is_revoked(self.serial).unwrap_or(true)
    }
}

/// Reads the socket ahead of rustls, which asks for about 4 KiB a call: a bulk upload
/// (a replication transfer) then costs one `read` per 64 KiB instead of one per 4 KiB.
/// The buffer is made only once a read fills what rustls asked for (more is waiting), so
/// connections that carry small requests never hold one.
#[derive(Default)]
struct ReadAhead {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

/// Bytes a bulk read asks the socket for at once.
const READ_AHEAD: usize = 64 * 1024;

impl ReadAhead {
    fn read_from(&mut self, sock: &mut TcpStream, out: &mut [u8]) -> io::Result<usize> {
        if self.start == self.end {
            if self.buf.is_empty() || out.len() >= READ_AHEAD {
                let n = sock.read(out)?;
                if n == out.len() && self.buf.is_empty() {
                    self.buf = vec![0; READ_AHEAD];
                }
                return Ok(n);
            }
            self.end = sock.read(&mut self.buf)?;
            self.start = 0;
        }
        let n = (self.end - self.start).min(out.len());
        out[..n].copy_from_slice(&self.buf[self.start..self.start + n]);
        self.start += n;
        Ok(n)
    }
}

/// The socket as rustls reads it: through the read-ahead.
struct SockReader<'a> {
    ahead: &'a mut ReadAhead,
    sock: &'a mut TcpStream,
}

impl Read for SockReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        self.ahead.read_from(self.sock, out)
    }
}

pub(super) struct Conn<'c> {
    tls: ServerConnection,
    sock: TcpStream,
    ahead: ReadAhead,
    control: &'c Control,
    guard: Guard<'c>,
    /// Longest wait on the peer without progress.
    idle: Duration,
    /// While a head or a capped body is read: the moment it must be complete by.
    pub deadline: Option<Instant>,
    /// Plaintext read past the end of a head; served before anything else.
    input: Vec<u8>,
    input_start: usize,
    /// Between requests a drain ends the wait at once.
    between_requests: bool,
    /// The request asked for `100 Continue` and has not had it yet.
    pub continue_owed: bool,
    pub response: Response,
    /// Why the connection was cut; every later read and write fails with it.
    cut: Option<&'static str>,
}

impl<'c> Conn<'c> {
    pub(super) fn new(
        tls: ServerConnection,
        sock: TcpStream,
        control: &'c Control,
        revocations: &'c dyn Revocations,
        serial: &'c str,
        idle: Duration,
    ) -> io::Result<Self> {
        sock.set_nonblocking(true)?;
        Ok(Conn {
            tls,
            sock,
            ahead: ReadAhead::default(),
            control,
            guard: Guard {
                seen: revocations.generation(),
                revocations,
                serial,
                watching: false,
            },
            idle,
            deadline: None,
            input: Vec::new(),
            input_start: 0,
            between_requests: true,
            continue_owed: false,
            response: Response::NotStarted,
            cut: None,
        })
    }

    /// Starts watching the revocation generation for the request being served. Called
    /// before the request's own revocation lookup, so that a revocation committed after
    /// that lookup still moves the generation past what the guard saw.
    pub(super) fn watch_revocation(&mut self) {
        self.guard.seen = self.guard.revocations.generation();
        self.guard.watching = true;
    }

    /// Whether the listener is shutting down.
    pub(super) fn draining(&self) -> bool {
        self.control.draining()
    }

    /// Whether the connection was cut (revoked, or the drain deadline passed).
    pub(super) fn cut_reason(&self) -> Option<&'static str> {
        self.cut
    }

    fn check_cut(&mut self) -> io::Result<()> {
        if self.cut.is_none() {
            if self.control.force_closed() {
                self.cut = Some("the daemon is shutting down");
            } else if self.guard.revoked() {
                log::info!(
                    "{}: certificate {} was revoked; cutting its connection",
                    self.control.name(),
                    self.guard.serial
                );
                self.cut = Some("certificate revoked");
            }
        }
        match self.cut {
            Some(why) => Err(io::Error::new(io::ErrorKind::ConnectionAborted, why)),
            None => Ok(()),
        }
    }

    /// Waits (one tick at most) for `events` on the socket; `since` is when this
    /// operation started waiting without progress. Fails once the progress timeout or the
    /// head deadline passed, and between requests when the listener drains.
    fn wait(&mut self, events: i16, since: Instant) -> io::Result<()> {
        let now = Instant::now();
        let mut until = since + self.idle;
        if now >= until {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no progress for {} ms", self.idle.as_millis()),
            ));
        }
        if let Some(deadline) = self.deadline {
            if now >= deadline {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "deadline passed"));
            }
            until = until.min(deadline);
        }
        let wake = if self.between_requests {
            sys::POLLIN
        } else {
            0
        };
        let mut fds = [
            sys::poll_fd(self.sock.as_raw_fd(), events),
            sys::poll_fd(self.control.wake_fd(), wake),
        ];
        sys::poll(&mut fds, Some((until - now).min(TICK)))?;
        if sys::ready(&fds[1]) {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the daemon is shutting down",
            ));
        }
        self.check_cut()
    }

    /// Reads plaintext: first what was read past a head, then from rustls.
    pub(super) fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.check_cut()?;
        if self.continue_owed {
            self.continue_owed = false;
            self.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
            self.flush()?;
        }
        let held = &self.input[self.input_start..];
        if !held.is_empty() {
            let n = held.len().min(buf.len());
            buf[..n].copy_from_slice(&held[..n]);
            self.input_start += n;
            return Ok(n);
        }
        self.read_tls_plaintext(buf)
    }

    fn read_tls_plaintext(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut since = Instant::now();
        let mut peer_closed = false;
        loop {
            match self.tls.reader().read(buf) {
                // 0 is close_notify: a clean end of stream.
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            if peer_closed {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "peer closed without close_notify",
                ));
            }
            // Whatever we owe the peer goes out before we wait for it: a handler that
            // wrote a decision and now reads the next frame must not deadlock.
            self.flush_ready()?;
            let mut from = SockReader {
                ahead: &mut self.ahead,
                sock: &mut self.sock,
            };
            match self.tls.read_tls(&mut from) {
                Ok(0) => peer_closed = true,
                Ok(_) => since = Instant::now(),
                Err(e) if listener::would_block(&e) => {
                    let events = if self.tls.wants_write() {
                        sys::POLLIN | sys::POLLOUT
                    } else {
                        sys::POLLIN
                    };
                    self.wait(events, since)?;
                    self.check_cut()?;
                    continue;
                }
                Err(e) => return Err(e),
            }
            if let Err(e) = self.tls.process_new_packets() {
                // Tell the peer why (rustls queued an alert), best effort.
                let _ = self.tls.write_tls(&mut self.sock);
                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
            }
            self.check_cut()?;
        }
    }

    /// Queues `data` in rustls, sending as the socket takes it; waits only when rustls's
    /// buffer is full, so memory stays bounded whatever the handler writes.
    pub(super) fn write_all(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            self.check_cut()?;
            let n = self.tls.writer().write(data)?;
            data = &data[n..];
            if n == 0 {
                self.flush()?;
            } else {
                self.flush_ready()?;
            }
        }
        Ok(())
    }

    /// Sends everything queued, waiting for the socket as needed.
    pub(super) fn flush(&mut self) -> io::Result<()> {
        let mut since = Instant::now();
        while self.tls.wants_write() {
            match self.tls.write_tls(&mut self.sock) {
                Ok(_) => since = Instant::now(),
                Err(e) if listener::would_block(&e) => self.wait(sys::POLLOUT, since)?,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Sends what the socket takes now, without waiting.
    fn flush_ready(&mut self) -> io::Result<()> {
        while self.tls.wants_write() {
            match self.tls.write_tls(&mut self.sock) {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(e) if listener::would_block(&e) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Collects the next request head, at most `max` bytes, complete within
    /// `head_timeout` of its first byte.
    pub(super) fn read_head(&mut self, max: usize, head_timeout: Duration) -> HeadRead {
        self.input.drain(..self.input_start);
        self.input_start = 0;
        self.response = Response::NotStarted;
        self.continue_owed = false;
        self.guard.watching = false;
        let mut scanned = 0;
        if self.input.is_empty() {
            self.between_requests = true;
            self.deadline = None;
        } else {
            self.begin_head(head_timeout);
        }
        let mut chunk = [0u8; HEAD_READ_BYTES];
        loop {
            let window = &self.input[..self.input.len().min(max)];
            if let Some(end) = http::request_head_end(window, scanned) {
                let head = self.input[..end].to_vec();
                self.input_start = end;
                self.deadline = None;
                return HeadRead::Head(head);
            }
            if self.input.len() >= max {
                return HeadRead::TooLarge;
            }
            scanned = self.input.len();
            let room = (max - self.input.len()).min(chunk.len());
            match self.read_tls_plaintext(&mut chunk[..room]) {
                Ok(0) => return HeadRead::Closed,
                Ok(n) => {
                    if self.between_requests {
                        self.begin_head(head_timeout);
                    }
                    self.input.extend_from_slice(&chunk[..n]);
                }
                Err(e) if e.kind() == io::ErrorKind::TimedOut && !self.between_requests => {
                    return HeadRead::TimedOut;
                }
                Err(e) => {
                    log::debug!("{}: waiting for a request: {e}", self.control.name());
                    return HeadRead::Closed;
                }
            }
        }
    }

    fn begin_head(&mut self, head_timeout: Duration) {
        self.between_requests = false;
        self.deadline = Some(Instant::now() + head_timeout);
    }

    /// Ends the connection: `close_notify` and what is still queued go out (briefly),
    /// then, when the peer may still be sending (`linger`), what it sends is discarded
    /// for a moment so that it reads our last response instead of a reset.
    pub(super) fn close(mut self, linger: bool) {
        self.tls.send_close_notify();
        self.deadline = Some(Instant::now() + CLOSE_FLUSH);
        self.between_requests = false;
        self.cut = None;
        if self.flush().is_ok() && linger {
            listener::linger(&self.sock, Instant::now() + LINGER);
        }
    }
}

/// A connection's plaintext as the request and response types use it: shared by a
/// request's body reader and its response writer, which a duplex handler interleaves in
/// one thread, so each call borrows the connection only for its own duration.
pub(super) trait Io {
    fn read(&self, buf: &mut [u8]) -> io::Result<usize>;
    fn write_all(&self, data: &[u8]) -> io::Result<()>;
    fn flush(&self) -> io::Result<()>;
    fn response(&self) -> Response;
    fn set_response(&self, state: Response);
}

fn busy() -> io::Error {
    io::Error::other("tunnel connection used re-entrantly")
}

impl Io for RefCell<Conn<'_>> {
    fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.try_borrow_mut().map_err(|_| busy())?.read(buf)
    }

    fn write_all(&self, data: &[u8]) -> io::Result<()> {
        self.try_borrow_mut().map_err(|_| busy())?.write_all(data)
    }

    fn flush(&self) -> io::Result<()> {
        self.try_borrow_mut().map_err(|_| busy())?.flush()
    }

    fn response(&self) -> Response {
        self.try_borrow()
            .map_or(Response::Streaming, |conn| conn.response)
    }

    fn set_response(&self, state: Response) {
        if let Ok(mut conn) = self.try_borrow_mut() {
            conn.response = state;
        }
    }
}

/// `Read` over a connection's plaintext.
#[derive(Clone, Copy)]
pub(super) struct IoRead<'r>(pub &'r dyn Io);

impl Read for IoRead<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

/// `Write` over a connection's plaintext.
#[derive(Clone, Copy)]
pub(super) struct IoWrite<'r>(pub &'r dyn Io);

impl Write for IoWrite<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write_all(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}
