//! The spool's files over HTTP, one implementation for both ways a poll is answered: the
//! route `GET /replication/v1/spool/{token}/{file}` through tiny_http, and
//! [`SpoolAnswerer`], which the wiring hands to the TLS front so that a poll is answered
//! on the connection's own thread. Parses the token and name before any filesystem
//! access; only the spool decides what a file holds.

use std::sync::Arc;
use std::time::SystemTime;

use super::error::ApiError;
use super::{App, Call, Reply, COMMON_HEADERS};
use crate::front::LocalAnswer;
use crate::spool::{Served, Spool};
use crate::wire::http::RequestHead;
use crate::wire::protocol::{SpoolFile, SpoolToken};
use crate::wire::response::write_response_head;

/// The path prefix of every spool file, exactly as a source sends it.
const PREFIX: &str = "/replication/v1/spool/";

/// What a `GET` of one spool file gets.
enum Answer {
    /// 200 with the file.
    File(SpoolFile, Arc<Served>),
    /// 304: the client's `If-None-Match` names the current entity tag.
    NotModified(SpoolFile, Arc<Served>),
}

/// Looks one file up: `token` and `name` are the two path segments, decoded.
fn answer(
    spool: &Spool,
    token: &str,
    name: &str,
    if_none_match: Option<&str>,
) -> Result<Answer, ApiError> {
    let not_found = || ApiError::NotFound("no such spool file".into());
    let token = SpoolToken::parse(token).ok_or_else(not_found)?;
    let file = SpoolFile::parse(name).ok_or_else(not_found)?;
    let served = spool.read(&token, file).map_err(|_| not_found())?;
    let matches = if_none_match.is_some_and(|v| {
        v.split(',')
            .any(|t| t.trim() == served.etag || t.trim() == "*")
    });
    Ok(if matches {
        Answer::NotModified(file, served)
    } else {
        Answer::File(file, served)
    })
}

/// `GET /replication/v1/spool/{token}/{file}` (and `HEAD`) through tiny_http: requests
/// the front did not answer itself (another request was in flight, HTTP/1.0,
/// `Connection: close`, a percent-encoded or query-carrying path).
pub(super) fn handler(call: &Call) -> Result<Reply, ApiError> {
    let reply = match answer(
        &call.app.spool,
        call.param(0),
        call.param(1),
        call.if_none_match.as_deref(),
    )? {
        Answer::File(file, served) => Reply {
            status: 200,
            body: served.bytes.clone(),
            content_type: file.content_type(),
            headers: vec![("ETag", served.etag.clone())],
        },
        Answer::NotModified(file, served) => Reply {
            status: 304,
            body: Vec::new(),
            content_type: file.content_type(),
            headers: vec![("ETag", served.etag.clone())],
        },
    };
    Ok(reply)
}

/// Answers spool polls in the TLS front: `GET`/`HEAD` of exactly
/// `/replication/v1/spool/<token>/<file>` with no `%`, `?` or `#` anywhere in the target
/// (so that what the router would decode is what is seen here). Everything else is
/// declined and goes through tiny_http to the same code, so both paths give the same
/// status, headers and bytes.
pub struct SpoolAnswerer {
    app: Arc<App>,
}

impl SpoolAnswerer {
    pub fn new(app: Arc<App>) -> SpoolAnswerer {
        SpoolAnswerer { app }
    }
}

impl LocalAnswer for SpoolAnswerer {
    fn answer(&self, head: &RequestHead<'_>, out: &mut Vec<u8>) -> bool {
        let Some((token, name)) = spool_segments(head.target) else {
            return false;
        };
        let send_body = match head.method {
            "GET" => true,
            "HEAD" => false,
            _ => return false,
        };
        let date = http_date();
        let if_none_match = head.header("If-None-Match");
        match answer(&self.app.spool, token, name, if_none_match) {
            Ok(Answer::File(file, served)) => {
                let headers = response_headers(&date, file.content_type(), Some(&served.etag));
                write_response_head(out, 200, &headers, served.bytes.len());
                if send_body {
                    out.extend_from_slice(&served.bytes);
                }
            }
            Ok(Answer::NotModified(file, served)) => {
                let headers = response_headers(&date, file.content_type(), Some(&served.etag));
                write_response_head(out, 304, &headers, 0);
            }
            Err(err) => {
                let (status, _) = err.status_and_code();
                // Only NotFound comes out of `answer`, and it has no reference.
                let body = err.body("-");
                log::info!(
                    "{} {} -> {status}: {}",
                    head.method,
                    head.target,
                    err.message("-")
                );
                let headers = response_headers(&date, "application/json", None);
                write_response_head(out, status, &headers, body.len());
                if send_body {
                    out.extend_from_slice(body.as_bytes());
                }
            }
        }
        true
    }
}

/// `Date` for a response now. Formatted once a second per thread: each connection has
/// its own thread, and a busy one answers thousands of polls a second.
fn http_date() -> std::rc::Rc<str> {
    use std::cell::RefCell;
    use std::rc::Rc;
    use std::time::UNIX_EPOCH;
    thread_local! {
        static DATE: RefCell<(u64, Rc<str>)> = RefCell::new((u64::MAX, Rc::from("")));
    }
    let now = SystemTime::now();
    let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with(|cell| {
        let mut cached = cell.borrow_mut();
        if cached.0 != second {
            *cached = (second, Rc::from(httpdate::fmt_http_date(now)));
        }
        Rc::clone(&cached.1)
    })
}

/// The headers the worker path sends too (tiny_http adds `Date` and `Content-Length`
/// there; `write_response_head` adds the latter here).
fn response_headers<'a>(
    date: &'a str,
    content_type: &'a str,
    etag: Option<&'a str>,
) -> Vec<(&'a str, &'a str)> {
    let mut headers = Vec::with_capacity(5);
    headers.push(("Date", date));
    headers.push(("Content-Type", content_type));
    headers.extend_from_slice(&COMMON_HEADERS);
    if let Some(etag) = etag {
        headers.push(("ETag", etag));
    }
    headers
}

/// The token and file segments of an exact spool path, or `None` for anything the
/// router could read differently (encoded bytes, a query, a fragment, more segments).
/// Public for the fuzz targets, which hold it to the router's reading.
pub fn spool_segments(target: &str) -> Option<(&str, &str)> {
    let rest = target.strip_prefix(PREFIX)?;
    if rest.contains(['%', '?', '#']) {
        return None;
    }
    let (token, name) = rest.split_once('/')?;
    (!token.is_empty() && !name.is_empty() && !name.contains('/')).then_some((token, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_exact_two_segment_spool_paths_are_taken() {
        let t = "0123456789abcdef0123456789abcdef";
        assert_eq!(
            spool_segments(&format!("{PREFIX}{t}/status.json")),
            Some((t, "status.json"))
        );
        // Unknown names are taken (and answered 404, as the router would).
        assert_eq!(spool_segments(&format!("{PREFIX}x/y")), Some(("x", "y")));
        for declined in [
            format!("/{PREFIX}{t}/status.json"),
            format!("{PREFIX}{t}/status.json?x=1"),
            format!("{PREFIX}{t}/status%2ejson"),
            format!("{PREFIX}{t}/a/status.json"),
            format!("{PREFIX}{t}/"),
            format!("{PREFIX}/status.json"),
            format!("{PREFIX}{t}"),
            "/replication/v1/spool".to_owned(),
            "/api/health".to_owned(),
        ] {
            assert_eq!(spool_segments(&declined), None, "{declined}");
        }
    }
}
