//! Restore drills (SPEC 20), source side: restore a random sample of what a target holds
//! for this source into a scratch directory, check every SHA-256 end to end (the rules of
//! `restore::pull`), record date, size, duration and result, and throw the sample away.
//! A drill that cannot restore every sampled copy intact failed. Scheduled by
//! `drill_interval`; `drill_warn_days` turns a long time without a passed drill into a
//! health warning. Plain functions: store, clock, randomness and network handed in.

use std::path::Path;
use std::sync::atomic::AtomicBool;

use super::restore::{self, Offered, RestoreError};
use crate::model::UnixTime;
use crate::pairing::Actor;
use crate::store::{
    DrillRecord, DrillResult, RestoreItem, Store, StoreError, TargetRecord, TargetStatus,
};

/// Sample size of a drill when none is asked: 64 MiB.
pub const DEFAULT_DRILL_BYTES: u64 = 64 * 1024 * 1024;

/// Queues a drill of `target_id` (a complete pairing) for `bytes` (default
/// [`DEFAULT_DRILL_BYTES`]); a drill of that target already queued or running refuses.
pub fn request(
    store: &Store,
    target_id: u64,
    bytes: Option<u64>,
    scheduled: bool,
    actor: &Actor,
    now: UnixTime,
) -> Result<DrillRecord, RestoreError> {
    restore::target_for_restore(store, target_id)?;
    let bytes_asked = bytes.unwrap_or(DEFAULT_DRILL_BYTES);
    if bytes_asked == 0 {
        return Err(RestoreError::Invalid(
            "field `bytes` must be at least 1".into(),
        ));
    }
    store.write(|tx| {
        let mut book = tx.drills()?;
        if let Some(open) = book.drills.iter().find(|d| {
            d.target_id == target_id
                && matches!(d.result, DrillResult::Queued | DrillResult::Running)
        }) {
            return Err(RestoreError::DrillOpen {
                drill_id: open.id,
                target_id,
            });
        }
        let drill = DrillRecord {
            id: book.next_id,
            target_id,
            bytes_asked,
            scheduled,
            requested: now,
            ..DrillRecord::default()
        };
        book.next_id += 1;
        book.drills.push(drill.clone());
        tx.put_drills(&mut book)?;
        tx.audit(&actor.audit(
            now,
            "restore drill requested",
            format!("target:{target_id}"),
            format!("drill {} of {bytes_asked} bytes", drill.id),
        ))?;
        Ok(drill)
    })
}

/// The next queued drill, marked running. Drills a crash left running failed.
pub fn claim_next(store: &Store, now: UnixTime) -> Result<Option<DrillRecord>, StoreError> {
    store.write(|tx| {
        let mut book = tx.drills()?;
        let Some(d) = book
            .drills
            .iter_mut()
            .find(|d| d.result == DrillResult::Queued)
        else {
            return Ok(None);
        };
        d.result = DrillResult::Running;
        d.started = Some(now);
        let claimed = d.clone();
        tx.put_drills(&mut book)?;
        Ok(Some(claimed))
    })
}

/// At start: a drill a crash interrupted is recorded failed (it proved nothing).
pub fn fail_interrupted(store: &Store, now: UnixTime) -> Result<u64, StoreError> {
    store.write(|tx| {
        let mut book = tx.drills()?;
        let mut n = 0;
        for d in book
            .drills
            .iter_mut()
            .filter(|d| d.result == DrillResult::Running)
        {
            d.result = DrillResult::Failed;
            d.finished = Some(now);
            d.message = Some("interrupted by a restart".into());
            n += 1;
        }
        if n > 0 {
            tx.put_drills(&mut book)?;
        }
        Ok(n)
    })
}

/// A random sample of `offered` of at least `bytes` (or everything, when it holds less),
/// and at least one copy. `unit` draws from [0, 1).
pub fn sample(
    mut offered: Vec<Offered>,
    bytes: u64,
    unit: &mut dyn FnMut() -> f64,
) -> Vec<Offered> {
    // Fisher-Yates.
    for i in (1..offered.len()).rev() {
        let j = ((unit() * (i + 1) as f64) as usize).min(i);
        offered.swap(i, j);
    }
    let mut total = 0u64;
    let mut out = Vec::new();
    for o in offered {
        if total >= bytes && !out.is_empty() {
            break;
        }
        total = total.saturating_add(o.size);
        out.push(o);
    }
    out
}

