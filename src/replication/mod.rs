//! Replication of backups to paired targets through the tunnel (SPEC 11). The pure rules
//! (`names`, `queue`, `throttle`) take the time as an argument and do no I/O; `scan` reads
//! the source's backup storage; `sender` and `receiver` run one transfer session over any
//! `Read`/`Write` pair, reading and writing files only through `fsx`.

pub mod admin;
pub mod live;
pub mod names;
pub mod queue;
pub mod receiver;
pub mod scan;
pub mod scheduler;
pub mod sender;
pub mod sink;
pub mod stream;
pub mod throttle;
pub mod verify;

use std::sync::Arc;

use crate::store::{Store, StoreError};

/// The replication state the API, the jobs and the tunnel's transfer handler share,
/// built once by the daemon.
#[derive(Debug)]
pub struct Shared {
    pub live: live::Live,
    pub ledger: receiver::Ledger,
    pub verifier: Arc<verify::Verifier>,
}

impl Shared {
    /// Loads the stored settings into a fresh live state.
    pub fn load(store: &Store) -> Result<Shared, StoreError> {
        Ok(Shared {
            live: live::Live::new(store.replication_config()?, store.throttle()?),
            ledger: receiver::Ledger::default(),
            verifier: Arc::new(verify::Verifier::default()),
        })
    }
}

#[cfg(test)]
mod session_tests;
