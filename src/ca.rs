//! Certificates: the only caller of rcgen. Creates and loads the appliance CA, parses and
//! checks CSRs, issues certificates, computes fingerprints and verification codes, and checks
//! a delivered certificate on the source side. Bytes in, bytes out: no file or socket I/O,
//! and the current time is always passed in.
//!
//! Invariants:
//! - An issued certificate copies nothing from a CSR except its public key: the parameters
//!   are built fresh here (rcgen's `CertificateSigningRequestParams::signed_by` would copy
//!   the requested CA flag, key usages and names, so it is never used).
//! - Every certificate gets explicit `not_before`/`not_after` and a random 128-bit serial
//!   (rcgen would otherwise default to 1975..4096 and a serial derived from the key).
//! - A serial is written as lowercase hex of its big-endian magnitude without leading zero
//!   bytes ([`cert_serial_hex`]); issuing and revocation checks use that same function.

use std::fmt;
use std::net::IpAddr;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber,
    SubjectPublicKeyInfo as RcgenSpki, PKCS_ECDSA_P256_SHA256,
};
use ring::digest;
use ring::rand::{SecureRandom, SystemRandom};
use rustls::pki_types::CertificateDer;
use time::{Duration, OffsetDateTime, UtcOffset};
use x509_parser::certificate::X509Certificate;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::error::X509Error;
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION,
    OID_PKCS1_RSASSAPSS, OID_PKCS1_SHA256WITHRSA, OID_PKCS1_SHA384WITHRSA, OID_PKCS1_SHA512WITHRSA,
    OID_SIG_ECDSA_WITH_SHA256, OID_SIG_ECDSA_WITH_SHA384, OID_SIG_ED25519,
};
use x509_parser::pem::Pem;
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;
use x509_parser::x509::SubjectPublicKeyInfo;

/// Validity of the appliance CA: 20 years.
const CA_LIFETIME: Duration = Duration::days(20 * 365);
/// Validity of the API and tunnel server certificates: 2 years.
const SERVER_CERT_LIFETIME: Duration = Duration::days(2 * 365);
/// How far the CA and server certificates are backdated. Another appliance verifies them
/// with its own clock, which may lag ours (and the CA is often created minutes before a
/// pairing), so they get a day of slack.
const PEER_CLOCK_SLACK: Duration = Duration::days(1);
/// How far an issued client certificate is backdated. Only this appliance (the one that
/// issued it) verifies it, so a small slack is enough.
const CLIENT_CERT_BACKDATE: Duration = Duration::minutes(5);
/// Longest client certificate lifetime `sign_client` accepts (10 years).
const MAX_CLIENT_LIFETIME_DAYS: u32 = 3_650;
/// Smallest RSA modulus accepted in a CSR.
const MIN_RSA_BITS: u32 = 2_048;
/// Largest RSA modulus accepted in a CSR (ring verifies up to 8192 bits).
const MAX_RSA_BITS: u32 = 8_192;
/// Longest subject common name (X.520 ub-common-name).
const MAX_COMMON_NAME_CHARS: usize = 64;
/// Serial numbers are 16 random bytes (128 bits, top bit cleared so the DER integer is
/// positive).
const SERIAL_BYTES: usize = 16;
/// Domain separation for the verification code hash.
const VERIFICATION_CODE_DOMAIN: &[u8] = b"replgate verification code v1\0";

/// PEM labels accepted for a CSR.
const CSR_LABELS: &[&str] = &["CERTIFICATE REQUEST", "NEW CERTIFICATE REQUEST"];
const CERT_LABELS: &[&str] = &["CERTIFICATE"];

// ---------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------

/// Failures of the CA itself: loading it, generating keys, issuing certificates.
#[derive(Debug)]
pub enum CaError {
    /// The CA certificate text holds no parseable certificate.
    BadCaCertificate(CertError),
    /// The CA key text is not a PKCS#8 key rcgen can use.
    BadCaKey { reason: String },
    /// The CA key is not the key of the CA certificate.
    CaKeyMismatch,
    /// The CA certificate is not a CA (no basicConstraints cA=true).
    NotCa,
    /// A name given for a certificate cannot be encoded.
    InvalidName { name: String, reason: &'static str },
    /// A server certificate was asked for without any hostname or address.
    NoServerNames,
    /// The requested client certificate lifetime is out of range.
    InvalidLifetime { days: u32 },
    /// The validity period does not fit in a certificate (clock far out of range).
    TimeOutOfRange,
    /// The CSR's public key cannot be re-encoded exactly as it was requested.
    UnencodableKey,
    /// The system random generator failed.
    Random,
    /// rcgen refused to generate a key or a certificate.
    Rcgen {
        action: &'static str,
        source: rcgen::Error,
    },
    /// A certificate we just produced does not parse back (a bug).
    Reparse(CertError),
}

impl fmt::Display for CaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadCaCertificate(_) => write!(f, "ca certificate does not parse"),
            Self::BadCaKey { reason } => write!(f, "ca key does not parse: {reason}"),
            Self::CaKeyMismatch => write!(f, "ca key does not belong to the ca certificate"),
            Self::NotCa => write!(f, "ca certificate is not marked as a ca"),
            Self::InvalidName { name, reason } => write!(f, "name {name:?} {reason}"),
            Self::NoServerNames => write!(f, "server certificate needs a hostname or an address"),
            Self::InvalidLifetime { days } => write!(
                f,
                "certificate lifetime of {days} days is outside 1 to {MAX_CLIENT_LIFETIME_DAYS}"
            ),
            Self::TimeOutOfRange => {
                write!(f, "certificate validity is outside the supported dates")
            }
            Self::UnencodableKey => {
                write!(
                    f,
                    "csr public key cannot be copied into a certificate unchanged"
                )
            }
            Self::Random => write!(f, "system random generator failed"),
            Self::Rcgen { action, .. } => write!(f, "{action}"),
            Self::Reparse(_) => write!(f, "issued certificate does not parse back"),
        }
    }
}

impl std::error::Error for CaError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::BadCaCertificate(e) | Self::Reparse(e) => Some(e),
            Self::Rcgen { source, .. } => Some(source),
            _ => None,
        }
    }
}

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

