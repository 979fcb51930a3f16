//! Pool growth behind a native range IOMMU backend ([`ccdma::iommu::IommuBackend`], as the x86 kernel
//! has over virtio-iommu), premapped policy, with a 32-bit and a 64-bit device attached before any
//! pool grows. Every assertion on the IOMMU is made on the backend's own record (its request log and
//! the ranges it has mapped now) and on the model's device DMA, not only on the layer's answers:
//!
//! 1. a workload needing four times the initial pool grows pools that each device's domain maps
//!    (one contiguous range per pool per domain), and the devices' DMA through them is exact;
//! 2. idle grown pools are unmapped from every domain, made private, handed back; counters return to
//!    their baseline;
//! 3. a map failure while a new pool enters a domain rolls the growth back (nothing published, nothing
//!    mapped, memory private and returned, or kept shared and counted); an unmap failure at shrink
//!    keeps the pool out of the source, counted.

mod native_support;

use ccdma::{
    Device, DeviceConfig, DmaAttrs, DmaDirection, DmaError, DmaLayer, DmaMask, DmaPath, GrowthConfig,
};
use ccdma_hv_model::{ModelSource, PAGE};
use ccdma_tests::*;
use native_support::{native_layer, native_platform, MapFault, NativePlatform, Request};

/// The initial (fixed) pool.
const INITIAL: u64 = MIB;
/// The memory source's region.
const SOURCE_AT: u64 = 0x2000_0000;
const SOURCE_LEN: u64 = 64 * MIB;
const CHUNK: usize = 64 * 1024;
const IDLE_TICKS: u32 = 3;

type NativeLayer = DmaLayer<'static, &'static NativePlatform>;

/// One guest: the platform, its layer, the source, the two devices, and what was there before growth.
struct Guest {
    p: &'static NativePlatform,
    layer: NativeLayer,
    src: &'static ModelSource<'static>,
    devs: Vec<Device>,
    base: Baseline,
}

/// The state with no grown pool.
#[derive(Debug, PartialEq, Eq)]
struct Baseline {
    layer_shared: u64,
    model_shared: u64,
    live_tces: u64,
    /// Per device: the ranges the backend has mapped for it.
    mapped: Vec<Vec<(u64, u64, u64)>>,
}

fn grown_phys(phys: u64) -> bool {
    (SOURCE_AT..SOURCE_AT + SOURCE_LEN).contains(&phys)
}

impl Guest {
    fn new() -> Guest {
        let p = native_platform(2 * GIB);
        let mut layer = native_layer(p, INITIAL, ccdma::IommuConfig::premapped().with_ddw(false));
        let src: &'static ModelSource<'static> =
            Box::leak(Box::new(ModelSource::new(p.hv, SOURCE_AT, SOURCE_LEN)));
        layer
            .enable_growth(src, GrowthConfig { idle_ticks: IDLE_TICKS, ..GrowthConfig::new(MIB as usize, 8) })
            .unwrap();
        let mut devs = Vec::new();
        for (id, bits) in [(1, 32), (2, 64)] {
            p.hv.add_iommu_device(id, bits);
            let dev = layer.attach(DeviceConfig::new(id, DmaMask::new(bits).unwrap())).unwrap();
            assert_eq!(layer.path_of(&dev), DmaPath::IommuPremapped);
            devs.push(dev);
        }
        let mut g = Guest { p, layer, src, devs, base: Baseline::default_empty() };
        g.base = g.now();
        assert_eq!(g.layer.growth_stats().grown, 0);
        assert!(g.base.mapped.iter().all(|m| m.len() == 1 && !grown_phys(m[0].2)), "{:?}", g.base);
        g
    }

    fn liobn(&self, dev: &Device) -> u32 {
        self.p.liobn_of(dev.config().id)
    }

    fn now(&self) -> Baseline {
        Baseline {
            layer_shared: self.layer.stats().shared_pages,
            model_shared: self.p.hv.shared_pages(),
            live_tces: self.layer.iommu_stats().live_tces,
            mapped: self.devs.iter().map(|d| self.p.mapped(self.liobn(d))).collect(),
        }
    }

    /// The grown pools' ranges mapped for `dev` now, as `(bus, npages, phys)`.
    fn grown_ranges(&self, dev: &Device) -> Vec<(u64, u64, u64)> {
        self.p.mapped(self.liobn(dev)).into_iter().filter(|r| grown_phys(r.2)).collect()
    }

