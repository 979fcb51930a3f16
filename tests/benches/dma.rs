//! `cargo bench -p ccdma-tests --bench dma`: what a streaming map+unmap costs next to a plain memcpy
//! of the same bytes, and how many hypercalls a strict IOMMU mapping costs against Linux.
//!
//! Each row is a case and a size, timed in rounds: a round times the yardstick (a memcpy of the same
//! size between two hot page-aligned buffers, the copy the bounce path performs; for from-device
//! rows the memset+memcpy floor) and then the row, back to back, each as the median of a few
//! batches after a warm-up. The ratio is taken per round, so a change of the machine's load moves
//! yardstick and row alike; the table gives the rounds' median and range. The fixture's buffer is
//! page-aligned like the yardstick's but never a multiple of 1 GiB from the pool's slots (a 4 KiB
//! copy between addresses exactly 1 GiB apart is several times slower on this CPU; the first row
//! checks it).
//!
//! Adding a row is one call: `bench.row("case name", bytes, || { ... one operation ... })`. Give the
//! closure everything it needs by capture (a fixture built once, outside the timing); it must leave
//! the fixture as it found it (e.g. unmap what it mapped) so every iteration does the same work.
//!
//! `CCDMA_BENCH_BATCH_MS` (default 2) sets the length of one batch, and `cargo bench -- WORD` runs
//! only the rows whose `case size` contains WORD (for profiling one row:
//! `CCDMA_BENCH_BATCH_MS=200 cargo bench -- "to-device 4 KiB"` under callgrind or perf).
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

use std::hint::black_box;
use std::time::Duration;

use ccdma_tests::timing::Sample;

use ccdma::iommu::BusRange;
use ccdma::{
    DeviceConfig, DmaAttrs, DmaDirection, DmaLayer, DmaMask, DmaPath, IommuConfig, PhysAddr, PoolConfig,
    VerifyPolicy,
};
use ccdma_hv_model::{HvConfig, Hypervisor, Region, TceConfig};
use ccdma_tests::{add_pool, linux_secure_guest_calls, model, pattern, GIB, HIGH_POOL, MIB, MID_POOL};

mod sg_rows;

/// Batches per measurement inside one round; the median is the round's figure.
const BATCHES: usize = 5;
/// Rounds per row: each round times the memcpy yardstick and then the row, back to back, so a
/// change of the machine's load moves both; the row's ratio is taken per round.
const ROUNDS: usize = 7;
/// Warm-up before calibration (caches, branch predictors, lazily backed model pages).
const WARM_UP: Duration = Duration::from_millis(5);

/// Time `op` (see `ccdma_tests::timing::measure`).
fn measure(batch: Duration, op: &mut dyn FnMut()) -> Sample {
    ccdma_tests::timing::measure(WARM_UP, BATCHES, batch, op)
}

/// Min, median and max of a few figures.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Spread {
    pub min: f64,
    pub median: f64,
    pub max: f64,
}

impl Spread {
    fn of(mut v: Vec<f64>) -> Spread {
        v.sort_by(f64::total_cmp);
        Spread { min: v[0], median: v[v.len() / 2], max: v[v.len() - 1] }
    }
}

struct Row {
    case: String,
    bytes: usize,
    /// ns per operation, over the rounds (each round's median batch).
    ns: Spread,
    /// The yardstick measured in the same rounds (ns).
    yardstick: Spread,
    /// Per round: the row over its own round's yardstick.
    ratio: Spread,
    /// What the yardstick is ("memcpy", or "memset+memcpy" for the from-device floor).
    against: &'static str,
}

/// The table being built.
pub(crate) struct Bench {
    batch: Duration,
    filter: Option<String>,
    rows: Vec<Row>,
}

/// A page-aligned buffer (the data starts `skew` bytes into a page).
struct PageBuf {
    ptr: std::ptr::NonNull<u8>,
    layout: std::alloc::Layout,
    skew: usize,
    len: usize,
}

impl PageBuf {
    fn with(init: &[u8], skew: usize) -> PageBuf {
        let len = init.len();
        let layout = std::alloc::Layout::from_size_align(len + skew, 4096).unwrap();
        // SAFETY: non-zero size (every size the bench uses is at least one byte).
        let ptr = std::ptr::NonNull::new(unsafe { std::alloc::alloc_zeroed(layout) }).expect("alloc");
        let mut b = PageBuf { ptr, layout, skew, len };
        b.bytes().copy_from_slice(init);
        b
    }
    fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: `skew + len` bytes were allocated (and zeroed); `&mut self` makes this the only view.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr().add(self.skew), self.len) }
    }
    fn bytes_ref(&self) -> &[u8] {
        // SAFETY: as above; shared view for a shared borrow.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().add(self.skew), self.len) }
    }
}

