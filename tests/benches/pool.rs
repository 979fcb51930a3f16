//! `cargo bench -p ccdma-tests --bench pool`: the bounce pool's allocator under churn and failure,
//! beside `buddy_system_allocator` (Android vmbase's shared pool) and `linked_list_allocator`
//! (td-payload's shared memory), all three in one run on the same workloads:
//!
//! - churn: a 64 MiB pool held at 10/50/90 % occupancy (of requested bytes), sizes log-uniform in
//!   2 KiB..256 KiB (whole 2 KiB slots; 4 KiB and up page-aligned, as the layer asks), one free of a
//!   random live run and one allocation per operation;
//! - a failing request: every 4 KiB of the pool allocated, every other one freed (half the pool free,
//!   no two free pages adjacent), then a 256 KiB request, which no allocator can meet;
//! - cost against pool size (16 MiB..1 GiB): churn at 50 %, the failing request, and a 4 KiB to-device
//!   map+unmap through the layer with the pool half full;
//! - one thread against two (ccdma only: the other two are single-threaded heaps).
//!
//! The pool is driven through its benchmark hooks (`BouncePool::bench_alloc` / `bench_free`: the
//! allocator alone, no bytes copied); the map+unmap rows go through the whole layer.
//!
//! `CCDMA_CHURN_ROUNDS=5 cargo bench -p ccdma-tests --bench pool` times only the churn rows at 50 and
//! 90 %, interleaved round by round, the layer's map+unmap (to-device, `SKIP_CPU_SYNC`) among them,
//! with min/median/max over the rounds (see `interleaved_churn`).
//!
//! Instruction counts: `CCDMA_CG=<case> valgrind --tool=callgrind --toggle-collect='*cg_measured*'
//! target/release/deps/pool-<hash>` runs one case a fixed number of times with only the measured loop
//! collected; `scripts/pool_callgrind.sh` does every case and prints instructions per operation.
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

use std::alloc::Layout;
use std::hint::black_box;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ccdma::{BouncePool, DeviceConfig, DmaAttrs, DmaDirection, DmaLayer, DmaMask, DmaPath, PoolConfig};
use ccdma_hv_model::{HvConfig, Hypervisor, Region};
use ccdma_tests::{add_pool, model, pattern, GIB, HIGH_POOL, MIB};

const SLOT: usize = 2048;
const BATCHES: usize = 9;
const WARM_UP: Duration = Duration::from_millis(10);

/// Median ns per call of `op` (see `ccdma_tests::timing::measure`).
fn measure(batch: Duration, op: &mut dyn FnMut()) -> f64 {
    ccdma_tests::timing::measure(WARM_UP, BATCHES, batch, op).median
}

/// xorshift64*.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Log-uniform bytes in 2 KiB..256 KiB, as whole slots (1..=128).
    fn slots(&mut self) -> usize {
        let u = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        let bytes = (2048.0 * 2f64.powf(7.0 * u)) as usize;
        bytes.div_ceil(SLOT).clamp(1, 128)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Page alignment for runs of a page or more, as the layer asks of the pool.
fn align_for(nslots: usize) -> usize {
    if nslots * SLOT >= 4096 {
        2
    } else {
        1
    }
}

fn layout(nslots: usize) -> Layout {
    Layout::from_size_align(nslots * SLOT, align_for(nslots) * SLOT).unwrap()
}

/// One allocator under test: runs of whole slots.
trait Runs {
    fn alloc(&mut self, nslots: usize) -> Option<usize>;
    fn free(&mut self, handle: usize, nslots: usize);
}

struct Ccdma<'a>(&'a BouncePool<'static>);
impl Runs for Ccdma<'_> {
    fn alloc(&mut self, nslots: usize) -> Option<usize> {
        self.0.bench_alloc(nslots, align_for(nslots))
    }
    fn free(&mut self, handle: usize, _nslots: usize) {
        assert!(self.0.bench_free(handle));
    }
}

