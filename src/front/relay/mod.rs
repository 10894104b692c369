//! One client connection after its TLS handshake (done by `listener`): a single-threaded
//! poll loop that relays plaintext to and from the backend. Each request is held until it
//! is complete (its head checked against the rules in `wire::http`, then its whole capped
//! body) and only then forwarded, or answered on this thread by the listener's
//! [`LocalAnswer`](super::LocalAnswer) when nothing is in flight before it. Knows a request
//! only by its framing; never decides what a peer may do, only records who it is.
//!
//! Here: the connection served from start to end ([`serve`]: the backend connection, the
//! peer registered, the loop, the close) and the relay's state; `hold.rs` frames the
//! client's bytes into requests and holds each until it is complete; `sockets.rs` waits on
//! both sockets and moves the bytes.

mod hold;
mod sockets;

use std::io;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use rustls::ServerConnection;

use super::buffers::{DownBuffer, UpBuffer};
use super::peers::PeerInfo;
use super::responses::Responses;
use super::Shared;
use crate::listener::{drain_until_eof, linger, send_final, Conn, Control};
use crate::wire::http::HeadError;

/// Backend-to-client plaintext waiting for rustls. tiny_http writes responses in pieces
/// of a few KiB; 16 KiB is one full TLS record.
const DOWN_BUFFER_BYTES: usize = 16 * 1024;
/// Base size of the client-to-backend buffer; it is `max_head_bytes` when that is larger,
/// because a whole head must fit before it can be checked, and grows while a request
/// with a larger body is held.
const UP_BUFFER_MIN_BYTES: usize = 16 * 1024;
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
        // idle connection, without a word (one that sent part of it gets its 408 in `hold`).
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
