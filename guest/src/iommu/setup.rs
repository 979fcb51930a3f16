//! Setting a device's windows up (DESIGN.md section 6, IOMMU rows): ask [`crate::path`] which window
//! the facts allow, then program it: the pools alone in a DDW with the largest IOMMU page their
//! alignment allows, or in the default window below the mask, or nothing premapped (strict). Every
//! failure unwinds what it entered; entries that cannot be cleared pin the pools.

use core::sync::atomic::Ordering;

use super::backend::Backend;
use super::bus_space::{BusSpace, RangeKind};
use super::calls::{DdwQuery, DDW_PAGE_SIZES, TCE_PCI_READ, TCE_PCI_WRITE};
use super::config::IommuPolicy;
use super::domain::{DomainInfo, DomainSlot, READY};
use super::error::{IommuError, PutFailure};
use super::window::{window_below, WindowGeometry};
use crate::addr::{BusAddr, DmaMask};
use crate::device::DeviceConfig;
use crate::error::DmaError;
use crate::layer::Cold;
use crate::path::{self, DdwOutcome, DmaPath, IommuFacts, PathChoice, PathFacts, PathReason};
use crate::stats::FailureKind;

/// What [`Cold::premap_pool`] enters: `pages` entries of window `win` for `[phys, phys + len)`, at
/// a bus range within `[lo, hi)` aligned to `align` at offset `phase`.
#[derive(Clone, Copy)]
pub(crate) struct PremapAt {
    pub win: WindowGeometry,
    pub lo: u64,
    pub hi: u64,
    pub align: u64,
    pub phase: u64,
    pub phys: u64,
    pub len: u64,
    pub pages: u64,
}

/// Why [`Cold::premap_pool`] entered nothing.
pub(crate) enum PremapFailed {
    /// No bus range fits (nothing changed).
    NoRoom(IommuError),
    /// Writing the entries failed (the range is freed again if `clean`).
    Put(PutFailure),
}

/// Most reserved ranges one device's windows may have from the platform.
const MAX_PLATFORM_RESERVATIONS: usize = 4096;

