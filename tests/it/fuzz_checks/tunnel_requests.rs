//! The tunnel server's request parsing (`tunnel::conn` collecting heads, `tunnel::exchange`
//! routing them and framing their bodies), end to end: the input is the plaintext a paired
//! source sends on one mutual-TLS connection to a real `tunnel::Server` on loopback (test
//! routes, a verified client certificate), after which the client closes its side. What
//! comes back must be exactly the responses a model of the documented rules predicts: the
//! model walks the input with `wire::http`'s head rules (fuzzed against their own model by
//! `http_head`) and `wire::chunked` (fuzzed by `chunked`), and says for each request its
//! status (400/411/417 for the head, 431 past `max_head_bytes`, 404, 405 with `Allow`, 413
//! past a capped route's cap, 400 for a body cut short) or its handler's answer (the body
//! echoed, its length counted), `100 Continue` where the client asked, and where the
//! connection ends (after an error, `Connection: close`, HTTP/1.0, or a head cut short:
//! silently). Every error is the documented body, its `code` the status; nothing follows
//! the last response. A panic in the server shows as a response missing.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use replgate::ca::{self, Ca};
use replgate::listener::{self, Endpoint, Listener};
use replgate::store::StoreError;
use replgate::tls::{self, RevocationCheck, ServerCertSlot};
use replgate::tunnel::{self, BodyLimit, Call, Reply, Revocations, Route, Server, TunnelHttpError};
use replgate::wire::chunked::ChunkedReader;
use replgate::wire::http::{self, BodyFraming};
use serde_json::{json, Value};

/// The server's limits: small, so the fuzzer reaches them.
const MAX_HEAD: usize = 512;
const ECHO_CAP: u64 = 64;

/// Nothing is revoked here.
#[derive(Debug)]
struct NoneRevoked;

impl Revocations for NoneRevoked {
    fn generation(&self) -> u64 {
        0
    }
    fn is_revoked(&self, _: &str) -> Result<bool, StoreError> {
        Ok(false)
    }
}

impl RevocationCheck for NoneRevoked {
    fn is_revoked(&self, _: &str) -> bool {
        false
    }
}

fn routes() -> Vec<Route<()>> {
    vec![
        Route::new("GET", "/t/who", BodyLimit::Capped(0), who),
        Route::new("POST", "/t/echo", BodyLimit::Capped(ECHO_CAP), echo),
        Route::new("PUT", "/t/echo", BodyLimit::Capped(ECHO_CAP), echo),
        Route::new("POST", "/t/sink", BodyLimit::Stream, sink),
        Route::new("GET", "/t/item/{id}", BodyLimit::Capped(0), item),
    ]
}

fn who(_: &(), call: &mut Call<'_>) -> Result<Reply, TunnelHttpError> {
    Ok(Reply::json(200, &json!({ "serial": call.peer().serial })))
}

fn echo(_: &(), call: &mut Call<'_>) -> Result<Reply, TunnelHttpError> {
    Ok(Reply::bytes(
        200,
        "application/octet-stream",
        call.bytes().to_vec(),
    ))
}

fn sink(_: &(), call: &mut Call<'_>) -> Result<Reply, TunnelHttpError> {
    let mut total = 0u64;
    let mut buf = [0u8; 4096];
    loop {
        match call.body().read(&mut buf) {
            Ok(0) => break,
            Ok(n) => total += n as u64,
            Err(e) => return Err(TunnelHttpError::BadRequest(format!("body: {e}"))),
        }
    }
    Ok(Reply::json(200, &json!({ "bytes": total })))
}

fn item(_: &(), call: &mut Call<'_>) -> Result<Reply, TunnelHttpError> {
    Ok(Reply::json(200, &json!({ "id": call.param(0) })))
}

struct World {
    addr: SocketAddr,
    client: Arc<rustls::ClientConfig>,
    serial: String,
    listener: Listener,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let now = time::OffsetDateTime::now_utc();
        let ca = Ca::generate("fuzz tunnel ca", now).expect("ca");
        let day = Duration::from_secs(86_400);
        let server = ca
            .issue_server_cert(&[], &[Ipv4Addr::LOCALHOST.into()], day, now)
            .expect("server certificate");
        let slot = ServerCertSlot::new(
            &format!("{}{}", server.cert_pem, ca.cert_pem()),
            &server.key_pem,
        )
        .expect("slot");
        let uuid = "00000000-0000-4000-8000-00000000f022";
        let (key_pem, csr_pem) = ca::generate_client_key_and_csr(uuid).expect("csr");
        let csr = ca::parse_csr(&csr_pem).expect("parse csr");
        let issued = ca.sign_client(&csr, uuid, day, now).expect("sign");
        let revocations = Arc::new(NoneRevoked);
        let trust = tls::ClientTrust::new(vec![ca.cert_der()]).expect("client trust");
        let tls =
            tls::tunnel_server_config(slot, trust, revocations.clone()).expect("tunnel config");
        let socket = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let limits = tunnel::Limits {
            connections: listener::Limits {
                max_connections: 64,
                max_connections_per_address: 64,
                handshake_timeout: Duration::from_secs(10),
            },
            idle_timeout: Duration::from_secs(10),
            head_timeout: Duration::from_secs(10),
            max_head_bytes: MAX_HEAD,
        };
        let endpoint = Endpoint {
            name: "fuzz-tunnel".into(),
            socket,
            tls,
            shutdown: Arc::new(AtomicBool::new(false)),
        };
        let server = Server {
            state: (),
            routes: routes(),
            limits,
            revocations,
        };
        let listener = tunnel::spawn(endpoint, server).expect("spawn the tunnel");
        let client = tls::pinned_client_config(
            vec![ca.cert_der()],
            Some((issued.cert_pem.as_str(), key_pem.as_str())),
        )
        .expect("client config");
        World {
            addr: listener.local_addr(),
            client,
            serial: issued.serial,
            listener,
        }
    })
}

