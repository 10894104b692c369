//! One request and its response on a tunnel connection, as handlers see them: the head,
//! the verified peer, the body as a `Read`, the reply (whole or streamed) and, for duplex
//! routes, a response writer. Also the loop that serves a connection's requests in turn.

use std::cell::RefCell;
use std::io::{self, Read, Write};
use std::net::SocketAddr;

use rustls::pki_types::CertificateDer;
use serde_json::Value;

use super::conn::{Conn, HeadRead, Io, IoRead, IoWrite, Response};
use super::error::TunnelHttpError;
use super::{BodyLimit, Route, Server};
use crate::model::{self, UnixTime};
use crate::wire::chunked::{ChunkedReader, ChunkedWriter};
use crate::wire::http::{self, BodyFraming, RequestHead};
use crate::wire::response::reason;

/// A body left unread by its handler is drained up to this much to keep the connection;
/// past it the connection closes after the response.
const DRAIN_UNREAD_BYTES: u64 = 64 * 1024;
/// Copy buffer for streamed responses and draining: one TLS record.
const COPY_BYTES: usize = 16 * 1024;

/// The peer of a tunnel connection, from its verified client certificate only.
#[derive(Clone, Debug)]
pub struct Peer {
    /// The address the listener saw.
    pub addr: SocketAddr,
    /// The certificate's serial in `ca::cert_serial_hex` form: the key of the `certs`
    /// table, and of revocation.
    pub serial: String,
    /// The end-entity certificate the handshake verified against the appliance CA.
    pub cert: CertificateDer<'static>,
}

/// One request as a handler sees it.
pub struct Call<'r> {
    head: RequestHead<'r>,
    path: &'r str,
    query: &'r str,
    params: Vec<&'r str>,
    peer: &'r Peer,
    /// Read once when the request arrived.
    pub now: UnixTime,
    body: Body<'r>,
    io: &'r dyn Io,
    duplex: bool,
}

impl<'r> Call<'r> {
    /// The method as sent (`HEAD` is routed as `GET`; its body is not sent).
    pub fn method(&self) -> &str {
        self.head.method
    }

    /// The path, without the query, exactly as sent.
    pub fn path(&self) -> &str {
        self.path
    }

    /// The `i`-th `{name}` segment of the route's pattern, as sent (not decoded).
    pub fn param(&self, i: usize) -> &str {
        self.params.get(i).copied().unwrap_or("")
    }

    /// The raw value of query parameter `name` (`a=1&b=2`), not decoded.
    pub fn query(&self, name: &str) -> Option<&str> {
        self.query
            .split('&')
            .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v)
    }

    /// A request header's value, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.header(name)
    }

    /// Who is calling: the verified certificate of the connection, never a header.
    pub fn peer(&self) -> &Peer {
        self.peer
    }

    /// The request body. For `BodyLimit::Capped` routes it was read whole before the
    /// handler ran; for `Stream` and `Duplex` routes it streams from the connection.
    pub fn body(&mut self) -> &mut Body<'r> {
        &mut self.body
    }

    /// The whole body of a capped route (empty for a streaming one: use [`Call::body`]).
    pub fn bytes(&self) -> &[u8] {
        match &self.body.kind {
            BodyKind::Buffered(cursor) => cursor.get_ref(),
            _ => &[],
        }
    }

    /// The body as JSON (capped routes).
    pub fn json(&self) -> Result<Value, TunnelHttpError> {
        serde_json::from_slice(self.bytes())
            .map_err(|e| TunnelHttpError::BadRequest(format!("request body is not json: {e}")))
    }

    /// For `BodyLimit::Duplex` routes: the body reader and a response writer, to use
    /// interleaved from the handler's thread. A handler that starts the response with the
    /// writer returns [`Reply::sent`]. `None` on other routes.
    pub fn duplex(&mut self) -> Option<(&mut Body<'r>, ResponseWriter<'r>)> {
        if !self.duplex {
            return None;
        }
        let writer = ResponseWriter {
            io: self.io,
            chunks: None,
        };
        Some((&mut self.body, writer))
    }
}