impl<'a, 'm, const POOLS: usize, const DOMAINS: usize, const AREAS: usize>
    Cold<'a, 'm, POOLS, DOMAINS, AREAS>
{
    /// Choose the path and program the windows, writing the result into `info` (the slot's, in
    /// place: no copy of it on the set-up's frames; complete when this returns `Ok`). Runs with the
    /// slot held in SETUP.
    #[inline(never)]
    pub(crate) fn setup_domain(
        &self,
        slot: &DomainSlot<'m, POOLS>,
        config: &DeviceConfig,
        info: &mut DomainInfo<POOLS>,
    ) -> Result<(), DmaError> {
        let iommu = self.iommu.as_ref().ok_or(DmaError::NotAttached)?;
        let tce = self.premap_backend().ok_or(DmaError::Iommu(IommuError::NoWindow))?;
        let id = config.id;
        let mut default = tce.default_window(id);
        let ddw_wanted = crate::parts::DDW
            && iommu.cfg.use_ddw
            && config.dma_mask.bits() == 64
            && self.pools.occupied() > 0;
        // No default window: a kernel before a kexec removed it, maybe leaving a DDW in its place
        // (at bus 0, with entries of its own) that PAPR has no call to find, or QEMU 7.2 left the
        // endpoint with no window. The reset removes any DDW and brings the default window back,
        // whether or not this device then asks for a DDW (with a window free, the DDW set-up alone
        // would never reset: issue 19's leftover, tests/tests/papr_ddw_left_at_bus_0_with_a_window_free.rs).
        if default.is_none() {
            default = self.bring_back_default(slot, &tce, id);
        }
        if let Some(win) = &default {
            if !win.is_usable() {
                let (start, size, page_shift) = (win.start, win.size, win.page_shift);
                return Err(DmaError::BadWindowGeometry { start, size, page_shift });
            }
        }
        self.init_space(&mut slot.space.lock(), &tce, id)?;
        let mask = config.dma_mask;
        // The facts a decision needs; attempts (a DDW, entering the pools) turn into facts too.
        let room = default.is_some_and(|win| {
            let (lo, hi) = window_below(&win, mask);
            slot.space.lock().has_room(win.page_size(), win.page_size(), lo, hi)
        });
        let mut facts = IommuFacts {
            premapped: iommu.cfg.policy == IommuPolicy::Premapped,
            ddw: DdwOutcome::NotTried,
            ddw_wanted,
            pool_fits_default: default.is_some(),
            default_has_room: room,
        };
        loop {
            let all = PathFacts {
                confidential: true,
                mask_covers_ram: false,
                reachable_pools: 0,
                iommu: Some(facts),
                accepted: false,
            };
            match (path::choose(&all), default) {
                // Never chosen without the `ddw` part (`ddw_wanted` is false then); the test lets the
                // optimiser see it and drop the DDW set-up (C builds: bash scripts/budgets.sh).
                (PathChoice::TryDdw, _) if crate::parts::DDW => {
                    match self.setup_ddw(slot, &tce, config, default, info) {
                        Ok(()) => return Ok(()),
                        Err(outcome) => {
                            log_ddw_fallback(id, &outcome);
                            facts.ddw = outcome;
                        }
                    }
                }
                (PathChoice::DefaultWindow(_), Some(win)) => {
                    if self.premap_default(slot, &tce, config, win, facts.ddw, info)? {
                        return Ok(());
                    }
                    log_no_pool_fits(id, &win, mask);
                    facts.pool_fits_default = false;
                }
                (PathChoice::Strict(reason), Some(win)) => {
                    self.strict_window_serves(&win)?;
                    info.start(DmaPath::IommuStrict, reason, None, Some(win), false);
                    for (i, _) in self.pools.iter() {
                        info.pools.push(i);
                    }
                    return Ok(());
                }
                _ => {
                    let window = default.map_or((0, 0), |w| (w.start, w.end()));
                    // At most MAX_POOLS (8): the layer's const assertion.
                    let pools = self.pools.occupied() as u8;
                    return Err(DmaError::NoIommuPath { mask, pools, window, ddw: facts.ddw.step() });
                }
            }
        }
    }

    /// Start a domain's bus space: the platform's reserved ranges and the layer-wide reservations.
    pub(crate) fn init_space(
        &self,
        space: &mut BusSpace<'m>,
        tce: &Backend<'_>,
        id: u32,
    ) -> Result<(), DmaError> {
        space.clear();
        // Bus address 0 is never handed out: many drivers (and virtio rings) read 0 as "no address".
        space.reserve(0, crate::addr::PAGE_SIZE)?;
        let mut i = 0;
        while let Some((start, len)) = tce.reserved_range(id, i) {
            // The platform's list is bounded here: overlapping ranges merge and take no room, so a
            // platform that never ends it would otherwise keep set-up looping.
            if i == MAX_PLATFORM_RESERVATIONS {
                return Err(DmaError::Iommu(IommuError::BusSpaceExhausted));
            }
            space.reserve(start, len)?;
            i += 1;
        }
        if let Some(iommu) = &self.iommu {
            let g = iommu.reservations.lock();
            for &(start, len) in g.0.iter().take(g.1) {
                space.reserve(start, len)?;
            }
        }
        Ok(())
    }

    /// Enter each pool that fits below the mask into the default window, the result into `info`.
    /// `Ok(false)`: none fits.
    /// Out of line, as [`Self::setup_ddw`]: only one of the two set-ups' frames is on the stack.
    #[inline(never)]
    pub(crate) fn premap_default(
        &self,
        slot: &DomainSlot<'m, POOLS>,
        tce: &Backend<'_>,
        config: &DeviceConfig,
        win: WindowGeometry,
        ddw: DdwOutcome,
        info: &mut DomainInfo<POOLS>,
    ) -> Result<bool, DmaError> {
        let (lo, hi) = window_below(&win, config.dma_mask);
        let page = win.page_size();
        info.start(DmaPath::IommuPremapped, PathReason::DefaultWindow(ddw), None, Some(win), false);
        for (i, pool) in self.pools.iter() {
            let (phys, len) = (pool.phys().0, pool.len() as u64);
            // `page` is never 0 (set-up refused an unusable default window); checked all the same.
            if phys.checked_rem(page) != Some(0) || len.checked_rem(page) != Some(0) || lo >= hi {
                continue;
            }
            // The pool's bus base keeps every `min_align_mask` bit of its physical address (slots are
            // placed by physical address), so a mapping's bus address keeps the bits the device needs.
            let align = page.max(config.min_align_mask + 1);
            let phase = phys & (align - 1) & !(page - 1);
            let at = PremapAt { win, lo, hi, align, phase, phys, len, pages: len / page };
            let bus = match self.premap_pool(slot, tce, &at, i) {
                Ok(bus) => bus,
                Err(PremapFailed::NoRoom(_)) => continue,
                Err(PremapFailed::Put(f)) => {
                    // Unclean, the range stays recorded as premapped and this unwinding retries it.
                    if self.unwind_premaps(slot, tce, Some(win), None).is_err() {
                        self.pin_pools(slot);
                    }
                    self.stats.fail(FailureKind::Iommu);
                    return Err(DmaError::Iommu(f.err));
                }
            };
            info.pools.push(i);
            // `i < POOLS` (a pool table index): checked rather than indexed, so no panic path.
            if let Some(at) = info.pool_bus.get_mut(i) {
                *at = BusAddr(bus);
            }
        }
        if info.pools.is_empty() {
            return Ok(false);
        }
        info.pools.sort_by_bus(&info.pool_bus);
        Ok(true)
    }

    /// Enter pool `i` into a window for good, as `at` says, at a bus range allocated in the domain's
    /// space and recorded as the pool's premapped range.
    /// On a failed entry write the range is freed again when the failure was clean; unclean, it
    /// stays recorded for the caller's unwinding. One copy for the default-window and DDW set-ups
    /// and for growth (`enter_windows`).
    #[inline(never)]
    pub(crate) fn premap_pool(
        &self,
        slot: &DomainSlot<'m, POOLS>,
        tce: &Backend<'_>,
        at: &PremapAt,
        i: usize,
    ) -> Result<u64, PremapFailed> {
        let kind = RangeKind::Premap { pool: i as u8 };
        let bus = slot.space.lock().alloc(at.len, at.align, at.phase, at.lo, at.hi, kind, at.phys);
        let bus = bus.map_err(PremapFailed::NoRoom)?;
        if let Err(f) = tce.put(&at.win, bus, at.phys, at.pages, TCE_PCI_READ | TCE_PCI_WRITE) {
            if f.clean {
                slot.space.lock().free(bus, at.len, kind);
            }
            return Err(PremapFailed::Put(f));
        }
        Ok(bus)
    }

    /// Clear and forget the premapped ranges of a domain (set-up failed, or detach), one by one. Stops
    /// at the first range whose clearing fails, leaving it (and those after it) recorded, so a retry
    /// continues where this one stopped.
    pub(crate) fn unwind_premaps(
        &self,
        slot: &DomainSlot<'m, POOLS>,
        tce: &Backend<'_>,
        default: Option<WindowGeometry>,
        ddw: Option<WindowGeometry>,
    ) -> Result<(), IommuError> {
        let writer = tce;
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
    /// again (`release_pools` refuses). Out of line (a failure's path): its log line's frame stays
    /// off the set-ups that call it (a deferred device's first map runs them).
    #[cold]
    #[inline(never)]
    pub(crate) fn pin_pools(&self, slot: &DomainSlot<'m, POOLS>) {
        let (mut stuck, mut pools) = (0usize, 0u64);
        for r in slot.space.lock().ranges() {
            if let RangeKind::Premap { pool } = r.kind {
                stuck += 1;
                pools |= 1u64.checked_shl(u32::from(pool)).unwrap_or(0);
            }
        }
        // The domain forgets these ranges when its set-up fails: the pools remember instead.
        self.iommu_counters.pinned_pools.fetch_or(pools, Ordering::AcqRel);
        self.iommu_counters.quarantined_ranges.fetch_add(stuck as u64, Ordering::Relaxed);
        self.iommu_counters.pools_pinned.store(true, Ordering::Relaxed);
        log::error!("ccdma: {stuck} premapped ranges could not be cleared; the pools stay shared for good");
    }

    /// Create a DDW holding only the pools (largest IOMMU page their alignment allows) and enter
    /// them, the result into `info`. Out of line: its frame is on the stack only while it runs,
    /// not under the default-window set-up too (a deferred device's first map, issue 20).
    #[inline(never)]
    pub(crate) fn setup_ddw(
        &self,
        slot: &DomainSlot<'m, POOLS>,
        tce: &Backend<'_>,
        config: &DeviceConfig,
        default: Option<WindowGeometry>,
        info: &mut DomainInfo<POOLS>,
    ) -> Result<(), DdwOutcome> {
        let id = config.id;
        let c = &self.iommu_counters;
        c.ddw_query.fetch_add(1, Ordering::Relaxed);
        let mut q = tce.ddw_query(id).map_err(DdwOutcome::QueryFailed)?;
        let mut default = default;
        let mut reset_at_detach = false;
        if q.windows_available == 0 {
            if self.window_used_elsewhere(slot, default) {
                // The platform partitions one endpoint into several domains (`TceCalls::endpoint`):
                // the default window is not this domain's to reset or remove.
                return Err(DdwOutcome::NoneAvailable);
            }
            (q, default, reset_at_detach) = self.make_room(tce, id, default)?;
        }
        // The largest page every pool's start and length are multiples of, and the pools' bytes (one
        // pass over the pools).
        let (mut align, mut pooled) = (None, 0u64);
        for p in self.pools() {
            let a = p.phys().0.trailing_zeros().min((p.len() as u64).trailing_zeros());
            align = Some(align.map_or(a, |m: u32| m.min(a)));
            pooled += p.len() as u64;
        }
        // Pools grown later must fit the window's pages too.
        let align = align.unwrap_or(0).min(self.growth.page_shift_limit());
        let shift = DDW_PAGE_SIZES
            .iter()
            .map(|&(_, s)| s)
            .filter(|&s| s <= align && q.supports_shift(s))
            .max()
            .ok_or(DdwOutcome::NoPageSize)?;
        // Without a default window the DDW may sit at bus 0 (QEMU puts it there), whose first page
        // is never handed out: room for that page too.
        let skip = if default.is_none() { 1u64 << shift } else { 0 };
        // Room for every pool growth may add, so they can enter this window later.
        // Configuration and hypervisor values: checked, a window too large to express is too small.
        let total = pooled
            .checked_add(self.growth.window_budget())
            .and_then(|t| t.checked_add(skip))
            .ok_or(DdwOutcome::TooSmall)?;
        let window_shift =
            total.checked_next_power_of_two().ok_or(DdwOutcome::TooSmall)?.trailing_zeros().max(shift);
        if 1u64.checked_shl(window_shift - shift).is_none_or(|tces| tces > q.largest_block) {
            return Err(DdwOutcome::TooSmall);
        }
        c.ddw_create.fetch_add(1, Ordering::Relaxed);
        let win = match tce.ddw_create(id, shift, window_shift) {
            Ok(win) => win,
            Err(rc) => {
                if reset_at_detach {
                    self.restore_default(tce, id);
                }
                return Err(DdwOutcome::CreateFailed(rc));
            }
        };
        info.start(DmaPath::IommuDdw, PathReason::Ddw, Some(win), default, reset_at_detach);
        // The window's geometry is an allegation: it must be what was asked for and below the mask.
        let overlaps_default = default.is_some_and(|d| win.start < d.end() && d.start < win.end());
        if win.page_shift != shift
            || !win.is_usable()
            || win.size < total
            || overlaps_default
            || !config.dma_mask.covers(win.start, total)
        {
            self.undo_windows(tce, id, info);
            return Err(DdwOutcome::BadWindow);
        }
        // A window at bus 0 starts its pools one IOMMU page in: bus address 0 is never a mapping.
        let mut off = if win.start == 0 { win.page_size() } else { 0 };
        for (i, pool) in self.pools.iter() {
            let (phys, len) = (pool.phys().0, pool.len() as u64);
            let bus = win.start + off;
            let (align, pages) = (win.page_size(), len >> shift);
            let at = PremapAt { win, lo: bus, hi: bus + len, align, phase: 0, phys, len, pages };
            // Unclean, a failed range stays recorded as premapped for the unwinding below.
            let result = self.premap_pool(slot, tce, &at, i).map_err(|e| match e {
                PremapFailed::NoRoom(e) => e,
                PremapFailed::Put(f) => f.err,
            });
            if let Err(e) = result {
                // Removing the window destroys its table (and its entries: no longer live, and
                // their ranges forgotten); only if that fails are the entries cleared one by one
                // (and if that fails too, they may stay for good).
                let leaked = c.leaked_windows.load(Ordering::Relaxed);
                self.undo_windows(tce, id, info);
                if c.leaked_windows.load(Ordering::Relaxed) == leaked {
                    let mut space = slot.space.lock();
                    while let Some(r) =
                        space.ranges().iter().copied().find(|r| matches!(r.kind, RangeKind::Premap { .. }))
                    {
                        c.live_tces.fetch_sub(r.len >> shift, Ordering::Relaxed);
                        space.free(r.start, r.len, r.kind);
                    }
                } else if self.unwind_premaps(slot, tce, None, Some(win)).is_err() {
                    self.pin_pools(slot);
                }
                return Err(DdwOutcome::PremapFailed(e));
            }
            info.pools.push(i);
            // `i < POOLS` (a pool table index): checked rather than indexed, so no panic path.
            if let Some(at) = info.pool_bus.get_mut(i) {
                *at = BusAddr(bus);
            }
            off += len;
        }
        info.pools.sort_by_bus(&info.pool_bus);
        Ok(())
    }

    /// An endpoint without its default window (a kernel before a kexec removed it, maybe creating a
    /// DDW in its place; QEMU 7.2 does not bring the default window back when the last window goes):
    /// reset the endpoint, which removes every DDW and brings the default window back, empty. Not when
    /// another domain set up already has a DDW: on a platform that splits one endpoint between
    /// domains that DDW may be this endpoint's (with no default window there is no LIOBN to tell by),
    /// and the reset would take it away. Returns the default window after the attempt.
    fn bring_back_default(
        &self,
        slot: &DomainSlot<'m, POOLS>,
        tce: &Backend<'_>,
        id: u32,
    ) -> Option<WindowGeometry> {
        let iommu = self.iommu.as_ref()?;
        let ddw_elsewhere = iommu
            .domains
            .iter()
            .flatten()
            .filter(|d| !core::ptr::eq(*d, slot))
            .any(|d| d.state.load(Ordering::Acquire) == READY && d.info_unchecked().ddw.is_some());
        if ddw_elsewhere {
            return None;
        }
        self.iommu_counters.ddw_reset.fetch_add(1, Ordering::Relaxed);
        if tce.ddw_reset(id) != 0 {
            return None;
        }
        let default = tce.default_window(id);
        if default.is_some() {
            log::info!("ccdma: device {id:#x}: endpoint without a window reset, its default window is back");
        }
        default
    }

    /// True when another domain set up already uses `default` (by LIOBN): a platform that splits one
    /// endpoint between domains. Runs under the attach lock, so no READY domain changes meanwhile.
    fn window_used_elsewhere(&self, slot: &DomainSlot<'m, POOLS>, default: Option<WindowGeometry>) -> bool {
        let (Some(iommu), Some(win)) = (self.iommu.as_ref(), default) else { return false };
        iommu.domains.iter().flatten().filter(|d| !core::ptr::eq(*d, slot)).any(|d| {
            d.state.load(Ordering::Acquire) == READY && {
                let info = d.info_unchecked();
                [info.dynamic, info.ddw].iter().flatten().any(|w| w.liobn == win.liobn)
            }
        })
    }

    /// The endpoint has no window left for a DDW (`windows_available` 0). Only the domain's own
    /// devices use the endpoint's windows (a domain is per endpoint, and this one is being set up),
    /// so, as Linux does:
    /// 1. reset the endpoint when the platform offers it: a DDW left over from before a kexec (or by
    ///    firmware) is removed, the default window comes back empty; then ask again;
    /// 2. still none: remove the default window; the DDW then takes its place (QEMU puts it at bus 0
    ///    with the default window's LIOBN), and the last detach resets the endpoint to bring the
    ///    default window back.
    ///
    /// Returns the new answer, the default window now, and whether the last detach must reset.
    /// Every failure puts back what it changed (or counts a leaked window when it cannot).
    fn make_room(
        &self,
        tce: &Backend<'_>,
        id: u32,
        default: Option<WindowGeometry>,
    ) -> Result<(DdwQuery, Option<WindowGeometry>, bool), DdwOutcome> {
        let c = &self.iommu_counters;
        let mut default = default;
        c.ddw_reset.fetch_add(1, Ordering::Relaxed);
        if tce.ddw_reset(id) == 0 {
            default = tce.default_window(id).filter(|w| w.is_usable());
            c.ddw_query.fetch_add(1, Ordering::Relaxed);
            let q = tce.ddw_query(id).map_err(DdwOutcome::QueryFailed)?;
            if q.windows_available > 0 {
                log_make_room(id, None);
                return Ok((q, default, false));
            }
        }
        let Some(win) = default else { return Err(DdwOutcome::NoneAvailable) };
        c.default_removed.fetch_add(1, Ordering::Relaxed);
        if tce.ddw_remove(id, win.liobn) != 0 {
            // Still there (or the platform cannot tell): nothing changed that needs undoing.
            return Err(DdwOutcome::NoneAvailable);
        }
        log_make_room(id, Some(win.liobn));
        c.ddw_query.fetch_add(1, Ordering::Relaxed);
        match tce.ddw_query(id) {
            Ok(q) if q.windows_available > 0 => Ok((q, None, true)),
            Ok(_) => {
                self.restore_default(tce, id);
                Err(DdwOutcome::NoneAvailable)
            }
            Err(rc) => {
                self.restore_default(tce, id);
                Err(DdwOutcome::QueryFailed(rc))
            }
        }
    }

    /// Bring back the default window the set-up removed (reset the endpoint); counted leaked when
    /// the platform refuses.
    fn restore_default(&self, tce: &Backend<'_>, id: u32) {
        let c = &self.iommu_counters;
        c.ddw_reset.fetch_add(1, Ordering::Relaxed);
        if tce.ddw_reset(id) != 0 || tce.default_window(id).is_none() {
            c.leaked_windows.fetch_add(1, Ordering::Relaxed);
            log::warn!("ccdma: device {id:#x}: the default window could not be brought back");
        }
    }

    /// Take down what a set-up created in the windows (the domain's entries are cleared already): the
    /// DDW is removed and, when the set-up removed the default window, the endpoint reset so it comes
    /// back (LoPAPR platforms and QEMU after 7.2 bring it back by themselves when the last window goes,
    /// and the reset is then skipped; QEMU 7.2 does not).
    /// Failures are counted in `leaked_windows`.
    pub(crate) fn undo_windows(&self, tce: &Backend<'_>, id: u32, info: &DomainInfo<POOLS>) {
        // Only a DDW set-up makes either (`info.ddw`, `reset_at_detach`): none without the part.
        if !crate::parts::DDW {
            return;
        }
        let c = &self.iommu_counters;
        let mut removed = true;
        if let Some(win) = info.ddw {
            c.ddw_remove.fetch_add(1, Ordering::Relaxed);
            removed = tce.ddw_remove(id, win.liobn) == 0;
            if !removed && !info.reset_at_detach {
                c.leaked_windows.fetch_add(1, Ordering::Relaxed);
                log::warn!("ccdma: removing DDW {:#x} of device {id:#x} failed", win.liobn);
            }
        }
        if info.reset_at_detach && (!removed || tce.default_window(id).is_none()) {
            // The reset removes the DDW too, if its removal failed.
            self.restore_default(tce, id);
        }
    }
}

// The set-up's log lines, out of line: their formatting stays off the set-up's frames (a deferred
// device's first map runs the set-up: a map's deepest chain, issue 20).

#[cold]
#[inline(never)]
fn log_ddw_fallback(id: u32, outcome: &DdwOutcome) {
    log::info!("ccdma: device {id:#x}: {outcome}; falling back to the default window");
}

#[cold]
#[inline(never)]
fn log_no_pool_fits(id: u32, win: &WindowGeometry, mask: DmaMask) {
    log::info!(
        "ccdma: device {id:#x}: no pool fits the default window [{:#x}, {:#x}) below mask {mask}; strict mappings",
        win.start,
        win.end()
    );
}

/// `make_room`'s: the endpoint reset removed a window left over (`None`), or the default window
/// (its LIOBN) was removed.
#[cold]
#[inline(never)]
fn log_make_room(id: u32, removed_default: Option<u32>) {
    match removed_default {
        None => log::info!("ccdma: device {id:#x}: endpoint reset, a window left over was removed"),
        Some(liobn) => {
            log::info!("ccdma: device {id:#x}: default window {liobn:#x} removed to make room for a DDW")
        }
    }
}