impl Drop for PageBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `with` with this layout.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

/// The yardsticks of one size: two hot page-aligned buffers (the copy the bounce path performs:
/// pool slots and, in the model, guest pages are page-aligned) and a third for the from-device
/// floor (zero-fill at map, copy back at unmap).
struct Yardstick {
    src: PageBuf,
    dst: PageBuf,
    slot: PageBuf,
}

impl Yardstick {
    fn new(bytes: usize) -> Yardstick {
        Yardstick {
            src: PageBuf::with(&pattern(bytes, 7), 0),
            dst: PageBuf::with(&vec![0u8; bytes], 0),
            slot: PageBuf::with(&vec![0u8; bytes], 0),
        }
    }
    fn memcpy(&mut self) {
        black_box(self.dst.bytes()).copy_from_slice(black_box(self.src.bytes_ref()));
    }
    fn floor(&mut self) {
        black_box(self.slot.bytes()).fill(0);
        black_box(self.dst.bytes()).copy_from_slice(black_box(self.slot.bytes_ref()));
    }
}

impl Bench {
    fn new() -> Bench {
        let ms = std::env::var("CCDMA_BENCH_BATCH_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(2);
        // cargo passes `--bench`; the first other argument is a row filter.
        let filter = std::env::args().skip(1).find(|a| !a.starts_with("--"));
        Bench { batch: Duration::from_millis(ms), filter, rows: Vec::new() }
    }

    fn wanted(&self, case: &str, bytes: usize) -> bool {
        self.filter.as_ref().is_none_or(|f| format!("{case} {}", size_label(bytes)).contains(f.as_str()))
    }

    /// Time one operation on `bytes` bytes against the page-aligned memcpy of the same size, the two
    /// interleaved round by round, and add it to the table (unless filtered out: `None`).
    pub(crate) fn row(&mut self, case: &str, bytes: usize, op: impl FnMut()) -> Option<Spread> {
        self.row_against(case, bytes, false, op)
    }

    /// [`Self::row`] against the from-device floor (memset + memcpy) instead of the memcpy.
    fn row_floor(&mut self, case: &str, bytes: usize, op: impl FnMut()) -> Option<Spread> {
        self.row_against(case, bytes, true, op)
    }

    fn row_against(&mut self, case: &str, bytes: usize, floor: bool, mut op: impl FnMut()) -> Option<Spread> {
        if !self.wanted(case, bytes) {
            return None;
        }
        let mut y = Yardstick::new(bytes);
        let (mut ns, mut ys, mut ratio) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            let m = if floor {
                measure(self.batch, &mut || y.floor())
            } else {
                measure(self.batch, &mut || y.memcpy())
            };
            let s = measure(self.batch, &mut op);
            ns.push(s.median);
            ys.push(m.median);
            ratio.push(s.median / m.median);
        }
        let ratio = Spread::of(ratio);
        self.rows.push(Row {
            case: case.to_string(),
            bytes,
            ns: Spread::of(ns),
            yardstick: Spread::of(ys),
            ratio,
            against: if floor { "memset+memcpy" } else { "memcpy" },
        });
        Some(ratio)
    }

    /// A row with no yardstick of its own: a copy measured the same way (a diagnostic).
    fn plain(&mut self, case: &str, bytes: usize, mut op: impl FnMut()) {
        if !self.wanted(case, bytes) {
            return;
        }
        let ns: Vec<f64> = (0..ROUNDS).map(|_| measure(self.batch, &mut op).median).collect();
        let ns = Spread::of(ns);
        let nan = Spread { min: f64::NAN, median: f64::NAN, max: f64::NAN };
        self.rows.push(Row { case: case.to_string(), bytes, ns, yardstick: nan, ratio: nan, against: "" });
    }

    fn print(&self) {
        // The case column is as wide as the longest case, so new rows never break the alignment.
        let w = self.rows.iter().map(|r| r.case.len()).max().unwrap_or(0).max(4);
        println!(
            "{:<w$} {:>7} {:>9} {:>17} {:>9} {:>19} yardstick",
            "case", "size", "median ns", "min..max ns", "yard ns", "x yardstick (range)"
        );
        let mut rows: Vec<&Row> = self.rows.iter().collect();
        rows.sort_by_key(|r| r.bytes);
        for r in rows {
            println!(
                "{:<w$} {:>7} {:>9.1} {:>17} {:>9.1} {:>19} {}",
                r.case,
                size_label(r.bytes),
                r.ns.median,
                format!("{:.1}..{:.1}", r.ns.min, r.ns.max),
                r.yardstick.median,
                format!("{:.2} ({:.2}..{:.2})", r.ratio.median, r.ratio.min, r.ratio.max),
                r.against
            );
        }
    }
}

