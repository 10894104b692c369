//! Every long-lived thread of the daemon but the listeners' and the API workers', each
//! started by a named `spawn_*` function on a fixed schedule: it logs each failure,
//! carries on, and stops on the shared flag that shutdown sets before it joins them. The
//! rules they follow live in the domain (`pairing`, `lifecycle`); a job only drives them
//! over the network, the store and the clock.

pub mod listener_certs;
pub mod maintenance;
pub mod poller;
pub mod renewer;
