//! The CAs in force, as the daemon's threads share them (SPEC 22): the CA sources pin;
//! during a rollover the new CA, which signs everything from the rollover's start, and
//! the cross-certificate by which the CA in force endorses it; CAs whose rollover was
//! aborted, still trusted for the client certificates they issued; and the
//! cross-certificates of finished rollovers. [`Authority`] holds the set in place and is
//! replaced whole after each committed phase: a reader takes the set of that moment.
//!
//! What each peer sees follows from the set: the listeners present `[leaf, cross, CA]`
//! during a rollover (a source that trusts only the old CA verifies through the
//! cross-certificate, one that trusts the new CA verifies directly, and the CA a new
//! pairing pins is still the last CA presented), the tunnel trusts client certificates of
//! the old, the new and the aborted CAs, and `ca.pem` bundles are `[CA, new CA, cross]`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use rustls::pki_types::CertificateDer;

use super::Ca;

/// The new CA of a rollover in progress.
#[derive(Debug)]
pub struct Successor {
    pub ca: Arc<Ca>,
    /// The cross-certificate by which the CA in force endorses it (PEM).
    pub cross_pem: String,
    pub started: i64,
}

/// The CAs in force at one moment.
#[derive(Debug)]
pub struct CaSet {
    /// The CA sources pin.
    pub current: Arc<Ca>,
    pub next: Option<Successor>,
    /// Certificates (PEM) of CAs whose rollover was aborted.
    pub aborted: Vec<String>,
    /// Cross-certificates (PEM) of finished rollovers, oldest first.
    pub endorsements: Vec<String>,
    /// The fingerprint of the appliance's first CA, which issued the certificates that
    /// name no issuer (those from before rollovers).
    pub original: String,
}

impl CaSet {
    /// One CA, nothing else: an appliance that never rolled its CA over.
    pub fn single(current: Ca) -> CaSet {
        let original = current.fingerprint();
        CaSet {
            current: Arc::new(current),
            next: None,
            aborted: Vec::new(),
            endorsements: Vec::new(),
            original,
        }
    }

    /// The CA that signs what is issued now: the new one during a rollover.
    pub fn signing(&self) -> &Arc<Ca> {
        self.next.as_ref().map_or(&self.current, |n| &n.ca)
    }

    /// The fingerprint of the CA in force (what sources pin, and the verification code
    /// and join lines carry).
    pub fn fingerprint(&self) -> String {
        self.current.fingerprint()
    }

    /// The fingerprint of the CA that issued a certificate recorded with `issuer`.
    pub fn issuer_of<'a>(&'a self, issuer: Option<&'a str>) -> &'a str {
        issuer.unwrap_or(&self.original)
    }

    /// What the spool's `ca.pem` and the CA endpoints hand sources: the CA in force, and
    /// during a rollover the new CA and the cross-certificate.
    pub fn bundle_pem(&self) -> String {
        match &self.next {
            None => self.current.cert_pem().to_string(),
            Some(n) => format!(
                "{}{}{}",
                self.current.cert_pem(),
                n.ca.cert_pem(),
                n.cross_pem
            ),
        }
    }

    /// What the data directory's `ca.pem` holds for `ctl` and scripts: the CA in force,
    /// and during a rollover the new CA.
    pub fn trust_file_pem(&self) -> String {
        match &self.next {
            None => self.current.cert_pem().to_string(),
            Some(n) => format!("{}{}", self.current.cert_pem(), n.ca.cert_pem()),
        }
    }

