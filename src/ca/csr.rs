//! CSRs, target side: parses a source's certificate signing request, applies the key rules
//! (P-256, P-384, Ed25519, RSA of 2048 to 8192 bits; SHA-256 or stronger, RSA also with
//! PSS of any salt length) and verifies its self-signature. Issues nothing.

use std::fmt;

use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::error::X509Error;
use x509_parser::oid_registry::{
    Oid, OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_NIST_HASH_SHA256,
    OID_NIST_HASH_SHA384, OID_NIST_HASH_SHA512, OID_PKCS1_RSAENCRYPTION, OID_PKCS1_RSASSAPSS,
    OID_PKCS1_SHA256WITHRSA, OID_PKCS1_SHA384WITHRSA, OID_PKCS1_SHA512WITHRSA,
    OID_SIG_ECDSA_WITH_SHA256, OID_SIG_ECDSA_WITH_SHA384, OID_SIG_ED25519,
};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;
use x509_parser::signature_algorithm::RsaSsaPssParams;
use x509_parser::x509::SubjectPublicKeyInfo;

use super::pss::{self, PssParams};
use super::x509::{pem_block, sha256_hex};

/// Smallest RSA modulus accepted in a CSR.
const MIN_RSA_BITS: u32 = 2_048;
/// Largest RSA modulus accepted in a CSR (ring verifies up to 8192 bits).
const MAX_RSA_BITS: u32 = 8_192;

/// id-mgf1 (RFC 8017, appendix B.2.1), the one mask generation function.
const ID_MGF1: &str = "1.2.840.113549.1.1.8";

/// PEM labels accepted for a CSR.
pub(super) const CSR_LABELS: &[&str] = &["CERTIFICATE REQUEST", "NEW CERTIFICATE REQUEST"];

/// Why a CSR was refused. Each variant maps to an answer the requesting admin can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CsrError {
    /// Not a PEM certificate request, or the DER inside does not parse.
    Malformed { reason: String },
    /// The CSR is not signed by the key it carries.
    BadSignature,
    /// A key type other than P-256, P-384, Ed25519 or RSA.
    UnsupportedKey { algorithm: String },
    /// An RSA key below 2048 bits.
    WeakRsa { bits: u32 },
    /// An RSA key above 8192 bits.
    RsaTooLarge { bits: u32 },
    /// The CSR is signed with an algorithm we do not accept (for example SHA-1).
    UnsupportedSignatureAlgorithm { oid: String },
}

impl fmt::Display for CsrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Malformed { reason } => write!(f, "csr is malformed: {reason}"),
            Self::BadSignature => write!(f, "csr signature does not verify with its own key"),
            Self::UnsupportedKey { algorithm } => write!(
                f,
                "csr key type {algorithm} is not supported \
                 (use ecdsa p-256, ecdsa p-384, ed25519 or rsa of at least {MIN_RSA_BITS} bits)"
            ),
            Self::WeakRsa { bits } => {
                write!(
                    f,
                    "rsa key of {bits} bits is below the {MIN_RSA_BITS} minimum"
                )
            }
            Self::RsaTooLarge { bits } => {
                write!(
                    f,
                    "rsa key of {bits} bits is above the {MAX_RSA_BITS} maximum"
                )
            }
            Self::UnsupportedSignatureAlgorithm { oid } => write!(
                f,
                "csr signature algorithm {oid} is not supported (use sha-256 or stronger)"
            ),
        }
    }
}

impl std::error::Error for CsrError {}

/// The kind of public key a CSR carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    EcdsaP256,
    EcdsaP384,
    Ed25519,
    Rsa { bits: u32 },
}

impl fmt::Display for KeyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::EcdsaP256 => write!(f, "ecdsa-p256"),
            Self::EcdsaP384 => write!(f, "ecdsa-p384"),
            Self::Ed25519 => write!(f, "ed25519"),
            Self::Rsa { bits } => write!(f, "rsa-{bits}"),
        }
    }
}

/// A CSR whose self-signature verified and whose key is of an accepted kind.
/// Invariant: `fingerprint == sha256_hex(spki_der)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidCsr {
    spki_der: Vec<u8>,
    key_kind: KeyKind,
    fingerprint: String,
}

impl ValidCsr {
    /// The requested public key as DER SubjectPublicKeyInfo.
    pub fn spki_der(&self) -> &[u8] {
        &self.spki_der
    }

    pub fn key_kind(&self) -> KeyKind {
        self.key_kind
    }

