//! ccdma's platform traits for this machine: a confidential guest on QEMU/TCG.
//!
//! There is no memory encryption under TCG, so "sharing" is bookkeeping: the [`PageLedger`] holds
//! the private/shared state of every page and refuses inconsistent calls, and every address the
//! kernel hands to a device is checked against it ([`QemuPlatform::check_device_address`]).
//! Memory is identity-mapped (see [`crate::memory`]), so CPU pointers and physical addresses are
//! the same numbers. Without an IOMMU a device's bus address is the physical address (TDX-style).

use ccdma::{BusAddr, MemorySharing, PartialSharing, PhysAddr, PhysMemory, Platform, SharingErrorKind};
use core::ptr::NonNull;

use crate::ledger::{PageLedger, Violation};
use crate::memory;

/// The status a refused sharing call reports (an ultravisor's `U_PARAMETER`-like refusal).
const REFUSED: i64 = -4;

/// This machine as ccdma sees it.
pub struct QemuPlatform {
    ledger: PageLedger,
}

/// The one platform instance; the ledger covers all of RAM.
pub static PLATFORM: QemuPlatform = QemuPlatform { ledger: PageLedger::new() };

impl QemuPlatform {
    /// The page ledger.
    pub fn ledger(&self) -> &PageLedger {
        &self.ledger
    }

    /// Checks that bus range `[bus, bus + len)` given to `device` reaches only shared memory.
    /// Records a ledger violation and returns `false` otherwise.
    pub fn check_device_address(&self, device: u32, bus: BusAddr, len: usize) -> bool {
        let phys = self.shared_phys_addr(bus).0;
        match self.ledger.all_shared(phys, len as u64) {
            Ok(()) => true,
            Err(page) => {
                self.ledger.violation(Violation::DeviceGivenPrivate { device, page });
                false
            }
        }
    }
}

impl MemorySharing for QemuPlatform {
    fn share(&self, phys: PhysAddr, pages: u64) -> Result<(), PartialSharing> {
        self.ledger.convert(phys.0, pages, true).map_err(|(pages_done, _)| PartialSharing {
            pages_done,
            kind: SharingErrorKind::Hypervisor(REFUSED),
        })
    }

    fn unshare(&self, phys: PhysAddr, pages: u64) -> Result<(), PartialSharing> {
        self.ledger.convert(phys.0, pages, false).map_err(|(pages_done, _)| PartialSharing {
            pages_done,
            kind: SharingErrorKind::Hypervisor(REFUSED),
        })
    }
}

impl PhysMemory for QemuPlatform {
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

impl Platform for QemuPlatform {
    fn is_confidential(&self) -> bool {
        true
    }
}
