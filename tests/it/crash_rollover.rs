//! Crash consistency of a CA rollover (SPEC 22): a target and two sources, and kill -9 of
//! either side aimed at each phase: the target dies after writing the new CA's files and
//! before the start commits, right after the start commits and before it took effect,
//! at random moments while the sources renew onto the new CA, and right after the finish
//! commits and before the old key is removed; the sources die at random moments while
//! they learn the new CA, renew onto it and pin it.
//!
//! Checked after each kill: the daemon starts again on the CAs its database names (a
//! stray new CA's files are removed, a half-done phase completed), the phase is the last
//! one committed, and the pairings keep working. At the end every source is on the new
//! CA, pins it, and its tunnel works; the old key is gone from the target's disk; and the
//! kills reached their floor. `REPLGATE_CRASH_SEED` replays a run's random moments;
//! `REPLGATE_CRASH_ROUNDS` (default 4) sets how many random kills land while the sources
//! move.

use std::time::Duration;

use serde_json::json;

use crate::harness::{eventually, pair, pairing_opts, Daemon, Paired};
use crate::pairing::{target_row, tunnel_hello, wait_status};
use crate::rng::{count_from_env, seed_from_env, Rng};
use crate::rollover::{
    ca_files, chain, installed_identity, rollover_target, start_all, status, trust_file, wait_moved,
};

const SEED_VAR: &str = "REPLGATE_CRASH_SEED";
const DEFAULT_SEED: u64 = 0x5eed_0c4a_0011_0022;
const MOVED: Duration = Duration::from_secs(90);

/// Restarts `d` with `fault` set (or none).
fn restart_with(d: &mut Daemon, fault: &str) {
    d.opts = std::mem::take(&mut d.opts).set("fault", fault);
    d.restart();
}

/// Runs rollover phase `which` on a target started with `fault`, which kills it on the
/// way (as kill -9 would: `std::process::abort`), then starts it again without a fault.
fn crash_at(tgt: &mut Daemon, fault: &str, which: &str) {
    restart_with(tgt, fault);
    let tt = tgt.root_token();
    let body = json!({ "phase": which }).to_string();
    let answer = tgt.client().try_request(
        "POST",
        "/api/ca/rollover",
        &[("Content-Type", "application/json"), ("AuthToken", &tt)],
        body.as_bytes(),
    );
    assert!(
        answer.as_ref().map_or(true, |r| r.status >= 500),
        "{fault}: the phase was answered: {answer:?}"
    );
    let exit = tgt
        .wait_exit(Duration::from_secs(20))
        .unwrap_or_else(|| panic!("{fault}: the target did not die"));
    assert!(!exit.success(), "{fault}: {exit}");
    restart_with(tgt, "none");
}

/// The source's pairing works: complete, and a hello with what it holds now is answered
/// for its system.
fn works(src: &Daemon, tgt: &Daemon, p: &Paired) {
    let st = src.root_token();
    wait_status(src, &st, "complete", MOVED);
    let hello = eventually(MOVED, "a hello with the installed certificate", || {
        tunnel_hello(tgt, Some(installed_identity(src)))
            .ok()
            .filter(|r| r.status == 200)
    });
    assert_eq!(hello.json()["system_id"], p.sid);
}

