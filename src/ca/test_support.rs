//! Test helpers shared by the ca modules' unit tests: a fixed clock, throw-away CAs, a
//! greedy CSR, RSA CSR fixtures, scratch directories and an openssl runner that fails the
//! test when openssl is missing.

use std::path::PathBuf;
use std::process::{Command, Output};

use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};
use time::OffsetDateTime;
use x509_parser::x509::X509Name;

use super::{cert_pem_to_der, Ca};

pub(super) const UUID: &str = "5f0c7a52-3f5e-4a6b-9c0d-2b1e8f7a6c11";

/// An RSA-2048 CSR signed with SHA-256 (`openssl req -newkey rsa:2048 -sha256`).
pub(super) const RSA_2048_CSR: &str = include_str!("../../tests/it/fixtures/rsa2048.csr");
/// An RSA-1024 CSR signed with SHA-256, made by
/// `openssl req -new -newkey rsa:1024 -nodes -sha256 -subj /CN=rsa-1024`.
pub(super) const RSA_1024_CSR: &str = include_str!("../../tests/it/fixtures/rsa1024.csr");
/// RSA-2048 CSRs signed with RSASSA-PSS, made by `openssl req -new -newkey rsa:2048 -nodes
/// -sigopt rsa_padding_mode:pss -sha256` with `-sigopt rsa_pss_saltlen:32` (ring's one
/// salt length) and without (openssl's default: the longest salt, 222 bytes).
pub(super) const RSA_2048_PSS_CSR: &str = include_str!("../../tests/it/fixtures/rsa2048-pss.csr");
pub(super) const RSA_2048_PSS_SALTMAX_CSR: &str =
    include_str!("../../tests/it/fixtures/rsa2048-pss-saltmax.csr");
/// RSA-3072, PSS with SHA-512, MGF1 over SHA-256 and no salt (`-sigopt rsa_pss_saltlen:0
/// -sigopt rsa_mgf1_md:sha256 -sha512`).
pub(super) const RSA_3072_PSS_SHA512_SALT0_CSR: &str =
    include_str!("../../tests/it/fixtures/rsa3072-pss-sha512-salt0.csr");
/// A key restricted to PSS (`openssl genpkey -algorithm RSA-PSS`, SubjectPublicKeyInfo
/// algorithm id-RSASSA-PSS).
pub(super) const RSA_PSS_KEY_CSR: &str =
    include_str!("../../tests/it/fixtures/rsa2048-pss-key.csr");

pub(super) fn now() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_767_225_600).unwrap() // 2026-01-01 00:00:00
}

/// A lifetime of `n` days.
pub(super) fn days(n: u64) -> std::time::Duration {
    std::time::Duration::from_secs(n * 86_400)
}

pub(super) fn test_ca(name: &str) -> Ca {
    Ca::generate(name, now()).unwrap()
}

pub(super) fn der_of(pem: &str) -> Vec<u8> {
    cert_pem_to_der(pem).unwrap()
}

/// The first common name of a subject.
pub(super) fn first_cn(name: &X509Name<'_>) -> String {
    let cn = name.iter_common_name().next().expect("a common name");
    cn.as_str().expect("a string common name").to_owned()
}

/// A fingerprint as people often paste it: upper case, a colon between bytes.
pub(super) fn colon_fingerprint(fp: &str) -> String {
    fp.to_uppercase()
        .as_bytes()
        .chunks(2)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join(":")
}

/// A CSR that asks for everything a source must not get: a CA flag, SANs, extra key
/// usages and EKUs, a custom extension and a different subject.
pub(super) fn greedy_csr(alg: &'static rcgen::SignatureAlgorithm) -> (KeyPair, String) {
    let key = KeyPair::generate_for(alg).unwrap();
    let mut params =
        CertificateParams::new(vec!["evil.example".to_owned(), "10.9.8.7".to_owned()]).unwrap();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "not-the-uuid");
    dn.push(DnType::OrganizationName, "Mallory Inc");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
        ExtendedKeyUsagePurpose::CodeSigning,
    ];
    params.custom_extensions = vec![CustomExtension::from_oid_content(
        &[1, 3, 6, 1, 4, 1, 55555, 1],
        vec![0x05, 0x00],
    )];
    let pem = params.serialize_request(&key).unwrap().pem().unwrap();
    (key, pem)
}

pub(super) struct TempDir(PathBuf);

impl TempDir {
    pub(super) fn new(name: &str) -> TempDir {
        let dir =
            std::env::temp_dir().join(format!("replgate-ca-test-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub(super) fn write(&self, file: &str, text: &str) -> String {
        let path = self.0.join(file).to_str().unwrap().to_owned();
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs openssl. A missing openssl fails the test (`.ci/run` installs it): a check that
/// cannot run has not passed.
pub(super) fn openssl(args: &[&str]) -> Output {
    Command::new("openssl")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("openssl is needed for this test and is not runnable: {e}"))
}
