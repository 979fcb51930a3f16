//! Enabling the IOMMU path, attaching devices to windows (path selection per DESIGN.md section 6),
//! deferred attach, detach, and bus-range reservations.

use core::ptr::NonNull;
use core::sync::atomic::Ordering;

use crate::cold_lock::ColdLock as Mutex;

use super::backend::Backend;
use super::bus_space::{BusRange, BusSpace, RangeKind};
use super::config::{IommuConfig, VerifyPolicy, MAX_DOMAINS};
use super::counters::IommuStatsSnapshot;
use super::domain::{
    DomainInfo, DomainRef, DomainSlot, Iommu, IommuCode, CLAIMED, DETACHING, FREE, READY, SETUP,
};
use super::error::IommuError;
use super::tce::TceWriter;
use super::window::WindowGeometry;
use crate::addr::{BusAddr, DmaMask};
use crate::device::{Device, DeviceConfig};
use crate::error::DmaError;
use crate::layer::DmaLayer;
use crate::layer::{Cold, FullCold};
use crate::path::{DmaPath, PathReason};
use crate::platform::Platform;
use crate::pool_set::PoolOrder;
use crate::stats::FailureKind;

impl<'m, const POOLS: usize, const DOMAINS: usize, const AREAS: usize> Cold<'_, 'm, POOLS, DOMAINS, AREAS> {
    /// [`DmaLayer::enable_iommu`], over the platform as `&dyn Platform`.
    ///
    /// # Safety
    /// As [`DmaLayer::enable_iommu`]; `code` is the table of this layer's platform type
    /// (`CodeFor::<P, ..>::CODE`, `code.rs`): the IOMMU path's cold calls go through it.
    pub(crate) unsafe fn enable_iommu_dyn(
        &mut self,
        cfg: IommuConfig,
        ranges: &'m mut [BusRange],
        code: &'static IommuCode<POOLS, DOMAINS, AREAS>,
    ) -> Result<(), DmaError> {
        crate::parts::require(crate::parts::IOMMU, "papr-tce or native-iommu")?;
        if self.iommu.is_some() {
            return Err(DmaError::IommuAlreadyEnabled);
        }
        if cfg.max_domains == 0 || cfg.max_domains > DOMAINS {
            return Err(DmaError::InvalidMaxDomains(cfg.max_domains));
        }
        let per = ranges.len() / cfg.max_domains;
        if per < 4 {
            return Err(DmaError::RangeStorageTooSmall {
                needed: 4 * cfg.max_domains,
                provided: ranges.len(),
            });
        }
        let list = self.enable_list_pages(cfg.batching)?;
        // Built in place, one domain at a time: the whole IOMMU part is ~14 KiB, too much for a
        // firmware frame (`scripts/budgets.sh` checks the frames).
        let iommu = self.iommu.insert(
            const {
                Iommu {
                    code: None,
                    cfg: IommuConfig::premapped(),
                    domains: [const { None }; DOMAINS],
                    list: None,
                    reservations: Mutex::new(([(0, 0); DOMAINS], 0)),
                    attach_lock: Mutex::new(()),
                }
            },
        );
        iommu.code = Some(code);
        iommu.cfg = cfg;
        iommu.list = list;
        let mut rest = ranges;
        for slot in iommu.domains.iter_mut().take(cfg.max_domains) {
            // `per * max_domains <= ranges.len()`: every split finds its share.
            let Some((head, tail)) = core::mem::take(&mut rest).split_at_mut_checked(per) else { break };
            rest = tail;
            DomainSlot::init_in(slot, head);
        }
        Ok(())
    }

    /// [`DmaLayer::disable_iommu`], over the platform as `&dyn Platform`.
    pub(crate) fn disable_iommu_dyn(&mut self) -> Result<(), DmaError> {
        let Some(iommu) = &self.iommu else { return Ok(()) };
        if iommu.domains.iter().flatten().any(|d| d.state.load(Ordering::Acquire) != FREE) {
            return Err(DmaError::DomainsInUse);
        }
        let list = iommu.list.as_ref().map(|l| l.range());
        self.iommu = None;
        self.release_list_pages(list)
    }
}

