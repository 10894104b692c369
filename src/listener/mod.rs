//! The accept machinery both public listeners share (the API front and the tunnel): the
//! accept loop, the connection caps with their quick 503, the open-file clamp, survival of
//! `EMFILE`, the TLS handshake under a deadline, and an ordered shutdown with a bounded
//! drain. Knows nothing of HTTP beyond the one canned 503; what happens on a connection
//! after its handshake belongs to the [`Service`].
//!
//! Every accepted connection gets its own thread (bounded by the caps), so a slow client
//! only ever holds its own thread.
//!
//! # Connection slots (docs/decisions.md, "Connection slots")
//!
//! Holding a slot costs a stranger nothing (a TCP connection, no certificate, no
//! password), so the caps are arranged for who has proven something:
//!
//! - `max_connections` in all, and `max_connections_per_address` per client address (an
//!   IPv4 address or an IPv6 /64), for everyone;
//! - a **reserve** of a quarter of `max_connections` that only addresses which
//!   authenticated within the last [`KNOWN_FOR`] may use ([`KnownAddresses`]: a paired
//!   source's verified certificate on the tunnel, a login or a valid token on the API);
//!   everyone else shares the other three quarters;
//! - within that share, a **per-network** cap (IPv4 /24, IPv6 /64, the networks
//!   `pending_prefix_v4`/`_v6` count by default): an eighth of `max_connections`, at least
//!   twice the per-address cap, so a few networks cannot take the share either;
//! - a connection from an address that has not authenticated recently must complete its
//!   TLS handshake, and its first request, within [`UNAUTHENTICATED_DEADLINE`] of the
//!   accept ([`Conn::first_request_by`]), so a silent or half-open connection gives its
//!   slot back within seconds.

mod slots;
pub(crate) mod sys;
#[cfg(test)]
mod tests;

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use rustls::{ServerConfig, ServerConnection};

use crate::config::defaults;
use crate::model::{time_left, Network};
use crate::wire::error::raw_error_response;

pub(crate) use slots::AddressKey;
pub use slots::KnownAddresses;
use slots::{admit, take_slot, Class, Counts, OverflowSlot, Slot};
pub use sys::connect_from;

/// Descriptors kept back for the database, spool files, listeners, overflow answers and
/// logging.
const FD_RESERVE: u64 = 64;
/// Stack of a connection thread. Services keep their buffers on the heap; the deepest
/// stack use is the rustls handshake. Measured with an ECDSA P-256 certificate: the
/// debug-build tests pass with 96 KiB and overflow with 48 KiB.
const CONNECTION_STACK_BYTES: usize = 256 * 1024;
/// How long the accept loop waits on the listener before looking at the shutdown flag.
const ACCEPT_TICK: Duration = Duration::from_millis(250);
/// Pause after a failed accept, so a full descriptor table (the pending connection stays
/// queued and the listener stays readable) does not become a busy loop.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(75);
/// Accepts per wake-up before the loop looks at the shutdown flag again.
const ACCEPT_BATCH: usize = 64;
/// Repeated warnings (accept errors, cap reached) are logged at most this often.
const WARN_INTERVAL: Duration = Duration::from_secs(1);
/// How often `join` checks whether the connections have drained.
const JOIN_TICK: Duration = Duration::from_millis(10);
/// Deadline for the handshake and the 503 on an overflow connection.
const OVERLOAD_DEADLINE: Duration = Duration::from_secs(2);
/// Lingering after the 503: short, since the client is only sending its first request.
const OVERLOAD_LINGER: Duration = Duration::from_millis(200);
/// After a final response: how many bytes the server keeps reading and discarding while
/// it lingers (see [`linger`]).
const LINGER_BYTES: usize = 256 * 1024;
/// A connection from an address that has not authenticated recently must finish its TLS
/// handshake and its first complete request within this time of the accept (and the
/// handshake within `handshake_timeout`, if that is shorter). Ample for a real client on a
/// slow link (a handshake and a request are three round trips); a constant rather than a
/// setting, since nothing but a stalling client is ever near it.
pub const UNAUTHENTICATED_DEADLINE: Duration = Duration::from_secs(5);
/// How long an address that authenticated stays known ([`KnownAddresses`]): a working day
/// and more, so an admin who logged in this morning, or a source that replicates nightly,
/// still finds the reserve during an attack.
pub const KNOWN_FOR: Duration = Duration::from_secs(36 * 3600);
/// Most addresses a listener remembers as known; past it the one known longest ago goes.
/// About 100 KB at most.
const MAX_KNOWN: usize = 4096;
/// The network a stranger's connections are counted in (the defaults of
/// `pending_prefix_v4`/`pending_prefix_v6`).
const NETWORK_PREFIX_V4: u8 = 24;
const NETWORK_PREFIX_V6: u8 = 64;

