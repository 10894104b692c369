//! Replication (SPEC 11) through real daemons: the queue, config and throttle endpoints
//! in the appliance's shapes, and (with two daemons) backups that move.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness::{eventually, pair, start_pair, Daemon, Options, Paired};

fn put(d: &Daemon, path: &str, token: &str, body: &Value) -> crate::harness::Response {
    d.client().send_json("PUT", path, Some(token), body)
}

fn monitor_token(d: &Daemon, root: &str) -> String {
    let r = d.client().post_json(
        "/api/users",
        Some(root),
        &json!({"name": "watcher", "password": "password-123", "privilege": "monitor"}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    d.login("watcher", "password-123")
}

#[test]
fn config_has_the_appliance_shape_and_queue_scheme_numbers() {
    let d = Daemon::start("repl-config", Options::default());
    let t = d.root_token();
    let c = d.client();
    let r = c.get("/api/replication/config", Some(&t));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json(),
        json!({"config": {"max_concurrent": 2, "strategy": "retention", "queue_scheme": 1, "retries": 3}})
    );
    // A number picks the strategy as the appliance numbers them; fields not given stay.
    let r = put(
        &d,
        "/api/replication/config",
        &t,
        &json!({"queue_scheme": 2}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["config"]["strategy"], "recency");
    assert_eq!(r.json()["config"]["max_concurrent"], 2);
    // The GET shape is accepted back, wrapped in `config`.
    let r = put(
        &d,
        "/api/replication/config",
        &t,
        &json!({"config": {"strategy": "manual", "max_concurrent": "4", "retries": 0}}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json(),
        json!({"config": {"max_concurrent": 4, "strategy": "manual", "queue_scheme": 0, "retries": 0}})
    );
    for (body, field) in [
        (
            json!({"strategy": "manual", "queue_scheme": 1}),
            "queue_scheme",
        ),
        (json!({"max_concurrent": 0}), "max_concurrent"),
        (json!({"strategy": "fastest"}), "strategy"),
        (json!({"queue_scheme": 7}), "queue_scheme"),
        (json!({"retries": -1}), "retries"),
    ] {
        let r = put(&d, "/api/replication/config", &t, &body);
        assert_eq!(r.status, 400, "{body}: {}", r.text());
        assert!(r.text().contains(field), "{body}: {}", r.text());
    }
    // It survives a restart, and a monitor may read but not change it.
    let mut d = d;
    d.restart();
    let t = d.root_token();
    assert_eq!(
        d.client().get("/api/replication/config", Some(&t)).json()["config"]["strategy"],
        "manual"
    );
    let m = monitor_token(&d, &t);
    assert_eq!(
        d.client().get("/api/replication/config", Some(&m)).status,
        200
    );
    assert_eq!(
        put(&d, "/api/replication/config", &m, &json!({"retries": 1})).status,
        403
    );
}

#[test]
fn throttle_windows_round_trip_and_bad_windows_name_the_field() {
    let d = Daemon::start("repl-throttle", Options::default());
    let t = d.root_token();
    let r = d.client().get("/api/replication/throttle", Some(&t));
    assert_eq!(r.json(), json!({"throttle": [], "link_mbps": 1000}));
    let windows = json!({"throttle": [
        {"percentage": 10, "days": [1, 2, 3, 4, 5], "start": 8, "end": 18},
        {"percentage": "50", "days": [0, 6], "start": 22, "end": 6}
    ], "link_mbps": 100});
    let r = put(&d, "/api/replication/throttle", &t, &windows);
    assert_eq!(r.status, 200, "{}", r.text());
    let got = d.client().get("/api/replication/throttle", Some(&t)).json();
    assert_eq!(got["link_mbps"], 100);
    assert_eq!(
        got["throttle"][1],
        json!({"percentage": 50, "days": [0, 6], "start": 22, "end": 6})
    );
    for (body, field) in [
        (
            json!({"throttle": [{"percentage": 0, "days": [1], "start": 1, "end": 2}]}),
            "throttle[0].percentage",
        ),
        (
            json!({"throttle": [{"percentage": 5, "days": [7], "start": 1, "end": 2}]}),
            "throttle[0].days",
        ),
        (
            json!({"throttle": [{"percentage": 5, "days": [1], "start": 24, "end": 2}]}),
            "throttle[0].start",
        ),
        (
            json!({"throttle": [{"percentage": 5, "days": [1], "start": 1}]}),
            "throttle[0].end",
        ),
        (json!({"throttle": {"percentage": 5}}), "throttle"),
        (json!({"link_mbps": 0}), "link_mbps"),
    ] {
        let r = put(&d, "/api/replication/throttle", &t, &body);
        assert_eq!(r.status, 400, "{body}: {}", r.text());
        assert!(r.text().contains(field), "{body}: {}", r.text());
    }
    // Nothing of a refused change was kept.
    assert_eq!(
        d.client().get("/api/replication/throttle", Some(&t)).json(),
        got
    );
}

#[test]
fn queue_lists_have_the_appliance_shape_and_refuse_bad_input() {
    let d = Daemon::start("repl-queue", Options::default());
    let t = d.root_token();
    let c = d.client();
    let r = c.get("/api/replication/queue", Some(&t));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json(),
        json!({"active": [], "inactive": [], "total_inactive": 0, "start_position": 0})
    );
    assert_eq!(
        c.get("/api/replication/queue/active", Some(&t)).json(),
        json!({"active": []})
    );
    let r = c.get(
        "/api/replication/queue/inactive?start=5&count=10&include_done=1",
        Some(&t),
    );
    assert_eq!(
        r.json(),
        json!({"inactive": [], "total_inactive": 0, "start_position": 5, "done": [], "total_done": 0})
    );
    assert_eq!(
        c.get("/api/replication/queue?target_id=9", Some(&t)).status,
        404
    );
    assert_eq!(
        c.get("/api/replication/queue?count=0", Some(&t)).status,
        400
    );
    assert_eq!(
        c.get("/api/replication/queue?count=5000", Some(&t)).status,
        400
    );
    // Adding needs a paired target and a valid name; the name is checked first.
    let add = |body: Value| c.post_json("/api/replication/queue", Some(&t), &body);
    let r = add(json!({"target_id": 1, "backup": "../etc/passwd"}));
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("field `backup`"), "{}", r.text());
    for bad in ["/abs/x", "c/a\u{0}b", "c", "c/.partial"] {
        assert_eq!(
            add(json!({"target_id": 1, "backup": bad})).status,
            400,
            "{bad:?}"
        );
    }
    assert_eq!(add(json!({"target_id": 9, "backup": "c/x"})).status, 404);
    assert_eq!(add(json!({"backup": "c/x"})).status, 400);
    // Changes name items that exist, with an action the appliance knows.
    let change = |body: Value| put(&d, "/api/replication/queue", &t, &body);
    assert_eq!(change(json!({"backups": [{"id": 77}]})).status, 404);
    assert_eq!(change(json!({})).status, 400);
    assert_eq!(
        change(json!({"backups": [{"id": 1}], "action": "delete"})).status,
        400
    );
    assert_eq!(change(json!({"clients": ["../x"]})).status, 400);
    let r = change(json!({"clients": ["web"], "action": "reset"}));
    assert_eq!((r.status, r.json()), (200, json!({"items": []})));
}

#[test]
fn received_and_verify_need_a_paired_source_and_quota_needs_a_source() {
    let d = Daemon::start("repl-received", Options::default());
    let t = d.root_token();
    let c = d.client();
    assert_eq!(c.get("/api/replication/received", Some(&t)).status, 400);
    assert_eq!(
        c.get("/api/replication/received?sid=5", Some(&t)).status,
        404
    );
    assert_eq!(
        c.post_json("/api/replication/verify?sid=5", Some(&t), &json!({}))
            .status,
        404
    );
    let r = put(
        &d,
        "/api/replication/source?sid=5",
        &t,
        &json!({"quota_mb": 10}),
    );
    assert_eq!(r.status, 404, "{}", r.text());
    let r = put(&d, "/api/replication/source?sid=5", &t, &json!({}));
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("quota_mb"));
    let r = put(
        &d,
        "/api/replication/source?sid=5",
        &t,
        &json!({"quota_mb": "lots"}),
    );
    assert_eq!(r.status, 400, "{}", r.text());
}

