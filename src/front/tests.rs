//! End-to-end tests of the front over real loopback sockets: a rustls client, the front,
//! and either tiny_http or a byte-recording backend behind it.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig};

use super::*;

/// Bound for any single wait in these tests, so a broken front fails instead of hanging.
const STUCK: Duration = Duration::from_secs(5);

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A throwaway self-signed server certificate, made once.
struct TestPki {
    server_cert: CertificateDer<'static>,
    server_key_der: Vec<u8>,
}

fn pki() -> &'static TestPki {
    static PKI: OnceLock<TestPki> = OnceLock::new();
    PKI.get_or_init(|| {
        let server = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
            .expect("test server certificate");

        TestPki {
            server_cert: server.cert.der().clone(),
            server_key_der: server.signing_key.serialize_der(),
        }
    })
}

fn server_key() -> PrivateKeyDer<'static> {
    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pki().server_key_der.clone()))
}

fn api_server_config() -> Arc<ServerConfig> {
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(vec![pki().server_cert.clone()], server_key())
        .expect("server config");
    Arc::new(config)
}

fn client_config() -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots
        .add(pki().server_cert.clone())
        .expect("trust the test certificate");
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots);
    Arc::new(builder.with_no_client_auth())
}

fn test_limits() -> Limits {
    Limits {
        connections: crate::listener::Limits {
            max_connections: 16,
            max_connections_per_address: 16,
            handshake_timeout: Duration::from_secs(2),
        },
        idle_timeout: Duration::from_secs(3),
        head_timeout: Duration::from_secs(2),
        max_head_bytes: 1024,
        max_body_bytes: 1000,
    }
}

/// A running front; dropping it shuts the front down.
struct Harness {
    front: Option<Listener>,
    shutdown: Arc<AtomicBool>,
    peers: Arc<PeerTable>,
    addr: SocketAddr,
}

impl Harness {
    fn start(limits: Limits, backend: SocketAddr, peers: Arc<PeerTable>) -> Self {
        Self::start_with(limits, backend, peers, api_server_config(), None)
    }

    fn start_with(
        limits: Limits,
        backend: SocketAddr,
        peers: Arc<PeerTable>,
        tls: Arc<ServerConfig>,
        local: Option<Arc<dyn LocalAnswer>>,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind front");
        let shutdown = Arc::new(AtomicBool::new(false));
        let endpoint = Endpoint {
            name: "test".to_owned(),
            socket: listener,
            tls,
            shutdown: Arc::clone(&shutdown),
        };
        let backend = Backend {
            addr: backend,
            peers: Arc::clone(&peers),
            local,
        };
        let front = spawn(endpoint, limits, backend).expect("spawn front");
        let addr = front.local_addr();
        Harness {
            front: Some(front),
            shutdown,
            peers,
            addr,
        }
    }

    fn front(&self) -> &Listener {
        self.front.as_ref().expect("front still running")
    }

    fn client(&self) -> Client {
        Client::connect(self.addr, client_config())
    }

    /// Waits until no connection is open and the peer table is empty again.
    fn wait_until_quiet(&self) {
        let deadline = Instant::now() + STUCK;
        while self.front().active_connections() > 0 || !self.peers.is_empty() {
            assert!(Instant::now() < deadline, "connections never closed");
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown.store(true, Ordering::Relaxed);
        if let Some(front) = self.front.take() {
            front.join(Duration::from_secs(1));
        }
    }
}

/// A blocking rustls client driven by hand, so that a test can keep reading while the
/// server refuses to read what the client still wants to write.
struct Client {
    tls: ClientConnection,
    sock: TcpStream,
    /// Plaintext received and not yet consumed by `response`.
    inbox: Vec<u8>,
}

#[derive(Debug)]
struct Response {
    status: u16,
    head: String,
    body: String,
}

impl Client {
    fn connect(addr: SocketAddr, config: Arc<ClientConfig>) -> Self {
        let sock = TcpStream::connect(addr).expect("connect to front");
        Client::over(sock, config)
    }

    /// The TLS client over a connected `sock`, handshake done.
    fn over(sock: TcpStream, config: Arc<ClientConfig>) -> Self {
        sock.set_read_timeout(Some(STUCK)).expect("read timeout");
        sock.set_write_timeout(Some(STUCK)).expect("write timeout");
        let name = ServerName::try_from("localhost").expect("server name");
        let tls = ClientConnection::new(config, name).expect("client connection");
        let mut client = Client {
            tls,
            sock,
            inbox: Vec::new(),
        };
        while client.tls.is_handshaking() {
            client
                .tls
                .complete_io(&mut client.sock)
                .expect("client handshake");
        }
        client
    }

