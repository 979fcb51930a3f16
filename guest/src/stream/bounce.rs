//! Bounce runs: a run of pool slots placed so the bits the device needs are preserved, filled per
//! direction at map, copied back once at unmap.

use core::sync::atomic::Ordering;

use crate::addr::{BusAddr, DmaMask};
use crate::device::{Device, DeviceConfig};
use crate::direction::{DmaAttrs, DmaDirection};
use crate::error::DmaError;
use crate::growth::live::{Candidates, LivePools};
use crate::layer::DmaLayer;
use crate::platform::Platform;
use crate::pool::{BouncePool, NewHead, Owner, RunRequest, SlotRecord};
use crate::pool_set::PoolOrder;
use crate::stats::{should_warn, FailureKind, Stats};

use super::placement::{Placement, Rule};
use super::{MapRequest, Mapped, Original, PoolAt, RunWord};

/// How a strict bounce run is placed in its pool ([`DmaLayer::bounce_in_view`]; a run in slots,
/// where a mapping of a page or more starts on a page as SWIOTLB does, is [`DmaLayer::bounce_map`]'s).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RunAlign {
    /// Strict IOMMU mappings: whole IOMMU pages of this size, the padding around the data zeroed, so
    /// no page the device can reach holds another mapping's bytes.
    IommuPages(u64),
}

/// A slot run just allocated and filled by `bounce_alloc`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BounceRun {
    /// Pool index.
    pub pool: usize,
    /// Global index of the head slot.
    pub index: usize,
    /// Pool offset of the run.
    pub run_off: usize,
    /// Offset of the data inside the run.
    pub data_off: usize,
    /// Bytes of the run.
    pub run_len: usize,
}

/// Where a map starts looking when the platform names no CPU ([`Platform::cpu_hint`] `None`):
/// a slot of the caller's stack address (each thread has its own stack, and a thread's own maps find
/// it at the same depth, so a lone thread keeps to one cache-hot area, whichever device it maps
/// for). Threads on neighbouring stacks start in different areas (`stats::stack_slot`), and do not
/// wait on one lock, as with a CPU hint. Only a hint: any area is correct.
#[inline(always)]
pub(crate) fn area_hint() -> usize {
    let probe = 0u8;
    crate::stats::stack_slot(core::ptr::addr_of!(probe).addr())
}

