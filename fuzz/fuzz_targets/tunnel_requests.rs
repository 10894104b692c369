//! cargo-fuzz target `tunnel_requests`: its checks are tests/it/fuzz_checks/tunnel_requests.rs,
//! which the stable suite also runs over the seeds and regressions (tests/it/fuzz_checks/mod.rs).
#![no_main]

#[path = "../../tests/it/fuzz_checks/tunnel_requests.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|input: &[u8]| check::run(input));