    /// The CAs whose client certificates open the tunnel.
    pub fn client_anchors(&self) -> Vec<CertificateDer<'static>> {
        let mut anchors = vec![self.current.cert_der()];
        anchors.extend(self.next.as_ref().map(|n| n.ca.cert_der()));
        anchors.extend(
            self.aborted
                .iter()
                .filter_map(|pem| super::cert_pem_to_der(pem).ok())
                .map(CertificateDer::from),
        );
        anchors
    }

    /// The chain a listener presents with `leaf_pem` (issued by [`CaSet::signing`]): leaf
    /// and CA, or during a rollover leaf, cross-certificate and the CA in force.
    pub fn listener_chain(&self, leaf_pem: &str) -> String {
        match &self.next {
            None => format!("{leaf_pem}{}", self.current.cert_pem()),
            Some(n) => format!("{leaf_pem}{}{}", n.cross_pem, self.current.cert_pem()),
        }
    }
}

/// The set of CAs in force, replaced whole after each committed phase of a rollover.
pub struct Authority {
    set: RwLock<Arc<CaSet>>,
    /// Moves on every replacement, so the threads that derive files or certificates from
    /// the set (the maintenance job) notice within a tick.
    epoch: AtomicU64,
    /// Held by whoever changes the set (the rollover's phases), one at a time.
    changing: Mutex<()>,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("epoch", &self.epoch())
            .finish_non_exhaustive()
    }
}

impl Authority {
    pub fn new(set: CaSet) -> Authority {
        Authority {
            set: RwLock::new(Arc::new(set)),
            epoch: AtomicU64::new(0),
            changing: Mutex::new(()),
        }
    }

    /// The set in place now.
    pub fn get(&self) -> Arc<CaSet> {
        crate::sync::read(&self.set).clone()
    }

    /// Puts `set` in place for every reader from now on.
    pub fn replace(&self, set: CaSet) {
        *crate::sync::write(&self.set) = Arc::new(set);
        self.epoch.fetch_add(1, Ordering::SeqCst);
    }

    /// How many times the set was replaced.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// The lock a change of the set holds from its first read to its replacement.
    pub fn changing(&self) -> MutexGuard<'_, ()> {
        crate::sync::lock(&self.changing)
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{der_of, now, test_ca};
    use super::*;

    #[test]
    fn a_rollover_adds_the_new_ca_to_what_is_trusted_and_presented() {
        let old = test_ca("old");
        let new = test_ca("new");
        let cross = old.cross_certify(&new, now()).unwrap();
        let (old_fp, new_fp) = (old.fingerprint(), new.fingerprint());
        let (old_pem, new_pem) = (old.cert_pem().to_string(), new.cert_pem().to_string());
        let authority = Authority::new(CaSet::single(old));
        let before = authority.get();
        assert_eq!(before.signing().fingerprint(), old_fp);
        assert_eq!(before.bundle_pem(), old_pem);
        assert_eq!(before.listener_chain("LEAF\n"), format!("LEAF\n{old_pem}"));
        assert_eq!(before.client_anchors().len(), 1);
        assert_eq!(before.issuer_of(None), old_fp);
        let rolling = CaSet {
            current: before.current.clone(),
            next: Some(Successor {
                ca: Arc::new(new),
                cross_pem: cross.clone(),
                started: 1,
            }),
            aborted: vec![test_ca("aborted").cert_pem().to_string()],
            endorsements: Vec::new(),
            original: before.original.clone(),
        };
        authority.replace(rolling);
        assert_eq!(authority.epoch(), 1);
        let set = authority.get();
        assert_eq!(set.fingerprint(), old_fp, "sources still pin the old CA");
        assert_eq!(set.signing().fingerprint(), new_fp, "the new CA signs");
        assert_eq!(set.bundle_pem(), format!("{old_pem}{new_pem}{cross}"));
        assert_eq!(set.trust_file_pem(), format!("{old_pem}{new_pem}"));
        assert_eq!(
            set.listener_chain("LEAF\n"),
            format!("LEAF\n{cross}{old_pem}")
        );
        let anchors = set.client_anchors();
        assert_eq!(anchors.len(), 3);
        assert_eq!(anchors[1].as_ref(), der_of(&new_pem).as_slice());
        assert_eq!(
            before.signing().fingerprint(),
            old_fp,
            "a reader keeps its set"
        );
    }
}
