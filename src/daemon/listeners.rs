//! The daemon's network side: the listeners' TLS configurations, the tiny_http backend
//! on its private loopback port, the two public sockets bound with their limits from the
//! configuration, and then the API front and the tunnel server started over them.

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use super::error::{spawn_error, DaemonError};
use super::startup::Prepared;
use crate::api::{self, App};
use crate::config::Config;
use crate::front::{self, PeerTable};
use crate::listener::{self, Endpoint, Listener};
use crate::{replication, tls, tunnel};

/// Everything the listeners need, bound but not yet serving.
pub(super) struct Sockets {
    api_tls: Arc<rustls::ServerConfig>,
    tunnel_tls: Arc<rustls::ServerConfig>,
    api: TcpListener,
    tunnel: TcpListener,
    api_limits: front::Limits,
    tunnel_limits: tunnel::Limits,
    /// tiny_http on a private loopback port that only the API front connects to.
    pub backend: Arc<tiny_http::Server>,
    backend_addr: SocketAddr,
    /// The real peer of each relayed connection, for the API workers.
    pub peers: Arc<PeerTable>,
}

/// Builds the TLS configurations over the listeners' certificate slots, starts the
/// backend, and binds both listen addresses.
pub(super) fn open(config: &Config, prepared: &Prepared) -> Result<Sockets, DaemonError> {
    let certs = &prepared.listener_certs;
    let api_tls = tls::api_server_config(certs[0].slot()).map_err(|source| DaemonError::Tls {
        listener: "api",
        source,
    })?;
    let tunnel_tls = tls::tunnel_server_config(
        certs[1].slot(),
        prepared.client_trust.clone(),
        Arc::new(tunnel::StoreRevocations(prepared.store.clone())),
    )
    .map_err(|source| DaemonError::Tls {
        listener: "tunnel",
        source,
    })?;

    // The backend: tiny_http on a private loopback port that only the fronts connect to.
    // TCP_NODELAY on the accepted sockets: tiny_http writes a response's head and body
    // separately, and Nagle would hold the body for the delayed ACK (about 40 ms).
    let backend_listener = front::bind_backend().map_err(|e| DaemonError::Backend(Box::new(e)))?;
    let backend =
        tiny_http::Server::from_listener(backend_listener, None).map_err(DaemonError::Backend)?;
    let backend_addr = backend
        .server_addr()
        .to_ip()
        .ok_or_else(|| DaemonError::Backend("the listener has no ip address".into()))?;

    let (api_limits, tunnel_limits) = listener_limits(config);
    let tunnel = bind(config.tunnel_listen, "tunnel_listen")?;
    // Set on the listener, the congestion control is every accepted connection's.
    let cc = listener::sys::apply_congestion(&tunnel, &config.tunnel_congestion, "the tunnel");
    let cc = cc.as_deref().unwrap_or("unknown");
    log::info!("tunnel connections use TCP congestion control {cc}");
    // Also copied to every accepted connection: a source behind a cut link is let go
    // within seconds, so its next session is not refused the names the dead one held.
    if let Err(e) = listener::sys::set_dead_peer_detection(&tunnel) {
        log::warn!("tunnel: dead-peer detection (keepalive, TCP_USER_TIMEOUT): {e}");
    }
    crate::metrics::gauge(
        "replgate_tunnel_congestion",
        "1, labelled with the TCP congestion control of the connections the tunnel accepts.",
        &[("algorithm", cc)],
    )
    .set(1.0);
    Ok(Sockets {
        api_tls,
        tunnel_tls,
        api: bind(config.api_listen, "api_listen")?,
        tunnel,
        api_limits,
        tunnel_limits,
        backend: Arc::new(backend),
        backend_addr,
        peers: Arc::new(PeerTable::new()),
    })
}

/// Starts the API front (relaying to the backend, answering spool polls itself) and the
/// tunnel server; both stop accepting when `shutdown` is set.
pub(super) fn serve(
    sockets: Sockets,
    app: &Arc<App>,
    shutdown: &Arc<AtomicBool>,
) -> Result<Vec<Listener>, DaemonError> {
    let endpoint = |name: &str, socket, tls| Endpoint {
        name: name.to_owned(),
        socket,
        tls,
        shutdown: shutdown.clone(),
    };
    let config = &app.config;
    Ok(vec![
        front::spawn(
            endpoint("api", sockets.api, sockets.api_tls),
            sockets.api_limits,
            front::Backend {
                addr: sockets.backend_addr,
                peers: sockets.peers,
                local: Some(Arc::new(api::SpoolAnswerer::new(app.clone()))),
            },
        )
        .map_err(spawn_error("the api listener"))?,
        tunnel::spawn(
            endpoint("tunnel", sockets.tunnel, sockets.tunnel_tls),
            tunnel::Server {
                state: tunnel::App {
                    store: app.store.clone(),
                    storage: config.storage.clone(),
                    replication: app.replication.clone(),
                    cas: app.cas.clone(),
                    client_lifetime: config.client_cert_lifetime,
                    renew_grace: config.renew_grace,
                    fault: config.fault,
                    dedup: config.dedup.then_some(if config.dedup_across_sources {
                        replication::receiver::Scope::Target
                    } else {
                        replication::receiver::Scope::Source
                    }),
                    renewals: Default::default(),
                },
                routes: tunnel::routes::table(),
                limits: sockets.tunnel_limits,
                revocations: Arc::new(tunnel::StoreRevocations(app.store.clone())),
            },
        )
        .map_err(spawn_error("the tunnel listener"))?,
    ])
}

fn bind(addr: SocketAddr, setting: &'static str) -> Result<TcpListener, DaemonError> {
    TcpListener::bind(addr).map_err(|source| DaemonError::Bind {
        setting,
        addr,
        source,
    })
}

/// The two listeners' limits from the configuration. They share the process's
/// descriptors, so the connection cap is clamped to what the open-file limit carries with
/// both listeners full.
fn listener_limits(config: &Config) -> (front::Limits, tunnel::Limits) {
    let per_listener = listener::clamp_to_fd_limit(
        config.max_connections,
        front::FDS_PER_CONNECTION + tunnel::FDS_PER_CONNECTION,
    );
    let connections = listener::Limits {
        max_connections: per_listener,
        max_connections_per_address: config.max_connections_per_address.min(per_listener),
        handshake_timeout: config.handshake_timeout,
    };
    let api = front::Limits {
        connections: connections.clone(),
        idle_timeout: config.idle_timeout,
        head_timeout: config.head_timeout,
        max_head_bytes: config.max_head_bytes,
        max_body_bytes: config.max_body_bytes,
    };
    let tunnel = tunnel::Limits {
        connections,
        idle_timeout: config.idle_timeout,
        head_timeout: config.head_timeout,
        max_head_bytes: config.max_head_bytes,
    };
    (api, tunnel)
}