/// Page-aligned memory from the global allocator, lazily backed.
struct Arena {
    ptr: NonNull<u8>,
    layout: Layout,
}
impl Arena {
    fn new(bytes: usize) -> Arena {
        let layout = Layout::from_size_align(bytes, 4096).unwrap();
        // SAFETY: non-zero size.
        let ptr = NonNull::new(unsafe { std::alloc::alloc(layout) }).expect("arena");
        Arena { ptr, layout }
    }
}
impl Drop for Arena {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

struct Buddy {
    heap: buddy_system_allocator::Heap<33>,
    _arena: Arena,
}
impl Buddy {
    fn new(bytes: usize) -> Buddy {
        let arena = Arena::new(bytes);
        let mut heap = buddy_system_allocator::Heap::<33>::new();
        // SAFETY: the arena is ours, unused otherwise, and outlives the heap (same struct, dropped after).
        unsafe { heap.init(arena.ptr.as_ptr() as usize, bytes) };
        Buddy { heap, _arena: arena }
    }
}
impl Runs for Buddy {
    fn alloc(&mut self, nslots: usize) -> Option<usize> {
        self.heap.alloc(layout(nslots)).ok().map(|p| p.as_ptr() as usize)
    }
    fn free(&mut self, handle: usize, nslots: usize) {
        // SAFETY: `handle` came from `alloc` with this layout and is freed once.
        unsafe { self.heap.dealloc(NonNull::new(handle as *mut u8).unwrap(), layout(nslots)) };
    }
}

/// [`Buddy`] behind a spin lock taken and released around every call, as a pool shared between
/// CPUs holds it (buddy_system_allocator's own `LockedHeap` is a `spin::Mutex<Heap>`): the bounce
/// pool takes its area's lock on every call, `Buddy` above takes none.
struct LockedBuddy {
    lock: &'static AtomicBool,
    buddy: Buddy,
}
impl LockedBuddy {
    fn new(bytes: usize) -> LockedBuddy {
        LockedBuddy { lock: Box::leak(Box::new(AtomicBool::new(false))), buddy: Buddy::new(bytes) }
    }
    fn locked<T>(&mut self, f: impl FnOnce(&mut Buddy) -> T) -> T {
        while self.lock.compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed).is_err() {
            std::hint::spin_loop();
        }
        let r = f(&mut self.buddy);
        self.lock.store(false, Ordering::Release);
        r
    }
}
impl Runs for LockedBuddy {
    fn alloc(&mut self, nslots: usize) -> Option<usize> {
        self.locked(|b| b.alloc(nslots))
    }
    fn free(&mut self, handle: usize, nslots: usize) {
        self.locked(|b| b.free(handle, nslots))
    }
}

struct LinkedList {
    heap: linked_list_allocator::Heap,
    _arena: Arena,
}
impl LinkedList {
    fn new(bytes: usize) -> LinkedList {
        let arena = Arena::new(bytes);
        // SAFETY: as for `Buddy::new`.
        let heap = unsafe { linked_list_allocator::Heap::new(arena.ptr.as_ptr(), bytes) };
        LinkedList { heap, _arena: arena }
    }
}
impl Runs for LinkedList {
    fn alloc(&mut self, nslots: usize) -> Option<usize> {
        self.heap.allocate_first_fit(layout(nslots)).ok().map(|p| p.as_ptr() as usize)
    }
    fn free(&mut self, handle: usize, nslots: usize) {
        // SAFETY: `handle` came from `allocate_first_fit` with this layout and is freed once.
        unsafe { self.heap.deallocate(NonNull::new(handle as *mut u8).unwrap(), layout(nslots)) }
    }
}

