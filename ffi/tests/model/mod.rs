//! The C platform table (`struct ccdma_platform`) over the hypervisor model: each function of the
//! table forwards to `ccdma-hv-model` through `ctx`, so the C interface runs against the same model
//! (fault log, page states, call counters) as the Rust tests of the guest crate.
#![allow(dead_code)]

use std::ffi::{c_int, c_void};

use ccdma::{DeviceTrust, MemorySharing, PhysAddr, PhysMemory};
use ccdma_ffi::*;
use ccdma_hv_model::{HvConfig, Hypervisor, Region};

/// Base of the model guest's bounce pool (below the model's test allocations at 1 GiB).
pub const POOL_PHYS: u64 = 0x10_0000;
/// Its length: 128 slots of 2 KiB.
pub const POOL_LEN: usize = 256 << 10;

/// Caller memory for a layer.
#[repr(C, align(128))]
pub struct LayerMem(pub [u8; CCDMA_LAYER_SIZE]);
/// Caller memory for a device.
#[repr(C, align(16))]
pub struct DevMem(pub [u8; CCDMA_DEVICE_SIZE]);
/// Caller memory for a coherent buffer.
#[repr(C, align(16))]
pub struct CohMem(pub [u8; CCDMA_COHERENT_SIZE]);
/// Caller memory for a list of up to 4 entries.
#[repr(C, align(16))]
pub struct SgMem(pub [u8; 4 * CCDMA_SG_ENTRY_SIZE]);

impl LayerMem {
    pub fn new() -> Box<LayerMem> {
        Box::new(LayerMem([0; CCDMA_LAYER_SIZE]))
    }
    pub fn ptr(&mut self) -> *mut ccdma_layer {
        self.0.as_mut_ptr().cast()
    }
}
impl DevMem {
    pub fn new() -> Box<DevMem> {
        Box::new(DevMem([0; CCDMA_DEVICE_SIZE]))
    }
    pub fn ptr(&mut self) -> *mut ccdma_device {
        self.0.as_mut_ptr().cast()
    }
}
impl CohMem {
    pub fn new() -> Box<CohMem> {
        Box::new(CohMem([0; CCDMA_COHERENT_SIZE]))
    }
    pub fn ptr(&mut self) -> *mut ccdma_coherent {
        self.0.as_mut_ptr().cast()
    }
}
impl SgMem {
    pub fn new() -> Box<SgMem> {
        Box::new(SgMem([0; 4 * CCDMA_SG_ENTRY_SIZE]))
    }
    pub fn ptr(&mut self) -> *mut c_void {
        self.0.as_mut_ptr().cast()
    }
}

fn hv<'a>(ctx: *mut c_void) -> &'a Hypervisor {
    // SAFETY: every table built here passes a `Hypervisor` that outlives the layer as `ctx`.
    unsafe { &*ctx.cast::<Hypervisor>() }
}

fn sharing(r: Result<(), ccdma::PartialSharing>, pages: u64, done: *mut u64) -> c_int {
    let (n, rc) = match r {
        Ok(()) => (pages, 0),
        Err(p) => (p.pages_done, -1),
    };
    // SAFETY: ccdma-ffi passes a valid out pointer.
    unsafe { done.write(n) };
    rc
}
unsafe extern "C" fn share(ctx: *mut c_void, phys: u64, pages: u64, done: *mut u64) -> c_int {
    sharing(hv(ctx).share(PhysAddr(phys), pages), pages, done)
}
unsafe extern "C" fn unshare(ctx: *mut c_void, phys: u64, pages: u64, done: *mut u64) -> c_int {
    sharing(hv(ctx).unshare(PhysAddr(phys), pages), pages, done)
}
unsafe extern "C" fn cpu_ptr(ctx: *mut c_void, phys: u64, len: usize) -> *mut c_void {
    hv(ctx).cpu_ptr(PhysAddr(phys), len).map_or(std::ptr::null_mut(), |p| p.as_ptr().cast())
}
unsafe extern "C" fn virt_to_phys(ctx: *mut c_void, ptr: *const c_void, len: usize, phys: *mut u64) -> c_int {
    match hv(ctx).virt_to_phys(ptr.cast(), len) {
        Some(p) => {
            // SAFETY: ccdma-ffi passes a valid out pointer.
            unsafe { phys.write(p.0) };
            0
        }
        None => -1,
    }
}
unsafe extern "C" fn ram_end(ctx: *mut c_void) -> u64 {
    hv(ctx).ram_end().0
}
unsafe extern "C" fn accept(ctx: *mut c_void, device: u32) -> c_int {
    hv(ctx).accept_device(device).map_or(-1, |()| 0)
}
unsafe extern "C" fn revoke(ctx: *mut c_void, device: u32) -> c_int {
    hv(ctx).revoke_device(device).map_or(-1, |()| 0)
}

