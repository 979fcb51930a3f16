//! The public API against the model, driven by the fuzzer's bytes (`ccdma_tests::fuzz_ops`: the
//! operations, the fault injection and the invariants checked after every step).
//!
//!     cd fuzz && cargo +nightly fuzz run api -- -max_total_time=300
//!
//! Crashes land in fuzz/artifacts/api; copy each into tests/fuzz-corpus/ so that
//! tests/tests/fuzz_replay.rs replays it on stable in every test run.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ccdma_tests::fuzz_ops::run(data));
