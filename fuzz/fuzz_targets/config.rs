//! cargo-fuzz target `config`: its checks are tests/it/fuzz_checks/config.rs, which the
//! stable suite also runs over the seeds and regressions (tests/it/fuzz_checks/mod.rs).
#![no_main]

#[path = "../../tests/it/fuzz_checks/config.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|input: &[u8]| check::run(input));
