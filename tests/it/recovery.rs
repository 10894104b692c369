//! Recovery on the target (SPEC 20) through real daemons: a scheduled verify that finds
//! flipped bits and a missing copy, reports them, and sees the source heal them with no
//! admin action; retention moving backups into the recycle bin outside the quota, the
//! bin driven through `replgate ctl`, and hostile ids and names refused.

use std::time::Duration;

use serde_json::{json, Value};

use crate::ctl::Ctl;
use crate::harness::{eventually, pair, pairing_opts, scratch_dir, start_pair_with, Daemon};
use crate::replication::{
    content, received_path, sha256_hex, wait_item, write_backup, write_old_backup,
};

fn get(d: &Daemon, path: &str) -> Value {
    let r = d.client().get(path, Some(&d.root_token()));
    assert_eq!(r.status, 200, "{path}: {}", r.text());
    r.json()
}

fn health_warnings(d: &Daemon) -> Vec<String> {
    let r = d.client().get("/api/health", None);
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_str().unwrap().to_string())
        .collect()
}

/// The value of an unlabelled sample in `/api/metrics`.
fn metric(d: &Daemon, name: &str) -> Option<f64> {
    let r = d.client().get("/api/metrics", Some(&d.root_token()));
    assert_eq!(r.status, 200, "{}", r.text());
    r.text()
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} "))?.parse().ok())
}

fn received_row(d: &Daemon, sid: u64, backup: &str) -> Option<Value> {
    get(d, &format!("/api/replication/received?sid={sid}"))["received"]
        .as_array()?
        .iter()
        .find(|r| r["backup"] == backup)
        .cloned()
}