/// The table over `hv`: sharing, translation and trust from the model; no IOMMU; identity bus
/// addresses (the caller sets `shared_bus` for SEV or CCA).
pub fn table(hv: &Hypervisor) -> ccdma_platform {
    ccdma_platform {
        ctx: (hv as *const Hypervisor).cast_mut().cast(),
        confidential: c_int::from(hv.config().confidential),
        share: Some(share),
        unshare: Some(unshare),
        cpu_ptr: Some(cpu_ptr),
        virt_to_phys: Some(virt_to_phys),
        ram_end: Some(ram_end),
        iommu: std::ptr::null(),
        accept: Some(accept),
        revoke: Some(revoke),
        private_bus_addr: None,
        shared_bus: ccdma_bus_encoding::IDENTITY,
        mask_interrupts: None,
        restore_interrupts: None,
    }
}

/// A confidential guest of 2 GiB in the model with a layer over it and one pool.
pub struct Guest {
    pub hv: Box<Hypervisor>,
    /// The layer's memory (a leaked box, freed on drop: the layer is used through raw pointers only).
    layer_mem: *mut LayerMem,
    pub meta: Vec<u64>,
}

impl Drop for Guest {
    fn drop(&mut self) {
        // SAFETY: made by `Box::into_raw` in `with_table`, freed once, here.
        drop(unsafe { Box::from_raw(self.layer_mem) });
    }
}

impl Guest {
    pub fn new(config: HvConfig) -> Guest {
        Guest::with_table(config, |_| {})
    }

    /// As `new`, with the table changed by `edit` before the layer is made.
    pub fn with_table(config: HvConfig, edit: impl FnOnce(&mut ccdma_platform)) -> Guest {
        let hv = Box::new(Hypervisor::new(config));
        let layer_mem = Box::into_raw(LayerMem::new());
        let mut t = table(&hv);
        edit(&mut t);
        // SAFETY: memory of the stated size and alignment, kept alive by the `Guest`; the table
        // forwards to `hv`, kept alive too.
        let rc = unsafe { ccdma_layer_init(layer_mem.cast(), CCDMA_LAYER_SIZE, &t) };
        assert_eq!(rc, CCDMA_OK, "layer_init");
        let slots = POOL_LEN / CCDMA_SLOT_SIZE;
        let mut meta = vec![0u64; slots * CCDMA_SLOT_META_SIZE / 8];
        // SAFETY: the layer is initialised; pool RAM and metadata unused by anything else.
        let rc = unsafe {
            ccdma_add_pool(layer_mem.cast(), POOL_PHYS, POOL_LEN, meta.as_mut_ptr().cast(), meta.len() * 8)
        };
        assert_eq!(rc, 0, "add_pool");
        Guest { hv, layer_mem, meta }
    }

    pub fn layer(&self) -> *mut ccdma_layer {
        self.layer_mem.cast()
    }

    /// Attach device `id` (`mask_bits`) into `mem`, also adding it to the model.
    pub fn attach(&self, mem: &mut DevMem, id: u32, mask_bits: u32) -> c_int {
        self.hv.add_device(id, mask_bits);
        // SAFETY: an initialised layer; device memory of the stated size and alignment.
        unsafe { ccdma_attach(self.layer(), mem.0.as_mut_ptr().cast(), CCDMA_DEVICE_SIZE, id, mask_bits) }
    }

    /// `len` bytes of private guest RAM: (phys, CPU pointer).
    pub fn buffer(&self, len: usize) -> (u64, *mut u8) {
        let phys = self.hv.alloc(len as u64, Region::Low);
        let p = self.hv.cpu_ptr(PhysAddr(phys), len).expect("model RAM");
        (phys, p.as_ptr())
    }
}
