//! ccdma's platform traits for this machine: a pseries Secure VM guest on QEMU/TCG.
//!
//! Sharing goes through `UV_SHARE_PAGE` / `UV_UNSHARE_PAGE` ultracalls, answered by the software
//! ultravisor ([`crate::uv`]); the IOMMU is QEMU's TCE table ([`crate::tce`]). The kernel runs in
//! real mode, so CPU pointers are physical addresses.

use ccdma::sharing::pseries::UltravisorSharing;
use ccdma::{BusAddr, MemorySharing, PartialSharing, PhysAddr, PhysMemory, Platform};
use ccdma_qemu_common::binding::KernelPlatform;
use ccdma_qemu_common::ledger::{PageLedger, Violation};
use core::ptr::NonNull;

use crate::tce::Tce;
use crate::uv::SoftUltravisor;

/// This machine as ccdma sees it.
pub struct PseriesPlatform {
    sharing: UltravisorSharing<&'static SoftUltravisor>,
    uv: &'static SoftUltravisor,
    tce: Tce,
}

static UV: SoftUltravisor = SoftUltravisor::new();

/// The one platform instance.
pub static PLATFORM: PseriesPlatform =
    PseriesPlatform { sharing: UltravisorSharing::new(&UV), uv: &UV, tce: Tce::new(&UV) };

impl PseriesPlatform {
    /// The ultravisor's page ledger.
    pub fn ledger(&self) -> &PageLedger {
        self.uv.ledger()
    }

    /// The IOMMU.
    pub fn tce_calls(&self) -> &Tce {
        &self.tce
    }

    /// The TCE behind bus address `bus` as the hypervisor's table holds it (`None` outside both
    /// windows).
    pub fn entry_of(&self, bus: u64) -> Option<u64> {
        self.entry_for(None, bus)
    }

    /// The windows of `device`'s bridge (`None`: the main bridge's default window and DDW).
    fn windows_for(&self, device: Option<u32>) -> [Option<(u32, u64, u64, u32)>; 2] {
        match device {
            Some(id) => self.tce.windows_of(id),
            None => [self.tce.default_geometry(), self.tce.ddw()],
        }
    }

    /// [`Self::entry_of`] through the windows of `device`'s bridge (`None`: the main bridge's).
    fn entry_for(&self, device: Option<u32>, bus: u64) -> Option<u64> {
        let windows = self.windows_for(device);
        let (liobn, start, _, shift) =
            windows.into_iter().flatten().find(|&(_, start, size, _)| bus >= start && bus - start < size)?;
        let page = 1u64 << shift;
        self.tce.read_entry(liobn, start + (bus - start) / page * page)
    }

    /// Where bus address `bus` leads, from the hypervisor's own table: `Some(Some(phys))` for a
    /// valid entry, `Some(None)` for none, `None` outside both windows.
    pub fn translate(&self, device: Option<u32>, bus: u64) -> Option<Option<u64>> {
        let windows = self.windows_for(device);
        let (_, start, _, shift) =
            windows.into_iter().flatten().find(|&(_, start, size, _)| bus >= start && bus - start < size)?;
        let page = 1u64 << shift;
        let entry = self.entry_for(device, bus)?;
        Some((entry & 3 != 0).then(|| (entry & !(page - 1) & !3) + (bus - start) % page))
    }

    /// Checks that bus range `[bus, bus + len)` given to `device` reaches only shared memory
    /// through the TCE table. Records a ledger violation and returns `false` otherwise.
    pub fn check_device_address(&self, device: u32, bus: BusAddr, len: usize) -> bool {
        const PAGE: u64 = 4096;
        let end = bus.0 + len.max(1) as u64;
        let mut at = bus.0;
        while at < end {
            let piece = (PAGE - at % PAGE).min(end - at);
            let phys = match self.translate(Some(device), at) {
                Some(Some(phys)) => phys,
                _ => {
                    self.ledger().violation(Violation::DeviceGivenUnmapped { device, bus: at });
                    return false;
                }
            };
            if let Err(page) = self.ledger().all_shared(phys, piece) {
                self.ledger().violation(Violation::DeviceGivenPrivate { device, page });
                return false;
            }
            at += piece;
        }
        true
    }
}

