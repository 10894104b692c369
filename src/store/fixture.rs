//! (test only) The schema-6 fixture `tests/it/fixtures/store-schema-6.redb` and what every
//! read of the store returns for it (`store-schema-6.json`). Both were made on main at
//! e8a7c16 (schema 6, the last before byte keys), by this file's [`write`] through that
//! version's own store API into a new database, and [`snapshot`] of a copy of it (the
//! snapshot hands out counters, so it ran on a copy). The tests below hold the migration
//! to byte keys, and today's store written afresh, to that snapshot.

use serde_json::{json, Value};

use super::*;
use crate::model::Privilege;

const SESSION_HASHES: [&[u8]; 3] = [&[0u8; 32], b"\x00\x01session-two\xff", b"missing"];
const SERIALS: [&str; 6] = ["0a01", "0a02", "0b01", "0c01", "ff00", "missing"];
const SYSTEM_IDS: [u64; 4] = [2, 3, 300, 9];
const TARGET_IDS: [u64; 4] = [1, 2, 256, 7];
const UUIDS: [&str; 5] = ["u-1", "u-10", "u", "u-1\u{0}x", "none"];

fn j<T: serde::Serialize>(v: T) -> Value {
    serde_json::to_value(v).unwrap()
}

fn snapshot(store: &Store) -> Value {
    let mut per_serial = serde_json::Map::new();
    for s in SERIALS {
        per_serial.insert(
            s.into(),
            json!({
                "cert": j(store.cert(s).unwrap()),
                "revoked": store.is_revoked(s).unwrap(),
                "refused": store.refuses_handshake(s).unwrap(),
                "grace_until": store.grace_until(s).unwrap(),
            }),
        );
    }
    let lineages: Vec<Value> = SYSTEM_IDS
        .iter()
        .map(|&id| {
            json!([
                id,
                j(store.lineage(id).unwrap()),
                j(store.system(id).unwrap())
            ])
        })
        .collect();
    let per_target: Vec<Value> = TARGET_IDS
        .iter()
        .map(|&id| {
            json!([
                id,
                j(store.target(id).unwrap()),
                j(store.latest_items(id).unwrap()),
                j(store.open_items(Some(id)).unwrap()),
                j(store.finished_items(Some(id), 0, 100).unwrap()),
            ])
        })
        .collect();
    let per_uuid: Vec<Value> = UUIDS
        .iter()
        .map(|&u| {
            json!([
                u,
                j(store.received(u).unwrap()),
                j(store.received_one(u, "c1/a.tar").unwrap()),
                j(store.partial(u, "c1/a.tar").unwrap()),
            ])
        })
        .collect();
    let sessions: Vec<Value> = SESSION_HASHES
        .iter()
        .map(|h| j(store.session(h).unwrap()))
        .collect();
    let users: Vec<Value> = ["root", "alice", "böb", "nobody"]
        .iter()
        .map(|u| j(store.user(u).unwrap()))
        .collect();
    let mut summaries = Vec::new();
    store
        .visit_requests(
            false,
            1,
            100,
            |_| true,
            |s| summaries.push(format!("{s:?}")),
        )
        .unwrap();
    json!({
        "users": j(store.users().unwrap()),
        "user_count": store.user_count().unwrap(),
        "user": users,
        "sessions": sessions,
        "audit": j(store.audit(0, 1000).unwrap()),
        "audit_after_2": j(store.audit(2, 2).unwrap()),
        "requests": j(store.requests(0, 1000, |_| true).unwrap()),
        "requests_after_3": j(store.requests(3, 1, |_| true).unwrap()),
        "pending": j(store.pending_requests(0, 100).unwrap()),
        "summaries": summaries,
        "open_requests": j(store.open_requests().unwrap()),
        "request_4": j(store.request(4).unwrap()),
        "systems": j(store.systems().unwrap()),
        "certs": j(store.certs().unwrap()),
        "revoked_serials": j(store.revoked_serials().unwrap()),
        "grace_ended": j(store.grace_ended(i64::MAX).unwrap()),
        "grace_ended_early": j(store.grace_ended(0).unwrap()),
        "per_serial": per_serial,
        "lineages": lineages,
        "targets": j(store.targets().unwrap()),
        "per_target": per_target,
        "open_items": j(store.open_items(None).unwrap()),
        "open_item_3": j(store.open_item(3).unwrap()),
        "finished_items": j(store.finished_items(None, 1, 2).unwrap()),
        "per_uuid": per_uuid,
        "partials": j(store.partials().unwrap()),
        "replication_config": j(store.replication_config().unwrap()),
        "throttle": j(store.throttle().unwrap()),
        "tokens": j(store.tokens().unwrap()),
        "token": j(store.token("00000000000b").unwrap()),
        "counters": store.write(counters).unwrap(),
    })
}

