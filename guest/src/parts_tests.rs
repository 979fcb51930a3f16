//! The layer with its optional parts left out (`cargo test -p ccdma --lib --no-default-features`,
//! run by scripts/test.sh): each left-out call answers `FeatureDisabled` and changes nothing, a
//! device behind a left-out IOMMU is refused, and the bounce path still maps and unmaps. With the
//! default features these tests are not compiled (the model's tests cover the parts).

extern crate std;

use core::ptr::NonNull;
use std::boxed::Box;
use std::vec;

use crate::iommu::{IommuBackend, IommuError, PutFailure, WindowGeometry};
use crate::{
    DeviceConfig, DmaAttrs, DmaDirection, DmaLayer, DmaMask, DmaPath, MemorySharing, PartialSharing,
    PhysAddr, PhysMemory, Platform, PoolConfig, SlotMeta,
};

const RAM: usize = 4 << 20;
const POOL: u64 = 1 << 20;

/// Confidential RAM in a host allocation; sharing always succeeds; optionally a native IOMMU that
/// puts device 9 behind it.
struct Ram {
    base: *mut u8,
    iommu: bool,
    shared: core::sync::atomic::AtomicU64,
}
// SAFETY: the allocation is leaked and only reached through the layer's own accesses.
unsafe impl Sync for Ram {}

impl MemorySharing for Ram {
    fn share(&self, _: PhysAddr, pages: u64) -> Result<(), PartialSharing> {
        self.shared.fetch_add(pages, core::sync::atomic::Ordering::Relaxed);
        Ok(())
    }
    fn unshare(&self, _: PhysAddr, pages: u64) -> Result<(), PartialSharing> {
        self.shared.fetch_sub(pages, core::sync::atomic::Ordering::Relaxed);
        Ok(())
    }
}
// SAFETY: `[base, base + RAM)` is one leaked allocation mapping guest physical `[0, RAM)`; both
// answers stay inside it.
unsafe impl PhysMemory for Ram {
    fn cpu_ptr(&self, phys: PhysAddr, len: usize) -> Option<NonNull<u8>> {
        let end = phys.0.checked_add(len as u64)?;
        // SAFETY: `phys.0 <= end <= RAM`: inside the allocation.
        (end <= RAM as u64).then(|| unsafe { NonNull::new_unchecked(self.base.add(phys.0 as usize)) })
    }
    fn virt_to_phys(&self, ptr: *const u8, len: usize) -> Option<PhysAddr> {
        let off = (ptr as u64).checked_sub(self.base as u64)?;
        (off.checked_add(len as u64)? <= RAM as u64).then_some(PhysAddr(off))
    }
    fn ram_end(&self) -> PhysAddr {
        PhysAddr(RAM as u64)
    }
}
impl IommuBackend for Ram {
    fn default_window(&self, device: u32) -> Option<WindowGeometry> {
        (device == 9).then_some(WindowGeometry { liobn: 1, start: 0, size: 1 << 30, page_shift: 12 })
    }
    fn map(&self, _: &WindowGeometry, _: u64, _: u64, _: &dyn Fn(u64) -> u64) -> Result<(), PutFailure> {
        unreachable!("no IOMMU path in this build")
    }
    fn unmap(&self, _: &WindowGeometry, _: u64, _: u64) -> Result<(), IommuError> {
        unreachable!("no IOMMU path in this build")
    }
}
impl Platform for Ram {
    fn is_confidential(&self) -> bool {
        true
    }
    fn iommu_backend(&self) -> Option<&dyn IommuBackend> {
        self.iommu.then_some(self as &dyn IommuBackend)
    }
}

fn ram(iommu: bool) -> &'static Ram {
    let base = vec![0u8; RAM].leak().as_mut_ptr();
    Box::leak(Box::new(Ram { base, iommu, shared: Default::default() }))
}

