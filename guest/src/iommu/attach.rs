//! Enabling the IOMMU path, attaching devices to windows (path selection per DESIGN.md section 6),
//! deferred attach, detach, and bus-range reservations.

use core::sync::atomic::Ordering;

use spin::Mutex;

use super::bus_space::{BusRange, BusSpace, RangeKind};
use super::domain::{
    DdwOutcome, DomainInfo, DomainRef, DomainSlot, Iommu, IommuStatsSnapshot, PathReason, CLAIMED, DETACHING,
    FREE, READY, SETUP,
};
use super::tce::{ListPage, TceWriter};
use super::{
    IommuConfig, IommuPolicy, TceCalls, WindowGeometry, DDW_PAGE_SIZES, MAX_DOMAINS, MAX_GLOBAL_RESERVATIONS,
    TCE_PCI_READ, TCE_PCI_WRITE,
};
use crate::addr::{BusAddr, DmaMask, PAGE_SIZE};
use crate::device::{DeviceConfig, DmaPath};
use crate::error::{DmaError, IommuError};
use crate::layer::{Device, DmaLayer, PoolOrder, MAX_POOLS};
use crate::platform::Platform;
use crate::stats::FailureKind;

/// The part of `win` a device with `mask` can address: `[lo, hi)`, empty when `lo >= hi`.
pub(crate) fn window_below(win: &WindowGeometry, mask: DmaMask) -> (u64, u64) {
    (win.start, win.end().min(mask.max_addr().saturating_add(1)))
}

impl<'m, P: Platform> DmaLayer<'m, P> {
    /// Enable the IOMMU path for devices the platform puts behind one ([`Platform::tce`]).
    ///
    /// `ranges` is the bus-range storage of every domain, split evenly between `cfg.max_domains`
    /// (each domain's share bounds its live strict mappings, coherent buffers and reservations).
    /// With `cfg.list_page` the page is zeroed and shared here, once.
    ///
    /// # Safety
    /// `cfg.list_page`, if any, must be a page of guest RAM that nothing else uses for as long as the
    /// layer lives.
    pub unsafe fn enable_iommu(
        &mut self,
        cfg: IommuConfig,
        ranges: &'m mut [BusRange],
    ) -> Result<(), DmaError> {
        if self.iommu.is_some() {
            return Err(DmaError::IommuAlreadyEnabled);
        }
        if cfg.max_domains == 0 || cfg.max_domains > MAX_DOMAINS {
            return Err(DmaError::InvalidMaxDomains(cfg.max_domains));
        }
        let per = ranges.len() / cfg.max_domains;
        if per < 4 {
            return Err(DmaError::RangeStorageTooSmall {
                needed: 4 * cfg.max_domains,
                provided: ranges.len(),
            });
        }
        let list = match cfg.list_page {
            None => None,
            Some(phys) => {
                if !phys.is_page_aligned() {
                    return Err(DmaError::Unaligned { addr: phys.0, align: PAGE_SIZE });
                }
                let cpu =
                    self.platform.cpu_ptr(phys, PAGE_SIZE as usize).ok_or(DmaError::NoCpuMapping(phys))?;
                // SAFETY: the caller gives us the page for the layer's life; zeroing it before sharing
                // keeps whatever private data it held from the hypervisor.
                unsafe { core::ptr::write_bytes(cpu.as_ptr(), 0, PAGE_SIZE as usize) };
                if self.platform.is_confidential() {
                    self.share_pages(phys, 1)?;
                }
                // SAFETY: as above: the page is the layer's alone from now on.
                Some(unsafe { ListPage::new(phys, cpu) })
            }
        };
        let mut rest = ranges;
        let domains = core::array::from_fn(|i| {
            if i < cfg.max_domains {
                let (head, tail) = core::mem::take(&mut rest).split_at_mut(per);
                rest = tail;
                Some(DomainSlot::new(head))
            } else {
                None
            }
        });
        self.iommu = Some(Iommu {
            cfg,
            domains,
            list,
            reservations: Mutex::new(([(0, 0); MAX_GLOBAL_RESERVATIONS], 0)),
        });
        Ok(())
    }

