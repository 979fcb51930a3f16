//! Fault-injection sweep over the IOMMU path, once per TCE batching (no list page, per-CPU pages, one
//! shared page): a standard scenario (pool, list pages, three devices on
//! the three paths, strict and premapped maps each way, a coherent buffer, detach, teardown) is run
//! once clean to count the calls of every kind, then once per (call kind, call index) with that one
//! call failing. Every operation that fails must change nothing (or, for a failed unshare, quarantine
//! and count exactly what it could not make private); at every step no live TCE names private memory;
//! at the end every counter is back to its baseline: no live TCE, no slot, no bus range, no shared
//! page except quarantined ones, no device fault on private memory.

mod iommu_support;

use ccdma::iommu::hcall::H_HARDWARE;
use ccdma::iommu::BusRange;
use ccdma::{
    DeviceConfig, DmaAttrs, DmaDirection, DmaError, DmaLayer, DmaMask, DmaPath, IommuConfig, IommuPolicy,
    PhysAddr, PoolConfig, VerifyPolicy,
};
use ccdma_hv_model::{CallKind, HvConfig, Hypervisor, Injection, Region, TceConfig, U_PARAMETER};
use ccdma_tests::*;
use iommu_support::RESERVED;

type Layer = DmaLayer<'static, &'static Hypervisor>;

const KINDS: [CallKind; 9] = [
    CallKind::UvShare,
    CallKind::UvUnshare,
    CallKind::PutTce,
    CallKind::GetTce,
    CallKind::PutTceIndirect,
    CallKind::StuffTce,
    CallKind::DdwQuery,
    CallKind::DdwCreate,
    CallKind::DdwRemove,
];

fn code_for(kind: CallKind) -> i64 {
    match kind {
        CallKind::UvShare | CallKind::UvUnshare => U_PARAMETER,
        _ => H_HARDWARE,
    }
}

/// What must not change when an operation fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Snap {
    live_tces: u64,
    guest_live_tces: u64,
    shared_not_quarantined: u64,
    slots: u64,
    bus_ranges: usize,
    coherent: u64,
}

fn snap(hv: &Hypervisor, layer: &Layer) -> Snap {
    let s = layer.stats();
    assert_eq!(hv.shared_pages(), s.shared_pages, "model and layer disagree on shared pages");
    Snap {
        live_tces: hv.tce_counters().live_entries,
        guest_live_tces: layer.iommu_stats().live_tces,
        shared_not_quarantined: s.shared_pages - s.quarantined_pages,
        slots: s.slots_in_use,
        bus_ranges: layer.live_bus_ranges(),
        coherent: layer.iommu_stats().coherent_buffers,
    }
}

struct Run {
    hv: &'static Hypervisor,
    layer: Layer,
    failed_ops: Vec<String>,
}

impl Run {
    /// Run one operation: on failure it must have changed nothing, unless it failed making pages
    /// private again (then it completed and quarantined them). Returns the result.
    fn op<T>(&mut self, name: &str, f: impl FnOnce(&Layer) -> Result<T, DmaError>) -> Result<T, DmaError> {
        let before = snap(self.hv, &self.layer);
        let r = f(&self.layer);
        let after = snap(self.hv, &self.layer);
        if let Err(e) = &r {
            self.failed_ops.push(format!("{name}: {e}"));
            if !matches!(e, DmaError::UnsharingFailed { .. }) {
                // A clear that worked but could not be read back fails (the guest keeps its record and
                // a retry clears again): the model may then hold fewer entries, never more.
                assert!(after.live_tces <= before.live_tces, "{name} failed ({e}) but added entries");
                let same = Snap { live_tces: before.live_tces, ..after };
                assert_eq!(before, same, "{name} failed ({e}) but changed state");
            }
        }
        assert_eq!(self.hv.tces_to_private(), 0, "after {name}: a live TCE names private memory");
        assert_eq!(self.hv.private_faults(), 0, "after {name}");
        r
    }