// ---- two daemons: backups that move ----

/// Writes a backup the way a backup engine does: under a dot name, then renamed.
fn write_backup(src: &Daemon, name: &str, bytes: &[u8]) {
    let path = src.data_dir.join("storage").join(name);
    let dir = path.parent().expect("client dir");
    std::fs::create_dir_all(dir).expect("client dir");
    let tmp = dir.join(format!(
        ".{}.partial",
        path.file_name().unwrap().to_string_lossy()
    ));
    std::fs::write(&tmp, bytes).expect("write backup");
    std::fs::rename(&tmp, &path).expect("rename backup");
}

fn received_path(tgt: &Daemon, p: &Paired, name: &str) -> PathBuf {
    tgt.data_dir.join("storage").join(&p.source_uuid).join(name)
}

fn content(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 13) as u8)
        .collect()
}

/// Every item of the source's queue (open and finished), by backup name.
fn items(src: &Daemon, token: &str) -> Vec<Value> {
    let r = src.client().get(
        "/api/replication/queue?include_done=1&count=1000",
        Some(token),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    let mut out = Vec::new();
    for list in ["active", "inactive", "done"] {
        out.extend(v[list].as_array().cloned().unwrap_or_default());
    }
    out
}

fn item_of(src: &Daemon, token: &str, backup: &str) -> Option<Value> {
    items(src, token)
        .into_iter()
        .find(|i| i["backup"] == backup)
}

fn wait_item(src: &Daemon, token: &str, backup: &str, status: &str, within: Duration) -> Value {
    eventually(within, &format!("{backup} {status}"), || {
        item_of(src, token, backup).filter(|i| i["status"] == status)
    })
}

fn sha256_hex(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn backups_written_with_the_rename_rule_arrive_byte_identical_and_dot_files_stay() {
    let (src, tgt) = start_pair("repl-arrive");
    // One backup before the pairing exists, more after it completed.
    let early = content(1, 300_000);
    write_backup(&src, "web01/monday.vbk", &early);
    let p = pair(&src, &tgt, json!({}));
    let st = src.root_token();
    let late: Vec<(String, Vec<u8>)> = (0..20)
        .map(|i| {
            (
                format!("db{}/backup-{i:02}", i % 3),
                content(i as u8, 10_000 + i * 999),
            )
        })
        .collect();
    let written = Instant::now();
    for (n, b) in &late {
        write_backup(&src, n, b);
    }
    // Still being written: under a dot name, never sent.
    let in_progress = src.data_dir.join("storage/web01/.tuesday.vbk.partial");
    std::fs::write(&in_progress, b"half a backup").unwrap();
    let item = wait_item(
        &src,
        &st,
        "web01/monday.vbk",
        "done",
        Duration::from_secs(30),
    );
    assert_eq!(item["sha256"], sha256_hex(&early));
    assert_eq!(item["bytes_sent"], early.len());
    assert_eq!(
        std::fs::read(received_path(&tgt, &p, "web01/monday.vbk")).unwrap(),
        early
    );
    for (n, b) in &late {
        wait_item(&src, &st, n, "done", Duration::from_secs(30));
        assert_eq!(
            std::fs::read(received_path(&tgt, &p, n)).unwrap(),
            *b,
            "{n}"
        );
    }
    eprintln!(
        "20 new backups replicated {:?} after their rename",
        written.elapsed()
    );
    assert!(item_of(&src, &st, "web01/.tuesday.vbk.partial").is_none());
    let client_dir = received_path(&tgt, &p, "web01");
    let names: Vec<String> = std::fs::read_dir(&client_dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        vec!["monday.vbk".to_string()],
        "nothing else arrived"
    );
    // The target lists what it received, with the digest it verified.
    let tt = tgt.root_token();
    let r = tgt.client().get(
        &format!("/api/replication/received?sid={}", p.sid),
        Some(&tt),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let received = r.json()["received"].as_array().cloned().unwrap();
    assert_eq!(received.len(), 21);
    let monday = received
        .iter()
        .find(|r| r["backup"] == "web01/monday.vbk")
        .unwrap();
    assert_eq!(monday["sha256"], sha256_hex(&early));
    assert_eq!(
        (monday["client"].clone(), monday["size"].clone()),
        (json!("web01"), json!(early.len()))
    );
    // Both sides logged the transfer.
    assert!(
        src.log().contains("web01/monday.vbk finished"),
        "{}",
        src.log()
    );
    assert!(tgt.log().contains("web01/monday.vbk received and verified"));
}
