//! The pairing domain: plain functions over plain types with the time passed in. The target
//! side (`target`) files, resolves and revokes requests; the source side (`source`) asks
//! targets, checks their answers and follows a pairing's state. It reads and writes the
//! store; every other I/O (sockets, pairing files) is passed in by the caller: the
//! threads that drive these rules over the network are in `jobs` (`poller`, `renewer`).

pub mod error;
pub mod fields;
pub mod filing;
pub mod renewal;
pub mod rollover;
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
