//! One client connection after its TLS handshake (done by `listener`): a single-threaded
//! poll loop that relays plaintext to and from the backend. Each request is held until it is
//! complete (its head checked against the rules in `wire::http`, then its whole capped
//! body) and only then forwarded, or answered on this thread by the listener's
//! [`LocalAnswer`](super::LocalAnswer) when nothing is in flight before it. Knows a request only by its
//! framing; never decides what a peer may do, only records who it is.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use rustls::ServerConnection;

use super::buffers::{DownBuffer, UpBuffer};
use super::peers::PeerInfo;
use super::responses::Responses;
use super::Shared;
use crate::listener::{
    drain_until_eof, linger, send_final, sys, would_block, Conn, Control, UNAUTHENTICATED_DEADLINE,
};
use crate::wire::error::raw_error_response;
use crate::wire::http::{self, HeadError};

/// Backend-to-client plaintext waiting for rustls. tiny_http writes responses in pieces
/// of a few KiB; 16 KiB is one full TLS record.
const DOWN_BUFFER_BYTES: usize = 16 * 1024;
/// Base size of the client-to-backend buffer; it is `max_head_bytes` when that is larger,
/// because a whole head must fit before it can be checked, and grows while a request
/// with a larger body is held.
const UP_BUFFER_MIN_BYTES: usize = 16 * 1024;
/// How often a draining connection looks at the drain deadline again.
const DRAIN_TICK: Duration = Duration::from_millis(100);
/// How long a forwarded request may wait for its answer before the connection counts as
/// idle. The idle timer measures a silent client, not a working handler: asking a target
/// (`POST /api/replication/target`) may take about a minute, and the client is waiting for
/// that answer. Only a backend that never answers meets this bound.
const RESPONSE_WAIT: Duration = Duration::from_secs(300);
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
        first_request_by,
    } = conn;
    let name = control.name();

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
    let _registration = shared.peers.register(key, PeerInfo { addr });
    let sockets = (tls, client, backend);
    let mut relay = match Relay::new(shared, control, addr, sockets, first_request_by) {
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
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Refusal {
    /// 431: no complete head within `max_head_bytes`.
    HeadTooLarge { limit: usize },
    /// 408: the head was still incomplete `head_timeout` after its first byte.
    HeadTimeout { limit: Duration },
    /// 408: the body was still incomplete `head_timeout` after the head (or after the
    /// `100 Continue` the client waited for).
    BodyTimeout { limit: Duration },
    /// 408: a connection from an address that has not authenticated recently did not
    /// complete its first request within this time of its accept.
    FirstRequestTimeout { limit: Duration },
    /// 400, 411, 413 or 417: the parser said no.
    Head(HeadError),
}

impl Refusal {
    fn status(&self) -> u16 {
        match self {
            Refusal::HeadTooLarge { .. } => 431,
            Refusal::HeadTimeout { .. }
            | Refusal::BodyTimeout { .. }
            | Refusal::FirstRequestTimeout { .. } => 408,
            Refusal::Head(e) => e.status(),
        }
    }

    fn message(&self) -> String {
        match self {
            Refusal::HeadTooLarge { limit } => format!("request head exceeds {limit} bytes"),
            Refusal::HeadTimeout { limit } => {
                format!("request head not complete within {} ms", limit.as_millis())
            }
            Refusal::BodyTimeout { limit } => {
                format!("request body not complete within {} ms", limit.as_millis())
            }
            Refusal::FirstRequestTimeout { limit } => format!(
                "first request not complete within {} ms of connecting",
                limit.as_millis()
            ),
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

/// Where the client-to-backend stream stands in HTTP/1.1 framing. Nothing of a request
/// is released to the backend before the whole of it (head and body) is held.
#[derive(Clone, Copy, Debug)]
enum Framing {
    /// Collecting a head. `scanned` is how far the search for its end got; `since` is when
    /// its first byte arrived (`None` between requests).
    Head {
        scanned: usize,
        since: Option<Instant>,
    },
    /// A checked head (its `Expect` line already cut out) is held and its body is
    /// arriving: the request is released once `head_len + body_len` bytes are held.
    Body {
        head_len: usize,
        body_len: usize,
        /// The request is a `HEAD`: its response has no body.
        head_request: bool,
        /// The client sent `Connection: close` (or is HTTP/1.0 without keep-alive): this
        /// is its last request.
        last: bool,
        /// Whether the client waits for a `100 Continue`.
        expect: Continue,
        /// When the body's clock started: at the head, or when the `100 Continue` went
        /// out. `None` while that `100 Continue` waits for earlier responses, which is no
        /// fault of the client's.
        since: Option<Instant>,
    },
}

impl Framing {
    const BETWEEN_REQUESTS: Framing = Framing::Head {
        scanned: 0,
        since: None,
    };
}

/// The `Expect: 100-continue` handshake of the request being received.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Continue {
    /// The client sends its body without waiting.
    NotAsked,
    /// The client waits; the front sends `100 Continue` once nothing is in flight before it.
    Owed,
    /// Sent.
    Sent,
}

/// The front's interim answer to `Expect: 100-continue`.
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// Whether the front still takes requests from the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Inbound {
    Open,
    /// The client ended its side (`close_notify` or TCP end of stream).
    Finished,
    /// The front stopped reading; the client may still be sending, so closing lingers.
    Stopped(Stop),
}

/// Why the front stopped reading from the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stop {
    /// A request was refused; its error response follows the backend's last one.
    Refused(Refusal),
    /// The last request the client announced (`Connection: close`) was forwarded.
    LastRequest,
    /// The backend stopped taking data, or answered something the front cannot follow.
    Backend,
}

/// How far the client-bound stream has come towards its end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outbound {
    /// Relaying responses (the backend's and the front's own).
    Relaying,
    /// The backend has closed and the refusal's error response is loaded after its last
    /// byte; `close_notify` follows.
    Refusing,
    /// `close_notify` is queued; nothing more is written.
    Closed,
}

