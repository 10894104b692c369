//! cargo-fuzz target `chunked`: its checks are tests/it/fuzz_checks/chunked.rs, which the
//! stable suite also runs over the seeds and regressions (tests/it/fuzz_checks/mod.rs).
#![no_main]

#[path = "../../tests/it/fuzz_checks/chunked.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|input: &[u8]| check::run(input));
