//! `GET /api/metrics` as Prometheus scrapes it: a monitor token (as `Authorization: Bearer`,
//! a scraper token made for that), and an exposition that the Prometheus client library's
//! own text parser reads, with the numbers that the daemon's state says; and every metric
//! docs/operations.md documents is exported.

use std::io::Write;
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::{Daemon, Options};

/// Debian's Python, where `python3-prometheus-client` installs (a `python3` earlier on
/// PATH, such as pyenv's, would not see it).
const PYTHON: &str = "/usr/bin/python3";

/// Parses `text` with `prometheus_client.parser` and returns every sample as
/// `{"family", "type", "name", "labels", "value"}`.
fn parse_with_prometheus(text: &str) -> Vec<Value> {
    let script = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = []
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        out.append({"family": family.name, "type": family.type, "name": s.name,
                    "labels": s.labels, "value": s.value})
print(json.dumps(out))
"#;
    let probe = Command::new(PYTHON)
        .args(["-c", "import prometheus_client.parser"])
        .output();
    assert!(
        probe.as_ref().is_ok_and(|o| o.status.success()),
        "this test parses with the Prometheus client library: install the Debian packages \
         `python3` and `python3-prometheus-client` (.ci/run does): {probe:?}"
    );
    let out =
        crate::harness::run_with_input(Command::new(PYTHON).args(["-c", script]), text.as_bytes());
    assert!(
        out.status.success(),
        "the Prometheus parser refused the exposition: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<Vec<Value>>(&out.stdout).unwrap()
}

/// The value of the sample `name` whose labels include `labels`.
#[track_caller]
fn sample(samples: &[Value], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .find(|s| s["name"] == name && labels.iter().all(|(k, v)| s["labels"][*k] == *v))
        .and_then(|s| s["value"].as_f64())
        .unwrap_or_else(|| panic!("no sample {name} {labels:?} in {samples:?}"))
}

#[test]
fn prometheus_scrapes_the_state_with_a_scraper_token() {
    let d = Daemon::start("metrics", Options::default());
    let root = d.root_token();
    let c = d.client();
    // State to see: one pending request, one accepted (a stored source), a failed login,
    // a failed TLS handshake.
    d.file_request("3e3e3e3e-0000-4333-8444-555555555555");
    let accepted = d.file_request("3e3e3e3e-0001-4333-8444-555555555555");
    let r = c.post_json(
        "/api/replication/source",
        Some(&root),
        &json!({"request_id": accepted.id, "accept": true}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let r = c.post_json(
        "/api/login",
        None,
        &json!({"username": "root", "password": "wrong"}),
    );
    assert_eq!(r.status, 401);
    let mut raw = TcpStream::connect(d.api).unwrap();
    raw.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    drop(raw);

    // No token, no metrics; a scraper token is made once and is capped to monitor.
    assert_eq!(c.get("/api/metrics", None).status, 401);
    let r = c.post_json("/api/metrics/token", Some(&root), &json!({"name": "prom"}));
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["privilege"], "monitor");
    let scraper = r.json()["token"].as_str().unwrap().to_string();
    assert_eq!(c.get("/api/users", Some(&scraper)).status, 403);
    let bearer = format!("Bearer {scraper}");
    let r = c.request("GET", "/api/metrics", &[("Authorization", &bearer)], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("Content-Type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );

    let samples = parse_with_prometheus(&r.text());
    let typed = |family: &str| {
        samples
            .iter()
            .find(|s| s["family"] == family)
            .map(|s| s["type"].as_str().unwrap_or("").to_string())
    };
    assert_eq!(typed("replgate_pairing_requests").as_deref(), Some("gauge"));
    assert_eq!(typed("replgate_login_failures").as_deref(), Some("counter"));
    let pending = |status| sample(&samples, "replgate_pairing_requests", &[("status", status)]);
    assert_eq!(pending("pending"), 1.0);
    assert_eq!(pending("accepted"), 1.0);
    assert_eq!(pending("rejected"), 0.0);
    let role = [("role", "Non-Managed Replication Source")];
    assert_eq!(sample(&samples, "replgate_systems", &role), 1.0);
    assert_eq!(sample(&samples, "replgate_login_failures_total", &[]), 1.0);
    let api = [("listener", "api")];
    let failures = crate::harness::eventually(
        std::time::Duration::from_secs(5),
        "the failed handshake to be counted",
        || {
            let r = c.request("GET", "/api/metrics", &[("Authorization", &bearer)], b"");
            let s = parse_with_prometheus(&r.text());
            let n = sample(&s, "replgate_tls_handshake_failures_total", &api);
            (n >= 1.0).then_some(n)
        },
    );
    assert!(failures >= 1.0);
    assert!(sample(&samples, "replgate_connections_open", &api) >= 1.0);
    let now = replgate::model::now() as f64;
    assert!(sample(&samples, "replgate_ca_expiry_seconds", &[]) > now);
    let version = [("version", env!("CARGO_PKG_VERSION"))];
    assert_eq!(sample(&samples, "replgate_build_info", &version), 1.0);
    // The tunnel's congestion control, whichever the kernel gave (`tunnel_congestion`).
    assert_eq!(sample(&samples, "replgate_tunnel_congestion", &[]), 1.0);

    // The AuthToken header works too, and a logout with the scraper token ends it.
    assert_eq!(c.get("/api/metrics", Some(&scraper)).status, 200);
    let r = c.request("POST", "/api/logout", &[("AuthToken", &scraper)], b"");
    assert_eq!(r.status, 200);
    assert_eq!(c.get("/api/metrics", Some(&scraper)).status, 401);
}

/// The metric names docs/operations.md's table documents.
fn documented_metrics() -> Vec<String> {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/operations.md"))
        .expect("read docs/operations.md");
    let names: Vec<String> = doc
        .lines()
        .filter_map(|l| l.strip_prefix("| `replgate_"))
        .filter_map(|l| l.split('`').next())
        .map(|rest| format!("replgate_{rest}"))
        .collect();
    assert!(
        names.len() >= 25,
        "the metrics table was not found: {names:?}"
    );
    names
}

/// The exposition of `d`, parsed, scraped with `token`.
fn scrape(d: &Daemon, token: &str) -> Vec<Value> {
    let r = d.client().get("/api/metrics", Some(token));
    assert_eq!(r.status, 200, "{}", r.text());
    parse_with_prometheus(&r.text())
}

/// Every metric docs/operations.md documents is exported (by a source or a target) and
/// nothing else is, and the replication metrics of SPEC 15 say what happened, per peer: a
/// source sends one backup to its target and has a second refused for the quota.
#[test]
fn every_documented_metric_is_exported_and_replication_is_counted_per_peer() {
    let (src, tgt) = crate::harness::start_pair("metrics-pair");
    let p = crate::harness::pair(&src, &tgt, json!({"quota_mb": 1}));
    let st = src.root_token();
    let small = crate::replication::content(1, 300_000);
    crate::replication::write_backup(&src, "c/small", &small);
    crate::replication::wait_item(&src, &st, "c/small", "done", Duration::from_secs(30));
    crate::replication::write_backup(&src, "c/big", &crate::replication::content(2, 3_000_000));
    crate::replication::wait_item(&src, &st, "c/big", "failed", Duration::from_secs(30));
    let tt = tgt.root_token();
    let (from_src, from_tgt) = (scrape(&src, &st), scrape(&tgt, &tt));
    let exported = |name: &str| from_src.iter().chain(&from_tgt).any(|s| s["name"] == name);
    let documented = documented_metrics();
    // Series that exist only in a state this test does not make (each has its own test):
    // during a CA rollover (tests/it/rollover.rs), after a source's first complete verify
    // (tests/it/recovery.rs).
    const ONLY_IN_A_STATE: [&str; 3] = [
        "replgate_ca_rollover_started_seconds",
        "replgate_ca_rollover_window_end_seconds",
        "replgate_last_verify_timestamp_seconds",
    ];
    let missing: Vec<&String> = documented
        .iter()
        .filter(|n| !exported(n) && !ONLY_IN_A_STATE.contains(&n.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "documented in docs/operations.md but not exported: {missing:?}"
    );
    // And the other way: nothing is exported that the table does not explain.
    let mut undocumented: Vec<&str> = from_src
        .iter()
        .chain(&from_tgt)
        .filter_map(|s| s["name"].as_str())
        .filter(|n| !documented.iter().any(|d| d == n))
        .collect();
    undocumented.dedup();
    assert!(
        undocumented.is_empty(),
        "exported but not in docs/operations.md's table: {undocumented:?}"
    );
    // The source, per target.
    let host = tgt.api.to_string();
    let target = [("target", host.as_str())];
    let of = |name, labels: &[(&str, &str)]| sample(&from_src, name, labels);
    assert_eq!(of("replgate_replication_sent_files_total", &target), 1.0);
    assert!(of("replgate_replication_sent_bytes_total", &target) >= 300_000.0);
    let refused = [("target", host.as_str()), ("reason", "refused")];
    assert_eq!(
        of("replgate_replication_send_failures_total", &refused),
        1.0
    );
    let failed = [("target", host.as_str()), ("status", "failed")];
    assert_eq!(of("replgate_replication_queue_items", &failed), 1.0);
    assert_eq!(of("replgate_replication_queue_bytes", &failed), 3_000_000.0);
    let waiting = [("target", host.as_str()), ("status", "waiting")];
    assert_eq!(of("replgate_replication_queue_items", &waiting), 0.0);
    assert_eq!(of("replgate_replication_skipped_files_total", &target), 0.0);
    // The target, per source.
    let sid = p.sid.to_string();
    let system = [("system", sid.as_str())];
    let of = |name, labels: &[(&str, &str)]| sample(&from_tgt, name, labels);
    assert_eq!(
        of("replgate_replication_received_files_total", &system),
        1.0
    );
    assert_eq!(
        of("replgate_replication_received_bytes_total", &system),
        300_000.0
    );
    let quota = [("system", sid.as_str()), ("reason", "quota")];
    assert_eq!(
        of("replgate_replication_receive_failures_total", &quota),
        1.0
    );
    let typed = from_tgt
        .iter()
        .find(|s| s["name"] == "replgate_replication_received_bytes_total")
        .map(|s| s["type"].clone());
    assert_eq!(typed, Some(json!("counter")));
}
