//! Issue 20: a layer over `&Platform` (what every kernel and firmware here builds: `DmaLayer<'static,
//! &'static QemuPlatform>`) must call the platform's interrupt hooks. The blanket `impl Platform for
//! &T` forwards each method to `T`; a hook it leaves out silently falls back to the default (no
//! masking), and the interrupt contract is broken on exactly the layers that matter.

use std::sync::atomic::{AtomicU64, Ordering};

use ccdma::{
    DeviceConfig, DmaLayer, DmaMask, InterruptState, MemorySharing, PartialSharing, PhysAddr, PhysMemory,
    Platform, PoolConfig, SlotMeta,
};
use ccdma_hv_model::{HvConfig, Hypervisor};

/// The model, plus interrupt hooks that count.
struct Counting {
    hv: Hypervisor,
    masks: AtomicU64,
    restores: AtomicU64,
}

impl MemorySharing for Counting {
    fn share(&self, phys: PhysAddr, pages: u64) -> Result<(), PartialSharing> {
        self.hv.share(phys, pages)
    }
    fn unshare(&self, phys: PhysAddr, pages: u64) -> Result<(), PartialSharing> {
        self.hv.unshare(phys, pages)
    }
}

// SAFETY: every call is forwarded to the model, whose implementation keeps the contract.
unsafe impl PhysMemory for Counting {
    fn cpu_ptr(&self, phys: PhysAddr, len: usize) -> Option<std::ptr::NonNull<u8>> {
        self.hv.cpu_ptr(phys, len)
    }
    fn virt_to_phys(&self, ptr: *const u8, len: usize) -> Option<PhysAddr> {
        self.hv.virt_to_phys(ptr, len)
    }
    fn ram_end(&self) -> PhysAddr {
        self.hv.ram_end()
    }
}

impl Platform for Counting {
    fn is_confidential(&self) -> bool {
        self.hv.is_confidential()
    }
    fn mask_interrupts(&self) -> InterruptState {
        InterruptState(self.masks.fetch_add(1, Ordering::Relaxed) as usize)
    }
    fn restore_interrupts(&self, _: InterruptState) {
        self.restores.fetch_add(1, Ordering::Relaxed);
    }
}

#[test]
fn a_layer_over_a_reference_masks_interrupts_through_the_platform() {
    let plat: &'static Counting = Box::leak(Box::new(Counting {
        hv: Hypervisor::new(HvConfig::pseries(64 << 20)),
        masks: AtomicU64::new(0),
        restores: AtomicU64::new(0),
    }));
    let mut layer: DmaLayer<'static, &'static Counting> = DmaLayer::new(plat);
    let meta = vec![SlotMeta::EMPTY; 512].leak();
    // SAFETY: the model never hands this range out; the layer owns it from here.
    unsafe { layer.add_pool(PhysAddr(0x80_0000), 1 << 20, meta, PoolConfig::default()) }.unwrap();
    let dev = layer.attach(DeviceConfig::new(1, DmaMask::BITS_32)).unwrap();
    let before = plat.masks.load(Ordering::Relaxed);
    let buf = [7u8; 256];
    let m = layer.on(&dev).map_to_device(&buf).unwrap();
    m.unmap().unwrap();
    let (masks, restores) = (plat.masks.load(Ordering::Relaxed), plat.restores.load(Ordering::Relaxed));
    assert!(masks > before, "map and unmap through &Platform never called mask_interrupts ({masks} calls)");
    assert_eq!(masks, restores, "every mask is restored");
}
