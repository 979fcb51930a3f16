//! C interface to ccdma.
//!
//! - A platform written in C: [`ccdma_platform`], a table of function pointers and a context pointer,
//!   implementing ccdma's `MemorySharing`, `PhysMemory` and `Platform`.
//! - Opaque handles ([`ccdma_layer`], [`ccdma_device`], [`ccdma_coherent`], scatter-gather entries) that
//!   live in caller memory: the header states their sizes and alignments ([`CCDMA_LAYER_SIZE`], ...),
//!   and `ccdma_layer_init` / `ccdma_attach` / ... initialise them in place, so no large value is
//!   returned by value onto a firmware stack.
//! - Integer error codes ([`CCDMA_OK`] and one negative code per family of `DmaError` variants) with
//!   [`ccdma_strerror`].
//!
//! - An IOMMU written in C ([`ccdma_iommu`], named by the platform table): a native backend that maps
//!   ranges, under ccdma's premapped or strict policy ([`ccdma_enable_iommu`]). PAPR TCE hypercalls
//!   are not reachable through this interface.
//! - Attributes ([`CCDMA_ATTR_SKIP_CPU_SYNC`], ...) on the `*_attrs` calls, syncs of live mappings
//!   and lists, and teardown ([`ccdma_release_pools`], [`ccdma_layer_fini`]).
//! - Trusted device I/O: devices the platform accepts (its table's optional `accept` / `revoke`)
//!   map private buffers in place ([`ccdma_accept`], [`ccdma_revoke`], [`CCDMA_ATTR_CC_SHARED`],
//!   [`ccdma_device_path`]).
//!
//! # Panics and unwinding
//! The library code never panics on any input: null pointers, short or misaligned memory and bad
//! arguments return error codes. Should a panic happen anyway, it cannot unwind into C: since Rust
//! 1.81 a panic leaving an `extern "C"` function aborts.
//!
//! # `no_std`
//! The crate is `no_std`. Feature `std` (default) links std, which brings the panic handler a host
//! staticlib needs: that is the build the C demo links. Firmware written in Rust builds with
//! `default-features = false` and links the rlib into its `no_std` image, which has its own panic
//! handler (`cargo rustc -p ccdma-ffi --lib --no-default-features --crate-type rlib` builds it).
//! For C firmware, `--no-default-features --features panic-handler` adds a handler that spins; that
//! staticlib needs a target whose panics abort (a freestanding target, or `-Zbuild-std` with
//! `panic = "abort"`): on a hosted target the precompiled `core` unwinds and rustc refuses. That
//! build is not exercised by the tests. The `no_std` rlib is: the x86 test kernel links it with C
//! code that calls it (`qemu/kernel/c/ffi_check.c`, check `ffi.c_driver`).
//!
//! # Stack use
//! `ccdma_layer_init` builds the layer (about 27 KiB) field by field in the caller's memory
//! (`DmaLayer::init_in`): no frame holds the layer; `bash scripts/budgets.sh` prints the frames and
//! fails above its ceilings.
#![no_std]
#![warn(missing_docs)]
#![allow(non_camel_case_types)]

#[cfg(feature = "std")]
extern crate std;

mod attrs;
mod handle;
mod iommu;
mod teardown;
mod trust;

pub use attrs::*;
pub use iommu::*;
pub use teardown::*;
pub use trust::*;

use core::ffi::{c_char, c_int, c_void};
use core::mem::{align_of, size_of};
use core::ptr::NonNull;

use handle::{Kind, Tag};

use ccdma::sg::SgEntry;
use ccdma::{
    CoherentBuffer, Device, DeviceConfig, DmaAttrs, DmaDirection, DmaError, DmaLayer, DmaMask, FreeError,
    MemorySharing, PartialSharing, PhysAddr, PhysMemory, Platform, PoolConfig, SharingErrorKind, SlotMeta,
};

#[cfg(all(feature = "panic-handler", not(feature = "std")))]
#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    loop {
        core::hint::spin_loop();
    }
}

// ---------------------------------------------------------------------------------------------
// Error codes
// ---------------------------------------------------------------------------------------------

/// Success.
pub const CCDMA_OK: c_int = 0;
/// A required pointer argument (or platform function) is null.
pub const CCDMA_ERR_NULL: c_int = -1;
/// Caller memory is smaller than the stated size or misaligned.
pub const CCDMA_ERR_MEMORY: c_int = -2;
/// An invalid argument: mask, direction, length zero or too large, unaligned address, overflow, pool
/// metadata too small, bad configuration.
pub const CCDMA_ERR_INVALID: c_int = -3;
/// Pools: too many, or overlapping.
pub const CCDMA_ERR_POOL: c_int = -4;
/// No room: the device's pools have no free run (retry after unmaps), no free IOMMU domain, or (a
/// device using buffers in place: direct, trusted) all of the layer's raw-mapping records in use.
pub const CCDMA_ERR_EXHAUSTED: c_int = -5;
/// The platform refused to share or unshare memory (pages may be quarantined).
pub const CCDMA_ERR_SHARING: c_int = -6;
/// The device cannot reach the memory: no pool below its mask, beyond the mask, no translation.
pub const CCDMA_ERR_NO_PATH: c_int = -7;
/// Misuse: a handle that is not live (freed, detached, finished, never initialised, of another layer or
/// device, a list unmapped or named with another count), memory that already holds a live handle of
/// the kind being made, an unknown mapping, a size or direction mismatch, a wrong device. Nothing
/// changed.
pub const CCDMA_ERR_MISUSE: c_int = -8;
/// The device still has live mappings or buffers, or a detach did not complete.
pub const CCDMA_ERR_BUSY: c_int = -9;
/// An IOMMU error: the C IOMMU (`ccdma_iommu`) failed a `map` or `unmap` (a premapped attach, a
/// strict map, a coherent buffer behind it), or `ccdma_enable_iommu` on a layer whose IOMMU path is
/// already on.
pub const CCDMA_ERR_IOMMU: c_int = -10;
/// Trusted device I/O: the guest is not confidential or the platform table has no `accept`, or the
/// trusted platform refused to accept (or failed to revoke) the device.
pub const CCDMA_ERR_TRUST: c_int = -11;
/// The call needs a part of ccdma this build of the library left out (a Cargo feature of
/// `ccdma-ffi`, passed on to `ccdma`: `growth`, `trusted-devices`, `scatter-gather`, `papr-tce`,
/// `native-iommu`; ccdma's `ddw`, `pool-full-report` and `stats` are never on in this library and
/// no call needs them). Nothing changed.
pub const CCDMA_ERR_UNSUPPORTED: c_int = -12;

