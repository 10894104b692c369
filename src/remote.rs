//! The one client for another appliance (source side): its appliance protocol over TLS and
//! its tunnel over mutual TLS. Built on ureq with every knob set on purpose: only the
//! pinned CA is trusted, timeouts are short, proxy variables and redirects are ignored.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use ureq::tls::{Certificate, ClientCert, PrivateKey, RootCerts, TlsConfig, TlsProvider};

use crate::pairing::protocol::{Filed, Hello, SpoolStatus};

/// Connecting to a peer appliance on a LAN or WAN link; a peer that does not answer within
/// this is treated as down and retried later.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Whole-call bound, so one stuck peer cannot hold the poller thread.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Answers are a few KB (a certificate chain at most).
const MAX_BODY_BYTES: u64 = 256 * 1024;

#[derive(Debug)]
pub enum RemoteError {
    /// Could not reach the peer, or the connection broke.
    Unreachable(String),
    /// The peer's certificate does not chain to the pinned CA (or ours was refused).
    Untrusted(String),
    /// The peer answered with an error status; `message` is its documented error text.
    Refused { status: u16, message: String },
    /// The peer's answer is not what the protocol says.
    Malformed(String),
    /// Our own material (pinned CA, key, certificate) could not be loaded.
    Local(String),
}

impl fmt::Display for RemoteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RemoteError::Unreachable(e) => write!(f, "unreachable: {e}"),
            RemoteError::Untrusted(e) => write!(f, "untrusted peer certificate: {e}"),
            RemoteError::Refused { status, message } => {
                write!(f, "refused with {status}: {message}")
            }
            RemoteError::Malformed(e) => write!(f, "unexpected answer: {e}"),
            RemoteError::Local(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for RemoteError {}

fn classify_tls(e: &rustls::Error) -> RemoteError {
    match e {
        rustls::Error::InvalidCertificate(_) | rustls::Error::AlertReceived(_) => {
            RemoteError::Untrusted(e.to_string())
        }
        other => RemoteError::Unreachable(other.to_string()),
    }
}

/// The rustls error behind a ureq error, if the failure happened in TLS. rustls reports
/// handshake failures through the stream, as an io::Error around them.
pub fn tls_error(e: &ureq::Error) -> Option<&rustls::Error> {
    match e {
        ureq::Error::Rustls(e) => Some(e),
        ureq::Error::Io(io) => io
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>()),
        _ => None,
    }
}

fn classify(e: ureq::Error) -> RemoteError {
    if let Some(tls) = tls_error(&e) {
        return classify_tls(tls);
    }
    match e {
        ureq::Error::Tls(e) => RemoteError::Untrusted(e.to_string()),
        ureq::Error::BodyExceedsLimit(n) => {
            RemoteError::Malformed(format!("answer larger than {n} bytes"))
        }
        other => RemoteError::Unreachable(other.to_string()),
    }
}

/// The one way this crate builds an HTTP client: only `ca` is trusted (a per-appliance CA,
/// never the public ones), proxy variables and redirects are ignored, calls are bounded.
/// `client` is presented for mutual TLS (the tunnel).
pub fn pinned_agent(
    ca: Certificate<'static>,
    client: Option<ClientCert>,
    call_timeout: Duration,
    user_agent: &str,
) -> ureq::Agent {
    let tls = TlsConfig::builder()
        .provider(TlsProvider::Rustls)
        .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .root_certs(RootCerts::new_with_certs(&[ca]))
        .client_cert(client)
        .build();
    let config = ureq::Agent::config_builder()
        .tls_config(tls)
        // Appliances are reached directly; an environment proxy is never meant and would
        // see tokens.
        .proxy(None)
        // A redirect could lead the client to trust or send a token to another endpoint.
        .max_redirects(0)
        .timeout_connect(Some(CONNECT_TIMEOUT))
        .timeout_global(Some(call_timeout))
        .https_only(true)
        // Error statuses are answers: their documented body carries the message.
        .http_status_as_error(false)
        .user_agent(user_agent)
        .build();
    ureq::Agent::new_with_config(config)
}

