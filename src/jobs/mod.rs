//! Every long-lived thread of the daemon but the listeners' and the API workers', each
//! started by a named `spawn_*` function on a fixed schedule: it logs each failure,
//! carries on, and stops on the shared flag that shutdown sets before it joins them. The
//! rules they follow live in the domain (`pairing`, `replication`, `lifecycle`); a job only drives them
//! over the network, the store and the clock.

use std::thread::JoinHandle;

pub(crate) mod chunk_index;
pub(crate) mod listener_certs;
pub(crate) mod maintenance;
pub(crate) mod poller;
pub(crate) mod renewer;
pub(crate) mod replicator;
pub(crate) mod restore;
pub(crate) mod verify;
pub(crate) mod watch;

/// Starts `job` on a thread called `name`. The jobs' threads all start here: one spawn
/// that is not generic over the closure keeps one copy of the thread start-up code in the
/// binary, however many kinds of job there are.
pub(crate) fn spawn_named(
    name: String,
    job: Box<dyn FnOnce() + Send>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name(name).spawn(job)
}
