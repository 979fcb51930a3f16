//! Replays the fuzz target's corpus and every crash it found (fuzz/corpus/api, fuzz/artifacts/api:
//! `tests/fuzz-corpus/` holds the minimized, committed copy) through the same interpreter on stable,
//! plus seeded random inputs, so what the fuzzer learned is checked by every `cargo test`.

use std::path::Path;

use ccdma_tests::{fuzz_ops, pattern};

#[test]
fn the_committed_fuzz_corpus_and_crashes_replay_clean() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz-corpus");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("tests/fuzz-corpus") {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let r = std::panic::catch_unwind(|| fuzz_ops::run(&data));
        assert!(r.is_ok(), "fuzz input {} fails", path.display());
        n += 1;
    }
    assert!(n > 0, "the corpus is empty");
}

#[test]
fn seeded_random_inputs_keep_every_invariant() {
    for seed in 0..200u64 {
        fuzz_ops::run(&pattern(64 + (seed as usize * 7) % 400, seed));
    }
}
