//! The checks of the coverage-guided fuzz targets, one file per target. Each cargo-fuzz
//! target (`fuzz/fuzz_targets/<name>.rs`, nightly) includes its file by path; this suite
//! runs the same checks on the stable toolchain over the committed inputs (the seeds in
//! `fuzz/seeds/<name>/`, every input that once failed in `fuzz/regressions/<name>/`, and
//! seeded mutants of both; and, replayed as they are, the minimized corpus of the last long
//! run, packed in `fuzz/minimized/<name>.corpus`), so a change that breaks a property
//! fails `cargo test`, not only a fuzzing run. `REPLGATE_FUZZ_CORPUS=1` adds a local run's
//! `fuzz/corpus/<name>/`.
//! docs/testing.md, "Coverage-guided fuzzing"; docs/decisions.md says why CI does not run
//! libFuzzer itself.

pub mod api_bodies;
pub mod backup_names;
pub mod chunked;
pub mod config;
pub mod csr;
pub mod http_head;
pub mod pairing_tokens;
pub mod route_path;
pub mod spool_paths;
pub mod transfer_frames;
pub mod tunnel_requests;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::fuzz::mutate_bytes;
use crate::rng::{count_from_env, seed_from_env, Rng};

type Check = fn(&[u8]);

/// Every target, with its check and how many mutants of each committed input a run of
/// the suite tries (`api_bodies` goes through the router and a database, so fewer).
const TARGETS: &[(&str, Check, u64)] = &[
    ("api_bodies", api_bodies::run, 20),
    ("backup_names", backup_names::run, 2000),
    ("chunked", chunked::run, 2000),
    ("config", config::run, 500),
    ("csr", csr::run, 300),
    ("http_head", http_head::run, 2000),
    ("pairing_tokens", pairing_tokens::run, 2000),
    ("route_path", route_path::run, 2000),
    ("spool_paths", spool_paths::run, 2000),
    ("transfer_frames", transfer_frames::run, 2000),
    ("tunnel_requests", tunnel_requests::run, 60),
];

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// The files directly in `dir` (none when it does not exist), sorted.
fn inputs(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p, bytes)
        })
        .collect()
}

/// The records of a packed corpus (`fuzz/pack.py`: a 4-byte big-endian length, then the
/// bytes), none when the file does not exist.
fn packed(file: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let Ok(data) = std::fs::read(file) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut rest = &data[..];
    while !rest.is_empty() {
        let at = out.len();
        let (len, tail) = rest
            .split_first_chunk::<4>()
            .unwrap_or_else(|| panic!("{}: record {at} is cut", file.display()));
        let len = u32::from_be_bytes(*len) as usize;
        assert!(tail.len() >= len, "{}: record {at} is cut", file.display());
        out.push((file.join(format!("#{at}")), tail[..len].to_vec()));
        rest = &tail[len..];
    }
    out
}

/// Runs `check` on `input`; the panic's message if a property failed.
fn failure(check: Check, input: &[u8]) -> Option<String> {
    let outcome = catch_unwind(AssertUnwindSafe(|| check(input)));
    let payload = outcome.err()?;
    Some(
        payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "a panic".into()),
    )
}

/// Removes the api_bodies world's directory when the test ends, also on failure.
struct RemoveWorld;

impl Drop for RemoveWorld {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(api_bodies::world_dir());
    }
}

#[test]
fn every_fuzz_target_has_a_check_and_passes_its_seeds_regressions_and_their_mutants() {
    let _cleanup = RemoveWorld;
    // The targets fuzz/Cargo.toml builds are exactly the ones checked here.
    let manifest = std::fs::read_to_string(fuzz_dir().join("Cargo.toml")).unwrap();
    let mut built: Vec<&str> = manifest
        .split("[[bin]]")
        .skip(1)
        .filter_map(|bin| {
            let line = bin.lines().find(|l| l.starts_with("name = "))?;
            Some(line.trim_start_matches("name = ").trim_matches('"'))
        })
        .collect();
    built.sort_unstable();
    let checked: Vec<&str> = TARGETS.iter().map(|(name, _, _)| *name).collect();
    assert_eq!(
        built, checked,
        "fuzz/Cargo.toml's targets and TARGETS differ"
    );

    let seed = seed_from_env("REPLGATE_FUZZ_SEED", 0x5eed_f022_0000_0001);
    let scale = count_from_env("REPLGATE_FUZZ_SCALE", 1);
    let with_corpus = std::env::var_os("REPLGATE_FUZZ_CORPUS").is_some();
    let mut rng = Rng::new(seed);
    let mut problems = Vec::new();
    for (name, check, mutants) in TARGETS {
        let started = Instant::now();
        let seeds = inputs(&fuzz_dir().join("seeds").join(name));
        assert!(!seeds.is_empty(), "{name}: no seeds in fuzz/seeds/{name}/");
        let mut committed = seeds;
        committed.extend(inputs(&fuzz_dir().join("regressions").join(name)));
        let mut corpus = packed(&fuzz_dir().join("minimized").join(format!("{name}.corpus")));
        if with_corpus {
            corpus.extend(inputs(&fuzz_dir().join("corpus").join(name)));
        }
        let mut runs = 0u64;
        for (i, (path, bytes)) in committed.iter().chain(&corpus).enumerate() {
            runs += 1;
            if let Some(why) = failure(*check, bytes) {
                problems.push(format!("{name}: {}: {why}", path.display()));
            }
            // A local corpus is replayed as it is; the committed inputs are also mutated.
            let mutants = if i < committed.len() {
                mutants * scale
            } else {
                0
            };
            for _ in 0..mutants {
                let mut input = bytes.clone();
                for _ in 0..=rng.below(4) {
                    mutate_bytes(&mut rng, &mut input);
                }
                runs += 1;
                if let Some(why) = failure(*check, &input) {
                    problems.push(format!(
                        "{name}: a mutant of {}: {why}; input {:?}",
                        path.display(),
                        String::from_utf8_lossy(&input)
                    ));
                }
            }
        }
        eprintln!(
            "fuzz check {name}: {} committed inputs, {} corpus inputs, {runs} runs in {:.1} s",
            committed.len(),
            corpus.len(),
            started.elapsed().as_secs_f64()
        );
    }
    assert!(
        problems.is_empty(),
        "seed {seed:#x} (REPLGATE_FUZZ_SEED replays it):\n{}",
        problems[..problems.len().min(10)].join("\n")
    );
}
