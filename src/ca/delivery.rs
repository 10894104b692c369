//! Delivery checks, source side: what a source verifies about the certificate and CA a
//! target delivered before anything is installed. Decides nothing else and writes nothing.

use std::fmt;

use rcgen::{KeyPair, PublicKeyData};

use super::x509::{
    is_ca_cert, normalize_fingerprint, parse_cert_der, pem_block, serial_hex, sha256_hex, validity,
    CertError, CERT_LABELS,
};
use crate::model::format_utc;

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
                format_utc(*not_before),
                format_utc(*not_after)
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
                format_utc(*not_before)
            ),
            Self::Expired { not_after } => {
                write!(f, "certificate expired at {}", format_utc(*not_after))
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

/// What the source records about a certificate it accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveredCert {
    pub not_before: i64,
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
        not_before,
        not_after,
        serial: serial_hex(cert.raw_serial()),
    })
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{colon_fingerprint, days, der_of, now, test_ca, UUID};
    use super::super::{generate_client_key_and_csr, parse_csr, Ca, IssuedCert};
    use super::*;

    struct Delivery {
        ca: Ca,
        key_pem: String,
        issued: IssuedCert,
    }

    fn delivery() -> Delivery {
        let ca = test_ca("target ca");
        let (key_pem, csr) = generate_client_key_and_csr(UUID).unwrap();
        let issued = ca
            .sign_client(&parse_csr(&csr).unwrap(), UUID, days(365), now())
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
        let pin_with_colons = colon_fingerprint(&d.ca.fingerprint());
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
            .sign_client(&parse_csr(&csr).unwrap(), UUID, days(365), now())
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
            d.ca.issue_server_cert(&["localhost".to_owned()], &[], days(730), now())
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
}
