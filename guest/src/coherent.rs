//! Coherent (consistent) DMA buffers: memory the CPU and the device share for the buffer's whole life
//! (descriptor rings, virtqueues). There is no allocator, so the caller provides the pages; the layer
//! zeroes them, shares them in a confidential guest, and (behind an IOMMU) enters them into the
//! device's window below its coherent mask. Freeing undoes that; pages that cannot be made private
//! again are quarantined and counted, and the caller must never reuse them.
//!
//! ```
//! # use ccdma::*;
//! # use ccdma_hv_model::{HvConfig, Hypervisor, Region};
//! # let hv: &'static Hypervisor = Box::leak(Box::new(Hypervisor::new(HvConfig::pseries(6 << 30))));
//! # let mut layer = DmaLayer::new(hv);
//! # // SAFETY: the model never hands this range out.
//! # unsafe { layer.add_pool(PhysAddr(0x80_0000), 1 << 20, vec![SlotMeta::EMPTY; 512].leak(), PoolConfig::default()) }.unwrap();
//! let nic = layer.attach(DeviceConfig::new(1, DmaMask::BITS_32))?;
//! # let model_nic = hv.add_device(1, 32);
//! # let page = hv.alloc(4096, Region::Low);
//! // SAFETY: `page` is a free page of guest RAM, handed over until the free succeeds.
//! let ring = unsafe { layer.on(&nic).alloc_coherent(PhysAddr(page), 1)? };
//! assert_eq!((ring.len(), ring.pages()), (4096, 1));
//! // The CPU writes through `cpu_ptr`, the device reads at `bus_addr`: no copy, no sync.
//! // SAFETY: the buffer is 4096 bytes of memory the layer handed to this program.
//! unsafe { ring.cpu_ptr().as_ptr().write(0x5A) };
//! assert_eq!(model_nic.read(ring.bus_addr().0, 1).unwrap(), [0x5A]);
//! layer.on(&nic).free_coherent(ring)?; // made private again
//! assert_eq!(nic.live(), 0);
//! # Ok::<(), ccdma::DmaError>(())
//! ```

use core::ptr::NonNull;
use core::sync::atomic::Ordering;

use crate::addr::{BusAddr, PhysAddr, PAGE_SIZE};
use crate::device::{Device, LiveKind};
use crate::direction::DmaAttrs;
use crate::error::{DmaError, IommuError, Refused};
use crate::iommu::bus_space::RangeKind;
use crate::iommu::calls::{TCE_PCI_READ, TCE_PCI_WRITE};
use crate::iommu::window::window_below;
use crate::layer::DmaLayer;
use crate::layer::{Cold, FullCold};
use crate::platform::Platform;
use crate::stats::FailureKind;

/// A live coherent buffer: where it is for the CPU and for the device.
///
/// Move-only and made only by [`DmaLayer::alloc_coherent`]: the value is the layer's record of the
/// buffer, so it cannot be forged, freed twice or freed after its pages went to another buffer, and
/// [`DmaLayer::free_coherent`] consumes it. It names its device; freeing through another is refused
/// with the buffer handed back. Dropping it without freeing leaks the pages (shared, in the window)
/// and keeps the device busy, which is safe.
///
/// ```compile_fail,E0382
/// fn free_twice<P: ccdma::Platform>(l: &ccdma::DmaLayer<'_, P>, d: &ccdma::Device, b: ccdma::CoherentBuffer) {
///     let _ = l.free_coherent(d, b);
///     let _ = l.free_coherent(d, b); // error: use of moved value `b`
/// }
/// ```
#[derive(Debug)]
pub struct CoherentBuffer {
    phys: PhysAddr,
    cpu: NonNull<u8>,
    bus: BusAddr,
    pages: u64,
    /// Serial of the device it belongs to, and the layer's id.
    device: u32,
    layer: u32,
    /// The pages were shared at allocation (false in a plain guest, and for an accepted device's
    /// private buffer): only shared pages are made private again at free.
    shared: bool,
}

impl Drop for CoherentBuffer {
    /// A buffer dropped without [`DmaLayer::free_coherent`] leaks its pages (still shared, still in the
    /// window) and keeps its device busy: safe, but almost always a driver bug, so it is logged.
    fn drop(&mut self) {
        log::warn!(
            "ccdma: coherent buffer at {} ({} pages) of device #{} dropped without free: leaked",
            self.phys,
            self.pages,
            self.device
        );
    }
}

