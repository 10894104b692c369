//! The object store's HTTP/1.1 client: one endpoint, connections kept alive and reused,
//! every read and write bounded, bodies streamed both ways.
//!
//! Why not `remote::http`: that client makes one call per connection and reads a bounded
//! answer into a `String`, which suits a handful of small JSON calls to other appliances.
//! An object store gets thousands of calls of up to 32 MiB each way (a TLS handshake per
//! part would cost more than the part on a LAN) and answers with object bytes. What the
//! two share is the parsing, in the base layer: response heads and their framing
//! (`wire::response`) and chunked bodies (`wire::chunked`).
//!
//! Time: each connection's socket has read and write timeouts of `io_timeout` (no
//! progress for that long fails the call), and every read and write first checks the
//! call's deadline, so a call ends at most `io_timeout` after its deadline however slowly
//! a peer trickles. No proxy, no redirects: a 3xx is an answer like any other.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, TcpStream, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, StreamOwned};

use crate::model::time_left;
use crate::sync::lock;
use crate::wire::chunked::ChunkedReader;
use crate::wire::response::{read_final_head, BodyFraming, ResponseError, ResponseHead};

/// Bytes read from a socket at a time (also the largest TLS record is 16 KiB).
const READ_BUFFER: usize = 64 * 1024;

/// How long and how many connections are kept.
#[derive(Clone, Copy, Debug)]
pub(super) struct Timeouts {
    pub connect: Duration,
    pub io: Duration,
    /// An idle connection older than this is closed rather than reused (servers close
    /// idle connections after some seconds; reusing one they closed costs a retry).
    pub idle_keep: Duration,
    pub max_idle: usize,
}

/// Where the requests go: plain TCP (loopback only, checked by the caller) or TLS.
pub(super) enum Transport {
    Plain,
    Tls(Arc<ClientConfig>),
}

/// A client for one `host:port`.
pub(super) struct Client {
    transport: Transport,
    host: String,
    port: u16,
    /// The `Host` field, as the signature covers it: `host`, or `host:port` when the port
    /// is not the scheme's default.
    pub host_field: String,
    timeouts: Timeouts,
    idle: Mutex<Vec<Idle>>,
}

struct Idle {
    conn: BufReader<Stream>,
    since: Instant,
}

/// One request: method, target (path and query, already encoded and signed), extra
/// header fields, body.
pub(super) struct Request<'a> {
    pub method: &'static str,
    pub target: &'a str,
    pub headers: &'a [(&'a str, String)],
    pub body: &'a [u8],
}

/// Why a request got no complete answer. All of these are worth a retry.
#[derive(Debug)]
pub(super) enum SendError {
    /// Failed before any byte of an answer arrived on a connection that had served an
    /// earlier request: the server may have closed it while idle. The request may or
    /// may not have reached the server.
    Stale(io::Error),
    /// Connecting, TLS, writing or reading failed, or the deadline passed.
    Io(io::Error),
    /// The answer is not HTTP.
    Malformed(&'static str),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Stale(e) => write!(f, "reused connection failed: {e}"),
            SendError::Io(e) => write!(f, "{e}"),
            SendError::Malformed(what) => write!(f, "not an HTTP answer: {what}"),
        }
    }
}

