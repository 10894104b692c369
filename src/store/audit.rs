//! The audit trail: one row per audited event, ids in commit order, and the event line
//! `Store::write` logs for each once its commit made it true (SPEC 15).

use serde::{Deserialize, Serialize};

use super::access::{id_rows, Tables};
use super::{schema, Result, Store, Txn};
use crate::model::UnixTime;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct AuditRecord {
    pub time: UnixTime,
    /// Who: a user name, or `-` for an unauthenticated peer (a pairing request).
    pub user: String,
    /// The peer's address as the TLS front saw it.
    pub address: String,
    /// What, as a short verb phrase: `login`, `login failed`, `user created`, ...
    pub action: String,
    /// To what: `user:alice`, `request:17`, `system:3`.
    pub object: String,
    #[serde(default)]
    pub detail: String,
}

/// The log line of an audited event, written after its commit: what, to what, the
/// detail, who and from where, and the audit row that holds it.
pub fn event_line(id: u64, a: &AuditRecord) -> String {
    let detail = if a.detail.is_empty() {
        String::new()
    } else {
        format!(": {}", a.detail)
    };
    format!(
        "{} {}{detail} (by {} from {}, audit {id})",
        a.action, a.object, a.user, a.address
    )
}

/// Audit rows with id > `after`, oldest first, at most `limit`.
pub(super) fn audit(tx: &impl Tables, after: u64, limit: usize) -> Result<Vec<(u64, AuditRecord)>> {
    id_rows(tx, schema::AUDIT, after, limit)
}

impl Store {
    /// Audit rows with id > `after`, oldest first, at most `limit`.
    pub fn audit(&self, after: u64, limit: usize) -> Result<Vec<(u64, AuditRecord)>> {
        audit(&self.snapshot()?, after, limit)
    }
}

impl Txn {
    /// Appends an audit row; returns its sequential id.
    pub fn audit(&self, a: &AuditRecord) -> Result<u64> {
        let id = self.after_last(schema::AUDIT, 1)?;
        self.put(schema::AUDIT, id, a)?;
        self.audited.borrow_mut().push((id, a.clone()));
        Ok(id)
    }
}
