//! No source starves when sources outnumber the target's receiving sessions (SPEC 21,
//! docs/operations.md "Sharing the receiving sessions"): a target with
//! `max_receive_sessions = 2` and six synthetic sources (bench/fleet, each from its own
//! address) that always have files to send. First come, first served would give the two
//! first sources the slots for the whole run; with turns every source commits files, the
//! slots turn over (sessions end with `Fatal` busy and the sources come back), and every
//! copy has the sender's SHA-256. The counts are loose (debug builds on a shared machine):
//! the bench measures the rates.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::json;

use crate::fleet::pair::{self, Admin, Fleet};
use crate::fleet::send::{self, FileOutcome};
use crate::fleet::xfer;
use crate::harness::{Daemon, Options};
use crate::replication::sha256_hex;

const SOURCES: usize = 6;
const SLOTS: u64 = 2;
/// Small files: the run is about turns, not bytes, and every copy stays on the test
/// machine's disk until the end (1 MiB files wrote 7.6 GB here).
const FILE_BYTES: u64 = 128 * 1024;
const RUN: Duration = Duration::from_secs(40);

#[test]
fn sources_outnumbering_the_sessions_all_get_turns_and_every_copy_verifies() {
    let tgt = Daemon::start(
        "slots-tgt",
        Options::default().set("max_receive_sessions", SLOTS),
    );
    let ca_pem = std::fs::read_to_string(tgt.data_dir.join("ca.pem")).unwrap();
    let mut admin = Admin::login(&ca_pem, tgt.api, crate::harness::ADMIN_PASSWORD).unwrap();
    let token = admin
        .pairing_token(SOURCES, &json!({"note": "slots test"}))
        .unwrap();
    let paired = pair::pair_many(&ca_pem, tgt.api, &token, 0..SOURCES, 3).unwrap();
    assert_eq!(paired.identities.len(), SOURCES);
    let fleet = Fleet {
        ca_pem,
        tunnel: paired.tunnel.parse().unwrap(),
        sources: paired.identities,
    };

    let plan = xfer::Plan {
        sources: (0..SOURCES).collect(),
        file_bytes: FILE_BYTES,
        files_per_source: None,
        run: "slots".into(),
        client: "fleet".into(),
        late_after: None,
    };
    let measured = xfer::Measured::new(SOURCES);
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let senders = s.spawn(|| xfer::run(&fleet, &plan, &measured, &stop));
        std::thread::sleep(RUN);
        stop.store(true, Ordering::Relaxed);
        senders.join().unwrap().unwrap();
    });

    let files = measured.files.lock().unwrap().clone();
    let mut committed = [0usize; SOURCES];
    let storage = tgt.data_dir.join("storage");
    for (i, f) in &files {
        if f.outcome != FileOutcome::Committed {
            continue;
        }
        committed[*i] += 1;
        let copy = std::fs::read(storage.join(&fleet.sources[*i].uuid).join(&f.name)).unwrap();
        assert_eq!(copy.len() as u64, f.size, "{}", f.name);
        assert_eq!(sha256_hex(&copy), replgate::wire::hex::encode(&f.sha256));
        assert_eq!(f.sha256, send::digest_of(f.size));
    }
    eprintln!(
        "slots: files committed per source {committed:?}; {}",
        measured.outcomes()
    );
    // Every source had a turn; each of the two slots turned over at least once per
    // source beyond the first two.
    for (i, n) in committed.iter().enumerate() {
        assert!(*n > 0, "source {i} starved: {committed:?}");
    }
    let total: usize = committed.iter().sum();
    let mean = total as f64 / SOURCES as f64;
    let least = *committed.iter().min().unwrap() as f64;
    assert!(
        least >= 0.2 * mean,
        "a source got {least} files of a mean {mean:.1}: {committed:?}"
    );
    // Nothing failed or was refused. `Held`: a file committed as its session ended, before
    // the source heard, and offered again in the next session.
    for (_, f) in &files {
        assert!(
            matches!(
                f.outcome,
                FileOutcome::Committed | FileOutcome::Held | FileOutcome::Unknown
            ),
            "{}: {:?}",
            f.name,
            f.outcome
        );
    }
    // Passed: the copies were checked, so they need not stay on the machine's disk.
    let data_dir = tgt.data_dir.clone();
    drop(tgt);
    std::fs::remove_dir_all(&data_dir).unwrap();
}
