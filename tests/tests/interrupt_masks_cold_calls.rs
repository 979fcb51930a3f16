//! Issue 20, the interrupt contract on the cold calls: attach, detach, coherent buffers,
//! scatter-gather lists, growth_tick and the bus-range queries each mask interrupts through the
//! platform before taking a lock and restore exactly the state their mask returned (calls nest:
//! restores come in the reverse order of masks). These calls mask through out-of-line helpers over
//! `dyn Platform` (guest/src/interrupts.rs, `ColdMasked`), not the inline guard of map and unmap.

use std::sync::Mutex;

use ccdma::sg::SgEntry;
use ccdma::{
    DeviceConfig, DmaAttrs, DmaDirection, DmaLayer, DmaMask, InterruptState, MemorySharing, PartialSharing,
    PhysAddr, PhysMemory, Platform, PoolConfig, SlotMeta,
};
use ccdma_hv_model::{HvConfig, Hypervisor};

/// The model, plus interrupt hooks that hand out distinct states and check each restore.
struct Nesting {
    hv: Hypervisor,
    log: Mutex<Hooks>,
}

#[derive(Default)]
struct Hooks {
    /// States handed out by masks not yet restored, innermost last.
    open: Vec<usize>,
    next: usize,
    masks: u64,
    /// Restores of a state that was not the innermost open one (or of none).
    wrong: u64,
}

impl MemorySharing for Nesting {
    fn share(&self, phys: PhysAddr, pages: u64) -> Result<(), PartialSharing> {
        self.hv.share(phys, pages)
    }
    fn unshare(&self, phys: PhysAddr, pages: u64) -> Result<(), PartialSharing> {
        self.hv.unshare(phys, pages)
    }
}

// SAFETY: every call is forwarded to the model, whose implementation keeps the contract.
unsafe impl PhysMemory for Nesting {
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

impl Platform for Nesting {
    fn is_confidential(&self) -> bool {
        self.hv.is_confidential()
    }
    fn mask_interrupts(&self) -> InterruptState {
        let mut h = self.log.lock().unwrap();
        h.next += 1;
        let s = 0x1000 + h.next;
        h.open.push(s);
        h.masks += 1;
        InterruptState(s)
    }
    fn restore_interrupts(&self, saved: InterruptState) {
        let mut h = self.log.lock().unwrap();
        if h.open.pop() != Some(saved.0) {
            h.wrong += 1;
        }
    }
}

/// Run `call`; it must have masked at least once and restored every mask, innermost first.
fn masks_and_restores<T>(plat: &Nesting, what: &str, call: impl FnOnce() -> T) -> T {
    let before = plat.log.lock().unwrap().masks;
    let r = call();
    let h = plat.log.lock().unwrap();
    assert!(h.masks > before, "{what}: no mask_interrupts");
    assert!(h.open.is_empty(), "{what}: {} mask(s) never restored", h.open.len());
    assert_eq!(h.wrong, 0, "{what}: a restore was handed a state its mask did not return");
    r
}

#[test]
fn every_cold_call_masks_and_restores_what_its_mask_returned() {
    let plat: &'static Nesting = Box::leak(Box::new(Nesting {
        hv: Hypervisor::new(HvConfig::pseries(64 << 20)),
        log: Mutex::new(Hooks::default()),
    }));
    let mut layer: DmaLayer<'static, &'static Nesting> = DmaLayer::new(plat);
    let meta = vec![SlotMeta::EMPTY; 512].leak();
    // SAFETY: the model never hands this range out; the layer owns it from here.
    unsafe { layer.add_pool(PhysAddr(0x80_0000), 1 << 20, meta, PoolConfig::default()) }.unwrap();

    let dev =
        masks_and_restores(plat, "attach", || layer.attach(DeviceConfig::new(1, DmaMask::BITS_32)).unwrap());
    // SAFETY: [32 MiB, 32 MiB + 4 KiB) is model RAM nothing else uses.
    let buf = masks_and_restores(plat, "alloc_coherent", || unsafe {
        layer.alloc_coherent(&dev, PhysAddr(0x200_0000), 1).unwrap()
    });
    masks_and_restores(plat, "free_coherent", || layer.free_coherent(&dev, buf).ok().unwrap());
    let mut data = vec![5u8; 3000];
    let mut list = [SgEntry::new(&mut data)];
    masks_and_restores(plat, "map_sg", || {
        layer.map_sg(&dev, &mut list, DmaDirection::Bidirectional, DmaAttrs::NONE).unwrap()
    });
    masks_and_restores(plat, "unmap_sg", || {
        layer.unmap_sg(&dev, &mut list, DmaDirection::Bidirectional, DmaAttrs::NONE).unwrap()
    });
    masks_and_restores(plat, "live_bus_ranges", || layer.live_bus_ranges());
    masks_and_restores(plat, "growth_tick", || layer.growth_tick());
    masks_and_restores(plat, "detach", || layer.detach(dev).ok().unwrap());
}
