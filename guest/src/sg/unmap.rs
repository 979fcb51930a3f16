//! Unmapping and syncing a list: checked against the guest's own record of every run (never a length
//! from the device), entries cleared first, device writes copied back once.

use super::*;

impl<'m, P: Platform, const POOLS: usize, const DOMAINS: usize, const AREAS: usize>
    DmaLayer<'m, P, POOLS, DOMAINS, AREAS>
{
    /// Unmap a list mapped by [`Self::map_sg`]: IOMMU entries cleared first, then device writes copied
    /// back per the guest's own record of each entry (never per a length from the device), runs and
    /// bus range freed; P2P bus-address and direct entries skipped. `dir` must be the mapping's. A
    /// list that is not mapped as this layer mapped it is an error and changes nothing.
    pub fn unmap_sg(
        &self,
        dev: &Device,
        list: &mut [SgEntry<'_>],
        dir: DmaDirection,
        attrs: DmaAttrs,
    ) -> Result<(), DmaError> {
        self.cold().list_op(dev, list, dir, ListOp::Unmap(attrs))
    }

    /// Make device writes visible in the originals of every bounced entry.
    pub fn sync_sg_for_cpu(
        &self,
        dev: &Device,
        list: &mut [SgEntry<'_>],
        dir: DmaDirection,
    ) -> Result<(), DmaError> {
        self.cold().list_op(dev, list, dir, ListOp::ForCpu)
    }

    /// Make CPU writes to the originals visible to the device (for directions in which the device
    /// reads, or mappings made with `PRESERVE_UNWRITTEN`).
    pub fn sync_sg_for_device(
        &self,
        dev: &Device,
        list: &mut [SgEntry<'_>],
        dir: DmaDirection,
    ) -> Result<(), DmaError> {
        self.cold().list_op(dev, list, dir, ListOp::ForDevice)
    }
}

impl<const POOLS: usize, const DOMAINS: usize, const AREAS: usize> Cold<'_, '_, POOLS, DOMAINS, AREAS> {
    /// Free the runs a list holds (entries not yet reset).
    pub(super) fn release_runs(&self, list: &[SgEntry<'_>]) {
        self.each_run(list, list.len(), true);
    }

    /// Undo the claims `check_runs` made on the runs of `list[..upto]`.
    pub(super) fn unclaim(&self, list: &[SgEntry<'_>], upto: usize) {
        self.each_run(list, upto, false);
    }

    /// Free (`free`) or unclaim every run of `list[..upto]`: one walk for both.
    fn each_run(&self, list: &[SgEntry<'_>], upto: usize, free: bool) {
        for e in list.iter().take(upto) {
            if let Place::Bounced { pool, pool_off, run: Some(h), .. } = e.place {
                if let Some(p) = self.pools.get(pool as usize) {
                    let index = p.index_of_offset(pool_off - h.lead as u64);
                    if free {
                        p.free(index, h.nslots as usize);
                    } else {
                        p.unrelease(index);
                    }
                }
            }
        }
    }

    /// An unmap or sync of a mapped list: the checks they share (device, list, every run, with a
    /// claim for an unmap), then the operation. One copy for the three calls.
    #[inline(never)]
    fn list_op(
        &self,
        dev: &Device,
        list: &mut [SgEntry<'_>],
        dir: DmaDirection,
        op: ListOp,
    ) -> Result<(), DmaError> {
        crate::parts::require(crate::parts::SG, "scatter-gather")?;
        let _masked = self.masked();
        self.check_device(dev)?;
        self.check_list_device(dev, list)?;
        let view = self.settled_view(dev)?;
        let preserve = self.check_runs(&view, list, dir, matches!(op, ListOp::Unmap(_)))?;
        match op {
            ListOp::Unmap(attrs) => return self.unmap_claimed(dev, &view, list, dir, attrs),
            ListOp::ForCpu if dir.device_writes() => self.copy_runs(list, false),
            ListOp::ForDevice if dir.device_reads() || preserve => self.copy_runs(list, true),
            ListOp::ForCpu | ListOp::ForDevice => {}
        }
        Ok(())
    }

    /// [`Self::unmap_sg`] once `check_runs` has checked and claimed every run of the list.
    fn unmap_claimed(
        &self,
        dev: &Device,
        view: &View,
        list: &mut [SgEntry<'_>],
        dir: DmaDirection,
        attrs: DmaAttrs,
    ) -> Result<(), DmaError> {
        let range = list.first().and_then(|e| e.tag.range);
        if let (Some((start, len)), Some(win)) = (range, view.window) {
            // Entries go first: from here on the device cannot touch the runs, so the copy back reads
            // what it left, and the slots and range can be reused safely.
            let cleared = match self.backend() {
                Some(tce) => tce.clear(&win, start, len >> win.page_shift),
                None => Err(IommuError::NoWindow),
            };
            if let Err(e) = cleared {
                self.unclaim(list, list.len());
                self.stats.fail(FailureKind::Iommu);
                log::warn!(
                    "ccdma: unmap of a scatter-gather list at {start:#x} failed clearing ({e:?}); kept"
                );
                return Err(DmaError::Iommu(e));
            }
        }
        if dir.device_writes() && !attrs.contains(DmaAttrs::SKIP_CPU_SYNC) {
            self.copy_runs(list, false);
        }
        self.count_segments(list, false);
        if let Some(slot) = view.domain.and_then(|d| self.slot_cold(d)) {
            if let Some((start, len)) = range {
                slot.space.lock().free(start, len, RangeKind::SgList);
            }
            slot.live_mappings.fetch_sub(1, Ordering::Relaxed);
        }
        self.release_runs(list);
        reset(list);
        dev.live_dec(LiveKind::List);
        Ok(())
    }

    /// Copy every bounced entry's bytes between its run and its original (`to_device`: original to
    /// run; else run to original): one pass, each shared byte read once, lengths from the entry (the
    /// guest's record), never from the device.
    pub(super) fn copy_runs(&self, list: &[SgEntry<'_>], to_device: bool) {
        for e in list {
            if let Place::Bounced { pool, pool_off, cpu, .. } = e.place {
                if let Some(p) = self.pools.get(pool as usize) {
                    let len = e.src.len();
                    let run = p.cpu_at(pool_off as usize);
                    let (from, to) = if to_device { (cpu, run) } else { (run, cpu) };
                    // SAFETY: `check_runs` proved `[pool_off, pool_off + len)` lies in a live run of
                    // this list; the original is valid for reads and writes of `len` bytes while the
                    // entry is mapped; pool memory never overlaps a caller's buffer.
                    unsafe { core::ptr::copy_nonoverlapping(from, to, len) };
                    if to_device {
                        self.stats.to_device(len);
                    } else {
                        self.stats.from_device(len);
                    }
                }
            }
        }
    }

    /// Check that `list` is mapped exactly as this layer mapped it for the device and `dir`: the whole
    /// list in order, its bus range (if any) live in the device's domain, every run live in the pool
    /// with this direction and its entries back to back filling it exactly. With `claim` every run is
    /// also marked for release, so nobody else can unmap it; on error every claim is undone. Returns
    /// whether the runs were mapped with `PRESERVE_UNWRITTEN`.
    /// A mapped list belongs to the device that mapped it.
    pub(super) fn check_list_device(&self, dev: &Device, list: &[SgEntry<'_>]) -> Result<(), DmaError> {
        match list.first() {
            Some(e) if e.tag.list != 0 && e.tag.device != dev.serial => {
                self.stats.fail(FailureKind::Mismatch);
                Err(DmaError::WrongDevice { owner: e.tag.device, given: dev.serial })
            }
            _ => Ok(()),
        }
    }

    pub(super) fn check_runs(
        &self,
        view: &View,
        list: &[SgEntry<'_>],
        dir: DmaDirection,
        claim: bool,
    ) -> Result<bool, DmaError> {
        let mut claimed = 0; // entries [0, claimed) hold every claim made
        let result = self.walk_runs(view, list, dir, claim, &mut claimed);
        if result.is_err() {
            if claim {
                self.unclaim(list, claimed);
            }
            match result {
                Err(DmaError::SgListState { .. }) | Err(DmaError::UnknownMapping(_)) => {
                    self.stats.fail(FailureKind::UnknownMapping)
                }
                _ => self.stats.fail(FailureKind::Mismatch),
            };
        }
        result
    }

    pub(super) fn walk_runs(
        &self,
        view: &View,
        list: &[SgEntry<'_>],
        dir: DmaDirection,
        claim: bool,
        claimed: &mut usize,
    ) -> Result<bool, DmaError> {
        /// The run being walked: where its next entry must start and where it ends (pool offsets).
        struct Cursor {
            pool: u8,
            next: u64,
            end: u64,
            len: usize,
        }
        let close = |run: &mut Option<Cursor>| match run.take() {
            Some(c) if c.next != c.end => {
                Err(DmaError::SizeMismatch { mapped: c.len, given: c.len - (c.end - c.next) as usize })
            }
            _ => Ok(()),
        };
        let not_mapped = DmaError::SgListState { mapped: false };
        let Some(tag) = list.first().map(|e| e.tag) else { return Err(not_mapped) };
        if tag.list == 0 || tag.count != list.len() {
            return Err(not_mapped);
        }
        if let Some((start, len)) = tag.range {
            let slot = view.domain.and_then(|d| self.slot_cold(d)).ok_or(not_mapped)?;
            let found = slot.space.lock().find(start);
            if !found.is_some_and(|r| r.start == start && r.len == len && r.kind == RangeKind::SgList) {
                return Err(DmaError::UnknownMapping(BusAddr(start)));
            }
        }
        let mut run: Option<Cursor> = None;
        let mut preserve = false;
        for (i, e) in list.iter().enumerate() {
            if e.tag != (ListTag { index: i, ..tag }) {
                return Err(not_mapped);
            }
            let len = e.src.len() as u64;
            match e.place {
                Place::Unmapped | Place::Pending { .. } => return Err(not_mapped),
                Place::Direct { .. } | Place::P2pBus { .. } | Place::Window { .. } => close(&mut run)?,
                Place::Bounced { bus, pool, pool_off, run: Some(head), .. } => {
                    close(&mut run)?;
                    if !view.pools.iter().any(|p| p == pool as usize) {
                        return Err(DmaError::UnknownMapping(bus));
                    }
                    let p = self.pools.get(pool as usize).ok_or(not_mapped)?;
                    let key = pool_off.checked_sub(head.lead as u64).ok_or(not_mapped)?;
                    let rec = p.lookup_sg(key, claim).ok_or(DmaError::UnknownMapping(bus))?;
                    if claim {
                        *claimed = i + 1;
                    }
                    if rec.dir != dir {
                        return Err(DmaError::DirectionMismatch { mapped: rec.dir, given: dir });
                    }
                    if rec.nslots != head.nslots as usize || rec.len < head.lead as usize {
                        return Err(not_mapped);
                    }
                    let data = rec.len - head.lead as usize;
                    if len > data as u64 {
                        return Err(DmaError::SizeMismatch { mapped: data, given: len as usize });
                    }
                    preserve |= rec.attrs.contains(DmaAttrs::PRESERVE_UNWRITTEN);
                    run = Some(Cursor { pool, next: pool_off + len, end: key + rec.len as u64, len: data });
                }
                Place::Bounced { pool, pool_off, run: None, .. } => match &mut run {
                    Some(c) if c.pool == pool && c.next == pool_off && c.next + len <= c.end => c.next += len,
                    _ => return Err(not_mapped),
                },
            }
        }
        close(&mut run)?;
        Ok(preserve)
    }
}

/// What `list_op` does with a list once checked.
#[derive(Clone, Copy)]
enum ListOp {
    /// Unmap it, with these attributes.
    Unmap(DmaAttrs),
    /// Sync it for the CPU.
    ForCpu,
    /// Sync it for the device.
    ForDevice,
}
