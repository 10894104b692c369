//! Pairing tokens on the wire (SPEC 13): the token text `<id>.<secret>` and the `join`
//! line that carries a target's address, its CA fingerprint and a token in one pasteable
//! string. Parsing and rendering only: where tokens are checked is `pairing::tokens`.
//! The secret never reaches `Debug`.

use std::fmt;
use std::net::Ipv6Addr;

/// A pairing token as presented: `<id>.<secret>`, exactly [`PairingToken::ID_LEN`]
/// lowercase hex digits, a dot, [`PairingToken::SECRET_LEN`] lowercase hex digits
/// (128 random bits). Parsed before anything is looked up, so no other shape gets further.
#[derive(Clone, PartialEq, Eq)]
pub struct PairingToken {
    /// Invariant: `ID_LEN` hex digits, `.`, `SECRET_LEN` hex digits.
    text: String,
}

fn lower_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl PairingToken {
    /// The public part: 48 random bits, shown in lists and audit rows.
    pub const ID_LEN: usize = 12;
    /// The secret part: 128 random bits.
    pub const SECRET_LEN: usize = 32;

    pub fn parse(text: &str) -> Option<PairingToken> {
        let (id, secret) = text.split_once('.')?;
        (lower_hex(id, Self::ID_LEN) && lower_hex(secret, Self::SECRET_LEN)).then(|| PairingToken {
            text: text.to_string(),
        })
    }

    /// A token from its two parts, as `pairing::tokens` makes one; None if either has the
    /// wrong shape.
    pub fn from_parts(id: &str, secret: &str) -> Option<PairingToken> {
        PairingToken::parse(&format!("{id}.{secret}"))
    }

    /// Whether `id` has the shape of a token id (a path parameter, a list filter).
    pub fn valid_id(id: &str) -> bool {
        lower_hex(id, Self::ID_LEN)
    }

    pub fn id(&self) -> &str {
        &self.text[..Self::ID_LEN]
    }

    /// The whole token, secret included: for hashing, for sending it to the target, and
    /// for showing it once. Named so that every use is visible in a review.
    pub fn expose(&self) -> &str {
        &self.text
    }
}

/// Sent as its text: serializing is how a source hands the token to the target.
impl serde::Serialize for PairingToken {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.expose())
    }
}

impl fmt::Debug for PairingToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PairingToken({}.…)", self.id())
    }
}

/// The `join` line: `replgate-join/1/<host>/<port>/<ca sha256>/<token>`.
///
/// Fields are separated by `/`, which occurs in no host name, IP address, port, hex
/// fingerprint or token, so an IPv6 address needs no brackets and the port is never
/// confused with its last group (`replgate-join/1/2001:db8::7/8443/…`). Every character
/// is one a shell leaves alone unquoted (letters, digits, `-`, `.`, `:`, `/`): no
/// brackets (globs in zsh), no `?`, `&` or `#`. The `1` is the format's version.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinLine {
    /// A DNS name, an IPv4 address or an IPv6 address (without brackets).
    pub host: String,
    pub port: u16,
    /// SHA-256 of the target's CA certificate, 64 lowercase hex digits.
    pub ca_fingerprint: String,
    pub token: PairingToken,
}

/// Why a join line does not parse; the text names the part at fault.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinError(pub &'static str);

impl fmt::Display for JoinError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for JoinError {}

fn valid_dns_name(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && h.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        && !h.starts_with(['-', '.'])
}

impl JoinLine {
    pub const PREFIX: &'static str = "replgate-join";
    pub const VERSION: &'static str = "1";

    pub fn parse(text: &str) -> Result<JoinLine, JoinError> {
        let parts: Vec<&str> = text.trim().split('/').collect();
        let [prefix, version, host, port, fingerprint, token] = parts[..] else {
            return Err(JoinError(
                "a join line is replgate-join/1/HOST/PORT/FINGERPRINT/TOKEN",
            ));
        };
        if prefix != Self::PREFIX {
            return Err(JoinError("a join line starts with replgate-join/"));
        }
        if version != Self::VERSION {
            return Err(JoinError(
                "this join line has another format version than 1; use a matching replgate",
            ));
        }
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let host = if bare.contains(':') {
            bare.parse::<Ipv6Addr>()
                .map_err(|_| JoinError("the join line's host is not a valid IPv6 address"))?
                .to_string()
        } else if valid_dns_name(bare) {
            bare.to_ascii_lowercase()
        } else {
            return Err(JoinError(
                "the join line's host is not a host name or IP address",
            ));
        };
        let port = port
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or(JoinError(
                "the join line's port is not a number from 1 to 65535",
            ))?;
        let ca_fingerprint = fingerprint.to_ascii_lowercase();
        if !lower_hex(&ca_fingerprint, 64) {
            return Err(JoinError(
                "the join line's fingerprint is not 64 hex digits (SHA-256)",
            ));
        }
        let token = PairingToken::parse(token)
            .ok_or(JoinError("the join line's token is not <id>.<secret>"))?;
        Ok(JoinLine {
            host,
            port,
            ca_fingerprint,
            token,
        })
    }

