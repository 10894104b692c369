//! `ca::parse_csr` and what the CA makes of an accepted CSR. Any text: parsing never
//! panics; an accepted CSR's fingerprint is the SHA-256 of its key; and the certificate
//! `Ca::sign_client` issues for it is an end entity (no CA flag, no certificate signing),
//! for client authentication only, with no names copied, carrying exactly the CSR's
//! SubjectPublicKeyInfo, signed by the CA. Seeds: the CSR fixtures (P-256, P-384, Ed25519,
//! RSA with PKCS#1 and with PSS of three salt lengths, a PSS-only key, RSA-1024).

use std::sync::OnceLock;

use replgate::ca::{self, Ca};
use x509_parser::prelude::{FromDer, X509Certificate};

fn ca() -> &'static Ca {
    static CA: OnceLock<Ca> = OnceLock::new();
    CA.get_or_init(|| Ca::generate("fuzz ca", time::OffsetDateTime::now_utc()).unwrap())
}

/// One input: panics when a property fails.
pub fn run(input: &[u8]) {
    let Ok(text) = std::str::from_utf8(input) else {
        return;
    };
    let Ok(csr) = ca::parse_csr(text) else {
        return;
    };
    assert_eq!(csr.fingerprint(), ca::sha256_hex(csr.spki_der()));
    let ca = ca();
    let issued = ca
        .sign_client(
            &csr,
            "5f0c7a52-3f5e-4a6b-9c0d-2b1e8f7a6c11",
            std::time::Duration::from_secs(30 * 86_400),
            time::OffsetDateTime::now_utc(),
        )
        .expect("an accepted csr is signed");
    let der = ca::cert_pem_to_der(&issued.cert_pem).unwrap();
    let (rest, cert) = X509Certificate::from_der(&der).unwrap();
    assert!(rest.is_empty());
    assert_eq!(
        cert.public_key().raw,
        csr.spki_der(),
        "exactly the csr's key"
    );
    assert!(!cert.is_ca());
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.client_auth && !eku.server_auth && !eku.any && eku.other.is_empty());
    let ku = cert.key_usage().unwrap().unwrap().value;
    assert!(ku.digital_signature() && !ku.key_cert_sign() && !ku.crl_sign());
    assert!(
        cert.subject_alternative_name().unwrap().is_none(),
        "no names copied"
    );
    let ca_der = ca.cert_der();
    let (_, ca_cert) = X509Certificate::from_der(ca_der.as_ref()).unwrap();
    cert.verify_signature(Some(ca_cert.public_key()))
        .expect("signed by the ca");
}