/// Why the source refuses a certificate delivered by a target. Nothing is installed when
/// any of these is returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryError {
    /// `certificate.pem` does not hold a readable certificate.
    BadCertificate(CertError),
    /// `ca.pem` does not hold a readable certificate.
    BadCa(CertError),
    /// This appliance's own key does not parse (local state is damaged).
    BadOwnKey { reason: String },
    /// The pinned fingerprint in our own records is not 64 hex digits (local state is damaged).
    InvalidPin,
    /// `ca.pem` is not the CA that was pinned when the request was filed.
    CaFingerprintMismatch { presented: String, pinned: String },
    /// `ca.pem` is not a CA certificate.
    CaNotCa,
    /// `ca.pem` is not valid at this time.
    CaNotValidNow { not_before: i64, not_after: i64 },
    /// The certificate was issued for another key.
    KeyMismatch,
    /// The certificate is not signed by `ca.pem`.
    NotIssuedByCa,
    /// The certificate's validity starts in the future.
    NotYetValid { not_before: i64 },
    /// The certificate's validity has ended.
    Expired { not_after: i64 },
    /// The certificate lacks the clientAuth extended key usage.
    MissingClientAuth,
}

impl fmt::Display for DeliveryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadCertificate(_) => write!(f, "delivered certificate does not parse"),
            Self::BadCa(_) => write!(f, "delivered ca certificate does not parse"),
            Self::BadOwnKey { reason } => {
                write!(
                    f,
                    "this appliance's key for the target does not parse: {reason}"
                )
            }
            Self::InvalidPin => write!(f, "pinned ca fingerprint is not 64 hex digits"),
            Self::CaFingerprintMismatch { presented, pinned } => write!(
                f,
                "ca fingerprint {presented} does not match the pinned {pinned}"
            ),
            Self::CaNotCa => write!(f, "delivered ca certificate is not marked as a ca"),
            Self::CaNotValidNow {
                not_before,
                not_after,
            } => write!(
                f,
                "delivered ca certificate is valid only from {} to {} (check the clocks)",
                fmt_unix(*not_before),
                fmt_unix(*not_after)
            ),
            Self::KeyMismatch => {
                write!(
                    f,
                    "certificate public key does not match this appliance's key"
                )
            }
            Self::NotIssuedByCa => {
                write!(
                    f,
                    "certificate is not signed by the delivered ca certificate"
                )
            }
            Self::NotYetValid { not_before } => write!(
                f,
                "certificate is not valid before {} (check the clocks)",
                fmt_unix(*not_before)
            ),
            Self::Expired { not_after } => {
                write!(f, "certificate expired at {}", fmt_unix(*not_after))
            }
            Self::MissingClientAuth => {
                write!(f, "certificate does not allow tls client authentication")
            }
        }
    }
}

impl std::error::Error for DeliveryError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::BadCertificate(e) | Self::BadCa(e) => Some(e),
            _ => None,
        }
    }
}

// ---------------------------------------------------------------------------------------
// The CA
// ---------------------------------------------------------------------------------------

/// The appliance's own certificate authority: signs the API and tunnel server certificates
/// and the client certificates of paired sources.
pub struct Ca {
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    fingerprint: String,
    /// Subject, key identifier and signing key, as rcgen needs them to issue.
    issuer: Issuer<'static, KeyPair>,
}

impl fmt::Debug for Ca {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ca")
            .field("fingerprint", &self.fingerprint)
            .field("key", &"…")
            .finish()
    }
}

/// A fresh key pair and a server certificate for it.
pub struct IssuedKeyPair {
    pub cert_pem: String,
    /// PKCS#8 PEM; the caller writes it with mode 0o600.
    pub key_pem: String,
    /// Serial as lowercase hex (see [`cert_serial_hex`]).
    pub serial: String,
    /// End of validity, unix seconds.
    pub not_after: i64,
}

impl fmt::Debug for IssuedKeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedKeyPair")
            .field("serial", &self.serial)
            .field("not_after", &self.not_after)
            .field("key_pem", &"…")
            .finish()
    }
}

/// A certificate issued for a source's CSR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedCert {
    pub cert_pem: String,
    /// Serial as lowercase hex (see [`cert_serial_hex`]); the revocation key.
    pub serial: String,
    /// End of validity, unix seconds.
    pub not_after: i64,
}

