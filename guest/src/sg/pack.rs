//! Packing: consecutive inputs that must be bounced go back to back into one run of pool slots, as
//! long as the stream stays gapless and every device limit holds.

use super::*;

impl<const POOLS: usize, const DOMAINS: usize, const AREAS: usize> Cold<'_, '_, POOLS, DOMAINS, AREAS> {
    /// Allocate one run for a group, copy (or clear) its bytes and record every entry's place.
    #[allow(clippy::too_many_arguments)]
    #[inline(never)]
    pub(super) fn place_group(
        &self,
        dev: &Device,
        view: &View,
        list: &mut [SgEntry<'_>],
        g: Group,
        lim: &Limits,
        dir: DmaDirection,
        attrs: DmaAttrs,
    ) -> Result<(), DmaError> {
        // The segment's first byte keeps the first original's `min_align` bits; the later entries keep
        // theirs because the group only took entries whose bits follow on (see `can_join`). Bits
        // below the run's alignment unit go into the lead; those above come from the run's pool
        // alignment (or, strict, from where the window layout puts the run).
        let bits = g.orig0 & lim.min_align;
        let page = view.run_page();
        let mut largest = 0u64;
        // The area to start in, as a single map picks it: the caller's CPU, else a hash of its stack.
        let cpu = self.platform.cpu_hint().unwrap_or_else(crate::stream::bounce::area_hint);
        for pi in view.pools.iter() {
            // `pi` is a pool index (`< MAX_POOLS`): checked rather than indexed.
            let (Some(pool), Some(&pool_bus)) = (self.pools.get_for_alloc(pi), view.pool_bus.get(pi)) else {
                continue;
            };
            let slot = pool.slot_size() as u64;
            let unit = slot.max(page);
            let lead = bits & (unit - 1);
            let max =
                if page > 0 { pool.max_mapping() as u64 & !(page - 1) } else { pool.max_mapping() as u64 };
            largest = largest.max(max.saturating_sub(lead));
            let data_end = lead + g.len;
            // Strict runs cover whole IOMMU pages, so no page the device reaches holds other data.
            let run_len = if page > 0 { data_end.next_multiple_of(page) } else { data_end };
            let nslots = run_len.div_ceil(slot);
            if nslots * slot > pool.max_mapping() as u64 || data_end > max {
                continue;
            }
            let req = if page > 0 {
                RunRequest { nslots: nslots as usize, align_mask: (unit - 1) & !(slot - 1), align_bits: 0 }
            } else {
                let Some(align) = run_alignment(lim, bits, g.len, pool_bus.0, pool.len() as u64) else {
                    continue;
                };
                let align_mask = (align - 1) & !(slot - 1);
                RunRequest { nslots: nslots as usize, align_mask, align_bits: bits & align_mask }
            };
            let Some(index) = pool.alloc_sg(req, 0, data_end as usize, dir, attrs, dev.serial, cpu) else {
                continue;
            };
            let run_off = (index as u64) << slot.trailing_zeros();
            let start = pool_bus.0 + run_off + lead;
            // The pool cannot be removed while the run lives: where the device's view puts it now
            // must be where the list's snapshot did (else that index was shrunk and regrown since).
            let moved = page == 0 && self.view_base(view, pi) != Some(pool_bus);
            let misplaced = if moved {
                true
            } else if page > 0 {
                (pool.phys().0 + run_off) % page != 0
            } else {
                start & lim.min_align != bits
                    || !lim.within_boundary(start, g.len)
                    || !lim.mask.covers(start, g.len)
            };
            if misplaced {
                // Only possible if a pool's placement changes low address bits (bus encoding, or a
                // pool not aligned to the IOMMU page): give the run back and try another pool.
                pool.free(index, nslots as usize);
                continue;
            }
            if page > 0 {
                // SAFETY: the run was just allocated for us: `nslots * slot` bytes from `run_off`.
                unsafe {
                    core::ptr::write_bytes(pool.cpu_at(run_off as usize), 0, lead as usize);
                    let tail = run_off + data_end;
                    core::ptr::write_bytes(
                        pool.cpu_at(tail as usize),
                        0,
                        (nslots * slot - data_end) as usize,
                    );
                }
            }
            let head = RunHead { nslots: nslots as u16, lead: lead as u32 };
            let bus_base = if page > 0 { None } else { Some(pool_bus.0) };
            self.fill_group(list, g, &pool, pi, bus_base, run_off + lead, head, dir, attrs);
            return Ok(());
        }
        if self.growth_will_retry(g.len as usize) {
            // Growth tries again, and counts the failure if it stays one.
            let (len, max) = (g.len as usize, largest as usize);
            return Err(if largest < g.len {
                DmaError::TooLarge { len, max }
            } else {
                DmaError::PoolExhausted { len }
            });
        }
        if largest < g.len {
            self.stats.fail(FailureKind::TooLarge);
            return Err(DmaError::TooLarge { len: g.len as usize, max: largest as usize });
        }
        let n = self.stats.fail(FailureKind::PoolExhausted);
        if !attrs.contains(DmaAttrs::NO_WARN) && should_warn(n) {
            log::warn!(
                "ccdma: bounce pool exhausted mapping a {}-byte scatter-gather run for device {:#x} \
                 ({n} failures so far)",
                g.len,
                dev.config().id
            );
        }
        Err(DmaError::PoolExhausted { len: g.len as usize })
    }

    /// Where pool `pi` sits in the view's live pool set now.
    fn view_base(&self, view: &View, pi: usize) -> Option<BusAddr> {
        match view.domain {
            None => self.plain.base_of(pi),
            Some(d) => self.slot_cold(d)?.live.base_of(pi),
        }
    }

    /// Initialise a new run: originals copied in for data going to the device, zeroes otherwise (or
    /// the originals on request), exactly as a single bounced mapping; record each entry's place.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn fill_group(
        &self,
        list: &mut [SgEntry<'_>],
        g: Group,
        pool: &crate::pool::BouncePool<'_, AREAS>,
        pi: usize,
        bus_base: Option<u64>,
        data_off: u64,
        head: RunHead,
        dir: DmaDirection,
        attrs: DmaAttrs,
    ) {
        let skip = attrs.contains(DmaAttrs::SKIP_CPU_SYNC);
        let copy = !skip && (dir.device_reads() || attrs.contains(DmaAttrs::PRESERVE_UNWRITTEN));
        if !copy && !self.leaves_stale_slot(dir) {
            // SAFETY: the run was just allocated for us and holds `g.len` bytes from `data_off`.
            unsafe { core::ptr::write_bytes(pool.cpu_at(data_off as usize), 0, g.len as usize) };
        }
        let mut pos = 0u64;
        for k in g.start..g.start + g.count {
            let Some(e) = list.get_mut(k) else { break };
            let Place::Pending { cpu } = e.place else { continue };
            let len = e.src.len();
            let pool_off = data_off + pos;
            if copy {
                // SAFETY: the original is valid for `len` bytes (entry contract); the run is ours and
                // holds `[pos, pos + len)` of the group's stream; pool memory never overlaps a caller's
                // buffer.
                unsafe { core::ptr::copy_nonoverlapping(cpu, pool.cpu_at(pool_off as usize), len) };
                self.stats.to_device(len);
            }
            e.place = Place::Bounced {
                // Strict runs get their bus address from the window layout.
                bus: BusAddr(bus_base.map_or(0, |b| b + pool_off)),
                pool: pi as u8,
                pool_off,
                run: (k == g.start).then_some(head),
                cpu,
            };
            pos += len as u64;
        }
    }

    /// The next window item at or after entry `from`, and the index after its entries.
    pub(super) fn next_item(
        &self,
        list: &[SgEntry<'_>],
        from: usize,
        view: &View,
        page: u64,
        lim: &Limits,
    ) -> Option<(Item, usize)> {
        let (mut item, next, run) = next_item_of(&self.pools, list, from, view, page, lim)?;
        if let Some(src) = run {
            item.bits = self.orig_addr(view, lim, src) & lim.min_align;
        }
        Some((item, next))
    }
}

/// [`Cold::next_item`] without the `min_align` bits of a bounce run's original (0 there, the run's
/// first input returned instead: only the layout needs them, and they take a platform call): what
/// the entry writer's closure walks, so it captures the pool table, not the `dyn Platform` layer
/// (the platform's vtable stays a constant that a one-platform image folds away).
#[allow(clippy::type_complexity)]
pub(super) fn next_item_of<'l, const POOLS: usize, const AREAS: usize>(
    pools: &PoolTable<'_, POOLS, AREAS>,
    list: &'l [SgEntry<'_>],
    from: usize,
    view: &View,
    page: u64,
    lim: &Limits,
) -> Option<(Item, usize, Option<&'l Source>)> {
    let strict = view.strict();
    let mut i = from;
    while let Some(e) = list.get(i) {
        match e.place {
            Place::Bounced { pool, pool_off, run: Some(_), .. } if strict => {
                let data_phys = pools.get(pool as usize)?.phys().0 + pool_off;
                let d = data_phys & (page - 1);
                let mut len = e.src.len() as u64;
                let mut j = i + 1;
                while let Some(n) =
                    list.get(j).filter(|n| matches!(n.place, Place::Bounced { run: None, .. }))
                {
                    len += n.src.len() as u64;
                    j += 1;
                }
                return Some((
                    Item { first: i, phys: data_phys - d, d, len, bits: 0, key: pool_off },
                    j,
                    Some(&e.src),
                ));
            }
            Place::Window { phys, .. } => {
                let d = phys.0 & (page - 1);
                let len = e.src.len() as u64;
                let bits = phys.0 & lim.min_align;
                return Some((Item { first: i, phys: phys.0 - d, d, len, bits, key: 0 }, i + 1, None));
            }
            _ => i += 1,
        }
    }
    None
}

