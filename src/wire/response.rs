//! HTTP/1.1 response heads. As a client reads them: the status line and header fields of
//! one answer (at most [`MAX_HEAD`] bytes and [`MAX_HEADERS`] fields), interim `1xx`
//! answers skipped, and how the body that follows is framed. Shared by the two clients
//! (`remote::http`, one call per connection, and `objstore`, which keeps connections
//! alive); the body itself is read by the caller, through `wire::chunked` when chunked.
//! Reads from any `BufRead`; no sockets, no clock. As the servers write them: the reason
//! phrases ([`reason`]) and [`write_response_head`], used by the front, the spool
//! answerer, the tunnel and the error body's raw responses.

use std::fmt;
use std::io::{self, BufRead, Read};

/// The most of a response head read.
pub const MAX_HEAD: usize = 16 * 1024;
/// The most header lines in a response head.
pub const MAX_HEADERS: usize = 64;

/// Why a head could not be read.
#[derive(Debug)]
pub enum ResponseError {
    /// Reading failed, or the stream ended before the head did (`UnexpectedEof`).
    Io(io::Error),
    /// The bytes are not an HTTP/1.x response head; the text names the part.
    Malformed(&'static str),
}

impl fmt::Display for ResponseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResponseError::Io(e) => write!(f, "{e}"),
            ResponseError::Malformed(what) => write!(f, "not an HTTP answer: {what}"),
        }
    }
}

impl std::error::Error for ResponseError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ResponseError::Io(e) => Some(e),
            ResponseError::Malformed(_) => None,
        }
    }
}

impl From<io::Error> for ResponseError {
    fn from(e: io::Error) -> Self {
        ResponseError::Io(e)
    }
}

/// One final (non-1xx) response head.
#[derive(Debug)]
pub struct ResponseHead {
    pub status: u16,
    /// `HTTP/1.1` (rather than `HTTP/1.0`).
    pub http11: bool,
    /// Header fields in order, names lowercase, values trimmed.
    pub headers: Vec<(String, String)>,
}

/// How the body after a response head is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body: an answer to `HEAD`, a 204 or a 304.
    None,
    /// Exactly this many bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Up to the end of the connection.
    UntilClose,
}

impl ResponseHead {
    /// The first field called `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// How the body is framed; `head_request` for an answer to `HEAD`.
    pub fn framing(&self, head_request: bool) -> Result<BodyFraming, ResponseError> {
        if head_request || self.status == 204 || self.status == 304 {
            return Ok(BodyFraming::None);
        }
        let chunked = self
            .header("transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
        if chunked {
            return Ok(BodyFraming::Chunked);
        }
        match self.header("content-length") {
            Some(length) => length
                .parse()
                .map(BodyFraming::Length)
                .map_err(|_| ResponseError::Malformed("Content-Length")),
            None => Ok(BodyFraming::UntilClose),
        }
    }

    /// Whether the server keeps the connection open after this answer's body: HTTP/1.1
    /// without `Connection: close`, or HTTP/1.0 with `Connection: keep-alive`.
    pub fn keep_alive(&self) -> bool {
        let connection = |token: &str| {
            self.header("connection")
                .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        };
        if self.http11 {
            !connection("close")
        } else {
            connection("keep-alive")
        }
    }
}

/// Reads heads until a final one: interim (1xx) answers are skipped.
pub fn read_final_head(r: &mut impl BufRead) -> Result<ResponseHead, ResponseError> {
    loop {
        let head = read_head(r)?;
        if !(100..200).contains(&head.status) {
            return Ok(head);
        }
    }
}

/// Reads one head: the status line and header fields up to the empty line.
pub fn read_head(r: &mut impl BufRead) -> Result<ResponseHead, ResponseError> {
    let mut total = 0;
    let mut line = |r: &mut dyn BufRead| -> Result<String, ResponseError> {
        if total >= MAX_HEAD {
            return Err(ResponseError::Malformed("head too large"));
        }
        let mut buf = Vec::new();
        let n = r
            .take((MAX_HEAD - total) as u64)
            .read_until(b'\n', &mut buf)?;
        total += n;
        if n == 0 {
            return Err(ResponseError::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the connection closed before an answer",
            )));
        }
        if !buf.ends_with(b"\n") {
            return Err(ResponseError::Malformed("head too large"));
        }
        let text = String::from_utf8(buf).map_err(|_| ResponseError::Malformed("head"))?;
        Ok(text.trim_end_matches(['\r', '\n']).to_string())
    };
    let status_line = line(r)?;
    let mut parts = status_line.splitn(3, ' ');
    let (status, http11) = match (parts.next(), parts.next()) {
        (Some(v), Some(code)) if v.starts_with("HTTP/1.") && code.len() == 3 => (
            code.parse::<u16>()
                .map_err(|_| ResponseError::Malformed("status line"))?,
            v != "HTTP/1.0",
        ),
        _ => return Err(ResponseError::Malformed("status line")),
    };
    let mut headers = Vec::new();
    loop {
        let l = line(r)?;
        if l.is_empty() {
            return Ok(ResponseHead {
                status,
                http11,
                headers,
            });
        }
        if headers.len() >= MAX_HEADERS {
            return Err(ResponseError::Malformed("too many header fields"));
        }
        let (k, v) = l
            .split_once(':')
            .ok_or(ResponseError::Malformed("header field"))?;
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
}

/// Reason phrase for the statuses this daemon sends.
pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        412 => "Precondition Failed",
        413 => "Content Too Large",
        417 => "Expectation Failed",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

/// Appends a response head to `out`: status line with the reason phrase of
/// [`reason`], `headers` in order, `Content-Length`, blank line. The
/// caller appends the body (or not, for `HEAD`, 304 and 1xx).
pub fn write_response_head(
    out: &mut Vec<u8>,
    status: u16,
    headers: &[(&str, &str)],
    content_length: usize,
) {
    use std::io::Write;
    let reason = reason(status);
    // Writing into a Vec cannot fail.
    let _ = write!(out, "HTTP/1.1 {status} {reason}\r\n");
    for (name, value) in headers {
        let _ = write!(out, "{name}: {value}\r\n");
    }
    let _ = write!(out, "Content-Length: {content_length}\r\n\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_heads_are_written_in_order_with_their_length() {
        let mut out = Vec::new();
        write_response_head(&mut out, 304, &[("ETag", "\"x\""), ("A", "b")], 0);
        assert_eq!(
            out,
            b"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\nA: b\r\nContent-Length: 0\r\n\r\n"
        );
    }

    fn head(bytes: &[u8]) -> ResponseHead {
        read_final_head(&mut &bytes[..]).unwrap()
    }

    #[test]
    fn framing_and_keep_alive_follow_the_head() {
        let h = head(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n");
        assert_eq!(h.framing(false).unwrap(), BodyFraming::Length(5));
        assert_eq!(h.framing(true).unwrap(), BodyFraming::None);
        assert!(h.keep_alive());
        let h = head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: Close\r\n\r\n");
        assert_eq!(h.framing(false).unwrap(), BodyFraming::Chunked);
        assert!(!h.keep_alive());
        let h = head(b"HTTP/1.0 200 OK\r\n\r\n");
        assert_eq!(h.framing(false).unwrap(), BodyFraming::UntilClose);
        assert!(!h.keep_alive());
        let h = head(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n");
        assert!(h.keep_alive());
        let h = head(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n");
        assert_eq!(
            (h.status, h.framing(false).unwrap()),
            (204, BodyFraming::None)
        );
        let h = head(b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n");
        assert!(matches!(
            h.framing(false),
            Err(ResponseError::Malformed("Content-Length"))
        ));
    }
}