impl Ca {
    /// Creates a new CA: ECDSA P-256, self-signed, valid 20 years from `now` (backdated a
    /// day), random serial, keyCertSign + cRLSign, basicConstraints CA with path length 0.
    pub fn generate(common_name: &str, now: OffsetDateTime) -> Result<Ca, CaError> {
        let now = utc_seconds(now)?;
        let key =
            KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|source| CaError::Rcgen {
                action: "generate ca key",
                source,
            })?;
        let mut params = CertificateParams::default();
        params.distinguished_name = common_name_dn(common_name)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.serial_number = Some(random_serial()?);
        params.not_before = checked_sub(now, PEER_CLOCK_SLACK)?;
        params.not_after = checked_add(now, CA_LIFETIME)?;
        let cert = params.self_signed(&key).map_err(|source| CaError::Rcgen {
            action: "self-sign ca certificate",
            source,
        })?;
        Self::from_parts(cert.der().to_vec(), key)
    }

    /// Loads a CA from its certificate and PKCS#8 key, checking that the key belongs to the
    /// certificate and that the certificate is a CA.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Ca, CaError> {
        let cert_der = pem_block(cert_pem, CERT_LABELS).map_err(CaError::BadCaCertificate)?;
        let key = KeyPair::from_pem(key_pem).map_err(|e| CaError::BadCaKey {
            reason: e.to_string().to_lowercase(),
        })?;
        Self::from_parts(cert_der, key)
    }

    fn from_parts(cert_der: Vec<u8>, key: KeyPair) -> Result<Ca, CaError> {
        {
            let cert = parse_cert_der(&cert_der).map_err(CaError::BadCaCertificate)?;
            if cert.public_key().raw != key.subject_public_key_info().as_slice() {
                return Err(CaError::CaKeyMismatch);
            }
            if !is_ca_cert(&cert) {
                return Err(CaError::NotCa);
            }
        }
        let cert_pem = pem_encode("CERTIFICATE", &cert_der);
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key).map_err(|source| CaError::Rcgen {
            action: "read ca certificate as an issuer",
            source,
        })?;
        Ok(Ca {
            fingerprint: sha256_hex(&cert_der),
            cert_pem,
            cert_der: CertificateDer::from(cert_der),
            issuer,
        })
    }

    /// The CA certificate as PEM (what is spooled as `ca.pem`).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA key as PKCS#8 PEM. The caller writes it with mode 0o600 and never logs it.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// The CA certificate as DER, in the form the tls module takes as a trust anchor.
    pub fn cert_der(&self) -> CertificateDer<'static> {
        self.cert_der.clone()
    }

    /// SHA-256 of the CA certificate DER, lowercase hex without colons.
    pub fn fingerprint(&self) -> String {
        self.fingerprint.clone()
    }

    /// Issues a fresh P-256 key and an end-entity server certificate (serverAuth,
    /// digitalSignature, SANs for every name and address, 2 years, random serial) for the API
    /// or the tunnel listener. A hostname that parses as an IP address becomes an IP SAN.
    pub fn issue_server_cert(
        &self,
        hostnames: &[String],
        ips: &[IpAddr],
        now: OffsetDateTime,
    ) -> Result<IssuedKeyPair, CaError> {
        let now = utc_seconds(now)?;
        let mut sans: Vec<SanType> = Vec::with_capacity(hostnames.len() + ips.len());
        let mut add = |san: SanType| {
            if !sans.contains(&san) {
                sans.push(san);
            }
        };
        for name in hostnames {
            if let Ok(ip) = name.parse::<IpAddr>() {
                add(SanType::IpAddress(ip));
                continue;
            }
            let ia5 = rcgen::string::Ia5String::try_from(name.as_str()).map_err(|_| {
                CaError::InvalidName {
                    name: name.clone(),
                    reason: "is not an ascii dns name",
                }
            })?;
            add(SanType::DnsName(ia5));
        }
        for ip in ips {
            add(SanType::IpAddress(*ip));
        }
        let common_name = match (hostnames.first(), ips.first()) {
            (Some(name), _) => name.clone(),
            (None, Some(ip)) => ip.to_string(),
            (None, None) => return Err(CaError::NoServerNames),
        };

        let key =
            KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|source| CaError::Rcgen {
                action: "generate server key",
                source,
            })?;
        let mut params = end_entity_params(
            &common_name,
            checked_sub(now, PEER_CLOCK_SLACK)?,
            checked_add(now, SERVER_CERT_LIFETIME)?,
            ExtendedKeyUsagePurpose::ServerAuth,
        )?;
        params.subject_alt_names = sans;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|source| CaError::Rcgen {
                action: "sign server certificate",
                source,
            })?;
        let info = cert_info(cert.der()).map_err(CaError::Reparse)?;
        Ok(IssuedKeyPair {
            cert_pem: pem_encode("CERTIFICATE", cert.der()),
            key_pem: key.serialize_pem(),
            serial: info.serial,
            not_after: info.not_after,
        })
    }

    /// Signs a source's CSR. Only the CSR's public key is used: the certificate is an
    /// end-entity (basicConstraints cA=false), clientAuth only, digitalSignature only, with
    /// subject CN `subject_cn` (the source's system_uuid), no SANs, a random serial, valid
    /// from `now` − 5 minutes for `lifetime_days` days.
    pub fn sign_client(
        &self,
        csr: &ValidCsr,
        subject_cn: &str,
        lifetime_days: u32,
        now: OffsetDateTime,
    ) -> Result<IssuedCert, CaError> {
        if !(1..=MAX_CLIENT_LIFETIME_DAYS).contains(&lifetime_days) {
            return Err(CaError::InvalidLifetime {
                days: lifetime_days,
            });
        }
        let now = utc_seconds(now)?;
        let public_key = RcgenSpki::from_der(&csr.spki_der).map_err(|_| CaError::UnencodableKey)?;
        // rcgen re-encodes the SubjectPublicKeyInfo from (algorithm, key bits); make sure
        // the certificate will carry exactly the key the CSR proved possession of.
        if public_key.subject_public_key_info() != csr.spki_der {
            return Err(CaError::UnencodableKey);
        }
        let params = end_entity_params(
            subject_cn,
            checked_sub(now, CLIENT_CERT_BACKDATE)?,
            checked_add(now, Duration::days(i64::from(lifetime_days)))?,
            ExtendedKeyUsagePurpose::ClientAuth,
        )?;
        let cert = params
            .signed_by(&public_key, &self.issuer)
            .map_err(|source| CaError::Rcgen {
                action: "sign client certificate",
                source,
            })?;
        let info = cert_info(cert.der()).map_err(CaError::Reparse)?;
        Ok(IssuedCert {
            cert_pem: pem_encode("CERTIFICATE", cert.der()),
            serial: info.serial,
            not_after: info.not_after,
        })
    }
}

/// Fresh parameters for an end-entity certificate. Every field that matters is set here,
/// so nothing comes from rcgen's defaults or from a CSR.
fn end_entity_params(
    common_name: &str,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    usage: ExtendedKeyUsagePurpose,
) -> Result<CertificateParams, CaError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = common_name_dn(common_name)?;
    params.subject_alt_names = Vec::new();
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![usage];
    params.name_constraints = None;
    params.crl_distribution_points = Vec::new();
    params.custom_extensions = Vec::new();
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial()?);
    params.not_before = not_before;
    params.not_after = not_after;
    Ok(params)
}

fn common_name_dn(common_name: &str) -> Result<DistinguishedName, CaError> {
    if common_name.is_empty() || common_name.chars().count() > MAX_COMMON_NAME_CHARS {
        return Err(CaError::InvalidName {
            name: common_name.to_owned(),
            reason: "must be 1 to 64 characters",
        });
    }
    if common_name.chars().any(char::is_control) {
        return Err(CaError::InvalidName {
            name: common_name.to_owned(),
            reason: "contains control characters",
        });
    }
    // A fresh name: CertificateParams::default() carries "rcgen self signed cert".
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    Ok(dn)
}

