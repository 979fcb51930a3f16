//! `BouncePool`: shared memory carved into slots, handed out as contiguous runs.
//!
//! The pool's memory and its per-slot metadata both come from the caller, so the layer needs no
//! allocator. Slots are split into areas, each behind its own spin lock, so CPUs mapping at the same time
//! mostly take different locks. Within an area, allocation follows the SWIOTLB scheme: every slot records
//! how many free slots follow it up to the end of its segment (a segment is `max_run_slots` long and no
//! run crosses one), so finding a run is one comparison per candidate and freeing touches at most one
//! segment.

use core::ptr::NonNull;
use core::sync::atomic::{AtomicUsize, Ordering};

use spin::Mutex;

use crate::addr::{PhysAddr, PAGE_SIZE};
use crate::direction::{DmaAttrs, DmaDirection};
use crate::error::DmaError;

/// Most areas one pool can have.
pub const MAX_AREAS: usize = 16;

/// Slot state, kept in [`SlotMeta`].
const FREE: u8 = 0;
const HEAD: u8 = 1;
const TAIL: u8 = 2;
/// A head whose unmap is in progress: no second unmap or sync may use it.
const RELEASING: u8 = 3;
/// A head whose owner is gone while its unmap could not complete: allocated for good, no original.
const ORPHANED: u8 = 4;
/// Head `attrs` bit (above the `DmaAttrs` bits) marking a scatter-gather run: several originals
/// packed in one run, described by the list (see `sg.rs`), not by the head's one `orig`. The
/// single-mapping face must never unmap or sync such a run, nor the list face a single mapping.
const SG_RUN: u8 = 0x80;
/// Head `attrs` bit marking a mapping owned by a [`crate::Mapping`] (the safe face): the raw face
/// refuses to unmap or sync it, so no raw call can write a buffer whose borrow the `Mapping` holds.
const SAFE_FACE: u8 = 0x40;
/// Head `attrs` of a run made by the benchmark hook [`BouncePool::bench_alloc`] (no device owns it).
const BENCH_RUN: u8 = SG_RUN | SAFE_FACE;

/// Who a run belongs to: the device (its serial in the layer) and whether the safe face owns it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Owner {
    /// The device's serial ([`crate::Device::serial`]).
    pub device: u32,
    /// True for a mapping owned by a [`crate::Mapping`].
    pub safe: bool,
}

/// Per-slot metadata, in caller-provided storage (`[SlotMeta::EMPTY; N]`). The head slot of a run
/// holds the guest's own record of the mapping: lengths and directions are taken from here, never from
/// what a device or caller alleges later.
#[derive(Clone, Copy, Debug)]
pub struct SlotMeta {
    free_run: u16,
    state: u8,
    dir: u8,
    attrs: u8,
    nslots: u16,
    offset: u32,
    len: u32,
    owner: u32,
    orig: usize,
}

impl SlotMeta {
    /// An unused entry, for initialising storage.
    pub const EMPTY: SlotMeta = SlotMeta {
        free_run: 0,
        state: FREE,
        dir: 0,
        attrs: 0,
        nslots: 0,
        offset: 0,
        len: 0,
        owner: 0,
        orig: 0,
    };
}

impl Default for SlotMeta {
    fn default() -> Self {
        SlotMeta::EMPTY
    }
}

/// Geometry of a pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolConfig {
    /// Bytes per slot (power of two, 512..=65536). Default 2 KiB.
    pub slot_size: usize,
    /// Longest run of slots one mapping may take (<= 4096). Default 128 (256 KiB with 2 KiB slots).
    pub max_run_slots: usize,
    /// Number of independently locked areas (1..=[`MAX_AREAS`]). Default 4.
    pub areas: usize,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig { slot_size: 2048, max_run_slots: 128, areas: 4 }
    }
}

impl PoolConfig {
    /// Slots needed for `len` bytes of pool memory (the size of the metadata storage to provide).
    pub const fn slots_for(&self, len: usize) -> usize {
        len / self.slot_size
    }

