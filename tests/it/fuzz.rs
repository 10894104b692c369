//! Property tests on the stable toolchain, beside the coverage-guided targets of `fuzz/`
//! (whose checks `fuzz_checks/` runs here too): a seeded generator (`rng.rs`) makes
//! arbitrary and structured-but-mutated inputs for the four places where bytes from a
//! peer are parsed, and each input is checked against a property, most often an
//! independent model of the documented rules.
//!
//! - `head_*`: `wire::http::{find_end, parse}` (with the front's body cap) against a
//!   reference model of the rules in wire/http.rs, on arbitrary bytes and on mutated
//!   well-formed heads.
//! - `json_bodies_*`: every POST/PUT route's body, mutated (wrong types, huge numbers, deep
//!   nesting, unicode, missing and unknown fields, broken bytes), through the
//!   `api::body::Body` accessors with a model of their rules, then through a real daemon
//!   (every answer a documented status and error shape; never a 500 or a dropped connection).
//! - `csr_*`: mutated DER and PEM CSRs into `ca::parse_csr`; whatever it accepts carries an
//!   original key and signs to a non-CA, clientAuth-only certificate for that key.
//! - `spool_*`: arbitrary tokens and file names through `SpoolToken::parse`/`SpoolFile::parse`
//!   and `GET /replication/v1/spool/<a>/<b>` on a real daemon: 200 exactly for a served
//!   name of an existing token, with exactly that file's bytes; 404 for everything else.
//!
//! Case counts are small by default so the suite stays fast; `REPLGATE_FUZZ_SCALE=N`
//! multiplies them and `REPLGATE_FUZZ_SEED` replays a run (see docs/testing.md).

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Instant;

use serde_json::Value;

use replgate::api::body::{percent_decode, Body};
use replgate::api::error::ApiError;
use replgate::api::route_table;
use replgate::ca::{self, Ca};
use replgate::wire::http;
use replgate::wire::protocol::{SpoolFile, SpoolToken};

use crate::harness::{scratch_dir, Daemon, Options, Response};
use crate::rng::{count_from_env, seed_from_env, Rng};
use crate::rules::{accessor_model, head_model, Kind};

const SEED_VAR: &str = "REPLGATE_FUZZ_SEED";
const SCALE_VAR: &str = "REPLGATE_FUZZ_SCALE";
const DEFAULT_SEED: u64 = 0xf022_0000_0000_0001;
/// Failures collected before a property test stops and reports.
const MAX_FAILURES: usize = 10;

/// A property run: its generator, its case count and its failures.
struct Run {
    name: &'static str,
    rng: Rng,
    cases: u64,
    failures: Vec<String>,
    started: Instant,
}

impl Run {
    fn new(name: &'static str, salt: u64, base_cases: u64) -> Run {
        let seed = seed_from_env(SEED_VAR, DEFAULT_SEED);
        let scale = count_from_env(SCALE_VAR, 1).max(1);
        Run {
            name,
            rng: Rng::new(seed ^ salt),
            cases: base_cases * scale,
            failures: Vec::new(),
            started: Instant::now(),
        }
    }

    fn fail(&mut self, case: u64, what: String) {
        if self.failures.len() < MAX_FAILURES {
            self.failures.push(format!("case {case}: {what}"));
        }
    }

    fn full(&self) -> bool {
        self.failures.len() >= MAX_FAILURES
    }

    fn finish(self, summary: String) {
        eprintln!(
            "fuzz {}: {} cases in {:.1} s; {summary}; {} failures",
            self.name,
            self.cases,
            self.started.elapsed().as_secs_f64(),
            self.failures.len()
        );
        assert!(
            self.failures.is_empty(),
            "{} (replay with {SEED_VAR}):\n{}",
            self.name,
            self.failures.join("\n")
        );
    }
}

/// Runs `f`, turning a panic into an error that names the input.
fn no_panic<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|e| {
        e.downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panic".into())
    })
}

fn show(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(&bytes[..bytes.len().min(300)]).into_owned();
    format!("{s:?}{}", if bytes.len() > 300 { "…" } else { "" })
}

/// Bytes that break parsers: line ends, separators, controls, non-ASCII.
const NASTY: &[u8] = &[
    b'\r', b'\n', 0, b' ', b'\t', b':', b',', b'/', b'%', b'.', 0x7f, 0x80, 0xff, b'"', b'\\',
    b'{', b'[', b'0', b'9', b'a', b'A',
];

pub(crate) fn mutate_bytes(rng: &mut Rng, buf: &mut Vec<u8>) {
    let at = |rng: &mut Rng, len: usize| rng.index(len + 1);
    match rng.below(7) {
        0 if !buf.is_empty() => {
            let i = rng.index(buf.len());
            buf[i] = *rng.pick(NASTY);
        }
        1 => {
            let i = at(rng, buf.len());
            buf.insert(i, *rng.pick(NASTY));
        }
        2 if !buf.is_empty() => {
            let i = rng.index(buf.len());
            buf.remove(i);
        }
        3 => {
            let i = at(rng, buf.len());
            buf.truncate(i);
        }
        4 if !buf.is_empty() => {
            let i = rng.index(buf.len());
            buf[i] ^= 1 << rng.below(8);
        }
        5 if buf.len() > 1 => {
            let (i, j) = (rng.index(buf.len()), rng.index(buf.len()));
            buf.swap(i, j);
        }
        _ => {
            let i = at(rng, buf.len());
            buf.insert(i, rng.next_u64() as u8);
        }
    }
}

// =========================================================================================
// (a) wire::http request heads, under the front's body cap
// =========================================================================================

const METHODS: &[&str] = &[
    "GET", "POST", "PUT", "DELETE", "HEAD", "PATCH", "M-SEARCH", "get",
];
const TARGETS: &[&str] = &[
    "/",
    "/api/health",
    "/api/users?x=1&y=%20",
    "*",
    "http://a.example/b",
    "/replication/v1/spool/%2e%2e/ca.key",
    "/a#b",
];
const HEADER_NAMES: &[&str] = &[
    "Host",
    "Content-Length",
    "content-LENGTH",
    "Transfer-Encoding",
    "Connection",
    "AuthToken",
    "X-Forwarded-For",
    "Expect",
    "Upgrade",
    "If-None-Match",
];