/// Connection limits of one listener. Each field's doc gives the [`Default`], which is
/// the configuration's default (`config::defaults`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Concurrent connections (handshaking or served); past it, connections get a quick
    /// 503. Defaults to 256.
    pub max_connections: usize,
    /// Concurrent connections from one client address (an IPv4 address, or an IPv6 /64,
    /// which is what one site gets); past it, that address's new connections get the
    /// quick 503 while everyone else is still served. Defaults to 32.
    pub max_connections_per_address: usize,
    /// Deadline for the whole TLS handshake, counted from accept. Defaults to 10 s.
    pub handshake_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: defaults::MAX_CONNECTIONS,
            max_connections_per_address: defaults::MAX_CONNECTIONS_PER_ADDRESS,
            handshake_timeout: defaults::HANDSHAKE_TIMEOUT,
        }
    }
}

impl Limits {
    /// Slots only addresses that authenticated recently may use: a quarter of
    /// `max_connections` (64 of the default 256).
    pub fn reserve(&self) -> usize {
        self.max_connections / 4
    }

    /// Connections all other addresses may hold together: the rest (192 of 256).
    pub fn unauthenticated_share(&self) -> usize {
        self.max_connections - self.reserve()
    }

    /// Connections the addresses of one network (IPv4 /24, IPv6 /64) that have not
    /// authenticated recently may hold together: an eighth of `max_connections`, at least
    /// twice the per-address cap (one address never fills its network), at most their
    /// share (64 by default).
    pub fn per_network(&self) -> usize {
        (self.max_connections / 8)
            .max(self.max_connections_per_address.saturating_mul(2))
            .min(self.unauthenticated_share())
    }

    /// Refuses limits no listener can run with.
    pub fn check(&self) -> io::Result<()> {
        if self.handshake_timeout.is_zero() {
            return Err(invalid(
                "listener limit handshake_timeout must be above zero",
            ));
        }
        if self.max_connections == 0 {
            return Err(invalid("listener limit max_connections must be at least 1"));
        }
        if self.max_connections_per_address == 0 {
            return Err(invalid(
                "listener limit max_connections_per_address must be at least 1",
            ));
        }
        Ok(())
    }
}

/// Builds the error of a limit or setting no listener can run with.
pub(crate) fn invalid(message: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message.to_owned())
}

/// What a listener is: a bound socket, its TLS config and the daemon's shutdown flag.
pub struct Endpoint {
    /// Names the listener in thread names and log lines (`api`, `tunnel`).
    pub name: String,
    pub socket: TcpListener,
    pub tls: Arc<ServerConfig>,
    /// The daemon's shutdown flag: once set, the listener stops accepting and drains.
    pub shutdown: Arc<AtomicBool>,
}

/// What runs on a connection once its TLS handshake is complete.
pub trait Service: Send + Sync + 'static {
    /// Serves `conn` to its end, on the connection's own thread. The connection counts
    /// against the caps until this returns.
    fn serve(&self, conn: Conn<'_>);
}

/// An accepted connection after a successful handshake.
pub struct Conn<'a> {
    /// The TLS session, handshake complete (the peer's certificate, if any, verified).
    pub tls: ServerConnection,
    /// The client socket, blocking, without timeouts set.
    pub sock: TcpStream,
    /// The client's address as the listener saw it.
    pub peer: SocketAddr,
    /// The listener's shutdown state.
    pub control: &'a Control,
    /// For a connection from an address that has not authenticated recently: when its
    /// first request must be complete ([`UNAUTHENTICATED_DEADLINE`] after the accept). A
    /// service that authenticates at the handshake (the tunnel) may ignore it.
    pub first_request_by: Option<Instant>,
}

/// A listener's shutdown state, as its connections see it.
pub struct Control {
    name: String,
    /// The daemon's shutdown flag.
    shutdown: Arc<AtomicBool>,
    /// Set by [`Listener::join`]: stop this listener even if the daemon flag is not set.
    stop: AtomicBool,
    /// Set when the drain deadline passed: every connection closes at once.
    force_close: AtomicBool,
    /// Becomes readable (and stays so) once the accept loop stops, so idle connections
    /// learn of a shutdown without waking up on a timer.
    wake: UnixStream,
    /// The addresses that authenticated recently on this listener.
    known: Arc<KnownAddresses>,
}

