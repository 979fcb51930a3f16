//! `cargo bench -p ccdma-tests --bench tce_batching`: indirect-call throughput of two threads mapping
//! at once, per-CPU list pages (b) against one shared list page (c), side by side in one run.
//!
//! Each thread says it runs on its own CPU (`Hypervisor::set_cpu_hint`) and maps and unmaps 256 KiB
//! in strict mode (64 entries: one `H_PUT_TCE_INDIRECT` and one `H_STUFF_TCE` per operation) with
//! `SKIP_CPU_SYNC`, so no bounce copy dilutes the list page's part; read-back off. A row reports
//! operations per second over both threads (= indirect calls per second), and how often a batch
//! waited for the shared page or moved off its CPU's page.
//!
//! The model's own bookkeeping runs under one lock, so every call of every thread is serialised
//! inside the model whatever the guest does. A real hypervisor serves vCPUs in parallel: the rows
//! with a modelled call latency (spun outside the model's lock, `set_tce_call_latency`) stand for
//! that, and are where holding one list page across a call shows. One thread is the yardstick for
//! two. `CCDMA_BENCH_MS` (default 500) sets the time per cell.
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

#[path = "../tests/batching_support/mod.rs"]
mod batching_support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use batching_support::{strict_guest, Guest, Mode, MAP};
use ccdma::{DmaAttrs, DmaDirection, PhysAddr, VerifyPolicy};
use ccdma_hv_model::{Hypervisor, Region};

/// Operations per second of `threads` threads (on CPUs 0, 1, ...) mapping and unmapping for `run`.
fn ops_per_sec(g: &Guest, threads: usize, run: Duration) -> f64 {
    let stop = AtomicBool::new(false);
    let ops = AtomicU64::new(0);
    let bufs: Vec<u64> = (0..threads).map(|_| g.hv.alloc(MAP as u64, Region::High)).collect();
    let start = Instant::now();
    std::thread::scope(|s| {
        for (cpu, &buf) in bufs.iter().enumerate() {
            let (stop, ops) = (&stop, &ops);
            s.spawn(move || {
                Hypervisor::set_cpu_hint(Some(cpu));
                let dev = g.dev();
                let (dir, attrs) = (DmaDirection::ToDevice, DmaAttrs::SKIP_CPU_SYNC);
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    // SAFETY: each thread owns its buffer; the device never touches it (nothing runs on
                    // the device side), and the mapping ends before the next.
                    let bus = unsafe { g.layer.map_phys(dev, PhysAddr(buf), MAP, dir, attrs) }.unwrap();
                    // SAFETY: as above.
                    unsafe { g.layer.unmap(dev, bus, MAP, dir, attrs) }.unwrap();
                    n += 1;
                }
                ops.fetch_add(n, Ordering::Relaxed);
            });
        }
        std::thread::sleep(run);
        stop.store(true, Ordering::Relaxed);
    });
    ops.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let ms = std::env::var("CCDMA_BENCH_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(500);
    let run = Duration::from_millis(ms);
    println!(
        "strict map+unmap of 256 KiB (64 entries, one H_PUT_TCE_INDIRECT each), SKIP_CPU_SYNC, {ms} ms per cell"
    );
    println!(
        "{:<14} | {:>10} {:>10} | {:>10} {:>10} | {:>11} | {:>9} {:>12}",
        "call latency",
        "(b) 1 thr",
        "(b) 2 thr",
        "(c) 1 thr",
        "(c) 2 thr",
        "(b)/(c) 2thr",
        "(c) waits",
        "(b) moved/fell"
    );
    for latency_us in [0u64, 2, 10] {
        let mut cells = Vec::new();
        let mut stats = Vec::new();
        for mode in [Mode::PerCpu(2), Mode::Shared] {
            for threads in [1, 2] {
                let g = strict_guest(mode, 12, VerifyPolicy::Off);
                g.hv.set_tce_call_latency(Duration::from_micros(latency_us));
                cells.push(ops_per_sec(&g, threads, run));
                g.assert_baseline();
                stats.push(g.layer.iommu_stats());
            }
        }
        println!(
            "{:<14} | {:>10.0} {:>10.0} | {:>10.0} {:>10.0} | {:>11.2} | {:>9} {:>12}",
            format!("{latency_us} us/call"),
            cells[0],
            cells[1],
            cells[2],
            cells[3],
            cells[1] / cells[3],
            stats[3].list_page_waits,
            format!("{}/{}", stats[1].list_page_busy, stats[1].list_page_fallbacks),
        );
    }
    println!("ops/s over all threads; one op = one indirect call. (c) waits: batches that found the");
    println!(
        "shared page held; (b) moved/fell: batches whose CPU's page was busy / entries written per entry."
    );
}