/// The status and the (bounded) body of an answer.
fn body_text(mut response: ureq::http::Response<ureq::Body>) -> Result<(u16, String), RemoteError> {
    let status = response.status().as_u16();
    let text = response
        .body_mut()
        .with_config()
        .limit(MAX_BODY_BYTES)
        .read_to_string()
        .map_err(classify)?;
    Ok((status, text))
}

/// A client for one peer, trusting only `ca_pem`.
pub struct Remote {
    agent: ureq::Agent,
    base: String,
}

/// The body of `POST /replication/v1/requests`.
#[derive(serde::Serialize)]
pub struct RequestBody<'a> {
    pub system_uuid: &'a str,
    pub name: &'a str,
    pub host: &'a str,
    pub version: &'a str,
    pub csr: &'a str,
}

impl Remote {
    /// A client for the peer's API listener at `host:port`.
    pub fn api(host: &str, ca_pem: &str) -> Result<Remote, RemoteError> {
        Remote::new(host, ca_pem, None)
    }

    /// A client for the peer's tunnel, presenting our certificate.
    pub fn tunnel(
        host: &str,
        ca_pem: &str,
        cert_pem: &str,
        key_pem: &str,
    ) -> Result<Remote, RemoteError> {
        let cert = Certificate::from_pem(cert_pem.as_bytes())
            .map_err(|e| RemoteError::Local(format!("installed certificate: {e}")))?;
        let key = PrivateKey::from_pem(key_pem.as_bytes())
            .map_err(|e| RemoteError::Local(format!("pairing key: {e}")))?;
        Remote::new(host, ca_pem, Some(ClientCert::new_with_certs(&[cert], key)))
    }

    fn new(host: &str, ca_pem: &str, client: Option<ClientCert>) -> Result<Remote, RemoteError> {
        let ca = Certificate::from_pem(ca_pem.as_bytes())
            .map_err(|e| RemoteError::Local(format!("pinned CA: {e}")))?;
        Ok(Remote {
            agent: pinned_agent(
                ca,
                client,
                CALL_TIMEOUT,
                concat!("replgate/", env!("CARGO_PKG_VERSION")),
            ),
            base: format!("https://{host}"),
        })
    }

    fn read<T: DeserializeOwned>(
        &self,
        response: ureq::http::Response<ureq::Body>,
    ) -> Result<T, RemoteError> {
        let (status, text) = body_text(response)?;
        if !(200..300).contains(&status) {
            let message = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v["result"][0]["message"].as_str().map(String::from))
                .unwrap_or_else(|| text.chars().take(200).collect());
            return Err(RemoteError::Refused { status, message });
        }
        serde_json::from_str(&text).map_err(|e| RemoteError::Malformed(e.to_string()))
    }

    fn get_text(&self, path: &str) -> Result<String, RemoteError> {
        let response = self
            .agent
            .get(format!("{}{path}", self.base))
            .call()
            .map_err(classify)?;
        let (status, text) = body_text(response)?;
        if status != 200 {
            return Err(RemoteError::Refused {
                status,
                message: format!("GET {path}"),
            });
        }
        Ok(text)
    }

    pub fn file_request(&self, body: &RequestBody) -> Result<Filed, RemoteError> {
        let json = serde_json::to_string(body).map_err(|e| RemoteError::Local(e.to_string()))?;
        let response = self
            .agent
            .post(format!("{}/replication/v1/requests", self.base))
            .header("Content-Type", "application/json")
            .send(json)
            .map_err(classify)?;
        self.read(response)
    }

    /// Polls `status.json` under the spool path `poll` (which ends in `/`).
    pub fn status(&self, poll: &str) -> Result<SpoolStatus, RemoteError> {
        let text = self.get_text(&format!("{poll}{}", crate::pairing::protocol::STATUS_FILE))?;
        serde_json::from_str(&text).map_err(|e| RemoteError::Malformed(format!("status.json: {e}")))
    }

    /// Fetches a spool file as text.
    pub fn fetch(&self, poll: &str, name: &str) -> Result<String, RemoteError> {
        self.get_text(&format!("{poll}{name}"))
    }

    /// `GET /tunnel/v1/hello` over the tunnel.
    pub fn hello(&self) -> Result<Hello, RemoteError> {
        let response = self
            .agent
            .get(format!("{}/tunnel/v1/hello", self.base))
            .call()
            .map_err(classify)?;
        self.read(response)
    }
}