    /// `total` bytes in `CHUNK` mappings spread over both devices, all live at once: even ones to the
    /// device (it reads them through its bus address and must see the bytes), odd ones from it (it
    /// writes a pattern; after unmap the buffer must hold it). Returns `(device, bus)` of every map,
    /// or the first error (everything mapped so far unmapped and checked).
    fn workload(&self, total: usize) -> Result<Vec<(u32, u64)>, DmaError> {
        let n = total / CHUNK;
        let mut bufs: Vec<Vec<u8>> =
            (0..n).map(|k| if k % 2 == 0 { pattern(CHUNK, k as u64) } else { vec![0; CHUNK] }).collect();
        let mut maps = Vec::new();
        let mut done = Vec::new();
        let mut err = None;
        for (k, b) in bufs.iter_mut().enumerate() {
            let dev = &self.devs[k % self.devs.len()];
            let model = self.p.hv.device(dev.config().id);
            let dir = if k % 2 == 0 { DmaDirection::ToDevice } else { DmaDirection::FromDevice };
            match self.layer.map(dev, b, dir, DmaAttrs::NONE) {
                Ok(m) => {
                    let bus = m.bus_addr().0;
                    if k % 2 == 0 {
                        assert_eq!(
                            model.read(bus, CHUNK).expect("device reads its mapping"),
                            pattern(CHUNK, k as u64)
                        );
                    } else {
                        model.write(bus, &pattern(CHUNK, k as u64)).expect("device writes its mapping");
                    }
                    done.push((dev.config().id, bus));
                    maps.push(m);
                }
                Err(e) => {
                    err = Some(e);
                    break;
                }
            }
        }
        for m in maps {
            m.unmap().map_err(|r| r.error).expect("unmap");
        }
        for (k, b) in bufs.iter().enumerate().take(done.len()) {
            assert!(*b == pattern(CHUNK, k as u64), "mapping {k} came back wrong");
        }
        match err {
            Some(e) => Err(e),
            None => Ok(done),
        }
    }

    fn shrink_idle(&self) -> usize {
        (0..=IDLE_TICKS).map(|_| self.layer.growth_tick()).sum()
    }

    /// Invariants that hold whatever failed: no page shared twice or made private while mapped, no
    /// device reached private memory, no live entry names private memory, no slot held, the source's
    /// loans are in live pools or kept and counted.
    #[track_caller]
    fn assert_sound(&self, what: &str) {
        let hv = self.p.hv;
        let l = hv.sharing_ledger();
        assert_eq!((l.double_shares, l.unshared_while_mapped), (0, 0), "{what}: ledger {l:?}");
        assert_eq!(hv.private_faults(), 0, "{what}");
        assert_eq!(hv.tces_to_private(), 0, "{what}: a live entry names private memory");
        assert_eq!(self.layer.stats().slots_in_use, 0, "{what}");
        let g = self.layer.growth_stats();
        let s = self.src.counters();
        assert_eq!(s.bytes_out, g.bytes + g.kept_bytes, "{what}: source {s:?} vs growth {g:?}");
        assert_eq!((s.bad_gives, s.returned_shared), (0, 0), "{what}: source misuse {s:?}");
        // The native backend took every request: the layer made no TCE hypercall.
        assert_eq!(self.layer.iommu_stats().tce_hypercalls(), 0, "{what}");
    }
}

impl Baseline {
    fn default_empty() -> Baseline {
        Baseline { layer_shared: 0, model_shared: 0, live_tces: 0, mapped: Vec::new() }
    }
}

