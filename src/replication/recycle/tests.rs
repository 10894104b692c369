//! The recycle bin over a real store and real files: retention's moves, restores, purges,
//! the quota's cap on the bin, and the start-up repair of every state a crash can leave.

use super::*;
use crate::replication::receiver::{quota_usage, Scratch};
use crate::store::SystemRecord;

const NOW: UnixTime = 1_800_000_000;

fn actor() -> Actor {
    Actor {
        user: "root".into(),
        address: "127.0.0.1".into(),
    }
}

/// A received copy of `backup` with `body`, as a commit leaves it.
fn receive(s: &Scratch, backup: &str, body: &[u8], version: i64, age_days: i64) -> ReceivedRecord {
    let name = BackupName::parse(backup).unwrap();
    let dir = s.client_dir(name.client());
    std::fs::write(dir.join(name.file()), body).unwrap();
    let row = ReceivedRecord {
        backup: backup.into(),
        storage_id: s.source.storage.id,
        size: body.len() as u64,
        sha256: crate::wire::hex::encode(
            ring::digest::digest(&ring::digest::SHA256, body).as_ref(),
        ),
        version,
        received: NOW - age_days * DAY,
        verified: None,
        damaged: None,
        bytes_received: None,
        pinned: false,
    };
    s.store
        .write(|tx| tx.put_received(&s.source.uuid, &row))
        .unwrap();
    row
}

/// The source's systems row with `policy`, so `apply_retention` finds it.
fn with_policy(s: &Scratch, policy: Option<Retention>, quota_mb: Option<u64>) {
    let row = SystemRecord {
        id: s.source.system_id,
        name: "src".into(),
        host: "src.example".into(),
        role: crate::model::Role::NonManagedSource,
        system_uuid: Some(s.source.uuid.clone()),
        version: None,
        storage_id: Some(s.source.storage.id),
        created: 1,
        updated: 1,
        cert_serial: None,
        certificate_expires: None,
        last_seen: None,
        was_managed: false,
        request_id: None,
        asset_tag: None,
        quota_mb,
        share: None,
        copies_uuid: None,
        last_serial: None,
        retention: policy,
    };
    s.store.write(|tx| tx.put_system(&row)).unwrap();
}

fn keep_last(n: u32) -> Option<Retention> {
    Some(Retention {
        keep_last: Some(n),
        keep_days: None,
    })
}

struct Parts {
    ledger: Ledger,
    recycler: Recycler,
    storages: Vec<Storage>,
}

impl Parts {
    fn new(s: &Scratch) -> Parts {
        Parts {
            ledger: Ledger::default(),
            recycler: Recycler::default(),
            storages: vec![s.source.storage.clone()],
        }
    }

    fn bin<'a>(&'a self, s: &'a Scratch) -> Bin<'a> {
        Bin {
            store: &s.store,
            ledger: &self.ledger,
            storages: &self.storages,
            recycler: &self.recycler,
        }
    }
}

fn received_names(s: &Scratch) -> Vec<String> {
    s.store
        .received(&s.source.uuid)
        .unwrap()
        .into_iter()
        .map(|r| r.backup)
        .collect()
}

