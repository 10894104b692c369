//! `bench_client`: the load generator behind the `bench/*.sh` scripts. It speaks HTTPS/1.1
//! with keep-alive to one running replgate (trusting only that daemon's `ca.pem`), files
//! pairing requests with freshly generated P-256 CSRs, accepts them, pages the pending
//! list, and holds many idle connections open. It measures latency as a client sees it
//! and prints `key=value` lines for the scripts to pick up. Never asserts timings.
//!
//! Built with `cargo build --release --example bench_client`; run it without arguments
//! for the usage.

use std::io::{self, BufRead, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{json, Value};

const USAGE: &str = "\
usage: bench_client <command> --api HOST:PORT --ca CA.pem [options]

commands:
  file     --count N [--threads T] [--out FILE]
           file N pairing requests (one fresh P-256 key each); FILE gets one line
           `<request_id> <spool token>` per request
  accept   --password P --ids FILE [--threads T]
           accept every request in FILE (its first column), T at a time
  pending  --password P [--rounds R] [--limit L]
           time GET /api/replication/pending: R full lists, or with --limit, R walks
           through all pages of L
  hold     --conns N [--path PATH]
           open N connections, one GET PATH on each (keep-alive), print `ready`, wait
           for a line on stdin, close them all, print `closed`

every command prints key=value lines; latencies are in microseconds.";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(command) = args.first() else {
        eprintln!("{USAGE}");
        std::process::exit(2);
    };
    let opts = Opts::parse(&args[1..]).unwrap_or_else(|e| {
        eprintln!("bench_client: {e}\n\n{USAGE}");
        std::process::exit(2);
    });
    let result = match command.as_str() {
        "file" => file(&opts),
        "accept" => accept(&opts),
        "pending" => pending(&opts),
        "hold" => hold(&opts),
        other => Err(format!("unknown command {other}")),
    };
    if let Err(e) = result {
        eprintln!("bench_client {command}: {e}");
        std::process::exit(1);
    }
}

struct Opts {
    api: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    count: usize,
    threads: usize,
    out: Option<PathBuf>,
    ids: Option<PathBuf>,
    password: String,
    rounds: usize,
    limit: Option<usize>,
    conns: usize,
    path: String,
}

impl Opts {
    fn parse(args: &[String]) -> Result<Opts, String> {
        let mut api = None;
        let mut ca = None;
        let mut opts = Opts {
            api: SocketAddr::from(([127, 0, 0, 1], 8443)),
            config: Arc::new(
                rustls::ClientConfig::builder_with_provider(provider())
                    .with_safe_default_protocol_versions()
                    .map_err(|e| e.to_string())?
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth(),
            ),
            count: 1,
            threads: 1,
            out: None,
            ids: None,
            password: String::new(),
            rounds: 10,
            limit: None,
            conns: 256,
            path: "/api/health".into(),
        };
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let value = it
                .next()
                .ok_or_else(|| format!("{flag} needs a value"))?
                .clone();
            let number = || {
                value
                    .parse::<usize>()
                    .map_err(|_| format!("{flag}: not a number: {value}"))
            };
            match flag.as_str() {
                "--api" => api = Some(value.parse().map_err(|_| format!("--api {value}"))?),
                "--ca" => ca = Some(PathBuf::from(&value)),
                "--count" => opts.count = number()?,
                "--threads" => opts.threads = number()?.max(1),
                "--out" => opts.out = Some(PathBuf::from(&value)),
                "--ids" => opts.ids = Some(PathBuf::from(&value)),
                "--password" => opts.password = value,
                "--rounds" => opts.rounds = number()?.max(1),
                "--limit" => opts.limit = Some(number()?.max(1)),
                "--conns" => opts.conns = number()?,
                "--path" => opts.path = value,
                _ => return Err(format!("unknown option {flag}")),
            }
        }
        opts.api = api.ok_or("--api is required")?;
        let ca = ca.ok_or("--ca is required")?;
        let pem = std::fs::read(&ca).map_err(|e| format!("{}: {e}", ca.display()))?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&pem) {
            roots
                .add(cert.map_err(|e| format!("{}: {e}", ca.display()))?)
                .map_err(|e| format!("{}: {e}", ca.display()))?;
        }
        opts.config = Arc::new(
            rustls::ClientConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .with_root_certificates(roots)
                .with_no_client_auth(),
        );
        Ok(opts)
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// One keep-alive HTTPS connection.
struct Conn {
    tls: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
    host: String,
    buf: Vec<u8>,
}

