//! `BouncePool`: shared memory carved into slots, handed out as contiguous runs.
//!
//! The pool's memory and its metadata both come from the caller, so the layer needs no allocator.
//! Slots are split into areas, each behind its own spin lock, so CPUs mapping at the same time mostly
//! take different locks. A segment is `max_run_slots` long and no run crosses one.
//!
//! Within an area the allocator keeps, in the first entries of its caller-provided metadata (one
//! bookkeeping word per entry, beside the mapping record every entry also has room for):
//!
//! - a free-slot bitmap (1 = free), searched a word at a time (`trailing_zeros` over whole words finds
//!   the next free or used slot, so a free run is two word scans, not one step per slot);
//! - a max-tree over chunks (a chunk is the smallest whole number of segments of at least 64 slots):
//!   each leaf holds the longest free run inside one segment of its chunk, each inner node the larger
//!   of its children, and the root, mirrored in an atomic beside the lock, the longest run of the
//!   area.
//!
//! A request for `n` slots walks the tree to the lowest chunk with a run of `n` (address-ordered first
//! fit, O(log chunks)) and scans that chunk's few bitmap words for a run whose start meets the
//! alignment; a run of `n + period - 1` always holds an aligned one, so an aligned request visits at
//! most one chunk that cannot serve it before one that must. An area whose longest run is shorter than
//! `n` is refused from its atomic summary without taking its lock, so a request that cannot be met
//! costs one load per area, whatever the pool's size. Allocation and free write the head slot's record,
//! the run's bitmap bits, one leaf and its ancestors (O(log chunks)); the run's other slots are never
//! touched. Usage counters are per area, on the area's own cache line, summed when read.

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
// 2 was TAIL: the slots after a head are no longer marked (only the head's record is written).
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
/// what a device or caller alleges later. The first entries of each area also carry the allocator's
/// bookkeeping (free-slot bitmap and run-length tree) in a word of their own.
#[derive(Clone, Copy, Debug)]
pub struct SlotMeta {
    orig: usize,
    /// Allocator bookkeeping (one bitmap word, or four tree nodes); unrelated to this slot's record.
    word: u64,
    offset: u32,
    len: u32,
    owner: u32,
    nslots: u16,
    /// Slot state (low 4 bits) and direction (high 4 bits) of a head.
    state_dir: u8,
    attrs: u8,
}

impl SlotMeta {
    /// An unused entry, for initialising storage.
    pub const EMPTY: SlotMeta =
        SlotMeta { orig: 0, word: 0, offset: 0, len: 0, owner: 0, nslots: 0, state_dir: FREE, attrs: 0 };

    fn state(&self) -> u8 {
        self.state_dir & 0xf
    }
    fn set_state(&mut self, state: u8) {
        self.state_dir = (self.state_dir & 0xf0) | state;
    }
    fn dir(&self) -> u8 {
        self.state_dir >> 4
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

/// One area's allocator state, behind its lock. The bookkeeping lives in the `word` of the area's
/// first metadata entries: `bitmap_words` words of free-slot bitmap, then the tree's nodes 2.. packed
/// four to a word (node 1, the root, is `top`).
struct AreaState<'m> {
    meta: &'m mut [SlotMeta],
    /// Slots of this area (`meta.len()`).
    len: usize,
    /// Slots per segment (no run crosses one).
    seg: usize,
    /// Slots per chunk (a tree leaf): whole segments, at least 64 slots unless the area is shorter.
    chunk: usize,
    /// Number of chunks.
    chunks: usize,
    /// log2 of `seg` and `chunk` when they are powers of two (else `NO_SHIFT`): no divide on the
    /// usual geometries.
    seg_shift: u32,
    chunk_shift: u32,
    /// Node number of the first leaf. The tree is 4-ary and complete: node 0 is the root, node `v`'s
    /// children are `4v + 1..=4v + 4`, and those four share one word (16 bits each), so a step up or
    /// down the tree is one word.
    leaves: usize,
    /// Word index of the children of node 0 (the bitmap's length in words); node `v`'s children are
    /// in word `tree_base + v`.
    tree_base: usize,
    /// Root of the tree: the longest free run of the area.
    top: usize,
    /// Free slots.
    free: usize,
    /// Bookkeeping words read, for the tests that bound the search.
    #[cfg(test)]
    visited: core::cell::Cell<usize>,
}

/// The geometry of an area of `len` slots with `seg`-slot segments: chunk size, chunks, first leaf,
/// and the bookkeeping words it needs (bitmap, then one word per inner node of the tree). The tree
/// has `4^d >= chunks` leaves and `(4^d - 1) / 3 < 4 * chunks / 3` inner nodes, so the words are at
/// most `ceil(len / 64) + 4 * ceil(len / 64) / 3`, which is `<= len` for every `len` (one word for
/// one or two slots): the area's own metadata always has room and `PoolConfig::slots_for` stays one
/// entry per slot.
const fn area_geometry(len: usize, seg: usize) -> (usize, usize, usize, usize) {
    let chunk = if seg >= 64 { seg } else { seg * 64usize.div_ceil(seg) };
    let chunks = len.div_ceil(chunk);
    let mut width = 1;
    while width < chunks {
        width *= 4;
    }
    let inner = (width - 1) / 3;
    (chunk, chunks, inner, len.div_ceil(64) + inner)
}

/// Lanes of a tree word that are at least `want` (`1 <= want < 0x8000`; lanes hold at most 4096):
/// the top bit of each such lane.
fn lanes_at_least(word: u64, want: usize) -> u64 {
    const TOP: u64 = 0x8000_8000_8000_8000;
    const ONE: u64 = 0x0001_0001_0001_0001;
    ((word | TOP) - want as u64 * ONE) & TOP
}

/// The largest of a tree word's four lanes.
fn max_lane(word: u64) -> usize {
    let a = (word & 0xffff).max(word >> 16 & 0xffff);
    let b = (word >> 32 & 0xffff).max(word >> 48);
    a.max(b) as usize
}

impl<'m> AreaState<'m> {
    fn empty() -> AreaState<'m> {
        AreaState {
            meta: &mut [],
            len: 0,
            seg: 1,
            chunk: 1,
            seg_shift: 0,
            chunk_shift: 0,
            chunks: 0,
            leaves: 0,
            tree_base: 0,
            top: 0,
            free: 0,
            #[cfg(test)]
            visited: core::cell::Cell::new(0),
        }
    }