    /// Turn the IOMMU path off again: every device must be detached. The list page is made private
    /// again (quarantined if that fails).
    pub fn disable_iommu(&mut self) -> Result<(), DmaError> {
        let Some(iommu) = &self.iommu else { return Ok(()) };
        if iommu.domains.iter().flatten().any(|d| d.state.load(Ordering::Acquire) != FREE) {
            return Err(DmaError::DomainsInUse);
        }
        let list = iommu.list.as_ref().map(|l| l.phys);
        self.iommu = None;
        match list {
            Some(phys) if self.platform.is_confidential() => self.unshare_pages(phys, 1),
            _ => Ok(()),
        }
    }

    /// True when some device holds an IOMMU domain, or entries that could not be cleared may still
    /// name pool pages (pools must stay shared while either is so).
    pub(crate) fn iommu_in_use(&self) -> bool {
        self.iommu_counters.pools_pinned.load(Ordering::Relaxed)
            || self
                .iommu
                .as_ref()
                .is_some_and(|i| i.domains.iter().flatten().any(|d| d.state.load(Ordering::Acquire) != FREE))
    }

    pub(crate) fn slot(&self, d: DomainRef) -> Option<&DomainSlot<'m>> {
        self.iommu.as_ref()?.domains.get(d.index as usize)?.as_ref()
    }

    /// The set-up result of a domain, if it is set up (never attaches).
    #[inline]
    pub(crate) fn domain_info(&self, d: DomainRef) -> Option<&DomainInfo> {
        self.slot(d)?.info(d.generation)
    }

    pub(crate) fn tce_writer<'a>(&'a self, calls: &'a dyn TceCalls) -> TceWriter<'a> {
        let iommu = self.iommu.as_ref();
        TceWriter {
            calls,
            list: iommu.and_then(|i| i.list.as_ref()),
            verify: iommu.map_or(super::VerifyPolicy::All, |i| i.cfg.verify),
            counters: &self.iommu_counters,
        }
    }

    /// Attach a device that sits behind the IOMMU: claim a domain and, unless the device is deferred,
    /// set its windows up now.
    pub(crate) fn attach_iommu(&self, config: DeviceConfig) -> Result<Device, DmaError> {
        let Some(iommu) = &self.iommu else {
            self.stats.fail(FailureKind::NoPath);
            log::warn!(
                "ccdma: device {:#x} sits behind an IOMMU but the IOMMU path is not enabled",
                config.id
            );
            return Err(DmaError::IommuNotEnabled);
        };
        let claimed = iommu.domains.iter().enumerate().find_map(|(i, d)| {
            let d = d.as_ref()?;
            d.state.compare_exchange(FREE, CLAIMED, Ordering::AcqRel, Ordering::Relaxed).ok()?;
            Some((i, d))
        });
        let Some((index, slot)) = claimed else {
            self.stats.fail(FailureKind::NoPath);
            return Err(DmaError::NoFreeDomain { domains: iommu.domains.iter().flatten().count() });
        };
        slot.device.store(config.id, Ordering::Relaxed);
        let domain = DomainRef { index: index as u8, generation: slot.generation.load(Ordering::Relaxed) };
        let mut dev = self.new_device(config, DmaPath::IommuDeferred, PoolOrder::EMPTY, Some(domain));
        if config.deferred_attach {
            log::debug!("ccdma: device {:#x} ({}) -> IOMMU attach deferred", config.id, config.dma_mask);
            return Ok(dev);
        }
        match self.run_setup(slot, &config).unwrap_or(Err(DmaError::NotAttached)) {
            Ok(info) => {
                dev.path = info.path;
                dev.pools = info.pools;
                Ok(dev)
            }
            Err(e) => {
                slot.generation.fetch_add(1, Ordering::Relaxed);
                slot.state.store(FREE, Ordering::Release);
                Err(e)
            }
        }
    }

    /// The domain of a device about to map or allocate: set up now if the device is deferred.
    #[inline]
    pub(crate) fn ensure_attached(&self, dev: &Device) -> Result<&DomainInfo, DmaError> {
        let d = dev.domain.ok_or(DmaError::NotAttached)?;
        let slot = self.slot(d).ok_or(DmaError::NotAttached)?;
        if let Some(info) = slot.info(d.generation) {
            return Ok(info);
        }
        if slot.state.load(Ordering::Acquire) == DETACHING {
            return Err(DmaError::DetachIncomplete);
        }
        if !dev.config.deferred_attach {
            return Err(DmaError::NotAttached);
        }
        self.attach_deferred(slot, d, dev)
    }

    #[cold]
    fn attach_deferred<'s>(
        &'s self,
        slot: &'s DomainSlot<'m>,
        d: DomainRef,
        dev: &Device,
    ) -> Result<&'s DomainInfo, DmaError> {
        loop {
            if slot.generation.load(Ordering::Relaxed) != d.generation {
                return Err(DmaError::NotAttached);
            }
            match slot.state.load(Ordering::Acquire) {
                READY => return slot.info(d.generation).ok_or(DmaError::NotAttached),
                CLAIMED => match self.run_setup(slot, &dev.config) {
                    // Another CPU started the set-up first: wait for it.
                    None => continue,
                    Some(Err(e)) => return Err(e),
                    Some(Ok(_)) => {
                        self.iommu_counters.deferred_attaches.fetch_add(1, Ordering::Relaxed);
                        log::debug!("ccdma: deferred device {:#x} attached at first use", dev.config.id);
                        return slot.info(d.generation).ok_or(DmaError::NotAttached);
                    }
                },
                SETUP => core::hint::spin_loop(),
                _ => return Err(DmaError::NotAttached),
            }
        }
    }

    /// Move the slot CLAIMED -> SETUP, set it up, publish (READY) or go back to CLAIMED. `None` when
    /// the slot was not CLAIMED (another CPU is setting it up).
    fn run_setup(
        &self,
        slot: &DomainSlot<'m>,
        config: &DeviceConfig,
    ) -> Option<Result<DomainInfo, DmaError>> {
        slot.state.compare_exchange(CLAIMED, SETUP, Ordering::AcqRel, Ordering::Relaxed).ok()?;
        Some(match self.setup_domain(slot, config) {
            Ok(info) => {
                log::info!(
                    "ccdma: device {:#x} ({}) -> {} ({})",
                    config.id,
                    config.dma_mask,
                    info.path.name(),
                    info.reason
                );
                slot.publish(info);
                Ok(info)
            }
            Err(e) => {
                slot.space.lock().clear();
                slot.state.store(CLAIMED, Ordering::Release);
                self.stats.fail(FailureKind::NoPath);
                log::warn!("ccdma: IOMMU attach of device {:#x} failed: {e}", config.id);
                Err(e)
            }
        })
    }

    /// Choose the path and program the windows. Runs with the slot held in SETUP.
    fn setup_domain(&self, slot: &DomainSlot<'m>, config: &DeviceConfig) -> Result<DomainInfo, DmaError> {
        let iommu = self.iommu.as_ref().ok_or(DmaError::NotAttached)?;
        let tce = self.platform.tce().ok_or(DmaError::Iommu(IommuError::NoWindow))?;
        let id = config.id;
        let default = tce.default_window(id);
        if let Some(win) = &default {
            win.check()?;
        }
        self.init_space(&mut slot.space.lock(), tce, id)?;
        let mask = config.dma_mask;
        let mut ddw = DdwOutcome::NotTried;
        let mut reason = PathReason::StrictPolicy;
        if iommu.cfg.policy == IommuPolicy::Premapped {
            if iommu.cfg.use_ddw && mask.bits() == 64 && self.npools > 0 {
                match self.setup_ddw(slot, tce, config, default) {
                    Ok(info) => return Ok(info),
                    Err(outcome) => {
                        log::info!("ccdma: device {id:#x}: {outcome}; falling back to the default window");
                        ddw = outcome;
                    }
                }
            }
            if let Some(win) = default {
                if let Some(info) = self.premap_default(slot, tce, config, win, ddw)? {
                    return Ok(info);
                }
                log::info!(
                    "ccdma: device {id:#x}: no pool fits the default window [{:#x}, {:#x}) below mask {mask}; \
                     strict mappings",
                    win.start,
                    win.end()
                );
            }
            reason = PathReason::PoolsDoNotFit(ddw);
        }
        if let Some(win) = default {
            let (lo, hi) = window_below(&win, mask);
            if slot.space.lock().has_room(win.page_size(), win.page_size(), lo, hi) {
                let mut pools = PoolOrder::EMPTY;
                for i in 0..self.npools {
                    pools.push(i);
                }
                return Ok(DomainInfo {
                    path: DmaPath::IommuStrict,
                    reason,
                    ddw: None,
                    dynamic: Some(win),
                    pools,
                    pool_bus: [BusAddr(0); MAX_POOLS],
                });
            }
        }
        let window = default.map_or((0, 0), |w| (w.start, w.end()));
        Err(DmaError::NoIommuPath { mask, pools: self.npools, window, ddw })
    }

    /// Start a domain's bus space: the platform's reserved ranges and the layer-wide reservations.
    fn init_space(&self, space: &mut BusSpace<'m>, tce: &dyn TceCalls, id: u32) -> Result<(), DmaError> {
        space.clear();
        // Bus address 0 is never handed out: many drivers (and virtio rings) read 0 as "no address".
        space.reserve(0, crate::addr::PAGE_SIZE)?;
        let mut i = 0;
        while let Some((start, len)) = tce.reserved_range(id, i) {
            space.reserve(start, len)?;
            i += 1;
        }
        if let Some(iommu) = &self.iommu {
            let g = iommu.reservations.lock();
            for &(start, len) in &g.0[..g.1] {
                space.reserve(start, len)?;
            }
        }
        Ok(())
    }

    /// Enter each pool that fits below the mask into the default window. `Ok(None)`: none fits.
    fn premap_default(
        &self,
        slot: &DomainSlot<'m>,
        tce: &dyn TceCalls,
        config: &DeviceConfig,
        win: WindowGeometry,
        ddw: DdwOutcome,
    ) -> Result<Option<DomainInfo>, DmaError> {
        let (lo, hi) = window_below(&win, config.dma_mask);
        let writer = self.tce_writer(tce);
        let page = win.page_size();
        let mut pools = PoolOrder::EMPTY;
        let mut pool_bus = [BusAddr(0); MAX_POOLS];
        for (i, pool) in self.pools().enumerate() {
            let (phys, len) = (pool.phys().0, pool.len() as u64);
            if phys % page != 0 || len % page != 0 || lo >= hi {
                continue;
            }
            let kind = RangeKind::Premap { pool: i as u8 };
            // The pool's bus base keeps every `min_align_mask` bit of its physical address (slots are
            // placed by physical address), so a mapping's bus address keeps the bits the device needs.
            let align = page.max(config.min_align_mask + 1);
            let phase = phys & (align - 1) & !(page - 1);
            let Ok(bus) = slot.space.lock().alloc(len, align, phase, lo, hi, kind, phys) else { continue };
            if let Err(f) = writer.put(&win, bus, phys, len / page, TCE_PCI_READ | TCE_PCI_WRITE) {
                if f.clean {
                    slot.space.lock().free(bus, len, kind);
                }
                // Unclean, the range stays recorded as premapped and the unwinding below retries it.
                if self.unwind_premaps(slot, tce, Some(win), None).is_err() {
                    self.pin_pools(slot);
                }
                self.stats.fail(FailureKind::Iommu);
                return Err(DmaError::Iommu(f.err));
            }
            pools.push(i);
            pool_bus[i] = BusAddr(bus);
        }
        if pools.is_empty() {
            return Ok(None);
        }
        pools.sort_by_bus(&pool_bus);
        Ok(Some(DomainInfo {
            path: DmaPath::IommuPremapped,
            reason: PathReason::DefaultWindow(ddw),
            ddw: None,
            dynamic: Some(win),
            pools,
            pool_bus,
        }))
    }

    /// Clear and forget the premapped ranges of a domain (set-up failed, or detach), one by one. Stops
    /// at the first range whose clearing fails, leaving it (and those after it) recorded, so a retry
    /// continues where this one stopped.
    fn unwind_premaps(
        &self,
        slot: &DomainSlot<'m>,
        tce: &dyn TceCalls,
        default: Option<WindowGeometry>,
        ddw: Option<WindowGeometry>,
    ) -> Result<(), IommuError> {
        let writer = self.tce_writer(tce);
        loop {
            let next = slot
                .space
                .lock()
                .ranges()
                .iter()
                .copied()
                .find(|r| matches!(r.kind, RangeKind::Premap { .. }));
            let Some(r) = next else { break };
            let win = [ddw, default].into_iter().flatten().find(|w| r.start >= w.start && r.end() <= w.end());
            let w = win.ok_or(IommuError::NoWindow)?;
            writer.clear(&w, r.start, r.len >> w.page_shift)?;
            slot.space.lock().free(r.start, r.len, r.kind);
        }
        Ok(())
    }

    /// Premapped entries of a domain whose set-up failed could not be cleared: they may name pool
    /// pages for good, so the ranges are counted quarantined and the pools can never be made private
    /// again (`release_pools` refuses).
    fn pin_pools(&self, slot: &DomainSlot<'m>) {
        let stuck =
            slot.space.lock().ranges().iter().filter(|r| matches!(r.kind, RangeKind::Premap { .. })).count();
        self.iommu_counters.quarantined_ranges.fetch_add(stuck as u64, Ordering::Relaxed);
        self.iommu_counters.pools_pinned.store(true, Ordering::Relaxed);
        log::error!("ccdma: {stuck} premapped ranges could not be cleared; the pools stay shared for good");
    }

    /// Create a DDW holding only the pools (largest IOMMU page their alignment allows) and enter them.
    fn setup_ddw(
        &self,
        slot: &DomainSlot<'m>,
        tce: &dyn TceCalls,
        config: &DeviceConfig,
        default: Option<WindowGeometry>,
    ) -> Result<DomainInfo, DdwOutcome> {
        let id = config.id;
        let c = &self.iommu_counters;
        c.ddw_query.fetch_add(1, Ordering::Relaxed);
        let q = tce.ddw_query(id).map_err(DdwOutcome::QueryFailed)?;
        if q.windows_available == 0 {
            return Err(DdwOutcome::NoneAvailable);
        }
        // The largest page every pool's start and length are multiples of.
        let align =
            self.pools().map(|p| p.phys().0.trailing_zeros().min((p.len() as u64).trailing_zeros())).min();
        let align = align.unwrap_or(0);
        let shift = DDW_PAGE_SIZES
            .iter()
            .map(|&(_, s)| s)
            .filter(|&s| s <= align && q.supports_shift(s))
            .max()
            .ok_or(DdwOutcome::NoPageSize)?;
        let total: u64 = self.pools().map(|p| p.len() as u64).sum();
        let window_shift = total.next_power_of_two().trailing_zeros().max(shift);
        if (1u64 << (window_shift - shift)) > q.largest_block {
            return Err(DdwOutcome::TooSmall);
        }
        c.ddw_create.fetch_add(1, Ordering::Relaxed);
        let win = tce.ddw_create(id, shift, window_shift).map_err(DdwOutcome::CreateFailed)?;
        let remove = |outcome: DdwOutcome| {
            c.ddw_remove.fetch_add(1, Ordering::Relaxed);
            if tce.ddw_remove(id, win.liobn) != 0 {
                c.leaked_windows.fetch_add(1, Ordering::Relaxed);
                log::warn!("ccdma: removing DDW {:#x} of device {id:#x} failed", win.liobn);
            }
            outcome
        };
        // The window's geometry is an allegation: it must be what was asked for and below the mask.
        let overlaps_default = default.is_some_and(|d| win.start < d.end() && d.start < win.end());
        if win.page_shift != shift
            || win.check().is_err()
            || win.size < total
            || overlaps_default
            || !config.dma_mask.covers(win.start, total)
        {
            return Err(remove(DdwOutcome::BadWindow));
        }
        let writer = self.tce_writer(tce);
        let mut pools = PoolOrder::EMPTY;
        let mut pool_bus = [BusAddr(0); MAX_POOLS];
        let mut off = 0;
        for (i, pool) in self.pools().enumerate() {
            let (phys, len) = (pool.phys().0, pool.len() as u64);
            let bus = win.start + off;
            let kind = RangeKind::Premap { pool: i as u8 };
            let placed = slot.space.lock().alloc(len, win.page_size(), 0, bus, bus + len, kind, phys);
            let result = match placed {
                Ok(_) => {
                    writer.put(&win, bus, phys, len >> shift, TCE_PCI_READ | TCE_PCI_WRITE).map_err(|f| {
                        // Unclean, the range stays recorded as premapped for the unwinding below.
                        if f.clean {
                            slot.space.lock().free(bus, len, kind);
                        }
                        f.err
                    })
                }
                Err(e) => Err(e),
            };
            if let Err(e) = result {
                // Removing the window destroys its table; only if that fails are the entries cleared
                // one by one (and if that fails too, they may stay for good).
                let entries: u64 = slot
                    .space
                    .lock()
                    .ranges()
                    .iter()
                    .filter(|r| matches!(r.kind, RangeKind::Premap { .. }))
                    .map(|r| r.len >> shift)
                    .sum();
                let leaked = c.leaked_windows.load(Ordering::Relaxed);
                let outcome = remove(DdwOutcome::PremapFailed(e));
                if c.leaked_windows.load(Ordering::Relaxed) == leaked {
                    c.live_tces.fetch_sub(entries, Ordering::Relaxed);
                    let mut space = slot.space.lock();
                    while let Some(r) =
                        space.ranges().iter().copied().find(|r| matches!(r.kind, RangeKind::Premap { .. }))
                    {
                        space.free(r.start, r.len, r.kind);
                    }
                } else if self.unwind_premaps(slot, tce, None, Some(win)).is_err() {
                    self.pin_pools(slot);
                }
                return Err(outcome);
            }
            pools.push(i);
            pool_bus[i] = BusAddr(bus);
            off += len;
        }
        pools.sort_by_bus(&pool_bus);
        Ok(DomainInfo {
            path: DmaPath::IommuDdw,
            reason: PathReason::Ddw,
            ddw: Some(win),
            dynamic: default,
            pools,
            pool_bus,
        })
    }

    /// Detach a device from its domain: its IOMMU entries are cleared and its windows removed
    /// (`DmaLayer::detach` has checked that nothing of it is live). Refused, nothing changed, while
    /// the domain has live ranges. When clearing fails part way the domain is left DETACHING: its
    /// window no longer holds every pool, so maps refuse ([`DmaError::DetachIncomplete`]) until a
    /// retried detach completes; nothing of the device is live, so nothing else can go wrong.
    pub(crate) fn detach_domain(&self, dev: &Device) -> Result<(), DmaError> {
        let Some(d) = dev.domain else { return Ok(()) };
        let slot = self.slot(d).ok_or(DmaError::NotAttached)?;
        if slot.generation.load(Ordering::Relaxed) != d.generation {
            return Err(DmaError::NotAttached);
        }
        let free = |slot: &DomainSlot<'m>| {
            slot.space.lock().clear();
            slot.generation.fetch_add(1, Ordering::Relaxed);
            slot.state.store(FREE, Ordering::Release);
        };
        if slot.state.compare_exchange(CLAIMED, SETUP, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
            // Deferred and never used: nothing was programmed.
            free(slot);
            return Ok(());
        }
        let from = if slot.state.compare_exchange(READY, SETUP, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
            READY
        } else if slot.state.compare_exchange(DETACHING, SETUP, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
            DETACHING
        } else {
            return Err(DmaError::NotAttached);
        };
        let busy = slot.live_mappings.load(Ordering::Acquire) != 0
            || slot
                .space
                .lock()
                .ranges()
                .iter()
                .any(|r| matches!(r.kind, RangeKind::Mapping | RangeKind::Coherent));
        if busy {
            slot.state.store(from, Ordering::Release);
            let live = slot.live_mappings.load(Ordering::Acquire).max(1);
            return Err(DmaError::Busy { live });
        }
        let info = slot.info_unchecked();
        let Some(tce) = self.platform.tce() else {
            slot.state.store(from, Ordering::Release);
            return Err(DmaError::Iommu(IommuError::NoWindow));
        };
        if let Err(e) = self.unwind_premaps(slot, tce, info.dynamic, info.ddw) {
            // Some pools may already be gone from the window: the device must not map into them.
            // It stays attached, mapping nothing, and detach can be retried.
            slot.state.store(DETACHING, Ordering::Release);
            self.stats.fail(FailureKind::Iommu);
            log::warn!("ccdma: detach of device {:#x} failed clearing its window ({e:?})", dev.config.id);
            return Err(DmaError::Iommu(e));
        }
        if let Some(win) = info.ddw {
            self.iommu_counters.ddw_remove.fetch_add(1, Ordering::Relaxed);
            if tce.ddw_remove(dev.config.id, win.liobn) != 0 {
                self.iommu_counters.leaked_windows.fetch_add(1, Ordering::Relaxed);
                log::warn!("ccdma: removing DDW {:#x} of device {:#x} failed", win.liobn, dev.config.id);
            }
        }
        free(slot);
        Ok(())
    }

    /// Reserve `[start, start + len)` of bus space in every device's windows, now and for devices
    /// attached later. Fails with [`IommuError::ReservationConflict`] (nothing changed) when a live
    /// mapping of any device overlaps it.
    pub fn reserve_bus_range(&self, start: u64, len: u64) -> Result<(), DmaError> {
        let iommu = self.iommu.as_ref().ok_or(DmaError::IommuNotEnabled)?;
        let mut global = iommu.reservations.lock();
        if global.1 == MAX_GLOBAL_RESERVATIONS {
            return Err(DmaError::Iommu(IommuError::BusSpaceExhausted));
        }
        // Lock every domain's space (in index order) so the check and the change are one step.
        let mut guards: [Option<spin::MutexGuard<'_, BusSpace<'m>>>; MAX_DOMAINS] = Default::default();
        for (g, d) in guards.iter_mut().zip(iommu.domains.iter()) {
            if let Some(d) = d {
                if d.state.load(Ordering::Acquire) == READY {
                    *g = Some(d.space.lock());
                }
            }
        }
        for g in guards.iter().flatten() {
            g.check_reserve(start, len)?;
        }
        for g in guards.iter_mut().flatten() {
            g.reserve(start, len)?;
        }
        let n = global.1;
        global.0[n] = (start, len);
        global.1 += 1;
        Ok(())
    }

    /// Reserve `[start, start + len)` in one device's windows (it must be attached, not deferred).
    pub fn reserve_bus_range_for(&self, dev: &Device, start: u64, len: u64) -> Result<(), DmaError> {
        self.check_device(dev)?;
        let d = dev.domain.ok_or(DmaError::NotAttached)?;
        let slot = self.slot(d).ok_or(DmaError::NotAttached)?;
        slot.info(d.generation).ok_or(DmaError::NotAttached)?;
        slot.space.lock().reserve(start, len)?;
        Ok(())
    }

    /// The path of a device now (for a deferred device: [`DmaPath::IommuDeferred`] until its first map
    /// or allocation).
    pub fn path_of(&self, dev: &Device) -> DmaPath {
        match dev.domain {
            None => dev.path,
            Some(d) => self.domain_info(d).map_or(DmaPath::IommuDeferred, |i| i.path),
        }
    }

    /// Why a device behind the IOMMU got its path (`None` off the IOMMU path or before a deferred
    /// attach).
    pub fn path_reason(&self, dev: &Device) -> Option<PathReason> {
        self.domain_info(dev.domain?).map(|i| i.reason)
    }

    /// The windows of a device: (the window for per-mapping entries and coherent buffers, the DDW).
    pub fn windows_of(&self, dev: &Device) -> (Option<WindowGeometry>, Option<WindowGeometry>) {
        dev.domain.and_then(|d| self.domain_info(d)).map_or((None, None), |i| (i.dynamic, i.ddw))
    }

    /// Where pool `pool` starts on the device's bus (per device when premapped in its window).
    pub fn pool_bus_of(&self, dev: &Device, pool: usize) -> Option<BusAddr> {
        let (order, bus) = self.pool_view(dev)?;
        order.iter().any(|i| i == pool).then(|| bus[pool])
    }

    /// The used bus ranges of a device's windows (reservations, premapped pools, mappings, coherent
    /// buffers, quarantined ranges), copied into `out`; returns how many there are.
    pub fn bus_ranges_of(&self, dev: &Device, out: &mut [BusRange]) -> usize {
        let Some(slot) = dev.domain.and_then(|d| self.slot(d)) else { return 0 };
        let space = slot.space.lock();
        for (o, r) in out.iter_mut().zip(space.ranges()) {
            *o = *r;
        }
        space.ranges().len()
    }

    /// A snapshot of the IOMMU counters.
    pub fn iommu_stats(&self) -> IommuStatsSnapshot {
        self.iommu_counters.snapshot()
    }

    /// Live bus ranges (strict mappings and coherent buffers) over all domains.
    pub fn live_bus_ranges(&self) -> usize {
        self.iommu.as_ref().map_or(0, |i| i.domains.iter().flatten().map(|d| d.space.lock().live()).sum())
    }
}

/// The permission a mapping's direction allows the device.
pub(crate) const fn tce_perm(dir: crate::direction::DmaDirection) -> u64 {
    let mut p = 0;
    if dir.device_reads() {
        p |= TCE_PCI_READ;
    }
    if dir.device_writes() {
        p |= TCE_PCI_WRITE;
    }
    p
}
