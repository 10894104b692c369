//! Per-source rates as the target sees them: `GET /api/replication/queue` on the target
//! lists what every source is sending now (`sid`, `backup`, `size`, `bytes_done`). Read
//! once a second, the growth of each item's `bytes_done` (and, for an item gone since the
//! last read, the rest of its size: it finished) is what its source moved in that second.
//! A file that came and went between two reads is found afterwards in the source's
//! `GET /api/replication/received` and counted in the second it was committed. Works for
//! any source, real daemon or synthetic.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde_json::Value;

/// Tracks the target's incoming items between reads.
#[derive(Default)]
pub struct QueueWatch {
    /// (sid, backup) → (size, bytes_done) at the last read.
    last: HashMap<(u64, String), (u64, u64)>,
    /// Every item any read showed.
    seen: HashSet<(u64, String)>,
}

impl QueueWatch {
    /// Takes one answer of the target's queue; returns the bytes each source moved since
    /// the previous one.
    pub fn step(&mut self, queue: &Value) -> BTreeMap<u64, u64> {
        let mut moved: BTreeMap<u64, u64> = BTreeMap::new();
        let mut now = HashMap::new();
        for item in queue["active"].as_array().into_iter().flatten() {
            let (Some(sid), Some(backup)) = (item["sid"].as_u64(), item["backup"].as_str()) else {
                continue;
            };
            let size = item["size"].as_u64().unwrap_or(0);
            let done = item["bytes_done"].as_u64().unwrap_or(0);
            let key = (sid, backup.to_string());
            let before = self.last.get(&key).map(|(_, d)| *d).unwrap_or(0);
            *moved.entry(sid).or_default() += done.saturating_sub(before);
            self.seen.insert(key.clone());
            now.insert(key, (size, done));
        }
        for ((sid, backup), (size, done)) in &self.last {
            if !now.contains_key(&(*sid, backup.clone())) {
                *moved.entry(*sid).or_default() += size.saturating_sub(*done);
            }
        }
        self.last = now;
        moved
    }
}

impl QueueWatch {
    /// Rows (second, sid, bytes) for the files of source `sid` that its `received` list
    /// (`GET /api/replication/received?sid=`) shows committed at or after `t0` (unix
    /// seconds, the time of second 0) but no read of the queue saw: they came and went
    /// between two reads. Each counts whole in the second it was committed (at most
    /// `last`).
    pub fn unseen(
        &self,
        sid: u64,
        received: &Value,
        t0: i64,
        last: usize,
    ) -> Vec<(usize, u64, u64)> {
        received["received"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| {
                let backup = r["backup"].as_str()?;
                let at = r["received"].as_i64()?;
                if at < t0 || self.seen.contains(&(sid, backup.to_string())) {
                    return None;
                }
                let sec = ((at - t0) as usize).min(last);
                Some((sec, sid, r["size"].as_u64().unwrap_or(0)))
            })
            .collect()
    }
}

/// The sources of a target's `GET /api/systems`: (sid, system_uuid).
pub fn sources(systems: &Value) -> Vec<(u64, String)> {
    systems["appliance"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| {
            s["role"]
                .as_str()
                .is_some_and(|r| r.ends_with("Replication Source") && !r.starts_with("Pending"))
        })
        .filter_map(|s| Some((s["id"].as_u64()?, s["system_uuid"].as_str()?.to_string())))
        .collect()
}

/// Per-second series of each source's bytes, from rows of (second, source, bytes).
pub fn series(rows: &[(usize, u64, u64)]) -> BTreeMap<u64, Vec<f64>> {
    let len = rows.iter().map(|r| r.0 + 1).max().unwrap_or(0);
    let mut out: BTreeMap<u64, Vec<f64>> = BTreeMap::new();
    for &(sec, sid, bytes) in rows {
        out.entry(sid).or_insert_with(|| vec![0.0; len])[sec] += bytes as f64;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_item_that_finished_between_reads_counts_its_rest() {
        let mut w = QueueWatch::default();
        let first = json!({"active": [{"sid": 3, "backup": "c/a", "size": 100, "bytes_done": 40}]});
        assert_eq!(w.step(&first).get(&3), Some(&40));
        let second =
            json!({"active": [{"sid": 3, "backup": "c/b", "size": 100, "bytes_done": 10}]});
        assert_eq!(w.step(&second).get(&3), Some(&70));
        let received = json!({"received": [
            {"backup": "c/a", "size": 100, "received": 1010},
            {"backup": "c/z", "size": 50, "received": 1012},
            {"backup": "c/old", "size": 70, "received": 900},
        ]});
        assert_eq!(w.unseen(3, &received, 1000, 5), vec![(5, 3, 50)]);
    }
}
