//! The verification code: the one function both sides use to derive the short code the two
//! admins read out to each other before a pairing is accepted.

use ring::digest;

use super::x509::normalize_fingerprint;

/// Domain separation for the verification code hash.
const VERIFICATION_CODE_DOMAIN: &[u8] = b"replgate verification code v1\0";

/// The short code both admins read out before accepting, for example `482-913`: six
/// decimal digits from SHA-256 over a domain tag, the target CA's fingerprint (normalised
/// when it is a valid fingerprint), the CSR's SubjectPublicKeyInfo DER and the request id,
/// each length-prefixed. Both sides call this function.
pub fn verification_code(ca_fingerprint: &str, spki_der: &[u8], request_id: u64) -> String {
    let fingerprint =
        normalize_fingerprint(ca_fingerprint).unwrap_or_else(|| ca_fingerprint.to_owned());
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(VERIFICATION_CODE_DOMAIN);
    for part in [fingerprint.as_bytes(), spki_der] {
        ctx.update(&(part.len() as u64).to_be_bytes());
        ctx.update(part);
    }
    ctx.update(&request_id.to_be_bytes());
    let hash = ctx.finish();
    let mut first = [0u8; 8];
    first.copy_from_slice(&hash.as_ref()[..8]);
    // 2^64 is so much larger than 10^6 that the modulo bias is negligible.
    let n = u64::from_be_bytes(first) % 1_000_000;
    format!("{:03}-{:03}", n / 1_000, n % 1_000)
}

#[cfg(test)]
mod tests {
    use super::super::test_support::colon_fingerprint;
    use super::super::x509::sha256_hex;
    use super::*;

    #[test]
    fn verification_code_is_deterministic_and_depends_on_every_input() {
        let fp = sha256_hex(b"ca");
        let spki = b"spki bytes".as_slice();
        let code = verification_code(&fp, spki, 17);
        assert_eq!(code, verification_code(&fp, spki, 17));
        assert_eq!(code.len(), 7);
        assert!(code.chars().enumerate().all(|(i, c)| if i == 3 {
            c == '-'
        } else {
            c.is_ascii_digit()
        }));
        assert_ne!(code, verification_code(&sha256_hex(b"other ca"), spki, 17));
        assert_ne!(code, verification_code(&fp, b"other spki", 17));
        assert_ne!(code, verification_code(&fp, spki, 18));
        // Both spellings of the same fingerprint give the same code.
        assert_eq!(code, verification_code(&colon_fingerprint(&fp), spki, 17));
    }
}