#[test]
fn pools_grown_after_attach_are_mapped_into_every_domain_and_carry_exact_dma() {
    let g = Guest::new();
    let log_at_attach = g.p.log().len();
    let maps = g.workload(4 * INITIAL as usize).expect("growth serves four times the initial pool");
    let gs = g.layer.growth_stats();
    assert!(gs.grown >= 3 && gs.pools == gs.grown && gs.failed == 0, "{gs:?}");
    let log = g.p.log();
    let mut pools_seen = Vec::new();
    for dev in &g.devs {
        let liobn = g.liobn(dev);
        let grown = g.grown_ranges(dev);
        // Every grown pool is mapped into this domain, whole, by one contiguous request made after the
        // device attached.
        assert_eq!(grown.len() as u64, gs.pools, "device {}: {grown:x?}", dev.config().id);
        for &(bus, npages, phys) in &grown {
            assert_eq!(npages * PAGE, MIB, "a whole pool");
            let at = log
                .iter()
                .position(|r| *r == Request::Map { liobn, bus, npages, phys, contiguous: true, ok: true })
                .expect("the backend logged the pool's map");
            assert!(at >= log_at_attach, "the pool was entered after the device attached");
        }
        let mut phys: Vec<u64> = grown.iter().map(|r| r.2).collect();
        phys.sort();
        pools_seen.push(phys);
        // The device's DMA went through the grown pools (the workload checked its bytes exactly).
        let own: Vec<u64> = maps.iter().filter(|m| m.0 == dev.config().id).map(|m| m.1).collect();
        let in_grown = own
            .iter()
            .filter(|&&b| grown.iter().any(|&(bus, n, _)| b >= bus && b + CHUNK as u64 <= bus + n * PAGE))
            .count();
        assert!(
            in_grown >= own.len() / 2,
            "device {}: {in_grown} of {} maps in grown pools",
            dev.config().id,
            own.len()
        );
        // And every map is inside a range the backend mapped for this device.
        let all = g.p.mapped(liobn);
        assert!(own
            .iter()
            .all(|&b| all.iter().any(|&(bus, n, _)| b >= bus && b + CHUNK as u64 <= bus + n * PAGE)));
    }
    assert_eq!(pools_seen[0], pools_seen[1], "both domains map the same grown pools");
    assert_eq!(g.p.hv.shared_pages(), g.base.model_shared + gs.pools * MIB / PAGE);
    assert_no_faults(g.p.hv);
    g.assert_sound("after growth");
}

#[test]
fn idle_grown_pools_are_unmapped_from_every_domain_and_handed_back() {
    let g = Guest::new();
    g.workload(4 * INITIAL as usize).unwrap();
    let gs = g.layer.growth_stats();
    let grown: Vec<_> = g.devs.iter().map(|d| (g.liobn(d), d.config().id, g.grown_ranges(d))).collect();
    let log_before = g.p.log().len();
    assert_eq!(g.shrink_idle() as u64, gs.pools);
    let after = g.layer.growth_stats();
    assert_eq!(
        (after.pools, after.bytes, after.shrunk, after.quarantined_pools),
        (0, 0, gs.pools, 0),
        "{after:?}"
    );
    // The backend's state: every grown range unmapped from every domain, by a request it took.
    let log = g.p.log();
    for (liobn, id, ranges) in &grown {
        for &(bus, npages, _) in ranges {
            assert!(log[log_before..].contains(&Request::Unmap { liobn: *liobn, bus, npages, ok: true }));
            assert!(g.p.hv.device(*id).read(bus, 16).is_err(), "device {id} still reaches {bus:#x}");
        }
    }
    g.p.hv.clear_faults();
    // Private again, back in the source, counters at their baseline.
    assert_eq!(g.now(), g.base);
    let s = g.src.counters();
    assert_eq!((s.bytes_out, s.meta_out, s.ranges_out), (0, 0, 0), "{s:?}");
    g.assert_sound("after shrink");
    // It grows again as well as the first time.
    g.workload(4 * INITIAL as usize).unwrap();
    assert_eq!(g.layer.growth_stats().pools, gs.pools);
}

