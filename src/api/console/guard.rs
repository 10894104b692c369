//! The console's browser rules, applied by the router: which `Host` names the console
//! answers to (against DNS rebinding), which cookie-authenticated requests may change
//! state (against CSRF), and reading the session cookie. Pure functions over request
//! headers and the config; never decides privileges (the route table does).

use std::net::IpAddr;

use crate::api::body::quoted;
use crate::api::error::ApiError;
use crate::config::Config;
use crate::wire::http::split_authority;

/// The session cookie's name. The `__Host-` prefix makes browsers insist on `Secure`,
/// `Path=/` and no `Domain`, so no other host (a sibling subdomain) can set or shadow it.
pub const COOKIE: &str = "__Host-replgate";

/// The longest cookie value taken as a token (tokens are 64 hex digits).
const MAX_TOKEN_CHARS: usize = 256;

/// The request headers a browser sends that the console's rules read.
#[derive(Debug, Default, Clone)]
pub struct Browser {
    pub host: Option<String>,
    pub origin: Option<String>,
    /// `Sec-Fetch-Site`, which page scripts cannot set.
    pub fetch_site: Option<String>,
    /// The token in the session cookie, when one of the right shape is present.
    pub cookie_token: Option<String>,
}

impl Browser {
    /// Reads the headers that matter from `(name, value)` pairs; the first of each wins.
    pub fn from_headers<'a>(headers: impl Iterator<Item = (&'a str, &'a str)>) -> Browser {
        let mut b = Browser::default();
        for (name, value) in headers {
            let slot = match name.to_ascii_lowercase().as_str() {
                "host" => &mut b.host,
                "origin" => &mut b.origin,
                "sec-fetch-site" => &mut b.fetch_site,
                "cookie" => {
                    if b.cookie_token.is_none() {
                        b.cookie_token = session_cookie(value);
                    }
                    continue;
                }
                _ => continue,
            };
            if slot.is_none() {
                *slot = Some(value.trim().to_string());
            }
        }
        b
    }
}

/// The console's token in a `Cookie` header value (`a=1; __Host-replgate=<hex>`): only
/// hex digits are taken, anything else is no cookie at all.
fn session_cookie(header: &str) -> Option<String> {
    header
        .split(';')
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim())
        .filter(|v| {
            !v.is_empty() && v.len() <= MAX_TOKEN_CHARS && v.bytes().all(|b| b.is_ascii_hexdigit())
        })
        .map(String::from)
}

/// `Set-Cookie` for a new console session: readable by no script, sent only over TLS and
/// only with requests from this site's own pages. No `Max-Age`: the browser forgets it
/// when it closes; the server's idle and absolute expiry apply as to any token.
pub fn set_cookie(token: &str) -> String {
    format!("{COOKIE}={token}; Path=/; Secure; HttpOnly; SameSite=Strict")
}

/// `Set-Cookie` that removes the console's cookie (logout).
pub fn clear_cookie() -> String {
    format!("{COOKIE}=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0")
}

