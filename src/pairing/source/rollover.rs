//! A target's CA rollover, source side (SPEC 22): which CAs this appliance trusts for a
//! target after the target's answer on `GET /tunnel/v1/ca` (read at the heartbeat and
//! before a renewal, over the mutual-TLS tunnel whose server verified against the CAs
//! already trusted), and whether a target that no longer verifies replaced its CA while
//! this appliance was away. Plain functions; the time is passed in.
//!
//! Invariants:
//! - A CA is added only when the CA pinned now endorsed it: the answer's cross-certificate
//!   carries the new CA's subject and key and verifies under the pinned CA's key
//!   (`ca::check_endorsement`). Nothing the answer says replaces the pinned CA but a CA
//!   that was added that way before (the rollover's end), and nothing is ever dropped but
//!   a CA the target no longer names beside the pinned one (the rollover's abort).
//! - The row's `ca_pem` is the bundle the TLS client trusts: the pinned CA first, then
//!   during a rollover the new CA and its cross-certificate.

use std::fmt;

use crate::ca::{self, CertError, EndorsementError};
use crate::store::TargetRecord;
use crate::wire::protocol::CaAnswer;

/// What following the target's answer changes.
#[derive(Debug, PartialEq, Eq)]
pub enum Follow {
    /// Nothing: the CAs trusted are the ones the target names.
    Same,
    /// Trust these CAs from now on (`ca_pem`, the bundle), pinning `fingerprint`.
    Trust {
        ca_pem: String,
        fingerprint: String,
        change: Change,
    },
}

/// Why the trusted CAs change.
#[derive(Debug, PartialEq, Eq)]
pub enum Change {
    /// A rollover started: its new CA (fingerprint), endorsed by the pinned one, is
    /// trusted too.
    Learned(String),
    /// The rollover finished: the new CA (fingerprint) is pinned, the old one dropped.
    Promoted(String),
    /// The rollover was aborted: its new CA (fingerprint) is no longer trusted.
    Dropped(String),
}

/// Why the answer is not followed; the trusted CAs stay as they are.
#[derive(Debug, PartialEq, Eq)]
pub enum FollowRefusal {
    /// A certificate of the answer (or of our own row) does not parse.
    BadCertificate(CertError),
    /// The answer names a new CA without its cross-certificate.
    Incomplete,
    /// The new CA is not endorsed by the pinned one.
    NotEndorsed {
        offered: String,
        source: EndorsementError,
    },
    /// The answer puts a CA in force that this appliance never trusted.
    Unknown { offered: String },
}

impl fmt::Display for FollowRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FollowRefusal::BadCertificate(_) => {
                f.write_str("the target's ca answer does not parse")
            }
            FollowRefusal::Incomplete => {
                f.write_str("the target named a new ca without its cross-certificate")
            }
            FollowRefusal::NotEndorsed { offered, .. } => write!(
                f,
                "the target offered a new ca {offered} that the pinned ca did not endorse; \
                 it is not trusted"
            ),
            FollowRefusal::Unknown { offered } => write!(
                f,
                "the target named ca {offered} as in force, which this appliance never \
                 trusted; it is not trusted"
            ),
        }
    }
}

impl std::error::Error for FollowRefusal {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            FollowRefusal::BadCertificate(e) => Some(e),
            FollowRefusal::NotEndorsed { source, .. } => Some(source),
            _ => None,
        }
    }
}

fn der(pem: &str) -> Result<Vec<u8>, FollowRefusal> {
    ca::cert_pem_to_der(pem).map_err(FollowRefusal::BadCertificate)
}

/// The bundle `[ca, next, cross]` once `cross` shows that `ca` endorsed `next`.
fn endorsed_bundle(
    ca_der: &[u8],
    next: &str,
    cross: Option<&str>,
    now: i64,
) -> Result<String, FollowRefusal> {
    let cross = cross.ok_or(FollowRefusal::Incomplete)?;
    let (next_der, cross_der) = (der(next)?, der(cross)?);
    ca::check_endorsement(ca_der, &next_der, &cross_der, now).map_err(|source| {
        FollowRefusal::NotEndorsed {
            offered: ca::sha256_hex(&next_der),
            source,
        }
    })?;
    Ok([ca_der, &next_der, &cross_der]
        .iter()
        .map(|d| ca::cert_der_to_pem(d))
        .collect())
}

