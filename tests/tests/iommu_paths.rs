//! IOMMU path details: DDW geometry and fallbacks, attach errors, deferred attach, busy retries,
//! strict-mode isolation (padding, no shared IOMMU page, `min_align_mask`), detach, many CPUs.

mod iommu_support;

use ccdma::iommu::hcall::{H_BUSY, H_LONG_BUSY_START, H_PARAMETER};
use ccdma::iommu::tce::MAX_BUSY_RETRIES;
use ccdma::iommu::DdwOutcome;
use ccdma::{
    DeviceConfig, DmaAttrs, DmaDirection, DmaError, DmaMask, DmaPath, IommuError, IommuPolicy, PathReason,
    PhysAddr,
};
use ccdma_hv_model::{CallKind, Injection, Region};
use ccdma_tests::*;
use iommu_support::*;

#[test]
fn ddw_page_size_follows_pool_alignment() {
    // 64 MiB at 256 MiB: 16 MiB pages, 4 entries.
    let mut o = Opts::new(IommuPolicy::Premapped);
    o.pool_len = 64 * MIB;
    let g = iommu_guest(o);
    let dev = g.device(1, 64);
    assert_eq!(g.layer.path_of(&dev), DmaPath::IommuDdw);
    let (_, ddw) = g.layer.windows_of(&dev);
    let ddw = ddw.unwrap();
    assert_eq!((ddw.page_shift, ddw.start, ddw.size), (24, 1 << 59, 64 * MIB));
    assert_eq!(g.hv.reachable(1).len(), 4);
    assert_eq!(g.layer.pool_bus_of(&dev, 0).unwrap().0, 1 << 59);

    // 4 MiB at 256 MiB + 1 MiB: only 1 MiB alignment, so 64 KiB pages (the largest supported <= 1 MiB).
    let mut o = Opts::new(IommuPolicy::Premapped);
    o.pool_len = 4 * MIB;
    o.pool_at = MID_POOL + MIB;
    let g = iommu_guest(o);
    let dev = g.device(1, 64);
    let (_, ddw) = g.layer.windows_of(&dev);
    assert_eq!(ddw.unwrap().page_shift, 16);
    assert_eq!(g.hv.reachable(1).len(), 64);
}

#[test]
fn ddw_fallbacks_are_reasoned() {
    // Disabled for the device: query fails, default window instead.
    let g = iommu_guest(Opts::new(IommuPolicy::Premapped));
    g.hv.add_iommu_device(1, 64);
    g.hv.set_ddw_disabled(1, true);
    let dev = g.layer.attach(DeviceConfig::new(1, DmaMask::BITS_64)).unwrap();
    assert_eq!(dev.path(), DmaPath::IommuPremapped);
    assert!(matches!(g.layer.path_reason(&dev), Some(PathReason::DefaultWindow(DdwOutcome::QueryFailed(_)))));
    // Creation fails: reason carries the status, nothing left behind in the model.
    g.hv.add_iommu_device(2, 64);
    g.hv.calls().inject_next(CallKind::DdwCreate, Injection::Fail(-1));
    let dev2 = g.layer.attach(DeviceConfig::new(2, DmaMask::BITS_64)).unwrap();
    assert_eq!(g.layer.path_reason(&dev2), Some(PathReason::DefaultWindow(DdwOutcome::CreateFailed(-1))));
    assert_eq!(g.hv.tce_counters().ddws, 0);
    // Entering the pool into the DDW fails (one 16 MiB entry: one H_PUT_TCE): the DDW is removed
    // again, default window used.
    g.hv.add_iommu_device(3, 64);
    g.hv.calls().inject_next(CallKind::PutTce, Injection::Fail(H_PARAMETER));
    let dev3 = g.layer.attach(DeviceConfig::new(3, DmaMask::BITS_64)).unwrap();
    assert_eq!(
        g.layer.path_reason(&dev3),
        Some(PathReason::DefaultWindow(DdwOutcome::PremapFailed(IommuError::Hcall(H_PARAMETER))))
    );
    assert_eq!(g.hv.tce_counters().ddws, 0);
    // Every window holds only the pool.
    for id in 1..=3 {
        g.assert_reach_within(id, &[g.pool_range()]);
    }
}

