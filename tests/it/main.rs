//! One integration binary: every test starts real `replgate` processes on loopback.

// Tests write fixtures and plant debris with std::fs; clippy.toml refuses that in src/.
#![allow(clippy::disallowed_methods)]

mod harness;
// The WAN link emulator's engine, shared with the `linkemu` example (bench/wan.sh).
#[path = "../../bench/linkemu/link.rs"]
mod linkemu;
// The fleet load generator's engine, shared with the `fleet` example (bench/scale.sh).
#[path = "../../bench/fleet/mod.rs"]
#[allow(dead_code)]
mod fleet;

mod auth;
mod backend;
mod bad_input;
mod ci;
mod compat;
mod console;
mod console_browser;
mod crash;
mod crash_pair;
mod crash_renewal;
mod crash_rollover;
mod ctl;
mod dedup;
mod features;
mod front;
mod full_disk;
mod fuzz;
mod fuzz_checks;
mod lifecycle;
mod listener;
mod metrics;
mod objstore;
mod objstore_faults;
mod openapi;
mod operability;
mod ops;
mod pairing;
mod recovery;
mod renewal;
mod replication;
mod restore;
mod rng;
mod rollover;
mod rules;
mod s3_proxy;
mod s3_target;
mod scale;
mod seaweed;
mod slots;
mod target;
mod tidy;
mod tokens;
mod wan;
mod webdriver;
