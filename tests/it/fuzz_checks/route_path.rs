//! The router's path rules (`api::route_path`, `api::match_path`) and the front's own
//! reading of a spool path (`api::spool_segments`). For any path: `/api` paths lose
//! repeated and trailing slashes and nothing else changes, every other path is taken
//! exactly; normalizing twice changes nothing; a matched route has one non-empty segment
//! per parameter; and whenever the front would answer a spool poll itself, the router
//! would route the same path to the spool route with the same two segments, so both ways
//! of answering see the same file.

use replgate::api::{match_path, route_path, route_table, spool_segments};

/// One input: panics when a property fails.
pub fn run(input: &[u8]) {
    let Ok(raw) = std::str::from_utf8(input) else {
        return;
    };
    let path = route_path(raw);
    assert_eq!(route_path(&path), path, "normalizing is idempotent");
    let api = path == "/api" || path.starts_with("/api/");
    if api {
        assert!(!(path.contains("//") || path.len() > 1 && path.ends_with('/')));
        let squeezed: String = raw
            .split('/')
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join("/");
        assert_eq!(&path[1..], squeezed, "only slashes are removed");
    } else {
        assert_eq!(path, raw, "a non-/api path is routed as it came");
    }
    for route in route_table() {
        if let Some(params) = match_path(route.path, &path) {
            let wanted = route.path.split('/').filter(|p| p.starts_with('{')).count();
            assert_eq!(params.len(), wanted, "{}", route.path);
        }
    }
    if let Some((token, name)) = spool_segments(raw) {
        assert_eq!(path, raw, "a spool path is never normalized");
        let routed = match_path("/replication/v1/spool/{token}/{file}", &path)
            .expect("the router takes what the front takes");
        assert_eq!(routed, [token, name], "the same segments on both ways");
    }
}
