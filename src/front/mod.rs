//! The TLS front before tiny_http: owns the public listeners, the connection cap, the
//! handshake, idle and head timeouts, the head and body limits, and the table that tells
//! handlers who each peer really is. Never routes, authenticates or answers a request
//! itself, apart from the few error responses for requests it refuses to forward.
//!
//! tiny_http 0.12 runs on a loopback listener (the backend) and has no timeouts, no
//! limits, one unbounded thread per connection, and an accept thread that dies on
//! `EMFILE`. Each client connection here gets one thread that terminates TLS and relays
//! plaintext over its own loopback connection to the backend; the front's local address
//! of that connection is what tiny_http reports as `remote_addr()`, and the [`PeerTable`]
//! maps it back to the client.

mod peers;
mod relay;
mod sys;

use std::fmt;
use std::io::{self, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use rustls::ServerConfig;

pub use peers::{ListenerKind, PeerInfo, PeerTable};

/// Each relayed connection holds three descriptors: the client socket, the front's
/// backend socket and tiny_http's accepted end of it.
const FDS_PER_CONNECTION: u64 = 3;
/// Descriptors kept back for the database, spool files, listeners, overflow answers and
/// logging.
const FD_RESERVE: u64 = 64;
/// Stack of a connection thread. The relay keeps its buffers on the heap; the deepest
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

/// Limits for one listener. Each field's doc gives the [`Default`].
#[derive(Clone, Debug)]
pub struct Limits {
    /// Concurrent relayed connections; past it, connections get a quick 503. Defaults to
    /// 256.
    pub max_connections: usize,
    /// Deadline for the whole TLS handshake, counted from accept. Defaults to 10 s.
    pub handshake_timeout: Duration,
    /// Longest time with no progress: between requests, waiting for a response, or with
    /// data pending in one direction. Defaults to 60 s.
    pub idle_timeout: Duration,
    /// A request head must be complete this long after its first byte, and its body this
    /// long after the head (so a client dripping a body cannot hold the handler reading
    /// it). Defaults to 10 s.
    pub head_timeout: Duration,
    /// Largest request head, request line to blank line inclusive. Defaults to 16,384.
    pub max_head_bytes: usize,
    /// Largest announced request body. Defaults to 65,536.
    pub max_body_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 256,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            head_timeout: Duration::from_secs(10),
            max_head_bytes: 16_384,
            max_body_bytes: 65_536,
        }
    }
}

impl Limits {
    fn check(&self) -> io::Result<()> {
        let zero = [
            ("handshake_timeout", self.handshake_timeout),
            ("idle_timeout", self.idle_timeout),
            ("head_timeout", self.head_timeout),
        ]
        .into_iter()
        .find(|(_, d)| d.is_zero());
        if let Some((name, _)) = zero {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("front limit {name} must be above zero"),
            ));
        }
        if self.max_connections == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "front limit max_connections must be at least 1",
            ));
        }
        if self.max_head_bytes < 64 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "front limit max_head_bytes must be at least 64",
            ));
        }
        Ok(())
    }
}