    fn local_addr(&self) -> SocketAddr {
        self.sock.local_addr().expect("client address")
    }

    fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        let mut rest = bytes;
        while !rest.is_empty() {
            let n = self.tls.writer().write(rest)?;
            rest = &rest[n..];
            while self.tls.wants_write() {
                self.tls.write_tls(&mut self.sock)?;
            }
        }
        Ok(())
    }

    /// Reads more plaintext; `Ok(false)` at a clean or unclean end of the connection.
    fn fill(&mut self) -> io::Result<bool> {
        loop {
            let mut buf = [0u8; 8192];
            match self.tls.reader().read(&mut buf) {
                Ok(0) => return Ok(false),
                Ok(n) => {
                    self.inbox.extend_from_slice(&buf[..n]);
                    return Ok(true);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(false),
                Err(e) => return Err(e),
            }
            if self.tls.read_tls(&mut self.sock)? == 0 {
                // Let the reader report whether a close_notify came first.
                self.tls
                    .process_new_packets()
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                continue;
            }
            self.tls
                .process_new_packets()
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        }
    }

    fn response(&mut self) -> Response {
        let head_len = loop {
            if let Some(end) = crate::wire::http::find_end(&self.inbox, 0) {
                break end;
            }
            assert!(
                self.fill().expect("read response"),
                "connection closed before a response; got {:?}",
                String::from_utf8_lossy(&self.inbox)
            );
        };
        let head = String::from_utf8(self.inbox[..head_len].to_vec()).expect("ascii head");
        let status = head
            .get(9..12)
            .and_then(|s| s.parse().ok())
            .expect("status code");
        self.inbox.drain(..head_len);
        let header = |want: &str| {
            head.lines().find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case(want)
                    .then(|| value.trim().to_owned())
            })
        };
        let body = if header("transfer-encoding").is_some() {
            self.chunked_body()
        } else {
            let length: usize = header("content-length")
                .and_then(|v| v.parse().ok())
                .expect("content-length");
            self.take(length)
        };
        let body = String::from_utf8(body).expect("utf-8 body");
        Response { status, head, body }
    }

    /// Takes exactly `n` bytes of plaintext, reading more as needed.
    fn take(&mut self, n: usize) -> Vec<u8> {
        while self.inbox.len() < n {
            assert!(
                self.fill().expect("read body"),
                "connection closed mid-body"
            );
        }
        self.inbox.drain(..n).collect()
    }

    /// Takes one CRLF-terminated line, without the CRLF.
    fn line(&mut self) -> String {
        loop {
            if let Some(at) = self.inbox.windows(2).position(|w| w == b"\r\n") {
                let line = self.take(at + 2);
                return String::from_utf8_lossy(&line[..at]).into_owned();
            }
            assert!(
                self.fill().expect("read line"),
                "connection closed mid-line"
            );
        }
    }

    /// Decodes a chunked body (tiny_http uses it for large responses).
    fn chunked_body(&mut self) -> Vec<u8> {
        let mut body = Vec::new();
        loop {
            let size = usize::from_str_radix(self.line().trim(), 16).expect("chunk size");
            if size == 0 {
                assert_eq!(self.line(), "", "trailers");
                return body;
            }
            body.extend(self.take(size));
            assert_eq!(self.line(), "", "chunk end");
        }
    }

    /// Reads until the server closes; returns the plaintext that came before the end.
    fn rest_until_closed(&mut self) -> Vec<u8> {
        while self.fill().expect("read until closed") {}
        std::mem::take(&mut self.inbox)
    }

    fn get(&mut self, path: &str) -> Response {
        let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n");
        self.send(request.as_bytes()).expect("send request");
        self.response()
    }
}

fn error_message(response: &Response) -> (u64, String) {
    let json: serde_json::Value = serde_json::from_str(&response.body).expect("json error body");
    let result = &json["result"][0];
    (
        result["code"].as_u64().expect("code"),
        result["message"].as_str().expect("message").to_owned(),
    )
}

/// Size of the `/big` response.
const BIG: usize = 1 << 20;

