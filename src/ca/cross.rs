//! Cross-certificates, the proof a CA rollover rests on (SPEC 22): the new CA's subject
//! and key, signed by the CA it replaces. A leaf of the new CA then verifies for a peer
//! that trusts only the old CA (leaf → cross-certificate → old CA), and a source offered
//! a new CA checks that the key it already trusts endorsed it before trusting it too.
//! Bytes in, bytes out; the time is passed in.
//!
//! Invariants:
//! - A cross-certificate copies the successor's subject and key exactly (the same name
//!   encoding its self-signed certificate has), so a leaf's issuer matches both; old and
//!   new CA have distinct subject names, so a path is never ambiguous.
//! - An endorsement is checked by signature, never by name alone: the cross-certificate's
//!   issuer is the endorser's subject and its signature verifies under the endorser's
//!   key; its subject and key are the successor's; all of them are CAs valid now.

use std::fmt;

use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyUsagePurpose};
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;

use super::x509::{is_ca_cert, parse_cert_der, pem_encode, validity, CertError};
use super::{checked_sub, common_name_dn, random_serial, utc_seconds, Ca, CaError};

/// Why a cross-certificate does not show that one CA endorsed another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndorsementError {
    /// A certificate does not parse.
    BadCertificate(CertError),
    /// The named certificate is not a CA.
    NotCa { which: &'static str },
    /// The successor's own certificate is not self-signed.
    NotSelfSigned,
    /// The successor has the endorser's subject name (a rollover always changes it).
    SameName,
    /// The cross-certificate is not about the successor: another subject...
    WrongSubject,
    /// ...or another key.
    WrongKey,
    /// The cross-certificate was not issued in the endorser's name...
    WrongIssuer,
    /// ...or its signature does not verify under the endorser's key.
    BadSignature,
    /// The named certificate is not valid now.
    NotValidNow {
        which: &'static str,
        not_before: i64,
        not_after: i64,
    },
}

impl fmt::Display for EndorsementError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadCertificate(_) => {
                f.write_str("a certificate of the endorsement does not parse")
            }
            Self::NotCa { which } => write!(f, "the {which} is not a ca certificate"),
            Self::NotSelfSigned => f.write_str("the new ca certificate is not self-signed"),
            Self::SameName => f.write_str("the new ca has the subject name of the ca it replaces"),
            Self::WrongSubject => {
                f.write_str("the cross-certificate names another subject than the new ca")
            }
            Self::WrongKey => {
                f.write_str("the cross-certificate carries another key than the new ca")
            }
            Self::WrongIssuer => {
                f.write_str("the cross-certificate was not issued by the trusted ca")
            }
            Self::BadSignature => f.write_str(
                "the cross-certificate's signature does not verify under the trusted ca's key",
            ),
            Self::NotValidNow {
                which,
                not_before,
                not_after,
            } => write!(
                f,
                "the {which} is valid only from {} to {} (check the clocks)",
                crate::model::format_utc(*not_before),
                crate::model::format_utc(*not_after)
            ),
        }
    }
}

impl std::error::Error for EndorsementError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::BadCertificate(e) => Some(e),
            _ => None,
        }
    }
}

impl Ca {
    /// The cross-certificate by which this CA endorses `successor`: the successor's
    /// subject and key, a CA of path length 0 for key and CRL signing like every appliance
    /// CA, a random serial, valid from `now` (backdated a day, as the CA is) until the
    /// earlier end of the two CAs. PEM.
    pub fn cross_certify(&self, successor: &Ca, now: OffsetDateTime) -> Result<String, CaError> {
        let now = utc_seconds(now)?;
        let info = super::cert_info(&successor.cert_der).map_err(CaError::Reparse)?;
        let name = info.common_name.ok_or(CaError::InvalidName {
            name: String::new(),
            reason: "of the new ca is missing",
        })?;
        let mut params = CertificateParams::default();
        params.distinguished_name = common_name_dn(&name)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial()?);
        params.not_before = checked_sub(now, super::PEER_CLOCK_SLACK)?;
        let end = self.not_after.min(successor.not_after);
        params.not_after =
            OffsetDateTime::from_unix_timestamp(end).map_err(|_| CaError::TimeOutOfRange)?;
        let cert = params
            .signed_by(successor.issuer.key(), &self.issuer)
            .map_err(|source| CaError::Rcgen {
                action: "sign the cross-certificate",
                source,
            })?;
        Ok(pem_encode("CERTIFICATE", cert.der()))
    }
}

