//! Issue 20: a layer's IOMMU domains sized by its pool slots. Each domain slot keeps its set-up's
//! result (the pools it premapped, in order, and where each sits on the bus): sized by the layer's
//! `POOLS`, not by `MAX_POOLS`, so a one-pool layer with four domains (ffi's `small-layer` with
//! `native-iommu`) saves 64 B a domain. Before that change the size check failed ("DmaLayer<P, 1,
//! 4, 2> is 2944 bytes").
//!
//! The behaviour checks run a layer of fewer pool slots than the default through every set-up a
//! domain has (DDW, default window, strict; deferred and at attach; a second device joining), so a
//! result sized by `POOLS` serves as the default one does.

use std::mem::size_of;

use ccdma::iommu::MAX_DOMAINS;
use ccdma::{
    DeviceConfig, DmaLayer, DmaMask, DmaPath, IommuConfig, PhysAddr, PoolConfig, SlotMeta, MAX_AREAS,
    MAX_POOLS,
};
use ccdma_hv_model::{HvConfig, Hypervisor, TceConfig};
use ccdma_tests::{assert_no_faults, model, pattern, GIB, HIGH_POOL, LOW_POOL, MIB};

type Plat = &'static Hypervisor;

/// `DmaLayer<P, 1, 4, 2>` with a reference as the platform: `guest/src/footprint.rs`'s figure.
const ONE_POOL_FOUR_DOMAINS_BYTES: usize = 2688;

#[test]
fn a_one_pool_layer_with_four_domains_is_no_larger_than_claimed() {
    let size = size_of::<DmaLayer<'static, Plat, 1, 4, 2>>();
    assert!(
        size <= ONE_POOL_FOUR_DOMAINS_BYTES,
        "DmaLayer<P, 1, 4, 2> is {size} bytes, claimed <= {ONE_POOL_FOUR_DOMAINS_BYTES}"
    );
    // Four domains cost less than four times the domains of the default layer's per-pool share.
    let no_domains = size_of::<DmaLayer<'static, Plat, 1, 0, 2>>();
    assert!(size - no_domains <= 4 * 256, "four domains cost {} bytes", size - no_domains);
    // The default is unchanged: the most pools, domains and areas.
    assert_eq!(
        size_of::<DmaLayer<'static, Plat>>(),
        size_of::<DmaLayer<'static, Plat, MAX_POOLS, MAX_DOMAINS, MAX_AREAS>>()
    );
}

type Two = DmaLayer<'static, Plat, 2, 2, 2>;

/// A two-pool, two-domain layer over an IOMMU model: a low pool and a high one.
fn two_pool_layer(hv: Plat, cfg: IommuConfig) -> Box<Two> {
    let mut layer = Box::new(Two::with_capacity(hv));
    for phys in [LOW_POOL, HIGH_POOL] {
        let meta = vec![SlotMeta::EMPTY; 512].leak();
        // SAFETY: the model never hands these ranges out; the layer owns them from here.
        unsafe { layer.add_pool(PhysAddr(phys), MIB as usize, meta, PoolConfig::default()) }.unwrap();
    }
    let ranges = vec![Default::default(); 64].leak();
    // SAFETY: no list page (per-entry calls).
    unsafe { layer.enable_iommu(cfg.with_max_domains(2), ranges) }.unwrap();
    layer
}

