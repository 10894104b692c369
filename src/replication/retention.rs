//! Retention on the target (SPEC 20), as a pure rule: which of a source's received
//! backups its policy lets go. A backup is kept while any rule that is set keeps it: it is
//! among the newest `keep_last` of its client, or it was received within `keep_days`.
//! A client's newest backup is never let go, nor one an admin put back from the bin
//! (`pinned`). "Newest" is the source's version of the file (its modification time when
//! it was sent), so a copy sent again (healed, or a changed file) keeps its place; the age
//! is the target's own clock at receipt, which a source cannot set. What goes, goes to the
//! recycle bin (`recycle`), never straight to deletion.

use std::collections::BTreeMap;

use super::names::BackupName;
use crate::model::UnixTime;
use crate::store::{ReceivedRecord, Retention};

const DAY: i64 = 86_400;

/// The rows of `rows` (one source's received backups) that `policy` lets go at `now`,
/// oldest first. Rows whose name does not parse are left alone.
pub fn expired<'a>(
    rows: &'a [ReceivedRecord],
    policy: &Retention,
    now: UnixTime,
) -> Vec<&'a ReceivedRecord> {
    if policy.normalized().is_none() {
        return Vec::new();
    }
    let mut by_client: BTreeMap<String, Vec<&ReceivedRecord>> = BTreeMap::new();
    for r in rows {
        if let Ok(name) = BackupName::parse(&r.backup) {
            by_client
                .entry(name.client().to_string())
                .or_default()
                .push(r);
        }
    }
    let mut out = Vec::new();
    for mut backups in by_client.into_values() {
        // Newest first; equal versions by the later receipt, then by name, so the order is
        // total and a run is repeatable.
        backups.sort_by(|a, b| {
            (b.version, b.received, &b.backup).cmp(&(a.version, a.received, &a.backup))
        });
        for (rank, r) in backups.into_iter().enumerate() {
            let newest = rank == 0;
            let by_count = policy
                .keep_last
                .is_some_and(|n| (rank as u64) < u64::from(n));
            let by_age = policy
                .keep_days
                .is_some_and(|d| now.saturating_sub(r.received) < i64::from(d) * DAY);
            if !(newest || r.pinned || by_count || by_age) {
                out.push(r);
            }
        }
    }
    out.sort_by(|a, b| (a.version, &a.backup).cmp(&(b.version, &b.backup)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: UnixTime = 1_800_000_000;

    fn row(backup: &str, version: i64, age_days: i64) -> ReceivedRecord {
        ReceivedRecord {
            backup: backup.into(),
            storage_id: 1,
            size: 10,
            sha256: "ab".into(),
            version,
            received: NOW - age_days * DAY,
            verified: None,
            damaged: None,
            bytes_received: None,
            pinned: false,
        }
    }

    fn names(v: Vec<&ReceivedRecord>) -> Vec<&str> {
        v.into_iter().map(|r| r.backup.as_str()).collect()
    }

    fn policy(keep_last: Option<u32>, keep_days: Option<u32>) -> Retention {
        Retention {
            keep_last,
            keep_days,
        }
    }

    #[test]
    fn keep_last_keeps_the_newest_of_each_client_by_the_sources_version() {
        let rows = [
            row("a/1", 1, 9),
            row("a/2", 2, 1),
            row("a/3", 3, 8),
            row("a/4", 4, 0),
            row("b/1", 1, 30),
        ];
        // a/2 was received later than a/3 (sent again), but a/3 is the newer backup.
        assert_eq!(
            names(expired(&rows, &policy(Some(2), None), NOW)),
            ["a/1", "a/2"]
        );
        assert_eq!(
            names(expired(&rows, &policy(Some(1), None), NOW)),
            ["a/1", "a/2", "a/3"]
        );
        assert!(expired(&rows, &policy(Some(4), None), NOW).is_empty());
    }

    #[test]
    fn keep_days_counts_from_receipt_and_never_takes_a_clients_newest() {
        let rows = [row("a/1", 1, 10), row("a/2", 2, 3), row("b/old", 1, 400)];
        assert_eq!(names(expired(&rows, &policy(None, Some(7)), NOW)), ["a/1"]);
        // Exactly D days old is no longer within D days.
        let edge = [row("a/1", 1, 7), row("a/2", 2, 0)];
        assert_eq!(names(expired(&edge, &policy(None, Some(7)), NOW)), ["a/1"]);
        assert!(expired(&rows, &policy(None, Some(11)), NOW).is_empty());
    }

    #[test]
    fn either_rule_keeps_a_backup_and_pins_and_bad_names_are_left_alone() {
        let mut rows = vec![
            row("a/1", 1, 30),
            row("a/2", 2, 20),
            row("a/3", 3, 2),
            row("a/4", 4, 1),
            row("../x", 0, 99),
        ];
        // keep_last 1 keeps a/4; keep_days 5 keeps a/3 too.
        let both = policy(Some(1), Some(5));
        assert_eq!(names(expired(&rows, &both, NOW)), ["a/1", "a/2"]);
        rows[0].pinned = true;
        assert_eq!(names(expired(&rows, &both, NOW)), ["a/2"]);
        // No rule set keeps everything.
        assert!(expired(&rows, &policy(None, None), NOW).is_empty());
        // A clock that went back makes nothing older.
        assert!(expired(&rows, &policy(None, Some(1)), NOW - 100 * DAY).is_empty());
    }
}
