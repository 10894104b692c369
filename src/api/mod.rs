//! The tiny_http side: worker threads take requests that the TLS front relayed, look up the
//! real peer in the front's table, dispatch through the route table and write the reply.
//! Handlers are thin: parse, authorize (declared per route), call the domain, map the result.

pub mod body;
mod ca;
pub mod console;
pub mod error;
mod pairing;
mod pending;
mod recycle;
mod replication;
mod restore;
mod routes;
mod source;
mod spool_files;
mod storage;
mod system;
mod systems;
mod tokens;
mod users;

use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::Value;

pub use routes::{dispatch, match_path, route_path, route_table, Access, Incoming, Route};
pub use spool_files::{spool_segments, SpoolAnswerer};
pub use system::{ExpiryLines, ReceiveLines};
pub use systems::SystemRows;

use crate::auth::{Authenticator, Session};
use crate::ca::{Authority, CaSet};
use crate::config::Config;
use crate::front::{PeerInfo, PeerTable};
use crate::identity::TargetDirs;
use crate::model::UnixTime;
use crate::pairing::source::request::Outgoing;
use crate::pairing::Actor;
use crate::spool::Spool;
use crate::store::Store;
use crate::tls::{ClientTrust, ServerCertSlot};
use body::Body;
use error::ApiError;

/// Everything a handler may use, built once by the daemon.
pub struct App {
    pub config: Config,
    /// The CAs in force (replaced by each phase of a CA rollover, [`App::apply_cas`]).
    pub cas: Arc<Authority>,
    /// The tunnel's trusted CAs, kept in step with `cas`.
    pub client_trust: Arc<ClientTrust>,
    pub spool: Spool,
    pub store: Store,
    pub auth: Authenticator,
    pub peers: Arc<PeerTable>,
    pub system_uuid: String,
    /// One directory per pairing with a target.
    pub target_dirs: TargetDirs,
    /// The requests to targets in flight (at most a few at once).
    pub outgoing: Outgoing,
    /// The appliance's first start, recorded once in the database.
    pub first_start: UnixTime,
    /// This process's start.
    pub started: UnixTime,
    /// Replication's live state: progress, settings in force, the verify job's queue.
    pub replication: Arc<crate::replication::Shared>,
    /// The listeners' server certificates as they present them now (renewed while
    /// running), for the expiry warnings.
    pub api_cert: Arc<ServerCertSlot>,
    pub tunnel_cert: Arc<ServerCertSlot>,
    /// The store's rows the certificate expiries and the rollover's status are read from,
    /// kept between changes: health and metrics read them on every call.
    pub certified: crate::lifecycle::CertCache,
    /// The pairing requests counted by status for the metrics, with the store's request
    /// generation they were counted at.
    pub request_counts: std::sync::Mutex<Option<(u64, Vec<usize>)>>,
    /// The rows of the whole `GET /api/systems`, kept between the store's changes.
    pub system_rows: SystemRows,
    /// Each source's lines of the metrics' receiving families, kept while its values hold.
    pub receive_lines: ReceiveLines,
    /// The paired sources' certificate expiry lines of the metrics, kept with their rows.
    pub expiry_lines: ExpiryLines,
}

impl App {
    /// Every certificate this appliance depends on, as the listeners present them now
    /// (`lifecycle::expiries`): for the health warnings, the metrics and the log.
    pub fn certificates(&self) -> Result<Vec<crate::lifecycle::Expiry>, crate::store::StoreError> {
        let listeners = [
            ("api", self.api_cert.leaf()),
            ("tunnel", self.tunnel_cert.leaf()),
        ];
        let rows = self.certified.get(&self.store)?;
        Ok(crate::lifecycle::expiries(
            &rows,
            &self.cas.get(),
            &listeners,
        ))
    }

    /// The fingerprint of the CA in force: what sources pin and join lines carry.
    pub fn ca_fingerprint(&self) -> String {
        self.cas.get().fingerprint()
    }

    /// Puts `set` in place after a committed phase of a CA rollover: the tunnel trusts
    /// its CAs from the next handshake, and everything that reads the CAs sees it; the
    /// listeners' certificates and the spool follow within a tick of the maintenance
    /// job. The caller holds `Authority::changing`.
    pub fn apply_cas(&self, set: CaSet) {
        if let Err(e) = self.client_trust.replace(set.client_anchors()) {
            // Every anchor was a CA that loaded; a refusal here is a bug, and the tunnel
            // keeps the trust it had.
            log::error!(
                "the tunnel's trusted cas were not replaced: {}",
                crate::model::Chain(&e)
            );
        }
        self.cas.replace(set);
    }
}