fn bin_files(s: &Scratch) -> Vec<String> {
    let dir = bin_dir(&s.source.storage, &s.source.uuid);
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn audit_actions(s: &Scratch) -> Vec<String> {
    s.store
        .audit(0, 100)
        .unwrap()
        .into_iter()
        .map(|(_, a)| format!("{} {}", a.action, a.object))
        .collect()
}

#[test]
fn retention_moves_what_the_policy_lets_go_into_the_bin_outside_the_quota() {
    let s = Scratch::new("bin-retention");
    let p = Parts::new(&s);
    for (i, name) in ["c/1", "c/2", "c/3", "c/4"].iter().enumerate() {
        receive(&s, name, &vec![i as u8; 1000 + i], i as i64, 10 - i as i64);
    }
    receive(&s, "d/only", b"the one backup of d", 1, 400);
    let before = quota_usage(&s.store, &s.source.uuid, 1).unwrap();
    // No policy: nothing moves.
    with_policy(&s, None, None);
    assert_eq!(
        apply_retention(&p.bin(&s), NOW).unwrap(),
        RetentionRun::default()
    );
    with_policy(&s, keep_last(2), None);
    let run = apply_retention(&p.bin(&s), NOW).unwrap();
    assert_eq!((run.moved, run.bytes, run.held), (2, 1000 + 1001, 0));
    assert_eq!(received_names(&s), ["c/3", "c/4", "d/only"]);
    let dir = s.client_dir("c");
    assert!(!dir.join("1").exists() && !dir.join("2").exists());
    assert!(dir.join("3").exists());
    let binned = s.store.recycle(&s.source.uuid).unwrap();
    assert_eq!(
        binned
            .iter()
            .map(|r| (r.backup.as_str(), r.state))
            .collect::<Vec<_>>(),
        [("c/1", RecycleState::Binned), ("c/2", RecycleState::Binned)]
    );
    assert_eq!(bin_files(&s), ["0000000000000001", "0000000000000002"]);
    assert_eq!(
        std::fs::read(bin_dir(&s.source.storage, &s.source.uuid).join("0000000000000001")).unwrap(),
        vec![0u8; 1000]
    );
    // The bin is outside the quota: the usage dropped by what moved.
    assert_eq!(
        quota_usage(&s.store, &s.source.uuid, 1).unwrap(),
        before - 2001
    );
    assert!(audit_actions(&s).contains(&"retention system:2".to_string()));
    // A second run finds nothing more to do.
    assert_eq!(apply_retention(&p.bin(&s), NOW).unwrap().moved, 0);
}

#[test]
fn a_restored_backup_is_pinned_and_a_name_received_again_refuses_a_restore() {
    let s = Scratch::new("bin-restore");
    let p = Parts::new(&s);
    receive(&s, "c/old", b"old backup", 1, 30);
    receive(&s, "c/new", b"new backup", 2, 0);
    with_policy(&s, keep_last(1), None);
    assert_eq!(apply_retention(&p.bin(&s), NOW).unwrap().moved, 1);
    let e = restore(&p.bin(&s), &s.source, "c/none", &actor(), NOW).unwrap_err();
    assert!(matches!(e, RecycleError::NotInBin(_)), "{e:?}");
    let e = restore(&p.bin(&s), &s.source, "../x", &actor(), NOW).unwrap_err();
    assert!(matches!(e, RecycleError::BadName(_)), "{e:?}");
    // While a session receives the name, a restore waits.
    {
        let _busy = p.ledger.hold(&s.source.uuid, "c/old").unwrap();
        let e = restore(&p.bin(&s), &s.source, "c/old", &actor(), NOW).unwrap_err();
        assert!(matches!(e, RecycleError::Busy(_)), "{e:?}");
    }
    let row = restore(&p.bin(&s), &s.source, "c/old", &actor(), NOW + 5).unwrap();
    assert!(row.pinned);
    assert_eq!(
        std::fs::read(s.client_dir("c").join("old")).unwrap(),
        b"old backup"
    );
    assert!(s.store.recycle(&s.source.uuid).unwrap().is_empty());
    assert!(bin_files(&s).is_empty());
    assert!(audit_actions(&s).contains(&"recycle restored system:2".to_string()));
    // Retention leaves the restored copy alone.
    assert_eq!(apply_retention(&p.bin(&s), NOW + 10).unwrap().moved, 0);
    assert_eq!(received_names(&s), ["c/new", "c/old"]);
    // A copy of the same name received while one is in the bin: the restore is refused
    // and both stay as they are.
    receive(&s, "c/newer", b"newer", 3, 0);
    assert_eq!(apply_retention(&p.bin(&s), NOW).unwrap().moved, 1);
    receive(&s, "c/new", b"new backup, sent again", 4, 0);
    let e = restore(&p.bin(&s), &s.source, "c/new", &actor(), NOW).unwrap_err();
    assert!(matches!(e, RecycleError::Exists(_)), "{e:?}");
    assert_eq!(
        s.store.recycle(&s.source.uuid).unwrap()[0].state,
        RecycleState::Binned
    );
    assert_eq!(
        std::fs::read(s.client_dir("c").join("new")).unwrap(),
        b"new backup, sent again"
    );
}

#[test]
fn purges_by_the_admin_and_by_age_remove_rows_and_files() {
    let s = Scratch::new("bin-purge");
    let p = Parts::new(&s);
    for (i, name) in ["c/1", "c/2", "c/3", "c/4"].iter().enumerate() {
        receive(&s, name, b"x", i as i64, 0);
    }
    with_policy(&s, keep_last(1), None);
    assert_eq!(apply_retention(&p.bin(&s), NOW).unwrap().moved, 3);
    let e = purge(&p.bin(&s), &s.source, Some("c/9"), &actor(), NOW).unwrap_err();
    assert!(matches!(e, RecycleError::NotInBin(_)), "{e:?}");
    let one = purge(&p.bin(&s), &s.source, Some("c/2"), &actor(), NOW).unwrap();
    assert_eq!(one.backups, ["c/2"]);
    assert_eq!(bin_files(&s), ["0000000000000001", "0000000000000003"]);
    // Age: 14 days after the removal, not a second before.
    let bin = p.bin(&s);
    assert_eq!(purge_expired(&bin, 14, NOW + 14 * DAY - 1).unwrap(), 0);
    let rows = s.store.recycle(&s.source.uuid).unwrap();
    assert_eq!(purge_after(&rows[0], 14), NOW + 14 * DAY);
    assert_eq!(purge_expired(&bin, 14, NOW + 14 * DAY).unwrap(), 2);
    assert!(bin_files(&s).is_empty());
    assert!(s.store.recycle(&s.source.uuid).unwrap().is_empty());
    let purges = audit_actions(&s)
        .into_iter()
        .filter(|a| a == "recycle purged system:2")
        .count();
    assert_eq!(purges, 2);
    // The admin's purge of everything.
    receive(&s, "c/5", b"y", 9, 0);
    assert_eq!(apply_retention(&p.bin(&s), NOW).unwrap().moved, 1);
    assert_eq!(
        purge(&p.bin(&s), &s.source, None, &actor(), NOW)
            .unwrap()
            .backups,
        ["c/4"]
    );
    assert!(bin_files(&s).is_empty());
}

#[test]
fn the_bin_holds_at_most_the_quota_and_a_name_being_received_stays() {
    let s = Scratch::new("bin-cap");
    let p = Parts::new(&s);
    let mib = vec![7u8; MIB as usize];
    for (i, name) in ["c/1", "c/2", "c/3", "c/4"].iter().enumerate() {
        receive(&s, name, &mib, i as i64, 0);
    }
    // A quota of 2 MiB: the bin takes two backups, the third stays received.
    with_policy(&s, keep_last(1), Some(2));
    let run = apply_retention(&p.bin(&s), NOW).unwrap();
    assert_eq!((run.moved, run.held), (2, 1));
    assert_eq!(received_names(&s), ["c/3", "c/4"]);
    // Purging makes room.
    purge(&p.bin(&s), &s.source, Some("c/1"), &actor(), NOW).unwrap();
    // ...but not for a name a session is receiving now.
    let busy = p.ledger.hold(&s.source.uuid, "c/3").unwrap();
    let run = apply_retention(&p.bin(&s), NOW).unwrap();
    assert_eq!((run.moved, run.held), (0, 1));
    drop(busy);
    assert_eq!(apply_retention(&p.bin(&s), NOW).unwrap().moved, 1);
    assert_eq!(received_names(&s), ["c/4"]);
}

/// A bin row in `state` for `backup` (of its received row, if any), as a crash between
/// the two transactions leaves it.
fn bin_row(s: &Scratch, backup: &str, body: &[u8], state: RecycleState) -> RecycleRecord {
    let received = s.store.received_one(&s.source.uuid, backup).unwrap();
    s.store
        .write(|tx| {
            let mut rec = RecycleRecord {
                id: tx.next_recycle_id()?,
                backup: backup.into(),
                storage_id: s.source.storage.id,
                size: body.len() as u64,
                sha256: "ab".into(),
                version: 1,
                received: NOW - DAY,
                verified: None,
                damaged: None,
                bytes_received: None,
                removed: NOW,
                state,
            };
            if let Some(r) = &received {
                (rec.sha256, rec.received) = (r.sha256.clone(), r.received);
            }
            tx.put_recycle(&s.source.uuid, &rec)?;
            Ok::<_, StoreError>(rec)
        })
        .unwrap()
}

fn in_bin(s: &Scratch, rec: &RecycleRecord) -> PathBuf {
    let dir = bin_dir(&s.source.storage, &s.source.uuid);
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(rec.file_name())
}

#[test]
fn the_start_up_repair_finishes_or_undoes_every_interrupted_move_and_sweeps_strays() {
    let s = Scratch::new("bin-repair");
    let uuid = s.source.uuid.clone();
    let dir = s.client_dir("c");
    // (a) Moving, the file not moved yet: undone, the copy stays received.
    let a = receive(&s, "c/a", b"a", 1, 1);
    bin_row(&s, "c/a", b"a", RecycleState::Moving);
    // (b) Moving, the file in the bin: finished, the received row goes.
    receive(&s, "c/b", b"b", 1, 1);
    let b = bin_row(&s, "c/b", b"b", RecycleState::Moving);
    std::fs::rename(dir.join("b"), in_bin(&s, &b)).unwrap();
    // (c) Moving, linked under both names: finished, the received name goes.
    receive(&s, "c/c", b"c", 1, 1);
    let c = bin_row(&s, "c/c", b"c", RecycleState::Moving);
    std::fs::hard_link(dir.join("c"), in_bin(&s, &c)).unwrap();
    // (d) Restoring, the file back in place: finished, received again and pinned.
    let d = bin_row(&s, "c/d", b"d", RecycleState::Restoring);
    std::fs::write(dir.join("d"), b"d").unwrap();
    // (e) Restoring, the file still in the bin: back in the bin.
    let e = bin_row(&s, "c/e", b"e", RecycleState::Restoring);
    std::fs::write(in_bin(&s, &e), b"e").unwrap();
    // (f) In the bin but its file gone: the row is dropped.
    bin_row(&s, "c/f", b"f", RecycleState::Binned);
    // (g) A purge that committed and crashed before its unlink: the file is swept; a
    // file the bin never names is left.
    std::fs::write(in_bin(&s, &b).with_file_name("00000000000000ff"), b"stray").unwrap();
    std::fs::write(in_bin(&s, &b).with_file_name("notes.txt"), b"the admin's").unwrap();
    let r = repair(&s.store, std::slice::from_ref(&s.source.storage), NOW).unwrap();
    assert_eq!(
        r,
        BinRepair {
            finished: 3,
            undone: 2,
            lost: 1,
            swept: 1
        }
    );
    assert_eq!(received_names(&s), ["c/a", "c/d"]);
    assert_eq!(s.store.received_one(&uuid, "c/a").unwrap(), Some(a));
    assert!(s.store.received_one(&uuid, "c/d").unwrap().unwrap().pinned);
    assert!(dir.join("a").exists() && !dir.join("b").exists() && !dir.join("c").exists());
    let rows: Vec<(String, RecycleState)> = s
        .store
        .recycle(&uuid)
        .unwrap()
        .into_iter()
        .map(|r| (r.backup, r.state))
        .collect();
    assert_eq!(
        rows,
        [
            ("c/b".to_string(), RecycleState::Binned),
            ("c/c".to_string(), RecycleState::Binned),
            ("c/e".to_string(), RecycleState::Binned)
        ]
    );
    let mut want = vec![
        b.file_name(),
        c.file_name(),
        e.file_name(),
        "notes.txt".into(),
    ];
    want.sort();
    assert_eq!(bin_files(&s), want);
    assert_eq!(std::fs::read(in_bin(&s, &c)).unwrap(), b"c");
    // Run again: nothing left to do.
    let again = repair(&s.store, std::slice::from_ref(&s.source.storage), NOW).unwrap();
    assert_eq!(again, BinRepair::default());
    let _ = d;
}
