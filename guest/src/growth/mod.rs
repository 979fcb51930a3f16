//! Growing and shrinking the pools while devices map.
//!
//! "swiotlb buffer is full" is the most common complaint about confidential VMs, and its fix is a
//! reboot with a bigger pool. Here a layer may instead grow: given a [`MemorySource`] and a
//! [`GrowthConfig`] ([`DmaLayer::enable_growth`]), a mapping that finds every pool full makes the
//! layer take memory from the source, share it (rolled back, or quarantined, on failure), build a pool
//! over it and enter it into every attached device's premapped window that can reach it (the DDW, or
//! the default window below the device's mask; strict devices use it at once). Only then is the pool
//! published, and the mapping tried again.
//!
//! - One CPU grows at a time (the growth lock, which set-up and detach of IOMMU domains take too, so
//!   a pool is either entered by a domain's set-up or by the grower, never missed). A map that finds
//!   the pools full while another CPU is growing tries the *reserve* pool
//!   ([`GrowthConfig::reserve_bytes`]), which allocations use only while a pool is being added, and
//!   waits for the grower only if the reserve cannot serve it either.
//! - Pools live in a table whose slots count their users (`growth/table.rs`): the map path pays one atomic
//!   add and subtract per grown pool it touches, nothing for the pools added with `add_pool`.
//! - Each device view keeps its pools sorted by bus address (`growth/live.rs`): finding the pool that owns a
//!   bus address is a binary search, whatever the number of pools.
//! - Shrinking ([`DmaLayer::growth_tick`]): a grown pool with no live slot and no allocation attempt
//!   for [`GrowthConfig::idle_ticks`] ticks is drained (no new allocation enters it), waited for (no
//!   CPU inside it), checked idle again, removed from every window (entries cleared first), unshared,
//!   and handed back. Entries that would not clear, or pages that would not unshare, keep the memory
//!   out of the source for good (quarantined, counted).
//!
//! ```
//! use ccdma::growth::GrowthConfig;
//! use ccdma::{DeviceConfig, DmaAttrs, DmaDirection, DmaLayer, DmaMask};
//! # use ccdma_hv_model::{HvConfig, Hypervisor, ModelSource};
//! # let hv: &'static Hypervisor = Box::leak(Box::new(Hypervisor::new(HvConfig::pseries(1 << 30))));
//! # let source: &'static ModelSource = Box::leak(Box::new(ModelSource::new(hv, 0x2000_0000, 64 << 20)));
//! let mut layer = DmaLayer::new(hv);
//! layer.enable_growth(source, GrowthConfig::new(1 << 20, 8))?;
//! let dev = layer.attach(DeviceConfig::new(1, DmaMask::BITS_32))?;
//! let mut buf = [7u8; 4096];
//! let m = layer.map(&dev, &mut buf, DmaDirection::ToDevice, DmaAttrs::NONE)?; // grows a pool
//! assert_eq!(layer.growth_stats().pools, 1);
//! drop(m);
//! for _ in 0..5 {
//!     layer.growth_tick(); // the tick after the use sees it; 4 idle ticks later the pool goes back
//! }
//! assert_eq!(layer.growth_stats().pools, 0);
//! # let _ = dev;
//! # Ok::<(), ccdma::DmaError>(())
//! ```

mod full_report;
pub(crate) mod live;
mod shrink;
mod source;
pub(crate) mod state;
pub(crate) mod table;
pub(crate) mod verdict;
mod windows;

use core::sync::atomic::Ordering;

pub use source::{GrowthConfig, MemorySource};
pub use state::GrowthStats;
pub(crate) use state::{GrowState, Grown, MetaPtr};
pub use table::PoolRef;

use crate::addr::{PhysAddr, PAGE_SIZE};
use crate::device::Device;
use crate::diagnostics::GrowthVerdict;
use crate::error::DmaError;
use crate::iommu::domain::{DomainInfo, DomainSlot};
use crate::layer::DmaLayer;
use crate::layer::{Cold, FullCold};
use crate::platform::Platform;
use crate::pool::SlotMeta;
use crate::pool_set::MAX_POOLS;
use crate::stats::FailureKind;

