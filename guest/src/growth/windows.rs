//! Entering a grown pool into every attached device's window that can reach it, and taking it out
//! again. The caller holds the growth lock, which set-up and detach take too, so the set of READY
//! domains and their window layouts do not change underneath.

use core::sync::atomic::Ordering;

use crate::addr::{BusAddr, DmaMask, PhysAddr};
use crate::iommu::bus_space::RangeKind;
use crate::iommu::domain::{DomainSlot, READY};
use crate::iommu::setup::{PremapAt, PremapFailed};
use crate::iommu::window::window_below;
use crate::layer::Cold;
use crate::path::DmaPath;

impl<'a, 'm, const POOLS: usize, const DOMAINS: usize, const AREAS: usize>
    Cold<'a, 'm, POOLS, DOMAINS, AREAS>
{
    /// Enter pool `i` (`[phys, phys + len)`) into every READY domain: strict domains take it as it
    /// is; premapped ones get it in their DDW, or in their default window below their mask, when it
    /// fits (a domain whose window has no room simply does not see it). On a failure every entry made
    /// so far is cleared again; `Err(false)` when some would not clear (the pool must then stay
    /// shared for good).
    pub(crate) fn enter_windows(
        &self,
        i: usize,
        phys: PhysAddr,
        len: usize,
        reserve: bool,
    ) -> Result<(), bool> {
        let Some(iommu) = &self.iommu else { return Ok(()) };
        let Some(tce) = self.premap_backend() else { return Ok(()) };
        let len = len as u64;
        for slot in iommu.domains.iter().flatten() {
            if slot.state.load(Ordering::Acquire) != READY {
                // Claimed but not set up yet (deferred): its set-up enters every pool then.
                continue;
            }
            let info = slot.info_unchecked();
            let (win, lo, hi, align, phase) = match info.path {
                DmaPath::IommuStrict => {
                    slot.live.insert(i, BusAddr(0), len, reserve);
                    continue;
                }
                DmaPath::IommuDdw => match info.ddw {
                    // Below the narrowest mask of the endpoint's devices (a DDW at bus 0 may serve a
                    // 32-bit device that joined).
                    Some(w) => {
                        let bits = slot.mask.load(Ordering::Relaxed) as u32;
                        let Ok(mask) = DmaMask::new(bits) else { continue };
                        let (lo, hi) = window_below(&w, mask);
                        (w, lo, hi, w.page_size(), 0)
                    }
                    None => continue,
                },
                DmaPath::IommuPremapped => match info.dynamic {
                    Some(w) => {
                        let bits = slot.mask.load(Ordering::Relaxed) as u32;
                        let Ok(mask) = DmaMask::new(bits) else { continue };
                        let (lo, hi) = window_below(&w, mask);
                        // As at set-up: the bus base keeps the `min_align_mask` bits of the pool.
                        let page = w.page_size();
                        let align = page.max(slot.min_align.load(Ordering::Relaxed) + 1);
                        (w, lo, hi, align, phys.0 & (align - 1) & !(page - 1))
                    }
                    None => continue,
                },
                _ => continue,
            };
            let page = win.page_size();
            // Checked: a usable window's page is never 0, but no division may panic.
            let (Some(0), Some(0), Some(pages)) =
                (phys.0.checked_rem(page), len.checked_rem(page), len.checked_div(page))
            else {
                continue;
            };
            if lo >= hi {
                continue;
            }
            let at = PremapAt { win, lo, hi, align, phase, phys: phys.0, len, pages };
            let bus = match self.premap_pool(slot, &tce, &at, i) {
                Ok(bus) => bus,
                Err(PremapFailed::NoRoom(_)) => continue,
                Err(PremapFailed::Put(f)) => {
                    let cleared = self.leave_windows(i).is_ok();
                    return Err(f.clean && cleared);
                }
            };
            slot.live.insert(i, BusAddr(bus), len, reserve);
        }
        Ok(())
    }

    /// Take pool `i` out of every domain: out of its pool set first (no new lookup finds it), then
    /// its window entries cleared. `Err` when some would not clear: they may still name the pool.
    pub(crate) fn leave_windows(&self, i: usize) -> Result<(), ()> {
        let Some(iommu) = &self.iommu else { return Ok(()) };
        let mut result = Ok(());
        for slot in iommu.domains.iter().flatten() {
            slot.live.remove(i);
            if self.clear_pool_range(slot, i).is_err() {
                result = Err(());
            }
        }
        result
    }

    fn clear_pool_range(&self, slot: &DomainSlot<'m, POOLS>, i: usize) -> Result<(), ()> {
        let kind = RangeKind::Premap { pool: i as u8 };
        let Some(r) = slot.space.lock().ranges().iter().copied().find(|r| r.kind == kind) else {
            return Ok(());
        };
        let state = slot.state.load(Ordering::Acquire);
        if state == crate::iommu::domain::FREE {
            return Ok(());
        }
        let info = slot.info_unchecked();
        let win =
            [info.ddw, info.dynamic].into_iter().flatten().find(|w| r.start >= w.start && r.end() <= w.end());
        let (Some(w), Some(tce)) = (win, self.backend()) else { return Err(()) };
        tce.clear(&w, r.start, r.len >> w.page_shift).map_err(|_| ())?;
        slot.space.lock().free(r.start, r.len, r.kind);
        Ok(())
    }
}