/// A request body: `Read` it. Reads fail with `TimedOut` when the peer makes no
/// progress for `idle_timeout`, and with `ConnectionAborted` when the certificate is
/// revoked or the daemon stops, within a quarter second.
pub struct Body<'r> {
    kind: BodyKind<'r>,
}

enum BodyKind<'r> {
    Buffered(io::Cursor<Vec<u8>>),
    Length { io: IoRead<'r>, left: u64 },
    Chunked(ChunkedReader<IoRead<'r>>),
}

impl Body<'_> {
    /// Whether the whole body has been read (so the connection can take another request).
    pub fn is_done(&self) -> bool {
        match &self.kind {
            BodyKind::Buffered(_) => true,
            BodyKind::Length { left, .. } => *left == 0,
            BodyKind::Chunked(reader) => reader.is_done(),
        }
    }
}

impl Read for Body<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &mut self.kind {
            BodyKind::Buffered(cursor) => cursor.read(buf),
            BodyKind::Length { io, left } => {
                if *left == 0 || buf.is_empty() {
                    return Ok(0);
                }
                let want = usize::try_from(*left).map_or(buf.len(), |l| l.min(buf.len()));
                let n = io.read(&mut buf[..want])?;
                if n == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "connection closed inside the request body",
                    ));
                }
                *left -= n as u64;
                Ok(n)
            }
            BodyKind::Chunked(reader) => reader.read(buf),
        }
    }
}

/// A successful answer: whole, streamed from a reader, or already sent by a duplex
/// handler.
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub headers: Vec<(&'static str, String)>,
    body: ReplyBody,
}

enum ReplyBody {
    Bytes(Vec<u8>),
    /// Copied to the peer after the handler returned; `length` known gives
    /// `Content-Length`, unknown gives chunked.
    Stream {
        length: Option<u64>,
        reader: Box<dyn Read + Send>,
    },
    Sent,
}

impl Reply {
    pub fn json(status: u16, value: &Value) -> Reply {
        Reply::bytes(status, "application/json", value.to_string().into_bytes())
    }

    pub fn bytes(status: u16, content_type: &'static str, body: Vec<u8>) -> Reply {
        Reply {
            status,
            content_type,
            headers: Vec::new(),
            body: ReplyBody::Bytes(body),
        }
    }

    /// A body the server copies from `reader` after the handler returned, with bounded
    /// memory. When `length` is given, exactly that many bytes must follow.
    pub fn stream(
        status: u16,
        content_type: &'static str,
        length: Option<u64>,
        reader: Box<dyn Read + Send>,
    ) -> Reply {
        Reply {
            status,
            content_type,
            headers: Vec::new(),
            body: ReplyBody::Stream { length, reader },
        }
    }

    /// The handler wrote the response itself through [`Call::duplex`]'s writer.
    pub fn sent() -> Reply {
        Reply {
            status: 200,
            content_type: "",
            headers: Vec::new(),
            body: ReplyBody::Sent,
        }
    }

    pub fn with_header(mut self, name: &'static str, value: String) -> Reply {
        self.headers.push((name, value));
        self
    }
}

/// The response of a duplex route, written while the request body is still being read:
/// [`ResponseWriter::start`] sends the head at once (chunked, `Connection: close`), each
/// `write` becomes a chunk, `flush` reaches the socket, [`ResponseWriter::finish`] ends
/// the body. Fails like [`Body`] on revocation, shutdown and stalls.
pub struct ResponseWriter<'r> {
    io: &'r dyn Io,
    chunks: Option<ChunkedWriter<IoWrite<'r>>>,
}