impl<'m, P: Platform, const POOLS: usize, const DOMAINS: usize, const AREAS: usize>
    DmaLayer<'m, P, POOLS, DOMAINS, AREAS>
{
    /// Bounce into one of the pools `view` offers a map with `mask` (reserve pools too while
    /// growth runs); the bus address is the pool's place in `view`, the device's view. A run in
    /// slots: what [`Self::bounce_in_view`] does for it, written for this case alone (plain and
    /// premapped maps, the hot path): no IOMMU-page arithmetic, the run's place and the bus address
    /// worked out once, the failure's report out of line. The raw faces' and the routes' copy, the
    /// request by value (the shortest code where the layer's calls are inlined into one, as C's).
    /// Never inline: its body is `bounce_map_in`'s, which each caller would otherwise copy (the
    /// kernels' route and `iommu_map`, ~2 KiB each per platform).
    #[allow(clippy::too_many_arguments)]
    #[inline(never)]
    pub(crate) fn bounce_map(
        &self,
        dev: &Device,
        view: &LivePools<POOLS>,
        mask: Option<DmaMask>,
        orig: Original,
        len: usize,
        dir: DmaDirection,
        attrs: DmaAttrs,
    ) -> Result<Mapped, DmaError> {
        self.bounce_map_in(dev, view, mask, &MapRequest { orig, len, dir, attrs })
    }

    /// [`Self::bounce_map`] for the safe face's first attempt (`map_original_inline`), the request
    /// by reference: built once in the caller's frame, not copied into this call's arguments.
    #[inline(never)]
    pub(crate) fn bounce_map_req(
        &self,
        dev: &Device,
        view: &LivePools<POOLS>,
        mask: Option<DmaMask>,
        req: &MapRequest,
    ) -> Result<Mapped, DmaError> {
        self.bounce_map_in(dev, view, mask, req)
    }

    /// The body of both.
    #[inline(always)]
    fn bounce_map_in(
        &self,
        dev: &Device,
        view: &LivePools<POOLS>,
        mask: Option<DmaMask>,
        req: &MapRequest,
    ) -> Result<Mapped, DmaError> {
        let MapRequest { orig, len, dir, attrs } = *req;
        // Reserve pools too while growth runs.
        let reserve = self.growth.growing.load(Ordering::Relaxed);
        let mut pools = view.candidates(mask, reserve);
        let orig_addr = orig.phys.map_or(orig.cpu as u64, |p| p.0);
        let mut largest = 0;
        while let Some(i) = pools.next() {
            let Some(pool) = self.pools.get_for_alloc(i) else { continue };
            let slot = pool.slot_size();
            let (seg, phys) = (pool.max_mapping() as u64, pool.phys().0);
            // The device's rules for this pool's geometry, worked out at attach; else the general
            // route (a pool of another geometry).
            let Rule { offset, max_run, align_mask, align_bits } =
                dev.place.lookup(slot as u64, seg, phys, len, orig_addr).unwrap_or_else(|| {
                    Rule::general(dev.config.min_align_mask, slot as u64, seg, phys, None, len, orig_addr)
                });
            let room = max_run.saturating_sub(offset);
            largest = largest.max(room);
            // Longer than any run of this pool (checked before any arithmetic on `len`).
            if len > room {
                continue;
            }
            let total = offset + len;
            let nslots = total.div_ceil(slot);
            if nslots * slot > max_run.max(slot) {
                continue;
            }
            let req = RunRequest { nslots, align_mask, align_bits };
            let owner = Owner { device: dev.serial, safe: orig.safe };
            let head = NewHead { offset, len, dir, attrs, orig: orig.cpu, owner };
            let cpu = self.platform.cpu_hint().unwrap_or_else(area_hint);
            // Counted by the pool, map and bytes in, under the area lock the allocation takes
            // anyway; in the device's home pool among its live mappings too.
            let home = dev.home.counts_pool(i, pool.areas());
            let Some(index) = pool.alloc_counted(req, head, cpu, true, home.then_some(&dev.home_live)) else {
                continue;
            };
            if home {
                dev.mapped_at_home(pool.areas());
            }
            let run_off = index << slot.trailing_zeros();
            let data = run_off + offset;
            self.fill_slot(pool.cpu_at(data), orig.cpu, len, dir, attrs, false);
            // The pool cannot be removed while the run lives, so where the device's view puts it now
            // is right: the base read with the pool if the view has not changed since, else read again.
            let Some(base) = pools.base(i, run_off, nslots * slot) else {
                pool.free_unmapped(index, nslots, &dev.home_live);
                return Err(self.lost_view(len));
            };
            let at = PoolAt { pool: i as u8, off: data as u64 };
            return Ok(Mapped { bus: BusAddr(base.0 + data as u64), run: RunWord::new(at, home) });
        }
        Err(self.bounce_refused(dev, len, largest, attrs))
    }

    /// A run placed in a pool the device's view no longer offers (a torn read of the view): freed by
    /// the caller, counted as an exhaustion.
    #[cold]
    fn lost_view(&self, len: usize) -> DmaError {
        self.stats.fail(FailureKind::PoolExhausted);
        DmaError::PoolExhausted { len }
    }

    /// A run placed per `align` in one of the pools `view` offers (see [`Self::bounce_map`]), filled,
    /// and its pool's base in `view`. The pools are read in place as they are tried
    /// ([`LivePools::candidates`]), no copy of the view. The one caller of [`Self::bounce_alloc`].
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn bounce_in_view(
        &self,
        dev: &Device,
        view: &LivePools<POOLS>,
        mask: Option<DmaMask>,
        reserve: bool,
        orig: Original,
        len: usize,
        dir: DmaDirection,
        attrs: DmaAttrs,
        align: RunAlign,
    ) -> Result<(BounceRun, BusAddr), DmaError> {
        let mut pools = view.candidates(mask, reserve);
        let run = self.bounce_alloc(dev, &mut pools, orig, len, dir, attrs, align)?;
        // The pool cannot be removed while the run lives, so where the device's view puts it now is
        // right: the base read with the pool if the view has not changed since, else read again.
        let Some(base) = pools.base(run.pool, run.run_off, run.run_len) else {
            if let Some(pool) = self.pools.get(run.pool) {
                pool.free_unmapped(run.index, run.run_len / pool.slot_size(), &dev.home_live);
            }
            return Err(self.lost_view(len));
        };
        Ok((run, base))
    }

    /// Allocate a slot run in the first of `pools` (one view's, read in place) that has one and fill
    /// it per direction.
    ///
    /// The run ([`RunAlign::IommuPages`], strict IOMMU mappings) starts on an IOMMU page and covers
    /// whole IOMMU pages, the bytes around the data zeroed, so no page the device can reach holds
    /// another mapping's bytes or stale pool data.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    fn bounce_alloc(
        &self,
        dev: &Device,
        pools: &mut Candidates<'_, POOLS>,
        orig: Original,
        len: usize,
        dir: DmaDirection,
        attrs: DmaAttrs,
        align: RunAlign,
    ) -> Result<BounceRun, DmaError> {
        let RunAlign::IommuPages(page) = align;
        let min_align = dev.config.min_align_mask;
        let orig_addr = orig.phys.map_or(orig.cpu as u64, |p| p.0);
        let mut largest = 0;
        for i in pools {
            let Some(pool) = self.pools.get_for_alloc(i) else { continue };
            let slot = pool.slot_size() as u64;
            let seg = pool.max_mapping() as u64;
            let phys = pool.phys().0;
            let rule = Rule::general(min_align, slot, seg, phys, Some(page), len, orig_addr);
            let Rule { offset, max_run, align_mask, align_bits } = rule;
            largest = largest.max(max_run.saturating_sub(offset));
            // Longer than any run of this pool: skip before any arithmetic on `len` can overflow.
            if len > max_run {
                continue;
            }
            let Some(total) = offset.checked_add(len) else { continue };
            let run_bytes = total.next_multiple_of(page as usize);
            let nslots = run_bytes.div_ceil(slot as usize);
            if nslots * slot as usize > max_run.max(slot as usize) || total > max_run {
                continue;
            }
            let req = RunRequest { nslots, align_mask, align_bits };
            let owner = Owner { device: dev.serial, safe: orig.safe };
            let head = NewHead { offset, len, dir, attrs, orig: orig.cpu, owner };
            let cpu = self.platform.cpu_hint().unwrap_or_else(area_hint);
            // Strict runs are counted on the layer's shards (`fill_slot`), and on the device.
            let Some(index) = pool.alloc_counted(req, head, cpu, false, None) else { continue };
            let run_off = index << pool.slot_size().trailing_zeros();
            let run_len = nslots * slot as usize;
            self.fill_slot(pool.cpu_at(run_off + offset), orig.cpu, len, dir, attrs, true);
            // SAFETY: `[run_off, run_off + run_len)` is the run just allocated, ours alone.
            unsafe {
                core::ptr::write_bytes(pool.cpu_at(run_off), 0, offset);
                core::ptr::write_bytes(pool.cpu_at(run_off + offset + len), 0, run_len - offset - len);
            }
            return Ok(BounceRun { pool: i, index, run_off, data_off: offset, run_len });
        }
        Err(self.bounce_refused(dev, len, largest, attrs))
    }

    /// The error of a bounce that no pool could place (`largest`: the longest run any of them
    /// offered), counted and warned about unless growth will try again. The work is in
    /// [`refused_error`], generic over the pool count only: one copy whatever the platform type.
    #[inline(always)]
    fn bounce_refused(&self, dev: &Device, len: usize, largest: usize, attrs: DmaAttrs) -> DmaError {
        refused_error(&self.stats, self.growth_will_retry(len), dev.config.id, len, largest, attrs)
    }

    /// Initialise a freshly allocated slot run: the original for data going to the device, zeroes (or
    /// the original, on request) for data coming from it, so neither stale pool data can reach the guest
    /// nor private bytes the host. `count`: add the bytes copied to the statistics (a run its pool
    /// counted has them counted already).
    pub(crate) fn fill_slot(
        &self,
        slot: *mut u8,
        orig: *mut u8,
        len: usize,
        dir: DmaDirection,
        attrs: DmaAttrs,
        count: bool,
    ) {
        let copy = dir.fills_by_copy(attrs);
        if !copy && self.leaves_stale_slot(dir) {
            return;
        }
        if copy {
            // SAFETY: `orig` is valid for `len` bytes (map contract); the slot run is ours alone and
            // holds `len` bytes from `slot`; pool memory never overlaps a caller's buffer.
            unsafe { core::ptr::copy_nonoverlapping(orig, slot, len) };
            if count {
                self.stats.to_device(len);
            }
        } else {
            // SAFETY: as above, for the slot run.
            unsafe { core::ptr::write_bytes(slot, 0, len) };
        }
    }

    /// Copy `[offset, offset + len)` of a mapping from shared memory to the original: one pass, so
    /// the guest reads each shared byte once, whatever the device does meanwhile.
    pub(crate) fn copy_to_original(
        &self,
        pool: &BouncePool<'_, AREAS>,
        rec: &SlotRecord,
        offset: usize,
        len: usize,
    ) {
        let slot = pool.cpu_at((rec.index << pool.slot_size().trailing_zeros()) + rec.offset + offset);
        // SAFETY: the original is valid for writes of `rec.len` bytes until unmap (map contract) and
        // `offset + len <= rec.len`; the run is live and ours.
        unsafe { core::ptr::copy_nonoverlapping(slot, rec.orig.add(offset), len) };
        self.stats.from_device(len);
    }
}