impl<'a, 'm, const POOLS: usize, const DOMAINS: usize, const AREAS: usize>
    Cold<'a, 'm, POOLS, DOMAINS, AREAS>
{
    /// The mechanism for this operation (see [`backend_of`]).
    pub(crate) fn backend(&self) -> Option<Backend<'_>> {
        backend_of(self)
    }

    /// [`Self::backend`] for the calls that enter a pool into a window for good (premapped set-up,
    /// growth): read back as [`VerifyPolicy::entering_pools`] says.
    pub(crate) fn premap_backend(&self) -> Option<Backend<'_>> {
        let mut b = self.backend()?;
        if let (Backend::Tce(_, w), Some(i)) = (&mut b, &self.iommu) {
            w.verify = i.cfg.verify.entering_pools();
        }
        Some(b)
    }

    /// Attach a device that sits behind the IOMMU: join the domain of its partitionable endpoint when
    /// another attached device holds one (see `domain.rs`, "One domain per partitionable endpoint"),
    /// else claim a free domain and, unless the device is deferred, set its windows up now.
    pub(crate) fn attach_iommu(&self, config: DeviceConfig) -> Result<Device, DmaError> {
        let Some(iommu) = &self.iommu else {
            self.stats.fail(FailureKind::NoPath);
            log::warn!(
                "ccdma: device {:#x} sits behind an IOMMU but the IOMMU path is not enabled",
                config.id
            );
            return Err(DmaError::IommuNotEnabled);
        };
        // Through the table `enable_iommu` stored: only it names the code below (`code.rs`).
        let Some(code) = iommu.code else { return Err(DmaError::IommuNotEnabled) };
        // SAFETY: `enable_iommu` of this layer stored the table, built for the layer's own platform
        // type and capacities (a layer's type never changes); `self` is that layer.
        unsafe { (code.attach)(NonNull::from(self).cast(), config) }
    }

    /// [`Self::attach_iommu`] once the path is enabled (reached through [`IommuCode`]).
    pub(crate) fn attach_enabled(&self, config: DeviceConfig) -> Result<Device, DmaError> {
        let Some(iommu) = &self.iommu else { return Err(DmaError::IommuNotEnabled) };
        let endpoint = self.backend().map_or(1 << 33 | u64::from(config.id), |b| b.endpoint(config.id));
        let _attaching = iommu.attach_lock.lock();
        // Under the attach lock no domain is in SETUP: set-up and detach take the lock too.
        let shared = iommu.domains.iter().enumerate().find_map(|(i, d)| {
            let d = d.as_ref()?;
            let live = d.state.load(Ordering::Acquire) != FREE && d.users.load(Ordering::Relaxed) != 0;
            (live && d.endpoint.load(Ordering::Relaxed) == endpoint).then_some((i, d))
        });
        if let Some((index, slot)) = shared {
            return self.join_domain(index, slot, config);
        }
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
        slot.endpoint.store(endpoint, Ordering::Relaxed);
        slot.users.store(1, Ordering::Relaxed);
        slot.mask.store(config.dma_mask.bits() as u64, Ordering::Relaxed);
        slot.min_align.store(config.min_align_mask, Ordering::Relaxed);
        let domain = DomainRef { index: index as u8, generation: slot.generation.load(Ordering::Relaxed) };
        let dev = self.new_domain_device(config, DmaPath::IommuDeferred, PoolOrder::EMPTY, domain);
        if config.deferred_attach {
            log::debug!("ccdma: device {:#x} ({}) -> IOMMU attach deferred", config.id, config.dma_mask);
            return Ok(dev);
        }
        self.set_up_now(slot, &config, dev).inspect_err(|_| {
            slot.users.store(0, Ordering::Relaxed);
            slot.generation.fetch_add(1, Ordering::Relaxed);
            slot.state.store(FREE, Ordering::Release);
        })
    }

    /// Run the domain's set-up now (the device is not deferred) and give the device its path and
    /// pools; the caller undoes its claim on an error.
    fn set_up_now(
        &self,
        slot: &DomainSlot<'m, POOLS>,
        config: &DeviceConfig,
        mut dev: Device,
    ) -> Result<Device, DmaError> {
        self.run_setup_locked(slot, config).unwrap_or(Err(DmaError::NotAttached))?;
        // Under the attach lock: the generation the set-up published is the slot's now.
        let info = slot.info(slot.generation.load(Ordering::Relaxed)).ok_or(DmaError::NotAttached)?;
        dev.path = info.path;
        dev.pools = info.pools.widen();
        Ok(dev)
    }

    /// A second (third, ...) device of an endpoint joins the endpoint's domain. Runs under the attach
    /// lock. A domain set up already must serve the device as it is; one still waiting for a deferred
    /// set-up narrows its mask so the set-up serves every device attached by then.
    fn join_domain(
        &self,
        index: usize,
        slot: &DomainSlot<'m, POOLS>,
        config: DeviceConfig,
    ) -> Result<Device, DmaError> {
        let domain = DomainRef { index: index as u8, generation: slot.generation.load(Ordering::Relaxed) };
        if slot.accepted.load(Ordering::Relaxed) {
            // It would reach the accepted device's private pages through the shared windows.
            self.stats.fail(FailureKind::NoPath);
            log::warn!("ccdma: device {:#x} refused: its endpoint serves an accepted device", config.id);
            return Err(DmaError::Iommu(IommuError::EndpointShared { devices: 1 }));
        }
        match slot.state.load(Ordering::Acquire) {
            READY => {
                let info = slot.info_unchecked();
                if let Err(e) = self.domain_serves(slot, &info, &config) {
                    self.stats.fail(FailureKind::NoPath);
                    log::warn!(
                        "ccdma: device {:#x} ({}) cannot share its endpoint's windows: {e}",
                        config.id,
                        config.dma_mask
                    );
                    return Err(DmaError::Iommu(e));
                }
                self.narrow_domain(slot, &config);
                slot.users.fetch_add(1, Ordering::Relaxed);
                log::info!(
                    "ccdma: device {:#x} ({}) -> {} (shares its endpoint's windows)",
                    config.id,
                    config.dma_mask,
                    info.path.name()
                );
                Ok(self.new_domain_device(config, info.path, info.pools.widen(), domain))
            }
            CLAIMED => {
                self.narrow_domain(slot, &config);
                slot.users.fetch_add(1, Ordering::Relaxed);
                let dev = self.new_domain_device(config, DmaPath::IommuDeferred, PoolOrder::EMPTY, domain);
                if config.deferred_attach {
                    return Ok(dev);
                }
                // On an error the deferred devices already attached keep the domain (still CLAIMED).
                self.set_up_now(slot, &config, dev).inspect_err(|_| {
                    slot.users.fetch_sub(1, Ordering::Relaxed);
                })
            }
            DETACHING => Err(DmaError::DetachIncomplete),
            _ => Err(DmaError::NotAttached),
        }
    }

    /// [`Self::new_device`] for a device with a domain, out of line: one copy for the three
    /// IOMMU attach paths rather than the whole `Device` built inline at each (~1 KB of `.text`).
    #[inline(never)]
    fn new_domain_device(
        &self,
        config: DeviceConfig,
        path: DmaPath,
        pools: PoolOrder,
        domain: DomainRef,
    ) -> Device {
        self.new_device(config, path, pools, Some(domain))
    }

    /// Mark the device's domain as serving an accepted device (`on`), refused while other devices
    /// share its endpoint: they would reach its private pages. Taken back with `on == false`.
    pub(crate) fn mark_accepted(&self, dev: &Device, on: bool) -> Result<(), DmaError> {
        let (Some(iommu), Some(d)) = (self.iommu.as_ref(), dev.domain) else { return Ok(()) };
        let slot = self.slot(d).ok_or(DmaError::NotAttached)?;
        let _attaching = iommu.attach_lock.lock();
        let users = slot.users.load(Ordering::Relaxed);
        if on && users > 1 {
            return Err(DmaError::Iommu(IommuError::EndpointShared { devices: users - 1 }));
        }
        slot.accepted.store(on, Ordering::Relaxed);
        Ok(())
    }

    /// The narrowest mask and widest `min_align_mask` of the domain's devices, `config` included.
    fn narrow_domain(&self, slot: &DomainSlot<'m, POOLS>, config: &DeviceConfig) {
        slot.mask.fetch_min(config.dma_mask.bits() as u64, Ordering::Relaxed);
        slot.min_align.fetch_or(config.min_align_mask, Ordering::Relaxed);
    }

    /// `Ok` when a set-up domain serves a joining device as it is: every premapped pool (default
    /// window or DDW) below its mask with the `min_align_mask` bits it needs, or, strict, some of
    /// the window below its mask.
    fn domain_serves(
        &self,
        slot: &DomainSlot<'m, POOLS>,
        info: &DomainInfo<POOLS>,
        config: &DeviceConfig,
    ) -> Result<(), IommuError> {
        let max = config.dma_mask.max_addr();
        if info.path == DmaPath::IommuStrict {
            let win = info.dynamic.ok_or(IommuError::NoWindow)?;
            let (lo, hi) = super::window::window_below(&win, config.dma_mask);
            return if lo < hi { Ok(()) } else { Err(IommuError::EndpointOutOfReach { end: win.end() }) };
        }
        let space = slot.space.lock();
        for r in space.ranges().iter().filter(|r| matches!(r.kind, RangeKind::Premap { .. })) {
            let beyond = r.end().checked_sub(1).is_none_or(|last| last > max);
            if beyond || (r.start ^ r.phys) & config.min_align_mask != 0 {
                return Err(IommuError::EndpointOutOfReach { end: r.end() });
            }
        }
        Ok(())
    }

    /// The domain of a device about to allocate: set up now if the device is deferred.
    pub(crate) fn ensure_attached(&self, dev: &Device) -> Result<&DomainInfo<POOLS>, DmaError> {
        match self.attached_or_deferred(dev)? {
            Ok(info) => Ok(info),
            Err((slot, d)) => self.attach_deferred(slot, d, dev),
        }
    }

    #[cold]
    pub(crate) fn attach_deferred<'s>(
        &self,
        slot: &'s DomainSlot<'m, POOLS>,
        d: DomainRef,
        dev: &Device,
    ) -> Result<&'s DomainInfo<POOLS>, DmaError> {
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
                    Some(Ok(())) => {
                        self.iommu_counters.deferred_attaches.fetch_add(1, Ordering::Relaxed);
                        log_deferred_attached(dev.config.id);
                        return slot.info(d.generation).ok_or(DmaError::NotAttached);
                    }
                },
                SETUP => core::hint::spin_loop(),
                _ => return Err(DmaError::NotAttached),
            }
        }
    }

    /// [`Self::run_setup_locked`] under the attach lock.
    fn run_setup(&self, slot: &DomainSlot<'m, POOLS>, config: &DeviceConfig) -> Option<Result<(), DmaError>> {
        let _attaching = self.iommu.as_ref()?.attach_lock.lock();
        self.run_setup_locked(slot, config)
    }

    /// Move the slot CLAIMED -> SETUP, set it up for the narrowest mask of its devices, publish
    /// (READY; the result is then [`DomainSlot::info`]) or go back to CLAIMED. `None` when the slot
    /// was not CLAIMED (set up already). The caller holds the attach lock.
    fn run_setup_locked(
        &self,
        slot: &DomainSlot<'m, POOLS>,
        config: &DeviceConfig,
    ) -> Option<Result<(), DmaError>> {
        // Set-up and pool growth exclude each other: a pool is either in the set the set-up enters,
        // or added after and entered by the grower.
        let _pools = self.growth.lock.lock();
        slot.state.compare_exchange(CLAIMED, SETUP, Ordering::AcqRel, Ordering::Relaxed).ok()?;
        // Every device attached to the domain by now is served: the narrowest mask, the widest
        // alignment (one device alone: its own).
        let narrowest = DmaMask::new(slot.mask.load(Ordering::Relaxed) as u32).unwrap_or(config.dma_mask);
        let config = &DeviceConfig {
            dma_mask: narrowest,
            min_align_mask: slot.min_align.load(Ordering::Relaxed),
            ..*config
        };
        // SAFETY: this CPU moved the slot CLAIMED -> SETUP just above and holds the growth lock
        // (and the attach lock, the caller's); the result is touched only through this reference
        // until `finish_setup` publishes it.
        let info = unsafe { slot.info_in_setup() };
        let result = self.setup_domain(slot, config, info);
        Some(self.finish_setup(slot, config, info, result))
    }

    /// Publish a set-up's result (READY) or give the slot back (CLAIMED). Out of line: its logging
    /// stays off the frame that calls into the set-up (a map's deepest chain, issue 20).
    #[inline(never)]
    fn finish_setup(
        &self,
        slot: &DomainSlot<'m, POOLS>,
        config: &DeviceConfig,
        info: &DomainInfo<POOLS>,
        result: Result<(), DmaError>,
    ) -> Result<(), DmaError> {
        match result {
            Ok(()) => {
                log_set_up(config, info);
                self.fill_live(slot, info);
                slot.publish();
                Ok(())
            }
            Err(e) => {
                slot.space.lock().clear();
                slot.state.store(CLAIMED, Ordering::Release);
                self.stats.fail(FailureKind::NoPath);
                log_set_up_failed(config, &e);
                Err(e)
            }
        }
    }

    /// Detach a device from its domain. Another device of the endpoint still attached keeps the
    /// domain: this one is only counted out (`DmaLayer::detach` has checked that nothing of it is
    /// live). The last device clears the entries and removes the windows the set-up created (or
    /// resets the endpoint, when the set-up removed its default window). Refused, nothing changed,
    /// while the domain has live ranges. When clearing fails part way the domain is left DETACHING:
    /// its window no longer holds every pool, so maps refuse ([`DmaError::DetachIncomplete`]) until a
    /// retried detach completes; nothing of the device is live, so nothing else can go wrong.
    pub(crate) fn detach_domain(&self, dev: &Device) -> Result<(), DmaError> {
        let Some(d) = dev.domain else { return Ok(()) };
        let iommu = self.iommu.as_ref().ok_or(DmaError::NotAttached)?;
        let slot = self.slot(d).ok_or(DmaError::NotAttached)?;
        let _attaching = iommu.attach_lock.lock();
        if slot.generation.load(Ordering::Relaxed) != d.generation {
            return Err(DmaError::NotAttached);
        }
        if slot.users.load(Ordering::Relaxed) > 1 && slot.state.load(Ordering::Acquire) != FREE {
            // Others of the endpoint still use the windows (and their entries): only this device
            // goes. The domain keeps the narrowest mask it was set up for.
            slot.users.fetch_sub(1, Ordering::Relaxed);
            return Ok(());
        }
        // Pool growth and shrinking change windows too: one at a time.
        let _pools = self.growth.lock.lock();
        let free = |slot: &DomainSlot<'m, POOLS>| {
            slot.accepted.store(false, Ordering::Relaxed);
            slot.live.clear();
            slot.space.lock().clear();
            slot.users.store(0, Ordering::Relaxed);
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
                .any(|r| matches!(r.kind, RangeKind::Mapping | RangeKind::Coherent | RangeKind::Private));
        if busy {
            slot.state.store(from, Ordering::Release);
            let live = slot.live_mappings.load(Ordering::Acquire).max(1);
            return Err(DmaError::Busy { live });
        }
        let info = slot.info_unchecked();
        let Some(tce) = self.backend() else {
            slot.state.store(from, Ordering::Release);
            return Err(DmaError::Iommu(IommuError::NoWindow));
        };
        if let Err(e) = self.unwind_premaps(slot, &tce, info.dynamic, info.ddw) {
            // Some pools may already be gone from the window: the device must not map into them.
            // It stays attached, mapping nothing, and detach can be retried.
            slot.state.store(DETACHING, Ordering::Release);
            self.stats.fail(FailureKind::Iommu);
            log::warn!("ccdma: detach of device {:#x} failed clearing its window ({e:?})", dev.config.id);
            return Err(DmaError::Iommu(e));
        }
        self.undo_windows(&tce, dev.config.id, &info);
        free(slot);
        Ok(())
    }

    /// [`DmaLayer::reserve_bus_range`], over the platform as `&dyn Platform`.
    pub(crate) fn reserve_bus_range_dyn(&self, start: u64, len: u64) -> Result<(), DmaError> {
        let _masked = self.masked();
        let iommu = self.iommu.as_ref().ok_or(DmaError::IommuNotEnabled)?;
        let mut global = iommu.reservations.lock();
        if global.1 >= DOMAINS {
            return Err(DmaError::Iommu(IommuError::BusSpaceExhausted));
        }
        // Lock every domain's space (in index order) so the check and the change are one step.
        let mut guards: [Option<crate::cold_lock::ColdGuard<'_, BusSpace<'m>>>; MAX_DOMAINS] =
            Default::default();
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
        if let Some(r) = global.0.get_mut(n) {
            *r = (start, len);
            global.1 += 1;
        }
        Ok(())
    }

    /// [`DmaLayer::reserve_bus_range_for`], over the platform as `&dyn Platform`.
    pub(crate) fn reserve_bus_range_for_dyn(
        &self,
        dev: &Device,
        start: u64,
        len: u64,
    ) -> Result<(), DmaError> {
        let _masked = self.masked();
        self.check_device(dev)?;
        let d = dev.domain.ok_or(DmaError::NotAttached)?;
        let slot = self.slot_cold(d).ok_or(DmaError::NotAttached)?;
        slot.info(d.generation).ok_or(DmaError::NotAttached)?;
        slot.space.lock().reserve(start, len)?;
        Ok(())
    }

    /// [`DmaLayer::bus_ranges_of`], over the platform as `&dyn Platform`.
    pub(crate) fn bus_ranges_of_dyn(&self, dev: &Device, out: &mut [BusRange]) -> usize {
        let _masked = self.masked();
        let Some(slot) = dev.domain.and_then(|d| self.slot_cold(d)) else { return 0 };
        let space = slot.space.lock();
        for (o, r) in out.iter_mut().zip(space.ranges()) {
            *o = *r;
        }
        space.ranges().len()
    }

    /// [`DmaLayer::live_bus_ranges`], over the platform as `&dyn Platform`.
    pub(crate) fn live_bus_ranges_dyn(&self) -> usize {
        let _masked = self.masked();
        self.iommu.as_ref().map_or(0, |i| i.domains.iter().flatten().map(|d| d.space.lock().live()).sum())
    }
}