/// The `nth` map request after set-up refused by the backend. Premapped mappings make no requests, so
/// these are growth's, one per domain per grown pool: 0 and 1 enter the first pool into the two
/// domains, 2 and 3 the second (with the first pool published and mapped).
fn map_fault_at_growth(nth: u64, fault: MapFault) {
    let what = format!("map {nth} fails {fault:?}");
    let g = Guest::new();
    let log_at = g.p.log().len();
    g.p.fail_map_in(nth, fault);
    // The initial pool serves what it can; the growth that follows fails and the map reports it.
    let r = g.workload(4 * INITIAL as usize);
    assert!(matches!(r, Err(DmaError::PoolExhausted { .. })), "{what}: {r:?}");
    // Each growth asks one map per domain: the growths before the failing one were published.
    let published = nth / 2;
    let gs = g.layer.growth_stats();
    assert_eq!(
        (gs.pools, gs.grown, gs.bytes, gs.failed),
        (published, published, published * MIB, 1),
        "{what}: the failed pool is not published: {gs:?}"
    );
    let log = g.p.log();
    let refused: Vec<_> =
        log[log_at..].iter().filter(|r| matches!(r, Request::Map { ok: false, .. })).collect();
    assert_eq!(refused.len(), 1, "{what}: the backend refused one request: {log:?}");
    let Request::Map { phys: failed_phys, .. } = *refused[0] else { unreachable!() };
    // Nothing of the failed pool is mapped in any domain, in the backend's state (what the domains
    // entered before the failure was unmapped again), and no device reaches it; the pools published
    // before it are still mapped in every domain.
    for dev in &g.devs {
        let grown = g.grown_ranges(dev);
        assert_eq!(grown.len() as u64, published, "{what}: {grown:x?}");
        assert!(grown.iter().all(|r| r.2 != failed_phys), "{what}: the failed pool is mapped: {grown:x?}");
    }
    for r in &log[log_at..] {
        if let Request::Map { liobn, bus, phys, .. } = *r {
            if phys == failed_phys {
                let id = g.devs.iter().find(|d| g.liobn(d) == liobn).unwrap().config().id;
                assert!(g.p.hv.device(id).read(bus, 16).is_err(), "{what}: {bus:#x} still translates");
            }
        }
    }
    assert_eq!(g.shrink_idle() as u64, published, "{what}: the published pools shrink");
    assert_eq!(g.now().mapped, g.base.mapped, "{what}");
    let gs = g.layer.growth_stats();
    g.p.hv.clear_faults();
    let s = g.src.counters();
    match fault {
        MapFault::Clean => {
            // Made private and handed back.
            assert_eq!(gs.quarantined_pools, 0, "{what}");
            assert_eq!((s.bytes_out, s.meta_out), (0, 0), "{what}: {s:?}");
            assert_eq!(g.now(), g.base, "{what}");
        }
        MapFault::Dirty => {
            // The backend said the range may translate: the pool stays shared, out of the source,
            // counted.
            assert_eq!((gs.quarantined_pools, gs.kept_bytes), (1, MIB), "{what}: {gs:?}");
            assert_eq!(s.bytes_out, MIB, "{what}: {s:?}");
            assert_eq!(g.p.hv.shared_pages(), g.base.model_shared + MIB / PAGE, "{what}");
        }
    }
    g.assert_sound(&what);
    // The layer grows again once the backend takes requests.
    g.workload(4 * INITIAL as usize).unwrap_or_else(|e| panic!("{what}: after the fault: {e:?}"));
    g.assert_sound(&what);
}

#[test]
fn a_map_failure_entering_a_new_pool_rolls_the_growth_back() {
    for nth in [0, 1, 2, 3] {
        for fault in [MapFault::Clean, MapFault::Dirty] {
            map_fault_at_growth(nth, fault);
        }
    }
}

#[test]
fn an_unmap_failure_at_shrink_keeps_the_pool_out_of_the_source() {
    let g = Guest::new();
    g.workload(4 * INITIAL as usize).unwrap();
    let gs = g.layer.growth_stats();
    let log_at = g.p.log().len();
    g.p.fail_unmap_in(0);
    assert_eq!(g.shrink_idle() as u64, gs.pools - 1, "all but one handed back");
    let after = g.layer.growth_stats();
    assert_eq!((after.pools, after.quarantined_pools, after.kept_bytes), (0, 1, MIB), "{after:?}");
    assert_eq!(after.shrunk, gs.pools - 1);
    // The refused unmap left its range mapped in that domain (the backend's state); the pool stays
    // shared (so no entry names private memory) and out of the source.
    let log = g.p.log();
    let Some(&Request::Unmap { liobn, bus, npages, .. }) =
        log[log_at..].iter().find(|r| matches!(r, Request::Unmap { ok: false, .. }))
    else {
        panic!("no refused unmap: {log:?}")
    };
    let left = g.p.mapped(liobn);
    assert!(left.iter().any(|r| r.0 == bus && r.1 == npages && grown_phys(r.2)), "{left:x?}");
    let grown_left: usize = g.devs.iter().map(|d| g.grown_ranges(d).len()).sum();
    assert_eq!(grown_left, 1, "only the refused range is still mapped");
    assert_eq!(g.src.counters().bytes_out, MIB);
    assert_eq!(g.p.hv.shared_pages(), g.base.model_shared + MIB / PAGE);
    g.assert_sound("unmap refused at shrink");
    // The layer still grows and shrinks around the kept pool.
    g.workload(4 * INITIAL as usize).unwrap();
    g.shrink_idle();
    assert_eq!(g.src.counters().bytes_out, MIB);
    g.assert_sound("after another cycle");
}