    /// SHA-256 of the SubjectPublicKeyInfo DER, lowercase hex: the request's
    /// `csr_fingerprint` and its idempotency key together with the system_uuid.
    pub fn fingerprint(&self) -> String {
        self.fingerprint.clone()
    }
}

/// Parses a PEM CSR, checks its key kind and verifies its self-signature. The key kind is
/// checked first, so a 1024-bit RSA key is reported as [`CsrError::WeakRsa`] rather than as a
/// signature failure (ring refuses to verify RSA below 2048 bits).
pub fn parse_csr(pem: &str) -> Result<ValidCsr, CsrError> {
    let der = pem_block(pem, CSR_LABELS).map_err(|e| CsrError::Malformed {
        reason: e.to_string(),
    })?;
    let (rest, csr) =
        X509CertificationRequest::from_der(&der).map_err(|e| CsrError::Malformed {
            reason: format!("der does not parse: {e}"),
        })?;
    if !rest.is_empty() {
        return Err(CsrError::Malformed {
            reason: "trailing bytes after the request".to_owned(),
        });
    }
    let spki = &csr.certification_request_info.subject_pki;
    let key_kind = classify_key(spki)?;

    let sig_oid = &csr.signature_algorithm.algorithm;
    let accepted_signature = [
        OID_PKCS1_SHA256WITHRSA,
        OID_PKCS1_SHA384WITHRSA,
        OID_PKCS1_SHA512WITHRSA,
        OID_PKCS1_RSASSAPSS,
        OID_SIG_ECDSA_WITH_SHA256,
        OID_SIG_ECDSA_WITH_SHA384,
        OID_SIG_ED25519,
    ]
    .contains(sig_oid);
    if !accepted_signature {
        return Err(CsrError::UnsupportedSignatureAlgorithm {
            oid: sig_oid.to_id_string(),
        });
    }
    let pss = if *sig_oid == OID_PKCS1_RSASSAPSS {
        Some(pss_params(&csr)?)
    } else {
        None
    };
    match pss {
        // ring verifies PSS only with a salt as long as the hash and MGF1 over that hash.
        Some(params)
            if params.salt_len != params.hash.output_len() || params.mgf1_hash != params.hash =>
        {
            verify_pss(spki, params, &csr)?
        }
        _ => csr.verify_signature().map_err(|e| match e {
            X509Error::SignatureUnsupportedAlgorithm => CsrError::UnsupportedSignatureAlgorithm {
                oid: sig_oid.to_id_string(),
            },
            _ => CsrError::BadSignature,
        })?,
    }

    let spki_der = spki.raw.to_vec();
    Ok(ValidCsr {
        fingerprint: sha256_hex(&spki_der),
        spki_der,
        key_kind,
    })
}

/// The RSASSA-PSS parameters of a CSR's signature (RFC 4055): SHA-256 or stronger for
/// the hash and for MGF1, trailer 1, any salt length.
fn pss_params(csr: &X509CertificationRequest<'_>) -> Result<PssParams, CsrError> {
    let unsupported = |what: String| CsrError::UnsupportedSignatureAlgorithm {
        oid: format!("{} with {what}", OID_PKCS1_RSASSAPSS.to_id_string()),
    };
    let malformed = || CsrError::Malformed {
        reason: "rsassa-pss parameters do not parse".to_owned(),
    };
    let any = csr
        .signature_algorithm
        .parameters
        .as_ref()
        .ok_or_else(malformed)?;
    let params = RsaSsaPssParams::try_from(any).map_err(|_| malformed())?;
    let hash_oid = params.hash_algorithm_oid();
    let hash = strong_hash(hash_oid)
        .ok_or_else(|| unsupported(format!("hash {}", hash_oid.to_id_string())))?;
    let mgf = params.mask_gen_algorithm().map_err(|_| malformed())?;
    if mgf.mgf.to_id_string() != ID_MGF1 {
        return Err(unsupported(format!("mask {}", mgf.mgf.to_id_string())));
    }
    let mgf1_hash = strong_hash(&mgf.hash)
        .ok_or_else(|| unsupported(format!("mgf1 hash {}", mgf.hash.to_id_string())))?;
    if params.trailer_field() != 1 {
        return Err(malformed());
    }
    Ok(PssParams {
        hash,
        mgf1_hash,
        salt_len: usize::try_from(params.salt_length()).map_err(|_| malformed())?,
    })
}