/// Sends `input` on a fresh connection, closes the sending side, and returns everything
/// the server sent until it closed.
fn exchange(w: &World, input: &[u8]) -> Vec<u8> {
    let sock = TcpStream::connect(w.addr).expect("connect to the tunnel");
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let name = rustls::pki_types::ServerName::IpAddress(w.addr.ip().into());
    let conn = rustls::ClientConnection::new(w.client.clone(), name).expect("client");
    let mut tls = rustls::StreamOwned::new(conn, sock);
    while tls.conn.is_handshaking() {
        tls.conn
            .complete_io(&mut tls.sock)
            .expect("the tunnel handshake");
    }
    // The server may stop reading (after a refusal) while this side still writes.
    let _ = tls.write_all(input);
    tls.conn.send_close_notify();
    let _ = tls.flush();
    // And the TCP end too: a server lingering after a refusal sees it at once.
    let _ = tls.sock.shutdown(std::net::Shutdown::Write);
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match tls.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::UnexpectedEof
                        | io::ErrorKind::ConnectionReset
                        // A read may first flush what rustls still holds (the close_notify)
                        // to a server that already closed: what it answered is in `out`,
                        // which the model checks whole.
                        | io::ErrorKind::BrokenPipe
                ) =>
            {
                break
            }
            Err(e) => panic!("reading the tunnel's answer: {e}"),
        }
    }
    out
}

/// What the model expects for one request.
#[derive(Debug, PartialEq, Eq)]
enum Expected {
    /// A handler's answer: status and exact body.
    Ok { body: Vec<u8>, head_only: bool },
    /// The documented error body with this status; `allow` for a 405.
    Error { status: u16, allow: Option<String> },
}

/// The model: what the server must answer to `input`, request by request, and whether a
/// `100 Continue` precedes each.
fn model(input: &[u8], serial: &str) -> Vec<(bool, Expected)> {
    let routes = routes();
    let mut out = Vec::new();
    let mut rest = input;
    loop {
        if rest.is_empty() {
            return out;
        }
        let window = &rest[..rest.len().min(MAX_HEAD)];
        let Some(end) = http::request_head_end(window, 0) else {
            if rest.len() >= MAX_HEAD {
                out.push((false, error(431)));
            }
            // A head cut short by the end of input: closed without a word.
            return out;
        };
        let head = match http::parse(&window[..end]) {
            Ok(head) => head,
            Err(e) => {
                out.push((false, error(e.status())));
                return out;
            }
        };
        let after = &rest[end..];
        let path = head.target.split('?').next().unwrap_or("");
        let method = if head.method == "HEAD" {
            "GET"
        } else {
            head.method
        };
        let matching: Vec<&Route<()>> = routes
            .iter()
            .filter(|r| pattern_matches(r.path, path))
            .collect();
        let Some(route) = matching.iter().find(|r| r.method == method) else {
            if matching.is_empty() {
                out.push((false, error(404)));
            } else {
                let mut allow: Vec<&str> = matching.iter().map(|r| r.method).collect();
                if allow.contains(&"GET") {
                    allow.push("HEAD");
                }
                out.push((
                    false,
                    Expected::Error {
                        status: 405,
                        allow: Some(allow.join(", ")),
                    },
                ));
            }
            return out;
        };
        let announced_body = !matches!(head.body, BodyFraming::Length(0));
        // The body as framed: Ok(bytes, consumed) or the status of the failure.
        let framed: Result<(Vec<u8>, usize), u16> = match head.body {
            BodyFraming::Length(n) => {
                if let BodyLimit::Capped(cap) = route.body {
                    if n > cap {
                        out.push((false, error(413)));
                        return out;
                    }
                }
                match usize::try_from(n).ok().filter(|&n| n <= after.len()) {
                    Some(n) => Ok((after[..n].to_vec(), n)),
                    None => Err(400),
                }
            }
            BodyFraming::Chunked => {
                let mut reader = ChunkedReader::new(after);
                let mut body = Vec::new();
                let cap = match route.body {
                    BodyLimit::Capped(cap) => cap,
                    _ => u64::MAX,
                };
                match (&mut reader)
                    .take(cap.saturating_add(1))
                    .read_to_end(&mut body)
                {
                    Ok(_) if body.len() as u64 > cap => {
                        out.push((head.expect_continue, error(413)));
                        return out;
                    }
                    Ok(_) if reader.is_done() => {
                        let consumed = after.len() - reader.get_mut().len();
                        Ok((body, consumed))
                    }
                    Ok(_) | Err(_) => Err(400),
                }
            }
        };
        let continued = head.expect_continue && announced_body;
        let (body, consumed) = match framed {
            Ok(framed) => framed,
            Err(status) => {
                out.push((continued, error(status)));
                return out;
            }
        };
        let head_only = head.method == "HEAD";
        let answer = match route.path {
            "/t/who" => json!({ "serial": serial }).to_string().into_bytes(),
            "/t/echo" => body.clone(),
            "/t/sink" => json!({ "bytes": body.len() }).to_string().into_bytes(),
            _ => {
                let id = path.rsplit('/').next().unwrap_or("");
                json!({ "id": id }).to_string().into_bytes()
            }
        };
        out.push((
            continued,
            Expected::Ok {
                body: answer,
                head_only,
            },
        ));
        if !head.keep_alive {
            return out;
        }
        rest = &after[consumed..];
    }
}