/// tiny_http behind the front, answering each request with what the peer table says
/// about it: `METHOD PATH BODY-LEN PEER KIND CERT-SHA256-OR-none`. `/slow` waits 500 ms;
/// `/big` answers with `BIG` bytes of `x`.
fn whoami_backend(peers: Arc<PeerTable>) -> SocketAddr {
    let listener = bind_backend().expect("bind backend");
    let server = tiny_http::Server::from_listener(listener, None).expect("tiny_http backend");
    let addr = server.server_addr().to_ip().expect("ip backend");
    thread::spawn(move || {
        for mut request in server.incoming_requests() {
            let peer = request.remote_addr().and_then(|a| peers.lookup(a));
            let mut body = Vec::new();
            let _ = request.as_reader().read_to_end(&mut body);
            if request.url() == "/slow" {
                thread::sleep(Duration::from_millis(500));
            }
            if request.url() == "/slower" {
                thread::sleep(Duration::from_millis(1500));
            }
            if request.url() == "/big" {
                let _ = request.respond(tiny_http::Response::from_data(vec![b'x'; BIG]));
                continue;
            }
            let who = peer.map_or("unknown".to_owned(), |info| info.addr.to_string());
            let text = format!(
                "{} {} {} {who}",
                request.method(),
                request.url(),
                body.len()
            );
            let _ = request.respond(tiny_http::Response::from_string(text));
        }
    });
    addr
}

/// A plain backend that records every byte it receives and answers every head with
/// `200 ok`. Understands bodiless requests only, which is all these tests send it.
struct Recorder {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<u8>>>,
}

fn recording_backend() -> Recorder {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind recorder");
    let addr = listener.local_addr().expect("recorder address");
    let received = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&received);
    thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let log = Arc::clone(&log);
            thread::spawn(move || {
                let mut seen = Vec::new();
                let mut answered = 0;
                let mut buf = [0u8; 4096];
                while let Ok(n) = conn.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    seen.extend_from_slice(&buf[..n]);
                    log.lock()
                        .expect("recorder log")
                        .extend_from_slice(&buf[..n]);
                    let heads = seen.windows(4).filter(|w| w == b"\r\n\r\n").count();
                    while answered < heads {
                        let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
                        answered += 1;
                    }
                }
            });
        }
    });
    Recorder { addr, received }
}

#[test]
fn requests_round_trip_and_the_peer_table_names_the_real_client() {
    let peers = Arc::new(PeerTable::new());
    let h = Harness::start(test_limits(), whoami_backend(Arc::clone(&peers)), peers);
    let mut client = h.client();
    let me = client.local_addr();

    let first = client.get("/first");
    assert_eq!(first.status, 200, "{first:?}");
    assert_eq!(first.body, format!("GET /first 0 {me}"));
    assert_eq!(h.peers.len(), 1);

    // Keep-alive with a body, then a pipelined pair: framing and order hold.
    let pipelined =
        b"POST /body HTTP/1.1\r\nContent-Length: 5\r\n\r\nhelloGET /after HTTP/1.1\r\n\r\n";
    client.send(pipelined).expect("send pipelined");
    assert_eq!(client.response().body, format!("POST /body 5 {me}"));
    assert_eq!(client.response().body, format!("GET /after 0 {me}"));

    drop(client);
    h.wait_until_quiet();
}

#[test]
fn large_bodies_stream_through_in_both_directions() {
    let peers = Arc::new(PeerTable::new());
    let limits = Limits {
        max_body_bytes: 300_000,
        ..test_limits()
    };
    let h = Harness::start(limits, whoami_backend(Arc::clone(&peers)), peers);
    let mut client = h.client();
    let me = client.local_addr();
    let mut upload = b"PUT /upload HTTP/1.1\r\nContent-Length: 300000\r\n\r\n".to_vec();
    upload.extend((0..300_000u32).map(|i| (i % 251) as u8));
    client.send(&upload).expect("send upload");
    assert_eq!(client.response().body, format!("PUT /upload 300000 {me}"));

    let download = client.get("/big");
    assert_eq!(download.status, 200);
    assert_eq!(download.body.len(), BIG);
    assert!(download.body.bytes().all(|b| b == b'x'));
    // The connection is still in step after both.
    assert_eq!(client.get("/end").body, format!("GET /end 0 {me}"));
}

#[test]
fn a_request_that_bypasses_the_front_finds_no_peer() {
    let peers = Arc::new(PeerTable::new());
    let backend = whoami_backend(Arc::clone(&peers));
    let _h = Harness::start(test_limits(), backend, Arc::clone(&peers));
    let mut direct = TcpStream::connect(backend).expect("connect backend directly");
    direct.set_read_timeout(Some(STUCK)).expect("read timeout");
    direct
        .write_all(b"GET /direct HTTP/1.1\r\nConnection: close\r\n\r\n")
        .expect("send");
    let mut answer = String::new();
    direct.read_to_string(&mut answer).expect("read answer");
    assert!(answer.ends_with("GET /direct 0 unknown"), "{answer}");
}

