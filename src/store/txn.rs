//! Typed access inside one write transaction, so that a domain operation (accept, unpair,
//! file a request) commits all its rows together or none of them.

use redb::{ReadableTable, WriteTransaction};

use super::records::{
    AuditRecord, CertRecord, OpenRequest, RequestRecord, RequestStatus, SystemRecord, TargetRecord,
};
use super::{decode, encode, id_rows, schema, values, Result};
use crate::model::UnixTime;

/// The first id handed to a stored system; id 1 is the local appliance.
pub const FIRST_SYSTEM_ID: u64 = 2;

pub struct Txn {
    pub(super) inner: WriteTransaction,
}

impl Txn {
    pub fn request(&self, id: u64) -> Result<Option<RequestRecord>> {
        let t = self.inner.open_table(schema::REQUESTS)?;
        let v = t.get(id)?;
        v.map(|v| decode("requests", v.value())).transpose()
    }

    /// Writes a request and keeps the open-request index in step with its status.
    pub fn put_request(&self, r: &RequestRecord) -> Result<()> {
        self.inner
            .open_table(schema::REQUESTS)?
            .insert(r.id, encode(r).as_slice())?;
        let mut open = self.inner.open_table(schema::OPEN_REQUESTS)?;
        if r.status == RequestStatus::Pending {
            let entry = OpenRequest {
                system_uuid: r.system_uuid.clone(),
                csr_fingerprint: r.csr_fingerprint.clone(),
                remote_addr: r.remote_addr.clone(),
                expires: r.expires,
            };
            open.insert(r.id, encode(&entry).as_slice())?;
        } else {
            open.remove(r.id)?;
        }
        Ok(())
    }

    /// Deletes a request row (and its open-index entry); its id is never handed out again.
    pub fn delete_request(&self, id: u64) -> Result<bool> {
        self.inner.open_table(schema::OPEN_REQUESTS)?.remove(id)?;
        Ok(self
            .inner
            .open_table(schema::REQUESTS)?
            .remove(id)?
            .is_some())
    }

    /// The next sequential request id, never reused (purged requests keep theirs).
    pub fn next_request_id(&self) -> Result<u64> {
        let t = self.inner.open_table(schema::REQUESTS)?;
        let floor = t.last()?.map(|(k, _)| k.value() + 1).unwrap_or(1);
        self.take_id(schema::META_NEXT_REQUEST_ID, floor)
    }

    pub fn open_requests(&self) -> Result<Vec<(u64, OpenRequest)>> {
        id_rows(
            &self.inner.open_table(schema::OPEN_REQUESTS)?,
            "open_requests",
        )
    }

    pub fn system(&self, id: u64) -> Result<Option<SystemRecord>> {
        let t = self.inner.open_table(schema::SYSTEMS)?;
        let v = t.get(id)?;
        v.map(|v| decode("systems", v.value())).transpose()
    }

    pub fn systems(&self) -> Result<Vec<SystemRecord>> {
        values(&self.inner.open_table(schema::SYSTEMS)?, "systems")
    }

    pub fn put_system(&self, s: &SystemRecord) -> Result<()> {
        self.inner
            .open_table(schema::SYSTEMS)?
            .insert(s.id, encode(s).as_slice())?;
        Ok(())
    }

    pub fn delete_system(&self, id: u64) -> Result<bool> {
        Ok(self
            .inner
            .open_table(schema::SYSTEMS)?
            .remove(id)?
            .is_some())
    }

    /// A fresh system id. Ids are never reused, even after an unpair deleted the row, so a
    /// stale `sid` in a script can never name another source.
    pub fn next_system_id(&self) -> Result<u64> {
        let t = self.inner.open_table(schema::SYSTEMS)?;
        let floor = t
            .last()?
            .map(|(k, _)| k.value() + 1)
            .unwrap_or(FIRST_SYSTEM_ID);
        self.take_id(schema::META_NEXT_SYSTEM_ID, floor.max(FIRST_SYSTEM_ID))
    }

    /// Hands out the counter `key` (at least `floor`) and advances it.
    fn take_id(&self, key: &str, floor: u64) -> Result<u64> {
        let mut meta = self.inner.open_table(schema::META)?;
        let stored = match meta.get(key)? {
            Some(v) => Some(decode::<u64>("meta", v.value())?),
            None => None,
        };
        let id = stored.unwrap_or(floor).max(floor);
        meta.insert(key, encode(&(id + 1)).as_slice())?;
        Ok(id)
    }

    pub fn cert(&self, serial: &str) -> Result<Option<CertRecord>> {
        let t = self.inner.open_table(schema::CERTS)?;
        let v = t.get(serial)?;
        v.map(|v| decode("certs", v.value())).transpose()
    }

    /// Records an issued certificate; false (nothing written) if the serial already exists.
    pub fn insert_cert(&self, c: &CertRecord) -> Result<bool> {
        let mut t = self.inner.open_table(schema::CERTS)?;
        if t.get(c.serial.as_str())?.is_some() {
            return Ok(false);
        }
        t.insert(c.serial.as_str(), encode(c).as_slice())?;
        Ok(true)
    }

    /// Revokes a serial from now on; the tunnel checks this table on every handshake.
    pub fn revoke(&self, serial: &str, now: UnixTime) -> Result<()> {
        self.inner
            .open_table(schema::REVOKED)?
            .insert(serial, now)?;
        let mut certs = self.inner.open_table(schema::CERTS)?;
        let current = certs
            .get(serial)?
            .map(|v| decode::<CertRecord>("certs", v.value()))
            .transpose()?;
        if let Some(mut c) = current {
            c.revoked_at = Some(now);
            certs.insert(serial, encode(&c).as_slice())?;
        }
        Ok(())
    }

    pub fn targets(&self) -> Result<Vec<TargetRecord>> {
        values(&self.inner.open_table(schema::TARGETS)?, "targets")
    }

    pub fn target(&self, id: u64) -> Result<Option<TargetRecord>> {
        let t = self.inner.open_table(schema::TARGETS)?;
        let v = t.get(id)?;
        v.map(|v| decode("targets", v.value())).transpose()
    }

    pub fn put_target(&self, r: &TargetRecord) -> Result<()> {
        self.inner
            .open_table(schema::TARGETS)?
            .insert(r.id, encode(r).as_slice())?;
        Ok(())
    }

    pub fn delete_target(&self, id: u64) -> Result<bool> {
        Ok(self
            .inner
            .open_table(schema::TARGETS)?
            .remove(id)?
            .is_some())
    }

    /// A fresh target id, never reused (the poller keys its schedule by it).
    pub fn next_target_id(&self) -> Result<u64> {
        let t = self.inner.open_table(schema::TARGETS)?;
        let floor = t.last()?.map(|(k, _)| k.value() + 1).unwrap_or(1);
        self.take_id(schema::META_NEXT_TARGET_ID, floor)
    }

    pub fn audit(&self, a: &AuditRecord) -> Result<u64> {
        super::append_audit(&self.inner, a)
    }
}
