//! Certificates as data: reads serial, subject, validity and the CA flag from DER, computes
//! fingerprints, and converts between PEM and DER. The tls module uses these to read what a
//! peer presented; nothing here signs or verifies a chain.

use std::fmt;

use ring::digest;
use x509_parser::certificate::X509Certificate;
use x509_parser::pem::Pem;
use x509_parser::prelude::FromDer;

use crate::wire::hex;

/// PEM labels accepted for a certificate.
pub(super) const CERT_LABELS: &[&str] = &["CERTIFICATE"];

/// A certificate given as PEM or DER that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertError {
    /// No PEM block with the expected label.
    NoPemBlock { label: &'static str },
    /// A PEM block whose armour or base64 is broken.
    BadPem { reason: String },
    /// The DER inside does not parse as an X.509 certificate.
    BadDer { reason: String },
}

impl fmt::Display for CertError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoPemBlock { label } => write!(f, "no pem block labelled {label}"),
            Self::BadPem { reason } => write!(f, "pem is broken: {reason}"),
            Self::BadDer { reason } => write!(f, "certificate der does not parse: {reason}"),
        }
    }
}

impl std::error::Error for CertError {}

/// SHA-256 of `bytes` as lowercase hex without separators.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(digest::digest(&digest::SHA256, bytes).as_ref())
}

/// Accepts a SHA-256 fingerprint in any case, with or without colons (and surrounding
/// whitespace); returns 64 lowercase hex digits, or `None` for anything else.
pub fn normalize_fingerprint(input: &str) -> Option<String> {
    let digits: String = input.trim().chars().filter(|c| *c != ':').collect();
    hex::decode_array::<32>(&digits).map(|d| hex::encode(&d))
}

/// What the rest of the daemon needs to know about a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// Lowercase hex, see [`cert_serial_hex`].
    pub serial: String,
    /// The first subject CN, if any.
    pub common_name: Option<String>,
    pub not_before: i64,
    pub not_after: i64,
    /// basicConstraints cA=true.
    pub is_ca: bool,
    /// SHA-256 of the DER, lowercase hex.
    pub fingerprint: String,
    /// SHA-256 of the SubjectPublicKeyInfo, lowercase hex: the same value as a CSR's
    /// fingerprint for the same key (`ValidCsr::fingerprint`).
    pub key_fingerprint: String,
}

/// Reads serial, subject CN, validity and CA flag from a DER certificate.
pub fn cert_info(der: &[u8]) -> Result<CertInfo, CertError> {
    let cert = parse_cert_der(der)?;
    let (not_before, not_after) = validity(&cert);
    let common_name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_owned);
    Ok(CertInfo {
        serial: serial_hex(cert.raw_serial()),
        common_name,
        not_before,
        not_after,
        is_ca: is_ca_cert(&cert),
        fingerprint: sha256_hex(der),
        key_fingerprint: sha256_hex(cert.public_key().raw),
    })
}

/// The first `CERTIFICATE` block of `pem` as DER.
pub fn cert_pem_to_der(pem: &str) -> Result<Vec<u8>, CertError> {
    let der = pem_block(pem, CERT_LABELS)?;
    parse_cert_der(&der)?;
    Ok(der)
}

/// Most certificates a bundle (`ca.pem` during a rollover, a target row's trusted CAs)
/// may hold; more is not ours.
pub const MAX_BUNDLE_CERTS: usize = 8;

/// Every `CERTIFICATE` block of `pem` as DER, in order, each checked to parse: a CA
/// bundle (the CA in force, then during a rollover the new CA and its cross-certificate).
/// At least one, at most [`MAX_BUNDLE_CERTS`].
pub fn certs_pem_to_der(pem: &str) -> Result<Vec<Vec<u8>>, CertError> {
    let mut out = Vec::new();
    for block in Pem::iter_from_buffer(pem.as_bytes()) {
        let block = block.map_err(|e| CertError::BadPem {
            reason: e.to_string().to_lowercase(),
        })?;
        if !CERT_LABELS.contains(&block.label.as_str()) {
            continue;
        }
        if out.len() == MAX_BUNDLE_CERTS {
            return Err(CertError::BadPem {
                reason: format!("more than {MAX_BUNDLE_CERTS} certificates"),
            });
        }
        parse_cert_der(&block.contents)?;
        out.push(block.contents);
    }
    if out.is_empty() {
        return Err(CertError::NoPemBlock {
            label: "CERTIFICATE",
        });
    }
    Ok(out)
}