impl ResponseWriter<'_> {
    pub fn start(&mut self, status: u16, content_type: &str) -> io::Result<()> {
        self.start_with(status, content_type, &[])
    }

    /// [`ResponseWriter::start`] with more header fields.
    pub fn start_with(
        &mut self,
        status: u16,
        content_type: &str,
        headers: &[(&'static str, String)],
    ) -> io::Result<()> {
        if self.io.response() != Response::NotStarted {
            return Err(io::Error::other("the response was already started"));
        }
        let head = response_head(status, content_type, Framing::Chunked, true, headers);
        self.io.write_all(&head)?;
        self.io.flush()?;
        self.io.set_response(Response::Streaming);
        self.chunks = Some(ChunkedWriter::new(IoWrite(self.io)));
        Ok(())
    }

    /// Writes the last chunk and flushes.
    pub fn finish(mut self) -> io::Result<()> {
        let chunks = self
            .chunks
            .take()
            .ok_or_else(|| io::Error::other("the response was not started"))?;
        chunks.finish()?;
        self.io.set_response(Response::Finished);
        Ok(())
    }
}

impl Write for ResponseWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.chunks {
            Some(chunks) => chunks.write(buf),
            None => Err(io::Error::other("start the response before writing it")),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.chunks {
            Some(chunks) => chunks.flush(),
            None => Ok(()),
        }
    }
}

/// How a response body is delimited.
#[derive(Clone, Copy)]
enum Framing {
    Length(u64),
    Chunked,
}

fn response_head(
    status: u16,
    content_type: &str,
    framing: Framing,
    close: bool,
    headers: &[(&'static str, String)],
) -> Vec<u8> {
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\nDate: {}\r\n",
        reason(status),
        httpdate::fmt_http_date(std::time::SystemTime::now())
    );
    if !content_type.is_empty() {
        head.push_str(&format!("Content-Type: {content_type}\r\n"));
    }
    match framing {
        Framing::Length(n) => head.push_str(&format!("Content-Length: {n}\r\n")),
        Framing::Chunked => head.push_str("Transfer-Encoding: chunked\r\n"),
    }
    head.push_str("Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n");
    if close {
        head.push_str("Connection: close\r\n");
    }
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    head.into_bytes()
}

/// How a request ended, for the connection loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Next {
    /// Keep the connection for another request.
    KeepAlive,
    /// Close; the peer may still be sending (linger so it reads our answer).
    Close { linger: bool },
}