/// Handle to one running listener. Dropping it leaves the listener running until the
/// shutdown flag is set; [`Front::join`] is the orderly way to end it.
pub struct Front {
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl Front {
    /// The address the public listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Connections currently counted against the cap (handshaking or relaying).
    pub fn active_connections(&self) -> usize {
        self.shared.active.load(Ordering::Relaxed)
    }

    /// Stops accepting (also when the shutdown flag was not set), lets each connection
    /// finish its request in flight and close at the next request boundary, and returns
    /// once all are gone or `drain` has passed. Relays still open at that point close
    /// within about 100 ms without waiting for their requests; a connection still in its
    /// TLS handshake ends at its handshake deadline.
    pub fn join(mut self, drain: Duration) {
        let deadline = Instant::now() + drain;
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(accept) = self.accept.take() {
            if accept.join().is_err() {
                log::error!("{}: accept thread panicked", self.shared.name);
            }
        }
        loop {
            let open = self.shared.active.load(Ordering::Relaxed)
                + self.shared.overflow_active.load(Ordering::Relaxed);
            if open == 0 {
                return;
            }
            if Instant::now() >= deadline {
                log::warn!(
                    "{}: {open} connections still open after the {} ms drain; closing them",
                    self.shared.name,
                    drain.as_millis()
                );
                self.shared.force_close.store(true, Ordering::Relaxed);
                return;
            }
            thread::sleep(JOIN_TICK);
        }
    }
}

/// Starts the accept loop for `listener` on its own thread (named after `name`) and
/// returns at once. Connections are relayed to `backend` (tiny_http's loopback listener),
/// and each one is entered in `peers` as coming from a `kind` listener. The loop stops
/// when `shutdown` is set.
#[allow(clippy::too_many_arguments)] // the documented wiring call; each argument is distinct
pub fn spawn(
    name: &str,
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    backend: SocketAddr,
    kind: ListenerKind,
    peers: Arc<PeerTable>,
    limits: Limits,
    shutdown: Arc<AtomicBool>,
) -> io::Result<Front> {
    limits.check()?;
    listener.set_nonblocking(true)?;
    let local_addr = listener.local_addr()?;
    let (wake_tx, wake_rx) = UnixStream::pair()?;
    let shared = Arc::new(Shared {
        name: name.to_owned(),
        tls,
        backend,
        kind,
        peers,
        limits,
        shutdown,
        stop: AtomicBool::new(false),
        force_close: AtomicBool::new(false),
        active: AtomicUsize::new(0),
        overflow_active: AtomicUsize::new(0),
        wake: wake_rx,
    });
    let accept = thread::Builder::new()
        .name(format!("{name}-accept"))
        .spawn({
            let shared = Arc::clone(&shared);
            move || accept_loop(&shared, listener, wake_tx)
        })?;
    log::info!("{name}: listening on {local_addr}");
    Ok(Front {
        local_addr,
        shared,
        accept: Some(accept),
    })
}

/// Binds the loopback listener for tiny_http (the backend) on 127.0.0.1 with a free port,
/// with `TCP_NODELAY` set so that the sockets tiny_http accepts from it inherit it. Hand
/// it to `tiny_http::Server::from_listener`. Without it every response larger than
/// tiny_http's 1 KiB write buffer stalls for a delayed ACK (about 40 ms): tiny_http
/// writes head and body separately, and Nagle holds the body back.
pub fn bind_backend() -> io::Result<TcpListener> {
    let listener = TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))?;
    sys::set_listener_nodelay(&listener)?;
    Ok(listener)
}

/// Caps a requested connection count (summed over all listeners) to what the open-file
/// limit allows: three descriptors per connection plus a reserve of 64. Raises the soft
/// limit to the hard limit first, and logs a warning when it still has to lower the count.
pub fn clamp_to_fd_limit(requested_total: usize) -> usize {
    let limit = match sys::raise_fd_limit() {
        Ok(limit) => limit,
        Err(e) => {
            log::warn!("read open-file limit: {e}; keeping {requested_total} connections");
            return requested_total;
        }
    };
    let Some(soft) = limit.soft else {
        return requested_total;
    };
    let allowed = soft.saturating_sub(FD_RESERVE) / FDS_PER_CONNECTION;
    let allowed = usize::try_from(allowed).unwrap_or(usize::MAX).max(1);
    if requested_total <= allowed {
        return requested_total;
    }
    let hard = limit.hard.map_or("unlimited".to_owned(), |h| h.to_string());
    log::warn!(
        "open-file limit {soft} (hard {hard}) allows {allowed} connections at {FDS_PER_CONNECTION} \
         descriptors each with {FD_RESERVE} in reserve; lowering max_connections from \
         {requested_total}; raise LimitNOFILE to serve more"
    );
    allowed
}

/// State shared by a listener's accept loop, its connection threads and its [`Front`].
struct Shared {
    name: String,
    tls: Arc<ServerConfig>,
    backend: SocketAddr,
    kind: ListenerKind,
    peers: Arc<PeerTable>,
    limits: Limits,
    /// The daemon's shutdown flag.
    shutdown: Arc<AtomicBool>,
    /// Set by [`Front::join`]: stop this listener even if the daemon flag is not set.
    stop: AtomicBool,
    /// Set when the drain deadline passed: every relay closes at once.
    force_close: AtomicBool,
    /// Relayed connections, including those still handshaking.
    active: AtomicUsize,
    /// Connections being answered with a 503.
    overflow_active: AtomicUsize,
    /// Becomes readable (and stays so) once the accept loop stops, so idle relays learn
    /// of a shutdown without waking up on a timer.
    wake: UnixStream,
}

