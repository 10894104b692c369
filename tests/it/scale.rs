//! A small fleet against one real target (SPEC 21), so that the machinery of
//! bench/scale.sh stays working: 20 sources paired through one 20-use token (2 real source
//! daemons with `POST /api/replication/target`, 18 synthetic ones from bench/fleet, each
//! from its own 127.x address), the synthetic ones polling and opening their idle
//! sessions, then 5 sources (the 2 daemons and 3 synthetic) sending at once. Asserted:
//! every pairing, poll and session succeeds with no handshake failure; every file arrives
//! and its copy on the target has the sender's SHA-256; the target shared its ingest
//! loosely fairly (Jain's index of the 5 rates ≥ 0.7 and none below a quarter of the mean
//! over the seconds all 5 were sending). Loose on purpose: the run lasts seconds, the
//! binaries are debug builds on a shared 2-core machine, rates are read once a second from
//! the target's queue, and the two kinds of sender differ (a daemon reads and hashes its
//! files, the synthetic sender sends the same bytes from memory); bench/scale.sh measures
//! fairness against the SPEC's 0.95 over 60 s windows. A starved source still fails it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::fleet::pair::{self, Admin, Fleet};
use crate::fleet::send::FileOutcome;
use crate::fleet::stats::jain;
use crate::fleet::watch::{self, QueueWatch};
use crate::fleet::{poll, send, xfer};
use crate::harness::{eventually, pairing_opts, Daemon, POLL};
use crate::pairing::{request, wait_status};
use crate::replication::{content, sha256_hex};

const SYNTHETIC: usize = 18;
const SENDING_SYNTHETIC: usize = 3;
const FILES: usize = 12;
const FILE_BYTES: usize = 8 * 1024 * 1024;