impl Control {
    /// The listener's name, for log lines.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Records that `ip` just authenticated on this listener (the tunnel: a verified
    /// client certificate): its connections may use the reserve from now on.
    pub fn note_authenticated(&self, ip: IpAddr) {
        self.known.note(ip);
    }

    /// Whether the listener is shutting down: finish what is in flight, take nothing new.
    pub fn draining(&self) -> bool {
        self.shutdown.load(Ordering::Relaxed) || self.stop.load(Ordering::Relaxed)
    }

    /// Whether the drain deadline passed: close now, whatever is in flight.
    pub fn force_closed(&self) -> bool {
        self.force_close.load(Ordering::Relaxed)
    }

    /// A descriptor that becomes readable when the listener stops accepting; poll it
    /// beside the client socket to learn of a shutdown while waiting.
    pub fn wake_fd(&self) -> RawFd {
        self.wake.as_raw_fd()
    }
}

/// Handle to one running listener. Dropping it leaves the listener running until the
/// shutdown flag is set; [`Listener::join`] is the orderly way to end it.
pub struct Listener {
    local_addr: SocketAddr,
    inner: Arc<Inner>,
    accept: Option<JoinHandle<()>>,
}

impl Listener {
    /// The address the public listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Connections currently counted against the cap (handshaking or served).
    pub fn active_connections(&self) -> usize {
        self.inner.active.load(Ordering::Relaxed)
    }

    /// Stops accepting (also when the shutdown flag was not set), lets each connection
    /// finish what it has in flight, and returns once all are gone or `drain` has passed.
    /// Connections still open then are told to close at once ([`Control::force_closed`]);
    /// one still in its TLS handshake ends at its handshake deadline.
    pub fn join(mut self, drain: Duration) {
        let deadline = Instant::now() + drain;
        let control = &self.inner.control;
        control.stop.store(true, Ordering::Relaxed);
        if let Some(accept) = self.accept.take() {
            if accept.join().is_err() {
                log::error!("{}: accept thread panicked", control.name);
            }
        }
        loop {
            let open = self.inner.active.load(Ordering::Relaxed)
                + self.inner.overflow_active.load(Ordering::Relaxed);
            if open == 0 {
                return;
            }
            if Instant::now() >= deadline {
                log::warn!(
                    "{}: {open} connections still open after the {} ms drain; closing them",
                    control.name,
                    drain.as_millis()
                );
                control.force_close.store(true, Ordering::Relaxed);
                return;
            }
            thread::sleep(JOIN_TICK);
        }
    }
}

/// Starts the accept loop for `endpoint` on its own thread (named after the endpoint) and
/// returns at once. Each connection within `limits` is handshaken on its own thread and
/// handed to `service`. `known` is where the listener learns which addresses
/// authenticated recently (the service, or whoever authenticates its requests, notes
/// them there).
pub fn spawn(
    endpoint: Endpoint,
    limits: Limits,
    service: Arc<dyn Service>,
    known: Arc<KnownAddresses>,
) -> io::Result<Listener> {
    limits.check()?;
    let Endpoint {
        name,
        socket,
        tls,
        shutdown,
    } = endpoint;
    socket.set_nonblocking(true)?;
    let local_addr = socket.local_addr()?;
    // Each series from the start, at zero: a scrape sees it before its first event.
    handshake_failures(&name);
    for cap in slots::CAPS {
        refused_counter(&name, cap);
    }
    let (wake_tx, wake_rx) = UnixStream::pair()?;
    let inner = Arc::new(Inner {
        control: Control {
            name: name.clone(),
            shutdown,
            stop: AtomicBool::new(false),
            force_close: AtomicBool::new(false),
            wake: wake_rx,
            known,
        },
        tls,
        limits,
        service,
        active: AtomicUsize::new(0),
        unauthenticated: AtomicUsize::new(0),
        overflow_active: AtomicUsize::new(0),
        per_address: Counts::default(),
        per_network: Counts::default(),
    });
    let accept = thread::Builder::new()
        .name(format!("{name}-accept"))
        .spawn({
            let inner = Arc::clone(&inner);
            move || accept_loop(&inner, socket, wake_tx)
        })?;
    let weak = Arc::downgrade(&inner);
    crate::metrics::collect(Box::new(move |out| {
        if let Some(inner) = weak.upgrade() {
            out.gauge(
                "replgate_connections_open",
                "Connections open now (in their handshake or served), per listener.",
                &[("listener", inner.control.name.as_str())],
                inner.active.load(Ordering::Relaxed) as f64,
            );
        }
    }));
    log::info!("{name}: listening on {local_addr}");
    Ok(Listener {
        local_addr,
        inner,
        accept: Some(accept),
    })
}

