//! The route table: every (method, path) the daemon serves, who may call it, and its
//! handler. Authorization is declared here once per route, never inside handlers, and so
//! are the wire rules every route shares (SPEC 3): path normalization on `/api`, the `sid`
//! filter on `/api` reads, `Allow` on 405. Handlers never see a path.

use std::borrow::Cow;

use super::body::percent_decode;
use super::error::ApiError;
use super::systems::LOCAL_SYSTEM_ID;
use super::{
    body, ca, console, pairing, pending, recycle, replication, source, spool_files, storage,
    system, systems, tokens, users, App, Call, Handler, Reply,
};
use crate::front::PeerInfo;
use crate::model::{Privilege, UnixTime};

/// Who may call a route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Anyone on the API listener (health, login, the appliance protocol).
    Public,
    /// Anyone on the API listener, from a browser on one of the console's host names, and
    /// from the console's own origin unless it only reads (the console's page, its files,
    /// its login). See [`console::guard::check`].
    Console,
    /// The API listener with a session of at least this privilege: an `AuthToken` header,
    /// or else the console's cookie, which must also pass the console's browser rules.
    Token(Privilege),
}

pub struct Route {
    pub method: &'static str,
    /// Segments separated by `/`; `{name}` matches one non-empty segment.
    pub path: &'static str,
    pub access: Access,
    pub handler: Handler,
    /// The handler reads `sid` itself as the system it acts on, so the router's
    /// "`sid` means this appliance" filter does not apply. See [`Route::names_sid`].
    pub names_sid: bool,
}

impl Route {
    /// Marks a route whose `sid` query parameter names the system it acts on (as
    /// `GET /api/replication/received?sid=` does), exempting it from the generic filter.
    pub const fn names_sid(mut self) -> Route {
        self.names_sid = true;
        self
    }
}

const fn route(
    method: &'static str,
    path: &'static str,
    access: Access,
    handler: Handler,
) -> Route {
    Route {
        method,
        path,
        access,
        handler,
        names_sid: false,
    }
}