fn parse(der: &[u8]) -> Result<X509Certificate<'_>, EndorsementError> {
    parse_cert_der(der).map_err(EndorsementError::BadCertificate)
}

/// A CA certificate valid at `now`, or why not.
fn valid_ca(
    cert: &X509Certificate<'_>,
    which: &'static str,
    now: i64,
) -> Result<(), EndorsementError> {
    if !is_ca_cert(cert) {
        return Err(EndorsementError::NotCa { which });
    }
    let (not_before, not_after) = validity(cert);
    if now < not_before || now > not_after {
        return Err(EndorsementError::NotValidNow {
            which,
            not_before,
            not_after,
        });
    }
    Ok(())
}

/// `cross` was signed by `endorser` (name and signature) and is a CA valid now.
fn signed_by(
    cross: &X509Certificate<'_>,
    endorser: &X509Certificate<'_>,
    now: i64,
) -> Result<(), EndorsementError> {
    valid_ca(cross, "cross-certificate", now)?;
    if cross.issuer().as_raw() != endorser.subject().as_raw() {
        return Err(EndorsementError::WrongIssuer);
    }
    cross
        .verify_signature(Some(endorser.public_key()))
        .map_err(|_| EndorsementError::BadSignature)
}

/// Checks that `cross_der` endorses the CA `successor_der` under the CA `endorser_der`
/// (all DER) at `now`: the successor is a self-signed CA valid now with a name of its
/// own, and the cross-certificate carries its subject and key, issued and signed by the
/// endorser. This is how a source decides to trust the new CA its target announces.
pub fn check_endorsement(
    endorser_der: &[u8],
    successor_der: &[u8],
    cross_der: &[u8],
    now: i64,
) -> Result<(), EndorsementError> {
    let endorser = parse(endorser_der)?;
    let successor = parse(successor_der)?;
    let cross = parse(cross_der)?;
    valid_ca(&endorser, "trusted ca", now)?;
    valid_ca(&successor, "new ca", now)?;
    if successor.issuer().as_raw() != successor.subject().as_raw()
        || successor.verify_signature(None).is_err()
    {
        return Err(EndorsementError::NotSelfSigned);
    }
    if successor.subject().as_raw() == endorser.subject().as_raw() {
        return Err(EndorsementError::SameName);
    }
    valid_ca(&cross, "cross-certificate", now)?;
    if cross.subject().as_raw() != successor.subject().as_raw() {
        return Err(EndorsementError::WrongSubject);
    }
    if cross.public_key().raw != successor.public_key().raw {
        return Err(EndorsementError::WrongKey);
    }
    signed_by(&cross, &endorser, now)
}

/// Whether the CA `presented_der` descends from the CA `pinned_der` through `crosses`
/// (DER, oldest first): each endorsed by the CA before it, the last carrying the
/// presented CA's subject and key. What a source that was off through one or more
/// rollovers checks before it tells its admin that the target replaced its CA.
pub fn endorsed_through(
    pinned_der: &[u8],
    presented_der: &[u8],
    crosses: &[Vec<u8>],
    now: i64,
) -> bool {
    let (Ok(pinned), Ok(presented)) = (parse(pinned_der), parse(presented_der)) else {
        return false;
    };
    let Ok(crosses) = crosses
        .iter()
        .map(|c| parse(c))
        .collect::<Result<Vec<_>, _>>()
    else {
        return false;
    };
    let mut current = &pinned;
    for cross in &crosses {
        if signed_by(cross, current, now).is_ok() {
            current = cross;
        }
    }
    !std::ptr::eq(current, &pinned)
        && current.subject().as_raw() == presented.subject().as_raw()
        && current.public_key().raw == presented.public_key().raw
}