    /// `host:port` as `POST /api/replication/target` takes it (IPv6 in brackets).
    pub fn target(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The line itself, secret included (shown once, when the token is created).
    pub fn render(&self) -> String {
        format!(
            "{}/{}/{}/{}/{}/{}",
            Self::PREFIX,
            Self::VERSION,
            self.host,
            self.port,
            self.ca_fingerprint,
            self.token.expose()
        )
    }
}

impl fmt::Debug for JoinLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinLine")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("ca_fingerprint", &self.ca_fingerprint)
            .field("token", &self.token)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789ab";
    const SECRET: &str = "00112233445566778899aabbccddeeff";

    fn token() -> PairingToken {
        PairingToken::from_parts(ID, SECRET).unwrap()
    }

    #[test]
    fn tokens_have_exactly_one_shape() {
        let t = token();
        assert_eq!(t.id(), ID);
        assert_eq!(t.expose(), format!("{ID}.{SECRET}"));
        for bad in [
            "",
            ".",
            ID,
            &format!("{ID}."),
            &format!(".{SECRET}"),
            &format!("{ID}.{SECRET}0"),
            &format!("{ID}0.{SECRET}"),
            &format!("{}.{SECRET}", ID.to_uppercase()),
            &format!("{ID}.{}", SECRET.to_uppercase()),
            &format!("{ID}.{SECRET}.x"),
            &format!("{ID} .{SECRET}"),
            &format!("{ID}/{SECRET}"),
        ] {
            assert!(PairingToken::parse(bad).is_none(), "{bad:?}");
        }
        assert!(PairingToken::valid_id(ID));
        assert!(!PairingToken::valid_id("../etc"));
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let t = token();
        let line = JoinLine {
            host: "backup.example".into(),
            port: 8443,
            ca_fingerprint: "ab".repeat(32),
            token: t.clone(),
        };
        for shown in [
            format!("{t:?}"),
            format!("{line:?}"),
            format!("{:?}", Some(&t)),
        ] {
            assert!(shown.contains(ID), "{shown}");
            assert!(!shown.contains(SECRET), "{shown}");
        }
    }

    #[test]
    fn join_lines_round_trip_for_names_ipv4_and_ipv6() {
        for (host, target) in [
            ("backup.example", "backup.example:8443"),
            ("192.0.2.10", "192.0.2.10:8443"),
            ("2001:db8::7", "[2001:db8::7]:8443"),
            ("::1", "[::1]:8443"),
        ] {
            let line = JoinLine {
                host: host.into(),
                port: 8443,
                ca_fingerprint: "cd".repeat(32),
                token: token(),
            };
            let text = line.render();
            assert!(
                text.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-.:/".contains(&b)),
                "{text}"
            );
            let back = JoinLine::parse(&text).unwrap();
            assert_eq!(back, line, "{text}");
            assert_eq!(back.target(), target);
        }
        // The port after an IPv6 address that ends in a group of digits is still the port.
        let l = JoinLine::parse(&format!(
            "replgate-join/1/2001:db8::8443/9443/{}/{ID}.{SECRET}",
            "ab".repeat(32)
        ))
        .unwrap();
        assert_eq!((l.host.as_str(), l.port), ("2001:db8::8443", 9443));
        // Brackets, upper case and surrounding blanks are tolerated on input.
        let l = JoinLine::parse(&format!(
            "  replgate-join/1/[2001:DB8::1]/8443/{}/{ID}.{SECRET}\n",
            "AB".repeat(32)
        ))
        .unwrap();
        assert_eq!(l.host, "2001:db8::1");
        assert_eq!(l.ca_fingerprint, "ab".repeat(32));
    }

    #[test]
    fn bad_join_lines_name_the_part() {
        let fp = "ab".repeat(32);
        let tok = format!("{ID}.{SECRET}");
        for (text, part) in [
            (
                format!("replgate-join/1/h/8443/{fp}"),
                "replgate-join/1/HOST",
            ),
            (format!("other/1/h/8443/{fp}/{tok}"), "starts with"),
            (format!("replgate-join/2/h/8443/{fp}/{tok}"), "version"),
            (
                format!("replgate-join/1/2001:db8:::1/8443/{fp}/{tok}"),
                "IPv6",
            ),
            (format!("replgate-join/1/-h/8443/{fp}/{tok}"), "host"),
            (format!("replgate-join/1/h/0/{fp}/{tok}"), "port"),
            (format!("replgate-join/1/h/70000/{fp}/{tok}"), "port"),
            (
                format!("replgate-join/1/h/8443/{}/{tok}", "ab".repeat(31)),
                "fingerprint",
            ),
            (format!("replgate-join/1/h/8443/{fp}/{ID}"), "token"),
        ] {
            let e = JoinLine::parse(&text).unwrap_err();
            assert!(e.to_string().contains(part), "{text}: {e}");
        }
    }
}