#[test]
fn a_scheduled_verify_finds_flipped_bits_and_a_lost_copy_and_the_source_heals_both() {
    let (mut src, tgt) = start_pair_with(
        "heal",
        pairing_opts(),
        pairing_opts().set("verify_interval", 2),
    );
    let st = src.root_token();
    let a = content(11, 300_000);
    let b = content(12, 120_000);
    write_backup(&src, "h/a", &a);
    write_backup(&src, "h/b", &b);
    let p = pair(&src, &tgt, json!({}));
    wait_item(&src, &st, "h/a", "done", Duration::from_secs(30));
    wait_item(&src, &st, "h/b", "done", Duration::from_secs(30));
    assert_eq!(metric(&tgt, "replgate_damaged_copies"), Some(0.0));
    assert_eq!(metric(&tgt, "replgate_verify_damaged_total"), Some(0.0));

    // The source is away while the disk rots: bits flip in one copy, another is lost.
    src.stop();
    let copy_a = received_path(&tgt, &p, "h/a");
    let mut rotten = std::fs::read(&copy_a).unwrap();
    for at in [0, 4_096, 150_001, 299_999] {
        rotten[at] ^= 0x10;
    }
    std::fs::write(&copy_a, &rotten).unwrap();
    let copy_b = received_path(&tgt, &p, "h/b");
    std::fs::remove_file(&copy_b).unwrap();

    // No admin action: verify_interval finds both, and says so three ways.
    // (A verify may have run between the two blows and seen only the first.)
    let warning = eventually(Duration::from_secs(30), "the damage warning", || {
        health_warnings(&tgt)
            .into_iter()
            .find(|w| w.starts_with("2 received copies found damaged by verify"))
    });
    assert!(
        warning.contains(&format!("(systems {})", p.sid)),
        "{warning}"
    );
    let health = Ctl::new(&tgt, &scratch_dir("heal-ctl"))
        .run(&["health"])
        .expect(0);
    assert!(
        health
            .stdout
            .contains("\nwarning: 2 received copies found damaged"),
        "{health:?}"
    );
    assert_eq!(metric(&tgt, "replgate_damaged_copies"), Some(2.0));
    assert!(metric(&tgt, "replgate_verify_damaged_total").unwrap() >= 2.0);
    let audit = get(&tgt, "/api/audit?limit=1000");
    let row = audit["audit"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|r| r["action"] == "verify found damage")
        .unwrap_or_else(|| panic!("no audit row: {audit}"))
        .clone();
    assert_eq!(row["object"], format!("system:{}", p.sid));
    let detail = row["detail"].as_str().unwrap();
    assert!(
        detail.contains("2 of 2 copies damaged (1 missing)") && detail.contains("h/a"),
        "{detail}"
    );
    let row_a = received_row(&tgt, p.sid, "h/a").unwrap();
    assert_eq!(row_a["status"], "damaged", "{row_a}");
    assert!(
        row_a["message"].as_str().unwrap().contains("differs"),
        "{row_a}"
    );
    let row_b = received_row(&tgt, p.sid, "h/b").unwrap();
    assert_eq!(row_b["message"], "the copy is missing", "{row_b}");
    assert!(
        !tgt.log().contains("POST /api/replication/verify"),
        "no verify was asked for"
    );

    // The source comes back; its next session fetches both again, byte for byte.
    src.restart();
    eventually(Duration::from_secs(60), "both copies healed", || {
        let healed = |path: &std::path::Path, want: &[u8]| {
            std::fs::read(path)
                .ok()
                .is_some_and(|got| sha256_hex(&got) == sha256_hex(want))
        };
        (healed(&copy_a, &a) && healed(&copy_b, &b)).then_some(())
    });
    for (name, body) in [("h/a", &a), ("h/b", &b)] {
        let row = eventually(Duration::from_secs(20), "the row ok", || {
            received_row(&tgt, p.sid, name).filter(|r| r["status"] == "ok")
        });
        assert_eq!(row["sha256"], sha256_hex(body), "{row}");
    }
    eventually(Duration::from_secs(20), "the warning gone", || {
        (!health_warnings(&tgt)
            .iter()
            .any(|w| w.contains("damaged by verify")))
        .then_some(())
    });
    assert_eq!(metric(&tgt, "replgate_damaged_copies"), Some(0.0));
    // The schedule goes on and now finds both intact.
    let row = eventually(Duration::from_secs(30), "a clean verify", || {
        received_row(&tgt, p.sid, "h/a").filter(|r| r["verified"].is_number())
    });
    assert_eq!(row["status"], "ok", "{row}");
    assert!(tgt
        .client()
        .get("/api/metrics", Some(&tgt.root_token()))
        .text()
        .contains(&format!(
            "replgate_last_verify_timestamp_seconds{{system=\"{}\"}}",
            p.sid
        )));
}

