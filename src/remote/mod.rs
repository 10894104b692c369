//! The one client for another appliance (source side): its appliance protocol over TLS and
//! its tunnel over mutual TLS, through [`http`]: only the pinned CA is trusted, timeouts
//! are short, there is no proxy and no redirect. Also the live I/O of source-side pairing
//! (`LiveSource`), which the domain is handed.

pub mod http;
pub mod restore;
pub mod tunnel;

use std::fmt;
use std::time::Duration;

use serde::de::DeserializeOwned;

use rustls::pki_types::CertificateDer;

use self::http::{Body, Client, HttpError, Response};

use crate::ca::CaError;
use crate::identity::{IdentityError, TargetDirs};
use crate::pairing::source::request::{CallError, SourceIo};
use crate::tls::TlsError;
use crate::wire::error::OPEN_REQUEST_OTHER_KEY_CODE;
use crate::wire::protocol::{CaAnswer, Filed, Hello, RenewBody, Renewal, RequestBody, SpoolStatus};

/// Whole-call bound, so one stuck peer cannot hold the poller thread.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// The first contact with a target (reading the CA it presents).
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);
/// Answers are a few KB (a certificate chain at most).
const MAX_BODY_BYTES: u64 = 256 * 1024;

/// Why a call to another appliance failed, grouped by what the caller can do about it.
#[derive(Debug)]
pub enum RemoteError {
    /// Could not reach the peer, or the connection broke: retry later.
    Unreachable(HttpError),
    /// The peer's certificate does not chain to the pinned CA, or it refused ours.
    Untrusted(HttpError),
    /// The peer answered with an error status: its documented message and, when it sent
    /// one, its `Retry-After` in seconds.
    Refused {
        status: u16,
        message: String,
        retry_after: Option<u64>,
        /// With application code 12506: the peer's open request from us with another key.
        open_request: Option<u64>,
    },
    /// The answer is larger than this client reads.
    TooLarge { limit: u64 },
    /// The answer is not what the protocol says.
    Malformed {
        what: &'static str,
        source: serde_json::Error,
    },
    /// Our pinned copy of the peer's CA does not parse (a damaged target row).
    PinnedCa(crate::ca::CertError),
    /// Our TLS client configuration could not be built (our key or certificate).
    TlsSetup(crate::tls::TlsError),
    /// A request body could not be encoded (a bug).
    Encode(serde_json::Error),
}

impl RemoteError {
    /// True when the fault is in our own material, not in the peer or the network.
    pub fn is_local(&self) -> bool {
        matches!(
            self,
            RemoteError::PinnedCa(_) | RemoteError::TlsSetup(_) | RemoteError::Encode(_)
        )
    }
}

impl fmt::Display for RemoteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RemoteError::Unreachable(_) => f.write_str("unreachable"),
            RemoteError::Untrusted(_) => f.write_str("untrusted peer certificate"),
            RemoteError::Refused {
                status, message, ..
            } => write!(f, "refused with {status}: {message}"),
            RemoteError::TooLarge { limit } => {
                write!(f, "unexpected answer: larger than {limit} bytes")
            }
            RemoteError::Malformed { what, .. } => write!(f, "unexpected answer: {what}"),
            RemoteError::PinnedCa(_) => f.write_str("pinned CA"),
            RemoteError::TlsSetup(_) => f.write_str("tls set-up"),
            RemoteError::Encode(_) => f.write_str("encode the request"),
        }
    }
}

impl std::error::Error for RemoteError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            RemoteError::Unreachable(e) | RemoteError::Untrusted(e) => Some(e),
            RemoteError::Malformed { source, .. } | RemoteError::Encode(source) => Some(source),
            RemoteError::PinnedCa(e) => Some(e),
            RemoteError::TlsSetup(e) => Some(e),
            RemoteError::Refused { .. } | RemoteError::TooLarge { .. } => None,
        }
    }
}

fn classify(e: HttpError) -> RemoteError {
    let untrusted = matches!(
        e.tls(),
        Some(rustls::Error::InvalidCertificate(_) | rustls::Error::AlertReceived(_))
    );
    match e {
        _ if untrusted => RemoteError::Untrusted(e),
        HttpError::TooLarge(limit) => RemoteError::TooLarge { limit },
        other => RemoteError::Unreachable(other),
    }
}