#[test]
fn no_window_below_the_mask_is_a_clear_attach_error() {
    let g = iommu_guest(Opts::new(IommuPolicy::Premapped));
    g.hv.add_iommu_device(9, 20);
    // A 20-bit device: its whole window part (1 MiB) is reserved firmware space.
    let err = g.layer.attach(DeviceConfig::new(9, DmaMask::new(20).unwrap())).unwrap_err();
    let DmaError::NoIommuPath { mask, pools, window, .. } = err else { panic!("{err:?}") };
    // The default window is QEMU's: 1 GiB at 0.
    assert_eq!((mask.bits(), pools, window), (20, 1, (0, GIB)));
    let text = err.to_string();
    assert!(text.contains("20-bit") && text.contains("1 pools") && text.contains("0x40000000"), "{text}");
    assert_eq!(g.hv.tce_counters().live_entries, 0, "a failed attach leaves no entry");
    assert_eq!(g.layer.live_bus_ranges(), 0);
    // The domain was given back: 8 more devices still attach.
    for id in 20..28 {
        g.device(id, 32);
    }
}

#[test]
fn iommu_not_enabled_in_the_layer_refuses_attach() {
    let hv = model(ccdma_hv_model::HvConfig::pseries(6 * GIB));
    hv.enable_iommu(tce_config(&Opts::new(IommuPolicy::Strict)));
    hv.add_iommu_device(1, 32);
    let mut layer = ccdma::DmaLayer::new(hv);
    add_pool(&mut layer, MID_POOL, 4 * MIB, ccdma::PoolConfig::default()).unwrap();
    let err = layer.attach(DeviceConfig::new(1, DmaMask::BITS_32)).unwrap_err();
    assert!(matches!(err, DmaError::IommuNotEnabled), "{err:?}");
}

