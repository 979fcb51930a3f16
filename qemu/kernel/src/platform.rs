//! ccdma's platform traits for this machine: a confidential guest on QEMU/TCG.
//!
//! There is no memory encryption under TCG, so "sharing" is bookkeeping: the [`PageLedger`] holds
//! the private/shared state of every page and refuses inconsistent calls, and every address the
//! kernel hands to a device is checked against it ([`QemuPlatform::check_device_address`]).
//! Memory is identity-mapped (see [`crate::memory`]), so CPU pointers and physical addresses are
//! the same numbers. Without an IOMMU a device's bus address is the physical address (TDX-style);
//! behind the virtio-iommu it is whatever the device's windows map ([`VirtioIommuBackend`]).

use ccdma::{BusAddr, MemorySharing, PartialSharing, PhysAddr, PhysMemory, Platform, SharingErrorKind};
use core::ptr::NonNull;

use ccdma_qemu_common::binding::KernelPlatform;

use crate::iommu::VirtioIommuBackend;
use crate::ledger::{PageLedger, Violation};
use crate::memory::{self, PAGE_SIZE};

/// The status a refused sharing call reports (an ultravisor's `U_PARAMETER`-like refusal).
const REFUSED: i64 = -4;

/// This machine as ccdma sees it.
pub struct QemuPlatform {
    ledger: PageLedger,
    iommu: VirtioIommuBackend,
}

/// The one platform instance; the ledger covers all of RAM.
pub static PLATFORM: QemuPlatform =
    QemuPlatform { ledger: PageLedger::new(), iommu: VirtioIommuBackend::new() };

impl QemuPlatform {
    /// The page ledger.
    pub fn ledger(&self) -> &PageLedger {
        &self.ledger
    }

    /// The virtio-iommu half (empty in configurations without one).
    pub fn iommu(&self) -> &VirtioIommuBackend {
        &self.iommu
    }

    /// Checks that bus range `[bus, bus + len)` given to `device` reaches only shared memory:
    /// directly, or through the device's IOMMU windows page by page. Records a ledger violation
    /// and returns `false` otherwise.
    pub fn check_device_address(&self, device: u32, bus: BusAddr, len: usize) -> bool {
        let page = PAGE_SIZE as u64;
        let end = bus.0 + len.max(1) as u64;
        let mut at = bus.0;
        while at < end {
            let piece = (page - at % page).min(end - at);
            let phys = match self.iommu.translate(device, at) {
                None => self.shared_phys_addr(BusAddr(at)).0,
                Some(Some(phys)) => phys,
                Some(None) => {
                    self.ledger.violation(Violation::DeviceGivenUnmapped { device, bus: at });
                    return false;
                }
            };
            if let Err(page) = self.ledger.all_shared(phys, piece) {
                self.ledger.violation(Violation::DeviceGivenPrivate { device, page });
                return false;
            }
            at += piece;
        }
        true
    }
}

impl KernelPlatform for QemuPlatform {
    fn device_phys(&self, device: u32, bus: u64) -> Option<u64> {
        // Behind the IOMMU the window says where the memory is; without, the bus address is it.
        self.iommu.translate(device, bus).unwrap_or(Some(bus))
    }

    fn check_device_address(&self, device: u32, bus: BusAddr, len: usize) -> bool {
        QemuPlatform::check_device_address(self, device, bus, len)
    }
}

impl MemorySharing for QemuPlatform {
    fn share(&self, phys: PhysAddr, pages: u64) -> Result<(), PartialSharing> {
        self.ledger.convert(phys.0, pages, true).map_err(|(pages_done, _)| PartialSharing {
            pages_done,
            kind: SharingErrorKind::Hypervisor(REFUSED.into()),
        })
    }

    fn unshare(&self, phys: PhysAddr, pages: u64) -> Result<(), PartialSharing> {
        self.ledger.convert(phys.0, pages, false).map_err(|(pages_done, _)| PartialSharing {
            pages_done,
            kind: SharingErrorKind::Hypervisor(REFUSED.into()),
        })
    }
}

// SAFETY: RAM is identity-mapped for the kernel's whole life (boot.rs), and both translations answer
// only for ranges the ledger knows as RAM, so the pointers and addresses name exactly that memory.
unsafe impl PhysMemory for QemuPlatform {
    fn cpu_ptr(&self, phys: PhysAddr, len: usize) -> Option<NonNull<u8>> {
        if !self.ledger.is_ram(phys.0, len as u64) {
            return None;
        }
        memory::ptr_of(phys.0, len)
    }

    fn virt_to_phys(&self, ptr: *const u8, len: usize) -> Option<PhysAddr> {
        let phys = memory::phys_of(ptr);
        self.ledger.is_ram(phys, len as u64).then_some(PhysAddr(phys))
    }

    fn ram_end(&self) -> PhysAddr {
        PhysAddr(self.ledger.ram_end())
    }
}

/// RFLAGS.IF: interrupts enabled.
const RFLAGS_IF: usize = 1 << 9;

impl Platform for QemuPlatform {
    fn is_confidential(&self) -> bool {
        true
    }

    /// The CPU running the caller: this kernel runs on one CPU (the bootstrap processor: it starts
    /// no application processor), so always 0. A kernel with several CPUs would return its own
    /// per-CPU index from per-CPU data (GS base), not from CPUID (a VM exit per map).
    fn cpu_hint(&self) -> Option<usize> {
        Some(0)
    }

    /// Save RFLAGS and disable interrupts (`local_irq_save`).
    fn mask_interrupts(&self) -> ccdma::InterruptState {
        let flags: u64;
        // SAFETY: the kernel runs in ring 0, where `cli` is allowed; `pushfq`/`pop` read RFLAGS
        // through the stack (no `nostack`: the compiler keeps the stack usable). Without `nomem` the
        // block is a compiler barrier: no memory access of the masked section moves above it.
        unsafe { core::arch::asm!("pushfq", "pop {0}", "cli", out(reg) flags) };
        ccdma::InterruptState(flags as usize)
    }

    /// Enable interrupts again if they were enabled when `mask_interrupts` ran (`local_irq_restore`).
    fn restore_interrupts(&self, saved: ccdma::InterruptState) {
        if saved.0 & RFLAGS_IF != 0 {
            // SAFETY: ring 0 (see `mask_interrupts`); interrupts were enabled before the masked
            // section, so enabling them restores that state. A compiler barrier, as above.
            unsafe { core::arch::asm!("sti") };
        }
    }

    fn iommu_backend(&self) -> Option<&dyn ccdma::iommu::IommuBackend> {
        self.iommu.present().then_some(&self.iommu as &dyn ccdma::iommu::IommuBackend)
    }
}