/// What the write side reads: the identity, the counters (each handed out once here, so
/// both sides of the comparison advance them alike) and the next generations.
fn counters(tx: &Txn) -> super::Result<Value> {
    Ok(json!({
        "uuid": tx.system_uuid_or_insert(|| "fresh".into())?,
        "first_start": tx.first_start_or_insert(99_999)?,
        "request": tx.next_request_id()?,
        "system": tx.next_system_id()?,
        "target": tx.next_target_id()?,
        "item": tx.next_item_id()?,
        "tail": tx.next_tail()?,
        "generation_2": tx.next_generation(2)?,
        "generation_9": tx.next_generation(9)?,
        "latest": j(tx.latest_item(1, "c1/a.tar")?),
    }))
}

fn from<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
    serde_json::from_value(v).unwrap()
}

fn audit(action: &str) -> AuditRecord {
    AuditRecord {
        time: 1_700_000_000,
        user: "root".into(),
        address: "192.0.2.1".into(),
        action: action.into(),
        object: "fixture".into(),
        detail: "d".into(),
    }
}

fn user(name: &str, privilege: Privilege, t: i64) -> UserRecord {
    UserRecord {
        name: name.into(),
        password_hash: format!("$argon2id$fixture-{name}"),
        privilege,
        created: t,
        updated: t,
    }
}

fn cert(serial: &str, system_id: u64, issued_at: i64) -> CertRecord {
    CertRecord {
        serial: serial.into(),
        request_id: 2,
        system_id,
        subject: format!("CN={serial}"),
        issued_at,
        not_after: issued_at + 86_400,
        pem: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into(),
        revoked_at: None,
        generation: 0,
        renews: None,
        superseded_at: None,
        retired_at: None,
        issuer: None,
    }
}

fn item(id: u64, target_id: u64, backup: &str, status: &str) -> QueueItem {
    from(json!({
        "id": id, "target_id": target_id, "backup": backup, "size": 1000 + id,
        "version": 1_700_000_000_000_000_000i64 + id as i64, "status": status,
        "queued": 1_700_000_100 + id as i64, "bytes_done": id * 10, "bytes_sent": id * 11,
        "attempts": 1, "message": format!("m{id}"),
    }))
}