// In this file rather than placement.rs: `device` imports `Placement`, so placement.rs imports
// nothing that imports `device` (scripts/import-cycles.py).
impl<P: Platform + ?Sized, const POOLS: usize, const DOMAINS: usize, const AREAS: usize>
    DmaLayer<'_, P, POOLS, DOMAINS, AREAS>
{
    /// A device's placement rules for the geometry of the first pool of `pools` (at attach).
    pub(crate) fn placement(&self, config: &DeviceConfig, pools: &PoolOrder) -> Placement {
        let first = pools.iter().find_map(|i| self.pools.get(i));
        first.map_or(Placement::default(), |p| {
            Placement::new(config.min_align_mask, p.slot_size() as u64, p.max_mapping() as u64)
        })
    }
}

/// [`DmaLayer::bounce_refused`]'s body: the error, counted and warned about unless growth will try
/// again (`will_retry`: it counts the failure if it stays one).
#[cold]
#[inline(never)]
fn refused_error<const POOLS: usize>(
    stats: &Stats<POOLS>,
    will_retry: bool,
    dev_id: u32,
    len: usize,
    largest: usize,
    attrs: DmaAttrs,
) -> DmaError {
    if will_retry {
        return if largest < len {
            DmaError::TooLarge { len, max: largest }
        } else {
            DmaError::PoolExhausted { len }
        };
    }
    if largest < len {
        stats.fail(FailureKind::TooLarge);
        return DmaError::TooLarge { len, max: largest };
    }
    let n = stats.fail(FailureKind::PoolExhausted);
    if !attrs.contains(DmaAttrs::NO_WARN) && should_warn(n) {
        log::warn!(
            "ccdma: bounce pool exhausted mapping {len} bytes for device {dev_id:#x} ({n} failures so far)"
        );
    }
    DmaError::PoolExhausted { len }
}