fn strong_hash(oid: &Oid<'_>) -> Option<&'static ring::digest::Algorithm> {
    if *oid == OID_NIST_HASH_SHA256 {
        Some(&ring::digest::SHA256)
    } else if *oid == OID_NIST_HASH_SHA384 {
        Some(&ring::digest::SHA384)
    } else if *oid == OID_NIST_HASH_SHA512 {
        Some(&ring::digest::SHA512)
    } else {
        None
    }
}

/// Verifies a PSS self-signature that ring cannot (see [`pss`]).
fn verify_pss(
    spki: &SubjectPublicKeyInfo<'_>,
    params: PssParams,
    csr: &X509CertificationRequest<'_>,
) -> Result<(), CsrError> {
    let Ok(PublicKey::RSA(rsa)) = spki.parsed() else {
        return Err(CsrError::BadSignature);
    };
    let signed = csr.certification_request_info.raw;
    let signature = &csr.signature_value.data;
    if pss::verify(rsa.modulus, rsa.exponent, params, signed, signature) {
        Ok(())
    } else {
        Err(CsrError::BadSignature)
    }
}

fn classify_key(spki: &SubjectPublicKeyInfo<'_>) -> Result<KeyKind, CsrError> {
    let alg = &spki.algorithm.algorithm;
    let key_bits: &[u8] = &spki.subject_public_key.data;
    if *alg == OID_PKCS1_RSAENCRYPTION {
        let Ok(PublicKey::RSA(rsa)) = spki.parsed() else {
            return Err(CsrError::Malformed {
                reason: "rsa public key does not parse".to_owned(),
            });
        };
        let bits = rsa_modulus_bits(rsa.modulus);
        if bits < MIN_RSA_BITS {
            return Err(CsrError::WeakRsa { bits });
        }
        if bits > MAX_RSA_BITS {
            return Err(CsrError::RsaTooLarge { bits });
        }
        Ok(KeyKind::Rsa { bits })
    } else if *alg == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok());
        let (kind, point_len) = match curve {
            Some(c) if c == OID_EC_P256 => (KeyKind::EcdsaP256, 65),
            Some(c) if c == OID_NIST_EC_P384 => (KeyKind::EcdsaP384, 97),
            Some(c) => {
                return Err(CsrError::UnsupportedKey {
                    algorithm: format!("ecdsa on curve {}", c.to_id_string()),
                })
            }
            None => {
                return Err(CsrError::UnsupportedKey {
                    algorithm: "ecdsa without a named curve".to_owned(),
                })
            }
        };
        // Uncompressed points only: that is what TLS stacks (and ring) accept.
        if key_bits.len() != point_len || key_bits.first() != Some(&0x04) {
            return Err(CsrError::UnsupportedKey {
                algorithm: format!("{kind} with a compressed or invalid point"),
            });
        }
        Ok(kind)
    } else if *alg == OID_SIG_ED25519 {
        if spki.algorithm.parameters.is_some() || key_bits.len() != 32 {
            return Err(CsrError::Malformed {
                reason: "ed25519 public key is not 32 bytes without parameters".to_owned(),
            });
        }
        Ok(KeyKind::Ed25519)
    } else if *alg == OID_PKCS1_RSASSAPSS {
        // webpki (rustls) authenticates RSA clients only with rsaEncryption keys, so a
        // certificate for a PSS-only key would never pass our own tunnel's handshake.
        Err(CsrError::UnsupportedKey {
            algorithm: "rsa-pss (a key restricted to pss, which tls client authentication \
                        cannot use; make an rsaEncryption key: signing the csr with pss is fine)"
                .to_owned(),
        })
    } else {
        Err(CsrError::UnsupportedKey {
            algorithm: alg.to_id_string(),
        })
    }
}

/// Bit length of an RSA modulus given as DER integer content (possibly with leading zeros).
fn rsa_modulus_bits(modulus: &[u8]) -> u32 {
    let significant: &[u8] = match modulus.iter().position(|b| *b != 0) {
        Some(i) => &modulus[i..],
        None => &[],
    };
    match significant.first() {
        None => 0,
        Some(first) => {
            let bits = (significant.len() - 1) * 8 + (8 - first.leading_zeros() as usize);
            u32::try_from(bits).unwrap_or(u32::MAX)
        }
    }
}

#[cfg(test)]
mod tests {
    use rcgen::{PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384, PKCS_ED25519};
    use x509_parser::certificate::X509Certificate;

