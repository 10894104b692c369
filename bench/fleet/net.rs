//! HTTPS/1.1 over rustls as the fleet needs it: a connection from a chosen loopback
//! address (every address of 127.0.0.0/8 is this machine, so each synthetic source looks
//! like its own host to the target's per-address caps), the handshake timed and its
//! failure told apart, one request at a time (keep-alive or `Connection: close`), and a
//! response read by Content-Length or chunked coding.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, StreamOwned};

/// Every wait on the target is bounded by this: a stuck target fails a call, never the
/// whole run.
pub const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a call failed, in the classes the report counts.
#[derive(Debug)]
pub enum CallError {
    /// TCP connect failed (refused, no route, out of ports).
    Connect(io::Error),
    /// The TLS handshake failed (or the connection broke during it).
    Handshake(String),
    /// Sending the request or reading the answer failed.
    Io(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Connect(e) => write!(f, "connect: {e}"),
            CallError::Handshake(e) => write!(f, "tls handshake: {e}"),
            CallError::Io(e) => write!(f, "{e}"),
        }
    }
}

/// An answer: status, the headers' raw text and the body.
pub struct Response {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json(&self) -> Result<serde_json::Value, String> {
        serde_json::from_slice(&self.body).map_err(|e| {
            format!(
                "status {}: not JSON ({e}): {}",
                self.status,
                String::from_utf8_lossy(&self.body[..self.body.len().min(300)])
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The first header called `name` (case-insensitive), trimmed.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head
            .split("\r\n")
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim())
    }
}

/// A TCP connection to `to`, from `from` when given (bound before connecting).
pub fn tcp(from: Option<Ipv4Addr>, to: SocketAddr) -> io::Result<TcpStream> {
    let sock = match from {
        Some(ip) => replgate::listener::connect_from(ip, to)?,
        None => TcpStream::connect_timeout(&to, IO_TIMEOUT)?,
    };
    sock.set_nodelay(true)?;
    sock.set_read_timeout(Some(IO_TIMEOUT))?;
    sock.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(sock)
}

/// One HTTPS connection with its read buffer.
pub struct Conn {
    pub tls: StreamOwned<ClientConnection, TcpStream>,
    host: String,
    buf: Vec<u8>,
    /// How long TCP connect plus the TLS handshake took.
    pub handshake: Duration,
}

impl Conn {
    /// Connects and completes the handshake.
    pub fn open(
        config: &Arc<ClientConfig>,
        from: Option<Ipv4Addr>,
        to: SocketAddr,
    ) -> Result<Conn, CallError> {
        let start = Instant::now();
        let sock = tcp(from, to).map_err(CallError::Connect)?;
        let name = ServerName::IpAddress(to.ip().into());
        let conn = ClientConnection::new(config.clone(), name)
            .map_err(|e| CallError::Handshake(e.to_string()))?;
        let mut tls = StreamOwned::new(conn, sock);
        while tls.conn.is_handshaking() {
            tls.conn
                .complete_io(&mut tls.sock)
                .map_err(|e| CallError::Handshake(e.to_string()))?;
        }
        Ok(Conn {
            tls,
            host: to.to_string(),
            buf: Vec::new(),
            handshake: start.elapsed(),
        })
    }

    /// One request on this connection; `close` asks the server to close after it (what
    /// a source's poller sends: one call per connection).
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        close: bool,
    ) -> Result<Response, CallError> {
        let body = body.unwrap_or_default();
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: replgate-fleet\r\nContent-Length: {}\r\n",
            self.host,
            body.len()
        );
        if !body.is_empty() {
            head.push_str("Content-Type: application/json\r\n");
        }
        if close {
            head.push_str("Connection: close\r\n");
        }
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        let mut out = head.into_bytes();
        out.extend_from_slice(body);
        self.tls
            .write_all(&out)
            .and_then(|()| self.tls.flush())
            .map_err(|e| CallError::Io(format!("{method} {path}: send: {e}")))?;
        self.read_response()
            .map_err(|e| CallError::Io(format!("{method} {path}: {e}")))
    }

    /// Ends the connection politely (close_notify), ignoring errors.
    pub fn close(mut self) {
        self.tls.conn.send_close_notify();
        let _ = self.tls.conn.complete_io(&mut self.tls.sock);
    }

    fn read_response(&mut self) -> Result<Response, String> {
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i + 4;
            }
            if self.buf.len() > 64 * 1024 {
                return Err("response head too large".into());
            }
            self.fill()?;
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or("response without a status")?;
        let mut r = Response {
            status,
            head,
            body: Vec::new(),
        };
        self.buf.drain(..head_end);
        if r.header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
        {
            r.body = self.read_chunked()?;
            return Ok(r);
        }
        let length = match r.header("content-length") {
            Some(v) => v.parse::<usize>().map_err(|_| "bad Content-Length")?,
            // A quick 503 from the listener may end with the connection instead.
            None => {
                while let Ok(()) = self.fill() {}
                self.buf.len()
            }
        };
        while self.buf.len() < length {
            self.fill()?;
        }
        r.body = self.buf.drain(..length).collect();
        Ok(r)
    }

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
            let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| format!("bad chunk size line {line:?}"))?;
            self.buf.drain(..line_end + 2);
            if size == 0 {
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

/// Timings of one call made on its own connection.
pub struct Timed {
    pub response: Response,
    /// Connect plus handshake.
    pub handshake: Duration,
    /// Connect to the end of the answer.
    pub total: Duration,
}

/// One call on a fresh connection with `Connection: close`, as a source's poller makes
/// every call.
pub fn call_once(
    config: &Arc<ClientConfig>,
    from: Option<Ipv4Addr>,
    to: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Result<Timed, CallError> {
    let start = Instant::now();
    let mut conn = Conn::open(config, from, to)?;
    let response = conn.request(method, path, headers, body, true)?;
    let total = start.elapsed();
    let handshake = conn.handshake;
    conn.close();
    Ok(Timed {
        response,
        handshake,
        total,
    })
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The client config a source uses towards a target: the target's CA pinned, the
/// source's certificate when given, no session resumption (a source makes a new config
/// per call, so every call pays a full handshake; the fleet does the same).
pub fn source_config(
    ca_pem: &str,
    client: Option<(&str, &str)>,
) -> Result<Arc<ClientConfig>, String> {
    let anchors = replgate::remote::anchors_of(ca_pem).map_err(|e| format!("CA: {e}"))?;
    let config = replgate::tls::pinned_client_config(anchors, client)
        .map_err(|e| format!("TLS set-up: {e}"))?;
    let mut config = (*config).clone();
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

/// The `n`th source address of the fleet, so that each synthetic source is its own host
/// for the target's per-address caps, and neighbours are in different /24 networks for
/// its per-network cap (sources of one provider's customers come from many networks):
/// 127.1.0.1, 127.1.1.1, ... 127.1.255.1, then 127.1.0.2, ... (hosts .1 to .254).
pub fn source_addr(n: usize) -> Ipv4Addr {
    let rest = n / 256;
    let host = (rest % 254) as u8 + 1;
    Ipv4Addr::new(127, 1 + (rest / 254) as u8, (n % 256) as u8, host)
}
