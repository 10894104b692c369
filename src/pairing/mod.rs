//! The pairing domain: plain functions over plain types with the time passed in. The target
//! side (`target`) files, resolves and revokes requests; the source side (`source`) asks
//! targets, checks their answers and follows a pairing's state. It reads and writes the
//! store; every other I/O (sockets, pairing files) is passed in by the caller. The
//! exception is `poller`, the source's background adapter that drives the source rules
//! over the network.

pub mod poller;
pub mod renewal;
pub mod renewer;
pub mod source;
pub mod target;
pub mod tokens;

use crate::model::UnixTime;
use crate::store::AuditRecord;

/// Who did it and from where, for audit rows.
#[derive(Clone, Debug)]
pub struct Actor {
    pub user: String,
    pub address: String,
}

impl Actor {
    pub(crate) fn audit(
        &self,
        now: UnixTime,
        action: &str,
        object: String,
        detail: String,
    ) -> AuditRecord {
        AuditRecord {
            time: now,
            user: self.user.clone(),
            address: self.address.clone(),
            action: action.into(),
            object,
            detail,
        }
    }
}
