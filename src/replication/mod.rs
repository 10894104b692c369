//! Replication of backups to paired targets through the tunnel (SPEC 11), as domain rules:
//! plain functions and types, the time and the I/O handed in, no sockets and no threads
//! (those are `jobs`, `ingest`, `tunnel` and `remote`). The pure rules (`names`, `queue`,
//! `throttle`) do no I/O at all; `backups` reads the source's backup storage and the
//! sessions (`sender`, `receiver`) read and write files only through `fsx`, over any
//! `Read`/`Write` pair the adapters hand them.

pub mod admin;
pub mod backups;
pub mod chunker;
pub mod compress;
pub mod drill;
pub mod feed;
pub mod index;
pub mod link;
pub mod live;
pub mod names;
pub mod pacing;
pub mod queue;
pub mod receiver;
pub mod recycle;
pub mod restore;
pub mod restore_chunks;
pub mod retention;
pub mod sender;
pub mod slots;
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
    /// The receiving sessions' slots, shared fairly between sources.
    pub slots: slots::Slots,
    pub verifier: Arc<verify::Verifier>,
    pub recycler: recycle::Recycler,
    /// Live progress of restores (source side).
    pub restores: restore::Board,
}

impl Shared {
    /// Loads the stored settings into a fresh live state; `max_sessions` received at once.
    pub fn load(store: &Store, max_sessions: usize) -> Result<Shared, StoreError> {
        Ok(Shared {
            live: live::Live::new(store.replication_config()?, store.throttle()?),
            ledger: receiver::Ledger::default(),
            slots: slots::Slots::new(max_sessions, std::time::Instant::now),
            verifier: Arc::new(verify::Verifier::default()),
            recycler: recycle::Recycler::default(),
            restores: restore::Board::default(),
        })
    }
}