/// The layer as an allocator: map (to-device, `SKIP_CPU_SYNC`: no byte copied, no fill) of a buffer
/// of `nslots` slots through the raw face, unmap by bus address. Each live mapping has a buffer of
/// its own (256 KiB, reused after its unmap); the handle is an index into `live`.
struct LayerRuns {
    g: &'static Guest,
    live: Vec<(u64, u64)>,
    free_handles: Vec<usize>,
    free_bufs: Vec<u64>,
}
impl LayerRuns {
    /// Over `g`, reusing the buffers in `bufs` before asking the model for more.
    fn new(g: &'static Guest, bufs: Vec<u64>) -> LayerRuns {
        LayerRuns { g, live: Vec::new(), free_handles: Vec::new(), free_bufs: bufs }
    }
}
impl Runs for LayerRuns {
    fn alloc(&mut self, nslots: usize) -> Option<usize> {
        let buf = self.free_bufs.pop().unwrap_or_else(|| self.g.hv.alloc(256 << 10, Region::High));
        let len = nslots * SLOT;
        // SAFETY: `buf` is this bench's own model RAM, mapped by no other live mapping (each live
        // mapping keeps its buffer until its unmap).
        let r = unsafe {
            self.g.layer.map_phys(
                &self.g.dev,
                ccdma::PhysAddr(buf),
                len,
                DmaDirection::ToDevice,
                DmaAttrs::SKIP_CPU_SYNC,
            )
        };
        let Ok(bus) = r else {
            self.free_bufs.push(buf);
            return None;
        };
        let h = match self.free_handles.pop() {
            Some(h) => {
                self.live[h] = (bus.0, buf);
                h
            }
            None => {
                self.live.push((bus.0, buf));
                self.live.len() - 1
            }
        };
        Some(h)
    }
    fn free(&mut self, handle: usize, nslots: usize) {
        let (bus, buf) = self.live[handle];
        // SAFETY: a mapping this bench made with `map_phys` above on this device, unmapped once.
        unsafe {
            self.g.layer.unmap(
                &self.g.dev,
                ccdma::BusAddr(bus),
                nslots * SLOT,
                DmaDirection::ToDevice,
                DmaAttrs::SKIP_CPU_SYNC,
            )
        }
        .expect("unmap");
        self.free_handles.push(handle);
        self.free_bufs.push(buf);
    }
}

