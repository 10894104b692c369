//! One client connection after its TLS handshake (done by `listener`): a single-threaded
//! poll loop that relays plaintext to and from the backend while holding each request head
//! to the rules in `wire::http`. Knows a request only by its framing; never decides what a peer may
//! do, only records who it is.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use rustls::ServerConnection;

use super::peers::PeerInfo;
use super::Shared;
use crate::listener::{drain_until_eof, linger, send_final, sys, would_block, Conn, Control};
use crate::wire::error::raw_error_response;
use crate::wire::http::{self, HeadError};

/// Backend-to-client plaintext waiting for rustls. tiny_http writes responses in pieces
/// of a few KiB; 16 KiB is one full TLS record.
const DOWN_BUFFER_BYTES: usize = 16 * 1024;
/// Smallest client-to-backend buffer; it grows to `max_head_bytes` when that is larger,
/// because a whole head must fit before it can be checked.
const UP_BUFFER_MIN_BYTES: usize = 16 * 1024;
/// How long the backend must stay silent at a request boundary before a draining
/// connection closes (the response in flight has then been relayed).
const DRAIN_QUIET: Duration = Duration::from_millis(200);
/// How often a draining connection looks at the drain deadline again.
const DRAIN_TICK: Duration = Duration::from_millis(100);
/// After an error response: how long the front keeps reading and discarding what the
/// client still sends, so that closing does not reset the connection before the client
/// has read the response.
const LINGER_TIME: Duration = Duration::from_secs(1);
/// Longest wait, when a connection ends early, for tiny_http to finish with the backend
/// connection before its peer-table entry goes (bounded as well by `idle_timeout`).
const RETIRE_MAX: Duration = Duration::from_secs(5);
/// Loopback connect to tiny_http; it only fails when the process is out of descriptors or
/// the backend is gone, so there is no point waiting long.
const BACKEND_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Deadline for the 503 when the backend cannot be reached.
const OVERLOAD_DEADLINE: Duration = Duration::from_secs(2);
/// Lingering after that 503: short, since the client is only sending its first request.
const OVERLOAD_LINGER: Duration = Duration::from_millis(200);

/// Serves one client connection, handshake done, to its end.
pub(super) fn serve(shared: &Shared, conn: Conn<'_>) {
    let Conn {
        mut tls,
        sock: mut client,
        peer: addr,
        control,
    } = conn;
    let name = control.name();
    let client_cert = tls.peer_certificates().and_then(|c| c.first()).cloned();

    let backend = match connect_backend(shared.backend) {
        Ok(backend) => backend,
        Err(e) => {
            log::warn!("{name}: {addr}: connect to backend {}: {e}", shared.backend);
            let deadline = Instant::now() + OVERLOAD_DEADLINE;
            let msg = "service temporarily unavailable, retry shortly";
            if send_final(&mut tls, &mut client, 503, msg, deadline).is_ok() {
                linger(&client, deadline.min(Instant::now() + OVERLOAD_LINGER));
            }
            return;
        }
    };
    let key = match backend.local_addr() {
        Ok(key) => key,
        Err(e) => {
            log::warn!("{name}: {addr}: backend connection address: {e}");
            return;
        }
    };
    // Registered before the relay forwards a single byte, so tiny_http can never read a
    // request from this connection that the table does not explain.
    let _registration = shared.peers.register(
        key,
        PeerInfo {
            addr,
            kind: shared.kind,
            client_cert,
        },
    );
    let mut relay = match Relay::new(shared, control, addr, tls, client, backend) {
        Ok(relay) => relay,
        Err(e) => {
            log::warn!("{name}: {addr}: prepare relay: {e}");
            return;
        }
    };
    let end = relay.run();
    relay.finish(end);
}

fn connect_backend(backend: SocketAddr) -> io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&backend, BACKEND_CONNECT_TIMEOUT)?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Why a request was not forwarded. Each gets an error response after the responses
/// still owed for earlier requests.
#[derive(Clone, Copy, Debug)]
enum Refusal {
    /// 431: no complete head within `max_head_bytes`.
    HeadTooLarge { limit: usize },
    /// 408: the head was still incomplete `head_timeout` after its first byte.
    HeadTimeout { limit: Duration },
    /// 400, 411, 413 or 417: the parser said no.
    Head(HeadError),
}