/// Caps a connection count to what the open-file limit allows when each connection holds
/// `fds_per_connection` descriptors, with a reserve of 64. Raises the soft limit to the
/// hard limit first, and logs a warning when it still has to lower the count.
pub fn clamp_to_fd_limit(requested: usize, fds_per_connection: u64) -> usize {
    let fds_per_connection = fds_per_connection.max(1);
    let limit = match sys::raise_fd_limit() {
        Ok(limit) => limit,
        Err(e) => {
            log::warn!("read open-file limit: {e}; keeping {requested} connections");
            return requested;
        }
    };
    let Some(soft) = limit.soft else {
        return requested;
    };
    let allowed = soft.saturating_sub(FD_RESERVE) / fds_per_connection;
    let allowed = usize::try_from(allowed).unwrap_or(usize::MAX).max(1);
    if requested <= allowed {
        return requested;
    }
    let hard = limit.hard.map_or("unlimited".to_owned(), |h| h.to_string());
    log::warn!(
        "open-file limit {soft} (hard {hard}) allows {allowed} connections at \
         {fds_per_connection} descriptors each with {FD_RESERVE} in reserve; lowering \
         max_connections from {requested}; raise LimitNOFILE to serve more"
    );
    allowed
}

/// State shared by a listener's accept loop, its connection threads and its [`Listener`].
struct Inner {
    control: Control,
    tls: Arc<ServerConfig>,
    limits: Limits,
    service: Arc<dyn Service>,
    /// Connections within the cap, including those still handshaking.
    active: AtomicUsize,
    /// Of those, the connections from addresses that had not authenticated recently.
    unauthenticated: AtomicUsize,
    /// Connections being answered with a 503.
    overflow_active: AtomicUsize,
    per_address: Counts<AddressKey>,
    /// Connections from addresses that had not authenticated recently, per network.
    per_network: Counts<Network>,
}