impl<'m, P: Platform, const POOLS: usize, const DOMAINS: usize, const AREAS: usize>
    DmaLayer<'m, P, POOLS, DOMAINS, AREAS>
{
    /// The mechanism for this operation (see [`backend_of`]), the platform's calls inlined.
    #[inline]
    pub(crate) fn backend(&self) -> Option<Backend<'_>> {
        backend_of(self)
    }

    /// The domain of a device about to map, never set up here: [`DmaError::NotAttached`] for a
    /// deferred device not set up yet (`map_original` sets it up, [`Self::set_up_deferred`], and
    /// tries again).
    #[inline]
    pub(crate) fn attached(&self, dev: &Device) -> Result<&DomainInfo<POOLS>, DmaError> {
        self.attached_or_deferred(dev)?.map_err(|_| DmaError::NotAttached)
    }

    /// A map's set-up of a deferred device's domain (its first map): `Ok(true)` when the domain is
    /// set up (now, or by another CPU meanwhile: the map tries again), `Ok(false)` when the device
    /// has no domain to set up (the map's attempt reports what is wrong). Out of line,
    /// called before a map's attempts, so the set-up's frames are not under the attempts' (issue 20).
    #[cold]
    #[inline(never)]
    pub(crate) fn set_up_deferred(&self, dev: &Device) -> Result<bool, DmaError> {
        match self.attached_or_deferred(dev) {
            Ok(Err((slot, d))) => {
                // A slot was found, so the path is enabled; its set-up through the table
                // `enable_iommu` stored (`code.rs`).
                let code = self.iommu.as_ref().and_then(|i| i.code).ok_or(DmaError::NotAttached)?;
                // SAFETY: `enable_iommu` of this layer stored the table, built for its platform
                // type `P` and capacities; `self.cold()` is this layer.
                unsafe { (code.set_up)(NonNull::from(self.cold()).cast(), slot, d, dev)? };
                Ok(true)
            }
            Ok(Ok(_)) => Ok(true),
            Err(_) => Ok(false),
        }
    }

    /// Turn the IOMMU path off again: every device must be detached. The list pages are made private
    /// again (quarantined if that fails).
    pub fn disable_iommu(&mut self) -> Result<(), DmaError> {
        match self.cold_mut().as_full_mut() {
            Some(c) => disable_iommu_once(c),
            None => self.cold_mut().disable_iommu_dyn(),
        }
    }

    /// Reserve `[start, start + len)` of bus space in every device's windows, now and for devices
    /// attached later. Fails with [`IommuError::ReservationConflict`] (nothing changed) when a live
    /// mapping of any device overlaps it, and with [`IommuError::BusSpaceExhausted`] when the layer
    /// keeps `DOMAINS` of them already (one per domain slot,
    /// [`MAX_GLOBAL_RESERVATIONS`](super::config::MAX_GLOBAL_RESERVATIONS) by default).
    pub fn reserve_bus_range(&self, start: u64, len: u64) -> Result<(), DmaError> {
        self.cold().reserve_bus_range_dyn(start, len)
    }

    /// Reserve `[start, start + len)` in one device's windows (it must be attached, not deferred).
    /// Devices sharing its partitionable endpoint share those windows, and the reservation.
    pub fn reserve_bus_range_for(&self, dev: &Device, start: u64, len: u64) -> Result<(), DmaError> {
        self.cold().reserve_bus_range_for_dyn(dev, start, len)
    }

    /// The used bus ranges of a device's windows (reservations, premapped pools, mappings, coherent
    /// buffers, quarantined ranges), copied into `out`; returns how many there are.
    pub fn bus_ranges_of(&self, dev: &Device, out: &mut [BusRange]) -> usize {
        self.cold().bus_ranges_of_dyn(dev, out)
    }

    /// Live bus ranges (strict mappings and coherent buffers) over all domains.
    pub fn live_bus_ranges(&self) -> usize {
        self.cold().live_bus_ranges_dyn()
    }
}