/// Why [`DmaLayer::free_coherent`] did not simply succeed.
#[derive(Debug)]
pub enum FreeError {
    /// The buffer is still live (shared, the device's) and comes back: wrong device or layer, or
    /// window entries that would not clear. Nothing changed, except when the error is
    /// [`IommuError::Unverified`]: the hypervisor accepted the clear but it could not be read back,
    /// so the device most likely no longer reaches the buffer. Retry (the clear is repeated), or
    /// keep it.
    Refused(Refused<CoherentBuffer>),
    /// The buffer is gone, but its pages could not all be made private again: they are quarantined
    /// and must never be used again.
    Quarantined(DmaError),
}

impl FreeError {
    /// The underlying error.
    pub fn error(&self) -> &DmaError {
        match self {
            FreeError::Refused(r) => &r.error,
            FreeError::Quarantined(e) => e,
        }
    }
}

impl core::fmt::Display for FreeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            FreeError::Refused(r) => write!(f, "coherent free refused: {}", r.error),
            FreeError::Quarantined(e) => write!(f, "coherent buffer freed, pages quarantined: {e}"),
        }
    }
}

impl core::error::Error for FreeError {}

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
    /// True when the pages are shared with the host (always in a confidential guest, except for an
    /// accepted device's private buffer).
    pub fn is_shared(&self) -> bool {
        self.shared
    }
    /// Serial of the device the buffer belongs to ([`Device::serial`]).
    pub fn device_serial(&self) -> u32 {
        self.device
    }
    /// The buffer's memory for the CPU. The device may write it at any time (that is what coherent
    /// means), so it is handed out as raw bytes for volatile or atomic access, not as `&mut [u8]`.
    pub fn as_ptr_range(&self) -> core::ops::Range<*mut u8> {
        let start = self.cpu.as_ptr();
        // SAFETY: the buffer spans `len()` bytes from `cpu` (alloc_coherent checked the mapping).
        start..unsafe { start.add(self.len()) }
    }
}

