//! What schema versions 1 to 6 wrote: typed redb tables (`u64`, `&str` and tuple keys;
//! `i64` and `&str` values). Read once, by `Txn::migrate`, to rewrite every table in the
//! byte-keyed form of `VERSION_BYTE_KEYS`; nothing else names these types, so redb's
//! B-tree code for them is only the read path.

use std::collections::HashSet;

use redb::{ReadableTable, TableDefinition, TableError, TableHandle, WriteTransaction};

use super::schema::{self, Id, IdName, IdPair, KeyCodec, Name, NamePair};
use super::{decode, encode, Result, Txn};

/// The tables of versions 1 to 6 by key and value type. `sessions` was bytes → bytes
/// already and stays as it is.
const STR_JSON: &[&str] = &[
    "meta",
    "users",
    "certs",
    "replication_settings",
    "pairing_tokens",
];
const ID_JSON: &[&str] = &[
    "audit",
    "requests",
    "open_requests",
    "systems",
    "targets",
    "queue",
    "queue_done",
];
const STR_TIME: &[&str] = &["revoked", "grace", "retired"];

type Rows = Vec<(Vec<u8>, Vec<u8>)>;

fn key<K: KeyCodec>(k: K::Ref<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    K::encode(k, &mut out);
    out
}

/// The schema version of a database whose `meta` table is still typed (`&str` keys), or
/// None when there is no `meta` yet (a new file) or it is byte-keyed already.
pub(super) fn schema_version(tx: &WriteTransaction) -> Result<Option<u64>> {
    if !tx.list_tables()?.any(|t| t.name() == "meta") {
        return Ok(None);
    }
    let meta = match tx.open_table(TableDefinition::<&str, &[u8]>::new("meta")) {
        Ok(meta) => meta,
        Err(TableError::TableTypeMismatch { .. }) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let version = meta.get(schema::META_SCHEMA_VERSION)?;
    Ok(Some(match version {
        Some(v) => decode("meta", v.value())?,
        None => 0,
    }))
}

/// Rewrites every typed table that exists as bytes → bytes under the same name, in the
/// migration's transaction: rows are read into memory, the typed table is deleted, the
/// byte-keyed one written (redb cannot rename a table). Keys keep their order.
pub(super) fn rewrite_tables(txn: &Txn) -> Result<()> {
    let existing: HashSet<String> = txn
        .inner
        .list_tables()?
        .map(|t| t.name().to_string())
        .collect();
    let present = |name: &str| existing.contains(name);
    for &name in STR_JSON.iter().filter(|n| present(n)) {
        rewrite::<&str, &[u8]>(txn, name, |k, v| Ok((key::<Name>(k), v.to_vec())))?;
    }
    for &name in ID_JSON.iter().filter(|n| present(n)) {
        rewrite::<u64, &[u8]>(txn, name, |k, v| Ok((key::<Id>(k), v.to_vec())))?;
    }
    for &name in STR_TIME.iter().filter(|n| present(n)) {
        rewrite::<&str, i64>(txn, name, |k, v| Ok((key::<Name>(k), encode(name, &v)?)))?;
    }
    if present("lineage") {
        rewrite::<(u64, u64), &str>(txn, "lineage", |k, v| {
            Ok((key::<IdPair>(k), encode("lineage", v)?))
        })?;
    }
    if present("queue_latest") {
        rewrite::<(u64, &str), &[u8]>(txn, "queue_latest", |k, v| {
            Ok((key::<IdName>(k), v.to_vec()))
        })?;
    }
    for &name in ["received", "partials"].iter().filter(|n| present(n)) {
        rewrite::<(&str, &str), &[u8]>(txn, name, |k, v| Ok((key::<NamePair>(k), v.to_vec())))?;
    }
    Ok(())
}

fn rewrite<K: redb::Key + 'static, V: redb::Value + 'static>(
    txn: &Txn,
    name: &'static str,
    row: impl for<'a> Fn(K::SelfType<'a>, V::SelfType<'a>) -> Result<(Vec<u8>, Vec<u8>)>,
) -> Result<()> {
    let typed = TableDefinition::<K, V>::new(name);
    let mut rows: Rows = Vec::new();
    for entry in txn.inner.open_table(typed)?.iter()? {
        let (k, v) = entry?;
        rows.push(row(k.value(), v.value())?);
    }
    txn.inner.delete_table(typed)?;
    let raw: schema::Raw = TableDefinition::new(name);
    let mut table = txn.inner.open_table(raw)?;
    for (k, v) in &rows {
        table.insert(k.as_slice(), v.as_slice())?;
    }
    Ok(())
}