/// 16 random bytes with the top bit cleared (a positive DER integer) and a non-zero first
/// byte (so the integer is always encoded in exactly 16 bytes).
fn random_serial() -> Result<SerialNumber, CaError> {
    let rng = SystemRandom::new();
    let mut bytes = [0u8; SERIAL_BYTES];
    // A zero first byte happens with probability 1/128 per draw; 64 draws all failing is
    // beyond any practical chance, and the bound keeps the loop finite.
    for _ in 0..64 {
        rng.fill(&mut bytes).map_err(|_| CaError::Random)?;
        bytes[0] &= 0x7f;
        if bytes[0] != 0 {
            return Ok(SerialNumber::from_slice(&bytes));
        }
    }
    Err(CaError::Random)
}

fn utc_seconds(now: OffsetDateTime) -> Result<OffsetDateTime, CaError> {
    OffsetDateTime::from_unix_timestamp(now.unix_timestamp())
        .map(|t| t.to_offset(UtcOffset::UTC))
        .map_err(|_| CaError::TimeOutOfRange)
}

fn checked_add(t: OffsetDateTime, d: Duration) -> Result<OffsetDateTime, CaError> {
    t.checked_add(d).ok_or(CaError::TimeOutOfRange)
}

fn checked_sub(t: OffsetDateTime, d: Duration) -> Result<OffsetDateTime, CaError> {
    t.checked_sub(d).ok_or(CaError::TimeOutOfRange)
}

// ---------------------------------------------------------------------------------------
// CSRs (target side)
// ---------------------------------------------------------------------------------------

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
    csr.verify_signature().map_err(|e| match e {
        X509Error::SignatureUnsupportedAlgorithm => CsrError::UnsupportedSignatureAlgorithm {
            oid: sig_oid.to_id_string(),
        },
        _ => CsrError::BadSignature,
    })?;

    let spki_der = spki.raw.to_vec();
    Ok(ValidCsr {
        fingerprint: sha256_hex(&spki_der),
        spki_der,
        key_kind,
    })
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

// ---------------------------------------------------------------------------------------
// Verification code, fingerprints
// ---------------------------------------------------------------------------------------

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

/// SHA-256 of `bytes` as lowercase hex without separators.
pub fn sha256_hex(bytes: &[u8]) -> String {
    crate::rand::hex(digest::digest(&digest::SHA256, bytes).as_ref())
}

/// Accepts a SHA-256 fingerprint in any case, with or without colons (and surrounding
/// whitespace); returns 64 lowercase hex digits, or `None` for anything else.
pub fn normalize_fingerprint(input: &str) -> Option<String> {
    let digits: String = input.trim().chars().filter(|c| *c != ':').collect();
    if digits.len() == 64 && digits.chars().all(|c| c.is_ascii_hexdigit()) {
        Some(digits.to_ascii_lowercase())
    } else {
        None
    }
}

// ---------------------------------------------------------------------------------------
// Source side
// ---------------------------------------------------------------------------------------

/// Makes this appliance's P-256 key for a target and a CSR for it with subject CN
/// `system_uuid` and no extensions. Returns `(key_pem, csr_pem)`; the key is PKCS#8 and the
/// caller writes it with mode 0o600.
pub fn generate_client_key_and_csr(system_uuid: &str) -> Result<(String, String), CaError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|source| CaError::Rcgen {
        action: "generate client key",
        source,
    })?;
    let mut params = CertificateParams::default();
    params.distinguished_name = common_name_dn(system_uuid)?;
    let csr = params
        .serialize_request(&key)
        .and_then(|csr| csr.pem())
        .map_err(|source| CaError::Rcgen {
            action: "create csr",
            source,
        })?;
    Ok((key.serialize_pem(), csr))
}

/// What the source records about a certificate it accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveredCert {
    pub not_after: i64,
    pub serial: String,
}

/// Checks a certificate delivered by a target before anything is installed: `ca.pem` is the
/// pinned CA and is a CA valid now; the certificate carries this appliance's public key, is
/// signed by `ca.pem`, is valid now and allows client authentication.
pub fn check_delivered(
    cert_pem: &str,
    ca_pem: &str,
    own_key_pem: &str,
    pinned_ca_fingerprint: &str,
    now_unix: i64,
) -> Result<DeliveredCert, DeliveryError> {
    let pinned = normalize_fingerprint(pinned_ca_fingerprint).ok_or(DeliveryError::InvalidPin)?;
    let ca_der = pem_block(ca_pem, CERT_LABELS).map_err(DeliveryError::BadCa)?;
    let presented = sha256_hex(&ca_der);
    if presented != pinned {
        return Err(DeliveryError::CaFingerprintMismatch { presented, pinned });
    }
    let ca = parse_cert_der(&ca_der).map_err(DeliveryError::BadCa)?;
    if !is_ca_cert(&ca) {
        return Err(DeliveryError::CaNotCa);
    }
    let (ca_from, ca_until) = validity(&ca);
    if now_unix < ca_from || now_unix > ca_until {
        return Err(DeliveryError::CaNotValidNow {
            not_before: ca_from,
            not_after: ca_until,
        });
    }

    let cert_der = pem_block(cert_pem, CERT_LABELS).map_err(DeliveryError::BadCertificate)?;
    let cert = parse_cert_der(&cert_der).map_err(DeliveryError::BadCertificate)?;
    let own_key = KeyPair::from_pem(own_key_pem).map_err(|e| DeliveryError::BadOwnKey {
        reason: e.to_string().to_lowercase(),
    })?;
    if cert.public_key().raw != own_key.subject_public_key_info().as_slice() {
        return Err(DeliveryError::KeyMismatch);
    }
    if cert.issuer().as_raw() != ca.subject().as_raw()
        || cert.verify_signature(Some(ca.public_key())).is_err()
    {
        return Err(DeliveryError::NotIssuedByCa);
    }
    let (not_before, not_after) = validity(&cert);
    if now_unix < not_before {
        return Err(DeliveryError::NotYetValid { not_before });
    }
    if now_unix > not_after {
        return Err(DeliveryError::Expired { not_after });
    }
    let client_auth = matches!(cert.extended_key_usage(), Ok(Some(eku)) if eku.value.client_auth);
    if !client_auth {
        return Err(DeliveryError::MissingClientAuth);
    }
    Ok(DeliveredCert {
        not_after,
        serial: serial_hex(cert.raw_serial()),
    })
}

