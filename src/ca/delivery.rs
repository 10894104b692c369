//! Delivery checks, source side: what a source verifies about the certificate and CA a
//! target delivered before anything is installed. Decides nothing else and writes nothing.

use std::fmt;

use rcgen::{KeyPair, PublicKeyData};

use super::cross::{check_endorsement, issued_by, EndorsementError};
use super::x509::{
    certs_pem_to_der, is_ca_cert, normalize_fingerprint, parse_cert_der, pem_block, pem_encode,
    serial_hex, sha256_hex, validity, CertError, CERT_LABELS,
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
    /// `ca.pem` holds more than the CA but not the new CA and its cross-certificate.
    Bundle { certificates: usize },
    /// The new CA in `ca.pem` is not endorsed by the pinned one.
    Endorsement(EndorsementError),
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
            Self::Bundle { certificates } => write!(
                f,
                "delivered ca.pem holds {certificates} certificates: one, or the ca, the new ca \
                 and its cross-certificate"
            ),
            Self::Endorsement(_) => {
                write!(
                    f,
                    "the new ca delivered beside the pinned one is not endorsed by it"
                )
            }
        }
    }
}

impl std::error::Error for DeliveryError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::BadCertificate(e) | Self::BadCa(e) => Some(e),
            Self::Endorsement(e) => Some(e),
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
    /// The CAs to trust for the target from now on (PEM): the pinned one, then, while the
    /// target rolls its CA over, the new CA and the cross-certificate by which the pinned
    /// one endorsed it.
    pub trust_pem: String,
}

/// The new CA and its cross-certificate of a `ca.pem` bundle `[ca, new ca, cross]`, once
/// the cross-certificate shows that `bundle[0]` endorsed it; None for a lone CA.
fn endorsed_next(bundle: &[Vec<u8>], now: i64) -> Result<Option<&[u8]>, DeliveryError> {
    match bundle {
        [_] => Ok(None),
        [ca, next, cross] => {
            check_endorsement(ca, next, cross, now).map_err(DeliveryError::Endorsement)?;
            Ok(Some(next))
        }
        other => Err(DeliveryError::Bundle {
            certificates: other.len(),
        }),
    }
}

/// Checks a certificate delivered by a target before anything is installed: `ca.pem`'s
/// first certificate is the pinned CA and is a CA valid now; a new CA after it (during a
/// rollover of the target's CA) comes with a cross-certificate by which the pinned CA
/// endorsed it; the certificate carries this appliance's public key, is signed by the
/// pinned CA or by that endorsed new one, is valid now and allows client authentication.
pub fn check_delivered(
    cert_pem: &str,
    ca_pem: &str,
    own_key_pem: &str,
    pinned_ca_fingerprint: &str,
    now_unix: i64,
) -> Result<DeliveredCert, DeliveryError> {
    let pinned = normalize_fingerprint(pinned_ca_fingerprint).ok_or(DeliveryError::InvalidPin)?;
    let bundle = certs_pem_to_der(ca_pem).map_err(DeliveryError::BadCa)?;
    let ca_der = &bundle[0];
    let presented = sha256_hex(ca_der);
    if presented != pinned {
        return Err(DeliveryError::CaFingerprintMismatch { presented, pinned });
    }
    let ca = parse_cert_der(ca_der).map_err(DeliveryError::BadCa)?;
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
    let next = endorsed_next(&bundle, now_unix)?;
    if !(issued_by(&cert_der, ca_der) || next.is_some_and(|next| issued_by(&cert_der, next))) {
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
        trust_pem: bundle
            .iter()
            .map(|der| pem_encode("CERTIFICATE", der))
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{colon_fingerprint, days, der_of, now, test_ca, UUID};
    use super::super::EndorsementError;
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
    fn a_leaf_of_the_new_ca_is_accepted_only_with_the_endorsement_of_the_pinned_one() {
        let old = test_ca("replgate CA old");
        let new = test_ca("replgate CA new");
        let (key_pem, csr) = generate_client_key_and_csr(UUID).unwrap();
        let leaf = new
            .sign_client(&parse_csr(&csr).unwrap(), UUID, days(30), now())
            .unwrap();
        let cross = old.cross_certify(&new, now()).unwrap();
        let bundle = format!("{}{}{cross}", old.cert_pem(), new.cert_pem());
        let at = now().unix_timestamp();
        let check = |ca_pem: &str| {
            check_delivered(&leaf.cert_pem, ca_pem, &key_pem, &old.fingerprint(), at)
        };
        let ok = check(&bundle).unwrap();
        assert_eq!(ok.serial, leaf.serial);
        assert_eq!(ok.trust_pem, bundle, "the bundle is what the source trusts");
        // The old CA alone does not know the new CA's leaf.
        assert_eq!(check(old.cert_pem()), Err(DeliveryError::NotIssuedByCa));
        // A new CA whose cross-certificate another key signed.
        let mallory = test_ca("replgate CA old");
        let forged = mallory.cross_certify(&new, now()).unwrap();
        let bad = format!("{}{}{forged}", old.cert_pem(), new.cert_pem());
        assert!(matches!(
            check(&bad),
            Err(DeliveryError::Endorsement(EndorsementError::BadSignature))
        ));
        // A new CA without its cross-certificate.
        let bare = format!("{}{}", old.cert_pem(), new.cert_pem());
        assert_eq!(check(&bare), Err(DeliveryError::Bundle { certificates: 2 }));
        // The new CA first, where the pinned one belongs.
        let swapped = format!("{}{}{cross}", new.cert_pem(), old.cert_pem());
        assert!(matches!(
            check(&swapped),
            Err(DeliveryError::CaFingerprintMismatch { .. })
        ));
        // An old CA's leaf with the bundle is fine too (delivered before the rollover).
        let (old_key, csr) = generate_client_key_and_csr(UUID).unwrap();
        let old_leaf = old
            .sign_client(&parse_csr(&csr).unwrap(), UUID, days(30), now())
            .unwrap();
        check_delivered(
            &old_leaf.cert_pem,
            &bundle,
            &old_key,
            &old.fingerprint(),
            at,
        )
        .unwrap();
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
