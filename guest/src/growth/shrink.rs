//! Shrinking: grown pools that stayed idle go back to the memory source.
//!
//! Removal never races a map into the pool: the pool is first drained (allocations skip it), then
//! the remover waits until no CPU is inside it and takes it for itself, and only then checks it is
//! still idle (a map that entered before the drain may have allocated; the pool is then put back).

use core::sync::atomic::Ordering;

use super::GrowState;
use crate::addr::PAGE_SIZE;
use crate::error::DmaError;
use crate::layer::DmaLayer;
use crate::layer::{Cold, FullCold};
use crate::platform::Platform;

/// What removing one pool did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Removed {
    /// Handed back to the source.
    Returned,
    /// Still in use: left in place.
    Busy,
    /// Kept out of the source for good (entries that would not clear, or pages that would not unshare).
    Quarantined,
}

impl<'a, 'm, const POOLS: usize, const DOMAINS: usize, const AREAS: usize>
    Cold<'a, 'm, POOLS, DOMAINS, AREAS>
{
    /// [`DmaLayer::growth_tick`], over the platform as `&dyn Platform`.
    pub(crate) fn growth_tick_dyn(&self) -> usize {
        let _masked = self.masked();
        if self.growth.source.is_none() {
            return 0;
        }
        let hysteresis = self.growth.cfg.idle_ticks.max(1);
        let mut g = self.growth.lock.lock();
        let mut returned = 0;
        for i in 0..g.grown.len() {
            let Some(mut grown) = g.grown_at(i) else { continue };
            if grown.reserve || !self.pools.is_active(i) {
                continue;
            }
            let touched = self.pools.take_touched(i);
            // The reference is dropped before any removal waits for the pool's users.
            let busy = self.pools.get(i).is_none_or(|p| p.slots_in_use() != 0);
            grown.idle = if touched || busy { 0 } else { grown.idle + 1 };
            g.set_grown(i, Some(grown));
            if grown.idle >= hysteresis && self.remove_grown(&mut g, i) == Removed::Returned {
                returned += 1;
            }
        }
        returned
    }

    /// [`DmaLayer::shrink_all`], over the platform as `&dyn Platform`.
    pub(crate) fn shrink_all_dyn(&self) -> Result<(), DmaError> {
        let _masked = self.masked();
        let mut g = self.growth.lock.lock();
        let mut result = Ok(());
        for i in 0..g.grown.len() {
            if let Err(e) = self.shrink_one(&mut g, i) {
                result = Err(e);
            }
        }
        result
    }

    /// [`Self::shrink_all_dyn`] for grown slot `i` (nothing when it holds no pool). Out of line: an
    /// optimiser that unrolls the loop above over the slots (the pseries kernel, opt-level 3) would
    /// copy all of this into each iteration.
    #[inline(never)]
    fn shrink_one(&self, g: &mut GrowState<POOLS>, i: usize) -> Result<(), DmaError> {
        if g.grown_at(i).is_none() {
            return Ok(());
        }
        match self.remove_grown(g, i) {
            Removed::Returned => Ok(()),
            Removed::Busy => {
                let live = self.pools.get(i).map_or(1, |p| p.slots_in_use() as u64);
                Err(DmaError::Busy { live })
            }
            Removed::Quarantined => {
                Err(DmaError::GrowthFailed(crate::growth::verdict::GrowthVerdict::WindowFailed))
            }
        }
    }

    /// Drain, wait, check, take out of every window, unshare, hand back. The caller holds the growth
    /// lock as `g`.
    fn remove_grown(&self, g: &mut GrowState<POOLS>, i: usize) -> Removed {
        let Some(grown) = g.grown_at(i) else { return Removed::Busy };
        let c = &self.growth.counters;
        if !self.pools.drain(i) {
            return Removed::Busy;
        }
        // Allocations that entered before the drain finish; none can start now. So the count below
        // can only fall, and a pool with live mappings goes back to ACTIVE before any lookup of
        // them could find it REMOVING.
        let settled = self.pools.wait_users(i);
        let busy = !settled || self.pools.get(i).is_none_or(|p| p.slots_in_use() != 0);
        // With no slot in use and no allocation able to start, the pool's counts are final.
        let tally = self.pools.get(i).map(|p| p.tally());
        if busy || !self.pools.exclusive(i) {
            self.pools.undrain(i);
            return Removed::Busy;
        }
        // Leaving the layer (taken or quarantined below): its counts stay in the statistics.
        if let Some(t) = tally {
            self.stats.absorb(t);
        }
        self.plain.remove(i);
        g.set_grown(i, None);
        c.bytes_now.fetch_sub(grown.len as u64, Ordering::Relaxed);
        // A failed set-up may have left entries naming the pool in a domain that no longer records
        // them (`pin_pools`); otherwise every entry is in some domain's record and is cleared here.
        let pinned = self.iommu_counters.pool_pinned(i);
        if self.leave_windows(i).is_err() || pinned {
            // Entries may still name the pool: it stays shared, unused, out of the source.
            self.pools.quarantine(i);
            g.kept_bytes += grown.len as u64;
            c.quarantined_pools.fetch_add(1, Ordering::Relaxed);
            log::error!("ccdma: grown pool {i} kept for good: its window entries would not clear");
            return Removed::Quarantined;
        }
        // SAFETY: we hold the growth lock and moved the slot to REMOVING ourselves.
        let _gone = unsafe { self.pools.take(i) };
        let Some(src) = self.growth.source else { return Removed::Quarantined };
        src.give_back_meta(grown.meta.0, grown.slots);
        let pages = grown.len as u64 / PAGE_SIZE;
        if self.platform.is_confidential() && self.unshare_pages(grown.phys, pages).is_err() {
            g.kept_bytes += grown.len as u64;
            c.quarantined_pools.fetch_add(1, Ordering::Relaxed);
            return Removed::Quarantined;
        }
        src.give_back(grown.phys, grown.len);
        c.shrunk.fetch_add(1, Ordering::Relaxed);
        log::info!("ccdma: pool {i} ({:#x} bytes at {}) idle: handed back", grown.len, grown.phys);
        Removed::Returned
    }
}

impl<'m, P: Platform, const POOLS: usize, const DOMAINS: usize, const AREAS: usize>
    DmaLayer<'m, P, POOLS, DOMAINS, AREAS>
{
    /// One tick of the caller's clock (see [`GrowthConfig::idle_ticks`](super::GrowthConfig)): every
    /// grown pool (not the reserve) that had no live slot and no allocation attempt since the last
    /// tick counts one more idle tick, and those idle for long enough are removed. Returns how many
    /// were handed back.
    pub fn growth_tick(&self) -> usize {
        match self.cold().as_full() {
            Some(c) => growth_tick_once(c),
            None => self.cold().growth_tick_dyn(),
        }
    }

    /// Remove every grown pool now, reserve included (teardown). `Busy` if one still has live slots.
    pub fn shrink_all(&self) -> Result<(), DmaError> {
        match self.cold().as_full() {
            Some(c) => shrink_all_once(c),
            None => self.cold().shrink_all_dyn(),
        }
    }
}

/// [`DmaLayer::growth_tick`] of the default capacities, compiled in this crate only (see
/// `Cold::as_full`).
#[inline(never)]
fn growth_tick_once(c: &FullCold<'_, '_>) -> usize {
    c.growth_tick_dyn()
}

/// [`DmaLayer::shrink_all`] of the default capacities, compiled in this crate only (see
/// `Cold::as_full`).
#[inline(never)]
fn shrink_all_once(c: &FullCold<'_, '_>) -> Result<(), DmaError> {
    c.shrink_all_dyn()
}