/// The read half of a socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ReadHalf {
    Open,
    /// End of stream: never poll it for reading again.
    Ended,
}

/// The write half of a socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum WriteHalf {
    Ready,
    /// The last write would have blocked: wait for `POLLOUT` before the next.
    Blocked,
    /// The front shut it (only ever the backend's, once the client side is done).
    Shut,
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
    outbound: Outbound,
    /// Which forwarded requests the backend has answered in full.
    responses: Responses,
    client_read: ReadHalf,
    /// Only `Ready` or `Blocked`: the client's end is `close_notify`, in `outbound`.
    client_write: WriteHalf,
    backend_read: ReadHalf,
    backend_write: WriteHalf,
    /// The daemon is shutting down: close at the next request boundary.
    draining: bool,
    last_activity: Instant,
    /// When the oldest still-pending byte of each direction started waiting.
    up_stall_since: Option<Instant>,
    down_stall_since: Option<Instant>,
    /// Where a local answer is rendered; kept for the next one.
    answer: Vec<u8>,
    /// Until the first request is complete, on a connection from an address that has not
    /// authenticated recently: when it must be (`listener::UNAUTHENTICATED_DEADLINE`).
    first_request_by: Option<Instant>,
}

impl<'a> Relay<'a> {
    fn new(
        shared: &'a Shared,
        control: &'a Control,
        addr: SocketAddr,
        (tls, client, backend): (ServerConnection, TcpStream, TcpStream),
        first_request_by: Option<Instant>,
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
            down: DownBuffer::new(DOWN_BUFFER_BYTES),
            framing: Framing::BETWEEN_REQUESTS,
            inbound: Inbound::Open,
            outbound: Outbound::Relaying,
            responses: Responses::new(),
            client_read: ReadHalf::Open,
            client_write: WriteHalf::Ready,
            backend_read: ReadHalf::Open,
            backend_write: WriteHalf::Ready,
            draining: false,
            last_activity: Instant::now(),
            up_stall_since: None,
            down_stall_since: None,
            answer: Vec::new(),
            first_request_by,
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
        if self.first_request_by.is_some_and(|by| now >= by) && !self.up.held().is_empty() {
            self.refuse(Refusal::FirstRequestTimeout {
                limit: UNAUTHENTICATED_DEADLINE,
            });
            return;
        }
        let limit = self.shared.limits.head_timeout;
        let overdue =
            |since: Option<Instant>| since.is_some_and(|s| now.duration_since(s) >= limit);
        match self.framing {
            Framing::Head { since, .. } if overdue(since) => {
                self.refuse(Refusal::HeadTimeout { limit });
            }
            Framing::Body { since, .. } if overdue(since) => {
                self.refuse(Refusal::BodyTimeout { limit });
            }
            _ => {}
        }
    }

