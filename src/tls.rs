//! TLS: the only builder of rustls configs (the ring provider is named explicitly in every
//! one) and home of the two custom verifiers: the tunnel's revocation-aware client verifier
//! and the source's pinned-CA server verifier. Also the one trust-on-first-use probe,
//! [`ServerCertSlot`], the listeners' server certificate that can be swapped while they
//! run, and [`ClientTrust`], the tunnel's trusted CAs, swapped the same way during a CA
//! rollover. It never reads files or decides trust itself: certificates, keys and pins
//! come from callers.
//!
//! Invariants:
//! - The API server config resumes sessions by stateless tickets only (no per-session
//!   memory on the server).
//! - The tunnel server config has session resumption turned off. rustls restores the
//!   client certificate of a resumed session without calling the client verifier again, so
//!   with resumption a revoked source could keep reconnecting on an old ticket.
//! - Every config between appliances trusts only the appliance CAs the caller gives: the
//!   appliance's own CA on the server side, the pinned target CA on the client side, and
//!   during a CA rollover also the new CA (SPEC 22; its leaves then verify directly, and
//!   a peer that trusts only the old CA reaches it through the cross-certificate, which
//!   is why chains are built from the presented intermediates). The one config that
//!   trusts public roots is the object store's client ([`object_store_client_config`]):
//!   the storage's `ca_file` or the system bundle, both read by the caller, with the
//!   server's name checked as the web does.
//! - A server config presents whatever its [`ServerCertSlot`] holds at each handshake; a
//!   slot only ever holds a chain whose leaf matches its key. Swapping it changes the
//!   next handshake and nothing else: open connections keep their session. The same holds
//!   for the tunnel's [`ClientTrust`].

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::verify_server_cert_signed_by_trust_anchor;
use rustls::crypto::{
    verify_tls12_signature, verify_tls13_signature, CryptoProvider, WebPkiSupportedAlgorithms,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{
    ClientHello, NoServerSessionStorage, ParsedCertificate, ResolvesServerCert,
    WebPkiClientVerifier,
};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, ClientConfig, ClientConnection, DigitallySignedStruct, DistinguishedName,
    RootCertStore, ServerConfig, SignatureScheme,
};

use crate::ca;
use crate::sync;

/// The only application protocol spoken over our TLS listeners.
const ALPN_HTTP11: &[u8] = b"http/1.1";
/// SNI used by the probe when the address has no usable host name.
const FALLBACK_SERVER_NAME: &str = "replgate.invalid";

/// Why a TLS config could not be built or a probe failed.
#[derive(Debug)]
pub enum TlsError {
    /// The certificate PEM holds no certificate.
    NoCertificate,
    /// The certificate PEM is broken.
    BadCertificatePem { reason: String },
    /// The key PEM holds no usable private key.
    BadKeyPem { reason: String },
    /// An API certificate chain without the CA certificate: a source could not pin it.
    ChainWithoutCa,
    /// The CA certificate is not usable as a trust anchor.
    BadTrustAnchor(rustls::Error),
    /// rustls refused the configuration (for example a key that does not match the
    /// certificate).
    Config(rustls::Error),
    /// rustls refused to build the client verifier.
    Verifier(rustls::server::VerifierBuilderError),
    /// The probe address is not `host:port` or resolves to nothing.
    Resolve { addr: String, source: io::Error },
    /// No address of the host accepted a TCP connection.
    Connect { addr: String, source: io::Error },
    /// The handshake or the connection failed.
    Handshake { addr: String, source: io::Error },
    /// The peer did not complete the handshake within the timeout.
    Timeout { addr: String },
    /// The peer presented no CA certificate in its chain.
    NoCaPresented { addr: String },
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoCertificate => write!(f, "certificate pem holds no certificate"),
            Self::BadCertificatePem { reason } => write!(f, "certificate pem is broken: {reason}"),
            Self::BadKeyPem { reason } => write!(f, "key pem holds no usable key: {reason}"),
            Self::ChainWithoutCa => write!(
                f,
                "certificate chain does not include the ca certificate (expected leaf then ca)"
            ),
            Self::BadTrustAnchor(_) => write!(f, "ca certificate is not usable as a trust anchor"),
            Self::Config(_) => write!(f, "tls configuration refused"),
            Self::Verifier(_) => write!(f, "tls client verifier refused"),
            Self::Resolve { addr, .. } => write!(f, "resolve {addr}"),
            Self::Connect { addr, .. } => write!(f, "connect to {addr}"),
            Self::Handshake { addr, .. } => write!(f, "tls handshake with {addr}"),
            Self::Timeout { addr } => write!(f, "tls handshake with {addr} timed out"),
            Self::NoCaPresented { addr } => {
                write!(f, "{addr} presented no ca certificate in its chain")
            }
        }
    }
}