pub fn route_table() -> Vec<Route> {
    use Access::*;
    use Privilege::*;
    vec![
        route("GET", "/api/health", Public, system::health),
        route("GET", "/api/kb/{code}", Public, system::kb),
        route("GET", "/api/metrics", Token(Monitor), system::metrics),
        route(
            "POST",
            "/api/metrics/token",
            Token(Superuser),
            system::metrics_token,
        ),
        route("POST", "/api/login", Public, users::login),
        route("POST", "/api/logout", Token(Monitor), users::logout),
        // The web console: its page and files, and its cookie session.
        route("GET", "/", Console, console::page),
        route("GET", "/console/{file}", Console, console::asset),
        route("POST", "/api/session", Console, console::session::create),
        route(
            "GET",
            "/api/session",
            Token(Monitor),
            console::session::show,
        ),
        route(
            "DELETE",
            "/api/session",
            Token(Monitor),
            console::session::end,
        ),
        route("GET", "/api/users", Token(Superuser), users::list),
        route("POST", "/api/users", Token(Superuser), users::create),
        route("PUT", "/api/users/{name}", Token(Superuser), users::update),
        route(
            "DELETE",
            "/api/users/{name}",
            Token(Superuser),
            users::delete,
        ),
        route("GET", "/api/audit", Token(Monitor), users::audit_log),
        // The appliance CA's rollover (SPEC 22).
        route("GET", "/api/ca/rollover", Token(Superuser), ca::status),
        route("POST", "/api/ca/rollover", Token(Superuser), ca::change),
        // Target side of pairing.
        route(
            "GET",
            "/api/replication/pending",
            Token(Monitor),
            pending::pending,
        ),
        route(
            "DELETE",
            "/api/replication/pending/{request_id}",
            Token(Administer),
            pairing::ignore,
        ),
        route(
            "DELETE",
            "/api/replication/pending",
            Token(Administer),
            pairing::ignore_from,
        ),
        route(
            "POST",
            "/api/replication/tokens",
            Token(Administer),
            tokens::create,
        ),
        route(
            "GET",
            "/api/replication/tokens",
            Token(Monitor),
            tokens::list,
        ),
        route(
            "DELETE",
            "/api/replication/tokens/{token_id}",
            Token(Administer),
            tokens::revoke,
        ),
        route(
            "POST",
            "/api/replication/source",
            Token(Administer),
            pairing::resolve,
        ),
        route(
            "PUT",
            "/api/replication/source",
            Token(Administer),
            pairing::change_source,
        )
        .names_sid(),
        route(
            "DELETE",
            "/api/replication/source",
            Token(Administer),
            pairing::unpair,
        )
        .names_sid(),
        route("GET", "/api/systems", Token(Monitor), systems::list),
        route("POST", "/api/systems", Token(Administer), systems::register),
        route("GET", "/api/storage", Token(Monitor), storage::list),
        // Source side of pairing.
        route(
            "POST",
            "/api/replication/target",
            Token(Manage),
            source::request_target,
        ),
        route(
            "PUT",
            "/api/replication/target",
            Token(Manage),
            source::change_target,
        ),
        route(
            "GET",
            "/api/replication/targets",
            Token(Monitor),
            source::targets,
        ),
        route(
            "DELETE",
            "/api/replication/target/{host}",
            Token(Manage),
            source::forget_target,
        ),
        // Replication (source: the queue, config, throttle; target: what arrived).
        route(
            "GET",
            "/api/replication/queue",
            Token(Monitor),
            replication::list,
        ),
        route(
            "GET",
            "/api/replication/queue/active",
            Token(Monitor),
            replication::list_active,
        ),
        route(
            "GET",
            "/api/replication/queue/inactive",
            Token(Monitor),
            replication::list_inactive,
        ),
        route(
            "POST",
            "/api/replication/queue",
            Token(Manage),
            replication::add,
        ),
        route(
            "PUT",
            "/api/replication/queue",
            Token(Manage),
            replication::change,
        ),
        route(
            "GET",
            "/api/replication/config",
            Token(Monitor),
            replication::get_config,
        ),
        route(
            "PUT",
            "/api/replication/config",
            Token(Manage),
            replication::put_config,
        ),
        route(
            "GET",
            "/api/replication/throttle",
            Token(Monitor),
            replication::get_throttle,
        ),
        route(
            "PUT",
            "/api/replication/throttle",
            Token(Manage),
            replication::put_throttle,
        ),
        route(
            "GET",
            "/api/replication/received",
            Token(Monitor),
            replication::received,
        )
        .names_sid(),
        route(
            "POST",
            "/api/replication/restore",
            Token(Manage),
            super::restore::restore,
        ),
        route(
            "POST",
            "/api/replication/drill",
            Token(Manage),
            super::restore::request_drill,
        ),
        route(
            "GET",
            "/api/replication/drill",
            Token(Monitor),
            super::restore::list_drills,
        ),
        route(
            "POST",
            "/api/replication/verify",
            Token(Manage),
            replication::verify,
        )
        .names_sid(),
        route(
            "GET",
            "/api/replication/recycle",
            Token(Monitor),
            recycle::list,
        )
        .names_sid(),
        route(
            "DELETE",
            "/api/replication/recycle",
            Token(Administer),
            recycle::purge,
        )
        .names_sid(),
        route(
            "POST",
            "/api/replication/recycle/restore",
            Token(Manage),
            recycle::restore,
        )
        .names_sid(),
        // Appliance-to-appliance protocol (no AuthToken).
        route(
            "POST",
            "/replication/v1/requests",
            Public,
            pairing::file_request,
        ),
        route(
            "GET",
            "/replication/v1/spool/{token}/{file}",
            Public,
            spool_files::handler,
        ),
        route("GET", "/replication/v1/ca", Public, ca::public),
    ]
}

/// Matches `path` against a pattern, returning the decoded parameters. Public for the
/// fuzz targets (fuzz/), which hold it to the router's rules.
pub fn match_path(pattern: &str, path: &str) -> Option<Vec<String>> {
    let mut params = Vec::new();
    let mut p = pattern.split('/');
    let mut s = path.split('/');
    loop {
        match (p.next(), s.next()) {
            (None, None) => return Some(params),
            (Some(pp), Some(ss)) if pp.starts_with('{') => {
                if ss.is_empty() {
                    return None;
                }
                params.push(percent_decode(ss));
            }
            (Some(pp), Some(ss)) if pp == ss => {}
            _ => return None,
        }
    }
}

