//! Pairing a fleet of synthetic sources with one target as a provider would: one n-use
//! pairing token (SPEC 13), then per source a fresh P-256 key and CSR (the crate's own
//! `ca::generate_client_key_and_csr`, as a real source makes them), the request filed
//! with the token from the source's own loopback address (`POST /replication/v1/requests`,
//! the body a real source sends), `status.json` read until it says `accepted`, and the
//! certificate fetched from the spool. The identities are kept in a fleet file (one JSON
//! line per source), so a rerun against the same target skips all of it.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::ClientConfig;
use serde_json::{json, Value};

use super::net::{self, Conn};
use super::stats::lock;

/// One paired synthetic source.
#[derive(Clone, Debug)]
pub struct Identity {
    pub uuid: String,
    /// The spool path it polls: `/replication/v1/spool/<token>/`.
    pub poll: String,
    pub key_pem: String,
    pub cert_pem: String,
    /// The loopback address it connects from.
    pub addr: Ipv4Addr,
}

/// A paired fleet: the target's CA and tunnel address, and every source.
pub struct Fleet {
    pub ca_pem: String,
    pub tunnel: SocketAddr,
    pub sources: Vec<Identity>,
}

/// An admin's session on the target's API (keep-alive, from 127.0.0.1).
pub struct Admin {
    conn: Conn,
    config: Arc<ClientConfig>,
    api: SocketAddr,
    pub token: String,
}

impl Admin {
    pub fn login(ca_pem: &str, api: SocketAddr, password: &str) -> Result<Admin, String> {
        let config = net::source_config(ca_pem, None)?;
        let mut conn = Conn::open(&config, None, api).map_err(|e| e.to_string())?;
        let body = json!({"username": "root", "password": password}).to_string();
        let r = conn
            .request("POST", "/api/login", &[], Some(body.as_bytes()), false)
            .map_err(|e| e.to_string())?;
        let token = r.json()?["auth_token"]
            .as_str()
            .map(String::from)
            .ok_or_else(|| format!("login: status {}: {}", r.status, r.text()))?;
        Ok(Admin {
            conn,
            config,
            api,
            token,
        })
    }

    /// One call; reconnects once if the kept connection was closed meanwhile.
    pub fn call(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<net::Response, String> {
        let text = body.map(|b| b.to_string());
        let headers = [("AuthToken", self.token.as_str())];
        let first = self.conn.request(
            method,
            path,
            &headers,
            text.as_deref().map(str::as_bytes),
            false,
        );
        match first {
            Ok(r) => Ok(r),
            Err(_) => {
                self.conn = Conn::open(&self.config, None, self.api).map_err(|e| e.to_string())?;
                let headers = [("AuthToken", self.token.as_str())];
                self.conn
                    .request(
                        method,
                        path,
                        &headers,
                        text.as_deref().map(str::as_bytes),
                        false,
                    )
                    .map_err(|e| e.to_string())
            }
        }
    }

    /// Issues a pairing token for `uses` sources (with `extra` terms such as
    /// `storage_id`); returns its text.
    pub fn pairing_token(&mut self, uses: usize, extra: &Value) -> Result<String, String> {
        let mut body = json!({"uses": uses, "note": "fleet"});
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            b.extend(e.clone());
        }
        let r = self.call("POST", "/api/replication/tokens", Some(&body))?;
        if r.status != 201 {
            return Err(format!("token: status {}: {}", r.status, r.text()));
        }
        r.json()?["token"]
            .as_str()
            .map(String::from)
            .ok_or_else(|| "token: no `token` in the answer".into())
    }
}

/// Pairs source number `n` with `token`: files its request from its own address, reads
/// `status.json` and fetches its certificate. Returns it and the tunnel address.
pub fn pair_one(
    config: &Arc<ClientConfig>,
    api: SocketAddr,
    token: &str,
    n: usize,
) -> Result<(Identity, String), String> {
    let addr = net::source_addr(n);
    let uuid = replgate::rand::uuid_v4();
    let (key_pem, csr) =
        replgate::ca::generate_client_key_and_csr(&uuid).map_err(|e| format!("key: {e}"))?;
    let body = json!({
        "system_uuid": uuid,
        "name": format!("fleet-{n}"),
        "host": format!("fleet-{n}.bench.example"),
        "asset_tag": format!("FLEET-{n:06}"),
        "version": "1.0",
        "csr": csr,
        "token": token,
    })
    .to_string();
    let mut conn = Conn::open(config, Some(addr), api).map_err(|e| e.to_string())?;
    let r = conn
        .request(
            "POST",
            "/replication/v1/requests",
            &[],
            Some(body.as_bytes()),
            false,
        )
        .map_err(|e| e.to_string())?;
    if r.status != 202 && r.status != 200 {
        return Err(format!(
            "file request {n}: status {}: {}",
            r.status,
            r.text()
        ));
    }
    let poll = r.json()?["poll"]
        .as_str()
        .map(String::from)
        .ok_or("no `poll` in the answer")?;
    let mut tunnel = None;
    let deadline = Instant::now() + Duration::from_secs(60);
    while tunnel.is_none() {
        let r = conn
            .request("GET", &format!("{poll}status.json"), &[], None, false)
            .map_err(|e| e.to_string())?;
        let v = r.json()?;
        match v["status"].as_str() {
            Some("accepted") => tunnel = v["tunnel"].as_str().map(String::from),
            Some("pending") if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(200))
            }
            other => return Err(format!("source {n}: status {other:?}: {v}")),
        }
    }
    let r = conn
        .request("GET", &format!("{poll}certificate.pem"), &[], None, true)
        .map_err(|e| e.to_string())?;
    if r.status != 200 {
        return Err(format!("certificate {n}: status {}", r.status));
    }
    let cert_pem = r.text();
    conn.close();
    let tunnel = tunnel.ok_or("no tunnel address")?;
    Ok((
        Identity {
            uuid,
            poll,
            key_pem,
            cert_pem,
            addr,
        },
        tunnel,
    ))
}

