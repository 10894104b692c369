//! Every read, written once over [`Tables`]: a read transaction (what `Store`'s read
//! methods open, one snapshot per call) or the write transaction in progress (what `Txn`'s
//! read methods use, so it sees its own uncommitted writes). `Store` and `Txn` expose these
//! as one-line methods; a read of two tables reads both in the same transaction.

use redb::{ReadTransaction, ReadableTable, ReadableTableMetadata, WriteTransaction};
use serde::de::DeserializeOwned;

use super::records::{
    AuditRecord, CertRecord, OpenRequest, RequestRecord, RequestSummary, SessionRecord,
    SystemRecord, TargetRecord, UserRecord,
};
use super::schema::{self, Def, Id, KeyCodec};
use super::{decode, Result, StoreError};

/// A transaction that tables can be opened in for reading.
pub trait Tables {
    fn open<K: KeyCodec>(
        &self,
        def: Def<K>,
    ) -> Result<impl ReadableTable<&'static [u8], &'static [u8]> + '_>;
}

impl Tables for ReadTransaction {
    fn open<K: KeyCodec>(
        &self,
        def: Def<K>,
    ) -> Result<impl ReadableTable<&'static [u8], &'static [u8]> + '_> {
        Ok(self.open_table(def.raw())?)
    }
}

impl Tables for WriteTransaction {
    fn open<K: KeyCodec>(
        &self,
        def: Def<K>,
    ) -> Result<impl ReadableTable<&'static [u8], &'static [u8]> + '_> {
        Ok(self.open_table(def.raw())?)
    }
}

/// A stored key of `def`, decoded.
pub(super) fn key_of<K: KeyCodec>(def: Def<K>, bytes: &[u8]) -> Result<K::Owned> {
    K::decode(bytes).ok_or_else(|| StoreError::Corrupt {
        table: def.name().to_owned(),
        detail: format!("undecodable key {bytes:02x?}"),
    })
}

/// The record stored under `key`, decoded.
pub(super) fn get<K: KeyCodec, T: DeserializeOwned>(
    tx: &impl Tables,
    def: Def<K>,
    key: K::Ref<'_>,
) -> Result<Option<T>> {
    let t = tx.open(def)?;
    let v = t.get(def.key(key).as_slice())?;
    v.map(|v| decode(def.name(), v.value())).transpose()
}

/// Whether `key` is stored in `def`.
pub(super) fn contains<K: KeyCodec>(
    tx: &impl Tables,
    def: Def<K>,
    key: K::Ref<'_>,
) -> Result<bool> {
    Ok(tx.open(def)?.get(def.key(key).as_slice())?.is_some())
}

/// Every value of a table, decoded, in key order.
pub(super) fn values<K: KeyCodec, T: DeserializeOwned>(
    tx: &impl Tables,
    def: Def<K>,
) -> Result<Vec<T>> {
    let mut out = Vec::new();
    for row in tx.open(def)?.iter()? {
        let (_, v) = row?;
        out.push(decode(def.name(), v.value())?);
    }
    Ok(out)
}

/// Every key of a table, decoded, in key order.
pub(super) fn keys<K: KeyCodec>(tx: &impl Tables, def: Def<K>) -> Result<Vec<K::Owned>> {
    let mut out = Vec::new();
    for row in tx.open(def)?.iter()? {
        let (k, _) = row?;
        out.push(key_of(def, k.value())?);
    }
    Ok(out)
}

/// Rows of an id-keyed table with id > `after`, decoded, in key order, at most `limit`.
fn id_rows<T: DeserializeOwned>(
    tx: &impl Tables,
    def: Def<Id>,
    after: u64,
    limit: usize,
) -> Result<Vec<(u64, T)>> {
    let mut out = Vec::new();
    let from = def.key(after.saturating_add(1));
    for row in tx.open(def)?.range(from.as_slice()..)? {
        if out.len() >= limit {
            break;
        }
        let (k, v) = row?;
        out.push((key_of(def, k.value())?, decode(def.name(), v.value())?));
    }
    Ok(out)
}

pub(super) fn schema_version(tx: &impl Tables) -> Result<u64> {
    Ok(get(tx, schema::META, schema::META_SCHEMA_VERSION)?.unwrap_or(0))
}

pub(super) fn request(tx: &impl Tables, id: u64) -> Result<Option<RequestRecord>> {
    get(tx, schema::REQUESTS, id)
}

/// Requests with id > `after`, in id order, that `keep` selects, at most `limit`.
pub(super) fn requests(
    tx: &impl Tables,
    after: u64,
    limit: usize,
    keep: impl Fn(&RequestRecord) -> bool,
) -> Result<Vec<RequestRecord>> {
    let mut out = Vec::new();
    scan_requests(tx, false, after, limit, |bytes| {
        let r: RequestRecord = decode("requests", bytes)?;
        let kept = keep(&r);
        if kept {
            out.push(r);
        }
        Ok(kept)
    })?;
    Ok(out)
}

/// Pending requests with id > `after`, at most `limit`, through the open index.
pub(super) fn pending_requests(
    tx: &impl Tables,
    after: u64,
    limit: usize,
) -> Result<Vec<RequestRecord>> {
    let mut out = Vec::new();
    scan_requests(tx, true, after, limit, |bytes| {
        out.push(decode("requests", bytes)?);
        Ok(true)
    })?;
    Ok(out)
}

