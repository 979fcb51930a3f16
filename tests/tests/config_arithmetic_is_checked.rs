//! Issue 18 item 7: configuration values (public fields) and values the hypervisor reports never
//! make the layer panic: arithmetic on them is checked and a bad value is a clear error. (The CI
//! runs these with overflow checks on, so an unchecked overflow is a panic here.)

mod iommu_support;

use ccdma::iommu::BusRange;
use ccdma::{
    DeviceConfig, DmaError, DmaLayer, DmaMask, DmaPath, GrowthConfig, IommuConfig, IommuPolicy, PoolConfig,
};
use ccdma_hv_model::{HvConfig, ModelSource, TceConfig};
use ccdma_tests::*;
use iommu_support::*;

/// A 64-bit device's DDW keeps bus room for every pool growth may add: `max_total_bytes` of
/// `u64::MAX` (no byte limit) must not overflow that sizing. The room is what the pools can hold
/// (`max_pools` pools); a room too large for any window falls back to the default window.
#[test]
fn growth_without_a_total_limit_does_not_overflow_the_ddw_sizing() {
    for (pool_bytes, max_total_bytes, path) in [
        (MIB as usize, u64::MAX, DmaPath::IommuDdw),
        (MIB as usize, u64::MAX / 2 + 1, DmaPath::IommuDdw),
        (1usize << 62, u64::MAX, DmaPath::IommuPremapped),
        (1usize << 61, 1 << 63, DmaPath::IommuPremapped),
    ] {
        let what = format!("{pool_bytes:#x} x 8, total {max_total_bytes:#x}");
        let g = iommu_guest(Opts { ram: 2 * GIB, ..Opts::new(IommuPolicy::Premapped) });
        let mut layer = g.layer;
        let src: &'static ModelSource<'static> =
            Box::leak(Box::new(ModelSource::new(g.hv, 0x2000_0000, 64 * MIB)));
        let cfg = GrowthConfig { max_total_bytes, ..GrowthConfig::new(pool_bytes, 8) };
        layer.enable_growth(src, cfg).unwrap();
        g.hv.add_iommu_device(1, 64);
        let dev = layer.attach(DeviceConfig::new(1, DmaMask::BITS_64)).unwrap();
        assert_eq!(dev.path(), path, "{what}");
        if path == DmaPath::IommuDdw {
            // Room for the fixed pool and 8 grown pools of 1 MiB, not for u64::MAX bytes.
            let (_, ddw) = layer.windows_of(&dev);
            assert!(ddw.unwrap().size <= 32 * MIB, "{what}: {ddw:x?}");
        }
        layer.detach(dev).unwrap();
    }
}

#[test]
fn growth_config_new_saturates_its_total() {
    let cfg = GrowthConfig::new(usize::MAX & !0xFFF, 3);
    assert_eq!(cfg.max_total_bytes, u64::MAX);
}

#[test]
fn a_zero_slot_size_is_an_error_not_a_division_by_zero() {
    let cfg = PoolConfig { slot_size: 0, ..PoolConfig::default() };
    assert_eq!(cfg.slots_for(1 << 20), 0);
    assert_eq!(cfg.checked_slots_for(1 << 20), Err(DmaError::InvalidSlotSize(0)));
    assert_eq!(PoolConfig::default().checked_slots_for(1 << 20), Ok(512));
    let (hv, mut layer) = guest(HvConfig::pseries(2 * GIB), &[]);
    let p = MID_POOL;
    // SAFETY: a fresh allocation.
    let e = unsafe { layer.add_pool(ccdma::PhysAddr(p), MIB as usize, vec![].leak(), cfg) }.unwrap_err();
    assert_eq!(e, DmaError::InvalidSlotSize(0));
    assert_eq!(hv.shared_pages(), 0);
    // The same as a grown pool's geometry.
    let src: &'static ModelSource<'static> = Box::leak(Box::new(ModelSource::new(hv, 0x2000_0000, 64 * MIB)));
    let g = GrowthConfig { pool: cfg, ..GrowthConfig::new(MIB as usize, 2) };
    assert_eq!(layer.enable_growth(src, g), Err(DmaError::InvalidSlotSize(0)));
}

