//! Streaming mappings of an accepted device ([`crate::trust`]): the private buffer is used in place.
//! Behind an IOMMU the mapping gets entries of its own (a [`RangeKind::Private`] bus range naming the
//! buffer's pages, the direction's permission), cleared at unmap before the range can be reused;
//! without one the bus address is the buffer's private address. Nothing is copied, nothing shared.
//!
//! An entry names a whole IOMMU page (4 KiB in the default window, up to 2 MiB and more in other
//! windows), so the device reaches every private byte of the pages its buffer touches, not only the
//! buffer. A device configured with [`DeviceConfig::bounce_partial_pages`](crate::DeviceConfig)
//! has every buffer that does not cover whole IOMMU pages bounced through the pool instead (as
//! Linux's dma-iommu does for untrusted devices); whole pages still map in place. Private entries
//! are written one `H_PUT_TCE` each, never through the shared list page.

use core::sync::atomic::Ordering;

use super::raw_records::Ticket;
use super::{Mapped, Original};
use crate::addr::BusAddr;
use crate::device::Device;
use crate::direction::{DmaAttrs, DmaDirection};
use crate::error::{DmaError, IommuError};
use crate::iommu::bus_space::{BusRange, RangeKind};
use crate::iommu::calls::tce_perm;
use crate::iommu::window::window_below;
use crate::layer::DmaLayer;
use crate::platform::Platform;
use crate::stats::FailureKind;

