//! Issued certificates (target side) and their life: every certificate in `certs` and in
//! its system's `lineage` under its generation (1, 2, ... in issue order); a superseded one
//! in `grace` until it is retired (`retired`) or revoked (`revoked`), never in two of
//! those at once. The tunnel asks [`Store::refuses_handshake`] on every handshake.

use redb::ReadableTable;
use serde::{Deserialize, Serialize};

use super::access::{contains, get, key_of, keys, values, Tables};
use super::{decode, schema, Result, Store, SystemRecord, Txn};
use crate::model::UnixTime;

/// A certificate this appliance's CA issued to a source.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct CertRecord {
    pub serial: String,
    /// The request whose acceptance began this certificate's line (renewals keep it).
    pub request_id: u64,
    pub system_id: u64,
    pub subject: String,
    pub issued_at: UnixTime,
    pub not_after: UnixTime,
    pub pem: String,
    #[serde(default)]
    pub revoked_at: Option<UnixTime>,
    /// Its place in the system's lineage (1 for the first); 0 only in records written
    /// before lineages, which the migration numbers.
    #[serde(default)]
    pub generation: u64,
    /// The serial this certificate renewed (issued over the tunnel), if any.
    #[serde(default)]
    pub renews: Option<String>,
    /// When a renewal issued its successor; it stays valid through the grace window.
    #[serde(default)]
    pub superseded_at: Option<UnixTime>,
    /// When its grace ended (or the first hello with the successor ended it).
    #[serde(default)]
    pub retired_at: Option<UnixTime>,
    /// The fingerprint of the CA that issued it; None for certificates issued before CA
    /// rollovers existed (by generation 0, see `CaState::issuer_of`).
    #[serde(default)]
    pub issuer: Option<String>,
}

impl CertRecord {
    /// Neither revoked nor retired: the handshake accepts it (while it is in date).
    pub fn is_live(&self) -> bool {
        self.revoked_at.is_none() && self.retired_at.is_none()
    }
}

fn cert(tx: &impl Tables, serial: &str) -> Result<Option<CertRecord>> {
    get(tx, schema::CERTS, serial)
}

pub(super) fn certs(tx: &impl Tables) -> Result<Vec<CertRecord>> {
    values(tx, schema::CERTS)
}

fn is_revoked(tx: &impl Tables, serial: &str) -> Result<bool> {
    contains(tx, schema::REVOKED, serial)
}

/// Revoked, or retired after its grace: a new tunnel handshake with it is refused.
fn refuses_handshake(tx: &impl Tables, serial: &str) -> Result<bool> {
    Ok(is_revoked(tx, serial)? || contains(tx, schema::RETIRED, serial)?)
}

/// Every certificate of `system_id`, oldest generation first.
fn lineage(tx: &impl Tables, system_id: u64) -> Result<Vec<CertRecord>> {
    let certs = tx.open(schema::CERTS)?;
    let mut out = Vec::new();
    let (first, last) = lineage_of(system_id);
    for row in tx
        .open(schema::LINEAGE)?
        .range(first.as_slice()..=last.as_slice())?
    {
        let (_, serial) = row?;
        let serial: String = decode("lineage", serial.value())?;
        if let Some(v) = certs.get(schema::CERTS.key(&serial).as_slice())? {
            out.push(decode("certs", v.value())?);
        }
    }
    Ok(out)
}

/// One past the newest generation of `system_id` (1 for a system without certificates).
pub(super) fn next_generation(tx: &impl Tables, system_id: u64) -> Result<u64> {
    let lineage = tx.open(schema::LINEAGE)?;
    let (first, last) = lineage_of(system_id);
    let mut range = lineage.range(first.as_slice()..=last.as_slice())?;
    let last = match range.next_back() {
        Some(row) => key_of(schema::LINEAGE, row?.0.value())?.1,
        None => 0,
    };
    Ok(last + 1)
}