/// The error code of a `DmaError` (one per family; exhaustive, so a new variant must be placed).
fn code(e: &DmaError) -> c_int {
    use DmaError as E;
    match e {
        E::InvalidMask { .. }
        | E::InvalidSlotSize(_)
        | E::InvalidMaxRun(_)
        | E::InvalidAreas(_)
        | E::PoolTooSmall { .. }
        | E::Unaligned { .. }
        | E::Overflow
        | E::InvalidMinAlignMask(_)
        | E::InvalidSegmentBoundary(_)
        | E::ZeroMaxSegment
        | E::InvalidMaxDomains(_)
        | E::InvalidListPages(_)
        | E::RangeStorageTooSmall { .. }
        | E::BadWindowGeometry { .. }
        | E::CoherentUnaligned { .. }
        | E::MetadataTooSmall { .. }
        | E::ZeroLength
        | E::TooLarge { .. } => CCDMA_ERR_INVALID,
        E::PoolOverlap { .. } | E::TooManyPools | E::GrowthAlreadyEnabled | E::GrowthFailed(_) => {
            CCDMA_ERR_POOL
        }
        E::PoolExhausted { .. }
        | E::NoFreeDomain { .. }
        | E::TooManyDevices { .. }
        | E::RawRecordsFull { .. } => CCDMA_ERR_EXHAUSTED,
        E::SharingFailed { .. } | E::UnsharingFailed { .. } | E::CoherentQuarantined { .. } => {
            CCDMA_ERR_SHARING
        }
        E::NoCpuMapping(_)
        | E::NoPath { .. }
        | E::NotTranslatable
        | E::BeyondMask { .. }
        | E::NoIommuPath { .. }
        | E::IommuPageTooLarge { .. } => CCDMA_ERR_NO_PATH,
        E::TrustUnavailable | E::AcceptRefused { .. } | E::RevokeRefused { .. } => CCDMA_ERR_TRUST,
        E::WrongDevice { .. }
        | E::OwnedByMapping(_)
        | E::UnknownMapping(_)
        | E::SizeMismatch { .. }
        | E::DirectionMismatch { .. }
        | E::OutOfRange { .. }
        | E::WrongDirection
        | E::NotAttached
        | E::DeviceIdInUse(_)
        | E::SegmentLimit { .. }
        | E::SgListState { .. } => CCDMA_ERR_MISUSE,
        E::Busy { .. } | E::DomainsInUse | E::DetachIncomplete => CCDMA_ERR_BUSY,
        E::IommuAlreadyEnabled | E::IommuNotEnabled | E::Iommu(_) | E::P2pUnsupported { .. } => {
            CCDMA_ERR_IOMMU
        }
        E::FeatureDisabled { .. } => CCDMA_ERR_UNSUPPORTED,
    }
}

fn result(r: Result<(), DmaError>) -> c_int {
    match r {
        Ok(()) => CCDMA_OK,
        Err(e) => code(&e),
    }
}

/// A static, NUL-terminated description of an error code (never null).
#[no_mangle]
pub extern "C" fn ccdma_strerror(code: c_int) -> *const c_char {
    let s: &'static core::ffi::CStr = match code {
        CCDMA_OK => c"success",
        CCDMA_ERR_NULL => c"null pointer argument or platform function",
        CCDMA_ERR_MEMORY => c"caller memory too small or misaligned",
        CCDMA_ERR_INVALID => c"invalid argument",
        CCDMA_ERR_POOL => c"too many pools, or pools overlap",
        CCDMA_ERR_EXHAUSTED => c"bounce pool exhausted",
        CCDMA_ERR_SHARING => c"the platform refused to share or unshare memory",
        CCDMA_ERR_NO_PATH => c"the device cannot reach the memory",
        CCDMA_ERR_MISUSE => c"misuse: a handle that is not live or not this layer's or device's, an unknown mapping, or a mismatch with how it was mapped",
        CCDMA_ERR_BUSY => c"device busy: live mappings or buffers",
        CCDMA_ERR_IOMMU => c"IOMMU error: the IOMMU failed a map or unmap, or its path is already on",
        CCDMA_ERR_TRUST => c"no trusted device I/O, or the platform refused to accept or revoke the device",
        _ => c"unknown error code",
    };
    s.as_ptr()
}

// ---------------------------------------------------------------------------------------------
// Platform
// ---------------------------------------------------------------------------------------------