    /// Runs the framing over the held bytes: each complete request is answered in the
    /// front (when the answerer takes it and nothing is in flight) or released to the
    /// backend whole; an incomplete one stays held, with room reserved for all of it.
    fn frame(&mut self, now: Instant) -> Result<(), Refusal> {
        let max_head = self.shared.limits.max_head_bytes;
        let max_body = self.shared.limits.max_body_bytes;
        loop {
            match self.framing {
                Framing::Head { scanned, since } => {
                    let held = self.up.held();
                    if held.is_empty() {
                        return Ok(());
                    }
                    let since = since.unwrap_or(now);
                    let window = &held[..held.len().min(max_head)];
                    let Some(len) = http::request_head_end(window, scanned) else {
                        if held.len() >= max_head {
                            return Err(Refusal::HeadTooLarge { limit: max_head });
                        }
                        self.framing = Framing::Head {
                            scanned: window.len(),
                            since: Some(since),
                        };
                        return Ok(());
                    };
                    let head = http::parse(&window[..len]).map_err(Refusal::Head)?;
                    let body_len = head.capped_length(max_body).map_err(Refusal::Head)?;
                    // Within max_body_bytes, which the configuration keeps addressable.
                    let body_len = usize::try_from(body_len).map_err(|_| {
                        Refusal::Head(HeadError::BodyTooLarge {
                            length: body_len,
                            limit: max_body,
                        })
                    })?;
                    if body_len == 0
                        && self.may_add_bytes()
                        && answer_locally(self.shared, &head, &mut self.answer)
                        && self.down.append(&self.answer)
                    {
                        self.up.skip(len);
                        self.framing = Framing::BETWEEN_REQUESTS;
                        self.first_request_by = None;
                        continue;
                    }
                    let expect = if head.expect_continue && body_len > 0 {
                        Continue::Owed
                    } else {
                        Continue::NotAsked
                    };
                    let head_request = head.method == "HEAD";
                    let last = !head.keep_alive;
                    // tiny_http must not see `Expect`: it would send a second `100
                    // Continue`, and it hands a request that has one to a worker before
                    // reading its body.
                    let cut = head.expect_continue.then(|| head.line_range("expect"));
                    let head_len = match cut.flatten() {
                        Some(range) => {
                            let removed = range.len();
                            self.up.cut(range);
                            len - removed
                        }
                        None => len,
                    };
                    self.up.reserve(head_len + body_len);
                    self.framing = Framing::Body {
                        head_len,
                        body_len,
                        head_request,
                        last,
                        since: (expect == Continue::NotAsked).then_some(now),
                        expect,
                    };
                }
                Framing::Body {
                    head_len,
                    body_len,
                    head_request,
                    last,
                    expect,
                    ..
                } => {
                    if self.up.held().len() < head_len + body_len {
                        if expect == Continue::Owed
                            && self.may_add_bytes()
                            && self.down.append(CONTINUE)
                        {
                            self.framing = Framing::Body {
                                head_len,
                                body_len,
                                head_request,
                                last,
                                expect: Continue::Sent,
                                since: Some(now),
                            };
                        }
                        return Ok(());
                    }
                    self.up.release(head_len + body_len);
                    self.responses.expect(head_request);
                    self.framing = Framing::BETWEEN_REQUESTS;
                    self.first_request_by = None;
                    if last {
                        // Whatever follows would never be answered: tiny_http closes after
                        // this request.
                        self.inbound = Inbound::Stopped(Stop::LastRequest);
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Whether the front may put bytes of its own into the client-bound stream now:
    /// every forwarded request has been answered in full, nothing waits to be forwarded,
    /// and the stream is still open.
    fn may_add_bytes(&self) -> bool {
        self.outbound == Outbound::Relaying
            && self.responses.owed() == 0
            && self.up.unsent().is_empty()
    }

    fn refuse(&mut self, refusal: Refusal) {
        log::info!(
            "{}: {}: refused request with {}: {}",
            self.control.name(),
            self.addr,
            refusal.status(),
            refusal.message()
        );
        self.inbound = Inbound::Stopped(Stop::Refused(refusal));
        self.up.drop_held();
    }

    /// Writes released bytes to the backend; once the client side is done and nothing is
    /// left, half-closes the backend so tiny_http finishes what it owes and closes.
    fn write_backend(&mut self, now: Instant) {
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

    fn check_end(&mut self, now: Instant) -> Option<End> {
        if self.outbound == Outbound::Closed && !self.tls.wants_write() {
            return Some(End::Clean);
        }
        if self.draining && self.outbound != Outbound::Closed && self.at_quiet_boundary() {
            self.tls.send_close_notify();
            self.outbound = Outbound::Closed;
            // Flushed by the next turn, which then ends cleanly.
            return None;
        }
        let idle = self.shared.limits.idle_timeout;
        if now.duration_since(self.last_activity) >= self.idle_bound() {
            return Some(End::Idle);
        }
        // A stranger that sent nothing of a first request by its deadline: closed like an
        // idle connection, without a word (one that sent part of it gets its 408 above).
        if self.inbound == Inbound::Open
            && self.up.held().is_empty()
            && self.first_request_by.is_some_and(|by| now >= by)
        {
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

    /// How long the connection may go without progress before it is idle: `idle_timeout`,
    /// or [`RESPONSE_WAIT`] while the backend owes an answer.
    fn idle_bound(&self) -> Duration {
        let idle = self.shared.limits.idle_timeout;
        if self.responses.owed() > 0 {
            idle.max(RESPONSE_WAIT)
        } else {
            idle
        }
    }

    /// Between requests, every forwarded request answered in full and everything
    /// relayed: closing now loses nothing.
    fn at_quiet_boundary(&self) -> bool {
        matches!(self.framing, Framing::Head { since: None, .. })
            && self.responses.owed() == 0
            && !matches!(self.inbound, Inbound::Stopped(Stop::Refused(_)))
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

    /// Closes the client the way `end` calls for, then retires the backend connection.
    fn finish(mut self, end: End) {
        let name = self.control.name();
        match &end {
            End::Clean if matches!(self.inbound, Inbound::Stopped(_)) => {
                // The client may still be sending what the front no longer reads; without
                // lingering it risks a reset before it reads the last response.
                linger(&self.client, Instant::now() + LINGER_TIME);
            }
            End::Clean => {}
            End::Idle | End::Forced => {
                // A courtesy close_notify, no HTTP bytes; one attempt, never waits.
                if self.outbound != Outbound::Closed {
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
        if self.backend_read == ReadHalf::Open {
            if self.backend_write != WriteHalf::Shut {
                let _ = self.backend.shutdown(Shutdown::Write);
            }
            let wait = self.shared.limits.idle_timeout.min(RETIRE_MAX);
            drain_until_eof(&self.backend, Instant::now() + wait, usize::MAX);
        }
    }
}

/// Asks the listener's answerer (if it has one) for an answer to a complete bodiless
/// request, under the rules of [`LocalAnswer`](super::LocalAnswer): HTTP/1.1, keep-alive, no body framing.
/// The caller has checked that nothing is in flight.
fn answer_locally(shared: &Shared, head: &http::RequestHead<'_>, out: &mut Vec<u8>) -> bool {
    let Some(answerer) = shared.local.as_deref() else {
        return false;
    };
    if head.version != http::Version::Http11
        || !head.keep_alive
        || head.body != http::BodyFraming::Length(0)
        || head.expect_continue
    {
        return false;
    }
    out.clear();
    let answered = answerer.answer(head, out);
    if !answered {
        out.clear();
    }
    answered
}