#[test]
fn deferred_attach_happens_at_first_map_or_alloc_only() {
    let g = iommu_guest(Opts::new(IommuPolicy::Premapped));
    let (hv, layer) = (g.hv, &g.layer);
    hv.add_iommu_device(1, 64);
    hv.add_iommu_device(2, 32);
    let calls = || hv.calls().counts().values().sum::<u64>();
    let before = calls();
    let cfg = DeviceConfig::new(1, DmaMask::BITS_64).with_deferred_attach(true);
    let dev = layer.attach(cfg).unwrap();
    let dev2 = layer.attach(DeviceConfig::new(2, DmaMask::BITS_32).with_deferred_attach(true)).unwrap();
    assert_eq!(calls(), before, "a deferred attach makes no call");
    assert_eq!(layer.path_of(&dev), DmaPath::IommuDeferred);
    // Unmap, sync and free never attach.
    let bogus = ccdma::BusAddr(1 << 59);
    // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
    assert!(unsafe { layer.unmap(&dev, bogus, 4096, DmaDirection::ToDevice, DmaAttrs::NONE) }.is_err());
    // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
    assert!(unsafe { layer.sync_for_cpu(&dev, bogus, 0, 1, DmaDirection::FromDevice) }.is_err());
    assert_eq!(calls(), before);
    assert_eq!(layer.path_of(&dev), DmaPath::IommuDeferred);
    assert_eq!(hv.reachable(1).len(), 0);
    // The first map attaches (DDW created, pool entered), then maps with no further call.
    let phys = hv.alloc(4096, Region::High);
    hv.memory().write(phys, &pattern(4096, 1));
    // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
    let bus = unsafe { layer.map_phys(&dev, PhysAddr(phys), 4096, DmaDirection::ToDevice, DmaAttrs::NONE) }
        .unwrap();
    assert_eq!(layer.path_of(&dev), DmaPath::IommuDdw);
    assert_eq!(layer.iommu_stats().deferred_attaches, 1);
    assert_eq!(hv.device(1).read(bus.0, 4096).unwrap(), pattern(4096, 1));
    let after_attach = calls();
    // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
    unsafe { layer.unmap(&dev, bus, 4096, DmaDirection::ToDevice, DmaAttrs::NONE) }.unwrap();
    // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
    unsafe { layer.map_phys(&dev, PhysAddr(phys), 4096, DmaDirection::ToDevice, DmaAttrs::NONE) }
        .map(|b| {
            // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
            unsafe { layer.unmap(&dev, b, 4096, DmaDirection::ToDevice, DmaAttrs::NONE) }.unwrap();
        })
        .unwrap();
    assert_eq!(calls(), after_attach, "premapped maps after the attach make no call");
    // A coherent allocation attaches the second device.
    let coh = hv.alloc(4096, Region::Low);
    // SAFETY: fresh page handed to the layer.
    let buf = unsafe { layer.alloc_coherent(&dev2, PhysAddr(coh), 1) }.unwrap();
    assert_eq!(layer.path_of(&dev2), DmaPath::IommuPremapped);
    assert!(buf.bus_addr().0 < 1 << 32);
    // A deferred device never used detaches with no call.
    hv.add_iommu_device(3, 32);
    let dev3 = layer.attach(DeviceConfig::new(3, DmaMask::BITS_32).with_deferred_attach(true)).unwrap();
    let c = calls();
    layer.detach(dev3).unwrap();
    assert_eq!(calls(), c);
    // Free of a coherent buffer with a never-attached (other) device is refused and does not attach.
    hv.add_iommu_device(4, 32);
    let dev4 = layer.attach(DeviceConfig::new(4, DmaMask::BITS_32).with_deferred_attach(true)).unwrap();
    let Err(ccdma::FreeError::Refused(r)) = layer.free_coherent(&dev4, buf) else {
        panic!("free through dev4")
    };
    assert!(matches!(r.error, DmaError::WrongDevice { .. }), "{:?}", r.error);
    assert_eq!(layer.path_of(&dev4), DmaPath::IommuDeferred);
    // The buffer came back live: its own device frees it.
    layer.free_coherent(&dev2, r.value).unwrap();
}

#[test]
fn busy_answers_are_retried_within_a_bound() {
    let g = iommu_guest(Opts::new(IommuPolicy::Strict));
    let (hv, layer) = (g.hv, &g.layer);
    let dev = g.device(1, 32);
    let phys = hv.alloc(16384, Region::High);
    // Three busy answers (short and long) and then success: the map works.
    let n = hv.calls().count(CallKind::PutTceIndirect);
    hv.calls().inject_at(CallKind::PutTceIndirect, n + 1, Injection::Busy(H_BUSY));
    hv.calls().inject_at(CallKind::PutTceIndirect, n + 2, Injection::Busy(H_LONG_BUSY_START));
    hv.calls().inject_at(CallKind::PutTceIndirect, n + 3, Injection::Busy(H_LONG_BUSY_START + 2));
    // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
    let bus = unsafe { layer.map_phys(&dev, PhysAddr(phys), 16384, DmaDirection::ToDevice, DmaAttrs::NONE) }
        .unwrap();
    assert_eq!(layer.iommu_stats().busy_retries, 3);
    // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
    unsafe { layer.unmap(&dev, bus, 16384, DmaDirection::ToDevice, DmaAttrs::NONE) }.unwrap();
    // Busy forever: the map gives up after the bound, and leaves nothing behind.
    let n = hv.calls().count(CallKind::PutTceIndirect);
    hv.calls().inject_from(CallKind::PutTceIndirect, n + 1, Injection::Busy(H_BUSY));
    // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
    let err = unsafe { layer.map_phys(&dev, PhysAddr(phys), 16384, DmaDirection::ToDevice, DmaAttrs::NONE) }
        .unwrap_err();
    assert_eq!(err, DmaError::Iommu(IommuError::Busy));
    assert_eq!(hv.calls().count(CallKind::PutTceIndirect), n + 1 + u64::from(MAX_BUSY_RETRIES));
    hv.calls().clear_injections();
    assert_eq!(hv.tce_counters().live_entries, 0);
    assert_eq!(layer.stats().slots_in_use, 0);
    assert_eq!(layer.live_bus_ranges(), 0);
}