/// What a drill did: bytes and copies restored intact, or why it failed.
pub type Outcome = Result<(u64, u64), String>;

/// How a drill reads one copy's bytes from an offset (the network, handed in).
pub type FetchCopy<'a> =
    dyn FnMut(&str, u64) -> Result<Box<dyn std::io::Read + 'a>, restore::PullError> + 'a;

/// Restores `chosen` into `scratch` one copy at a time, each checked by its SHA-256 and
/// removed again; stops at the first copy that fails.
pub fn run(
    scratch: &Path,
    target_id: u64,
    chosen: &[Offered],
    stop: &AtomicBool,
    fetch: &mut FetchCopy<'_>,
) -> Outcome {
    if chosen.is_empty() {
        return Err("the target holds no backup of this source".into());
    }
    let mut bytes = 0u64;
    for o in chosen {
        let item = RestoreItem {
            target_id,
            backup: o.name.to_string(),
            size: o.size,
            sha256: o.sha256.clone(),
            overwrite: true,
            ..RestoreItem::default()
        };
        let name = item.backup.clone();
        let pulled = restore::pull(scratch, &item, stop, &|_| {}, &mut |offset| {
            fetch(&name, offset)
        });
        let (_, final_path, partial) = restore::local_paths(scratch, &o.name)
            .map_err(|e| format!("scratch directory: {e}"))?;
        let _ = crate::fsx::remove_file_durable(&final_path);
        let _ = crate::fsx::remove_file_durable(&partial);
        if let Err(e) = pulled {
            return Err(format!("{}: {e}", o.name));
        }
        bytes = bytes.saturating_add(o.size);
    }
    Ok((bytes, chosen.len() as u64))
}

/// Records how a drill ended, with an audit row.
pub fn finish(
    store: &Store,
    id: u64,
    outcome: &Outcome,
    duration_ms: u64,
    actor: &Actor,
    now: UnixTime,
) -> Result<Option<DrillRecord>, StoreError> {
    store.write(|tx| {
        let mut book = tx.drills()?;
        let Some(d) = book.drills.iter_mut().find(|d| d.id == id) else {
            return Ok(None);
        };
        d.finished = Some(now);
        d.duration_ms = duration_ms;
        match outcome {
            Ok((bytes, copies)) => {
                d.result = DrillResult::Passed;
                (d.bytes, d.copies) = (*bytes, *copies);
            }
            Err(m) => {
                d.result = DrillResult::Failed;
                d.message = Some(m.clone());
            }
        }
        let done = d.clone();
        tx.put_drills(&mut book)?;
        tx.audit(&actor.audit(
            now,
            match done.result {
                DrillResult::Passed => "restore drill passed",
                _ => "restore drill failed",
            },
            format!("drill:{id}"),
            format!(
                "target {} {} bytes in {} copies, {} ms{}",
                done.target_id,
                done.bytes,
                done.copies,
                done.duration_ms,
                done.message
                    .as_deref()
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default()
            ),
        ))?;
        Ok(Some(done))
    })
}

/// When the last drill passed, if one did.
pub fn last_success(drills: &[DrillRecord]) -> Option<UnixTime> {
    drills
        .iter()
        .filter(|d| d.result == DrillResult::Passed)
        .filter_map(|d| d.finished)
        .max()
}

/// The complete targets whose last drill (or, with none, the pairing's completion) is at
/// least `interval` seconds old, and that have no drill queued or running.
pub fn due(
    targets: &[TargetRecord],
    drills: &[DrillRecord],
    interval: u64,
    now: UnixTime,
) -> Vec<u64> {
    if interval == 0 {
        return Vec::new();
    }
    targets
        .iter()
        .filter(|t| t.status == TargetStatus::Complete)
        .filter(|t| {
            let mine = drills.iter().filter(|d| d.target_id == t.id);
            let busy = mine
                .clone()
                .any(|d| matches!(d.result, DrillResult::Queued | DrillResult::Running));
            let last = mine.map(|d| d.requested).max().unwrap_or(t.updated);
            !busy && now.saturating_sub(last) >= interval as i64
        })
        .map(|t| t.id)
        .collect()
}

