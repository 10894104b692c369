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

/// Holds replication at `bps` bytes per second all week (a whole-day window on every day).
fn throttle_to(src: &Daemon, token: &str, bps: u64) {
    // bytes/s = link_mbps * 125_000 * percentage / 100; 10 % of a link of bps/12_500 Mbit/s.
    let link = bps / 12_500;
    assert_eq!(
        link * 12_500,
        bps,
        "pick a rate the window can express exactly"
    );
    let r = put(
        src,
        "/api/replication/throttle",
        token,
        &json!({"throttle": [{"percentage": 10, "days": [0, 1, 2, 3, 4, 5, 6], "start": 0, "end": 0}],
                "link_mbps": link}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
}

fn unthrottle(src: &Daemon, token: &str) {
    let r = put(
        src,
        "/api/replication/throttle",
        token,
        &json!({"throttle": []}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
}

fn configure(src: &Daemon, token: &str, config: Value) {
    let r = put(src, "/api/replication/config", token, &config);
    assert_eq!(r.status, 200, "{}", r.text());
}

/// A backup whose modification time is `age` seconds in the past.
fn write_old_backup(src: &Daemon, name: &str, bytes: &[u8], age: u64) {
    let path = src.data_dir.join("storage").join(name);
    let dir = path.parent().unwrap();
    std::fs::create_dir_all(dir).unwrap();
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().unwrap().to_string_lossy()
    ));
    std::fs::write(&tmp, bytes).unwrap();
    let when = std::time::SystemTime::now() - Duration::from_secs(age);
    std::fs::File::options()
        .write(true)
        .open(&tmp)
        .unwrap()
        .set_modified(when)
        .unwrap();
    std::fs::rename(&tmp, &path).unwrap();
}

/// The backups the source's log says started, in order.
fn started_in_order(src: &Daemon) -> Vec<String> {
    src.log()
        .lines()
        .filter_map(|l| {
            let (_, rest) = l.split_once("): ")?;
            let (name, tail) = rest.split_once(' ')?;
            tail.starts_with("started (item").then(|| name.to_string())
        })
        .collect()
}

#[test]
fn the_three_strategies_order_and_drop_as_the_appliance_does() {
    let (src, tgt) = start_pair("repl-strategies");
    let st = src.root_token();
    configure(
        &src,
        &st,
        json!({"strategy": "retention", "max_concurrent": 1}),
    );
    throttle_to(&src, &st, 1_000_000);
    let mb = 400_000;
    write_old_backup(&src, "r/middle", &content(1, mb), 200);
    write_old_backup(&src, "r/newest", &content(2, mb), 100);
    write_old_backup(&src, "r/oldest", &content(3, mb), 300);
    let p = pair(&src, &tgt, json!({}));
    wait_item(&src, &st, "r/newest", "done", Duration::from_secs(30));
    assert_eq!(
        started_in_order(&src),
        vec!["r/oldest", "r/middle", "r/newest"],
        "retention: every backup, oldest first"
    );

    // Recency: newest first; once it replicated, the client's older waiting ones go.
    configure(&src, &st, json!({"queue_scheme": 2}));
    write_old_backup(&src, "n/old", &content(4, mb), 300);
    write_old_backup(&src, "n/older", &content(5, mb), 400);
    write_old_backup(&src, "n/new", &content(6, mb), 100);
    wait_item(&src, &st, "n/new", "done", Duration::from_secs(30));
    for old in ["n/old", "n/older"] {
        let i = wait_item(&src, &st, old, "removed", Duration::from_secs(10));
        assert!(
            i["message"]
                .as_str()
                .unwrap()
                .contains("superseded by n/new"),
            "{i}"
        );
        assert!(
            !received_path(&tgt, &p, old).exists(),
            "{old} must not arrive"
        );
    }
    let order = started_in_order(&src);
    assert_eq!(order[3], "n/new", "{order:?}");
    assert!(!order.contains(&"n/older".to_string()), "{order:?}");

    // Manual: nothing is queued by itself; an admin's add is sent.
    configure(&src, &st, json!({"strategy": "manual"}));
    unthrottle(&src, &st);
    write_backup(&src, "m/by-hand", &content(7, 1000));
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        item_of(&src, &st, "m/by-hand").is_none(),
        "manual queues nothing itself"
    );
    let r = src.client().post_json(
        "/api/replication/queue",
        Some(&st),
        &json!({"target_id": p.target_id, "backup": "m/by-hand"}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["status"], "waiting");
    wait_item(&src, &st, "m/by-hand", "done", Duration::from_secs(20));
    assert_eq!(
        std::fs::read(received_path(&tgt, &p, "m/by-hand")).unwrap(),
        content(7, 1000)
    );
}

#[test]
fn remove_stops_an_item_and_reset_queues_it_again_at_the_end() {
    let (src, tgt) = start_pair("repl-remove");
    let st = src.root_token();
    configure(&src, &st, json!({"max_concurrent": 1}));
    throttle_to(&src, &st, 500_000);
    for i in 1..=4u8 {
        write_old_backup(
            &src,
            &format!("f/{i}"),
            &content(i, 1_000_000),
            100 - u64::from(i),
        );
    }
    let p = pair(&src, &tgt, json!({}));
    let active = wait_item(&src, &st, "f/1", "active", Duration::from_secs(20));
    // While f/1 streams, remove it and the waiting f/4.
    let ids = json!([{"id": active["id"]}, {"id": item_of(&src, &st, "f/4").unwrap()["id"]}]);
    let r = put(
        &src,
        "/api/replication/queue",
        &st,
        &json!({"backups": ids, "action": "none"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let changed = r.json()["items"].as_array().cloned().unwrap();
    assert!(
        changed.iter().all(|i| i["status"] == "removed"),
        "{changed:?}"
    );
    wait_item(&src, &st, "f/3", "done", Duration::from_secs(30));
    assert_eq!(item_of(&src, &st, "f/1").unwrap()["status"], "removed");
    assert_eq!(item_of(&src, &st, "f/4").unwrap()["status"], "removed");
    for gone in ["f/1", "f/4"] {
        assert!(!received_path(&tgt, &p, gone).exists(), "{gone}");
    }
    // No half-written copy is left either.
    let leftovers: Vec<String> = std::fs::read_dir(received_path(&tgt, &p, "f"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(leftovers.len(), 2, "{leftovers:?}");
    // Reset brings the removed one back at the end of the queue: it is sent.
    unthrottle(&src, &st);
    let r = put(
        &src,
        "/api/replication/queue",
        &st,
        &json!({"clients": ["f"], "action": "reset"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let r = put(
        &src,
        "/api/replication/queue",
        &st,
        &json!({"backups": [{"id": active["id"]}], "action": "reset"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let again = &r.json()["items"][0];
    assert_eq!(again["status"], "waiting");
    wait_item(&src, &st, "f/1", "done", Duration::from_secs(20));
    assert_eq!(
        std::fs::read(received_path(&tgt, &p, "f/1")).unwrap(),
        content(1, 1_000_000)
    );
    // A reset of something the target already holds is not sent again.
    let done3 = item_of(&src, &st, "f/3").unwrap();
    let r = put(
        &src,
        "/api/replication/queue",
        &st,
        &json!({"backups": [{"id": done3["id"]}], "action": "reset"}),
    );
    let new_id = r.json()["items"][0]["id"].clone();
    let again = eventually(Duration::from_secs(20), "f/3 again", || {
        items(&src, &st)
            .into_iter()
            .find(|i| i["id"] == new_id && i["status"] == "done")
    });
    assert_eq!(again["bytes_sent"], 0, "{again}");
    assert!(again["message"].as_str().unwrap().contains("already holds"));
}
