//! The IOMMU path's cold code through the table `enable_iommu` stores (`code.rs`): attach behind
//! the IOMMU, a deferred device's set-up at its first map, a strict map and unmap, detach. Unit
//! tests (not in tests/) so that scripts/miri.sh runs them: the table's entries see the layer's
//! address as `DmaLayer<P>` again, which Miri checks.

extern crate std;

use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, Ordering};
use std::boxed::Box;
use std::vec;

use super::{BusRange, IommuBackend, IommuError, PutFailure, WindowGeometry};
use crate::{
    DeviceConfig, DmaAttrs, DmaDirection, DmaError, DmaLayer, DmaMask, DmaPath, IommuConfig, MemorySharing,
    PartialSharing, PhysAddr, PhysMemory, Platform, PoolConfig, SlotMeta, TceBatching, VerifyPolicy,
};

const RAM: usize = 512 << 10;
const POOL: u64 = 256 << 10;
const POOL_LEN: usize = 64 << 10;

/// Confidential RAM in a host allocation, sharing that always succeeds, and a native IOMMU that
/// puts device 9 behind it and counts the pages mapped and unmapped.
struct Ram {
    base: *mut u8,
    mapped: AtomicU64,
    unmapped: AtomicU64,
}
// SAFETY: the allocation is leaked and only reached through the layer's own accesses.
unsafe impl Sync for Ram {}

impl MemorySharing for Ram {
    fn share(&self, _: PhysAddr, _: u64) -> Result<(), PartialSharing> {
        Ok(())
    }
    fn unshare(&self, _: PhysAddr, _: u64) -> Result<(), PartialSharing> {
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
        (device == 9).then_some(WindowGeometry { liobn: 9, start: 0, size: 1 << 30, page_shift: 12 })
    }
    fn map(&self, _: &WindowGeometry, _: u64, npages: u64, _: &dyn Fn(u64) -> u64) -> Result<(), PutFailure> {
        self.mapped.fetch_add(npages, Ordering::Relaxed);
        Ok(())
    }
    fn unmap(&self, _: &WindowGeometry, _: u64, npages: u64) -> Result<(), IommuError> {
        self.unmapped.fetch_add(npages, Ordering::Relaxed);
        Ok(())
    }
}
impl Platform for Ram {
    fn is_confidential(&self) -> bool {
        true
    }
    fn iommu_backend(&self) -> Option<&dyn IommuBackend> {
        Some(self)
    }
}

/// A layer over a fresh `Ram` with one pool, the IOMMU path enabled with `cfg` (one domain).
fn layer(cfg: IommuConfig) -> (&'static Ram, Box<DmaLayer<'static, &'static Ram>>) {
    let base = vec![0u8; RAM].leak().as_mut_ptr();
    let ram: &'static Ram =
        Box::leak(Box::new(Ram { base, mapped: AtomicU64::new(0), unmapped: AtomicU64::new(0) }));
    let mut layer = Box::new(DmaLayer::new(ram));
    let meta = vec![SlotMeta::EMPTY; PoolConfig::default().slots_for(POOL_LEN)].leak();
    // SAFETY: `[POOL, POOL + POOL_LEN)` is inside the leaked RAM and given to the layer for good.
    unsafe { layer.add_pool(PhysAddr(POOL), POOL_LEN, meta, PoolConfig::default()) }.unwrap();
    let ranges = vec![BusRange::EMPTY; 16].leak();
    let cfg = cfg.with_verify(VerifyPolicy::Off).with_ddw(false).with_max_domains(1);
    // SAFETY: no list page (entries one call each).
    unsafe { layer.enable_iommu(cfg.with_batching(TceBatching::PerEntry), ranges) }.unwrap();
    (ram, layer)
}

/// Map 4 KiB of RAM at 64 KiB to the device and back; the bus address.
fn map_unmap(layer: &DmaLayer<'static, &'static Ram>, ram: &Ram, dev: &crate::Device) -> u64 {
    // SAFETY: 64 KiB into the leaked RAM, below the pool, used by nothing else.
    let buf = unsafe { ram.base.add(64 << 10) };
    // SAFETY: as above: valid for 4 KiB until the unmap below.
    let bus = unsafe { layer.map_ptr(dev, buf, 4096, DmaDirection::ToDevice, DmaAttrs::NONE) }.unwrap();
    // SAFETY: the mapping just made, unmapped once.
    unsafe { layer.unmap(dev, bus, 4096, DmaDirection::ToDevice, DmaAttrs::NONE) }.unwrap();
    bus.0
}

#[test]
fn a_premapped_device_attaches_maps_and_detaches_through_the_table() {
    let (ram, layer) = layer(IommuConfig::premapped());
    let dev = layer.attach(DeviceConfig::new(9, DmaMask::BITS_64)).unwrap();
    assert_eq!(layer.path_of(&dev), DmaPath::IommuPremapped);
    // The pool entered the window at attach: 64 KiB of 4 KiB pages.
    assert_eq!(ram.mapped.load(Ordering::Relaxed), 16);
    map_unmap(&layer, ram, &dev);
    layer.detach(dev).unwrap();
    // The detach (through the table) took the pool out of the window.
    assert_eq!(ram.unmapped.load(Ordering::Relaxed), 16);
}

#[test]
fn a_deferred_device_is_set_up_at_its_first_map_through_the_table() {
    let (ram, layer) = layer(IommuConfig::premapped());
    let dev = layer.attach(DeviceConfig::new(9, DmaMask::BITS_64).with_deferred_attach(true)).unwrap();
    assert_eq!(layer.path_of(&dev), DmaPath::IommuDeferred);
    assert_eq!(ram.mapped.load(Ordering::Relaxed), 0);
    map_unmap(&layer, ram, &dev);
    assert_eq!(layer.path_of(&dev), DmaPath::IommuPremapped);
    assert_eq!(ram.mapped.load(Ordering::Relaxed), 16);
    layer.detach(dev).unwrap();
    assert_eq!(ram.unmapped.load(Ordering::Relaxed), 16);
}

#[test]
fn a_strict_device_maps_its_own_entries_and_detaches_through_the_table() {
    let (ram, layer) = layer(IommuConfig::strict());
    let dev = layer.attach(DeviceConfig::new(9, DmaMask::BITS_64)).unwrap();
    assert_eq!(layer.path_of(&dev), DmaPath::IommuStrict);
    map_unmap(&layer, ram, &dev);
    // One entry written at the map, cleared at the unmap.
    assert_eq!((ram.mapped.load(Ordering::Relaxed), ram.unmapped.load(Ordering::Relaxed)), (1, 1));
    layer.detach(dev).unwrap();
}

#[test]
fn without_enable_iommu_a_device_behind_it_is_refused() {
    let base = vec![0u8; RAM].leak().as_mut_ptr();
    let ram: &'static Ram =
        Box::leak(Box::new(Ram { base, mapped: AtomicU64::new(0), unmapped: AtomicU64::new(0) }));
    let layer = Box::new(DmaLayer::new(ram));
    let refused = layer.attach(DeviceConfig::new(9, DmaMask::BITS_64)).err();
    assert_eq!(refused, Some(DmaError::IommuNotEnabled));
}
