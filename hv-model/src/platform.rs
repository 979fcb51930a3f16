//! ccdma's platform traits implemented by the model: the guest layer runs against it unchanged.

use std::ptr::NonNull;

use ccdma::sharing::cca::CcaSharing;
use ccdma::sharing::pseries::UltravisorSharing;
use ccdma::sharing::snp::SnpSharing;
use ccdma::sharing::tdx::TdxSharing;
use ccdma::{BusAddr, MemorySharing, PartialSharing, PhysAddr, PhysMemory, Platform};

use crate::faults::AccessKind;
use crate::memory::PAGE;
use crate::{Hypervisor, Personality};

thread_local! {
    static CPU_HINT: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

impl Hypervisor {
    /// The CPU number [`Platform::cpu_hint`] answers on the calling thread (`None`, the default: no
    /// hint). Tests give two threads the same CPU to show that nothing rests on the hint.
    pub fn set_cpu_hint(cpu: Option<usize>) {
        CPU_HINT.with(|c| c.set(cpu));
    }
}

impl Hypervisor {
    fn sharing_call(&self, share: bool, phys: PhysAddr, pages: u64) -> Result<(), PartialSharing> {
        macro_rules! call {
            ($adapter:expr) => {
                if share {
                    $adapter.share(phys, pages)
                } else {
                    $adapter.unshare(phys, pages)
                }
            };
        }
        match self.config().personality {
            Personality::Pseries => call!(UltravisorSharing::new(self)),
            Personality::Tdx => call!(TdxSharing::new(self)),
            Personality::Snp => call!(SnpSharing::new(self)),
            Personality::Cca => call!(CcaSharing::new(self)),
        }
    }
}

/// The adapters of `ccdma::sharing` over the model's raw calls, and the model's check of what they
/// report: every page the guest keeps using as private memory (the part of a failed share it does not
/// roll back, the part of an unshare reported done) must have been accepted or re-validated, or the
/// model logs a [`FaultReason::Unvalidated`](crate::FaultReason::Unvalidated) fault for it; on SEV-SNP
/// and Arm CCA it must not be shared any more either
/// ([`FaultReason::StillShared`](crate::FaultReason::StillShared)).
impl MemorySharing for Hypervisor {
    fn share(&self, phys: PhysAddr, pages: u64) -> Result<(), PartialSharing> {
        let r = self.sharing_call(true, phys, pages);
        if let Err(p) = &r {
            let done = p.pages_done.min(pages);
            self.check_guest_use(phys.0 + done * PAGE, (pages - done) * PAGE, AccessKind::Write);
            self.check_taken_back(phys.0 + done * PAGE, (pages - done) * PAGE);
        }
        r
    }
    fn unshare(&self, phys: PhysAddr, pages: u64) -> Result<(), PartialSharing> {
        let r = self.sharing_call(false, phys, pages);
        let done = r.as_ref().map_or_else(|p| p.pages_done.min(pages), |()| pages);
        self.check_guest_use(phys.0, done * PAGE, AccessKind::Write);
        self.check_taken_back(phys.0, done * PAGE);
        r
    }
}

// SAFETY: `cpu_ptr` hands out pointers into the model's own backing store for the range, which lives
// as long as the model and maps each guest physical byte at one place; `virt_to_phys` answers only
// for pointers inside that store.
unsafe impl PhysMemory for Hypervisor {
    fn cpu_ptr(&self, phys: PhysAddr, len: usize) -> Option<NonNull<u8>> {
        let p = self.mem.ptr(phys.0, len as u64)?;
        // A guest touching a page it has not re-accepted or re-validated would take a #VE/#VC.
        self.check_guest_use(phys.0, len as u64, AccessKind::Write);
        Some(p)
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
    fn cpu_hint(&self) -> Option<usize> {
        CPU_HINT.with(|c| c.get())
    }
    fn tce(&self) -> Option<&dyn ccdma::TceCalls> {
        self.iommu.enabled().then_some(self as &dyn ccdma::TceCalls)
    }
    fn device_trust(&self) -> Option<&dyn ccdma::DeviceTrust> {
        self.config().confidential.then_some(self as &dyn ccdma::DeviceTrust)
    }
}
