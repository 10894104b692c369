//! The web console over HTTP, without a browser: its files and security headers, the
//! cookie session (`/api/session`), the CSRF and Host rules on cookie-authenticated calls,
//! and that `AuthToken` scripts are untouched by any of it. The browser tests are in
//! `console_browser.rs`.

use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::{Daemon, Options, Response, ADMIN_PASSWORD};

pub const COOKIE: &str = "__Host-replgate";

/// What a browser on the console's own page sends with a state-changing call.
pub const SAME_ORIGIN: (&str, &str) = ("Sec-Fetch-Site", "same-origin");

/// The token in a `Set-Cookie` answer for the console's cookie.
#[track_caller]
pub fn cookie_token(r: &Response) -> String {
    let set = r
        .header("Set-Cookie")
        .unwrap_or_else(|| panic!("no Set-Cookie: {r:?}"));
    set.strip_prefix(&format!("{COOKIE}="))
        .and_then(|rest| rest.split(';').next())
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| panic!("not the console's cookie: {set}"))
        .to_string()
}

/// Logs in as the console does; the answer and the cookie's token.
#[track_caller]
pub fn console_login(d: &Daemon, user: &str, password: &str) -> (Response, String) {
    let body = json!({"username": user, "password": password}).to_string();
    let r = d.client().request(
        "POST",
        "/api/session",
        &[SAME_ORIGIN, ("Content-Type", "application/json")],
        body.as_bytes(),
    );
    assert_eq!(r.status, 200, "POST /api/session: {}", r.text());
    let token = cookie_token(&r);
    (r, token)
}

/// A call authenticated by the console's cookie, with `extra` headers.
fn with_cookie(
    d: &Daemon,
    method: &str,
    path: &str,
    token: &str,
    extra: &[(&str, &str)],
    body: &Value,
) -> Response {
    let cookie = format!("theme=x; {COOKIE}={token}");
    let mut headers = vec![
        ("Cookie", cookie.as_str()),
        ("Content-Type", "application/json"),
    ];
    headers.extend_from_slice(extra);
    let bytes = if body.is_null() {
        Vec::new()
    } else {
        body.to_string().into_bytes()
    };
    d.client().request(method, path, &headers, &bytes)
}

#[test]
fn console_page_and_files_are_served_with_a_strict_policy() {
    let d = Daemon::start("console-files", Options::default());
    let page = d.client().get("/", None);
    assert_eq!(page.status, 200, "{}", page.text());
    assert_eq!(
        page.header("Content-Type"),
        Some("text/html; charset=utf-8")
    );
    assert!(page.text().contains("/console/app.js"), "{}", page.text());
    let csp = page.header("Content-Security-Policy").unwrap_or_default();
    for directive in [
        "default-src 'self'",
        "frame-ancestors 'none'",
        "object-src 'none'",
        "require-trusted-types-for 'script'",
    ] {
        assert!(csp.contains(directive), "{csp}");
    }
    assert!(!csp.contains("unsafe"), "{csp}");
    assert_eq!(page.header("X-Frame-Options"), Some("DENY"));
    assert_eq!(page.header("X-Content-Type-Options"), Some("nosniff"));
    assert_eq!(page.header("Referrer-Policy"), Some("no-referrer"));
    for (file, kind) in [
        ("app.js", "text/javascript; charset=utf-8"),
        ("lib.js", "text/javascript; charset=utf-8"),
        ("console.css", "text/css; charset=utf-8"),
        ("icon.svg", "image/svg+xml"),
    ] {
        let r = d.client().get(&format!("/console/{file}"), None);
        assert_eq!(
            (r.status, r.header("Content-Type")),
            (200, Some(kind)),
            "{file}"
        );
        assert_eq!(r.header("X-Frame-Options"), Some("DENY"), "{file}");
    }
    let missing = d.client().get("/console/nope.js", None);
    assert_eq!((missing.status, missing.code()), (404, 404));
    // HEAD answers like GET, without the body.
    let head = d.client().request("HEAD", "/", &[], b"");
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
}