impl<S: Send + Sync + 'static> Server<S> {
    /// Serves `conn`'s requests one after another until one of them closes it.
    pub(super) fn serve_requests(&self, conn: Conn<'_>, peer: &Peer) {
        let cell = RefCell::new(conn);
        let limits = &self.limits;
        let linger = loop {
            let read = cell
                .borrow_mut()
                .read_head(limits.max_head_bytes, limits.head_timeout);
            let head = match read {
                HeadRead::Head(head) => head,
                HeadRead::Closed => break false,
                HeadRead::TimedOut => {
                    let limit = limits.head_timeout.as_millis();
                    let e = TunnelHttpError::Timeout(format!(
                        "request head not complete within {limit} ms"
                    ));
                    refuse(&cell, peer, "request head", &e);
                    break true;
                }
                HeadRead::TooLarge => {
                    let e = TunnelHttpError::HeadTooLarge(limits.max_head_bytes);
                    refuse(&cell, peer, "request head", &e);
                    break true;
                }
            };
            match self.exchange(&cell, peer, &head) {
                Next::KeepAlive if !draining(&cell) => {}
                Next::KeepAlive => break false,
                Next::Close { linger } => break linger,
            }
        };
        let conn = cell.into_inner();
        if let Some(why) = conn.cut_reason() {
            log::info!("tunnel: {} ({}): cut: {why}", peer.addr, peer.serial);
        }
        conn.close(linger);
    }

    /// One request: parse, route, check revocation, frame the body, run the handler,
    /// write the answer.
    fn exchange(&self, cell: &RefCell<Conn<'_>>, peer: &Peer, raw: &[u8]) -> Next {
        let head = match http::parse(raw) {
            Ok(head) => head,
            Err(e) => return refuse(cell, peer, "request head", &TunnelHttpError::Head(e)),
        };
        let what = format!("{} {}", head.method, head.target);
        let (path, query) = head.target.split_once('?').unwrap_or((head.target, ""));
        let (route, params) = match self.route(head.method, path) {
            Ok(found) => found,
            Err(e) => return refuse(cell, peer, &what, &e),
        };
        // The handshake checked the serial when the connection opened; a keep-alive
        // connection can outlive an unpair, so every request checks again, and from here
        // on the connection watches for a revocation while the request runs.
        if let Ok(mut conn) = cell.try_borrow_mut() {
            conn.watch_revocation();
        }
        match self.revocations.is_revoked(&peer.serial) {
            Ok(false) => {}
            Ok(true) => {
                let e = TunnelHttpError::Forbidden(format!(
                    "certificate {} has been revoked",
                    peer.serial
                ));
                return refuse(cell, peer, &what, &e);
            }
            Err(e) => return refuse(cell, peer, &what, &TunnelHttpError::from(e)),
        }
        let io: &dyn Io = cell;
        let body = match self.frame_body(cell, &head, route.body) {
            Ok(body) => body,
            Err(e) => return refuse(cell, peer, &what, &e),
        };
        let duplex = route.body == BodyLimit::Duplex;
        let mut call = Call {
            head,
            path,
            query,
            params,
            peer,
            now: model::now(),
            body,
            io,
            duplex,
        };
        let result = (route.handler)(&self.state, &mut call);
        let started = io.response() != Response::NotStarted;
        let mut close = duplex || !head.keep_alive || draining(cell);
        if !close && !drain_unread(&mut call.body) {
            close = true;
        }
        let head_only = head.method == "HEAD";
        let outcome = match result {
            Ok(reply) if started => finish_duplex(io, reply),
            Ok(reply) => send_reply(io, reply, close, head_only),
            Err(e) if started => {
                e.log(&what, "-");
                Err(io::Error::other(
                    "handler failed after starting its response",
                ))
            }
            Err(e) => {
                let reference = crate::rand::hex_string(4);
                e.log(&what, &reference);
                send_error(io, &e, &reference, close)
            }
        };
        log::debug!("tunnel: {} ({}): {what}", peer.addr, peer.serial);
        match outcome {
            Ok(()) if !close => Next::KeepAlive,
            Ok(()) => Next::Close { linger: true },
            Err(e) => {
                log::debug!("tunnel: {} ({}): {what}: {e}", peer.addr, peer.serial);
                Next::Close { linger: false }
            }
        }
    }

    /// The route for `method` and `path` (`HEAD` as `GET`), with its parameters.
    fn route<'p>(
        &self,
        method: &str,
        path: &'p str,
    ) -> Result<(&Route<S>, Vec<&'p str>), TunnelHttpError> {
        let method = if method == "HEAD" { "GET" } else { method };
        let mut allow: Vec<&str> = Vec::new();
        for route in &self.routes {
            let Some(params) = match_pattern(route.path, path) else {
                continue;
            };
            if route.method == method {
                return Ok((route, params));
            }
            allow.push(route.method);
        }
        if allow.is_empty() {
            let shown: String = path.chars().take(200).collect();
            return Err(TunnelHttpError::NotFound(format!("no such path: {shown}")));
        }
        if allow.contains(&"GET") {
            allow.push("HEAD");
        }
        Err(TunnelHttpError::MethodNotAllowed {
            allow: allow.join(", "),
        })
    }

    /// The body as its route takes it: capped bodies are read whole now, under the head
    /// deadline; streaming bodies are framed for the handler to read.
    fn frame_body<'r>(
        &self,
        cell: &'r RefCell<Conn<'_>>,
        head: &RequestHead<'_>,
        limit: BodyLimit,
    ) -> Result<Body<'r>, TunnelHttpError> {
        let io = IoRead(cell);
        let streaming = BodyKind::Length { io, left: 0 };
        let kind = match head.body {
            BodyFraming::Length(n) => BodyKind::Length { io, left: n },
            BodyFraming::Chunked => BodyKind::Chunked(ChunkedReader::new(io)),
        };
        let empty = matches!(head.body, BodyFraming::Length(0));
        {
            let mut conn = cell
                .try_borrow_mut()
                .map_err(|_| TunnelHttpError::Internal("connection busy".into()))?;
            conn.continue_owed = head.expect_continue && !empty;
        }
        let BodyLimit::Capped(cap) = limit else {
            return Ok(Body {
                kind: if empty { streaming } else { kind },
            });
        };
        if let BodyFraming::Length(n) = head.body {
            if n > cap {
                return Err(TunnelHttpError::TooLarge(format!(
                    "request body of {n} bytes exceeds the {cap}-byte limit of this path"
                )));
            }
        }
        let deadline = std::time::Instant::now() + self.limits.head_timeout;
        cell.try_borrow_mut()
            .map_err(|_| TunnelHttpError::Internal("connection busy".into()))?
            .deadline = Some(deadline);
        let mut body = Body { kind };
        let mut bytes = Vec::new();
        let read = (&mut body).take(cap + 1).read_to_end(&mut bytes);
        if let Ok(mut conn) = cell.try_borrow_mut() {
            conn.deadline = None;
        }
        match read {
            Ok(_) if bytes.len() as u64 > cap => Err(TunnelHttpError::TooLarge(format!(
                "request body exceeds the {cap}-byte limit of this path"
            ))),
            Ok(_) if !body.is_done() => Err(TunnelHttpError::BadRequest(
                "connection closed inside the request body".into(),
            )),
            Ok(_) => Ok(Body {
                kind: BodyKind::Buffered(io::Cursor::new(bytes)),
            }),
            Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                Err(TunnelHttpError::Timeout(format!(
                    "request body not complete within {} ms",
                    self.limits.head_timeout.as_millis()
                )))
            }
            Err(e) => Err(TunnelHttpError::BadRequest(format!(
                "request body could not be read: {e}"
            ))),
        }
    }
}