/// A default window the hypervisor reports at the top of the bus space with huge pages: sizing,
/// alignment and reservations near `u64::MAX` must not wrap.
#[test]
fn hypervisor_geometry_at_the_top_of_the_bus_space_does_not_panic() {
    for (start, size, shift) in
        [(u64::MAX - (1 << 30) + 1, 1 << 30, 12), (1 << 63, 1 << 62, 40), (0, 1 << 40, 40)]
    {
        let hv = model(HvConfig::pseries(2 * GIB));
        hv.enable_iommu(TceConfig {
            default_start: start,
            default_size: size,
            default_page_shift: shift,
            ..TceConfig::default()
        });
        let mut layer = DmaLayer::new(hv);
        add_pool(&mut layer, MID_POOL, 16 * MIB, PoolConfig::default()).unwrap();
        let cfg = IommuConfig::strict().with_ddw(false);
        // SAFETY: no list page.
        unsafe { layer.enable_iommu(cfg, vec![BusRange::EMPTY; 8 * 64].leak()) }.unwrap();
        hv.add_iommu_device(1, 64);
        // Attach may refuse (a page larger than any run); it must not panic.
        match layer.attach(DeviceConfig::new(1, DmaMask::BITS_64)) {
            Ok(dev) => {
                let mut buf = [5u8; 100];
                if let Ok(m) = layer.map(&dev, &mut buf, ccdma::DmaDirection::ToDevice, ccdma::DmaAttrs::NONE)
                {
                    assert_eq!(hv.device(1).read(m.bus_addr().0, 100).unwrap(), [5u8; 100]);
                    m.unmap().unwrap();
                }
                layer.detach(dev).unwrap();
            }
            Err(e) => assert!(!e.to_string().is_empty()),
        }
    }
}

/// A platform whose list of reserved bus ranges never ends (the same range again and again, which
/// merges and takes no room) must not keep attach looping: refused, nothing claimed.
#[test]
fn an_endless_list_of_platform_reservations_is_refused() {
    use ccdma::iommu::{IommuBackend, IommuError, PutFailure, WindowGeometry};
    use ccdma::{MemorySharing, PartialSharing, PhysAddr, PhysMemory, Platform};
    use core::ptr::NonNull;

    struct Endless;
    impl IommuBackend for Endless {
        fn default_window(&self, _device: u32) -> Option<WindowGeometry> {
            Some(WindowGeometry { liobn: 1, start: 0, size: 1 << 30, page_shift: 12 })
        }
        fn reserved_range(&self, _device: u32, _index: usize) -> Option<(u64, u64)> {
            Some((0x10_0000, 0x1000))
        }
        fn map(&self, _: &WindowGeometry, _: u64, _: u64, _: &dyn Fn(u64) -> u64) -> Result<(), PutFailure> {
            Ok(())
        }
        fn unmap(&self, _: &WindowGeometry, _: u64, _: u64) -> Result<(), IommuError> {
            Ok(())
        }
    }
    struct Guest {
        hv: &'static ccdma_hv_model::Hypervisor,
        iommu: Endless,
    }
    impl MemorySharing for Guest {
        fn share(&self, phys: PhysAddr, pages: u64) -> Result<(), PartialSharing> {
            self.hv.share(phys, pages)
        }
        fn unshare(&self, phys: PhysAddr, pages: u64) -> Result<(), PartialSharing> {
            self.hv.unshare(phys, pages)
        }
    }
    // SAFETY: forwards to the model, whose answers are truthful.
    unsafe impl PhysMemory for Guest {
        fn cpu_ptr(&self, phys: PhysAddr, len: usize) -> Option<NonNull<u8>> {
            self.hv.cpu_ptr(phys, len)
        }
        fn virt_to_phys(&self, ptr: *const u8, len: usize) -> Option<PhysAddr> {
            self.hv.virt_to_phys(ptr, len)
        }
        fn ram_end(&self) -> PhysAddr {
            self.hv.ram_end()
        }
    }
    impl Platform for Guest {
        fn is_confidential(&self) -> bool {
            true
        }
        fn iommu_backend(&self) -> Option<&dyn IommuBackend> {
            Some(&self.iommu)
        }
    }
    let hv = model(HvConfig::pseries(GIB));
    let guest: &'static Guest = Box::leak(Box::new(Guest { hv, iommu: Endless }));
    let mut layer = DmaLayer::new(guest);
    let cfg = PoolConfig::default();
    // SAFETY: the model never hands this range out.
    unsafe { layer.add_pool(ccdma::PhysAddr(MID_POOL), MIB as usize, meta_for(MIB, &cfg), cfg) }.unwrap();
    // SAFETY: no list page.
    unsafe { layer.enable_iommu(IommuConfig::strict(), vec![BusRange::EMPTY; 8 * 64].leak()) }.unwrap();
    let e = layer.attach(DeviceConfig::new(1, DmaMask::BITS_32)).unwrap_err();
    assert_eq!(e, DmaError::Iommu(IommuError::BusSpaceExhausted));
    assert_eq!(layer.live_bus_ranges(), 0);
}