/// The first and the last possible key of `system_id`'s lineage.
fn lineage_of(system_id: u64) -> (Vec<u8>, Vec<u8>) {
    (
        schema::LINEAGE.key((system_id, 0)),
        schema::LINEAGE.key((system_id, u64::MAX)),
    )
}

fn grace_until(tx: &impl Tables, serial: &str) -> Result<Option<i64>> {
    get(tx, schema::GRACE, serial)
}

/// Serials whose grace window ended at or before `now`.
fn grace_ended(tx: &impl Tables, now: i64) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for row in tx.open(schema::GRACE)?.iter()? {
        let (serial, until) = row?;
        if decode::<i64>("grace", until.value())? <= now {
            out.push(key_of(schema::GRACE, serial.value())?);
        }
    }
    Ok(out)
}

fn revoked_serials(tx: &impl Tables) -> Result<Vec<String>> {
    keys(tx, schema::REVOKED)
}

impl Store {
    pub fn cert(&self, serial: &str) -> Result<Option<CertRecord>> {
        cert(&self.snapshot()?, serial)
    }

    /// Every stored system with the row of its current certificate (`cert_serial`; None
    /// without one), read in one snapshot: what certificate expiries and a CA rollover's
    /// status are computed from.
    pub fn systems_with_certs(&self) -> Result<Vec<(SystemRecord, Option<CertRecord>)>> {
        let tx = self.snapshot()?;
        super::systems::systems(&tx)?
            .into_iter()
            .map(|s| {
                let c = match s.cert_serial.as_deref() {
                    Some(serial) => cert(&tx, serial)?,
                    None => None,
                };
                Ok((s, c))
            })
            .collect()
    }

    /// Every issued certificate, for crash-consistency checks and audits.
    pub fn certs(&self) -> Result<Vec<CertRecord>> {
        certs(&self.snapshot()?)
    }

    /// Whether `serial` is revoked: one read transaction, asked on every tunnel handshake.
    pub fn is_revoked(&self, serial: &str) -> Result<bool> {
        is_revoked(&self.snapshot()?, serial)
    }

    pub fn revoked_serials(&self) -> Result<Vec<String>> {
        revoked_serials(&self.snapshot()?)
    }

    /// Whether a new tunnel handshake with `serial` is refused: revoked, or retired after
    /// its grace. Asked on every handshake.
    pub fn refuses_handshake(&self, serial: &str) -> Result<bool> {
        refuses_handshake(&self.snapshot()?, serial)
    }

    /// Every certificate of `system_id`, oldest generation first.
    pub fn lineage(&self, system_id: u64) -> Result<Vec<CertRecord>> {
        lineage(&self.snapshot()?, system_id)
    }

    /// The end of `serial`'s renewal grace window, while it is in one.
    pub fn grace_until(&self, serial: &str) -> Result<Option<i64>> {
        grace_until(&self.snapshot()?, serial)
    }

    /// Superseded serials whose grace window ended at or before `now`.
    pub fn grace_ended(&self, now: i64) -> Result<Vec<String>> {
        grace_ended(&self.snapshot()?, now)
    }
}

impl Txn {
    /// Marks this transaction as one [`Store::certificate_generation`] counts.
    pub(super) fn certificates_changed(&self) {
        self.certificates.set(true);
    }

    pub fn cert(&self, serial: &str) -> Result<Option<CertRecord>> {
        cert(&self.inner, serial)
    }

    /// Records an issued certificate as generation `c.generation` of its system's lineage
    /// (see [`Txn::next_generation`]); false (nothing written) if the serial or that
    /// generation already exists.
    pub fn insert_cert(&self, c: &CertRecord) -> Result<bool> {
        let key = (c.system_id, c.generation);
        if self.cert(&c.serial)?.is_some() || contains(&self.inner, schema::LINEAGE, key)? {
            return Ok(false);
        }
        self.put_cert(c)?;
        self.put(schema::LINEAGE, key, &c.serial)?;
        Ok(true)
    }

    pub(super) fn put_cert(&self, c: &CertRecord) -> Result<()> {
        self.certificates_changed();
        self.put(schema::CERTS, &c.serial, c)
    }

