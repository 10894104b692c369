//! `chunking`: the dedup measurements of SPEC 18 (BENCHMARKS.md, "Deduplicated transfers").
//!
//! * `speed MIB`: cuts MIB MiB of incompressible bytes (in memory, so the disk is not
//!   measured) with the protocol's parameters and hashes every chunk (SHA-256), on one
//!   thread; then the same with the whole file's SHA-256 beside it (what a sender does).
//!   Prints MB/s (10^6 bytes per second), best of a few rounds.
//! * `sizes V1 V2 CHANGED [MIN:AVG:MAX ...]`: for each set of chunk sizes, what sending
//!   V2 after V1 would cost: the chunks of V2 that V1 does not hold (sent whole), plus the
//!   chunk lists (18 bytes a chunk) and frame headers, as a multiple of CHANGED (the bytes
//!   that changed) and against SPEC 18's budget (1.25 x changed + 0.5 % of V2); and the
//!   index it leaves (entries per GiB stored).
//!
//! Built with `cargo build --release --example chunking`.

// Benchmark scaffolding: reads its input files with std::fs.
#![allow(clippy::disallowed_methods)]

use std::collections::HashSet;
use std::time::Instant;

use replgate::replication::chunker::{sha256, Chunker, Params};

const MIB: usize = 1 << 20;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("speed") if args.len() == 2 => speed(args[1].parse().unwrap_or(256)),
        Some("sizes") if args.len() >= 4 => sizes(&args[1], &args[2], &args[3], &args[4..]),
        _ => {
            eprintln!("usage: chunking speed MIB | chunking sizes V1 V2 CHANGED [MIN:AVG:MAX ...]");
            std::process::exit(2);
        }
    }
}

fn noise(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut out = vec![0u8; len];
    for c in out.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        c.copy_from_slice(&x.to_le_bytes()[..c.len()]);
    }
    out
}

/// This thread's CPU seconds so far: on a shared machine the figure per core is bytes over
/// the CPU time the work took, whatever else ran meanwhile.
fn cpu_now() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the struct we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// MB/s of `work` over `bytes`, best of `rounds`: (per CPU second, per wall second).
fn rate(bytes: usize, rounds: usize, mut work: impl FnMut()) -> (f64, f64) {
    let mut best = (0f64, 0f64);
    for _ in 0..rounds {
        let (c, t) = (cpu_now(), Instant::now());
        work();
        let cpu = bytes as f64 / (cpu_now() - c) / 1e6;
        let wall = bytes as f64 / t.elapsed().as_secs_f64() / 1e6;
        best = (best.0.max(cpu), best.1.max(wall));
    }
    best
}

fn speed(mib: usize) {
    let data = noise(mib * MIB);
    let params = Params::standard();
    let mut n = 0;
    // Cut and hash each chunk.
    let chunk = rate(data.len(), 5, || {
        let mut c = Chunker::new(params, 0);
        let mut r = &data[..];
        n = 0;
        while c.next_chunk(&mut r, |_| {}).unwrap().is_some() {
            n += 1;
        }
    });
    // The same, and the whole file's SHA-256 beside it (what a sender does).
    let with_file = rate(data.len(), 5, || {
        let mut c = Chunker::new(params, 0);
        let mut r = &data[..];
        let mut whole = ring::digest::Context::new(&ring::digest::SHA256);
        while c.next_chunk(&mut r, |b| whole.update(b)).unwrap().is_some() {}
        let _ = whole.finish();
    });
    // The cut alone and SHA-256 alone, for scale.
    let cut = rate(data.len(), 5, || {
        let mut at = 0;
        while let Some(len) = params.cut(&data[at..], true) {
            at += len;
        }
    });
    let sha = rate(data.len(), 5, || {
        let _ = sha256(&data);
    });
    println!("bytes={}", data.len());
    println!("chunks={n}");
    println!("chunk_and_hash_mbs_per_cpu_s={:.0}", chunk.0);
    println!("chunk_and_hash_mbs_wall={:.0}", chunk.1);
    println!("with_file_sha256_mbs_per_cpu_s={:.0}", with_file.0);
    println!("with_file_sha256_mbs_wall={:.0}", with_file.1);
    println!("cut_alone_mbs_per_cpu_s={:.0}", cut.0);
    println!("sha256_alone_mbs_per_cpu_s={:.0}", sha.0);
}

fn cut_all(data: &[u8], p: Params) -> Vec<(usize, usize, [u8; 32])> {
    let mut c = Chunker::new(p, 0);
    let mut r = data;
    let mut out = Vec::new();
    while let Some(ch) = c.next_chunk(&mut r, |_| {}).unwrap() {
        out.push((ch.offset as usize, ch.len as usize, ch.digest));
    }
    out
}

fn sizes(v1: &str, v2: &str, changed: &str, specs: &[String]) {
    let a = std::fs::read(v1).expect("read V1");
    let b = std::fs::read(v2).expect("read V2");
    let changed: f64 = changed.parse().expect("CHANGED is a number of bytes");
    let budget = 1.25 * changed + 0.005 * b.len() as f64;
    let specs: Vec<String> = if specs.is_empty() {
        [
            "2048:8192:32768",
            "4096:16384:65536",
            "8192:32768:131072",
            "16384:65536:262144",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    } else {
        specs.to_vec()
    };
    println!("| min:avg:max | chunks of v2 | chunks sent | bytes sent | lists | wire estimate | / changed | / budget | index entries per GiB |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for s in &specs {
        let n: Vec<usize> = s
            .split(':')
            .map(|x| x.parse().expect("MIN:AVG:MAX"))
            .collect();
        let p = Params::new(n[0], n[1], n[2]);
        let held: HashSet<[u8; 32]> = cut_all(&a, p).into_iter().map(|c| c.2).collect();
        let list = cut_all(&b, p);
        let lacked: Vec<_> = list.iter().filter(|c| !held.contains(&c.2)).collect();
        let sent: usize = lacked.iter().map(|c| c.1).sum();
        // Lists: 18 bytes an entry (a 16-byte digest, the length), a 17-byte header per
        // frame of 8,192; answers are a bit an entry; data frames carry 9 header bytes
        // per 256 KiB.
        let frames = list.len().div_ceil(8192);
        let lists = list.len() * 18 + frames * 17;
        let wire = sent + lists + list.len() / 8 + sent.div_ceil(256 * 1024) * 9;
        println!(
            "| {s} | {} | {} | {} | {} | {} | {:.2} | {:.2} | {} |",
            list.len(),
            lacked.len(),
            sent,
            lists,
            wire,
            wire as f64 / changed,
            wire as f64 / budget,
            list.len() * 1024 * MIB / b.len()
        );
    }
}