    /// An area over `meta` (all free).
    fn new(meta: &'m mut [SlotMeta], seg: usize) -> AreaState<'m> {
        let len = meta.len();
        let (chunk, chunks, leaves, words) = area_geometry(len, seg);
        debug_assert!(words <= len);
        for m in meta.iter_mut() {
            *m = SlotMeta::EMPTY;
        }
        let mut a = AreaState {
            meta,
            len,
            seg,
            chunk,
            chunks,
            seg_shift: shift_of(seg),
            chunk_shift: shift_of(chunk),
            leaves,
            tree_base: len.div_ceil(64),
            top: 0,
            free: 0,
            #[cfg(test)]
            visited: core::cell::Cell::new(0),
        };
        a.set_bits(0, len, true);
        a.free = len;
        for c in 0..chunks {
            a.update_leaf(c);
        }
        a
    }

    fn word(&self, w: usize) -> u64 {
        #[cfg(test)]
        self.visited.set(self.visited.get() + 1);
        self.meta[w].word
    }

    /// First index in `[from, hi)` whose bit is `free` (1 = free), or `hi`.
    fn next_bit(&self, from: usize, hi: usize, free: bool) -> usize {
        if from >= hi {
            return hi;
        }
        let flip = if free { 0 } else { !0 };
        let mut w = from / 64;
        let mut x = (self.word(w) ^ flip) & (!0u64 << (from % 64));
        loop {
            if x != 0 {
                return (w * 64 + x.trailing_zeros() as usize).min(hi);
            }
            w += 1;
            if w * 64 >= hi {
                return hi;
            }
            x = self.word(w) ^ flip;
        }
    }

    /// Mark `[i, i + n)` free or used, a word at a time.
    fn set_bits(&mut self, i: usize, n: usize, free: bool) {
        let end = i + n;
        let mut k = i;
        while k < end {
            let (w, b) = (k / 64, k % 64);
            let m = (end - k).min(64 - b);
            let mask = if m == 64 { !0 } else { ((1u64 << m) - 1) << b };
            let word = &mut self.meta[w].word;
            debug_assert!(
                if free { *word & mask == 0 } else { *word & mask == mask },
                "run freed or taken twice"
            );
            if free {
                *word |= mask;
            } else {
                *word &= !mask;
            }
            k += m;
        }
    }

    fn node(&self, v: usize) -> usize {
        if v == 0 {
            return self.top;
        }
        let k = v - 1;
        ((self.word(self.tree_base + k / 4) >> (16 * (k % 4))) & 0xffff) as usize
    }

    fn set_node(&mut self, v: usize, x: usize) {
        if v == 0 {
            self.top = x;
            return;
        }
        let k = v - 1;
        let shift = 16 * (k % 4);
        let word = &mut self.meta[self.tree_base + k / 4].word;
        *word = (*word & !(0xffff << shift)) | ((x as u64) << shift);
    }

    /// The longest free run inside one segment of chunk `c`.
    fn chunk_longest(&self, c: usize) -> usize {
        let lo = c * self.chunk;
        let hi = (lo + self.chunk).min(self.len);
        let mut best = 0;
        let mut s = lo;
        while s < hi {
            let e = (s + self.seg).min(hi);
            best = best.max(self.longest_in(s, e));
            s = e;
        }
        best
    }

    /// The longest run of free slots in `[lo, hi)`, a word at a time: per word, the run continuing
    /// from the previous word, the runs inside it (one `trailing_zeros`/`trailing_ones` pair each),
    /// and the run reaching its top, carried on.
    fn longest_in(&self, lo: usize, hi: usize) -> usize {
        let (mut best, mut carry) = (0, 0);
        let mut k = lo;
        while k < hi {
            let m = (64 - k % 64).min(hi - k);
            let full = low_mask(m);
            let x = (self.word(k / 64) >> (k % 64)) & full;
            k += m;
            if x == full {
                carry += m;
                continue;
            }
            let low = x.trailing_ones() as usize;
            best = best.max(carry + low);
            let top = (x << (64 - m)).leading_ones() as usize;
            // The bits between the low and the top runs; bit 0 is used.
            let mut y = (x >> low) & low_mask(m - low - top);
            while y != 0 {
                y >>= y.trailing_zeros();
                let run = y.trailing_ones();
                best = best.max(run as usize);
                y >>= run;
            }
            carry = top;
        }
        best.max(carry)
    }

    /// The free run around `[i, i + n)` (free now) inside its segment: its start and end.
    fn run_around(&self, i: usize, n: usize) -> (usize, usize) {
        let seg_lo = i - rem(i, self.seg, self.seg_shift);
        let seg_hi = (seg_lo + self.seg).min(self.len);
        let end = self.next_bit(i + n, seg_hi, false);
        // Backwards from `i` to the last used slot of the segment before it.
        let mut start = i;
        while start > seg_lo {
            let w = (start - 1) / 64;
            let bits = (start - 1) % 64 + 1;
            let used = !self.word(w) & if bits == 64 { !0 } else { (1u64 << bits) - 1 };
            if used != 0 {
                start = (w * 64 + 64 - used.leading_zeros() as usize).max(seg_lo);
                break;
            }
            start = (w * 64).max(seg_lo);
        }
        (start, end)
    }

    /// Chunk `c`'s leaf grew to `x` (a merged free run): raise it and the ancestors below `x`.
    fn raise_leaf(&mut self, c: usize, x: usize) {
        let mut v = self.leaves + c;
        if self.node(v) >= x {
            return;
        }
        self.set_node(v, x);
        while v > 0 {
            v = (v - 1) / 4;
            if self.node(v) >= x {
                break;
            }
            self.set_node(v, x);
        }
    }

    /// Recompute chunk `c`'s leaf and the ancestors that change.
    fn update_leaf(&mut self, c: usize) {
        let x = self.chunk_longest(c);
        self.set_leaf(c, x);
    }

    /// Set chunk `c`'s leaf to `x` (its exact longest run) and fix the ancestors that change.
    fn set_leaf(&mut self, c: usize, x: usize) {
        let mut v = self.leaves + c;
        if self.node(v) == x {
            return;
        }
        self.set_node(v, x);
        while v > 0 {
            v = (v - 1) / 4;
            let m = max_lane(self.word(self.tree_base + v));
            if self.node(v) == m {
                break;
            }
            self.set_node(v, m);
        }
    }

    /// The lowest chunk at or after `from` whose leaf is at least `want`: up the tree while the
    /// nodes right of the path are all too small, then down to the leftmost leaf big enough; one
    /// word per level each way.
    fn chunk_at_least(&self, from: usize, want: usize) -> Option<usize> {
        if from >= self.chunks || self.top < want {
            return None;
        }
        let mut v = self.leaves + from;
        if v == 0 {
            return Some(0);
        }
        loop {
            // `v` and its right siblings (one word); a node past the end of its level is never
            // reached: the climb below moves right only inside a level.
            let (group, lane) = ((v - 1) / 4, (v - 1) % 4);
            let hits = lanes_at_least(self.word(self.tree_base + group), want) & (!0u64 << (16 * lane));
            if hits != 0 {
                v = 4 * group + 1 + hits.trailing_zeros() as usize / 16;
                break;
            }
            // Nothing here: the parent's right siblings, unless the parent is the root or the last
            // node of its level (the next node starts the level below: 3u + 1 a power of four).
            let next = group + 1;
            let starts_level =
                |u: usize| (3 * u + 1).is_power_of_two() && (3 * u + 1).trailing_zeros() % 2 == 0;
            if group == 0 || starts_level(next) {
                return None;
            }
            v = next;
        }
        while v < self.leaves {
            let hits = lanes_at_least(self.word(self.tree_base + v), want);
            debug_assert!(hits != 0, "a node's value is its largest child's");
            v = 4 * v + 1 + hits.trailing_zeros() as usize / 16;
        }
        Some(v - self.leaves)
    }

    /// A run of `n` free slots in chunk `c`, inside one segment, starting at an index `first + k * period`:
    /// its start and the free run `[a, b)` that holds it.
    fn fit_in_chunk(
        &self,
        c: usize,
        n: usize,
        first: usize,
        period: usize,
    ) -> Option<(usize, (usize, usize))> {
        let lo = c * self.chunk;
        let hi = (lo + self.chunk).min(self.len);
        let mut s = lo;
        while s < hi {
            let e = (s + self.seg).min(hi);
            if e - s >= n {
                let mut a = self.next_bit(s, e, true);
                while a < e {
                    let b = self.next_bit(a, e, false);
                    if b - a >= n {
                        let start = align_up(a, first, period);
                        if start + n <= b {
                            return Some((start, (a, b)));
                        }
                    }
                    a = self.next_bit(b, e, true);
                }
            }
            s = e;
        }
        None
    }

    /// A run of `n` free slots starting at `first + k * period` (area indices), inside one segment:
    /// its start and the free run that holds it.
    fn find(&self, n: usize, first: usize, period: usize) -> Option<(usize, (usize, usize))> {
        if self.top < n || self.free < n {
            return None;
        }
        if period > self.chunk {
            // Candidates sparser than chunks: at most one per chunk, tried directly.
            let mut i = first;
            while i < self.len {
                let seg_end = ((div(i, self.seg, self.seg_shift) + 1) * self.seg).min(self.len);
                if i + n <= seg_end && self.next_bit(i, i + n, false) == i + n {
                    return Some((i, self.run_around(i, n)));
                }
                i = i.checked_add(period)?;
            }
            return None;
        }
        // A free run of n + period - 1 holds an aligned run of n: once a chunk with a run of n fails
        // the alignment, go straight to one with such a run (when the area has one).
        let sure = n + period - 1;
        let mut want = n;
        let mut from = 0;
        while let Some(c) = self.chunk_at_least(from, want) {
            if let Some(found) = self.fit_in_chunk(c, n, first, period) {
                return Some(found);
            }
            debug_assert!(want < sure, "a chunk with a run of n + period - 1 holds an aligned run");
            if self.top >= sure {
                want = sure;
            }
            from = c + 1;
        }
        None
    }

    /// Take `[i, i + n)` out of the free run `[a, b)` that holds it: the chunk's leaf can only
    /// shrink, and only if that run was as long as the leaf; it is rescanned only when other runs of
    /// the chunk may be the longest now.
    fn take(&mut self, i: usize, n: usize, (a, b): (usize, usize)) {
        self.set_bits(i, n, false);
        self.free -= n;
        let c = div(i, self.chunk, self.chunk_shift);
        if b - a < self.node(self.leaves + c) {
            return;
        }
        let lo = c * self.chunk;
        if self.chunk == self.seg && (a, b) == (lo, (lo + self.chunk).min(self.len)) {
            // The chunk is one segment and was wholly free: what is left of it are the two pieces
            // around the new run, no scan needed (the common case of a lightly used pool).
            self.set_leaf(c, (i - a).max(b - i - n));
        } else {
            self.update_leaf(c);
        }
    }

    /// Give back `[i, i + n)`: the merged free run around it may raise the chunk's leaf, nothing else.
    fn give(&mut self, i: usize, n: usize) {
        self.set_bits(i, n, true);
        self.free += n;
        let (a, b) = self.run_around(i, n);
        self.raise_leaf(div(i, self.chunk, self.chunk_shift), b - a);
    }
}

/// Marks a divisor that is not a power of two.
const NO_SHIFT: u32 = u32::MAX;

/// log2 of `d` for a power of two, else [`NO_SHIFT`].
fn shift_of(d: usize) -> u32 {
    if d.is_power_of_two() {
        d.trailing_zeros()
    } else {
        NO_SHIFT
    }
}

/// `x / d`, a shift when `shift` (from [`shift_of`]) says `d` is a power of two.
fn div(x: usize, d: usize, shift: u32) -> usize {
    if shift == NO_SHIFT {
        x / d
    } else {
        x >> shift
    }
}

/// `x % d`, as [`div`].
fn rem(x: usize, d: usize, shift: u32) -> usize {
    if shift == NO_SHIFT {
        x % d
    } else {
        x & (d - 1)
    }
}

/// The low `bits` bits set (`bits <= 64`).
fn low_mask(bits: usize) -> u64 {
    if bits >= 64 {
        !0
    } else {
        (1u64 << bits) - 1
    }
}

/// The first index at or after `a` of the form `first + k * period` (`a >= first` or the result is
/// `first`).
fn align_up(a: usize, first: usize, period: usize) -> usize {
    if a <= first {
        return first;
    }
    let r = if period.is_power_of_two() { (a - first) & (period - 1) } else { (a - first) % period };
    if r == 0 {
        a
    } else {
        a + (period - r)
    }
}

/// An area: its lock and, on the same cache line, the counters read without it.
#[repr(align(128))]
struct Area<'m> {
    state: Mutex<AreaState<'m>>,
    /// The area's longest free run (the tree's root), published after every change: an area that
    /// cannot serve a request is skipped without taking its lock.
    longest: AtomicUsize,
    /// Slots allocated now.
    used: AtomicUsize,
    /// Most slots allocated at once in this area.
    high: AtomicUsize,
}

