//! `datagen`: deterministic datasets for bench/wan.sh.
//!
//! * `image-v1 OUT MIB [--seed N]`: MIB MiB of incompressible pseudo-random bytes.
//! * `image-v2 V1 OUT [--seed N]`: the second day of a backup image (SPEC 18): V1 with 2 %
//!   of its bytes rewritten in 200 extents of 4 KiB to 1 MiB, and 200 insertions of 1–100
//!   bytes; prints what changed as `key=value` lines.
//! * `stamp IN OUT ID`: IN with the 8 bytes of ID written at every 4 KiB boundary, so that
//!   every measurement sends bytes the target has never seen (a deduplicating transfer then
//!   measures the link, not its memory), at the cost of 0.2 % of the data.
//!
//! Built with `cargo build --release --example datagen`.

// Benchmark scaffolding: writes its output files with std::fs, not the daemon's fsx.
#![allow(clippy::disallowed_methods)]

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};

const MIB: u64 = 1 << 20;
const EXTENTS: usize = 200;
const INSERTIONS: usize = 200;
const EXTENT_MIN: u64 = 4 << 10;
const EXTENT_MAX: u64 = 1 << 20;
const STAMP_EVERY: usize = 4 << 10;

const USAGE: &str = "\
usage: datagen image-v1 OUT MIB [--seed N]
       datagen image-v2 V1 OUT [--seed N]
       datagen stamp IN OUT ID
";

/// splitmix64: a seedable stream of incompressible bytes, the same on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("image-v1") if args.len() >= 3 => image_v1(&args[1], &args[2], seed(&args[3..], 1)),
        Some("image-v2") if args.len() >= 3 => image_v2(&args[1], &args[2], seed(&args[3..], 2)),
        Some("stamp") if args.len() == 4 => stamp(&args[1], &args[2], &args[3]),
        _ => {
            eprint!("{USAGE}");
            std::process::exit(2);
        }
    };
    if let Err(e) = result {
        eprintln!("datagen: {e}");
        std::process::exit(1);
    }
}

fn seed(rest: &[String], default: u64) -> u64 {
    match rest {
        [flag, n] if flag == "--seed" => n.parse().unwrap_or_else(|_| {
            eprintln!("datagen: --seed takes a number, not {n:?}");
            std::process::exit(2)
        }),
        [] => default,
        _ => {
            eprint!("{USAGE}");
            std::process::exit(2)
        }
    }
}

fn image_v1(out: &str, mib: &str, seed: u64) -> io::Result<()> {
    let mib: u64 = mib
        .parse()
        .map_err(|_| io::Error::other(format!("MIB must be a number, not {mib:?}")))?;
    let mut rng = Rng(seed);
    let mut w = BufWriter::with_capacity(4 * MIB as usize, File::create(out)?);
    let mut buf = vec![0u8; MIB as usize];
    for _ in 0..mib {
        rng.fill(&mut buf);
        w.write_all(&buf)?;
    }
    w.flush()?;
    w.get_ref().sync_all()
}

/// The changes of day two, in V1's coordinates: extents rewritten `(offset, len)` and
/// insertions `(offset, len)`, both sorted, extents never overlapping.
struct Changes {
    extents: Vec<(u64, u64)>,
    insertions: Vec<(u64, u64)>,
}

