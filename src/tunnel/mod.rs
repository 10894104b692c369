//! The secure tunnel: its own HTTP/1.1 server inside the daemon, over mutual TLS, with
//! its own threads and limits. No tiny_http: handlers read and write streams, so a
//! transfer of gigabytes is neither capped nor holding a worker the admin API needs.
//! Never trusts an identity from a header: a request's peer is the verified certificate
//! of its connection.
//!
//! # Shape (for route authors)
//!
//! - **Routes**: a table of [`Route`] `{ method, path, body, handler }`; `path` is
//!   `/`-separated segments where `{name}` matches one non-empty segment (exact match
//!   otherwise: no slash merging). `HEAD` is routed as `GET`. Unknown path → 404, known
//!   path with another method → 405 with `Allow`. The daemon's table is
//!   [`routes::table`]; add routes there.
//! - **Handlers**: `fn(&S, &mut Call) -> Result<Reply, TunnelHttpError>`, thin as in `api/`:
//!   parse, authorize, call the domain, map. `S` is the server's state ([`App`] in the
//!   daemon). [`TunnelHttpError`] is mapped to statuses and the documented error body in
//!   `error.rs` only.
//! - **Identity**: [`Call::peer`] → [`Peer`] `{ addr, serial, cert }` from the handshake's
//!   verified client certificate. Look the system row up by `serial` in the store.
//! - **Bodies** ([`BodyLimit`]): `Capped(n)` reads the whole body (at most `n` bytes,
//!   Content-Length or chunked) within `head_timeout` before the handler runs
//!   ([`Call::bytes`], [`Call::json`]); `Stream` hands the handler a `Read`
//!   ([`Call::body`]) with no cap; `Duplex` adds a [`ResponseWriter`] to use interleaved
//!   with body reads ([`Call::duplex`]), and the connection closes after it. A
//!   `100 Continue` is sent when the handler first reads a body that asked for it.
//! - **Replies**: [`Reply::json`], [`Reply::bytes`] (Content-Length), [`Reply::stream`]
//!   (copied from a `Read` after the handler returns, bounded memory; chunked when the
//!   length is unknown), [`Reply::sent`] (a duplex handler wrote it).
//! - **Limits** ([`Limits`]): the listener's connection caps and handshake deadline; a
//!   head must be complete within `head_timeout` of its first byte and fit
//!   `max_head_bytes`; everything else (between requests, inside streams) is bounded by
//!   `idle_timeout` without progress.
//! - **Revocation**: the handshake's verifier refuses revoked serials; every request
//!   checks the serial again; and every read, write and 250 ms tick of a blocked one
//!   compares the store's revocation generation, so an open stream whose certificate is
//!   revoked fails with `ConnectionAborted` ("certificate revoked") within a quarter
//!   second and the connection closes.

mod conn;
mod error;
mod exchange;
mod restore;
pub mod routes;
#[cfg(test)]
mod tests;

use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::Duration;

pub use error::TunnelHttpError;
pub use exchange::{Body, Call, Peer, Reply, ResponseWriter};
pub use routes::App;

use crate::config::defaults;
use crate::listener::{self, Endpoint, Listener, Service};
use crate::store::{Store, StoreError};
use crate::tls::RevocationCheck;

/// A tunnel connection holds its socket and, while it receives a backup, the file being
/// written and its directory.
pub const FDS_PER_CONNECTION: u64 = 2;

/// Limits of the tunnel listener. Each field's doc gives the [`Default`], which is the
/// configuration's default (`config::defaults`).
#[derive(Clone, Debug)]
pub struct Limits {
    /// The connection caps and the handshake deadline, as for every listener.
    pub connections: listener::Limits,
    /// Longest wait on the peer without progress: between requests, and inside a
    /// streaming body or response. Defaults to 60 s.
    pub idle_timeout: Duration,
    /// A request head must be complete this long after its first byte (a capped body,
    /// this long after its head). Defaults to 10 s.
    pub head_timeout: Duration,
    /// Largest request head, request line to blank line inclusive. Defaults to 16,384.
    pub max_head_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            connections: listener::Limits::default(),
            idle_timeout: defaults::IDLE_TIMEOUT,
            head_timeout: defaults::HEAD_TIMEOUT,
            max_head_bytes: defaults::MAX_HEAD_BYTES,
        }
    }
}

impl Limits {
    fn check(&self) -> io::Result<()> {
        if self.idle_timeout.is_zero() || self.head_timeout.is_zero() {
            return Err(listener::invalid(
                "tunnel limits idle_timeout and head_timeout must be above zero",
            ));
        }
        if self.max_head_bytes < 64 {
            return Err(listener::invalid(
                "tunnel limit max_head_bytes must be at least 64",
            ));
        }
        self.connections.check()
    }
}