/// One request as a handler sees it.
pub struct Call<'a> {
    pub app: &'a App,
    pub peer: &'a PeerInfo,
    pub now: UnixTime,
    /// Path parameters in pattern order, percent-decoded.
    pub params: Vec<String>,
    pub query: Vec<(String, String)>,
    pub body: &'a [u8],
    /// Set for routes with `Access::Token`.
    pub session: Option<Session>,
    pub if_none_match: Option<String>,
}

impl Call<'_> {
    /// The session of a token route. Invariant: the router sets it before calling any
    /// handler whose route requires a token, so the error branch is unreachable there.
    pub fn session(&self) -> Result<&Session, ApiError> {
        self.session
            .as_ref()
            .ok_or_else(|| ApiError::Unauthorized("missing, invalid or expired AuthToken".into()))
    }

    pub fn json(&self) -> Result<Body, ApiError> {
        Body::parse(self.body)
    }

    pub fn query(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// A query flag: present and not `0`/`false`.
    pub fn query_flag(&self, name: &str) -> Option<bool> {
        self.query(name).map(|v| !matches!(v, "0" | "false" | "no"))
    }

    pub fn param(&self, i: usize) -> &str {
        self.params.get(i).map(String::as_str).unwrap_or("")
    }

    /// The peer address for audit rows: the IP the TLS front saw.
    pub fn address(&self) -> String {
        self.peer.addr.ip().to_string()
    }

    pub fn user(&self) -> String {
        self.session
            .as_ref()
            .map(|s| s.user.clone())
            .unwrap_or_else(|| "-".into())
    }

    /// Who made the call, for audit rows: the session's user and the peer's address.
    pub fn actor(&self) -> Actor {
        Actor {
            user: self.user(),
            address: self.address(),
        }
    }
}

/// A successful answer.
pub struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
    pub content_type: &'static str,
    pub headers: Vec<(&'static str, String)>,
}

impl Reply {
    pub fn json(status: u16, value: Value) -> Reply {
        Reply {
            status,
            body: value.to_string().into_bytes(),
            content_type: "application/json",
            headers: Vec::new(),
        }
    }

    pub fn with_header(mut self, name: &'static str, value: String) -> Reply {
        self.headers.push((name, value));
        self
    }
}

/// A `{"<key>": [item, ...]}` answer written item by item while a list is read, so a long
/// list is never held as `serde_json::Value`s (see BENCHMARKS.md). The bytes equal the
/// same object serialized in one piece.
pub struct ListWriter {
    body: Vec<u8>,
    failed: Option<serde_json::Error>,
}

impl ListWriter {
    pub fn new(key: &str) -> ListWriter {
        ListWriter {
            body: format!("{{{}:[", Value::from(key)).into_bytes(),
            failed: None,
        }
    }

    /// Adds items already rendered and comma-separated (none if `items` is empty).
    pub fn push_joined(&mut self, items: &[u8]) {
        if items.is_empty() {
            return;
        }
        if self.body.last() != Some(&b'[') {
            self.body.push(b',');
        }
        self.body.extend_from_slice(items);
    }

    pub fn push(&mut self, item: &impl serde::Serialize) {
        if self.body.last() != Some(&b'[') {
            self.body.push(b',');
        }
        if let Err(e) = serde_json::to_writer(&mut self.body, item) {
            self.failed.get_or_insert(e);
        }
    }

    /// The 200 answer, or the first serialization error (a bug: a 500).
    pub fn finish(mut self) -> Result<Reply, ApiError> {
        if let Some(e) = self.failed {
            return Err(e.into());
        }
        self.body.extend_from_slice(b"]}");
        Ok(Reply {
            status: 200,
            body: self.body,
            content_type: "application/json",
            headers: Vec::new(),
        })
    }
}

pub type Handler = fn(&Call) -> Result<Reply, ApiError>;

/// Headers on every response, whichever path writes it (a worker, or the front through
/// [`SpoolAnswerer`]).
const COMMON_HEADERS: [(&str, &str); 2] = [
    ("Cache-Control", "no-store"),
    ("X-Content-Type-Options", "nosniff"),
];

