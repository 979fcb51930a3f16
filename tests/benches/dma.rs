//! `cargo bench`: what a streaming map+unmap costs next to a plain memcpy of the same bytes.
//!
//! One table per run: each row is a case and a size, timed as the median of several batches after a
//! warm-up, with a memcpy of the same size between page-aligned buffers as the yardstick (the ratio
//! column): the copy the bounce path performs. The yardstick rows for a size (aligned memcpy, the same
//! copy with an unaligned destination, and the memset+memcpy floor of a from-device mapping) are
//! measured the first time a row of that size asks for them.
//!
//! Adding a row is one call: `bench.row("case name", bytes, || { ... one operation ... })`. Give the
//! closure everything it needs by capture (a fixture built once, outside the timing); it must leave
//! the fixture as it found it (e.g. unmap what it mapped) so every iteration does the same work.
//!
//! Timing is `std::time::Instant` around batches of iterations (no extra dependencies). The whole run
//! takes a few seconds; `CCDMA_BENCH_BATCH_MS` (default 4) sets the length of one batch, and
//! `cargo bench -- WORD` runs only the rows whose `case size` contains WORD (for profiling one row:
//! `CCDMA_BENCH_BATCH_MS=200 cargo bench -- "to-device 4 KiB"` under callgrind or perf).
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::Duration;

use ccdma_tests::timing::Sample;

use ccdma::iommu::BusRange;
use ccdma::{
    DeviceConfig, DmaAttrs, DmaDirection, DmaLayer, DmaMask, DmaPath, IommuConfig, IommuPolicy, PhysAddr,
    PoolConfig, VerifyPolicy,
};
use ccdma_hv_model::{HvConfig, Hypervisor, Region, TceConfig};
use ccdma_tests::{add_pool, model, pattern, GIB, HIGH_POOL, MIB, MID_POOL};

mod sg_rows;

/// Batches per measurement; the median is reported.
const BATCHES: usize = 15;
/// Warm-up before calibration (caches, branch predictors, lazily backed model pages).
const WARM_UP: Duration = Duration::from_millis(15);

/// Time `op` (see `ccdma_tests::timing::measure`).
fn measure(batch: Duration, op: &mut dyn FnMut()) -> Sample {
    ccdma_tests::timing::measure(WARM_UP, BATCHES, batch, op)
}

struct Row {
    case: String,
    bytes: usize,
    sample: Sample,
}

