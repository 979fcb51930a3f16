//! Issue 8: one reproducer per soundness defect found by a hostile caller with only the public API,
//! each asserting the fixed behaviour against the model (fault log, counters, memory).

mod iommu_support;

use ccdma::iommu::BusRange;
use ccdma::{
    BusAddr, DeviceConfig, DmaAttrs, DmaDirection, DmaError, DmaLayer, DmaMask, DmaPath, FreeError,
    IommuConfig, IommuPolicy, PhysAddr, PoolConfig,
};
use ccdma_hv_model::{CallKind, HvConfig, Injection, Region, TceConfig};
use ccdma_tests::*;
use iommu_support::*;

const SECRET: u8 = 0x5A;

/// A confidential pseries guest without IOMMU: one pool, one 32-bit device.
fn bounce_guest(
) -> (&'static ccdma_hv_model::Hypervisor, DmaLayer<'static, &'static ccdma_hv_model::Hypervisor>) {
    let hv = model(HvConfig::pseries(6 * GIB));
    let mut layer = DmaLayer::new(hv);
    add_pool(&mut layer, MID_POOL, 4 * MIB, PoolConfig::default()).unwrap();
    (hv, layer)
}

#[test]
fn a_forgotten_mapping_cannot_be_unmapped_through_the_raw_face() {
    let (hv, layer) = bounce_guest();
    let dev = layer.attach(DeviceConfig::new(1, DmaMask::BITS_32)).unwrap();
    let d = hv.add_device(1, 32);
    let phys = hv.alloc(4096, Region::High);
    hv.memory().write(phys, &[SECRET; 4096]);
    // SAFETY: a fresh allocation, only used through this slice.
    let buf = unsafe { hv.slice_mut(phys, 4096) };
    let m = layer.map(&dev, buf, DmaDirection::FromDevice, DmaAttrs::NONE).unwrap();
    let bus = m.bus_addr();
    core::mem::forget(m);
    // The buffer's borrow has ended; the device writes the slot; a raw unmap must not copy back.
    d.write(bus.0, &[1; 4096]).unwrap();
    // SAFETY: deliberately breaking nothing: the raw face must refuse a mapping it does not own.
    let r = unsafe { layer.unmap(&dev, bus, 4096, DmaDirection::FromDevice, DmaAttrs::NONE) };
    assert_eq!(r, Err(DmaError::OwnedByMapping(bus)));
    // SAFETY: as above, for sync.
    let r = unsafe { layer.sync_for_cpu(&dev, bus, 0, 4096, DmaDirection::FromDevice) };
    assert_eq!(r, Err(DmaError::OwnedByMapping(bus)));
    assert_eq!(hv.memory().read(phys, 4096), vec![SECRET; 4096], "no write after the borrow ended");
    // The leak keeps the device busy: detach refuses and hands the device back.
    assert_eq!(dev.live(), 1);
    let refused = layer.detach(dev).unwrap_err();
    assert_eq!(refused.error, DmaError::Busy { live: 1 });
    assert_eq!(refused.value.live(), 1);
    assert_no_faults(hv);
}

#[test]
fn another_device_cannot_unmap_or_sync_a_mapping() {
    let (hv, layer) = bounce_guest();
    let a = layer.attach(DeviceConfig::new(1, DmaMask::BITS_32)).unwrap();
    let b = layer.attach(DeviceConfig::new(2, DmaMask::BITS_32)).unwrap();
    let phys = hv.alloc(4096, Region::High);
    // SAFETY: fresh allocation owned by the test until the unmap below.
    let bus = unsafe { layer.map_phys(&a, PhysAddr(phys), 4096, DmaDirection::FromDevice, DmaAttrs::NONE) }
        .unwrap();
    let wrong = DmaError::WrongDevice { owner: a.serial(), given: b.serial() };
    // SAFETY: the test owns the mapping; the call names it through the wrong device on purpose.
    assert_eq!(unsafe { layer.unmap(&b, bus, 4096, DmaDirection::FromDevice, DmaAttrs::NONE) }, Err(wrong));
    // SAFETY: as above.
    assert_eq!(unsafe { layer.sync_for_cpu(&b, bus, 0, 16, DmaDirection::FromDevice) }, Err(wrong));
    assert_eq!((a.live(), b.live()), (1, 0));
    // SAFETY: the owner ends it.
    unsafe { layer.unmap(&a, bus, 4096, DmaDirection::FromDevice, DmaAttrs::NONE) }.unwrap();
    assert_eq!(layer.stats().slots_in_use, 0);
    layer.detach(a).unwrap();
    layer.detach(b).unwrap();
}

