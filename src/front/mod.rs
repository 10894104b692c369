//! The TLS front before tiny_http, for the API listener: the idle and head timeouts, the
//! head and body limits, the relay, and the table that tells handlers who each peer
//! really is. Accepting, the connection caps and the handshake are `listener`'s. Never
//! routes or authenticates; answers a request itself only with the few error responses
//! for requests it refuses to forward, the `100 Continue` it owes a client that waits for
//! one, and what the wiring's [`LocalAnswer`] gives for requests it takes (the spool's
//! files).
//!
//! tiny_http 0.12 runs on a loopback listener (the backend) and has no timeouts, no
//! limits, one unbounded thread per connection, and an accept thread that dies on
//! `EMFILE`. Each client connection here gets one thread that terminates TLS and relays
//! plaintext over its own loopback connection to the backend; the front's local address
//! of that connection is what tiny_http reports as `remote_addr()`, and the [`PeerTable`]
//! maps it back to the client.

mod buffers;
mod local;
mod peers;
mod relay;
mod responses;

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use crate::config::defaults;
use crate::listener::{self, Conn, Endpoint, Listener, Service};

pub use local::LocalAnswer;
pub use peers::{PeerInfo, PeerTable};

/// Each relayed connection holds three descriptors: the client socket, the front's
/// backend socket and tiny_http's accepted end of it.
pub const FDS_PER_CONNECTION: u64 = 3;

/// Limits for the API listener. Each field's doc gives the [`Default`], which is the
/// configuration's default (`config::defaults`).
#[derive(Clone, Debug)]
pub struct Limits {
    /// The connection caps and the handshake deadline, as for every listener.
    pub connections: listener::Limits,
    /// Longest time with no progress: between requests, waiting for a response, or with
    /// data pending in one direction. Defaults to 60 s.
    pub idle_timeout: Duration,
    /// A request head must be complete this long after its first byte, and its body this
    /// long after the head (or after the front's `100 Continue`); the front forwards a
    /// request only once it is complete, so a slow client never holds a worker. Defaults
    /// to 10 s.
    pub head_timeout: Duration,
    /// Largest request head, request line to blank line inclusive. Defaults to 16,384.
    pub max_head_bytes: usize,
    /// Largest announced request body; the front holds up to this much per connection
    /// while a request arrives. Defaults to 65,536.
    pub max_body_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            connections: listener::Limits::default(),
            idle_timeout: defaults::IDLE_TIMEOUT,
            head_timeout: defaults::HEAD_TIMEOUT,
            max_head_bytes: defaults::MAX_HEAD_BYTES,
            max_body_bytes: defaults::MAX_BODY_BYTES,
        }
    }
}

impl Limits {
    fn check(&self) -> io::Result<()> {
        let zero = [
            ("idle_timeout", self.idle_timeout),
            ("head_timeout", self.head_timeout),
        ]
        .into_iter()
        .find(|(_, d)| d.is_zero());
        if let Some((name, _)) = zero {
            return Err(listener::invalid(&format!(
                "front limit {name} must be above zero"
            )));
        }
        if self.max_head_bytes < 64 {
            return Err(listener::invalid(
                "front limit max_head_bytes must be at least 64",
            ));
        }
        self.connections.check()
    }
}

/// Where the front relays to, and how it tells the API who each peer is.
pub struct Backend {
    /// tiny_http's loopback listener (see [`bind_backend`]).
    pub addr: SocketAddr,
    /// Where the real peer of each backend connection is entered.
    pub peers: Arc<PeerTable>,
    /// Answers the requests it takes on the connection's own thread, before they would
    /// go to tiny_http (on the API listener: spool polls).
    pub local: Option<Arc<dyn LocalAnswer>>,
}

/// Starts the front on `endpoint`: connections within `limits` are relayed to `backend`
/// and entered in its peer table. Returns at once; the listener stops when the
/// endpoint's shutdown flag is set or [`Listener::join`] is called.
pub fn spawn(endpoint: Endpoint, limits: Limits, backend: Backend) -> io::Result<Listener> {
    limits.check()?;
    let connections = limits.connections.clone();
    let known = backend.peers.known();
    let shared = Arc::new(Shared {
        backend: backend.addr,
        peers: backend.peers,
        local: backend.local,
        limits,
    });
    listener::spawn(endpoint, connections, shared, known)
}

/// Binds the loopback listener for tiny_http (the backend) on 127.0.0.1 with a free port,
/// with `TCP_NODELAY` set so that the sockets tiny_http accepts from it inherit it. Hand
/// it to `tiny_http::Server::from_listener`. Without it every response larger than
/// tiny_http's 1 KiB write buffer stalls for a delayed ACK (about 40 ms): tiny_http
/// writes head and body separately, and Nagle holds the body back.
pub fn bind_backend() -> io::Result<TcpListener> {
    let listener = TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))?;
    listener::sys::set_listener_nodelay(&listener)?;
    Ok(listener)
}

/// What every relay of one front shares.
struct Shared {
    backend: SocketAddr,
    peers: Arc<PeerTable>,
    local: Option<Arc<dyn LocalAnswer>>,
    limits: Limits,
}

impl Service for Shared {
    fn serve(&self, conn: Conn<'_>) {
        relay::serve(self, conn);
    }
}

#[cfg(test)]
mod tests;
