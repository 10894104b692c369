//! Replication (SPEC 11) through real daemons: the queue, config and throttle endpoints
//! in the appliance's shapes, and (with two daemons) backups that move.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use replgate::replication::stream::FrameReader;
use replgate::wire::transfer::{self, Frame};
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
pub(crate) fn write_backup(src: &Daemon, name: &str, bytes: &[u8]) {
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

pub(crate) fn received_path(tgt: &Daemon, p: &Paired, name: &str) -> PathBuf {
    tgt.data_dir.join("storage").join(&p.source_uuid).join(name)
}

/// Test bytes that do not compress (a xorshift stream from `seed`): throttled tests need
/// bytes that cross at the throttle's rate, and the throttle counts wire bytes.
pub(crate) fn content(seed: u8, len: usize) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ u64::from(seed).wrapping_mul(0xa24b_aed4_963e_e407);
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Text-like test bytes that zstd's fastest level shrinks several times.
fn compressible(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 64);
    let mut i = 0u64;
    while out.len() < len {
        out.extend_from_slice(
            format!("block {i} of client web01, extent {}\n", i % 977).as_bytes(),
        );
        i += 1;
    }
    out.truncate(len);
    out
}

/// Every item of the source's queue (open and finished), by backup name.
pub(crate) fn items(src: &Daemon, token: &str) -> Vec<Value> {
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

pub(crate) fn item_of(src: &Daemon, token: &str, backup: &str) -> Option<Value> {
    items(src, token)
        .into_iter()
        .find(|i| i["backup"] == backup)
}

pub(crate) fn wait_item(
    src: &Daemon,
    token: &str,
    backup: &str,
    status: &str,
    within: Duration,
) -> Value {
    eventually(within, &format!("{backup} {status}"), || {
        item_of(src, token, backup).filter(|i| i["status"] == status)
    })
}

pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
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
pub(crate) fn throttle_to(src: &Daemon, token: &str, bps: u64) {
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

pub(crate) fn unthrottle(src: &Daemon, token: &str) {
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
pub(crate) fn write_old_backup(src: &Daemon, name: &str, bytes: &[u8], age: u64) {
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

/// The live `bytes_done` of an active item, once it is at least `at` bytes.
pub(crate) fn wait_progress(
    src: &Daemon,
    token: &str,
    backup: &str,
    at: u64,
    within: Duration,
) -> Value {
    eventually(within, &format!("{backup} past {at} bytes"), || {
        item_of(src, token, backup)
            .filter(|i| i["status"] == "active" && i["bytes_done"].as_u64().unwrap_or(0) >= at)
    })
}

/// Runs the target's verify job over what system `sid` delivered and waits for its end;
/// the `received` answer then (`verify.checked`, `verify.damaged`, each row's status).
pub(crate) fn verify_all(tgt: &Daemon, sid: u64, within: Duration) -> Value {
    let tt = tgt.root_token();
    let r = tgt.client().post_json(
        &format!("/api/replication/verify?sid={sid}"),
        Some(&tt),
        &json!({}),
    );
    assert_eq!(r.status, 202, "{}", r.text());
    eventually(within, "verify done", || {
        let r = tgt
            .client()
            .get(&format!("/api/replication/received?sid={sid}"), Some(&tt))
            .json();
        (r["verify"]["running"] == false).then_some(r)
    })
}

/// SPEC 11's bound: `size` plus 5 % plus one chunk (`receiver::chunk_for`).
pub(crate) fn sent_bound(size: u64) -> u64 {
    size + size / 20 + replgate::replication::receiver::chunk_for(size)
}

#[test]
fn kill_9_of_either_side_mid_transfer_resumes_and_the_copy_verifies() {
    let (mut src, mut tgt) = start_pair("repl-kill");
    let st = src.root_token();
    throttle_to(&src, &st, 4_000_000);
    let size: usize = 16 << 20;
    let first = content(1, size);
    let second = content(2, size);
    write_backup(&src, "k/first", &first);
    let p = pair(&src, &tgt, json!({}));

    // The target dies at about half; the source keeps trying and resumes after its restart.
    wait_progress(
        &src,
        &st,
        "k/first",
        size as u64 / 2,
        Duration::from_secs(30),
    );
    tgt.kill9();
    tgt.restart();
    let done = wait_item(&src, &st, "k/first", "done", Duration::from_secs(60));
    let sent = done["bytes_sent"].as_u64().unwrap();
    eprintln!("target killed at half: {sent} bytes sent for {size}");
    assert!(sent <= sent_bound(size as u64), "sent {sent} for {size}");
    assert!(sent >= size as u64, "{sent}");
    assert!(
        tgt.log().contains("resuming at"),
        "the target resumed the partial copy"
    );
    assert_eq!(
        std::fs::read(received_path(&tgt, &p, "k/first")).unwrap(),
        first
    );
    assert_eq!(done["sha256"], sha256_hex(&first));

    // The source dies at about half; after its restart it picks the transfer up again.
    write_backup(&src, "k/second", &second);
    wait_progress(
        &src,
        &st,
        "k/second",
        size as u64 / 2,
        Duration::from_secs(30),
    );
    src.kill9();
    src.restart();
    let st = src.root_token();
    let done = wait_item(&src, &st, "k/second", "done", Duration::from_secs(60));
    let sent = done["bytes_sent"].as_u64().unwrap();
    eprintln!("source killed at half: {sent} bytes sent for {size}");
    assert!(sent <= sent_bound(size as u64), "sent {sent} for {size}");
    assert!(sent >= size as u64, "{sent}");
    assert_eq!(
        std::fs::read(received_path(&tgt, &p, "k/second")).unwrap(),
        second
    );
    // And a verify on the target finds both copies intact.
    let v = verify_all(&tgt, p.sid, Duration::from_secs(20));
    assert_eq!(v["verify"]["checked"], 2, "{v}");
    assert_eq!(v["verify"]["damaged"], 0, "{v}");
    assert!(v["received"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["status"] == "ok" && r["verified"].is_i64()));
}

#[test]
fn the_throttle_holds_the_rate_and_a_boundary_applies_at_once() {
    let (src, tgt) = start_pair("repl-throttle-rate");
    let st = src.root_token();
    let rate = 2_000_000u64;
    throttle_to(&src, &st, rate);
    let size = 40_000_000usize;
    // Incompressible (`content`): the throttle counts wire bytes (the test below).
    write_backup(&src, "t/big", &content(3, size));
    let p = pair(&src, &tgt, json!({}));
    wait_progress(&src, &st, "t/big", 1_000_000, Duration::from_secs(20));
    // Each reading is timed at the middle of its request, which a busy machine stretches.
    let read = || {
        let before = Instant::now();
        let item = item_of(&src, &st, "t/big").unwrap();
        (before + before.elapsed() / 2, item)
    };
    let (ta, a) = read();
    std::thread::sleep(Duration::from_secs(6));
    let (tb, b) = read();
    let secs = tb.duration_since(ta).as_secs_f64();
    let moved = b["bytes_done"].as_u64().unwrap() - a["bytes_done"].as_u64().unwrap();
    let measured = moved as f64 / secs;
    eprintln!(
        "throttled to {rate} B/s, measured {measured:.0} B/s, rate_bps {}",
        b["rate_bps"]
    );
    assert!(
        (measured - rate as f64).abs() <= rate as f64 * 0.2,
        "measured {measured:.0} B/s for a limit of {rate}"
    );
    let shown = b["rate_bps"].as_u64().unwrap() as f64;
    assert!(
        (shown - rate as f64).abs() <= rate as f64 * 0.3,
        "rate_bps {shown}"
    );
    assert!(b["eta_s"].as_u64().unwrap() > 5, "{b}");
    // The window ends: the running transfer speeds up within a second.
    let ended = Instant::now();
    unthrottle(&src, &st);
    wait_item(&src, &st, "t/big", "done", Duration::from_secs(30));
    let took = ended.elapsed();
    eprintln!("the rest after the window ended: {took:?}");
    assert!(
        took < Duration::from_secs(8),
        "about 30 MB were left: at the old rate that is 15 s, took {took:?}"
    );
    assert_eq!(
        std::fs::read(received_path(&tgt, &p, "t/big"))
            .unwrap()
            .len(),
        size
    );
}

/// The throttle counts bytes on the wire: a backup that compresses crosses a throttled
/// link faster than its content size allows, and its session's wire bytes keep the rate.
/// (The wire-rate bound divides by a `took` that includes pairing, so it is loose.)
#[test]
fn the_throttle_counts_wire_bytes_so_compressed_content_moves_faster() {
    let (src, tgt) = start_pair("repl-throttle-wire");
    let st = src.root_token();
    let rate = 1_000_000u64;
    throttle_to(&src, &st, rate);
    let size = 18_000_000usize;
    let backup = compressible(size);
    write_backup(&src, "w/compressible", &backup);
    let started = Instant::now();
    let p = pair(&src, &tgt, json!({}));
    wait_item(&src, &st, "w/compressible", "done", Duration::from_secs(60));
    let took = started.elapsed().as_secs_f64();
    assert_eq!(
        sha256_hex(&std::fs::read(received_path(&tgt, &p, "w/compressible")).unwrap()),
        sha256_hex(&backup)
    );
    // In content bytes the throttle would need 18 s; `took` also holds pairing's seconds
    // and the raw start before `auto`'s first review (about 3 s).
    let content_secs = size as f64 / rate as f64;
    assert!(
        took < content_secs * 0.8,
        "{size} compressible bytes took {took:.1} s at {rate} B/s"
    );
    // The session's end line gives its wire bytes: about the rate times the time, never
    // much above it.
    let wire: u64 = eventually(Duration::from_secs(20), "the session's end line", || {
        let log = src.log();
        let line = log
            .lines()
            .find(|l| l.contains("session ended:") && l.contains("1 sent"))?;
        let (_, after) = line.split_once("bytes (")?;
        after.split_once(" on the wire")?.0.parse().ok()
    });
    assert!(
        (wire as f64) < rate as f64 * took * 1.2,
        "{wire} wire bytes in {took:.1} s at {rate} B/s"
    );
    assert!(
        wire < size as u64 / 2,
        "{wire} wire bytes for {size}: not compressed"
    );
}

#[test]
fn a_quota_refuses_before_the_transfer_starts_and_the_item_says_so() {
    let (src, tgt) = start_pair("repl-quota");
    write_backup(&src, "q/small", &content(1, 300_000));
    write_backup(&src, "q/big", &content(2, 3 << 20));
    let p = pair(&src, &tgt, json!({"quota_mb": 2}));
    let st = src.root_token();
    wait_item(&src, &st, "q/small", "done", Duration::from_secs(20));
    let failed = wait_item(&src, &st, "q/big", "failed", Duration::from_secs(20));
    let m = failed["message"].as_str().unwrap();
    assert!(
        m.contains("quota of 2 MB") && m.contains("refused before the transfer"),
        "{m}"
    );
    assert_eq!(failed["bytes_sent"], 0, "{failed}");
    assert!(!received_path(&tgt, &p, "q/big").exists());
    let partials: Vec<_> = std::fs::read_dir(received_path(&tgt, &p, "q"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(
        partials.is_empty(),
        "nothing written for the refused backup"
    );
    // The target shows the quota on the systems row; raising it lets a reset through.
    let tt = tgt.root_token();
    let r = put(
        &tgt,
        &format!("/api/replication/source?sid={}", p.sid),
        &tt,
        &json!({"quota_mb": 10}),
    );
    assert_eq!((r.status, r.json()["quota_mb"].clone()), (200, json!(10)));
    // Its share of the receiving sessions: 1 unless set, 1 to 100, null sets it back.
    let path = format!("/api/replication/source?sid={}", p.sid);
    let r = put(&tgt, &path, &tt, &json!({"share": 3}));
    assert_eq!(
        (r.status, r.json()["share"].clone()),
        (200, json!(3)),
        "{}",
        r.text()
    );
    for bad in [json!(0), json!(101), json!("lots")] {
        let r = put(&tgt, &path, &tt, &json!({ "share": bad }));
        assert_eq!(r.status, 400, "{bad}: {}", r.text());
    }
    let r = put(&tgt, &path, &tt, &json!({"share": null}));
    assert_eq!(
        (r.status, r.json()["share"].clone()),
        (200, json!(1)),
        "{}",
        r.text()
    );
    let r = put(
        &src,
        "/api/replication/queue",
        &st,
        &json!({"backups": [{"id": failed["id"]}], "action": "reset"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    wait_item(&src, &st, "q/big", "done", Duration::from_secs(20));
}

#[test]
fn an_item_refused_for_its_quota_goes_on_by_itself_once_the_quota_has_room() {
    let (src, tgt) = start_pair("repl-quota-resume");
    write_backup(&src, "r/big", &content(3, 3 << 20));
    let p = pair(&src, &tgt, json!({"quota_mb": 2}));
    let st = src.root_token();
    let failed = wait_item(&src, &st, "r/big", "failed", Duration::from_secs(20));
    assert!(
        failed["message"]
            .as_str()
            .unwrap()
            .contains("quota of 2 MB"),
        "{failed}"
    );
    assert!(failed["retry_at"].is_i64(), "refused for now: {failed}");
    // Nobody resets the item on the source: raising the quota on the target is enough.
    let tt = tgt.root_token();
    let r = put(
        &tgt,
        &format!("/api/replication/source?sid={}", p.sid),
        &tt,
        &json!({"quota_mb": 10}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    wait_item(&src, &st, "r/big", "done", Duration::from_secs(90));
    assert!(received_path(&tgt, &p, "r/big").exists());
}

#[test]
fn unpair_mid_transfer_stops_it_and_received_backups_stay() {
    let (src, tgt) = start_pair("repl-unpair");
    let st = src.root_token();
    write_backup(&src, "u/done", &content(1, 100_000));
    let p = pair(&src, &tgt, json!({}));
    wait_item(&src, &st, "u/done", "done", Duration::from_secs(20));
    throttle_to(&src, &st, 1_000_000);
    write_backup(&src, "u/long", &content(2, 20_000_000));
    wait_progress(&src, &st, "u/long", 1_000_000, Duration::from_secs(20));
    let tt = tgt.root_token();
    let r = tgt
        .client()
        .delete(&format!("/api/replication/source?sid={}", p.sid), Some(&tt));
    assert_eq!(r.status, 200, "{}", r.text());
    let cut = Instant::now();
    // Within a second the target no longer receives: its session ended.
    let partial = received_path(&tgt, &p, "u/.long.replgate-part");
    std::thread::sleep(Duration::from_millis(1500));
    let len = std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0),
        len,
        "the partial copy still grows {:?} after the unpair",
        cut.elapsed()
    );
    assert!(tgt.log().contains("certificate revoked") || tgt.log().contains("session ended"));
    let item = item_of(&src, &st, "u/long").unwrap();
    assert_ne!(item["status"], "done", "{item}");
    assert!(!received_path(&tgt, &p, "u/long").exists());
    // What was received stays: it is a backup.
    assert_eq!(
        std::fs::read(received_path(&tgt, &p, "u/done")).unwrap(),
        content(1, 100_000)
    );
}

#[test]
fn a_tampered_copy_is_found_by_verify_and_fixed_by_the_next_transfer() {
    let (src, tgt) = start_pair("repl-tamper");
    let st = src.root_token();
    let good = content(5, 200_000);
    write_backup(&src, "v/a", &good);
    let p = pair(&src, &tgt, json!({}));
    wait_item(&src, &st, "v/a", "done", Duration::from_secs(20));
    let copy = received_path(&tgt, &p, "v/a");
    let mut bad = good.clone();
    bad[1000] ^= 0xff;
    std::fs::write(&copy, &bad).unwrap();
    let tt = tgt.root_token();
    let received = |tgt: &Daemon| {
        tgt.client()
            .get(
                &format!("/api/replication/received?sid={}", p.sid),
                Some(&tt),
            )
            .json()
    };
    let v = verify_all(&tgt, p.sid, Duration::from_secs(20));
    assert_eq!(v["verify"]["damaged"], 1, "{v}");
    assert_eq!(v["received"][0]["status"], "damaged");
    assert!(v["received"][0]["message"]
        .as_str()
        .unwrap()
        .contains("differs"));
    // The next transfer session (a new backup, or the idle heartbeat) sends it again.
    write_backup(&src, "v/b", &content(6, 1000));
    eventually(Duration::from_secs(30), "the copy repaired", || {
        (std::fs::read(&copy).ok()? == good).then_some(())
    });
    let r = eventually(Duration::from_secs(10), "received row ok", || {
        let r = received(&tgt);
        let a = r["received"]
            .as_array()?
            .iter()
            .find(|x| x["backup"] == "v/a")?
            .clone();
        (a["status"] == "ok").then_some(a)
    });
    assert_eq!(r["sha256"], sha256_hex(&good));
}

/// A transfer session opened by hand with the source's own pairing certificate, to send
/// what a broken or hostile source would.
struct RawSession {
    body: replgate::wire::chunked::ChunkedWriter<
        std::io::BufWriter<replgate::remote::tunnel::TunnelWriter>,
    >,
    replies:
        FrameReader<replgate::wire::chunked::ChunkedReader<replgate::remote::tunnel::TunnelReader>>,
}

impl RawSession {
    fn open(src: &Daemon, tgt: &Daemon) -> RawSession {
        let dir = std::fs::read_dir(src.data_dir.join("targets"))
            .unwrap()
            .flatten()
            .next()
            .expect("a pairing directory")
            .path();
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
        let s = replgate::remote::tunnel::open_transfer(
            &tgt.tunnel.to_string(),
            &read("ca.pem"),
            &read("cert.pem"),
            &read("key.pem"),
            replgate::wire::transfer::Features::default(),
        )
        .unwrap_or_else(|e| panic!("open a transfer session: {e}"));
        let mut raw = RawSession {
            body: s.body,
            replies: FrameReader::new(s.replies),
        };
        assert_eq!(raw.next(), "Ready", "the greeting");
        raw
    }

    fn send(&mut self, frames: &[Frame<'_>]) {
        let mut buf = Vec::new();
        for f in frames {
            buf.clear();
            transfer::encode(f, &mut buf);
            self.body.write_all(&buf).unwrap();
        }
        self.body.flush().unwrap();
    }

    fn next(&mut self) -> String {
        match self.replies.next_frame() {
            Ok(Some(f)) => format!("{f:?}"),
            other => format!("end: {other:?}"),
        }
    }
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref());
    out
}

#[test]
fn bad_input_from_a_source_is_refused_and_nothing_half_written_is_visible() {
    let (src, tgt) = start_pair("repl-bad");
    let st = src.root_token();
    configure(&src, &st, json!({"strategy": "manual"}));
    let p = pair(&src, &tgt, json!({}));
    // Another source's directory on the same storage, with a backup in it.
    let other = tgt
        .data_dir
        .join("storage/22222222-2222-4222-8222-222222222222/c");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("x"), b"theirs").unwrap();

    let mut s = RawSession::open(&src, &tgt);
    let long = format!("c/{}", "x".repeat(300));
    let names = [
        "../22222222-2222-4222-8222-222222222222/c/x",
        "22222222-2222-4222-8222-222222222222/c/x",
        "/etc/passwd",
        "c/a\u{0}b",
        long.as_str(),
        "c/..",
        "c/.hidden",
    ];
    for (i, n) in names.iter().enumerate() {
        s.send(&[Frame::Offer {
            seq: i as u32 + 1,
            size: 6,
            version: 0,
            name: n,
        }]);
        let answer = s.next();
        assert!(
            answer.contains("Refuse") && answer.contains("BadName"),
            "{n:?}: {answer}"
        );
    }
    // A size that lies (more bytes than offered), and a digest that does not match.
    let body = content(9, 5000);
    s.send(&[
        Frame::Offer {
            seq: 20,
            size: 100,
            version: 0,
            name: "c/over",
        },
        Frame::Start { seq: 20, offset: 0 },
        Frame::Data {
            seq: 20,
            bytes: &body,
        },
        Frame::End {
            seq: 20,
            sha256: digest(&body),
        },
    ]);
    assert!(s.next().contains("New"));
    let failed = s.next();
    assert!(
        failed.contains("SizeMismatch") && failed.contains("more than the 100 bytes"),
        "{failed}"
    );
    s.send(&[
        Frame::Offer {
            seq: 21,
            size: 5000,
            version: 0,
            name: "c/digest",
        },
        Frame::Start { seq: 21, offset: 0 },
        Frame::Data {
            seq: 21,
            bytes: &body,
        },
        Frame::End {
            seq: 21,
            sha256: [0; 32],
        },
    ]);
    assert!(s.next().contains("New"));
    let failed = s.next();
    assert!(
        failed.contains("DigestMismatch") && failed.contains("discarded"),
        "{failed}"
    );
    // A disconnect in the middle of a chunk.
    let big = content(8, 3 << 20);
    let mut frames = vec![
        Frame::Offer {
            seq: 22,
            size: big.len() as u64,
            version: 7,
            name: "c/cut",
        },
        Frame::Start { seq: 22, offset: 0 },
    ];
    for piece in big[..(2 << 20)].chunks(200_000) {
        frames.push(Frame::Data {
            seq: 22,
            bytes: piece,
        });
    }
    s.send(&frames);
    assert!(s.next().contains("New"));
    let mut half = Vec::new();
    transfer::encode(
        &Frame::Data {
            seq: 22,
            bytes: &[1; 100_000],
        },
        &mut half,
    );
    s.body.write_all(&half[..40_000]).unwrap();
    s.body.flush().unwrap();
    // This source ran past its window, so the target makes what it has durable at once
    // and says so; wait for that before cutting the connection. (Dropping a connection
    // with unread replies resets it, and a reset discards what the target's socket still
    // holds unread: on a loaded machine that could be every data frame.)
    let confirmed = (0..64)
        .map(|_| s.next())
        .find(|a| a.contains("Durable") || a.starts_with("end"));
    assert!(
        confirmed.as_deref().is_some_and(|a| a.contains("Durable")),
        "{confirmed:?}"
    );
    drop(s);

    // Nothing of it is visible; the other source's backup is untouched.
    let mine = tgt.data_dir.join("storage").join(&p.source_uuid);
    let visible: Vec<String> = walk(&mine)
        .into_iter()
        .filter(|n| !n.rsplit('/').next().unwrap().starts_with('.'))
        .collect();
    assert!(visible.is_empty(), "{visible:?}");
    assert_eq!(std::fs::read(other.join("x")).unwrap(), b"theirs");
    // The cut transfer resumes from what the target made durable: at least what it
    // confirmed before the cut (this source ran past its window, so the target made the
    // first window's worth durable at once), with the digest of exactly those bytes; what
    // came after may have been lost with the connection.
    // (The first session may still be winding down: the name is busy until it has.)
    let mut s = RawSession::open(&src, &tgt);
    let mut seq = 0;
    let resume = eventually(Duration::from_secs(5), "resume decision", || {
        seq += 1;
        s.send(&[Frame::Offer {
            seq,
            size: big.len() as u64,
            version: 7,
            name: "c/cut",
        }]);
        Some(s.next()).filter(|a| !a.contains("Busy"))
    });
    assert!(resume.contains("Resume"), "{resume}");
    let offset: usize = resume
        .split("offset: ")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no offset: {resume}"));
    let window = replgate::replication::receiver::window_for(big.len() as u64) as usize;
    assert!(
        offset + transfer::MAX_DATA > window && offset <= 2 << 20,
        "{resume}"
    );
    assert!(
        resume.contains(&format!("prefix_sha256: {:?}", digest(&big[..offset]))),
        "{resume}"
    );
    // Frames out of order end the session with a protocol error.
    s.send(&[Frame::Data {
        seq: 99,
        bytes: b"x",
    }]);
    let fatal = s.next();
    assert!(
        fatal.contains("Fatal") && fatal.contains("Protocol"),
        "{fatal}"
    );
    assert_eq!(
        tgt.client().get("/api/health", None).status,
        200,
        "the target survived it"
    );
}

/// Every file below `dir`, as paths relative to it.
fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path().strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out
}
