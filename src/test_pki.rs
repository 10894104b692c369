//! Test support shared by the listener and tunnel tests: a real appliance CA (`ca`), server
//! and client certificates it issued, the TLS configs `tls` builds from them, and loopback
//! clients that can pick their source address. Compiled for unit tests only.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, ServerConfig, StreamOwned};

use crate::ca::{self, Ca};
use crate::listener::connect_from;
use crate::tls::{self, RevocationCheck};

/// A CA, one server certificate for 127.0.0.1 and two client certificates it issued.
pub(crate) struct Pki {
    pub ca: Ca,
    pub server_chain_pem: String,
    pub server_key_pem: String,
    pub clients: [Client; 2],
}

/// One issued client identity.
pub(crate) struct Client {
    pub cert_pem: String,
    pub key_pem: String,
    pub serial: String,
}

/// The process-wide test PKI, made once (key generation is the slow part).
pub(crate) fn pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(|| {
        let now = time::OffsetDateTime::now_utc();
        let ca = Ca::generate("replgate test CA", now).expect("test CA");
        let server = ca
            .issue_server_cert(
                &["localhost".to_owned()],
                &[[127, 0, 0, 1].into()],
                Duration::from_secs(86_400),
                now,
            )
            .expect("test server certificate");
        let client = |n: u32| {
            let uuid = format!("00000000-0000-4000-8000-00000000000{n}");
            let (key_pem, csr_pem) = ca::generate_client_key_and_csr(&uuid).expect("test csr");
            let csr = ca::parse_csr(&csr_pem).expect("parse test csr");
            let issued = ca
                .sign_client(&csr, &uuid, Duration::from_secs(86_400), now)
                .expect("sign test client");
            Client {
                cert_pem: issued.cert_pem,
                key_pem,
                serial: issued.serial,
            }
        };
        Pki {
            server_chain_pem: format!("{}{}", server.cert_pem, ca.cert_pem()),
            server_key_pem: server.key_pem,
            clients: [client(1), client(2)],
            ca,
        }
    })
}

impl Pki {
    /// The API listener's config (no client certificates).
    pub(crate) fn api_server(&self) -> Arc<ServerConfig> {
        tls::api_server_config(self.server_slot()).expect("api server config")
    }

    /// The tunnel's config: mutual TLS against this CA, revocation from `revoked`.
    pub(crate) fn tunnel_server(&self, revoked: Arc<dyn RevocationCheck>) -> Arc<ServerConfig> {
        let trust = tls::ClientTrust::new(vec![self.ca.cert_der()]).expect("client trust");
        tls::tunnel_server_config(self.server_slot(), trust, revoked).expect("tunnel server config")
    }

    /// A slot holding the server certificate.
    fn server_slot(&self) -> Arc<tls::ServerCertSlot> {
        tls::ServerCertSlot::new(&self.server_chain_pem, &self.server_key_pem)
            .expect("test server certificate")
    }

    /// A client trusting this CA, presenting client certificate `client` if given.
    pub(crate) fn client_config(&self, client: Option<usize>) -> Arc<ClientConfig> {
        let auth = client.map(|i| {
            let c = &self.clients[i];
            (c.cert_pem.as_str(), c.key_pem.as_str())
        });
        tls::pinned_client_config(vec![self.ca.cert_der()], auth).expect("client config")
    }
}

/// A TLS client stream over loopback.
pub(crate) type TlsStream = StreamOwned<ClientConnection, TcpStream>;

/// A TLS connection from `source` to `target`, handshake complete.
pub(crate) fn tls_connect(
    source: Ipv4Addr,
    target: SocketAddr,
    config: Arc<ClientConfig>,
) -> io::Result<TlsStream> {
    let sock = connect_from(source, target)?;
    sock.set_read_timeout(Some(Duration::from_secs(10)))?;
    sock.set_write_timeout(Some(Duration::from_secs(10)))?;
    let name = ServerName::IpAddress(target.ip().into());
    let conn = ClientConnection::new(config, name).map_err(io::Error::other)?;
    let mut stream = StreamOwned::new(conn, sock);
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock)?;
    }
    Ok(stream)
}
