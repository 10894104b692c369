//! Typed access to the byte tables, written once for every entity: reads over [`Tables`]
//! (a read snapshot, which `Store`'s reads open one per call, or the write in progress,
//! which `Txn`'s reads use so that it sees its own uncommitted writes), and the generic
//! writes of [`Txn`], the write transaction every write of the store runs in
//! (`Store::write`): `put`, `remove`, a table opened for writing. The entity files (`requests.rs`, `certs.rs`, ...) build their typed
//! reads and writes from these.

use redb::{ReadTransaction, ReadableTable, Table, WriteTransaction};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::schema::{name_prefix, Def, Id, KeyCodec, NamePair};
use super::{decode, encode, Result, Snapshot, StoreError, Txn};

/// A transaction that tables can be opened in for reading.
pub(super) trait Tables {
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

impl Tables for Snapshot {
    fn open<K: KeyCodec>(
        &self,
        def: Def<K>,
    ) -> Result<impl ReadableTable<&'static [u8], &'static [u8]> + '_> {
        self.txn.open(def)
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

/// At most `limit` values of a table, in key order, after the first `skip` (which are
/// not decoded).
pub(super) fn values_page<K: KeyCodec, T: DeserializeOwned>(
    tx: &impl Tables,
    def: Def<K>,
    skip: u64,
    limit: usize,
) -> Result<Vec<T>> {
    let mut out = Vec::new();
    let skip = usize::try_from(skip).unwrap_or(usize::MAX);
    for row in tx.open(def)?.iter()?.skip(skip).take(limit) {
        let (_, v) = row?;
        out.push(decode(def.name(), v.value())?);
    }
    Ok(out)
}

/// The values of a table keyed by name pairs whose first name is `first`, in key order
/// (one range scan: the pair encoding keeps them together).
pub(super) fn values_under<T: DeserializeOwned>(
    tx: &impl Tables,
    def: Def<NamePair>,
    first: &str,
) -> Result<Vec<T>> {
    let prefix = name_prefix(first);
    let mut out = Vec::new();
    for row in tx.open(def)?.range(prefix.as_slice()..)? {
        let (k, v) = row?;
        if !k.value().starts_with(&prefix) {
            break;
        }
        out.push(decode(def.name(), v.value())?);
    }
    Ok(out)
}

/// Every value of a table keyed by name pairs, with its key's first name, in key order.
pub(super) fn values_by_first<T: DeserializeOwned>(
    tx: &impl Tables,
    def: Def<NamePair>,
) -> Result<Vec<(String, T)>> {
    let mut out = Vec::new();
    for row in tx.open(def)?.iter()? {
        let (k, v) = row?;
        let (first, _) = key_of(def, k.value())?;
        out.push((first, decode(def.name(), v.value())?));
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
pub(super) fn id_rows<T: DeserializeOwned>(
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

/// A table opened for writing.
pub(super) type TableMut<'t> = Table<'t, &'static [u8], &'static [u8]>;

impl Txn {
    /// The table `def`, opened for writing (opening creates it).
    pub(super) fn table<K: KeyCodec>(&self, def: Def<K>) -> Result<TableMut<'_>> {
        Ok(self.inner.open_table(def.raw())?)
    }

    /// Encodes `value` and stores it under `key` in `def`.
    pub(super) fn put<K: KeyCodec, T: Serialize + ?Sized>(
        &self,
        def: Def<K>,
        key: K::Ref<'_>,
        value: &T,
    ) -> Result<()> {
        let value = encode(def.name(), value)?;
        self.table(def)?
            .insert(def.key(key).as_slice(), value.as_slice())?;
        Ok(())
    }

    /// Removes `key` from the table `def`; returns whether it was there.
    pub(super) fn remove<K: KeyCodec>(&self, def: Def<K>, key: K::Ref<'_>) -> Result<bool> {
        Ok(self.table(def)?.remove(def.key(key).as_slice())?.is_some())
    }

    /// One past the largest key of an id-keyed table, or `empty` for an empty table.
    pub(super) fn after_last(&self, def: Def<Id>, empty: u64) -> Result<u64> {
        let t = self.table(def)?;
        let last = match t.last()? {
            Some((k, _)) => Some(key_of(def, k.value())?),
            None => None,
        };
        Ok(last.map_or(empty, |k| k + 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{schema, Store};

    /// A value whose serialization fails, as a record with a bug in its `Serialize` would.
    struct Unencodable;

    impl Serialize for Unencodable {
        fn serialize<S: serde::Serializer>(&self, _: S) -> std::result::Result<S::Ok, S::Error> {
            Err(serde::ser::Error::custom("refused"))
        }
    }

    #[test]
    fn a_record_that_does_not_encode_fails_the_write_and_stores_nothing() {
        let dir = std::env::temp_dir().join(format!("replgate-txn-encode-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        crate::fsx::ensure_private_dir(&dir).unwrap();
        let store = Store::open(&dir.join("replgate.redb")).unwrap();
        let err = store
            .write(|tx| tx.put(schema::META, "probe", &Unencodable))
            .unwrap_err();
        assert!(
            matches!(&err, StoreError::Encode { table, detail } if table == "meta" && detail.contains("refused")),
            "{err:?}"
        );
        let stored: Option<String> =
            get(&store.snapshot().unwrap(), schema::META, "probe").unwrap();
        assert_eq!(stored, None);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