/// `CCDMA_CHURN_ROUNDS=<rounds>`: the churn rows only, interleaved (ccdma, buddy and the layer timed
/// one after the other in every round, so load on a shared machine hits all of them alike), each a
/// fresh 64 MiB pool or heap filled from the same seed; per row min/median/max over the rounds, and
/// the ratios buddy / ccdma per round. The layer row maps to-device with `SKIP_CPU_SYNC` through the
/// raw face (no bytes copied, no fill): the allocator plus the layer's bookkeeping.
fn interleaved_churn(rounds: usize, batch: Duration) {
    let m64 = 64 * MIB;
    let g = leak_guest(m64);
    let names = ["pool 50 %", "buddy 50 %", "layer 50 %", "pool 90 %", "buddy 90 %", "layer 90 %"];
    let mut t: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
    let (mut r50, mut r90, mut l50, mut l90) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    // Buddy behind a lock taken per call (`LockedBuddy`), and its ratio to the pool, per percentage.
    let (mut locked, mut k50, mut k90): ([Vec<f64>; 2], _, _) = (Default::default(), Vec::new(), Vec::new());
    let mut bufs = Vec::new();
    println!("load average at start: {}", load());
    for round in 0..rounds {
        let seed = 7 + round as u64;
        let mut row = Vec::new();
        let mut fails = Vec::new();
        let fail = |fails: u64, ops: u64| format!("{:.1}", fails as f64 / ops.max(1) as f64 * 100.0);
        for pct in [50, 90] {
            let mut c = Churn::new(Ccdma(g.pool()), slots_of(m64), pct, seed);
            row.push(measure(batch, &mut || c.op()));
            fails.push(fail(c.fails, c.ops));
            c.clear();
            let mut b = Churn::new(Buddy::new(m64 as usize), slots_of(m64), pct, seed);
            row.push(measure(batch, &mut || b.op()));
            fails.push(fail(b.fails, b.ops));
            let mut b = Churn::new(LockedBuddy::new(m64 as usize), slots_of(m64), pct, seed);
            let v = measure(batch, &mut || b.op());
            locked[usize::from(pct == 90)].push(v);
            (if pct == 90 { &mut k90 } else { &mut k50 }).push(v / row[row.len() - 2]);
            let mut l = Churn::new(LayerRuns::new(g, core::mem::take(&mut bufs)), slots_of(m64), pct, seed);
            row.push(measure(batch, &mut || l.op()));
            fails.push(fail(l.fails, l.ops));
            l.clear();
            bufs = l.runs.free_bufs;
        }
        assert_eq!(g.pool().slots_in_use(), 0);
        for (k, v) in row.iter().enumerate() {
            t[k].push(*v);
        }
        r50.push(row[1] / row[0]);
        r90.push(row[4] / row[3]);
        l50.push(row[2] / row[1]);
        l90.push(row[5] / row[4]);
        println!(
            "round {round}: {}",
            names
                .iter()
                .zip(&row)
                .zip(&fails)
                .map(|((n, v), f)| format!("{n} {v:.0} ns ({f} % fail)"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let mmm = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        (v[0], v[v.len() / 2], v[v.len() - 1])
    };
    println!(
        "\nchurn, 64 MiB, log-uniform 2 KiB..256 KiB, one free + one alloc per op, {rounds} rounds (ns/op)"
    );
    println!("{:<28} {:>8} {:>8} {:>8}", "row", "min", "median", "max");
    for (n, v) in names.iter().zip(t.iter_mut()) {
        let (a, m, b) = mmm(v);
        println!("{n:<28} {a:>8.0} {m:>8.0} {b:>8.0}");
    }
    for (n, v) in ["buddy locked 50 %", "buddy locked 90 %"].iter().zip(locked.iter_mut()) {
        let (a, m, b) = mmm(v);
        println!("{n:<28} {a:>8.0} {m:>8.0} {b:>8.0}");
    }
    for (n, v) in [
        ("buddy / pool at 50 %", &mut r50),
        ("buddy / pool at 90 %", &mut r90),
        ("layer / buddy at 50 %", &mut l50),
        ("layer / buddy at 90 %", &mut l90),
        ("buddy locked / pool at 50 %", &mut k50),
        ("buddy locked / pool at 90 %", &mut k90),
    ] {
        let (a, m, b) = mmm(v);
        println!("{n:<28} {a:>8.2} {m:>8.2} {b:>8.2}");
    }
    println!("load average at end: {}", load());
}

/// A churn workload over one allocator: the live runs and the random source.
struct Churn<R: Runs> {
    runs: R,
    live: Vec<(usize, usize)>,
    rng: Rng,
    fails: u64,
    ops: u64,
}

impl<R: Runs> Churn<R> {
    /// Fill to `percent` of `total_slots` with random sizes.
    fn new(runs: R, total_slots: usize, percent: usize, seed: u64) -> Churn<R> {
        let mut c = Churn { runs, live: Vec::new(), rng: Rng(seed | 1), fails: 0, ops: 0 };
        let target = total_slots * percent / 100;
        let mut held = 0;
        let mut misses = 0;
        while held < target && misses < 1000 {
            let n = c.rng.slots().min(target - held);
            match c.runs.alloc(n) {
                Some(h) => {
                    c.live.push((h, n));
                    held += n;
                }
                None => misses += 1,
            }
        }
        c
    }

    /// One free of a random live run and one allocation of a random size.
    fn op(&mut self) {
        self.ops += 1;
        if !self.live.is_empty() {
            let k = self.rng.below(self.live.len());
            let (h, n) = self.live.swap_remove(k);
            self.runs.free(h, n);
        }
        let n = self.rng.slots();
        match self.runs.alloc(n) {
            Some(h) => self.live.push((h, n)),
            None => self.fails += 1,
        }
    }

    fn clear(&mut self) {
        for (h, n) in self.live.drain(..) {
            self.runs.free(h, n);
        }
    }
}

/// The failing-request state: every 4 KiB taken, every other one freed; `refused` asks for 256 KiB.
struct Fragmented<R: Runs> {
    runs: R,
    held: Vec<usize>,
}
impl<R: Runs> Fragmented<R> {
    fn new(mut runs: R, total_slots: usize) -> Fragmented<R> {
        let mut all = Vec::with_capacity(total_slots / 2);
        while let Some(h) = runs.alloc(2) {
            all.push(h);
        }
        assert!(all.len() >= total_slots / 2 - 2, "fragmenting: {} of {}", all.len(), total_slots / 2);
        all.sort_unstable();
        let mut held = Vec::new();
        for (k, h) in all.into_iter().enumerate() {
            if k % 2 == 0 {
                runs.free(h, 2);
            } else {
                held.push(h);
            }
        }
        Fragmented { runs, held }
    }
    fn refused(&mut self) {
        let r = self.runs.alloc(black_box(128));
        assert!(r.is_none(), "a 256 KiB request met in a fragmented pool");
    }
    fn clear(&mut self) {
        for h in self.held.drain(..) {
            self.runs.free(h, 2);
        }
    }
}

/// A guest with one bounce pool of `bytes` at `HIGH_POOL` and one bounce-always device.
struct Guest {
    layer: DmaLayer<'static, &'static Hypervisor>,
    hv: &'static Hypervisor,
    dev: ccdma::Device,
}
impl Guest {
    fn new(bytes: u64) -> Guest {
        let hv = model(HvConfig::pseries(6 * GIB));
        let mut layer = DmaLayer::new(hv);
        add_pool(&mut layer, HIGH_POOL, bytes, PoolConfig::default()).expect("pool");
        let dev = layer.attach(DeviceConfig::new(1, DmaMask::new(64).unwrap())).expect("attach");
        assert_eq!(dev.path(), DmaPath::BounceAlways);
        Guest { layer, hv, dev }
    }
    fn pool(&self) -> &BouncePool<'static> {
        // The layer lives for the whole run (leaked below), so the pool reference can be 'static-ish:
        // the benchmark borrows it for as long as the guest.
        self.layer.pool(0).unwrap().0
    }
    fn buffer(&self, len: usize) -> u64 {
        let phys = self.hv.alloc(len as u64, Region::High);
        self.hv.memory().write(phys, &pattern(len, 3));
        phys
    }
    fn map_unmap(&self, phys: u64, len: usize, dir: DmaDirection) {
        // SAFETY: the bench's own buffer from `hv.alloc`; this slice is the only one alive.
        let buf = unsafe { self.hv.slice_mut(phys, len) };
        let m = self.layer.map(&self.dev, black_box(buf), dir, DmaAttrs::NONE).expect("map");
        black_box(m.bus_addr());
        m.unmap().expect("unmap");
    }
}

fn leak_guest(bytes: u64) -> &'static Guest {
    Box::leak(Box::new(Guest::new(bytes)))
}

fn slots_of(bytes: u64) -> usize {
    bytes as usize / SLOT
}

/// The measured loop of the callgrind mode (the only code collected with `--toggle-collect`).
#[inline(never)]
fn cg_measured(n: u64, op: &mut dyn FnMut()) {
    for _ in 0..n {
        op();
    }
}

/// `CCDMA_CG=<case>`: run one case `n` times for callgrind; print the case and `n`.
fn callgrind(case: &str) {
    let run = |n: u64, op: &mut dyn FnMut()| {
        let warm = std::env::var("CCDMA_CG_WARM").ok().and_then(|v| v.parse().ok()).unwrap_or(200.min(n));
        for _ in 0..warm {
            op();
        }
        cg_measured(n, op);
        println!("cg case {case} ops {n}");
    };
    let m64 = 64 * MIB;
    match case {
        "churn10-ccdma" | "churn50-ccdma" | "churn90-ccdma" => {
            let pct = case[5..7].parse().unwrap();
            let g = leak_guest(m64);
            let mut c = Churn::new(Ccdma(g.pool()), slots_of(m64), pct, 1);
            run(20_000, &mut || c.op());
            let live: usize = c.live.iter().map(|r| r.1).sum();
            eprintln!("live {} slots, fails {} of {}", live, c.fails, c.ops);
        }
        "churn50-buddylock" | "churn90-buddylock" => {
            let pct = case[5..7].parse().unwrap();
            let mut c = Churn::new(LockedBuddy::new(m64 as usize), slots_of(m64), pct, 1);
            run(20_000, &mut || c.op());
        }
        "churn10-buddy" | "churn50-buddy" | "churn90-buddy" => {
            let pct = case[5..7].parse().unwrap();
            let mut c = Churn::new(Buddy::new(m64 as usize), slots_of(m64), pct, 1);
            run(20_000, &mut || c.op());
            let live: usize = c.live.iter().map(|r| r.1).sum();
            eprintln!("live {} slots, fails {} of {}", live, c.fails, c.ops);
        }
        "lchurn50-ccdma" | "lchurn90-ccdma" => {
            let pct = case[6..8].parse().unwrap();
            let g = leak_guest(m64);
            let mut c = Churn::new(LayerRuns::new(g, Vec::new()), slots_of(m64), pct, 1);
            run(20_000, &mut || c.op());
        }
        "churn50-linked" => {
            let mut c = Churn::new(LinkedList::new(m64 as usize), slots_of(m64), 50, 1);
            run(2_000, &mut || c.op());
        }
        "churn50-ccdma-16m" | "churn50-ccdma-1g" => {
            let bytes = if case.ends_with("16m") { 16 * MIB } else { GIB };
            let g = leak_guest(bytes);
            let mut c = Churn::new(Ccdma(g.pool()), slots_of(bytes), 50, 1);
            run(20_000, &mut || c.op());
        }
        "fail16-ccdma" | "fail64-ccdma" | "fail1g-ccdma" => {
            let bytes = match case {
                "fail16-ccdma" => 16 * MIB,
                "fail64-ccdma" => m64,
                _ => GIB,
            };
            let g = leak_guest(bytes);
            let mut f = Fragmented::new(Ccdma(g.pool()), slots_of(bytes));
            run(20, &mut || f.refused());
        }
        "fail64-buddy" => {
            let mut f = Fragmented::new(Buddy::new(m64 as usize), slots_of(m64));
            run(20_000, &mut || f.refused());
        }
        "map4k-to" | "map64k-to" | "map4k-from" | "map64k-from" => {
            let len = if case.contains("64k") { 64 << 10 } else { 4096 };
            let dir = if case.ends_with("to") { DmaDirection::ToDevice } else { DmaDirection::FromDevice };
            let g = leak_guest(16 * MIB);
            let phys = g.buffer(64 << 10);
            run(20_000, &mut || g.map_unmap(phys, len, dir));
        }
        other => panic!("unknown CCDMA_CG case {other}"),
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    if let Ok(case) = std::env::var("CCDMA_CG") {
        callgrind(&case);
        return;
    }
    let ms = std::env::var("CCDMA_BENCH_BATCH_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(10);
    let batch = Duration::from_millis(ms);
    if let Some(rounds) = std::env::var("CCDMA_CHURN_ROUNDS").ok().and_then(|v| v.parse().ok()) {
        interleaved_churn(rounds, batch);
        return;
    }
    println!("ccdma bounce pool under churn and failure (batch {ms} ms, median of {BATCHES} batches)");
    println!("load average at start: {}", load());

    // Churn at 10/50/90 %, 64 MiB, all three allocators.
    let m64 = 64 * MIB;
    let g64 = leak_guest(m64);
    println!(
        "\nchurn, 64 MiB, log-uniform 2 KiB..256 KiB, one free + one alloc per op (ns/op, failed allocs)"
    );
    println!(
        "{:<10} {:>22} {:>22} {:>22}",
        "occupancy", "ccdma pool", "buddy_system_allocator", "linked_list_allocator"
    );
    let mut churn50 = (0.0, 0.0);
    let mut churn90 = (0.0, 0.0);
    for pct in [10, 50, 90] {
        let mut c = Churn::new(Ccdma(g64.pool()), slots_of(m64), pct, 7);
        let tc = measure(batch, &mut || c.op());
        let fc = c.fails as f64 / c.ops as f64 * 100.0;
        c.clear();
        let mut b = Churn::new(Buddy::new(m64 as usize), slots_of(m64), pct, 7);
        let tb = measure(batch, &mut || b.op());
        let fb = b.fails as f64 / b.ops as f64 * 100.0;
        let mut l = Churn::new(LinkedList::new(m64 as usize), slots_of(m64), pct, 7);
        let tl = measure(batch, &mut || l.op());
        let fl = l.fails as f64 / l.ops as f64 * 100.0;
        println!(
            "{:<10} {:>22} {:>22} {:>22}",
            format!("{pct} %"),
            format!("{tc:.0} ns ({fc:.1} % fail)"),
            format!("{tb:.0} ns ({fb:.1} % fail)"),
            format!("{tl:.0} ns ({fl:.1} % fail)")
        );
        if pct == 50 {
            churn50 = (tc, tb);
        }
        if pct == 90 {
            churn90 = (tc, tb);
        }
    }

    // The failing request, against pool size (and the other two at 64 MiB).
    println!("\nfailing request: 256 KiB asked of a pool with every other 4 KiB free (ns/request)");
    let mut worst_fail: f64 = 0.0;
    let sizes = [16 * MIB, 64 * MIB, 256 * MIB, GIB];
    let guests: Vec<&'static Guest> =
        sizes.iter().map(|&b| if b == m64 { g64 } else { leak_guest(b) }).collect();
    for (&bytes, g) in sizes.iter().zip(&guests) {
        let mut f = Fragmented::new(Ccdma(g.pool()), slots_of(bytes));
        let t = measure(batch, &mut || f.refused());
        worst_fail = worst_fail.max(t);
        f.clear();
        let mut line = format!("{:>5} MiB  ccdma {t:>10.0} ns", bytes / MIB);
        if bytes == m64 {
            let mut b = Fragmented::new(Buddy::new(bytes as usize), slots_of(bytes));
            let tb = measure(batch, &mut || b.refused());
            let mut l = Fragmented::new(LinkedList::new(bytes as usize), slots_of(bytes));
            let tl = measure(batch, &mut || l.refused());
            line += &format!("   buddy {tb:.0} ns   linked_list {tl:.0} ns");
        }
        println!("{line}");
    }

    // Cost against pool size: churn at 50 %, and a 4 KiB to-device map+unmap with the pool half full.
    println!("\npool size: churn at 50 % (ns/op) and 4 KiB to-device map+unmap with the pool half full (ns)");
    let mut churn_by_size = Vec::new();
    let mut map_by_size = Vec::new();
    for (&bytes, g) in sizes.iter().zip(&guests) {
        let mut c = Churn::new(Ccdma(g.pool()), slots_of(bytes), 50, 11);
        let tc = measure(batch, &mut || c.op());
        let phys = g.buffer(4096);
        let tm = measure(batch, &mut || g.map_unmap(phys, 4096, DmaDirection::ToDevice));
        c.clear();
        println!("{:>5} MiB  churn {tc:>8.0} ns   map+unmap {tm:>8.0} ns", bytes / MIB);
        churn_by_size.push(tc);
        map_by_size.push(tm);
    }

    // One thread against two, each with its own live set (half the occupancy each).
    println!("\nthreads: churn at 50 % of 64 MiB, and 4 KiB to-device map+unmap (ns per op per thread)");
    let ops = 200_000u64;
    let one = threads_churn(g64, 1, ops);
    let two = threads_churn(g64, 2, ops);
    let m1 = threads_map(g64, 1, ops);
    let m2 = threads_map(g64, 2, ops);
    println!(
        "churn      1 thread {one:>7.0} ns   2 threads {two:>7.0} ns each ({:.2}x the throughput)",
        2.0 * one / two
    );
    println!(
        "map+unmap  1 thread {m1:>7.0} ns   2 threads {m2:>7.0} ns each ({:.2}x the throughput)",
        2.0 * m1 / m2
    );
    println!(
        "load average at end: {} (2 cores, shared: above ~1 the two-thread figures mean little)",
        load()
    );

    println!("\naims (printed, never asserted)");
    let ratio = |a: f64, b: f64| a / b;
    let r50 = ratio(churn50.1, churn50.0);
    let r90 = ratio(churn90.1, churn90.0);
    aim("churn at 50 %: at least 2x faster than buddy_system_allocator", r50 >= 2.0, format!("{r50:.2}x"));
    aim("churn at 90 %: no worse than buddy_system_allocator", r90 >= 1.0, format!("{r90:.2}x"));
    aim(
        "failing request under 1 us at every pool size",
        worst_fail < 1000.0,
        format!("worst {worst_fail:.0} ns"),
    );
    let spread =
        |v: &[f64]| v.iter().cloned().fold(0.0, f64::max) / v.iter().cloned().fold(f64::INFINITY, f64::min);
    let (sc, sm) = (spread(&churn_by_size), spread(&map_by_size));
    aim("pool 16 MiB..1 GiB: churn within 1.2x", sc <= 1.2, format!("{sc:.2}x"));
    aim("pool 16 MiB..1 GiB: map+unmap within 1.2x", sm <= 1.2, format!("{sm:.2}x"));
}

fn aim(what: &str, met: bool, figure: String) {
    println!("aim: {what}: {figure} -> {}", if met { "met" } else { "MISSED" });
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split(' ').take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// ns per churn op per thread with `n` threads on the same 64 MiB pool, 50 % of it held in all.
fn threads_churn(g: &'static Guest, n: usize, ops: u64) -> f64 {
    let total = slots_of(64 * MIB);
    // Each thread's own loop time; the slowest one is reported.
    let times: Vec<Duration> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..n)
            .map(|k| {
                s.spawn(move || {
                    let mut c = Churn::new(Ccdma(g.pool()), total / n, 50, 200 + k as u64);
                    let t = Instant::now();
                    for _ in 0..ops {
                        c.op();
                    }
                    let e = t.elapsed();
                    c.clear();
                    e
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    times.iter().max().unwrap().as_nanos() as f64 / ops as f64
}

/// ns per 4 KiB to-device map+unmap per thread, `n` threads each with its own device and buffer.
fn threads_map(g: &'static Guest, n: usize, ops: u64) -> f64 {
    let bufs: Vec<u64> = (0..n).map(|_| g.buffer(4096)).collect();
    let devs: Vec<ccdma::Device> = (0..n)
        .map(|k| g.layer.attach(DeviceConfig::new(10 + k as u32, DmaMask::new(64).unwrap())).expect("attach"))
        .collect();
    let times: Vec<Duration> = std::thread::scope(|s| {
        let hs: Vec<_> = devs
            .iter()
            .zip(&bufs)
            .map(|(dev, &phys)| {
                s.spawn(move || {
                    let t = Instant::now();
                    for _ in 0..ops {
                        // SAFETY: each thread's own buffer; this slice is the only one alive.
                        let buf = unsafe { g.hv.slice_mut(phys, 4096) };
                        let m =
                            g.layer.map(dev, black_box(buf), DmaDirection::ToDevice, DmaAttrs::NONE).unwrap();
                        black_box(m.bus_addr());
                        m.unmap().unwrap();
                    }
                    t.elapsed()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for d in devs {
        g.layer.detach(d).expect("detach");
    }
    times.iter().max().unwrap().as_nanos() as f64 / ops as f64
}