    /// [`Self::op_retry`] for an operation that consumes a value and hands it back when refused
    /// (`None` when it was consumed anyway, e.g. a coherent buffer whose pages were quarantined).
    fn op_retry_owned<T>(
        &mut self,
        name: &str,
        value: T,
        f: impl Fn(&Layer, T) -> Result<(), (Option<T>, DmaError)>,
    ) {
        let mut back = None;
        let first = self.op(name, |l| {
            f(l, value).map_err(|(v, e)| {
                back = v;
                e
            })
        });
        match first {
            Ok(()) | Err(DmaError::UnsharingFailed { .. }) => {}
            Err(e) => {
                let v = back.take().unwrap_or_else(|| panic!("{name} refused ({e}) without handing back"));
                self.op(name, |l| f(l, v).map_err(|(_, e)| e))
                    .unwrap_or_else(|e| panic!("{name} retried: {e}"))
            }
        }
    }

    /// An operation that may fail once (the injection is one-shot) and must then succeed.
    fn op_retry(&mut self, name: &str, f: impl Fn(&Layer) -> Result<(), DmaError>) {
        match self.op(name, &f) {
            Ok(()) | Err(DmaError::UnsharingFailed { .. }) => {}
            Err(_) => self.op(name, &f).unwrap_or_else(|e| panic!("{name} retried: {e}")),
        }
    }
}

/// The list pages of the sweep: none, two per-CPU pages, or today's single page.
const BATCHINGS: [&str; 3] = ["per-entry", "per-cpu", "shared-page"];

fn batching(name: &str, list: u64) -> ccdma::TceBatching {
    match name {
        "per-entry" => ccdma::TceBatching::PerEntry,
        "per-cpu" => ccdma::TceBatching::PerCpuPages { first: PhysAddr(list), count: 2 },
        _ => ccdma::TceBatching::SharedPage(PhysAddr(list)),
    }
}

