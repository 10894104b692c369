//! A full disk under the data directory (issue 21): the target's data directory is a
//! small tmpfs in the daemon's own mount namespace (`unshare -m`; the tests run as root),
//! filled from outside through `/proc/<pid>/root`. The database refuses changes with 507
//! while reads, health and metrics keep answering, a source's transfer waits (a transient
//! refusal), and once the filler is gone everything resumes by itself, with nothing that
//! was acknowledged lost and no restart.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::{eventually, pair, pairing_opts, scratch_dir, start_pair_with, Daemon};
use crate::replication::{content, item_of, sha256_hex, wait_item, write_backup};

/// Fills the filesystem holding `dir` with one file (written until `ENOSPC`); its path.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).expect("create the filler");
    let block = vec![0x5au8; 256 * 1024];
    loop {
        match f.write(&block) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                assert_eq!(e.kind(), std::io::ErrorKind::StorageFull, "{e}");
                break;
            }
        }
    }
    path
}

fn login(d: &Daemon) -> crate::harness::Response {
    d.client().post_json(
        "/api/login",
        None,
        &json!({"username": "root", "password": crate::harness::ADMIN_PASSWORD}),
    )
}

fn health(d: &Daemon) -> Value {
    let r = d.client().get("/api/health", None);
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

fn metric(d: &Daemon, token: &str, name: &str) -> Option<f64> {
    let r = d.client().get("/api/metrics", Some(token));
    assert_eq!(r.status, 200, "{}", r.text());
    r.text().lines().find_map(|l| {
        l.strip_prefix(name)
            .and_then(|v| v.strip_prefix(' '))
            .and_then(|v| v.parse().ok())
    })
}

#[test]
fn a_full_data_directory_refuses_changes_with_507_keeps_reads_and_recovers_by_itself() {
    let dir = scratch_dir("full-disk");
    // The storage for received backups is elsewhere: only the data directory fills.
    let storage = dir.join("storage");
    std::fs::create_dir_all(&storage).unwrap();
    let config = dir.join("replgate.toml");
    std::fs::write(
        &config,
        format!(
            "[[storage]]\nid = 1\nname = \"s\"\npath = \"{}\"\n",
            storage.display()
        ),
    )
    .unwrap();
    let mut target = pairing_opts();
    target.config_file = Some(config);
    target.own_mounts = true;
    // `sh -c PREFIX exec "$0" "$@"` runs the daemon: the prefix execs it itself, inside a
    // new mount namespace with a 24 MiB tmpfs over its data directory.
    target.shell_prefix = Some(
        "set -- \"$0\" \"$@\"; exec unshare --mount --propagation private sh -c \
         'mkdir -p \"$REPLGATE_DATA_DIR\" \
          && mount -t tmpfs -o size=24m,mode=0700 replgate-full \"$REPLGATE_DATA_DIR\" \
          && exec \"$@\"' sh \"$@\";"
            .to_string(),
    );
    let (src, tgt) = start_pair_with("full-disk", pairing_opts(), target);
    let data = tgt.data_dir.clone();
    let mounts = std::fs::read_to_string(format!("/proc/{}/mounts", tgt.pid())).unwrap();
    assert!(
        mounts.contains(&format!("replgate-full {} tmpfs", data.display())),
        "{mounts}"
    );
    let p = pair(&src, &tgt, json!({}));
    let st = src.root_token();
    let before = content(1, 300_000);
    write_backup(&src, "c/before", &before);
    wait_item(&src, &st, "c/before", "done", Duration::from_secs(30));
    // Tokens taken while all is well: an admin's and a scraper's.
    let tt = tgt.root_token();
    let r = tgt
        .client()
        .post_json("/api/metrics/token", Some(&tt), &json!({"name": "prom"}));
    assert_eq!(r.status, 201, "{}", r.text());
    let scraper = r.json()["token"].as_str().unwrap().to_string();
    assert_eq!(
        metric(&tgt, &scraper, "replgate_database_degraded"),
        Some(0.0)
    );

    let filler = fill(&tgt.seen(&data));
    // Logins write a session each; the disk refuses one soon, and from then on every
    // change is refused with 507 in the documented error body.
    let refused = (0..200)
        .map(|_| login(&tgt))
        .find(|r| r.status != 200)
        .expect("the full disk never refused a login");
    assert_eq!(refused.status, 507, "{}", refused.text());
    let body = refused.json();
    let e = &body["result"][0];
    assert_eq!(e["code"], 507, "{body}");
    assert_eq!(e["kb"], "/api/kb/507", "{body}");
    let message = e["message"].as_str().unwrap_or("");
    assert!(message.contains("full"), "{message}");
    assert_eq!(login(&tgt).status, 507);
    let unpair = format!("/api/replication/source?sid={}", p.sid);
    let r = tgt.client().delete(&unpair, Some(&tt));
    assert_eq!(r.status, 507, "{}", r.text());
    // Health and metrics say so; reads work, with the token from before.
    let h = health(&tgt);
    assert_eq!(h["status"], "degraded", "{h}");
    assert!(
        h["reason"].as_str().is_some_and(|r| r.contains("full")),
        "{h}"
    );
    assert_eq!(
        metric(&tgt, &scraper, "replgate_database_degraded"),
        Some(1.0)
    );
    let r = tgt.client().get("/api/systems", Some(&tt));
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains(&p.source_uuid), "{}", r.text());
    let r = tgt.client().get(
        &format!("/api/replication/received?sid={}", p.sid),
        Some(&tt),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("c/before"), "{}", r.text());
    assert_eq!(tgt.client().get("/api/kb/507", None).status, 200);
    // A transfer meanwhile cannot be recorded: the source hears a transient refusal and
    // waits to try again.
    let during = content(2, 200_000);
    write_backup(&src, "c/during", &during);
    let waiting = eventually(Duration::from_secs(60), "c/during refused", || {
        item_of(&src, &st, "c/during").filter(|i| {
            i["status"] == "waiting" && i["message"].as_str().is_some_and(|m| m.contains("full"))
        })
    });
    assert_eq!(waiting["attempts"].as_u64().map(|a| a >= 1), Some(true));
    assert!(!storage.join(&p.source_uuid).join("c/during").exists());

    // Space comes back: no restart, the database takes changes again.
    std::fs::remove_file(&filler).unwrap();
    eventually(Duration::from_secs(15), "health ok", || {
        (health(&tgt)["status"] == "ok").then_some(())
    });
    assert_eq!(login(&tgt).status, 200);
    let done = wait_item(&src, &st, "c/during", "done", Duration::from_secs(90));
    assert_eq!(done["sha256"], sha256_hex(&during), "{done}");
    let copy = std::fs::read(storage.join(&p.source_uuid).join("c/during")).unwrap();
    assert!(copy == during, "the copy differs");
    assert_eq!(
        metric(&tgt, &scraper, "replgate_database_degraded"),
        Some(0.0)
    );
    assert!(metric(&tgt, &scraper, "replgate_database_failures_total").is_some_and(|n| n >= 1.0));
    // Nothing acknowledged was lost: the first copy, its row, the old session.
    let r = tgt.client().get(
        &format!("/api/replication/received?sid={}", p.sid),
        Some(&tt),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("c/before") && r.text().contains("c/during"));
    let r = tgt.client().delete(&unpair, Some(&tt));
    assert_eq!(r.status, 200, "{}", r.text());
    let log = tgt.log();
    assert!(
        log.contains("changes are refused until space is freed"),
        "{log}"
    );
    assert!(log.contains("writes resume"), "{log}");
}
