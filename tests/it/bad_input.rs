//! Bad input, one test per class: each gets the documented answer and the daemon keeps
//! serving others.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::{read_response, Daemon, Options};
use crate::pairing::{accepted_identity, tunnel_connect, tunnel_hello};

fn assert_still_serving(d: &Daemon) {
    let r = d.client().get("/api/health", None);
    assert_eq!(r.status, 200, "daemon stopped serving");
}

#[test]
fn malformed_json_is_400_with_the_documented_body() {
    let d = Daemon::start("bad-json", Options::default());
    let r = d.client().request(
        "POST",
        "/api/login",
        &[("Content-Type", "application/json")],
        b"{\"username\": ",
    );
    assert_eq!(r.status, 400);
    let body = r.json();
    assert_eq!(body["result"][0]["code"], 400);
    assert_eq!(body["result"][0]["kb"], "/api/kb/400");
    assert!(body["result"][0]["message"]
        .as_str()
        .unwrap()
        .contains("JSON"));
    // A JSON body sent with another content type is still read (PowerShell clients do this).
    let r = d.client().request(
        "POST",
        "/api/login",
        &[("Content-Type", "text/plain")],
        br#"{"username":"root","password":"x"}"#,
    );
    assert_eq!(r.status, 401);
    assert_still_serving(&d);
}

#[test]
fn wrong_types_are_400_naming_the_field() {
    let d = Daemon::start("bad-types", Options::default());
    let r = d.client().post_json(
        "/api/login",
        None,
        &json!({"username": 42, "password": "x"}),
    );
    assert_eq!(r.status, 400);
    assert!(
        r.json()["result"][0]["message"]
            .as_str()
            .unwrap()
            .contains("`username`"),
        "{}",
        r.text()
    );
    let r = d
        .client()
        .post_json("/api/login", None, &json!({"username": "root"}));
    assert_eq!(r.status, 400);
    assert!(r.text().contains("`password`"));
}

#[test]
fn body_over_the_cap_is_413_and_never_reaches_a_handler() {
    let d = Daemon::start("bad-body", Options::default().set("max_body_bytes", 4096));
    let big = vec![b'x'; 5000];
    let r = d.client().request(
        "POST",
        "/api/login",
        &[("Content-Type", "application/json")],
        &big,
    );
    assert_eq!(r.status, 413, "{}", r.text());
    assert_eq!(r.code(), 413);
    assert_still_serving(&d);
}

#[test]
fn head_over_the_cap_is_431() {
    let d = Daemon::start("bad-head", Options::default().set("max_head_bytes", 4096));
    let long = "a".repeat(8000);
    let r = d
        .client()
        .request("GET", "/api/health", &[("X-Long", &long)], b"");
    assert_eq!(r.status, 431, "{}", r.text());
    assert_eq!(r.code(), 431);
    assert_still_serving(&d);
}

#[test]
fn endless_header_keeps_memory_bounded() {
    let d = Daemon::start("bad-endless", Options::default());
    let before = d.rss_kib();
    let mut tls = d.client().connect().unwrap();
    tls.write_all(b"GET /api/health HTTP/1.1\r\nHost: x\r\nX-Endless: ")
        .unwrap();
    let chunk = vec![b'a'; 64 * 1024];
    let mut sent = 0usize;
    // Stream up to 32 MiB of one header; the daemon must cut us off long before.
    while sent < 32 * 1024 * 1024 {
        if tls.write_all(&chunk).is_err() {
            break;
        }
        sent += chunk.len();
    }
    let after = d.rss_kib();
    assert!(
        sent < 32 * 1024 * 1024,
        "the daemon accepted a 32 MiB header"
    );
    assert!(
        after < before + 16 * 1024,
        "resident memory grew from {before} KiB to {after} KiB"
    );
    assert_still_serving(&d);
}

#[test]
fn silent_client_is_closed_and_others_are_served() {
    let d = Daemon::start("bad-silent", Options::default().set("handshake_timeout", 1));
    let mut silent = TcpStream::connect(d.api).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    assert_still_serving(&d);
    let start = Instant::now();
    let mut buf = [0u8; 16];
    let n = silent.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "expected the daemon to close the silent connection");
    assert!(start.elapsed() < Duration::from_secs(5));
    assert_still_serving(&d);
}

#[test]
fn slow_request_head_gets_408() {
    let d = Daemon::start("bad-slow", Options::default().set("head_timeout", 1));
    let mut tls = d.client().connect().unwrap();
    tls.write_all(b"GET /api/health HTTP/1.1\r\n").unwrap();
    tls.flush().unwrap();
    let r = read_response(&mut tls, false).unwrap();
    assert_eq!(r.status, 408);
    assert_eq!(r.code(), 408);
    assert_still_serving(&d);
}

/// Lines ended by LF alone: the head is refused with the documented 400 as soon as its
/// first bare LF arrives, on both listeners, instead of a 408 at the head deadline (the
/// client believes it sent its blank line).
#[test]
fn bare_lf_line_endings_get_400_at_once_on_both_listeners() {
    let d = Daemon::start("bad-bare-lf", Options::default());
    let quick = Duration::from_secs(5);
    let mut tls = d.client().connect().unwrap();
    let started = Instant::now();
    tls.write_all(b"GET /api/health HTTP/1.1\nHost: localhost\n\n")
        .unwrap();
    let r = read_response(&mut tls, false).unwrap();
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.code(), 400);
    assert!(r.message().contains("bare LF"), "{}", r.text());
    assert!(started.elapsed() < quick, "api: {:?}", started.elapsed());

    let identity = accepted_identity(&d, "5b0a1d7e-3c1f-4b8a-9e2d-7f6a5c4b3a21");
    let (chain, key) = &identity;
    let mut tunnel =
        tunnel_connect(&d, Some((chain.clone(), key.clone_key()))).expect("tunnel handshake");
    let started = Instant::now();
    tunnel
        .write_all(b"GET /tunnel/v1/hello HTTP/1.1\nHost: t\n\n")
        .unwrap();
    let r = read_response(&mut tunnel, false).unwrap();
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.code(), 400);
    assert!(r.message().contains("bare LF"), "{}", r.text());
    assert!(started.elapsed() < quick, "tunnel: {:?}", started.elapsed());
    // The same identity is served with CRLF: the 400 was the line endings'.
    let hello = tunnel_hello(&d, Some(identity)).expect("tunnel hello");
    assert_eq!(hello.status, 200, "{}", hello.text());
    assert_still_serving(&d);
}

#[test]
fn unknown_paths_are_404_and_wrong_methods_405() {
    let d = Daemon::start("bad-paths", Options::default());
    let r = d.client().get("/api/nothing-here", None);
    assert_eq!(r.status, 404);
    assert_eq!(r.code(), 404);
    let r = d.client().request("DELETE", "/api/health", &[], b"");
    assert_eq!(r.status, 405);
}

#[test]
fn requests_that_bypass_the_tls_front_are_refused() {
    let d = Daemon::start("bad-bypass", Options::default());
    let mut plain = TcpStream::connect(d.internal_addr()).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let body = json!({"username": "root", "password": crate::harness::ADMIN_PASSWORD}).to_string();
    plain
        .write_all(format!("POST /api/login HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}", body.len()).as_bytes())
        .unwrap();
    let r = read_response(&mut plain, false).unwrap();
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.json()["auth_token"].is_null());
}
