//! Certificates: the only caller of rcgen. Creates and loads the appliance CA, issues the
//! listener certificates and sources' client certificates, and makes a source's key and
//! CSR. Bytes in, bytes out: no file or socket I/O, and the current time is always passed
//! in. The parts: `csr` parses and judges a CSR (target side), `x509` reads certificates,
//! serials, fingerprints and PEM, `delivery` checks a delivered certificate (source side),
//! `code` is the verification code both admins compare, `cross` makes and checks the
//! cross-certificates of a CA rollover, `authority` is the set of CAs in force.
//!
//! Invariants:
//! - An issued certificate copies nothing from a CSR except its public key: the parameters
//!   are built fresh here (rcgen's `CertificateSigningRequestParams::signed_by` would copy
//!   the requested CA flag, key usages and names, so it is never used).
//! - Every certificate gets explicit `not_before`/`not_after` and a random 128-bit serial
//!   (rcgen would otherwise default to 1975..4096 and a serial derived from the key).
//! - A serial is written as lowercase hex of its big-endian magnitude without leading zero
//!   bytes ([`cert_serial_hex`]); issuing and revocation checks use that same function.

mod authority;
mod code;
mod cross;
mod csr;
mod delivery;
mod pss;
#[cfg(test)]
mod test_support;
mod x509;

use std::fmt;
use std::net::IpAddr;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber,
    SubjectPublicKeyInfo as RcgenSpki, PKCS_ECDSA_P256_SHA256,
};
use ring::rand::{SecureRandom, SystemRandom};
use rustls::pki_types::CertificateDer;
use time::{Duration, OffsetDateTime, UtcOffset};

pub use authority::{Authority, CaSet, Successor};
pub use code::verification_code;
pub use cross::{check_endorsement, endorsed_through, issued_by, EndorsementError};
pub use csr::{parse_csr, CsrError, KeyKind, ValidCsr};
pub use delivery::{check_delivered, DeliveredCert, DeliveryError};
pub use x509::{
    cert_der_to_pem, cert_info, cert_not_after, cert_pem_to_der, cert_serial_hex, certs_pem_to_der,
    normalize_fingerprint, sha256_hex, CertError, CertInfo, MAX_BUNDLE_CERTS,
};
use x509::{is_ca_cert, parse_cert_der, pem_block, pem_encode, CERT_LABELS};

/// Validity of the appliance CA: 20 years.
const CA_LIFETIME: Duration = Duration::days(20 * 365);
/// How far the CA and server certificates are backdated. Another appliance verifies them
/// with its own clock, which may lag ours (and the CA is often created minutes before a
/// pairing), so they get a day of slack.
const PEER_CLOCK_SLACK: Duration = Duration::days(1);
/// How far an issued client certificate is backdated. Only this appliance (the one that
/// issued it) verifies it, so a small slack is enough.
const CLIENT_CERT_BACKDATE: Duration = Duration::minutes(5);
/// Shortest certificate lifetime issued (lab and test lifetimes; SPEC 12's minimum).
const MIN_LIFETIME: std::time::Duration = std::time::Duration::from_secs(60);
/// Longest client or server certificate lifetime issued (10 years; never past the CA).
const MAX_LIFETIME: std::time::Duration = std::time::Duration::from_secs(3_650 * 86_400);
/// Longest subject common name (X.520 ub-common-name).
const MAX_COMMON_NAME_CHARS: usize = 64;
/// Serial numbers are 16 random bytes (128 bits, top bit cleared so the DER integer is
/// positive).
const SERIAL_BYTES: usize = 16;