impl<const POOLS: usize, const DOMAINS: usize, const AREAS: usize> Cold<'_, '_, POOLS, DOMAINS, AREAS> {
    /// [`Self::ensure_attached`] for callers compiled in other crates (scatter-gather lists: generic
    /// over the capacities only, so compiled by the crate that maps a list): the deferred set-up
    /// through the default capacities' copy, compiled in this crate only.
    #[inline]
    pub(crate) fn ensure_attached_any(&self, dev: &Device) -> Result<&DomainInfo<POOLS>, DmaError> {
        match self.attached_or_deferred(dev)? {
            Ok(info) => Ok(info),
            Err((slot, d)) => match (self.as_full(), slot.as_full()) {
                (Some(c), Some(s)) => DomainInfo::sized(attach_deferred_once(c, s, d, dev)),
                _ => self.attach_deferred(slot, d, dev),
            },
        }
    }
}

impl<'m, P: Platform + ?Sized, const POOLS: usize, const DOMAINS: usize, const AREAS: usize>
    DmaLayer<'m, P, POOLS, DOMAINS, AREAS>
{
    /// `ensure_attached`'s fast part: the device's domain when it is set up, or the slot and
    /// reference a deferred device sets up now (`Err`).
    #[inline]
    #[allow(clippy::type_complexity)]
    pub(crate) fn attached_or_deferred(
        &self,
        dev: &Device,
    ) -> Result<Result<&DomainInfo<POOLS>, (&DomainSlot<'m, POOLS>, DomainRef)>, DmaError> {
        let d = dev.domain.ok_or(DmaError::NotAttached)?;
        let slot = self.slot(d).ok_or(DmaError::NotAttached)?;
        super::slot_lookup::info_or_deferred(slot, d, dev)
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

    pub(crate) fn slot(&self, d: DomainRef) -> Option<&DomainSlot<'m, POOLS>> {
        if !crate::parts::IOMMU {
            return None;
        }
        self.iommu.as_ref()?.domains.get(d.index as usize)?.as_ref()
    }

    /// The set-up result of a domain, if it is set up (never attaches).
    #[inline]
    pub(crate) fn domain_info(&self, d: DomainRef) -> Option<&DomainInfo<POOLS>> {
        self.slot(d)?.info(d.generation)
    }

    /// The path of a device now (for a deferred device: [`DmaPath::IommuDeferred`] until its first map
    /// or allocation).
    pub fn path_of(&self, dev: &Device) -> DmaPath {
        if dev.trust.is_accepted() {
            return dev.path();
        }
        match dev.domain {
            None => dev.path,
            Some(d) => self.domain_info_cold(d).map_or(DmaPath::IommuDeferred, |i| i.path),
        }
    }

    /// Why a device got its path (`None` for a deferred device before its first map or allocation).
    pub fn path_reason(&self, dev: &Device) -> Option<PathReason> {
        if dev.trust.is_accepted() {
            return Some(PathReason::Accepted { window: dev.domain.is_some() });
        }
        match dev.domain {
            None => PathReason::of_plain(dev.path),
            Some(d) => self.domain_info_cold(d).map(|i| i.reason),
        }
    }

    /// The windows of a device: (the window for per-mapping entries and coherent buffers, the DDW).
    pub fn windows_of(&self, dev: &Device) -> (Option<WindowGeometry>, Option<WindowGeometry>) {
        dev.domain.and_then(|d| self.domain_info_cold(d)).map_or((None, None), |i| (i.dynamic, i.ddw))
    }

    /// A snapshot of the IOMMU counters.
    pub fn iommu_stats(&self) -> IommuStatsSnapshot {
        self.iommu_counters.snapshot()
    }
}