impl<'a, 'm, const POOLS: usize, const DOMAINS: usize, const AREAS: usize>
    Cold<'a, 'm, POOLS, DOMAINS, AREAS>
{
    /// [`DmaLayer::alloc_coherent`], over the platform as `&dyn Platform`.
    ///
    /// # Safety
    /// As [`DmaLayer::alloc_coherent`].
    #[track_caller]
    pub(crate) unsafe fn alloc_coherent_dyn(
        &self,
        dev: &Device,
        phys: PhysAddr,
        pages: u64,
    ) -> Result<CoherentBuffer, DmaError> {
        // SAFETY: the caller's contract is this function's.
        unsafe { self.alloc_coherent_attrs_dyn(dev, phys, pages, DmaAttrs::NONE) }
    }

    /// [`DmaLayer::alloc_coherent_attrs`], over the platform as `&dyn Platform`.
    ///
    /// # Safety
    /// As [`DmaLayer::alloc_coherent_attrs`].
    #[track_caller]
    pub(crate) unsafe fn alloc_coherent_attrs_dyn(
        &self,
        dev: &Device,
        phys: PhysAddr,
        pages: u64,
        attrs: DmaAttrs,
    ) -> Result<CoherentBuffer, DmaError> {
        let _masked = self.masked();
        self.check_device(dev)?;
        if pages == 0 {
            return Err(DmaError::ZeroLength);
        }
        let bytes = pages.checked_mul(PAGE_SIZE).ok_or(DmaError::Overflow)?;
        let bytes_usize = usize::try_from(bytes).map_err(|_| DmaError::Overflow)?;
        let end = phys.0.checked_add(bytes).ok_or(DmaError::Overflow)?;
        if !phys.is_page_aligned() {
            return Err(DmaError::Unaligned { addr: phys.0, align: PAGE_SIZE });
        }
        // Pool pages are the layer's (shared, under live mappings): freeing a coherent buffer there
        // would unshare them. The contract forbids it; the check is cheap, so it is made.
        if let Some(pool) = self.pool_overlapping(phys, end) {
            return Err(DmaError::PoolOverlap { pool });
        }
        let cpu = self.platform.cpu_ptr(phys, bytes_usize).ok_or(DmaError::NoCpuMapping(phys))?;
        let private = dev.trust.is_accepted() && !attrs.contains(DmaAttrs::CC_SHARED);
        let private_bus = self.platform.device_trust().filter(|_| private).map(|t| t.private_bus_addr(phys));
        // Shared in a confidential guest, except an accepted device's private buffer.
        let share = self.platform.is_confidential() && private_bus.is_none();
        let mask = dev.config.coherent_mask;
        // The window (and so the checks) first, so a refusal costs no sharing call.
        // The window behind an IOMMU, else the bus address the device uses (worked out once).
        let (iommu, plain_bus) = match dev.domain {
            Some(_) => {
                let info = self.ensure_attached(dev)?;
                let win = info.dynamic.ok_or(DmaError::Iommu(IommuError::NoWindow))?;
                if phys.0.checked_rem(win.page_size()) != Some(0)
                    || bytes.checked_rem(win.page_size()) != Some(0)
                {
                    return Err(DmaError::CoherentUnaligned { page: win.page_size() });
                }
                (Some(win), BusAddr(0))
            }
            None => {
                let bus = match private_bus {
                    Some(bus) => bus,
                    None if share => self.platform.shared_bus_addr(phys),
                    None => BusAddr(phys.0),
                };
                if !mask.covers(bus.0, bytes) {
                    self.stats.fail(FailureKind::BeyondMask);
                    return Err(DmaError::BeyondMask { addr: bus.0, mask });
                }
                (None, bus)
            }
        };
        // SAFETY: the caller hands the pages over (contract above); zeroing them first keeps whatever
        // private data they held from the host once they are shared.
        unsafe { core::ptr::write_bytes(cpu.as_ptr(), 0, bytes as usize) };
        if share {
            self.share_pages(phys, pages)?;
            // SAFETY: as above, and the pages are shared now. Sharing keeps the content on pseries
            // only: SEV-SNP shows ciphertext, TDX and Arm CCA another page, so zero what the device sees.
            unsafe { core::ptr::write_bytes(cpu.as_ptr(), 0, bytes as usize) };
        }
        let bus = match iommu {
            None => plain_bus,
            Some(win) => match self.coherent_enter(dev, win, phys, bytes, private) {
                Ok(bus) => bus,
                Err(e @ DmaError::Iommu(IommuError::Quarantined { .. })) => {
                    // An entry may still name the pages: they stay shared and are never reused.
                    self.stats.quarantine(pages);
                    return Err(e);
                }
                Err(e) => {
                    if share {
                        // A failed unshare quarantines and counts the pages; the caller must learn
                        // which, or it would take them back as private memory the host can read.
                        if let Err(DmaError::UnsharingFailed { quarantined, kind, .. }) =
                            self.unshare_pages(phys, pages)
                        {
                            // The cause (`e`) is logged here, not carried: DmaError stays 24 bytes.
                            let first =
                                PhysAddr(phys.0 + (pages - u64::from(quarantined).min(pages)) * PAGE_SIZE);
                            log::error!("ccdma: coherent allocation failed ({e}); {quarantined} pages from {first} quarantined");
                            return Err(DmaError::CoherentQuarantined {
                                phys: first,
                                pages: quarantined,
                                kind,
                            });
                        }
                    }
                    return Err(e);
                }
            },
        };
        self.iommu_counters.coherent_buffers.fetch_add(1, Ordering::Relaxed);
        self.iommu_counters.coherent_pages.fetch_add(pages, Ordering::Relaxed);
        dev.live_inc(LiveKind::Coherent);
        crate::tracker::coherent_allocated(&self.tracker, dev, bus, pages);
        Ok(CoherentBuffer { phys, cpu, bus, pages, device: dev.serial, layer: self.id, shared: share })
    }

    fn coherent_enter(
        &self,
        dev: &Device,
        win: crate::iommu::WindowGeometry,
        phys: PhysAddr,
        bytes: u64,
        private: bool,
    ) -> Result<BusAddr, DmaError> {
        let slot = dev.domain.and_then(|d| self.slot_cold(d)).ok_or(DmaError::NotAttached)?;
        let tce = self.backend().ok_or(DmaError::Iommu(IommuError::NoWindow))?;
        let page = win.page_size();
        let (lo, hi) = window_below(&win, dev.config.coherent_mask);
        let bus = slot.space.lock().alloc(bytes, page, 0, lo, hi, RangeKind::Coherent, phys.0).inspect_err(
            |_| {
                self.stats.fail(FailureKind::Iommu);
            },
        )?;
        let (npages, perm) = (bytes.checked_div(page).unwrap_or(0), TCE_PCI_READ | TCE_PCI_WRITE);
        // A private buffer (an accepted device's) never goes through the shared list page.
        let put = if private {
            tce.put_private(&win, bus, phys.0, npages, perm)
        } else {
            tce.put(&win, bus, phys.0, npages, perm)
        };
        if let Err(f) = put {
            self.put_failed(slot, bus, bytes, RangeKind::Coherent, f.clean);
            if !f.clean {
                // Entries may still name the pages. Making them private would leave a window entry on
                // private memory: the range and the pages are quarantined instead.
                log::warn!("ccdma: coherent buffer at {phys} quarantined after {:?}", f.err);
                return Err(DmaError::Iommu(IommuError::Quarantined { bus: BusAddr(bus) }));
            }
            return Err(DmaError::Iommu(f.err));
        }
        Ok(BusAddr(bus))
    }

    /// [`DmaLayer::free_coherent`], over the platform as `&dyn Platform`.
    #[track_caller]
    pub(crate) fn free_coherent_dyn(&self, dev: &Device, buf: CoherentBuffer) -> Result<(), FreeError> {
        let _masked = self.masked();
        let refuse = |buf, error| Err(FreeError::Refused(Refused { value: buf, error }));
        if let Err(e) = self.check_device(dev) {
            return refuse(buf, e);
        }
        if buf.layer != self.id || buf.device != dev.serial {
            self.stats.fail(FailureKind::Mismatch);
            let error = DmaError::WrongDevice { owner: buf.device, given: dev.serial };
            return refuse(buf, error);
        }
        if let Some(d) = dev.domain {
            if let Err(e) = self.coherent_leave(d, &buf) {
                return refuse(buf, e);
            }
        }
        self.iommu_counters.coherent_buffers.fetch_sub(1, Ordering::Relaxed);
        self.iommu_counters.coherent_pages.fetch_sub(buf.pages, Ordering::Relaxed);
        dev.live_dec(LiveKind::Coherent);
        crate::tracker::coherent_freed(&self.tracker, dev, buf.bus);
        // Freed: the value has done its job (its Drop only reports leaks).
        let (phys, pages, shared) = (buf.phys, buf.pages, buf.shared);
        core::mem::forget(buf);
        if shared {
            self.unshare_pages(phys, pages).map_err(FreeError::Quarantined)?;
        }
        Ok(())
    }

    /// Take a coherent buffer out of its device's window (a buffer of this device: the window holds
    /// its range, checked against the domain's record all the same).
    fn coherent_leave(
        &self,
        d: crate::iommu::domain::DomainRef,
        buf: &CoherentBuffer,
    ) -> Result<(), DmaError> {
        let bytes = buf.pages * PAGE_SIZE;
        let unknown = || {
            self.stats.fail(FailureKind::UnknownMapping);
            DmaError::UnknownMapping(buf.bus)
        };
        let info = self.domain_info_cold(d).ok_or_else(unknown)?;
        let win = info.dynamic.ok_or_else(unknown)?;
        let slot = self.slot_cold(d).ok_or_else(unknown)?;
        let r = slot.space.lock().find(buf.bus.0).ok_or_else(unknown)?;
        if r.kind != RangeKind::Coherent || r.start != buf.bus.0 || r.phys != buf.phys.0 || r.len != bytes {
            return Err(unknown());
        }
        let tce = self.backend().ok_or(DmaError::Iommu(IommuError::NoWindow))?;
        if let Err(e) = tce.clear(&win, r.start, r.len >> win.page_shift) {
            self.stats.fail(FailureKind::Iommu);
            return Err(DmaError::Iommu(e));
        }
        slot.space.lock().free(r.start, r.len, RangeKind::Coherent);
        Ok(())
    }
}