impl std::error::Error for TlsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::BadTrustAnchor(e) | Self::Config(e) => Some(e),
            Self::Verifier(e) => Some(e),
            Self::Resolve { source, .. }
            | Self::Connect { source, .. }
            | Self::Handshake { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// The one crypto provider: ring.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The signature checks every verifier here does the same way: the handshake signature
/// against the certificate's key, with the ring provider's algorithms.
#[derive(Debug)]
struct HandshakeSignatures(WebPkiSupportedAlgorithms);

impl HandshakeSignatures {
    fn of(provider: &CryptoProvider) -> Self {
        HandshakeSignatures(provider.signature_verification_algorithms)
    }
}

/// The three signature methods of rustls's `ServerCertVerifier` and `ClientCertVerifier`
/// (two traits, so no shared default), delegated to the verifier's `signatures` field, a
/// [`HandshakeSignatures`]. Used inside each verifier's trait impl.
macro_rules! handshake_signature_methods {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            verify_tls12_signature(message, cert, dss, &self.signatures.0)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            verify_tls13_signature(message, cert, dss, &self.signatures.0)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.signatures.0.supported_schemes()
        }
    };
}

// ---------------------------------------------------------------------------------------
// Servers
// ---------------------------------------------------------------------------------------

/// A listener's server certificate and key, replaceable while the listener runs (the
/// daemon renews them before they end and when `hostnames` change). Each handshake takes
/// the pair in place at that moment; connections already open are not touched.
pub struct ServerCertSlot {
    current: RwLock<Arc<CertifiedKey>>,
}

impl fmt::Debug for ServerCertSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerCertSlot").finish_non_exhaustive()
    }
}

impl ServerCertSlot {
    /// A slot holding `chain_pem` (leaf then CA; the CA must be in it, so that a source can
    /// see and pin it) and `key_pem`, the leaf's key.
    pub fn new(chain_pem: &str, key_pem: &str) -> Result<Arc<ServerCertSlot>, TlsError> {
        Ok(Arc::new(ServerCertSlot {
            current: RwLock::new(certified_key(chain_pem, key_pem)?),
        }))
    }

    /// Replaces the pair for every handshake from now on; on an error nothing changes.
    pub fn replace(&self, chain_pem: &str, key_pem: &str) -> Result<(), TlsError> {
        let fresh = certified_key(chain_pem, key_pem)?;
        // A poisoned lock only means a writer panicked between two whole values.
        let mut current = sync::write(&self.current);
        *current = fresh;
        Ok(())
    }

    /// The leaf certificate in place now (DER).
    pub fn leaf(&self) -> CertificateDer<'static> {
        let current = sync::read(&self.current);
        current.cert[0].clone()
    }
}

impl ResolvesServerCert for ServerCertSlot {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let current = sync::read(&self.current);
        Some(current.clone())
    }
}

/// A chain (leaf then CA) and the leaf's key, checked to belong together.
fn certified_key(chain_pem: &str, key_pem: &str) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = certs_from_pem(chain_pem)?;
    if !chain
        .iter()
        .skip(1)
        .any(|c| ca::cert_info(c).map(|i| i.is_ca).unwrap_or(false))
    {
        return Err(TlsError::ChainWithoutCa);
    }
    let key = key_from_pem(key_pem)?;
    let certified = CertifiedKey::from_der(chain, key, &provider()).map_err(TlsError::Config)?;
    // Every key the ring provider loads reports its public key, so this check always runs.
    certified.keys_match().map_err(TlsError::Config)?;
    Ok(Arc::new(certified))
}

/// Server config for the admin API and appliance protocol listener: no client
/// certificates, ALPN `http/1.1`, the certificate of `slot` at each handshake.
pub fn api_server_config(slot: Arc<ServerCertSlot>) -> Result<Arc<ServerConfig>, TlsError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Config)?
        .with_no_client_auth()
        .with_cert_resolver(slot);
    // Resumption by stateless tickets only: rustls's default server-side cache keeps up
    // to 256 sessions, allocated by whichever connection thread made them, and those
    // small leftovers scattered through the allocator's arenas kept about 3 MB from being
    // returned after a burst of connections (see BENCHMARKS.md).
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.ticketer = rustls::crypto::ring::Ticketer::new().map_err(TlsError::Config)?;
    config.send_tls13_tickets = 1;
    config.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
    Ok(Arc::new(config))
}

/// Answers whether an issued certificate may no longer open the tunnel: revoked, or
/// retired after a renewal's grace. Asked on every tunnel handshake (resumption is off),
/// so an implementation must be quick; the daemon's reads the store, one redb read
/// transaction per handshake, and answers "refused" when that read fails.
pub trait RevocationCheck: Send + Sync + fmt::Debug {
    /// `serial_hex` is in the form of [`ca::cert_serial_hex`] (lowercase, no leading zeros).
    fn is_revoked(&self, serial_hex: &str) -> bool;
}

/// The CAs whose client certificates open the tunnel, replaceable while the listener
/// runs: a CA rollover adds the new CA, its end (or its abort) takes one away. Each
/// handshake asks the verifier in place at that moment; connections already open are not
/// touched.
pub struct ClientTrust {
    current: RwLock<Arc<dyn ClientCertVerifier>>,
}

impl fmt::Debug for ClientTrust {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTrust").finish_non_exhaustive()
    }
}

impl ClientTrust {
    /// Trust in `anchors` (at least one CA certificate).
    pub fn new(anchors: Vec<CertificateDer<'static>>) -> Result<Arc<ClientTrust>, TlsError> {
        Ok(Arc::new(ClientTrust {
            current: RwLock::new(client_verifier(anchors)?),
        }))
    }

