//! HTTP/1.1 request-head parsing for the front: finds where a head ends and decides
//! whether it may be forwarded and how many body bytes follow. Pure functions over bytes;
//! no I/O, no clock, no allocation.
//!
//! The rules are stricter than tiny_http 0.12 on purpose: whatever passes here is framed
//! by tiny_http exactly as the front frames it (same head end, same body length), so the
//! two can never disagree about where one request stops and the next begins.

use std::fmt;

/// The terminator of a request head.
const HEAD_END: &[u8] = b"\r\n\r\n";

/// What the front needs to know about a request head it accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestHead {
    /// Body bytes that follow the head (0 when the head names no `Content-Length`).
    pub content_length: u64,
}

/// Why a head is refused, grouped by the status the client gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadError {
    /// 400: the head is not well-formed HTTP/1.x; the text names the part.
    Malformed(&'static str),
    /// 411: chunked (or any other transfer-coded) request bodies are not accepted.
    TransferEncoding,
    /// 413: the announced body is larger than the configured limit.
    BodyTooLarge {
        /// Announced length (saturated at `u64::MAX`).
        length: u64,
        /// The configured cap.
        limit: u64,
    },
}

impl HeadError {
    /// The HTTP status the client receives.
    pub fn status(&self) -> u16 {
        match self {
            HeadError::Malformed(_) => 400,
            HeadError::TransferEncoding => 411,
            HeadError::BodyTooLarge { .. } => 413,
        }
    }
}

impl fmt::Display for HeadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeadError::Malformed(what) => write!(f, "malformed request head: {what}"),
            HeadError::TransferEncoding => f.write_str(
                "transfer-encoding is not supported on requests; send the body with content-length",
            ),
            HeadError::BodyTooLarge { length, limit } => write!(
                f,
                "request body of {length} bytes exceeds the {limit}-byte limit"
            ),
        }
    }
}

/// Length of the head at the start of `buf` including its terminating blank line, or
/// `None` when `buf` holds no complete head yet. `from` is how far an earlier call already
/// looked, so that a head arriving byte by byte is scanned once, not once per byte.
pub fn find_end(buf: &[u8], from: usize) -> Option<usize> {
    let start = from.saturating_sub(HEAD_END.len() - 1);
    buf.get(start..)?
        .windows(HEAD_END.len())
        .position(|w| w == HEAD_END)
        .map(|at| start + at + HEAD_END.len())
}

/// Checks one complete head (as delimited by [`find_end`]) and returns its body length.
///
/// Accepted: `METHOD SP target SP HTTP/1.0|HTTP/1.1`, then `name: value` lines, every line
/// ended by CRLF, only printable ASCII plus tab. `Content-Length` is plain digits and
/// repeats only with the same value. Refused: any `Transfer-Encoding` (411), a body over
/// `max_body` (413), obsolete line folding, `Connection: upgrade`, and everything else
/// tiny_http might read differently (400).
pub fn parse(head: &[u8], max_body: u64) -> Result<RequestHead, HeadError> {
    let Some(text) = head.strip_suffix(HEAD_END) else {
        return Err(HeadError::Malformed("head does not end with an empty line"));
    };
    let mut lines = Lines { rest: Some(text) };
    let request_line = lines.next().ok_or(HeadError::Malformed("empty head"))??;
    check_request_line(request_line)?;

    let mut content_length: Option<u64> = None;
    let mut transfer_encoding = false;
    for line in lines {
        let line = line?;
        let (name, value) = split_header(line)?;
        if name.eq_ignore_ascii_case(b"content-length") {
            let length = parse_content_length(value)?;
            if content_length.is_some_and(|seen| seen != length) {
                return Err(HeadError::Malformed("conflicting content-length headers"));
            }
            content_length = Some(length);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            transfer_encoding = true;
        } else if name.eq_ignore_ascii_case(b"connection") && contains_upgrade(value) {
            // tiny_http hands the rest of such a connection to one request as its body,
            // which would end the framing the front relies on; the API never upgrades.
            return Err(HeadError::Malformed("protocol upgrade is not supported"));
        }
    }
    if transfer_encoding {
        return Err(HeadError::TransferEncoding);
    }
    let content_length = content_length.unwrap_or(0);
    if content_length > max_body {
        return Err(HeadError::BodyTooLarge {
            length: content_length,
            limit: max_body,
        });
    }
    Ok(RequestHead { content_length })
}