/// See `Store::visit_requests`.
pub(super) fn visit_requests(
    tx: &impl Tables,
    open_only: bool,
    after: u64,
    limit: usize,
    keep: impl Fn(&RequestSummary<'_>) -> bool,
    mut visit: impl FnMut(&RequestSummary<'_>),
) -> Result<()> {
    scan_requests(tx, open_only, after, limit, |bytes| {
        let r: RequestSummary<'_> = decode("requests", bytes)?;
        let kept = keep(&r);
        if kept {
            visit(&r);
        }
        Ok(kept)
    })
}

/// Hands `take` the stored bytes of each request with id > `after`, in id order (with
/// `open_only`, only those in the open index, so the cost grows with the page and not with
/// the history of resolved requests), until `take` has said `true` (taken) `limit` times.
fn scan_requests(
    tx: &impl Tables,
    open_only: bool,
    after: u64,
    limit: usize,
    mut take: impl FnMut(&[u8]) -> Result<bool>,
) -> Result<()> {
    let mut taken = 0;
    let mut offer = |bytes: &[u8]| -> Result<bool> {
        if take(bytes)? {
            taken += 1;
        }
        Ok(taken < limit)
    };
    if limit == 0 {
        return Ok(());
    }
    let requests = tx.open(schema::REQUESTS)?;
    let from = schema::REQUESTS.key(after.saturating_add(1));
    if open_only {
        for row in tx.open(schema::OPEN_REQUESTS)?.range(from.as_slice()..)? {
            let (k, _) = row?;
            if let Some(v) = requests.get(k.value())? {
                if !offer(v.value())? {
                    break;
                }
            }
        }
    } else {
        for row in requests.range(from.as_slice()..)? {
            let (_, v) = row?;
            if !offer(v.value())? {
                break;
            }
        }
    }
    Ok(())
}

pub(super) fn open_requests(tx: &impl Tables) -> Result<Vec<(u64, OpenRequest)>> {
    id_rows(tx, schema::OPEN_REQUESTS, 0, usize::MAX)
}

pub(super) fn system(tx: &impl Tables, id: u64) -> Result<Option<SystemRecord>> {
    get(tx, schema::SYSTEMS, id)
}

pub(super) fn systems(tx: &impl Tables) -> Result<Vec<SystemRecord>> {
    values(tx, schema::SYSTEMS)
}

pub(super) fn cert(tx: &impl Tables, serial: &str) -> Result<Option<CertRecord>> {
    get(tx, schema::CERTS, serial)
}

pub(super) fn certs(tx: &impl Tables) -> Result<Vec<CertRecord>> {
    values(tx, schema::CERTS)
}

pub(super) fn is_revoked(tx: &impl Tables, serial: &str) -> Result<bool> {
    contains(tx, schema::REVOKED, serial)
}

/// Revoked, or retired after its grace: a new tunnel handshake with it is refused.
pub(super) fn refuses_handshake(tx: &impl Tables, serial: &str) -> Result<bool> {
    Ok(is_revoked(tx, serial)? || contains(tx, schema::RETIRED, serial)?)
}

/// Every certificate of `system_id`, oldest generation first.
pub(super) fn lineage(tx: &impl Tables, system_id: u64) -> Result<Vec<CertRecord>> {
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

pub(super) fn grace_until(tx: &impl Tables, serial: &str) -> Result<Option<i64>> {
    get(tx, schema::GRACE, serial)
}

/// Serials whose grace window ended at or before `now`.
pub(super) fn grace_ended(tx: &impl Tables, now: i64) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for row in tx.open(schema::GRACE)?.iter()? {
        let (serial, until) = row?;
        if decode::<i64>("grace", until.value())? <= now {
            out.push(key_of(schema::GRACE, serial.value())?);
        }
    }
    Ok(out)
}

pub(super) fn revoked_serials(tx: &impl Tables) -> Result<Vec<String>> {
    keys(tx, schema::REVOKED)
}

pub(super) fn targets(tx: &impl Tables) -> Result<Vec<TargetRecord>> {
    values(tx, schema::TARGETS)
}

pub(super) fn target(tx: &impl Tables, id: u64) -> Result<Option<TargetRecord>> {
    get(tx, schema::TARGETS, id)
}

pub(super) fn user(tx: &impl Tables, name: &str) -> Result<Option<UserRecord>> {
    get(tx, schema::USERS, name)
}

pub(super) fn users(tx: &impl Tables) -> Result<Vec<UserRecord>> {
    values(tx, schema::USERS)
}

pub(super) fn user_count(tx: &impl Tables) -> Result<u64> {
    Ok(tx.open(schema::USERS)?.len()?)
}

pub(super) fn session(tx: &impl Tables, token_hash: &[u8]) -> Result<Option<SessionRecord>> {
    get(tx, schema::SESSIONS, token_hash)
}

/// Audit rows with id > `after`, oldest first, at most `limit`.
pub(super) fn audit(tx: &impl Tables, after: u64, limit: usize) -> Result<Vec<(u64, AuditRecord)>> {
    id_rows(tx, schema::AUDIT, after, limit)
}