/// What pairing a range of sources gave: the identities in order, the tunnel address the
/// target named, and when each pairing completed (seconds from the start, in order).
pub struct Paired {
    pub identities: Vec<Identity>,
    pub tunnel: String,
    pub times: Vec<f64>,
}

/// Pairs sources `range` with `token` on `threads` threads; prints progress to stderr.
pub fn pair_many(
    ca_pem: &str,
    api: SocketAddr,
    token: &str,
    range: std::ops::Range<usize>,
    threads: usize,
) -> Result<Paired, String> {
    let config = net::source_config(ca_pem, None)?;
    let next = AtomicUsize::new(range.start);
    let done = AtomicUsize::new(0);
    let out: Mutex<Vec<(usize, Identity)>> = Mutex::new(Vec::new());
    let tunnel: Mutex<Option<String>> = Mutex::new(None);
    let failure: Mutex<Option<String>> = Mutex::new(None);
    let times: Mutex<Vec<f64>> = Mutex::new(Vec::new());
    let start = Instant::now();
    let total = range.len();
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| loop {
                if lock(&failure).is_some() {
                    return;
                }
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= range.end {
                    return;
                }
                match pair_one(&config, api, token, n) {
                    Ok((id, t)) => {
                        lock(&out).push((n, id));
                        *lock(&tunnel) = Some(t);
                        lock(&times).push(start.elapsed().as_secs_f64());
                        let d = done.fetch_add(1, Ordering::Relaxed) + 1;
                        if d.is_multiple_of(500) || d == total {
                            eprintln!(
                                "fleet: paired {d}/{total} in {:.1} s",
                                start.elapsed().as_secs_f64()
                            );
                        }
                    }
                    Err(e) => {
                        *lock(&failure) = Some(e);
                        return;
                    }
                }
            });
        }
    });
    if let Some(e) = lock(&failure).take() {
        return Err(e);
    }
    let mut v = std::mem::take(&mut *lock(&out));
    v.sort_by_key(|(n, _)| *n);
    let tunnel = lock(&tunnel).clone().ok_or("nothing paired")?;
    let mut times = std::mem::take(&mut *lock(&times));
    times.sort_by(f64::total_cmp);
    Ok(Paired {
        identities: v.into_iter().map(|(_, id)| id).collect(),
        tunnel,
        times,
    })
}

impl Fleet {
    /// Reads a fleet file; None if it does not exist.
    pub fn load(path: &Path) -> Result<Option<Fleet>, String> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        let mut lines = text.lines();
        let head: Value = serde_json::from_str(lines.next().ok_or("empty fleet file")?)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let field = |v: &Value, k: &str| -> Result<String, String> {
            v[k].as_str()
                .map(String::from)
                .ok_or_else(|| format!("{}: no `{k}`", path.display()))
        };
        let tunnel = field(&head, "tunnel")?
            .parse()
            .map_err(|_| "fleet file: bad tunnel address")?;
        let mut sources = Vec::new();
        for line in lines {
            let v: Value =
                serde_json::from_str(line).map_err(|e| format!("{}: {e}", path.display()))?;
            sources.push(Identity {
                uuid: field(&v, "uuid")?,
                poll: field(&v, "poll")?,
                key_pem: field(&v, "key")?,
                cert_pem: field(&v, "cert")?,
                addr: field(&v, "addr")?
                    .parse()
                    .map_err(|_| "fleet file: bad address")?,
            });
        }
        Ok(Some(Fleet {
            ca_pem: field(&head, "ca")?,
            tunnel,
            sources,
        }))
    }

    /// Writes the fleet file (benchmark scratch, not appliance state).
    #[allow(clippy::disallowed_methods)]
    pub fn save(&self, path: &Path) -> Result<(), String> {
        let mut text = json!({"ca": self.ca_pem, "tunnel": self.tunnel.to_string()}).to_string();
        text.push('\n');
        for s in &self.sources {
            text.push_str(
                &json!({"uuid": s.uuid, "poll": s.poll, "key": s.key_pem, "cert": s.cert_pem,
                        "addr": s.addr.to_string()})
                .to_string(),
            );
            text.push('\n');
        }
        std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The tunnel config of source `i` (its certificate, the target's CA pinned).
    pub fn tunnel_config(&self, i: usize) -> Result<Arc<ClientConfig>, String> {
        let s = &self.sources[i];
        net::source_config(&self.ca_pem, Some((&s.cert_pem, &s.key_pem)))
    }
}