/// Splits a head (without its final blank line) at CRLF, refusing any byte that is not
/// printable ASCII or tab, including a CR or LF that is not part of a CRLF pair.
struct Lines<'a> {
    rest: Option<&'a [u8]>,
}

impl<'a> Iterator for Lines<'a> {
    type Item = Result<&'a [u8], HeadError>;

    fn next(&mut self) -> Option<Self::Item> {
        let rest = self.rest?;
        let (line, after) = match rest.windows(2).position(|w| w == b"\r\n") {
            Some(at) => (&rest[..at], Some(&rest[at + 2..])),
            None => (rest, None),
        };
        self.rest = after;
        if line
            .iter()
            .any(|&b| !(b == b'\t' || (b' '..=b'~').contains(&b)))
        {
            self.rest = None;
            return Some(Err(HeadError::Malformed(
                "request head contains a control or non-ascii byte",
            )));
        }
        if line.is_empty() {
            self.rest = None;
            return Some(Err(HeadError::Malformed("empty line inside the head")));
        }
        Some(Ok(line))
    }
}

fn check_request_line(line: &[u8]) -> Result<(), HeadError> {
    let mut parts = line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HeadError::Malformed(
            "request line is not method, target, version",
        ));
    };
    if method.is_empty() || !method.iter().all(|&b| is_tchar(b)) {
        return Err(HeadError::Malformed("invalid method"));
    }
    if target.is_empty() || !target.iter().all(|&b| (b'!'..=b'~').contains(&b)) {
        return Err(HeadError::Malformed("invalid request target"));
    }
    if version != b"HTTP/1.1" && version != b"HTTP/1.0" {
        return Err(HeadError::Malformed("unsupported http version"));
    }
    Ok(())
}

fn split_header(line: &[u8]) -> Result<(&[u8], &[u8]), HeadError> {
    if matches!(line.first(), Some(b' ' | b'\t')) {
        return Err(HeadError::Malformed(
            "folded header lines are not supported",
        ));
    }
    let colon = line
        .iter()
        .position(|&b| b == b':')
        .ok_or(HeadError::Malformed("header line without a colon"))?;
    let name = &line[..colon];
    if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
        return Err(HeadError::Malformed("invalid header name"));
    }
    Ok((name, trim_ows(&line[colon + 1..])))
}

/// Plain decimal digits only: no sign, no list, no spaces inside. Values too large for
/// `u64` saturate, which the body cap then refuses.
fn parse_content_length(value: &[u8]) -> Result<u64, HeadError> {
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return Err(HeadError::Malformed("invalid content-length"));
    }
    Ok(value.iter().fold(0u64, |acc, &d| {
        acc.saturating_mul(10).saturating_add(u64::from(d - b'0'))
    }))
}

fn contains_upgrade(value: &[u8]) -> bool {
    value
        .windows(b"upgrade".len())
        .any(|w| w.eq_ignore_ascii_case(b"upgrade"))
}