impl Refusal {
    fn status(&self) -> u16 {
        match self {
            Refusal::HeadTooLarge { .. } => 431,
            Refusal::HeadTimeout { .. } => 408,
            Refusal::Head(e) => e.status(),
        }
    }

    fn message(&self) -> String {
        match self {
            Refusal::HeadTooLarge { limit } => format!("request head exceeds {limit} bytes"),
            Refusal::HeadTimeout { limit } => {
                format!("request head not complete within {} ms", limit.as_millis())
            }
            Refusal::Head(e) => e.to_string(),
        }
    }
}

/// How a relay ended, which decides how the sockets are closed.
#[derive(Debug)]
enum End {
    /// Everything owed was flushed and `close_notify` sent.
    Clean,
    /// No progress in any direction for `idle_timeout`.
    Idle,
    /// One direction had data pending and made no progress for `idle_timeout`.
    Stalled(&'static str),
    /// The drain deadline of a shutdown passed.
    Forced,
    /// The client socket or its TLS session failed.
    Failed(io::Error),
}

/// Where the client-to-backend stream stands in HTTP/1.1 framing.
#[derive(Clone, Copy, Debug)]
enum Framing {
    /// Collecting a head. `scanned` is how far the search for its end got; `since` is when
    /// its first byte arrived (`None` between requests).
    Head {
        scanned: usize,
        since: Option<Instant>,
    },
    /// Passing `remaining` more body bytes through unchanged; the head was released at
    /// `since`.
    Body { remaining: u64, since: Instant },
}

/// Whether the front still reads from the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Inbound {
    Open,
    /// The client ended its side (`close_notify` or TCP end of stream).
    Finished,
    /// The front stopped reading: a request was refused, or the backend stopped taking
    /// data.
    Stopped,
}

/// Client-to-backend plaintext.
///
/// Invariant: `sent <= released <= filled <= buf.len()`. `[sent, released)` is cleared
/// for the backend and not yet written; `[released, filled)` is held back until the
/// framing has looked at it, after which it is at most one incomplete head shorter than
/// `max_head_bytes`. So the buffer never grows, and a head always fits.
struct UpBuffer {
    buf: Box<[u8]>,
    sent: usize,
    released: usize,
    filled: usize,
}

impl UpBuffer {
    fn new(capacity: usize) -> Self {
        UpBuffer {
            buf: vec![0; capacity].into_boxed_slice(),
            sent: 0,
            released: 0,
            filled: 0,
        }
    }

    fn unsent(&self) -> &[u8] {
        &self.buf[self.sent..self.released]
    }

    fn held(&self) -> &[u8] {
        &self.buf[self.released..self.filled]
    }

    /// Free space at the end, after moving data to the front when little is left.
    /// Moving happens only once a quarter or less is free, so a steady stream of small
    /// requests, each written out before the next arrives, never copies.
    fn spare(&mut self) -> &mut [u8] {
        if self.sent == self.filled {
            self.sent = 0;
            self.released = 0;
            self.filled = 0;
        } else if self.sent > 0 && self.buf.len() - self.filled <= self.buf.len() / 4 {
            self.buf.copy_within(self.sent..self.filled, 0);
            self.released -= self.sent;
            self.filled -= self.sent;
            self.sent = 0;
        }
        &mut self.buf[self.filled..]
    }

    fn drop_held(&mut self) {
        self.filled = self.released;
    }
}

/// Backend-to-client plaintext not yet taken by rustls.
///
/// Invariant: `start <= end <= buf.len()`.
struct DownBuffer {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
}

impl DownBuffer {
    fn pending(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.end);
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    fn spare_len(&self) -> usize {
        self.buf.len() - self.end
    }