fn header_value(rng: &mut Rng, name: &str) -> String {
    match name.to_ascii_lowercase().as_str() {
        "content-length" => match rng.below(5) {
            0 => "0".into(),
            1 => format!("{:05}", rng.below(100)),
            2 => "9".repeat(1 + rng.index(30)),
            _ => rng.below(200_000).to_string(),
        },
        "transfer-encoding" => rng
            .pick(&["chunked", "identity", "gzip, chunked"])
            .to_string(),
        "connection" => rng
            .pick(&["keep-alive", "close", "Upgrade", "keep-alive, UPGRADE"])
            .to_string(),
        "expect" => rng
            .pick(&["100-continue", "100-Continue", "200-ok", ""])
            .to_string(),
        _ => (0..rng.index(20))
            .map(|_| (b' ' + rng.below(95) as u8) as char)
            .collect(),
    }
}

/// A well-formed head (by construction) that the mutations then break in small ways.
fn structured_head(rng: &mut Rng) -> Vec<u8> {
    let mut out = format!(
        "{} {} {}\r\n",
        rng.pick(METHODS),
        rng.pick(TARGETS),
        rng.pick(&["HTTP/1.1", "HTTP/1.0"])
    );
    for _ in 0..rng.index(6) {
        let name = *rng.pick(HEADER_NAMES);
        let ows = *rng.pick(&["", " ", "\t", "  "]);
        out.push_str(&format!("{name}:{ows}{}{ows}\r\n", header_value(rng, name)));
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    for _ in 0..rng.index(4) {
        mutate_bytes(rng, &mut bytes);
    }
    bytes
}

fn arbitrary_head(rng: &mut Rng) -> Vec<u8> {
    const ALPHABET: &[u8] = b"GET /HTP1.0\r\n\r\n: \tContent-Length0123456789chunkedUpgrade";
    let len = rng.index(200);
    (0..len)
        .map(|_| {
            if rng.below(3) == 0 {
                rng.next_u64() as u8
            } else {
                *rng.pick(ALPHABET)
            }
        })
        .collect()
}

fn check_head(
    run: &mut Run,
    case: u64,
    buf: &[u8],
    max_body: u64,
    tally: &mut BTreeMap<String, u64>,
) {
    let end = match no_panic(|| http::find_end(buf, 0)) {
        Ok(e) => e,
        Err(p) => return run.fail(case, format!("find_end panicked ({p}) on {}", show(buf))),
    };
    let first = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    if end != first {
        run.fail(
            case,
            format!(
                "find_end {end:?}, first terminator ends at {first:?}: {}",
                show(buf)
            ),
        );
    }
    // Resuming a scan where a shorter prefix found nothing gives the same answer.
    let from = run.rng.index(buf.len() + 1);
    if http::find_end(&buf[..from], 0).is_none() && http::find_end(buf, from) != end {
        run.fail(
            case,
            format!("find_end from {from} differs on {}", show(buf)),
        );
    }
    let heads: Vec<&[u8]> = match end {
        Some(e) => vec![&buf[..e], buf],
        None => vec![buf],
    };
    for h in heads {
        let got = match no_panic(|| http::parse(h).and_then(|r| r.capped_length(max_body))) {
            Ok(g) => g.map_err(|e| e.status()),
            Err(p) => return run.fail(case, format!("parse panicked ({p}) on {}", show(h))),
        };
        let want = head_model(h, max_body);
        if got != want {
            run.fail(
                case,
                format!(
                    "parse gave {got:?}, the rules say {want:?} (max_body {max_body}): {}",
                    show(h)
                ),
            );
        }
        if let Ok(n) = got {
            if n > max_body {
                run.fail(case, format!("accepted body {n} over the cap {max_body}"));
            }
        }
        let key = match got {
            Ok(_) => "ok".to_string(),
            Err(s) => s.to_string(),
        };
        *tally.entry(key).or_default() += 1;
    }
}

fn head_run(name: &'static str, salt: u64, structured: bool) {
    let mut run = Run::new(name, salt, 20_000);
    let mut tally = BTreeMap::new();
    for case in 0..run.cases {
        let buf = if structured {
            structured_head(&mut run.rng)
        } else {
            arbitrary_head(&mut run.rng)
        };
        let max_body = *run.rng.pick(&[0, 5, 1_000, 65_536, u64::MAX]);
        check_head(&mut run, case, &buf, max_body, &mut tally);
        if run.full() {
            break;
        }
    }
    if structured {
        // The generator must reach every outcome, or the property proves little.
        for outcome in ["ok", "400", "411", "413", "417"] {
            assert!(tally.contains_key(outcome), "no {outcome} in {tally:?}");
        }
    }
    run.finish(format!("outcomes {tally:?}"));
}

#[test]
fn head_parse_matches_the_rules_on_mutated_heads() {
    head_run("head (structured)", 1, true);
}

#[test]
fn head_parse_matches_the_rules_on_arbitrary_bytes() {
    head_run("head (arbitrary)", 2, false);
}

// =========================================================================================
// (b) JSON bodies
// =========================================================================================

/// A route that reads a JSON body: the fields its handler reads and a valid value of each
/// (as JSON text).
struct BodyRoute {
    method: &'static str,
    path: &'static str,
    fields: Vec<(&'static str, Kind, String)>,
}

/// POST/PUT routes that read no body.
const NO_BODY: &[(&str, &str)] = &[
    ("POST", "/api/logout"),
    // The verify reads only `sid`; its body is ignored.
    ("POST", "/api/replication/verify"),
];

fn body_routes(csr_pem: &str) -> Vec<BodyRoute> {
    let s = |v: &str| Value::String(v.into()).to_string();
    use Kind::*;
    let login = || {
        vec![
            ("username", Str, s("fuzzuser")),
            ("password", Str, s("wrong-password")),
        ]
    };
    vec![
        BodyRoute {
            method: "POST",
            path: "/api/login",
            fields: login(),
        },
        // The console's login: the same body, from the console's own page.
        BodyRoute {
            method: "POST",
            path: "/api/session",
            fields: login(),
        },
        BodyRoute {
            method: "POST",
            path: "/api/users",
            fields: vec![
                ("name", Str, s("fz")),
                ("username", Str, s("fz")),
                ("privilege", Str, s("monitor")),
                ("password", Str, s("password-123")),
            ],
        },
        // `abort` with no rollover running is a 409: the route's parsing and refusal are
        // exercised without the fuzzed daemon's CA ever changing under its own client.
        BodyRoute {
            method: "POST",
            path: "/api/ca/rollover",
            fields: vec![("phase", Str, s("abort"))],
        },
        BodyRoute {
            method: "PUT",
            path: "/api/users/{name}",
            fields: vec![
                ("privilege", Str, s("manage")),
                ("password", Str, s("password-456")),
            ],
        },
        BodyRoute {
            method: "POST",
            path: "/api/replication/source",
            fields: vec![
                ("request_id", Id, "1".into()),
                ("accept", Flag, "false".into()),
                ("message", Str, s("no")),
                ("storage_id", Id, "1".into()),
            ],
        },
        BodyRoute {
            method: "PUT",
            path: "/api/replication/source",
            fields: vec![("storage_id", Id, "1".into())],
        },
        // `backups` and `clients` are arrays, which the body accessors do not model; the
        // handler's own tests (tests/it/restore.rs) refuse bad ones.
        BodyRoute {
            method: "POST",
            path: "/api/replication/restore",
            fields: vec![
                ("target_id", Id, "1".into()),
                ("all", Flag, "true".into()),
                ("storage_id", Id, "1".into()),
                ("overwrite", Flag, "false".into()),
            ],
        },
        // `bytes` is a bounded number (no accessor model); `target_id` is modelled.
        BodyRoute {
            method: "POST",
            path: "/api/replication/drill",
            fields: vec![("target_id", Id, "1".into())],
        },
        BodyRoute {
            method: "POST",
            path: "/api/replication/recycle/restore",
            fields: vec![("backup", Str, s("c/f.tar"))],
        },
        BodyRoute {
            method: "POST",
            path: "/api/systems",
            fields: vec![
                ("name", Str, s("dpu")),
                ("host", Str, s("dpu.example")),
                ("system_uuid", Str, s("0000-1111")),
            ],
        },
        BodyRoute {
            method: "POST",
            path: "/api/replication/target",
            fields: vec![
                ("type", Str, s("appliance")),
                ("target", Str, s("127.0.0.1:1")),
                ("insecure", Flag, "1".into()),
                ("fingerprint", Str, s(&"ab".repeat(32))),
                (
                    "token",
                    Str,
                    s("0123456789ab.00112233445566778899aabbccddeeff"),
                ),
            ],
        },
        BodyRoute {
            // A route's query goes with its path here (the route table has none).
            method: "PUT",
            path: "/api/replication/target?target_id=1",
            fields: vec![("compression", Str, s("zstd:2"))],
        },
        BodyRoute {
            method: "POST",
            path: "/api/replication/tokens",
            fields: vec![
                ("storage_id", Id, "1".into()),
                (
                    "system_uuid",
                    Str,
                    s("f0220000-0000-4000-8000-000000000002"),
                ),
                ("host", Str, s("src.example")),
                ("note", Str, s("fuzz")),
                ("address", Str, s("127.0.0.1:8443")),
                ("replaces_system_id", Id, "1".into()),
            ],
        },
        BodyRoute {
            method: "POST",
            path: "/api/replication/queue",
            fields: vec![("target_id", Id, "1".into()), ("backup", Str, s("c/x"))],
        },
        BodyRoute {
            method: "PUT",
            path: "/api/replication/queue",
            fields: vec![("action", Str, s("none")), ("target_id", Id, "1".into())],
        },
        BodyRoute {
            method: "POST",
            path: "/api/metrics/token",
            fields: vec![("name", Str, s("prometheus"))],
        },
        BodyRoute {
            method: "PUT",
            path: "/api/replication/config",
            fields: vec![("strategy", Str, s("retention"))],
        },
        // Windows and the link speed are numbers and lists, which the live run mutates.
        BodyRoute {
            method: "PUT",
            path: "/api/replication/throttle",
            fields: vec![],
        },
        BodyRoute {
            method: "POST",
            path: "/replication/v1/requests",
            fields: vec![
                (
                    "system_uuid",
                    Str,
                    s("f0220000-0000-4000-8000-000000000001"),
                ),
                ("name", Str, s("src")),
                ("host", Str, s("src.example")),
                ("asset_tag", Str, s("tag")),
                ("version", Str, s("1.0")),
                ("csr", Str, s(csr_pem)),
                (
                    "token",
                    Str,
                    s("0123456789ab.00112233445566778899aabbccddeeff"),
                ),
            ],
        },
        BodyRoute {
            method: "POST",
            path: "/tunnel/v1/renew",
            fields: vec![("csr", Str, s(csr_pem))],
        },
    ]
}

/// JSON text fragments that are the wrong type, out of range, odd unicode or deep.
fn weird_fragment(rng: &mut Rng) -> String {
    const FIXED: &[&str] = &[
        "null",
        "true",
        "false",
        "0",
        "1",
        "-1",
        "1.5",
        "1e2",
        "1e308",
        "1e400",
        "-0",
        "18446744073709551615",
        "18446744073709551616",
        "-9223372036854775809",
        "0.0000000000000000000001",
        "\"\"",
        "\" \"",
        "\"0\"",
        "\"007\"",
        "\" 3 \"",
        "\"99999999999999999999\"",
        "\"18446744073709551615\"",
        "\"1e3\"",
        "\"+1\"",
        "\"true\"",
        "\"yes\"",
        "[]",
        "{}",
        "[1]",
        "{\"a\":1}",
        "\"\\u0000\"",
        "\"\\ud800\"",
        "\"\\udc00\\ud800\"",
        "\"é😀\u{202e}x\"",
        "\"../../etc/passwd\"",
        "\"%00\"",
        "\"\\n\\r\\t\"",
        "\"superuser\"",
        "\"administer\"",
        "\"127.0.0.1:1\"",
        "\"[::1]:1\"",
        "\"-----BEGIN CERTIFICATE REQUEST-----\\nAAAA\\n-----END CERTIFICATE REQUEST-----\\n\"",
    ];
    match rng.below(10) {
        0 => {
            let depth = 1 + rng.index(300);
            let (open, close) = if rng.below(2) == 0 {
                ("[", "]")
            } else {
                ("{\"a\":", "}")
            };
            format!("{}1{}", open.repeat(depth), close.repeat(depth))
        }
        1 => {
            let max = if rng.below(10) == 0 { 70_000 } else { 300 };
            let n = 1 + rng.index(max);
            let chars = ['a', 'é', '😀', '\u{202e}', '"', '\\', '\u{7f}', '\u{fffd}'];
            Value::String((0..n).map(|_| *rng.pick(&chars)).collect()).to_string()
        }
        2 => format!(
            "\"{}\"",
            (0..1 + rng.index(25))
                .map(|_| char::from(b'0' + rng.below(10) as u8))
                .collect::<String>()
        ),
        3 => (0..1 + rng.index(25))
            .map(|_| char::from(b'0' + rng.below(10) as u8))
            .collect(),
        _ => rng.pick(FIXED).to_string(),
    }
}

/// A body for `route`: each field valid, weird, null or missing, plus unknown fields, then
/// sometimes broken at the byte level.
fn mutated_body(rng: &mut Rng, route: &BodyRoute, byte_level: bool) -> Vec<u8> {
    let mut members: Vec<String> = Vec::new();
    for (name, _, valid) in &route.fields {
        match rng.below(10) {
            0..=4 => members.push(format!("\"{name}\": {valid}")),
            5 | 6 => members.push(format!("\"{name}\": {}", weird_fragment(rng))),
            7 => members.push(format!("\"{name}\": null")),
            8 => {
                // A duplicate key: serde_json keeps the last.
                members.push(format!("\"{name}\": {}", weird_fragment(rng)));
                members.push(format!("\"{name}\": {valid}"));
            }
            _ => {}
        }
    }
    if rng.below(4) == 0 {
        members.push(format!(
            "\"unknown_{}\": {}",
            rng.below(9),
            weird_fragment(rng)
        ));
    }
    for i in (1..members.len()).rev() {
        let j = rng.index(i + 1);
        members.swap(i, j);
    }
    let mut body = match rng.below(20) {
        0 => weird_fragment(rng).into_bytes(),
        1 => Vec::new(),
        2 => format!("\u{feff}{{{}}}", members.join(",")).into_bytes(),
        _ => format!("{{{}}}", members.join(", ")).into_bytes(),
    };
    if byte_level && rng.below(4) == 0 {
        for _ in 0..1 + rng.index(3) {
            mutate_bytes(rng, &mut body);
        }
    }
    body
}

fn names_field(e: &ApiError, field: &str) -> bool {
    matches!(e, ApiError::BadRequest(m) if m.contains(&format!("`{field}`")))
}

fn check_accessors(run: &mut Run, case: u64, route: &BodyRoute, bytes: &[u8]) {
    let parsed = match no_panic(|| Body::parse(bytes)) {
        Ok(p) => p,
        Err(p) => {
            return run.fail(
                case,
                format!("Body::parse panicked ({p}) on {}", show(bytes)),
            )
        }
    };
    let model = if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        Some(serde_json::Map::new())
    } else {
        match serde_json::from_slice::<Value>(bytes) {
            Ok(Value::Object(m)) => Some(m),
            _ => None,
        }
    };
    let body = match (parsed, model) {
        (Ok(b), Some(m)) => (b, m),
        (Err(ApiError::BadRequest(_)), None) => return,
        (got, want) => {
            return run.fail(
                case,
                format!(
                    "Body::parse gave {got:?}, an object was {}: {}",
                    want.is_some(),
                    show(bytes)
                ),
            )
        }
    };
    let (body, map) = body;
    for (field, kind, _) in &route.fields {
        let want = accessor_model(map.get(*field), *kind);
        let results: Vec<(&str, Result<bool, ApiError>)> = match kind {
            Kind::Str => vec![
                ("str", body.str(field).map(|_| true)),
                ("opt_str", body.opt_str(field).map(|v| v.is_some())),
            ],
            Kind::Id => vec![
                ("id", body.id(field).map(|_| true)),
                ("opt_id", body.opt_id(field).map(|v| v.is_some())),
            ],
            Kind::Flag => vec![
                ("flag", body.flag(field).map(|_| true)),
                ("opt_flag", body.opt_flag(field).map(|v| v.is_some())),
            ],
        };
        for (accessor, got) in results {
            let optional = accessor.starts_with("opt_");
            let ok = match (&got, want) {
                (Ok(present), None) => optional && !present,
                (Ok(present), Some(true)) => *present,
                (Err(e), None) => !optional && names_field(e, field),
                (Err(e), Some(false)) => names_field(e, field),
                _ => false,
            };
            if !ok {
                run.fail(
                    case,
                    format!(
                        "{} {} `{field}` {accessor}: {got:?} where the rules say {want:?}: {}",
                        route.method,
                        route.path,
                        show(bytes)
                    ),
                );
            }
        }
    }
}

fn csr_p256() -> String {
    crate::harness::simple_csr().pem
}

#[test]
fn every_body_route_is_covered() {
    let routes = body_routes("x");
    for r in route_table() {
        if r.method != "POST" && r.method != "PUT" {
            continue;
        }
        let covered = routes
            .iter()
            .any(|b| b.method == r.method && b.path.split('?').next() == Some(r.path))
            || NO_BODY.contains(&(r.method, r.path));
        assert!(
            covered,
            "{} {} takes a body but has no entry in fuzz::body_routes (or fuzz::NO_BODY)",
            r.method, r.path
        );
    }
}

#[test]
fn json_bodies_through_the_body_accessors() {
    let mut run = Run::new("json bodies (accessors)", 3, 5_000);
    let routes = body_routes(&csr_p256());
    for case in 0..run.cases {
        let route = &routes[(case % routes.len() as u64) as usize];
        let bytes = mutated_body(&mut run.rng, route, true);
        check_accessors(&mut run, case, route, &bytes);
        if run.full() {
            break;
        }
    }
    run.finish(format!("{} routes", routes.len()));
}

/// Statuses the SPEC documents (section 3, plus 502 for an unreachable peer).
const DOCUMENTED: &[u16] = &[
    200, 201, 202, 400, 401, 403, 404, 405, 409, 412, 413, 429, 502, 503,
];

/// Checks one answer: a documented status, and for an error the documented body.
fn answer_problem(r: &Response) -> Option<String> {
    if !DOCUMENTED.contains(&r.status) {
        return Some(format!(
            "status {} is not documented: {}",
            r.status,
            r.text()
        ));
    }
    let v: Value = match serde_json::from_slice(&r.body) {
        Ok(v) => v,
        Err(_) => {
            return Some(format!(
                "status {}: body is not JSON: {}",
                r.status,
                r.text()
            ))
        }
    };
    if r.status < 400 {
        return None;
    }
    let e = &v["result"][0];
    let Some(code) = e["code"].as_u64() else {
        return Some(format!(
            "status {}: no numeric code: {}",
            r.status,
            r.text()
        ));
    };
    let want_code = if r.status == 412 {
        12_505
    } else {
        u64::from(r.status)
    };
    let fine = code == want_code
        && e["message"].as_str().is_some_and(|m| !m.is_empty())
        && e["kb"].as_str() == Some(format!("/api/kb/{code}").as_str())
        && (r.status != 412 || e["fingerprint"].is_string());
    (!fine).then(|| {
        format!(
            "status {}: not the documented error body: {}",
            r.status,
            r.text()
        )
    })
}

/// Keeps the daemon's outgoing probe on loopback: `POST /api/replication/target` dials
/// whatever `target` names, and a mutated name could be anything.
fn loopback_only(bytes: &[u8]) -> bool {
    let Ok(Value::Object(m)) = serde_json::from_slice::<Value>(bytes) else {
        return true;
    };
    match m.get("target") {
        Some(Value::String(t)) => ["127.0.0.1:1", "[::1]:1"].contains(&t.as_str()),
        _ => true,
    }
}

#[test]
fn json_bodies_against_a_real_daemon() {
    let mut run = Run::new("json bodies (daemon)", 4, 300);
    let d = Daemon::start(
        "fuzz-bodies",
        Options::default().set("login_max_failures", 1_000),
    );
    let root = d.root_token();
    let client = d.client();
    let r = client.post_json(
        "/api/users",
        Some(&root),
        &serde_json::json!({"name": "fuzzuser", "password": "password-123", "privilege": "monitor"}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let routes = body_routes(&csr_p256());
    let mut statuses: BTreeMap<u16, u64> = BTreeMap::new();
    let mut sent = 0;
    for case in 0..run.cases {
        let route = &routes[(case % routes.len() as u64) as usize];
        let byte_level = (route.method, route.path) != ("POST", "/api/replication/target");
        let bytes = mutated_body(&mut run.rng, route, byte_level);
        if !loopback_only(&bytes) {
            continue;
        }
        let path = route.path.replace("{name}", "fuzzuser");
        let with_sid = (path == "/api/replication/source" && route.method == "PUT")
            || path == "/api/replication/recycle/restore";
        let path = if with_sid {
            format!(
                "{path}{}",
                run.rng.pick(&[
                    "?sid=2",
                    "?sid=abc",
                    "?sid=0",
                    "",
                    "?sid=99999999999999999999"
                ])
            )
        } else {
            path
        };
        let ctype = *run.rng.pick(&[
            "application/json",
            "text/plain",
            "application/x-www-form-urlencoded",
        ]);
        let mut headers = vec![("Content-Type", ctype)];
        if path == "/api/session" {
            headers.push(("Sec-Fetch-Site", "same-origin"));
        } else if path.starts_with("/api/") && path != "/api/login" {
            headers.push(("AuthToken", root.as_str()));
        }
        sent += 1;
        let started = Instant::now();
        let answer = client.try_request(route.method, &path, &headers, &bytes);
        let problem = match &answer {
            Err(e) => Some(format!(
                "connection failed after {:?} ({e})",
                started.elapsed()
            )),
            Ok(r) => {
                *statuses.entry(r.status).or_default() += 1;
                answer_problem(r)
            }
        };
        if let Some(p) = problem {
            // Keep the whole input for a replay with curl or the harness.
            let saved = scratch_dir("fuzz-case").join(format!("case-{case}.body"));
            let _ = std::fs::write(&saved, &bytes);
            run.fail(
                case,
                format!(
                    "{} {path}: {p}; body ({} bytes) saved in {}: {}",
                    route.method,
                    bytes.len(),
                    saved.display(),
                    show(&bytes)
                ),
            );
        }
        if run.full() {
            break;
        }
    }
    let health = client.get("/api/health", None);
    assert_eq!(health.status, 200, "the daemon stopped serving");
    assert!(!d.log().contains("panicked"), "the daemon logged a panic");
    run.finish(format!("{sent} requests, statuses {statuses:?}"));
}

// =========================================================================================
// (c) CSRs
// =========================================================================================

fn csr_der(pem: &str) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateSigningRequestDer::from_pem_slice(pem.as_bytes())
        .expect("a csr")
        .as_ref()
        .to_vec()
}

fn rcgen_csr(alg: &'static rcgen::SignatureAlgorithm) -> String {
    let key = rcgen::KeyPair::generate_for(alg).expect("key");
    let mut params = rcgen::CertificateParams::new(vec!["n.example".to_string()]).expect("params");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .serialize_request(&key)
        .expect("csr")
        .pem()
        .expect("pem")
}

/// The TLV nodes of a DER blob: (start, header length, content length), depth first.
fn der_nodes(der: &[u8]) -> Vec<(usize, usize, usize)> {
    fn walk(der: &[u8], base: usize, out: &mut Vec<(usize, usize, usize)>, depth: u32) {
        let mut i = 0;
        while i + 2 <= der.len() && depth < 12 {
            let tag = der[i];
            let first = der[i + 1] as usize;
            let (len, hl) = if first < 0x80 {
                (first, 2)
            } else {
                let n = first & 0x7f;
                if n == 0 || n > 3 || i + 2 + n > der.len() {
                    return;
                }
                let len = der[i + 2..i + 2 + n]
                    .iter()
                    .fold(0usize, |a, b| a << 8 | *b as usize);
                (len, 2 + n)
            };
            if i + hl + len > der.len() {
                return;
            }
            out.push((base + i, hl, len));
            if tag & 0x20 != 0 {
                walk(&der[i + hl..i + hl + len], base + i + hl, out, depth + 1);
            }
            i += hl + len;
        }
    }
    let mut out = Vec::new();
    walk(der, 0, &mut out, 0);
    out
}

fn mutate_der(rng: &mut Rng, der: &mut Vec<u8>) {
    let nodes = der_nodes(der);
    if nodes.is_empty() || rng.below(3) == 0 {
        for _ in 0..1 + rng.index(4) {
            mutate_bytes(rng, der);
        }
        return;
    }
    let (start, hl, len) = *rng.pick(&nodes);
    match rng.below(5) {
        // Lengths one off.
        0 => {
            let at = start + hl - 1;
            der[at] = if rng.below(2) == 0 {
                der[at].wrapping_add(1)
            } else {
                der[at].wrapping_sub(1)
            };
        }
        // New content of the same length.
        1 => {
            for b in &mut der[start + hl..start + hl + len] {
                *b = rng.next_u64() as u8;
            }
        }
        // Another tag.
        2 => der[start] = *rng.pick(&[0x02, 0x03, 0x04, 0x05, 0x06, 0x0c, 0x30, 0x31, 0xa0, 0xff]),
        // The node twice, or gone (parents' lengths left as they were).
        3 => {
            let node = der[start..start + hl + len].to_vec();
            der.splice(start..start, node);
        }
        _ => {
            der.drain(start..start + hl + len);
        }
    }
}

fn base64(der: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::new();
    for chunk in der.chunks(3) {
        let v = (chunk[0] as u32) << 16
            | (*chunk.get(1).unwrap_or(&0) as u32) << 8
            | *chunk.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            b64.push(if i <= chunk.len() {
                T[(v >> (18 - 6 * i) & 63) as usize] as char
            } else {
                '='
            });
        }
    }
    b64
}

fn pem_plain(der: &[u8]) -> String {
    let b64 = base64(der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap_or(""))
        .collect();
    format!(
        "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
        lines.join("\n")
    )
}

fn pem_wrap(rng: &mut Rng, der: &[u8]) -> String {
    use std::fmt::Write;
    let b64 = base64(der);
    let label = *rng.pick(&[
        "CERTIFICATE REQUEST",
        "CERTIFICATE REQUEST",
        "NEW CERTIFICATE REQUEST",
        "CERTIFICATE",
        "PRIVATE KEY",
    ]);
    let width = *rng.pick(&[64, 64, 76, 4, 100_000]);
    let eol = *rng.pick(&["\n", "\n", "\r\n", " \n"]);
    let mut out = String::new();
    if rng.below(8) == 0 {
        out.push_str("garbage before\n");
    }
    if rng.below(10) == 0 {
        let _ = write!(out, "-----BEGIN X-----{eol}AAAA{eol}-----END X-----{eol}");
    }
    let _ = write!(out, "-----BEGIN {label}-----{eol}");
    for line in b64.as_bytes().chunks(width) {
        out.push_str(std::str::from_utf8(line).unwrap_or(""));
        out.push_str(eol);
    }
    if rng.below(10) != 0 {
        let _ = write!(out, "-----END {label}-----{eol}");
    }
    let mut bytes = out.into_bytes();
    if rng.below(6) == 0 {
        mutate_bytes(rng, &mut bytes);
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

fn spki_of_csr(der: &[u8]) -> Vec<u8> {
    use x509_parser::prelude::FromDer;
    let (_, csr) =
        x509_parser::certification_request::X509CertificationRequest::from_der(der).expect("csr");
    csr.certification_request_info.subject_pki.raw.to_vec()
}

/// What a certificate signed for an accepted CSR must be.
fn issued_problem(cert_pem: &str, spki: &[u8], ca: &Ca) -> Option<String> {
    let der = crate::harness::pem_certs(cert_pem.as_bytes())
        .into_iter()
        .next()?;
    let (rest, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    if !rest.is_empty() {
        return Some("trailing bytes after the certificate".into());
    }
    if cert.is_ca() || matches!(cert.basic_constraints(), Ok(Some(bc)) if bc.value.ca) {
        return Some("the certificate is a CA".into());
    }
    match cert.extended_key_usage() {
        Ok(Some(e)) => {
            let e = &e.value;
            if !(e.client_auth
                && !e.any
                && !e.server_auth
                && !e.code_signing
                && !e.email_protection
                && !e.time_stamping
                && !e.ocsp_signing
                && e.other.is_empty())
            {
                return Some(format!("extended key usage is not clientAuth only: {e:?}"));
            }
        }
        other => return Some(format!("no extended key usage: {other:?}")),
    }
    if let Ok(Some(ku)) = cert.key_usage() {
        if ku.value.key_cert_sign() || ku.value.crl_sign() {
            return Some("key usage allows signing certificates".into());
        }
    }
    if cert.public_key().raw != spki {
        return Some("the certificate does not carry the CSR's key".into());
    }
    if !matches!(cert.subject_alternative_name(), Ok(None)) {
        return Some("names were copied into the certificate".into());
    }
    let ca_der = ca.cert_der();
    let (_, ca_cert) = x509_parser::parse_x509_certificate(ca_der.as_ref()).ok()?;
    if cert.verify_signature(Some(ca_cert.public_key())).is_err() {
        return Some("the certificate is not signed by the CA".into());
    }
    None
}

#[test]
fn csr_parsing_and_signing_hold_their_promises() {
    let mut run = Run::new("csr", 5, 1_500);
    let now = time::OffsetDateTime::now_utc();
    let ca = Ca::generate("fuzz CA", now).expect("ca");
    let fixtures = [
        include_str!("fixtures/rsa2048.csr").to_string(),
        include_str!("fixtures/rsa2048-pss.csr").to_string(),
        include_str!("fixtures/rsa2048-pss-saltmax.csr").to_string(),
        include_str!("fixtures/rsa3072-pss-sha512-salt0.csr").to_string(),
    ];
    let mut bases: Vec<Vec<u8>> = vec![
        csr_der(&rcgen_csr(&rcgen::PKCS_ECDSA_P256_SHA256)),
        csr_der(&rcgen_csr(&rcgen::PKCS_ECDSA_P384_SHA384)),
        csr_der(&rcgen_csr(&rcgen::PKCS_ED25519)),
    ];
    bases.extend(fixtures.iter().map(|p| csr_der(p)));
    let keys: Vec<Vec<u8>> = bases.iter().map(|d| spki_of_csr(d)).collect();
    // Every unmodified base is accepted (else the property below proves little).
    for (i, b) in bases.iter().enumerate() {
        let pem = pem_plain(b);
        assert!(
            ca::parse_csr(&pem).is_ok(),
            "base csr {i} refused: {:?}",
            ca::parse_csr(&pem)
        );
    }
    let mut tally: BTreeMap<String, u64> = BTreeMap::new();
    for case in 0..run.cases {
        let mut der = run.rng.pick(&bases).clone();
        if run.rng.below(10) != 0 {
            mutate_der(&mut run.rng, &mut der);
        }
        let pem = pem_wrap(&mut run.rng, &der);
        let parsed = match no_panic(|| ca::parse_csr(&pem)) {
            Ok(p) => p,
            Err(p) => {
                run.fail(case, format!("parse_csr panicked ({p}) on {pem:?}"));
                continue;
            }
        };
        *tally
            .entry(match &parsed {
                Ok(_) => "accepted".into(),
                Err(e) => format!("{e:?}")
                    .split([' ', '{', '('])
                    .next()
                    .unwrap_or("")
                    .to_string(),
            })
            .or_default() += 1;
        let Ok(valid) = parsed else { continue };
        if !keys.iter().any(|k| k.as_slice() == valid.spki_der()) {
            run.fail(
                case,
                format!("accepted a csr whose key is not an original one: {pem:?}"),
            );
            continue;
        }
        match no_panic(|| {
            ca.sign_client(
                &valid,
                "fuzz-subject",
                std::time::Duration::from_secs(365 * 86_400),
                now,
            )
        }) {
            Err(p) => run.fail(case, format!("sign_client panicked ({p}) on {pem:?}")),
            Ok(Err(e)) => run.fail(case, format!("accepted csr does not sign: {e} ({pem:?})")),
            Ok(Ok(issued)) => {
                if let Some(p) = issued_problem(&issued.cert_pem, valid.spki_der(), &ca) {
                    run.fail(case, format!("{p}: {pem:?}"));
                }
            }
        }
        if run.full() {
            break;
        }
    }
    assert!(tally.get("accepted").copied().unwrap_or(0) > 0);
    run.finish(format!("outcomes {tally:?}"));
}

// =========================================================================================
// (d) spool paths
// =========================================================================================

fn arbitrary_name(rng: &mut Rng, near: &[&str]) -> String {
    match rng.below(4) {
        0 => {
            let bytes: Vec<u8> = (0..rng.index(40)).map(|_| rng.next_u64() as u8).collect();
            String::from_utf8_lossy(&bytes).into_owned()
        }
        _ => {
            let mut b = rng.pick(near).as_bytes().to_vec();
            for _ in 0..rng.index(3) {
                mutate_bytes(rng, &mut b);
            }
            String::from_utf8_lossy(&b).into_owned()
        }
    }
}

#[test]
fn spool_names_parse_exactly_the_documented_alphabet() {
    let mut run = Run::new("spool names", 6, 20_000);
    let names = [
        "status.json",
        "certificate.pem",
        "ca.pem",
        "ca.key",
        "status.json.tmp",
        "..",
        "",
    ];
    let tokens = [
        "0123456789abcdef0123456789abcdef",
        "ffffffffffffffffffffffffffffffff",
    ];
    let mut accepted = (0, 0);
    for case in 0..run.cases {
        let t = arbitrary_name(&mut run.rng, &tokens);
        let want = t.len() == 32 && t.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f'));
        match no_panic(|| SpoolToken::parse(&t)) {
            Err(p) => run.fail(case, format!("SpoolToken::parse panicked ({p}) on {t:?}")),
            Ok(got) => {
                if got.is_some() != want || got.as_ref().is_some_and(|g| g.as_str() != t) {
                    run.fail(case, format!("SpoolToken::parse({t:?}) = {got:?}"));
                }
                accepted.0 += u64::from(want);
            }
        }
        let f = arbitrary_name(&mut run.rng, &names);
        let want = ["status.json", "certificate.pem", "ca.pem"].contains(&f.as_str());
        match no_panic(|| SpoolFile::parse(&f)) {
            Err(p) => run.fail(case, format!("SpoolFile::parse panicked ({p}) on {f:?}")),
            Ok(got) => {
                if got.is_some() != want || got.is_some_and(|g| g.name() != f) {
                    run.fail(case, format!("SpoolFile::parse({f:?}) = {got:?}"));
                }
                accepted.1 += u64::from(want);
            }
        }
        if run.full() {
            break;
        }
    }
    run.finish(format!(
        "{} tokens and {} names accepted",
        accepted.0, accepted.1
    ));
}

/// Percent-encodes some of `s`'s characters (and always the ones a request target cannot
/// carry raw), the way a client or an attacker might.
fn encode_some(rng: &mut Rng, s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        let must = !(b'!'..=b'~').contains(&b) || b == b'%' || b == b'?' || b == b'#';
        if must || rng.below(12) == 0 {
            let hex = if rng.below(2) == 0 {
                format!("%{b:02x}")
            } else {
                format!("%{b:02X}")
            };
            out.push_str(&hex);
        } else {
            out.push(b as char);
        }
    }
    out
}

#[test]
fn spool_paths_against_a_real_daemon() {
    let mut run = Run::new("spool paths (daemon)", 7, 300);
    let d = Daemon::start("fuzz-spool", Options::default());
    let root = d.root_token();
    let client = d.client();
    // One pending request (status.json only) and one accepted (all three files).
    let file = |uuid: &str| {
        let filed = d.file_request(uuid);
        (filed.id, filed.token())
    };
    let (_, pending) = file("f0220000-0000-4000-8000-00000000000a");
    let (accepted_id, accepted) = file("f0220000-0000-4000-8000-00000000000b");
    let r = client.post_json(
        "/api/replication/source",
        Some(&root),
        &serde_json::json!({"request_id": accepted_id, "accept": true}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    // Decoys that must never be served: a temporary file and a secret beside the served ones.
    let spool = d.data_dir.join("spool");
    std::fs::write(spool.join(&pending).join("status.json.tmp"), "DECOY-TMP").expect("decoy");
    std::fs::write(spool.join(&pending).join("secret"), "DECOY-SECRET").expect("decoy");
    std::fs::write(spool.join("notatoken"), "DECOY-ROOT").expect("decoy");

    let served = ["status.json", "certificate.pem", "ca.pem"];
    let tokens = [pending.as_str(), accepted.as_str()];
    let mut tally: BTreeMap<u16, u64> = BTreeMap::new();
    for case in 0..run.cases {
        let rng = &mut run.rng;
        let a = match rng.below(6) {
            0..=2 => rng.pick(&tokens).to_string(),
            3 => arbitrary_name(rng, &tokens),
            4 => rng
                .pick(&["..", ".", "%2e%2e", "..%2f..", "notatoken", "%00", "a/b"])
                .to_string(),
            _ => rng.pick(&tokens).to_uppercase(),
        };
        let b = match rng.below(5) {
            0..=2 => rng.pick(&served).to_string(),
            3 => arbitrary_name(
                rng,
                &[
                    "status.json",
                    "ca.pem",
                    "secret",
                    "status.json.tmp",
                    "../../ca.key",
                ],
            ),
            _ => rng
                .pick(&[
                    "",
                    "secret",
                    "status.json.tmp",
                    "..",
                    "%2e%2e%2fca.key",
                    "status.json/",
                    "status.json?x=1",
                    "status.json#f",
                ])
                .to_string(),
        };
        let mut path = format!(
            "/replication/v1/spool/{}/{}",
            encode_some(rng, &a),
            encode_some(rng, &b)
        );
        if rng.below(8) == 0 {
            let suffix = *rng.pick(&["?x=1", "/", "/extra", "?", "#frag"]);
            path.push_str(suffix);
        }
        // What the router sees: the path before `?`, split on `/`, each segment decoded.
        let route_path = path.split('?').next().unwrap_or("");
        let segs: Vec<&str> = route_path.split('/').collect();
        let expected: Option<Vec<u8>> =
            (segs.len() == 6 && !segs[4].is_empty() && !segs[5].is_empty())
                .then(|| (percent_decode(segs[4]), percent_decode(segs[5])))
                .filter(|(t, f)| tokens.contains(&t.as_str()) && served.contains(&f.as_str()))
                .and_then(|(t, f)| std::fs::read(spool.join(t).join(f)).ok());
        let method = if rng.below(5) == 0 { "HEAD" } else { "GET" };
        match client.try_request(method, &path, &[], b"") {
            Err(e) => run.fail(case, format!("{method} {path}: connection failed: {e}")),
            Ok(r) => {
                *tally.entry(r.status).or_default() += 1;
                let text = r.text();
                if text.contains("DECOY") || text.contains("PRIVATE KEY") {
                    run.fail(case, format!("{method} {path} leaked: {text}"));
                }
                match &expected {
                    Some(bytes) => {
                        let body_ok = method == "HEAD" && r.body.is_empty() || r.body == *bytes;
                        if r.status != 200 || !body_ok {
                            run.fail(
                                case,
                                format!(
                                    "{method} {path}: {} {text:?}, expected the file",
                                    r.status
                                ),
                            );
                        }
                    }
                    None => {
                        if r.status != 404 {
                            run.fail(
                                case,
                                format!("{method} {path}: {} {text:?}, expected 404", r.status),
                            );
                        } else if method == "GET" {
                            if let Some(p) = answer_problem(&r) {
                                run.fail(case, format!("{method} {path}: {p}"));
                            }
                        }
                    }
                }
            }
        }
        if run.full() {
            break;
        }
    }
    assert!(tally.get(&200).copied().unwrap_or(0) > 0 && tally.get(&404).copied().unwrap_or(0) > 0);
    run.finish(format!("statuses {tally:?}"));
}

// =========================================================================================
// Regressions found by the properties above
// =========================================================================================

/// Found by `json_bodies_against_a_real_daemon` (case 158 of the default seed): a body
/// larger than the front's 16 KiB relay buffer left its last bytes inside rustls, and the
/// relay slept until the idle timeout (60 s) instead of forwarding them.
#[test]
fn request_bodies_larger_than_the_relay_buffer_are_relayed_at_once() {
    let d = Daemon::start(
        "fuzz-big-body",
        Options::default().set("login_max_failures", 1_000),
    );
    let client = d.client();
    for size in [16_000, 16_384, 16_385, 17_473, 33_000, 65_536] {
        let skeleton = r#"{"username":"nobody","password":"wrong","pad":""}"#;
        let pad = "a".repeat(size - skeleton.len());
        let body = format!(r#"{{"username":"nobody","password":"wrong","pad":"{pad}"}}"#);
        assert_eq!(body.len(), size);
        let started = Instant::now();
        let r = client.request("POST", "/api/login", &[], body.as_bytes());
        assert_eq!(r.status, 401, "{size} bytes: {}", r.text());
        assert!(
            started.elapsed().as_secs() < 5,
            "{size} bytes took {:?}",
            started.elapsed()
        );
    }
}
