//! Review of issue 21: one premapped domain whose devices map on both routes at once. A deferred
//! device keeps `IommuDeferred` as its path and maps out of line (`iommu_map`); a device that joins
//! the endpoint after the set-up gets the domain's path and maps inline (`premapped_view`). Neither
//! route counts in the domain now, so each device's own count must hold the windows, whichever of
//! the two is the last to go, and a coherent buffer (no streaming count at all) must hold them too.
//!
//! Fail-first (checked once by mutation): with `detach`'s check of the device's own count removed
//! (`DmaLayer::detach_dyn`, `live != 0`), the last detach takes the window down under a live mapping.

mod iommu_support;

use ccdma::{
    BusAddr, DeviceConfig, DmaAttrs, DmaDirection, DmaError, DmaMask, DmaPath, IommuPolicy, PhysAddr,
};
use ccdma_hv_model::Region;
use ccdma_tests::*;
use iommu_support::*;

const BRIDGE: u32 = 5;

fn map_raw(g: &IommuGuest, dev: &ccdma::Device, seed: u64) -> u64 {
    let phys = g.hv.alloc(4096, Region::High);
    g.hv.memory().write(phys, &pattern(4096, seed));
    // SAFETY: a fresh allocation of this test, untouched until the mapping ends.
    unsafe { g.layer.map_phys(dev, PhysAddr(phys), 4096, DmaDirection::ToDevice, DmaAttrs::NONE) }.unwrap().0
}

fn unmap_raw(g: &IommuGuest, dev: &ccdma::Device, bus: u64) {
    // SAFETY: a raw mapping this test made on `dev`, unmapped once.
    unsafe { g.layer.unmap(dev, BusAddr(bus), 4096, DmaDirection::ToDevice, DmaAttrs::NONE) }.unwrap();
}

/// `deferred_last`: the deferred device (out-of-line route) is the last to go, else the joined one
/// (inline route).
fn run(bits: u32, expect: DmaPath, deferred_last: bool) {
    let mut g = iommu_guest(Opts::new(IommuPolicy::Premapped));
    g.hv.add_iommu_device_on_bridge(1, bits, BRIDGE);
    g.hv.add_iommu_device_on_bridge(2, bits, BRIDGE);
    let mask = DmaMask::new(bits).unwrap();
    let a = g.layer.attach(DeviceConfig { deferred_attach: true, ..DeviceConfig::new(1, mask) }).unwrap();
    let bus_a = map_raw(&g, &a, 1);
    let b = g.layer.attach(DeviceConfig::new(2, mask)).unwrap();
    // The domain's path for both; the attach-time path (the route) differs.
    assert_eq!((g.layer.path_of(&a), g.layer.path_of(&b)), (expect, expect));
    assert_eq!((a.path(), b.path()), (DmaPath::IommuDeferred, expect));
    let bus_b = map_raw(&g, &b, 2);
    let base = g.hv.tce_counters();
    assert_eq!((a.live(), b.live()), (1, 1));

    let (first, first_bus, last, last_bus, last_id, last_seed) =
        if deferred_last { (b, bus_b, a, bus_a, 1, 1) } else { (a, bus_a, b, bus_b, 2, 2) };
    let r = g.layer.detach(first).unwrap_err();
    assert_eq!(r.error, DmaError::Busy { live: 1 });
    let first = r.value;
    unmap_raw(&g, &first, first_bus);
    g.layer.detach(first).unwrap();
    // The last device holds the windows with one live mapping of its route.
    assert_eq!(g.hv.tce_counters().live_entries, base.live_entries, "the first detach changed the window");
    assert_eq!(g.hv.device(last_id).read(last_bus, 4096).unwrap(), pattern(4096, last_seed));
    let r = g.layer.detach(last).unwrap_err();
    assert_eq!(r.error, DmaError::Busy { live: 1 });
    let last = r.value;
    assert_eq!(g.hv.tce_counters().live_entries, base.live_entries, "a refused detach changed the window");
    assert_eq!(g.layer.disable_iommu(), Err(DmaError::DomainsInUse));
    unmap_raw(&g, &last, last_bus);

    // A coherent buffer alone holds the windows too.
    let coh = g.hv.alloc(4096, Region::Low);
    // SAFETY: a fresh page of this test, handed to the layer until freed.
    let buf = unsafe { g.layer.alloc_coherent(&last, PhysAddr(coh), 1) }.unwrap();
    let live_entries = g.hv.tce_counters().live_entries;
    let r = g.layer.detach(last).unwrap_err();
    assert_eq!(r.error, DmaError::Busy { live: 1 });
    let last = r.value;
    assert_eq!(g.hv.tce_counters().live_entries, live_entries, "a refused detach changed the window");
    g.layer.free_coherent(&last, buf).unwrap();

    g.layer.detach(last).unwrap();
    let t = g.hv.tce_counters();
    assert_eq!((t.live_entries, t.ddws), (0, 0), "the last detach left entries or windows: {t:?}");
    assert_eq!(g.layer.stats().slots_in_use, 0);
    g.layer.disable_iommu().unwrap();
    g.layer.release_pools().unwrap();
    assert_eq!(g.hv.tces_to_private(), 0);
    assert_no_faults(g.hv);
}