#[test]
fn oversize_head_gets_431_and_the_front_stops_reading() {
    let recorder = recording_backend();
    let h = Harness::start(test_limits(), recorder.addr, Arc::new(PeerTable::new()));
    let mut client = h.client();
    // A write that cannot proceed for 300 ms means the front has stopped reading.
    client
        .sock
        .set_write_timeout(Some(Duration::from_millis(300)))
        .expect("write timeout");

    let mut sent = 0usize;
    let limit = 64 << 20;
    let mut endless = b"GET / HTTP/1.1\r\n".to_vec();
    let filler = format!("X-Filler: {}\r\n", "a".repeat(1000));
    while sent < limit {
        endless.extend_from_slice(filler.as_bytes());
        if client.send(&endless).is_err() {
            break;
        }
        sent += endless.len();
        endless.clear();
    }
    // Kernel socket buffers on loopback hold a few MiB; a front that kept reading (and
    // buffering) would have taken all 64 MiB.
    assert!(
        sent < limit / 2,
        "front kept reading: {sent} bytes accepted"
    );

    let response = client.response();
    assert_eq!(response.status, 431, "{response:?}");
    assert!(response.head.contains("Connection: close"), "{response:?}");
    assert_eq!(
        error_message(&response),
        (431, "request head exceeds 1024 bytes".to_owned())
    );
    assert!(recorder.received.lock().expect("log").is_empty());
}

#[test]
fn body_over_the_cap_gets_413_after_the_earlier_response_and_is_never_forwarded() {
    let recorder = recording_backend();
    let h = Harness::start(test_limits(), recorder.addr, Arc::new(PeerTable::new()));
    let mut client = h.client();
    let first = b"GET /first HTTP/1.1\r\nHost: localhost\r\n\r\n";
    let mut both = first.to_vec();
    both.extend_from_slice(b"POST /big HTTP/1.1\r\nContent-Length: 1001\r\n\r\n");
    both.extend_from_slice(&[b'B'; 1001]);
    client.send(&both).expect("send");

    let ok = client.response();
    assert_eq!((ok.status, ok.body.as_str()), (200, "ok"));
    let refused = client.response();
    assert_eq!(refused.status, 413, "{refused:?}");
    assert_eq!(
        error_message(&refused),
        (
            413,
            "request body of 1001 bytes exceeds the 1000-byte limit".to_owned()
        )
    );
    assert!(client.rest_until_closed().is_empty());
    assert_eq!(*recorder.received.lock().expect("log"), first.to_vec());
}

/// Also: a body over the cap with `Expect: 100-continue` gets its 413 at once, without a
/// `100 Continue` first, and an unknown expectation gets 417 from the front.
#[test]
fn chunked_request_gets_411_and_malformed_head_gets_400() {
    let recorder = recording_backend();
    let h = Harness::start(test_limits(), recorder.addr, Arc::new(PeerTable::new()));
    let cases: &[(&[u8], u16)] = &[
        (
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            411,
        ),
        (
            b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            400,
        ),
        (b"GET / HTTP/1.1\r\nHost localhost\r\n\r\n", 400),
        (
            b"PUT / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 1001\r\n\r\n",
            413,
        ),
        (b"GET / HTTP/1.1\r\nExpect: 200-ok\r\n\r\n", 417),
    ];
    for (request, status) in cases {
        let mut client = h.client();
        client.send(request).expect("send");
        let response = client.response();
        assert_eq!(response.status, *status, "{response:?}");
        assert_eq!(error_message(&response).0, u64::from(*status));
    }
    assert!(recorder.received.lock().expect("log").is_empty());
}

#[test]
fn silent_client_is_closed_at_the_handshake_deadline() {
    let mut limits = test_limits();
    limits.connections.handshake_timeout = Duration::from_millis(300);
    let recorder = recording_backend();
    let h = Harness::start(limits, recorder.addr, Arc::new(PeerTable::new()));
    let started = Instant::now();
    let mut sock = TcpStream::connect(h.addr).expect("connect");
    sock.set_read_timeout(Some(STUCK)).expect("read timeout");
    let mut buf = [0u8; 64];
    let closed = matches!(sock.read(&mut buf), Ok(0))
        || sock
            .read(&mut buf)
            .is_err_and(|e| e.kind() == io::ErrorKind::ConnectionReset);
    let elapsed = started.elapsed();
    assert!(closed, "connection not closed");
    assert!(
        elapsed >= Duration::from_millis(250),
        "closed early: {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_millis(1500),
        "closed late: {elapsed:?}"
    );
}