#[test]
fn strict_mappings_never_share_an_iommu_page_and_padding_is_zero() {
    let g = iommu_guest(Opts::new(IommuPolicy::Strict));
    let (hv, layer) = (g.hv, &g.layer);
    let dev = g.device(1, 32);
    let d = hv.device(1);
    // Leave stale bytes in the pool: a from-device mapping the device fills with 0xEE.
    let scratch = hv.alloc(64 * 1024, Region::High);
    // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
    let b =
        unsafe { layer.map_phys(&dev, PhysAddr(scratch), 65536, DmaDirection::FromDevice, DmaAttrs::NONE) }
            .unwrap();
    d.write(b.0, &[0xEE; 65536]).unwrap();
    // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
    unsafe { layer.unmap(&dev, b, 65536, DmaDirection::FromDevice, DmaAttrs::NONE) }.unwrap();
    // Two small to-device mappings (a slot each would fit in one 4 KiB page without the rule).
    let src = hv.alloc(8192, Region::High);
    hv.memory().write(src, &pattern(8192, 4));
    // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
    let a =
        unsafe { layer.map_phys(&dev, PhysAddr(src), 100, DmaDirection::ToDevice, DmaAttrs::NONE) }.unwrap();
    // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
    let c =
        unsafe { layer.map_phys(&dev, PhysAddr(src + 4096), 100, DmaDirection::ToDevice, DmaAttrs::NONE) }
            .unwrap();
    assert_ne!(a.0 & !4095, c.0 & !4095, "two mappings share an IOMMU page");
    let reach = hv.reachable(1);
    assert_eq!(reach.len(), 2);
    assert_ne!(reach[0].phys, reach[1].phys, "two mappings share a pool page");
    // The device sees the data and zeroes around it in the whole page, never stale or foreign bytes.
    let page = d.read(a.0 & !4095, 4096).unwrap();
    let off = (a.0 & 4095) as usize;
    assert!(page[..off].iter().all(|&x| x == 0));
    assert_eq!(&page[off..off + 100], &pattern(8192, 4)[..100]);
    assert!(page[off + 100..].iter().all(|&x| x == 0), "padding not zeroed");
    // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
    unsafe { layer.unmap(&dev, a, 100, DmaDirection::ToDevice, DmaAttrs::NONE) }.unwrap();
    // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
    unsafe { layer.unmap(&dev, c, 100, DmaDirection::ToDevice, DmaAttrs::NONE) }.unwrap();
}

#[test]
fn strict_keeps_min_align_bits_in_the_bus_address() {
    let g = iommu_guest(Opts::new(IommuPolicy::Strict));
    let (hv, layer) = (g.hv, &g.layer);
    hv.add_iommu_device(1, 32);
    for mask in [0xFFFu64, 0x3FFF] {
        let cfg = DeviceConfig::new(1, DmaMask::BITS_32).with_min_align_mask(mask);
        let dev = layer.attach(cfg).unwrap();
        let base = hv.alloc(65536, Region::High);
        for off in [0u64, 0x234, 0x1a00, 0x2ff8] {
            let phys = base + off;
            hv.memory().write(phys, &pattern(3000, off));
            // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
            let bus =
                unsafe { layer.map_phys(&dev, PhysAddr(phys), 3000, DmaDirection::ToDevice, DmaAttrs::NONE) }
                    .unwrap();
            assert_eq!(bus.0 & mask, phys & mask, "min_align_mask {mask:#x}, offset {off:#x}");
            assert_eq!(hv.device(1).read(bus.0, 3000).unwrap(), pattern(3000, off));
            // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
            unsafe { layer.unmap(&dev, bus, 3000, DmaDirection::ToDevice, DmaAttrs::NONE) }.unwrap();
        }
        layer.detach(dev).unwrap();
    }
}