    pub(crate) fn validate(&self) -> Result<(), DmaError> {
        if !self.slot_size.is_power_of_two() || self.slot_size < 512 || self.slot_size > 65536 {
            return Err(DmaError::InvalidSlotSize(self.slot_size));
        }
        if self.max_run_slots == 0 || self.max_run_slots > 4096 {
            return Err(DmaError::InvalidMaxRun(self.max_run_slots));
        }
        if self.areas == 0 || self.areas > MAX_AREAS {
            return Err(DmaError::InvalidAreas(self.areas));
        }
        Ok(())
    }
}

/// The guest's record of one live bounced mapping (copied out of the head slot).
#[derive(Clone, Copy, Debug)]
pub(crate) struct SlotRecord {
    /// Global index of the head slot.
    pub index: usize,
    pub nslots: usize,
    /// Offset of the data inside the run (preserves `min_align_mask` bits).
    pub offset: usize,
    pub len: usize,
    pub dir: DmaDirection,
    pub attrs: DmaAttrs,
    /// CPU address of the original buffer.
    pub orig: *mut u8,
    /// Who the mapping belongs to.
    pub owner: Owner,
}

/// One live run of a pool, for tools and tests ([`BouncePool::for_each_live`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LiveRun {
    /// Physical address of the data's first byte in the pool.
    pub phys: PhysAddr,
    /// Bytes of data (for a scatter-gather run: of the packed segments).
    pub len: usize,
    /// Slots the run takes.
    pub slots: usize,
    /// Direction.
    pub dir: DmaDirection,
    /// Serial of the device that owns it ([`crate::Device::serial`]).
    pub device: u32,
    /// Owned by a [`crate::Mapping`] (the raw face cannot end it).
    pub owned_by_mapping: bool,
    /// A scatter-gather run.
    pub scatter_gather: bool,
    /// Its `Mapping` was dropped while the unmap failed: reserved for good.
    pub orphaned: bool,
}

/// The record a new run's head slot gets.
#[derive(Clone, Copy, Debug)]
pub(crate) struct NewHead {
    /// Offset of the data inside the run.
    pub offset: usize,
    pub len: usize,
    pub dir: DmaDirection,
    pub attrs: DmaAttrs,
    /// CPU address of the original buffer (null for scatter-gather runs).
    pub orig: *mut u8,
    pub owner: Owner,
}

/// What a new run must satisfy.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RunRequest {
    pub nslots: usize,
    /// Slot addresses must satisfy `addr & align_mask == align_bits` (both multiples of the slot size).
    pub align_mask: u64,
    pub align_bits: u64,
}

struct AreaState<'m> {
    meta: &'m mut [SlotMeta],
    /// Where the next search starts (index inside the area).
    hint: usize,
    used: usize,
}

/// A pool of shared bounce memory.
pub struct BouncePool<'m> {
    phys: PhysAddr,
    cpu: NonNull<u8>,
    len: usize,
    nslots: usize,
    slot_shift: u32,
    max_run: usize,
    area_slots: usize,
    area_count: usize,
    areas: [Mutex<AreaState<'m>>; MAX_AREAS],
    next_area: AtomicUsize,
    in_use: AtomicUsize,
    high_water: AtomicUsize,
}

// SAFETY: the CPU pointer names memory the pool owns for its whole life (the caller handed it over at
// construction); every slot run is written by the one holder of its allocation, and the metadata is
// behind the area locks.
unsafe impl Send for BouncePool<'_> {}
// SAFETY: as above; shared access goes through the area locks and atomics.
unsafe impl Sync for BouncePool<'_> {}