#[test]
fn a_failed_unmap_hands_the_mapping_back_and_a_failed_drop_forgets_the_buffer() {
    let g = iommu_guest(Opts::new(IommuPolicy::Strict));
    let (hv, layer) = (g.hv, &g.layer);
    let dev = g.device(1, 32);
    let phys = hv.alloc(4096, Region::High);
    // SAFETY: fresh allocation, only used through this slice.
    let buf = unsafe { hv.slice_mut(phys, 4096) };
    let m = layer.map(&dev, buf, DmaDirection::FromDevice, DmaAttrs::NONE).unwrap();
    let bus = m.bus_addr();
    hv.device(1).write(bus.0, &[7; 4096]).unwrap();
    // Clearing fails: the mapping comes back, still live, the buffer still borrowed.
    hv.calls().inject_next(CallKind::StuffTce, Injection::Fail(-1));
    let refused = m.unmap().unwrap_err();
    assert!(matches!(refused.error, DmaError::Iommu(_)), "{:?}", refused.error);
    let m = refused.value;
    assert_eq!(m.bus_addr(), bus);
    assert_eq!(dev.live(), 1);
    // A retry succeeds and copies back exactly once.
    m.unmap().unwrap();
    assert_eq!(hv.memory().read(phys, 4096), vec![7; 4096]);
    assert_eq!(dev.live(), 0);

    // Dropped while clearing fails: the record forgets the buffer before the borrow ends.
    hv.memory().write(phys, &[SECRET; 4096]);
    // SAFETY: as above; the previous mapping has ended.
    let buf = unsafe { hv.slice_mut(phys, 4096) };
    let m = layer.map(&dev, buf, DmaDirection::FromDevice, DmaAttrs::NONE).unwrap();
    let bus = m.bus_addr();
    hv.device(1).write(bus.0, &[9; 4096]).unwrap();
    hv.calls().inject_from(CallKind::StuffTce, hv.calls().count(CallKind::StuffTce) + 1, Injection::Fail(-1));
    drop(m);
    let mut orphans = 0;
    layer.pools().for_each(|p| p.for_each_live(|r| orphans += r.orphaned as usize));
    assert_eq!(orphans, 1, "the run stays reserved, marked orphaned");
    assert_eq!(hv.memory().read(phys, 4096), vec![SECRET; 4096], "nothing copied into the ended borrow");
    // SAFETY: nothing of the test's own is named: the raw face must refuse the orphan.
    let r = unsafe { layer.unmap(&dev, bus, 4096, DmaDirection::FromDevice, DmaAttrs::NONE) };
    assert!(r.is_err());
    assert_eq!(hv.memory().read(phys, 4096), vec![SECRET; 4096]);
    assert_eq!(hv.tces_to_private(), 0, "the orphan's entries name only pool memory");
}

#[test]
fn coherent_buffers_are_owned_values_on_every_path() {
    for cfg in [HvConfig::pseries(6 * GIB), HvConfig::tdx(6 * GIB), HvConfig::plain(6 * GIB)] {
        let hv = model(cfg);
        let mut layer = DmaLayer::new(hv);
        add_pool(&mut layer, MID_POOL, 4 * MIB, PoolConfig::default()).unwrap();
        let a = layer.attach(DeviceConfig::new(1, DmaMask::BITS_32)).unwrap();
        let b = layer.attach(DeviceConfig::new(2, DmaMask::BITS_32)).unwrap();
        let coh = hv.alloc(8192, Region::Low);
        let shared = hv.shared_pages();
        // SAFETY: fresh pages handed to the layer.
        let buf = unsafe { layer.alloc_coherent(&a, PhysAddr(coh), 2) }.unwrap();
        let before = layer.iommu_stats();
        assert_eq!(a.live_counts(), ccdma::LiveCounts { mappings: 0, lists: 0, coherent: 1 });
        // Through the wrong device: refused, handed back, nothing changed.
        let Err(FreeError::Refused(r)) = layer.free_coherent(&b, buf) else { panic!("wrong-device free") };
        assert_eq!(r.error, DmaError::WrongDevice { owner: a.serial(), given: b.serial() });
        assert_eq!(layer.iommu_stats(), before);
        // Detach refuses while it lives.
        let a = match layer.detach(a) {
            Err(r) if r.error == DmaError::Busy { live: 1 } => r.value,
            other => panic!("detach with a live coherent buffer: {other:?}"),
        };
        layer.free_coherent(&a, r.value).unwrap();
        assert_eq!(hv.shared_pages(), shared, "pages private again");
        assert_eq!(layer.iommu_stats().coherent_buffers, 0);
        layer.detach(a).unwrap();
        layer.detach(b).unwrap();
    }
}

