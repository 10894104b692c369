//! Migration on open: brings a database of any earlier schema version to the current one
//! in one transaction (each step creates what its version added; opening a table creates
//! it), and refuses one from a newer version. `legacy.rs` reads what versions 1 to 6 wrote.

use super::certs::CertRecord;
use super::{certs, legacy, meta, schema, Result, StoreError, Txn};

impl Txn {
    /// Brings the schema to the current version: each step creates what its version
    /// added (opening a table creates it). Refuses a database from a newer version.
    pub(super) fn migrate(&self) -> Result<()> {
        let found = match legacy::schema_version(&self.inner)? {
            // Typed tables: only versions before byte keys wrote them.
            Some(found) if found < schema::VERSION_BYTE_KEYS => {
                legacy::rewrite_tables(self)?;
                found
            }
            Some(found) => found,
            None => meta::schema_version(&self.inner)?,
        };
        if found > schema::CURRENT_VERSION {
            return Err(StoreError::TooNew { found });
        }
        if found < schema::VERSION_INITIAL {
            self.table(schema::USERS)?;
            self.table(schema::SESSIONS)?;
            self.table(schema::AUDIT)?;
        }
        if found < schema::VERSION_TARGET_PAIRING {
            self.table(schema::REQUESTS)?;
            self.table(schema::OPEN_REQUESTS)?;
            self.table(schema::SYSTEMS)?;
            self.table(schema::CERTS)?;
            self.table(schema::REVOKED)?;
        }
        if found < schema::VERSION_SOURCE_PAIRING {
            self.table(schema::TARGETS)?;
        }
        if found < schema::VERSION_REPLICATION {
            self.table(schema::QUEUE)?;
            self.table(schema::QUEUE_DONE)?;
            self.table(schema::QUEUE_LATEST)?;
            self.table(schema::RECEIVED)?;
            self.table(schema::PARTIALS)?;
            self.table(schema::REPLICATION_SETTINGS)?;
        }
        if found < schema::VERSION_PAIRING_TOKENS {
            self.table(schema::PAIRING_TOKENS)?;
        }
        if found < schema::VERSION_CERT_LINEAGE {
            self.table(schema::LINEAGE)?;
            self.table(schema::GRACE)?;
            self.table(schema::RETIRED)?;
            self.number_lineages()?;
        }
        if found < schema::VERSION_RECYCLE {
            self.table(schema::RECYCLE)?;
            self.table(schema::VERIFY_RUNS)?;
            self.table(schema::DAMAGED)?;
            self.index_damaged()?;
        }
        if found < schema::VERSION_CHUNK_INDEX {
            self.table(schema::CHUNKS)?;
            self.table(schema::CHUNK_FILES)?;
            self.table(schema::CHUNK_STAGE)?;
            self.table(schema::CHUNK_NAMES)?;
        }
        if found != schema::CURRENT_VERSION {
            self.put(
                schema::META,
                schema::META_SCHEMA_VERSION,
                &schema::CURRENT_VERSION,
            )?;
        }
        Ok(())
    }