fn layer(plat: &'static Ram) -> DmaLayer<'static, &'static Ram, 1, 0> {
    let mut layer = DmaLayer::<_, 1, 0>::with_capacity(plat);
    let meta = vec![SlotMeta::EMPTY; PoolConfig::default().slots_for(POOL as usize)].leak();
    // SAFETY: `[POOL, 2 * POOL)` of the leaked RAM is given to the layer for good.
    unsafe { layer.add_pool(PhysAddr(POOL), POOL as usize, meta, PoolConfig::default()) }.unwrap();
    layer
}

#[test]
fn the_bounce_path_maps_and_unmaps_without_the_parts() {
    let plat = ram(false);
    let layer = layer(plat);
    let dev = layer.attach(DeviceConfig::new(1, DmaMask::BITS_32)).unwrap();
    assert_eq!(dev.path(), DmaPath::BounceAlways);
    // SAFETY: bytes 0x1000..0x1200 of the RAM are this test's until the unmap.
    let bus = unsafe { layer.map_phys(&dev, PhysAddr(0x1000), 512, DmaDirection::ToDevice, DmaAttrs::NONE) };
    let bus = bus.unwrap();
    assert!((POOL..2 * POOL).contains(&bus.0), "{bus:?}");
    assert_eq!(layer.stats().slots_in_use, 1);
    // SAFETY: this test's raw mapping, unmapped once.
    unsafe { layer.unmap(&dev, bus, 512, DmaDirection::ToDevice, DmaAttrs::NONE) }.unwrap();
    assert_eq!(layer.stats().slots_in_use, 0);
    layer.detach(dev).unwrap();
}

#[cfg(not(feature = "growth"))]
#[test]
fn growth_left_out_is_refused_by_name() {
    struct NoMemory;
    // SAFETY: hands nothing out.
    unsafe impl crate::MemorySource for NoMemory {
        fn take(&self, _: usize, _: u64, _: u64) -> Option<PhysAddr> {
            None
        }
        fn give_back(&self, _: PhysAddr, _: usize) {}
        fn take_meta(&self, _: usize) -> Option<NonNull<SlotMeta>> {
            None
        }
        fn give_back_meta(&self, _: NonNull<SlotMeta>, _: usize) {}
    }
    let mut layer = layer(ram(false));
    let e = layer.enable_growth(&NoMemory, crate::GrowthConfig::new(1 << 20, 2));
    assert_eq!(e, Err(crate::DmaError::FeatureDisabled { feature: "growth" }));
}

#[cfg(not(feature = "scatter-gather"))]
#[test]
fn scatter_gather_left_out_is_refused_by_name() {
    let layer = layer(ram(false));
    let dev = layer.attach(DeviceConfig::new(1, DmaMask::BITS_32)).unwrap();
    let data = [1u8; 64];
    let mut list = [crate::sg::SgEntry::to_device(&data)];
    let e = layer.map_sg(&dev, &mut list, DmaDirection::ToDevice, DmaAttrs::NONE);
    assert_eq!(e, Err(crate::DmaError::FeatureDisabled { feature: "scatter-gather" }));
    let off = Err(crate::DmaError::FeatureDisabled { feature: "scatter-gather" });
    assert_eq!(layer.unmap_sg(&dev, &mut list, DmaDirection::ToDevice, DmaAttrs::NONE), off);
    assert_eq!(layer.sync_sg_for_cpu(&dev, &mut list, DmaDirection::ToDevice), off);
    assert_eq!(layer.sync_sg_for_device(&dev, &mut list, DmaDirection::ToDevice), off);
    assert_eq!(layer.stats().slots_in_use, 0);
}

#[cfg(not(feature = "trusted-devices"))]
#[test]
fn trusted_devices_left_out_are_refused_by_name() {
    let layer = layer(ram(false));
    let mut dev = layer.attach(DeviceConfig::new(1, DmaMask::BITS_32)).unwrap();
    assert_eq!(layer.accept(&mut dev), Err(crate::DmaError::FeatureDisabled { feature: "trusted-devices" }));
    assert!(!dev.trust().is_accepted());
}

