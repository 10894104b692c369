//! Crash consistency of a pair of daemons: kill -9 of the source or the target at random
//! moments while backups replicate (throttled, so kills land inside transfers), source
//! certificates renew (a lab lifetime of a minute) and the source's poller polls, renews
//! and proves the tunnel every two seconds. The first kill lands in the pairing itself
//! (the source's poller between the accept and `complete`).
//!
//! Checked after every kill, before the restart: nothing half-written is visible in the
//! target's storage (every file under a final name is exactly one version the source
//! wrote under that name; in-flight data only under dot names). Checked at the end, once
//! the kills stop: the queue resumes and every backup arrives (the newest version of each
//! name), every copy verifies (the target's verify job, and byte for byte), each item's
//! `bytes_sent` is within SPEC 11's bound plus a chunk and a reservation for each kill it
//! lived through, no partial file is left after a restart, and the pair works: the
//! source's target is `complete`, its certificate in the future, a hello with its
//! installed key is answered, and the target's systems row shows the source online and
//! connected.
//!
//! Replay: `REPLGATE_CRASH_SEED=<printed seed> cargo test --test it crash_pair -- --nocapture`;
//! `REPLGATE_CRASH_KILLS` sets the number of kills (docs/testing.md, "Crash consistency of
//! a pair").

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::PrivateKeyDer;
use serde_json::json;

use crate::crash::{assert_floor, crashes_wanted};
use crate::harness::{
    eventually, pairing_opts, pem_certs, start_pair_with, systems_row, Daemon, Paired,
};
use crate::pairing::{pairing_dir, target_row, tunnel_hello};
use crate::replication::{
    items, sent_bound, sha256_hex, throttle_to, unthrottle, verify_all, write_backup,
};
use crate::rng::{seed_from_env, Rng};

const SEED_VAR: &str = "REPLGATE_CRASH_SEED";
const KILLS_VAR: &str = "REPLGATE_CRASH_KILLS";
const DEFAULT_SEED: u64 = 0x5eed_0c4a_5b20_0001;
/// The transfer rate during the kills: 4 MB/s, so a backup of a few MiB takes seconds.
const RATE: u64 = 4_000_000;

#[test]
fn crash_pair() {
    run(
        seed_from_env(SEED_VAR, DEFAULT_SEED),
        crashes_wanted(KILLS_VAR, 8),
    );
}

/// The long run: at least 200 kills (docs/testing.md has the results).
#[test]
#[ignore]
fn crash_pair_long() {
    let kills = crashes_wanted(KILLS_VAR, 200).max(200);
    run(seed_from_env(SEED_VAR, DEFAULT_SEED ^ 0x10_0000), kills);
}

/// What the run saw, for the summary line and the checks.
#[derive(Default)]
struct Tally {
    source_kills: u64,
    target_kills: u64,
    backups: u64,
    rewrites: u64,
    bytes: u64,
    partials_seen: u64,
    /// Kills after which the target's storage held a partial file: a transfer was cut.
    mid_transfer_kills: u64,
    /// Kills each queue item (by id) lived through before it was done.
    kills_of_item: BTreeMap<u64, u64>,
    violations: Vec<String>,
}

/// Bytes that do not compress, so the throttle (which counts wire bytes) holds the
/// transfers long enough for the kills to land inside them.
fn content(rng: &mut Rng, len: usize) -> Vec<u8> {
    let mut out: Vec<u8> = (0..len.div_ceil(8))
        .flat_map(|_| rng.next_u64().to_le_bytes())
        .collect();
    out.truncate(len);
    out
}