#[test]
fn dripping_client_is_closed_at_the_same_deadline() {
    let mut limits = test_limits();
    limits.connections.handshake_timeout = Duration::from_millis(400);
    let recorder = recording_backend();
    let h = Harness::start(limits, recorder.addr, Arc::new(PeerTable::new()));
    let started = Instant::now();
    let sock = TcpStream::connect(h.addr).expect("connect");
    let mut writer = sock.try_clone().expect("clone socket");
    let dripper = thread::spawn(move || {
        // A TLS handshake record header announcing 255 bytes, then one byte at a time:
        // every read makes progress, only a deadline can end it.
        if writer.write_all(&[0x16, 0x03, 0x01, 0x00, 0xff]).is_err() {
            return;
        }
        for _ in 0..100 {
            thread::sleep(Duration::from_millis(50));
            if writer.write_all(&[0x01]).is_err() {
                return;
            }
        }
    });
    let mut reader = sock;
    reader.set_read_timeout(Some(STUCK)).expect("read timeout");
    let mut buf = [0u8; 64];
    let _ = reader.read(&mut buf);
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(350),
        "closed early: {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_millis(1500),
        "closed late: {elapsed:?}"
    );
    drop(reader);
    let _ = dripper.join();
}

#[test]
fn slow_head_gets_408() {
    let limits = Limits {
        head_timeout: Duration::from_millis(300),
        ..test_limits()
    };
    let recorder = recording_backend();
    let h = Harness::start(limits, recorder.addr, Arc::new(PeerTable::new()));
    let mut client = h.client();
    let started = Instant::now();
    client
        .send(b"GET / HTTP/1.1\r\nHost: loc")
        .expect("send part of a head");
    let response = client.response();
    assert_eq!(response.status, 408, "{response:?}");
    assert_eq!(
        error_message(&response),
        (408, "request head not complete within 300 ms".to_owned())
    );
    assert!(started.elapsed() < Duration::from_millis(1500));
    assert!(recorder.received.lock().expect("log").is_empty());
}

/// Was `dripping_body_is_cut_off_and_the_backend_sees_its_end`: the front used to pass
/// the head on at once and cut the body off at the deadline; now it holds the request
/// until it is complete, so a dripped body never reaches the backend and the client gets
/// the 408 from the front.
#[test]
fn dripping_body_gets_408_and_nothing_reaches_the_backend() {
    let limits = Limits {
        head_timeout: Duration::from_millis(300),
        ..test_limits()
    };
    let recorder = recording_backend();
    let h = Harness::start(limits, recorder.addr, Arc::new(PeerTable::new()));
    let mut client = h.client();
    let started = Instant::now();
    let head = b"POST / HTTP/1.1\r\nContent-Length: 1000\r\n\r\n";
    client.send(head).expect("send head");
    // Each byte is progress, so no idle timeout ever fires; only the body deadline can.
    let mut dripped = 0;
    while dripped < 40 && client.send(b"d").is_ok() {
        dripped += 1;
        thread::sleep(Duration::from_millis(25));
    }
    let answer = client.response();
    assert_eq!(answer.status, 408, "{answer:?}");
    assert_eq!(
        error_message(&answer),
        (408, "request body not complete within 300 ms".to_owned())
    );
    assert!(client.rest_until_closed().is_empty());
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_millis(1500),
        "closed late: {elapsed:?}"
    );
    h.wait_until_quiet();
    assert!(recorder.received.lock().expect("log").is_empty());
}

#[test]
fn a_request_reaches_the_backend_only_once_its_body_is_complete() {
    let recorder = recording_backend();
    let h = Harness::start(test_limits(), recorder.addr, Arc::new(PeerTable::new()));
    let mut client = h.client();
    let mut request = b"POST /in-pieces HTTP/1.1\r\nContent-Length: 10\r\n\r\n".to_vec();
    request.extend_from_slice(b"0123456789");
    let split = request.len() - 4;
    client
        .send(&request[..split])
        .expect("send all but 4 bytes");
    thread::sleep(Duration::from_millis(300));
    assert!(
        recorder.received.lock().expect("log").is_empty(),
        "forwarded before complete"
    );
    client.send(&request[split..]).expect("send the rest");
    let answer = client.response();
    assert_eq!((answer.status, answer.body.as_str()), (200, "ok"));
    assert_eq!(*recorder.received.lock().expect("log"), request);
}

#[test]
fn expect_100_continue_is_answered_by_the_front_and_never_reaches_tiny_http() {
    let peers = Arc::new(PeerTable::new());
    let h = Harness::start(test_limits(), whoami_backend(Arc::clone(&peers)), peers);
    let mut client = h.client();
    let me = client.local_addr();
    client
        .send(b"PUT /upload HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 600\r\n\r\n")
        .expect("send head");
    assert_eq!(client.line(), "HTTP/1.1 100 Continue");
    assert_eq!(client.line(), "");
    client.send(&[b'b'; 600]).expect("send body");
    assert_eq!(client.response().body, format!("PUT /upload 600 {me}"));
    // tiny_http would have sent a second 100 Continue had it seen the header.
    assert_eq!(client.get("/after").body, format!("GET /after 0 {me}"));
}