/// A platform written in C. Every function gets `ctx` back as its first argument.
///
/// Contract (the layer's soundness rests on it): the functions answer truthfully and may be called
/// from any CPU that calls into ccdma, also concurrently.
/// - `share` / `unshare` make `pages` 4 KiB pages at `phys` shared with (private from) the host; they
///   return 0 on success, or non-zero with `*pages_done` set to the number of leading pages that were
///   changed.
/// - `cpu_ptr` returns a pointer through which the CPU reaches `[phys, phys + len)` (valid for reads
///   and writes of `len` bytes for as long as the layer lives), or NULL when that range is not RAM.
/// - `virt_to_phys` writes the physical address of `ptr` to `*phys` and returns 0 when
///   `[ptr, ptr + len)` is physically contiguous RAM, non-zero otherwise.
/// - `ram_end` returns the end of guest RAM (one past the highest physical address).
///
/// Trusted device I/O (TDISP with PCIe IDE: TDX Connect, SEV-TIO, Arm CCA device assignment), the
/// optional trailing functions: `accept` and `revoke` are both NULL (no trusted platform: every
/// device bounces, `ccdma_accept` answers `CCDMA_ERR_TRUST`) or both set (one alone: `ccdma_layer_init`
/// answers `CCDMA_ERR_NULL`). They answer from the trusted platform component (the TSM), never from
/// the untrusted hypervisor alone: an accepted device reaches private memory on their word.
/// - `accept` returns 0 only when device `device` (the `id` given to `ccdma_attach`) is bound to this
///   guest, running under TDISP with its link protected, and may now reach private memory; non-zero
///   otherwise.
/// - `revoke` withdraws that: from its return on, the platform refuses the device's accesses to
///   private memory. 0 on success (also for a device that is not accepted), non-zero otherwise.
/// - `private_bus_addr` returns the bus address an accepted device without IOMMU uses for private
///   memory at `phys` (e.g. with the SEV C-bit set); NULL means identity.
///
/// Shared memory (bounce pools, coherent buffers of untrusted devices) is reached by a device without
/// IOMMU at the bus address `shared_bus` makes of its physical address: all zero (the value a table
/// initialised with `{ .share = ..., ... }` has) is identity, right for TDX and pseries; AMD SEV clears
/// the C-bit (`CCDMA_BUS_ENCODING_SEV(c_bit)`), an Arm CCA realm sets the top IPA bit
/// (`CCDMA_BUS_ENCODING_CCA(ipa_bits)`). `set` and `clear` must not share a bit (`ccdma_layer_init`
/// answers `CCDMA_ERR_INVALID`).
///
/// Interrupts, the optional last pair: both NULL or both set (one alone: `ccdma_layer_init` answers
/// `CCDMA_ERR_NULL`). ccdma's locks spin, so a ccdma call made from an interrupt handler (an EDK2
/// event notification) that interrupted a ccdma call on the same CPU would spin for ever. With the
/// pair set, every ccdma call that can take a lock runs between `mask_interrupts` and
/// `restore_interrupts`, and any ccdma function may be called from an interrupt handler; with both
/// NULL, no ccdma call may be made from a context that can interrupt one.
/// - `mask_interrupts` masks interrupts on this CPU (a kernel saves the flags and disables IRQs;
///   EDK2 calls `RaiseTPL(TPL_HIGH_LEVEL)`) and returns what `restore_interrupts` needs.
/// - `restore_interrupts` puts back the state `saved` (EDK2: `RestoreTPL(saved)`). Calls nest: each
///   restores exactly what its `mask_interrupts` found. While masked, ccdma calls only this table's
///   other functions, which must therefore work with interrupts masked.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ccdma_platform {
    /// Passed back to every function.
    pub ctx: *mut c_void,
    /// Non-zero in a confidential guest (memory private until shared).
    pub confidential: c_int,
    /// Share pages with the host.
    pub share:
        Option<unsafe extern "C" fn(ctx: *mut c_void, phys: u64, pages: u64, pages_done: *mut u64) -> c_int>,
    /// Make pages private again.
    pub unshare:
        Option<unsafe extern "C" fn(ctx: *mut c_void, phys: u64, pages: u64, pages_done: *mut u64) -> c_int>,
    /// The CPU's pointer to a physical range, or NULL.
    pub cpu_ptr: Option<unsafe extern "C" fn(ctx: *mut c_void, phys: u64, len: usize) -> *mut c_void>,
    /// The physical address of a CPU range; 0 on success.
    pub virt_to_phys: Option<
        unsafe extern "C" fn(ctx: *mut c_void, ptr: *const c_void, len: usize, phys: *mut u64) -> c_int,
    >,
    /// End of guest RAM.
    pub ram_end: Option<unsafe extern "C" fn(ctx: *mut c_void) -> u64>,
    /// The IOMMU devices sit behind (copied at `ccdma_layer_init`), or NULL for none.
    pub iommu: *const ccdma_iommu,
    /// Accept a device for direct access to private memory; 0 when accepted. NULL (with `revoke`):
    /// no trusted device I/O.
    pub accept: Option<unsafe extern "C" fn(ctx: *mut c_void, device: u32) -> c_int>,
    /// Revoke a device's acceptance; 0 on success. NULL exactly when `accept` is.
    pub revoke: Option<unsafe extern "C" fn(ctx: *mut c_void, device: u32) -> c_int>,
    /// The private bus address of `phys` for an accepted device without IOMMU; NULL: identity.
    pub private_bus_addr: Option<unsafe extern "C" fn(ctx: *mut c_void, phys: u64) -> u64>,
    /// The bus address of shared memory for a device without IOMMU (zero: identity).
    pub shared_bus: ccdma_bus_encoding,
    /// Mask interrupts on this CPU and return the state found. NULL (with `restore_interrupts`): no
    /// masking.
    pub mask_interrupts: Option<unsafe extern "C" fn(ctx: *mut c_void) -> usize>,
    /// Restore the state `mask_interrupts` returned. NULL exactly when `mask_interrupts` is.
    pub restore_interrupts: Option<unsafe extern "C" fn(ctx: *mut c_void, saved: usize)>,
}

/// How a device without IOMMU addresses shared memory: the bus address of physical address `phys`
/// is `(phys | set) & ~clear` (and back: `bus & ~set & ~clear`). The platform table's
/// shared-bus-address hook (`ccdma_platform.shared_bus`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ccdma_bus_encoding {
    /// Bits set in every shared bus address (Arm CCA: the top IPA bit, the unprotected alias).
    pub set: u64,
    /// Bits cleared in every shared bus address (AMD SEV: the C-bit).
    pub clear: u64,
}

impl ccdma_bus_encoding {
    /// Identity: bus address = physical address (TDX, pseries, a guest that is not confidential).
    pub const IDENTITY: ccdma_bus_encoding = ccdma_bus_encoding { set: 0, clear: 0 };
}

/// The C table, checked (no null function) and copied into the layer.
struct CPlatform {
    ctx: *mut c_void,
    confidential: bool,
    share: unsafe extern "C" fn(*mut c_void, u64, u64, *mut u64) -> c_int,
    unshare: unsafe extern "C" fn(*mut c_void, u64, u64, *mut u64) -> c_int,
    cpu_ptr: unsafe extern "C" fn(*mut c_void, u64, usize) -> *mut c_void,
    virt_to_phys: unsafe extern "C" fn(*mut c_void, *const c_void, usize, *mut u64) -> c_int,
    ram_end: unsafe extern "C" fn(*mut c_void) -> u64,
    iommu: Option<iommu::CIommu>,
    trust: Option<trust::CTrust>,
    shared_bus: ccdma::BusEncoding,
    /// `mask_interrupts` and `restore_interrupts`, both or neither.
    irq: Option<(unsafe extern "C" fn(*mut c_void) -> usize, unsafe extern "C" fn(*mut c_void, usize))>,
}

// SAFETY: the header's contract for `ccdma_platform` requires its functions (and so `ctx`) to be
// usable from any CPU, concurrently; the struct holds nothing else.
unsafe impl Sync for CPlatform {}
// SAFETY: as above.
unsafe impl Send for CPlatform {}

impl CPlatform {
    fn from_table(t: &ccdma_platform) -> Option<CPlatform> {
        Some(CPlatform {
            ctx: t.ctx,
            confidential: t.confidential != 0,
            share: t.share?,
            unshare: t.unshare?,
            cpu_ptr: t.cpu_ptr?,
            virt_to_phys: t.virt_to_phys?,
            ram_end: t.ram_end?,
            iommu: iommu::CIommu::from_table(t.iommu).ok()?,
            trust: trust::CTrust::from_table(t).ok()?,
            shared_bus: ccdma::BusEncoding { set: t.shared_bus.set, clear: t.shared_bus.clear },
            irq: match (t.mask_interrupts, t.restore_interrupts) {
                (Some(mask), Some(restore)) => Some((mask, restore)),
                (None, None) => None,
                _ => return None,
            },
        })
    }

    fn sharing(
        &self,
        f: unsafe extern "C" fn(*mut c_void, u64, u64, *mut u64) -> c_int,
        phys: PhysAddr,
        pages: u64,
    ) -> Result<(), PartialSharing> {
        let mut done = 0u64;
        // SAFETY: a function of the C table with its own context; `done` is a valid out pointer.
        let rc = unsafe { f(self.ctx, phys.0, pages, &mut done) };
        if rc == 0 {
            Ok(())
        } else {
            // A count beyond the request is clamped: the layer rolls back at most what it asked for.
            Err(PartialSharing { pages_done: done.min(pages), kind: SharingErrorKind::Hypervisor(rc.into()) })
        }
    }
}