/// Whether the listener is shutting down (then no further request is taken).
fn draining(cell: &RefCell<Conn<'_>>) -> bool {
    cell.try_borrow().map_or(true, |conn| conn.draining())
}

/// Answers a request the server refuses itself (before or instead of its handler) and
/// closes the connection after it.
fn refuse(cell: &RefCell<Conn<'_>>, peer: &Peer, what: &str, e: &TunnelHttpError) -> Next {
    let reference = crate::rand::hex_string(4);
    e.log(
        &format!("{} ({}): {what}", peer.addr, peer.serial),
        &reference,
    );
    match send_error(cell, e, &reference, true) {
        Ok(()) => Next::Close { linger: true },
        Err(_) => Next::Close { linger: false },
    }
}

fn send_error(io: &dyn Io, e: &TunnelHttpError, reference: &str, close: bool) -> io::Result<()> {
    let body = e.body(reference).into_bytes();
    let head = response_head(
        e.status(),
        "application/json",
        Framing::Length(body.len() as u64),
        close,
        &e.headers(),
    );
    io.write_all(&head)?;
    io.write_all(&body)?;
    io.flush()
}

fn send_reply(io: &dyn Io, reply: Reply, close: bool, head_only: bool) -> io::Result<()> {
    let Reply {
        status,
        content_type,
        headers,
        body,
    } = reply;
    let framing = match &body {
        ReplyBody::Bytes(bytes) => Framing::Length(bytes.len() as u64),
        ReplyBody::Stream { length, .. } => length.map_or(Framing::Chunked, Framing::Length),
        ReplyBody::Sent => {
            return Err(io::Error::other(
                "handler said it sent its response but never started one",
            ))
        }
    };
    io.write_all(&response_head(
        status,
        content_type,
        framing,
        close,
        &headers,
    ))?;
    match body {
        _ if head_only => {}
        ReplyBody::Bytes(bytes) => io.write_all(&bytes)?,
        ReplyBody::Stream { length, mut reader } => copy_body(io, &mut *reader, length)?,
        ReplyBody::Sent => {}
    }
    io.flush()
}