#[test]
fn detach_is_refused_while_mappings_live() {
    let g = iommu_guest(Opts::new(IommuPolicy::Premapped));
    let (hv, layer) = (g.hv, &g.layer);
    let dev = g.device(1, 32);
    let phys = hv.alloc(4096, Region::High);
    // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
    let bus = unsafe { layer.map_phys(&dev, PhysAddr(phys), 4096, DmaDirection::ToDevice, DmaAttrs::NONE) }
        .unwrap();
    let refused = layer.detach(dev).unwrap_err();
    assert!(matches!(refused.error, DmaError::Busy { live: 1 }), "{:?}", refused.error);
    let dev = refused.value;
    assert_eq!(hv.reachable(1).len(), 4096, "a refused detach changes nothing");
    // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
    unsafe { layer.unmap(&dev, bus, 4096, DmaDirection::ToDevice, DmaAttrs::NONE) }.unwrap();
    layer.detach(dev).unwrap();
    assert_eq!(hv.reachable(1).len(), 0);
    // A stale handle cannot exist: `detach` consumed the device.
}

#[test]
fn many_cpus_map_strictly_at_once() {
    let g = iommu_guest(Opts::new(IommuPolicy::Strict));
    let (hv, layer) = (g.hv, &g.layer);
    let dev = g.device(1, 32);
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let dev = &dev;
            s.spawn(move || {
                let d = hv.device(1);
                let phys = hv.alloc(32768, Region::High);
                for i in 0..200u64 {
                    let len = 1 + ((i * 7919 + t * 104729) % 32768) as usize;
                    hv.memory().write(phys, &pattern(len, t * 1000 + i));
                    // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
                    let bus = unsafe {
                        layer.map_phys(dev, PhysAddr(phys), len, DmaDirection::Bidirectional, DmaAttrs::NONE)
                    }
                    .unwrap();
                    assert!(d.read(bus.0, len).unwrap() == pattern(len, t * 1000 + i));
                    d.write(bus.0, &pattern(len, t * 7 + i)).unwrap();
                    // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
                    unsafe { layer.unmap(dev, bus, len, DmaDirection::Bidirectional, DmaAttrs::NONE) }
                        .unwrap();
                    assert!(hv.memory().read(phys, len) == pattern(len, t * 7 + i));
                }
            });
        }
    });
    assert_eq!(hv.tce_counters().live_entries, 0);
    assert_eq!(layer.iommu_stats().live_tces, 0);
    assert_eq!(layer.live_bus_ranges(), 0);
    assert_eq!(layer.stats().slots_in_use, 0);
    assert_eq!(hv.faults().len(), 0);
}

#[test]
fn bus_address_zero_is_never_handed_out() {
    // The default window starts at bus 0; a premapped pool, strict mappings and coherent buffers all
    // land above the first IOMMU page (drivers and virtio rings read 0 as "no address").
    for policy in [IommuPolicy::Premapped, IommuPolicy::Strict] {
        let mut o = Opts::new(policy);
        o.ddw = false;
        o.reserved = &[];
        let g = iommu_guest(o);
        let dev = g.device(1, 32);
        if policy == IommuPolicy::Premapped {
            assert_ne!(g.layer.pool_bus_of(&dev, 0).unwrap().0, 0);
        }
        let p = g.hv.alloc(4096, Region::Low);
        // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
        let bus =
            unsafe { g.layer.map_phys(&dev, PhysAddr(p), 4096, DmaDirection::ToDevice, DmaAttrs::NONE) }
                .unwrap();
        assert!(bus.0 >= 4096, "{policy:?}: mapped at {bus}");
        // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
        unsafe { g.layer.unmap(&dev, bus, 4096, DmaDirection::ToDevice, DmaAttrs::NONE) }.unwrap();
        assert!(g.hv.reachable(1).iter().all(|r| r.bus >= 4096), "{policy:?}: page 0 reachable");
    }
}