/// The one way this crate builds an HTTPS client: only `anchors` are trusted (a
/// per-appliance CA, during a rollover of it also its new CA, never the public ones; and
/// only the chain and validity are checked,
/// not the name: appliances are often reached by an address their certificate does not
/// name, a listener on 0.0.0.0 or a NAT address), calls are bounded. `client` (chain
/// PEM, key PEM) is presented for mutual TLS.
pub fn pinned_client(
    anchors: Vec<CertificateDer<'static>>,
    client: Option<(&str, &str)>,
    call_timeout: Duration,
    user_agent: &'static str,
) -> Result<Client, crate::tls::TlsError> {
    let tls = crate::tls::pinned_client_config(anchors, client)?;
    Ok(Client::new(tls, call_timeout, user_agent))
}

/// The certificates of a pinned CA bundle (`ca_pem` of a target row: the pinned CA, and
/// during a rollover of the target's CA the new one and its cross-certificate) as trust
/// anchors.
pub fn anchors_of(ca_pem: &str) -> Result<Vec<CertificateDer<'static>>, crate::ca::CertError> {
    Ok(crate::ca::certs_pem_to_der(ca_pem)?
        .into_iter()
        .map(CertificateDer::from)
        .collect())
}

/// A client for one peer, trusting only `ca_pem` (one CA, or a rollover's bundle).
pub struct Remote {
    client: Client,
    /// `host:port`.
    host: String,
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
        Remote::new(host, ca_pem, Some((cert_pem, key_pem)))
    }

    fn new(host: &str, ca_pem: &str, client: Option<(&str, &str)>) -> Result<Remote, RemoteError> {
        let anchors = anchors_of(ca_pem).map_err(RemoteError::PinnedCa)?;
        let client = pinned_client(
            anchors,
            client,
            CALL_TIMEOUT,
            concat!("replgate/", env!("CARGO_PKG_VERSION")),
        )
        .map_err(RemoteError::TlsSetup)?;
        Ok(Remote {
            client,
            host: host.to_string(),
        })
    }

    fn call(&self, method: &str, path: &str, json: Option<&str>) -> Result<Response, RemoteError> {
        let body = json.map(|j| Body {
            content_type: "application/json",
            bytes: j.as_bytes(),
        });
        self.client
            .call(&self.host, method, path, &[], body, MAX_BODY_BYTES)
            .map_err(classify)
    }

    fn read<T: DeserializeOwned>(&self, response: Response) -> Result<T, RemoteError> {
        let retry_after = response.retry_after();
        let Response {
            status, body: text, ..
        } = response;
        if !(200..300).contains(&status) {
            let error = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .map(|v| v["result"][0].clone());
            let message = error
                .as_ref()
                .and_then(|e| e["message"].as_str().map(String::from))
                .unwrap_or_else(|| text.chars().take(200).collect());
            let open_request = error
                .as_ref()
                .filter(|e| e["code"].as_u64() == Some(u64::from(OPEN_REQUEST_OTHER_KEY_CODE)))
                .and_then(|e| e["request_id"].as_u64());
            return Err(RemoteError::Refused {
                status,
                message,
                retry_after,
                open_request,
            });
        }
        serde_json::from_str(&text).map_err(|source| RemoteError::Malformed {
            what: "body",
            source,
        })
    }

    fn get_text(&self, path: &str) -> Result<String, RemoteError> {
        let response = self.call("GET", path, None)?;
        if response.status != 200 {
            return Err(RemoteError::Refused {
                status: response.status,
                message: format!("GET {path}"),
                retry_after: response.retry_after(),
                open_request: None,
            });
        }
        Ok(response.body)
    }

    pub fn file_request(&self, body: &RequestBody) -> Result<Filed, RemoteError> {
        let json = serde_json::to_string(body).map_err(RemoteError::Encode)?;
        let response = self.call("POST", "/replication/v1/requests", Some(&json))?;
        self.read(response)
    }

    /// Polls `status.json` under the spool path `poll` (which ends in `/`).
    pub fn status(&self, poll: &str) -> Result<SpoolStatus, RemoteError> {
        let text = self.get_text(&format!("{poll}{}", crate::wire::protocol::STATUS_FILE))?;
        serde_json::from_str(&text).map_err(|source| RemoteError::Malformed {
            what: "status.json",
            source,
        })
    }

    /// Fetches a spool file as text.
    pub fn fetch(&self, poll: &str, name: &str) -> Result<String, RemoteError> {
        self.get_text(&format!("{poll}{name}"))
    }

    /// `GET /tunnel/v1/hello` over the tunnel.
    pub fn hello(&self) -> Result<Hello, RemoteError> {
        let response = self.call("GET", "/tunnel/v1/hello", None)?;
        self.read(response)
    }

    /// `GET /tunnel/v1/ca` over the tunnel: the target's CAs, and whether the certificate
    /// of this connection should renew at once (SPEC 22).
    pub fn ca(&self) -> Result<CaAnswer, RemoteError> {
        let response = self.call("GET", "/tunnel/v1/ca", None)?;
        self.read(response)
    }

    /// `GET /replication/v1/ca` on the API listener: the target's CAs, as anyone may read
    /// them.
    pub fn public_ca(&self) -> Result<CaAnswer, RemoteError> {
        let response = self.call("GET", "/replication/v1/ca", None)?;
        self.read(response)
    }

    /// `POST /tunnel/v1/renew` over the tunnel: the certificate presented on this
    /// connection is renewed for the key of `csr_pem`.
    pub fn renew(&self, csr_pem: &str) -> Result<Renewal, RemoteError> {
        let json =
            serde_json::to_string(&RenewBody { csr: csr_pem }).map_err(RemoteError::Encode)?;
        let response = self.call("POST", "/tunnel/v1/renew", Some(&json))?;
        self.read(response)
    }
}