/// A private buffer of `len` bytes in the model, page-aligned like the yardstick's buffers but never
/// a multiple of 1 GiB away from a pool's first slots: on this machine's CPU a 4 KiB copy between two
/// addresses exactly 1 GiB apart takes about 4x as long, and the model's first high allocation sits
/// exactly 1 GiB above `HIGH_POOL`.
fn unaliased_buffer(hv: &Hypervisor, len: usize) -> u64 {
    const SKEW: u64 = (1 << 20) + 5 * 4096;
    let phys = hv.alloc(len as u64 + SKEW, Region::High) + SKEW;
    hv.memory().write(phys, &pattern(len, 3));
    phys
}

/// A confidential pseries guest with one 16 MiB pool, one device, and a private buffer of 256 KiB
/// above 4 GiB: without IOMMU (every map bounces: `BounceAlways`) or behind the modelled TCE IOMMU.
struct Fixture {
    layer: DmaLayer<'static, &'static Hypervisor>,
    dev: ccdma::Device,
    hv: &'static Hypervisor,
    buf_phys: u64,
}

impl Fixture {
    const BUF: usize = 256 << 10;

    /// The bounce path: no IOMMU, one high pool.
    fn bounce() -> Fixture {
        let hv = model(HvConfig::pseries(6 * GIB));
        let mut layer = DmaLayer::new(hv);
        add_pool(&mut layer, HIGH_POOL, 16 * MIB, PoolConfig::default()).expect("pool");
        Fixture::with_device(hv, layer, 64, DmaPath::BounceAlways)
    }

    /// The same guest with its device behind the modelled TCE IOMMU: pool premapped (a DDW for a
    /// 64-bit device, the default window for a 32-bit one) or strict entries per mapping. A model
    /// hypercall is a lock and a hash-map update, far cheaper than a real one: the strict rows are a
    /// lower bound.
    fn iommu(cfg: IommuConfig, bits: u32, expect: DmaPath) -> Fixture {
        let hv = model(HvConfig::pseries(6 * GIB));
        hv.enable_iommu(TceConfig::default());
        hv.add_iommu_device(1, bits);
        let mut layer = DmaLayer::new(hv);
        add_pool(&mut layer, MID_POOL, 16 * MIB, PoolConfig::default()).expect("pool");
        let cfg = IommuConfig { max_domains: 1, ..cfg };
        // SAFETY: any list page named by `cfg` is a fresh allocation nothing else uses.
        unsafe { layer.enable_iommu(cfg, vec![BusRange::EMPTY; 256].leak()) }.expect("iommu");
        Fixture::with_device(hv, layer, bits, expect)
    }

    fn with_device(
        hv: &'static Hypervisor,
        layer: DmaLayer<'static, &'static Hypervisor>,
        bits: u32,
        expect: DmaPath,
    ) -> Fixture {
        let dev = layer.attach(DeviceConfig::new(1, DmaMask::new(bits).unwrap())).expect("attach");
        assert_eq!(dev.path(), expect, "the bench measures this path");
        let buf_phys = unaliased_buffer(hv, Self::BUF);
        Fixture { layer, dev, hv, buf_phys }
    }

    /// One map and unmap of the first `len` bytes of the buffer through the safe face.
    fn map_unmap(&self, len: usize, dir: DmaDirection) {
        self.map_unmap_attrs(len, dir, DmaAttrs::NONE);
    }

    fn map_unmap_attrs(&self, len: usize, dir: DmaDirection, attrs: DmaAttrs) {
        // SAFETY: the fixture's own buffer from `hv.alloc`; this slice is the only one alive (each call
        // makes and drops its own).
        let buf = unsafe { self.hv.slice_mut(self.buf_phys, len) };
        let m = self.layer.map(&self.dev, black_box(buf), dir, attrs).expect("map");
        black_box(m.bus_addr());
        m.unmap().expect("unmap");
    }