    /// Trusts `anchors` from the next handshake on; on an error nothing changes.
    pub fn replace(&self, anchors: Vec<CertificateDer<'static>>) -> Result<(), TlsError> {
        let fresh = client_verifier(anchors)?;
        *sync::write(&self.current) = fresh;
        Ok(())
    }

    fn verifier(&self) -> Arc<dyn ClientCertVerifier> {
        sync::read(&self.current).clone()
    }
}

/// rustls's WebPKI client verifier over `anchors`: a chain to one of them, in date, with
/// the clientAuth usage.
fn client_verifier(
    anchors: Vec<CertificateDer<'static>>,
) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    let roots = Arc::new(roots_of(anchors)?);
    WebPkiClientVerifier::builder_with_provider(roots, provider())
        .build()
        .map_err(TlsError::Verifier)
}

/// Server config for the secure tunnel: mutual TLS, the certificate of `slot` at each
/// handshake. A client must present a certificate issued by a CA that `trust` holds at
/// that moment (and only such), for client authentication, whose serial `revoked` does
/// not report. Session resumption is off, so every connection runs the full check and a
/// revocation takes effect on the next handshake. ALPN `http/1.1`.
pub fn tunnel_server_config(
    slot: Arc<ServerCertSlot>,
    trust: Arc<ClientTrust>,
    revoked: Arc<dyn RevocationCheck>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = provider();
    let verifier = Arc::new(RevocationAwareClientVerifier {
        trust,
        revoked,
        signatures: HandshakeSignatures::of(&provider),
    });
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Config)?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(slot);
    // No resumption: a resumed session skips the client verifier (see the module doc).
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    config.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
    Ok(Arc::new(config))
}

/// rustls's WebPKI client verifier (chain to one of our CAs, validity, clientAuth EKU)
/// plus a revocation lookup by serial.
#[derive(Debug)]
struct RevocationAwareClientVerifier {
    trust: Arc<ClientTrust>,
    revoked: Arc<dyn RevocationCheck>,
    signatures: HandshakeSignatures,
}

impl ClientCertVerifier for RevocationAwareClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    /// None: the trusted CAs change during a rollover, and a source presents its one
    /// certificate whatever the hints say.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .trust
            .verifier()
            .verify_client_cert(end_entity, intermediates, now)?;
        let serial = ca::cert_serial_hex(end_entity)
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        if self.revoked.is_revoked(&serial) {
            log::warn!("tunnel: refused client certificate with serial {serial}: revoked, or retired after its renewal");
            return Err(rustls::Error::InvalidCertificate(CertificateError::Revoked));
        }
        Ok(verified)
    }

    handshake_signature_methods!();
}

// ---------------------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------------------

/// Client config that trusts exactly `anchors` (a target's pinned CA; during a rollover of
/// its CA also the new CA it endorsed), optionally presenting a client certificate
/// (`(chain_pem, key_pem)`) for the tunnel. ALPN `http/1.1`.
///
/// The server's name is deliberately not checked: appliances are often reached by an IP
/// address or a name that is not in the target's SAN list, and the trust anchor is the
/// per-appliance CA that the admin pinned by fingerprint, which only ever issues that
/// appliance's own server certificates. Chain, validity and the serverAuth usage are
/// checked, so a source's client certificate (clientAuth only) cannot pose as the target.
pub fn pinned_client_config(
    anchors: Vec<CertificateDer<'static>>,
    client_auth: Option<(&str, &str)>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = provider();
    let verifier = Arc::new(PinnedCaVerifier {
        roots: roots_of(anchors)?,
        signatures: HandshakeSignatures::of(&provider),
    });
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Config)?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match client_auth {
        None => builder.with_no_client_auth(),
        Some((chain_pem, key_pem)) => builder
            .with_client_auth_cert(certs_from_pem(chain_pem)?, key_from_pem(key_pem)?)
            .map_err(TlsError::Config)?,
    };
    config.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
    Ok(Arc::new(config))
}

/// Client config for an S3 endpoint (`objstore`): trusts the certificates in `roots_pem`
/// (the storage's `ca_file`, or the system's CA bundle, both read by the caller) and checks
/// the chain, validity and the server's name with rustls's WebPKI verifier, as any HTTPS
/// client does. Certificates of the bundle that do not parse as trust anchors are skipped
/// (system bundles carry a few); none usable is an error. ALPN `http/1.1`.
pub fn object_store_client_config(roots_pem: &str) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    let (added, _skipped) = roots.add_parsable_certificates(certs_from_pem(roots_pem)?);
    if added == 0 {
        return Err(TlsError::NoCertificate);
    }
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Config)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
    Ok(Arc::new(config))
}

/// Checks a server chain against the pinned CAs: signatures, validity, serverAuth usage,
/// through the presented intermediates (a cross-certificate during a rollover). Not the
/// server name (see [`pinned_client_config`]).
#[derive(Debug)]
struct PinnedCaVerifier {
    roots: RootCertStore,
    signatures: HandshakeSignatures,
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.signatures.0.all,
        )?;
        Ok(ServerCertVerified::assertion())
    }

    handshake_signature_methods!();
}

/// Accepts any server chain (the probe only wants to see it), but still checks that the
/// server holds the key of the certificate it presents.
#[derive(Debug)]
struct AcceptAnyServerCert {
    signatures: HandshakeSignatures,
}