impl<'m> BouncePool<'m> {
    /// Build a pool over memory the caller has already shared (see `DmaLayer::add_pool`, which shares).
    ///
    /// # Safety
    /// `cpu` must point to `len` bytes that stay valid, and are used by nothing else, for `'m`.
    pub(crate) unsafe fn new(
        phys: PhysAddr,
        cpu: NonNull<u8>,
        len: usize,
        meta: &'m mut [SlotMeta],
        cfg: PoolConfig,
    ) -> Result<BouncePool<'m>, DmaError> {
        cfg.validate()?;
        if !phys.is_page_aligned() || len == 0 || len as u64 % PAGE_SIZE != 0 {
            return Err(DmaError::Unaligned { addr: phys.0 | len as u64, align: PAGE_SIZE });
        }
        let nslots = len / cfg.slot_size;
        if nslots == 0 {
            return Err(DmaError::PoolTooSmall { len, slot_size: cfg.slot_size });
        }
        if meta.len() < nslots {
            return Err(DmaError::MetadataTooSmall { needed: nslots, provided: meta.len() });
        }
        let meta = &mut meta[..nslots];
        // Areas are whole segments so no run crosses an area either.
        let segs = nslots.div_ceil(cfg.max_run_slots);
        let area_count = cfg.areas.min(segs);
        let area_slots = segs.div_ceil(area_count) * cfg.max_run_slots;
        let mut areas: [Mutex<AreaState<'m>>; MAX_AREAS] =
            core::array::from_fn(|_| Mutex::new(AreaState { meta: &mut [], hint: 0, used: 0 }));
        let mut rest = meta;
        let mut count = 0;
        while !rest.is_empty() {
            let take = area_slots.min(rest.len());
            let (head, tail) = core::mem::take(&mut rest).split_at_mut(take);
            rest = tail;
            for (i, m) in head.iter_mut().enumerate() {
                *m = SlotMeta::EMPTY;
                m.free_run = (cfg.max_run_slots - i % cfg.max_run_slots).min(take - i) as u16;
            }
            *areas[count].get_mut() = AreaState { meta: head, hint: 0, used: 0 };
            count += 1;
        }
        Ok(BouncePool {
            phys,
            cpu,
            len,
            nslots,
            slot_shift: cfg.slot_size.trailing_zeros(),
            max_run: cfg.max_run_slots,
            area_slots,
            area_count: count,
            areas,
            next_area: AtomicUsize::new(0),
            in_use: AtomicUsize::new(0),
            high_water: AtomicUsize::new(0),
        })
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
    /// Slots allocated now.
    pub fn slots_in_use(&self) -> usize {
        self.in_use.load(Ordering::Relaxed)
    }
    /// Most slots ever allocated at once.
    pub fn high_water(&self) -> usize {
        self.high_water.load(Ordering::Relaxed)
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
        let align_mask = ((align_slots.max(1) as u64) << self.slot_shift) - 1;
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
    /// changed) for any other index.
    #[doc(hidden)]
    pub fn bench_free(&self, index: usize) -> bool {
        if index >= self.nslots {
            return false;
        }
        let nslots = {
            let area = self.areas[index / self.area_slots].lock();
            let head = &area.meta[index % self.area_slots];
            if head.state != HEAD || head.attrs != BENCH_RUN || head.owner != 0 {
                return false;
            }
            head.nslots as usize
        };
        // Two locks, as the layer's unmap takes them today (lookup, then free).
        self.free(index, nslots);
        true
    }

    /// Allocate a run and record the mapping in its head slot. Returns the head's global index.
    pub(crate) fn alloc(&self, req: RunRequest, head: NewHead) -> Option<usize> {
        let bits = head.attrs.bits() | if head.owner.safe { SAFE_FACE } else { 0 };
        self.alloc_tagged(req, head, bits)
    }

    /// [`Self::alloc`] for a scatter-gather run: `offset`/`len` span the packed segments; the
    /// originals are recorded in the list itself.
    pub(crate) fn alloc_sg(
        &self,
        req: RunRequest,
        offset: usize,
        len: usize,
        dir: DmaDirection,
        attrs: DmaAttrs,
        device: u32,
    ) -> Option<usize> {
        let owner = Owner { device, safe: false };
        let head = NewHead { offset, len, dir, attrs, orig: core::ptr::null_mut(), owner };
        self.alloc_tagged(req, head, attrs.bits() | SG_RUN)
    }

    fn alloc_tagged(&self, req: RunRequest, new: NewHead, attr_bits: u8) -> Option<usize> {
        if req.nslots == 0 || req.nslots > self.max_run {
            return None;
        }
        let (Ok(offset), Ok(len)) = (u32::try_from(new.offset), u32::try_from(new.len)) else { return None };
        // Start where the last allocation succeeded: a lone CPU keeps reusing the same (cache-hot)
        // area; CPUs that collide move on to other areas and record where they found room. The first
        // pass skips areas another CPU holds; the second waits.
        let start = self.next_area.load(Ordering::Relaxed) % self.area_count;
        for pass in 0..2 {
            for k in 0..self.area_count {
                let a = (start + k) % self.area_count;
                let guard = if pass == 0 { self.areas[a].try_lock() } else { Some(self.areas[a].lock()) };
                let Some(mut area) = guard else { continue };
                let base = a * self.area_slots;
                if let Some(i) = self.find_run(&area, base, req) {
                    take_run(area.meta, i, req.nslots, self.max_run);
                    let head = &mut area.meta[i];
                    head.state = HEAD;
                    head.nslots = req.nslots as u16;
                    head.offset = offset;
                    head.len = len;
                    head.owner = new.owner.device;
                    head.dir = new.dir as u8;
                    head.attrs = attr_bits;
                    head.orig = new.orig as usize;
                    for t in &mut area.meta[i + 1..i + req.nslots] {
                        t.state = TAIL;
                    }
                    area.hint = (i + req.nslots) % area.meta.len();
                    area.used += req.nslots;
                    drop(area);
                    if a != start {
                        self.next_area.store(a, Ordering::Relaxed);
                    }
                    let now = self.in_use.fetch_add(req.nslots, Ordering::Relaxed) + req.nslots;
                    self.high_water.fetch_max(now, Ordering::Relaxed);
                    return Some(base + i);
                }
            }
        }
        None
    }

    fn find_run(&self, area: &AreaState<'_>, base: usize, req: RunRequest) -> Option<usize> {
        let n = area.meta.len();
        if n < req.nslots {
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
        let first_addr = area_phys - (area_phys % span) + want;
        let first_addr = if first_addr < area_phys { first_addr + span } else { first_addr };
        let first = ((first_addr - area_phys) >> self.slot_shift) as usize;
        if first >= n {
            return None;
        }
        let candidates = (n - first).div_ceil(period);
        let hint_c = if area.hint > first { (area.hint - first).div_ceil(period) % candidates } else { 0 };
        for c in 0..candidates {
            let i = first + ((hint_c + c) % candidates) * period;
            if i + req.nslots <= n && area.meta[i].free_run as usize >= req.nslots {
                return Some(i);
            }
        }
        None
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

    fn lookup_at(&self, index: usize, off: u64, release: bool, sg: bool) -> Option<SlotRecord> {
        if index >= self.nslots {
            return None;
        }
        let a = index / self.area_slots;
        let i = index % self.area_slots;
        let mut area = self.areas[a].lock();
        let head = &mut area.meta[i];
        if head.state != HEAD
            || ((index as u64) << self.slot_shift) + head.offset as u64 != off
            || (head.attrs & SG_RUN != 0) != sg
        {
            return None;
        }
        let rec = SlotRecord {
            index,
            nslots: head.nslots as usize,
            offset: head.offset as usize,
            len: head.len as usize,
            dir: DmaDirection::from_bits(head.dir)?,
            attrs: DmaAttrs::from_bits_truncate(head.attrs),
            orig: head.orig as *mut u8,
            owner: Owner { device: head.owner, safe: head.attrs & SAFE_FACE != 0 },
        };
        if release {
            head.state = RELEASING;
        }
        Some(rec)
    }

    /// Undo a `lookup(.., true)` that the caller decided not to complete.
    pub(crate) fn unrelease(&self, index: usize) {
        let mut area = self.areas[index / self.area_slots].lock();
        let head = &mut area.meta[index % self.area_slots];
        if head.state == RELEASING {
            head.state = HEAD;
        }
    }

    /// Every live run of the pool (locks one area at a time, so a concurrent map or unmap may or may
    /// not be seen).
    pub fn for_each_live(&self, mut f: impl FnMut(LiveRun)) {
        for a in 0..self.area_count {
            let area = self.areas[a].lock();
            for (i, m) in area.meta.iter().enumerate() {
                if !matches!(m.state, HEAD | RELEASING | ORPHANED) {
                    continue;
                }
                let index = a * self.area_slots + i;
                f(LiveRun {
                    phys: PhysAddr(self.phys.0 + ((index as u64) << self.slot_shift) + u64::from(m.offset)),
                    len: m.len as usize,
                    slots: m.nslots as usize,
                    dir: DmaDirection::from_bits(m.dir).unwrap_or(DmaDirection::Bidirectional),
                    device: m.owner,
                    owned_by_mapping: m.attrs & SAFE_FACE != 0,
                    scatter_gather: m.attrs & SG_RUN != 0,
                    orphaned: m.state == ORPHANED,
                });
            }
        }
    }

    /// A released head whose buffer must never be written again (its `Mapping` was dropped while
    /// the unmap could not complete): forget the original, keep the run allocated and refuse it to
    /// every face, so no later call copies into memory whose borrow has ended.
    pub(crate) fn orphan(&self, index: usize) {
        let mut area = self.areas[index / self.area_slots].lock();
        let head = &mut area.meta[index % self.area_slots];
        head.orig = 0;
        head.state = ORPHANED;
    }

    /// Free a run previously returned by `alloc` (its head released by `lookup`).
    pub(crate) fn free(&self, index: usize, nslots: usize) {
        let a = index / self.area_slots;
        let i = index % self.area_slots;
        let mut area = self.areas[a].lock();
        for m in &mut area.meta[i..i + nslots] {
            m.state = FREE;
            m.orig = 0;
            m.len = 0;
        }
        give_run(area.meta, i, nslots, self.max_run);
        area.used -= nslots;
        // Reuse the lowest freed run first: its slots are cache-hot, and allocating where the free
        // slots before it are few keeps `take_run`'s walk back short.
        if i < area.hint {
            area.hint = i;
        }
        drop(area);
        self.in_use.fetch_sub(nslots, Ordering::Relaxed);
    }
}

/// Mark `[i, i + n)` used and shorten the free counts of the free slots before it in its segment.
fn take_run(meta: &mut [SlotMeta], i: usize, n: usize, seg: usize) {
    for m in &mut meta[i..i + n] {
        m.free_run = 0;
    }
    let seg_start = i - i % seg;
    let mut k = i;
    while k > seg_start && meta[k - 1].free_run != 0 {
        k -= 1;
        meta[k].free_run = (i - k) as u16;
    }
}

/// Mark `[i, i + n)` free and merge the free counts with its neighbours in the segment.
fn give_run(meta: &mut [SlotMeta], i: usize, n: usize, seg: usize) {
    let end = i + n;
    let seg_end = ((i / seg) + 1) * seg;
    let mut count = if end < seg_end.min(meta.len()) { meta[end].free_run as usize } else { 0 };
    for k in (i..end).rev() {
        count += 1;
        meta[k].free_run = count as u16;
    }
    let seg_start = i - i % seg;
    let mut k = i;
    while k > seg_start && meta[k - 1].free_run != 0 {
        k -= 1;
        count += 1;
        meta[k].free_run = count as u16;
    }
}
