//! The codec of compressed transfer frames (`transfer::Frame::ZData`): zstd (libzstd
//! through the `zstd` crate, built with only its "fast" block compressor, levels 1 to 3:
//! docs/decisions.md, "Compression of transfer frames"). Each frame's content is one zstd frame of its
//! own, so a frame decodes alone and a resume can start at any frame.
//!
//! The decoder is the target's defence against a hostile source: it decompresses into a
//! buffer of exactly the length the frame claims (at most `transfer::MAX_DATA`, checked
//! before this is called), never allocates, and fails unless the content is exactly that
//! long: a frame that claims more than its bound, or expands past what it claims (a
//! decompression bomb), or yields less, is an error, never a larger buffer.

use std::fmt;

/// The lowest and highest level [`Packer::pack`] takes. Higher levels of zstd use block
/// compressors this build leaves out (they would compress like 3, for more CPU).
pub const MIN_LEVEL: i32 = 1;
pub const MAX_LEVEL: i32 = 3;

/// The `compression` setting: of the daemon (`compression`) or of one target.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Compression {
    /// The chooser picks the level (or none) from what limits the transfer.
    #[default]
    Auto,
    /// Never compress.
    Off,
    /// Always this level (1 to 3).
    Zstd(i32),
}

impl Compression {
    /// Parses `auto`, `off` or `zstd:<level>`.
    pub fn parse(s: &str) -> Result<Compression, String> {
        match s {
            "auto" => Ok(Compression::Auto),
            "off" => Ok(Compression::Off),
            _ => {
                let level = s
                    .strip_prefix("zstd:")
                    .and_then(|l| l.parse::<i32>().ok())
                    .filter(|l| (MIN_LEVEL..=MAX_LEVEL).contains(l));
                level.map(Compression::Zstd).ok_or_else(|| {
                    format!(
                        "{s:?} is not auto, off or zstd:<level> with a level from {MIN_LEVEL} to {MAX_LEVEL}"
                    )
                })
            }
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Compression::Auto => f.write_str("auto"),
            Compression::Off => f.write_str("off"),
            Compression::Zstd(l) => write!(f, "zstd:{l}"),
        }
    }
}

/// Compresses frame contents; one per sending session (its context is reused).
pub struct Packer {
    ctx: zstd::bulk::Compressor<'static>,
    level: i32,
}

impl Packer {
    /// A compressor (libzstd allocates its context, about 1 MB at level 3, once).
    pub fn new() -> std::io::Result<Packer> {
        Ok(Packer {
            ctx: zstd::bulk::Compressor::new(MIN_LEVEL)?,
            level: MIN_LEVEL,
        })
    }

    /// Compresses `raw` at `level` (clamped to [`MIN_LEVEL`]..=[`MAX_LEVEL`]) into `out`
    /// if the result fits in `out`: the caller sizes `out` to the most it will send
    /// compressed (less than `raw`, or compressing does not pay). None: send it raw.
    pub fn pack(&mut self, level: i32, raw: &[u8], out: &mut [u8]) -> Option<usize> {
        let level = level.clamp(MIN_LEVEL, MAX_LEVEL);
        if level != self.level {
            self.ctx.set_compression_level(level).ok()?;
            self.level = level;
        }
        // Too small an `out` is an error from libzstd, which stops at the first block
        // that does not fit.
        self.ctx.compress_to_buffer(raw, out).ok()
    }
}

/// Why a compressed frame did not decode to what it claimed.
#[derive(Debug, PartialEq, Eq)]
pub enum UnpackError {
    /// libzstd refused it: corrupt, or longer than the claimed length.
    Corrupt,
    /// It decoded to fewer bytes than it claimed.
    Short { got: usize, claimed: usize },
}

impl fmt::Display for UnpackError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UnpackError::Corrupt => {
                f.write_str("not a zstd frame of the length it claims (corrupt, or longer)")
            }
            UnpackError::Short { got, claimed } => {
                write!(f, "decodes to {got} bytes, not the {claimed} it claims")
            }
        }
    }
}

