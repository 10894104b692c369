//! `codecs`: SPEC 17's codec choice, measured. Compresses a file in the transfer's frame
//! size (256 KiB, each frame on its own, as `ZData` frames go) with libzstd (the `zstd`
//! crate, what the daemon ships) at levels 1 and 3, with `ruzstd` (pure Rust zstd) at its
//! fastest level, and with `lz4_flex` (pure Rust LZ4), then decompresses every frame and
//! checks it. Prints the ratio (compressed / original) and MB/s (10^6 bytes) per
//! CPU-second of this thread, best of three rounds, so a loaded machine changes the
//! figures less than wall time would.
//!
//! `cargo build --release --example codecs && target/release/examples/codecs FILE [MIB]`
//! (BENCHMARKS.md, "Codecs"; the first MIB MiB of FILE, 64 by default).

// Benchmark scaffolding: reads its input file with std::fs.
#![allow(clippy::disallowed_methods)]

use std::io::Read;
use std::time::Duration;

const FRAME: usize = 256 * 1024;
const MIB: usize = 1 << 20;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(path) = args.first() else {
        eprintln!("usage: codecs FILE [MIB]");
        std::process::exit(2);
    };
    let mib: usize = args.get(1).and_then(|m| m.parse().ok()).unwrap_or(64);
    let mut data = Vec::new();
    let read =
        std::fs::File::open(path).and_then(|f| f.take((mib * MIB) as u64).read_to_end(&mut data));
    if let Err(e) = read {
        eprintln!("codecs: read {path}: {e}");
        std::process::exit(1);
    }
    println!(
        "{path}: {} bytes in {} frames of {FRAME}",
        data.len(),
        data.len().div_ceil(FRAME)
    );
    println!("| codec | ratio | compress MB/s per CPU-s | decompress MB/s per CPU-s |");
    println!("|---|---|---|---|");
    for codec in CODECS {
        let (ratio, c, d) = measure(codec, &data);
        println!("| {} | {ratio:.3} | {c:.0} | {d:.0} |", codec.name);
    }
}

struct Codec {
    name: &'static str,
    compress: fn(&[u8]) -> Vec<u8>,
    decompress: fn(&[u8]) -> Vec<u8>,
}

const CODECS: &[Codec] = &[
    Codec {
        name: "libzstd 1 (zstd crate, shipped)",
        compress: |b| zstd::bulk::compress(b, 1).unwrap_or_default(),
        decompress: zstd_decompress,
    },
    Codec {
        name: "libzstd 3",
        compress: |b| zstd::bulk::compress(b, 3).unwrap_or_default(),
        decompress: zstd_decompress,
    },
    Codec {
        name: "ruzstd fastest (pure Rust)",
        compress: |b| {
            ruzstd::encoding::compress_to_vec(b, ruzstd::encoding::CompressionLevel::Fastest)
        },
        decompress: |c| {
            let mut out = Vec::with_capacity(FRAME);
            let mut src = c;
            match ruzstd::decoding::StreamingDecoder::new(&mut src) {
                Ok(mut d) => {
                    let _ = d.read_to_end(&mut out);
                }
                Err(_) => out.clear(),
            }
            out
        },
    },
    Codec {
        name: "lz4_flex (pure Rust LZ4)",
        compress: lz4_flex::block::compress_prepend_size,
        decompress: |c| lz4_flex::block::decompress_size_prepended(c).unwrap_or_default(),
    },
];

fn zstd_decompress(c: &[u8]) -> Vec<u8> {
    zstd::bulk::decompress(c, FRAME).unwrap_or_default()
}

/// Ratio, compress and decompress MB/s per CPU-second (best of three rounds).
fn measure(codec: &Codec, data: &[u8]) -> (f64, f64, f64) {
    let mb = data.len() as f64 / 1e6;
    let (mut best_c, mut best_d, mut ratio) = (0f64, 0f64, 0f64);
    for _ in 0..3 {
        let t = cpu();
        let frames: Vec<Vec<u8>> = data.chunks(FRAME).map(codec.compress).collect();
        let c = cpu().saturating_sub(t).as_secs_f64();
        let t = cpu();
        for (frame, original) in frames.iter().zip(data.chunks(FRAME)) {
            let back = (codec.decompress)(frame);
            assert!(
                back == original,
                "{}: a frame did not come back",
                codec.name
            );
        }
        let d = cpu().saturating_sub(t).as_secs_f64();
        ratio = frames.iter().map(Vec::len).sum::<usize>() as f64 / data.len() as f64;
        best_c = best_c.max(mb / c.max(1e-9));
        best_d = best_d.max(mb / d.max(1e-9));
    }
    (ratio, best_c, best_d)
}

/// This thread's CPU time.
fn cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the kernel to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(
        u64::try_from(ts.tv_sec).unwrap_or(0),
        u32::try_from(ts.tv_nsec).unwrap_or(0),
    )
}
