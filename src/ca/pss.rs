//! RSASSA-PSS verification (RFC 8017, 8.1.2 and 9.1.2) for the salt lengths ring does not
//! take: ring verifies PSS only with a salt as long as the hash, while openssl signs with
//! the longest salt that fits unless told otherwise. Only ever used on public data (a CSR's
//! self-signature), so a plain big-number exponentiation is enough. Parses nothing.

use ring::digest::{self, Algorithm};
use x509_parser::num_bigint::BigUint;

/// What the signature's parameters say.
#[derive(Clone, Copy, Debug)]
pub(super) struct PssParams {
    pub hash: &'static Algorithm,
    pub mgf1_hash: &'static Algorithm,
    pub salt_len: usize,
}

/// Whether `signature` is a valid RSASSA-PSS signature of `message` under the RSA public
/// key (`modulus`, `exponent`, big-endian, leading zeros allowed) with `params`.
pub(super) fn verify(
    modulus: &[u8],
    exponent: &[u8],
    params: PssParams,
    message: &[u8],
    signature: &[u8],
) -> bool {
    let n = BigUint::from_bytes_be(modulus);
    let e = BigUint::from_bytes_be(exponent);
    let mod_bits = n.bits();
    // The same bounds ring applies: an odd exponent of at least 3, a modulus the key rules
    // accept (the caller checked 2048..=8192 bits already; this keeps the function safe
    // on its own).
    if !(2_048..=8_192).contains(&mod_bits) || e.bits() < 2 || !e.bit(0) {
        return false;
    }
    let k = mod_bits.div_ceil(8) as usize;
    // RSAVP1: the signature is exactly k bytes and a number below n.
    if signature.len() != k {
        return false;
    }
    let s = BigUint::from_bytes_be(signature);
    if s >= n {
        return false;
    }
    let m = s.modpow(&e, &n);
    // EMSA-PSS-VERIFY with emBits = modBits - 1.
    let em_bits = mod_bits - 1;
    if m.bits() > em_bits {
        return false;
    }
    let em_len = em_bits.div_ceil(8) as usize;
    let mut em = m.to_bytes_be();
    if em.len() < em_len {
        let mut padded = vec![0u8; em_len - em.len()];
        padded.extend_from_slice(&em);
        em = padded;
    }
    emsa_pss_verify(message, &em, em_bits, params)
}

/// EMSA-PSS-VERIFY (RFC 8017, 9.1.2) of an encoded message `em` of `em_bits` bits.
fn emsa_pss_verify(message: &[u8], em: &[u8], em_bits: u64, params: PssParams) -> bool {
    let h_len = params.hash.output_len();
    let s_len = params.salt_len;
    let em_len = em.len();
    // Steps 3 and 4: room for hash, salt and the two fixed bytes; the trailer 0xbc.
    if em_len < h_len.saturating_add(s_len).saturating_add(2) || em.last() != Some(&0xbc) {
        return false;
    }
    // Step 5: maskedDB || H || 0xbc.
    let db_len = em_len - h_len - 1;
    let (masked_db, rest) = em.split_at(db_len);
    let h = &rest[..h_len];
    // Step 6: the bits above emBits in the first byte are zero.
    let unused_bits = (8 * em_len as u64 - em_bits) as u32;
    let top_mask = 0xffu8.checked_shr(unused_bits).unwrap_or(0);
    if masked_db[0] & !top_mask != 0 {
        return false;
    }
    // Steps 7 to 9: DB = maskedDB xor MGF1(H), with the unused bits cleared again.
    let mut db = mgf1(params.mgf1_hash, h, db_len);
    for (d, m) in db.iter_mut().zip(masked_db) {
        *d ^= m;
    }
    db[0] &= top_mask;
    // Step 10: DB = PS (zeros) || 0x01 || salt.
    let ps_len = em_len - h_len - s_len - 2;
    if db[..ps_len].iter().any(|b| *b != 0) || db[ps_len] != 0x01 {
        return false;
    }
    let salt = &db[db_len - s_len..];
    // Steps 12 to 14: H == Hash(0x00 * 8 || Hash(M) || salt).
    let m_hash = digest::digest(params.hash, message);
    let mut ctx = digest::Context::new(params.hash);
    ctx.update(&[0u8; 8]);
    ctx.update(m_hash.as_ref());
    ctx.update(salt);
    ctx.finish().as_ref() == h
}

/// MGF1 (RFC 8017, B.2.1): `len` bytes of Hash(seed || counter) blocks.
fn mgf1(hash: &'static Algorithm, seed: &[u8], len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + hash.output_len());
    let mut counter: u32 = 0;
    while out.len() < len {
        let mut ctx = digest::Context::new(hash);
        ctx.update(seed);
        ctx.update(&counter.to_be_bytes());
        out.extend_from_slice(ctx.finish().as_ref());
        counter = counter.wrapping_add(1);
    }
    out.truncate(len);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// MGF1-SHA-256 of "bar", 50 bytes: the known answer used by other implementations'
    /// test suites (Python's hashlib gives the same).
    #[test]
    fn mgf1_matches_a_known_answer() {
        let out = mgf1(&digest::SHA256, b"bar", 50);
        let hex = crate::wire::hex::encode(&out);
        assert_eq!(
            hex,
            "382576a7841021cc28fc4c0948753fb8312090cea942ea4c4e735d10dc724b155f9f6069f289d61daca0cb814502ef04eae1"
        );
    }

    #[test]
    fn an_encoding_without_room_or_trailer_is_refused_without_panicking() {
        let params = PssParams {
            hash: &digest::SHA256,
            mgf1_hash: &digest::SHA256,
            salt_len: 32,
        };
        for em in [vec![], vec![0xbc], vec![0u8; 65], vec![0xff; 256]] {
            let bits = (em.len() as u64 * 8).saturating_sub(1);
            assert!(!emsa_pss_verify(b"m", &em, bits, params));
        }
    }
}