impl ServerCertVerifier for AcceptAnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    handshake_signature_methods!();
}

/// Connects to `addr` (`host:port`), completes a TLS handshake while trusting nothing, and
/// returns the last certificate of the presented chain that is a CA, so the source can show
/// its SHA-256 fingerprint for comparison out of band (trust on first use). `timeout`
/// bounds each TCP connect and the whole handshake. Name resolution uses the system
/// resolver, which has its own timeout.
pub fn probe_presented_ca(
    addr: &str,
    timeout: Duration,
) -> Result<CertificateDer<'static>, TlsError> {
    let provider = provider();
    let config = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Config)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyServerCert {
            signatures: HandshakeSignatures::of(&provider),
        }))
        .with_no_client_auth();
    let mut conn =
        ClientConnection::new(Arc::new(config), server_name_for(addr)).map_err(TlsError::Config)?;
    let sock = connect(addr, timeout)?;
    let mut io = DeadlineStream {
        sock,
        deadline: Instant::now() + timeout,
    };
    while conn.is_handshaking() {
        if let Err(e) = conn.complete_io(&mut io) {
            return Err(match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => TlsError::Timeout {
                    addr: addr.to_owned(),
                },
                _ => TlsError::Handshake {
                    addr: addr.to_owned(),
                    source: e,
                },
            });
        }
    }
    let presented_ca = conn.peer_certificates().and_then(|chain| {
        chain
            .iter()
            .rev()
            .find(|c| ca::cert_info(c).map(|i| i.is_ca).unwrap_or(false))
            .map(|c| c.clone().into_owned())
    });
    // Polite close; the result does not matter any more.
    conn.send_close_notify();
    let _ = conn.complete_io(&mut io);
    presented_ca.ok_or_else(|| TlsError::NoCaPresented {
        addr: addr.to_owned(),
    })
}

/// A TCP stream whose reads and writes fail with `TimedOut` once `deadline` has passed, so
/// a peer that sends one byte at a time cannot stretch the handshake.
struct DeadlineStream {
    sock: TcpStream,
    deadline: Instant,
}

impl DeadlineStream {
    fn remaining(&self) -> io::Result<Duration> {
        match self.deadline.checked_duration_since(Instant::now()) {
            Some(d) if !d.is_zero() => Ok(d),
            _ => Err(io::Error::from(io::ErrorKind::TimedOut)),
        }
    }
}

impl Read for DeadlineStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let remaining = self.remaining()?;
        self.sock.set_read_timeout(Some(remaining))?;
        self.sock.read(buf)
    }
}

impl Write for DeadlineStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let remaining = self.remaining()?;
        self.sock.set_write_timeout(Some(remaining))?;
        self.sock.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.sock.flush()
    }
}

fn connect(addr: &str, timeout: Duration) -> Result<TcpStream, TlsError> {
    let addrs: Vec<SocketAddr> = addr
        .to_socket_addrs()
        .map_err(|source| TlsError::Resolve {
            addr: addr.to_owned(),
            source,
        })?
        .collect();
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no addresses");
    for candidate in addrs {
        match TcpStream::connect_timeout(&candidate, timeout) {
            Ok(sock) => {
                // Handshake messages are small; do not let Nagle delay them.
                let _ = sock.set_nodelay(true);
                return Ok(sock);
            }
            Err(e) => last = e,
        }
    }
    Err(TlsError::Connect {
        addr: addr.to_owned(),
        source: last,
    })
}

/// The host part of `host:port` or `[v6]:port` as a server name (for SNI only; no verifier
/// here checks names).
fn server_name_for(addr: &str) -> ServerName<'static> {
    let host = if let Some(rest) = addr.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else {
        addr.rsplit_once(':').map_or(addr, |(host, _)| host)
    };
    ServerName::try_from(host.to_owned())
        .or_else(|_| ServerName::try_from(FALLBACK_SERVER_NAME))
        .unwrap_or_else(|_| ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()))
}

// ---------------------------------------------------------------------------------------
// PEM and roots
// ---------------------------------------------------------------------------------------

fn certs_from_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::BadCertificatePem {
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate);
    }
    Ok(certs)
}

fn key_from_pem(pem: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| TlsError::BadKeyPem {
        reason: e.to_string(),
    })
}

