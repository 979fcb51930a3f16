//! Timing for the benches: one measuring loop, so every figure is taken the same way.

use std::time::{Duration, Instant};

/// Nanoseconds per call of one measured operation over several batches.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    /// The median batch's ns per call.
    pub median: f64,
    /// The fastest batch's ns per call.
    pub min: f64,
    /// The slowest batch's ns per call.
    pub max: f64,
}

/// Time `op`: run it for `warm_up`, size a batch to last about `batch` from the warm-up rate, then
/// run `batches` batches (at least one) and report ns per call.
pub fn measure(warm_up: Duration, batches: usize, batch: Duration, op: &mut dyn FnMut()) -> Sample {
    let start = Instant::now();
    let mut warm = 0u64;
    while start.elapsed() < warm_up {
        op();
        warm += 1;
    }
    let per_op = start.elapsed().as_nanos() as f64 / warm.max(1) as f64;
    let iters = ((batch.as_nanos() as f64 / per_op.max(1.0)) as u64).max(1);
    let mut per_iter: Vec<f64> = (0..batches.max(1))
        .map(|_| {
            let t = Instant::now();
            for _ in 0..iters {
                op();
            }
            t.elapsed().as_nanos() as f64 / iters as f64
        })
        .collect();
    per_iter.sort_by(f64::total_cmp);
    let n = per_iter.len();
    Sample { median: per_iter[n / 2], min: per_iter[0], max: per_iter[n - 1] }
}
