//! Issue 20: capacities that set a small layer's size, met by hostile input.
//!
//! - `AREAS` (the last parameter of `DmaLayer`) bounds each pool's areas: a `PoolConfig` asking for
//!   more is clamped to it (fewer locks, the same slots), one outside 1..=`MAX_AREAS` is refused with
//!   nothing shared.
//! - A layer with no IOMMU domain (`DOMAINS` = 0) has no IOMMU part: enabling the IOMMU, attaching a
//!   device that sits behind one, and reserving bus space are refused, with nothing shared, taken
//!   or left behind.
//! - Global bus reservations are one per domain slot (`DOMAINS` of them).

use ccdma::iommu::{BusRange, IommuError, TceBatching};
use ccdma::{
    DeviceConfig, DmaDirection, DmaError, DmaLayer, DmaMask, DmaPath, IommuConfig, PhysAddr, PoolConfig,
    SlotMeta, MAX_AREAS,
};
use ccdma_hv_model::{HvConfig, Hypervisor, Region, TceConfig};
use ccdma_tests::{assert_no_faults, model, GIB, MIB, MID_POOL};

type Plat = &'static Hypervisor;
/// One pool of at most two areas, no IOMMU domain.
type TwoAreas = DmaLayer<'static, Plat, 1, 0, 2>;

const SLOT: usize = 2048;
const RUN: usize = 8;

#[test]
fn a_pool_asking_more_areas_than_the_layer_holds_gets_the_capacity_and_every_slot() {
    let hv = model(HvConfig::pseries(6 * GIB));
    let mut layer = TwoAreas::with_capacity(hv);
    // 1 MiB of 2 KiB slots in runs of at most 8: 64 segments, room for every area asked.
    let cfg = PoolConfig { max_run_slots: RUN, areas: MAX_AREAS, ..PoolConfig::default() };
    let meta = vec![SlotMeta::EMPTY; cfg.slots_for(MIB as usize)].leak();
    // SAFETY: the model never hands this range out; the layer owns it from here.
    let i = unsafe { layer.add_pool(PhysAddr(MID_POOL), MIB as usize, meta, cfg) };
    assert_eq!(i, Ok(0));
    {
        let (pool, _) = layer.pool(0).unwrap();
        assert_eq!((pool.areas(), pool.slots()), (2, 512), "clamped to the layer's two areas");
    }

    let dev = layer.attach(DeviceConfig::new(1, DmaMask::BITS_32)).unwrap();
    assert_eq!(dev.path(), DmaPath::BounceAlways);
    let d = hv.add_device(1, 32);
    let phys = hv.alloc((RUN * SLOT) as u64, Region::High);
    // Every slot of the pool can be had: 64 runs of 8 slots, then nothing.
    let mut live = Vec::new();
    for k in 0..512 / RUN {
        // SAFETY: the buffer is this program's and nothing writes it while mapped (to-device).
        let bus = unsafe { layer.on(&dev).map_phys(PhysAddr(phys), RUN * SLOT, DmaDirection::ToDevice) }
            .unwrap_or_else(|e| panic!("run {k} of 64: {e}"));
        live.push(bus);
    }
    assert_eq!(layer.stats().slots_in_use, 512);
    // SAFETY: as above.
    let full = unsafe { layer.on(&dev).map_phys(PhysAddr(phys), SLOT, DmaDirection::ToDevice) };
    assert!(matches!(full, Err(DmaError::PoolExhausted { .. })), "{full:?}");
    for bus in live {
        assert!(d.read(bus.0, 16).is_ok());
        // SAFETY: this program's raw mapping of `dev`, unmapped once.
        unsafe { layer.on(&dev).unmap(bus, RUN * SLOT, DmaDirection::ToDevice) }.unwrap();
    }
    assert_eq!(layer.stats().slots_in_use, 0);
    layer.detach(dev).unwrap();
    layer.release_pools().unwrap();
    assert_eq!(hv.shared_pages(), 0);
    assert_no_faults(hv);
}

#[test]
fn area_counts_outside_one_to_max_areas_are_refused_with_nothing_shared() {
    let hv = model(HvConfig::pseries(6 * GIB));
    let mut layer = TwoAreas::with_capacity(hv);
    for areas in [0, MAX_AREAS + 1, usize::MAX] {
        let cfg = PoolConfig { areas, ..PoolConfig::default() };
        let meta = vec![SlotMeta::EMPTY; 512].leak();
        // SAFETY: refused, so never used.
        let e = unsafe { layer.add_pool(PhysAddr(MID_POOL), MIB as usize, meta, cfg) };
        assert_eq!(e, Err(DmaError::InvalidAreas(areas)));
        assert_eq!(hv.shared_pages(), 0);
    }
    assert_eq!(layer.pools().count(), 0);
}