/// What this appliance trusts for target `row` after the target's `answer` at `now`.
pub fn follow(row: &TargetRecord, answer: &CaAnswer, now: i64) -> Result<Follow, FollowRefusal> {
    let trusted = ca::certs_pem_to_der(&row.ca_pem).map_err(FollowRefusal::BadCertificate)?;
    let in_force = der(&answer.ca)?;
    let fingerprint = ca::sha256_hex(&in_force);
    let known_next = trusted.get(1).map(|d| ca::sha256_hex(d));
    let bundle = |ca_der: &[u8]| match &answer.next {
        None => Ok(ca::cert_der_to_pem(ca_der)),
        Some(next) => endorsed_bundle(ca_der, next, answer.cross.as_deref(), now),
    };
    let trust = |ca_pem: String, change| {
        if ca_pem == row.ca_pem && fingerprint == row.ca_fingerprint {
            Follow::Same
        } else {
            Follow::Trust {
                ca_pem,
                fingerprint: fingerprint.clone(),
                change,
            }
        }
    };
    if fingerprint == row.ca_fingerprint {
        let ca_pem = bundle(&in_force)?;
        let change = match (&answer.next, known_next) {
            (Some(next), _) => Change::Learned(ca::sha256_hex(&der(next)?)),
            (None, Some(dropped)) => Change::Dropped(dropped),
            (None, None) => return Ok(Follow::Same),
        };
        return Ok(trust(ca_pem, change));
    }
    if known_next.as_deref() == Some(fingerprint.as_str()) {
        return Ok(trust(
            bundle(&in_force)?,
            Change::Promoted(fingerprint.clone()),
        ));
    }
    Err(FollowRefusal::Unknown {
        offered: fingerprint,
    })
}

