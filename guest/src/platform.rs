//! The platform as the layer sees it: the only way guest logic reaches hypervisor or hardware.
//!
//! `hv-model` implements these traits on the host, the QEMU test kernel implements them on real
//! (emulated) hardware, guest firmware implements them with real ultracalls/TDCALLs. Nothing else in
//! the crate knows where it runs.
//!
//! A platform for a guest that is not confidential, whose RAM is one CPU mapping at a fixed offset
//! (here a leaked host buffer plays the RAM). A confidential guest answers `true` from
//! `is_confidential` and makes `share`/`unshare` real calls (see [`crate::sharing`]).
//!
//! ```
//! use core::ptr::NonNull;
//! use ccdma::{DeviceConfig, DmaDirection, DmaLayer, DmaMask, DmaPath};
//! use ccdma::{MemorySharing, PartialSharing, PhysAddr, PhysMemory, Platform};
//!
//! struct Flat { base: *mut u8, size: u64 }
//! // SAFETY: `Flat` only reads its fields; the RAM it names is shared by every CPU anyway.
//! unsafe impl Sync for Flat {}
//!
//! impl MemorySharing for Flat {
//!     fn share(&self, _: PhysAddr, _: u64) -> Result<(), PartialSharing> { Ok(()) }
//!     fn unshare(&self, _: PhysAddr, _: u64) -> Result<(), PartialSharing> { Ok(()) }
//! }
//! // SAFETY: `[base, base + size)` is one live allocation mapping guest physical `[0, size)`, for
//! // as long as the platform lives; both answers stay inside it.
//! unsafe impl PhysMemory for Flat {
//!     fn cpu_ptr(&self, phys: PhysAddr, len: usize) -> Option<NonNull<u8>> {
//!         let end = phys.0.checked_add(len as u64)?;
//!         // SAFETY: `phys.0 <= end <= size`: inside the allocation.
//!         (end <= self.size).then(|| unsafe { NonNull::new_unchecked(self.base.add(phys.0 as usize)) })
//!     }
//!     fn virt_to_phys(&self, ptr: *const u8, len: usize) -> Option<PhysAddr> {
//!         let off = (ptr as u64).checked_sub(self.base as u64)?;
//!         (off.checked_add(len as u64)? <= self.size).then_some(PhysAddr(off))
//!     }
//!     fn ram_end(&self) -> PhysAddr { PhysAddr(self.size) }
//! }
//! impl Platform for Flat {
//!     fn is_confidential(&self) -> bool { false }
//! }
//!
//! let ram = vec![0u8; 1 << 20].leak();
//! let flat = Flat { base: ram.as_mut_ptr(), size: ram.len() as u64 };
//! let layer = DmaLayer::new(&flat);
//! let dev = layer.attach(DeviceConfig::new(1, DmaMask::BITS_32))?;
//! assert_eq!(dev.path(), DmaPath::Direct); // not confidential, the mask covers RAM: no bounce
//! // SAFETY: bytes 0x1000..0x1200 of the RAM are this program's until the unmap.
//! let bus = unsafe { layer.on(&dev).map_phys(PhysAddr(0x1000), 512, DmaDirection::ToDevice)? };
//! assert_eq!(bus.0, 0x1000); // the device uses the buffer itself
//! // SAFETY: this program's raw mapping of `dev`, unmapped once.
//! unsafe { layer.on(&dev).unmap(bus, 512, DmaDirection::ToDevice)? };
//! # Ok::<(), ccdma::DmaError>(())
//! ```

use core::ptr::NonNull;

use crate::addr::{BusAddr, PhysAddr};
use crate::error::SharingErrorKind;
use crate::iommu::{IommuBackend, TceCalls};
use crate::trust::DeviceTrust;

/// A sharing call that did not complete: `pages_done` pages from the start of the request were
/// converted before it stopped (the caller rolls them back).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartialSharing {
    /// Pages from the start of the request that did change state.
    pub pages_done: u64,
    /// Why it stopped.
    pub kind: SharingErrorKind,
}

