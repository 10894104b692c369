//! Random bytes and identifiers: the one home for the operating system's CSPRNG (through
//! ring) and the random strings built on it. No I/O beyond the random source. Hex itself
//! is `wire::hex`'s.

use crate::wire::hex;

/// Fills `buf` from the operating system's CSPRNG (through ring).
pub fn fill(buf: &mut [u8]) {
    use ring::rand::SecureRandom;
    // The OS random source failing is not recoverable and not peer-influenced.
    if ring::rand::SystemRandom::new().fill(buf).is_err() {
        panic!("operating system random source failed");
    }
}

/// `n` random bytes as lowercase hex (`2 * n` digits).
pub fn hex_string(n: usize) -> String {
    let mut buf = vec![0u8; n];
    fill(&mut buf);
    hex::encode(&buf)
}

/// A random version-4 UUID in its lowercase hyphenated form.
pub fn uuid_v4() -> String {
    let mut b = [0u8; 16];
    fill(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(&b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// A uniformly distributed number in `[0, 1)`, for jitter.
pub fn unit() -> f64 {
    let mut b = [0u8; 4];
    fill(&mut b);
    f64::from(u32::from_le_bytes(b)) / (f64::from(u32::MAX) + 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_and_uuids_have_their_documented_shapes() {
        assert_eq!(hex::encode(&[0x00, 0xab, 0x7f]), "00ab7f");
        let t = hex_string(16);
        assert_eq!(t.len(), 32);
        assert_ne!(t, hex_string(16));
        let u = uuid_v4();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert!(matches!(&u[19..20], "8" | "9" | "a" | "b"));
        let x = unit();
        assert!((0.0..1.0).contains(&x));
    }
}