impl MemorySharing for CPlatform {
    fn share(&self, phys: PhysAddr, pages: u64) -> Result<(), PartialSharing> {
        self.sharing(self.share, phys, pages)
    }
    fn unshare(&self, phys: PhysAddr, pages: u64) -> Result<(), PartialSharing> {
        self.sharing(self.unshare, phys, pages)
    }
}

// SAFETY: `PhysMemory` asks for truthful translations: `cpu_ptr` valid for `len` bytes of the named
// RAM, `virt_to_phys` the real physical address of a contiguous range, `ram_end` the real end. The C
// platform promises exactly this in the documented contract of `struct ccdma_platform` (the header),
// which a caller of `ccdma_layer_init` (an `unsafe` function) must uphold; this impl passes the
// answers through unchanged, turning NULL into `None` and a non-zero status into `None`.
unsafe impl PhysMemory for CPlatform {
    fn cpu_ptr(&self, phys: PhysAddr, len: usize) -> Option<NonNull<u8>> {
        // SAFETY: a function of the C table with its own context.
        NonNull::new(unsafe { (self.cpu_ptr)(self.ctx, phys.0, len) }.cast::<u8>())
    }
    fn virt_to_phys(&self, ptr: *const u8, len: usize) -> Option<PhysAddr> {
        let mut phys = 0u64;
        // SAFETY: a function of the C table with its own context; `phys` is a valid out pointer.
        let rc = unsafe { (self.virt_to_phys)(self.ctx, ptr.cast(), len, &mut phys) };
        (rc == 0).then_some(PhysAddr(phys))
    }
    fn ram_end(&self) -> PhysAddr {
        // SAFETY: a function of the C table with its own context.
        PhysAddr(unsafe { (self.ram_end)(self.ctx) })
    }
}