/// The mechanism for this operation: PAPR calls through the entry writer, else a native backend.
/// Generic over the platform so that the streaming path (a concrete `P`) and the cold paths
/// (`dyn Platform`) share one source.
#[inline]
pub(crate) fn backend_of<
    'a,
    'm: 'a,
    P: Platform + ?Sized,
    const POOLS: usize,
    const DOMAINS: usize,
    const AREAS: usize,
>(
    core: &'a DmaLayer<'m, P, POOLS, DOMAINS, AREAS>,
) -> Option<Backend<'a>> {
    let platform = &core.platform;
    if let Some(calls) = platform.tce().filter(|_| crate::parts::PAPR_TCE) {
        let iommu = core.iommu.as_ref();
        let writer = TceWriter {
            calls,
            list: iommu.and_then(|i| i.list.as_ref()),
            // Per mapping (`VerifyPolicy::Premap` reads back only entering pools: `premap_backend`).
            verify: iommu.map_or(VerifyPolicy::All, |i| i.cfg.verify.per_mapping()),
            counters: &core.iommu_counters,
            cpu: iommu.and_then(|i| i.list.as_ref()).and_then(|_| platform.cpu_hint()),
        };
        return Some(Backend::Tce(calls, writer));
    }
    platform
        .iommu_backend()
        .filter(|_| crate::parts::NATIVE_IOMMU)
        .map(|b| Backend::Native(b, &core.iommu_counters))
}