/// The standard scenario; returns the operations that failed and the calls made, per kind.
fn scenario(plan: Option<(CallKind, u64)>, batch: &str) -> (Vec<String>, Vec<(CallKind, u64)>) {
    let hv = model(HvConfig::pseries(6 * GIB));
    hv.enable_iommu(TceConfig { reserved: RESERVED.to_vec(), ..TceConfig::default() });
    for (id, bits) in [(1, 64), (2, 32), (3, 21)] {
        hv.add_iommu_device(id, bits);
    }
    let list = hv.alloc(2 * 4096, Region::Low);
    let src = hv.alloc(3 * 4096, Region::High);
    let dst = hv.alloc(3 * 4096, Region::High);
    let coh = hv.alloc(2 * 4096, Region::Low);
    hv.memory().write(src, &pattern(10_000, 1));
    if let Some((kind, at)) = plan {
        hv.calls().inject_at(kind, at, Injection::Fail(code_for(kind)));
    }
    let mut run = Run { hv, layer: DmaLayer::new(hv), failed_ops: Vec::new() };
    let added = add_pool(&mut run.layer, MID_POOL, 4 * MIB, PoolConfig::default());
    if let Err(e) = added {
        run.failed_ops.push(format!("add_pool: {e}"));
        return finish(run);
    }
    let cfg = IommuConfig {
        policy: IommuPolicy::Premapped,
        verify: VerifyPolicy::Ends,
        use_ddw: true,
        max_domains: 4,
        batching: batching(batch, list),
    };
    // SAFETY: the list pages are a fresh allocation the test never touches.
    if let Err(e) = unsafe { run.layer.enable_iommu(cfg, vec![BusRange::EMPTY; 4 * 64].leak()) } {
        run.failed_ops.push(format!("enable_iommu: {e}"));
        return finish(run);
    }
    let mut devs = Vec::new();
    for (id, bits) in [(1u32, 64u32), (2, 32), (3, 21)] {
        let cfg = DeviceConfig::new(id, DmaMask::new(bits).unwrap());
        if let Ok(d) = run.op(&format!("attach {id}"), |l| l.attach(cfg)) {
            let want = [DmaPath::IommuDdw, DmaPath::IommuPremapped, DmaPath::IommuStrict][id as usize - 1];
            // A failing DDW call degrades the 64-bit device to the default window, never further.
            let path = run.layer.path_of(&d);
            assert!(path == want || (id == 1 && path == DmaPath::IommuPremapped), "device {id}: {path:?}");
            if path != want {
                run.failed_ops
                    .push(format!("attach {id}: degraded to {path:?} ({:?})", run.layer.path_reason(&d)));
            }
            devs.push(d);
        }
    }
    for dev in &devs {
        let id = dev.config().id;
        let d = hv.device(id);
        let to = run.op(&format!("map to {id}"), |l| {
            // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
            unsafe { l.map_phys(dev, PhysAddr(src), 10_000, DmaDirection::ToDevice, DmaAttrs::NONE) }
        });
        if let Ok(bus) = to {
            assert_eq!(d.read(bus.0, 10_000).unwrap(), pattern(10_000, 1));
            run.op_retry(&format!("unmap to {id}"), |l| {
                // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
                unsafe { l.unmap(dev, bus, 10_000, DmaDirection::ToDevice, DmaAttrs::NONE) }
            });
        }
        let from = run.op(&format!("map from {id}"), |l| {
            // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
            unsafe { l.map_phys(dev, PhysAddr(dst), 10_000, DmaDirection::FromDevice, DmaAttrs::NONE) }
        });
        if let Ok(bus) = from {
            d.write(bus.0, &pattern(10_000, 2 + id as u64)).unwrap();
            run.op_retry(&format!("unmap from {id}"), |l| {
                // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
                unsafe { l.unmap(dev, bus, 10_000, DmaDirection::FromDevice, DmaAttrs::NONE) }
            });
            assert_eq!(hv.memory().read(dst, 10_000), pattern(10_000, 2 + id as u64));
        }
        if id == 2 {
            // SAFETY: a fresh allocation handed to the layer until it is freed (or quarantined).
            // One page: entered with one H_PUT_TCE (the other sites use the indirect call).
            let c = run.op("alloc_coherent", |l| unsafe { l.alloc_coherent(dev, PhysAddr(coh), 1) });
            if let Ok(c) = c {
                d.write(c.bus_addr().0, &[7; 4096]).unwrap();
                run.op_retry_owned("free_coherent", c, |l, c| l.free_coherent(dev, c).map_err(free_parts));
            }
        }
    }
    for dev in devs {
        let name = format!("detach {}", dev.config().id);
        run.op_retry_owned(&name, dev, |l, d| l.detach(d).map_err(|r| (Some(r.value), r.error)));
    }
    finish(run)
}

/// A refused free hands the buffer back; a quarantined one does not.
fn free_parts(e: ccdma::FreeError) -> (Option<ccdma::CoherentBuffer>, DmaError) {
    match e {
        ccdma::FreeError::Refused(r) => (Some(r.value), r.error),
        ccdma::FreeError::Quarantined(e) => (None, e),
    }
}

/// Tear down and check the baseline.
fn finish(mut run: Run) -> (Vec<String>, Vec<(CallKind, u64)>) {
    let hv = run.hv;
    if let Err(e) = run.layer.disable_iommu() {
        assert!(matches!(e, DmaError::UnsharingFailed { .. }), "disable_iommu: {e}");
        run.failed_ops.push(format!("disable_iommu: {e}"));
    }
    if let Err(e) = run.layer.release_pools() {
        assert!(matches!(e, DmaError::UnsharingFailed { .. }), "release_pools: {e}");
        run.failed_ops.push(format!("release_pools: {e}"));
    }
    let s = run.layer.stats();
    assert_eq!(hv.tce_counters().live_entries, 0, "live TCEs left");
    assert_eq!(run.layer.iommu_stats().live_tces, 0, "guest counts live TCEs");
    assert_eq!(hv.shared_pages(), s.quarantined_pages, "shared pages other than quarantined ones left");
    assert_eq!(s.slots_in_use, 0);
    assert_eq!(run.layer.live_bus_ranges(), 0);
    assert_eq!(run.layer.iommu_stats().coherent_buffers, 0);
    assert_eq!(hv.private_faults(), 0);
    assert!(hv.faults().is_empty(), "{:?}", hv.faults());
    // A list page is shared before it is used and names shared memory only.
    assert_eq!(hv.tce_counters().unshared_lists, 0);
    assert_eq!(hv.tce_counters().listed_private_entries, 0);
    (run.failed_ops, hv.calls().counts().into_iter().collect())
}