impl Platform for CPlatform {
    fn is_confidential(&self) -> bool {
        self.confidential
    }
    fn shared_bus_addr(&self, phys: PhysAddr) -> ccdma::BusAddr {
        self.shared_bus.bus(phys)
    }
    fn shared_phys_addr(&self, bus: ccdma::BusAddr) -> PhysAddr {
        self.shared_bus.phys(bus)
    }
    fn iommu_backend(&self) -> Option<&dyn ccdma::iommu::IommuBackend> {
        self.iommu.as_ref().map(|b| b as &dyn ccdma::iommu::IommuBackend)
    }
    fn device_trust(&self) -> Option<&dyn ccdma::DeviceTrust> {
        self.trust.as_ref().map(|t| t as &dyn ccdma::DeviceTrust)
    }
    fn mask_interrupts(&self) -> ccdma::InterruptState {
        match self.irq {
            // SAFETY: a function of the C table with its own context.
            Some((mask, _)) => ccdma::InterruptState(unsafe { mask(self.ctx) }),
            None => ccdma::InterruptState(0),
        }
    }
    fn restore_interrupts(&self, saved: ccdma::InterruptState) {
        if let Some((_, restore)) = self.irq {
            // SAFETY: a function of the C table with its own context; `saved` is what its
            // `mask_interrupts` returned.
            unsafe { restore(self.ctx, saved.0) }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Handles in caller memory
// ---------------------------------------------------------------------------------------------

/// A DMA layer (opaque; lives in caller memory of [`CCDMA_LAYER_SIZE`] bytes aligned to
/// [`CCDMA_LAYER_ALIGN`]: `CCDMA_ALIGNED(CCDMA_LAYER_ALIGN) static uint8_t mem[CCDMA_LAYER_SIZE];`,
/// `ccdma_layer_init(mem, sizeof mem, &platform)`, then `(struct ccdma_layer *)mem` is the handle).
///
/// Handle rules (layers, devices, coherent buffers, lists alike): a handle is memory the caller lends,
/// live from the call that makes it (`ccdma_layer_init`, `ccdma_attach`, `ccdma_alloc_coherent`,
/// `ccdma_map_sg`) until the call that ends it succeeds (`ccdma_layer_fini`, `ccdma_detach`,
/// `ccdma_free_coherent`, `ccdma_unmap_sg`); a refused end leaves it live. A call given a handle that
/// is not live (ended, never made, a byte copy at another address) or of another layer or device, or
/// asked to make a handle in memory that holds a live one, returns `CCDMA_ERR_MISUSE` and changes
/// nothing. The memory of an ended handle is the caller's again; reused for a new handle, the old
/// pointer names the new one (the pointer is the handle). Memory given as a handle must be readable
/// for the stated size.
pub struct ccdma_layer {
    tag: Tag,
    inner: DmaLayer<'static, CPlatform, LAYER_POOLS, LAYER_DOMAINS, LAYER_AREAS>,
}

/// Pools a layer holds: ccdma's most, or one with feature `small-layer`.
const LAYER_POOLS: usize = if cfg!(feature = "small-layer") { 1 } else { ccdma::MAX_POOLS };
/// Areas (locks) a pool of the layer has at most: ccdma's most, or two with feature `small-layer`
/// (a pool asking more, as `ccdma_add_pool`'s four do, gets two: fewer locks, the same slots).
const LAYER_AREAS: usize = if cfg!(feature = "small-layer") { 2 } else { ccdma::MAX_AREAS };
/// IOMMU domains a layer holds: ccdma's most, or with feature `small-layer` four when the native
/// IOMMU backend is in the build and none otherwise.
const LAYER_DOMAINS: usize = match (cfg!(feature = "small-layer"), cfg!(feature = "native-iommu")) {
    (false, _) => ccdma::iommu::MAX_DOMAINS,
    (true, true) => 4,
    (true, false) => 0,
};

/// An attached device (opaque; [`CCDMA_DEVICE_SIZE`] bytes aligned to [`CCDMA_DEVICE_ALIGN`]).
pub struct ccdma_device {
    tag: Tag,
    inner: Device,
}

/// A coherent buffer (opaque; [`CCDMA_COHERENT_SIZE`] bytes aligned to [`CCDMA_COHERENT_ALIGN`]).
pub struct ccdma_coherent {
    tag: Tag,
    inner: CoherentBuffer,
}

/// Bytes of memory for a `ccdma_layer` (an upper bound; `ccdma_layer_size()` is the exact size).
pub const CCDMA_LAYER_SIZE: usize = 32768;
/// Bytes of memory for a `ccdma_layer` of a library built with feature `small-layer` (one pool of
/// at most two areas; no IOMMU domain, or four with feature `native-iommu`): firmware that links such
/// a library may reserve this instead of `CCDMA_LAYER_SIZE` (`ccdma_layer_init` refuses too little
/// memory with `CCDMA_ERR_MEMORY`, so a mismatch is caught at init).
pub const CCDMA_SMALL_LAYER_SIZE: usize = 2944;
/// Bytes of memory for a `ccdma_layer` of a library built with feature `small-layer` and without
/// `native-iommu` (one pool of at most two areas, no IOMMU domain): enough for any such library
/// (every other part included), as `CCDMA_SMALL_LAYER_SIZE` is for any `small-layer` build.
pub const CCDMA_SMALL_LAYER_NO_IOMMU_SIZE: usize = 2048;
/// Alignment of a `ccdma_layer`.
pub const CCDMA_LAYER_ALIGN: usize = 128;
/// Bytes of memory for a `ccdma_device`.
pub const CCDMA_DEVICE_SIZE: usize = 256;
/// Alignment of a `ccdma_device`.
pub const CCDMA_DEVICE_ALIGN: usize = 16;
/// Bytes of memory for a `ccdma_coherent`.
pub const CCDMA_COHERENT_SIZE: usize = 96;
/// Alignment of a `ccdma_coherent`.
pub const CCDMA_COHERENT_ALIGN: usize = 16;
/// Bytes of list memory per scatter-gather entry (`ccdma_map_sg`: `n` entries need
/// `CCDMA_SG_LIST_SIZE(n)` = `n * CCDMA_SG_ENTRY_SIZE` bytes, the list's head included).
pub const CCDMA_SG_ENTRY_SIZE: usize = 208;
/// Alignment of list memory.
pub const CCDMA_SG_ENTRY_ALIGN: usize = 16;
/// Bytes of pool metadata per slot (`ccdma_add_pool`: `meta_len >= len / CCDMA_SLOT_SIZE *
/// CCDMA_SLOT_META_SIZE`).
pub const CCDMA_SLOT_META_SIZE: usize = 32;
/// Alignment of pool metadata.
pub const CCDMA_SLOT_META_ALIGN: usize = 8;
/// Bytes per pool slot (the pools' allocation unit).
pub const CCDMA_SLOT_SIZE: usize = 2048;
/// Bytes per page.
pub const CCDMA_PAGE_SIZE: usize = 4096;

/// The device reads the buffer.
pub const CCDMA_TO_DEVICE: c_int = 1;
/// The device writes the buffer.
pub const CCDMA_FROM_DEVICE: c_int = 2;
/// Both.
pub const CCDMA_BIDIRECTIONAL: c_int = 3;

// The header's numbers bound the real layouts (checked at compile time).
const _: () = {
    assert!(size_of::<ccdma_layer>() <= CCDMA_LAYER_SIZE && align_of::<ccdma_layer>() <= CCDMA_LAYER_ALIGN);
    assert!(!cfg!(feature = "small-layer") || size_of::<ccdma_layer>() <= CCDMA_SMALL_LAYER_SIZE);
    assert!(
        !cfg!(feature = "small-layer")
            || cfg!(feature = "native-iommu")
            || size_of::<ccdma_layer>() <= CCDMA_SMALL_LAYER_NO_IOMMU_SIZE
    );
    assert!(CCDMA_SMALL_LAYER_NO_IOMMU_SIZE <= CCDMA_SMALL_LAYER_SIZE);
    assert!(
        size_of::<ccdma_device>() <= CCDMA_DEVICE_SIZE && align_of::<ccdma_device>() <= CCDMA_DEVICE_ALIGN
    );
    assert!(
        size_of::<ccdma_coherent>() <= CCDMA_COHERENT_SIZE
            && align_of::<ccdma_coherent>() <= CCDMA_COHERENT_ALIGN
    );
    assert!(
        size_of::<SgEntry<'static>>() <= CCDMA_SG_ENTRY_SIZE
            && align_of::<SgEntry<'static>>() <= CCDMA_SG_ENTRY_ALIGN
    );
    // Metadata is an array: the element size must be exact.
    assert!(size_of::<SlotMeta>() == CCDMA_SLOT_META_SIZE && align_of::<SlotMeta>() <= CCDMA_SLOT_META_ALIGN);
    assert!(CCDMA_SLOT_SIZE == 2048 && CCDMA_PAGE_SIZE as u64 == ccdma::PAGE_SIZE);
};

/// The exact size of a `ccdma_layer` in this build (at most `CCDMA_LAYER_SIZE`).
#[no_mangle]
pub extern "C" fn ccdma_layer_size() -> usize {
    size_of::<ccdma_layer>()
}

/// Is `mem` non-null, aligned to `align` and `size >= need`? As an error code.
fn check_mem(mem: *const c_void, size: usize, need: usize, align: usize) -> Result<(), c_int> {
    if mem.is_null() {
        Err(CCDMA_ERR_NULL)
    } else if size < need || (mem as usize) % align != 0 {
        Err(CCDMA_ERR_MEMORY)
    } else {
        Ok(())
    }
}

fn direction(dir: c_int) -> Option<DmaDirection> {
    match dir {
        CCDMA_TO_DEVICE => Some(DmaDirection::ToDevice),
        CCDMA_FROM_DEVICE => Some(DmaDirection::FromDevice),
        CCDMA_BIDIRECTIONAL => Some(DmaDirection::Bidirectional),
        _ => None,
    }
}

/// Initialise a layer in `mem` (`size` bytes, at least `CCDMA_LAYER_SIZE`, aligned to
/// `CCDMA_LAYER_ALIGN`) over the platform `*platform` (copied; the table itself need not outlive the
/// call, its `ctx` must outlive the layer). `CCDMA_ERR_MISUSE` when `mem` holds a live layer (finish
/// it first); `CCDMA_ERR_INVALID` when the table's `shared_bus` sets and clears the same bit.
///
/// # Safety
/// `mem` must be valid for reads and writes of `size` bytes and used for nothing else while the layer
/// lives;
/// `platform` must be null or point to a table that keeps the contract stated at `ccdma_platform`.
#[no_mangle]
pub unsafe extern "C" fn ccdma_layer_init(
    mem: *mut c_void,
    size: usize,
    platform: *const ccdma_platform,
) -> c_int {
    if let Err(e) = check_mem(mem, size, size_of::<ccdma_layer>(), align_of::<ccdma_layer>()) {
        return e;
    }
    let layer = mem.cast::<ccdma_layer>();
    // SAFETY: large and aligned enough (checked), the caller's memory; a tag is read raw.
    let tag = unsafe { core::ptr::addr_of_mut!((*layer).tag) };
    // SAFETY: as above.
    if let Err(e) = unsafe { handle::check_free(tag, Kind::Layer) } {
        return e;
    }
    // SAFETY: null or a valid table, per the contract.
    let Some(table) = (unsafe { platform.as_ref() }) else {
        return CCDMA_ERR_NULL;
    };
    let Some(p) = CPlatform::from_table(table) else {
        return CCDMA_ERR_NULL;
    };
    if table.shared_bus.set & table.shared_bus.clear != 0 {
        return CCDMA_ERR_INVALID;
    }
    let live = Tag::live(Kind::Layer, tag as usize, 0);
    // Built in the caller's memory, field by field: the layer never sits on this stack.
    // SAFETY: checked non-null, large and aligned enough; the caller gives it to us. The cast names
    // the `inner` field as uninitialised memory of its own type (same layout).
    let inner = unsafe {
        &mut *core::ptr::addr_of_mut!((*layer).inner)
            .cast::<core::mem::MaybeUninit<DmaLayer<'static, CPlatform, LAYER_POOLS, LAYER_DOMAINS, LAYER_AREAS>>>()
    };
    DmaLayer::init_in(inner, p);
    // SAFETY: as above; the tag goes last, so the handle is live only once the layer is whole.
    unsafe { tag.write(live) };
    CCDMA_OK
}

/// Add a bounce pool over `[phys, phys + len)` (page-aligned, a whole number of pages), with its
/// metadata in `meta` (`meta_len` bytes, at least `len / CCDMA_SLOT_SIZE * CCDMA_SLOT_META_SIZE`,
/// aligned to `CCDMA_SLOT_META_ALIGN`). In a confidential guest the pool is shared here. Returns the
/// pool's index (>= 0) or an error code.
///
/// # Safety
/// `layer` is null or layer memory (the handle rules of `ccdma_layer`), and no other call uses it
/// during this one. The pool range is guest
/// RAM that nothing else uses while the layer lives; `meta` is valid for writes of `meta_len` bytes and
/// used for nothing else while the layer lives.
#[no_mangle]
pub unsafe extern "C" fn ccdma_add_pool(
    layer: *mut ccdma_layer,
    phys: u64,
    len: usize,
    meta: *mut c_void,
    meta_len: usize,
) -> c_int {
    // SAFETY: null or the caller's layer memory, with no other user now, per the contract.
    let layer = match unsafe { handle::live_mut(layer, None) } {
        Ok(layer) => layer,
        Err(e) => return e,
    };
    let slots = PoolConfig::default().slots_for(len);
    let Some(need) = slots.checked_mul(size_of::<SlotMeta>()) else {
        return CCDMA_ERR_INVALID;
    };
    if let Err(e) = check_mem(meta, meta_len, need, align_of::<SlotMeta>()) {
        return e;
    }
    let meta = meta.cast::<SlotMeta>();
    for i in 0..slots {
        // SAFETY: within the `need <= meta_len` bytes the caller lent, aligned (checked).
        unsafe { meta.add(i).write(SlotMeta::EMPTY) };
    }
    // SAFETY: `slots` initialised entries in memory the caller lends for the layer's life ('static
    // as far as the layer can tell: it is dropped with the layer memory).
    let meta: &'static mut [SlotMeta] = unsafe { core::slice::from_raw_parts_mut(meta, slots) };
    // SAFETY: the pool range is the caller's to give, per the contract.
    match unsafe { layer.inner.add_pool(PhysAddr(phys), len, meta, PoolConfig::default()) } {
        Ok(i) => c_int::try_from(i).unwrap_or(CCDMA_ERR_INVALID),
        Err(e) => code(&e),
    }
}

/// Attach a device whose DMA mask is `mask_bits` bits (13..=64) into `dev_mem` (`dev_size` bytes, at
/// least `CCDMA_DEVICE_SIZE`, aligned to `CCDMA_DEVICE_ALIGN`). `id` names the device in logs.
/// Fails with `CCDMA_ERR_NO_PATH` when the device reaches no pool it needs.
///
/// # Safety
/// `layer` is null or layer memory (the handle rules of `ccdma_layer`); `dev_mem` is valid for writes of `dev_size` bytes and used for
/// nothing else until `ccdma_detach` succeeds.
#[no_mangle]
pub unsafe extern "C" fn ccdma_attach(
    layer: *const ccdma_layer,
    dev_mem: *mut c_void,
    dev_size: usize,
    id: u32,
    mask_bits: u32,
) -> c_int {
    // SAFETY: null or the caller's layer memory (contract).
    let layer = match unsafe { handle::live(layer, None) } {
        Ok(layer) => layer,
        Err(e) => return e,
    };
    if let Err(e) = check_mem(dev_mem, dev_size, size_of::<ccdma_device>(), align_of::<ccdma_device>()) {
        return e;
    }
    let dev = dev_mem.cast::<ccdma_device>();
    // SAFETY: large and aligned enough (checked), the caller's memory; a tag is read raw.
    let tag = unsafe { core::ptr::addr_of_mut!((*dev).tag) };
    // SAFETY: as above.
    if let Err(e) = unsafe { handle::check_free(tag, Kind::Device) } {
        return e;
    }
    let Ok(mask) = DmaMask::new(mask_bits) else {
        return CCDMA_ERR_INVALID;
    };
    match layer.inner.attach(DeviceConfig::new(id, mask)) {
        Ok(inner) => {
            let tag = Tag::live(Kind::Device, tag as usize, layer.tag.gen);
            // SAFETY: checked non-null, large and aligned enough; the caller lends it.
            unsafe { dev.write(ccdma_device { tag, inner }) };
            CCDMA_OK
        }
        Err(e) => code(&e),
    }
}

/// Detach a device. Refused (`CCDMA_ERR_BUSY`) while it has live mappings or coherent buffers; the
/// device stays attached and usable then. On success its memory is free, and the handle is ended:
/// a second detach, or any call with it, is `CCDMA_ERR_MISUSE`.
///
/// # Safety
/// `layer` is null or layer memory, `dev` null or device memory (the handle rules of `ccdma_layer`),
/// `dev` not used by any
/// other call during this one.
#[no_mangle]
pub unsafe extern "C" fn ccdma_detach(layer: *const ccdma_layer, dev: *mut ccdma_device) -> c_int {
    // SAFETY: null or the caller's memory, `dev` used by no other call now (contract).
    let (layer, d) = match unsafe { handle::layer_dev(layer, dev) } {
        Ok(both) => both,
        Err(e) => return e,
    };
    let tag = d.tag;
    // SAFETY: a live device (checked), used by this call alone (contract): moved out here, and
    // written back if refused; on success its tag is dead, so its bytes are never used again.
    let inner = unsafe { core::ptr::addr_of!((*dev).inner).read() };
    match layer.inner.detach(inner) {
        Ok(()) => {
            // SAFETY: the same memory.
            unsafe { core::ptr::addr_of_mut!((*dev).tag).write(Tag::DEAD) };
            CCDMA_OK
        }
        Err(r) => {
            let (inner, e) = r.into_parts();
            // SAFETY: the same memory, handed back the device it held.
            unsafe { dev.write(ccdma_device { tag, inner }) };
            code(&e)
        }
    }
}

/// Map `len` bytes at `ptr` for `dev` in direction `dir` (`CCDMA_TO_DEVICE`, ...); the device's
/// address goes to `*bus`. Bounced buffers are copied in (to-device) or zeroed (from-device) here.
///
/// # Safety
/// `layer` and `dev` as for `ccdma_detach` (any number of map/unmap calls may run concurrently);
/// `ptr` is valid for reads (and, unless `dir` is to-device, writes) of `len` bytes until
/// `ccdma_unmap`, and untouched meanwhile; `bus` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn ccdma_map(
    layer: *const ccdma_layer,
    dev: *const ccdma_device,
    ptr: *mut c_void,
    len: usize,
    dir: c_int,
    bus: *mut u64,
) -> c_int {
    // SAFETY: the same contract, no attributes.
    unsafe { ccdma_map_attrs(layer, dev, ptr, len, dir, 0, bus) }
}

/// Unmap what `ccdma_map` mapped at `bus`: `len` and `dir` as given then. From-device data is copied
/// back to the buffer here, once, with the length the layer recorded.
///
/// # Safety
/// As for `ccdma_map`; `bus` names a mapping this caller made on `dev` and that no other call unmaps.
#[no_mangle]
pub unsafe extern "C" fn ccdma_unmap(
    layer: *const ccdma_layer,
    dev: *const ccdma_device,
    bus: u64,
    len: usize,
    dir: c_int,
) -> c_int {
    // SAFETY: the same contract, no attributes.
    unsafe { ccdma_unmap_attrs(layer, dev, bus, len, dir, 0) }
}

/// One input buffer of a scatter-gather list.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ccdma_sg_in {
    /// Start of the buffer.
    pub ptr: *mut c_void,
    /// Its length in bytes.
    pub len: usize,
}

/// One DMA segment for the device.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ccdma_segment {
    /// Bus address.
    pub bus: u64,
    /// Length in bytes.
    pub len: usize,
}