/// How a route takes its request body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyLimit {
    /// Read whole before the handler runs, at most this many bytes (413 past it).
    Capped(u64),
    /// Streamed to the handler, no cap.
    Stream,
    /// Streamed, with a response written while the body is still being read.
    Duplex,
}

/// A handler: parse, authorize, call the domain, map.
pub type Handler<S> = fn(&S, &mut Call<'_>) -> Result<Reply, TunnelHttpError>;

/// One entry of a route table.
pub struct Route<S> {
    pub method: &'static str,
    /// `/`-separated segments; `{name}` matches one non-empty segment.
    pub path: &'static str,
    pub body: BodyLimit,
    pub handler: Handler<S>,
}

impl<S> Route<S> {
    pub const fn new(
        method: &'static str,
        path: &'static str,
        body: BodyLimit,
        handler: Handler<S>,
    ) -> Route<S> {
        Route {
            method,
            path,
            body,
            handler,
        }
    }
}

/// Revocation as the tunnel asks it: per request (a lookup) and per read of a stream
/// (the generation, one atomic load; a lookup only when it moved).
pub trait Revocations: Send + Sync {
    /// Grows after every commit that revoked a serial.
    fn generation(&self) -> u64;
    /// Whether `serial` (`ca::cert_serial_hex` form) is revoked.
    fn is_revoked(&self, serial: &str) -> Result<bool, StoreError>;
}

/// The database's revocations, for the tunnel's handshake verifier and its streams.
#[derive(Clone)]
pub struct StoreRevocations(pub Store);

impl fmt::Debug for StoreRevocations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StoreRevocations")
    }
}

impl Revocations for StoreRevocations {
    fn generation(&self) -> u64 {
        self.0.revocation_generation()
    }

    fn is_revoked(&self, serial: &str) -> Result<bool, StoreError> {
        self.0.is_revoked(serial)
    }
}

impl RevocationCheck for StoreRevocations {
    /// Read on every handshake so that unpairing takes effect without a restart: revoked
    /// serials, and those retired after a renewal's grace (which, unlike a revocation, do
    /// not cut connections already open). A database error refuses.
    fn is_revoked(&self, serial_hex: &str) -> bool {
        self.0.refuses_handshake(serial_hex).unwrap_or_else(|e| {
            log::error!(
                "revocation check for serial {serial_hex}: {}",
                crate::model::Chain(&e)
            );
            true
        })
    }
}

/// A tunnel server: its state, its routes, its limits and where it learns of
/// revocations.
pub struct Server<S> {
    pub state: S,
    pub routes: Vec<Route<S>>,
    pub limits: Limits,
    pub revocations: Arc<dyn Revocations>,
}

/// Starts the tunnel server on `endpoint` (whose TLS config must require client
/// certificates: `tls::tunnel_server_config`). Returns at once.
pub fn spawn<S: Send + Sync + 'static>(
    endpoint: Endpoint,
    server: Server<S>,
) -> io::Result<Listener> {
    server.limits.check()?;
    for (i, a) in server.routes.iter().enumerate() {
        if server.routes[i + 1..]
            .iter()
            .any(|b| a.method == b.method && a.path == b.path)
        {
            return Err(listener::invalid("tunnel route table lists a route twice"));
        }
    }
    let connections = server.limits.connections.clone();
    let known = listener::KnownAddresses::new();
    listener::spawn(endpoint, connections, Arc::new(server), known)
}

impl<S: Send + Sync + 'static> Service for Server<S> {
    fn serve(&self, conn: listener::Conn<'_>) {
        // The handshake authenticated the peer (a verified, unrevoked certificate of our
        // CA), so the first-request deadline of strangers does not apply.
        let listener::Conn {
            tls,
            sock,
            peer: addr,
            control,
            first_request_by: _,
        } = conn;
        // The verifier required and checked a certificate; without one there is no peer.
        let Some(cert) = tls.peer_certificates().and_then(|c| c.first()).cloned() else {
            log::warn!(
                "{}: {addr}: no client certificate after the handshake",
                control.name()
            );
            return;
        };
        let serial = match crate::ca::cert_serial_hex(cert.as_ref()) {
            Ok(serial) => serial,
            Err(e) => {
                log::warn!("{}: {addr}: client certificate serial: {e}", control.name());
                return;
            }
        };
        // A paired source: its next connections may use the reserved slots.
        control.note_authenticated(addr.ip());
        let peer = Peer { addr, serial, cert };
        let conn = match conn::Conn::new(
            tls,
            sock,
            control,
            &*self.revocations,
            &peer.serial,
            self.limits.idle_timeout,
        ) {
            Ok(conn) => conn,
            Err(e) => {
                log::warn!("{}: {addr}: prepare connection: {e}", control.name());
                return;
            }
        };
        self.serve_requests(conn, &peer);
    }
}
