//! The appliance CA's state (SPEC 22), one record in `meta`: which CA generation is in
//! force, a rollover in progress (its new CA), CAs whose rollover was aborted and that
//! are still trusted for the leaves they issued, and the cross-certificates of finished
//! rollovers. The keys and certificates are files (`identity::CaFiles`) that this record
//! names by generation; it is written only after they are durable, and every phase of a
//! rollover is one transaction.

use serde::{Deserialize, Serialize};

use super::access::{get, Tables};
use super::{schema, Result, Store, Txn};
use crate::model::UnixTime;

/// The CA state. A database without the record (every appliance before its first
/// rollover) is generation 0, the CA of `ca.pem`/`ca.key`, with nothing in progress.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct CaState {
    /// The generation of the CA in force: the one sources pin and the listeners chain to.
    #[serde(default)]
    pub generation: u64,
    /// Its fingerprint (empty in the default state: read it from the CA itself).
    #[serde(default)]
    pub fingerprint: String,
    /// The highest generation ever made (an aborted one's number is never reused).
    #[serde(default)]
    pub last_generation: u64,
    /// A rollover in progress.
    #[serde(default)]
    pub rollover: Option<Rollover>,
    /// CAs whose rollover was aborted: their keys are gone, but their certificates are
    /// still trusted for the client certificates they issued until those are renewed.
    #[serde(default)]
    pub aborted: Vec<AbortedCa>,
    /// Finished rollovers, oldest first.
    #[serde(default)]
    pub finished: Vec<Endorsement>,
    /// The fingerprint of generation 0, recorded at the first rollover: certificates
    /// issued before rollovers existed name no issuer and were issued by it.
    #[serde(default)]
    pub original: String,
}

/// A rollover in progress: the new CA, and the cross-certificate by which the CA in force
/// endorses it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Rollover {
    pub generation: u64,
    pub fingerprint: String,
    pub cross_pem: String,
    pub started: UnixTime,
}

/// A CA whose rollover was aborted.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct AbortedCa {
    pub fingerprint: String,
    pub cert_pem: String,
    pub aborted: UnixTime,
}

/// A finished rollover: from which CA to which, and the cross-certificate.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Endorsement {
    pub from: String,
    pub to: String,
    pub cross_pem: String,
    pub finished: UnixTime,
}

impl CaState {
    /// The CA that issued a certificate recorded with `issuer` (None: before rollovers
    /// existed, so generation 0, whose fingerprint is `original`, or the one in force
    /// while there has been no rollover).
    pub fn issuer_of<'a>(&'a self, issuer: Option<&'a str>, in_force: &'a str) -> &'a str {
        match issuer {
            Some(fp) => fp,
            None if !self.original.is_empty() => &self.original,
            None => in_force,
        }
    }
}

fn ca_state(tx: &impl Tables) -> Result<CaState> {
    Ok(get(tx, schema::META, schema::META_CA_STATE)?.unwrap_or_default())
}

impl Store {
    pub fn ca_state(&self) -> Result<CaState> {
        ca_state(&self.snapshot()?)
    }
}

impl Txn {
    pub fn ca_state(&self) -> Result<CaState> {
        ca_state(&self.inner)
    }

    pub fn put_ca_state(&self, state: &CaState) -> Result<()> {
        self.put(schema::META, schema::META_CA_STATE, state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::temp_store;

    #[test]
    fn the_state_is_generation_zero_until_written_and_reads_back_whole() {
        let (store, dir) = temp_store("ca-state");
        assert_eq!(store.ca_state().unwrap(), CaState::default());
        let state = CaState {
            generation: 0,
            fingerprint: "aa".into(),
            last_generation: 1,
            rollover: Some(Rollover {
                generation: 1,
                fingerprint: "bb".into(),
                cross_pem: "cross".into(),
                started: 7,
            }),
            aborted: Vec::new(),
            finished: Vec::new(),
            original: "aa".into(),
        };
        store.write(|tx| tx.put_ca_state(&state)).unwrap();
        assert_eq!(store.ca_state().unwrap(), state);
        assert_eq!(state.issuer_of(None, "bb"), "aa");
        assert_eq!(state.issuer_of(Some("cc"), "bb"), "cc");
        assert_eq!(CaState::default().issuer_of(None, "bb"), "bb");
        let _ = std::fs::remove_dir_all(dir);
    }
}