    /// Hypercalls of one map+unmap of `len` bytes (the layer's own counters).
    fn hcalls(&self, len: usize) -> u64 {
        let total =
            |s: ccdma::iommu::IommuStatsSnapshot| s.put_tce + s.get_tce + s.put_indirect + s.stuff_tce;
        let before = total(self.layer.iommu_stats());
        self.map_unmap(len, DmaDirection::ToDevice);
        total(self.layer.iommu_stats()) - before
    }

    /// Nothing left behind after the timed loops; guest and model agree on live TCEs (none without
    /// an IOMMU).
    fn check_clean(&self) {
        let s = self.layer.stats();
        assert_eq!(s.slots_in_use, 0, "slots leaked during the bench");
        assert_eq!(s.total_failures(), 0, "the bench hit failures: {s:?}");
        assert_eq!(self.layer.iommu_stats().live_tces, self.hv.tce_counters().live_entries);
        assert!(self.hv.faults().is_empty());
    }
}

fn main() {
    // `cargo bench -- <filter>` and `cargo test --benches` pass arguments; only the table is offered.
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let mut bench = Bench::new();
    println!("load average at start: {}", load());
    let bounce = Fixture::bounce();

    // The copy a 4 KiB map performs, between the fixture's buffer and the pool's first slots, beside
    // the yardstick: equal when the buffer does not alias the slots.
    {
        // SAFETY: the buffer is the fixture's; the pool's first 4 KiB is free (no mapping is live)
        // and written only here, before any map.
        let (src, dst) =
            unsafe { (bounce.hv.slice_mut(bounce.buf_phys, 4096), bounce.hv.slice_mut(HIGH_POOL, 4096)) };
        bench.row("memcpy fixture buffer -> pool slot (aliasing check)", 4096, || {
            black_box(&mut *dst).copy_from_slice(black_box(&*src));
        });
    }

    let mut aims = Vec::new();
    for bytes in [4096, 64 << 10, 256 << 10] {
        for dir in [DmaDirection::ToDevice, DmaDirection::FromDevice, DmaDirection::Bidirectional] {
            if bytes > 64 << 10 && dir != DmaDirection::ToDevice {
                continue;
            }
            let case = format!("bounce map+unmap {}", dir_name(dir));
            match dir {
                DmaDirection::ToDevice => {
                    let Some(r) = bench.row(&case, bytes, || bounce.map_unmap(bytes, dir)) else { continue };
                    let limit = if bytes == 4096 { 2.0 } else { 1.1 };
                    aims.push((
                        format!("{} to-device map+unmap <= {limit}x memcpy", size_label(bytes)),
                        r,
                        limit,
                    ));
                }
                DmaDirection::FromDevice => {
                    let Some(r) = bench.row_floor(&case, bytes, || bounce.map_unmap(bytes, dir)) else {
                        continue;
                    };
                    let what = format!("{} from-device map+unmap <= 1.2x memset+memcpy", size_label(bytes));
                    aims.push((what, r, 1.2));
                }
                DmaDirection::Bidirectional => {
                    bench.row(&case, bytes, || bounce.map_unmap(bytes, dir));
                }
            }
        }
    }
    let skip = DmaAttrs::SKIP_CPU_SYNC;
    bench.row("bounce map+unmap to-device SKIP_CPU_SYNC", 4096, || {
        bounce.map_unmap_attrs(4096, DmaDirection::ToDevice, skip)
    });
    bounce.check_clean();

    // A refused map: the only pool is full (every slot held by raw 256 KiB mappings).
    {
        let f = Fixture::bounce();
        let run = 256 << 10;
        let held = f.hv.alloc(16 * MIB, Region::High);
        let mut live = Vec::new();
        loop {
            let phys = PhysAddr(held + (live.len() * run) as u64);
            // SAFETY: a fresh private allocation the bench keeps, untouched, until these mappings
            // end; each mapping lends a different 256 KiB of it.
            let r = unsafe { f.layer.map_phys(&f.dev, phys, run, DmaDirection::ToDevice, DmaAttrs::NO_WARN) };
            match r {
                Ok(b) => live.push(b),
                Err(_) => break,
            }
        }
        bench.plain("bounce map refused (pool full)", 4096, || {
            // SAFETY: the fixture's own buffer; the map fails, so nothing is lent.
            let r = unsafe {
                f.layer.map_phys(
                    &f.dev,
                    PhysAddr(f.buf_phys),
                    4096,
                    DmaDirection::ToDevice,
                    DmaAttrs::NO_WARN,
                )
            };
            assert!(black_box(r).is_err());
        });
        for b in live {
            // SAFETY: a raw mapping made above, unmapped once.
            unsafe { f.layer.unmap(&f.dev, b, run, DmaDirection::ToDevice, DmaAttrs::NONE) }.expect("unmap");
        }
    }

    // IOMMU paths: premapped (DDW, default window) and strict with the default configuration.
    let iommu: [(&str, IommuConfig, u32, DmaPath); 4] = [
        ("iommu premap DDW", IommuConfig::premapped(), 64, DmaPath::IommuDdw),
        ("iommu premap window", IommuConfig::premapped(), 32, DmaPath::IommuPremapped),
        ("iommu strict default", IommuConfig::strict(), 32, DmaPath::IommuStrict),
        (
            "iommu strict per-entry+readback",
            IommuConfig::strict().with_batching(ccdma::TceBatching::PerEntry).with_verify(VerifyPolicy::Ends),
            32,
            DmaPath::IommuStrict,
        ),
    ];
    let mut hcall_rows = Vec::new();
    for (name, cfg, bits, path) in iommu {
        let f = Fixture::iommu(cfg, bits, path);
        for bytes in [4096, 64 << 10] {
            let dir = DmaDirection::ToDevice;
            let r =
                bench.row(&format!("{name} map+unmap {}", dir_name(dir)), bytes, || f.map_unmap(bytes, dir));
            if name == "iommu premap DDW" && bytes == 4096 {
                if let Some(r) = r {
                    aims.push(("4 KiB premapped (DDW) to-device map+unmap <= 2.2x memcpy".into(), r, 2.2));
                }
            }
        }
        if path == DmaPath::IommuStrict {
            let counts: Vec<(usize, u64)> = [4096, 8192, 16 << 10, 64 << 10, 128 << 10, 256 << 10]
                .iter()
                .map(|&b| (b, f.hcalls(b)))
                .collect();
            hcall_rows.push((name, counts));
        }
        f.check_clean();
    }

    let sg_notes = sg_rows::rows(&mut bench);

    println!(
        "ccdma streaming DMA (confidential pseries model, 2 KiB slots): {ROUNDS} rounds per row, each the"
    );
    println!("median of {BATCHES} batches, the yardstick timed in the same round; ratio = row / yardstick per round");
    bench.print();
    println!(
        "iommu rows: the same guest with the device behind the modelled TCE IOMMU (pool premapped in a DDW or \
         the default window: no hypercall per map; strict: entries written and cleared per map, a model \
         hypercall being far cheaper than a real one)"
    );
    for note in sg_notes {
        println!("{note}");
    }
    println!(
        "\nstrict IOMMU hypercalls per to-device map+unmap (4 KiB IOMMU pages), against Linux's secure guest"
    );
    println!("(one H_PUT_TCE per entry, multi-TCE off in a secure guest, one H_STUFF_TCE per 512 entries to clear: n + 1 up to 2 MiB)");
    for (name, counts) in &hcall_rows {
        let line: Vec<String> = counts
            .iter()
            .map(|&(b, n)| format!("{}: {n} (Linux {})", size_label(b), linux_secure_guest_calls(b)))
            .collect();
        println!("{name:<34} {}", line.join(", "));
    }
    if let Some((_, counts)) = hcall_rows.first() {
        let never_more = counts.iter().all(|&(b, n)| n <= linux_secure_guest_calls(b));
        let eightfold = counts
            .iter()
            .filter(|&&(b, _)| b >= 64 << 10)
            .all(|&(b, n)| 8 * n <= linux_secure_guest_calls(b));
        println!(
            "aim: strict default never more hypercalls than Linux: {}",
            if never_more { "met" } else { "MISSED" }
        );
        println!("aim: strict default >= 8x fewer from 64 KiB: {}", if eightfold { "met" } else { "MISSED" });
    }
    for (what, r, limit) in aims {
        println!(
            "aim: {what}: {:.2}x (rounds {:.2}..{:.2}) -> {}",
            r.median,
            r.min,
            r.max,
            if r.median <= limit { "met" } else { "MISSED" }
        );
    }
    println!("load average at end: {}", load());
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split(' ').take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn size_label(bytes: usize) -> String {
    if bytes >= 1024 && bytes % 1024 == 0 {
        format!("{} KiB", bytes / 1024)
    } else {
        format!("{bytes} B")
    }
}

fn dir_name(dir: DmaDirection) -> &'static str {
    match dir {
        DmaDirection::ToDevice => "to-device",
        DmaDirection::FromDevice => "from-device",
        DmaDirection::Bidirectional => "bidirectional",
    }
}