struct Response {
    status: u16,
    body: Vec<u8>,
}

impl Response {
    fn json(&self) -> Result<Value, String> {
        serde_json::from_slice(&self.body).map_err(|e| {
            format!(
                "status {}: not JSON ({e}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

impl Conn {
    fn open(opts: &Opts) -> Result<Conn, String> {
        let tcp = TcpStream::connect_timeout(&opts.api, Duration::from_secs(5))
            .map_err(|e| format!("connect {}: {e}", opts.api))?;
        // Bounds every wait, so a stuck daemon fails the run instead of hanging it.
        tcp.set_read_timeout(Some(Duration::from_secs(60)))
            .map_err(|e| e.to_string())?;
        tcp.set_nodelay(true).map_err(|e| e.to_string())?;
        let name = ServerName::IpAddress(opts.api.ip().into());
        let conn =
            rustls::ClientConnection::new(opts.config.clone(), name).map_err(|e| e.to_string())?;
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        while tls.conn.is_handshaking() {
            tls.conn
                .complete_io(&mut tls.sock)
                .map_err(|e| format!("tls handshake: {e}"))?;
        }
        Ok(Conn {
            tls,
            host: opts.api.to_string(),
            buf: Vec::new(),
        })
    }

    fn request(
        &mut self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Result<Response, String> {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\n",
            self.host,
            body.len()
        );
        if !body.is_empty() {
            head.push_str("Content-Type: application/json\r\n");
        }
        if let Some(t) = token {
            head.push_str(&format!("AuthToken: {t}\r\n"));
        }
        head.push_str("\r\n");
        head.push_str(&body);
        self.tls
            .write_all(head.as_bytes())
            .and_then(|()| self.tls.flush())
            .map_err(|e| format!("{method} {path}: send: {e}"))?;
        self.read_response()
            .map_err(|e| format!("{method} {path}: {e}"))
    }

    fn read_response(&mut self) -> Result<Response, String> {
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i + 4;
            }
            self.fill()?;
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or("response without a status")?;
        let header = |name: &str| {
            head.split("\r\n")
                .filter_map(|l| l.split_once(':'))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
                .map(|(_, v)| v.trim().to_ascii_lowercase())
        };
        if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            self.buf.drain(..head_end);
            let body = self.read_chunked()?;
            return Ok(Response { status, body });
        }
        let length = header("content-length")
            .and_then(|v| v.parse::<usize>().ok())
            .ok_or("response without Content-Length or chunked encoding")?;
        while self.buf.len() < head_end + length {
            self.fill()?;
        }
        let body = self.buf[head_end..head_end + length].to_vec();
        self.buf.drain(..head_end + length);
        Ok(Response { status, body })
    }

    /// A chunked body (tiny_http sends large answers that way), trailers ignored.
    fn read_chunked(&mut self) -> Result<Vec<u8>, String> {
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(i) = find(&self.buf, b"\r\n") {
                    break i;
                }
                self.fill()?;
            };
            let line = String::from_utf8_lossy(&self.buf[..line_end]).into_owned();
            let size_hex = line.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size_hex, 16)
                .map_err(|_| format!("bad chunk size line {line:?}"))?;
            self.buf.drain(..line_end + 2);
            if size == 0 {
                // Trailers (none expected) end with an empty line.
                loop {
                    if let Some(i) = find(&self.buf, b"\r\n") {
                        self.buf.drain(..i + 2);
                        if i == 0 {
                            return Ok(body);
                        }
                        continue;
                    }
                    self.fill()?;
                }
            }
            while self.buf.len() < size + 2 {
                self.fill()?;
            }
            body.extend_from_slice(&self.buf[..size]);
            self.buf.drain(..size + 2);
        }
    }