/// The trust anchors `anchors` (at least one; every one must be usable).
fn roots_of(anchors: Vec<CertificateDer<'static>>) -> Result<RootCertStore, TlsError> {
    if anchors.is_empty() {
        return Err(TlsError::NoCertificate);
    }
    let mut roots = RootCertStore::empty();
    for anchor in anchors {
        roots.add(anchor).map_err(TlsError::BadTrustAnchor)?;
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::net::TcpListener;
    use std::sync::Mutex;
    use std::thread::JoinHandle;

    use rustls::{ServerConnection, Stream};
    use time::OffsetDateTime;

    use super::*;
    use crate::ca::{generate_client_key_and_csr, parse_csr, sha256_hex, Ca};

    const UUID: &str = "5f0c7a52-3f5e-4a6b-9c0d-2b1e8f7a6c11";
    const IO_TIMEOUT: Duration = Duration::from_secs(10);
    const LIFETIME: Duration = Duration::from_secs(365 * 86_400);

    #[derive(Debug, Default)]
    struct RevokedSet(Mutex<HashSet<String>>);

    impl RevocationCheck for RevokedSet {
        fn is_revoked(&self, serial_hex: &str) -> bool {
            self.0.lock().unwrap().contains(serial_hex)
        }
    }

    /// The API listener's config over a slot holding `chain` and `key`.
    fn api_config(chain: &str, key: &str) -> Result<Arc<ServerConfig>, TlsError> {
        api_server_config(ServerCertSlot::new(chain, key)?)
    }

    /// The tunnel listener's config over a slot holding `chain` and `key`.
    fn tunnel_config(
        chain: &str,
        key: &str,
        anchors: Vec<CertificateDer<'static>>,
        revoked: Arc<dyn RevocationCheck>,
    ) -> Result<Arc<ServerConfig>, TlsError> {
        tunnel_server_config(
            ServerCertSlot::new(chain, key)?,
            ClientTrust::new(anchors)?,
            revoked,
        )
    }

    fn now() -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }

    fn ca(name: &str) -> Ca {
        Ca::generate(name, now()).unwrap()
    }

    /// `ca` as the one trust anchor.
    fn ca_der(ca: &Ca) -> Vec<CertificateDer<'static>> {
        vec![ca.cert_der()]
    }

    /// Leaf then CA, for a server certificate whose names do not include 127.0.0.1.
    fn server_identity(ca: &Ca) -> (String, String) {
        let issued = ca
            .issue_server_cert(&["target.invalid".to_owned()], &[], LIFETIME, now())
            .unwrap();
        (
            format!("{}{}", issued.cert_pem, ca.cert_pem()),
            issued.key_pem,
        )
    }

    /// A source's client certificate from `ca`: (chain pem, key pem, serial).
    fn client_identity(ca: &Ca) -> (String, String, String) {
        let (key, csr) = generate_client_key_and_csr(UUID).unwrap();
        let issued = ca
            .sign_client(&parse_csr(&csr).unwrap(), UUID, LIFETIME, now())
            .unwrap();
        (issued.cert_pem, key, issued.serial)
    }

    /// Serves `connections` connections on 127.0.0.1; each answers "ping" with "pong" after
    /// the handshake. Yields each connection's handshake result.
    fn serve(
        config: Arc<ServerConfig>,
        connections: usize,
    ) -> (SocketAddr, JoinHandle<Vec<Result<(), io::Error>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let handle = std::thread::spawn(move || {
            let mut results = Vec::new();
            for _ in 0..connections {
                let (mut sock, _) = listener.accept().unwrap();
                sock.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
                sock.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
                let mut conn = ServerConnection::new(config.clone()).unwrap();
                let mut handshake = Ok(());
                while conn.is_handshaking() {
                    if let Err(e) = conn.complete_io(&mut sock) {
                        handshake = Err(e);
                        break;
                    }
                }
                if handshake.is_ok() {
                    let mut stream = Stream::new(&mut conn, &mut sock);
                    let mut buf = [0u8; 4];
                    if stream.read_exact(&mut buf).is_ok() && &buf == b"ping" {
                        let _ = stream.write_all(b"pong");
                        let _ = stream.flush();
                    }
                }
                results.push(handshake);
            }
            results
        });
        (addr, handle)
    }

    /// Connects with `config` under `name`, sends "ping" and expects "pong".
    fn ping(config: Arc<ClientConfig>, addr: SocketAddr, name: &str) -> io::Result<()> {
        let mut sock = TcpStream::connect_timeout(&addr, IO_TIMEOUT).unwrap();
        sock.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        sock.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        let server_name = ServerName::try_from(name.to_owned()).unwrap();
        let mut conn = ClientConnection::new(config, server_name).unwrap();
        let mut stream = Stream::new(&mut conn, &mut sock);
        stream.write_all(b"ping")?;
        let mut buf = [0u8; 4];
        stream.read_exact(&mut buf)?;
        assert_eq!(&buf, b"pong");
        Ok(())
    }

    /// The rustls error inside an I/O error from `complete_io` or a stream.
    fn tls_error(result: &io::Result<()>) -> &rustls::Error {
        let err = result.as_ref().expect_err("expected a tls failure");
        err.get_ref()
            .and_then(|e| e.downcast_ref::<rustls::Error>())
            .unwrap_or_else(|| panic!("not a rustls error: {err:?}"))
    }

    fn assert_ok(results: &[io::Result<()>]) {
        for r in results {
            assert!(r.is_ok(), "{r:?}");
        }
    }

    #[test]
    fn tunnel_accepts_our_client_and_refuses_another_ca_and_anonymous_clients() {
        let ours = ca("target ca");
        let theirs = ca("target ca"); // same name, other key
        let (chain, key) = server_identity(&ours);
        let config =
            tunnel_config(&chain, &key, ca_der(&ours), Arc::new(RevokedSet::default())).unwrap();
        let (addr, server) = serve(config, 4);

        let (cert, client_key, _) = client_identity(&ours);
        let good = pinned_client_config(ca_der(&ours), Some((&cert, &client_key))).unwrap();
        ping(good, addr, "127.0.0.1").unwrap();

        let (foreign, foreign_key, _) = client_identity(&theirs);
        let foreign = pinned_client_config(ca_der(&ours), Some((&foreign, &foreign_key))).unwrap();
        assert!(ping(foreign, addr, "127.0.0.1").is_err());

        let anonymous = pinned_client_config(ca_der(&ours), None).unwrap();
        assert!(ping(anonymous, addr, "127.0.0.1").is_err());

        // Our own server certificate (serverAuth only) does not open the tunnel.
        let (server_chain, server_key) = server_identity(&ours);
        let wrong_usage =
            pinned_client_config(ca_der(&ours), Some((&server_chain, &server_key))).unwrap();
        assert!(ping(wrong_usage, addr, "127.0.0.1").is_err());

        let results = server.join().unwrap();
        assert_ok(&results[..1]);
        // Same subject name as our CA, so webpki finds a candidate issuer and reports the
        // signature that does not verify.
        assert_eq!(
            tls_error(&results[1]),
            &rustls::Error::InvalidCertificate(CertificateError::BadSignature)
        );
        assert_eq!(
            tls_error(&results[2]),
            &rustls::Error::NoCertificatesPresented
        );
        assert!(
            matches!(
                tls_error(&results[3]),
                rustls::Error::InvalidCertificate(
                    CertificateError::InvalidPurpose
                        | CertificateError::InvalidPurposeContext { .. }
                )
            ),
            "{:?}",
            results[3]
        );
    }

    #[test]
    fn tunnel_refuses_a_certificate_once_it_is_revoked_without_restart_or_resumption() {
        let ours = ca("target ca");
        let (chain, key) = server_identity(&ours);
        let revoked = Arc::new(RevokedSet::default());
        let config = tunnel_config(&chain, &key, ca_der(&ours), revoked.clone()).unwrap();
        let (addr, server) = serve(config, 4);

        let (cert, client_key, serial) = client_identity(&ours);
        let (_, _, other_serial) = client_identity(&ours);
        // One client config for every attempt: it keeps its session cache, so the second
        // connection offers resumption.
        let client = pinned_client_config(ca_der(&ours), Some((&cert, &client_key))).unwrap();
        ping(client.clone(), addr, "127.0.0.1").unwrap();

        revoked.0.lock().unwrap().insert(other_serial);
        ping(client.clone(), addr, "127.0.0.1").unwrap();

        revoked.0.lock().unwrap().insert(serial.clone());
        assert!(ping(client.clone(), addr, "127.0.0.1").is_err());

        revoked.0.lock().unwrap().remove(&serial);
        ping(client, addr, "127.0.0.1").unwrap();

        let results = server.join().unwrap();
        assert_ok(&results[..2]);
        assert_eq!(
            tls_error(&results[2]),
            &rustls::Error::InvalidCertificate(CertificateError::Revoked)
        );
        assert_ok(&results[3..]);
    }

    #[test]
    fn a_swapped_certificate_serves_the_next_handshake_and_open_connections_carry_on() {
        let ours = ca("target ca");
        let (chain_a, key_a) = server_identity(&ours);
        let (chain_b, key_b) = server_identity(&ours);
        let slot = ServerCertSlot::new(&chain_a, &key_a).unwrap();
        let config = api_server_config(slot.clone()).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        // Each connection on its own thread, answering "ping" with "pong" until it closes.
        let server = std::thread::spawn(move || {
            let mut handles = Vec::new();
            for _ in 0..2 {
                let (mut sock, _) = listener.accept().unwrap();
                sock.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
                let config = config.clone();
                handles.push(std::thread::spawn(move || {
                    let mut conn = ServerConnection::new(config).unwrap();
                    let mut stream = Stream::new(&mut conn, &mut sock);
                    let mut buf = [0u8; 4];
                    while stream.read_exact(&mut buf).is_ok() {
                        stream.write_all(b"pong").unwrap();
                        stream.flush().unwrap();
                    }
                }));
            }
            for h in handles {
                h.join().unwrap();
            }
        });
        // A fresh client config each time: a resumed session would show the certificate
        // of the session it resumes (the API listener allows resumption).
        let connect = || {
            let client = pinned_client_config(ca_der(&ours), None).unwrap();
            let sock = TcpStream::connect_timeout(&addr, IO_TIMEOUT).unwrap();
            sock.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
            let conn =
                ClientConnection::new(client, ServerName::try_from("x.example").unwrap()).unwrap();
            rustls::StreamOwned::new(conn, sock)
        };
        let ping = |s: &mut rustls::StreamOwned<ClientConnection, TcpStream>| {
            s.write_all(b"ping").unwrap();
            let mut buf = [0u8; 4];
            s.read_exact(&mut buf).unwrap();
            assert_eq!(&buf, b"pong");
            s.conn.peer_certificates().unwrap()[0].clone()
        };
        let leaf = |chain: &str| certs_from_pem(chain).unwrap()[0].clone();
        let mut before = connect();
        assert_eq!(ping(&mut before), leaf(&chain_a));
        slot.replace(&chain_b, &key_b).unwrap();
        assert_eq!(slot.leaf(), leaf(&chain_b));
        let mut after = connect();
        assert_eq!(
            ping(&mut after),
            leaf(&chain_b),
            "the next handshake sees the new one"
        );
        assert_eq!(
            ping(&mut before),
            leaf(&chain_a),
            "the open connection carries on"
        );
        // A pair that does not belong together is refused and changes nothing.
        assert!(matches!(
            slot.replace(&chain_a, &key_b),
            Err(TlsError::Config(_))
        ));
        assert_eq!(slot.leaf(), leaf(&chain_b));
        drop((before, after));
        server.join().unwrap();
    }

    /// An old CA, a new one and the cross-certificate by which the old endorses the new.
    fn rollover() -> (Ca, Ca, String) {
        let old = ca("replgate CA old");
        let new = ca("replgate CA new");
        let cross = old.cross_certify(&new, now()).unwrap();
        (old, new, cross)
    }

    #[test]
    fn a_new_chain_server_certificate_with_the_cross_verifies_for_old_and_new_trust() {
        let (old, new, cross) = rollover();
        let issued = new
            .issue_server_cert(&["target.invalid".to_owned()], &[], LIFETIME, now())
            .unwrap();
        // What a listener presents during a rollover: leaf, cross-certificate, old CA.
        let chain = format!("{}{cross}{}", issued.cert_pem, old.cert_pem());
        let config = api_config(&chain, &issued.key_pem).unwrap();
        let (addr, server) = serve(config, 4);
        for anchors in [
            vec![old.cert_der()],
            vec![new.cert_der()],
            vec![old.cert_der(), new.cert_der()],
        ] {
            let client = pinned_client_config(anchors, None).unwrap();
            ping(client, addr, "127.0.0.1").unwrap();
        }
        let stranger = pinned_client_config(ca_der(&ca("replgate CA old")), None).unwrap();
        let refused = ping(stranger, addr, "127.0.0.1");
        assert!(
            matches!(tls_error(&refused), rustls::Error::InvalidCertificate(_)),
            "{refused:?}"
        );
        let results = server.join().unwrap();
        assert_ok(&results[..3]);
        // A new pairing during the rollover pins the CA in force: the last CA presented.
        let (addr, server) = serve(api_config(&chain, &issued.key_pem).unwrap(), 1);
        let presented = probe_presented_ca(&addr.to_string(), IO_TIMEOUT).unwrap();
        assert_eq!(presented, old.cert_der());
        assert_ok(&server.join().unwrap());
    }

    #[test]
    fn the_tunnel_trusts_what_its_client_trust_holds_and_open_connections_carry_on() {
        let (old, new, _) = rollover();
        let (chain, key) = server_identity(&old);
        let trust = ClientTrust::new(vec![old.cert_der()]).unwrap();
        let config = tunnel_server_config(
            ServerCertSlot::new(&chain, &key).unwrap(),
            trust.clone(),
            Arc::new(RevokedSet::default()),
        )
        .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        // Each connection on its own thread, answering "ping" with "pong" until it closes;
        // the handshake's outcome is reported.
        let server = std::thread::spawn(move || {
            let mut handles = Vec::new();
            for _ in 0..7 {
                let (mut sock, _) = listener.accept().unwrap();
                sock.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
                let config = config.clone();
                handles.push(std::thread::spawn(move || {
                    let mut conn = ServerConnection::new(config).unwrap();
                    while conn.is_handshaking() {
                        if conn.complete_io(&mut sock).is_err() {
                            return false;
                        }
                    }
                    let mut stream = Stream::new(&mut conn, &mut sock);
                    let mut buf = [0u8; 4];
                    while stream.read_exact(&mut buf).is_ok() {
                        stream.write_all(b"pong").unwrap();
                        stream.flush().unwrap();
                    }
                    true
                }));
            }
            handles
                .into_iter()
                .map(|h| h.join().unwrap())
                .collect::<Vec<_>>()
        });
        let anchors = vec![old.cert_der(), new.cert_der()];
        let connect = |(cert, key, _): &(String, String, String)| {
            let config = pinned_client_config(anchors.clone(), Some((cert, key))).unwrap();
            let sock = TcpStream::connect_timeout(&addr, IO_TIMEOUT).unwrap();
            sock.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
            let conn =
                ClientConnection::new(config, ServerName::try_from("x.example").unwrap()).unwrap();
            rustls::StreamOwned::new(conn, sock)
        };
        let works = |s: &mut rustls::StreamOwned<ClientConnection, TcpStream>| {
            let mut buf = [0u8; 4];
            s.write_all(b"ping").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"pong"
        };
        let (old_leaf, new_leaf) = (client_identity(&old), client_identity(&new));
        let mut first = connect(&old_leaf);
        assert!(works(&mut first));
        assert!(
            !works(&mut connect(&new_leaf)),
            "the new CA is not trusted yet"
        );
        trust.replace(vec![old.cert_der(), new.cert_der()]).unwrap();
        assert!(
            works(&mut connect(&new_leaf)),
            "trusted from the next handshake"
        );
        assert!(works(&mut connect(&old_leaf)));
        trust.replace(vec![new.cert_der()]).unwrap();
        assert!(!works(&mut connect(&old_leaf)), "the old CA is gone");
        assert!(works(&mut first), "an open connection carries on");
        assert!(works(&mut connect(&new_leaf)));
        assert!(matches!(
            trust.replace(Vec::new()),
            Err(TlsError::NoCertificate)
        ));
        assert!(
            !works(&mut connect(&old_leaf)),
            "a refused replacement changes nothing"
        );
        drop(first);
        let outcomes = server.join().unwrap();
        assert_eq!(outcomes, [true, false, true, true, false, true, false]);
    }

    #[test]
    fn probe_returns_the_ca_the_api_listener_presents() {
        let ours = ca("target ca");
        let (chain, key) = server_identity(&ours);
        let config = api_config(&chain, &key).unwrap();
        assert_eq!(config.alpn_protocols, vec![b"http/1.1".to_vec()]);
        let (addr, server) = serve(config, 1);

        let presented = probe_presented_ca(&addr.to_string(), IO_TIMEOUT).unwrap();
        assert_eq!(presented, ours.cert_der());
        assert_eq!(sha256_hex(&presented), ours.fingerprint());
        assert_ok(&server.join().unwrap());
    }

    #[test]
    fn probe_gives_up_on_a_silent_server_after_the_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (done, wait) = std::sync::mpsc::channel::<()>();
        let holder = std::thread::spawn(move || {
            let (sock, _) = listener.accept().unwrap();
            // Hold the connection open, saying nothing, until the probe has given up.
            let _ = wait.recv_timeout(IO_TIMEOUT);
            drop(sock);
        });
        let started = Instant::now();
        let err = probe_presented_ca(&addr.to_string(), Duration::from_millis(300)).unwrap_err();
        let elapsed = started.elapsed();
        done.send(()).unwrap();
        holder.join().unwrap();
        assert!(matches!(err, TlsError::Timeout { .. }), "{err:?}");
        assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
    }

    #[test]
    fn pinned_client_ignores_the_server_name_but_refuses_another_ca() {
        let ours = ca("target ca");

        let (chain, key) = server_identity(&ours);
        let (addr, server) = serve(api_config(&chain, &key).unwrap(), 2);
        let client = pinned_client_config(ca_der(&ours), None).unwrap();
        // The certificate names only target.invalid; both an IP and another name work.
        ping(client.clone(), addr, "127.0.0.1").unwrap();
        ping(client, addr, "elsewhere.example").unwrap();
        assert_ok(&server.join().unwrap());

        for (other, expected) in [
            (ca("someone else's ca"), CertificateError::UnknownIssuer),
            (ca("target ca"), CertificateError::BadSignature),
        ] {
            let (chain, key) = server_identity(&other);
            let (addr, server) = serve(api_config(&chain, &key).unwrap(), 1);
            let client = pinned_client_config(ca_der(&ours), None).unwrap();
            let result = ping(client, addr, "target.invalid");
            assert_eq!(
                tls_error(&result),
                &rustls::Error::InvalidCertificate(expected)
            );
            assert!(server.join().unwrap()[0].is_err());
        }
    }

    #[test]
    fn pinned_client_refuses_a_source_certificate_posing_as_the_target() {
        let ours = ca("target ca");
        let (cert, key, _) = client_identity(&ours);
        let chain = format!("{cert}{}", ours.cert_pem());
        let (addr, server) = serve(api_config(&chain, &key).unwrap(), 1);
        let client = pinned_client_config(ca_der(&ours), None).unwrap();
        let result = ping(client, addr, "other.example");
        assert!(
            matches!(
                tls_error(&result),
                rustls::Error::InvalidCertificate(
                    CertificateError::InvalidPurpose
                        | CertificateError::InvalidPurposeContext { .. }
                )
            ),
            "{result:?}"
        );
        assert!(server.join().unwrap()[0].is_err());
    }

    #[test]
    fn api_config_needs_the_ca_in_the_chain_and_the_matching_key() {
        let ours = ca("target ca");
        let issued = ours
            .issue_server_cert(&["localhost".to_owned()], &[], LIFETIME, now())
            .unwrap();
        assert!(matches!(
            api_config(&issued.cert_pem, &issued.key_pem),
            Err(TlsError::ChainWithoutCa)
        ));
        let chain = format!("{}{}", issued.cert_pem, ours.cert_pem());
        let other = ours
            .issue_server_cert(&["localhost".to_owned()], &[], LIFETIME, now())
            .unwrap();
        assert!(matches!(
            api_config(&chain, &other.key_pem),
            Err(TlsError::Config(_))
        ));
        assert!(matches!(
            api_config("", &issued.key_pem),
            Err(TlsError::NoCertificate)
        ));
        assert!(matches!(
            api_config(&chain, "garbage"),
            Err(TlsError::BadKeyPem { .. })
        ));
    }

    #[test]
    fn server_name_for_takes_the_host_part() {
        assert_eq!(
            server_name_for("backup.example:8443"),
            ServerName::try_from("backup.example").unwrap()
        );
        assert_eq!(
            server_name_for("[::1]:8443"),
            ServerName::try_from("::1").unwrap()
        );
        assert_eq!(
            server_name_for("10.0.0.2:8443"),
            ServerName::try_from("10.0.0.2").unwrap()
        );
        assert_eq!(
            server_name_for("bad_name!:1"),
            ServerName::try_from(FALLBACK_SERVER_NAME).unwrap()
        );
    }
}