    use super::super::generate_client_key_and_csr;
    use super::super::test_support::{
        days, der_of, greedy_csr, now, test_ca, RSA_1024_CSR, RSA_2048_CSR, RSA_2048_PSS_CSR,
        RSA_2048_PSS_SALTMAX_CSR, RSA_3072_PSS_SHA512_SALT0_CSR, RSA_PSS_KEY_CSR, UUID,
    };
    use super::super::x509::pem_encode;
    use super::*;

    #[test]
    fn p384_ed25519_and_rsa_2048_csrs_are_accepted_and_signed_with_their_exact_key() {
        let ca = test_ca("replgate ca");
        let csrs = vec![
            (greedy_csr(&PKCS_ECDSA_P384_SHA384).1, KeyKind::EcdsaP384),
            (greedy_csr(&PKCS_ED25519).1, KeyKind::Ed25519),
            (greedy_csr(&PKCS_ECDSA_P256_SHA256).1, KeyKind::EcdsaP256),
            (RSA_2048_CSR.to_owned(), KeyKind::Rsa { bits: 2048 }),
            (RSA_2048_PSS_CSR.to_owned(), KeyKind::Rsa { bits: 2048 }),
            // openssl's default PSS salt (222 bytes) was refused as "does not verify".
            (
                RSA_2048_PSS_SALTMAX_CSR.to_owned(),
                KeyKind::Rsa { bits: 2048 },
            ),
            (
                RSA_3072_PSS_SHA512_SALT0_CSR.to_owned(),
                KeyKind::Rsa { bits: 3072 },
            ),
        ];
        for (pem, kind) in csrs {
            let csr = parse_csr(&pem).unwrap_or_else(|e| panic!("{kind}: {e}"));
            assert_eq!(csr.key_kind(), kind);
            assert_eq!(csr.fingerprint(), sha256_hex(csr.spki_der()));
            let issued = ca.sign_client(&csr, UUID, days(30), now()).unwrap();
            let der = der_of(&issued.cert_pem);
            let (_, cert) = X509Certificate::from_der(&der).unwrap();
            assert_eq!(cert.public_key().raw, csr.spki_der(), "{kind}");
        }
    }

    fn parsed(pem: &str) -> (Vec<u8>, PssParams) {
        let der = pem_block(pem, CSR_LABELS).unwrap();
        let (_, csr) = X509CertificationRequest::from_der(&der).unwrap();
        let params = pss_params(&csr).unwrap();
        (der, params)
    }

    /// The verifier of our own and ring's agree where both apply (salt = hash length), and
    /// ours refuses what is not signed right, for every PSS fixture.
    #[test]
    fn the_pss_verifier_agrees_with_ring_and_refuses_tampering() {
        for pem in [
            RSA_2048_PSS_CSR,
            RSA_2048_PSS_SALTMAX_CSR,
            RSA_3072_PSS_SHA512_SALT0_CSR,
        ] {
            let (der, params) = parsed(pem);
            let (_, csr) = X509CertificationRequest::from_der(&der).unwrap();
            let spki = &csr.certification_request_info.subject_pki;
            assert_eq!(verify_pss(spki, params, &csr), Ok(()), "{params:?}");
            // Each byte of the signed part, and the signature's last byte, matter.
            let signed = csr.certification_request_info.raw.to_vec();
            let signature = csr.signature_value.data.to_vec();
            let Ok(PublicKey::RSA(rsa)) = spki.parsed() else {
                panic!("rsa key")
            };
            for at in [0, signed.len() / 2, signed.len() - 1] {
                let mut changed = signed.clone();
                changed[at] ^= 0x40;
                assert!(!pss::verify(
                    rsa.modulus,
                    rsa.exponent,
                    params,
                    &changed,
                    &signature
                ));
            }
            let mut changed = signature.clone();
            *changed.last_mut().unwrap() ^= 1;
            assert!(!pss::verify(
                rsa.modulus,
                rsa.exponent,
                params,
                &signed,
                &changed
            ));
            // The salt length is the one the parameters declare, no other.
            let other_salt = PssParams {
                salt_len: if params.salt_len == 0 { 20 } else { 0 },
                ..params
            };
            assert!(!pss::verify(
                rsa.modulus,
                rsa.exponent,
                other_salt,
                &signed,
                &signature
            ));
            // A flipped signature byte in the PEM is BadSignature, not a parse error.
            let mut der = der.clone();
            let last = der.len() - 1;
            der[last] ^= 0x01;
            let tampered = pem_encode("CERTIFICATE REQUEST", &der);
            assert_eq!(parse_csr(&tampered), Err(CsrError::BadSignature));
        }
        // Why our own: ring takes the 32-byte salt and refuses openssl's default.
        for (pem, ring_takes_it) in [(RSA_2048_PSS_CSR, true), (RSA_2048_PSS_SALTMAX_CSR, false)] {
            let (der, _) = parsed(pem);
            let (_, csr) = X509CertificationRequest::from_der(&der).unwrap();
            assert_eq!(csr.verify_signature().is_ok(), ring_takes_it);
        }
    }