/// Making guest pages reachable (shared) or unreachable (private) for the hypervisor and devices.
///
/// Both calls work on whole 4 KiB pages and report partial progress; the layer rolls back what a
/// failed share did and quarantines what a failed unshare left shared.
pub trait MemorySharing {
    /// Make `pages` pages starting at `phys` (page aligned) shared.
    fn share(&self, phys: PhysAddr, pages: u64) -> Result<(), PartialSharing>;
    /// Make `pages` pages starting at `phys` private again (including any accept step).
    fn unshare(&self, phys: PhysAddr, pages: u64) -> Result<(), PartialSharing>;
}

/// CPU access to guest physical memory and the reverse translation.
///
/// # Safety
///
/// The layer builds raw pointers from these answers and writes through them, so an implementation
/// must describe memory truthfully:
/// - [`PhysMemory::cpu_ptr`] returns `Some(p)` only if `[p, p + len)` is one allocation of CPU
///   memory that maps exactly `[phys, phys + len)` and stays valid and mapped for as long as the
///   platform value lives;
/// - [`PhysMemory::virt_to_phys`] returns `Some(phys)` only if `[ptr, ptr + len)` is backed by the
///   contiguous guest RAM `[phys, phys + len)` (so a device write there lands in that buffer);
/// - both may always answer `None`, which the layer treats as "cannot be addressed".
pub unsafe trait PhysMemory {
    /// A CPU pointer through which `[phys, phys + len)` can be read and written, or `None` if the range
    /// is not (contiguously) mapped. The pointer stays valid for as long as the platform lives.
    fn cpu_ptr(&self, phys: PhysAddr, len: usize) -> Option<NonNull<u8>>;
    /// The guest physical address of a CPU buffer, when it is contiguous guest RAM.
    fn virt_to_phys(&self, ptr: *const u8, len: usize) -> Option<PhysAddr>;
    /// One past the highest guest RAM address (decides whether a mask "covers all RAM").
    fn ram_end(&self) -> PhysAddr;
}

/// What [`Platform::mask_interrupts`] found and [`Platform::restore_interrupts`] puts back: the
/// platform's own encoding (saved flags register, previous TPL, ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InterruptState(pub usize);

/// Everything the layer needs from one platform.
pub trait Platform: MemorySharing + PhysMemory + Sync {
    /// True in a confidential guest: devices reach only shared memory, so streaming DMA is bounced.
    fn is_confidential(&self) -> bool;
    /// The bus address a device (without IOMMU) uses for shared memory at `phys`.
    ///
    /// Identity for pseries and TDX (the shared bit is not part of the DMA address as seen here); for
    /// SEV the encryption bit is cleared; for Arm CCA the top IPA bit is set. See [`BusEncoding`].
    fn shared_bus_addr(&self, phys: PhysAddr) -> BusAddr {
        BusAddr(phys.0)
    }
    /// The inverse of [`Platform::shared_bus_addr`].
    fn shared_phys_addr(&self, bus: BusAddr) -> PhysAddr {
        PhysAddr(bus.0)
    }
    /// The number of the CPU running the caller, when the platform can tell cheaply. Pools start their
    /// search at that CPU's area (as Linux does), so CPUs mapping at once take different locks and
    /// cache lines. Single maps and scatter-gather lists alike. `None` (the default): start in an
    /// area picked from the caller's stack address, so threads on neighbouring stacks start in
    /// different areas (less evenly than CPUs do).
    fn cpu_hint(&self) -> Option<usize> {
        None
    }
    /// Mask interrupts on this CPU (a kernel saves and disables IRQs; EDK2 raises the TPL to
    /// `TPL_HIGH_LEVEL`) and return what [`Platform::restore_interrupts`] needs to put them back.
    ///
    /// ccdma calls it at the start of every call that can take one of its locks and restores at the
    /// end, so an interrupt handler that calls ccdma never spins on a lock held by the code it
    /// interrupted (see "Interrupts" in the crate docs). Calls nest: an implementation returns the
    /// state it found and restores exactly that. The default does nothing: then no ccdma call may be
    /// made from a context that can interrupt a ccdma call on the same CPU.
    #[inline(always)]
    fn mask_interrupts(&self) -> InterruptState {
        InterruptState(0)
    }
    /// Put back the interrupt state [`Platform::mask_interrupts`] returned. The default does nothing.
    #[inline(always)]
    fn restore_interrupts(&self, saved: InterruptState) {
        let _ = saved;
    }
    /// A native IOMMU that maps whole ranges itself (virtio-iommu and the like), for platforms
    /// without PAPR TCE calls ([`Platform::tce`] is asked first). `None` (the default): none.
    fn iommu_backend(&self) -> Option<&dyn IommuBackend> {
        None
    }
    /// The IOMMU (TCE) interface, when devices sit behind one. `None` (the default): devices reach
    /// memory by [`Platform::shared_bus_addr`].
    fn tce(&self) -> Option<&dyn TceCalls> {
        None
    }
    /// Trusted device I/O (TDISP/IDE: TDX Connect, SEV-TIO, Arm CCA device assignment), when the
    /// platform offers it. `None` (the default): every device is untrusted.
    fn device_trust(&self) -> Option<&dyn DeviceTrust> {
        None
    }
}

