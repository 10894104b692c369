//! HTTP/1.1 request heads: where a head ends, and a strict parse of one complete head into
//! what a server needs to frame and route it (the response heads the servers write are
//! `wire::response`'s). Pure functions over bytes; no I/O, no clock; parsing allocates
//! nothing and borrows from its input.
//!
//! The rules are stricter than tiny_http 0.12 on purpose: whatever passes here is framed
//! by tiny_http exactly as the TLS front frames it (same head end, same body length), so
//! the two can never disagree about where one request stops and the next begins. Caps
//! (how large a body may be, whether chunked bodies are taken) are the caller's policy:
//! [`RequestHead::capped_length`] is the front's.

use std::fmt;
use std::ops::Range;

/// The terminator of a request head.
const HEAD_END: &[u8] = b"\r\n\r\n";

/// The protocol version of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    Http10,
    Http11,
}

/// How the body of a request is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyFraming {
    /// Exactly this many bytes follow the head (0 when the head names no length).
    Length(u64),
    /// `Transfer-Encoding: chunked` (and no `Content-Length`).
    Chunked,
}

/// One request head that passed [`parse`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestHead<'a> {
    /// The method, exactly as sent (case-sensitive, as HTTP says).
    pub method: &'a str,
    /// The request target, exactly as sent: no decoding, no normalization.
    pub target: &'a str,
    pub version: Version,
    pub body: BodyFraming,
    /// The client sent `Expect: 100-continue` and waits for a `100 Continue` (or the
    /// final answer) before it sends the body.
    pub expect_continue: bool,
    /// The connection stays open after this request: HTTP/1.1 without `Connection:
    /// close`, or HTTP/1.0 with `Connection: keep-alive`.
    pub keep_alive: bool,
    /// The whole head, terminator included.
    raw: &'a [u8],
}

/// Why a head is refused, grouped by the status the client gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadError {
    /// 400: the head is not well-formed HTTP/1.x; the text names the part.
    Malformed(&'static str),
    /// 411: a transfer coding the caller does not take (for the front: any).
    TransferEncoding,
    /// 413: the announced body is larger than the caller's limit.
    BodyTooLarge {
        /// Announced length (saturated at `u64::MAX`).
        length: u64,
        /// The configured cap.
        limit: u64,
    },
    /// 417: an `Expect` other than a single `100-continue`.
    Expectation,
}