#[cfg(not(any(feature = "papr-tce", feature = "native-iommu")))]
#[test]
fn the_iommu_left_out_is_refused_by_name() {
    let plat = ram(true);
    let mut layer = layer(plat);
    let ranges = vec![crate::iommu::BusRange::EMPTY; 8].leak();
    // SAFETY: no list page.
    let e = unsafe { layer.enable_iommu(crate::IommuConfig::premapped(), ranges) };
    assert_eq!(e, Err(crate::DmaError::FeatureDisabled { feature: "papr-tce or native-iommu" }));
    // A device the platform puts behind its IOMMU would fault on shared bus addresses: refused, and
    // its id stays free; a device outside the IOMMU is served.
    let e = layer.attach(DeviceConfig::new(9, DmaMask::BITS_32)).map(|_| ());
    assert_eq!(e, Err(crate::DmaError::FeatureDisabled { feature: "native-iommu" }));
    let dev = layer.attach(DeviceConfig::new(1, DmaMask::BITS_32)).unwrap();
    layer.detach(dev).unwrap();
    assert_eq!(plat.shared.load(core::sync::atomic::Ordering::Relaxed), POOL / 4096);
}

#[cfg(not(feature = "pool-full-report"))]
#[test]
fn pool_full_report_left_out_keeps_no_record() {
    let layer = layer(ram(false));
    let dev = layer.attach(DeviceConfig::new(1, DmaMask::BITS_32)).unwrap();
    let mut live = std::vec::Vec::new();
    let e = loop {
        // SAFETY: bytes 0x1000..0x11000 of the RAM are this test's until the unmaps below.
        match unsafe {
            layer.map_phys(&dev, PhysAddr(0x1000), 64 << 10, DmaDirection::ToDevice, DmaAttrs::NONE)
        } {
            Ok(bus) => live.push(bus),
            Err(e) => break e,
        }
    };
    // The map fails as with the part; no record is kept.
    assert_eq!(e, crate::DmaError::PoolExhausted { len: 64 << 10 });
    assert_eq!(live.len(), (POOL >> 16) as usize);
    assert!(layer.last_pool_full().is_none());
    for bus in live {
        // SAFETY: mapped above, unmapped once.
        unsafe { layer.unmap(&dev, bus, 64 << 10, DmaDirection::ToDevice, DmaAttrs::NONE) }.unwrap();
    }
    assert_eq!(layer.stats().slots_in_use, 0);
}

#[cfg(not(feature = "stats"))]
#[test]
fn stats_left_out_count_nothing_but_the_pools() {
    let layer = layer(ram(false));
    let dev = layer.attach(DeviceConfig::new(1, DmaMask::BITS_32)).unwrap();
    // SAFETY: bytes 0x1000..0x1200 of the RAM are this test's until the unmap.
    let bus =
        unsafe { layer.map_phys(&dev, PhysAddr(0x1000), 512, DmaDirection::FromDevice, DmaAttrs::NONE) };
    let bus = bus.unwrap();
    // SAFETY: too long for the pool: refused, nothing mapped.
    let e = unsafe {
        layer.map_phys(&dev, PhysAddr(0x1000), 2 * POOL as usize, DmaDirection::ToDevice, DmaAttrs::NONE)
    };
    assert!(e.is_err());
    let s = layer.stats();
    assert_eq!((s.slots_in_use, s.bounced_maps), (1, 1), "the pools' own counts stay");
    assert_eq!((s.total_failures(), s.shared_pages, s.bytes_from_device), (0, 0, 0), "{s}");
    // SAFETY: this test's raw mapping, unmapped once.
    unsafe { layer.unmap(&dev, bus, 512, DmaDirection::FromDevice, DmaAttrs::NONE) }.unwrap();
    assert_eq!(layer.stats().slots_in_use, 0);
}