/// How a platform without IOMMU turns a shared physical address into a bus address: some bits set,
/// some cleared (SEV clears the C-bit, Arm CCA sets the top IPA bit; identity elsewhere). Platforms
/// use it to implement [`Platform::shared_bus_addr`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct BusEncoding {
    /// Bits set in every bus address.
    pub set: u64,
    /// Bits cleared in every bus address.
    pub clear: u64,
}

impl BusEncoding {
    /// The identity encoding.
    pub const IDENTITY: BusEncoding = BusEncoding { set: 0, clear: 0 };
    /// SEV: the C-bit at `bit` is cleared in DMA addresses.
    pub const fn sev(c_bit: u32) -> BusEncoding {
        BusEncoding { set: 0, clear: 1 << c_bit }
    }
    /// Arm CCA: shared memory is reached through the alias with the top IPA bit (`ipa_bits - 1`) set.
    /// `None` unless `ipa_bits` is in 2..=64.
    pub const fn cca(ipa_bits: u32) -> Option<BusEncoding> {
        if ipa_bits < 2 || ipa_bits > 64 {
            return None;
        }
        Some(BusEncoding { set: 1 << (ipa_bits - 1), clear: 0 })
    }
    /// Encode.
    pub const fn bus(self, phys: PhysAddr) -> BusAddr {
        BusAddr((phys.0 | self.set) & !self.clear)
    }
    /// Decode.
    pub const fn phys(self, bus: BusAddr) -> PhysAddr {
        PhysAddr(bus.0 & !self.set & !self.clear)
    }
}

impl<T: MemorySharing + ?Sized> MemorySharing for &T {
    fn share(&self, phys: PhysAddr, pages: u64) -> Result<(), PartialSharing> {
        (**self).share(phys, pages)
    }
    fn unshare(&self, phys: PhysAddr, pages: u64) -> Result<(), PartialSharing> {
        (**self).unshare(phys, pages)
    }
}

// SAFETY: forwards every call to `T`, whose implementation upholds the contract.
unsafe impl<T: PhysMemory + ?Sized> PhysMemory for &T {
    fn cpu_ptr(&self, phys: PhysAddr, len: usize) -> Option<NonNull<u8>> {
        (**self).cpu_ptr(phys, len)
    }
    fn virt_to_phys(&self, ptr: *const u8, len: usize) -> Option<PhysAddr> {
        (**self).virt_to_phys(ptr, len)
    }
    fn ram_end(&self) -> PhysAddr {
        (**self).ram_end()
    }
}

impl<T: Platform + ?Sized> Platform for &T {
    fn is_confidential(&self) -> bool {
        (**self).is_confidential()
    }
    fn shared_bus_addr(&self, phys: PhysAddr) -> BusAddr {
        (**self).shared_bus_addr(phys)
    }
    fn shared_phys_addr(&self, bus: BusAddr) -> PhysAddr {
        (**self).shared_phys_addr(bus)
    }
    fn tce(&self) -> Option<&dyn TceCalls> {
        (**self).tce()
    }
    fn cpu_hint(&self) -> Option<usize> {
        (**self).cpu_hint()
    }
    fn iommu_backend(&self) -> Option<&dyn IommuBackend> {
        (**self).iommu_backend()
    }
    fn device_trust(&self) -> Option<&dyn DeviceTrust> {
        (**self).device_trust()
    }
    #[inline(always)]
    fn mask_interrupts(&self) -> InterruptState {
        (**self).mask_interrupts()
    }
    #[inline(always)]
    fn restore_interrupts(&self, saved: InterruptState) {
        (**self).restore_interrupts(saved)
    }
}