#[test]
fn ddw_joined_device_last() {
    run(64, DmaPath::IommuDdw, false);
}

#[test]
fn ddw_deferred_device_last() {
    run(64, DmaPath::IommuDdw, true);
}

#[test]
fn default_window_joined_device_last() {
    run(32, DmaPath::IommuPremapped, false);
}

#[test]
fn default_window_deferred_device_last() {
    run(32, DmaPath::IommuPremapped, true);
}

/// A layer of fewer pool slots than the default (its domains' set-up results sized by `POOLS`, its
/// calls through the generic code rather than the default capacity's out-of-line copies): the same
/// two routes in one DDW domain, the same refusals.
#[test]
fn a_two_pool_layer_holds_its_windows_by_the_device_counts() {
    use ccdma::{IommuConfig, SlotMeta};
    type Two = ccdma::DmaLayer<'static, &'static ccdma_hv_model::Hypervisor, 2, 2, 2>;
    let hv = model(ccdma_hv_model::HvConfig::pseries(6 * GIB));
    hv.enable_iommu(ccdma_hv_model::TceConfig::default());
    let mut layer = Box::new(Two::with_capacity(hv));
    for phys in [LOW_POOL, HIGH_POOL] {
        let meta = vec![SlotMeta::EMPTY; 512].leak();
        // SAFETY: the model never hands these ranges out; the layer owns them from here.
        unsafe { layer.add_pool(PhysAddr(phys), MIB as usize, meta, ccdma::PoolConfig::default()) }.unwrap();
    }
    let ranges = vec![Default::default(); 64].leak();
    // SAFETY: no list page (per-entry calls).
    unsafe { layer.enable_iommu(IommuConfig::premapped().with_max_domains(2), ranges) }.unwrap();
    hv.add_iommu_device_on_bridge(1, 64, BRIDGE);
    hv.add_iommu_device_on_bridge(2, 64, BRIDGE);
    let map = |dev: &ccdma::Device, seed: u64| {
        let phys = hv.alloc(4096, Region::High);
        hv.memory().write(phys, &pattern(4096, seed));
        // SAFETY: a fresh allocation of this test, untouched until the mapping ends.
        unsafe { layer.map_phys(dev, PhysAddr(phys), 4096, DmaDirection::ToDevice, DmaAttrs::NONE) }
            .unwrap()
            .0
    };
    let unmap = |dev: &ccdma::Device, bus: u64| {
        // SAFETY: a raw mapping this test made on `dev`, unmapped once.
        unsafe { layer.unmap(dev, BusAddr(bus), 4096, DmaDirection::ToDevice, DmaAttrs::NONE) }.unwrap()
    };
    let a = layer.attach(DeviceConfig::new(1, DmaMask::BITS_64).with_deferred_attach(true)).unwrap();
    let bus_a = map(&a, 1);
    let b = layer.attach(DeviceConfig::new(2, DmaMask::BITS_64)).unwrap();
    assert_eq!((a.path(), b.path()), (DmaPath::IommuDeferred, DmaPath::IommuDdw));
    let bus_b = map(&b, 2);
    let base = hv.tce_counters();
    assert_eq!(base.ddws, 1);
    // The deferred device goes first (refused while its mapping lives), the joined one holds on.
    let a = layer.detach(a).unwrap_err().value;
    unmap(&a, bus_a);
    layer.detach(a).unwrap();
    let r = layer.detach(b).unwrap_err();
    assert_eq!(r.error, DmaError::Busy { live: 1 });
    let b = r.value;
    assert_eq!(hv.tce_counters().live_entries, base.live_entries, "a detach changed the window");
    assert_eq!(hv.device(2).read(bus_b, 4096).unwrap(), pattern(4096, 2), "b's mapping lost");
    unmap(&b, bus_b);
    layer.detach(b).unwrap();
    let t = hv.tce_counters();
    assert_eq!((t.live_entries, t.ddws), (0, 0), "the last detach left entries or windows: {t:?}");
    assert_eq!(layer.stats().slots_in_use, 0);
    layer.disable_iommu().unwrap();
    layer.release_pools().unwrap();
    assert_no_faults(hv);
}
