//! The console's files, embedded at build time from `assets/` (plain HTML, CSS and
//! JavaScript modules, no build step), served with the console's security headers.

use crate::api::error::ApiError;
use crate::api::{Call, Reply};

/// One embedded file.
pub(super) struct Asset {
    pub name: &'static str,
    pub content_type: &'static str,
    pub body: &'static [u8],
}

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const SVG: &str = "image/svg+xml";

macro_rules! asset {
    ($name:literal, $type:expr) => {
        Asset {
            name: $name,
            content_type: $type,
            body: include_bytes!(concat!("assets/", $name)),
        }
    };
}

/// Every file the console has; `index.html` is served at `/`, the others at
/// `/console/<name>`.
pub(super) const ASSETS: &[Asset] = &[
    asset!("index.html", HTML),
    asset!("console.css", CSS),
    asset!("icon.svg", SVG),
    asset!("app.js", JS),
    asset!("lib.js", JS),
    asset!("pending.js", JS),
    asset!("inventory.js", JS),
    asset!("targets.js", JS),
    asset!("queue.js", JS),
    asset!("received.js", JS),
    asset!("tokens.js", JS),
    asset!("admin.js", JS),
];

/// The console's content security policy: scripts, styles, images and API calls only
/// from this origin, no inline script or style, no plugins, forms post only here, never
/// framed, and Trusted Types with no policy, so no script can assign HTML to any sink
/// (`innerHTML` and the like throw): peer-supplied text can only ever be text.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; object-src 'none'; \
    base-uri 'none'; form-action 'self'; frame-ancestors 'none'; \
    require-trusted-types-for 'script'; trusted-types 'none'";

/// Headers on every console file, besides the API's own (`no-store`, `nosniff`).
const HEADERS: [(&str, &str); 5] = [
    ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
    ("Cross-Origin-Resource-Policy", "same-origin"),
];

fn serve(name: &str) -> Result<Reply, ApiError> {
    let asset = ASSETS
        .iter()
        .find(|a| a.name == name)
        .ok_or_else(|| ApiError::NotFound(format!("the console has no file {name:?}")))?;
    Ok(Reply {
        status: 200,
        body: asset.body.to_vec(),
        content_type: asset.content_type,
        headers: HEADERS
            .iter()
            .map(|(k, v)| (*k, (*v).to_string()))
            .collect(),
    })
}

/// `GET /`: the console's page.
pub fn page(_call: &Call) -> Result<Reply, ApiError> {
    serve("index.html")
}

/// `GET /console/{file}`.
pub fn asset(call: &Call) -> Result<Reply, ApiError> {
    match call.param(0) {
        "index.html" => Err(ApiError::NotFound("the console's page is at /".into())),
        name => serve(name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SPEC 16: the first load is at most 100 KB; everything the console has is less.
    const BUDGET_BYTES: usize = 100_000;

    fn text(a: &Asset) -> &'static str {
        std::str::from_utf8(a.body).expect("console files are UTF-8")
    }

    #[test]
    fn all_the_console_weighs_less_than_the_first_load_budget() {
        let total: usize = ASSETS.iter().map(|a| a.body.len()).sum();
        assert!(
            total < BUDGET_BYTES,
            "the console's files add up to {total} bytes"
        );
    }

    #[test]
    fn every_file_the_page_names_is_embedded_and_every_embedded_file_is_named() {
        let named = |name: &str| {
            ASSETS.iter().any(|a| {
                text(a).contains(&format!("/console/{name}"))
                    || text(a).contains(&format!("./{name}"))
            })
        };
        for a in ASSETS.iter().filter(|a| a.name != "index.html") {
            assert!(named(a.name), "{} is embedded but nothing loads it", a.name);
        }
        for a in ASSETS.iter().filter(|a| a.content_type == JS) {
            for import in text(a).lines().filter_map(|l| l.split("from './").nth(1)) {
                let file = import.split('\'').next().unwrap_or("");
                assert!(
                    ASSETS.iter().any(|b| b.name == file),
                    "{} imports {file}",
                    a.name
                );
            }
        }
    }

    /// The characters of the console's `HIDDEN` class in `lib.js`: `\uXXXX`, `\u{X}` and
    /// `\\` items, and `a-b` ranges of them.
    fn hidden_class() -> Vec<(u32, u32)> {
        let lib = ASSETS
            .iter()
            .find(|a| a.name == "lib.js")
            .map(text)
            .unwrap_or("");
        let class = lib
            .split("const HIDDEN = /[")
            .nth(1)
            .and_then(|rest| rest.split("]/gu;").next())
            .expect("lib.js defines HIDDEN as one character class");
        let mut items: Vec<u32> = Vec::new();
        let mut ranges = Vec::new();
        let mut rest = class;
        let mut range_open = false;
        while !rest.is_empty() {
            let (c, len) = if let Some(r) = rest.strip_prefix("\\u{") {
                let hex = r.split('}').next().unwrap_or("");
                (u32::from_str_radix(hex, 16).expect("hex"), 4 + hex.len())
            } else if let Some(r) = rest.strip_prefix("\\u") {
                (u32::from_str_radix(&r[..4], 16).expect("hex"), 6)
            } else if rest.starts_with("\\\\") {
                (u32::from('\\'), 2)
            } else if rest.starts_with('-') {
                range_open = true;
                rest = &rest[1..];
                continue;
            } else {
                panic!("unexpected in HIDDEN: {rest}");
            };
            rest = &rest[len..];
            match (range_open, items.pop()) {
                (true, Some(from)) => ranges.push((from, c)),
                (_, prev) => {
                    ranges.extend(prev.map(|p| (p, p)));
                    items.push(c);
                }
            }
            range_open = false;
        }
        ranges.extend(items.into_iter().map(|c| (c, c)));
        ranges
    }

    /// One rule for the console and `ctl` (docs/decisions.md, "Showing peer-supplied
    /// text"): the console escapes exactly the characters `ctl` escapes, plus `\`, which
    /// both double.
    #[test]
    fn the_console_escapes_exactly_what_ctl_escapes() {
        let class = hidden_class();
        for cp in 0..=0x10_ffff_u32 {
            let Some(c) = char::from_u32(cp) else {
                continue;
            };
            let console = class.iter().any(|(a, b)| (*a..=*b).contains(&cp));
            let ctl = crate::ctl::table::shown_escaped(c) || c == '\\';
            assert_eq!(console, ctl, "U+{cp:04X}: console {console}, ctl {ctl}");
        }
    }

    /// The escaping rule (docs/decisions.md, Console): text from the API only ever goes
    /// in as text. The CSP's Trusted Types enforce it in the browser; this keeps the
    /// sinks out of the source in the first place.
    #[test]
    fn no_console_script_writes_html_or_runs_strings() {
        for a in ASSETS.iter().filter(|a| a.content_type == JS) {
            for sink in [
                "innerHTML",
                "outerHTML",
                "insertAdjacentHTML",
                "document.write",
                "eval(",
                "new Function",
                "setAttribute('on",
                "srcdoc",
            ] {
                assert!(!text(a).contains(sink), "{} uses {sink}", a.name);
            }
        }
        for a in ASSETS.iter().filter(|a| a.content_type == HTML) {
            let t = text(a);
            assert!(
                !t.contains("<script>") && !t.contains(" style=") && !t.contains("<style"),
                "inline script or style in {}",
                a.name
            );
            assert!(
                !t.contains("http://") && !t.contains("https://"),
                "{} loads from elsewhere",
                a.name
            );
        }
    }
}
