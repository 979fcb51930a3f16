//! Streaming mappings on the IOMMU paths. Premapped: a bounce into a pool the device's window already
//! holds (no hypercall). Strict: a bounce run aligned to whole IOMMU pages, a bus range below the
//! device's mask, entries with the direction's permission; unmap clears the entries before the data
//! is copied back and before the slots or bus range can be reused.

use core::sync::atomic::Ordering;

use super::bounce::RunAlign;
use super::{Mapped, Original};
use crate::addr::BusAddr;
use crate::device::Device;
use crate::direction::{DmaAttrs, DmaDirection};
use crate::error::DmaError;
use crate::growth::live::LivePools;
use crate::iommu::bus_space::{BusRange, RangeKind};
use crate::iommu::calls::tce_perm;
use crate::iommu::domain::{DomainInfo, DomainSlot};
use crate::iommu::error::IommuError;
use crate::iommu::window::window_below;
use crate::layer::{Cold, DmaLayer};
use crate::path::DmaPath;
use crate::platform::Platform;
use crate::pool::SlotRecord;
use crate::stats::FailureKind;

impl<'m, P: Platform, const POOLS: usize, const DOMAINS: usize, const AREAS: usize>
    DmaLayer<'m, P, POOLS, DOMAINS, AREAS>
{
    /// Map on an IOMMU path (attaching a deferred device first). The original by reference: by
    /// value, the safe face's inline map copied it on every map, the copy hoisted above its test
    /// of the domain (the Rust ABI passes it by address either way).
    pub(crate) fn iommu_map(
        &self,
        dev: &Device,
        orig: &Original,
        len: usize,
        dir: DmaDirection,
        attrs: DmaAttrs,
    ) -> Result<Mapped, DmaError> {
        let orig = *orig;
        let d = dev.domain.ok_or(DmaError::NotAttached)?;
        let slot = self.slot(d).ok_or(DmaError::NotAttached)?;
        // Set up already (every map but a deferred device's first, which `map_original` sets up
        // and retries): one look at the slot.
        let info = match slot.info(d.generation) {
            Some(info) => info,
            None => self.attached(dev)?,
        };
        match info.path {
            DmaPath::IommuStrict => {
                let bus = self.strict_map(dev, info, orig, len, dir, attrs)?;
                slot.live_mappings.fetch_add(1, Ordering::Relaxed);
                Ok(Mapped::elsewhere(bus))
            }
            _ => {
                // Premapped (a deferred device's, or a map that found the domain not READY first):
                // the pools as the domain's window holds them, as `premapped_view`'s maps.
                self.bounce_map(dev, &slot.live, None, orig, len, dir, attrs)
            }
        }
    }

    /// The pools a device attached on a premapped path maps from: its domain's window, read in
    /// place, when the domain is READY in the device's generation; `None` for every other case
    /// (strict, deferred until its first map, a detach left incomplete), which [`Self::iommu_map`]
    /// handles. The path was fixed when the device attached (a deferred device keeps
    /// `IommuDeferred` and always goes out of line), and one domain's set-up result never changes
    /// while a device of it is attached, so the device's path is the domain's.
    ///
    /// A premapped mapping is counted live by its device only ([`Device::live`]), not also by its
    /// domain (`DomainSlot::live_mappings`: two atomic read-modify-writes per map+unmap saved).
    /// Nothing is lost: a domain is taken down only by the detach of its last device, and
    /// `detach` refuses a device with anything live before it reaches the domain. A device is
    /// move-only and `detach` consumes it, so no map of it runs meanwhile, and every other device
    /// of the domain was detached before (its own count zero) or was never detached (then the
    /// domain keeps a user and is never taken down). Pinned by
    /// `tests/tests/premapped_detach_counts_by_device.rs`.
    #[inline(always)]
    pub(crate) fn premapped_view(&self, dev: &Device) -> Option<&LivePools<POOLS>> {
        if !matches!(dev.path, DmaPath::IommuDdw | DmaPath::IommuPremapped) {
            return None;
        }
        let d = dev.domain?;
        let slot = self.slot(d)?;
        slot.info(d.generation)?;
        Some(&slot.live)
    }

    /// The device's domain info when it maps strictly; `Ok(None)` off the strict path; an error when
    /// the device has a domain that is not set up (unmap and sync never attach).
    pub(crate) fn strict_domain(
        &self,
        dev: &Device,
        bus: BusAddr,
    ) -> Result<Option<&DomainInfo<POOLS>>, DmaError> {
        let Some(d) = dev.domain else { return Ok(None) };
        match self.domain_info(d) {
            Some(i) if i.path == DmaPath::IommuStrict => Ok(Some(i)),
            Some(_) => Ok(None),
            None => {
                self.stats.fail(FailureKind::UnknownMapping);
                Err(DmaError::UnknownMapping(bus))
            }
        }
    }

    fn strict_map(
        &self,
        dev: &Device,
        info: &DomainInfo<POOLS>,
        orig: Original,
        len: usize,
        dir: DmaDirection,
        attrs: DmaAttrs,
    ) -> Result<BusAddr, DmaError> {
        let win = info.dynamic.ok_or(DmaError::Iommu(IommuError::NoWindow))?;
        let slot = dev.domain.and_then(|d| self.slot(d)).ok_or(DmaError::NotAttached)?;
        let tce = self.backend().ok_or(DmaError::Iommu(IommuError::NoWindow))?;
        // Never 0 for a window set-up accepted (`is_usable`); checked so no division can panic.
        let page = win.page_size();
        if page == 0 {
            return Err(DmaError::Iommu(IommuError::NoWindow));
        }
        // The domain's pools, read in place as premapped maps read them (the base is not needed: the
        // run gets a bus range of its own below).
        let reserve = self.growth.growing.load(Ordering::Relaxed);
        let align = RunAlign::IommuPages(page);
        let (run, _) = self.bounce_in_view(dev, &slot.live, None, reserve, orig, len, dir, attrs, align)?;
        let pool = self.pools.get(run.pool).ok_or(DmaError::NotAttached)?;
        let slot_size = pool.slot_size();
        let nslots = run.run_len / slot_size;
        let run_phys = pool.phys().0 + run.run_off as u64;
        let npages = (run.run_len as u64).div_ceil(page);
        // The bus address keeps the bits the device needs preserved: those below the IOMMU page are in
        // the data offset, those above select the bus range's alignment phase.
        let min_align = dev.config.min_align_mask;
        let unit = page.max(slot_size as u64);
        let align = unit.max(min_align.wrapping_add(1));
        let orig_addr = orig.phys.map_or(orig.cpu as u64, |p| p.0);
        let phase = orig_addr & min_align & !(unit - 1) & (align - 1);
        let (lo, hi) = window_below(&win, dev.config.dma_mask);
        let placed =
            slot.space.lock_inline().alloc(npages * page, align, phase, lo, hi, RangeKind::Mapping, run_phys);
        let bus = match placed {
            Ok(b) => b,
            Err(e) => {
                pool.free(run.index, nslots);
                self.stats.fail(FailureKind::Iommu);
                return Err(DmaError::Iommu(e));
            }
        };
        if let Err(f) = tce.put(&win, bus, run_phys, npages, tce_perm(dir)) {
            self.cold().put_failed(slot, bus, npages * page, RangeKind::Mapping, f.clean);
            if f.clean {
                pool.free(run.index, nslots);
            } else {
                // Entries may still point at the run: neither the bus range nor the slots are ever
                // reused (the slots stay allocated, the range is quarantined).
                self.iommu_counters.pools_pinned.store(true, Ordering::Relaxed);
            }
            return Err(DmaError::Iommu(f.err));
        }
        self.iommu_counters.strict_maps.fetch_add(1, Ordering::Relaxed);
        self.stats.mapped(true);
        Ok(BusAddr(bus + run.data_off as u64))
    }

    /// Find the strict mapping at `bus` from the guest's own records (the bus range, then the slot
    /// run), optionally claiming it for release. Both lookups happen under the domain's lock so a
    /// concurrent unmap cannot free the range in between.
    pub(crate) fn strict_record(
        &self,
        dev: &Device,
        _info: &DomainInfo<POOLS>,
        bus: BusAddr,
        release: bool,
    ) -> Result<(usize, SlotRecord, BusRange), DmaError> {
        let unknown = || {
            self.stats.fail(FailureKind::UnknownMapping);
            DmaError::UnknownMapping(bus)
        };
        let slot = dev.domain.and_then(|d| self.slot(d)).ok_or_else(unknown)?;
        let space = slot.space.lock_inline();
        let r = space.find(bus.0).filter(|r| r.kind == RangeKind::Mapping).ok_or_else(unknown)?;
        // The run starts at the range's first page; the data `bus - start` into it.
        let (order, _) = self.cold().pool_view(dev, false).ok_or_else(unknown)?;
        let found = order.iter().find_map(|i| {
            let pool = self.pools.get(i)?;
            let off = r.phys.checked_sub(pool.phys().0)?;
            (off < pool.len() as u64).then_some((i, pool, off))
        });
        let (i, pool, run_off) = found.ok_or_else(unknown)?;
        let rec = pool.lookup_run(run_off, bus.0 - r.start, release).ok_or_else(unknown)?;
        drop(space);
        Ok((i, rec, r))
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn strict_unmap(
        &self,
        dev: &Device,
        bus: BusAddr,
        len: usize,
        dir: DmaDirection,
        attrs: DmaAttrs,
        safe: bool,
    ) -> Result<(), DmaError> {
        let info = self.strict_domain(dev, bus)?.ok_or(DmaError::UnknownMapping(bus))?;
        let win = info.dynamic.ok_or(DmaError::Iommu(IommuError::NoWindow))?;
        let (i, rec, r) = self.strict_record(dev, info, bus, true)?;
        let pool = self.pools.get(i).ok_or(DmaError::UnknownMapping(bus))?;
        if let Err(e) = self.check_record(dev, bus, safe, &rec, len, dir) {
            pool.unrelease(rec.index);
            return Err(e);
        }
        let tce = self.backend().ok_or(DmaError::Iommu(IommuError::NoWindow))?;
        // Entries go first: from here on the device cannot touch the run, so the copy back reads what
        // it left, and the slots can be reused safely.
        if let Err(e) = tce.clear(&win, r.start, r.len >> win.page_shift) {
            pool.unrelease(rec.index);
            self.stats.fail(FailureKind::Iommu);
            log::warn!("ccdma: unmap of {bus} failed clearing its entries ({e:?}); mapping kept");
            return Err(DmaError::Iommu(e));
        }
        if rec.dir.device_writes() && !attrs.contains(DmaAttrs::SKIP_CPU_SYNC) {
            self.copy_to_original(&pool, &rec, 0, rec.len);
        }
        if let Some(slot) = dev.domain.and_then(|d| self.slot(d)) {
            slot.space.lock_inline().free(r.start, r.len, RangeKind::Mapping);
            slot.live_mappings.fetch_sub(1, Ordering::Relaxed);
        }
        pool.free(rec.index, rec.nslots);
        self.stats.unmapped();
        Ok(())
    }
}

impl<const POOLS: usize, const DOMAINS: usize, const AREAS: usize> Cold<'_, '_, POOLS, DOMAINS, AREAS> {
    /// Entries for the bus range at `bus` (`span` bytes of `kind`) could not all be written: an IOMMU
    /// failure is counted; a `clean` failure (no entry left) frees the range, any other quarantines
    /// it for good (entries may still name its pages). One copy for every path that enters a range.
    #[inline(never)]
    pub(crate) fn put_failed(
        &self,
        slot: &DomainSlot<'_, POOLS>,
        bus: u64,
        span: u64,
        kind: RangeKind,
        clean: bool,
    ) {
        self.stats.fail(FailureKind::Iommu);
        if clean {
            slot.space.lock_inline().free(bus, span, kind);
        } else {
            slot.space.lock_inline().quarantine(bus);
            self.iommu_counters.quarantined_ranges.fetch_add(1, Ordering::Relaxed);
        }
    }
}