/// Whether `cert_der` was issued by the CA `ca_der`: its issuer is the CA's subject and
/// its signature verifies under the CA's key.
pub fn issued_by(cert_der: &[u8], ca_der: &[u8]) -> bool {
    let (Ok(cert), Ok(ca)) = (parse_cert_der(cert_der), parse_cert_der(ca_der)) else {
        return false;
    };
    cert.issuer().as_raw() == ca.subject().as_raw()
        && cert.verify_signature(Some(ca.public_key())).is_ok()
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{days, der_of, now, openssl, test_ca, TempDir, UUID};
    use super::super::{generate_client_key_and_csr, parse_csr};
    use super::*;

    fn t() -> i64 {
        now().unix_timestamp()
    }

    #[test]
    fn a_cross_certificate_carries_the_successors_name_and_key_under_the_old_ca() {
        let old = test_ca("replgate CA 5f0c7a52");
        let new = test_ca("replgate CA 5f0c7a52 gen 1");
        let cross = der_of(&old.cross_certify(&new, now()).unwrap());
        let (new_der, old_der) = (new.cert_der(), old.cert_der());
        let (c, n, o) = (
            parse_cert_der(&cross).unwrap(),
            parse_cert_der(&new_der).unwrap(),
            parse_cert_der(&old_der).unwrap(),
        );
        assert_eq!(c.subject().as_raw(), n.subject().as_raw(), "byte for byte");
        assert_eq!(c.public_key().raw, n.public_key().raw);
        assert_eq!(c.issuer().as_raw(), o.subject().as_raw());
        c.verify_signature(Some(o.public_key())).unwrap();
        let bc = c.basic_constraints().unwrap().unwrap().value;
        assert!(bc.ca);
        assert_eq!(bc.path_len_constraint, Some(0));
        assert_eq!(validity(&c).1, old.not_after().min(new.not_after()));
        check_endorsement(&old.cert_der(), &new.cert_der(), &cross, t()).unwrap();
        // A leaf of the new CA names the cross-certificate's subject as its issuer, so a
        // path leaf → cross → old CA exists; and it is issued by the new CA itself.
        let (_, csr) = generate_client_key_and_csr(UUID).unwrap();
        let leaf = new
            .sign_client(&parse_csr(&csr).unwrap(), UUID, days(30), now())
            .unwrap();
        let leaf = der_of(&leaf.cert_pem);
        assert!(issued_by(&leaf, &new.cert_der()));
        assert!(
            issued_by(&leaf, &cross),
            "the cross-certificate has the new key"
        );
        assert!(!issued_by(&leaf, &old.cert_der()));
        assert!(issued_by(&cross, &old.cert_der()));
    }

    #[test]
    fn an_endorsement_by_anyone_but_the_trusted_ca_is_refused() {
        let old = test_ca("old");
        let new = test_ca("new");
        let mallory = test_ca("old"); // the old CA's name, another key
        let other = test_ca("other");
        let good = der_of(&old.cross_certify(&new, now()).unwrap());
        let forged = der_of(&mallory.cross_certify(&new, now()).unwrap());
        let check = |cross: &[u8], successor: &Ca| {
            check_endorsement(&old.cert_der(), &successor.cert_der(), cross, t())
        };
        assert_eq!(check(&forged, &new), Err(EndorsementError::BadSignature));
        let by_other = der_of(&other.cross_certify(&new, now()).unwrap());
        assert_eq!(check(&by_other, &new), Err(EndorsementError::WrongIssuer));
        // A genuine cross-certificate offered for another new CA.
        let impostor = test_ca("new");
        assert_eq!(check(&good, &impostor), Err(EndorsementError::WrongKey));
        assert_eq!(check(&good, &other), Err(EndorsementError::WrongSubject));
        // The old CA's own name for the new one.
        let same_name = test_ca("old");
        let cross = der_of(&old.cross_certify(&same_name, now()).unwrap());
        assert_eq!(check(&cross, &same_name), Err(EndorsementError::SameName));
        // A leaf is no CA, and a new CA must be self-signed.
        let server = old
            .issue_server_cert(&["x.example".into()], &[], days(30), now())
            .unwrap();
        assert_eq!(
            check_endorsement(
                &old.cert_der(),
                &new.cert_der(),
                &der_of(&server.cert_pem),
                t()
            ),
            Err(EndorsementError::NotCa {
                which: "cross-certificate"
            })
        );
        assert_eq!(
            check_endorsement(&old.cert_der(), &good, &good, t()),
            Err(EndorsementError::NotSelfSigned)
        );
        // Out of date.
        assert!(matches!(
            check_endorsement(&old.cert_der(), &new.cert_der(), &good, t() - 3 * 86_400),
            Err(EndorsementError::NotValidNow { .. })
        ));
        assert!(matches!(
            check_endorsement(&old.cert_der(), &new.cert_der(), b"junk", t()),
            Err(EndorsementError::BadCertificate(_))
        ));
    }

    #[test]
    fn a_ca_two_rollovers_on_descends_from_the_pinned_one_through_their_crosses() {
        let (a, b, c) = (test_ca("a"), test_ca("b"), test_ca("c"));
        let ab = der_of(&a.cross_certify(&b, now()).unwrap());
        let bc = der_of(&b.cross_certify(&c, now()).unwrap());
        let through = |pinned: &Ca, presented: &Ca, crosses: &[Vec<u8>]| {
            endorsed_through(&pinned.cert_der(), &presented.cert_der(), crosses, t())
        };
        assert!(through(&a, &b, std::slice::from_ref(&ab)));
        assert!(through(&a, &c, &[ab.clone(), bc.clone()]));
        assert!(
            through(&b, &c, &[ab.clone(), bc.clone()]),
            "the older cross is skipped"
        );
        assert!(
            !through(&a, &c, std::slice::from_ref(&bc)),
            "a gap in the chain"
        );
        assert!(!through(&a, &a, &[]), "no rollover at all");
        assert!(
            !through(&c, &b, &[ab.clone(), bc.clone()]),
            "never backwards"
        );
        let stranger = test_ca("b");
        assert!(
            !through(&a, &stranger, &[ab]),
            "the name alone is not enough"
        );
    }

    /// webpki (the sources' and the tunnel's verifier) builds leaf → cross → old CA and
    /// does not apply a trust anchor's path length (RFC 5280 does not either). OpenSSL
    /// does, and the appliance CA has path length 0: an OpenSSL client that trusts only
    /// the old CA refuses the cross-certificate path. That is why the data directory's
    /// `ca.pem` holds both CAs during a rollover; with both, OpenSSL verifies.
    #[test]
    fn openssl_needs_both_cas_during_a_rollover_where_webpki_needs_the_old_one() {
        let now = OffsetDateTime::now_utc();
        let old = Ca::generate("replgate CA old", now).unwrap();
        let new = Ca::generate("replgate CA new", now).unwrap();
        let cross = old.cross_certify(&new, now).unwrap();
        let server = new
            .issue_server_cert(&["localhost".into()], &[], days(30), now)
            .unwrap();
        let dir = TempDir::new("cross");
        let old_file = dir.write("old.pem", old.cert_pem());
        let both_file = dir.write("both.pem", &format!("{}{}", old.cert_pem(), new.cert_pem()));
        let cross_file = dir.write("cross.pem", &cross);
        let leaf_file = dir.write("leaf.pem", &server.cert_pem);
        let verify = |anchors: &str| {
            let out = openssl(&[
                "verify",
                "-CAfile",
                anchors,
                "-untrusted",
                &cross_file,
                "-purpose",
                "sslserver",
                &leaf_file,
            ]);
            let text = String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr);
            (out.status.success(), text)
        };
        let (ok, text) = verify(&old_file);
        assert!(
            !ok && text.contains("path length constraint exceeded"),
            "{text}"
        );
        let (ok, text) = verify(&both_file);
        assert!(ok, "{text}");
    }
}