/// Waits until a partial copy (a dot-named file) is in the source's directory on the
/// target, or `within` passed.
fn wait_for_a_partial(tgt: &Daemon, uuid: &str, within: Duration) {
    let root = tgt.data_dir.join("storage").join(uuid);
    let start = Instant::now();
    while start.elapsed() < within {
        let partial = std::fs::read_dir(&root)
            .into_iter()
            .flatten()
            .flatten()
            .flat_map(|client| {
                std::fs::read_dir(client.path())
                    .into_iter()
                    .flatten()
                    .flatten()
            })
            .any(|f| f.file_name().to_string_lossy().starts_with('.'));
        if partial {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every file under the source's directory in the target's storage, by relative name.
fn received_files(tgt: &Daemon, uuid: &str) -> BTreeMap<String, Vec<u8>> {
    let root = tgt.data_dir.join("storage").join(uuid);
    let mut out = BTreeMap::new();
    let Ok(clients) = std::fs::read_dir(&root) else {
        return out;
    };
    for client in clients.flatten() {
        for file in std::fs::read_dir(client.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = format!(
                "{}/{}",
                client.file_name().to_string_lossy(),
                file.file_name().to_string_lossy()
            );
            out.insert(name, std::fs::read(file.path()).unwrap_or_default());
        }
    }
    out
}

/// Nothing half-written is visible: every final name holds exactly one version written
/// under it; anything else is a dot-named partial.
fn check_storage(
    tgt: &Daemon,
    p: &Paired,
    versions: &BTreeMap<String, Vec<Vec<u8>>>,
    t: &mut Tally,
) {
    let partials_before = t.partials_seen;
    check_files(tgt, p, versions, t);
    if t.partials_seen > partials_before {
        t.mid_transfer_kills += 1;
    }
}

fn check_files(tgt: &Daemon, p: &Paired, versions: &BTreeMap<String, Vec<Vec<u8>>>, t: &mut Tally) {
    for (name, bytes) in received_files(tgt, &p.source_uuid) {
        let file = name.rsplit('/').next().unwrap_or("");
        if file.starts_with('.') {
            t.partials_seen += 1;
            if !file.ends_with(".replgate-part") {
                t.violations.push(format!("unexpected dot file {name}"));
            }
            continue;
        }
        match versions.get(&name) {
            Some(vs) if vs.iter().any(|v| v == &bytes) => {}
            Some(_) => t.violations.push(format!(
                "{name} holds {} bytes that are no version the source wrote",
                bytes.len()
            )),
            None => t
                .violations
                .push(format!("{name} was never written by the source")),
        }
    }
}

/// Counts a kill for every item that is not finished yet.
fn note_kill(src: &Daemon, st: &str, t: &mut Tally) {
    for item in items(src, st) {
        if !matches!(item["status"].as_str(), Some("done" | "removed" | "failed")) {
            if let Some(id) = item["id"].as_u64() {
                *t.kills_of_item.entry(id).or_default() += 1;
            }
        }
    }
}

/// Pairs with the source killed at a random moment after the accept, while its poller
/// fetches, installs and proves the new certificate.
fn pair_through_a_kill(src: &mut Daemon, tgt: &Daemon, rng: &mut Rng, t: &mut Tally) -> Paired {
    let (st, tt) = (src.root_token(), tgt.root_token());
    let r = src.client().post_json(
        "/api/replication/target",
        Some(&st),
        &json!({"type": "appliance", "target": tgt.api.to_string(),
                "fingerprint": tgt.ca_fingerprint()}),
    );
    assert_eq!(r.status, 201, "request target: {}", r.text());
    let filed = r.json();
    let r = tgt.client().post_json(
        "/api/replication/source",
        Some(&tt),
        &json!({"request_id": filed["request_id"], "accept": true}),
    );
    assert_eq!(r.status, 201, "accept: {}", r.text());
    let sid = r.json()["system_id"].as_u64().expect("system_id");
    std::thread::sleep(Duration::from_millis(rng.below(2_500)));
    src.kill9();
    t.source_kills += 1;
    src.restart();
    let st = src.root_token();
    eventually(
        Duration::from_secs(30),
        "pairing complete after the kill",
        || (target_row(src, &st)["status"] == "complete").then_some(()),
    );
    let local = systems_row(&src.systems(&st), |s| s["local"] == true);
    Paired {
        target_id: filed["target_id"].as_u64().expect("target_id"),
        sid,
        source_uuid: local["system_uuid"].as_str().expect("uuid").to_string(),
    }
}

/// A hello on the target's tunnel with each key generation in the pairing directory:
/// whether one of them is answered 200 for system `sid`.
pub(crate) fn some_installed_key_works(src: &Daemon, tgt: &Daemon, sid: u64) -> bool {
    let dir = pairing_dir(src);
    let generations = std::fs::read_dir(&dir).into_iter().flatten().flatten();
    let certs: Vec<String> = generations
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("cert") && n.ends_with(".pem"))
        .collect();
    certs.iter().any(|cert| {
        let key = cert.replacen("cert", "key", 1);
        let (Ok(c), Ok(k)) = (std::fs::read(dir.join(cert)), std::fs::read(dir.join(&key))) else {
            return false;
        };
        let Ok(key) = PrivateKeyDer::from_pem_slice(&k) else {
            return false;
        };
        tunnel_hello(tgt, Some((pem_certs(&c), key)))
            .is_ok_and(|r| r.status == 200 && r.json()["system_id"] == sid)
    })
}

/// The target's systems row of the source `uuid`, once it shows the source online (it
/// proved its tunnel within the last polls).
pub(crate) fn target_system_online(tgt: &Daemon, uuid: &str) -> serde_json::Value {
    let tt = tgt.root_token();
    eventually(
        Duration::from_secs(30),
        "the source online on the target",
        || {
            let row = systems_row(&tgt.systems(&tt), |s| s["system_uuid"] == uuid);
            (row["online"] == true).then_some(row)
        },
    )
}

pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn run(seed: u64, kills: u64) {
    let started = Instant::now();
    let mut rng = Rng::new(seed);
    let mut t = Tally::default();
    let target = pairing_opts()
        .set("certificate_seconds", 60)
        .set("renew_grace", 60);
    let (mut src, mut tgt) = start_pair_with("crash-pair", pairing_opts(), target);
    let p = pair_through_a_kill(&mut src, &tgt, &mut rng, &mut t);
    let st = src.root_token();
    throttle_to(&src, &st, RATE);

    let mut versions: BTreeMap<String, Vec<Vec<u8>>> = BTreeMap::new();
    for round in 0..kills {
        // A new backup, or now and then a new version of one written before.
        let rewrite = !versions.is_empty() && rng.below(5) == 0;
        let name = if rewrite {
            t.rewrites += 1;
            let names: Vec<&String> = versions.keys().collect();
            (*rng.pick(&names)).clone()
        } else {
            format!("client-{}/backup-{round}.img", rng.below(3))
        };
        let len = (1 << 20) + rng.index(6 << 20);
        let bytes = content(&mut rng, len);
        t.backups += 1;
        t.bytes += bytes.len() as u64;
        write_backup(&src, &name, &bytes);
        versions.entry(name).or_default().push(bytes);

        std::thread::sleep(Duration::from_millis(300 + rng.below(2_700)));
        // Every third kill waits (a while at most) for a transfer in flight, so that the
        // floor of kills mid-transfer below does not hang on the machine's speed.
        if round % 3 == 0 {
            wait_for_a_partial(&tgt, &p.source_uuid, Duration::from_secs(15));
        }
        note_kill(&src, &st, &mut t);
        if rng.below(2) == 0 {
            src.kill9();
            t.source_kills += 1;
            check_storage(&tgt, &p, &versions, &mut t);
            src.restart();
        } else {
            tgt.kill9();
            t.target_kills += 1;
            check_storage(&tgt, &p, &versions, &mut t);
            tgt.restart();
        }
    }

    // The kills stop: everything arrives, as the newest version of each name.
    unthrottle(&src, &st);
    let finished = eventually(Duration::from_secs(240), "every backup replicated", || {
        let all = items(&src, &st);
        let done = versions.iter().all(|(name, vs)| {
            let newest = sha256_hex(vs.last().expect("a version"));
            all.iter().any(|i| {
                i["backup"] == name.as_str() && i["status"] == "done" && i["sha256"] == newest
            })
        });
        done.then_some(all)
    });
    let finished_count = finished.iter().filter(|i| i["status"] == "done").count() as u64;
    let received = received_files(&tgt, &p.source_uuid);
    for (name, vs) in &versions {
        if received.get(name) != vs.last() {
            t.violations
                .push(format!("{name} on the target is not the newest version"));
        }
    }
    for item in finished.iter().filter(|i| i["status"] == "done") {
        let (size, sent) = (
            item["size"].as_u64().unwrap_or(0),
            item["bytes_sent"].as_u64().unwrap_or(0),
        );
        let lived = t
            .kills_of_item
            .get(&item["id"].as_u64().unwrap_or(0))
            .copied()
            .unwrap_or(0);
        let chunk = replgate::replication::receiver::chunk_for(size);
        let bound = sent_bound(size) + 2 * lived * chunk;
        if sent > bound {
            t.violations.push(format!(
                "{} sent {sent} bytes for {size} through {lived} kills (bound {bound})",
                item["backup"]
            ));
        }
    }
    // Every copy verifies on the target.
    let v = verify_all(&tgt, p.sid, Duration::from_secs(60));
    if v["verify"]["damaged"] != 0
        || v["verify"]["checked"].as_u64().unwrap_or(0) < versions.len() as u64
    {
        t.violations.push(format!("verify: {}", v["verify"]));
    }
    // After a clean restart of the target no partial file is left.
    tgt.restart();
    let leftover: Vec<String> = received_files(&tgt, &p.source_uuid)
        .into_keys()
        .filter(|n| n.rsplit('/').next().unwrap_or("").starts_with('.'))
        .collect();
    if !leftover.is_empty() {
        t.violations
            .push(format!("partial files left after a restart: {leftover:?}"));
    }
    // The pair works: the source proved its tunnel since, with a certificate in the future.
    let restarted = unix_now();
    let row = eventually(
        Duration::from_secs(30),
        "a fresh proof of the tunnel",
        || {
            let row = target_row(&src, &st);
            (row["status"] == "complete" && row["last_poll"].as_i64().unwrap_or(0) >= restarted)
                .then_some(row)
        },
    );
    if row["certificate_expires"].as_i64().unwrap_or(0) <= unix_now() {
        t.violations
            .push(format!("the source's certificate is not valid: {row}"));
    }
    if !some_installed_key_works(&src, &tgt, p.sid) {
        t.violations
            .push("no installed key opens the tunnel".into());
    }
    let sys = target_system_online(&tgt, &p.source_uuid);
    if sys["status"] != "connected" {
        t.violations
            .push(format!("the target's systems row is not connected: {sys}"));
    }
    let renewals = tgt.log().matches("certificate renewed").count();
    eprintln!(
        "crash pair: seed {seed:#x}: {} SIGKILLs ({} source, {} target), {} backups ({} new versions, {} MiB), \
         {} partials seen at kills, {} kills mid-transfer, {renewals} renewals logged by the target, {} violations, {:.1} s",
        t.source_kills + t.target_kills,
        t.source_kills,
        t.target_kills,
        t.backups,
        t.rewrites,
        t.bytes >> 20,
        t.partials_seen,
        t.mid_transfer_kills,
        t.violations.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        t.violations.is_empty(),
        "seed {seed:#x} (replay with {SEED_VAR}):\n{}",
        t.violations.join("\n")
    );
    // The floors: every kill asked for (and the one during the pairing) happened, a third
    // of them or more cut a transfer (the rate is throttled so that most do), and every
    // round's backup was written and replicated (checked above: all of them arrived).
    assert_floor("SIGKILLs", t.source_kills + t.target_kills, kills + 1);
    assert_floor(
        "kills mid-transfer",
        t.mid_transfer_kills,
        kills.div_ceil(3),
    );
    // A rewrite replaces a name's item, so the done items are one per name.
    assert_floor("backups written", t.backups, kills);
    assert_floor("backups replicated", finished_count, versions.len() as u64);
}