#[test]
fn the_100_continue_waits_for_the_response_in_flight_before_it() {
    let peers = Arc::new(PeerTable::new());
    let h = Harness::start(test_limits(), whoami_backend(Arc::clone(&peers)), peers);
    let mut client = h.client();
    let me = client.local_addr();
    // The second head arrives while the backend works on the first.
    client
        .send(b"GET /slow HTTP/1.1\r\n\r\n")
        .expect("send slow");
    thread::sleep(Duration::from_millis(100));
    client
        .send(b"POST /next HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n")
        .expect("send second head");
    // The first response, not the 100, comes first, although the backend takes 500 ms.
    assert_eq!(client.response().body, format!("GET /slow 0 {me}"));
    assert_eq!(client.line(), "HTTP/1.1 100 Continue");
    assert_eq!(client.line(), "");
    client.send(b"abc").expect("send body");
    assert_eq!(client.response().body, format!("POST /next 3 {me}"));
}

/// Answers `GET /local` (and `HEAD`) itself and declines everything else.
struct TestAnswer;

impl LocalAnswer for TestAnswer {
    fn answer(&self, head: &crate::wire::http::RequestHead<'_>, out: &mut Vec<u8>) -> bool {
        if head.target != "/local" || !matches!(head.method, "GET" | "HEAD") {
            return false;
        }
        out.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n");
        if head.method == "GET" {
            out.extend_from_slice(b"local");
        }
        true
    }
}

fn start_with_answerer(backend: SocketAddr, peers: Arc<PeerTable>) -> Harness {
    Harness::start_with(
        test_limits(),
        backend,
        peers,
        api_server_config(),
        Some(Arc::new(TestAnswer)),
    )
}

#[test]
fn local_answers_never_overtake_a_response_from_the_backend() {
    let peers = Arc::new(PeerTable::new());
    let h = start_with_answerer(whoami_backend(Arc::clone(&peers)), peers);
    let mut client = h.client();
    let me = client.local_addr();
    // Nothing in flight: answered in the front.
    assert_eq!(client.get("/local").body, "local");
    // Behind a slow request: forwarded, so the backend answers it, in order; both when
    // it arrives with the request before it and while the backend works on that one.
    for pause in [None, Some(Duration::from_millis(100))] {
        client
            .send(b"GET /slow HTTP/1.1\r\n\r\n")
            .expect("send slow");
        if let Some(pause) = pause {
            thread::sleep(pause);
        }
        client
            .send(b"GET /local HTTP/1.1\r\n\r\n")
            .expect("send local");
        assert_eq!(client.response().body, format!("GET /slow 0 {me}"));
        assert_eq!(client.response().body, format!("GET /local 0 {me}"));
    }
    // After a large chunked response, a body and a HEAD, the front knows all were
    // answered and answers again itself.
    client
        .send(b"GET /big HTTP/1.1\r\n\r\nPOST /b HTTP/1.1\r\nContent-Length: 2\r\n\r\nxyHEAD /h HTTP/1.1\r\n\r\n")
        .expect("send more");
    let big = client.response();
    assert_eq!(big.body.len(), BIG);
    assert_eq!(client.response().body, format!("POST /b 2 {me}"));
    let head = client.line();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    while !client.line().is_empty() {}
    assert_eq!(client.get("/local").body, "local");
    // Not taken: HTTP/1.0, a body, `Connection: close`.
    client
        .send(b"GET /local HTTP/1.1\r\nContent-Length: 1\r\n\r\nz")
        .expect("send with body");
    assert_eq!(client.response().body, format!("GET /local 1 {me}"));
    client
        .send(b"GET /local HTTP/1.1\r\nConnection: close\r\n\r\nGET /never HTTP/1.1\r\n\r\n")
        .expect("send last");
    assert_eq!(client.response().body, format!("GET /local 0 {me}"));
    assert!(
        client.rest_until_closed().is_empty(),
        "nothing after the last request"
    );
}

