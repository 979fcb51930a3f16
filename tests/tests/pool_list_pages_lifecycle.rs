//! The strict default's list pages (`TceBatching::PoolPages`, issue 21): taken from a fixed pool at
//! `enable_iommu` (no page of the caller's, nothing newly shared), not counted as mappings, given
//! back at `disable_iommu` and at `release_pools`; not taken at all when the platform has no
//! `H_PUT_TCE_INDIRECT` or no pool exists yet (entries then go one `H_PUT_TCE` each).

use ccdma::iommu::{BusRange, DEFAULT_POOL_LIST_PAGES};
use ccdma::{DeviceConfig, DmaAttrs, DmaDirection, DmaLayer, DmaMask, IommuConfig, PhysAddr, PoolConfig};
use ccdma_hv_model::{CallKind, HvConfig, Hypervisor, PageState, Region, TceConfig};
use ccdma_tests::*;

const LEN: usize = 64 << 10;

fn pool_slots(layer: &Layer) -> usize {
    layer.pools().map(|p| p.slots_in_use()).sum()
}

fn hv(indirect: bool) -> &'static Hypervisor {
    let hv = model(HvConfig::pseries(6 * GIB));
    hv.enable_iommu(TceConfig { indirect, ..TceConfig::default() });
    hv.add_iommu_device(1, 32);
    hv
}

fn enable(layer: &mut Layer) {
    // SAFETY: the strict default names no page of the caller's.
    unsafe { layer.enable_iommu(IommuConfig::strict(), vec![BusRange::EMPTY; 256].leak()) }.unwrap();
}

/// One to-device map+unmap of 64 KiB: (H_PUT_TCE, H_PUT_TCE_INDIRECT) it made.
fn round_trip(hv: &'static Hypervisor, layer: &Layer, dev: &ccdma::Device) -> (u64, u64) {
    let buf = hv.alloc(LEN as u64, Region::High);
    hv.memory().write(buf, &pattern(LEN, 9));
    let before = (hv.calls().count(CallKind::PutTce), hv.calls().count(CallKind::PutTceIndirect));
    // SAFETY: the test's own buffer, left alone until unmapped.
    let bus =
        unsafe { layer.map_phys(dev, PhysAddr(buf), LEN, DmaDirection::ToDevice, DmaAttrs::NONE) }.unwrap();
    assert_eq!(hv.device(1).read(bus.0, LEN).unwrap(), pattern(LEN, 9));
    // SAFETY: as above.
    unsafe { layer.unmap(dev, bus, LEN, DmaDirection::ToDevice, DmaAttrs::NONE) }.unwrap();
    (hv.calls().count(CallKind::PutTce) - before.0, hv.calls().count(CallKind::PutTceIndirect) - before.1)
}

#[test]
fn taken_from_the_pool_hidden_from_the_stats_and_given_back_at_disable() {
    let hv = hv(true);
    let mut layer: Layer = DmaLayer::new(hv);
    add_pool(&mut layer, MID_POOL, 16 * MIB, PoolConfig::default()).unwrap();
    let shared = hv.memory().shared_pages();
    enable(&mut layer);
    assert_eq!(hv.memory().shared_pages(), shared, "nothing newly shared");
    assert_eq!(pool_slots(&layer), DEFAULT_POOL_LIST_PAGES * 2, "two 2 KiB slots per list page");
    assert_eq!(layer.stats().slots_in_use, 0, "list pages are no mappings");
    let dev = layer.attach(DeviceConfig::new(1, DmaMask::BITS_32)).unwrap();
    assert_eq!(round_trip(hv, &layer, &dev), (0, 1));
    assert_eq!(hv.tce_counters().unshared_lists, 0);
    layer.detach(dev).unwrap();
    layer.disable_iommu().unwrap();
    assert_eq!(pool_slots(&layer), 0, "given back");
    assert_eq!(hv.memory().state(MID_POOL), PageState::Shared, "the pool stays shared");
    assert_no_faults(hv);
}

#[test]
fn release_pools_gives_them_back_first() {
    let hv = hv(true);
    let mut layer: Layer = DmaLayer::new(hv);
    add_pool(&mut layer, MID_POOL, 16 * MIB, PoolConfig::default()).unwrap();
    enable(&mut layer);
    let dev = layer.attach(DeviceConfig::new(1, DmaMask::BITS_32)).unwrap();
    assert_eq!(round_trip(hv, &layer, &dev), (0, 1));
    layer.detach(dev).unwrap();
    layer.release_pools().unwrap();
    assert_eq!(hv.memory().state(MID_POOL), PageState::Private, "the pool went back, list pages and all");
    // A new pool: the old list pages are gone (private memory now), so entries go one by one.
    add_pool(&mut layer, HIGH_POOL, 16 * MIB, PoolConfig::default()).unwrap();
    let dev = layer.attach(DeviceConfig::new(1, DmaMask::BITS_32)).unwrap();
    assert_eq!(round_trip(hv, &layer, &dev), ((LEN / 4096) as u64, 0));
    assert_eq!(hv.tce_counters().unshared_lists, 0, "no list in memory made private again");
    layer.detach(dev).unwrap();
    layer.disable_iommu().unwrap();
    assert_no_faults(hv);
}

#[test]
fn no_indirect_call_or_no_pool_yet_means_no_list_page() {
    for indirect in [false, true] {
        let hv = hv(indirect);
        let mut layer: Layer = DmaLayer::new(hv);
        if indirect {
            // No pool yet at enable: nothing to take the pages from.
            enable(&mut layer);
            add_pool(&mut layer, MID_POOL, 16 * MIB, PoolConfig::default()).unwrap();
        } else {
            add_pool(&mut layer, MID_POOL, 16 * MIB, PoolConfig::default()).unwrap();
            enable(&mut layer);
        }
        assert_eq!(pool_slots(&layer), 0, "indirect {indirect}");
        let dev = layer.attach(DeviceConfig::new(1, DmaMask::BITS_32)).unwrap();
        assert_eq!(round_trip(hv, &layer, &dev), ((LEN / 4096) as u64, 0), "indirect {indirect}");
        layer.detach(dev).unwrap();
        layer.disable_iommu().unwrap();
        assert_no_faults(hv);
    }
}