#[test]
fn a_console_login_hands_the_token_over_only_as_an_httponly_cookie() {
    let d = Daemon::start("console-session", Options::default());
    let (r, token) = console_login(&d, "root", ADMIN_PASSWORD);
    let answer = r.json();
    assert_eq!(answer["user"], "root");
    assert_eq!(answer["privilege"], "superuser");
    assert!(answer["expires"].as_i64().is_some(), "{answer}");
    assert!(answer.get("auth_token").is_none(), "{answer}");
    assert!(
        !r.text().contains(&token),
        "the token is in the body: {}",
        r.text()
    );
    let set = r.header("Set-Cookie").unwrap_or_default();
    for attribute in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/"] {
        assert!(set.split("; ").any(|a| a == attribute), "{set}");
    }
    // The cookie's token is a session like any other: it also works as an AuthToken.
    assert_eq!(d.client().get("/api/users", Some(&token)).status, 200);
    let me = with_cookie(&d, "GET", "/api/session", &token, &[], &Value::Null);
    assert_eq!(me.status, 200, "{}", me.text());
    assert_eq!(me.json()["user"], "root");
    assert_eq!(me.json()["appliance"]["ca_fingerprint"], d.ca_fingerprint());
    // Logout ends the server-side session and removes the cookie.
    let out = with_cookie(
        &d,
        "DELETE",
        "/api/session",
        &token,
        &[SAME_ORIGIN],
        &Value::Null,
    );
    assert_eq!(out.status, 200, "{}", out.text());
    assert!(out
        .header("Set-Cookie")
        .is_some_and(|c| c.starts_with(&format!("{COOKIE}=;")) && c.contains("Max-Age=0")));
    let after = with_cookie(&d, "GET", "/api/session", &token, &[], &Value::Null);
    assert_eq!((after.status, after.code()), (401, 401));
    assert_eq!(d.client().get("/api/users", Some(&token)).status, 401);
    // Wrong credentials: the same answer as /api/login, and no cookie.
    let wrong = d.client().request(
        "POST",
        "/api/session",
        &[SAME_ORIGIN],
        br#"{"username":"root","password":"wrong"}"#,
    );
    assert_eq!((wrong.status, wrong.code()), (401, 401));
    assert_eq!(wrong.message(), "invalid user name or password");
    assert!(wrong.header("Set-Cookie").is_none());
}

