//! A platform over the model whose interrupt hooks are the test's own (the interrupt tests:
//! tests/tests/interrupt_masks_cold_calls.rs, tests/tests/interrupt_hooks_through_references.rs).

use ccdma::{
    DmaLayer, InterruptState, MemorySharing, PartialSharing, PhysAddr, PhysMemory, Platform, PoolConfig,
    SlotMeta,
};
use ccdma_hv_model::{HvConfig, Hypervisor};

/// What a test does when the layer masks interrupts and restores them.
pub trait InterruptHooks: Sync {
    /// `Platform::mask_interrupts`.
    fn mask(&self) -> InterruptState;
    /// `Platform::restore_interrupts`.
    fn restore(&self, saved: InterruptState);
}

/// The model, plus interrupt hooks `H`: every other platform call goes to the model.
pub struct Hooked<H> {
    /// The model.
    pub hv: Hypervisor,
    /// The test's hooks.
    pub hooks: H,
}

impl<H> MemorySharing for Hooked<H> {
    fn share(&self, phys: PhysAddr, pages: u64) -> Result<(), PartialSharing> {
        self.hv.share(phys, pages)
    }
    fn unshare(&self, phys: PhysAddr, pages: u64) -> Result<(), PartialSharing> {
        self.hv.unshare(phys, pages)
    }
}

// SAFETY: every call is forwarded to the model, whose implementation keeps the contract.
unsafe impl<H> PhysMemory for Hooked<H> {
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

impl<H: InterruptHooks> Platform for Hooked<H> {
    fn is_confidential(&self) -> bool {
        self.hv.is_confidential()
    }
    fn mask_interrupts(&self) -> InterruptState {
        self.hooks.mask()
    }
    fn restore_interrupts(&self, saved: InterruptState) {
        self.hooks.restore(saved)
    }
}

/// A 64 MiB pseries model with `hooks` (leaked, so the layer can borrow it for `'static`) and a
/// layer over a reference to it with one 1 MiB pool at 8 MiB.
pub fn hooked_layer<H: InterruptHooks + 'static>(
    hooks: H,
) -> (&'static Hooked<H>, DmaLayer<'static, &'static Hooked<H>>) {
    let plat: &'static Hooked<H> =
        Box::leak(Box::new(Hooked { hv: Hypervisor::new(HvConfig::pseries(64 << 20)), hooks }));
    let mut layer = DmaLayer::new(plat);
    let meta = vec![SlotMeta::EMPTY; 512].leak();
    // SAFETY: the model never hands this range out; the layer owns it from here.
    unsafe { layer.add_pool(PhysAddr(0x80_0000), 1 << 20, meta, PoolConfig::default()) }.unwrap();
    (plat, layer)
}