/// The table being built.
struct Bench {
    batch: Duration,
    filter: Option<String>,
    rows: Vec<Row>,
    memcpy: BTreeMap<usize, Sample>,
    /// Zero-fill plus copy of the same size: the least a from-device map+unmap does.
    floor: BTreeMap<usize, Sample>,
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

impl Bench {
    fn new() -> Bench {
        let ms = std::env::var("CCDMA_BENCH_BATCH_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(4);
        // cargo passes `--bench`; the first other argument is a row filter.
        let filter = std::env::args().skip(1).find(|a| !a.starts_with("--"));
        Bench {
            batch: Duration::from_millis(ms),
            filter,
            rows: Vec::new(),
            memcpy: BTreeMap::new(),
            floor: BTreeMap::new(),
        }
    }

    /// The yardstick for `bytes`: a copy between two hot, page-aligned buffers, the copy the bounce
    /// path performs (pool slots and, in the model, guest RAM are page-aligned). Beside it, labelled,
    /// the same copy with the destination 16 bytes past a page boundary (the case heap `Vec`s hit
    /// by chance, a slow `rep movsb` on some CPUs) and, for from-device mappings, the floor of a
    /// zero-fill at map plus the copy back at unmap.
    fn memcpy(&mut self, bytes: usize) -> Sample {
        if let Some(s) = self.memcpy.get(&bytes) {
            return *s;
        }
        let src = PageBuf::with(&pattern(bytes, 7), 0);
        let mut dst = PageBuf::with(&vec![0u8; bytes], 0);
        let s = measure(self.batch, &mut || {
            black_box(dst.bytes()).copy_from_slice(black_box(src.bytes_ref()));
        });
        self.memcpy.insert(bytes, s);
        self.rows.push(Row { case: "memcpy".into(), bytes, sample: s });
        let mut odd = PageBuf::with(&vec![0u8; bytes], 16);
        let u = measure(self.batch, &mut || {
            black_box(odd.bytes()).copy_from_slice(black_box(src.bytes_ref()));
        });
        self.rows.push(Row { case: "memcpy, dst 16 B past a page (unaligned)".into(), bytes, sample: u });
        let mut slot = PageBuf::with(&vec![0u8; bytes], 0);
        let f = measure(self.batch, &mut || {
            black_box(slot.bytes()).fill(0);
            black_box(dst.bytes()).copy_from_slice(black_box(slot.bytes_ref()));
        });
        self.floor.insert(bytes, f);
        self.rows.push(Row { case: "memset+memcpy (from-device floor)".into(), bytes, sample: f });
        s
    }

    /// Time one operation on `bytes` bytes and add it to the table (unless filtered out: `None`).
    fn row(&mut self, case: &str, bytes: usize, mut op: impl FnMut()) -> Option<Sample> {
        if let Some(f) = &self.filter {
            if !format!("{case} {}", size_label(bytes)).contains(f.as_str()) {
                return None;
            }
        }
        self.memcpy(bytes);
        let sample = measure(self.batch, &mut op);
        self.rows.push(Row { case: case.to_string(), bytes, sample });
        Some(sample)
    }

    /// The ratio of a sample to the from-device floor (memset + memcpy) of its size.
    fn floor_ratio(&self, s: Sample, bytes: usize) -> f64 {
        self.floor.get(&bytes).map_or(f64::NAN, |m| s.median / m.median)
    }

    /// The ratio of a sample to the (page-aligned) memcpy of its size.
    fn ratio(&self, s: Sample, bytes: usize) -> f64 {
        self.memcpy.get(&bytes).map_or(f64::NAN, |m| s.median / m.median)
    }

    fn print(&self) {
        // The case column is as wide as the longest case, so new rows never break the alignment.
        let w = self.rows.iter().map(|r| r.case.len()).max().unwrap_or(0).max(4);
        println!(
            "{:<w$} {:>7} {:>11} {:>21} {:>8}",
            "case", "size", "median ns", "min..max ns", "x aligned memcpy"
        );
        let mut rows: Vec<&Row> = self.rows.iter().collect();
        // memcpy first within each size, the rest in the order they were measured.
        rows.sort_by_key(|r| (r.bytes, !r.case.starts_with("mem")));
        for r in rows {
            println!(
                "{:<w$} {:>7} {:>11.1} {:>21} {:>8.2}",
                r.case,
                size_label(r.bytes),
                r.sample.median,
                format!("{:.1}..{:.1}", r.sample.min, r.sample.max),
                self.ratio(r.sample, r.bytes)
            );
        }
    }
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

/// A confidential pseries guest with one 16 MiB pool, one device, and a private buffer of 64 KiB above
/// 4 GiB: without IOMMU (every map bounces: `BounceAlways`) or behind the modelled TCE IOMMU.
struct Fixture {
    layer: DmaLayer<'static, &'static Hypervisor>,
    dev: ccdma::Device,
    hv: &'static Hypervisor,
    buf_phys: u64,
}

impl Fixture {
    const BUF: usize = 64 << 10;

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
    fn iommu(policy: IommuPolicy, bits: u32, verify: VerifyPolicy, expect: DmaPath) -> Fixture {
        let hv = model(HvConfig::pseries(6 * GIB));
        hv.enable_iommu(TceConfig::default());
        hv.add_iommu_device(1, bits);
        let mut layer = DmaLayer::new(hv);
        add_pool(&mut layer, MID_POOL, 16 * MIB, PoolConfig::default()).expect("pool");
        let list = hv.alloc(4096, Region::Low);
        let cfg = IommuConfig {
            policy,
            verify,
            use_ddw: true,
            max_domains: 1,
            batching: ccdma::TceBatching::SharedPage(PhysAddr(list)),
        };
        // SAFETY: the list page is a fresh allocation nothing else uses.
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
        let buf_phys = hv.alloc(Self::BUF as u64, Region::High);
        hv.memory().write(buf_phys, &pattern(Self::BUF, 3));
        Fixture { layer, dev, hv, buf_phys }
    }

    /// One map and unmap of the first `len` bytes of the buffer through the safe face.
    fn map_unmap(&self, len: usize, dir: DmaDirection) {
        // SAFETY: the fixture's own buffer from `hv.alloc`; this slice is the only one alive (each call
        // makes and drops its own).
        let buf = unsafe { self.hv.slice_mut(self.buf_phys, len) };
        let m = self.layer.map(&self.dev, black_box(buf), dir, DmaAttrs::NONE).expect("map");
        black_box(m.bus_addr());
        m.unmap().expect("unmap");
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
    let bounce = Fixture::bounce();

    let mut aims = Vec::new();
    for bytes in [4096, 64 << 10] {
        for dir in [DmaDirection::ToDevice, DmaDirection::FromDevice, DmaDirection::Bidirectional] {
            let case = format!("bounce map+unmap {}", dir_name(dir));
            let Some(s) = bench.row(&case, bytes, || bounce.map_unmap(bytes, dir)) else { continue };
            match dir {
                DmaDirection::ToDevice => {
                    let limit = if bytes == 4096 { 2.0 } else { 1.3 };
                    let what = format!(
                        "{} to-device map+unmap within {limit}x of the aligned memcpy",
                        size_label(bytes)
                    );
                    aims.push((what, bench.ratio(s, bytes), limit));
                }
                DmaDirection::FromDevice => {
                    let what = format!(
                        "{} from-device map+unmap within 1.2x of the memset+memcpy floor",
                        size_label(bytes)
                    );
                    aims.push((what, bench.floor_ratio(s, bytes), 1.2));
                }
                DmaDirection::Bidirectional => {}
            }
        }
    }
    // Rows for other paths (IOMMU premapped/strict, scatter-gather) go here: one `bench.row` each.
    let iommu = [
        ("iommu premap DDW", IommuPolicy::Premapped, 64, VerifyPolicy::Ends, DmaPath::IommuDdw),
        ("iommu premap window", IommuPolicy::Premapped, 32, VerifyPolicy::Ends, DmaPath::IommuPremapped),
        ("iommu strict+readback", IommuPolicy::Strict, 32, VerifyPolicy::Ends, DmaPath::IommuStrict),
        ("iommu strict", IommuPolicy::Strict, 32, VerifyPolicy::Off, DmaPath::IommuStrict),
    ];
    for (name, policy, bits, verify, path) in iommu {
        let f = Fixture::iommu(policy, bits, verify, path);
        for bytes in [4096, 64 << 10] {
            let dir = DmaDirection::ToDevice;
            bench.row(&format!("{name} map+unmap {}", dir_name(dir)), bytes, || f.map_unmap(bytes, dir));
        }
        f.check_clean();
    }

    let sg_notes = sg_rows::rows(&mut bench);

    bounce.check_clean();
    println!("ccdma streaming DMA: bounce path (confidential pseries model, BounceAlways, 2 KiB slots)");
    bench.print();
    println!(
        "iommu rows: the same guest with the device behind the modelled TCE IOMMU (pool premapped in a DDW or \
         the default window: no hypercall per map; strict: entries written and cleared per map, a model \
         hypercall being far cheaper than a real one)"
    );
    for note in sg_notes {
        println!("{note}");
    }
    for (what, r, limit) in aims {
        println!("aim: {what}: {r:.2}x -> {}", if r <= limit { "met" } else { "MISSED" });
    }
}
