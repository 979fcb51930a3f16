//! The strict IOMMU layout of a list: one bus range for the whole list, the runs placed in it (holes
//! where `min_align_mask` or the boundary ask for them), their entries entered in one batch.

use super::pack::next_item_of;
use super::*;

impl<const POOLS: usize, const DOMAINS: usize, const AREAS: usize> Cold<'_, '_, POOLS, DOMAINS, AREAS> {
    /// IOMMU paths: one bus range for every strict run and host-bridge P2P segment of the list, their
    /// entries written in one batch. `Ok(None)` when the list has nothing for the window (no
    /// allocation, no hypercall).
    pub(super) fn window_layout(
        &self,
        view: &View,
        list: &mut [SgEntry<'_>],
        lim: &Limits,
        dir: DmaDirection,
    ) -> Result<Option<(u64, u64)>, DmaError> {
        let Some(win) = view.window else { return Ok(None) };
        // Never 0 for a window set-up accepted (`is_usable`); checked so no division can panic.
        let page = win.page_size();
        if page == 0 {
            return Err(DmaError::Iommu(IommuError::NoWindow));
        }
        // Where each item goes, as offsets from the range's start: every entry's bus address is its
        // offset until the range is allocated (one pass lays out and records).
        let mut cursor = 0u64;
        let mut first_phys = None;
        let mut at = 0;
        while let Some((item, next)) = self.next_item(list, at, view, page, lim) {
            let Some(p) = place_item(cursor, &item, lim, page) else {
                self.stats.fail(FailureKind::TooLarge);
                return Err(DmaError::SegmentLimit { index: item.first, len: item.len as usize });
            };
            first_phys.get_or_insert(item.phys);
            let data = p + item.d;
            // `next_item` gives `first < next <= list.len()`; checked rather than sliced.
            for e in list.get_mut(item.first..next).unwrap_or_default() {
                match &mut e.place {
                    Place::Bounced { bus, pool_off, .. } => *bus = BusAddr(data + (*pool_off - item.key)),
                    Place::Window { bus, .. } => *bus = BusAddr(data),
                    _ => {}
                }
            }
            cursor = p + item.npages(page) * page;
            at = next;
        }
        let Some(first_phys) = first_phys else { return Ok(None) };
        let span = cursor;
        let (lo, hi) = window_below(&win, lim.mask);
        // The range starts aligned so that offsets keep their meaning: the `min_align` bits above the
        // page, and (only where the window crosses a boundary) the boundary blocks.
        let mut align = page;
        if lim.min_align >= page {
            align =
                align.max(lim.min_align.checked_add(1).ok_or(DmaError::InvalidMinAlignMask(lim.min_align))?);
        }
        if lo < hi && !lim.within_boundary(lo, hi - lo) {
            let need = span.checked_next_power_of_two().unwrap_or(1 << 63);
            align = align.max(need.min(lim.boundary.saturating_add(1)));
        }
        let slot = view.domain.and_then(|d| self.slot_cold(d)).ok_or(DmaError::NotAttached)?;
        let tce = self.backend().ok_or(DmaError::Iommu(IommuError::NoWindow))?;
        let placed = slot.space.lock().alloc(span, align, 0, lo, hi, RangeKind::SgList, first_phys);
        let base = match placed {
            Ok(b) => b,
            Err(e) => {
                self.stats.fail(FailureKind::Iommu);
                return Err(DmaError::Iommu(e));
            }
        };
        // Every offset recorded above becomes a bus address: the entries of the items (strict runs,
        // host-bridge P2P segments), exactly those `next_item` walks.
        let strict = view.strict();
        for e in list.iter_mut() {
            match &mut e.place {
                Place::Bounced { bus, .. } if strict => bus.0 += base,
                Place::Window { bus, .. } => bus.0 += base,
                _ => {}
            }
        }
        let perm = tce_perm(dir);
        let hint = Cell::new(0usize);
        let settled: &[SgEntry<'_>] = list;
        // Holes between items get empty entries: the device faults there.
        // The closure captures the pool table, not `self`: a `dyn Platform` layer behind the
        // writer's `&dyn Fn` would keep the platform's whole vtable in a one-platform image.
        let pools = &self.pools;
        let entry = |k: u64| {
            window_entry(pools, settled, &hint, base + (k << win.page_shift), view, page, lim)
                .map_or(0, |phys| phys | perm)
        };
        if let Err(f) = tce.put_entries(&win, base, span >> win.page_shift, &entry) {
            self.put_failed(slot, base, span, RangeKind::SgList, f.clean);
            if !f.clean {
                // Entries may still point at the runs: neither they nor the range are ever reused
                // (the runs stay allocated, forgotten by the list; the range is quarantined).
                for e in list.iter_mut() {
                    if matches!(e.place, Place::Bounced { .. }) {
                        e.place = Place::Unmapped;
                    }
                }
            }
            return Err(DmaError::Iommu(f.err));
        }
        Ok(Some((base, span)))
    }
}

/// The physical page the list maps at bus page `bus` (`None` for a hole).
#[allow(clippy::too_many_arguments)]
fn window_entry<const POOLS: usize, const AREAS: usize>(
    pools: &PoolTable<'_, POOLS, AREAS>,
    list: &[SgEntry<'_>],
    hint: &Cell<usize>,
    bus: u64,
    view: &View,
    page: u64,
    lim: &Limits,
) -> Option<u64> {
    // Items lie in increasing bus order; entries are asked for mostly in order, so start at the
    // last item found and fall back to the start once.
    for start in [hint.get(), 0] {
        let mut at = start;
        while let Some((item, next, _)) = next_item_of(pools, list, at, view, page, lim) {
            let first_page = list.get(item.first)?.mapped_at()?.0 - item.d;
            if bus < first_page {
                break;
            }
            if bus < first_page + item.npages(page) * page {
                hint.set(item.first);
                return Some(item.phys + (bus - first_page));
            }
            at = next;
        }
        if start == 0 {
            break;
        }
    }
    None
}

/// Where an item goes in the list's window range: the first IOMMU-page offset at or after `cursor`
/// that gives its first byte the `min_align` bits it needs (the range's start is aligned to keep
/// them) and keeps it inside one boundary block. `None` when no place can.
pub(super) fn place_item(cursor: u64, item: &Item, lim: &Limits, page: u64) -> Option<u64> {
    let a = lim.min_align.checked_add(1)?;
    let high = lim.min_align & !(page - 1);
    let phase = item.bits & high;
    let fit = |p: u64| -> Option<u64> {
        if high == 0 {
            return Some(p);
        }
        let b = (p - p % a).checked_add(phase)?;
        if b < p {
            b.checked_add(a)
        } else {
            Some(b)
        }
    };
    let mut p = fit(cursor)?;
    if !lim.within_boundary(p + item.d, item.len) {
        // Start over at the next boundary block (a block smaller than a page cannot help).
        let block = lim.boundary.checked_add(1)?;
        if block < page {
            return None;
        }
        p = fit(((p + item.d) | lim.boundary).checked_add(1)?)?;
        if !lim.within_boundary(p + item.d, item.len) {
            return None;
        }
    }
    Some(p)
}