// ---------------------------------------------------------------------------------------
// Certificate helpers (also used by tls)
// ---------------------------------------------------------------------------------------

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
    })
}

/// The first `CERTIFICATE` block of `pem` as DER.
pub fn cert_pem_to_der(pem: &str) -> Result<Vec<u8>, CertError> {
    let der = pem_block(pem, CERT_LABELS)?;
    parse_cert_der(&der)?;
    Ok(der)
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

fn parse_cert_der(der: &[u8]) -> Result<X509Certificate<'_>, CertError> {
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

fn is_ca_cert(cert: &X509Certificate<'_>) -> bool {
    matches!(cert.basic_constraints(), Ok(Some(bc)) if bc.value.ca)
}

fn validity(cert: &X509Certificate<'_>) -> (i64, i64) {
    let v = cert.validity();
    (v.not_before.timestamp(), v.not_after.timestamp())
}

fn serial_hex(raw: &[u8]) -> String {
    let start = raw
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(raw.len().saturating_sub(1));
    crate::rand::hex(&raw[start..])
}

/// The DER of the first PEM block whose label is one of `labels`.
fn pem_block(input: &str, labels: &[&'static str]) -> Result<Vec<u8>, CertError> {
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
fn pem_encode(label: &str, der: &[u8]) -> String {
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

/// Unix seconds as `2026-01-31 12:00:00 utc` for error messages.
fn fmt_unix(t: i64) -> String {
    match OffsetDateTime::from_unix_timestamp(t) {
        Ok(d) => format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02} utc",
            d.year(),
            u8::from(d.month()),
            d.day(),
            d.hour(),
            d.minute(),
            d.second()
        ),
        Err(_) => format!("unix time {t}"),
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::process::Command;

    use rcgen::{CustomExtension, PKCS_ECDSA_P384_SHA384, PKCS_ED25519};
    use x509_parser::extensions::GeneralName;
    use x509_parser::oid_registry::{
        OID_X509_EXT_AUTHORITY_KEY_IDENTIFIER, OID_X509_EXT_BASIC_CONSTRAINTS,
        OID_X509_EXT_EXTENDED_KEY_USAGE, OID_X509_EXT_KEY_USAGE,
        OID_X509_EXT_SUBJECT_KEY_IDENTIFIER,
    };

    use super::*;

    const UUID: &str = "5f0c7a52-3f5e-4a6b-9c0d-2b1e8f7a6c11";

    fn now() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_767_225_600).unwrap() // 2026-01-01 00:00:00
    }

    fn test_ca(name: &str) -> Ca {
        Ca::generate(name, now()).unwrap()
    }

    fn der_of(pem: &str) -> Vec<u8> {
        cert_pem_to_der(pem).unwrap()
    }

    /// A CSR that asks for everything a source must not get: a CA flag, SANs, extra key
    /// usages and EKUs, a custom extension and a different subject.
    fn greedy_csr(alg: &'static rcgen::SignatureAlgorithm) -> (KeyPair, String) {
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

    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            let dir = std::env::temp_dir()
                .join(format!("replgate-ca-test-{}-{name}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }

        fn path(&self, file: &str) -> String {
            self.0.join(file).to_str().unwrap().to_owned()
        }

        fn write(&self, file: &str, text: &str) -> String {
            let path = self.path(file);
            std::fs::write(&path, text).unwrap();
            path
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Runs openssl; `None` (after a printed note) when it is not installed.
    fn openssl(args: &[&str]) -> Option<std::process::Output> {
        match Command::new("openssl").args(args).output() {
            Ok(out) => Some(out),
            Err(e) => {
                eprintln!("note: skipping openssl part of this test, openssl not runnable: {e}");
                None
            }
        }
    }

    /// An RSA CSR made by `openssl req`, or `None` when openssl is missing.
    fn openssl_rsa_csr(bits: u32) -> Option<String> {
        let dir = TempDir::new(&format!("rsa{bits}"));
        let out = openssl(&[
            "req",
            "-new",
            "-newkey",
            &format!("rsa:{bits}"),
            "-nodes",
            "-sha256",
            "-subj",
            "/CN=rsa-source",
            "-keyout",
            &dir.path("key.pem"),
            "-out",
            &dir.path("csr.pem"),
        ])?;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Some(std::fs::read_to_string(dir.path("csr.pem")).unwrap())
    }

    #[test]
    fn generated_ca_is_a_pathlen_zero_p256_ca_valid_twenty_years() {
        let ca = test_ca("replgate ca");
        let ca_der = ca.cert_der();
        let (_, cert) = X509Certificate::from_der(&ca_der).unwrap();
        let bc = cert.basic_constraints().unwrap().unwrap();
        assert!(bc.critical);
        assert!(bc.value.ca);
        assert_eq!(bc.value.path_len_constraint, Some(0));
        let ku = cert.key_usage().unwrap().unwrap().value;
        assert!(ku.key_cert_sign() && ku.crl_sign());
        assert!(!ku.digital_signature() && !ku.key_encipherment());
        assert_eq!(cert.raw_serial().len(), 16);
        assert!(cert.raw_serial()[0] < 0x80);
        let (from, until) = validity(&cert);
        assert_eq!(from, now().unix_timestamp() - 86_400);
        assert_eq!(until, now().unix_timestamp() + 20 * 365 * 86_400);
        assert_eq!(
            cert.subject()
                .iter_common_name()
                .next()
                .unwrap()
                .as_str()
                .unwrap(),
            "replgate ca"
        );
        assert_eq!(
            cert.public_key().algorithm.algorithm,
            OID_KEY_TYPE_EC_PUBLIC_KEY
        );
        cert.verify_signature(None).unwrap();
        assert_eq!(ca.fingerprint(), sha256_hex(&ca.cert_der()));
        assert_eq!(ca.fingerprint().len(), 64);
    }

    #[test]
    fn ca_reloads_from_pem_and_debug_hides_the_key() {
        let ca = test_ca("replgate ca");
        let again = Ca::from_pem(ca.cert_pem(), &ca.key_pem()).unwrap();
        assert_eq!(again.fingerprint(), ca.fingerprint());
        assert_eq!(again.cert_der(), ca.cert_der());
        let debug = format!("{ca:?}");
        assert!(!debug.contains("PRIVATE"), "{debug}");
        assert!(debug.contains(&ca.fingerprint()));

        // The reloaded CA issues certificates that chain to the same certificate.
        let (key, csr) = generate_client_key_and_csr(UUID).unwrap();
        let issued = again
            .sign_client(&parse_csr(&csr).unwrap(), UUID, 365, now())
            .unwrap();
        check_delivered(
            &issued.cert_pem,
            ca.cert_pem(),
            &key,
            &ca.fingerprint(),
            now().unix_timestamp(),
        )
        .unwrap();
    }

    #[test]
    fn ca_refuses_a_key_that_is_not_its_own_or_a_leaf_certificate() {
        let ca = test_ca("a");
        let other = test_ca("b");
        assert!(matches!(
            Ca::from_pem(ca.cert_pem(), &other.key_pem()),
            Err(CaError::CaKeyMismatch)
        ));
        let server = ca
            .issue_server_cert(&["localhost".to_owned()], &[], now())
            .unwrap();
        assert!(matches!(
            Ca::from_pem(&server.cert_pem, &server.key_pem),
            Err(CaError::NotCa)
        ));
        assert!(matches!(
            Ca::from_pem("garbage", &ca.key_pem()),
            Err(CaError::BadCaCertificate(_))
        ));
        assert!(matches!(
            Ca::from_pem(ca.cert_pem(), "garbage"),
            Err(CaError::BadCaKey { .. })
        ));
    }

    #[test]
    fn sign_client_copies_only_the_public_key_from_a_greedy_csr() {
        let ca = test_ca("replgate ca");
        let (_key, csr_pem) = greedy_csr(&PKCS_ECDSA_P256_SHA256);
        let csr = parse_csr(&csr_pem).unwrap();
        assert_eq!(csr.key_kind(), KeyKind::EcdsaP256);
        let issued = ca.sign_client(&csr, UUID, 365, now()).unwrap();

        let der = der_of(&issued.cert_pem);
        let (rest, cert) = X509Certificate::from_der(&der).unwrap();
        assert!(rest.is_empty());

        // Not a CA: basicConstraints present, critical, cA false.
        assert!(!cert.is_ca());
        let bc = cert.basic_constraints().unwrap().unwrap();
        assert!(bc.critical);
        assert!(!bc.value.ca);
        assert_eq!(bc.value.path_len_constraint, None);

        // clientAuth only.
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth);
        assert!(!eku.server_auth && !eku.code_signing && !eku.any);
        assert!(!eku.email_protection && !eku.time_stamping && !eku.ocsp_signing);
        assert!(eku.other.is_empty());

        // digitalSignature only.
        let ku = cert.key_usage().unwrap().unwrap().value;
        assert!(ku.digital_signature());
        assert_eq!(ku.flags, 1, "only digitalSignature: {ku:?}");

        // Subject set by the target, nothing from the CSR.
        let subject: Vec<_> = cert.subject().iter_attributes().collect();
        assert_eq!(subject.len(), 1);
        assert_eq!(
            cert.subject()
                .iter_common_name()
                .next()
                .unwrap()
                .as_str()
                .unwrap(),
            UUID
        );
        assert!(cert.subject_alternative_name().unwrap().is_none());

        // Exactly the extensions we write.
        let mut oids: Vec<String> = cert
            .extensions()
            .iter()
            .map(|e| e.oid.to_id_string())
            .collect();
        oids.sort();
        let mut expected: Vec<String> = [
            OID_X509_EXT_AUTHORITY_KEY_IDENTIFIER,
            OID_X509_EXT_SUBJECT_KEY_IDENTIFIER,
            OID_X509_EXT_KEY_USAGE,
            OID_X509_EXT_EXTENDED_KEY_USAGE,
            OID_X509_EXT_BASIC_CONSTRAINTS,
        ]
        .iter()
        .map(|o| o.to_id_string())
        .collect();
        expected.sort();
        assert_eq!(oids, expected);

        // The CSR's key, our issuer, our signature.
        assert_eq!(cert.public_key().raw, csr.spki_der());
        let ca_der = ca.cert_der();
        let (_, ca_cert) = X509Certificate::from_der(&ca_der).unwrap();
        assert_eq!(cert.issuer().as_raw(), ca_cert.subject().as_raw());
        cert.verify_signature(Some(ca_cert.public_key())).unwrap();

        // A 16-byte positive serial, reported as hex.
        let serial = cert.raw_serial();
        assert_eq!(serial.len(), 16);
        assert!(serial[0] & 0x80 == 0 && serial[0] != 0);
        assert_eq!(issued.serial, crate::rand::hex(serial));
        assert_eq!(issued.serial.len(), 32);

        // Validity as asked.
        let (from, until) = validity(&cert);
        assert_eq!(from, now().unix_timestamp() - 300);
        assert_eq!(until, now().unix_timestamp() + 365 * 86_400);
        assert_eq!(issued.not_after, until);
    }

    #[test]
    fn two_issues_for_the_same_csr_get_different_serials() {
        let ca = test_ca("replgate ca");
        let (_key, csr) = generate_client_key_and_csr(UUID).unwrap();
        let csr = parse_csr(&csr).unwrap();
        let a = ca.sign_client(&csr, UUID, 365, now()).unwrap();
        let b = ca.sign_client(&csr, UUID, 365, now()).unwrap();
        assert_ne!(a.serial, b.serial);
        assert_eq!(cert_serial_hex(&der_of(&a.cert_pem)).unwrap(), a.serial);
    }

    #[test]
    fn sign_client_refuses_out_of_range_lifetimes_and_names() {
        let ca = test_ca("replgate ca");
        let (_key, csr) = generate_client_key_and_csr(UUID).unwrap();
        let csr = parse_csr(&csr).unwrap();
        assert!(matches!(
            ca.sign_client(&csr, UUID, 0, now()),
            Err(CaError::InvalidLifetime { days: 0 })
        ));
        assert!(matches!(
            ca.sign_client(&csr, "", 365, now()),
            Err(CaError::InvalidName { .. })
        ));
        assert!(matches!(
            ca.sign_client(&csr, &"x".repeat(65), 365, now()),
            Err(CaError::InvalidName { .. })
        ));
    }

    #[test]
    fn p384_ed25519_and_rsa_2048_csrs_are_accepted_and_signed_with_their_exact_key() {
        let ca = test_ca("replgate ca");
        let mut csrs = vec![
            (greedy_csr(&PKCS_ECDSA_P384_SHA384).1, KeyKind::EcdsaP384),
            (greedy_csr(&PKCS_ED25519).1, KeyKind::Ed25519),
            (greedy_csr(&PKCS_ECDSA_P256_SHA256).1, KeyKind::EcdsaP256),
        ];
        if let Some(rsa) = openssl_rsa_csr(2048) {
            csrs.push((rsa, KeyKind::Rsa { bits: 2048 }));
        }
        for (pem, kind) in csrs {
            let csr = parse_csr(&pem).unwrap_or_else(|e| panic!("{kind}: {e}"));
            assert_eq!(csr.key_kind(), kind);
            assert_eq!(csr.fingerprint(), sha256_hex(csr.spki_der()));
            let issued = ca.sign_client(&csr, UUID, 30, now()).unwrap();
            let der = der_of(&issued.cert_pem);
            let (_, cert) = X509Certificate::from_der(&der).unwrap();
            assert_eq!(cert.public_key().raw, csr.spki_der(), "{kind}");
        }
    }

    #[test]
    fn rsa_1024_csr_is_weak_rsa_with_a_message_naming_the_size() {
        let Some(pem) = openssl_rsa_csr(1024) else {
            return;
        };
        let err = parse_csr(&pem).unwrap_err();
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
        let colons = fp
            .to_uppercase()
            .as_bytes()
            .chunks(2)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect::<Vec<_>>()
            .join(":");
        assert_eq!(code, verification_code(&colons, spki, 17));
    }

    #[test]
    fn normalize_fingerprint_accepts_case_and_colons_only_for_64_hex_digits() {
        let fp = sha256_hex(b"x");
        let upper_colons = fp
            .to_uppercase()
            .as_bytes()
            .chunks(2)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect::<Vec<_>>()
            .join(":");
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

    #[test]
    fn server_cert_has_server_auth_and_every_name() {
        let ca = test_ca("replgate ca");
        let ips: Vec<IpAddr> = vec!["127.0.0.1".parse().unwrap(), "::1".parse().unwrap()];
        let names = vec![
            "backup1.example".to_owned(),
            "192.0.2.7".to_owned(),
            "127.0.0.1".to_owned(), // also in `ips`: listed once
        ];
        let issued = ca.issue_server_cert(&names, &ips, now()).unwrap();
        assert!(!format!("{issued:?}").contains("PRIVATE"));
        let der = der_of(&issued.cert_pem);
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        assert!(!cert.is_ca());
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && !eku.client_auth);
        let san = cert.subject_alternative_name().unwrap().unwrap().value;
        let mut dns = Vec::new();
        let mut addrs = Vec::new();
        for name in &san.general_names {
            match name {
                GeneralName::DNSName(n) => dns.push(n.to_string()),
                GeneralName::IPAddress(b) if b.len() == 4 => {
                    addrs.push(IpAddr::from(<[u8; 4]>::try_from(*b).unwrap()))
                }
                GeneralName::IPAddress(b) => {
                    addrs.push(IpAddr::from(<[u8; 16]>::try_from(*b).unwrap()))
                }
                other => panic!("unexpected san {other:?}"),
            }
        }
        assert_eq!(dns, ["backup1.example"]);
        let expected: Vec<IpAddr> = vec![
            "192.0.2.7".parse().unwrap(),
            "127.0.0.1".parse().unwrap(),
            "::1".parse().unwrap(),
        ];
        assert_eq!(addrs, expected);
        assert_eq!(
            cert.subject()
                .iter_common_name()
                .next()
                .unwrap()
                .as_str()
                .unwrap(),
            "backup1.example"
        );
        let key = KeyPair::from_pem(&issued.key_pem).unwrap();
        assert_eq!(
            cert.public_key().raw,
            key.subject_public_key_info().as_slice()
        );
        let (_, until) = validity(&cert);
        assert_eq!(until, now().unix_timestamp() + 2 * 365 * 86_400);
        assert_eq!(issued.not_after, until);
        assert_eq!(issued.serial, cert_serial_hex(&der).unwrap());
        assert!(matches!(
            ca.issue_server_cert(&[], &[], now()),
            Err(CaError::NoServerNames)
        ));
        assert!(matches!(
            ca.issue_server_cert(&["bäd".to_owned()], &[], now()),
            Err(CaError::InvalidName { .. })
        ));
    }

    #[test]
    fn client_key_and_csr_carry_the_uuid_and_nothing_else() {
        let (key_pem, csr_pem) = generate_client_key_and_csr(UUID).unwrap();
        assert!(key_pem.contains("BEGIN PRIVATE KEY"));
        let csr = parse_csr(&csr_pem).unwrap();
        assert_eq!(csr.key_kind(), KeyKind::EcdsaP256);
        let der = pem_block(&csr_pem, CSR_LABELS).unwrap();
        let (_, parsed) = X509CertificationRequest::from_der(&der).unwrap();
        assert_eq!(
            parsed
                .certification_request_info
                .subject
                .iter_common_name()
                .next()
                .unwrap()
                .as_str()
                .unwrap(),
            UUID
        );
        assert_eq!(
            parsed
                .requested_extensions()
                .map(|e| e.count())
                .unwrap_or(0),
            0
        );
        let key = KeyPair::from_pem(&key_pem).unwrap();
        assert_eq!(key.subject_public_key_info(), csr.spki_der());
    }

    struct Delivery {
        ca: Ca,
        key_pem: String,
        issued: IssuedCert,
    }

    fn delivery() -> Delivery {
        let ca = test_ca("target ca");
        let (key_pem, csr) = generate_client_key_and_csr(UUID).unwrap();
        let issued = ca
            .sign_client(&parse_csr(&csr).unwrap(), UUID, 365, now())
            .unwrap();
        Delivery {
            ca,
            key_pem,
            issued,
        }
    }

    #[test]
    fn check_delivered_accepts_a_good_delivery() {
        let d = delivery();
        let pin_with_colons =
            d.ca.fingerprint()
                .to_uppercase()
                .as_bytes()
                .chunks(2)
                .map(|c| String::from_utf8_lossy(c).into_owned())
                .collect::<Vec<_>>()
                .join(":");
        let ok = check_delivered(
            &d.issued.cert_pem,
            d.ca.cert_pem(),
            &d.key_pem,
            &pin_with_colons,
            now().unix_timestamp(),
        )
        .unwrap();
        assert_eq!(ok.serial, d.issued.serial);
        assert_eq!(ok.not_after, d.issued.not_after);
    }

    #[test]
    fn check_delivered_rejects_a_certificate_for_another_key() {
        let d = delivery();
        let (other_key, _) = generate_client_key_and_csr(UUID).unwrap();
        let err = check_delivered(
            &d.issued.cert_pem,
            d.ca.cert_pem(),
            &other_key,
            &d.ca.fingerprint(),
            now().unix_timestamp(),
        )
        .unwrap_err();
        assert_eq!(err, DeliveryError::KeyMismatch);
        assert_eq!(
            err.to_string(),
            "certificate public key does not match this appliance's key"
        );
    }

    #[test]
    fn check_delivered_rejects_a_certificate_from_another_ca() {
        let d = delivery();
        let other = test_ca("target ca"); // same name, different key
        let (key_pem, csr) = generate_client_key_and_csr(UUID).unwrap();
        let foreign = other
            .sign_client(&parse_csr(&csr).unwrap(), UUID, 365, now())
            .unwrap();
        let err = check_delivered(
            &foreign.cert_pem,
            d.ca.cert_pem(),
            &key_pem,
            &d.ca.fingerprint(),
            now().unix_timestamp(),
        )
        .unwrap_err();
        assert_eq!(err, DeliveryError::NotIssuedByCa);
    }

    #[test]
    fn check_delivered_rejects_a_ca_other_than_the_pinned_one() {
        let d = delivery();
        let pinned = test_ca("the real target");
        let err = check_delivered(
            &d.issued.cert_pem,
            d.ca.cert_pem(),
            &d.key_pem,
            &pinned.fingerprint(),
            now().unix_timestamp(),
        )
        .unwrap_err();
        assert_eq!(
            err,
            DeliveryError::CaFingerprintMismatch {
                presented: d.ca.fingerprint().to_owned(),
                pinned: pinned.fingerprint().to_owned(),
            }
        );
        assert!(err.to_string().starts_with("ca fingerprint "));
        assert_eq!(
            check_delivered(
                &d.issued.cert_pem,
                d.ca.cert_pem(),
                &d.key_pem,
                "not a fingerprint",
                now().unix_timestamp(),
            ),
            Err(DeliveryError::InvalidPin)
        );
    }

    #[test]
    fn check_delivered_rejects_expired_and_not_yet_valid_certificates() {
        let d = delivery();
        let later = now().unix_timestamp() + 366 * 86_400;
        assert_eq!(
            check_delivered(
                &d.issued.cert_pem,
                d.ca.cert_pem(),
                &d.key_pem,
                &d.ca.fingerprint(),
                later
            ),
            Err(DeliveryError::Expired {
                not_after: d.issued.not_after
            })
        );
        let earlier = now().unix_timestamp() - 3_600;
        assert!(matches!(
            check_delivered(
                &d.issued.cert_pem,
                d.ca.cert_pem(),
                &d.key_pem,
                &d.ca.fingerprint(),
                earlier
            ),
            Err(DeliveryError::NotYetValid { .. })
        ));
    }

    #[test]
    fn check_delivered_rejects_a_server_certificate_and_a_leaf_posing_as_ca() {
        let d = delivery();
        let server =
            d.ca.issue_server_cert(&["localhost".to_owned()], &[], now())
                .unwrap();
        assert_eq!(
            check_delivered(
                &server.cert_pem,
                d.ca.cert_pem(),
                &server.key_pem,
                &d.ca.fingerprint(),
                now().unix_timestamp()
            ),
            Err(DeliveryError::MissingClientAuth)
        );
        let leaf_fp = sha256_hex(&der_of(&server.cert_pem));
        assert_eq!(
            check_delivered(
                &d.issued.cert_pem,
                &server.cert_pem,
                &d.key_pem,
                &leaf_fp,
                now().unix_timestamp()
            ),
            Err(DeliveryError::CaNotCa)
        );
        assert!(matches!(
            check_delivered(
                "garbage",
                d.ca.cert_pem(),
                &d.key_pem,
                &d.ca.fingerprint(),
                now().unix_timestamp()
            ),
            Err(DeliveryError::BadCertificate(_))
        ));
    }

    #[test]
    fn openssl_verifies_issued_client_and_server_certificates() {
        let now = OffsetDateTime::now_utc();
        let ca = Ca::generate("replgate openssl ca", now).unwrap();
        let (_key, csr) = greedy_csr(&PKCS_ECDSA_P256_SHA256);
        let client = ca
            .sign_client(&parse_csr(&csr).unwrap(), UUID, 365, now)
            .unwrap();
        let server = ca
            .issue_server_cert(
                &["localhost".to_owned()],
                &["127.0.0.1".parse().unwrap()],
                now,
            )
            .unwrap();
        let other = Ca::generate("replgate openssl ca", now).unwrap();

        let dir = TempDir::new("verify");
        let ca_file = dir.write("ca.pem", ca.cert_pem());
        let other_file = dir.write("other.pem", other.cert_pem());
        let client_file = dir.write("client.pem", &client.cert_pem);
        let server_file = dir.write("server.pem", &server.cert_pem);
        let verify = |ca: &str, purpose: &str, cert: &str| {
            openssl(&[
                "verify",
                "-x509_strict",
                "-CAfile",
                ca,
                "-purpose",
                purpose,
                cert,
            ])
            .map(|out| out.status.success())
        };
        let Some(ok) = verify(&ca_file, "sslclient", &client_file) else {
            return;
        };
        assert!(ok, "openssl refused the client certificate");
        assert_eq!(verify(&ca_file, "sslserver", &server_file), Some(true));
        assert_eq!(verify(&ca_file, "sslserver", &client_file), Some(false));
        assert_eq!(verify(&other_file, "sslclient", &client_file), Some(false));
    }
}