    /// Migration to lineages: the certificates of each system, oldest first, become its
    /// generations 1, 2, ... (earlier versions kept one serial per systems row, and a
    /// replacement key's certificate beside the revoked one it replaced).
    fn number_lineages(&self) -> Result<()> {
        let mut certs: Vec<CertRecord> = certs::certs(&self.inner)?;
        certs.sort_by(|a, b| {
            (a.system_id, a.issued_at, &a.serial).cmp(&(b.system_id, b.issued_at, &b.serial))
        });
        let mut previous_system = None;
        let mut generation = 0;
        for mut c in certs {
            if previous_system != Some(c.system_id) {
                previous_system = Some(c.system_id);
                generation = certs::next_generation(&self.inner, c.system_id)? - 1;
            }
            if c.generation != 0 {
                continue;
            }
            generation += 1;
            c.generation = generation;
            self.put_cert(&c)?;
            self.put(schema::LINEAGE, (c.system_id, generation), &c.serial)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::UnixTime;
    use crate::store::{legacy, Store, SCHEMA_VERSION};

    /// What version 3 held for a source that filed a replacement key: two certificates of
    /// one system (the first revoked), unnumbered, and another system's one.
    #[test]
    fn migration_numbers_each_systems_certificates_oldest_first() {
        let dir = std::env::temp_dir().join(format!("replgate-txn-lineage-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        crate::fsx::ensure_private_dir(&dir).unwrap();
        let path = dir.join("replgate.redb");
        let cert = |serial: &str, system_id: u64, issued_at: UnixTime| CertRecord {
            serial: serial.into(),
            request_id: 1,
            system_id,
            subject: "u".into(),
            issued_at,
            not_after: issued_at + 100,
            pem: String::new(),
            revoked_at: None,
            generation: 0,
            renews: None,
            superseded_at: None,
            retired_at: None,
            issuer: None,
        };
        {
            let store = Store::open(&path).unwrap();
            store
                .write(|tx| {
                    for c in [cert("bb", 2, 20), cert("aa", 2, 10), cert("cc", 3, 5)] {
                        tx.put_cert(&c)?;
                    }
                    tx.revoke("aa", 15)?;
                    tx.put(schema::META, schema::META_SCHEMA_VERSION, &3u64)
                })
                .unwrap();
        }
        let store = Store::open(&path).unwrap();
        let two: Vec<_> = store
            .lineage(2)
            .unwrap()
            .into_iter()
            .map(|c| (c.serial, c.generation, c.revoked_at))
            .collect();
        assert_eq!(
            two,
            [("aa".to_string(), 1, Some(15)), ("bb".to_string(), 2, None)]
        );
        assert_eq!(store.lineage(3).unwrap()[0].generation, 1);
        assert!(store.lineage(4).unwrap().is_empty());
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// Version 7 kept damage marks in the received rows only: the migration indexes them.
    #[test]
    fn migration_to_the_recycle_bin_indexes_the_copies_already_marked_damaged() {
        let (_, dir) = crate::store::temp_store("migrate-damaged");
        let path = dir.join("v7.redb");
        let row = |backup: &str, damaged: Option<&str>| crate::store::ReceivedRecord {
            backup: backup.into(),
            storage_id: 3,
            size: 1,
            sha256: "ab".into(),
            version: 1,
            received: 1,
            verified: None,
            damaged: damaged.map(String::from),
            bytes_received: None,
            pinned: false,
        };
        {
            let store = Store::open(&path).unwrap();
            store
                .write(|tx| {
                    for (uuid, r) in [
                        ("u-1", row("c/a", Some("differs"))),
                        ("u-1", row("c/b", None)),
                        ("u-2", row("c/a", Some("missing"))),
                    ] {
                        // As version 7 wrote them: the row alone.
                        tx.put(schema::RECEIVED, (uuid, r.backup.as_str()), &r)?;
                    }
                    tx.remove(schema::DAMAGED, ("u-1", "c/a"))?;
                    tx.put(schema::META, schema::META_SCHEMA_VERSION, &7u64)
                })
                .unwrap();
            assert_eq!(store.damaged_count().unwrap(), 0);
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
        assert_eq!(
            store.damaged(None, 10).unwrap(),
            [
                ("u-1".to_string(), "c/a".to_string(), 3),
                ("u-2".to_string(), "c/a".to_string(), 3)
            ]
        );
        assert_eq!(store.damaged(Some("u-2"), 10).unwrap().len(), 1);
        // From now on the writes keep it: a new copy clears the mark and says so.
        let healed = store
            .write(|tx| tx.put_received("u-1", &row("c/a", None)))
            .unwrap();
        assert!(healed);
        assert!(store.write(|tx| tx.delete_received("u-2", "c/a")).unwrap());
        assert_eq!(store.damaged_count().unwrap(), 0);
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// A target's database as the release before lineages wrote it (commit 663872f, one
    /// paired source: see tests/it/fixtures/release-663872f/make.sh).
    #[test]
    fn a_database_from_the_release_before_lineages_migrates_its_certificates_into_one() {
        let (_, dir) = crate::store::temp_store("migrate");
        let path = dir.join("old.redb");
        std::fs::copy(
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/it/fixtures/release-663872f/target/replgate.redb"
            ),
            &path,
        )
        .unwrap();
        {
            let db = redb::Database::open(&path).unwrap();
            // Typed tables, as every version before byte keys wrote them.
            let before = legacy::schema_version(&db.begin_write().unwrap()).unwrap();
            assert_eq!(before, Some(schema::VERSION_SOURCE_PAIRING));
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
        let systems = store.systems().unwrap();
        assert_eq!(systems.len(), 1);
        let row = &systems[0];
        let serial = row.cert_serial.clone().unwrap();
        let lineage = store.lineage(row.id).unwrap();
        assert_eq!(lineage.len(), 1);
        assert_eq!(lineage[0].serial, serial);
        assert_eq!(lineage[0].generation, 1);
        assert_eq!(Some(lineage[0].not_after), row.certificate_expires);
        assert!(lineage[0].is_live());
        assert!(!store.refuses_handshake(&serial).unwrap());
        assert_eq!(
            store.write(|tx| tx.next_generation(row.id)).unwrap(),
            2,
            "the next renewal continues the migrated lineage"
        );
        drop(store);
        // Opening again migrates nothing twice.
        let store = Store::open(&path).unwrap();
        assert_eq!(store.lineage(row.id).unwrap().len(), 1);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