impl HeadError {
    /// The HTTP status the client receives.
    pub fn status(&self) -> u16 {
        match self {
            HeadError::Malformed(_) => 400,
            HeadError::TransferEncoding => 411,
            HeadError::BodyTooLarge { .. } => 413,
            HeadError::Expectation => 417,
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
            HeadError::Expectation => {
                f.write_str("only a single \"Expect: 100-continue\" is supported")
            }
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

/// Where a request head ends, for a server collecting one: as [`find_end`], except that a
/// line ended by a bare LF (no CR before it) ends the head just past that LF. Such a head
/// can never be valid, and a client that ends its lines with LF alone believes it has sent
/// its blank line already, so waiting on would only turn its 400 into a 408 at the head
/// deadline; [`parse`] refuses what this delimits. `from` is as for [`find_end`].
pub fn request_head_end(buf: &[u8], from: usize) -> Option<usize> {
    let blank_line = find_end(buf, from);
    let scan_to = blank_line.unwrap_or(buf.len()).min(buf.len());
    let bare_lf = (from..scan_to)
        .find(|&i| buf[i] == b'\n' && (i == 0 || buf[i - 1] != b'\r'))
        .map(|i| i + 1);
    bare_lf.or(blank_line)
}

/// Checks one complete head (as delimited by [`find_end`] or [`request_head_end`]).
///
/// Accepted: `METHOD SP target SP HTTP/1.0|HTTP/1.1`, then `name: value` lines, every line
/// ended by CRLF, only printable ASCII plus tab. `Content-Length` is plain digits and
/// repeats only with the same value. `Transfer-Encoding` is taken only as a single
/// `chunked` without `Content-Length`; anything else is [`HeadError::TransferEncoding`].
/// `Expect` only as one `100-continue`. Refused as malformed (400): obsolete line
/// folding, `Connection: upgrade`, and everything else tiny_http might read differently.
pub fn parse(head: &[u8]) -> Result<RequestHead<'_>, HeadError> {
    if head
        .iter()
        .enumerate()
        .any(|(i, &b)| b == b'\n' && (i == 0 || head[i - 1] != b'\r'))
    {
        return Err(HeadError::Malformed(
            "a line ends in a bare LF; HTTP/1.1 lines end in CRLF",
        ));
    }
    let Some(text) = head.strip_suffix(HEAD_END) else {
        return Err(HeadError::Malformed("head does not end with an empty line"));
    };
    let mut lines = Lines { rest: Some(text) };
    let request_line = lines.next().ok_or(HeadError::Malformed("empty head"))??;
    let (method, target, version) = split_request_line(request_line)?;

    let mut content_length: Option<u64> = None;
    let mut transfer_encoding: Option<&[u8]> = None;
    let mut repeated_transfer_encoding = false;
    let mut expects = 0usize;
    let mut expect_continue = false;
    let (mut close, mut keep_alive_token) = (false, false);
    for line in lines {
        let (name, value) = split_header(line?)?;
        if name.eq_ignore_ascii_case(b"content-length") {
            let length = parse_content_length(value)?;
            if content_length.is_some_and(|seen| seen != length) {
                return Err(HeadError::Malformed("conflicting content-length headers"));
            }
            content_length = Some(length);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            repeated_transfer_encoding |= transfer_encoding.is_some();
            transfer_encoding = Some(value);
        } else if name.eq_ignore_ascii_case(b"expect") {
            expects += 1;
            expect_continue = value.eq_ignore_ascii_case(b"100-continue");
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in value.split(|&b| b == b',').map(trim_ows) {
                if contains_upgrade(token) {
                    // tiny_http hands the rest of such a connection to one request as its
                    // body, which would end the framing the front relies on; the API never
                    // upgrades.
                    return Err(HeadError::Malformed("protocol upgrade is not supported"));
                }
                close |= token.eq_ignore_ascii_case(b"close");
                keep_alive_token |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        }
    }
    let body = match (transfer_encoding, content_length) {
        (None, length) => BodyFraming::Length(length.unwrap_or(0)),
        (Some(coding), None)
            if !repeated_transfer_encoding && coding.eq_ignore_ascii_case(b"chunked") =>
        {
            BodyFraming::Chunked
        }
        // Another coding, a list, or a length beside it (a classic smuggling vector).
        (Some(_), _) => return Err(HeadError::TransferEncoding),
    };
    if expects > 1 || (expects == 1 && !expect_continue) {
        return Err(HeadError::Expectation);
    }
    let keep_alive = match version {
        Version::Http11 => !close,
        Version::Http10 => keep_alive_token && !close,
    };
    Ok(RequestHead {
        method,
        target,
        version,
        body,
        expect_continue,
        keep_alive,
        raw: head,
    })
}

impl<'a> RequestHead<'a> {
    /// The body length under a server's caps: chunked bodies are refused (411) and a
    /// length over `max_body` is refused (413).
    pub fn capped_length(&self, max_body: u64) -> Result<u64, HeadError> {
        match self.body {
            BodyFraming::Chunked => Err(HeadError::TransferEncoding),
            BodyFraming::Length(length) if length > max_body => Err(HeadError::BodyTooLarge {
                length,
                limit: max_body,
            }),
            BodyFraming::Length(length) => Ok(length),
        }
    }

    /// The value (without surrounding whitespace) of the first header named `name`,
    /// compared case-insensitively.
    pub fn header(&self, name: &str) -> Option<&'a str> {
        self.fields()
            .find(|(n, _, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .and_then(|(_, value, _)| std::str::from_utf8(value).ok())
    }

    /// Where the first header line named `name` sits in the head, its CRLF included, so
    /// that a relay can cut it out before forwarding.
    pub fn line_range(&self, name: &str) -> Option<Range<usize>> {
        self.fields()
            .find(|(n, _, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, _, range)| range)
    }

    /// The length of the head, terminator included.
    pub fn len(&self) -> usize {
        self.raw.len()
    }

    /// Never true: a head has at least a request line and its terminator.
    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }

    /// Header lines (name, trimmed value, range of the line with its CRLF), in order.
    /// The head was validated by [`parse`], so every line splits.
    fn fields(&self) -> impl Iterator<Item = (&'a [u8], &'a [u8], Range<usize>)> {
        let raw = self.raw;
        let mut at = raw
            .windows(2)
            .position(|w| w == b"\r\n")
            .map_or(raw.len(), |i| i + 2);
        std::iter::from_fn(move || {
            let rest = raw.get(at..)?;
            let len = rest.windows(2).position(|w| w == b"\r\n")?;
            if len == 0 {
                return None;
            }
            let range = at..at + len + 2;
            at = range.end;
            let (name, value) = split_header(&rest[..len]).ok()?;
            Some((name, value, range))
        })
    }
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

fn split_request_line(line: &[u8]) -> Result<(&str, &str, Version), HeadError> {
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
    let version = match version {
        b"HTTP/1.1" => Version::Http11,
        b"HTTP/1.0" => Version::Http10,
        _ => return Err(HeadError::Malformed("unsupported http version")),
    };
    // Both are printable ASCII by now, so these conversions cannot fail.
    let text = |b| std::str::from_utf8(b).map_err(|_| HeadError::Malformed("non-ascii byte"));
    Ok((text(method)?, text(target)?, version))
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
/// `u64` saturate, which a body cap then refuses.
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

/// Splits an authority as a `Host` header or an origin carries it, `host[:port]` or
/// `[v6][:port]`, into the host (brackets removed) and the port. `None` when it is not
/// that shape: empty, an empty or zero or non-numeric port, an unclosed bracket, or a
/// bare IPv6 address without brackets. The host itself is not checked further.
pub fn split_authority(authority: &str) -> Option<(&str, Option<u16>)> {
    let (host, port) = match authority.strip_prefix('[') {
        Some(rest) => {
            let (host, after) = rest.split_once(']')?;
            match after {
                "" => (host, None),
                _ => (host, Some(after.strip_prefix(':')?)),
            }
        }
        None => match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        },
    };
    let port = match port {
        None => None,
        Some(p) => Some(p.parse::<u16>().ok().filter(|n| *n > 0)?),
    };
    (!host.is_empty()).then_some((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX_BODY: u64 = 65_536;

    /// The front's rules: parse, then its body cap.
    fn front_rules(head: &[u8]) -> Result<u64, HeadError> {
        parse(head).and_then(|h| h.capped_length(MAX_BODY))
    }

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
            ("GET / HTTP/1.1\r\nexpect: 100-Continue\r\n\r\n", 0),
        ];
        for (head, want) in cases {
            assert_eq!(front_rules(head.as_bytes()), Ok(*want), "{head:?}");
        }
    }

    #[test]
    fn a_bare_lf_ends_a_request_head_at_once_and_is_refused() {
        // LF-only lines: the head ends at the first bare LF, not at a blank line that a
        // CRLF scan would wait for until the head deadline.
        let lf = b"GET /api/health HTTP/1.1\nHost: x\n\n";
        assert_eq!(find_end(lf, 0), None);
        assert_eq!(request_head_end(lf, 0), Some(25));
        assert_eq!(
            parse(&lf[..25]),
            Err(HeadError::Malformed(
                "a line ends in a bare LF; HTTP/1.1 lines end in CRLF"
            ))
        );
        // Mixed: the first line is fine, the second ends in LF alone.
        let mixed = b"GET / HTTP/1.1\r\nHost: x\n\r\n";
        assert_eq!(request_head_end(mixed, 0), Some(24));
        assert_eq!(parse(&mixed[..24]).map_err(|e| e.status()), Err(400));
        // Resumed after the bytes before the LF were scanned; a leading LF counts too.
        assert_eq!(request_head_end(lf, 24), Some(25));
        assert_eq!(request_head_end(b"\n", 0), Some(1));
        // CRLF heads end where find_end says, also with an LF inside the next request.
        let good = b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /\n";
        assert_eq!(request_head_end(good, 0), find_end(good, 0));
        assert_eq!(request_head_end(b"GET / HTTP/1.1\r\nHo", 0), None);
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
            ("POST / HTTP/1.1\r\nExpect: 200-ok\r\n\r\n", 417),
            (
                "POST / HTTP/1.1\r\nExpect: 100-continue\r\nExpect: 100-continue\r\n\r\n",
                417,
            ),
        ];
        for (head, want) in cases {
            let got = front_rules(head.as_bytes()).map_err(|e| e.status());
            assert_eq!(got, Err(*want), "{head:?}");
        }
    }

    #[test]
    fn transfer_codings_are_framed_only_when_unambiguous() {
        let framing = |h: &str| parse(h.as_bytes()).map(|h| h.body);
        assert_eq!(
            framing("PUT / HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n"),
            Ok(BodyFraming::Chunked)
        );
        for head in [
            "PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
            "PUT / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            "PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            assert_eq!(framing(head), Err(HeadError::TransferEncoding), "{head:?}");
        }
    }

    #[test]
    fn parsed_heads_name_their_parts() {
        let raw = b"GET /replication/v1/spool/ab/status.json HTTP/1.1\r\nHost: x\r\n\
                    Expect: 100-continue\r\nIf-None-Match:  \"e1\" \r\n\r\n";
        let head = parse(raw).expect("valid head");
        assert_eq!(head.method, "GET");
        assert_eq!(head.target, "/replication/v1/spool/ab/status.json");
        assert_eq!(head.version, Version::Http11);
        assert_eq!(head.body, BodyFraming::Length(0));
        assert!(head.expect_continue && head.keep_alive);
        assert_eq!(head.len(), raw.len());
        assert_eq!(head.header("if-none-match"), Some("\"e1\""));
        assert_eq!(head.header("Authorization"), None);
        let range = head.line_range("EXPECT").expect("expect line");
        assert_eq!(&raw[range], b"Expect: 100-continue\r\n");
    }

    #[test]
    fn keep_alive_follows_the_version_and_the_connection_tokens() {
        let keep = |h: &str| parse(h.as_bytes()).map(|h| h.keep_alive);
        assert_eq!(keep("GET / HTTP/1.1\r\n\r\n"), Ok(true));
        assert_eq!(
            keep("GET / HTTP/1.1\r\nConnection: x, Close\r\n\r\n"),
            Ok(false)
        );
        assert_eq!(keep("GET / HTTP/1.0\r\n\r\n"), Ok(false));
        assert_eq!(
            keep("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"),
            Ok(true)
        );
    }

    #[test]
    fn refusal_messages_name_the_numbers() {
        let err = front_rules(b"PUT / HTTP/1.1\r\nContent-Length: 70000\r\n\r\n");
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
            let _ = front_rules(&good[..len]);
        }
        for at in 0..good.len() {
            for byte in [0u8, b'\r', b'\n', b' ', b':', 0xff] {
                let mut head = good.to_vec();
                head[at] = byte;
                if let Some(end) = find_end(&head, 0) {
                    if let Ok(h) = parse(&head[..end]) {
                        let _ = (h.header("a"), h.line_range("content-length"));
                    }
                }
            }
        }
    }

    #[test]
    fn authorities_split_into_host_and_port() {
        assert_eq!(split_authority("a.example"), Some(("a.example", None)));
        assert_eq!(
            split_authority("a.example:8443"),
            Some(("a.example", Some(8443)))
        );
        assert_eq!(split_authority("127.0.0.1:1"), Some(("127.0.0.1", Some(1))));
        assert_eq!(split_authority("[::1]"), Some(("::1", None)));
        assert_eq!(split_authority("[::1]:8443"), Some(("::1", Some(8443))));
        for bad in [
            "", ":8443", "a:", "a:0", "a:x", "a:70000", "[::1", "[::1]x", "::1", "[]",
        ] {
            assert_eq!(split_authority(bad), None, "{bad}");
        }
    }
}
