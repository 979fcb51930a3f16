//! ccdma's platform traits implemented by the model: the guest layer runs against it unchanged.

use std::ptr::NonNull;

use ccdma::sharing::pseries::UltravisorSharing;
use ccdma::sharing::tdx::TdxSharing;
use ccdma::{BusAddr, MemorySharing, PartialSharing, PhysAddr, PhysMemory, Platform};

use crate::{Hypervisor, Personality};

impl MemorySharing for Hypervisor {
    fn share(&self, phys: PhysAddr, pages: u64) -> Result<(), PartialSharing> {
        match self.config().personality {
            Personality::Pseries => UltravisorSharing::new(self).share(phys, pages),
            Personality::Tdx => TdxSharing::new(self).share(phys, pages),
        }
    }
    fn unshare(&self, phys: PhysAddr, pages: u64) -> Result<(), PartialSharing> {
        match self.config().personality {
            Personality::Pseries => UltravisorSharing::new(self).unshare(phys, pages),
            Personality::Tdx => TdxSharing::new(self).unshare(phys, pages),
        }
    }
}

// SAFETY: `cpu_ptr` hands out pointers into the model's own backing store for the range, which lives
// as long as the model and maps each guest physical byte at one place; `virt_to_phys` answers only
// for pointers inside that store.
unsafe impl PhysMemory for Hypervisor {
    fn cpu_ptr(&self, phys: PhysAddr, len: usize) -> Option<NonNull<u8>> {
        self.mem.ptr(phys.0, len as u64)
    }
    fn virt_to_phys(&self, ptr: *const u8, len: usize) -> Option<PhysAddr> {
        self.mem.phys_of(ptr, len).map(PhysAddr)
    }
    fn ram_end(&self) -> PhysAddr {
        PhysAddr(self.mem.size())
    }
}

impl Platform for Hypervisor {
    fn is_confidential(&self) -> bool {
        self.config().confidential
    }
    fn shared_bus_addr(&self, phys: PhysAddr) -> BusAddr {
        self.config().bus_encoding.bus(phys)
    }
    fn shared_phys_addr(&self, bus: BusAddr) -> PhysAddr {
        self.config().bus_encoding.phys(bus)
    }
    fn tce(&self) -> Option<&dyn ccdma::TceCalls> {
        self.iommu.enabled().then_some(self as &dyn ccdma::TceCalls)
    }
    fn device_trust(&self) -> Option<&dyn ccdma::DeviceTrust> {
        self.config().confidential.then_some(self as &dyn ccdma::DeviceTrust)
    }
}
