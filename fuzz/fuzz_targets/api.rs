//! The public API against the model, driven by the fuzzer's bytes (`ccdma_tests::fuzz_ops`: the
//! operations, the fault injection and the invariants checked after every step).
//!
//!     cd fuzz && cargo +nightly fuzz run api -- -max_total_time=300
//!
//! Crashes land in fuzz/artifacts/api; copy each into tests/fuzz-corpus/ so that
//! tests/tests/fuzz_replay.rs replays it on stable in every test run.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    // scripts/fuzz.sh's self-test (CCDMA_FUZZ_SELF_TEST=1): a planted failure behind the input "c!",
    // which that run adds as a seed, so the script is seen to fail when the target fails.
    #[cfg(ccdma_fuzz_self_test)]
    if data.starts_with(b"c!") {
        panic!("fuzz.sh self-test: the planted failure was found");
    }
    ccdma_tests::fuzz_ops::run(data)
});