/// Copies a streamed reply with one fixed buffer: exactly `length` bytes, or chunked.
fn copy_body(io: &dyn Io, reader: &mut dyn Read, length: Option<u64>) -> io::Result<()> {
    let mut buf = vec![0u8; COPY_BYTES];
    let mut sent = 0u64;
    let mut chunks = length.is_none().then(|| ChunkedWriter::new(IoWrite(io)));
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if let Some(length) = length {
            if sent + n as u64 > length {
                return Err(io::Error::other("streamed reply longer than announced"));
            }
        }
        sent += n as u64;
        match &mut chunks {
            Some(chunks) => chunks.write_all(&buf[..n])?,
            None => io.write_all(&buf[..n])?,
        }
    }
    match (chunks, length) {
        (Some(chunks), _) => chunks.finish().map(|_| ()),
        (None, Some(length)) if sent != length => {
            Err(io::Error::other("streamed reply shorter than announced"))
        }
        (None, _) => Ok(()),
    }
}

/// After a duplex handler returned: the response it started gets its last chunk if the
/// handler did not write it.
fn finish_duplex(io: &dyn Io, reply: Reply) -> io::Result<()> {
    if !matches!(reply.body, ReplyBody::Sent) {
        log::warn!("tunnel: a duplex handler started its response and returned another");
    }
    if io.response() == Response::Streaming {
        io.write_all(b"0\r\n\r\n")?;
        io.set_response(Response::Finished);
    }
    io.flush()
}

/// Reads and discards what the handler left of the body, up to 64 KiB; whether the body
/// is now complete (else the connection must close).
fn drain_unread(body: &mut Body<'_>) -> bool {
    if body.is_done() {
        return true;
    }
    let mut limited = body.take(DRAIN_UNREAD_BYTES);
    let drained = io::copy(&mut limited, &mut io::sink()).is_ok();
    drained && limited.into_inner().is_done()
}

/// Matches `path` against a pattern of `/`-separated segments where `{name}` stands for
/// one non-empty segment; the matched segments, in order.
fn match_pattern<'p>(pattern: &str, path: &'p str) -> Option<Vec<&'p str>> {
    let mut params = Vec::new();
    let mut want = pattern.split('/');
    let mut got = path.split('/');
    loop {
        match (want.next(), got.next()) {
            (None, None) => return Some(params),
            (Some(w), Some(g)) if w.starts_with('{') && !g.is_empty() => params.push(g),
            (Some(w), Some(g)) if w == g => {}
            _ => return None,
        }
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn patterns_match_whole_segments() {
        assert_eq!(
            match_pattern("/tunnel/v1/hello", "/tunnel/v1/hello"),
            Some(vec![])
        );
        assert_eq!(match_pattern("/tunnel/v1/hello", "/tunnel/v1/hello/"), None);
        assert_eq!(match_pattern("/tunnel/v1/hello", "/tunnel/v1//hello"), None);
        assert_eq!(
            match_pattern("/tunnel/v1/x/{id}", "/tunnel/v1/x/17"),
            Some(vec!["17"])
        );
        assert_eq!(match_pattern("/tunnel/v1/x/{id}", "/tunnel/v1/x/"), None);
        assert_eq!(match_pattern("/tunnel/v1/x/{id}", "/tunnel/v1/x/1/2"), None);
    }

    #[test]
    fn response_heads_say_how_the_body_is_framed() {
        let head = response_head(200, "application/json", Framing::Length(5), false, &[]);
        let text = String::from_utf8(head).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\nDate: "), "{text}");
        assert!(text.contains(" GMT\r\n"), "{text}");
        assert!(text.contains("Content-Length: 5\r\n"));
        assert!(!text.contains("Connection: close"));
        assert!(text.ends_with("\r\n\r\n"));
        let head = response_head(
            405,
            "",
            Framing::Chunked,
            true,
            &[("Allow", "GET, HEAD".into())],
        );
        let text = String::from_utf8(head).unwrap();
        assert!(text.contains("Transfer-Encoding: chunked\r\n"));
        assert!(text.contains("Connection: close\r\n"));
        assert!(text.contains("Allow: GET, HEAD\r\n"));
        assert!(!text.contains("\r\nContent-Type:"));
    }
}