#[test]
fn detach_refuses_live_mappings_on_paths_without_iommu() {
    for cfg in [HvConfig::pseries(6 * GIB), HvConfig::tdx(6 * GIB), HvConfig::plain(6 * GIB)] {
        let hv = model(cfg);
        let mut layer = DmaLayer::new(hv);
        add_pool(&mut layer, MID_POOL, 4 * MIB, PoolConfig::default()).unwrap();
        let dev = layer.attach(DeviceConfig::new(1, DmaMask::BITS_32)).unwrap();
        let phys = hv.alloc(4096, Region::Low);
        // SAFETY: fresh allocation owned by the test until unmapped.
        let bus =
            unsafe { layer.map_phys(&dev, PhysAddr(phys), 4096, DmaDirection::ToDevice, DmaAttrs::NONE) }
                .unwrap();
        let refused = layer.detach(dev).unwrap_err();
        assert_eq!(refused.error, DmaError::Busy { live: 1 });
        let dev = refused.value;
        // SAFETY: the test's own mapping.
        unsafe { layer.unmap(&dev, bus, 4096, DmaDirection::ToDevice, DmaAttrs::NONE) }.unwrap();
        layer.detach(dev).unwrap();
        // `dev` is gone: mapping through it afterwards does not compile (the value moved).
    }
}

#[test]
fn a_detach_that_fails_part_way_stops_maps_until_retried() {
    // Two pools premapped into the default window; the read-back of the second pool's clear fails.
    let mut opts = Opts::new(IommuPolicy::Premapped);
    opts.ddw = false;
    let g = iommu_guest(opts);
    let (hv, layer) = (g.hv, &g.layer);
    let dev = g.device(1, 32);
    assert_eq!(layer.path_of(&dev), DmaPath::IommuPremapped);
    let gets = hv.calls().count(CallKind::GetTce);
    hv.calls().inject_at(CallKind::GetTce, gets + 1, Injection::Fail(-1));
    let refused = layer.detach(dev).unwrap_err();
    assert!(matches!(refused.error, DmaError::Iommu(_)), "{:?}", refused.error);
    let dev = refused.value;
    // Its window may miss a pool now: every map is refused, none faults.
    let phys = hv.alloc(4096, Region::High);
    // SAFETY: fresh allocation; the map must be refused.
    let r = unsafe { layer.map_phys(&dev, PhysAddr(phys), 4096, DmaDirection::ToDevice, DmaAttrs::NONE) };
    assert_eq!(r, Err(DmaError::DetachIncomplete));
    let coh = hv.alloc(4096, Region::Low);
    let shared = hv.shared_pages();
    // SAFETY: fresh page; the allocation must be refused.
    assert!(unsafe { layer.alloc_coherent(&dev, PhysAddr(coh), 1) }.is_err());
    assert_eq!(hv.shared_pages(), shared, "the refused allocation shared nothing");
    // The retry completes and the window is empty.
    layer.detach(dev).unwrap();
    assert!(hv.reachable(1).is_empty());
    assert_no_faults(hv);
}