impl From<FreeError> for DmaError {
    fn from(e: FreeError) -> DmaError {
        *e.error()
    }
}

impl<'m, P: Platform, const POOLS: usize, const DOMAINS: usize, const AREAS: usize>
    DmaLayer<'m, P, POOLS, DOMAINS, AREAS>
{
    /// Make `pages` pages at `phys` a coherent buffer for `dev`: zeroed, shared (confidential guest),
    /// entered into the device's window below its coherent mask (IOMMU). A deferred device is attached
    /// here. On failure nothing stays shared or mapped, except pages the error names: entries that
    /// would not clear ([`IommuError::Quarantined`]: the whole buffer stays shared) or pages that
    /// would not become private again ([`DmaError::CoherentQuarantined`]: those pages). Never use
    /// such pages again.
    ///
    /// # Safety
    /// `[phys, phys + pages * 4 KiB)` must be guest RAM that the caller owns and does not otherwise use
    /// until `free_coherent` succeeds (forever if it reports the pages quarantined).
    #[track_caller]
    pub unsafe fn alloc_coherent(
        &self,
        dev: &Device,
        phys: PhysAddr,
        pages: u64,
    ) -> Result<CoherentBuffer, DmaError> {
        // SAFETY: the caller keeps this call's contract, which is the core's.
        unsafe {
            match self.cold().as_full() {
                Some(c) => alloc_coherent_once(c, dev, phys, pages),
                None => self.cold().alloc_coherent_dyn(dev, phys, pages),
            }
        }
    }

    /// [`Self::alloc_coherent`] with attributes. For a device the platform has accepted
    /// ([`crate::TrustState::Accepted`]) the buffer stays private (entered into its window, or used
    /// by its private address) unless `attrs` holds [`DmaAttrs::CC_SHARED`]; for every other device
    /// this is `alloc_coherent`.
    ///
    /// # Safety
    /// As for [`Self::alloc_coherent`].
    #[track_caller]
    pub unsafe fn alloc_coherent_attrs(
        &self,
        dev: &Device,
        phys: PhysAddr,
        pages: u64,
        attrs: DmaAttrs,
    ) -> Result<CoherentBuffer, DmaError> {
        // SAFETY: the caller keeps this call's contract, which is the core's.
        unsafe {
            match self.cold().as_full() {
                Some(c) => alloc_coherent_attrs_once(c, dev, phys, pages, attrs),
                None => self.cold().alloc_coherent_attrs_dyn(dev, phys, pages, attrs),
            }
        }
    }

    /// Free a coherent buffer: its window entries are cleared, then its pages are made private again.
    /// Refused with the buffer handed back ([`FreeError::Refused`]) when it belongs to another device
    /// or layer, or when clearing fails (retry later); if unsharing fails the buffer is gone and its
    /// pages are quarantined ([`FreeError::Quarantined`]: never reuse them).
    #[track_caller]
    pub fn free_coherent(&self, dev: &Device, buf: CoherentBuffer) -> Result<(), FreeError> {
        match self.cold().as_full() {
            Some(c) => free_coherent_once(c, dev, buf),
            None => self.cold().free_coherent_dyn(dev, buf),
        }
    }
}