impl Shared {
    fn draining(&self) -> bool {
        self.shutdown.load(Ordering::Relaxed) || self.stop.load(Ordering::Relaxed)
    }
}

/// Decrements a connection counter when the connection's thread ends, however it ends.
struct Slot<'a>(&'a AtomicUsize);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
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

/// Accepts until shutdown. Survives every accept error (out of descriptors, out of
/// memory, aborted connections): logs it, pauses briefly, carries on.
fn accept_loop(shared: &Arc<Shared>, listener: TcpListener, wake: UnixStream) {
    let overflow_slots = (shared.limits.max_connections / 16).max(4);
    let mut accept_warning = RateLimitedWarning::new();
    let mut overload_warning = RateLimitedWarning::new();
    while !shared.draining() {
        let mut fds = [sys::poll_fd(listener.as_raw_fd(), sys::POLLIN)];
        match sys::poll(&mut fds, Some(ACCEPT_TICK)) {
            Ok(0) => continue,
            Ok(_) => {}
            Err(e) => {
                accept_warning.warn(format_args!("{}: wait for connections: {e}", shared.name));
                thread::sleep(ACCEPT_BACKOFF);
                continue;
            }
        }
        for _ in 0..ACCEPT_BATCH {
            match listener.accept() {
                Ok((stream, addr)) => {
                    dispatch(shared, stream, addr, overflow_slots, &mut overload_warning);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    accept_warning.warn(format_args!("{}: accept: {e}", shared.name));
                    thread::sleep(ACCEPT_BACKOFF);
                    break;
                }
            }
        }
    }
    drop(listener);
    // One byte is enough: the read end stays readable for every relay that polls it.
    if let Err(e) = (&wake).write_all(&[1]) {
        log::warn!("{}: wake connections for shutdown: {e}", shared.name);
    }
    log::info!("{}: stopped accepting", shared.name);
}

/// Hands a new connection to a relay thread, to an overflow thread that answers 503, or
/// (when both are full) closes it at once.
fn dispatch(
    shared: &Arc<Shared>,
    stream: TcpStream,
    addr: SocketAddr,
    overflow_slots: usize,
    overload_warning: &mut RateLimitedWarning,
) {
    // Latency over packet count: requests and responses are small and interactive.
    let _ = stream.set_nodelay(true);
    // Linux does not pass the listener's O_NONBLOCK on to accepted sockets, but the
    // handshake relies on blocking reads with timeouts, so make sure.
    let _ = stream.set_nonblocking(false);
    let name = &shared.name;
    if take_slot(&shared.active, shared.limits.max_connections) {
        let thread_shared = Arc::clone(shared);
        let spawned = thread::Builder::new()
            .name(format!("{name}-conn"))
            .stack_size(CONNECTION_STACK_BYTES)
            .spawn(move || {
                let _slot = Slot(&thread_shared.active);
                relay::serve(&thread_shared, stream, addr);
            });
        if let Err(e) = spawned {
            shared.active.fetch_sub(1, Ordering::Relaxed);
            overload_warning.warn(format_args!("{name}: start connection thread: {e}"));
        }
        return;
    }
    overload_warning.warn(format_args!(
        "{name}: connection cap of {} reached; refusing new connections",
        shared.limits.max_connections
    ));
    if take_slot(&shared.overflow_active, overflow_slots) {
        let thread_shared = Arc::clone(shared);
        let spawned = thread::Builder::new()
            .name(format!("{name}-busy"))
            .stack_size(CONNECTION_STACK_BYTES)
            .spawn(move || {
                let _slot = Slot(&thread_shared.overflow_active);
                relay::refuse_overloaded(&thread_shared, stream, addr);
            });
        if spawned.is_err() {
            shared.overflow_active.fetch_sub(1, Ordering::Relaxed);
        }
    }
    // Otherwise `stream` is dropped here: closed without a word.
}

/// Counts one more connection on `counter` if that stays within `cap`.
fn take_slot(counter: &AtomicUsize, cap: usize) -> bool {
    counter
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
            (n < cap).then_some(n + 1)
        })
        .is_ok()
}

#[cfg(test)]
mod tests;
