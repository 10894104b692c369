//! Crash consistency of certificate renewal: pairs of daemons with a lab certificate
//! lifetime of a minute, and in every round a SIGKILL of the source or the target aimed at
//! the source's next renewal (the row's `certificate_renews`, from a second before to two and
//! a half seconds after it: the poller takes a due renewal up within its 2 s period), then a
//! restart. The pairs run side by side, so a few hundred kills take about twenty minutes
//! instead of hours (one renewal per pair every 36–45 s is the floor: SPEC 12's minimum
//! lifetime is a minute).
//!
//! Checked after every round: the renewal completes after the kill (a new serial is
//! installed, the row is `complete` with a certificate in the future and a proof of the
//! tunnel since the restart) and a hello with the installed key is answered for the
//! system. At the end, for each pair: exactly one certificate was issued per renewal (the
//! target's audit; a renewal cut by a kill is answered again with the certificate already
//! issued, never signed twice), the target's systems row shows the source online and
//! connected, and the pairing directory holds only the installed
//! generation's key and certificate (the old ones go after the proof, stray keys are
//! overwritten).
//!
//! The deterministic crash at each step of a renewal is in `renewal.rs`
//! (`renewal_survives_a_crash_of_either_side_at_each_step`, in every `cargo test`); this
//! one is long by nature and `#[ignore]`d: docs/testing.md, "Crash consistency of
//! renewal", has the command and the results.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::crash::{assert_floor, crashes_wanted};
use crate::crash_pair::{some_installed_key_works, target_system_online, unix_now};
use crate::harness::{pairing_opts, start_pair_with, systems_row};
use crate::pairing::{pairing_dir, target_row};
use crate::renewal::{audit_rows, lab_target, paired};
use crate::rng::{count_from_env, seed_from_env, Rng};

const SEED_VAR: &str = "REPLGATE_CRASH_SEED";
const DEFAULT_SEED: u64 = 0x5eed_0c4a_5b40_0001;
/// Longest wait for the renewal after a kill (the lab lifetime is a minute; a target
/// killed mid-renewal makes the source back off 5 s, then 10 s).
const RENEWED_WITHIN: Duration = Duration::from_secs(120);

/// What one pair saw.
#[derive(Default)]
struct Tally {
    source_kills: u64,
    target_kills: u64,
    /// Kills after which the old serial was still installed (the kill came before the
    /// renewal's install, or in it).
    before_install: u64,
    /// Kills after the new serial was installed (it still had to be proven).
    after_install: u64,
    /// Renewals the target answered again with the certificate it had issued.
    answered_again: u64,
    renewals: u64,
    /// Seconds from the renewal's install (`certificate_renewed`, whole seconds) to the
    /// kill, clamped to ±3: negative means the kill came first.
    offsets: BTreeMap<i64, u64>,
    violations: Vec<String>,
}

#[test]
#[ignore = "long: about 20 minutes; docs/testing.md, \"Crash consistency of renewal\""]
fn crash_renewal_long() {
    let seed = seed_from_env(SEED_VAR, DEFAULT_SEED);
    let pairs = count_from_env("REPLGATE_CRASH_PAIRS", 8);
    assert!(
        pairs >= 1,
        "REPLGATE_CRASH_PAIRS=0: a crash test must crash at least once"
    );
    let rounds = crashes_wanted("REPLGATE_CRASH_ROUNDS", 25);
    let started = Instant::now();
    let mut rng = Rng::new(seed);
    let outcomes: Vec<Result<Tally, String>> = std::thread::scope(|s| {
        let running: Vec<_> = (0..pairs)
            .map(|i| {
                let rng = rng.fork();
                s.spawn(move || one_pair(i, rng, rounds))
            })
            .collect();
        running
            .into_iter()
            .enumerate()
            .map(|(i, t)| t.join().map_err(|_| format!("pair {i} panicked (above)")))
            .collect()
    });
    let mut total = Tally::default();
    let mut failed = Vec::new();
    for (i, outcome) in outcomes.into_iter().enumerate() {
        match outcome {
            Ok(t) => {
                total.source_kills += t.source_kills;
                total.target_kills += t.target_kills;
                total.before_install += t.before_install;
                total.after_install += t.after_install;
                total.answered_again += t.answered_again;
                total.renewals += t.renewals;
                for (k, v) in t.offsets {
                    *total.offsets.entry(k).or_default() += v;
                }
                failed.extend(t.violations.into_iter().map(|v| format!("pair {i}: {v}")));
            }
            Err(e) => failed.push(e),
        }
    }
    eprintln!(
        "crash renewal: seed {seed:#x}: {pairs} pairs, {} SIGKILLs ({} source, {} target; {} before \
         the new certificate was installed, {} after), {} renewals, {} answered again, {} \
         violations, {:.1} s; kill minus install, s: {:?}",
        total.source_kills + total.target_kills,
        total.source_kills,
        total.target_kills,
        total.before_install,
        total.after_install,
        total.renewals,
        total.answered_again,
        failed.len(),
        started.elapsed().as_secs_f64(),
        total.offsets
    );
    assert!(
        failed.is_empty(),
        "seed {seed:#x} (replay with {SEED_VAR}):\n{}",
        failed.join("\n")
    );
    // The floors: one kill per round of every pair, and a renewal completed after each.
    let kills = total.source_kills + total.target_kills;
    assert_floor("SIGKILLs", kills, pairs * rounds);
    assert_floor("renewals after a kill", total.renewals, pairs * rounds);
}