    /// Applies `change` to the stored certificate `serial`, if there is one.
    fn change_cert(&self, serial: &str, change: impl FnOnce(&mut CertRecord)) -> Result<()> {
        if let Some(mut c) = self.cert(serial)? {
            change(&mut c);
            self.put_cert(&c)?;
        }
        Ok(())
    }

    /// The generation the next certificate of `system_id` takes.
    pub fn next_generation(&self, system_id: u64) -> Result<u64> {
        next_generation(&self.inner, system_id)
    }

    /// Every certificate of `system_id`, oldest generation first.
    pub fn lineage(&self, system_id: u64) -> Result<Vec<CertRecord>> {
        lineage(&self.inner, system_id)
    }

    /// Revokes a serial from now on; the tunnel checks this table on every handshake. A
    /// certificate in its grace window leaves it.
    pub fn revoke(&self, serial: &str, now: UnixTime) -> Result<()> {
        self.revoked.set(true);
        self.put(schema::REVOKED, serial, &now)?;
        self.remove(schema::GRACE, serial)?;
        self.change_cert(serial, |c| c.revoked_at = Some(now))
    }

    /// Revokes every certificate of `system_id` that still opens the tunnel (the current
    /// one and a predecessor in its grace window); returns their serials.
    pub fn revoke_lineage(&self, system_id: u64, now: UnixTime) -> Result<Vec<String>> {
        let mut revoked = Vec::new();
        for c in self.lineage(system_id)? {
            if c.is_live() {
                self.revoke(&c.serial, now)?;
                revoked.push(c.serial);
            }
        }
        Ok(revoked)
    }

    /// Marks `serial` superseded by a renewal at `now`: it stays valid until `until`
    /// (or until [`Txn::retire`]).
    pub fn supersede(&self, serial: &str, now: UnixTime, until: UnixTime) -> Result<()> {
        self.put(schema::GRACE, serial, &until)?;
        self.change_cert(serial, |c| c.superseded_at = Some(now))
    }

    /// Ends a superseded certificate's grace: new handshakes with it are refused from now
    /// on. Not a revocation: connections already open with it run to their end. Nothing
    /// for a certificate that is not in its grace window.
    pub fn retire(&self, serial: &str, now: UnixTime) -> Result<bool> {
        if !self.remove(schema::GRACE, serial)? {
            return Ok(false);
        }
        self.put(schema::RETIRED, serial, &now)?;
        self.change_cert(serial, |c| c.retired_at = Some(now))?;
        Ok(true)
    }

    /// The end of `serial`'s grace window, while it is in one.
    pub fn grace_until(&self, serial: &str) -> Result<Option<UnixTime>> {
        grace_until(&self.inner, serial)
    }
}

#[cfg(test)]
mod tests {
    use crate::store::{temp_store, test_audit as audit, StoreError};

    #[test]
    fn the_revocation_generation_moves_only_after_a_commit_that_revoked() {
        let (store, dir) = temp_store("revocation-generation");
        let before = store.revocation_generation();
        store
            .write(|tx| tx.audit(&audit("nothing revoked")))
            .unwrap();
        assert_eq!(store.revocation_generation(), before);
        let failed: std::result::Result<(), StoreError> = store.write(|tx| {
            tx.revoke("abc", 7)?;
            Err(StoreError::Corrupt {
                table: "test".into(),
                detail: "rolled back".into(),
            })
        });
        assert!(failed.is_err());
        assert_eq!(store.revocation_generation(), before, "rolled back");
        assert!(!store.is_revoked("abc").unwrap());
        store.write(|tx| tx.revoke("abc", 7)).unwrap();
        assert_eq!(store.revocation_generation(), before + 1);
        assert!(store.is_revoked("abc").unwrap());
        let clone = store.clone();
        clone.write(|tx| tx.revoke("def", 8)).unwrap();
        assert_eq!(
            store.revocation_generation(),
            before + 2,
            "shared by clones"
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}
