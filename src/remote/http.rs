//! One HTTPS/1.1 call per connection, for the calls this crate makes as a client (to
//! another appliance's API or tunnel, and ctl's to its own daemon): TLS from our own
//! rustls config (`tls::pinned_client_config`, so only a pinned CA is trusted), connect
//! bounded per address and the whole call bounded by one deadline, no proxy, no
//! redirects, `Connection: close`, a bounded answer. Replaces ureq, whose machinery (a
//! connection pool, proxies, redirects, cookies, its own HTTP types) cost about 200 KB of
//! the 4 MB binary budget for four kinds of call (docs/decisions.md, "Binary size").
//! Reading an answer is a plain function over bytes ([`read_response`]), tested alone.

use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, StreamOwned};

use crate::model::time_left;
use crate::wire::chunked::ChunkedReader;
use crate::wire::http::split_authority;
use crate::wire::response::{read_final_head, BodyFraming, ResponseError};
#[cfg(test)]
use crate::wire::response::{MAX_HEAD, MAX_HEADERS};

/// Connecting to one address of a peer; a peer that does not answer within this is down.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a call failed.
#[derive(Debug)]
pub enum HttpError {
    /// The address is not `host[:port]`.
    Address(String),
    /// Resolving, connecting, writing or reading failed, or the deadline passed
    /// (`TimedOut`). rustls reports a failed handshake this way too: an `io::Error` around
    /// the `rustls::Error` ([`HttpError::tls`] finds it).
    Io(io::Error),
    /// The answer's body is larger than the caller reads.
    TooLarge(u64),
    /// The answer is not an HTTP/1.x response.
    Malformed(&'static str),
}

impl HttpError {
    /// The TLS failure behind this error, if the call failed in TLS.
    pub fn tls(&self) -> Option<&rustls::Error> {
        match self {
            HttpError::Io(e) => e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()),
            _ => None,
        }
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpError::Address(a) => write!(f, "{a:?} is not host:port"),
            HttpError::Io(e) => write!(f, "{e}"),
            HttpError::TooLarge(limit) => write!(f, "answer larger than {limit} bytes"),
            HttpError::Malformed(what) => write!(f, "not an HTTP answer: {what}"),
        }
    }
}

impl std::error::Error for HttpError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            HttpError::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for HttpError {
    fn from(e: io::Error) -> Self {
        HttpError::Io(e)
    }
}

impl From<ResponseError> for HttpError {
    fn from(e: ResponseError) -> Self {
        match e {
            ResponseError::Io(e) => HttpError::Io(e),
            ResponseError::Malformed(what) => HttpError::Malformed(what),
        }
    }
}

/// An answer: its status, its header fields (names lowercase) and its body.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    /// The first field called `name` (lowercase), trimmed.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// `Retry-After` when given in seconds.
    pub fn retry_after(&self) -> Option<u64> {
        self.header("retry-after")?.parse().ok()
    }
}

/// A request body and its media type.
pub struct Body<'a> {
    pub content_type: &'a str,
    pub bytes: &'a [u8],
}

/// A client: the TLS config every connection uses, the whole-call bound, the user agent.
pub struct Client {
    tls: Arc<ClientConfig>,
    call_timeout: Duration,
    user_agent: &'static str,
}

impl Client {
    pub fn new(tls: Arc<ClientConfig>, call_timeout: Duration, user_agent: &'static str) -> Self {
        Client {
            tls,
            call_timeout,
            user_agent,
        }
    }

    /// One call to `authority` (`host:port`, port 443 when left out; `[v6]` in brackets):
    /// `method` `path` with `headers` and `body`, an answer of at most `limit` body bytes.
    pub fn call(
        &self,
        authority: &str,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Body<'_>>,
        limit: u64,
    ) -> Result<Response, HttpError> {
        let deadline = Instant::now() + self.call_timeout;
        let (host, port) =
            split_authority(authority).ok_or_else(|| HttpError::Address(authority.into()))?;
        let name = ServerName::try_from(host.to_string())
            .map_err(|_| HttpError::Address(authority.into()))?;
        let sock = connect(host, port.unwrap_or(443), deadline)?;
        let conn = ClientConnection::new(self.tls.clone(), name)
            .map_err(|e| HttpError::Io(io::Error::other(e)))?;
        let mut stream = StreamOwned::new(conn, Timed { sock, deadline });
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: {}\r\n\
             Accept: application/json\r\nConnection: close\r\n",
            self.user_agent
        );
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        if let Some(b) = &body {
            head.push_str(&format!(
                "Content-Type: {}\r\nContent-Length: {}\r\n",
                b.content_type,
                b.bytes.len()
            ));
        }
        head.push_str("\r\n");
        let mut out = head.into_bytes();
        out.extend_from_slice(body.map_or(&[][..], |b| b.bytes));
        stream.write_all(&out)?;
        stream.flush()?;
        read_response(BufReader::new(stream), method == "HEAD", limit)
    }
}

/// Connects to the first address of `host` that answers within [`CONNECT_TIMEOUT`] (and
/// the deadline).
fn connect(host: &str, port: u16, deadline: Instant) -> Result<TcpStream, HttpError> {
    let mut last = None;
    for addr in (host, port).to_socket_addrs()? {
        let wait = time_left(deadline)?.min(CONNECT_TIMEOUT);
        match TcpStream::connect_timeout(&addr, wait) {
            Ok(s) => {
                s.set_nodelay(true)?;
                return Ok(s);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(HttpError::Io(last.unwrap_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("{host} resolves to no address"),
        )
    })))
}

