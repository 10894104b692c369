//! replgate: the replication pairing daemon for backup appliances.
//!
//! Start with `ARCHITECTURE.md` at the repository root: it maps these modules, the data
//! flow of a request and of a pairing, and the invariants every change must keep.

// Raw std::fs writes are refused everywhere but in `fsx` (clippy.toml); tests plant files.
#![cfg_attr(test, allow(clippy::disallowed_methods))]
#![warn(unreachable_pub)]

pub mod api;
pub mod auth;
pub mod ca;
pub mod cli;
pub mod config;
pub mod ctl;
pub mod daemon;
pub mod front;
#[allow(clippy::disallowed_methods)] // the one writer of files (clippy.toml)
pub mod fsx;
pub mod identity;
mod ingest;
mod jobs;
mod lifecycle;
pub mod listener;
pub mod logging;
mod memory;
mod metrics;
pub mod model;
mod notify;
pub mod objstore;
pub mod pairing;
pub mod rand;
pub mod remote;
pub mod replication;
pub mod spool;
pub mod store;
mod sync;
#[cfg(test)]
mod test_pki;
pub mod tls;
pub mod tunnel;
pub mod wire;
