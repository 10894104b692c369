//! Restore (SPEC 20) through a real daemon pair: backups replicate, the source loses
//! them, and `POST /api/replication/restore` pulls them back through the tunnel,
//! verified by SHA-256, never replacing a different local file unless asked.

use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::{
    eventually, pair, request_body, simple_csr, start_pair, start_pair_with, Daemon,
};
use crate::pairing::{request, target_row};
use crate::replication::{content, sha256_hex, wait_item, write_backup};

/// The source's restore items (`direction: "restore"`) for `backup`, newest first.
fn restore_items(src: &Daemon, token: &str, backup: &str) -> Vec<Value> {
    let r = src.client().get(
        "/api/replication/queue?include_done=1&count=1000",
        Some(token),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    let mut out: Vec<Value> = ["active", "inactive", "done"]
        .iter()
        .flat_map(|l| v[*l].as_array().cloned().unwrap_or_default())
        .filter(|i| i["direction"] == "restore" && i["backup"] == backup)
        .collect();
    out.sort_by_key(|i| std::cmp::Reverse(i["id"].as_u64()));
    out
}

fn wait_restore(src: &Daemon, token: &str, id: &Value, status: &str) -> Value {
    eventually(
        Duration::from_secs(60),
        &format!("restore {id} {status}"),
        || {
            let r = src.client().get(
                "/api/replication/queue?include_done=1&count=1000",
                Some(token),
            );
            let v = r.json();
            ["active", "inactive", "done"]
                .iter()
                .flat_map(|l| v[*l].as_array().cloned().unwrap_or_default())
                .find(|i| i["direction"] == "restore" && i["id"] == *id)
                .filter(|i| i["status"] == status)
        },
    )
}

fn restore(src: &Daemon, token: &str, body: Value) -> crate::harness::Response {
    src.client()
        .post_json("/api/replication/restore", Some(token), &body)
}

#[test]
fn lost_backups_come_back_through_the_tunnel_verified_and_local_files_are_kept() {
    let (src, tgt) = start_pair("restore-back");
    let p = pair(&src, &tgt, json!({}));
    let st = src.root_token();
    let backups = [
        ("web01/monday.vbk", content(3, 3_000_000)),
        ("db/tuesday.vbk", content(4, 70_000)),
    ];
    for (name, bytes) in &backups {
        write_backup(&src, name, bytes);
    }
    for (name, _) in &backups {
        wait_item(&src, &st, name, "done", Duration::from_secs(60));
    }
    // Nothing new is queued from here on (a local file written below must not replace
    // the target's copy).
    let r = src.client().send_json(
        "PUT",
        "/api/replication/config",
        Some(&st),
        &json!({"strategy": "manual"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    // The source loses its copies.
    let storage = src.data_dir.join("storage");
    for (name, _) in &backups {
        std::fs::remove_file(storage.join(name)).unwrap();
    }
    // Bad requests are refused with the field named, and queue nothing.
    let t = p.target_id;
    for (body, status, says) in [
        (json!({"target_id": t}), 400, "exactly one of"),
        (
            json!({"target_id": t, "all": true, "clients": ["db"]}),
            400,
            "exactly one of",
        ),
        (
            json!({"target_id": t, "backups": ["../etc/passwd"]}),
            400,
            "backups",
        ),
        (
            json!({"target_id": t, "backups": ["web01/none"]}),
            404,
            "web01/none",
        ),
        (
            json!({"target_id": t, "clients": ["nobody"]}),
            404,
            "nobody",
        ),
        (json!({"target_id": 99, "all": true}), 404, "99"),
        (
            json!({"target_id": t, "all": true, "storage_id": 7}),
            404,
            "no storage with id 7",
        ),
    ] {
        let r = restore(&src, &st, body.clone());
        assert_eq!(r.status, status, "{body}: {}", r.text());
        assert!(r.text().contains(says), "{body}: {}", r.text());
    }
    assert!(restore_items(&src, &st, "web01/monday.vbk").is_empty());
    // Everything comes back, byte for byte.
    let r = restore(&src, &st, json!({"target_id": t, "all": true}));
    assert_eq!(r.status, 202, "{}", r.text());
    let queued = r.json()["restore"].as_array().cloned().unwrap();
    assert_eq!(queued.len(), 2);
    for item in &queued {
        assert_eq!(item["direction"], "restore");
        let done = wait_restore(&src, &st, &item["id"], "done");
        let (name, bytes) = backups.iter().find(|(n, _)| item["backup"] == *n).unwrap();
        assert_eq!(done["sha256"], sha256_hex(bytes));
        assert_eq!(done["bytes_done"], bytes.len());
        let restored = std::fs::read(storage.join(name)).unwrap();
        assert_eq!(sha256_hex(&restored), sha256_hex(bytes), "{name}");
    }
    // No partial copy is left behind.
    let leftovers: Vec<_> = std::fs::read_dir(storage.join("web01"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(leftovers, vec![std::ffi::OsString::from("monday.vbk")]);
    // A different local file at the name is not replaced unless asked.
    std::fs::write(storage.join("db/tuesday.vbk"), b"a newer local backup").unwrap();
    let r = restore(
        &src,
        &st,
        json!({"target_id": t, "backups": ["db/tuesday.vbk"]}),
    );
    assert_eq!(r.status, 202, "{}", r.text());
    let id = r.json()["restore"][0]["id"].clone();
    let failed = wait_restore(&src, &st, &id, "failed");
    assert!(
        failed["message"]
            .as_str()
            .unwrap()
            .contains("different file exists"),
        "{failed}"
    );
    assert_eq!(
        std::fs::read(storage.join("db/tuesday.vbk")).unwrap(),
        b"a newer local backup"
    );
    let r = restore(
        &src,
        &st,
        json!({"target_id": t, "backups": ["db/tuesday.vbk"], "overwrite": true}),
    );
    assert_eq!(r.status, 202, "{}", r.text());
    let id = r.json()["restore"][0]["id"].clone();
    wait_restore(&src, &st, &id, "done");
    assert_eq!(
        std::fs::read(storage.join("db/tuesday.vbk")).unwrap(),
        backups[1].1
    );
    assert!(src.log().contains("restored from target"), "{}", src.log());
    drop(tgt);
}

/// The size of the backup the crash test restores: large enough that a restore is caught
/// mid-way, small enough for a CI disk (it is written three times: the source's backup, the
/// target's copy, the restored copy).
const CRASH_BYTES: usize = 40 << 20;
/// Kills the crash test aims for; at least one must land while a partial copy exists.
const CRASH_KILLS: usize = 2;

#[test]
fn crash_restore_kill9_mid_restore_resumes_from_the_partial_and_verifies() {
    let (mut src, tgt) = start_pair("restore-crash");
    let p = pair(&src, &tgt, json!({}));
    let st = src.root_token();
    let name = "big/full.vbk";
    let bytes = content(11, CRASH_BYTES);
    let digest = sha256_hex(&bytes);
    write_backup(&src, name, &bytes);
    wait_item(&src, &st, name, "done", Duration::from_secs(60));
    drop(bytes);
    let r = src.client().send_json(
        "PUT",
        "/api/replication/config",
        Some(&st),
        &json!({"strategy": "manual"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let storage = src.data_dir.join("storage");
    let (final_path, partial) = (storage.join(name), storage.join("big/.full.vbk.restore"));
    std::fs::remove_file(&final_path).unwrap();
    let r = restore(
        &src,
        &st,
        json!({"target_id": p.target_id, "backups": [name]}),
    );
    assert_eq!(r.status, 202, "{}", r.text());
    let id = r.json()["restore"][0]["id"].clone();
    // Kill -9 once the partial copy holds a quarter, then half of the copy (it resumed
    // past where the last kill left it), then start again; the restore job takes the
    // item up at start.
    let size = CRASH_BYTES as u64;
    let mut left = Vec::new();
    for k in 0..CRASH_KILLS as u64 {
        let mark = size * (k + 1) / (CRASH_KILLS as u64 + 2);
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let caught = loop {
            let len = std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
            if len >= mark && len < size {
                src.kill9();
                break true;
            }
            if final_path.exists() || std::time::Instant::now() > deadline {
                break false;
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        if !caught {
            break;
        }
        // What the crash left: a partial copy, no final file.
        let len = std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
        assert!(
            !final_path.exists(),
            "a final file appeared before the kill"
        );
        if len > 0 && len < size {
            left.push(len);
        }
        src.restart();
    }
    eprintln!(
        "crash_restore: {} kill(s) mid-restore, partial copy at {left:?} of {size} bytes",
        left.len()
    );
    assert!(
        !left.is_empty(),
        "no kill landed while a partial copy existed (the restore finished first)"
    );
    let done = wait_restore(&src, &st, &id, "done");
    // Resumed from the partial copy: only what it lacked crossed the link after the
    // last kill (an attempt a kill cut never settles, so it counts nothing).
    let last = *left.last().unwrap();
    assert_eq!(done["bytes_received"], size - last, "{done}");
    assert_eq!(done["sha256"], digest);
    let restored = std::fs::read(&final_path).unwrap();
    assert_eq!(restored.len() as u64, size);
    assert_eq!(sha256_hex(&restored), digest);
    // No partial copy left, and nothing else under the client's directory.
    let names: Vec<_> = std::fs::read_dir(storage.join("big"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("full.vbk")]);
    drop(tgt);
}

/// Files a pairing request from `src` to `tgt`; returns the answer (`request_id`,
/// `target_id`).
fn file_request(src: &Daemon, tgt: &Daemon) -> Value {
    let r = src.client().post_json(
        "/api/replication/target",
        Some(&src.root_token()),
        &json!({"type": "appliance", "target": tgt.api.to_string(),
                "fingerprint": tgt.ca_fingerprint()}),
    );
    assert_eq!(r.status, 201, "request target: {}", r.text());
    r.json()
}

#[test]
fn a_replacement_appliance_takes_over_a_lost_source_and_restores_everything() {
    let (old, tgt) = start_pair("restore-replace");
    let p = pair(&old, &tgt, json!({"quota_mb": 500}));
    let ot = old.root_token();
    let backups: Vec<(String, Vec<u8>)> = (0..4)
        .map(|i| {
            (
                format!("c{}/b-{i}", i % 2),
                content(i as u8, 50_000 + i * 300_000),
            )
        })
        .collect();
    for (name, bytes) in &backups {
        write_backup(&old, name, bytes);
    }
    for (name, _) in &backups {
        wait_item(&old, &ot, name, "done", Duration::from_secs(60));
    }
    // The source is lost; a new appliance (new key, new data dir) asks the target.
    let new = Daemon::start("restore-replace-new", crate::harness::pairing_opts());
    let tt = tgt.root_token();
    let accept = |body: Value| {
        tgt.client()
            .post_json("/api/replication/source", Some(&tt), &body)
    };
    // Only a replication source can be replaced; nothing is decided by a refusal.
    let filed = file_request(&new, &tgt);
    let (request_id, target_id) = (filed["request_id"].clone(), filed["target_id"].clone());
    for (replaces, status) in [(999, 404), (1, 404)] {
        let r = accept(json!({"request_id": request_id, "accept": true,
                              "replaces_system_id": replaces}));
        assert_eq!(r.status, status, "{replaces}: {}", r.text());
    }
    let r = accept(json!({"request_id": request_id, "accept": true,
                          "replaces_system_id": p.sid}));
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["system_id"], p.sid, "the same systems row");
    let nt = new.root_token();
    eventually(
        Duration::from_secs(30),
        "replacement pairing complete",
        || {
            let t = new
                .client()
                .get("/api/replication/targets", Some(&nt))
                .json();
            (t["targets"][0]["status"] == "complete").then_some(())
        },
    );
    // The old appliance's certificate is revoked: it can no longer reach the copies (it
    // learns of the revocation on its next poll: 409; before that the tunnel refuses its
    // certificate: 502).
    let r = restore(&old, &ot, json!({"target_id": p.target_id, "all": true}));
    assert!([409, 502].contains(&r.status), "{}", r.text());
    assert!(restore_items(&old, &ot, &backups[0].0).is_empty());
    // The new pairing kept the quota and sees the old one's copies.
    let row = crate::harness::systems_row(&tgt.systems(&tt), |s| s["id"] == p.sid);
    assert_eq!(row["quota_mb"], 500, "{row}");
    assert!(tgt.log().contains("system replaced"), "{}", tgt.log());
    // Everything comes back, every SHA-256 the same.
    let r = restore(&new, &nt, json!({"target_id": target_id, "all": true}));
    assert_eq!(r.status, 202, "{}", r.text());
    let queued = r.json()["restore"].as_array().cloned().unwrap();
    assert_eq!(queued.len(), backups.len());
    let storage = new.data_dir.join("storage");
    for item in &queued {
        wait_restore(&new, &nt, &item["id"], "done");
    }
    for (name, bytes) in &backups {
        let restored = std::fs::read(storage.join(name)).unwrap();
        assert_eq!(sha256_hex(&restored), sha256_hex(bytes), "{name}");
    }
    drop(old);
}

fn audit_actions(d: &Daemon) -> Vec<Value> {
    let r = d
        .client()
        .get("/api/audit?limit=1000", Some(&d.root_token()));
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["audit"].as_array().cloned().unwrap_or_default()
}

/// Files a request as an appliance `uuid` would, straight on the target's pairing API.
fn file_raw(tgt: &Daemon, uuid: &str, token: Option<&str>) -> crate::harness::Response {
    let mut body = request_body(uuid, &simple_csr().pem);
    if let Some(t) = token {
        body["token"] = json!(t);
    }
    tgt.client()
        .post_json("/replication/v1/requests", None, &body)
}

#[test]
fn a_token_bound_to_a_lost_source_lets_one_new_appliance_take_it_over_and_restore() {
    let (old, tgt) = start_pair("restore-token");
    let p = pair(&old, &tgt, json!({"quota_mb": 400}));
    let ot = old.root_token();
    let backups: Vec<(String, Vec<u8>)> = (0..3)
        .map(|i| {
            (
                format!("c{i}/b"),
                content(20 + i as u8, 60_000 + i * 200_000),
            )
        })
        .collect();
    for (name, bytes) in &backups {
        write_backup(&old, name, bytes);
    }
    for (name, _) in &backups {
        wait_item(&old, &ot, name, "done", Duration::from_secs(60));
    }
    let tt = tgt.root_token();
    let create = |body: Value| {
        tgt.client()
            .post_json("/api/replication/tokens", Some(&tt), &body)
    };
    // Bound to no system, or asked for more than one use: refused, nothing issued.
    for (body, status, says) in [
        (
            json!({"replaces_system_id": 999}),
            404,
            "no system with id 999",
        ),
        (
            json!({"replaces_system_id": p.sid, "uses": 2}),
            400,
            "single-use",
        ),
    ] {
        let r = create(body.clone());
        assert_eq!(r.status, status, "{body}: {}", r.text());
        assert!(r.text().contains(says), "{body}: {}", r.text());
    }
    let r = create(json!({"replaces_system_id": p.sid}));
    assert_eq!(r.status, 201, "{}", r.text());
    let created = r.json();
    assert_eq!(
        (
            created["replaces_system_id"].clone(),
            created["uses"].clone()
        ),
        (json!(p.sid), json!(1))
    );
    let token = created["token"].as_str().unwrap().to_string();
    let token_id = created["token_id"].as_str().unwrap().to_string();
    // A second token for the same system, issued now: the first used wins.
    let r = create(json!({"replaces_system_id": p.sid}));
    assert_eq!(r.status, 201, "{}", r.text());
    let twin = r.json()["token"].as_str().unwrap().to_string();

    // A new appliance (new key, new data dir) pairs with the token: no admin call.
    let new = Daemon::start("restore-token-new", crate::harness::pairing_opts());
    let nt = new.root_token();
    let r = request(
        &new,
        &nt,
        &tgt,
        json!({"fingerprint": tgt.ca_fingerprint(), "token": token}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let target_id = r.json()["target_id"].clone();
    eventually(
        Duration::from_secs(30),
        "token replacement complete",
        || (target_row(&new, &nt)["status"] == "complete").then_some(()),
    );
    // The source knows and says what it took over, in JSON and in `ctl targets`' table.
    assert_eq!(target_row(&new, &nt)["replaces_system_id"], p.sid);
    let on_new = crate::ctl::Ctl::new(&new, &crate::harness::scratch_dir("restore-token-ctl"));
    on_new.login();
    let table = on_new.run(&["targets"]).expect(0).stdout;
    let header = table.lines().next().unwrap_or_default();
    let at = header
        .find("TOOK OVER")
        .unwrap_or_else(|| panic!("{table}"));
    assert!(
        table.lines().nth(1).unwrap_or_default()[at..].starts_with(&format!("system {}", p.sid)),
        "{table}"
    );
    let taken = audit_actions(&new);
    let row = taken
        .iter()
        .find(|a| a["action"] == "system taken over")
        .unwrap_or_else(|| panic!("no takeover in the source's audit: {taken:?}"));
    assert!(
        row["detail"]
            .as_str()
            .unwrap()
            .contains(&format!("system {}", p.sid)),
        "{row}"
    );
    // The target: the same row, its quota kept, audited as the token's doing.
    let rows = audit_actions(&tgt);
    let replaced = rows
        .iter()
        .find(|a| a["action"] == "system replaced")
        .expect("a replacement row");
    assert_eq!(replaced["user"], format!("token:{token_id}"));
    assert_eq!(replaced["object"], format!("system:{}", p.sid));
    let row = crate::harness::systems_row(&tgt.systems(&tt), |s| s["id"] == p.sid);
    assert_eq!(row["quota_mb"], 400, "{row}");
    // The lost appliance's certificate is revoked in the same transaction.
    let r = restore(&old, &ot, json!({"target_id": p.target_id, "all": true}));
    assert!([409, 502].contains(&r.status), "{}", r.text());
    // Everything comes back to the new appliance, every SHA-256 the same.
    let r = restore(&new, &nt, json!({"target_id": target_id, "all": true}));
    assert_eq!(r.status, 202, "{}", r.text());
    let queued = r.json()["restore"].as_array().cloned().unwrap();
    assert_eq!(queued.len(), backups.len());
    for item in &queued {
        wait_restore(&new, &nt, &item["id"], "done");
    }
    let storage = new.data_dir.join("storage");
    for (name, bytes) in &backups {
        let restored = std::fs::read(storage.join(name)).unwrap();
        assert_eq!(sha256_hex(&restored), sha256_hex(bytes), "{name}");
    }

    // Reuse is refused and files nothing.
    let filed = |rows: &[Value]| {
        rows.iter()
            .filter(|a| a["action"] == "request filed")
            .count()
    };
    let before = filed(&audit_actions(&tgt));
    let r = file_raw(&tgt, "7e570000-0000-4000-8000-000000000001", Some(&token));
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("used up"), "{}", r.text());
    assert_eq!(filed(&audit_actions(&tgt)), before);
    // The twin refuses: the system it was issued for was taken over since.
    let r = file_raw(&tgt, "7e570000-0000-4000-8000-000000000004", Some(&twin));
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("taken over since"), "{}", r.text());
    assert_eq!(filed(&audit_actions(&tgt)), before);
    // A token issued for the new appliance's row refuses once another appliance has taken
    // the system over since (here an admin's accept): one consent, one appliance.
    let r = create(json!({"replaces_system_id": p.sid}));
    assert_eq!(r.status, 201, "{}", r.text());
    let second = r.json()["token"].as_str().unwrap().to_string();
    let r = file_raw(&tgt, "7e570000-0000-4000-8000-000000000002", None);
    assert_eq!(r.status, 202, "{}", r.text());
    let r = tgt.client().post_json(
        "/api/replication/source",
        Some(&tt),
        &json!({"request_id": r.json()["request_id"], "accept": true,
                "replaces_system_id": p.sid}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let r = file_raw(&tgt, "7e570000-0000-4000-8000-000000000003", Some(&second));
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("taken over since"), "{}", r.text());
    drop(old);
}

fn wait_drill(src: &Daemon, token: &str, id: &Value) -> Value {
    eventually(Duration::from_secs(60), &format!("drill {id} ends"), || {
        let v = src
            .client()
            .get("/api/replication/drill", Some(token))
            .json();
        v["drills"]
            .as_array()
            .and_then(|l| l.iter().find(|d| d["id"] == *id).cloned())
            .filter(|d| d["result"] == "passed" || d["result"] == "failed")
    })
}

fn last_drill_metric(src: &Daemon, token: &str) -> f64 {
    let r = src.client().get("/api/metrics", Some(token));
    assert_eq!(r.status, 200, "{}", r.text());
    r.text()
        .lines()
        .find_map(|l| l.strip_prefix("replgate_last_drill_success_timestamp "))
        .and_then(|v| v.trim().parse().ok())
        .expect("replgate_last_drill_success_timestamp in the metrics")
}

#[test]
fn a_drill_restores_a_sample_and_a_corrupted_copy_fails_it() {
    let (src, tgt) = start_pair_with(
        "restore-drill",
        crate::harness::pairing_opts().set("drill_warn_days", 1),
        crate::harness::pairing_opts(),
    );
    let p = pair(&src, &tgt, json!({}));
    let st = src.root_token();
    let bytes = content(9, 400_000);
    write_backup(&src, "c/only", &bytes);
    wait_item(&src, &st, "c/only", "done", Duration::from_secs(60));
    assert_eq!(last_drill_metric(&src, &st), 0.0);
    let drill = |body: Value| {
        src.client()
            .post_json("/api/replication/drill", Some(&st), &body)
    };
    for (body, status) in [
        (json!({"target_id": 99}), 404),
        (json!({"target_id": p.target_id, "bytes": 0}), 400),
    ] {
        let r = drill(body.clone());
        assert_eq!(r.status, status, "{body}: {}", r.text());
    }
    let r = drill(json!({"target_id": p.target_id, "bytes": 1}));
    assert_eq!(r.status, 202, "{}", r.text());
    let passed = wait_drill(&src, &st, &r.json()["drill"]["id"]);
    assert_eq!(passed["result"], "passed", "{passed}");
    assert_eq!(
        (passed["copies"].clone(), passed["bytes"].clone()),
        (json!(1), json!(bytes.len()))
    );
    assert!(last_drill_metric(&src, &st) > 0.0);
    // The sample was thrown away; the backup storage was not touched.
    let scratch = src.data_dir.join("drill-scratch");
    assert!(!scratch.exists() || std::fs::read_dir(&scratch).unwrap().count() == 0);
    // A copy damaged on the target (same length, one bit flipped) fails the drill.
    let copy = crate::replication::received_path(&tgt, &p, "c/only");
    let mut damaged = std::fs::read(&copy).unwrap();
    damaged[200_000] ^= 0x10;
    std::fs::write(&copy, &damaged).unwrap();
    // This time through `ctl drill` with no target ID: the one paired target.
    let ctl = crate::ctl::Ctl::new(&src, &crate::harness::scratch_dir("restore-drill-ctl"));
    ctl.login();
    let queued = ctl.run(&["--json", "drill"]).expect(0).json();
    assert_eq!(queued["drill"]["target_id"], p.target_id, "{queued}");
    let failed = wait_drill(&src, &st, &queued["drill"]["id"]);
    assert_eq!(failed["result"], "failed", "{failed}");
    assert!(
        failed["message"].as_str().unwrap().contains("SHA-256"),
        "{failed}"
    );
    let listed = src.client().get("/api/replication/drill", Some(&st)).json();
    assert_eq!(listed["drills"][0]["result"], "failed", "newest first");
    assert_eq!(listed["last_success"], passed["finished"]);
    // A passed drill within drill_warn_days: no health warning about drills.
    let health = src.client().get("/api/health", None).json();
    assert!(
        !health["warnings"].to_string().contains("drill"),
        "{health}"
    );
}