fn write(store: &Store) {
    store
        .write(|tx| {
            tx.system_uuid_or_insert(|| "6a1b2c3d-0000-4000-8000-00000000f1x7".into())?;
            tx.create_user(&user("root", Privilege::Superuser, 1_600_000_000), &audit("user created"))?;
            tx.create_user(&user("alice", Privilege::Monitor, 1_600_000_010), &audit("user created"))?;
            tx.create_user(&user("böb", Privilege::Manage, 1_600_000_020), &audit("user created"))?;
            tx.first_start_or_insert(1_650_000_000)?;
            let s = |user: &str, scraper| SessionRecord {
                user: user.into(),
                created: 1_600_000_100,
                scraper,
                last_used: 1_600_000_200,
            };
            tx.insert_session(SESSION_HASHES[0], &s("root", false), &audit("login"))?;
            tx.insert_session(SESSION_HASHES[1], &s("alice", true), &audit("scraper"))?;

            // Requests 1..=5 (3 pending) and the counter beyond them.
            for id in 1..=5u64 {
                let n = tx.next_request_id()?;
                assert_eq!(n, id);
                let status = match id {
                    2 => RequestStatus::Accepted,
                    4 => RequestStatus::Rejected,
                    _ => RequestStatus::Pending,
                };
                tx.put_request(&RequestRecord {
                    name: format!("source \"{id}\"\n"),
                    status,
                    message: (id == 4).then(|| "no".into()),
                    system_id: (id == 2).then_some(2),
                    cert_serial: (id == 2).then(|| "0a01".into()),
                    created: 100 + id as i64,
                    expires: 1_000_000 + id as i64,
                    ..RequestRecord::fixture(id)
                })?;
            }

            // Systems 2, 3 and 300 (300 > 255: byte order differs from number order in
            // little-endian), their lineages, a revocation, a grace, a retirement.
            for (id, name) in [(2u64, "north"), (3, "south"), (300, "east")] {
                let sid = tx.next_system_id()?;
                assert!(sid <= id);
                tx.put_system(&from(json!({
                    "id": id, "name": name, "host": format!("{name}.example"),
                    "role": "Non-Managed Replication Source",
                    "system_uuid": format!("uuid-{name}"), "storage_id": 1,
                    "created": 1_600_000_000 + id as i64, "updated": 1_600_000_001 + id as i64,
                    "cert_serial": format!("serial-{id}"), "quota_mb": id * 10,
                })))?;
            }
            for (serial, system_id, issued) in
                [("0a01", 2, 10), ("0a02", 2, 20), ("0b01", 3, 30), ("0c01", 300, 40), ("ff00", 300, 50)]
            {
                let generation = tx.next_generation(system_id)?;
                assert!(tx.insert_cert(&CertRecord { generation, ..cert(serial, system_id, issued) })?);
            }
            tx.supersede("0a01", 25, 1_700_000_000)?;
            tx.supersede("0c01", 45, 46)?;
            tx.retire("0c01", 47)?;
            tx.revoke("0b01", 35)?;
            tx.supersede("ff00", 55, 1_800_000_000)?;

            // Source side: targets 1, 2, 256 and their queues.
            for id in [1u64, 2, 256] {
                let tid = tx.next_target_id()?;
                assert!(tid <= id);
                tx.put_target(&TargetRecord {
                    host: format!("t{id}:8443"),
                    status: TargetStatus::Complete,
                    ..TargetRecord::fixture(id)
                })?;
            }
            for (target, backup, status) in [
                (1, "c1/a.tar", "waiting"),
                (1, "c1/b.tar", "active"),
                (256, "c1/a.tar", "failed"),
                (1, "c2/x.tar", "done"),
                (256, "c2/y.tar", "removed"),
                (1, "c1/a.tar", "done"),
                (2, "c3/z.tar", "waiting"),
            ] {
                let id = tx.next_item_id()?;
                tx.put_item(&item(id, target, backup, status))?;
            }
            tx.next_tail()?;
            tx.put_replication_config(&from(json!({"max_concurrent": 3, "strategy": "recency", "retries": 4})))?;
            tx.put_throttle(&from(json!({"windows": [{"percentage": 50, "days": [1, 2], "start": 60, "end": 120}], "link_mbps": 250})))?;

            // Target side: received backups and partials under uuids that prefix each other.
            for (uuid, backup) in [
                ("u-1", "c1/b.tar"), ("u-1", "c1/a.tar"), ("u-10", "c1/a.tar"), ("u", "zz/z"),
                ("u-1\u{0}x", "c1/a.tar"), ("u-1", "c9/ü.tar"),
            ] {
                tx.put_received(uuid, &from(json!({
                    "backup": backup, "storage_id": 1, "size": backup.len(), "sha256": "ab".repeat(32),
                    "version": 7, "received": 1_700_000_500, "verified": 1_700_000_600,
                })))?;
            }
            for (uuid, backup) in [("u-10", "c1/a.tar"), ("u", "c1/a.tar"), ("u-1", "c1/c.tar")] {
                tx.put_partial(uuid, &from(json!({
                    "backup": backup, "storage_id": 2, "size": 4096, "version": 8,
                    "offset": 1024, "started": 1_700_000_700, "updated": 1_700_000_800,
                })))?;
            }
            for (id, uses) in [("00000000000b", 5u32), ("00000000000a", 1)] {
                tx.put_token(&from(json!({
                    "id": id, "secret_hash": "cd".repeat(32), "created": 1_700_001_000,
                    "created_by": "root", "expires": 1_800_000_000, "uses": uses, "used": 1,
                    "quota_mb": 100, "note": "fixture",
                })))?;
            }
            Ok::<_, StoreError>(())
        })
        .unwrap();
}

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/it/fixtures/store-schema-6"
);