#[test]
fn absurd_lengths_masks_and_pools_are_errors_not_panics() {
    let (hv, mut layer) = bounce_guest();
    let dev = layer.attach(DeviceConfig::new(1, DmaMask::BITS_32)).unwrap();
    let buf = [0u8; 16];
    for len in [usize::MAX, usize::MAX - 4095, usize::MAX / 2, 1 << 40] {
        // SAFETY: the layer must refuse the length before reading anything.
        let r = unsafe {
            layer.map_ptr(&dev, buf.as_ptr().cast_mut(), len, DmaDirection::ToDevice, DmaAttrs::NONE)
        };
        assert!(matches!(r, Err(DmaError::TooLarge { .. })), "{len:#x}: {r:?}");
    }
    let cfg = DeviceConfig::new(2, DmaMask::BITS_32).with_min_align_mask(u64::MAX);
    assert_eq!(layer.attach(cfg).unwrap_err(), DmaError::InvalidMinAlignMask(u64::MAX));
    let cfg = DeviceConfig::new(2, DmaMask::BITS_32).with_min_align_mask(0xFFFF_FFFF);
    let wide = layer.attach(cfg).unwrap();
    // SAFETY: as above.
    let r =
        unsafe { layer.map_ptr(&wide, buf.as_ptr().cast_mut(), 16, DmaDirection::ToDevice, DmaAttrs::NONE) };
    assert!(r.is_err(), "no 4 GiB-aligned run exists in a 4 MiB pool: {r:?}");
    // A pool smaller than one slot: refused before anything is shared.
    let shared = hv.shared_pages();
    let cfg = PoolConfig { slot_size: 65536, ..PoolConfig::default() };
    assert_eq!(
        add_pool(&mut layer, LOW_POOL, 4096, cfg).unwrap_err(),
        DmaError::PoolTooSmall { len: 4096, slot_size: 65536 }
    );
    assert_eq!(hv.shared_pages(), shared);
    assert_eq!(layer.stats().slots_in_use, 0);
    assert_eq!(dev.live(), 0);
}

#[test]
fn a_window_with_an_absurd_page_shift_refuses_attach() {
    for shift in [64, 65, 200, 11] {
        let hv = model(HvConfig::pseries(6 * GIB));
        hv.enable_iommu(TceConfig { default_page_shift: shift, ..TceConfig::default() });
        hv.add_iommu_device(1, 32);
        let mut layer = DmaLayer::new(hv);
        add_pool(&mut layer, MID_POOL, 4 * MIB, PoolConfig::default()).unwrap();
        let ranges = vec![BusRange::EMPTY; 64].leak();
        // SAFETY: no list page.
        unsafe { layer.enable_iommu(IommuConfig::premapped().with_ddw(false), ranges) }.unwrap();
        let err = layer.attach(DeviceConfig::new(1, DmaMask::BITS_32)).unwrap_err();
        assert!(
            matches!(err, DmaError::BadWindowGeometry { page_shift, .. } if page_shift == shift),
            "{err:?}"
        );
        assert_eq!(layer.live_bus_ranges(), 0);
    }
}

#[test]
fn the_premapped_default_window_keeps_min_align_bits_above_the_page() {
    // Pool at phys 0x4000_0000; the default window's first free page is 0x1000 (page 0 is reserved).
    let mut opts = Opts::new(IommuPolicy::Premapped);
    opts.ddw = false;
    opts.pool_at = 0x4000_0000;
    opts.pool_len = 4 * MIB;
    opts.reserved = &[];
    let g = iommu_guest(opts);
    let (hv, layer) = (g.hv, &g.layer);
    hv.add_iommu_device(1, 32);
    let cfg = DeviceConfig::new(1, DmaMask::BITS_32).with_min_align_mask(0x1FFF);
    let dev = layer.attach(cfg).unwrap();
    assert_eq!(layer.path_of(&dev), DmaPath::IommuPremapped);
    let base = hv.alloc(65536, Region::High);
    for off in [0x1010u64, 0x10, 0x1ff8, 0x1000] {
        let phys = base + off;
        hv.memory().write(phys, &pattern(512, off));
        // SAFETY: the test's own allocation, unmapped below.
        let bus =
            unsafe { layer.map_phys(&dev, PhysAddr(phys), 512, DmaDirection::ToDevice, DmaAttrs::NONE) }
                .unwrap();
        assert_eq!(bus.0 & 0x1FFF, phys & 0x1FFF, "offset {off:#x}: bus {bus}");
        assert_eq!(hv.device(1).read(bus.0, 512).unwrap(), pattern(512, off));
        // SAFETY: the test's own mapping.
        unsafe { layer.unmap(&dev, bus, 512, DmaDirection::ToDevice, DmaAttrs::NONE) }.unwrap();
    }
}

#[test]
fn errors_are_std_errors_and_name_their_values() {
    fn is_error<E: core::error::Error>(_: &E) {}
    let e = DmaError::PoolOverlap { pool: 3 };
    is_error(&e);
    assert_eq!(e.to_string(), "the range overlaps pool 3");
    is_error(&DmaError::Busy { live: 2 });
    assert!(DmaError::Busy { live: 2 }.to_string().contains('2'));
    let _ = BusAddr(0);
}
