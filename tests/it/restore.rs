//! Restore (SPEC 20) through a real daemon pair: backups replicate, the source loses
//! them, and `POST /api/replication/restore` pulls them back through the tunnel,
//! verified by SHA-256, never replacing a different local file unless asked.

use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::{eventually, pair, start_pair, Daemon};
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
            400,
            "storage_id",
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