/// Starts `n` worker threads serving `server` until `shutdown` is set and the queue is quiet.
pub fn spawn_workers(
    app: Arc<App>,
    server: Arc<tiny_http::Server>,
    n: usize,
    shutdown: Arc<AtomicBool>,
) -> std::io::Result<Vec<JoinHandle<()>>> {
    let routes: Arc<Vec<Route>> = Arc::new(route_table());
    (0..n)
        .map(|i| {
            let (app, server, shutdown, routes) = (
                app.clone(),
                server.clone(),
                shutdown.clone(),
                routes.clone(),
            );
            std::thread::Builder::new()
                .name(format!("api-worker-{i}"))
                .stack_size(512 * 1024)
                .spawn(move || loop {
                    match server.recv_timeout(Duration::from_millis(200)) {
                        Ok(Some(request)) => serve(&app, &routes, request),
                        Ok(None) => {
                            if shutdown.load(Ordering::SeqCst) {
                                return;
                            }
                        }
                        Err(e) => {
                            log::warn!("api worker: receive failed: {e}");
                            std::thread::sleep(Duration::from_millis(50));
                        }
                    }
                })
        })
        .collect()
}

fn read_body(request: &mut tiny_http::Request, cap: u64) -> Result<Vec<u8>, ApiError> {
    let mut body = Vec::new();
    request
        .as_reader()
        .take(cap + 1)
        .read_to_end(&mut body)
        .map_err(|e| ApiError::BadRequest(format!("request body could not be read: {e}")))?;
    if body.len() as u64 > cap {
        return Err(ApiError::TooLarge(format!(
            "request body exceeds the {cap}-byte limit"
        )));
    }
    Ok(body)
}

fn serve(app: &App, routes: &[Route], mut request: tiny_http::Request) {
    let now = crate::model::now();
    let method = request.method().as_str().to_string();
    let url = request.url().to_string();
    let peer = request.remote_addr().and_then(|a| app.peers.lookup(a));
    let result = match &peer {
        // A connection that did not come through the TLS front (someone reached the
        // internal loopback listener directly): refuse before reading anything.
        None => Err(ApiError::Forbidden(
            "requests must arrive through the TLS listener".into(),
        )),
        Some(peer) => match read_body(&mut request, app.config.max_body_bytes) {
            Err(e) => Err(e),
            Ok(body) => {
                let if_none_match = request
                    .headers()
                    .iter()
                    .find(|h| h.field.equiv("If-None-Match"))
                    .map(|h| h.value.as_str().to_string());
                let header = |name: &'static str| {
                    request
                        .headers()
                        .iter()
                        .find(|h| h.field.equiv(name))
                        .map(|h| h.value.as_str().trim().to_string())
                };
                // `Authorization: Bearer` is what Prometheus (and most tools) send.
                let token = header("AuthToken").or_else(|| {
                    header("Authorization")
                        .and_then(|v| v.strip_prefix("Bearer ").map(|t| t.trim().to_string()))
                });
                let browser = console::guard::Browser::from_headers(
                    request
                        .headers()
                        .iter()
                        .map(|h| (h.field.as_str().as_str(), h.value.as_str())),
                );
                let incoming = routes::Incoming {
                    peer,
                    now,
                    method: &method,
                    url: &url,
                    body: &body,
                    token,
                    browser,
                    if_none_match,
                };
                routes::dispatch(app, routes, incoming)
            }
        },
    };
    let (status, bytes, content_type, headers) = match result {
        Ok(reply) => (reply.status, reply.body, reply.content_type, reply.headers),
        Err(err) => {
            let (status, _) = err.status_and_code();
            let reference = crate::rand::hex_string(4);
            match &err {
                ApiError::Internal(cause) => log::error!(
                    "{method} {url}: {} (reference {reference})",
                    crate::model::Chain(cause.as_ref())
                ),
                _ => log::info!("{method} {url} -> {status}: {}", err.message(&reference)),
            }
            (
                status,
                err.body(&reference).into_bytes(),
                "application/json",
                err.headers(),
            )
        }
    };
    log::debug!("{method} {url} -> {status}");
    let mut response = tiny_http::Response::from_data(bytes).with_status_code(status);
    let mut add = |name: &str, value: &str| {
        if let Ok(h) = tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes()) {
            response.add_header(h);
        }
    };
    add("Content-Type", content_type);
    for (name, value) in COMMON_HEADERS {
        add(name, value);
    }
    for (name, value) in &headers {
        add(name, value);
    }
    if let Err(e) = request.respond(response) {
        log::debug!("{method} {url}: client went away: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_written_item_by_item_is_the_object_serialized_in_one_piece() {
        for items in [vec![], vec![json_item(1)], vec![json_item(1), json_item(2)]] {
            let mut list = ListWriter::new("rows");
            for i in &items {
                list.push(i);
            }
            let reply = list.finish().unwrap();
            let whole = serde_json::json!({ "rows": items }).to_string();
            assert_eq!(String::from_utf8(reply.body).unwrap(), whole);
        }
    }

    fn json_item(n: u64) -> Value {
        serde_json::json!({ "id": n, "name": "a \"b\"" })
    }
}