/// Map a scatter-gather list of `n` buffers. The list's record goes to `entries` (`entries_size`
/// bytes, at least `n * CCDMA_SG_ENTRY_SIZE`, aligned to `CCDMA_SG_ENTRY_ALIGN`), which must stay
/// untouched until `ccdma_unmap_sg`. The DMA segments go to `segs` (room for `n`), their number to
/// `*nsegs` (at most `n`: buffers may be packed together). On error nothing stays mapped.
///
/// # Safety
/// `layer` and `dev` as for `ccdma_map`; `sg` points to `n` entries whose buffers are lent as for
/// `ccdma_map`; `entries` is valid for writes of `entries_size` bytes; `segs` for `n` segments; `nsegs`
/// for a write.
#[no_mangle]
pub unsafe extern "C" fn ccdma_map_sg(
    layer: *const ccdma_layer,
    dev: *const ccdma_device,
    sg: *const ccdma_sg_in,
    n: usize,
    dir: c_int,
    entries: *mut c_void,
    entries_size: usize,
    segs: *mut ccdma_segment,
    nsegs: *mut usize,
) -> c_int {
    // SAFETY: the same contract, no attributes.
    unsafe { ccdma_map_sg_attrs(layer, dev, sg, n, dir, 0, entries, entries_size, segs, nsegs) }
}