#[test]
fn a_connection_answered_only_in_the_front_sends_nothing_to_the_backend() {
    let recorder = recording_backend();
    let h = start_with_answerer(recorder.addr, Arc::new(PeerTable::new()));
    let mut client = h.client();
    let mut pipelined = Vec::new();
    for _ in 0..50 {
        pipelined.extend_from_slice(b"GET /local HTTP/1.1\r\nHost: x\r\n\r\n");
    }
    pipelined.extend_from_slice(b"HEAD /local HTTP/1.1\r\n\r\n");
    client.send(&pipelined).expect("send pipelined");
    for _ in 0..50 {
        assert_eq!(client.response().body, "local");
    }
    assert_eq!(client.line(), "HTTP/1.1 200 OK");
    assert_eq!(client.line(), "Content-Length: 5");
    assert_eq!(client.line(), "");
    assert_eq!(client.get("/backend").body, "ok");
    assert_eq!(
        *recorder.received.lock().expect("log"),
        b"GET /backend HTTP/1.1\r\nHost: localhost\r\n\r\n".to_vec()
    );
}

#[test]
fn a_handler_slower_than_the_idle_timeout_still_gets_its_answer_through() {
    let limits = Limits {
        idle_timeout: Duration::from_millis(300),
        ..test_limits()
    };
    let peers = Arc::new(PeerTable::new());
    let h = Harness::start(limits, whoami_backend(Arc::clone(&peers)), peers);
    let mut client = h.client();
    let me = client.local_addr();
    // The backend works five idle timeouts on it; the client is waiting, not idle.
    let answer = client.get("/slower");
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body, format!("GET /slower 0 {me}"));
    // Once answered, the idle timer runs again.
    let started = Instant::now();
    assert!(client.rest_until_closed().is_empty());
    assert!(started.elapsed() < Duration::from_millis(1500));
}

#[test]
fn idle_keepalive_connection_is_closed_without_a_response() {
    let limits = Limits {
        idle_timeout: Duration::from_millis(300),
        ..test_limits()
    };
    let recorder = recording_backend();
    let h = Harness::start(limits, recorder.addr, Arc::new(PeerTable::new()));
    let mut client = h.client();
    assert_eq!(client.get("/").status, 200);
    let started = Instant::now();
    assert!(client.rest_until_closed().is_empty());
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(250),
        "closed early: {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_millis(1500),
        "closed late: {elapsed:?}"
    );
    h.wait_until_quiet();
}

#[test]
fn past_the_cap_a_client_gets_503_quickly_and_service_resumes_when_load_drops() {
    let mut limits = test_limits();
    limits.connections.max_connections = 2;
    let recorder = recording_backend();
    let h = Harness::start(limits, recorder.addr, Arc::new(PeerTable::new()));
    let mut first = h.client();
    let mut second = h.client();
    assert_eq!(first.get("/").status, 200);
    assert_eq!(second.get("/").status, 200);
    assert_eq!(h.front().active_connections(), 2);

    let started = Instant::now();
    let mut third = h.client();
    let refused = third.get("/");
    assert_eq!(refused.status, 503, "{refused:?}");
    assert!(refused.head.contains("Retry-After: 1"), "{refused:?}");
    assert_eq!(
        error_message(&refused),
        (503, "too many connections, retry shortly".to_owned())
    );
    assert!(started.elapsed() < Duration::from_secs(1));
    drop(third);

    drop(first);
    drop(second);
    h.wait_until_quiet();
    let mut fourth = h.client();
    assert_eq!(fourth.get("/").status, 200);
}

#[test]
fn shutdown_finishes_the_request_in_flight_then_closes_and_stops_listening() {
    let peers = Arc::new(PeerTable::new());
    let backend = whoami_backend(Arc::clone(&peers));
    let mut h = Harness::start(test_limits(), backend, peers);
    let mut busy = h.client();
    let mut idle = h.client();
    assert_eq!(idle.get("/").status, 200);
    busy.send(b"GET /slow HTTP/1.1\r\n\r\n")
        .expect("send slow request");
    thread::sleep(Duration::from_millis(100));

    let started = Instant::now();
    h.shutdown.store(true, Ordering::Relaxed);
    let front = h.front.take().expect("front");
    let joiner = thread::spawn(move || front.join(Duration::from_secs(3)));

    assert!(idle.rest_until_closed().is_empty());
    let slow = busy.response();
    assert_eq!(slow.status, 200, "{slow:?}");
    assert!(slow.body.starts_with("GET /slow"), "{slow:?}");
    assert!(busy.rest_until_closed().is_empty());
    joiner.join().expect("join front");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(TcpStream::connect(h.addr).is_err(), "listener still open");
}

/// Set in the child process that `accept_loop_survives_running_out_of_descriptors`
/// starts, so that exhausting descriptors cannot disturb the tests running in parallel.
const EMFILE_CHILD: &str = "REPLGATE_FRONT_TEST_EMFILE_CHILD";