impl Client {
    pub(super) fn new(
        transport: Transport,
        host: &str,
        port: u16,
        host_field: String,
        t: Timeouts,
    ) -> Self {
        Client {
            transport,
            host: host.to_string(),
            port,
            host_field,
            timeouts: t,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Sends `req` and reads the answer's head, on an idle connection when one is
    /// alive, else on a new one. The body is read from the returned [`Response`]; when
    /// it has been read to its end, the connection goes back to the idle list.
    pub(super) fn send(
        &self,
        req: &Request<'_>,
        deadline: Instant,
    ) -> Result<Response<'_>, SendError> {
        let (mut conn, reused) = match self.take_idle() {
            Some(conn) => (conn, true),
            None => (self.connect(deadline).map_err(SendError::Io)?, false),
        };
        conn.get_mut().timed().deadline = deadline;
        let fail = |e: io::Error| {
            if reused {
                SendError::Stale(e)
            } else {
                SendError::Io(e)
            }
        };
        let mut head = format!(
            "{} {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: replgate/{}\r\n",
            req.method,
            req.target,
            self.host_field,
            env!("CARGO_PKG_VERSION")
        );
        for (k, v) in req.headers {
            head.push_str(k);
            head.push_str(": ");
            head.push_str(v);
            head.push_str("\r\n");
        }
        if !req.body.is_empty() || matches!(req.method, "PUT" | "POST") {
            head.push_str(&format!("Content-Length: {}\r\n", req.body.len()));
        }
        head.push_str("\r\n");
        let stream = conn.get_mut();
        stream.write_all(head.as_bytes()).map_err(fail)?;
        stream.write_all(req.body).map_err(fail)?;
        stream.flush().map_err(fail)?;
        if reused && conn.fill_buf().map_err(fail)?.is_empty() {
            return Err(SendError::Stale(io::ErrorKind::UnexpectedEof.into()));
        }
        let head = read_final_head(&mut conn).map_err(|e| match e {
            ResponseError::Io(e) => fail(e),
            ResponseError::Malformed(what) => SendError::Malformed(what),
        })?;
        let framing = head
            .framing(req.method == "HEAD")
            .map_err(|_| SendError::Malformed("Content-Length"))?;
        let keep = head.keep_alive();
        let body = match framing {
            BodyFraming::None => {
                if keep {
                    self.put_idle(conn);
                }
                Body::Done
            }
            BodyFraming::Length(0) => {
                if keep {
                    self.put_idle(conn);
                }
                Body::Done
            }
            BodyFraming::Length(n) => Body::Length { conn, left: n },
            BodyFraming::Chunked => Body::Chunked(ChunkedReader::new(conn)),
            BodyFraming::UntilClose => Body::UntilClose(conn),
        };
        Ok(Response {
            head,
            body,
            keep,
            client: self,
        })
    }

    fn take_idle(&self) -> Option<BufReader<Stream>> {
        // A poisoned lock only means a thread panicked between two whole pushes or pops.
        let mut idle = lock(&self.idle);
        while let Some(i) = idle.pop() {
            if i.since.elapsed() < self.timeouts.idle_keep && looks_open(&i.conn) {
                return Some(i.conn);
            }
        }
        None
    }

    fn put_idle(&self, conn: BufReader<Stream>) {
        let mut idle = lock(&self.idle);
        if idle.len() < self.timeouts.max_idle {
            idle.push(Idle {
                conn,
                since: Instant::now(),
            });
        }
    }

    fn connect(&self, deadline: Instant) -> io::Result<BufReader<Stream>> {
        let mut last = None;
        let mut sock = None;
        for addr in (self.host.as_str(), self.port).to_socket_addrs()? {
            let wait = time_left(deadline)?.min(self.timeouts.connect);
            match TcpStream::connect_timeout(&addr, wait) {
                Ok(s) => {
                    sock = Some(s);
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        let Some(sock) = sock else {
            return Err(last.unwrap_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("{} resolves to no address", self.host),
                )
            }));
        };
        sock.set_nodelay(true)?;
        sock.set_read_timeout(Some(self.timeouts.io))?;
        sock.set_write_timeout(Some(self.timeouts.io))?;
        let timed = Timed { sock, deadline };
        let stream = match &self.transport {
            Transport::Plain => Stream::Plain(timed),
            Transport::Tls(config) => {
                let name = server_name(&self.host)?;
                let conn = ClientConnection::new(config.clone(), name).map_err(io::Error::other)?;
                Stream::Tls(Box::new(StreamOwned::new(conn, timed)))
            }
        };
        Ok(BufReader::with_capacity(READ_BUFFER, stream))
    }
}

/// The server name for SNI and the certificate check: an IP address or a DNS name.
fn server_name(host: &str) -> io::Result<ServerName<'static>> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(ServerName::IpAddress(ip.into()));
    }
    ServerName::try_from(bare.to_string())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "not a valid server name"))
}

