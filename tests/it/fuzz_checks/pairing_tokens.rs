//! Pairing tokens and join lines (`wire::token`), as an admin pastes them and a peer
//! presents them. Any text: `PairingToken::parse` takes exactly 12 lowercase hex digits,
//! a dot and 32 lowercase hex digits, and its `Debug` never shows the secret;
//! `JoinLine::parse` never panics, and what it accepts renders to a line that parses to
//! the same, uses only characters a shell leaves alone, and gives a `target` that the
//! source's `parse_target` takes.

use replgate::pairing::source::parse_target;
use replgate::wire::token::{JoinLine, PairingToken};

fn hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// One input: panics when a property fails.
pub fn run(input: &[u8]) {
    let Ok(text) = std::str::from_utf8(input) else {
        return;
    };
    let want = text
        .split_once('.')
        .is_some_and(|(id, secret)| hex(id, 12) && hex(secret, 32));
    let token = PairingToken::parse(text);
    assert_eq!(token.is_some(), want, "{text:?}");
    if let Some(t) = &token {
        assert_eq!(t.expose(), text);
        assert_eq!(
            format!("{t:?}"),
            format!("PairingToken({}.…)", t.id()),
            "Debug hides the secret"
        );
    }
    let Ok(line) = JoinLine::parse(text) else {
        return;
    };
    let rendered = line.render();
    assert!(
        rendered
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | ':' | '/')),
        "{rendered}"
    );
    assert_eq!(JoinLine::parse(&rendered).as_ref(), Ok(&line), "{rendered}");
    assert!(parse_target(&line.target()).is_some(), "{}", line.target());
    // The line's Debug shows the token only as the token's own Debug does (the secret's
    // digits, even the whole token, may occur in the host: compare the whole text).
    let expected = format!(
        "JoinLine {{ host: {:?}, port: {}, ca_fingerprint: {:?}, token: PairingToken({}.…) }}",
        line.host,
        line.port,
        line.ca_fingerprint,
        line.token.id()
    );
    assert_eq!(format!("{line:?}"), expected);
}