/// Failures of the CA itself: loading it, generating keys, issuing certificates.
#[derive(Debug)]
pub enum CaError {
    /// The CA certificate text holds no parseable certificate.
    BadCaCertificate(CertError),
    /// The CA key text is not a PKCS#8 key rcgen can use.
    BadCaKey { reason: String },
    /// A pairing key given to make a CSR for is not a PKCS#8 key rcgen can use.
    BadClientKey { reason: String },
    /// The CA key is not the key of the CA certificate.
    CaKeyMismatch,
    /// The CA certificate is not a CA (no basicConstraints cA=true).
    NotCa,
    /// A name given for a certificate cannot be encoded.
    InvalidName { name: String, reason: &'static str },
    /// A server certificate was asked for without any hostname or address.
    NoServerNames,
    /// The requested certificate lifetime is out of range.
    InvalidLifetime { seconds: u64 },
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
            Self::BadClientKey { reason } => write!(f, "pairing key does not parse: {reason}"),
            Self::CaKeyMismatch => write!(f, "ca key does not belong to the ca certificate"),
            Self::NotCa => write!(f, "ca certificate is not marked as a ca"),
            Self::InvalidName { name, reason } => write!(f, "name {name:?} {reason}"),
            Self::NoServerNames => write!(f, "server certificate needs a hostname or an address"),
            Self::InvalidLifetime { seconds } => write!(
                f,
                "certificate lifetime of {seconds} s is outside {} to {} s",
                MIN_LIFETIME.as_secs(),
                MAX_LIFETIME.as_secs()
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

/// The appliance's own certificate authority: signs the API and tunnel server certificates
/// and the client certificates of paired sources.
pub struct Ca {
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    fingerprint: String,
    /// End of the CA's validity (unix seconds): nothing it issues outlives it.
    not_after: i64,
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
    /// Fingerprint of the CA that signed it (during a rollover, the new one).
    pub issuer: String,
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
        let not_after = {
            let cert = parse_cert_der(&cert_der).map_err(CaError::BadCaCertificate)?;
            if cert.public_key().raw != key.subject_public_key_info().as_slice() {
                return Err(CaError::CaKeyMismatch);
            }
            if !is_ca_cert(&cert) {
                return Err(CaError::NotCa);
            }
            x509::validity(&cert).1
        };
        let cert_pem = pem_encode("CERTIFICATE", &cert_der);
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key).map_err(|source| CaError::Rcgen {
            action: "read ca certificate as an issuer",
            source,
        })?;
        Ok(Ca {
            fingerprint: sha256_hex(&cert_der),
            not_after,
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

    /// End of the CA certificate's validity, unix seconds.
    pub fn not_after(&self) -> i64 {
        self.not_after
    }

    /// The validity of a certificate issued at `now` for `lifetime`: backdated by `slack`
    /// (but at most a tenth of the lifetime, so that a lab lifetime of a minute is not
    /// mostly backdating), and never ending after the CA does.
    fn validity(
        &self,
        now: OffsetDateTime,
        lifetime: std::time::Duration,
        slack: Duration,
    ) -> Result<(OffsetDateTime, OffsetDateTime), CaError> {
        if !(MIN_LIFETIME..=MAX_LIFETIME).contains(&lifetime) {
            return Err(CaError::InvalidLifetime {
                seconds: lifetime.as_secs(),
            });
        }
        let seconds = i64::try_from(lifetime.as_secs()).map_err(|_| CaError::TimeOutOfRange)?;
        let backdate = slack.min(Duration::seconds(seconds / 10));
        let ca_end = OffsetDateTime::from_unix_timestamp(self.not_after)
            .map_err(|_| CaError::TimeOutOfRange)?;
        let not_after = checked_add(now, Duration::seconds(seconds))?.min(ca_end);
        Ok((checked_sub(now, backdate)?, not_after))
    }

    /// Issues a fresh P-256 key and an end-entity server certificate (serverAuth,
    /// digitalSignature, SANs for every name and address, valid `lifetime` from `now`
    /// backdated a day, random serial) for the API or the tunnel listener. A hostname that
    /// parses as an IP address becomes an IP SAN.
    pub fn issue_server_cert(
        &self,
        hostnames: &[String],
        ips: &[IpAddr],
        lifetime: std::time::Duration,
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
        let (not_before, not_after) = self.validity(now, lifetime, PEER_CLOCK_SLACK)?;
        let mut params = end_entity_params(
            &common_name,
            not_before,
            not_after,
            ExtendedKeyUsagePurpose::ServerAuth,
        )?;
        params.subject_alt_names = sans;
        let (cert_pem, info) = self.sign(params, &key, "sign server certificate")?;
        Ok(IssuedKeyPair {
            cert_pem,
            key_pem: key.serialize_pem(),
            serial: info.serial,
            not_after: info.not_after,
        })
    }

    /// Signs a source's CSR. Only the CSR's public key is used: the certificate is an
    /// end-entity (basicConstraints cA=false), clientAuth only, digitalSignature only, with
    /// subject CN `subject_cn` (the source's system_uuid), no SANs, a random serial, valid
    /// from `now` − 5 minutes (a tenth of a shorter lifetime) for `lifetime`, at most until
    /// the CA ends.
    pub fn sign_client(
        &self,
        csr: &ValidCsr,
        subject_cn: &str,
        lifetime: std::time::Duration,
        now: OffsetDateTime,
    ) -> Result<IssuedCert, CaError> {
        let now = utc_seconds(now)?;
        let (not_before, not_after) = self.validity(now, lifetime, CLIENT_CERT_BACKDATE)?;
        let public_key =
            RcgenSpki::from_der(csr.spki_der()).map_err(|_| CaError::UnencodableKey)?;
        // rcgen re-encodes the SubjectPublicKeyInfo from (algorithm, key bits); make sure
        // the certificate will carry exactly the key the CSR proved possession of.
        if public_key.subject_public_key_info() != csr.spki_der() {
            return Err(CaError::UnencodableKey);
        }
        let params = end_entity_params(
            subject_cn,
            not_before,
            not_after,
            ExtendedKeyUsagePurpose::ClientAuth,
        )?;
        let (cert_pem, info) = self.sign(params, &public_key, "sign client certificate")?;
        Ok(IssuedCert {
            cert_pem,
            serial: info.serial,
            not_after: info.not_after,
            issuer: self.fingerprint.clone(),
        })
    }

    /// Signs `params` for `public_key` with the CA key; returns the certificate as PEM and
    /// what it says, read back from the DER (serial, validity).
    fn sign(
        &self,
        params: CertificateParams,
        public_key: &impl PublicKeyData,
        action: &'static str,
    ) -> Result<(String, CertInfo), CaError> {
        let cert = params
            .signed_by(public_key, &self.issuer)
            .map_err(|source| CaError::Rcgen { action, source })?;
        let info = cert_info(cert.der()).map_err(CaError::Reparse)?;
        Ok((pem_encode("CERTIFICATE", cert.der()), info))
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

/// Makes this appliance's P-256 key for a target and a CSR for it with subject CN
/// `system_uuid` and no extensions. Returns `(key_pem, csr_pem)`; the key is PKCS#8 and the
/// caller writes it with mode 0o600.
pub fn generate_client_key_and_csr(system_uuid: &str) -> Result<(String, String), CaError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|source| CaError::Rcgen {
        action: "generate client key",
        source,
    })?;
    let csr = client_csr(&key, system_uuid)?;
    Ok((key.serialize_pem(), csr))
}

/// A fresh CSR (subject CN `system_uuid`, no extensions) for a key made earlier: a renewal
/// retried after a crash or a lost answer asks again for the same key, so the target can
/// recognise it and hand back the certificate it already issued.
pub fn csr_for_key(key_pem: &str, system_uuid: &str) -> Result<String, CaError> {
    let key = KeyPair::from_pem(key_pem).map_err(|e| CaError::BadClientKey {
        reason: e.to_string().to_lowercase(),
    })?;
    client_csr(&key, system_uuid)
}

/// SHA-256 of a private key's SubjectPublicKeyInfo, lowercase hex: equal to
/// [`CertInfo::key_fingerprint`] of a certificate for that key.
pub fn key_fingerprint(key_pem: &str) -> Result<String, CaError> {
    let key = KeyPair::from_pem(key_pem).map_err(|e| CaError::BadClientKey {
        reason: e.to_string().to_lowercase(),
    })?;
    Ok(sha256_hex(&key.subject_public_key_info()))
}

fn client_csr(key: &KeyPair, system_uuid: &str) -> Result<String, CaError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = common_name_dn(system_uuid)?;
    params
        .serialize_request(key)
        .and_then(|csr| csr.pem())
        .map_err(|source| CaError::Rcgen {
            action: "create csr",
            source,
        })
}

#[cfg(test)]
mod tests {
    use x509_parser::certificate::X509Certificate;
    use x509_parser::certification_request::X509CertificationRequest;
    use x509_parser::extensions::GeneralName;
    use x509_parser::oid_registry::{
        OID_KEY_TYPE_EC_PUBLIC_KEY, OID_X509_EXT_AUTHORITY_KEY_IDENTIFIER,
        OID_X509_EXT_BASIC_CONSTRAINTS, OID_X509_EXT_EXTENDED_KEY_USAGE, OID_X509_EXT_KEY_USAGE,
        OID_X509_EXT_SUBJECT_KEY_IDENTIFIER,
    };
    use x509_parser::prelude::FromDer;

    use super::csr::CSR_LABELS;
    use super::test_support::{
        days, der_of, first_cn, greedy_csr, now, openssl, test_ca, TempDir, UUID,
    };
    use super::x509::validity;
    use super::*;

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
        assert_eq!(first_cn(cert.subject()), "replgate ca");
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
            .sign_client(&parse_csr(&csr).unwrap(), UUID, days(365), now())
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
            .issue_server_cert(&["localhost".to_owned()], &[], days(730), now())
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
        let issued = ca.sign_client(&csr, UUID, days(365), now()).unwrap();

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
        assert_eq!(first_cn(cert.subject()), UUID);
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
        assert_eq!(issued.serial, crate::wire::hex::encode(serial));
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
        let a = ca.sign_client(&csr, UUID, days(365), now()).unwrap();
        let b = ca.sign_client(&csr, UUID, days(365), now()).unwrap();
        assert_ne!(a.serial, b.serial);
        assert_eq!(cert_serial_hex(&der_of(&a.cert_pem)).unwrap(), a.serial);
    }

    #[test]
    fn a_lab_lifetime_is_backdated_a_tenth_and_nothing_outlives_the_ca() {
        let ca = test_ca("replgate ca");
        let (_key, csr) = generate_client_key_and_csr(UUID).unwrap();
        let csr = parse_csr(&csr).unwrap();
        let minute = std::time::Duration::from_secs(60);
        let t = now().unix_timestamp();
        let client = ca.sign_client(&csr, UUID, minute, now()).unwrap();
        let info = cert_info(&der_of(&client.cert_pem)).unwrap();
        assert_eq!((info.not_before, info.not_after), (t - 6, t + 60));
        let server = ca
            .issue_server_cert(&["localhost".to_owned()], &[], minute, now())
            .unwrap();
        let info = cert_info(&der_of(&server.cert_pem)).unwrap();
        assert_eq!((info.not_before, info.not_after), (t - 6, t + 60));
        // A year is backdated the full slack: five minutes for a client, a day for a server.
        let year = ca.sign_client(&csr, UUID, days(365), now()).unwrap();
        let info = cert_info(&der_of(&year.cert_pem)).unwrap();
        assert_eq!(info.not_before, t - 300);
        // Ten years from a CA with less than that left end with the CA.
        let late = now() + time::Duration::days(15 * 365);
        let capped = ca.sign_client(&csr, UUID, days(3_650), late).unwrap();
        assert_eq!(capped.not_after, ca.not_after());
        assert_eq!(ca.not_after(), t + 20 * 365 * 86_400);
    }

    #[test]
    fn a_csr_for_a_kept_key_asks_for_the_same_public_key() {
        let (key, first) = generate_client_key_and_csr(UUID).unwrap();
        let again = csr_for_key(&key, UUID).unwrap();
        let issued = test_ca("c")
            .sign_client(&parse_csr(&again).unwrap(), UUID, days(1), now())
            .unwrap();
        let info = cert_info(&der_of(&issued.cert_pem)).unwrap();
        assert_eq!(key_fingerprint(&key).unwrap(), info.key_fingerprint);
        let (a, b) = (parse_csr(&first).unwrap(), parse_csr(&again).unwrap());
        assert_eq!(a.spki_der(), b.spki_der());
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert!(matches!(
            csr_for_key("garbage", UUID),
            Err(CaError::BadClientKey { .. })
        ));
    }

    #[test]
    fn sign_client_refuses_out_of_range_lifetimes_and_names() {
        let ca = test_ca("replgate ca");
        let (_key, csr) = generate_client_key_and_csr(UUID).unwrap();
        let csr = parse_csr(&csr).unwrap();
        assert!(matches!(
            ca.sign_client(&csr, UUID, days(0), now()),
            Err(CaError::InvalidLifetime { seconds: 0 })
        ));
        assert!(matches!(
            ca.sign_client(&csr, UUID, std::time::Duration::from_secs(59), now()),
            Err(CaError::InvalidLifetime { seconds: 59 })
        ));
        assert!(matches!(
            ca.sign_client(&csr, UUID, days(3_651), now()),
            Err(CaError::InvalidLifetime { .. })
        ));
        assert!(matches!(
            ca.sign_client(&csr, "", days(365), now()),
            Err(CaError::InvalidName { .. })
        ));
        assert!(matches!(
            ca.sign_client(&csr, &"x".repeat(65), days(365), now()),
            Err(CaError::InvalidName { .. })
        ));
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
        let issued = ca
            .issue_server_cert(&names, &ips, days(730), now())
            .unwrap();
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
        assert_eq!(first_cn(cert.subject()), "backup1.example");
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
            ca.issue_server_cert(&[], &[], days(730), now()),
            Err(CaError::NoServerNames)
        ));
        assert!(matches!(
            ca.issue_server_cert(&["bäd".to_owned()], &[], days(730), now()),
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
        assert_eq!(first_cn(&parsed.certification_request_info.subject), UUID);
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

    #[test]
    fn openssl_verifies_issued_client_and_server_certificates() {
        let now = OffsetDateTime::now_utc();
        let ca = Ca::generate("replgate openssl ca", now).unwrap();
        let (_key, csr) = greedy_csr(&PKCS_ECDSA_P256_SHA256);
        let client = ca
            .sign_client(&parse_csr(&csr).unwrap(), UUID, days(365), now)
            .unwrap();
        let server = ca
            .issue_server_cert(
                &["localhost".to_owned()],
                &["127.0.0.1".parse().unwrap()],
                days(730),
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
            .status
            .success()
        };
        assert!(
            verify(&ca_file, "sslclient", &client_file),
            "openssl refused the client certificate"
        );
        assert!(verify(&ca_file, "sslserver", &server_file));
        assert!(!verify(&ca_file, "sslserver", &client_file));
        assert!(!verify(&other_file, "sslclient", &client_file));
    }
}