/// 200 extent lengths between 4 KiB and 1 MiB (log-uniform, then scaled) summing to 2 % of
/// `size`, laid out in order with random gaps; 200 insertion points of 1–100 bytes.
fn plan(size: u64, rng: &mut Rng) -> io::Result<Changes> {
    let target = size / 50;
    if target < EXTENTS as u64 * EXTENT_MIN || target > EXTENTS as u64 * EXTENT_MAX {
        return Err(io::Error::other(format!(
            "a {size}-byte image cannot take 2 % in {EXTENTS} extents of 4 KiB to 1 MiB \
             (use 40 MiB to 10 GiB)"
        )));
    }
    let log_lo = (EXTENT_MIN as f64).ln();
    let log_hi = (EXTENT_MAX as f64).ln();
    let raw: Vec<f64> = (0..EXTENTS)
        .map(|_| (log_lo + (rng.next() as f64 / u64::MAX as f64) * (log_hi - log_lo)).exp())
        .collect();
    let scale = target as f64 / raw.iter().sum::<f64>();
    let mut lens: Vec<u64> = raw
        .iter()
        .map(|r| ((r * scale) as u64).clamp(EXTENT_MIN, EXTENT_MAX))
        .collect();
    // Clamping moved the sum: spread the difference over the extents that have room.
    let mut sum: u64 = lens.iter().sum();
    let mut i = 0;
    while sum != target {
        let l = &mut lens[i % EXTENTS];
        if sum < target && *l < EXTENT_MAX {
            let add = (target - sum).min(EXTENT_MAX - *l);
            *l += add;
            sum += add;
        } else if sum > target && *l > EXTENT_MIN {
            let cut = (sum - target).min(*l - EXTENT_MIN);
            *l -= cut;
            sum -= cut;
        }
        i += 1;
    }
    // Gaps: the untouched bytes, cut at random into EXTENTS + 1 pieces.
    let free = size - target;
    let weights: Vec<u64> = (0..=EXTENTS).map(|_| rng.range(1, 1 << 20)).collect();
    let total: u64 = weights.iter().sum();
    let mut extents = Vec::with_capacity(EXTENTS);
    let mut at = 0;
    for (len, w) in lens.iter().zip(&weights) {
        at += (free as u128 * *w as u128 / total as u128) as u64;
        extents.push((at, *len));
        at += len;
    }
    let mut insertions: Vec<(u64, u64)> = (0..INSERTIONS)
        .map(|_| (rng.range(0, size - 1), rng.range(1, 100)))
        .collect();
    insertions.sort_unstable();
    Ok(Changes {
        extents,
        insertions,
    })
}

fn image_v2(v1: &str, out: &str, seed: u64) -> io::Result<()> {
    let size = std::fs::metadata(v1)?.len();
    let mut rng = Rng(seed);
    let changes = plan(size, &mut rng)?;
    // Every cut point in V1's coordinates, with what happens there.
    enum Edit {
        Insert(u64),
        Rewrite(u64),
    }
    let mut edits: Vec<(u64, Edit)> = changes
        .insertions
        .iter()
        .map(|&(at, len)| (at, Edit::Insert(len)))
        .chain(
            changes
                .extents
                .iter()
                .map(|&(at, len)| (at, Edit::Rewrite(len))),
        )
        .collect();
    edits.sort_by_key(|(at, _)| *at);
    let mut r = BufReader::with_capacity(4 * MIB as usize, File::open(v1)?);
    let mut w = BufWriter::with_capacity(4 * MIB as usize, File::create(out)?);
    let mut pos = 0u64; // how far V1 has been read
    let mut fresh = vec![0u8; EXTENT_MAX as usize];
    for (at, edit) in &edits {
        if *at > pos {
            io::copy(&mut (&mut r).take(at - pos), &mut w)?;
            pos = *at;
        }
        match edit {
            // An insertion inside a rewritten extent lands at its end.
            Edit::Insert(len) => {
                rng.fill(&mut fresh[..*len as usize]);
                w.write_all(&fresh[..*len as usize])?;
            }
            Edit::Rewrite(len) => {
                let n = (at + len - pos) as usize;
                rng.fill(&mut fresh[..n]);
                w.write_all(&fresh[..n])?;
                io::copy(&mut (&mut r).take(n as u64), &mut io::sink())?;
                pos += n as u64;
            }
        }
    }
    io::copy(&mut r, &mut w)?;
    w.flush()?;
    w.get_ref().sync_all()?;
    let rewritten: u64 = changes.extents.iter().map(|e| e.1).sum();
    let inserted: u64 = changes.insertions.iter().map(|e| e.1).sum();
    println!("size_v1={size}");
    println!("size_v2={}", size + inserted);
    println!("extents={EXTENTS}");
    println!("rewritten_bytes={rewritten}");
    println!("insertions={INSERTIONS}");
    println!("inserted_bytes={inserted}");
    println!("changed_bytes={}", rewritten + inserted);
    Ok(())
}

fn stamp(input: &str, out: &str, id: &str) -> io::Result<()> {
    let tag = {
        let mut h = Rng(0);
        for b in id.bytes() {
            h.0 ^= u64::from(b);
            h.next();
        }
        h.next().to_le_bytes()
    };
    let mut r = BufReader::with_capacity(4 * MIB as usize, File::open(input)?);
    let mut w = BufWriter::with_capacity(4 * MIB as usize, File::create(out)?);
    let mut block = vec![0u8; STAMP_EVERY];
    loop {
        let mut n = 0;
        while n < block.len() {
            match r.read(&mut block[n..])? {
                0 => break,
                k => n += k,
            }
        }
        if n == 0 {
            break;
        }
        let k = n.min(tag.len());
        block[..k].copy_from_slice(&tag[..k]);
        w.write_all(&block[..n])?;
    }
    w.flush()?;
    w.get_ref().sync_all()
}