/// Whether a target that presents the CA `presented` (DER) replaced the CA this
/// appliance trusts for it (`row`) while this appliance was away: `presented` is not the
/// pinned CA, and it is either the new CA learned during the rollover, or descends from
/// the pinned one through the cross-certificates of the target's finished rollovers
/// (`answer`, read from the target's public CA endpoint, must name `presented` as in
/// force). The fingerprint of the new CA when it did.
pub fn replaced_while_away(
    row: &TargetRecord,
    presented: &[u8],
    answer: &CaAnswer,
    now: i64,
) -> Option<String> {
    let fingerprint = ca::sha256_hex(presented);
    if fingerprint == row.ca_fingerprint || answer.fingerprint != fingerprint {
        return None;
    }
    let trusted = ca::certs_pem_to_der(&row.ca_pem).ok()?;
    if trusted.get(1).map(|d| ca::sha256_hex(d)).as_deref() == Some(fingerprint.as_str()) {
        return Some(fingerprint);
    }
    let crosses: Vec<Vec<u8>> = answer
        .endorsements
        .iter()
        .filter_map(|pem| ca::cert_pem_to_der(pem).ok())
        .collect();
    ca::endorsed_through(&trusted[0], presented, &crosses, now).then_some(fingerprint)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::Ca;

    const NOW: i64 = 1_767_225_600;

    fn ca(name: &str) -> Ca {
        Ca::generate(
            name,
            time::OffsetDateTime::from_unix_timestamp(NOW).unwrap(),
        )
        .unwrap()
    }

    fn row(pinned: &Ca) -> TargetRecord {
        TargetRecord {
            ca_fingerprint: pinned.fingerprint(),
            ca_pem: pinned.cert_pem().to_string(),
            ..TargetRecord::fixture(1)
        }
    }

    fn answer(current: &Ca, next: Option<(&Ca, &str)>) -> CaAnswer {
        CaAnswer {
            phase: if next.is_some() { "rolling" } else { "idle" }.into(),
            ca: current.cert_pem().to_string(),
            fingerprint: current.fingerprint(),
            next: next.map(|(n, _)| n.cert_pem().to_string()),
            cross: next.map(|(_, c)| c.to_string()),
            endorsements: Vec::new(),
            renew: false,
        }
    }

    fn apply(r: &mut TargetRecord, f: Follow) {
        if let Follow::Trust {
            ca_pem,
            fingerprint,
            ..
        } = f
        {
            r.ca_pem = ca_pem;
            r.ca_fingerprint = fingerprint;
        }
    }

    #[test]
    fn a_source_learns_the_endorsed_new_ca_and_pins_it_when_the_rollover_ends() {
        let (old, new) = (ca("old"), ca("new"));
        let cross = old
            .cross_certify(
                &new,
                time::OffsetDateTime::from_unix_timestamp(NOW).unwrap(),
            )
            .unwrap();
        let mut r = row(&old);
        assert_eq!(follow(&r, &answer(&old, None), NOW), Ok(Follow::Same));
        let learned = follow(&r, &answer(&old, Some((&new, &cross))), NOW).unwrap();
        assert!(
            matches!(&learned, Follow::Trust { change: Change::Learned(fp), fingerprint, .. }
                if *fp == new.fingerprint() && *fingerprint == old.fingerprint()),
            "{learned:?}"
        );
        apply(&mut r, learned);
        assert_eq!(ca::certs_pem_to_der(&r.ca_pem).unwrap().len(), 3);
        assert_eq!(
            follow(&r, &answer(&old, Some((&new, &cross))), NOW),
            Ok(Follow::Same),
            "asked again"
        );
        let promoted = follow(&r, &answer(&new, None), NOW).unwrap();
        assert!(
            matches!(&promoted, Follow::Trust { change: Change::Promoted(fp), .. } if *fp == new.fingerprint()),
            "{promoted:?}"
        );
        apply(&mut r, promoted);
        assert_eq!(r.ca_fingerprint, new.fingerprint());
        assert_eq!(r.ca_pem, new.cert_pem());
        // The old CA is gone for good: an answer naming it in force is refused.
        assert_eq!(
            follow(&r, &answer(&old, None), NOW),
            Err(FollowRefusal::Unknown {
                offered: old.fingerprint()
            })
        );
    }

    #[test]
    fn an_abort_drops_the_new_ca_and_keeps_the_pinned_one() {
        let (old, new) = (ca("old"), ca("new"));
        let cross = old
            .cross_certify(
                &new,
                time::OffsetDateTime::from_unix_timestamp(NOW).unwrap(),
            )
            .unwrap();
        let mut r = row(&old);
        let learned = follow(&r, &answer(&old, Some((&new, &cross))), NOW).unwrap();
        apply(&mut r, learned);
        let dropped = follow(&r, &answer(&old, None), NOW).unwrap();
        assert!(
            matches!(&dropped, Follow::Trust { change: Change::Dropped(fp), .. } if *fp == new.fingerprint()),
            "{dropped:?}"
        );
        apply(&mut r, dropped);
        assert_eq!(
            (r.ca_pem.as_str(), r.ca_fingerprint.as_str()),
            (old.cert_pem(), old.fingerprint().as_str())
        );
    }

    #[test]
    fn a_new_ca_the_pinned_one_did_not_endorse_is_never_trusted() {
        let (old, new) = (ca("old"), ca("new"));
        let at = time::OffsetDateTime::from_unix_timestamp(NOW).unwrap();
        let mallory = ca("old");
        let forged = mallory.cross_certify(&new, at).unwrap();
        let r = row(&old);
        assert!(matches!(
            follow(&r, &answer(&old, Some((&new, &forged))), NOW),
            Err(FollowRefusal::NotEndorsed {
                source: EndorsementError::BadSignature,
                ..
            })
        ));
        let mut bare = answer(&old, Some((&new, "")));
        bare.cross = None;
        assert_eq!(follow(&r, &bare, NOW), Err(FollowRefusal::Incomplete));
        // A CA in force that was never learned: refused, whatever it carries.
        let cross = old.cross_certify(&new, at).unwrap();
        assert_eq!(
            follow(&r, &answer(&new, None), NOW),
            Err(FollowRefusal::Unknown {
                offered: new.fingerprint()
            })
        );
        let genuine_pair = answer(&new, Some((&old, &cross)));
        assert!(follow(&r, &genuine_pair, NOW).is_err());
        // The same endorsement offered for another key with the new CA's name.
        let impostor = ca("new");
        assert!(matches!(
            follow(&r, &answer(&old, Some((&impostor, &cross))), NOW),
            Err(FollowRefusal::NotEndorsed {
                source: EndorsementError::WrongKey,
                ..
            })
        ));
    }

    #[test]
    fn a_target_that_replaced_its_ca_while_the_source_was_away_is_recognised() {
        let (old, new, third) = (ca("old"), ca("new"), ca("third"));
        let at = time::OffsetDateTime::from_unix_timestamp(NOW).unwrap();
        let (c1, c2) = (
            old.cross_certify(&new, at).unwrap(),
            new.cross_certify(&third, at).unwrap(),
        );
        let r = row(&old);
        let mut public = answer(&new, None);
        public.endorsements = vec![c1.clone()];
        let presented = new.cert_der();
        assert_eq!(
            replaced_while_away(&r, &presented, &public, NOW),
            Some(new.fingerprint())
        );
        let mut twice = answer(&third, None);
        twice.endorsements = vec![c1.clone(), c2];
        assert_eq!(
            replaced_while_away(&r, &third.cert_der(), &twice, NOW),
            Some(third.fingerprint())
        );
        // Without the endorsement, or naming another CA than presented: not recognised.
        assert_eq!(
            replaced_while_away(&r, &presented, &answer(&new, None), NOW),
            None
        );
        assert_eq!(
            replaced_while_away(&r, &third.cert_der(), &public, NOW),
            None
        );
        assert_eq!(
            replaced_while_away(&r, &old.cert_der(), &answer(&old, None), NOW),
            None,
            "not replaced"
        );
        let stranger = ca("new");
        let mut posing = answer(&stranger, None);
        posing.endorsements = vec![c1];
        assert_eq!(
            replaced_while_away(&r, &stranger.cert_der(), &posing, NOW),
            None
        );
    }
}
