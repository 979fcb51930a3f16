//! `BouncePool`: the areas of one pool of shared memory, allocation across them, and the records.

use super::area::*;
use super::dev_live::AreaLive;
use super::front::class_bit;
use super::*;

/// A pool of shared bounce memory, of at most `AREAS` areas (1..=[`MAX_AREAS`]; the layer's
/// capacity, see [`crate::DmaLayer`]): each area is a cache line or more of lock and counters, so a
/// small firmware layer holds fewer.
pub struct BouncePool<'m, const AREAS: usize = MAX_AREAS> {
    pub(super) phys: PhysAddr,
    pub(super) cpu: NonNull<u8>,
    pub(super) len: usize,
    pub(super) nslots: usize,
    pub(super) slot_shift: u32,
    pub(super) max_run: usize,
    pub(super) area_slots: usize,
    /// log2 of `area_slots` when a power of two (see [`shift_of`]).
    pub(super) area_shift: u32,
    pub(super) area_count: usize,
    /// `area_count` rounded up to a power of two, less one (all ones for no area): a CPU number
    /// to its area without a division ([`Self::area_of_cpu`]).
    pub(super) area_mask: usize,
    pub(super) areas: [Area<'m>; AREAS],
    /// Where the last allocation that had to move on found room (written only then).
    pub(super) next_area: AtomicUsize,
}

/// A caller's claim on a mapping, checked against its record by the pool under the area lock
/// ([`BouncePool::release_or_free_claimed`]): what `check_record` checks.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Claim {
    /// The claiming device's serial.
    pub device: u32,
    /// The safe face ([`crate::Mapping`]) or the raw one.
    pub safe: bool,
    /// Bytes mapped.
    pub len: usize,
    /// Direction mapped.
    pub dir: DmaDirection,
    /// Copy device writes back (no `SKIP_CPU_SYNC`).
    pub sync: bool,
}

/// What [`BouncePool::release_or_free`] did with a mapping it found.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Taken {
    /// The run is free again (nothing had to be copied out of it first). No copy of the record:
    /// the caller's check saw it, and nothing is left to do with it. `counted`: a run its pool
    /// counted ([`COUNTED`]), the unmap counted already; `dev`: its device's live count
    /// ([`AreaLive`]) taken down already.
    Freed { counted: bool, dev: bool },
    /// The head is released (as by `lookup(.., true)`): copy out of the run, then [`BouncePool::free`].
    /// Its device's live count is taken down already when `dev_counted`.
    Released(SlotRecord),
}

// SAFETY: the CPU pointer names memory the pool owns for its whole life (the caller handed it over at
// construction); every slot run is written by the one holder of its allocation, and the metadata is
// behind the area locks.
unsafe impl<const AREAS: usize> Send for BouncePool<'_, AREAS> {}
// SAFETY: as above; shared access goes through the area locks and atomics.
unsafe impl<const AREAS: usize> Sync for BouncePool<'_, AREAS> {}