fn expected() -> Value {
    let text = std::fs::read_to_string(format!("{FIXTURE}.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("replgate-fixture-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    crate::fsx::ensure_private_dir(&dir).unwrap();
    dir
}

/// Differences between two snapshots, by path, so a failure names what moved.
fn differences(path: &str, a: &Value, b: &Value, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for k in x.keys().chain(y.keys().filter(|k| !x.contains_key(*k))) {
                let (va, vb) = (
                    x.get(k).unwrap_or(&Value::Null),
                    y.get(k).unwrap_or(&Value::Null),
                );
                differences(&format!("{path}.{k}"), va, vb, out);
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (va, vb)) in x.iter().zip(y).enumerate() {
                differences(&format!("{path}[{i}]"), va, vb, out);
            }
        }
        _ if a != b => out.push(format!("{path}: {a} != {b}")),
        _ => {}
    }
}

fn assert_same(found: &Value, want: &Value) {
    let mut diff = Vec::new();
    differences("", found, want, &mut diff);
    assert!(
        diff.is_empty(),
        "{} differences:\n{}",
        diff.len(),
        diff.join("\n")
    );
}

#[test]
fn a_schema_6_database_migrates_to_byte_keys_and_every_read_returns_what_it_did() {
    let dir = scratch("migrate");
    let path = dir.join("replgate.redb");
    std::fs::copy(format!("{FIXTURE}.redb"), &path).unwrap();
    {
        let db = redb::Database::open(&path).unwrap();
        let w = db.begin_write().unwrap();
        assert_eq!(
            legacy::schema_version(&w).unwrap(),
            Some(schema::VERSION_CERT_LINEAGE)
        );
    }
    let store = Store::open(&path).unwrap();
    assert_eq!(store.schema_version().unwrap(), schema::CURRENT_VERSION);
    assert_same(&snapshot(&store), &expected());
    // The chunk index's tables exist, empty.
    assert_eq!(store.chunk_counts().unwrap(), super::ChunkCounts::default());
    // Writes go on in the new tables: a new received backup sorts among the old ones.
    store
        .write(|tx| {
            let mut r = tx.received_one("u-1", "c1/b.tar")?.unwrap();
            r.backup = "c1/aa.tar".into();
            tx.put_received("u-1", &r)
        })
        .unwrap();
    let names: Vec<String> = store
        .received("u-1")
        .unwrap()
        .into_iter()
        .map(|r| r.backup)
        .collect();
    assert_eq!(names, ["c1/a.tar", "c1/aa.tar", "c1/b.tar", "c9/ü.tar"]);
    drop(store);
    // Opened again: byte-keyed already, nothing is rewritten twice.
    {
        let db = redb::Database::open(&path).unwrap();
        let w = db.begin_write().unwrap();
        assert_eq!(legacy::schema_version(&w).unwrap(), None);
    }
    let store = Store::open(&path).unwrap();
    assert_eq!(store.received("u-1").unwrap().len(), 4);
    assert_eq!(store.lineage(300).unwrap().len(), 2);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_new_database_written_alike_reads_as_the_migrated_one() {
    let dir = scratch("fresh");
    let store = Store::open(&dir.join("replgate.redb")).unwrap();
    write(&store);
    assert_same(&snapshot(&store), &expected());
    std::fs::remove_dir_all(dir).unwrap();
}