/// A socket whose every read and write ends by the call's deadline.
struct Timed {
    sock: TcpStream,
    deadline: Instant,
}

impl Read for Timed {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.sock
            .set_read_timeout(Some(time_left(self.deadline)?))?;
        self.sock.read(buf)
    }
}

impl Write for Timed {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.sock
            .set_write_timeout(Some(time_left(self.deadline)?))?;
        self.sock.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.sock.flush()
    }
}

/// Reads one answer: skips interim (1xx) answers, then the head (at most `MAX_HEAD`
/// bytes, `wire::response`), then the body as the head frames it (chunked, a length, or up
/// to the end of the connection), refusing one of more than `limit` bytes. `head_only` for
/// a HEAD request.
pub fn read_response(
    mut r: impl BufRead,
    head_only: bool,
    limit: u64,
) -> Result<Response, HttpError> {
    let head = read_final_head(&mut r)?;
    let framing = head.framing(head_only)?;
    let mut response = Response {
        status: head.status,
        headers: head.headers,
        body: String::new(),
    };
    let mut bytes = Vec::new();
    match framing {
        BodyFraming::None => return Ok(response),
        BodyFraming::Chunked => read_limited(ChunkedReader::new(r), limit, &mut bytes)?,
        BodyFraming::Length(length) => {
            if length > limit {
                return Err(HttpError::TooLarge(limit));
            }
            r.take(length).read_to_end(&mut bytes)?;
            if bytes.len() as u64 != length {
                return Err(HttpError::Io(io::ErrorKind::UnexpectedEof.into()));
            }
        }
        BodyFraming::UntilClose => {
            // Delimited by the end of the connection. A peer that closes without TLS's
            // close_notify ends the body here too.
            match read_limited(r, limit, &mut bytes) {
                Err(HttpError::Io(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {}
                other => other?,
            }
        }
    }
    response.body = String::from_utf8(bytes).map_err(|_| HttpError::Malformed("body"))?;
    Ok(response)
}

fn read_limited(r: impl Read, limit: u64, out: &mut Vec<u8>) -> Result<(), HttpError> {
    r.take(limit.saturating_add(1)).read_to_end(out)?;
    if out.len() as u64 > limit {
        return Err(HttpError::TooLarge(limit));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(bytes: &[u8], limit: u64) -> Result<Response, HttpError> {
        read_response(bytes, false, limit)
    }

    #[test]
    fn answers_are_framed_by_length_chunks_or_the_end_of_the_connection() {
        let r = read(
            b"HTTP/1.1 201 Created\r\nContent-Length: 5\r\nRetry-After: 7\r\n\r\nhelloNEXT",
            100,
        )
        .unwrap();
        assert_eq!((r.status, r.body.as_str()), (201, "hello"));
        assert_eq!(r.retry_after(), Some(7));
        assert_eq!(r.header("content-length"), Some("5"));

        let r = read(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: Chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
            100,
        )
        .unwrap();
        assert_eq!(r.body, "abcde");

        let r = read(b"HTTP/1.0 404 Not Found\r\n\r\nto the end", 100).unwrap();
        assert_eq!((r.status, r.body.as_str()), (404, "to the end"));
        assert_eq!(r.retry_after(), None);

        let r = read(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
            100,
        )
        .unwrap();
        assert_eq!((r.status, r.body.as_str()), (204, ""));
    }

    #[test]
    fn a_body_over_the_limit_is_refused_however_it_is_framed() {
        let long = b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nhello world";
        assert!(matches!(read(long, 10), Err(HttpError::TooLarge(10))));
        assert_eq!(read(long, 11).unwrap().body, "hello world");
        let chunked =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nb\r\nhello world\r\n0\r\n\r\n";
        assert!(matches!(read(chunked, 10), Err(HttpError::TooLarge(10))));
        let open = b"HTTP/1.1 200 OK\r\n\r\nhello world";
        assert!(matches!(read(open, 10), Err(HttpError::TooLarge(10))));
    }

    #[test]
    fn broken_answers_are_errors_that_say_so() {
        let cases: [&[u8]; 7] = [
            b"",
            b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
            b"SSH-2.0-OpenSSH_9.2\r\n\r\n",
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
        ];
        for case in cases {
            let e = read(case, 100).unwrap_err();
            let eof = matches!(&e, HttpError::Io(io) if io.kind() == io::ErrorKind::UnexpectedEof);
            assert!(
                eof || matches!(e, HttpError::Malformed(_)),
                "{:?}: {e:?}",
                String::from_utf8_lossy(case)
            );
        }
        let mut huge = b"HTTP/1.1 200 OK\r\n".to_vec();
        huge.extend(std::iter::repeat_n(b'x', MAX_HEAD));
        assert!(matches!(
            read(&huge, 100),
            Err(HttpError::Malformed("head too large"))
        ));
        let mut many = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend(format!("x-{i}: y\r\n").bytes());
        }
        many.extend(b"\r\n");
        assert!(matches!(read(&many, 100), Err(HttpError::Malformed(_))));
        assert!(matches!(
            read(b"HTTP/1.1 200 OK\r\n\r\n\xff\xfe", 100),
            Err(HttpError::Malformed("body"))
        ));
    }
}