#[test]
fn a_fleet_of_twenty_shares_the_target_and_every_file_verifies() {
    let (tgt, srcs) = std::thread::scope(|s| {
        let srcs: Vec<_> = (0..2)
            .map(|i| s.spawn(move || Daemon::start(&format!("scale-src{i}"), pairing_opts())))
            .collect();
        let tgt = Daemon::start("scale-tgt", pairing_opts());
        let srcs: Vec<Daemon> = srcs.into_iter().map(|h| h.join().unwrap()).collect();
        (tgt, srcs)
    });
    let ca_pem = std::fs::read_to_string(tgt.data_dir.join("ca.pem")).unwrap();
    let mut admin = Admin::login(&ca_pem, tgt.api, crate::harness::ADMIN_PASSWORD).unwrap();
    let token = admin
        .pairing_token(SYNTHETIC + srcs.len(), &json!({"note": "scale test"}))
        .unwrap();

    // Pairing: the daemons as a source admin would, the fleet as bench/scale.sh does.
    let tokens: Vec<String> = srcs.iter().map(|s| s.root_token()).collect();
    for (src, st) in srcs.iter().zip(&tokens) {
        let r = request(
            src,
            st,
            &tgt,
            json!({"fingerprint": tgt.ca_fingerprint(), "token": token}),
        );
        assert_eq!(r.status, 201, "{}", r.text());
    }
    let paired = pair::pair_many(&ca_pem, tgt.api, &token, 0..SYNTHETIC, 4).unwrap();
    assert_eq!(paired.identities.len(), SYNTHETIC);
    for (src, st) in srcs.iter().zip(&tokens) {
        wait_status(src, st, "complete", Duration::from_secs(POLL + 20));
    }
    let listed = admin.call("GET", "/api/replication/tokens", None).unwrap();
    let t = &listed.json().unwrap()["tokens"][0];
    assert_eq!(
        (t["status"].as_str(), t["used"].as_u64()),
        (Some("used"), Some(20)),
        "{t}"
    );
    let fleet = Fleet {
        ca_pem: ca_pem.clone(),
        tunnel: paired.tunnel.parse().unwrap(),
        sources: paired.identities,
    };

    // The synthetic sources idle as paired sources do: polls and idle sessions.
    let plan = poll::Plan {
        heartbeat: Duration::from_secs(1),
        tunnel_call: poll::TunnelCall::Session,
        renew: false,
        workers: 4,
        count: SYNTHETIC,
        tunnel_below: SYNTHETIC,
    };
    let measured = poll::Measured::default();
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let run = s.spawn(|| poll::run(&fleet, tgt.api, &plan, &measured, &stop));
        std::thread::sleep(Duration::from_secs(4));
        stop.store(true, Ordering::Relaxed);
        run.join().unwrap().unwrap();
    });
    for (what, e) in [("poll", &measured.poll), ("tunnel", &measured.tunnel)] {
        let report = e.report(what);
        assert!(e.ok.load(Ordering::Relaxed) >= SYNTHETIC as u64, "{report}");
        for bad in [&e.refused, &e.handshake_failures, &e.errors] {
            assert_eq!(bad.load(Ordering::Relaxed), 0, "{report}");
        }
    }

    // Five at once: both daemons and three synthetic sources, watched from the target.
    let mut written = Vec::new();
    for (i, src) in srcs.iter().enumerate() {
        let stage = src.data_dir.join("storage/.c1");
        std::fs::create_dir_all(&stage).unwrap();
        for f in 0..FILES {
            let bytes = content((i * FILES + f) as u8, FILE_BYTES);
            std::fs::write(stage.join(format!("f{f}.bin")), &bytes).unwrap();
            written.push((i, format!("c1/f{f}.bin"), sha256_hex(&bytes)));
        }
    }
    let xplan = xfer::Plan {
        sources: (0..SENDING_SYNTHETIC).collect(),
        file_bytes: FILE_BYTES as u64,
        files_per_source: Some(FILES),
        run: "it".into(),
        client: "fleet".into(),
        late_after: None,
    };
    let xmeasured = xfer::Measured::new(SENDING_SYNTHETIC);
    let never = AtomicBool::new(false);
    let mut rows: Vec<(usize, u64, u64)> = Vec::new();
    let mut w = QueueWatch::default();
    let mut t0 = 0;
    std::thread::scope(|s| {
        for src in &srcs {
            let data = src.data_dir.join("storage");
            std::fs::rename(data.join(".c1"), data.join("c1")).unwrap();
        }
        // The synthetic senders start once the daemons (which pick a new backup up within
        // 2 s) are sending.
        eventually(Duration::from_secs(30), "both daemons sending", || {
            let queue = admin
                .call("GET", "/api/replication/queue?count=1", None)
                .ok()?;
            let active = queue.json().ok()?["active"].as_array()?.len();
            (active >= srcs.len()).then_some(())
        });
        let senders = s.spawn(|| xfer::run(&fleet, &xplan, &xmeasured, &never));
        // Second k of the series is the k+1th read, covering the second before it.
        t0 = replgate::model::now();
        let deadline = Instant::now() + Duration::from_secs(240);
        let mut sec = 0;
        let mut quiet = 0;
        while quiet < 3 {
            assert!(Instant::now() < deadline, "the transfers did not end");
            std::thread::sleep(Duration::from_secs(1));
            let queue = admin
                .call("GET", "/api/replication/queue?count=1", None)
                .unwrap()
                .json()
                .unwrap();
            for (sid, bytes) in w.step(&queue) {
                rows.push((sec, sid, bytes));
            }
            sec += 1;
            let done = xmeasured.finished.load(Ordering::Relaxed) == SENDING_SYNTHETIC;
            let idle = queue["active"].as_array().is_none_or(|a| a.is_empty());
            quiet = if done && idle { quiet + 1 } else { 0 };
        }
        senders.join().unwrap().unwrap();
    });

    // Every file is on the target with the sender's digest.
    let storage = tgt.data_dir.join("storage");
    let files = xmeasured.files.lock().unwrap().clone();
    assert_eq!(
        files.len(),
        SENDING_SYNTHETIC * FILES,
        "{}",
        xmeasured.outcomes()
    );
    for (i, f) in &files {
        assert_eq!(
            f.outcome,
            FileOutcome::Committed,
            "{}: {:?}",
            f.name,
            f.outcome
        );
        let copy = std::fs::read(storage.join(&fleet.sources[*i].uuid).join(&f.name)).unwrap();
        assert_eq!(copy.len() as u64, f.size);
        assert_eq!(sha256_hex(&copy), replgate::wire::hex::encode(&f.sha256));
        assert_eq!(f.sha256, send::digest_of(f.size));
    }
    for (i, name, sha) in &written {
        let uuid =
            crate::harness::systems_row(&srcs[*i].systems(&tokens[*i]), |s| s["local"] == true)
                ["system_uuid"]
                .as_str()
                .unwrap()
                .to_string();
        let path = storage.join(&uuid).join(name);
        let copy = eventually(Duration::from_secs(30), "daemon copy", || {
            std::fs::read(&path).ok()
        });
        assert_eq!(&sha256_hex(&copy), sha, "{}", path.display());
    }

    // Fairness over the seconds when all five were sending (files that came and went
    // between two reads of the queue counted from the received lists).
    let systems = admin
        .call("GET", "/api/systems", None)
        .unwrap()
        .json()
        .unwrap();
    let last = rows.iter().map(|r| r.0).max().unwrap_or(0);
    for (sid, _) in watch::sources(&systems) {
        let received = admin
            .call("GET", &format!("/api/replication/received?sid={sid}"), None)
            .unwrap()
            .json()
            .unwrap();
        rows.extend(w.unseen(sid, &received, t0, last));
    }
    let series = watch::series(&rows);
    assert_eq!(series.len(), 5, "five senders seen by the target: {rows:?}");
    let from = series
        .values()
        .filter_map(|s| s.iter().position(|b| *b > 0.0))
        .max()
        .unwrap();
    let to = series
        .values()
        .filter_map(|s| s.iter().rposition(|b| *b > 0.0))
        .min()
        .unwrap();
    assert!(
        to > from,
        "no second with all five sending (from {from} to {to}): {series:?}"
    );
    let means: BTreeMap<u64, f64> = series
        .iter()
        .map(|(sid, s)| {
            (
                *sid,
                s[from..=to].iter().sum::<f64>() / (to - from + 1) as f64,
            )
        })
        .collect();
    let rates: Vec<f64> = means.values().copied().collect();
    let index = jain(&rates);
    let mean = rates.iter().sum::<f64>() / rates.len() as f64;
    eprintln!(
        "scale: per second {:?}\nscale: {} s with all five sending; rates (MB/s) {:?}; Jain {index:.3}",
        series.values().map(|s| s.iter().map(|b| (b / 1e5).round() / 10.0).collect::<Vec<_>>()).collect::<Vec<_>>(),
        to - from + 1,
        means.values().map(|r| (r / 1e4).round() / 100.0).collect::<Vec<_>>()
    );
    assert!(index >= 0.7, "Jain {index:.3} over {means:?}");
    for (sid, r) in &means {
        assert!(
            *r >= 0.25 * mean,
            "source {sid} got {r} of a mean {mean}: {means:?}"
        );
    }
}
