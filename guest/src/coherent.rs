//! Coherent (consistent) DMA buffers: memory the CPU and the device share for the buffer's whole life
//! (descriptor rings, virtqueues). There is no allocator, so the caller provides the pages; the layer
//! zeroes them, shares them in a confidential guest, and (behind an IOMMU) enters them into the
//! device's window below its coherent mask. Freeing undoes that; pages that cannot be made private
//! again are quarantined and counted, and the caller must never reuse them.

use core::ptr::NonNull;
use core::sync::atomic::Ordering;

use crate::addr::{BusAddr, PhysAddr, PAGE_SIZE};
use crate::error::{DmaError, IommuError};
use crate::iommu::attach::window_below;
use crate::iommu::bus_space::RangeKind;
use crate::iommu::{TCE_PCI_READ, TCE_PCI_WRITE};
use crate::layer::{Device, DmaLayer};
use crate::platform::Platform;
use crate::stats::FailureKind;

/// A live coherent buffer: where it is for the CPU and for the device. A plain handle (like the
/// `(paddr, vaddr)` pair a HAL hands around); `free_coherent` checks it against the guest's records
/// where the path keeps any.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CoherentBuffer {
    phys: PhysAddr,
    cpu: NonNull<u8>,
    bus: BusAddr,
    pages: u64,
}

// SAFETY: the handle only names memory; reading or writing through `cpu_ptr` is the caller's own
// (unsafe) business, as with any raw pointer.
unsafe impl Send for CoherentBuffer {}
// SAFETY: as above.
unsafe impl Sync for CoherentBuffer {}

impl CoherentBuffer {
    /// Guest physical address of the first page.
    pub fn phys(&self) -> PhysAddr {
        self.phys
    }
    /// CPU pointer to the first byte.
    pub fn cpu_ptr(&self) -> NonNull<u8> {
        self.cpu
    }
    /// The address the device uses.
    pub fn bus_addr(&self) -> BusAddr {
        self.bus
    }
    /// Pages.
    pub fn pages(&self) -> u64 {
        self.pages
    }
    /// Bytes.
    pub fn len(&self) -> usize {
        (self.pages * PAGE_SIZE) as usize
    }
    /// Always false (a buffer has at least one page).
    pub fn is_empty(&self) -> bool {
        false
    }
}