/// Map through each of the device's pools in turn (filling the first so the next map takes the
/// other), checking the bytes the device reads and that each bus address lies in the pool's range
/// as `pool_bus_of` reports it.
fn map_through_every_pool(hv: Plat, layer: &Two, dev: &ccdma::Device, id: u32) {
    let order: Vec<usize> = dev.pool_indices().collect();
    assert_eq!(order.len(), 2, "both pools serve the device: {order:?}");
    let bases: Vec<u64> = order.iter().map(|&i| layer.pool_bus_of(dev, i).unwrap().0).collect();
    assert!(bases[0] > bases[1], "pools best first (highest bus first): {order:?} at {bases:x?}");
    let data = pattern(4096, u64::from(id));
    let m = layer.on(dev).map_to_device(&data).unwrap();
    let bus = m.bus_addr().0;
    if layer.path_of(dev) != DmaPath::IommuStrict {
        assert!(bus >= bases[0] && bus < bases[0] + MIB, "first map in the best pool: {bus:#x}");
    }
    assert_eq!(hv.device(id).read(bus, data.len()).unwrap(), data);
    m.unmap().unwrap();
}

#[test]
fn a_layer_of_fewer_pool_slots_sets_up_every_kind_of_domain() {
    // A DDW for a 64-bit device (set up at its first map), the default window for a 32-bit one.
    let hv = model(HvConfig::pseries(6 * GIB));
    hv.enable_iommu(TceConfig::default());
    let layer = two_pool_layer(hv, IommuConfig::premapped());
    hv.add_iommu_device_on_bridge(1, 64, 1);
    hv.add_iommu_device_on_bridge(2, 32, 2);
    let wide = layer.attach(DeviceConfig::new(1, DmaMask::BITS_64).with_deferred_attach(true)).unwrap();
    let narrow = layer.attach(DeviceConfig::new(2, DmaMask::BITS_32)).unwrap();
    assert_eq!(layer.path_of(&wide), DmaPath::IommuDeferred);
    assert_eq!(layer.path_of(&narrow), DmaPath::IommuPremapped);
    map_through_every_pool(hv, &layer, &narrow, 2);
    // The deferred device's first map sets its domain up (a DDW holding both pools).
    let m = layer.on(&wide).map_to_device(&[5u8; 64]).unwrap();
    m.unmap().unwrap();
    assert_eq!(layer.path_of(&wide), DmaPath::IommuDdw);
    // A device that joins a set-up domain gets its order (set at attach, before any map).
    hv.add_iommu_device_on_bridge(3, 64, 1);
    let joined = layer.attach(DeviceConfig::new(3, DmaMask::BITS_64)).unwrap();
    assert_eq!(joined.pool_indices().collect::<Vec<_>>(), {
        let d: &ccdma::Device = &wide;
        let (a, b) = (layer.pool_bus_of(d, 0).unwrap(), layer.pool_bus_of(d, 1).unwrap());
        if a > b {
            vec![0, 1]
        } else {
            vec![1, 0]
        }
    });
    map_through_every_pool(hv, &layer, &joined, 3);
    assert_eq!(hv.tce_counters().ddws, 1);
    for d in [wide, narrow, joined] {
        layer.detach(d).unwrap();
    }
    let c = hv.tce_counters();
    assert_eq!((c.live_entries, c.ddws), (0, 0), "every entry and the DDW gone at the last detach");
    assert_no_faults(hv);
}

#[test]
fn a_layer_of_fewer_pool_slots_maps_strictly() {
    let hv = model(HvConfig::pseries(6 * GIB));
    hv.enable_iommu(TceConfig::default());
    let layer = two_pool_layer(hv, IommuConfig::strict());
    hv.add_iommu_device(1, 32);
    let dev = layer.attach(DeviceConfig::new(1, DmaMask::BITS_32)).unwrap();
    assert_eq!(layer.path_of(&dev), DmaPath::IommuStrict);
    assert_eq!(dev.pool_indices().count(), 2);
    let data = pattern(8192, 9);
    let m = layer.on(&dev).map_to_device(&data).unwrap();
    assert_eq!(hv.device(1).read(m.bus_addr().0, data.len()).unwrap(), data);
    assert!(hv.tce_counters().live_entries > 0);
    m.unmap().unwrap();
    assert_eq!(hv.tce_counters().live_entries, 0);
    layer.detach(dev).unwrap();
    assert_no_faults(hv);
}