impl KernelPlatform for PseriesPlatform {
    fn device_phys(&self, device: u32, bus: u64) -> Option<u64> {
        // The hypervisor's table of the device's bridge says where its bus address leads.
        self.translate(Some(device), bus).flatten()
    }

    fn check_device_address(&self, device: u32, bus: BusAddr, len: usize) -> bool {
        PseriesPlatform::check_device_address(self, device, bus, len)
    }

    fn entry_of(&self, device: u32, bus: u64) -> Option<u64> {
        self.entry_for(Some(device), bus)
    }
}

impl MemorySharing for PseriesPlatform {
    fn share(&self, phys: PhysAddr, pages: u64) -> Result<(), PartialSharing> {
        self.sharing.share(phys, pages)
    }

    fn unshare(&self, phys: PhysAddr, pages: u64) -> Result<(), PartialSharing> {
        self.sharing.unshare(phys, pages)
    }
}

// SAFETY: the kernel runs in real mode for its whole life (boot.rs): the pointer to a physical
// address is that address, and both translations answer only for ranges the ledger knows as RAM.
unsafe impl PhysMemory for PseriesPlatform {
    fn cpu_ptr(&self, phys: PhysAddr, len: usize) -> Option<NonNull<u8>> {
        if !self.ledger().is_ram(phys.0, len as u64) {
            return None;
        }
        NonNull::new(phys.0 as *mut u8)
    }

    fn virt_to_phys(&self, ptr: *const u8, len: usize) -> Option<PhysAddr> {
        let phys = ptr as u64;
        self.ledger().is_ram(phys, len as u64).then_some(PhysAddr(phys))
    }

    fn ram_end(&self) -> PhysAddr {
        PhysAddr(self.ledger().ram_end())
    }
}

/// MSR[EE]: external (and decrementer) interrupts enabled.
const MSR_EE: u64 = 1 << 15;

impl Platform for PseriesPlatform {
    fn is_confidential(&self) -> bool {
        true
    }

    /// The CPU running the caller: this kernel runs on one CPU (the boot thread: it makes no
    /// `start-cpu` RTAS call), so always 0. A kernel with several CPUs would return its own per-CPU
    /// index from per-CPU data (as Linux's paca), not from an instruction the hypervisor may trap.
    fn cpu_hint(&self) -> Option<usize> {
        Some(0)
    }

    /// Clear MSR[EE] and return whether it was set (`local_irq_save`).
    fn mask_interrupts(&self) -> ccdma::InterruptState {
        let msr: u64;
        // SAFETY: the kernel runs in supervisor state, where `mfmsr` and `mtmsrd` are allowed;
        // `mtmsrd r, 1` changes only MSR[EE] and MSR[RI], and RI is written back unchanged. Without
        // `nomem` the block is a compiler barrier: no access of the masked section moves above it.
        unsafe {
            core::arch::asm!(
                "mfmsr {msr}",
                "andc {tmp}, {msr}, {ee}",
                "mtmsrd {tmp}, 1",
                msr = out(reg) msr,
                tmp = out(reg) _,
                ee = in(reg) MSR_EE,
                options(nostack),
            )
        };
        ccdma::InterruptState((msr & MSR_EE) as usize)
    }

    /// Set MSR[EE] again if it was set when `mask_interrupts` ran (`local_irq_restore`).
    fn restore_interrupts(&self, saved: ccdma::InterruptState) {
        if saved.0 as u64 & MSR_EE != 0 {
            // SAFETY: as in `mask_interrupts`; EE was set before the masked section, so this
            // restores it. A compiler barrier, as above.
            unsafe {
                core::arch::asm!(
                    "mfmsr {tmp}",
                    "or {tmp}, {tmp}, {ee}",
                    "mtmsrd {tmp}, 1",
                    tmp = out(reg) _,
                    ee = in(reg) MSR_EE,
                    options(nostack),
                )
            };
        }
    }

    fn tce(&self) -> Option<&dyn ccdma::TceCalls> {
        Some(&self.tce)
    }
}