#[test]
fn retention_fills_the_bin_outside_the_quota_and_ctl_restores_and_purges() {
    let scratch = scratch_dir("keep-bin");
    let (src, tgt) = start_pair_with("keep", pairing_opts(), pairing_opts());
    let st = src.root_token();
    let tt = tgt.root_token();
    // Three backups of one client, oldest first by the source's version.
    let bodies: Vec<Vec<u8>> = (0..3).map(|i| content(20 + i, 300_000)).collect();
    for (i, body) in bodies.iter().enumerate() {
        write_old_backup(&src, &format!("k/{i}"), body, 3_000 - 1_000 * i as u64);
    }
    let p = pair(&src, &tgt, json!({}));
    for i in 0..3 {
        wait_item(
            &src,
            &st,
            &format!("k/{i}"),
            "done",
            Duration::from_secs(30),
        );
    }
    let r = tgt.client().send_json(
        "PUT",
        &format!("/api/replication/source?sid={}", p.sid),
        Some(&tt),
        &json!({"quota_mb": 1}),
    );
    assert_eq!(r.status, 200, "{}", r.text());

    let ctl = Ctl::new(&tgt, &scratch);
    ctl.login();
    let sid = p.sid.to_string();
    let shown = ctl.run(&["retention", &sid]).expect(0);
    assert_eq!(shown.stdout, format!("system {sid} keeps every backup\n"));
    ctl.run(&["retention", &sid, "--keep-last", "1"]).expect(0);
    let shown = ctl.run(&["retention", &sid]).expect(0);
    assert!(
        shown.stdout.contains("the newest 1 backups of each client"),
        "{shown:?}"
    );

    // Within a second or so the two older ones are in the bin, out of the received list.
    let bin = eventually(Duration::from_secs(20), "two in the bin", || {
        let v = ctl
            .run(&["--json", "recycle", "list", &sid])
            .expect(0)
            .json();
        (v["recycle"].as_array()?.len() == 2).then_some(v)
    });
    let names: Vec<&str> = bin["recycle"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["backup"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["k/0", "k/1"], "{bin}");
    let first = &bin["recycle"][0];
    assert_eq!(first["sha256"], sha256_hex(&bodies[0]));
    assert_eq!(first["size"], 300_000);
    assert_eq!(
        first["purge_after"].as_i64().unwrap() - first["removed"].as_i64().unwrap(),
        14 * 86_400,
        "recycle_days defaults to 14"
    );
    assert_eq!(bin["bytes"], 600_000);
    assert_eq!(bin["retention"], json!({"keep_last": 1}));
    assert!(!received_path(&tgt, &p, "k/0").exists());
    assert!(received_path(&tgt, &p, "k/2").exists());
    let table = ctl.run(&["recycle", "list", &sid]).expect(0).stdout;
    assert!(
        table.contains("PURGE AFTER") && table.contains("600000 bytes in the bin"),
        "{table}"
    );

    // The bin is outside the quota: 600 KB more fits beside k/2's 300 KB in 1 MiB, which
    // would not if the bin's 600 KB counted.
    let big = content(30, 600_000);
    write_backup(&src, "k/3", &big);
    let done = wait_item(&src, &st, "k/3", "done", Duration::from_secs(30));
    assert_eq!(done["sha256"], sha256_hex(&big));

    // Restore one through ctl: back among the received, pinned, byte-identical.
    let r = ctl.run(&["recycle", "restore", &sid, "k/0"]).expect(0);
    assert!(r.stdout.contains("restored k/0"), "{r:?}");
    assert_eq!(
        std::fs::read(received_path(&tgt, &p, "k/0")).unwrap(),
        bodies[0]
    );
    let row = received_row(&tgt, p.sid, "k/0").unwrap();
    assert_eq!(row["pinned"], true, "{row}");
    // A second restore would replace the received copy: refused (exit 6).
    let again = ctl.run(&["recycle", "restore", &sid, "k/0"]).expect(6);
    assert!(again.stderr.contains("k/0 is received now"), "{again:?}");
    let none = ctl.run(&["recycle", "restore", &sid, "nobody/x"]).expect(5);
    assert!(none.stderr.contains("nobody/x"), "{none:?}");

    // Purge: one name, then, only with --all, everything (k/2 moved in meanwhile).
    ctl.run(&["recycle", "purge", &sid]).expect(2);
    let r = ctl.run(&["recycle", "purge", &sid, "k/1"]).expect(0);
    assert!(
        r.stdout.starts_with("purged 1 backups (300000 bytes)"),
        "{r:?}"
    );
    // k/3 made k/2 one too many; retention runs every minute, and at once when the
    // policy is set again.
    ctl.run(&["retention", &sid, "--keep-last", "1"]).expect(0);
    eventually(Duration::from_secs(20), "k/2 in the bin", || {
        let v = get(&tgt, &format!("/api/replication/recycle?sid={}", p.sid));
        (v["recycle"][0]["backup"] == "k/2").then_some(())
    });
    ctl.run(&["recycle", "purge", &sid, "--all"]).expect(0);
    let v = get(&tgt, &format!("/api/replication/recycle?sid={}", p.sid));
    assert_eq!(v["recycle"], json!([]), "{v}");
    let bin_dir = tgt
        .data_dir
        .join("storage")
        .join(&p.source_uuid)
        .join(".recycle");
    let left: Vec<_> = std::fs::read_dir(&bin_dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "bin files left: {left:?}");
    let actions: Vec<String> = get(&tgt, "/api/audit?limit=1000")["audit"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["action"].as_str().unwrap().to_string())
        .collect();
    for a in [
        "retention",
        "recycle restored",
        "recycle purged",
        "source changed",
    ] {
        assert!(actions.iter().any(|x| x == a), "{a}: {actions:?}");
    }

    // --keep-all ends the policy; nothing more moves.
    ctl.run(&["retention", &sid, "--keep-all"]).expect(0);
    assert_eq!(
        get(&tgt, &format!("/api/replication/recycle?sid={}", p.sid))["retention"],
        Value::Null
    );

    hostile_ids_and_names_are_refused(&tgt, p.sid);
}

/// Ids, names and policies an admin client (or a script fed by a source's names) might
/// send: each gets a 400/404 in the documented format, and nothing moves.
fn hostile_ids_and_names_are_refused(tgt: &Daemon, sid: u64) {
    let tt = tgt.root_token();
    let c = tgt.client();
    let before = std::fs::read_dir(tgt.data_dir.join("storage"))
        .unwrap()
        .count();
    for bad_sid in ["abc", "-1", "0x1", "18446744073709551616", "1%00"] {
        let r = c.get(
            &format!("/api/replication/recycle?sid={bad_sid}"),
            Some(&tt),
        );
        assert_eq!(r.status, 400, "{bad_sid}: {}", r.text());
    }
    let r = c.get("/api/replication/recycle", Some(&tt));
    assert_eq!(r.status, 400, "{}", r.text());
    let r = c.get("/api/replication/recycle?sid=999", Some(&tt));
    assert_eq!(r.status, 404, "{}", r.text());
    let long = format!("k/{}", "x".repeat(5_000));
    for bad in [
        "../../etc/passwd",
        "k/../../x",
        "k/.recycle",
        "/abs/path",
        "k",
        "k/a\u{0}b",
        "k/a\nb",
        ".recycle/1",
        long.as_str(),
    ] {
        let r = c.post_json(
            &format!("/api/replication/recycle/restore?sid={sid}"),
            Some(&tt),
            &json!({ "backup": bad }),
        );
        assert_eq!(r.status, 400, "restore {bad:?}: {}", r.text());
        assert!(r.json()["result"][0]["message"].is_string());
        let q: String = bad.bytes().map(|b| format!("%{b:02X}")).collect();
        let r = c.delete(
            &format!("/api/replication/recycle?sid={sid}&backup={q}"),
            Some(&tt),
        );
        assert_eq!(r.status, 400, "purge {bad:?}: {}", r.text());
    }
    let r = c.post_json(
        &format!("/api/replication/recycle/restore?sid={sid}"),
        Some(&tt),
        &json!({ "backup": 7 }),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    for policy in [
        json!({"keep_last": 0}),
        json!({"keep_last": -1}),
        json!({"keep_last": 1_000_001}),
        json!({"keep_days": 36_501}),
        json!({"keep_days": "7d"}),
        json!({"keep_last": 1.5}),
        json!({"keep_last": 2, "keep_forever": true}),
        json!("keep all"),
        json!([1]),
    ] {
        let r = c.send_json(
            "PUT",
            &format!("/api/replication/source?sid={sid}"),
            Some(&tt),
            &json!({ "retention": policy }),
        );
        assert_eq!(r.status, 400, "{policy}: {}", r.text());
        assert!(
            r.json()["result"][0]["message"]
                .as_str()
                .unwrap()
                .contains("retention"),
            "{policy}: {}",
            r.text()
        );
    }
    let v = get(tgt, &format!("/api/replication/recycle?sid={sid}"));
    assert_eq!(
        v["retention"],
        Value::Null,
        "a refused policy changed nothing"
    );
    assert_eq!(
        std::fs::read_dir(tgt.data_dir.join("storage"))
            .unwrap()
            .count(),
        before
    );
}