/// The path a request is routed by. On `/api` the appliance's own web server merges
/// repeated slashes and ignores a trailing slash, and its clients rely on that
/// (`//api/systems/`); every other path (the spool above all) must match exactly. Public
/// for the fuzz targets.
pub fn route_path(raw: &str) -> Cow<'_, str> {
    let trailing = raw.len() > 1 && raw.ends_with('/');
    if !(trailing || raw.contains("//")) {
        return Cow::Borrowed(raw);
    }
    let mut merged = String::with_capacity(raw.len());
    for c in raw.chars() {
        if !(c == '/' && merged.ends_with('/')) {
            merged.push(c);
        }
    }
    while merged.len() > 1 && merged.ends_with('/') {
        merged.pop();
    }
    if merged == "/api" || merged.starts_with("/api/") {
        Cow::Owned(merged)
    } else {
        Cow::Borrowed(raw)
    }
}

/// The `Allow` value for a path: its routed methods, plus `HEAD` wherever `GET` is
/// (HEAD is answered like GET), in a fixed order.
fn allow_header(methods: &[&'static str]) -> String {
    const ORDER: [&str; 6] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"];
    let has = |m: &str| methods.contains(&m) || (m == "HEAD" && methods.contains(&"GET"));
    let mut out: Vec<&str> = ORDER.iter().copied().filter(|m| has(m)).collect();
    out.extend(methods.iter().copied().filter(|m| !ORDER.contains(m)));
    out.join(", ")
}

/// SPEC 3: on an `/api` read, `sid` is the appliance's system filter. replgate answers
/// only for itself, so no `sid` or the local id passes and any other id is a 404 naming it.
fn check_sid_filter(query: &[(String, String)]) -> Result<(), ApiError> {
    for (_, v) in query.iter().filter(|(k, _)| k == "sid") {
        let sid = body::parse_id("sid", v)?;
        if sid != LOCAL_SYSTEM_ID {
            return Err(ApiError::NotFound(format!(
                "no system with id {sid} on this appliance: replgate answers for the local \
                 appliance only (sid {LOCAL_SYSTEM_ID}, or no sid)"
            )));
        }
    }
    Ok(())
}

/// One request as a worker read it, before routing.
pub struct Incoming<'a> {
    /// Who sent it, as the TLS front recorded.
    pub peer: &'a PeerInfo,
    /// Read once when the request arrived.
    pub now: UnixTime,
    pub method: &'a str,
    pub url: &'a str,
    pub body: &'a [u8],
    /// The `AuthToken` header, trimmed.
    pub token: Option<String>,
    /// What the console's rules read: `Host`, `Origin`, `Sec-Fetch-Site`, the cookie.
    pub browser: console::guard::Browser,
    pub if_none_match: Option<String>,
}