impl<'m> Area<'m> {
    fn empty() -> Area<'m> {
        Area {
            state: Mutex::new(AreaState::empty()),
            longest: AtomicUsize::new(0),
            used: AtomicUsize::new(0),
            high: AtomicUsize::new(0),
        }
    }

    /// Publish the summary and counters after a change made under the lock (`taken` or `freed`
    /// slots). Plain stores, no read-modify-write: only the lock holder writes them.
    fn publish(&self, st: &AreaState<'_>, taken: usize, freed: usize) {
        self.longest.store(st.top, Ordering::Relaxed);
        let used = st.len - st.free;
        self.used.store(used, Ordering::Relaxed);
        if taken > freed && used > self.high.load(Ordering::Relaxed) {
            self.high.store(used, Ordering::Relaxed);
        }
    }
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
    /// log2 of `area_slots` when a power of two (see [`shift_of`]).
    area_shift: u32,
    area_count: usize,
    areas: [Area<'m>; MAX_AREAS],
    /// Where the last allocation that had to move on found room (written only then).
    next_area: AtomicUsize,
}

/// What [`BouncePool::release_or_free`] did with a mapping it found.
// The layer's unmap switches to `release_or_free` in a follow-up (layer.rs is being restructured);
// until then only the unit tests call it.
#[allow(dead_code)]
#[derive(Clone, Copy, Debug)]
pub(crate) enum Taken {
    /// The run is free again (nothing had to be copied out of it first).
    Freed(SlotRecord),
    /// The head is released (as by `lookup(.., true)`): copy out of the run, then [`BouncePool::free`].
    Released(SlotRecord),
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
        let mut areas: [Area<'m>; MAX_AREAS] = core::array::from_fn(|_| Area::empty());
        let mut rest = meta;
        let mut count = 0;
        while !rest.is_empty() {
            let take = area_slots.min(rest.len());
            let (head, tail) = core::mem::take(&mut rest).split_at_mut(take);
            rest = tail;
            let st = AreaState::new(head, cfg.max_run_slots);
            areas[count].longest.store(st.top, Ordering::Relaxed);
            *areas[count].state.get_mut() = st;
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
            area_shift: shift_of(area_slots),
            area_count: count,
            areas,
            next_area: AtomicUsize::new(0),
        })
    }

    /// The area holding global slot `index`.
    fn area_of(&self, index: usize) -> usize {
        div(index, self.area_slots, self.area_shift)
    }
    /// `index`'s position inside its area.
    fn in_area(&self, index: usize) -> usize {
        rem(index, self.area_slots, self.area_shift)
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
    /// Slots allocated now (the sum of the areas' counters).
    pub fn slots_in_use(&self) -> usize {
        self.areas[..self.area_count].iter().map(|a| a.used.load(Ordering::Relaxed)).sum()
    }
    /// Most slots ever allocated at once: the sum of each area's own peak, kept per area so no map
    /// touches a line every CPU shares. Exact with one area; with several an upper bound (the areas
    /// may have peaked at different times).
    pub fn high_water(&self) -> usize {
        self.areas[..self.area_count].iter().map(|a| a.high.load(Ordering::Relaxed)).sum()
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
    /// changed) for any other index. One lock, as [`Self::release_or_free`].
    #[doc(hidden)]
    pub fn bench_free(&self, index: usize) -> bool {
        if index >= self.nslots {
            return false;
        }
        let area = &self.areas[self.area_of(index)];
        let i = self.in_area(index);
        let mut st = area.state.lock();
        let head = &st.meta[i];
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
        self.alloc_from(req, new, attr_bits, None)
    }

    /// Allocate, trying area `first` first (else where the last allocation that moved on found room).
    fn alloc_from(
        &self,
        req: RunRequest,
        new: NewHead,
        attr_bits: u8,
        first: Option<usize>,
    ) -> Option<usize> {
        let n = req.nslots;
        if n == 0 || n > self.max_run {
            return None;
        }
        let (Ok(offset), Ok(len)) = (u32::try_from(new.offset), u32::try_from(new.len)) else { return None };
        // Start where the last allocation that had to move on found room: a lone CPU keeps reusing
        // the same (cache-hot) area; CPUs that collide move on to other areas. An area whose longest
        // free run is too short is skipped without its lock. The first pass skips areas another CPU
        // holds; the second waits.
        let count = self.area_count;
        let start = first.unwrap_or_else(|| self.next_area.load(Ordering::Relaxed)).min(count - 1);
        for pass in 0..2 {
            for k in 0..count {
                let a = if start + k >= count { start + k - count } else { start + k };
                let area = &self.areas[a];
                if area.longest.load(Ordering::Relaxed) < n {
                    continue;
                }
                let guard = if pass == 0 { area.state.try_lock() } else { Some(area.state.lock()) };
                let Some(mut st) = guard else { continue };
                let base = a * self.area_slots;
                let Some((i, run)) = self.find_run(&st, base, req) else { continue };
                st.take(i, n, run);
                let head = &mut st.meta[i];
                head.state_dir = HEAD | (new.dir as u8) << 4;
                head.nslots = n as u16;
                head.offset = offset;
                head.len = len;
                head.owner = new.owner.device;
                head.attrs = attr_bits;
                head.orig = new.orig as usize;
                area.publish(&st, n, 0);
                drop(st);
                if a != start && first.is_none() {
                    self.next_area.store(a, Ordering::Relaxed);
                }
                return Some(base + i);
            }
        }
        None
    }

    /// A run for `req` in the area at global slot `base` (area index, and the free run holding it).
    fn find_run(
        &self,
        area: &AreaState<'_>,
        base: usize,
        req: RunRequest,
    ) -> Option<(usize, (usize, usize))> {
        let n = area.len;
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
        let phase = if span.is_power_of_two() { area_phys & (span - 1) } else { area_phys % span };
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

    fn lookup_at(&self, index: usize, off: u64, release: bool, sg: bool) -> Option<SlotRecord> {
        if index >= self.nslots {
            return None;
        }
        let mut st = self.areas[self.area_of(index)].state.lock();
        let i = self.in_area(index);
        let rec = self.record_of(&st, index, i, off, sg)?;
        if release {
            st.meta[i].set_state(RELEASING);
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
        let head = &st.meta[i];
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
        })
    }

    /// Unmap in one lock: look up the live (single-mapping) head at pool offset `off`, let `check`
    /// refuse it (nothing changes then), and free the run at once when `copy_back` says nothing has
    /// to be read out of it first; otherwise release the head as `lookup(off, true)` does, and the
    /// caller copies and then calls [`Self::free`] (the copy stays outside the lock). `None`: no
    /// such mapping.
    #[allow(dead_code)]
    pub(crate) fn release_or_free<E>(
        &self,
        off: u64,
        check: impl FnOnce(&SlotRecord) -> Result<(), E>,
        copy_back: impl FnOnce(&SlotRecord) -> bool,
    ) -> Option<Result<Taken, E>> {
        self.take_at(self.index_of_offset(off), off, false, check, copy_back)
    }

    fn take_at<E>(
        &self,
        index: usize,
        off: u64,
        sg: bool,
        check: impl FnOnce(&SlotRecord) -> Result<(), E>,
        copy_back: impl FnOnce(&SlotRecord) -> bool,
    ) -> Option<Result<Taken, E>> {
        if index >= self.nslots {
            return None;
        }
        let area = &self.areas[self.area_of(index)];
        let i = self.in_area(index);
        let mut st = area.state.lock();
        let rec = self.record_of(&st, index, i, off, sg)?;
        if let Err(e) = check(&rec) {
            return Some(Err(e));
        }
        if copy_back(&rec) {
            st.meta[i].set_state(RELEASING);
            return Some(Ok(Taken::Released(rec)));
        }
        self.free_locked(area, &mut st, i, rec.nslots);
        Some(Ok(Taken::Freed(rec)))
    }

    /// [`Self::alloc`] starting at the area of CPU `cpu` (any number: taken modulo the areas), as
    /// Linux picks a CPU's own area first: CPUs that map at the same time start on different locks
    /// and different cache lines. For a platform that can name the current CPU.
    #[allow(dead_code)]
    pub(crate) fn alloc_near(&self, req: RunRequest, head: NewHead, cpu: usize) -> Option<usize> {
        let bits = head.attrs.bits() | if head.owner.safe { SAFE_FACE } else { 0 };
        self.alloc_from(req, head, bits, Some(cpu % self.area_count))
    }

    /// Undo a `lookup(.., true)` that the caller decided not to complete.
    pub(crate) fn unrelease(&self, index: usize) {
        let mut st = self.areas[self.area_of(index)].state.lock();
        let head = &mut st.meta[self.in_area(index)];
        if head.state() == RELEASING {
            head.set_state(HEAD);
        }
    }

    /// Every live run of the pool (locks one area at a time, so a concurrent map or unmap may or may
    /// not be seen).
    pub fn for_each_live(&self, mut f: impl FnMut(LiveRun)) {
        for a in 0..self.area_count {
            let st = self.areas[a].state.lock();
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
    pub(crate) fn orphan(&self, index: usize) {
        let mut st = self.areas[self.area_of(index)].state.lock();
        let head = &mut st.meta[self.in_area(index)];
        head.orig = 0;
        head.set_state(ORPHANED);
    }

    /// Free a run previously returned by `alloc` (its head released by `lookup`).
    pub(crate) fn free(&self, index: usize, nslots: usize) {
        let area = &self.areas[self.area_of(index)];
        let mut st = area.state.lock();
        self.free_locked(area, &mut st, self.in_area(index), nslots);
    }

    /// Free the run at area index `i`: only its head's record is cleared (the other slots were never
    /// written), then its bitmap bits and one leaf of the tree.
    fn free_locked(&self, area: &Area<'_>, st: &mut AreaState<'_>, i: usize, nslots: usize) {
        let head = &mut st.meta[i];
        head.set_state(FREE);
        head.orig = 0;
        head.len = 0;
        st.give(i, nslots);
        area.publish(st, 0, nslots);
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec;
    use std::vec::Vec;

    use super::*;

    const SLOT: usize = 2048;

    /// A pool at `phys` of `slots` slots; its memory is never touched (the allocator does not read or
    /// write pool memory, and these tests never ask for a CPU pointer).
    fn pool(phys: u64, slots: usize, cfg: PoolConfig) -> BouncePool<'static> {
        let meta = vec![SlotMeta::EMPTY; cfg.slots_for(slots * cfg.slot_size)].leak();
        // SAFETY: nothing dereferences the CPU pointer: only `cpu_at` derives from it, and no test
        // calls it.
        unsafe { BouncePool::new(PhysAddr(phys), NonNull::dangling(), slots * cfg.slot_size, meta, cfg) }
            .expect("pool")
    }

    fn req(nslots: usize, align_slots: usize, bits_slots: usize) -> RunRequest {
        let mask = ((align_slots * SLOT) as u64 - 1) & !(SLOT as u64 - 1);
        RunRequest { nslots, align_mask: mask, align_bits: (bits_slots * SLOT) as u64 & mask }
    }

    fn head(nslots: usize) -> NewHead {
        NewHead {
            offset: 0,
            len: nslots * SLOT,
            dir: DmaDirection::FromDevice,
            attrs: DmaAttrs::NONE,
            orig: core::ptr::null_mut(),
            owner: Owner { device: 7, safe: false },
        }
    }

    /// Does `[i, i + n)` (global indices) satisfy the request in a model of the pool?
    fn fits(free: &[bool], phys: u64, seg: usize, r: RunRequest, i: usize) -> bool {
        let n = r.nslots;
        i + n <= free.len()
            && i / seg == (i + n - 1) / seg
            && free[i..i + n].iter().all(|&f| f)
            && (phys + (i * SLOT) as u64) & r.align_mask == r.align_bits
    }

    /// Random allocations and frees against a model: every run is free, aligned and inside one
    /// segment; a refusal only when the model has no place either; the counters agree.
    #[test]
    fn random_against_a_model() {
        let mut x = 0x1234_5678_9abc_def1u64;
        let mut rnd = |n: usize| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % n as u64) as usize
        };
        for (slots, seg, areas, phys) in [
            (512, 128, 4, 0x10_0000),
            (300, 5, 3, 0x20_3000),
            (2, 1, 2, 0x1000),
            (778, 64, 2, 0x40_1000),
            (64, 3, 1, 0x5000),
            (4096, 16, 1, 0x80_0000),
            (2000, 7, 1, 0x9000),
            (8192, 128, 2, 0x100_0000),
        ] {
            let cfg = PoolConfig { slot_size: SLOT, max_run_slots: seg, areas };
            let p = pool(phys, slots, cfg);
            let mut free = vec![true; slots];
            let mut live: Vec<(usize, usize)> = Vec::new();
            for step in 0..4000 {
                if !live.is_empty() && rnd(3) == 0 {
                    let (i, n) = live.swap_remove(rnd(live.len()));
                    p.free(i, n);
                    free[i..i + n].iter_mut().for_each(|f| *f = true);
                } else {
                    let n = 1 + rnd(seg);
                    let align = [1, 1, 2, 4, 32][rnd(5)];
                    let r = req(n, align, rnd(align));
                    match p.alloc(r, head(n)) {
                        Some(i) => {
                            assert!(fits(&free, phys, seg, r, i), "bad run {i}+{n} for {r:?}");
                            free[i..i + n].iter_mut().for_each(|f| *f = false);
                            live.push((i, n));
                        }
                        None => assert!(
                            !(0..slots).any(|i| fits(&free, phys, seg, r, i)),
                            "refused {r:?} with room"
                        ),
                    }
                }
                assert_eq!(p.slots_in_use(), free.iter().filter(|f| !**f).count());
                // The summaries against the bitmap (every few steps: a full walk).
                for a in p.areas[..p.area_count].iter().filter(|_| step % 8 == 0) {
                    let st = a.state.lock();
                    for c in 0..st.chunks {
                        assert_eq!(st.node(st.leaves + c), st.chunk_longest(c), "leaf {c}");
                    }
                    for v in 0..st.leaves {
                        let kids = (1..=4).map(|k| st.node(4 * v + k)).max().unwrap();
                        assert_eq!(st.node(v), kids, "node {v}");
                    }
                    assert_eq!(a.longest.load(Ordering::Relaxed), st.top);
                    // The word-level scan agrees with a slot-by-slot one.
                    let mut best = 0;
                    for c in 0..st.chunks {
                        let lo = c * st.chunk;
                        for s0 in (lo..(lo + st.chunk).min(st.len)).step_by(st.seg) {
                            let mut run = 0;
                            for k in s0..(s0 + st.seg).min(st.len) {
                                run = if st.meta[k / 64].word >> (k % 64) & 1 == 1 { run + 1 } else { 0 };
                                best = best.max(run);
                            }
                        }
                    }
                    assert_eq!(st.top, best);
                }
            }
        }
    }

    #[test]
    fn exhaustion_and_recovery() {
        let cfg = PoolConfig::default();
        let p = pool(0x10_0000, 1024, cfg);
        let runs: Vec<usize> = (0..8).map(|_| p.alloc(req(128, 2, 0), head(128)).expect("segment")).collect();
        assert!(p.alloc(req(1, 1, 0), head(1)).is_none());
        assert_eq!(p.slots_in_use(), 1024);
        assert_eq!(p.high_water(), 1024);
        p.free(runs[3], 128);
        assert_eq!(p.alloc(req(128, 1, 0), head(128)), Some(runs[3]));
    }

    /// A run never crosses a segment, even when the free slots on both sides would do.
    #[test]
    fn runs_stay_inside_segments() {
        let cfg = PoolConfig { slot_size: SLOT, max_run_slots: 8, areas: 1 };
        let p = pool(0x10_0000, 16, cfg);
        let a = p.alloc(req(6, 1, 0), head(6)).unwrap();
        let b = p.alloc(req(6, 1, 0), head(6)).unwrap();
        assert_eq!((a, b), (0, 8));
        // Slots 6..8 and 14..16 are free: four in all, no run of three inside one segment.
        assert!(p.alloc(req(3, 1, 0), head(3)).is_none());
        assert_eq!(p.alloc(req(2, 1, 0), head(2)), Some(6));
    }

    /// Alignment bits below the request's mask are honoured (min_align_mask offset preservation).
    #[test]
    fn alignment_bits() {
        let cfg = PoolConfig::default();
        let p = pool(0x10_0000, 512, cfg);
        for bits in 0..8 {
            let r = req(3, 8, bits);
            let i = p.alloc(r, head(3)).unwrap();
            assert_eq!((0x10_0000 + (i * SLOT) as u64) & r.align_mask, r.align_bits);
        }
    }

    /// Only the head slot's record is written; unmap in one lock frees a to-device run at once.
    #[test]
    fn head_only_and_release_or_free() {
        let cfg = PoolConfig::default();
        let p = pool(0x10_0000, 256, cfg);
        let i = p.alloc(req(4, 1, 0), head(4)).unwrap();
        {
            let st = p.areas[0].state.lock();
            assert_eq!(st.meta[i].state(), HEAD);
            assert!(st.meta[i + 1..i + 4].iter().all(|m| m.state() == FREE && m.len == 0));
        }
        let off = (i * SLOT) as u64;
        let r: Option<Result<Taken, ()>> = p.release_or_free(off, |_| Err(()), |_| false);
        assert!(matches!(r, Some(Err(()))));
        assert_eq!(p.slots_in_use(), 4, "a refused check changes nothing");
        let r: Option<Result<Taken, ()>> = p.release_or_free(off, |_| Ok(()), |_| true);
        assert!(matches!(r, Some(Ok(Taken::Released(_)))));
        assert!(p.lookup(off, false).is_none(), "released: no second unmap");
        p.free(i, 4);
        let j = p.alloc(req(4, 1, 0), head(4)).unwrap();
        let r: Option<Result<Taken, ()>> = p.release_or_free((j * SLOT) as u64, |_| Ok(()), |_| false);
        assert!(matches!(r, Some(Ok(Taken::Freed(_)))));
        assert_eq!(p.slots_in_use(), 0);
        assert!(p.release_or_free::<()>((j * SLOT) as u64, |_| Ok(()), |_| false).is_none());
    }

    /// A CPU hint picks the area the search starts in.
    #[test]
    fn cpu_hint() {
        let cfg = PoolConfig { slot_size: SLOT, max_run_slots: 128, areas: 4 };
        let p = pool(0x10_0000, 512, cfg);
        let r = p.alloc_near(req(3, 1, 0), head(3), 6).unwrap();
        assert_eq!(r / 128, 2, "CPU 6 of 4 areas starts at area 2");
        let got = p.release_or_free::<()>((r * SLOT) as u64, |_| Ok(()), |_| false);
        assert!(matches!(got, Some(Ok(Taken::Freed(_)))));
        assert_eq!(p.slots_in_use(), 0);
    }

    /// Bookkeeping words read by one allocation attempt, over every area.
    fn visits(p: &BouncePool<'_>, r: RunRequest) -> (Option<usize>, usize) {
        for a in &p.areas[..p.area_count] {
            a.state.lock().visited.set(0);
        }
        let got = p.alloc(r, head(r.nslots));
        let v = p.areas[..p.area_count].iter().map(|a| a.state.lock().visited.get()).sum();
        (got, v)
    }

    /// Fill with page pairs, free every other: half the pool free, no free run longer than 2 slots.
    fn fragment(p: &BouncePool<'_>) {
        let mut runs = Vec::new();
        while let Some(i) = p.alloc(req(2, 2, 0), head(2)) {
            runs.push(i);
        }
        runs.sort_unstable();
        for i in runs.into_iter().step_by(2) {
            p.free(i, 2);
        }
    }

    /// A request that cannot be met reads no bookkeeping word, whatever the pool's size; one that
    /// can is met after a number of word reads that does not grow with the size either.
    #[test]
    fn failing_request_cost_is_independent_of_size() {
        let mut costs = Vec::new();
        for slots in [8 << 10, 32 << 10, 128 << 10] {
            let p = pool(0x1000_0000, slots, PoolConfig::default());
            fragment(&p);
            let (got, fail_words) = visits(&p, req(128, 2, 0));
            assert!(got.is_none());
            // Aligned requests whose length a free run has but whose alignment none meets: one
            // chunk looked at per area at most before refusing... none, since the 2-slot runs are
            // page-aligned and a 3-slot request exceeds them.
            let (got3, fail3) = visits(&p, req(3, 1, 0));
            assert!(got3.is_none());
            let (got2, ok_words) = visits(&p, req(2, 2, 0));
            assert!(got2.is_some());
            costs.push((fail_words, fail3, ok_words));
        }
        assert!(costs.iter().all(|&(f, f3, _)| f == 0 && f3 == 0), "{costs:?}");
        // Success: a tree walk (depth grows with log2 of the chunks) plus one chunk's words.
        let ok: Vec<usize> = costs.iter().map(|c| c.2).collect();
        assert!(ok.iter().all(|&w| w <= 160), "word reads for a met request: {ok:?}");
    }

    /// The one case the summary cannot refuse outright: an aligned request whose length some free
    /// runs have but whose alignment none meets (and no run has `n + period - 1` slots). It looks at
    /// the chunks that have such runs, each once: bounded by their number, not by a slot walk.
    #[test]
    fn misaligned_runs_cost_one_scan_per_qualifying_chunk() {
        let cfg = PoolConfig::default();
        let p = pool(0x1000_0000, 32 << 10, cfg);
        fragment(&p);
        // Free runs are slots [4k, 4k + 2): a page-aligned pair starting at an odd slot never fits.
        let (got, words) = visits(&p, req(2, 2, 1));
        assert!(got.is_none());
        // 256 chunks of 128 slots, 32 free runs each: at most four word reads per run.
        let chunks = (32 << 10) / 128;
        assert!(words <= chunks * (32 * 4 + 16), "{words}");
    }
}