fn error(status: u16) -> Expected {
    Expected::Error {
        status,
        allow: None,
    }
}

/// `/`-separated segments, `{name}` one non-empty segment (the documented route rule).
fn pattern_matches(pattern: &str, path: &str) -> bool {
    let (want, got): (Vec<&str>, Vec<&str>) =
        (pattern.split('/').collect(), path.split('/').collect());
    want.len() == got.len()
        && want.iter().zip(&got).all(|(w, g)| {
            if w.starts_with('{') {
                !g.is_empty()
            } else {
                w == g
            }
        })
}

/// One response read from `out` at `at`: status, headers, body; `head_only` leaves the
/// body out. Panics on anything but a well-formed HTTP/1.1 response.
fn response(out: &[u8], at: &mut usize, head_only: bool) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let rest = &out[*at..];
    let end = http::find_end(rest, 0).unwrap_or_else(|| {
        panic!(
            "a response head cut short: {:?}",
            String::from_utf8_lossy(rest)
        )
    });
    let head = std::str::from_utf8(&rest[..end]).expect("an ASCII response head");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status: u16 = status_line
        .strip_prefix("HTTP/1.1 ")
        .and_then(|s| s.get(..3))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (k, v) = l.split_once(':').unwrap_or_else(|| panic!("header {l:?}"));
            (k.to_ascii_lowercase(), v.trim().to_string())
        })
        .collect();
    *at += end;
    if status == 100 {
        return (status, headers, Vec::new());
    }
    let length: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or_else(|| panic!("no Content-Length in {head:?}"));
    if head_only {
        return (status, headers, Vec::new());
    }
    let body = out
        .get(*at..*at + length)
        .unwrap_or_else(|| panic!("a body of {length} bytes cut short"))
        .to_vec();
    *at += length;
    (status, headers, body)
}

/// One input: panics when a property fails.
pub fn run(input: &[u8]) {
    let w = world();
    let out = exchange(w, input);
    let expected = model(input, &w.serial);
    let mut at = 0;
    for (i, (continued, want)) in expected.iter().enumerate() {
        let head_only = matches!(
            want,
            Expected::Ok {
                head_only: true,
                ..
            }
        );
        // The documented rule: `100 Continue` goes out on the first read of a body the
        // client waits to send, and never otherwise.
        let (mut status, mut headers, mut body) = response(&out, &mut at, head_only);
        assert_eq!(
            status == 100,
            *continued,
            "request {i}: 100 Continue sent: {}, owed: {continued}",
            status == 100
        );
        if status == 100 {
            (status, headers, body) = response(&out, &mut at, head_only);
        }
        match want {
            Expected::Ok { body: want, .. } => {
                assert_eq!(
                    status,
                    200,
                    "request {i}: {:?}",
                    String::from_utf8_lossy(&body)
                );
                if !head_only {
                    assert_eq!(
                        body,
                        *want,
                        "request {i}: the handler's answer, {:?}",
                        String::from_utf8_lossy(&body)
                    );
                }
            }
            Expected::Error {
                status: want,
                allow,
            } => {
                assert_eq!(
                    status,
                    *want,
                    "request {i}: {:?}",
                    String::from_utf8_lossy(&body)
                );
                let v: Value = serde_json::from_slice(&body).expect("the documented error body");
                assert_eq!(v["result"][0]["code"], *want, "{v}");
                assert!(v["result"][0]["message"].is_string(), "{v}");
                if let Some(allow) = allow {
                    let got = headers.iter().find(|(k, _)| k == "allow").map(|(_, v)| v);
                    assert_eq!(got, Some(allow), "request {i}: Allow");
                }
            }
        }
    }
    assert!(
        out.len() == at,
        "bytes after the last response the model expects ({:?}): {:?}",
        expected,
        String::from_utf8_lossy(&out)
    );
    // The client is gone: its connection's thread ends (no input leaves one behind).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while w.listener.active_connections() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "a connection outlived its client by 10 s"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}