/// Finds the route for `request`, checks its listener and access, and calls its handler.
pub fn dispatch(app: &App, routes: &[Route], request: Incoming) -> Result<Reply, ApiError> {
    let Incoming {
        peer,
        now,
        method,
        url,
        body,
        token,
        browser,
        if_none_match,
    } = request;
    let (raw_path, query) = url.split_once('?').unwrap_or((url, ""));
    let path = route_path(raw_path);
    // HEAD is answered like GET; tiny_http leaves the body out.
    let method = if method == "HEAD" { "GET" } else { method };
    let mut allowed: Vec<&'static str> = Vec::new();
    for r in routes {
        let Some(params) = match_path(r.path, &path) else {
            continue;
        };
        if r.method != method {
            allowed.push(r.method);
            continue;
        }
        let session = match r.access {
            Access::Token(needed) => {
                // The header wins: scripts keep working whatever cookies a client holds.
                let token = match (&token, &browser.cookie_token) {
                    (Some(header), _) => header.as_str(),
                    (None, Some(cookie)) => {
                        console::guard::check(&browser, method, &app.config)?;
                        cookie.as_str()
                    }
                    (None, None) => "",
                };
                let session = app.auth.session(token, now)?;
                app.peers.note_authenticated(peer.addr.ip());
                session.require(needed)?;
                Some(session)
            }
            Access::Console => {
                console::guard::check(&browser, method, &app.config)?;
                None
            }
            Access::Public => None,
        };
        let query = body::parse_query(query);
        if r.method == "GET" && r.path.starts_with("/api/") && !r.names_sid {
            check_sid_filter(&query)?;
        }
        let call = Call {
            app,
            peer,
            now,
            params,
            query,
            body,
            session,
            if_none_match,
        };
        return (r.handler)(&call);
    }
    if allowed.is_empty() {
        Err(ApiError::NotFound(format!(
            "no such path: {}",
            raw_path.chars().take(200).collect::<String>()
        )))
    } else {
        Err(ApiError::MethodNotAllowed {
            allow: allow_header(&allowed),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_whole_segments_and_decode_parameters() {
        assert_eq!(match_path("/api/users", "/api/users"), Some(vec![]));
        assert_eq!(match_path("/api/users", "/api/users/"), None);
        assert_eq!(
            match_path("/api/users/{name}", "/api/users/a%20b"),
            Some(vec!["a b".into()])
        );
        assert_eq!(match_path("/api/users/{name}", "/api/users/"), None);
        assert_eq!(match_path("/api/users/{name}", "/api/users/a/b"), None);
    }

    /// Found by the `route_path` fuzz target: the router read a `+` in a path segment as
    /// a space (the query rule), while the front's spool answerer took it as a plus, so
    /// the two ways of answering a poll looked for different tokens.
    #[test]
    fn a_plus_in_a_path_segment_is_a_plus_on_both_ways() {
        let path = "/replication/v1/spool/01tatus.jso23456789\\abcdef+123456stat/useson";
        let (token, name) = super::super::spool_files::spool_segments(path).unwrap();
        assert_eq!(
            match_path("/replication/v1/spool/{token}/{file}", path),
            Some(vec![token.to_string(), name.to_string()])
        );
        assert_eq!(token, "01tatus.jso23456789\\abcdef+123456stat");
        // In a query a `+` is still a space, as HTML forms send it.
        assert_eq!(
            body::parse_query("note=a+b%2Bc"),
            [("note".into(), "a b+c".into())]
        );
    }

    #[test]
    fn api_paths_merge_slashes_and_drop_a_trailing_one() {
        for (raw, routed) in [
            ("/api/systems", "/api/systems"),
            ("//api/systems/", "/api/systems"),
            ("/api//replication///source/", "/api/replication/source"),
            ("/api/users/a%2F/", "/api/users/a%2F"),
            ("//api", "/api"),
            ("/api/", "/api"),
            ("/", "/"),
        ] {
            assert_eq!(route_path(raw), routed, "{raw}");
        }
        // Outside /api nothing is rewritten: the spool and the protocol match exactly.
        for raw in [
            "//replication/v1/spool/0123456789abcdef0123456789abcdef/status.json",
            "/replication/v1/spool/0123456789abcdef0123456789abcdef//status.json",
            "/replication/v1/spool/0123456789abcdef0123456789abcdef/status.json/",
            "/replication/v1/requests/",
            "/tunnel/v1//hello",
            "//apix/",
        ] {
            assert_eq!(route_path(raw), raw);
        }
        // Borrowed when nothing changes: the common case allocates nothing.
        assert!(matches!(route_path("/api/systems"), Cow::Borrowed(_)));
    }

    #[test]
    fn allow_lists_the_path_methods_with_head_beside_get() {
        assert_eq!(allow_header(&["POST", "GET"]), "GET, HEAD, POST");
        assert_eq!(
            allow_header(&["DELETE", "PUT", "POST"]),
            "POST, PUT, DELETE"
        );
        assert_eq!(allow_header(&["PROPFIND"]), "PROPFIND");
        // Every routed path yields a non-empty Allow with each of its methods.
        let t = route_table();
        for r in &t {
            let methods: Vec<&'static str> = t
                .iter()
                .filter(|o| o.path == r.path)
                .map(|o| o.method)
                .collect();
            let allow = allow_header(&methods);
            for m in methods {
                assert!(allow.split(", ").any(|a| a == m), "{} {allow}", r.path);
            }
        }
    }

    #[test]
    fn sid_filter_passes_none_and_the_local_id_only() {
        let q = |s: &str| body::parse_query(s);
        assert!(check_sid_filter(&q("")).is_ok());
        assert!(check_sid_filter(&q("sid=1&usage=backup")).is_ok());
        assert!(check_sid_filter(&q("sid=001")).is_ok());
        match check_sid_filter(&q("sid=3")) {
            Err(ApiError::NotFound(m)) => assert!(m.contains("id 3"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            check_sid_filter(&q("sid=1&sid=4")),
            Err(ApiError::NotFound(_))
        ));
        for bad in ["sid=", "sid=x", "sid=0", "sid=-1", "sid=%201"] {
            assert!(
                matches!(check_sid_filter(&q(bad)), Err(ApiError::BadRequest(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn every_route_is_unique() {
        let t = route_table();
        for (i, a) in t.iter().enumerate() {
            for b in &t[i + 1..] {
                assert!(
                    !(a.method == b.method && a.path == b.path),
                    "{} {}",
                    a.method,
                    a.path
                );
            }
        }
    }
}