/// May an input whose original starts at `orig` and is `len` long join `g`, keeping the stream
/// gapless and every limit?
pub(super) fn can_join(g: &Group, orig: u64, len: u64, lim: &Limits, span: PoolSpan) -> bool {
    let new_len = g.len + len;
    let bits = g.orig0 & lim.min_align;
    // The device will find this input at (segment start + g.len); its low bits must be the original's.
    g.orig0.wrapping_add(g.len) & lim.min_align == orig & lim.min_align
        && new_len <= lim.max_seg
        && lim.boundary_allows(bits, new_len)
        && (bits & (span.max_unit - 1)) + new_len <= span.max_run
}

/// The alignment the segment's first byte needs in a pool at `[pool_bus, pool_bus + pool_len)`: its
/// `min_align` bits, and, only where the pool straddles a segment boundary, enough alignment that
/// `len` bytes from the first byte cannot cross one. `None` when no alignment can do it.
pub(super) fn run_alignment(lim: &Limits, bits: u64, len: u64, pool_bus: u64, pool_len: u64) -> Option<u64> {
    let mut align = lim.min_align.checked_add(1)?;
    if !lim.within_boundary(pool_bus, pool_len) {
        // Aligning the first byte's offset within a block of `need` bytes (a power of two no larger
        // than the boundary block) keeps the segment inside that block.
        let need = ((bits & lim.boundary) + len).checked_next_power_of_two()?;
        let block = lim.boundary.saturating_add(1);
        align = align.max(need.min(block));
    }
    Some(align)
}