/// A warning that may repeat many times a second (accept failing on `EMFILE`, the cap
/// being hit): the first goes out, the rest within a second are counted and summarized.
struct RateLimitedWarning {
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimitedWarning {
    fn new() -> Self {
        RateLimitedWarning {
            last: None,
            suppressed: 0,
        }
    }

    fn warn(&mut self, message: fmt::Arguments<'_>) {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < WARN_INTERVAL)
        {
            self.suppressed += 1;
            return;
        }
        if self.suppressed > 0 {
            log::warn!("{message} ({} more since the last report)", self.suppressed);
        } else {
            log::warn!("{message}");
        }
        self.last = Some(now);
        self.suppressed = 0;
    }
}

/// The rate-limited warnings of one accept loop.
struct Warnings {
    accept: RateLimitedWarning,
    overload: RateLimitedWarning,
    unauthenticated: RateLimitedWarning,
    per_address: RateLimitedWarning,
    per_network: RateLimitedWarning,
}

/// Accepts until shutdown. Survives every accept error (out of descriptors, out of
/// memory, aborted connections): logs it, pauses briefly, carries on.
fn accept_loop(inner: &Arc<Inner>, socket: TcpListener, wake: UnixStream) {
    let name = &inner.control.name;
    let overflow_slots = (inner.limits.max_connections / 16).max(4);
    let mut warnings = Warnings {
        accept: RateLimitedWarning::new(),
        overload: RateLimitedWarning::new(),
        unauthenticated: RateLimitedWarning::new(),
        per_address: RateLimitedWarning::new(),
        per_network: RateLimitedWarning::new(),
    };
    while !inner.control.draining() {
        let mut fds = [sys::poll_fd(socket.as_raw_fd(), sys::POLLIN)];
        match sys::poll(&mut fds, Some(ACCEPT_TICK)) {
            Ok(0) => continue,
            Ok(_) => {}
            Err(e) => {
                warnings
                    .accept
                    .warn(format_args!("{name}: wait for connections: {e}"));
                thread::sleep(ACCEPT_BACKOFF);
                continue;
            }
        }
        for _ in 0..ACCEPT_BATCH {
            match socket.accept() {
                Ok((stream, addr)) => {
                    dispatch(inner, stream, addr, overflow_slots, &mut warnings);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    warnings.accept.warn(format_args!("{name}: accept: {e}"));
                    thread::sleep(ACCEPT_BACKOFF);
                    break;
                }
            }
        }
    }
    drop(socket);
    // One byte is enough: the read end stays readable for every connection that polls it.
    if let Err(e) = (&wake).write_all(&[1]) {
        log::warn!("{name}: wake connections for shutdown: {e}");
    }
    log::info!("{name}: stopped accepting");
}

/// Hands a new connection to a connection thread, to an overflow thread that answers 503
/// (past one of the caps), or (when both are full) closes it at once.
fn dispatch(
    inner: &Arc<Inner>,
    stream: TcpStream,
    addr: SocketAddr,
    overflow_slots: usize,
    warnings: &mut Warnings,
) {
    // Latency over packet count: requests and responses are small and interactive, and
    // bulk streams fill whole records anyway.
    let _ = stream.set_nodelay(true);
    // Linux does not pass the listener's O_NONBLOCK on to accepted sockets, but the
    // handshake relies on blocking reads with timeouts, so make sure.
    let _ = stream.set_nonblocking(false);
    let accepted = Instant::now();
    let name = &inner.control.name;
    let refusal = match admit(inner, addr, warnings) {
        Ok(taken) => {
            let thread_inner = Arc::clone(inner);
            let spawned = thread::Builder::new()
                .name(format!("{name}-conn"))
                .stack_size(CONNECTION_STACK_BYTES)
                .spawn(move || {
                    let _slot = Slot {
                        inner: &thread_inner,
                        taken,
                    };
                    serve(&thread_inner, stream, addr, accepted, taken.class);
                });
            if let Err(e) = spawned {
                taken.release(inner);
                warnings
                    .overload
                    .warn(format_args!("{name}: start connection thread: {e}"));
            }
            return;
        }
        Err(refusal) => refusal,
    };
    refused_counter(name, refusal.cap).inc();
    let refusal = refusal.message;
    if take_slot(&inner.overflow_active, overflow_slots) {
        let thread_inner = Arc::clone(inner);
        let spawned = thread::Builder::new()
            .name(format!("{name}-busy"))
            .stack_size(CONNECTION_STACK_BYTES)
            .spawn(move || {
                let _slot = OverflowSlot(&thread_inner.overflow_active);
                refuse_overloaded(&thread_inner, stream, addr, refusal);
            });
        if spawned.is_err() {
            inner.overflow_active.fetch_sub(1, Ordering::Relaxed);
        }
    }
    // Otherwise `stream` is dropped here: closed without a word.
}

/// Connections refused at `cap` on the listener `name` (a metric).
fn refused_counter(name: &str, cap: &str) -> crate::metrics::Counter {
    crate::metrics::counter(
        "replgate_connections_refused_total",
        "Connections answered 503 or closed at a connection cap, per listener and cap.",
        &[("listener", name), ("cap", cap)],
    )
}

/// Failed TLS handshakes on the listener `name` (a metric).
fn handshake_failures(name: &str) -> crate::metrics::Counter {
    crate::metrics::counter(
        "replgate_tls_handshake_failures_total",
        "TLS handshakes that failed or timed out, per listener.",
        &[("listener", name)],
    )
}

/// One connection within the caps: the handshake under its deadline, then the service.
/// A stranger's connection gets the shorter deadlines of [`UNAUTHENTICATED_DEADLINE`].
fn serve(inner: &Inner, mut sock: TcpStream, peer: SocketAddr, accepted: Instant, class: Class) {
    let name = &inner.control.name;
    let mut tls = match ServerConnection::new(inner.tls.clone()) {
        Ok(tls) => tls,
        Err(e) => {
            log::warn!("{name}: {peer}: start tls session: {e}");
            return;
        }
    };
    let (handshake_time, first_request_by) = match class {
        Class::Known => (inner.limits.handshake_timeout, None),
        Class::Stranger(_) => (
            inner.limits.handshake_timeout.min(UNAUTHENTICATED_DEADLINE),
            Some(accepted + UNAUTHENTICATED_DEADLINE),
        ),
    };
    let deadline = accepted + handshake_time;
    if let Err(e) = handshake(&mut tls, &mut sock, deadline) {
        log::debug!("{name}: {peer}: tls handshake: {e}");
        handshake_failures(name).inc();
        return;
    }
    // The handshake left timeouts on the socket; the service starts from a clean one.
    if sock.set_read_timeout(None).is_err() || sock.set_write_timeout(None).is_err() {
        return;
    }
    inner.service.serve(Conn {
        tls,
        sock,
        peer,
        control: &inner.control,
        first_request_by,
    });
}

/// Answers a connection that arrived past a cap: handshake and `503` with `message` under
/// a short deadline, then close. Never hands anything to the service.
fn refuse_overloaded(inner: &Inner, mut sock: TcpStream, addr: SocketAddr, message: &str) {
    let deadline = Instant::now() + inner.limits.handshake_timeout.min(OVERLOAD_DEADLINE);
    let Ok(mut tls) = ServerConnection::new(inner.tls.clone()) else {
        return;
    };
    let sent = handshake(&mut tls, &mut sock, deadline)
        .and_then(|()| send_final(&mut tls, &mut sock, 503, message, deadline));
    match sent {
        Ok(()) => linger(&sock, deadline.min(Instant::now() + OVERLOAD_LINGER)),
        Err(e) => log::debug!(
            "{}: {addr}: refuse overloaded connection: {e}",
            inner.control.name
        ),
    }
}

/// Completes the TLS handshake on a blocking socket by `deadline`. Each read and write
/// may only wait for what is left of the deadline, so a client that drips bytes is cut
/// off at the same moment as one that sends nothing.
fn handshake(
    tls: &mut ServerConnection,
    sock: &mut TcpStream,
    deadline: Instant,
) -> io::Result<()> {
    while tls.is_handshaking() {
        let left = time_left(deadline)?;
        if tls.wants_write() {
            sock.set_write_timeout(Some(left))?;
            tls.write_tls(sock).map_err(deadline_error)?;
        } else if tls.wants_read() {
            sock.set_read_timeout(Some(left))?;
            if tls.read_tls(sock).map_err(deadline_error)? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "client closed during the handshake",
                ));
            }
            if let Err(e) = tls.process_new_packets() {
                // Tell the client why (rustls queued an alert), best effort.
                let _ = sock.set_write_timeout(Some(Duration::from_millis(100)));
                let _ = tls.write_tls(sock);
                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
            }
        } else {
            return Err(io::Error::other("handshake stalled"));
        }
    }
    Ok(())
}

