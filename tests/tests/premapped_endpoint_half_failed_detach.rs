//! Review of issue 21 (premapped maps no longer counted in the domain): two devices of one endpoint
//! share a premapped domain (default window or DDW). What stands between a live premapped mapping
//! and its window being taken down is the device's own count and the domain's state:
//!
//! - the first device of the endpoint goes while the other still has a mapping live: the window
//!   keeps every entry and the mapping still reads back through it;
//! - the last device's detach fails part way (a read-back of the clear fails): the domain is
//!   DETACHING, the device's maps are refused on the inline premapped path (`premapped_view` reads
//!   the slot's state, not the device's path alone), a third device of the endpoint cannot join it,
//!   and nothing is left mapped or counted live;
//! - the retried detach completes: no entry, no window, no slot, no fault; the endpoint serves a
//!   new device afterwards.
//!
//! Fail-first (checked once by mutation): with `premapped_view`'s `slot.info(d.generation)?` removed,
//! the map in DETACHING succeeds into a window that may miss the pool.

mod iommu_support;

use ccdma::{
    BusAddr, DeviceConfig, DmaAttrs, DmaDirection, DmaError, DmaMask, DmaPath, IommuPolicy, PhysAddr,
};
use ccdma_hv_model::{CallKind, Injection, Region};
use ccdma_tests::*;
use iommu_support::*;

const BRIDGE: u32 = 7;

fn map_raw(g: &IommuGuest, dev: &ccdma::Device, seed: u64) -> Result<u64, DmaError> {
    let phys = g.hv.alloc(4096, Region::High);
    g.hv.memory().write(phys, &pattern(4096, seed));
    // SAFETY: a fresh allocation of this test, untouched until the mapping ends.
    unsafe { g.layer.map_phys(dev, PhysAddr(phys), 4096, DmaDirection::ToDevice, DmaAttrs::NONE) }
        .map(|b| b.0)
}

fn unmap_raw(g: &IommuGuest, dev: &ccdma::Device, bus: u64) {
    // SAFETY: a raw mapping this test made on `dev`, unmapped once.
    unsafe { g.layer.unmap(dev, BusAddr(bus), 4096, DmaDirection::ToDevice, DmaAttrs::NONE) }.unwrap();
}

fn run(bits: u32, ddw: bool, expect: DmaPath) {
    let mut opts = Opts::new(IommuPolicy::Premapped);
    opts.ddw = ddw;
    let mut g = iommu_guest(opts);
    for id in 1..=3 {
        g.hv.add_iommu_device_on_bridge(id, bits, BRIDGE);
    }
    let cfg = |id| DeviceConfig::new(id, DmaMask::new(bits).unwrap());
    let a = g.layer.attach(cfg(1)).unwrap();
    let b = g.layer.attach(cfg(2)).unwrap();
    assert_eq!((g.layer.path_of(&a), g.layer.path_of(&b)), (expect, expect));
    let base = g.hv.tce_counters();
    assert!(base.live_entries > 0, "the pool is premapped");

    // b keeps a mapping live while a, the first of the endpoint, goes.
    let live = map_raw(&g, &b, 21).unwrap();
    assert_eq!((a.live(), b.live()), (0, 1));
    g.layer.detach(a).unwrap();
    assert_eq!(g.hv.tce_counters().live_entries, base.live_entries, "a's detach changed the window");
    assert_eq!(g.hv.device(2).read(live, 4096).unwrap(), pattern(4096, 21), "b's mapping lost");
    assert_eq!(g.layer.stats().slots_in_use, 2);
    let r = g.layer.detach(b).unwrap_err();
    assert_eq!(r.error, DmaError::Busy { live: 1 });
    let b = r.value;
    assert_eq!(g.hv.tce_counters().live_entries, base.live_entries, "a refused detach changed the window");
    unmap_raw(&g, &b, live);

    // The last detach fails part way: the domain is DETACHING.
    let gets = g.hv.calls().count(CallKind::GetTce);
    g.hv.calls().inject_at(CallKind::GetTce, gets + 1, Injection::Fail(-1));
    let r = g.layer.detach(b).unwrap_err();
    assert!(matches!(r.error, DmaError::Iommu(_)), "{:?}", r.error);
    let b = r.value;
    let shared = g.hv.shared_pages();
    assert_eq!(map_raw(&g, &b, 22), Err(DmaError::DetachIncomplete), "a map went into a half-cleared window");
    let mut buf = pattern(4096, 23);
    let safe = g.layer.map(&b, &mut buf, DmaDirection::ToDevice, DmaAttrs::NONE).map(|_| ());
    assert_eq!(safe, Err(DmaError::DetachIncomplete));
    assert_eq!(b.live(), 0);
    assert_eq!(g.layer.stats().slots_in_use, 0, "a refused map kept a slot");
    assert_eq!(g.hv.shared_pages(), shared, "a refused map shared a page");
    // A third device of the endpoint may not join a domain half taken down (its id stays free).
    assert_eq!(g.layer.attach(cfg(3)).unwrap_err(), DmaError::DetachIncomplete);
    assert_eq!(g.layer.disable_iommu(), Err(DmaError::DomainsInUse));
    assert_eq!(g.layer.release_pools(), Err(DmaError::DomainsInUse));

    // The retry completes: nothing of the domain is left.
    g.layer.detach(b).unwrap();
    let t = g.hv.tce_counters();
    assert_eq!((t.live_entries, t.ddws), (0, 0), "the retried detach left entries or windows: {t:?}");
    assert!(g.hv.reachable(2).is_empty());

    // The endpoint serves a new device afterwards, premapped again.
    let c = g.layer.attach(cfg(3)).unwrap();
    assert_eq!(g.layer.path_of(&c), expect);
    let bus = map_raw(&g, &c, 24).unwrap();
    assert_eq!(g.hv.device(3).read(bus, 4096).unwrap(), pattern(4096, 24));
    unmap_raw(&g, &c, bus);
    g.layer.detach(c).unwrap();
    assert_eq!(g.hv.tce_counters().live_entries, 0);
    g.layer.disable_iommu().unwrap();
    g.layer.release_pools().unwrap();
    assert_eq!(g.layer.stats().slots_in_use, 0);
    assert_eq!(g.hv.tces_to_private(), 0);
    assert_no_faults(g.hv);
}

#[test]
fn default_window_endpoint_half_failed_detach_then_retry() {
    run(32, false, DmaPath::IommuPremapped);
}

#[test]
fn ddw_endpoint_half_failed_detach_then_retry() {
    run(64, true, DmaPath::IommuDdw);
}