#[test]
fn a_layer_without_domains_refuses_every_iommu_call_and_leaves_nothing_behind() {
    let hv = model(HvConfig::pseries(6 * GIB));
    hv.enable_iommu(TceConfig::default());
    let mut layer = TwoAreas::with_capacity(hv);
    let meta = vec![SlotMeta::EMPTY; 512].leak();
    // SAFETY: the model never hands this range out; the layer owns it from here.
    unsafe { layer.add_pool(PhysAddr(MID_POOL), MIB as usize, meta, PoolConfig::default()) }.unwrap();
    let pool_pages = MIB / 4096;
    assert_eq!(hv.shared_pages(), pool_pages);
    let list = hv.alloc(4 * 4096, Region::Low);
    let configs = [
        IommuConfig::premapped(),
        IommuConfig::strict(), // list pages from the pool: none may be taken
        IommuConfig::strict().with_batching(TceBatching::PerCpuPages { first: PhysAddr(list), count: 4 }),
        IommuConfig::strict().with_batching(TceBatching::SharedPage(PhysAddr(list))),
        IommuConfig::premapped().with_max_domains(0),
        IommuConfig::premapped().with_max_domains(1),
    ];
    for cfg in configs {
        // SAFETY: the list pages are a fresh allocation the test never touches.
        let e = unsafe { layer.enable_iommu(cfg, vec![BusRange::EMPTY; 64].leak()) };
        assert_eq!(e, Err(DmaError::InvalidMaxDomains(cfg.max_domains)), "{cfg:?}");
        assert_eq!(hv.shared_pages(), pool_pages, "{cfg:?} shared a list page");
        assert_eq!(layer.stats().slots_in_use, 0, "{cfg:?} took pool slots");
    }
    // A device behind the IOMMU has no path; one the platform does not put behind it still attaches.
    hv.add_iommu_device(1, 32);
    assert_eq!(layer.attach(DeviceConfig::new(1, DmaMask::BITS_32)).unwrap_err(), DmaError::IommuNotEnabled);
    assert_eq!(layer.reserve_bus_range(0x1000, 0x1000), Err(DmaError::IommuNotEnabled));
    assert_eq!(layer.live_bus_ranges(), 0);
    assert_eq!(layer.stats().slots_in_use, 0);
    // The refused attach left its id free: a retry is refused the same way, not as a duplicate.
    assert_eq!(layer.attach(DeviceConfig::new(1, DmaMask::BITS_32)).unwrap_err(), DmaError::IommuNotEnabled);
    layer.release_pools().unwrap();
    assert_eq!(hv.shared_pages(), 0);
    assert_no_faults(hv);
}

#[test]
fn global_reservations_are_one_per_domain_slot() {
    let hv = model(HvConfig::pseries(6 * GIB));
    hv.enable_iommu(TceConfig::default());
    let mut two = DmaLayer::<'static, Plat, 1, 2, 2>::with_capacity(hv);
    let meta = vec![SlotMeta::EMPTY; 512].leak();
    // SAFETY: the model never hands this range out; the layer owns it from here.
    unsafe { two.add_pool(PhysAddr(0x80_0000), MIB as usize, meta, PoolConfig::default()) }.unwrap();
    // SAFETY: no list page (per-entry calls).
    unsafe {
        two.enable_iommu(IommuConfig::premapped().with_max_domains(2), vec![BusRange::EMPTY; 16].leak())
    }
    .unwrap();
    hv.add_iommu_device(1, 32);
    let dev = two.attach(DeviceConfig::new(1, DmaMask::BITS_32)).unwrap();
    let mut ranges = [BusRange::EMPTY; 16];
    let before = two.bus_ranges_of(&dev, &mut ranges);
    two.reserve_bus_range(0xf000_0000, 0x1000).unwrap();
    two.reserve_bus_range(0xf100_0000, 0x1000).unwrap();
    let after = two.bus_ranges_of(&dev, &mut ranges);
    assert_eq!(after, before + 2);
    let snapshot = ranges[..after].to_vec();
    // A third is more than two domain slots keep: refused, nothing changed.
    assert_eq!(
        two.reserve_bus_range(0xf200_0000, 0x1000),
        Err(DmaError::Iommu(IommuError::BusSpaceExhausted))
    );
    assert_eq!(two.bus_ranges_of(&dev, &mut ranges), after);
    assert_eq!(&ranges[..after], &snapshot[..]);
    let m = two.on(&dev).map_to_device(&[5u8; 64]).unwrap();
    m.unmap().unwrap();
    two.detach(dev).unwrap();
    assert_no_faults(hv);
}