impl std::error::Error for UnpackError {}

/// Decompresses frame contents; one per receiving session that uses compression.
pub struct Unpacker {
    ctx: zstd::bulk::Decompressor<'static>,
}

impl Unpacker {
    pub fn new() -> std::io::Result<Unpacker> {
        Ok(Unpacker {
            ctx: zstd::bulk::Decompressor::new()?,
        })
    }

    /// Decodes `packed` into exactly `out` (whose length is the length the frame claims):
    /// libzstd stops with an error rather than write past `out`, whatever the frame's own
    /// header says, and allocates nothing (a one-shot decode needs no window buffer).
    pub fn unpack(&mut self, packed: &[u8], out: &mut [u8]) -> Result<(), UnpackError> {
        let claimed = out.len();
        match self.ctx.decompress_to_buffer(packed, out) {
            Ok(got) if got == claimed => Ok(()),
            Ok(got) => Err(UnpackError::Short { got, claimed }),
            Err(_) => Err(UnpackError::Corrupt),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(len: usize) -> Vec<u8> {
        let words = ["backup ", "replgate ", "block ", "tar ", "0042 ", "\n"];
        let mut out = Vec::with_capacity(len);
        let mut i = 7usize;
        while out.len() < len {
            i = i.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            out.extend_from_slice(words[(i >> 16) % words.len()].as_bytes());
        }
        out.truncate(len);
        out
    }

    fn noise(len: usize) -> Vec<u8> {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn every_level_round_trips_and_compressible_content_shrinks() {
        let raw = text(256 * 1024);
        let mut p = Packer::new().unwrap();
        let mut u = Unpacker::new().unwrap();
        for level in [0, 1, 2, 3, 9] {
            let mut packed = vec![0u8; raw.len() - raw.len() / 32];
            let n = p.pack(level, &raw, &mut packed).expect("text compresses");
            assert!(n < raw.len() / 3, "level {level}: {n} bytes");
            let mut back = vec![0u8; raw.len()];
            u.unpack(&packed[..n], &mut back).unwrap();
            assert_eq!(back, raw);
        }
    }

    #[test]
    fn incompressible_content_does_not_fit_and_goes_raw() {
        let raw = noise(256 * 1024);
        let mut p = Packer::new().unwrap();
        let mut packed = vec![0u8; raw.len() - raw.len() / 32];
        assert_eq!(p.pack(1, &raw, &mut packed), None);
        // The packer is usable again after a refusal.
        let t = text(64 * 1024);
        assert!(p.pack(1, &t, &mut packed).is_some());
    }

    #[test]
    fn a_frame_that_expands_past_its_claim_is_refused_without_a_larger_buffer() {
        // A bomb: 16 MiB of zeros compress to a few hundred bytes.
        let zeros = vec![0u8; 16 * 1024 * 1024];
        let bomb = zstd::bulk::compress(&zeros, 19).unwrap();
        assert!(bomb.len() < 2048, "{}", bomb.len());
        let mut u = Unpacker::new().unwrap();
        let mut out = vec![0u8; 256 * 1024];
        assert_eq!(u.unpack(&bomb, &mut out), Err(UnpackError::Corrupt));
        // Claiming less than it holds fails the same way, claiming more is short.
        let small = text(1000);
        let packed = zstd::bulk::compress(&small, 1).unwrap();
        assert_eq!(
            u.unpack(&packed, &mut out[..999]),
            Err(UnpackError::Corrupt)
        );
        assert_eq!(
            u.unpack(&packed, &mut out[..1001]),
            Err(UnpackError::Short {
                got: 1000,
                claimed: 1001
            })
        );
        u.unpack(&packed, &mut out[..1000]).unwrap();
        assert_eq!(&out[..1000], &small[..]);
        // Garbage is corrupt, and the decoder still works after it.
        assert_eq!(
            u.unpack(&noise(500), &mut out[..1000]),
            Err(UnpackError::Corrupt)
        );
        u.unpack(&packed, &mut out[..1000]).unwrap();
    }
}