    /// Replaces the (empty) contents with `bytes`, cut to the capacity.
    fn load(&mut self, bytes: &[u8]) {
        let n = bytes.len().min(self.buf.len());
        self.buf[..n].copy_from_slice(&bytes[..n]);
        self.start = 0;
        self.end = n;
    }
}

struct Relay<'a> {
    shared: &'a Shared,
    control: &'a Control,
    addr: SocketAddr,
    tls: ServerConnection,
    client: TcpStream,
    backend: TcpStream,
    up: UpBuffer,
    down: DownBuffer,
    framing: Framing,
    inbound: Inbound,
    /// Set once, when a request is refused; its response follows the backend's last one.
    refusal: Option<Refusal>,
    /// The client may still be sending what the front no longer reads, so closing must
    /// linger or the client risks a reset before it reads the last response.
    linger_on_close: bool,
    refusal_queued: bool,
    close_notify_sent: bool,
    /// The client socket reached end of stream; never poll it for reading again.
    client_eof: bool,
    client_write_blocked: bool,
    backend_write_blocked: bool,
    backend_write_shut: bool,
    backend_eof: bool,
    draining: bool,
    last_activity: Instant,
    /// When the oldest still-pending byte of each direction started waiting.
    up_stall_since: Option<Instant>,
    down_stall_since: Option<Instant>,
    last_head_at: Option<Instant>,
    last_backend_data_at: Option<Instant>,
}

impl<'a> Relay<'a> {
    fn new(
        shared: &'a Shared,
        control: &'a Control,
        addr: SocketAddr,
        tls: ServerConnection,
        client: TcpStream,
        backend: TcpStream,
    ) -> io::Result<Self> {
        client.set_nonblocking(true)?;
        backend.set_nonblocking(true)?;
        let up_capacity = shared.limits.max_head_bytes.max(UP_BUFFER_MIN_BYTES);
        Ok(Relay {
            shared,
            control,
            addr,
            tls,
            client,
            backend,
            up: UpBuffer::new(up_capacity),
            down: DownBuffer {
                buf: vec![0; DOWN_BUFFER_BYTES].into_boxed_slice(),
                start: 0,
                end: 0,
            },
            framing: Framing::Head {
                scanned: 0,
                since: None,
            },
            inbound: Inbound::Open,
            refusal: None,
            linger_on_close: false,
            refusal_queued: false,
            close_notify_sent: false,
            client_eof: false,
            client_write_blocked: false,
            backend_write_blocked: false,
            backend_write_shut: false,
            backend_eof: false,
            draining: false,
            last_activity: Instant::now(),
            up_stall_since: None,
            down_stall_since: None,
            last_head_at: None,
            last_backend_data_at: None,
        })
    }

    /// Moves data until the connection ends. Each turn first does all the work possible
    /// without waiting, then waits on both sockets for exactly what it still needs.
    fn run(&mut self) -> End {
        loop {
            let now = Instant::now();
            if self.control.force_closed() {
                return End::Forced;
            }
            if !self.draining && self.control.draining() {
                self.draining = true;
            }
            self.read_plaintext(now);
            self.write_backend(now);
            if let Err(e) = self.write_client(now) {
                return End::Failed(e);
            }
            if let Some(end) = self.check_end(now) {
                return end;
            }
            if let Err(e) = self.wait(now) {
                return End::Failed(e);
            }
        }
    }