impl<'m, const AREAS: usize> BouncePool<'m, AREAS> {
    /// A pool of no slots: the value a pool is built in place from ([`Self::init`]). A `const fn`
    /// of constant parts, so the optimiser writes it straight into its destination.
    pub(crate) const fn empty() -> BouncePool<'m, AREAS> {
        const { assert!(AREAS >= 1 && AREAS <= MAX_AREAS, "a pool has 1..=MAX_AREAS areas") };
        BouncePool {
            phys: PhysAddr(0),
            cpu: NonNull::dangling(),
            len: 0,
            nslots: 0,
            slot_shift: 0,
            max_run: 0,
            area_slots: 0,
            area_shift: 0,
            area_count: 0,
            area_mask: 0,
            areas: [const { Area::empty() }; AREAS],
            next_area: AtomicUsize::new(0),
        }
    }

    /// Build a pool over memory the caller has already shared (see `DmaLayer::add_pool`, which shares),
    /// by value. The layer builds its pools in place ([`Self::init`]): a pool is ~2.4 KiB.
    ///
    /// # Safety
    /// As [`Self::init`].
    #[cfg(test)]
    pub(crate) unsafe fn new(
        phys: PhysAddr,
        cpu: NonNull<u8>,
        len: usize,
        meta: &'m mut [SlotMeta],
        cfg: PoolConfig,
    ) -> Result<BouncePool<'m, AREAS>, DmaError> {
        let mut pool = Self::empty();
        // SAFETY: the caller keeps `init`'s contract.
        unsafe { pool.init(phys, cpu, len, meta, cfg) }?;
        Ok(pool)
    }

    /// Make `self` (an [`Self::empty`] pool, or one whose memory is given up) a pool over memory the
    /// caller has already shared, in place: no pool-sized temporary. On error `self` is unchanged.
    ///
    /// # Safety
    /// `cpu` must point to `len` bytes that stay valid, and are used by nothing else, for `'m`.
    pub(crate) unsafe fn init(
        &mut self,
        phys: PhysAddr,
        cpu: NonNull<u8>,
        len: usize,
        meta: &'m mut [SlotMeta],
        cfg: PoolConfig,
    ) -> Result<(), DmaError> {
        cfg.validate()?;
        if !phys.is_page_aligned() || len == 0 || len as u64 % PAGE_SIZE != 0 {
            return Err(DmaError::Unaligned { addr: phys.0 | len as u64, align: PAGE_SIZE });
        }
        // A power of two (validated): a shift, no divide.
        let nslots = len >> cfg.slot_size.trailing_zeros();
        if nslots == 0 {
            return Err(DmaError::PoolTooSmall { len, slot_size: cfg.slot_size });
        }
        let provided = meta.len();
        let Some(meta) = meta.get_mut(..nslots) else {
            return Err(DmaError::MetadataTooSmall { needed: nslots, provided });
        };
        // Areas are whole segments so no run crosses an area either. (`max(1)`: both are at least
        // 1 after `validate`; said again so no divide can see a zero.)
        let max_run = cfg.max_run_slots.max(1);
        let segs = nslots.div_ceil(max_run);
        let area_count = cfg.areas.min(AREAS).min(segs).max(1);
        let area_slots = segs.div_ceil(area_count) * max_run;
        let mut rest = meta;
        let mut count = 0;
        for area in self.areas.iter_mut() {
            let take = area_slots.min(rest.len());
            let (head, tail) = core::mem::take(&mut rest).split_at_mut(take);
            rest = tail;
            let st =
                if head.is_empty() { AreaState::empty() } else { AreaState::new(head, cfg.max_run_slots) };
            if st.len() != 0 {
                count += 1;
            }
            area.summary.store(st.summary(), Ordering::Relaxed);
            area.high.store(0, Ordering::Relaxed);
            area.live.store(0, Ordering::Relaxed);
            area.maps.store(0, Ordering::Relaxed);
            area.to_device.store(0, Ordering::Relaxed);
            *area.state.get_mut() = st;
        }
        self.phys = phys;
        self.cpu = cpu;
        self.len = len;
        self.nslots = nslots;
        self.slot_shift = cfg.slot_size.trailing_zeros();
        self.max_run = cfg.max_run_slots;
        self.area_slots = area_slots;
        self.area_shift = shift_of(area_slots);
        self.area_count = count;
        self.area_mask = usize::MAX.checked_shr(count.wrapping_sub(1).leading_zeros()).unwrap_or(0);
        *self.next_area.get_mut() = 0;
        Ok(())
    }

    /// The area holding global slot `index` and `index`'s position inside it (`None` past the
    /// pool's slots).
    fn area_at(&self, index: usize) -> Option<(&Area<'m>, usize)> {
        self.area_numbered(index).map(|(_, area, i)| (area, i))
    }

    /// [`Self::area_at`] with the area's number.
    #[inline(always)]
    fn area_numbered(&self, index: usize) -> Option<(usize, &Area<'m>, usize)> {
        if index >= self.nslots {
            return None;
        }
        let a = div(index, self.area_slots, self.area_shift);
        Some((a, self.areas.get(a)?, rem(index, self.area_slots, self.area_shift)))
    }

    /// The areas in use.
    fn used_areas(&self) -> impl Iterator<Item = &Area<'m>> {
        self.areas.iter().take(self.area_count)
    }

    /// First physical address.
    pub fn phys(&self) -> PhysAddr {
        self.phys
    }
    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Always false: a pool has at least one page.
    pub fn is_empty(&self) -> bool {
        false
    }
    /// Bytes per slot.
    pub fn slot_size(&self) -> usize {
        1 << self.slot_shift
    }
    /// Number of slots.
    pub fn slots(&self) -> usize {
        self.nslots
    }
    /// Largest run one mapping can take, in bytes.
    pub fn max_mapping(&self) -> usize {
        self.max_run << self.slot_shift
    }
    /// Slots allocated now (each area's count read under its lock, one area at a time).
    pub fn slots_in_use(&self) -> usize {
        self.used_areas().map(|a| a.used()).sum()
    }
    /// Most slots ever allocated at once: the sum of each area's own peak, kept per area so no map
    /// touches a line every CPU shares. Exact with one area; with several an upper bound (the areas
    /// may have peaked at different times).
    pub fn high_water(&self) -> usize {
        self.used_areas().map(|a| a.high.load(Ordering::Relaxed) as usize).sum()
    }
    /// Number of areas (locks).
    pub fn areas(&self) -> usize {
        self.area_count
    }
    /// True when `[phys, phys + len)` lies inside the pool.
    pub fn contains_phys(&self, phys: PhysAddr, len: usize) -> bool {
        phys.0 >= self.phys.0 && phys.0 - self.phys.0 <= (self.len - len.min(self.len)) as u64
    }

    /// CPU pointer to byte `off` of the pool.
    pub(crate) fn cpu_at(&self, off: usize) -> *mut u8 {
        debug_assert!(off <= self.len);
        // SAFETY: `off` is inside the pool (callers derive it from a live run), so the result stays in
        // the allocation the pointer came from.
        unsafe { self.cpu.as_ptr().add(off) }
    }

    pub(crate) fn index_of_offset(&self, off: u64) -> usize {
        (off >> self.slot_shift) as usize
    }

    /// Benchmark hook (not an API): allocate a run of `nslots` slots whose address is a multiple of
    /// `align_slots` slots (a power of two), recorded for no device (serial 0, which no device has), so
    /// no face can unmap or sync it. Lets `tests/benches/pool.rs` time the allocator alone, beside
    /// other allocators, without copying bytes. Returns the head's global index.
    #[doc(hidden)]
    pub fn bench_alloc(&self, nslots: usize, align_slots: usize) -> Option<usize> {
        let span = (align_slots.max(1) as u64).checked_mul(1 << self.slot_shift)?;
        let align_mask = span - 1;
        let align_mask = align_mask & !((1u64 << self.slot_shift) - 1);
        let req = RunRequest { nslots, align_mask, align_bits: self.phys.0 & align_mask };
        let owner = Owner { device: 0, safe: false };
        let head = NewHead {
            offset: 0,
            len: nslots << self.slot_shift,
            dir: DmaDirection::ToDevice,
            attrs: DmaAttrs::NONE,
            orig: core::ptr::null_mut(),
            owner,
        };
        self.alloc_tagged(req, head, BENCH_RUN)
    }

    /// Benchmark hook (not an API): free a run [`Self::bench_alloc`] returned; false (and nothing
    /// changed) for any other index. One lock, as [`Self::release_or_free`].
    #[doc(hidden)]
    pub fn bench_free(&self, index: usize) -> bool {
        let Some((area, i)) = self.area_at(index) else { return false };
        let mut st = area.state.lock();
        let Some(head) = st.meta.get(i) else { return false };
        if head.state() != HEAD || head.attrs != BENCH_RUN || head.owner != 0 {
            return false;
        }
        let n = head.nslots as usize;
        self.free_locked(area, &mut st, i, n);
        true
    }

    /// Allocate a run and record the mapping in its head slot. Returns the head's global index.
    pub(crate) fn alloc(&self, req: RunRequest, head: NewHead) -> Option<usize> {
        let bits = head.attrs.bits() | if head.owner.safe { SAFE_FACE } else { 0 };
        self.alloc_tagged(req, head, bits)
    }

    /// [`Self::alloc_near`] for a scatter-gather run: `offset`/`len` span the packed segments; the
    /// originals are recorded in the list itself.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn alloc_sg(
        &self,
        req: RunRequest,
        offset: usize,
        len: usize,
        dir: DmaDirection,
        attrs: DmaAttrs,
        device: u32,
        cpu: usize,
    ) -> Option<usize> {
        let owner = Owner { device, safe: false };
        let head = NewHead { offset, len, dir, attrs, orig: core::ptr::null_mut(), owner };
        self.alloc_from(req, head, attrs.bits() | SG_RUN, Some(self.area_of_cpu(cpu)), None)
    }

    fn alloc_tagged(&self, req: RunRequest, new: NewHead, attr_bits: u8) -> Option<usize> {
        self.alloc_from(req, new, attr_bits, None, None)
    }

    /// Allocate, trying area `first` first (else where the last allocation that moved on found room);
    /// with `live`, the run is counted there for its device ([`AreaLive`]). Callers go through
    /// [`Self::alloc_from`] (`once.rs`), which takes the default capacity's copy in ccdma.
    #[inline(always)]
    pub(super) fn alloc_from_any(
        &self,
        req: RunRequest,
        new: NewHead,
        attr_bits: u8,
        first: Option<usize>,
        live: Option<&AreaLive>,
    ) -> Option<usize> {
        let n = req.nslots;
        if n == 0 || n > self.max_run {
            return None;
        }
        let (Ok(offset), Ok(len)) = (u32::try_from(new.offset), u32::try_from(new.len)) else { return None };
        let count = self.area_count;
        let start =
            first.unwrap_or_else(|| self.next_area.load(Ordering::Relaxed)).min(count.checked_sub(1)?);
        // The common case in a few loads: the first area from the start (a CPU's own, or where
        // the last allocation that moved on found room; with a CPU named, that area only) whose
        // published mask lists a run of exactly `n`, when that run's start meets the alignment and
        // the area's lock is free. Anything else: `alloc_search`, unless no area has room for `n`
        // (its longest run, or a bound of it while its front lists runs): then the request is
        // refused here, one load per area and no lock.
        let bit = class_bit(n);
        let tries = if first.is_some() { 1 } else { count };
        let mut listing = None;
        if bit != 0 {
            let mut a = start;
            for _ in 0..tries {
                let Some(area) = self.areas.get(a) else { break };
                if area.summary.load(Ordering::Relaxed) & bit != 0 {
                    listing = Some(a);
                    break;
                }
                a = if a + 1 == count { 0 } else { a + 1 };
            }
        }
        let mut listed = None;
        if let Some(area) = listing.and_then(|a| self.areas.get(a)) {
            if let Some(mut st) = area.state.try_lock() {
                let a = listing.unwrap_or(0);
                if let Some(i) = st.front_pop(n, self.aligned(a * self.area_slots, req)) {
                    listed = Some((a, st, i));
                }
            }
        }
        let (a, mut st, i) = match listed {
            Some(got) => got,
            None if listing.is_none()
                && !self
                    .areas
                    .iter()
                    .take(count)
                    .any(|area| (area.summary.load(Ordering::Relaxed) & 0xffff) as usize >= n) =>
            {
                return None
            }
            None => self.alloc_search(req, first, start)?,
        };
        let area = self.areas.get(a)?;
        let head = st.meta.get_mut(i)?;
        head.state_dir = HEAD | (new.dir as u8) << 4;
        head.nslots = n as u16;
        head.offset = offset;
        head.len = len;
        head.owner = new.owner.device;
        head.attrs = attr_bits | if live.is_some() { DEV_COUNTED } else { 0 };
        head.orig = new.orig as usize;
        if let Some(live) = live {
            live.up(a, &st);
        }
        if attr_bits & COUNTED != 0 {
            area.count_map(&st, if new.dir.fills_by_copy(new.attrs) { new.len } else { 0 });
        }
        area.publish(&st, n, 0);
        Some(a * self.area_slots + i)
    }

    /// [`Self::alloc_from`] past its common case (which looked for a front listing `n` already):
    /// each area's front, then its tree. The area taken from, its lock held, and the run's index
    /// in it.
    fn alloc_search(
        &self,
        req: RunRequest,
        first: Option<usize>,
        start: usize,
    ) -> Option<(usize, spin::MutexGuard<'_, AreaState<'m>>, usize)> {
        let n = req.nslots;
        // Start where the last allocation that had to move on found room: a lone CPU keeps reusing
        // the same (cache-hot) area; CPUs that collide move on to other areas. An area whose
        // longest free run (or its bound while the front lists runs) is too short is skipped
        // without its lock; in the others, a run of exactly `n` from the front if its start is
        // aligned, else the tree. The first pass skips areas another CPU holds, the second waits,
        // and flushes an area's front into its tree before it gives the area up.
        let count = self.area_count;
        // Whether the second pass has anything to do: an area the first skipped because another
        // CPU held it, or whose tree failed while its front held runs.
        let mut again = false;
        for wait in [false, true] {
            if wait && !again {
                break;
            }
            for k in 0..count {
                let a = if start + k >= count { start + k - count } else { start + k };
                let Some(area) = self.areas.get(a) else { continue };
                if ((area.summary.load(Ordering::Relaxed) & 0xffff) as usize) < n {
                    continue;
                }
                let guard = if wait { Some(area.state.lock()) } else { area.state.try_lock() };
                let Some(mut st) = guard else {
                    again = true;
                    continue;
                };
                let base = a * self.area_slots;
                if st.lists(n) {
                    if let Some(i) = st.front_pop(n, self.aligned(base, req)) {
                        return Some((a, st, i));
                    }
                }
                let mut found = self.find_run(&st, base, req);
                // No tree can (this is the last pass): give this one the front's runs and look
                // again, so the front never refuses what the pool could give.
                again |= st.cached() != 0;
                // A run of `n` plus the alignment's stride less one holds an aligned run of `n`.
                let want = n.saturating_add((req.align_mask >> self.slot_shift) as usize);
                if found.is_none() && wait && st.front_flush(want) {
                    found = self.find_run(&st, base, req);
                    if found.is_none() {
                        area.publish_outlined(&st);
                    }
                }
                let Some((i, run)) = found else { continue };
                st.take(i, n, run);
                if a != start && first.is_none() {
                    self.next_area.store(a, Ordering::Relaxed);
                }
                return Some((a, st, i));
            }
        }
        None
    }

    /// Whether a run at index `i` of the area at global slot `base` meets `req`'s alignment.
    fn aligned(&self, base: usize, req: RunRequest) -> impl Fn(usize) -> bool {
        let (phys, shift) = (self.phys.0, self.slot_shift);
        move |i| (phys + (((base + i) as u64) << shift)) & req.align_mask == req.align_bits
    }

    /// A run for `req` in the area at global slot `base` (area index, and the free run holding it).
    fn find_run(
        &self,
        area: &AreaState<'_>,
        base: usize,
        req: RunRequest,
    ) -> Option<(usize, (usize, usize))> {
        let n = area.len();
        // (`find` checks the longest run too, but only after the candidates' arithmetic below.)
        if n < req.nslots || area.top < req.nslots {
            return None;
        }
        // Candidate indices are those whose address matches the alignment bits: an arithmetic
        // progression with a stride of (align_mask + 1) / slot_size slots.
        // Attach bounds `min_align_mask` below 4 GiB, so this cannot overflow; refuse rather than wrap.
        let period = (req.align_mask.checked_add(1 << self.slot_shift)? >> self.slot_shift).max(1) as usize;
        let area_phys = self.phys.0 + ((base as u64) << self.slot_shift);
        let want = req.align_bits;
        // Index (inside the area) of the first candidate.
        let span = (period as u64) << self.slot_shift;
        let phase =
            if span.is_power_of_two() { area_phys & (span - 1) } else { area_phys.checked_rem(span)? };
        let first_addr = area_phys - phase + want;
        let first_addr = if first_addr < area_phys { first_addr + span } else { first_addr };
        let first = ((first_addr - area_phys) >> self.slot_shift) as usize;
        if first >= n {
            return None;
        }
        area.find(req.nslots, first, period)
    }

    /// Look up the live mapping whose head is at global slot `index` and whose data starts at pool
    /// offset `off`; with `release` the head is marked so no other caller can unmap or sync it.
    pub(crate) fn lookup(&self, off: u64, release: bool) -> Option<SlotRecord> {
        self.lookup_tagged(off, release, false)
    }

    /// [`Self::lookup`] for a scatter-gather run (see [`Self::alloc_sg`]).
    pub(crate) fn lookup_sg(&self, off: u64, release: bool) -> Option<SlotRecord> {
        self.lookup_tagged(off, release, true)
    }

    /// [`Self::lookup`] for a run whose data may start a slot or more into it (strict IOMMU runs
    /// start on an IOMMU page, the preserved `min_align_mask` bits below it going into the offset):
    /// the head is the slot at `run_off`.
    pub(crate) fn lookup_run(&self, run_off: u64, data_off: u64, release: bool) -> Option<SlotRecord> {
        self.lookup_at(self.index_of_offset(run_off), run_off.checked_add(data_off)?, release, false)
    }

    fn lookup_tagged(&self, off: u64, release: bool, sg: bool) -> Option<SlotRecord> {
        self.lookup_at(self.index_of_offset(off), off, release, sg)
    }

    #[inline(always)]
    pub(super) fn lookup_at_any(
        &self,
        index: usize,
        off: u64,
        release: bool,
        sg: bool,
    ) -> Option<SlotRecord> {
        let (area, i) = self.area_at(index)?;
        let mut st = area.state.lock();
        let rec = self.record_of(&st, index, i, off, sg)?;
        if release {
            st.meta.get_mut(i)?.set_state(RELEASING);
        }
        Some(rec)
    }

    /// The record of the live head at area index `i` (global `index`) whose data starts at pool
    /// offset `off`, of the face `sg` names.
    fn record_of(
        &self,
        st: &AreaState<'_>,
        index: usize,
        i: usize,
        off: u64,
        sg: bool,
    ) -> Option<SlotRecord> {
        let head = st.meta.get(i)?;
        if head.state() != HEAD
            || ((index as u64) << self.slot_shift) + u64::from(head.offset) != off
            || (head.attrs & SG_RUN != 0) != sg
        {
            return None;
        }
        Some(SlotRecord {
            index,
            nslots: head.nslots as usize,
            offset: head.offset as usize,
            len: head.len as usize,
            dir: DmaDirection::from_bits(head.dir())?,
            attrs: DmaAttrs::from_bits_truncate(head.attrs),
            orig: head.orig as *mut u8,
            owner: Owner { device: head.owner, safe: head.attrs & SAFE_FACE != 0 },
            counted: head.attrs & COUNTED != 0,
            dev_counted: head.attrs & DEV_COUNTED != 0,
        })
    }

    /// Unmap in one lock: look up the live (single-mapping) head at pool offset `off`, let `check`
    /// refuse it (nothing changes then), and free the run at once when `copy_back` says nothing has
    /// to be read out of it first; otherwise release the head as `lookup(off, true)` does, and the
    /// caller copies and then calls [`Self::free`] (the copy stays outside the lock). `None`: no
    /// such mapping. A run counted for its device ([`AreaLive`]) is taken off `live` (the device
    /// `check` accepted as its owner) either way.
    #[cfg(test)]
    pub(crate) fn release_or_free_for<E>(
        &self,
        off: u64,
        live: &AreaLive,
        check: impl FnOnce(&SlotRecord) -> Result<(), E>,
        copy_back: impl FnOnce(&SlotRecord) -> bool,
    ) -> Option<Result<Taken, E>> {
        self.take_at(self.index_of_offset(off), off, false, live, check, copy_back)
    }

    /// [`Self::release_or_free_for`] with the claim checked by the pool (`claim`: device, face, size
    /// and direction equal to the record's; copied out of unless `claim.sync` is false or the
    /// device does not write). Generic over the capacity alone, not the caller's platform: one copy
    /// of the unmap's lookup and free for every layer type. A refused record is handed back
    /// (`Err`) for the caller to name the mismatch.
    #[inline(never)]
    pub(crate) fn release_or_free_claimed(
        &self,
        off: u64,
        live: &AreaLive,
        claim: &Claim,
    ) -> Option<Result<Taken, SlotRecord>> {
        let index = self.index_of_offset(off);
        let (a, area, i) = self.area_numbered(index)?;
        let mut st = area.state.lock();
        let head = st.meta.get(i)?;
        // The common case read off the head, no record built: a live head of one mapping (not a
        // list's) at `off` whose owner, face, size and direction are the claim's.
        let face = if claim.safe { SAFE_FACE } else { 0 };
        let ok = head.state_dir == HEAD | (claim.dir as u8) << 4
            && head.attrs & (SG_RUN | SAFE_FACE) == face
            && head.owner == claim.device
            && head.len as usize == claim.len
            && ((index as u64) << self.slot_shift) + u64::from(head.offset) == off;
        // The record is built for two cases only, in one place: a refused claim (handed back;
        // `None` when no live single-mapping head is at `off` at all) and a run to copy out of.
        let (nslots, attrs) = (head.nslots as usize, head.attrs);
        // The device's count taken down for a claim that holds, either way it ends.
        let dev = ok && live.down_if_counted(a, attrs & DEV_COUNTED != 0, &st);
        if !ok || claim.sync && claim.dir.device_writes() {
            let rec = self.record_of(&st, index, i, off, false)?;
            if !ok {
                return Some(Err(rec));
            }
            st.meta.get_mut(i)?.set_state(RELEASING);
            return Some(Ok(Taken::Released(rec)));
        }
        // The run listed in the area's front inline (the common case), else the whole free out of line.
        if !self.free_to_front(area, &mut st, i, nslots) {
            self.free_locked(area, &mut st, i, nslots);
        }
        Some(Ok(Taken::Freed { counted: attrs & COUNTED != 0, dev }))
    }

    /// [`Self::release_or_free_for`] of a run no device counts (the pool's own tests).
    #[cfg(test)]
    pub(crate) fn release_or_free<E>(
        &self,
        off: u64,
        check: impl FnOnce(&SlotRecord) -> Result<(), E>,
        copy_back: impl FnOnce(&SlotRecord) -> bool,
    ) -> Option<Result<Taken, E>> {
        self.release_or_free_for(off, &AreaLive::default(), check, copy_back)
    }

    #[cfg(test)]
    fn take_at<E>(
        &self,
        index: usize,
        off: u64,
        sg: bool,
        live: &AreaLive,
        check: impl FnOnce(&SlotRecord) -> Result<(), E>,
        copy_back: impl FnOnce(&SlotRecord) -> bool,
    ) -> Option<Result<Taken, E>> {
        let (a, area, i) = self.area_numbered(index)?;
        let mut st = area.state.lock();
        let rec = self.record_of(&st, index, i, off, sg)?;
        if let Err(e) = check(&rec) {
            return Some(Err(e));
        }
        let dev = live.down_if_counted(a, rec.dev_counted, &st);
        if copy_back(&rec) {
            st.meta.get_mut(i)?.set_state(RELEASING);
            return Some(Ok(Taken::Released(rec)));
        }
        // The run listed in the area's front inline (the common case), else the whole free out of line.
        if !self.free_to_front(area, &mut st, i, rec.nslots) {
            self.free_locked(area, &mut st, i, rec.nslots);
        }
        Some(Ok(Taken::Freed { counted: rec.counted, dev }))
    }

    /// The area a map of CPU `cpu` (any number) starts in: `cpu` modulo the areas when their count
    /// is a power of two, else the low bits of `cpu` folded once onto the areas (a mask and a
    /// compare, no division on the hot path: `area_mask + 1 < 2 * area_count`, so one subtraction
    /// is enough). Only a hint: any area is correct.
    #[inline]
    pub(super) fn area_of_cpu(&self, cpu: usize) -> usize {
        let a = cpu & self.area_mask;
        if a >= self.area_count {
            a.wrapping_sub(self.area_count)
        } else {
            a
        }
    }

    /// [`Self::alloc`] starting at the area of CPU `cpu` (any number: see [`Self::area_of_cpu`]), as
    /// Linux picks a CPU's own area first: CPUs that map at the same time start on different locks
    /// and different cache lines. For a platform that can name the current CPU. The layer maps
    /// through [`Self::alloc_counted`] (this, with the run counted or not); the tests use this.
    #[cfg(test)]
    pub(crate) fn alloc_near(&self, req: RunRequest, head: NewHead, cpu: usize) -> Option<usize> {
        self.alloc_counted(req, head, cpu, false, None)
    }

    /// [`Self::alloc_near`] for a run the pool counts for the layer's statistics ([`COUNTED`]) when
    /// `counted`: a map now, with `head.len` bytes to the device when the map fills the run by
    /// copy ([`DmaDirection::fills_by_copy`]), and an unmap when it is freed. Counted under the area lock the allocation holds anyway: no shared counter is
    /// touched. With `live` the run is counted for its device as well ([`AreaLive`]).
    #[inline]
    pub(crate) fn alloc_counted(
        &self,
        req: RunRequest,
        head: NewHead,
        cpu: usize,
        counted: bool,
        live: Option<&AreaLive>,
    ) -> Option<usize> {
        let bits = head.attrs.bits()
            | if head.owner.safe { SAFE_FACE } else { 0 }
            | if counted { COUNTED } else { 0 };
        self.alloc_from(req, head, bits, Some(self.area_of_cpu(cpu)), live)
    }

    /// What this pool counted ([`Self::alloc_counted`]), summed over its areas. Out of line: read
    /// by the statistics and by pools leaving the layer, never on a map.
    #[inline(never)]
    pub(crate) fn tally(&self) -> PoolTally {
        self.used_areas().map(|a| a.tally()).fold(PoolTally::default(), PoolTally::plus)
    }

    /// [`Self::free`] for a run whose map failed after its allocation: a counted run's map is taken
    /// back as well, so neither a map nor an unmap is left counted (its device's count too, `live`).
    pub(crate) fn free_unmapped(&self, index: usize, nslots: usize, live: &AreaLive) {
        let Some((a, area, i)) = self.area_numbered(index) else { return };
        let mut st = area.state.lock();
        let Some(h) = st.meta.get(i) else { return };
        if !(matches!(h.state(), HEAD | RELEASING) && h.nslots as usize == nslots) {
            return;
        }
        live.down_if_counted(a, h.attrs & DEV_COUNTED != 0, &st);
        if h.attrs & COUNTED != 0 {
            let dir = DmaDirection::from_bits(h.dir()).unwrap_or(DmaDirection::ToDevice);
            let copied = dir.fills_by_copy(DmaAttrs::from_bits_truncate(h.attrs));
            let bytes = if copied { h.len as usize } else { 0 };
            area.uncount_map(&st, bytes);
        }
        self.free_locked(area, &mut st, i, nslots);
    }

    /// Undo a `lookup(.., true)` that the caller decided not to complete.
    #[inline(always)]
    pub(super) fn unrelease_any(&self, index: usize) {
        let Some((area, i)) = self.area_at(index) else { return };
        let mut st = area.state.lock();
        if let Some(head) = st.meta.get_mut(i).filter(|h| h.state() == RELEASING) {
            head.set_state(HEAD);
        }
    }

    /// [`Self::for_each_live`]'s body: one copy per capacity, whatever the closure.
    pub(super) fn for_each_live_any(&self, f: &mut dyn FnMut(LiveRun)) {
        for (a, area) in self.used_areas().enumerate() {
            let st = area.state.lock();
            for (i, m) in st.meta.iter().enumerate() {
                if !matches!(m.state(), HEAD | RELEASING | ORPHANED) {
                    continue;
                }
                let index = a * self.area_slots + i;
                f(LiveRun {
                    phys: PhysAddr(self.phys.0 + ((index as u64) << self.slot_shift) + u64::from(m.offset)),
                    len: m.len as usize,
                    slots: m.nslots as usize,
                    dir: DmaDirection::from_bits(m.dir()).unwrap_or(DmaDirection::Bidirectional),
                    device: m.owner,
                    owned_by_mapping: m.attrs & SAFE_FACE != 0,
                    scatter_gather: m.attrs & SG_RUN != 0,
                    orphaned: m.state() == ORPHANED,
                });
            }
        }
    }

    /// A released head whose buffer must never be written again (its `Mapping` was dropped while
    /// the unmap could not complete): forget the original, keep the run allocated and refuse it to
    /// every face, so no later call copies into memory whose borrow has ended.
    #[inline(always)]
    pub(super) fn orphan_any(&self, index: usize) {
        let Some((area, i)) = self.area_at(index) else { return };
        let mut st = area.state.lock();
        // Only a live head: a free or listed slot never becomes allocated for good.
        if let Some(head) = st.meta.get_mut(i).filter(|h| matches!(h.state(), HEAD | RELEASING)) {
            head.orig = 0;
            head.set_state(ORPHANED);
        }
    }

    /// Free a run previously returned by `alloc` (its head live, or released by `lookup`), of
    /// `nslots` slots. Anything else (no such head, another length, freed already) changes nothing:
    /// a run is never freed twice, nor a head that is not one.
    #[inline(always)]
    pub(super) fn free_any(&self, index: usize, nslots: usize) {
        let Some((area, i)) = self.area_at(index) else { return };
        let mut st = area.state.lock();
        let live = st
            .meta
            .get(i)
            .is_some_and(|h| matches!(h.state(), HEAD | RELEASING) && h.nslots as usize == nslots);
        if live {
            self.free_locked(area, &mut st, i, nslots);
        }
    }

    /// Free the run at area index `i`: only its head's record is cleared (the other slots were never
    /// written); the run goes to the area's front, or else back to its bitmap bits and one leaf of
    /// the tree.
    /// [`Self::free_locked`] of a run the area's front lists, inline (the unmap's common case: no
    /// call, -14 callgrind instructions per 4 KiB map+unmap); false, and only the head's record
    /// cleared (as `free_locked` clears it again), when the front does not take it.
    #[inline(always)]
    fn free_to_front(&self, area: &Area<'_>, st: &mut AreaState<'_>, i: usize, nslots: usize) -> bool {
        let Some(head) = st.meta.get_mut(i) else { return false };
        head.set_state(FREE);
        head.orig = 0;
        head.len = 0;
        let counted = head.attrs & COUNTED != 0;
        if !st.front_push_inline(i, nslots) {
            return false;
        }
        if counted {
            area.count_unmap(st);
        }
        area.publish(st, 0, nslots);
        true
    }

    fn free_locked(&self, area: &Area<'_>, st: &mut AreaState<'_>, i: usize, nslots: usize) {
        let Some(head) = st.meta.get_mut(i) else { return };
        head.set_state(FREE);
        head.orig = 0;
        head.len = 0;
        // The next allocation writes `attrs` afresh; a free head is never freed again.
        let counted = head.attrs & COUNTED != 0;
        if !st.front_push(i, nslots) {
            st.give(i, nslots);
        }
        if counted {
            area.count_unmap(st);
        }
        area.publish(st, 0, nslots);
    }
}
