//! `ffi.c_driver`: C code linked into the kernel (`c/ffi_check.c`, compiled freestanding by
//! `build.rs`) drives ccdma through its C interface (the `ccdma-ffi` crate, as an rlib) over this
//! kernel's own platform: the sharing and translation calls of `ccdma_platform` are this kernel's
//! (`PLATFORM`, so the page ledger sees every share and unshare), and the C code's "device" may touch
//! only what the ledger says is shared. A layer of its own, with its own pool and coherent pages, on
//! the path a confidential guest without IOMMU takes (bounce always).

use ccdma::{MemorySharing, PhysAddr, PhysMemory};
use ccdma_ffi::ccdma_platform;
use core::ffi::{c_int, c_void};

use crate::memory::{self, StaticRegion, PAGE_SIZE};
use crate::platform::PLATFORM;
use crate::report::Report;

/// The C side's pool: 64 slots of 2 KiB.
const POOL_LEN: usize = 128 << 10;
/// Driver buffers (three pages for the list) and two pages for the coherent buffer.
const BUFS_LEN: usize = 3 * PAGE_SIZE;

#[repr(C, align(4096))]
struct Pages<const N: usize>(StaticRegion<N>);

static POOL: Pages<POOL_LEN> = Pages(StaticRegion::new());
static BUFS: Pages<BUFS_LEN> = Pages(StaticRegion::new());
static COHERENT: Pages<{ 2 * PAGE_SIZE }> = Pages(StaticRegion::new());

/// `struct c_memory` of `c/ffi_check.c`.
#[repr(C)]
struct CMemory {
    pool_phys: u64,
    pool_len: usize,
    bufs: *mut u8,
    bufs_len: usize,
    coherent_phys: u64,
    shared: extern "C" fn(bus: u64, len: usize) -> c_int,
    cpu_of: extern "C" fn(phys: u64, len: usize) -> *mut u8,
}

/// `struct c_result` of `c/ffi_check.c`.
#[repr(C)]
#[derive(Default)]
struct CResult {
    maps: u32,
    segments: u32,
    checks: u32,
    failures: u32,
    first_line: u32,
    first_code: c_int,
}

extern "C" {
    /// Runs the C code's checks; returns the number that failed (also in `out`).
    fn c_driver_check(platform: *const ccdma_platform, mem: *const CMemory, out: *mut CResult) -> c_int;
}

extern "C" fn shared(bus: u64, len: usize) -> c_int {
    c_int::from(len > 0 && PLATFORM.ledger().all_shared(bus, len as u64).is_ok())
}

extern "C" fn cpu_of(phys: u64, len: usize) -> *mut u8 {
    PLATFORM.cpu_ptr(PhysAddr(phys), len).map_or(core::ptr::null_mut(), |p| p.as_ptr())
}

unsafe extern "C" fn share(_: *mut c_void, phys: u64, pages: u64, done: *mut u64) -> c_int {
    sharing(PLATFORM.share(PhysAddr(phys), pages), pages, done)
}

unsafe extern "C" fn unshare(_: *mut c_void, phys: u64, pages: u64, done: *mut u64) -> c_int {
    sharing(PLATFORM.unshare(PhysAddr(phys), pages), pages, done)
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

unsafe extern "C" fn cpu_ptr(_: *mut c_void, phys: u64, len: usize) -> *mut c_void {
    PLATFORM.cpu_ptr(PhysAddr(phys), len).map_or(core::ptr::null_mut(), |p| p.as_ptr().cast())
}

unsafe extern "C" fn virt_to_phys(_: *mut c_void, ptr: *const c_void, len: usize, phys: *mut u64) -> c_int {
    match PLATFORM.virt_to_phys(ptr.cast(), len) {
        Some(p) => {
            // SAFETY: ccdma-ffi (or the C code) passes a valid out pointer.
            unsafe { phys.write(p.0) };
            0
        }
        None => -1,
    }
}

unsafe extern "C" fn ram_end(_: *mut c_void) -> u64 {
    PLATFORM.ram_end().0
}

/// Runs the C code once and reports what it saw.
pub(super) fn check_c_driver(report: &mut Report) {
    let platform = ccdma_platform {
        ctx: core::ptr::null_mut(),
        confidential: 1,
        share: Some(share),
        unshare: Some(unshare),
        cpu_ptr: Some(cpu_ptr),
        virt_to_phys: Some(virt_to_phys),
        ram_end: Some(ram_end),
        iommu: core::ptr::null(),
        accept: None,
        revoke: None,
        private_bus_addr: None,
        shared_bus: ccdma_ffi::ccdma_bus_encoding::IDENTITY,
        mask_interrupts: None,
        restore_interrupts: None,
    };
    let mem = CMemory {
        pool_phys: memory::phys_of(POOL.0.base()),
        pool_len: POOL_LEN,
        bufs: BUFS.0.base(),
        bufs_len: BUFS_LEN,
        coherent_phys: memory::phys_of(COHERENT.0.base()),
        shared,
        cpu_of,
    };
    let shared_before = PLATFORM.ledger().stats().shared_pages;
    let mut out = CResult::default();
    // SAFETY: the C code uses the platform table (whose functions keep ccdma_platform's contract:
    // they forward to this kernel's platform), the memory described by `mem` (statics used by
    // nothing else, and run once), and writes `out`; it keeps no pointer after returning.
    let failed = unsafe { c_driver_check(&platform, &mem, &mut out) };
    let shared_after = PLATFORM.ledger().stats().shared_pages;
    report.expect(
        "ffi.c_driver",
        failed == 0 && out.failures == 0 && out.maps == 6 && shared_after == shared_before,
        format_args!(
            "C code through ccdma's C interface over this kernel's platform: {} maps of 3000 B (32- and 64-bit devices, 3 directions) byte-exact at shared bus addresses, originals private; SKIP_CPU_SYNC and sync_for_cpu; a list of 3 buffers in {} segment(s) with sync_sg_for_cpu; a coherent buffer shared then private; fini refused while busy, then the pool private ({shared_before} pages shared before, {shared_after} after); {} of {} conditions failed{}",
            out.maps,
            out.segments,
            out.failures,
            out.checks,
            FirstFailure(&out)
        ),
    );
}

struct FirstFailure<'a>(&'a CResult);

impl core::fmt::Display for FirstFailure<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter) -> core::fmt::Result {
        if self.0.failures == 0 {
            return Ok(());
        }
        write!(f, " (first at ffi_check.c:{}, code {})", self.0.first_line, self.0.first_code)
    }
}
