//! cargo-fuzz target `http_head`: its checks are tests/it/fuzz_checks/http_head.rs, which the
//! stable suite also runs over the seeds and regressions (tests/it/fuzz_checks/mod.rs).
#![no_main]

#[path = "../../tests/it/fuzz_checks/http_head.rs"]
mod check;

#[allow(dead_code)]
#[path = "../../tests/it/rules.rs"]
mod rules;

libfuzzer_sys::fuzz_target!(|input: &[u8]| check::run(input));