/// [`DmaLayer::alloc_coherent`] of the default capacities, compiled in this crate only (see
/// `Cold::as_full`).
///
/// # Safety
/// As [`DmaLayer::alloc_coherent`].
#[inline(never)]
unsafe fn alloc_coherent_once(
    c: &FullCold<'_, '_>,
    dev: &Device,
    phys: PhysAddr,
    pages: u64,
) -> Result<CoherentBuffer, DmaError> {
    // SAFETY: the caller keeps this call's contract.
    unsafe { c.alloc_coherent_dyn(dev, phys, pages) }
}

/// [`DmaLayer::alloc_coherent_attrs`] of the default capacities, compiled in this crate only (see
/// `Cold::as_full`).
///
/// # Safety
/// As [`DmaLayer::alloc_coherent_attrs`].
#[inline(never)]
unsafe fn alloc_coherent_attrs_once(
    c: &FullCold<'_, '_>,
    dev: &Device,
    phys: PhysAddr,
    pages: u64,
    attrs: DmaAttrs,
) -> Result<CoherentBuffer, DmaError> {
    // SAFETY: the caller keeps this call's contract.
    unsafe { c.alloc_coherent_attrs_dyn(dev, phys, pages, attrs) }
}

/// [`DmaLayer::free_coherent`] of the default capacities, compiled in this crate only (see
/// `Cold::as_full`).
#[inline(never)]
fn free_coherent_once(c: &FullCold<'_, '_>, dev: &Device, buf: CoherentBuffer) -> Result<(), FreeError> {
    c.free_coherent_dyn(dev, buf)
}