/// Writes a complete error response (the documented body) and `close_notify` on a
/// blocking socket by `deadline`.
pub(crate) fn send_final(
    tls: &mut ServerConnection,
    sock: &mut TcpStream,
    status: u16,
    message: &str,
    deadline: Instant,
) -> io::Result<()> {
    tls.writer()
        .write_all(&raw_error_response(status, message))?;
    tls.send_close_notify();
    while tls.wants_write() {
        sock.set_write_timeout(Some(time_left(deadline)?))?;
        tls.write_tls(sock).map_err(deadline_error)?;
    }
    Ok(())
}

/// A socket timeout on a blocking socket shows up as `WouldBlock` on Linux.
fn deadline_error(e: io::Error) -> io::Error {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
            io::Error::new(io::ErrorKind::TimedOut, "deadline passed")
        }
        _ => e,
    }
}

/// Shuts the write half and reads and discards what the peer still sends, until it
/// closes, `until` passes or 256 KiB were discarded. Lets the peer read what was written
/// instead of receiving a reset on unread data.
pub(crate) fn linger(sock: &TcpStream, until: Instant) {
    let _ = sock.shutdown(Shutdown::Write);
    drain_until_eof(sock, until, LINGER_BYTES);
}

/// Reads and discards from `sock` until end of stream, an error, `until`, or `max_bytes`.
pub(crate) fn drain_until_eof(mut sock: &TcpStream, until: Instant, max_bytes: usize) {
    if sock.set_nonblocking(true).is_err() {
        return;
    }
    let mut scratch = [0u8; 4096];
    let mut discarded = 0;
    while discarded < max_bytes {
        let Some(left) = until.checked_duration_since(Instant::now()) else {
            return;
        };
        let mut fds = [sys::poll_fd(sock.as_raw_fd(), sys::POLLIN)];
        match sys::poll(&mut fds, Some(left)) {
            Ok(0) => continue,
            Ok(_) => {}
            Err(_) => return,
        }
        match sock.read(&mut scratch) {
            Ok(0) => return,
            Ok(n) => discarded += n,
            Err(e) if would_block(&e) => {}
            Err(_) => return,
        }
    }
}

/// A non-blocking operation that must be retried later (or at once, when interrupted).
pub(crate) fn would_block(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}
