//! Spool names and paths: `SpoolToken::parse` takes exactly 32 lowercase hex digits and
//! `SpoolFile::parse` exactly `status.json`, `certificate.pem` and `ca.pem`, before any
//! path is built; and the front's reading of a request target (`api::spool_segments`)
//! takes only exact two-segment spool paths with nothing encoded, which the router then
//! reads the same (also checked in `route_path`). The input is split at its first `/`
//! into a token and a name, and also read whole as a request target.

use replgate::api::spool_segments;
use replgate::wire::protocol::{SpoolFile, SpoolToken};

/// One input: panics when a property fails.
pub fn run(input: &[u8]) {
    let Ok(text) = std::str::from_utf8(input) else {
        return;
    };
    let (token, name) = text.split_once('/').unwrap_or((text, text));
    let want = token.len() == 32
        && token
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    let got = SpoolToken::parse(token);
    assert_eq!(got.is_some(), want, "token {token:?}");
    if let Some(t) = got {
        assert_eq!(t.as_str(), token);
    }
    let want = ["status.json", "certificate.pem", "ca.pem"].contains(&name);
    let got = SpoolFile::parse(name);
    assert_eq!(got.is_some(), want, "name {name:?}");
    if let Some(f) = got {
        assert_eq!(f.name(), name);
    }
    for target in [text.to_string(), format!("/replication/v1/spool/{text}")] {
        if let Some((t, n)) = spool_segments(&target) {
            assert_eq!(format!("/replication/v1/spool/{t}/{n}"), target);
            assert!(!t.is_empty() && !n.is_empty() && !n.contains('/'));
            assert!(
                !target.contains(['%', '?', '#']),
                "nothing encoded is taken"
            );
        }
    }
}