/// A certificate's serial as lowercase hex of its big-endian magnitude without leading
/// zero bytes: the form stored at issue time and looked up by the revocation check.
pub fn cert_serial_hex(der: &[u8]) -> Result<String, CertError> {
    Ok(serial_hex(parse_cert_der(der)?.raw_serial()))
}

/// A certificate's end of validity in unix seconds.
pub fn cert_not_after(der: &[u8]) -> Result<i64, CertError> {
    Ok(validity(&parse_cert_der(der)?).1)
}

pub(super) fn parse_cert_der(der: &[u8]) -> Result<X509Certificate<'_>, CertError> {
    let (rest, cert) = X509Certificate::from_der(der).map_err(|e| CertError::BadDer {
        reason: e.to_string(),
    })?;
    if !rest.is_empty() {
        return Err(CertError::BadDer {
            reason: "trailing bytes after the certificate".to_owned(),
        });
    }
    Ok(cert)
}

pub(super) fn is_ca_cert(cert: &X509Certificate<'_>) -> bool {
    matches!(cert.basic_constraints(), Ok(Some(bc)) if bc.value.ca)
}

pub(super) fn validity(cert: &X509Certificate<'_>) -> (i64, i64) {
    let v = cert.validity();
    (v.not_before.timestamp(), v.not_after.timestamp())
}

pub(super) fn serial_hex(raw: &[u8]) -> String {
    let start = raw
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(raw.len().saturating_sub(1));
    hex::encode(&raw[start..])
}

/// The DER of the first PEM block whose label is one of `labels`.
pub(super) fn pem_block(input: &str, labels: &[&'static str]) -> Result<Vec<u8>, CertError> {
    for block in Pem::iter_from_buffer(input.as_bytes()) {
        let block = block.map_err(|e| CertError::BadPem {
            reason: e.to_string().to_lowercase(),
        })?;
        if labels.contains(&block.label.as_str()) {
            return Ok(block.contents);
        }
    }
    Err(CertError::NoPemBlock {
        label: labels.first().copied().unwrap_or("CERTIFICATE"),
    })
}

/// A certificate's DER as PEM (`CERTIFICATE`), for pinning a presented CA.
pub fn cert_der_to_pem(der: &[u8]) -> String {
    pem_encode("CERTIFICATE", der)
}

/// PEM armour with 64-character base64 lines and LF line ends.
pub(super) fn pem_encode(label: &str, der: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::with_capacity(der.len().div_ceil(3) * 4);
    for chunk in der.chunks(3) {
        let n = (u32::from(chunk[0]) << 16)
            | (u32::from(chunk.get(1).copied().unwrap_or(0)) << 8)
            | u32::from(chunk.get(2).copied().unwrap_or(0));
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 0x3f) as usize]));
            } else {
                b64.push('=');
            }
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        // base64 output is ASCII, so every chunk is valid UTF-8.
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::super::test_support::colon_fingerprint;
    use super::*;

    #[test]
    fn normalize_fingerprint_accepts_case_and_colons_only_for_64_hex_digits() {
        let fp = sha256_hex(b"x");
        let upper_colons = colon_fingerprint(&fp);
        assert_eq!(normalize_fingerprint(&fp), Some(fp.clone()));
        assert_eq!(normalize_fingerprint(&upper_colons), Some(fp.clone()));
        assert_eq!(normalize_fingerprint(&format!(" {fp}\n")), Some(fp.clone()));
        assert_eq!(normalize_fingerprint(&fp[..62]), None);
        assert_eq!(normalize_fingerprint(&format!("{fp}00")), None);
        assert_eq!(normalize_fingerprint(&fp.replace('a', "g")), None);
        assert_eq!(normalize_fingerprint(""), None);
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