impl<P: Platform> DmaLayer<'_, P> {
    /// Make `pages` pages at `phys` a coherent buffer for `dev`: zeroed, shared (confidential guest),
    /// entered into the device's window below its coherent mask (IOMMU). A deferred device is attached
    /// here. On failure nothing stays shared or mapped (pages whose unsharing fails are quarantined and
    /// counted; the error says so).
    ///
    /// # Safety
    /// `[phys, phys + pages * 4 KiB)` must be guest RAM that the caller owns and does not otherwise use
    /// until `free_coherent` succeeds (forever if it reports the pages quarantined).
    pub unsafe fn alloc_coherent(
        &self,
        dev: &Device,
        phys: PhysAddr,
        pages: u64,
    ) -> Result<CoherentBuffer, DmaError> {
        self.check_device(dev)?;
        if pages == 0 {
            return Err(DmaError::ZeroLength);
        }
        let bytes = pages.checked_mul(PAGE_SIZE).ok_or(DmaError::BadPoolRange(phys))?;
        if !phys.is_page_aligned() {
            return Err(DmaError::BadPoolRange(phys));
        }
        let cpu = self.platform.cpu_ptr(phys, bytes as usize).ok_or(DmaError::NoCpuMapping(phys))?;
        let confidential = self.platform.is_confidential();
        let mask = dev.config.coherent_mask;
        // The window (and so the checks) first, so a refusal costs no sharing call.
        let iommu = match dev.domain {
            Some(_) => {
                let info = self.ensure_attached(dev)?;
                let win = info.dynamic.ok_or(DmaError::Iommu(IommuError::NoWindow))?;
                if phys.0 % win.page_size() != 0 || bytes % win.page_size() != 0 {
                    return Err(DmaError::InvalidConfig("coherent buffer not aligned to the IOMMU page"));
                }
                Some(win)
            }
            None => {
                let bus = if confidential { self.platform.shared_bus_addr(phys) } else { BusAddr(phys.0) };
                if !mask.covers(bus.0, bytes) {
                    self.stats.fail(FailureKind::BeyondMask);
                    return Err(DmaError::BeyondMask { addr: bus.0, mask });
                }
                None
            }
        };
        // SAFETY: the caller hands the pages over (contract above); zeroing them first keeps whatever
        // private data they held from the host once they are shared.
        unsafe { core::ptr::write_bytes(cpu.as_ptr(), 0, bytes as usize) };
        if confidential {
            self.share_pages(phys, pages)?;
        }
        let bus = match iommu {
            None => {
                if confidential {
                    self.platform.shared_bus_addr(phys)
                } else {
                    BusAddr(phys.0)
                }
            }
            Some(win) => match self.coherent_enter(dev, win, phys, bytes) {
                Ok(bus) => bus,
                Err(e @ DmaError::Iommu(IommuError::Quarantined { .. })) => {
                    // An entry may still name the pages: they stay shared and are never reused.
                    self.stats.quarantine(pages);
                    return Err(e);
                }
                Err(e) => {
                    if confidential {
                        // A failed unshare quarantines and counts the pages; the first error is the
                        // one worth reporting.
                        let _ = self.unshare_pages(phys, pages);
                    }
                    return Err(e);
                }
            },
        };
        self.iommu_counters.coherent_buffers.fetch_add(1, Ordering::Relaxed);
        self.iommu_counters.coherent_pages.fetch_add(pages, Ordering::Relaxed);
        Ok(CoherentBuffer { phys, cpu, bus, pages })
    }

    fn coherent_enter(
        &self,
        dev: &Device,
        win: crate::iommu::WindowGeometry,
        phys: PhysAddr,
        bytes: u64,
    ) -> Result<BusAddr, DmaError> {
        let slot = dev.domain.and_then(|d| self.slot(d)).ok_or(DmaError::NotAttached)?;
        let tce = self.platform.tce().ok_or(DmaError::Iommu(IommuError::NoWindow))?;
        let page = win.page_size();
        let (lo, hi) = window_below(&win, dev.config.coherent_mask);
        let bus = slot.space.lock().alloc(bytes, page, 0, lo, hi, RangeKind::Coherent, phys.0).inspect_err(
            |_| {
                self.stats.fail(FailureKind::Iommu);
            },
        )?;
        if let Err(f) =
            self.tce_writer(tce).put(&win, bus, phys.0, bytes / page, TCE_PCI_READ | TCE_PCI_WRITE)
        {
            self.stats.fail(FailureKind::Iommu);
            if f.clean {
                slot.space.lock().free(bus, bytes, RangeKind::Coherent);
            } else {
                // Entries may still name the pages. Making them private would leave a window entry on
                // private memory: the range and the pages are quarantined instead.
                slot.space.lock().quarantine(bus);
                self.iommu_counters.quarantined_ranges.fetch_add(1, Ordering::Relaxed);
                log::warn!("ccdma: coherent buffer at {phys} quarantined after {:?}", f.err);
                return Err(DmaError::Iommu(IommuError::Quarantined { bus: BusAddr(bus) }));
            }
            return Err(DmaError::Iommu(f.err));
        }
        Ok(BusAddr(bus))
    }

    /// Free a coherent buffer: its window entries are cleared, then its pages are made private again.
    /// If clearing fails the buffer stays live (retry later); if unsharing fails the pages are
    /// quarantined (never to be reused; the error says how many).
    pub fn free_coherent(&self, dev: &Device, buf: CoherentBuffer) -> Result<(), DmaError> {
        self.check_device(dev)?;
        let bytes = buf.pages * PAGE_SIZE;
        if let Some(d) = dev.domain {
            // Free never attaches: a device that never allocated cannot own this buffer.
            let unknown = || {
                self.stats.fail(FailureKind::UnknownMapping);
                DmaError::UnknownMapping(buf.bus)
            };
            let info = self.domain_info(d).ok_or_else(unknown)?;
            let win = info.dynamic.ok_or_else(unknown)?;
            let slot = self.slot(d).ok_or_else(unknown)?;
            let r = slot.space.lock().find(buf.bus.0).ok_or_else(unknown)?;
            if r.kind != RangeKind::Coherent || r.start != buf.bus.0 || r.phys != buf.phys.0 || r.len != bytes
            {
                return Err(unknown());
            }
            let tce = self.platform.tce().ok_or(DmaError::Iommu(IommuError::NoWindow))?;
            if let Err(e) = self.tce_writer(tce).clear(&win, r.start, r.len >> win.page_shift) {
                self.stats.fail(FailureKind::Iommu);
                return Err(DmaError::Iommu(e));
            }
            slot.space.lock().free(r.start, r.len, RangeKind::Coherent);
        }
        self.iommu_counters.coherent_buffers.fetch_sub(1, Ordering::Relaxed);
        self.iommu_counters.coherent_pages.fetch_sub(buf.pages, Ordering::Relaxed);
        if self.platform.is_confidential() {
            self.unshare_pages(buf.phys, buf.pages)?;
        }
        Ok(())
    }
}