    /// Takes decrypted client bytes into `up` and runs the framing over them.
    fn read_plaintext(&mut self, now: Instant) {
        if self.inbound != Inbound::Open {
            return;
        }
        loop {
            let spare = self.up.spare();
            if spare.is_empty() {
                break;
            }
            match self.tls.reader().read(spare) {
                Ok(0) => {
                    self.inbound = Inbound::Finished;
                    break;
                }
                Ok(n) => self.up.filled += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                // UnexpectedEof: TCP end of stream without close_notify. Requests already
                // complete still count; a partial one is dropped below.
                Err(_) => {
                    self.inbound = Inbound::Finished;
                    break;
                }
            }
        }
        if let Err(refusal) = self.frame(now) {
            self.refuse(refusal);
            return;
        }
        if self.inbound != Inbound::Open {
            self.up.drop_held();
            return;
        }
        // Only the client's own slowness counts: while earlier bytes still wait for the
        // backend, the request cannot progress through any fault of the client.
        if !self.up.unsent().is_empty() {
            return;
        }
        let limits = &self.shared.limits;
        match self.framing {
            Framing::Head {
                since: Some(since), ..
            } if now.duration_since(since) >= limits.head_timeout => {
                let limit = limits.head_timeout;
                self.refuse(Refusal::HeadTimeout { limit });
            }
            Framing::Body { since, .. } if now.duration_since(since) >= limits.head_timeout => {
                // Part of the body is already with tiny_http, so the front cannot answer
                // for this request; ending the stream frees the handler reading it, and
                // whatever tiny_http answers still reaches the client.
                log::info!(
                    "{}: {}: request body not complete within {} ms; closing",
                    self.control.name(),
                    self.addr,
                    limits.head_timeout.as_millis()
                );
                self.inbound = Inbound::Stopped;
                self.linger_on_close = true;
            }
            _ => {}
        }
    }

    /// Releases held bytes for the backend as far as the framing allows: whole valid
    /// heads, then exactly their body bytes.
    fn frame(&mut self, now: Instant) -> Result<(), Refusal> {
        let max_head = self.shared.limits.max_head_bytes;
        let max_body = self.shared.limits.max_body_bytes;
        loop {
            match &mut self.framing {
                Framing::Body { remaining, .. } => {
                    let held = self.up.filled - self.up.released;
                    // Bounded by `held`, so the result fits in usize.
                    let take = usize::try_from(*remaining).map_or(held, |r| r.min(held));
                    self.up.released += take;
                    *remaining -= take as u64;
                    if *remaining > 0 {
                        return Ok(());
                    }
                    self.framing = Framing::Head {
                        scanned: 0,
                        since: None,
                    };
                }
                Framing::Head { scanned, since } => {
                    let held = self.up.held();
                    if held.is_empty() {
                        return Ok(());
                    }
                    since.get_or_insert(now);
                    let window = &held[..held.len().min(max_head)];
                    let Some(len) = http::find_end(window, *scanned) else {
                        if held.len() >= max_head {
                            return Err(Refusal::HeadTooLarge { limit: max_head });
                        }
                        *scanned = window.len();
                        return Ok(());
                    };
                    let content_length = http::parse(&window[..len])
                        .and_then(|head| head.capped_length(max_body))
                        .map_err(Refusal::Head)?;
                    self.up.released += len;
                    self.last_head_at = Some(now);
                    self.framing = Framing::Body {
                        remaining: content_length,
                        since: now,
                    };
                }
            }
        }
    }

    fn refuse(&mut self, refusal: Refusal) {
        log::info!(
            "{}: {}: refused request with {}: {}",
            self.control.name(),
            self.addr,
            refusal.status(),
            refusal.message()
        );
        self.refusal = Some(refusal);
        self.linger_on_close = true;
        self.inbound = Inbound::Stopped;
        self.up.drop_held();
    }