#[test]
fn every_call_site_fails_cleanly() {
    for batch in BATCHINGS {
        let (failed, clean) = scenario(None, batch);
        assert!(failed.is_empty(), "{batch}: clean run failed: {failed:?}");
        let mut runs = 0;
        let mut degraded = 0;
        for kind in KINDS {
            let n = clean.iter().find(|(k, _)| *k == kind).map_or(0, |(_, n)| *n);
            if batch == "per-entry" && kind == CallKind::PutTceIndirect {
                assert_eq!(n, 0, "per-entry batching made an indirect call");
                continue;
            }
            assert!(n > 0, "{batch}: the scenario never calls {kind:?}");
            // Per-entry premapping makes a thousand H_PUT_TCE calls: every one near either end, and a
            // sample between (each one fails the same way).
            let ats: Vec<u64> = if n <= 64 {
                (1..=n).collect()
            } else {
                (1..=16).chain((17..n - 16).step_by((n / 32) as usize)).chain(n - 15..=n).collect()
            };
            for at in ats {
                let (failed, _) = scenario(Some((kind, at)), batch);
                runs += 1;
                // Dynamic windows are optional: a failure while setting one up degrades the 64-bit
                // device to the default window (and a failed removal leaves an empty window,
                // counted); no operation fails. Everything else fails the operation that hit it.
                let only_degraded = failed.iter().all(|f| f.starts_with("attach 1: degraded"));
                if !failed.is_empty() && only_degraded {
                    degraded += 1;
                }
                match kind {
                    CallKind::DdwRemove => assert!(failed.is_empty(), "{batch} {kind:?}#{at}: {failed:?}"),
                    CallKind::DdwQuery | CallKind::DdwCreate => {
                        assert!(!failed.is_empty() && only_degraded, "{batch} {kind:?}#{at}: {failed:?}")
                    }
                    _ => assert!(!failed.is_empty(), "{batch} {kind:?}#{at}: the failure went unnoticed"),
                }
            }
        }
        assert!(runs >= 40 && degraded >= 3, "{batch}: {runs} runs, {degraded} degraded");
        println!("fault sweep ({batch}): {runs} runs, {degraded} degraded to the default window");
    }
}

#[test]
fn a_failed_unshare_quarantines_and_counts() {
    // The coherent buffer's pages cannot be made private: they stay shared, counted, never reused.
    let hv = model(HvConfig::pseries(6 * GIB));
    hv.enable_iommu(TceConfig::default());
    hv.add_iommu_device(2, 32);
    let mut layer: Layer = DmaLayer::new(hv);
    add_pool(&mut layer, MID_POOL, 4 * MIB, PoolConfig::default()).unwrap();
    // SAFETY: no list page.
    unsafe { layer.enable_iommu(IommuConfig::strict(), vec![BusRange::EMPTY; 64].leak()) }.unwrap();
    let dev = layer.attach(DeviceConfig::new(2, DmaMask::BITS_32)).unwrap();
    let coh = hv.alloc(4096, Region::Low);
    // SAFETY: fresh page.
    let c = unsafe { layer.alloc_coherent(&dev, PhysAddr(coh), 1) }.unwrap();
    hv.calls().inject_next(CallKind::UvUnshare, Injection::Fail(U_PARAMETER));
    let e = layer.free_coherent(&dev, c).unwrap_err();
    assert!(
        matches!(e, ccdma::FreeError::Quarantined(DmaError::UnsharingFailed { quarantined: 1, .. })),
        "{e:?}"
    );
    assert_eq!(layer.stats().quarantined_pages, 1);
    assert_eq!(hv.reachable(2).len(), 0, "the quarantined page is out of the window");
    // A second free of the same handle cannot be written: `free_coherent` consumed it.
}
