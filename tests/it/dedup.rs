//! Deduplicated transfers between two real daemons (SPEC 18): yesterday's backup plus a
//! small change moves a small fraction of its bytes, counted by the queue item's
//! `bytes_sent`; a target that does not agree the feature gets whole files.

use std::time::Duration;

use serde_json::json;

use crate::harness::{pair, pairing_opts, start_pair, start_pair_with, Daemon};
use crate::replication::{received_path, sha256_hex, wait_item, write_backup};

/// Deterministic incompressible bytes.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Day one, and day two: 64 KiB rewritten in two places and 20 bytes inserted.
fn two_days() -> (Vec<u8>, Vec<u8>, u64) {
    let day1 = noise(11, 16 << 20);
    let mut day2 = day1.clone();
    day2[2_000_000..2_032_768].copy_from_slice(&noise(12, 32_768));
    day2[9_000_000..9_032_768].copy_from_slice(&noise(13, 32_768));
    day2.splice(12_000_000..12_000_000, noise(14, 20));
    (day1, day2, 2 * 32_768 + 20)
}

/// Replicates `name` and returns its finished queue item's `bytes_sent`.
fn replicate(src: &Daemon, name: &str, bytes: &[u8]) -> u64 {
    write_backup(src, name, bytes);
    let item = wait_item(
        src,
        &src.root_token(),
        name,
        "done",
        Duration::from_secs(60),
    );
    assert_eq!(item["sha256"], sha256_hex(bytes), "{item}");
    assert_eq!(item["size"], json!(bytes.len()), "{item}");
    item["bytes_sent"].as_u64().expect("bytes_sent")
}

#[test]
fn dedup_yesterdays_backup_plus_a_little_moves_a_small_fraction_of_it() {
    let (src, tgt) = start_pair("dedup-day2");
    let p = pair(&src, &tgt, json!({}));
    let (day1, day2, changed) = two_days();
    let size = day1.len() as u64;
    let first = replicate(&src, "vm01/monday.img", &day1);
    assert!(first >= size && first <= size + size / 200, "{first}");
    let second = replicate(&src, "vm01/tuesday.img", &day2);
    assert_eq!(
        std::fs::read(received_path(&tgt, &p, "vm01/tuesday.img")).unwrap(),
        day2
    );
    eprintln!("day two: {second} bytes sent of {size} ({changed} changed)");
    assert!(second >= changed, "{second}");
    assert!(
        second <= changed * 3 + size / 200,
        "day two sent {second} bytes for {changed} changed of {size}"
    );
    // The target still says it verified the whole file, and lists what crossed for it.
    assert!(tgt.log().contains("vm01/tuesday.img received and verified"));
    let r = tgt.client().get(
        &format!("/api/replication/received?sid={}", p.sid),
        Some(&tgt.root_token()),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let received = r.json()["received"].as_array().cloned().unwrap();
    let tuesday = received
        .iter()
        .find(|r| r["backup"] == "vm01/tuesday.img")
        .unwrap();
    assert_eq!(tuesday["size"], json!(size + 20), "{tuesday}");
    let wire = tuesday["bytes_received"].as_u64().unwrap();
    assert!(wire >= changed && wire <= second, "{tuesday}");
}

#[test]
fn dedup_a_target_that_does_not_agree_chunks_gets_whole_files() {
    let (src, tgt) = start_pair_with(
        "dedup-off",
        pairing_opts(),
        pairing_opts().set("dedup", "off"),
    );
    let p = pair(&src, &tgt, json!({}));
    let (day1, day2, _) = two_days();
    let size = day1.len() as u64;
    assert_eq!(replicate(&src, "vm01/monday.img", &day1), size);
    assert_eq!(
        replicate(&src, "vm01/tuesday.img", &day2),
        day2.len() as u64
    );
    assert_eq!(
        std::fs::read(received_path(&tgt, &p, "vm01/tuesday.img")).unwrap(),
        day2
    );
}

/// Replicates day one and day two, stops queueing, loses day two on the source, and
/// restores it: the finished restore item.
fn lose_and_restore_day_two(src: &Daemon, target_id: u64) -> (serde_json::Value, Vec<u8>) {
    let (day1, day2, _) = two_days();
    replicate(src, "vm01/monday.img", &day1);
    replicate(src, "vm01/tuesday.img", &day2);
    let st = src.root_token();
    let r = src.client().send_json(
        "PUT",
        "/api/replication/config",
        Some(&st),
        &json!({"strategy": "manual"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let path = src.data_dir.join("storage/vm01/tuesday.img");
    std::fs::remove_file(&path).unwrap();
    let r = src.client().post_json(
        "/api/replication/restore",
        Some(&st),
        &json!({"target_id": target_id, "backups": ["vm01/tuesday.img"]}),
    );
    assert_eq!(r.status, 202, "{}", r.text());
    let id = r.json()["restore"][0]["id"].clone();
    let done = crate::harness::eventually(Duration::from_secs(60), "restore done", || {
        let v = src
            .client()
            .get("/api/replication/queue?include_done=1", Some(&st))
            .json();
        v["done"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .find(|i| i["direction"] == "restore" && i["id"] == id)
    });
    assert_eq!(done["status"], "done", "{done}");
    assert_eq!(done["sha256"], sha256_hex(&day2), "{done}");
    assert_eq!(
        std::fs::read(&path).unwrap(),
        day2,
        "restored byte for byte"
    );
    (done, day2)
}

#[test]
fn dedup_restore_sends_only_what_the_source_lacks() {
    let (src, tgt) = start_pair("dedup-restore");
    let p = pair(&src, &tgt, json!({}));
    let (done, day2) = lose_and_restore_day_two(&src, p.target_id);
    let wire = done["bytes_received"].as_u64().expect("bytes_received");
    let size = day2.len() as u64;
    eprintln!("restore of day two: {wire} bytes on the wire of {size}");
    // The changed chunks, a chunk record for each held one, the source's list of chunks.
    assert!(wire > 64 * 1024 && wire < size / 50, "{wire} of {size}");
    drop(tgt);
}

#[test]
fn dedup_restore_from_a_target_with_dedup_off_comes_whole() {
    let (src, tgt) = start_pair_with(
        "dedup-restore-off",
        pairing_opts(),
        pairing_opts().set("dedup", "off"),
    );
    let p = pair(&src, &tgt, json!({}));
    let (done, day2) = lose_and_restore_day_two(&src, p.target_id);
    assert_eq!(done["bytes_received"], json!(day2.len()), "{done}");
    assert!(
        src.log().contains("does not restore by chunks"),
        "{}",
        src.log()
    );
    drop(tgt);
}