fn trim_ows(mut value: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = value {
        value = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = value {
        value = rest;
    }
    value
}

/// RFC 9110 token characters (methods and header names).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX_BODY: u64 = 65_536;

    #[test]
    fn good_heads_give_their_body_length() {
        let cases: &[(&str, u64)] = &[
            ("GET / HTTP/1.1\r\n\r\n", 0),
            ("GET /api/health HTTP/1.1\r\nHost: a\r\n\r\n", 0),
            ("HEAD /x?y=1 HTTP/1.0\r\n\r\n", 0),
            ("POST /api/login HTTP/1.1\r\nContent-Length: 17\r\n\r\n", 17),
            ("POST / HTTP/1.1\r\ncontent-length:\t42 \r\n\r\n", 42),
            (
                "POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
                5,
            ),
            ("POST / HTTP/1.1\r\nContent-Length: 0005\r\n\r\n", 5),
            ("PUT / HTTP/1.1\r\nContent-Length: 65536\r\n\r\n", 65_536),
            ("GET / HTTP/1.1\r\nX-Empty:\r\nAuthToken: abc\r\n\r\n", 0),
            ("GET / HTTP/1.1\r\nConnection: keep-alive\r\n\r\n", 0),
            ("GET / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n", 0),
        ];
        for (head, want) in cases {
            let got = parse(head.as_bytes(), MAX_BODY);
            assert_eq!(
                got,
                Ok(RequestHead {
                    content_length: *want
                }),
                "{head:?}"
            );
        }
    }

    #[test]
    fn bad_heads_get_the_status_an_admin_expects() {
        let cases: &[(&str, u16)] = &[
            ("\r\n\r\n", 400),
            ("\r\nGET / HTTP/1.1\r\n\r\n", 400),
            ("GET / HTTP/1.1 x\r\n\r\n", 400),
            ("GET  / HTTP/1.1\r\n\r\n", 400),
            ("GET /\r\n\r\n", 400),
            ("GET / HTTP/2.0\r\n\r\n", 400),
            ("GET / http/1.1\r\n\r\n", 400),
            ("G(T / HTTP/1.1\r\n\r\n", 400),
            ("GET /\x7f HTTP/1.1\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nHost a\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\n: a\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nA: b\r\n c\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nA: b\nContent-Length: 5\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nA: b\rc\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nA: \0\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nA: caf\u{e9}\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nContent-Length:\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nContent-Length: 1 2\r\n\r\n", 400),
            (
                "POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
                400,
            ),
            (
                "GET / HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n",
                400,
            ),
            ("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 411),
            (
                "POST / HTTP/1.1\r\nContent-Length: 5\r\ntransfer-encoding: identity\r\n\r\n",
                411,
            ),
            ("POST / HTTP/1.1\r\nContent-Length: 65537\r\n\r\n", 413),
            (
                "POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n",
                413,
            ),
            ("GET / HTTP/1.1\r\n", 400),
        ];
        for (head, want) in cases {
            let got = parse(head.as_bytes(), MAX_BODY).map_err(|e| e.status());
            assert_eq!(got, Err(*want), "{head:?}");
        }
    }

    #[test]
    fn refusal_messages_name_the_numbers() {
        let err = parse(b"PUT / HTTP/1.1\r\nContent-Length: 70000\r\n\r\n", MAX_BODY);
        assert_eq!(
            err.map_err(|e| e.to_string()),
            Err("request body of 70000 bytes exceeds the 65536-byte limit".to_owned())
        );
    }

    #[test]
    fn find_end_finds_the_first_blank_line_even_when_scanned_in_pieces() {
        let buf = b"GET / HTTP/1.1\r\nA: b\r\n\r\nGET /next HTTP/1.1\r\n\r\n";
        let want = Some(24);
        assert_eq!(find_end(buf, 0), want);
        // Earlier calls saw a prefix that ended in the middle of the terminator.
        for from in 0..=23 {
            assert_eq!(find_end(buf, from), want, "from {from}");
        }
        assert_eq!(find_end(b"GET / HTTP/1.1\r\n\r", 0), None);
        assert_eq!(find_end(b"", 0), None);
        assert_eq!(find_end(b"ab", 10), None);
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A cheap deterministic stand-in for a fuzzer: every prefix and every single-byte
        // corruption of a valid head goes through both functions.
        let good = b"POST /api/x HTTP/1.1\r\nContent-Length: 12\r\nA: b\r\n\r\n";
        for len in 0..=good.len() {
            let _ = find_end(&good[..len], 0);
            let _ = parse(&good[..len], MAX_BODY);
        }
        for at in 0..good.len() {
            for byte in [0u8, b'\r', b'\n', b' ', b':', 0xff] {
                let mut head = good.to_vec();
                head[at] = byte;
                if let Some(end) = find_end(&head, 0) {
                    let _ = parse(&head[..end], MAX_BODY);
                }
            }
        }
    }
}