    /// PSS with a hash weaker than SHA-256 (here SHA-224, put into the parameters in place
    /// of SHA-256: same OID length) is refused as an unsupported algorithm, for the hash
    /// and for MGF1's hash, before any signature check.
    #[test]
    fn pss_with_a_weak_hash_is_an_unsupported_algorithm() {
        let der = pem_block(RSA_2048_PSS_SALTMAX_CSR, CSR_LABELS).unwrap();
        let sha256 = [
            0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01,
        ];
        let at: Vec<usize> = (0..der.len() - sha256.len())
            .filter(|i| der[*i..].starts_with(&sha256))
            .collect();
        assert_eq!(at.len(), 2, "the hash and MGF1's hash");
        for (i, what) in at.iter().zip(["hash", "mgf1 hash"]) {
            let mut weak = der.clone();
            weak[i + sha256.len() - 1] = 0x04;
            let err = parse_csr(&pem_encode("CERTIFICATE REQUEST", &weak)).unwrap_err();
            let CsrError::UnsupportedSignatureAlgorithm { oid } = &err else {
                panic!("{what}: {err:?}")
            };
            assert_eq!(
                oid,
                &format!("1.2.840.113549.1.1.10 with {what} 2.16.840.1.101.3.4.2.4")
            );
        }
    }

    #[test]
    fn a_key_restricted_to_pss_is_refused_with_a_message_that_says_what_to_do() {
        let err = parse_csr(RSA_PSS_KEY_CSR).unwrap_err();
        assert!(matches!(err, CsrError::UnsupportedKey { .. }), "{err:?}");
        let text = err.to_string();
        assert!(
            text.contains("rsa-pss") && text.contains("rsaEncryption"),
            "{text}"
        );
    }

    #[test]
    fn rsa_1024_csr_is_weak_rsa_with_a_message_naming_the_size() {
        let err = parse_csr(RSA_1024_CSR).unwrap_err();
        assert_eq!(err, CsrError::WeakRsa { bits: 1024 });
        assert_eq!(
            err.to_string(),
            "rsa key of 1024 bits is below the 2048 minimum"
        );
    }

    #[test]
    fn csr_with_a_flipped_signature_byte_is_bad_signature() {
        for alg in [
            &PKCS_ECDSA_P256_SHA256,
            &PKCS_ED25519,
            &PKCS_ECDSA_P384_SHA384,
        ] {
            let (_key, pem) = greedy_csr(alg);
            let mut der = pem_block(&pem, CSR_LABELS).unwrap();
            // The signature BIT STRING ends the DER; its last byte is signature material.
            let last = der.len() - 1;
            der[last] ^= 0x01;
            let tampered = pem_encode("CERTIFICATE REQUEST", &der);
            assert_eq!(parse_csr(&tampered), Err(CsrError::BadSignature), "{alg:?}");
        }
    }

    #[test]
    fn csr_with_a_changed_subject_is_bad_signature() {
        let (_key, pem) = generate_client_key_and_csr("aaaaaaaa").unwrap();
        let mut der = pem_block(&pem, CSR_LABELS).unwrap();
        let at = der.windows(8).position(|w| w == b"aaaaaaaa").unwrap();
        der[at] = b'b';
        let tampered = pem_encode("CERTIFICATE REQUEST", &der);
        assert_eq!(parse_csr(&tampered), Err(CsrError::BadSignature));
    }

    #[test]
    fn garbage_is_malformed() {
        let ca = test_ca("x");
        let not_base64 =
            "-----BEGIN CERTIFICATE REQUEST-----\n!!!!\n-----END CERTIFICATE REQUEST-----\n";
        let not_a_csr = pem_encode("CERTIFICATE REQUEST", b"\x30\x03\x02\x01\x01");
        for input in ["", "hello", not_base64, &not_a_csr, ca.cert_pem()] {
            assert!(
                matches!(parse_csr(input), Err(CsrError::Malformed { .. })),
                "{input:?} -> {:?}",
                parse_csr(input)
            );
        }
    }
}
