//! The fleet's engine as one module, for the integration test `tests/it/scale.rs`, which
//! includes this file by path; the `fleet` example (main.rs) declares the same files.

pub mod net;
pub mod pair;
pub mod poll;
pub mod send;
pub mod stats;
pub mod watch;
pub mod xfer;