fn serial_of(row: &serde_json::Value) -> String {
    row["certificate_serial"].as_str().unwrap_or("").to_string()
}

fn one_pair(index: u64, mut rng: Rng, rounds: u64) -> Tally {
    let mut t = Tally::default();
    let (mut src, mut tgt) = start_pair_with(
        &format!("crash-renew-{index}"),
        pairing_opts(),
        lab_target(),
    );
    let (st, tt, sid) = paired(&src, &tgt);
    for round in 0..rounds {
        let row = target_row(&src, &st);
        let old = serial_of(&row);
        let Some(renews) = row["certificate_renews"].as_i64() else {
            t.violations
                .push(format!("round {round}: no planned renewal: {row}"));
            break;
        };
        // Aim at the renewal: from 1 s before the planned moment to 2.5 s after it.
        let aim_ms = renews * 1000 - 1_000 + rng.below(3_500) as i64;
        let wait_ms = aim_ms - unix_now() * 1000;
        if wait_ms > 0 {
            std::thread::sleep(Duration::from_millis(wait_ms as u64));
        }
        let killed_at = unix_now();
        let source = rng.below(2) == 0;
        if source {
            src.kill9();
            t.source_kills += 1;
            src.restart();
        } else {
            tgt.kill9();
            t.target_kills += 1;
            tgt.restart();
        }
        let restarted = unix_now();
        if serial_of(&target_row(&src, &st)) == old {
            t.before_install += 1;
        } else {
            t.after_install += 1;
        }
        let renewed = crate::harness::eventually(
            RENEWED_WITHIN,
            &format!("pair {index} round {round}: renewed after the kill"),
            || {
                let row = target_row(&src, &st);
                (row["status"] == "complete"
                    && serial_of(&row) != old
                    && row["last_poll"].as_i64().unwrap_or(0) >= restarted)
                    .then_some(row)
            },
        );
        t.renewals += 1;
        if let Some(at) = renewed["certificate_renewed"].as_i64() {
            *t.offsets.entry((killed_at - at).clamp(-3, 3)).or_default() += 1;
        }
        if renewed["certificate_expires"].as_i64().unwrap_or(0) <= unix_now() {
            t.violations.push(format!(
                "round {round}: the certificate is not valid: {renewed}"
            ));
        }
        if !some_installed_key_works(&src, &tgt, sid) {
            t.violations
                .push(format!("round {round}: no installed key opens the tunnel"));
        }
    }
    let local = systems_row(&src.systems(&st), |s| s["local"] == true);
    let uuid = local["system_uuid"].as_str().unwrap_or("").to_string();
    let sys = target_system_online(&tgt, &uuid);
    if sys["status"] != "connected" {
        t.violations
            .push(format!("the target's systems row is not connected: {sys}"));
    }
    let issued = audit_rows(&tgt, &tt, "certificate renewed", sid).len() as u64;
    if issued != t.renewals {
        t.violations.push(format!(
            "{issued} certificates issued for {} renewals",
            t.renewals
        ));
    }
    t.answered_again = tgt.log().matches("answered again with certificate").count() as u64;
    // Only the installed generation is left once its proof is done.
    let installed = crate::harness::eventually(
        Duration::from_secs(10),
        "the old generation's files removed",
        || {
            let files: Vec<String> = std::fs::read_dir(pairing_dir(&src))
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".pem") && (n.starts_with("key") || n.starts_with("cert")))
                .collect();
            (files.len() <= 2).then_some(files)
        },
    );
    if installed.len() != 2 {
        t.violations.push(format!(
            "the pairing directory holds {installed:?}, not one key and one certificate"
        ));
    }
    t
}