#[test]
fn accept_loop_survives_running_out_of_descriptors() {
    if std::env::var_os(EMFILE_CHILD).is_some() {
        exhaust_descriptors_then_serve();
        return;
    }
    let name = "front::tests::accept_loop_survives_running_out_of_descriptors";
    let exe = std::env::current_exe().expect("test binary");
    let out = std::process::Command::new(exe)
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(EMFILE_CHILD, "1")
        .output()
        .expect("run child test");
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("1 passed"),
        "child failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs in the child: a connection arrives while the process has no descriptor left, so
/// accept fails with EMFILE for a while; once descriptors are free again it is served.
fn exhaust_descriptors_then_serve() {
    let recorder = recording_backend();
    let h = Harness::start(test_limits(), recorder.addr, Arc::new(PeerTable::new()));
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid rlimit struct for both calls; this process is a child
    // running only this test.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        lim.rlim_cur = lim.rlim_cur.min(256);
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
    }
    let mut filler = Vec::new();
    loop {
        match std::fs::File::open("/dev/null") {
            Ok(f) => filler.push(f),
            Err(e) if e.raw_os_error() == Some(libc::EMFILE) => break,
            Err(e) => panic!("fill descriptor table: {e}"),
        }
    }
    // One descriptor for the client; the front has none left to accept with.
    filler.pop();
    let sock = TcpStream::connect(h.addr).expect("connect while the front cannot accept");
    thread::sleep(Duration::from_millis(400));
    assert_eq!(
        h.front().active_connections(),
        0,
        "accept should have failed"
    );
    filler.truncate(filler.len().saturating_sub(16));

    let mut client = Client::over(sock, client_config());
    assert_eq!(client.get("/").status, 200);
}

#[test]
fn sockets_accepted_from_the_backend_listener_have_nagle_off() {
    let listener = bind_backend().expect("bind backend");
    assert!(listener.local_addr().expect("address").ip().is_loopback());
    let _client = TcpStream::connect(listener.local_addr().expect("address")).expect("connect");
    let (accepted, _) = listener.accept().expect("accept");
    assert!(accepted.nodelay().expect("read TCP_NODELAY"));
}

/// A connection from an address that has not authenticated recently must complete its
/// first request within `listener::UNAUTHENTICATED_DEADLINE` of its accept, however long
/// the head and idle timeouts are: a partial one gets 408, a silent one is closed. An
/// address that authenticated (the API notes it in the peer table) has the configured
/// timeouts.
#[test]
fn a_stranger_must_complete_its_first_request_within_seconds_a_known_address_need_not() {
    let limits = Limits {
        idle_timeout: Duration::from_secs(30),
        head_timeout: Duration::from_secs(30),
        ..test_limits()
    };
    let deadline = crate::listener::UNAUTHENTICATED_DEADLINE;
    let patient = |client: &mut Client| {
        client
            .sock
            .set_read_timeout(Some(deadline * 3))
            .expect("read timeout");
    };
    let strangers = Harness::start(
        limits.clone(),
        recording_backend().addr,
        Arc::new(PeerTable::new()),
    );
    let known_peers = Arc::new(PeerTable::new());
    known_peers.note_authenticated(std::net::Ipv4Addr::LOCALHOST.into());
    let recorder = recording_backend();
    let known = Harness::start(limits, recorder.addr, known_peers);

    let started = Instant::now();
    let mut partial = strangers.client();
    let mut silent = strangers.client();
    let mut admin = known.client();
    for c in [&mut partial, &mut silent, &mut admin] {
        patient(c);
    }
    partial
        .send(b"GET / HTTP/1.1\r\nHo")
        .expect("send part of a head");
    admin
        .send(b"GET / HTTP/1.1\r\nHo")
        .expect("send part of a head");
    let answer = partial.response();
    let took = started.elapsed();
    assert_eq!(answer.status, 408, "{answer:?}");
    assert_eq!(
        error_message(&answer),
        (
            408,
            format!(
                "first request not complete within {} ms of connecting",
                deadline.as_millis()
            )
        )
    );
    assert!(
        took >= deadline - Duration::from_millis(100) && took < deadline * 2,
        "408 after {took:?}"
    );
    assert!(
        silent.rest_until_closed().is_empty(),
        "a silent stranger got bytes"
    );
    assert!(started.elapsed() < deadline * 2);
    // The known address finishes its head after the strangers' deadline and is served.
    admin.send(b"st: localhost\r\n\r\n").expect("send the rest");
    assert_eq!(admin.response().status, 200);
    assert_eq!(
        recorder.received.lock().expect("log").as_slice(),
        b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"
    );
}