/// Whether the console answers to `host_header`: one of `hostnames` or `console_hosts`,
/// the API listen address, or loopback (`localhost`, 127.0.0.0/8, `::1`). The port is not
/// compared (a reverse proxy may use another one). A rebinding attack needs a name the
/// attacker controls, which is on none of these lists.
pub fn host_allowed(host_header: &str, config: &Config) -> bool {
    let Some((host, _port)) = split_authority(host_header) else {
        return false;
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    let named = |h: &String| match (h.parse::<IpAddr>(), host.parse::<IpAddr>()) {
        (Ok(a), Ok(b)) => a == b,
        _ => h.eq_ignore_ascii_case(host),
    };
    match host.parse::<IpAddr>() {
        Ok(ip) if ip.is_loopback() => true,
        Ok(ip) if ip == config.api_listen.ip() && !ip.is_unspecified() => true,
        _ => {
            host.eq_ignore_ascii_case("localhost")
                || config
                    .hostnames
                    .iter()
                    .chain(&config.console_hosts)
                    .any(named)
        }
    }
}

/// Whether a state-changing request came from the console's own pages: the browser says
/// `Sec-Fetch-Site: same-origin`, or the `Origin` is this listener as the request named it
/// (`https://` + `Host`) or one of `console_origins`.
pub fn same_origin(browser: &Browser, config: &Config) -> bool {
    if browser
        .fetch_site
        .as_deref()
        .is_some_and(|s| s.eq_ignore_ascii_case("same-origin"))
    {
        return true;
    }
    let Some(origin) = browser.origin.as_deref().map(str::to_ascii_lowercase) else {
        return false;
    };
    let own = browser
        .host
        .as_deref()
        .is_some_and(|h| origin == format!("https://{}", h.to_ascii_lowercase()));
    own || config.console_origins.contains(&origin)
}

/// The console's rules for one request from a browser (a console page, its login, or an
/// API call authenticated by the cookie): an allowed `Host` always, and the same origin
/// for anything but a read.
pub fn check(browser: &Browser, method: &str, config: &Config) -> Result<(), ApiError> {
    let host = browser.host.as_deref().unwrap_or("");
    if !host_allowed(host, config) {
        return Err(ApiError::Forbidden(format!(
            "this appliance's console does not answer to the host name {}: it answers to \
             its hostnames, its listen address and loopback (a reverse proxy's name goes \
             in console_hosts)",
            quoted(host)
        )));
    }
    if !matches!(method, "GET" | "HEAD") && !same_origin(browser, config) {
        return Err(ApiError::Forbidden(
            "cross-site request refused: a console request that changes something must \
             come from the console's own page (Sec-Fetch-Site: same-origin, or an Origin \
             of this listener or of console_origins)"
                .into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Config {
        let toml = format!("api_listen = \"192.0.2.7:8443\"\nhostnames = [\"dpu.example\", \"198.51.100.1\"]\n{extra}");
        Config::from_toml(&toml, std::iter::empty()).unwrap()
    }

    fn browser(host: &str, origin: Option<&str>, site: Option<&str>) -> Browser {
        Browser {
            host: Some(host.into()),
            origin: origin.map(String::from),
            fetch_site: site.map(String::from),
            cookie_token: None,
        }
    }

    #[test]
    fn the_console_answers_to_its_names_its_address_and_loopback_only() {
        let c = config("console_hosts = [\"proxy.example\"]");
        for ok in [
            "dpu.example",
            "DPU.Example:8443",
            "dpu.example.",
            "198.51.100.1",
            "192.0.2.7:8443",
            "127.0.0.1:8443",
            "127.0.0.2",
            "[::1]:8443",
            "localhost:8443",
            "proxy.example",
        ] {
            assert!(host_allowed(ok, &c), "{ok}");
        }
        for foreign in [
            "",
            "evil.example",
            "dpu.example.evil.example",
            "192.0.2.8:8443",
            "[::2]",
            "dpu.example:0",
            "dpu.example:x",
        ] {
            assert!(!host_allowed(foreign, &c), "{foreign}");
        }
        // Listening on every address names no address.
        let any = Config::from_toml("api_listen = \"0.0.0.0:8443\"", std::iter::empty()).unwrap();
        assert!(!host_allowed("0.0.0.0:8443", &any));
        assert!(host_allowed("localhost", &any));
    }

    #[test]
    fn only_the_consoles_own_origin_may_change_state() {
        let c = config("console_origins = [\"https://proxy.example\"]");
        let yes = [
            browser("dpu.example:8443", None, Some("same-origin")),
            browser("dpu.example:8443", Some("https://dpu.example:8443"), None),
            browser(
                "dpu.example:8443",
                Some("https://DPU.example:8443"),
                Some("same-site"),
            ),
            browser(
                "127.0.0.1:8443",
                Some("https://proxy.example"),
                Some("same-site"),
            ),
        ];
        for b in &yes {
            assert!(same_origin(b, &c), "{b:?}");
            assert!(check(b, "POST", &c).is_ok(), "{b:?}");
        }
        let no = [
            browser("dpu.example:8443", None, None),
            browser("dpu.example:8443", None, Some("same-site")),
            browser(
                "dpu.example:8443",
                Some("https://dpu.example:9443"),
                Some("same-site"),
            ),
            browser("dpu.example:8443", Some("http://dpu.example:8443"), None),
            browser("dpu.example:8443", Some("null"), Some("cross-site")),
            browser(
                "dpu.example:8443",
                Some("https://evil.example"),
                Some("cross-site"),
            ),
        ];
        for b in &no {
            assert!(!same_origin(b, &c), "{b:?}");
            assert!(
                matches!(check(b, "DELETE", &c), Err(ApiError::Forbidden(_))),
                "{b:?}"
            );
            // Reads need only the host name.
            assert!(check(b, "GET", &c).is_ok(), "{b:?}");
        }
        let rebound = browser("evil.example", None, Some("same-origin"));
        match check(&rebound, "GET", &c) {
            Err(ApiError::Forbidden(m)) => assert!(m.contains("\"evil.example\""), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_cookie_is_read_by_name_and_shape_only() {
        let token = "ab".repeat(32);
        let b = Browser::from_headers(
            [
                ("Host", "x"),
                ("cookie", "theme=dark; __Host-replgate=zz"),
                ("Cookie", &format!("a=1; {COOKIE}={token}")),
            ]
            .into_iter(),
        );
        assert_eq!(b.cookie_token, Some(token.clone()));
        assert_eq!(b.host.as_deref(), Some("x"));
        for bad in [
            String::new(),
            "replgate=ab".into(),
            format!("{COOKIE}="),
            format!("{COOKIE}=ab cd"),
            format!("{COOKIE}={}", "a".repeat(MAX_TOKEN_CHARS + 1)),
            format!("x{COOKIE}={token}"),
        ] {
            assert_eq!(session_cookie(&bad), None, "{bad}");
        }
        let set = set_cookie(&token);
        for attribute in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/"] {
            assert!(set.split("; ").any(|a| a == attribute), "{set}");
            assert!(clear_cookie().split("; ").any(|a| a == attribute));
        }
        assert!(clear_cookie().ends_with("Max-Age=0"));
    }
}