    /// Writes released bytes to the backend; once the client side is done and nothing is
    /// left, half-closes the backend so tiny_http finishes what it owes and closes.
    fn write_backend(&mut self, now: Instant) {
        if !self.up.unsent().is_empty() && !self.backend_write_blocked {
            match (&self.backend).write(self.up.unsent()) {
                Ok(n) => {
                    self.up.sent += n;
                    self.last_activity = now;
                    self.up_stall_since = Some(now);
                    // A short write means the socket buffer is full; poll before the next
                    // attempt instead of paying for a write that returns EAGAIN.
                    self.backend_write_blocked = !self.up.unsent().is_empty();
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.backend_write_blocked = true;
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
                        self.inbound = Inbound::Stopped;
                        self.linger_on_close = true;
                    }
                    self.up.sent = self.up.released;
                    self.up.drop_held();
                    self.backend_write_shut = true;
                }
            }
        }
        if self.up.unsent().is_empty() {
            self.up_stall_since = None;
        } else {
            self.up_stall_since.get_or_insert(now);
        }
        if self.inbound != Inbound::Open && self.up.unsent().is_empty() && !self.backend_write_shut
        {
            let _ = self.backend.shutdown(Shutdown::Write);
            self.backend_write_shut = true;
        }
    }

    /// Hands backend bytes to rustls and TLS records to the client, and once the backend
    /// has closed, appends the refusal (if any) and `close_notify`.
    fn write_client(&mut self, now: Instant) -> io::Result<()> {
        loop {
            let mut progress = false;
            if !self.down.pending().is_empty() {
                // Takes less (or nothing) once rustls holds its 64 KiB of unsent records:
                // that is the backpressure towards the backend.
                let n = self.tls.writer().write(self.down.pending())?;
                self.down.consume(n);
                progress |= n > 0;
            }
            if self.down.pending().is_empty() && self.backend_eof && !self.close_notify_sent {
                match self.refusal {
                    Some(refusal) if !self.refusal_queued => {
                        self.down
                            .load(&raw_error_response(refusal.status(), &refusal.message()));
                        self.refusal_queued = true;
                        continue;
                    }
                    _ => {
                        self.tls.send_close_notify();
                        self.close_notify_sent = true;
                    }
                }
            }
            if self.tls.wants_write() && !self.client_write_blocked {
                match self.tls.write_tls(&mut self.client) {
                    Ok(0) => self.client_write_blocked = true,
                    Ok(_) => {
                        progress = true;
                        self.last_activity = now;
                        self.down_stall_since = Some(now);
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => progress = true,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        self.client_write_blocked = true;
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

    fn check_end(&mut self, now: Instant) -> Option<End> {
        if self.close_notify_sent && !self.tls.wants_write() {
            return Some(End::Clean);
        }
        if self.draining && !self.close_notify_sent && self.at_quiet_boundary(now) {
            self.tls.send_close_notify();
            self.close_notify_sent = true;
            // Flushed by the next turn, which then ends cleanly.
            return None;
        }
        let idle = self.shared.limits.idle_timeout;
        if now.duration_since(self.last_activity) >= idle {
            return Some(End::Idle);
        }
        if self
            .up_stall_since
            .is_some_and(|t| now.duration_since(t) >= idle)
        {
            return Some(End::Stalled("backend stopped reading"));
        }
        if self
            .down_stall_since
            .is_some_and(|t| now.duration_since(t) >= idle)
        {
            return Some(End::Stalled("client stopped reading"));
        }
        None
    }

    /// Between requests, everything relayed, and the backend answered the last request
    /// and has been quiet since: closing now loses nothing.
    fn at_quiet_boundary(&self, now: Instant) -> bool {
        let between_requests = matches!(self.framing, Framing::Head { since: None, .. });
        let answered = match (self.last_head_at, self.last_backend_data_at) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(head), Some(data)) => data >= head && now.duration_since(data) >= DRAIN_QUIET,
        };
        between_requests
            && answered
            && self.refusal.is_none()
            && self.up.unsent().is_empty()
            && self.up.held().is_empty()
            && self.down.pending().is_empty()
            && !self.tls.wants_write()
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
    fn wait(&mut self, now: Instant) -> io::Result<()> {
        let limits = &self.shared.limits;
        let mut client_events = 0;
        if self.inbound == Inbound::Open
            && !self.client_eof
            && self.tls.wants_read()
            && !self.up.spare().is_empty()
        {
            client_events |= sys::POLLIN;
        }
        if self.client_write_blocked {
            client_events |= sys::POLLOUT;
        }
        let mut backend_events = 0;
        if !self.backend_eof && !self.close_notify_sent && self.down.spare_len() > 0 {
            backend_events |= sys::POLLIN;
        }
        if self.backend_write_blocked {
            backend_events |= sys::POLLOUT;
        }
        let wake_events = if self.draining { 0 } else { sys::POLLIN };
        let mut fds = [
            sys::poll_fd(self.client.as_raw_fd(), client_events),
            sys::poll_fd(self.backend.as_raw_fd(), backend_events),
            sys::poll_fd(self.control.wake_fd(), wake_events),
        ];

        let mut deadline = self.last_activity + limits.idle_timeout;
        for since in [self.up_stall_since, self.down_stall_since]
            .into_iter()
            .flatten()
        {
            deadline = deadline.min(since + limits.idle_timeout);
        }
        // Mirrors the checks in `read_plaintext`, so a deadline that is not enforced yet
        // never turns into a busy loop of zero-length waits.
        if self.inbound == Inbound::Open && self.up.unsent().is_empty() {
            match self.framing {
                Framing::Head {
                    since: Some(since), ..
                } => deadline = deadline.min(since + limits.head_timeout),
                Framing::Body { since, .. } => deadline = deadline.min(since + limits.head_timeout),
                Framing::Head { since: None, .. } => {}
            }
        }
        if self.draining {
            deadline = deadline.min(now + DRAIN_TICK);
        }
        if self.plaintext_waits_for_room() {
            // rustls holds decrypted bytes that did not fit in `up` on the last read (a
            // body over the buffer's size); `up` has room again and no socket event will
            // announce them, so look again at once instead of sleeping until a timeout.
            deadline = now;
        }
        if sys::poll(&mut fds, Some(deadline.saturating_duration_since(now)))? == 0 {
            return Ok(());
        }
        let now = Instant::now();

        let [client, backend, wake] = fds;
        if client_events & sys::POLLIN != 0 && sys::readable(&client) {
            match self.tls.read_tls(&mut self.client) {
                Ok(0) => self.client_eof = true,
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
            self.client_write_blocked = false;
        }
        if backend_events & sys::POLLIN != 0 && sys::readable(&backend) {
            let end = self.down.end;
            match (&self.backend).read(&mut self.down.buf[end..]) {
                Ok(0) => self.backend_eof = true,
                Ok(n) => {
                    self.down.end += n;
                    self.last_activity = now;
                    self.last_backend_data_at = Some(now);
                }
                Err(e) if would_block(&e) => {}
                Err(e) => {
                    log::debug!(
                        "{}: {}: read from backend: {e}",
                        self.control.name(),
                        self.addr
                    );
                    self.backend_eof = true;
                }
            }
        }
        if backend_events & sys::POLLOUT != 0 && sys::writable(&backend) {
            self.backend_write_blocked = false;
        }
        if sys::ready(&wake) {
            self.draining = true;
        }
        Ok(())
    }

    /// Closes the client the way `end` calls for, then retires the backend connection.
    fn finish(mut self, end: End) {
        let name = &self.control.name();
        match &end {
            End::Clean if self.linger_on_close => {
                linger(&self.client, Instant::now() + LINGER_TIME);
            }
            End::Clean => {}
            End::Idle | End::Forced => {
                // A courtesy close_notify, no HTTP bytes; one attempt, never waits.
                if !self.close_notify_sent {
                    self.tls.send_close_notify();
                }
                let _ = self.tls.write_tls(&mut self.client);
            }
            End::Stalled(_) | End::Failed(_) => {}
        }
        match end {
            End::Clean => {}
            End::Idle => log::debug!("{name}: {}: closed idle connection", self.addr),
            End::Forced => log::debug!("{name}: {}: closed at the drain deadline", self.addr),
            End::Stalled(why) => log::debug!("{name}: {}: closed: {why}", self.addr),
            End::Failed(e) => log::debug!("{name}: {}: connection failed: {e}", self.addr),
        }
        drop(self.client);

        // The peer-table entry goes when the caller's registration drops, right after
        // this. Until then tiny_http may still be reading requests from this connection,
        // so give it a bounded chance to finish and close its side first.
        if !self.backend_eof {
            if !self.backend_write_shut {
                let _ = self.backend.shutdown(Shutdown::Write);
            }
            let wait = self.shared.limits.idle_timeout.min(RETIRE_MAX);
            drain_until_eof(&self.backend, Instant::now() + wait, usize::MAX);
        }
    }
}