#[test]
fn a_ca_rollover_survives_kill_9_of_either_side_at_each_phase() {
    let seed = seed_from_env(SEED_VAR, DEFAULT_SEED);
    let rounds = count_from_env("REPLGATE_CRASH_ROUNDS", 4);
    let mut rng = Rng::new(seed);
    let mut daemons = start_all(vec![
        ("crash-roll-tgt".into(), rollover_target()),
        ("crash-roll-s1".into(), pairing_opts()),
        ("crash-roll-s2".into(), pairing_opts()),
    ]);
    let mut s2 = daemons.pop().unwrap();
    let mut s1 = daemons.pop().unwrap();
    let mut tgt = daemons.pop().unwrap();
    let (p1, p2) = (pair(&s1, &tgt, json!({})), pair(&s2, &tgt, json!({})));
    let old_fp = tgt.ca_fingerprint();
    let mut kills = 0u32;

    // Around start: dead after the new CA's files, before the commit. Nothing names them:
    // they are gone at the next start, and nothing changed.
    crash_at(&mut tgt, "crash_after_rollover_files", "start");
    kills += 1;
    let tt = tgt.root_token();
    assert_eq!(status(&tgt, &tt)["phase"], "idle");
    assert_eq!(ca_files(&tgt.data_dir), ["ca.key", "ca.pem"]);
    assert!(tgt
        .log()
        .contains("no ca generation in the database names it"));
    works(&s1, &tgt, &p1);

    // Dead right after the start committed: the rollover is on after the restart.
    crash_at(&mut tgt, "crash_after_rollover_start", "start");
    kills += 1;
    let tt = tgt.root_token();
    let rolling = status(&tgt, &tt);
    assert_eq!(rolling["phase"], "rolling", "{rolling}");
    let new_fp = rolling["new_ca_fingerprint"].as_str().unwrap().to_string();
    assert_eq!(
        ca_files(&tgt.data_dir),
        ["ca-1.key", "ca-1.pem", "ca.key", "ca.pem"]
    );
    assert_eq!(trust_file(&tgt), [old_fp.clone(), new_fp.clone()]);

    // While the sources learn the new CA and renew onto it: kill -9 one side or the other
    // at random moments of their first heartbeats.
    for round in 0..rounds {
        std::thread::sleep(Duration::from_millis(rng.below(3_000)));
        match rng.below(3) {
            0 => {
                tgt.kill9();
                tgt.restart();
            }
            1 => {
                s1.kill9();
                s1.restart();
            }
            _ => {
                s2.kill9();
                s2.restart();
            }
        }
        kills += 1;
        eprintln!("crash rollover: seed {seed:#x} round {round}: killed and restarted");
    }
    let tt = tgt.root_token();
    wait_moved(&tgt, &tt, &[p1.sid, p2.sid], MOVED);

    // Around finish: dead right after the finish committed, before the old key went.
    crash_at(&mut tgt, "crash_after_rollover_finish", "finish");
    kills += 1;
    let tt = tgt.root_token();
    let done = status(&tgt, &tt);
    assert_eq!(
        (done["phase"].as_str(), done["ca_fingerprint"].as_str()),
        (Some("idle"), Some(new_fp.as_str())),
        "{done}"
    );
    assert_eq!(
        ca_files(&tgt.data_dir),
        ["ca-1.key", "ca-1.pem", "ca.pem"],
        "the old key is removed at start"
    );
    assert_eq!(trust_file(&tgt), std::slice::from_ref(&new_fp));
    // A source dies as it learns of the finish.
    std::thread::sleep(Duration::from_millis(rng.below(2_500)));
    s1.kill9();
    s1.restart();
    kills += 1;

    // Every source ends on the new CA, pins it, and its tunnel works.
    for (src, p) in [(&s1, &p1), (&s2, &p2)] {
        works(src, &tgt, p);
        let st = src.root_token();
        eventually(MOVED, "the new CA pinned", || {
            let row = target_row(src, &st);
            (row["ca_fingerprint"] == new_fp.as_str() && row.get("ca_next_fingerprint").is_none())
                .then_some(())
        });
    }
    let st = status(&tgt, &tt);
    assert_eq!(
        (chain(&st, p1.sid), chain(&st, p2.sid)),
        ("new".into(), "new".into())
    );
    eprintln!("crash rollover: seed {seed:#x}: {kills} kills, every source on the new CA");
    assert!(
        u64::from(kills) >= 4 + rounds,
        "the floor of kills: {kills} for {rounds} rounds"
    );
}