/// Whether an idle connection is still open: nothing to read (a server that closed it
/// sent a FIN, or a TLS alert, which shows as readable) and no buffered bytes.
fn looks_open(conn: &BufReader<Stream>) -> bool {
    if !conn.buffer().is_empty() {
        return false;
    }
    let sock = &conn.get_ref().timed_ref().sock;
    if sock.set_nonblocking(true).is_err() {
        return false;
    }
    let alive = matches!(sock.peek(&mut [0u8; 1]), Err(e) if e.kind() == io::ErrorKind::WouldBlock);
    alive && sock.set_nonblocking(false).is_ok()
}

/// A socket whose reads and writes fail once the call's deadline has passed (each one
/// is bounded by the socket's own timeout as well).
struct Timed {
    sock: TcpStream,
    deadline: Instant,
}

impl Read for Timed {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        time_left(self.deadline)?;
        self.sock.read(buf)
    }
}

impl Write for Timed {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        time_left(self.deadline)?;
        self.sock.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.sock.flush()
    }
}

enum Stream {
    Plain(Timed),
    Tls(Box<StreamOwned<ClientConnection, Timed>>),
}

impl Stream {
    fn timed(&mut self) -> &mut Timed {
        match self {
            Stream::Plain(t) => t,
            Stream::Tls(s) => &mut s.sock,
        }
    }

    fn timed_ref(&self) -> &Timed {
        match self {
            Stream::Plain(t) => t,
            Stream::Tls(s) => &s.sock,
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(t) => t.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(t) => t.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(t) => t.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

/// An answer whose body is still on the connection. Reading it to its end returns the
/// connection to the idle list (when the server keeps it open); dropping it earlier
/// closes the connection.
pub(super) struct Response<'c> {
    pub head: ResponseHead,
    body: Body,
    keep: bool,
    client: &'c Client,
}

enum Body {
    Done,
    Length { conn: BufReader<Stream>, left: u64 },
    Chunked(ChunkedReader<BufReader<Stream>>),
    UntilClose(BufReader<Stream>),
}

impl Response<'_> {
    pub(super) fn status(&self) -> u16 {
        self.head.status
    }

    pub(super) fn header(&self, name: &str) -> Option<&str> {
        self.head.header(name)
    }

    /// The whole body, refused past `limit` bytes.
    pub(super) fn body_bytes(&mut self, limit: u64) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        self.take(limit.saturating_add(1)).read_to_end(&mut out)?;
        if out.len() as u64 > limit {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("answer larger than {limit} bytes"),
            ));
        }
        Ok(out)
    }

    /// The whole body as UTF-8 text, refused past `limit` bytes.
    pub(super) fn body_text(&mut self, limit: u64) -> io::Result<String> {
        String::from_utf8(self.body_bytes(limit)?)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "answer is not UTF-8"))
    }

    fn finish(&mut self, conn: BufReader<Stream>) {
        if self.keep {
            self.client.put_idle(conn);
        }
    }
}

impl Read for Response<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        match &mut self.body {
            Body::Done => Ok(0),
            Body::Length { conn, left } => {
                let want = buf.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
                let n = conn.read(&mut buf[..want])?;
                if n == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("the answer ended {left} bytes short of its Content-Length"),
                    ));
                }
                *left -= n as u64;
                if *left == 0 {
                    if let Body::Length { conn, .. } = std::mem::replace(&mut self.body, Body::Done)
                    {
                        self.finish(conn);
                    }
                }
                Ok(n)
            }
            Body::Chunked(r) => {
                let n = r.read(buf)?;
                if n == 0 {
                    if let Body::Chunked(r) = std::mem::replace(&mut self.body, Body::Done) {
                        self.finish(r.into_inner());
                    }
                }
                Ok(n)
            }
            Body::UntilClose(conn) => {
                let n = conn.read(buf)?;
                if n == 0 {
                    self.body = Body::Done;
                }
                Ok(n)
            }
        }
    }
}
