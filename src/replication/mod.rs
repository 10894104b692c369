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
pub mod sender;
pub mod stream;
pub mod throttle;
pub mod verify;

#[cfg(test)]
mod session_tests;
