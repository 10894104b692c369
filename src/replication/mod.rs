//! Replication of backups to paired targets through the tunnel (SPEC 11), as domain rules:
//! plain functions and types, the time and the I/O handed in, no sockets and no threads
//! (those are `jobs`, `ingest`, `tunnel` and `remote`). The pure rules (`names`, `queue`,
//! `throttle`) do no I/O at all; `backups` reads the source's backup storage and the
//! sessions (`sender`, `receiver`) read and write files only through `fsx`, over any
//! `Read`/`Write` pair the adapters hand them.

pub mod admin;
pub mod backups;
pub mod chunker;
pub mod feed;
pub mod index;
pub mod live;
pub mod names;
pub mod queue;
pub mod receiver;
pub mod sender;
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