/// The health warning when no drill passed within `warn_days` (0: never warn) while this
/// appliance replicates to a complete target.
pub fn warning(
    drills: &[DrillRecord],
    paired_since: Option<UnixTime>,
    warn_days: u64,
    now: UnixTime,
) -> Option<String> {
    let since = paired_since?;
    if warn_days == 0 {
        return None;
    }
    let window = warn_days as i64 * 86_400;
    let last = last_success(drills).unwrap_or(since);
    (now.saturating_sub(last) >= window)
        .then(|| format!("no restore drill passed in the last {warn_days} days (drill_warn_days)"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replication::names::BackupName;

    fn offered(n: u64) -> Vec<Offered> {
        (0..n)
            .map(|i| Offered {
                name: BackupName::parse(&format!("c/b{i}")).unwrap(),
                size: 10,
                sha256: "00".repeat(32),
            })
            .collect()
    }

    #[test]
    fn a_sample_covers_the_bytes_asked_with_at_least_one_copy_in_random_order() {
        let mut x = 0.0;
        let mut unit = || {
            x = (x + 0.37) % 1.0;
            x
        };
        let s = sample(offered(10), 25, &mut unit);
        assert_eq!(s.len(), 3);
        assert_ne!(
            s.iter().map(|o| o.name.to_string()).collect::<Vec<_>>(),
            vec!["c/b0", "c/b1", "c/b2"],
            "shuffled"
        );
        assert_eq!(sample(offered(10), 1, &mut unit).len(), 1);
        assert_eq!(sample(offered(4), 1_000, &mut unit).len(), 4);
        assert!(sample(Vec::new(), 10, &mut unit).is_empty());
    }

    #[test]
    fn drills_are_due_per_complete_target_after_the_interval_and_never_twice() {
        let target = |id: u64, status: &str, updated: i64| -> TargetRecord {
            let mut t: TargetRecord = serde_json::from_str(&format!(
                r#"{{"id":{id},"host":"t","status":"{status}","created":0,"updated":{updated},"ca_fingerprint":"","ca_pem":"","request_id":1,"poll":"","verification_code":"","dir":"d"}}"#
            ))
            .unwrap();
            t.id = id;
            t
        };
        let targets = vec![
            target(1, "complete", 0),
            target(2, "pending", 0),
            target(3, "complete", 90),
        ];
        assert_eq!(due(&targets, &[], 100, 99), Vec::<u64>::new());
        assert_eq!(due(&targets, &[], 100, 100), vec![1]);
        assert_eq!(due(&targets, &[], 100, 190), vec![1, 3]);
        assert!(due(&targets, &[], 0, 10_000).is_empty(), "0 is never");
        let recent = DrillRecord {
            target_id: 1,
            requested: 150,
            result: DrillResult::Failed,
            ..DrillRecord::default()
        };
        assert_eq!(
            due(&targets, std::slice::from_ref(&recent), 100, 200),
            vec![3]
        );
        assert_eq!(
            due(&targets, std::slice::from_ref(&recent), 100, 250),
            vec![1, 3]
        );
        let running = DrillRecord {
            result: DrillResult::Running,
            requested: 0,
            ..recent
        };
        assert_eq!(
            due(&targets, &[running], 100, 10_000),
            vec![3],
            "one at a time"
        );
    }

    #[test]
    fn the_warning_counts_from_the_last_passed_drill_or_the_pairing() {
        let day = 86_400;
        let passed = DrillRecord {
            result: DrillResult::Passed,
            finished: Some(10 * day),
            ..DrillRecord::default()
        };
        let failed = DrillRecord {
            result: DrillResult::Failed,
            finished: Some(20 * day),
            ..DrillRecord::default()
        };
        let drills = vec![passed, failed];
        assert_eq!(last_success(&drills), Some(10 * day));
        assert!(warning(&drills, Some(0), 7, 16 * day).is_none());
        assert!(warning(&drills, Some(0), 7, 17 * day).is_some());
        assert!(warning(&drills, Some(0), 0, 99 * day).is_none(), "0 is off");
        assert!(warning(&drills, None, 7, 99 * day).is_none(), "not paired");
        assert!(warning(&[], Some(5 * day), 7, 11 * day).is_none());
        assert!(warning(&[], Some(5 * day), 7, 12 * day).is_some());
    }
}
