//! Every long-lived thread of the daemon and its schedule: each `spawn_*` starts one, logs
//! each failure and carries on, and stops on the shared shutdown flag, which the daemon
//! sets and then joins it. The rules the jobs apply are the domain's (`replication`).

pub mod replicator;
pub mod verify;
pub mod watch;