#[test]
fn cookie_calls_that_change_state_must_come_from_the_consoles_origin() {
    let d = Daemon::start("console-csrf", Options::default());
    let (_, token) = console_login(&d, "root", ADMIN_PASSWORD);
    let own = format!("https://{}", d.api);
    let other_port = format!("https://127.0.0.1:{}", d.api.port() + 1);
    let user =
        |name: &str| json!({"name": name, "password": "long-enough-1", "privilege": "monitor"});
    for (what, headers) in [
        ("no origin at all", vec![]),
        (
            "another site",
            vec![
                ("Origin", "https://evil.example"),
                ("Sec-Fetch-Site", "cross-site"),
            ],
        ),
        (
            "another port of this host",
            vec![
                ("Origin", other_port.as_str()),
                ("Sec-Fetch-Site", "same-site"),
            ],
        ),
        ("an opaque origin", vec![("Origin", "null")]),
        ("plain http", vec![("Origin", "http://127.0.0.1")]),
    ] {
        let r = with_cookie(&d, "POST", "/api/users", &token, &headers, &user("mallory"));
        assert_eq!((r.status, r.code()), (403, 403), "{what}: {}", r.text());
        assert!(
            r.message().starts_with("cross-site request refused"),
            "{what}: {}",
            r.text()
        );
    }
    let r = with_cookie(
        &d,
        "DELETE",
        "/api/users/root",
        &token,
        &[("Origin", "https://evil.example")],
        &Value::Null,
    );
    assert_eq!(r.status, 403, "{}", r.text());
    let root = d.root_token();
    let users = d.client().get("/api/users", Some(&root)).json();
    assert_eq!(users["users"].as_array().map(Vec::len), Some(1), "{users}");
    // A login is a state change too (login CSRF).
    let login = d.client().request(
        "POST",
        "/api/session",
        &[("Origin", "https://evil.example")],
        format!(r#"{{"username":"root","password":"{ADMIN_PASSWORD}"}}"#).as_bytes(),
    );
    assert_eq!(login.status, 403, "{}", login.text());
    assert!(login.header("Set-Cookie").is_none());
    // Reads need no origin; the console's own origin may change state.
    let read = with_cookie(
        &d,
        "GET",
        "/api/users",
        &token,
        &[("Sec-Fetch-Site", "cross-site")],
        &Value::Null,
    );
    assert_eq!(read.status, 200, "{}", read.text());
    for (name, headers) in [
        ("alice", vec![SAME_ORIGIN]),
        ("bob", vec![("Origin", own.as_str())]),
    ] {
        let r = with_cookie(&d, "POST", "/api/users", &token, &headers, &user(name));
        assert_eq!(r.status, 201, "{name}: {}", r.text());
    }
}

#[test]
fn trusted_origins_and_host_names_are_configurable_for_a_reverse_proxy() {
    let opts = Options::default()
        .set("console_origins", "https://backup.example.net")
        .set("console_hosts", "backup.example.net");
    let d = Daemon::start("console-proxy", opts);
    let (_, token) = console_login(&d, "root", ADMIN_PASSWORD);
    let proxied = [
        ("Host", "backup.example.net"),
        ("Origin", "https://backup.example.net"),
        ("Sec-Fetch-Site", "same-site"),
    ];
    let body = json!({"name": "carol", "password": "long-enough-1", "privilege": "monitor"});
    let r = with_cookie(&d, "POST", "/api/users", &token, &proxied, &body);
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(
        d.client()
            .request("GET", "/", &[("Host", "backup.example.net")], b"")
            .status,
        200
    );
    assert_eq!(
        d.client()
            .request("GET", "/", &[("Host", "other.example.net")], b"")
            .status,
        403
    );
}

#[test]
fn the_console_refuses_host_names_that_are_not_the_appliances() {
    let d = Daemon::start("console-host", Options::default());
    let (_, token) = console_login(&d, "root", ADMIN_PASSWORD);
    let rebound = [("Host", "rebound.example:8443"), SAME_ORIGIN];
    for path in ["/", "/console/app.js"] {
        let r = d.client().request("GET", path, &rebound, b"");
        assert_eq!((r.status, r.code()), (403, 403), "{path}: {}", r.text());
        assert!(
            r.message().contains("\"rebound.example:8443\""),
            "{}",
            r.text()
        );
    }
    let r = with_cookie(&d, "GET", "/api/systems", &token, &rebound, &Value::Null);
    assert_eq!(r.status, 403, "{}", r.text());
    let login = d.client().request(
        "POST",
        "/api/session",
        &rebound,
        format!(r#"{{"username":"root","password":"{ADMIN_PASSWORD}"}}"#).as_bytes(),
    );
    assert_eq!(login.status, 403, "{}", login.text());
    // Its own names all work: the listen address, hostnames (`localhost` in tests), loopback.
    for host in [
        d.api.to_string(),
        format!("localhost:{}", d.api.port()),
        "127.0.0.1".into(),
    ] {
        let r = with_cookie(
            &d,
            "GET",
            "/api/systems",
            &token,
            &[("Host", host.as_str())],
            &Value::Null,
        );
        assert_eq!(r.status, 200, "{host}: {}", r.text());
    }
}

#[test]
fn authtoken_scripts_are_untouched_by_the_console_rules() {
    let d = Daemon::start("console-scripts", Options::default());
    let token = d.root_token();
    // A script behind any name, from anywhere, with a stale cookie of its own: the header
    // session decides, as before the console existed.
    let odd = [
        ("AuthToken", token.as_str()),
        ("Host", "scripts.example"),
        ("Origin", "https://evil.example"),
        ("Cookie", "__Host-replgate=00"),
        ("Content-Type", "application/json"),
    ];
    let body = json!({"name": "dave", "password": "long-enough-1", "privilege": "monitor"});
    let r = d
        .client()
        .request("POST", "/api/users", &odd, body.to_string().as_bytes());
    assert_eq!(r.status, 201, "{}", r.text());
    let r = d.client().request("GET", "/api/systems", &odd, b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let r = d.client().request("POST", "/api/logout", &odd, b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(d.client().get("/api/systems", Some(&token)).status, 401);
}

#[test]
fn a_cookie_session_has_the_users_privilege_and_idles_out_like_a_token() {
    let d = Daemon::start(
        "console-privilege",
        // Long enough for the requests below on a loaded machine, short enough to wait out.
        Options::default().set("session_idle", 5),
    );
    let root = d.root_token();
    let body = json!({"name": "watcher", "password": "long-enough-1", "privilege": "monitor"});
    assert_eq!(
        d.client()
            .post_json("/api/users", Some(&root), &body)
            .status,
        201
    );
    let (r, token) = console_login(&d, "watcher", "long-enough-1");
    assert_eq!(r.json()["privilege"], "monitor");
    let read = with_cookie(
        &d,
        "GET",
        "/api/replication/pending",
        &token,
        &[],
        &Value::Null,
    );
    assert_eq!(read.status, 200, "{}", read.text());
    let change = with_cookie(&d, "POST", "/api/users", &token, &[SAME_ORIGIN], &body);
    assert_eq!(
        (change.status, change.code()),
        (403, 403),
        "{}",
        change.text()
    );
    assert_eq!(
        change.message(),
        "this operation needs the superuser privilege"
    );
    // Idle past session_idle: the cookie's session has ended, as a token's would.
    std::thread::sleep(Duration::from_millis(6_100));
    let late = with_cookie(&d, "GET", "/api/session", &token, &[], &Value::Null);
    assert_eq!((late.status, late.code()), (401, 401), "{}", late.text());
}