impl<'m, P: Platform, const POOLS: usize, const DOMAINS: usize, const AREAS: usize>
    DmaLayer<'m, P, POOLS, DOMAINS, AREAS>
{
    /// Map a private buffer in place for an accepted device (or bounce it: then the run's place and
    /// its home pool's count come back in the [`Mapped`]).
    pub(crate) fn trusted_map(
        &self,
        dev: &Device,
        orig: Original,
        len: usize,
        dir: DmaDirection,
        attrs: DmaAttrs,
    ) -> Result<Mapped, DmaError> {
        let Some(phys) = orig.phys else {
            self.stats.fail(FailureKind::Invalid);
            return Err(DmaError::NotTranslatable);
        };
        let end = phys.0.checked_add(len as u64).ok_or(DmaError::Overflow)?;
        if dev.domain.is_some() {
            if dev.config.bounce_partial_pages {
                // An entry exposes its whole IOMMU page: a buffer that does not cover whole pages
                // is bounced (Linux dma-iommu's choice for untrusted devices), so the device never
                // reaches the private bytes around it.
                let page = self.attached(dev)?.dynamic.map_or(0, |w| w.page_size());
                if page == 0 || (phys.0 | len as u64) & (page - 1) != 0 {
                    return self.iommu_map(dev, &orig, len, dir, attrs);
                }
            }
            let ticket = self.raw_reserve(orig.safe)?;
            let mapped = self.trusted_iommu_map(dev, phys.0, end, dir);
            if let Some(t) = ticket {
                match mapped {
                    Ok(bus) => self.raw.fill(t, dev, bus, len, dir),
                    Err(_) => self.raw.free(t),
                }
            }
            return mapped.map(Mapped::elsewhere);
        }
        let trust = self.platform.device_trust().ok_or(DmaError::TrustUnavailable)?;
        let bus = trust.private_bus_addr(phys);
        if dev.config.dma_mask.covers(bus.0, len as u64) {
            return self.direct_mapped(dev, orig.safe, bus, len, dir).map(Mapped::elsewhere);
        }
        // Beyond the device's mask: bounced like an untrusted device's buffer.
        let mask = Some(dev.config.dma_mask);
        self.bounce_map(dev, &self.plain, mask, orig, len, dir, attrs)
    }

    fn trusted_iommu_map(
        &self,
        dev: &Device,
        phys: u64,
        end: u64,
        dir: DmaDirection,
    ) -> Result<BusAddr, DmaError> {
        // `map_original` set a deferred device's domain up before this attempt.
        let info = self.attached(dev)?;
        let win = info.dynamic.ok_or(DmaError::Iommu(IommuError::NoWindow))?;
        let slot = dev.domain.and_then(|d| self.slot(d)).ok_or(DmaError::NotAttached)?;
        let tce = self.backend().ok_or(DmaError::Iommu(IommuError::NoWindow))?;
        // Never 0 for a window set-up accepted (`is_usable`); checked so no division can panic.
        let page = win.page_size();
        if page == 0 {
            return Err(DmaError::Iommu(IommuError::NoWindow));
        }
        let base = phys & !(page - 1);
        let npages = (end - base).div_ceil(page.max(1)); // a power of two: never 0
        let span = npages.checked_mul(page).ok_or(DmaError::Overflow)?;
        // The bus address keeps the page offset (in the data offset) and the `min_align_mask` bits
        // above it (the range's alignment phase), as strict mappings do.
        let min_align = dev.config.min_align_mask;
        let align = page.max(min_align.wrapping_add(1));
        let phase = base & min_align & (align - 1);
        let (lo, hi) = window_below(&win, dev.config.dma_mask);
        let placed = slot.space.lock_inline().alloc(span, align, phase, lo, hi, RangeKind::Private, base);
        let bus = placed.map_err(|e| {
            self.stats.fail(FailureKind::Iommu);
            DmaError::Iommu(e)
        })?;
        // Private pages: one call per entry, never through the shared list page.
        if let Err(f) = tce.put_private(&win, bus, base, npages, tce_perm(dir)) {
            // Entries that may still name the private pages keep the range quarantined: revoke clears
            // it before the device is untrusted again.
            self.cold().put_failed(slot, bus, span, RangeKind::Private, f.clean);
            return Err(DmaError::Iommu(f.err));
        }
        slot.live_mappings.fetch_add(1, Ordering::Relaxed);
        self.stats.mapped(false);
        Ok(BusAddr(bus + (phys - base)))
    }

    /// The accepted device's private range at `bus`, checked against a claim of `len` bytes from
    /// `bus` (`None`: no private range there, the mapping is another kind).
    fn trusted_range(&self, dev: &Device, bus: BusAddr, len: usize) -> Option<Result<BusRange, DmaError>> {
        if !dev.trust.is_accepted() {
            return None;
        }
        let slot = self.slot(dev.domain?)?;
        let r = slot.space.lock_inline().find(bus.0).filter(|r| r.kind == RangeKind::Private)?;
        let off = bus.0 - r.start;
        let fits = off.checked_add(len as u64).is_some_and(|e| e <= r.len);
        Some(if fits {
            Ok(r)
        } else {
            self.stats.fail(FailureKind::Mismatch);
            Err(DmaError::SizeMismatch { mapped: (r.len - off) as usize, given: len })
        })
    }

    /// Unmap an accepted device's private mapping: entries first, then the range. `None` when `bus`
    /// is not one (the caller routes it as any other mapping).
    ///
    /// A `Mapping` (`safe`) is its own record; a raw claim must match the raw record exactly (the
    /// address the map returned, its size and direction), and a private range no raw record names
    /// is a `Mapping`'s ([`DmaError::OwnedByMapping`]).
    pub(crate) fn trusted_unmap(
        &self,
        dev: &Device,
        bus: BusAddr,
        len: usize,
        dir: DmaDirection,
        safe: bool,
    ) -> Option<Result<(), DmaError>> {
        let r = match self.trusted_range(dev, bus, if safe { len } else { 0 })? {
            Ok(r) => r,
            Err(e) => return Some(Err(e)),
        };
        let ticket = match self.trusted_raw_claim(dev, bus, &r, safe, len, dir, true) {
            Ok(t) => t,
            Err(e) => return Some(Err(e)),
        };
        let done = (|| {
            let slot = dev.domain.and_then(|d| self.slot(d)).ok_or(DmaError::UnknownMapping(bus))?;
            let info = dev.domain.and_then(|d| self.domain_info(d)).ok_or(DmaError::UnknownMapping(bus))?;
            let win = info.dynamic.ok_or(DmaError::Iommu(IommuError::NoWindow))?;
            let tce = self.backend().ok_or(DmaError::Iommu(IommuError::NoWindow))?;
            if let Err(e) = tce.clear(&win, r.start, r.len >> win.page_shift) {
                self.stats.fail(FailureKind::Iommu);
                log::warn!("ccdma: unmap of private mapping {bus} failed clearing its entries ({e:?}); kept");
                return Err(DmaError::Iommu(e));
            }
            slot.space.lock_inline().free(r.start, r.len, RangeKind::Private);
            slot.live_mappings.fetch_sub(1, Ordering::Relaxed);
            self.stats.unmapped();
            Ok(())
        })();
        if let Some(t) = ticket {
            match done {
                Ok(()) => self.raw.free(t),
                Err(_) => self.raw.unclaim(t),
            }
        }
        Some(done)
    }

    /// The raw face's claim on the private range `r` at `bus` (`len`, `dir`), checked against the
    /// raw records and claimed for release with `claim` (`None` for the safe face). A range no raw
    /// record names is a `Mapping`'s. One copy for unmap and sync (no closure per caller).
    #[allow(clippy::too_many_arguments)]
    fn trusted_raw_claim(
        &self,
        dev: &Device,
        bus: BusAddr,
        r: &BusRange,
        safe: bool,
        len: usize,
        dir: DmaDirection,
        claim: bool,
    ) -> Result<Option<Ticket>, DmaError> {
        if safe {
            return Ok(None);
        }
        match self.raw.check(dev, bus, len, dir, claim) {
            Ok(t) => Ok(Some(t)),
            Err(DmaError::UnknownMapping(_)) if !self.raw.any_within(dev, r.start, r.end()) => {
                self.stats.fail(FailureKind::Mismatch);
                Err(DmaError::OwnedByMapping(bus))
            }
            Err(e) => {
                self.stats.fail(if matches!(e, DmaError::UnknownMapping(_)) {
                    FailureKind::UnknownMapping
                } else {
                    FailureKind::Mismatch
                });
                Err(e)
            }
        }
    }

    /// Sync of an accepted device's private mapping: the device works on the buffer itself, so
    /// there is nothing to copy once the claim checks out. `None` when `bus` is not one.
    pub(crate) fn trusted_sync(
        &self,
        dev: &Device,
        bus: BusAddr,
        offset: usize,
        len: usize,
        dir: DmaDirection,
        safe: bool,
    ) -> Option<Result<(), DmaError>> {
        let r = match self.trusted_range(dev, bus, 0)? {
            Ok(r) => r,
            Err(e) => return Some(Err(e)),
        };
        if !safe {
            // The raw record says exactly what was mapped: its address, direction and length.
            let claim = self.trusted_raw_claim(dev, bus, &r, false, len, dir, false);
            if let Err(e) = claim {
                return Some(Err(e));
            }
            return Some(self.raw_sync_check(dev, bus, offset, len, dir));
        }
        let off = bus.0 - r.start;
        let end = off.checked_add(offset as u64).and_then(|x| x.checked_add(len as u64));
        Some(if end.is_some_and(|e| e <= r.len) {
            Ok(())
        } else {
            self.stats.fail(FailureKind::OutOfRange);
            Err(DmaError::OutOfRange { offset, mapped: (r.len - off) as usize })
        })
    }
}