impl<'a, 'm, const POOLS: usize, const DOMAINS: usize, const AREAS: usize>
    Cold<'a, 'm, POOLS, DOMAINS, AREAS>
{
    /// Add one pool from the source (the caller holds the growth lock as `g`). On failure nothing is
    /// left behind but what could not be made private again (kept out of the source, counted).
    pub(crate) fn grow_one(
        &self,
        g: &mut GrowState<POOLS>,
        limit: u64,
        reserve: bool,
    ) -> Result<usize, GrowthVerdict> {
        let cfg = *self.growth.cfg;
        let c = &self.growth.counters;
        let src = self.growth.source.ok_or(GrowthVerdict::Disabled)?;
        let len = if reserve { cfg.reserve_bytes } else { cfg.pool_bytes };
        let (npools, bytes) = g.totals();
        let free = (0..g.grown.len()).find(|&i| self.pools.is_empty(i));
        let within = bytes.checked_add(len as u64).is_some_and(|total| total <= cfg.max_total_bytes);
        let (Some(i), true) = (free, npools < cfg.max_pools && within) else {
            c.refused.fetch_add(1, Ordering::Relaxed);
            return Err(GrowthVerdict::LimitReached);
        };
        let refuse = |v| {
            c.refused.fetch_add(1, Ordering::Relaxed);
            Err(v)
        };
        let Some(phys) = src.take(len, cfg.align, limit) else { return refuse(GrowthVerdict::SourceEmpty) };
        let in_range = phys.0.checked_rem(cfg.align) == Some(0)
            && phys.0.checked_add(len as u64 - 1).is_some_and(|l| l <= limit);
        let cpu = self.platform.cpu_ptr(phys, len);
        let slots = cfg.pool.slots_for(len);
        let meta = if in_range && cpu.is_some() { src.take_meta(slots) } else { None };
        let (Some(cpu), Some(meta)) = (cpu.filter(|_| in_range), meta) else {
            src.give_back(phys, len);
            return refuse(GrowthVerdict::SourceEmpty);
        };
        let fail = |v| {
            c.failed.fetch_add(1, Ordering::Relaxed);
            Err(v)
        };
        // SAFETY: the source lends `[phys, phys + len)` to the layer alone (MemorySource contract) and
        // the platform gave its CPU mapping: whatever it held must not reach the hypervisor.
        unsafe { core::ptr::write_bytes(cpu.as_ptr(), 0, len) };
        let pages = len as u64 / PAGE_SIZE;
        if self.platform.is_confidential() {
            if let Err(e) = self.share_pages(phys, pages) {
                src.give_back_meta(meta, slots);
                if matches!(e, DmaError::SharingFailed { quarantined, .. } if quarantined > 0) {
                    // Some pages stay shared: the range is never handed back.
                    g.kept_bytes += len as u64;
                    c.quarantined_pools.fetch_add(1, Ordering::Relaxed);
                } else {
                    src.give_back(phys, len);
                }
                return fail(GrowthVerdict::SharingFailed);
            }
        }
        // SAFETY: the source's contract: `slots` aligned records, ours alone until given back; they
        // are initialised here before any reference to them exists.
        let meta_slice = unsafe {
            for k in 0..slots {
                meta.as_ptr().add(k).write(SlotMeta::EMPTY);
            }
            core::slice::from_raw_parts_mut(meta.as_ptr(), slots)
        };
        // Built in its table slot, in place (a pool is ~2.4 KiB: no frame holds one).
        // SAFETY: we hold the growth lock. The range is ours until handed back, which happens only
        // after the pool is dropped.
        let installed =
            unsafe { self.pools.install_with(i, |pool| pool.init(phys, cpu, len, meta_slice, cfg.pool)) };
        match installed {
            Ok(()) => {}
            Err(Some(_)) => {
                self.undo_share(g, phys, len, MetaPtr(meta), slots);
                return fail(GrowthVerdict::SharingFailed);
            }
            Err(None) => {
                self.undo_share(g, phys, len, MetaPtr(meta), slots);
                return refuse(GrowthVerdict::LimitReached);
            }
        }
        if let Err(clean) = self.enter_windows(i, phys, len, reserve) {
            if clean {
                // SAFETY: we hold the growth lock and installed the slot (ADDING) ourselves.
                let _gone = unsafe { self.pools.take(i) };
                self.undo_share(g, phys, len, MetaPtr(meta), slots);
            } else {
                // Entries may still name the pool: it stays shared and out of the source for good.
                self.pools.quarantine(i);
                g.kept_bytes += len as u64;
                c.quarantined_pools.fetch_add(1, Ordering::Relaxed);
            }
            return fail(GrowthVerdict::WindowFailed);
        }
        self.plain.insert(i, self.platform.shared_bus_addr(phys), len as u64, reserve);
        g.set_grown(i, Some(Grown { phys, len, meta: MetaPtr(meta), slots, reserve, idle: 0 }));
        self.pools.publish(i);
        c.grown.fetch_add(1, Ordering::Relaxed);
        let now = c.bytes_now.fetch_add(len as u64, Ordering::Relaxed) + len as u64;
        c.bytes_peak.fetch_max(now, Ordering::Relaxed);
        log::info!(
            "ccdma: grew pool {i}: {len:#x} bytes at {phys}{}",
            if reserve { " (reserve)" } else { "" }
        );
        Ok(i)
    }

    /// Make a range private again and hand it (and its metadata) back; what will not unshare stays
    /// out of the source for good.
    pub(crate) fn undo_share(
        &self,
        g: &mut GrowState<POOLS>,
        phys: PhysAddr,
        len: usize,
        meta: MetaPtr,
        slots: usize,
    ) {
        let Some(src) = self.growth.source else { return };
        src.give_back_meta(meta.0, slots);
        let ok = !self.platform.is_confidential() || self.unshare_pages(phys, len as u64 / PAGE_SIZE).is_ok();
        if ok {
            src.give_back(phys, len);
        } else {
            g.kept_bytes += len as u64;
            self.growth.counters.quarantined_pools.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl<'m, P: Platform, const POOLS: usize, const DOMAINS: usize, const AREAS: usize>
    DmaLayer<'m, P, POOLS, DOMAINS, AREAS>
{
    /// Let the layer grow from `source` under `cfg` (see [`crate::growth`]). With a reserve, the
    /// reserve pool is taken, shared and added now. Call it before attaching devices: a DDW created
    /// at a device's set-up keeps bus room (and an IOMMU page size) for the pools growth may add, so
    /// a DDW made before growth was enabled may have no room for them (the device then maps from the
    /// pools it has, and a pool-full report says `Unreachable`).
    pub fn enable_growth(&mut self, source: &'m dyn MemorySource, cfg: GrowthConfig) -> Result<(), DmaError> {
        match self.cold_mut().as_full_mut() {
            Some(c) => enable_growth_once(c, source, cfg),
            None => self.cold_mut().enable_growth_dyn(source, cfg),
        }
    }

    /// The growth counters.
    pub fn growth_stats(&self) -> GrowthStats {
        self.cold().growth_stats_dyn()
    }
}

impl<'m, P: Platform, const POOLS: usize, const DOMAINS: usize, const AREAS: usize>
    DmaLayer<'m, P, POOLS, DOMAINS, AREAS>
{
    /// Run `attempt` (a map of `len` bytes for `dev`); when every pool is full, grow and try again,
    /// as the growth policy allows. A final exhaustion is reported ([`Self::last_pool_full`]).
    /// The first attempt and its checks inline here; growing and retrying is [`Cold::grow_and_retry`].
    #[inline]
    pub(crate) fn with_growth<T>(
        &self,
        dev: &Device,
        len: usize,
        attempt: impl FnMut() -> Result<T, DmaError>,
    ) -> Result<T, DmaError> {
        // One body for both layers: the `dyn` view's fields are the same, and its calls
        // (`report_full_any`, `grow_and_retry`) were made through it already.
        self.cold().with_growth_cold(dev, len, attempt)
    }
}

impl<const POOLS: usize, const DOMAINS: usize, const AREAS: usize> Cold<'_, '_, POOLS, DOMAINS, AREAS> {
    /// [`DmaLayer::with_growth`] on the `dyn Platform` layer (scatter-gather lists, and the body of
    /// `with_growth` itself).
    #[inline]
    pub(crate) fn with_growth_cold<T>(
        &self,
        dev: &Device,
        len: usize,
        mut attempt: impl FnMut() -> Result<T, DmaError>,
    ) -> Result<T, DmaError> {
        let first = attempt();
        if first.is_ok() {
            return first;
        }
        if !crate::parts::GROWTH || self.growth.source.is_none() {
            if matches!(first, Err(DmaError::PoolExhausted { .. })) {
                self.report_full_any(dev, len, GrowthVerdict::Disabled);
            }
            return first;
        }
        self.grow_and_retry(dev, len, first, &mut attempt)
    }

    /// `grow_one`, through the default capacities' copy when those are this layer's (see
    /// [`Cold::as_full`]): `grow_and_retry` is generic over its result, so compiled by its callers.
    fn grow_one_any(
        &self,
        g: &mut GrowState<POOLS>,
        limit: u64,
        reserve: bool,
    ) -> Result<usize, GrowthVerdict> {
        match self.as_full() {
            Some(c) => {
                // SAFETY: `as_full` is `Some` only when `POOLS == MAX_POOLS`: the same type.
                let g = unsafe { &mut *(g as *mut GrowState<POOLS>).cast::<GrowState<MAX_POOLS>>() };
                grow_one_once(c, g, limit, reserve)
            }
            None => self.grow_one(g, limit, reserve),
        }
    }

    /// `report_full`, through the default capacities' copy when those are this layer's.
    /// Nothing without the `pool-full-report` part.
    pub(crate) fn report_full_any(&self, dev: &Device, len: usize, growth: GrowthVerdict) {
        if !crate::parts::POOL_FULL_REPORT {
            return;
        }
        match self.as_full() {
            Some(c) => report_full_once(c, dev, len, growth),
            None => self.report_full(dev, len, growth),
        }
    }

    /// [`DmaLayer::with_growth`] after a first attempt that failed with `first`, growth enabled.
    #[inline(never)]
    pub(crate) fn grow_and_retry<T>(
        &self,
        dev: &Device,
        len: usize,
        first: Result<T, DmaError>,
        attempt: &mut dyn FnMut() -> Result<T, DmaError>,
    ) -> Result<T, DmaError> {
        // Too large for the pools there are (none, perhaps) but not for a grown one: growth helps too.
        let helps = |r: &Result<T, DmaError>| match r {
            Err(DmaError::PoolExhausted { len }) | Err(DmaError::TooLarge { len, .. }) => {
                self.growth_will_retry(*len)
            }
            _ => false,
        };
        if !helps(&first) {
            return first;
        }
        let limit = match dev.domain {
            None => dev.config.dma_mask.max_addr(),
            Some(_) => u64::MAX,
        };
        let mut verdict = GrowthVerdict::LimitReached;
        for _ in 0..MAX_POOLS {
            match self.growth.lock.try_lock() {
                Some(mut g) => {
                    self.growth.growing.store(true, Ordering::Relaxed);
                    let grown = self.grow_one_any(&mut g, limit, false);
                    self.growth.growing.store(false, Ordering::Relaxed);
                    drop(g);
                    match grown {
                        Ok(i) => {
                            if !self.pool_view(dev, true).is_some_and(|(o, _)| o.iter().any(|k| k == i)) {
                                verdict = GrowthVerdict::Unreachable;
                                break;
                            }
                        }
                        Err(v) => {
                            verdict = v;
                            break;
                        }
                    }
                }
                None => {
                    // Another CPU is adding a pool (or setting a device up): the reserve may serve
                    // this map now; otherwise wait for that CPU and try its pool.
                    if let ok @ Ok(_) = attempt() {
                        self.growth.counters.reserve_maps.fetch_add(1, Ordering::Relaxed);
                        return ok;
                    }
                    drop(self.growth.lock.lock());
                }
            }
            let r = attempt();
            if !helps(&r) {
                return r;
            }
        }
        // The attempts left the counting to here (`growth_will_retry`).
        self.stats.fail(FailureKind::PoolExhausted);
        self.report_full_any(dev, len, verdict);
        Err(DmaError::PoolExhausted { len })
    }
}

impl<'m, P: Platform + ?Sized, const POOLS: usize, const DOMAINS: usize, const AREAS: usize>
    DmaLayer<'m, P, POOLS, DOMAINS, AREAS>
{
    /// True when a map of `len` bytes that finds no room is retried by [`DmaLayer::with_growth`] (which
    /// then counts the failure, if it stays one), so the allocation paths do not count it.
    pub(crate) fn growth_will_retry(&self, len: usize) -> bool {
        let cfg = &self.growth.cfg;
        self.growth.source.is_some() && len <= cfg.pool.max_run_slots * cfg.pool.slot_size
    }

    /// Load a freshly set-up domain's pool set (the set-up CPU holds the growth lock).
    pub(crate) fn fill_live(&self, slot: &DomainSlot<'m, POOLS>, info: &DomainInfo<POOLS>) {
        let reserve = self.plain.snapshot().reserve;
        slot.live.clear();
        for i in info.pools.iter() {
            // `info.pools` names pool indices (`< POOLS`): checked rather than indexed.
            if let (Some(pool), Some(&bus)) = (self.pools.get(i), info.pool_bus.get(i)) {
                slot.live.insert(i, bus, pool.len() as u64, reserve & (1 << i) != 0);
            }
        }
    }
}

impl<'m, const POOLS: usize, const DOMAINS: usize, const AREAS: usize> Cold<'_, 'm, POOLS, DOMAINS, AREAS> {
    /// [`DmaLayer::enable_growth`], over the platform as `&dyn Platform`.
    pub(crate) fn enable_growth_dyn(
        &mut self,
        source: &'m dyn MemorySource,
        cfg: GrowthConfig,
    ) -> Result<(), DmaError> {
        crate::parts::require(crate::parts::GROWTH, "growth")?;
        if self.growth.source.is_some() {
            return Err(DmaError::GrowthAlreadyEnabled);
        }
        cfg.validate()?;
        self.growth.source = Some(source);
        self.growth.cfg.set(cfg);
        if cfg.reserve_bytes > 0 {
            let mut g = self.growth.lock.lock();
            if let Err(v) = self.grow_one(&mut g, u64::MAX, true) {
                drop(g);
                self.growth.source = None;
                return Err(DmaError::GrowthFailed(v));
            }
        }
        Ok(())
    }
}

impl<const POOLS: usize, const DOMAINS: usize, const AREAS: usize> Cold<'_, '_, POOLS, DOMAINS, AREAS> {
    /// [`DmaLayer::growth_stats`], over the platform as `&dyn Platform`.
    pub(crate) fn growth_stats_dyn(&self) -> GrowthStats {
        let _masked = self.masked();
        let c = &self.growth.counters;
        let (pools, kept_bytes) = {
            let g = self.growth.lock.lock();
            (g.totals().0, g.kept_bytes)
        };
        GrowthStats {
            pools: pools as u64,
            kept_bytes,
            bytes: c.bytes_now.load(Ordering::Relaxed),
            bytes_peak: c.bytes_peak.load(Ordering::Relaxed),
            grown: c.grown.load(Ordering::Relaxed),
            shrunk: c.shrunk.load(Ordering::Relaxed),
            refused: c.refused.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            quarantined_pools: c.quarantined_pools.load(Ordering::Relaxed),
            waited_maps: c.reserve_maps.load(Ordering::Relaxed),
        }
    }
}

/// [`DmaLayer::enable_growth`] of the default capacities, compiled in this crate only (see
/// `Cold::as_full`).
#[inline(never)]
fn enable_growth_once<'m>(
    c: &mut FullCold<'_, 'm>,
    source: &'m dyn MemorySource,
    cfg: GrowthConfig,
) -> Result<(), DmaError> {
    c.enable_growth_dyn(source, cfg)
}

/// `Cold::grow_one` of the default capacities, compiled in this crate only.
#[inline(never)]
fn grow_one_once(
    c: &FullCold<'_, '_>,
    g: &mut GrowState<MAX_POOLS>,
    limit: u64,
    reserve: bool,
) -> Result<usize, GrowthVerdict> {
    c.grow_one(g, limit, reserve)
}

/// `Cold::report_full` of the default capacities, compiled in this crate only.
#[inline(never)]
fn report_full_once(c: &FullCold<'_, '_>, dev: &Device, len: usize, growth: GrowthVerdict) {
    c.report_full(dev, len, growth)
}