impl<'m, P: Platform + ?Sized, const POOLS: usize, const DOMAINS: usize, const AREAS: usize>
    DmaLayer<'m, P, POOLS, DOMAINS, AREAS>
{
    /// Where pool `pool` starts on the device's bus (per device when premapped in its window).
    pub fn pool_bus_of(&self, dev: &Device, pool: usize) -> Option<BusAddr> {
        let (order, bus) = self.pool_view(dev, false)?;
        let found = order.iter().any(|i| i == pool);
        // Checked: `pool` is the caller's; one in the order is below MAX_POOLS, but no panic path.
        bus.get(pool).copied().filter(|_| found)
    }
}

/// [`DmaLayer::disable_iommu`] of the default capacities, compiled in this crate only (see
/// `Cold::as_full`).
#[inline(never)]
fn disable_iommu_once(c: &mut FullCold<'_, '_>) -> Result<(), DmaError> {
    c.disable_iommu_dyn()
}

/// `Cold::attach_deferred` of the default capacities, compiled in this crate only (see
/// [`Cold::as_full`]): a deferred device's set-up at its first map.
#[inline(never)]
pub(super) fn attach_deferred_once<'s, 'm>(
    c: &FullCold<'s, 'm>,
    slot: &'s DomainSlot<'m>,
    d: DomainRef,
    dev: &Device,
) -> Result<&'s DomainInfo, DmaError> {
    c.attach_deferred(slot, d, dev)
}

/// `finish_setup`'s log line, out of line: its formatting stays off the frame that fills the live
/// pools (the deepest chain of a deferred device's first map, issue 20).
#[inline(never)]
fn log_set_up<const N: usize>(config: &DeviceConfig, info: &DomainInfo<N>) {
    log::info!(
        "ccdma: device {:#x} ({}) -> {} ({})",
        config.id,
        config.dma_mask,
        info.path.name(),
        info.reason
    );
}

/// `finish_setup`'s log line for a failed set-up, out of line as [`log_set_up`].
#[cold]
#[inline(never)]
fn log_set_up_failed(config: &DeviceConfig, e: &DmaError) {
    log::warn!("ccdma: IOMMU attach of device {:#x} failed: {e}", config.id);
}

/// `attach_deferred`'s log line, out of line as [`log_set_up`].
#[inline(never)]
fn log_deferred_attached(id: u32) {
    log::debug!("ccdma: deferred device {id:#x} attached at first use");
}