    fn fill(&mut self) -> Result<(), String> {
        let mut chunk = [0u8; 16 * 1024];
        match self.tls.read(&mut chunk) {
            Ok(0) => Err("connection closed mid-response".into()),
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(())
            }
            Err(e) => Err(format!("read: {e}")),
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Latency summary of one phase, printed as `<prefix>_<stat>=<value>` lines.
fn report(prefix: &str, mut micros: Vec<u64>, wall: Duration) {
    micros.sort_unstable();
    let n = micros.len();
    let pct = |q: f64| -> u64 {
        if n == 0 {
            return 0;
        }
        let rank = ((q * n as f64).ceil() as usize).clamp(1, n);
        micros[rank - 1]
    };
    println!("{prefix}_n={n}");
    println!("{prefix}_p50_us={}", pct(0.50));
    println!("{prefix}_p99_us={}", pct(0.99));
    println!("{prefix}_max_us={}", micros.last().copied().unwrap_or(0));
    println!("{prefix}_wall_ms={}", wall.as_millis());
    let rate = if wall.is_zero() {
        0.0
    } else {
        n as f64 / wall.as_secs_f64()
    };
    println!("{prefix}_per_s={rate:.1}");
}

/// Runs `work(thread index, item)` over `items` on `threads` threads, each with its own
/// connection, and returns every item's latency.
fn fan_out<T: Sync>(
    opts: &Opts,
    items: &[T],
    threads: usize,
    work: impl Fn(&mut Conn, &T) -> Result<(), String> + Sync,
) -> Result<(Vec<u64>, Duration), String> {
    let next = AtomicUsize::new(0);
    let start = Instant::now();
    let results: Vec<Result<Vec<u64>, String>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads.min(items.len()).max(1))
            .map(|_| {
                s.spawn(|| {
                    let mut conn = Conn::open(opts)?;
                    let mut lat = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(item) = items.get(i) else {
                            return Ok(lat);
                        };
                        let t = Instant::now();
                        work(&mut conn, item)?;
                        lat.push(t.elapsed().as_micros() as u64);
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("worker panicked".into())))
            .collect()
    });
    let wall = start.elapsed();
    let mut all = Vec::new();
    for r in results {
        all.extend(r?);
    }
    Ok((all, wall))
}

fn random_uuid() -> String {
    let mut b = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
        .expect("system random source");
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn csr_pem() -> Result<String, String> {
    let key =
        rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| e.to_string())?;
    rcgen::CertificateParams::new(Vec::<String>::new())
        .and_then(|p| p.serialize_request(&key))
        .and_then(|csr| csr.pem())
        .map_err(|e| e.to_string())
}

fn file(opts: &Opts) -> Result<(), String> {
    // Keys and CSRs are made before the clock starts: the figure is the daemon's.
    let bodies: Vec<Value> = (0..opts.count)
        .map(|i| {
            let uuid = random_uuid();
            Ok(json!({
                "system_uuid": uuid,
                "name": format!("bench-source-{i}"),
                "host": format!("source-{i}.bench.example"),
                "asset_tag": format!("BENCH-{i:06}"),
                "version": "1.0",
                "csr": csr_pem()?,
            }))
        })
        .collect::<Result<_, String>>()?;
    let filed = std::sync::Mutex::new(Vec::new());
    let (lat, wall) = fan_out(opts, &bodies, opts.threads, |conn, body| {
        let r = conn.request("POST", "/replication/v1/requests", None, Some(body))?;
        if r.status != 202 {
            return Err(format!(
                "file request: status {}: {}",
                r.status,
                String::from_utf8_lossy(&r.body)
            ));
        }
        let v = r.json()?;
        let id = v["request_id"].as_u64().ok_or("no request_id")?;
        let poll = v["poll"].as_str().ok_or("no poll")?;
        let token = poll
            .trim_end_matches('/')
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_string();
        filed.lock().map_err(|_| "poisoned")?.push((id, token));
        Ok(())
    })?;
    let mut filed = filed.into_inner().map_err(|_| "poisoned")?;
    filed.sort();
    if let Some(out) = &opts.out {
        let text: String = filed.iter().map(|(i, t)| format!("{i} {t}\n")).collect();
        // A scratch list for the bench scripts, not appliance state (clippy.toml).
        #[allow(clippy::disallowed_methods)]
        let written = std::fs::write(out, text);
        written.map_err(|e| format!("{}: {e}", out.display()))?;
    }
    report("file", lat, wall);
    Ok(())
}

fn login(opts: &Opts) -> Result<String, String> {
    let mut conn = Conn::open(opts)?;
    let r = conn.request(
        "POST",
        "/api/login",
        None,
        Some(&json!({"username": "root", "password": opts.password})),
    )?;
    let v = r.json()?;
    v["auth_token"]
        .as_str()
        .map(String::from)
        .ok_or_else(|| format!("login: status {}: {v}", r.status))
}

fn accept(opts: &Opts) -> Result<(), String> {
    let path = opts.ids.as_ref().ok_or("--ids is required")?;
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let ids: Vec<u64> = text
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(|s| {
            s.parse()
                .map_err(|_| format!("{}: bad id {s}", path.display()))
        })
        .collect::<Result<_, String>>()?;
    let token = login(opts)?;
    let (lat, wall) = fan_out(opts, &ids, opts.threads, |conn, id| {
        let body = json!({"request_id": id, "accept": true});
        let r = conn.request("POST", "/api/replication/source", Some(&token), Some(&body))?;
        if r.status != 201 {
            return Err(format!(
                "accept {id}: status {}: {}",
                r.status,
                String::from_utf8_lossy(&r.body)
            ));
        }
        Ok(())
    })?;
    report("accept", lat, wall);
    Ok(())
}

fn pending(opts: &Opts) -> Result<(), String> {
    let token = login(opts)?;
    let mut conn = Conn::open(opts)?;
    let mut lat = Vec::new();
    let mut listed = 0;
    let mut pages = 0;
    let mut bytes = 0;
    let start = Instant::now();
    for _ in 0..opts.rounds {
        let mut after = 0;
        listed = 0;
        pages = 0;
        loop {
            let path = match opts.limit {
                Some(limit) => format!("/api/replication/pending?limit={limit}&after={after}"),
                None => "/api/replication/pending".to_string(),
            };
            let t = Instant::now();
            let r = conn.request("GET", &path, Some(&token), None)?;
            lat.push(t.elapsed().as_micros() as u64);
            if r.status != 200 {
                return Err(format!("{path}: status {}", r.status));
            }
            bytes = bytes.max(r.body.len());
            let v = r.json()?;
            let page = v["pending"].as_array().ok_or("no `pending` array")?;
            pages += 1;
            listed += page.len();
            match (opts.limit, page.last()) {
                (Some(_), Some(last)) => {
                    after = last["request_id"].as_u64().ok_or("no request_id")?;
                }
                _ => break,
            }
        }
    }
    println!("pending_listed={listed}");
    println!("pending_pages_per_walk={pages}");
    println!("pending_largest_page_bytes={bytes}");
    report("pending", lat, start.elapsed());
    Ok(())
}

fn hold(opts: &Opts) -> Result<(), String> {
    let mut conns = Vec::with_capacity(opts.conns);
    for i in 0..opts.conns {
        let mut c = Conn::open(opts).map_err(|e| format!("connection {i}: {e}"))?;
        let r = c.request("GET", &opts.path, None, None)?;
        if r.status != 200 {
            return Err(format!(
                "connection {i}: {}: status {}",
                opts.path, r.status
            ));
        }
        conns.push(c);
    }
    println!("ready {}", conns.len());
    io::stdout().flush().map_err(|e| e.to_string())?;
    let mut line = String::new();
    io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    for mut c in conns {
        c.tls.conn.send_close_notify();
        let _ = c.tls.conn.complete_io(&mut c.tls.sock);
    }
    println!("closed");
    Ok(())
}
