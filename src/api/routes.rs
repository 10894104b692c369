//! The route table: every (method, path) the daemon serves, who may call it, and its
//! handler. Authorization is declared here once per route, never inside handlers.

use super::body::percent_decode;
use super::error::ApiError;
use super::{body, pairing, source, system, users, App, Call, Handler, Reply};
use crate::front::{ListenerKind, PeerInfo};
use crate::model::{Privilege, UnixTime};

/// Who may call a route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Anyone on the API listener (health, login, the appliance protocol).
    Public,
    /// The API listener with an `AuthToken` of at least this privilege.
    Token(Privilege),
    /// The tunnel listener with a verified, unrevoked client certificate.
    Tunnel,
}

pub struct Route {
    pub method: &'static str,
    /// Segments separated by `/`; `{name}` matches one non-empty segment.
    pub path: &'static str,
    pub access: Access,
    pub handler: Handler,
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
    }
}

pub fn route_table() -> Vec<Route> {
    use Access::*;
    use Privilege::*;
    vec![
        route("GET", "/api/health", Public, system::health),
        route("GET", "/api/kb/{code}", Public, system::kb),
        route("POST", "/api/login", Public, users::login),
        route("POST", "/api/logout", Token(Monitor), users::logout),
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
        // Target side of pairing.
        route(
            "GET",
            "/api/replication/pending",
            Token(Monitor),
            pairing::pending,
        ),
        route(
            "DELETE",
            "/api/replication/pending/{request_id}",
            Token(Administer),
            pairing::ignore,
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
            pairing::change_storage,
        ),
        route(
            "DELETE",
            "/api/replication/source",
            Token(Administer),
            pairing::unpair,
        ),
        route("GET", "/api/systems", Token(Monitor), pairing::systems),
        route(
            "POST",
            "/api/systems",
            Token(Administer),
            pairing::register_system,
        ),
        route("GET", "/api/storage", Token(Monitor), pairing::storage),
        // Source side of pairing.
        route(
            "POST",
            "/api/replication/target",
            Token(Manage),
            source::request_target,
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
            pairing::spool_file,
        ),
        // The tunnel (mutual TLS).
        route("GET", "/tunnel/v1/hello", Tunnel, pairing::hello),
    ]
}

/// Matches `path` against a pattern, returning the decoded parameters.
fn match_path(pattern: &str, path: &str) -> Option<Vec<String>> {
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

/// The handshake checked revocation when the tunnel connection opened; a keep-alive
/// connection can outlive an unpair, so every tunnel request checks again.
fn require_unrevoked(app: &App, peer: &PeerInfo) -> Result<(), ApiError> {
    let cert = peer
        .client_cert
        .as_ref()
        .ok_or_else(|| ApiError::Forbidden("a client certificate is required".into()))?;
    let serial = crate::ca::cert_serial_hex(cert.as_ref())
        .map_err(|e| ApiError::Forbidden(format!("client certificate: {e}")))?;
    if app.store.is_revoked(&serial)? {
        return Err(ApiError::Forbidden(format!(
            "certificate {serial} has been revoked"
        )));
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
pub fn dispatch(
    app: &App,
    routes: &[Route],
    peer: &PeerInfo,
    now: UnixTime,
    method: &str,
    url: &str,
    body: &[u8],
    token: Option<String>,
    if_none_match: Option<String>,
) -> Result<Reply, ApiError> {
    let (path, query) = url.split_once('?').unwrap_or((url, ""));
    // HEAD is answered like GET; tiny_http leaves the body out.
    let method = if method == "HEAD" { "GET" } else { method };
    let mut path_matched = false;
    for r in routes {
        let Some(params) = match_path(r.path, path) else {
            continue;
        };
        let listener_ok = match r.access {
            Access::Tunnel => peer.kind == ListenerKind::Tunnel && peer.client_cert.is_some(),
            Access::Public | Access::Token(_) => peer.kind == ListenerKind::Api,
        };
        if !listener_ok {
            continue;
        }
        path_matched = true;
        if r.method != method {
            continue;
        }
        if r.access == Access::Tunnel {
            require_unrevoked(app, peer)?;
        }
        let session = match r.access {
            Access::Token(needed) => {
                let token = token.as_deref().unwrap_or("");
                let session = app.auth.session(token, now)?;
                session.require(needed)?;
                Some(session)
            }
            _ => None,
        };
        let call = Call {
            app,
            peer,
            now,
            params,
            query: body::parse_query(query),
            body,
            session,
            if_none_match,
        };
        return (r.handler)(&call);
    }
    if path_matched {
        Err(ApiError::MethodNotAllowed)
    } else {
        Err(ApiError::NotFound(format!(
            "no such path: {}",
            path.chars().take(200).collect::<String>()
        )))
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