/// The CA `host` presents (trusting nothing, as a first contact does) and what its
/// public CA endpoint answers, read trusting only that CA: how a source checks whether a
/// target it no longer verifies replaced its CA while the source was away (the answer
/// proves nothing by itself; the caller checks the endorsements). None when either
/// cannot be had.
pub fn presented_ca(host: &str) -> Option<(Vec<u8>, CaAnswer)> {
    let presented = crate::tls::probe_presented_ca(host, PROBE_TIMEOUT).ok()?;
    let pem = crate::ca::cert_der_to_pem(&presented);
    let answer = Remote::api(host, &pem).and_then(|r| r.public_ca()).ok()?;
    Some((presented.to_vec(), answer))
}

impl From<RemoteError> for CallError {
    fn from(e: RemoteError) -> Self {
        match e {
            RemoteError::Refused {
                status,
                message,
                retry_after,
                open_request,
            } => CallError::Refused {
                status,
                message,
                retry_after,
                open_request,
            },
            e if e.is_local() => CallError::Local(Box::new(e)),
            e => CallError::Failed(Box::new(e)),
        }
    }
}

/// The I/O of source-side pairing as the daemon does it: the CA probe and the call over
/// the network, the key from `ca`, the pairing directory through `identity`.
pub struct LiveSource<'a> {
    pub dirs: &'a TargetDirs,
}

impl SourceIo for LiveSource<'_> {
    fn probe_ca(&self, host: &str) -> Result<Vec<u8>, TlsError> {
        crate::tls::probe_presented_ca(host, PROBE_TIMEOUT).map(|der| der.to_vec())
    }

    fn file_request(
        &self,
        host: &str,
        ca_pem: &str,
        body: &RequestBody,
    ) -> Result<Filed, CallError> {
        Ok(Remote::api(host, ca_pem)?.file_request(body)?)
    }

    fn key_and_csr(&self, system_uuid: &str) -> Result<(String, String), CaError> {
        crate::ca::generate_client_key_and_csr(system_uuid)
    }

    fn create_dir(&self, key_pem: &str) -> Result<String, IdentityError> {
        self.dirs.create(key_pem)
    }

    fn remove_dir(&self, name: &str) -> Result<(), IdentityError> {
        self.dirs.remove(name)
    }

    fn write_key(&self, dir: &str, generation: u64, key_pem: &str) -> Result<(), IdentityError> {
        self.dirs.open(dir)?.write_key(generation, key_pem)
    }

    fn read_key(&self, dir: &str, generation: u64) -> Result<String, IdentityError> {
        self.dirs.open(dir)?.key_of(generation)
    }
}