/// `ccdma_map_sg` with attributes (`CCDMA_ATTR_*`, or-ed).
///
/// # Safety
/// As for `ccdma_map_sg`.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn ccdma_map_sg_attrs(
    layer: *const ccdma_layer,
    dev: *const ccdma_device,
    sg: *const ccdma_sg_in,
    n: usize,
    dir: c_int,
    attrs_bits: c_int,
    entries: *mut c_void,
    entries_size: usize,
    segs: *mut ccdma_segment,
    nsegs: *mut usize,
) -> c_int {
    // SAFETY: null or the caller's handles (contract).
    let (layer, dev) = match unsafe { handle::layer_dev(layer, dev) } {
        Ok(both) => both,
        Err(e) => return e,
    };
    if sg.is_null() || segs.is_null() || nsegs.is_null() {
        return CCDMA_ERR_NULL;
    }
    if n == 0 {
        return CCDMA_ERR_INVALID;
    }
    let (Some(dir), Some(attrs)) = (direction(dir), attrs::attrs(attrs_bits)) else {
        return CCDMA_ERR_INVALID;
    };
    let Some(need) =
        n.checked_mul(size_of::<SgEntry<'static>>()).and_then(|b| b.checked_add(handle::LIST_HEAD))
    else {
        return CCDMA_ERR_INVALID;
    };
    if let Err(e) = check_mem(entries, entries_size, need, CCDMA_SG_ENTRY_ALIGN) {
        return e;
    }
    let head = entries.cast::<handle::ListHead>();
    // SAFETY: large and aligned enough (checked), the caller's memory; a tag is read raw.
    let tag = unsafe { core::ptr::addr_of_mut!((*head).tag) };
    // SAFETY: as above.
    if let Err(e) = unsafe { handle::check_free(tag, Kind::List) } {
        return e;
    }
    // SAFETY: within the `need` bytes checked above.
    let list = unsafe { entries.cast::<u8>().add(handle::LIST_HEAD) }.cast::<SgEntry<'static>>();
    for i in 0..n {
        // SAFETY: `sg` holds `n` entries (contract).
        let input = unsafe { sg.add(i).read() };
        if input.ptr.is_null() {
            return CCDMA_ERR_NULL;
        }
        // SAFETY: the buffer is lent until unmap (contract); the entry memory was checked above
        // (entries need no drop, so returning early leaves nothing behind).
        unsafe { list.add(i).write(SgEntry::from_raw(input.ptr.cast(), input.len)) };
    }
    // SAFETY: `n` entries just initialised in memory the caller lends until `ccdma_unmap_sg`.
    let inner: &mut [SgEntry<'static>] = unsafe { core::slice::from_raw_parts_mut(list, n) };
    match layer.inner.map_sg_cpu(&dev.inner, inner, dir, attrs) {
        Ok(count) => {
            for (i, seg) in ccdma::sg::dma_segments(inner.get(..count).unwrap_or(&[])).enumerate() {
                // SAFETY: `segs` has room for `n >= count` segments (contract).
                unsafe { segs.add(i).write(ccdma_segment { bus: seg.addr.0, len: seg.len }) };
            }
            // SAFETY: valid for a write (contract); the head is within the checked entry memory.
            unsafe {
                nsegs.write(count);
                head.write(handle::ListHead { tag: Tag::live(Kind::List, tag as usize, dev.tag.gen), n });
            }
            CCDMA_OK
        }
        Err(e) => code(&e),
    }
}

/// Unmap a list mapped by `ccdma_map_sg`: the same `entries`, `n` and `dir`. From-device data is copied
/// back here. On success the entries' memory is free.
///
/// # Safety
/// As for `ccdma_map_sg`; `entries` is null or list memory (the handle rules of `ccdma_layer`) that
/// no other call uses.
#[no_mangle]
pub unsafe extern "C" fn ccdma_unmap_sg(
    layer: *const ccdma_layer,
    dev: *const ccdma_device,
    entries: *mut c_void,
    n: usize,
    dir: c_int,
) -> c_int {
    // SAFETY: the same contract, no attributes.
    unsafe { ccdma_unmap_sg_attrs(layer, dev, entries, n, dir, 0) }
}

/// `ccdma_unmap_sg` with attributes (with `CCDMA_ATTR_SKIP_CPU_SYNC` nothing is copied back).
///
/// # Safety
/// As for `ccdma_unmap_sg`.
#[no_mangle]
pub unsafe extern "C" fn ccdma_unmap_sg_attrs(
    layer: *const ccdma_layer,
    dev: *const ccdma_device,
    entries: *mut c_void,
    n: usize,
    dir: c_int,
    attrs_bits: c_int,
) -> c_int {
    // SAFETY: the same contract.
    unsafe { list_call(layer, dev, entries, n, dir, ListCall::Unmap(attrs_bits)) }
}

/// What [`list_call`] does with a mapped list.
#[derive(Clone, Copy)]
pub(crate) enum ListCall {
    /// `ccdma_unmap_sg_attrs`, with these attribute bits.
    Unmap(c_int),
    /// `ccdma_sync_sg_for_cpu`.
    ForCpu,
    /// `ccdma_sync_sg_for_device`.
    ForDevice,
}

/// The unmap and the syncs of a mapped list: one copy of their handle checks.
///
/// # Safety
/// As for `ccdma_unmap_sg` (for a sync the list stays mapped).
#[inline(never)]
pub(crate) unsafe fn list_call(
    layer: *const ccdma_layer,
    dev: *const ccdma_device,
    entries: *mut c_void,
    n: usize,
    dir: c_int,
    call: ListCall,
) -> c_int {
    // SAFETY: null or the caller's handles (contract).
    let (layer, dev) = match unsafe { handle::layer_dev(layer, dev) } {
        Ok(both) => both,
        Err(e) => return e,
    };
    let attrs = match call {
        ListCall::Unmap(bits) => attrs::attrs(bits),
        ListCall::ForCpu | ListCall::ForDevice => Some(DmaAttrs::NONE),
    };
    let (Some(dir), Some(attrs)) = (direction(dir), attrs) else {
        return CCDMA_ERR_INVALID;
    };
    // SAFETY: the caller's list memory (contract), checked live.
    match unsafe { handle::list(dev, entries, n) } {
        Ok((head, list)) => {
            let r = result(match call {
                ListCall::Unmap(_) => layer.inner.unmap_sg(&dev.inner, list, dir, attrs),
                ListCall::ForCpu => layer.inner.sync_sg_for_cpu(&dev.inner, list, dir),
                ListCall::ForDevice => layer.inner.sync_sg_for_device(&dev.inner, list, dir),
            });
            if r == CCDMA_OK && matches!(call, ListCall::Unmap(_)) {
                head.tag = Tag::DEAD;
            }
            r
        }
        Err(e) => e,
    }
}

/// Make `pages` pages at `phys` (page-aligned) a coherent buffer of `dev` in `buf_mem` (`buf_size`
/// bytes, at least `CCDMA_COHERENT_SIZE`, aligned to `CCDMA_COHERENT_ALIGN`): zeroed, shared with the
/// host in a confidential guest (private for a device the platform accepted: `ccdma_accept`, and
/// `ccdma_alloc_coherent_attrs` with `CCDMA_ATTR_CC_SHARED` for a shared one). Its CPU pointer goes to
/// `*cpu`, the device's address to `*bus`.
///
/// # Safety
/// `layer` and `dev` as for `ccdma_map`; the pages are guest RAM the caller owns and does not
/// otherwise use until `ccdma_free_coherent` succeeds; `buf_mem` is valid for writes of `buf_size`
/// bytes and used for nothing else until then; `cpu` and `bus` are valid for a write.
#[no_mangle]
pub unsafe extern "C" fn ccdma_alloc_coherent(
    layer: *const ccdma_layer,
    dev: *const ccdma_device,
    phys: u64,
    pages: u64,
    buf_mem: *mut c_void,
    buf_size: usize,
    cpu: *mut *mut c_void,
    bus: *mut u64,
) -> c_int {
    // SAFETY: the same contract, no attributes.
    unsafe { ccdma_alloc_coherent_attrs(layer, dev, phys, pages, 0, buf_mem, buf_size, cpu, bus) }
}

/// Free a coherent buffer made by `ccdma_alloc_coherent`. If refused (`CCDMA_ERR_BUSY`, ...) the
/// buffer stays allocated and can be freed later; `CCDMA_ERR_SHARING` means it was freed (the handle
/// is ended) but some pages could not be made private again: never reuse them for private data. A
/// handle already freed, never allocated, or of another device is `CCDMA_ERR_MISUSE`.
///
/// # Safety
/// `layer` and `dev` as for `ccdma_map`; `buf` is null or buffer memory (the handle rules of
/// `ccdma_layer`) that no other call uses.
#[no_mangle]
pub unsafe extern "C" fn ccdma_free_coherent(
    layer: *const ccdma_layer,
    dev: *const ccdma_device,
    buf: *mut ccdma_coherent,
) -> c_int {
    // SAFETY: null or the caller's handles (contract).
    let (layer, dev) = match unsafe { handle::layer_dev(layer, dev) } {
        Ok(both) => both,
        Err(e) => return e,
    };
    // SAFETY: null or the caller's buffer memory, used by this call alone (contract).
    let tag = match unsafe { handle::live(buf, Some(dev.tag.gen)) } {
        Ok(b) => b.tag,
        Err(e) => return e,
    };
    // SAFETY: a live buffer (checked), used by this call alone (contract): moved out here, and
    // written back if refused; once freed its tag is dead, so its bytes are never used again.
    let inner = unsafe { core::ptr::addr_of!((*buf).inner).read() };
    let dead = || {
        // SAFETY: the same memory.
        unsafe { core::ptr::addr_of_mut!((*buf).tag).write(Tag::DEAD) }
    };
    match layer.inner.free_coherent(&dev.inner, inner) {
        Ok(()) => {
            dead();
            CCDMA_OK
        }
        Err(FreeError::Refused(r)) => {
            let (inner, e) = r.into_parts();
            // SAFETY: the same memory, handed back the buffer it held.
            unsafe { buf.write(ccdma_coherent { tag, inner }) };
            code(&e)
        }
        Err(FreeError::Quarantined(e)) => {
            dead();
            code(&e)
        }
    }
}
