//! The pairing domain: plain functions over plain types with the time passed in. The target
//! side files, resolves and revokes requests; the source side (later) requests and installs.
//! Only the store is touched here, never a socket or a file.

pub mod poller;
pub mod source;
pub mod target;
