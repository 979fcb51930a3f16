//! One area of a pool: a free-slot bitmap and a 4-ary tree of the longest free run per chunk, in the
//! area's own metadata words, behind the area's lock; the counters read without it beside the lock.

use super::*;

/// One area's allocator state, behind its lock. The bookkeeping lives in the `word` of the area's
/// first metadata entries: `bitmap_words` words of free-slot bitmap, then the tree's nodes 2.. packed
/// four to a word (node 1, the root, is `top`).
pub(super) struct AreaState<'m> {
    pub(super) meta: &'m mut [SlotMeta],
    /// The front (`front.rs`): the mask of non-empty lists, the slots they hold, whether the area
    /// has a front at all.
    pub(super) front: u64,
    /// Slots per segment (no run crosses one).
    pub(super) seg: usize,
    /// Slots per chunk (a tree leaf): whole segments, at least 64 slots unless the area is shorter.
    pub(super) chunk: usize,
    /// Number of chunks.
    pub(super) chunks: usize,
    /// log2 of `seg` and `chunk` when they are powers of two (else `NO_SHIFT`): no divide on the
    /// usual geometries.
    pub(super) seg_shift: u32,
    pub(super) chunk_shift: u32,
    /// Node number of the first leaf. The tree is 4-ary and complete: node 0 is the root, node `v`'s
    /// children are `4v + 1..=4v + 4`, and those four share one word (16 bits each), so a step up or
    /// down the tree is one word.
    pub(super) leaves: usize,
    /// Word index of the children of node 0 (the bitmap's length in words); node `v`'s children are
    /// in word `tree_base + v`.
    pub(super) tree_base: usize,
    /// Root of the tree: the longest free run of the area.
    pub(super) top: usize,
    /// Free slots.
    pub(super) free: usize,
    /// Bookkeeping words read, for the tests that bound the search.
    #[cfg(test)]
    pub(super) visited: core::cell::Cell<usize>,
}

/// The geometry of an area of `len` slots with `seg`-slot segments: chunk size, chunks, first leaf,
/// and the bookkeeping words it needs (bitmap, then one word per inner node of the tree). The tree
/// has `4^d >= chunks` leaves and `(4^d - 1) / 3 < 4 * chunks / 3` inner nodes, so the words are at
/// most `ceil(len / 64) + 4 * ceil(len / 64) / 3`, which is `<= len` for every `len` (one word for
/// one or two slots): the area's own metadata always has room and `PoolConfig::slots_for` stays one
/// entry per slot.
pub(super) const fn area_geometry(len: usize, seg: usize) -> (usize, usize, usize, usize) {
    // `seg` is at least 1 (`PoolConfig::validate`); said again so no divide can see a zero.
    let seg = if seg == 0 { 1 } else { seg };
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
pub(super) fn lanes_at_least(word: u64, want: usize) -> u64 {
    const TOP: u64 = 0x8000_8000_8000_8000;
    const ONE: u64 = 0x0001_0001_0001_0001;
    ((word | TOP) - want as u64 * ONE) & TOP
}

/// The largest of a tree word's four lanes.
pub(super) fn max_lane(word: u64) -> usize {
    let a = (word & 0xffff).max(word >> 16 & 0xffff);
    let b = (word >> 32 & 0xffff).max(word >> 48);
    a.max(b) as usize
}

impl<'m> AreaState<'m> {
    pub(super) const fn empty() -> AreaState<'m> {
        AreaState {
            meta: &mut [],
            front: 0,
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
    pub(super) fn new(meta: &'m mut [SlotMeta], seg: usize) -> AreaState<'m> {
        let len = meta.len();
        let (chunk, chunks, leaves, words) = area_geometry(len, seg);
        debug_assert!(words <= len);
        for m in meta.iter_mut() {
            *m = SlotMeta::EMPTY;
        }
        let mut a = AreaState {
            meta,
            front: 0,
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
        a.init_front();
        a
    }

    /// Slots of this area.
    #[inline(always)]
    pub(super) fn len(&self) -> usize {
        self.meta.len()
    }

    /// Bookkeeping word `w` (0, all used, past the metadata: never the case for a word the
    /// geometry names).
    pub(super) fn word(&self, w: usize) -> u64 {
        #[cfg(test)]
        self.visited.set(self.visited.get() + 1);
        self.meta.get(w).map_or(0, |m| m.word)
    }

    /// First index in `[from, hi)` whose bit is `free` (1 = free), or `hi`.
    pub(super) fn next_bit(&self, from: usize, hi: usize, free: bool) -> usize {
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
    pub(super) fn set_bits(&mut self, i: usize, n: usize, free: bool) {
        let end = i + n;
        let mut k = i;
        while k < end {
            let (w, b) = (k / 64, k % 64);
            let m = (end - k).min(64 - b);
            let mask = if m == 64 { !0 } else { ((1u64 << m) - 1) << b };
            let Some(entry) = self.meta.get_mut(w) else { return };
            let word = &mut entry.word;
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

    pub(super) fn node(&self, v: usize) -> usize {
        if v == 0 {
            return self.top;
        }
        let k = v - 1;
        ((self.word(self.tree_base + k / 4) >> (16 * (k % 4))) & 0xffff) as usize
    }

    /// The longest free run inside one segment of chunk `c`.
    pub(super) fn chunk_longest(&self, c: usize) -> usize {
        let lo = c * self.chunk;
        let hi = (lo + self.chunk).min(self.len());
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
    pub(super) fn longest_in(&self, lo: usize, hi: usize) -> usize {
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
    pub(super) fn run_around(&self, i: usize, n: usize) -> (usize, usize) {
        let seg_lo = i - rem(i, self.seg, self.seg_shift);
        let seg_hi = (seg_lo + self.seg).min(self.len());
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
    /// One word per level: each node's lane is raised in place, up to the first that is `x` or more.
    pub(super) fn raise_leaf(&mut self, c: usize, x: usize) {
        let mut v = self.leaves + c;
        while v > 0 {
            let k = v - 1;
            let shift = 16 * (k % 4);
            let Some(word) = self.tree_word_mut(k / 4) else { return };
            if (*word >> shift & 0xffff) as usize >= x {
                return;
            }
            *word = (*word & !(0xffff << shift)) | (x as u64) << shift;
            v = k / 4;
        }
        self.top = self.top.max(x);
    }

    /// Recompute chunk `c`'s leaf and the ancestors that change.
    pub(super) fn update_leaf(&mut self, c: usize) {
        let x = self.chunk_longest(c);
        self.set_leaf(c, x);
    }

    /// Set chunk `c`'s leaf to `x` (its exact longest run) and fix the ancestors that change. One
    /// word per level: a node's value is the largest lane of its children's word, so the parent
    /// changes only when that largest lane does, and the parent's own word is read only then.
    #[inline(never)]
    pub(super) fn set_leaf(&mut self, c: usize, x: usize) {
        let (mut v, mut x) = (self.leaves + c, x);
        while v > 0 {
            let k = v - 1;
            let shift = 16 * (k % 4);
            let Some(word) = self.tree_word_mut(k / 4) else { return };
            let old = *word;
            if (old >> shift & 0xffff) as usize == x {
                return;
            }
            let new = (old & !(0xffff << shift)) | (x as u64) << shift;
            *word = new;
            let m = max_lane(new);
            if m == max_lane(old) {
                return;
            }
            (v, x) = (k / 4, m);
        }
        self.top = x;
    }

    /// The tree word holding the children of node `p` (for the update of one of them).
    #[inline(always)]
    fn tree_word_mut(&mut self, p: usize) -> Option<&mut u64> {
        #[cfg(test)]
        self.visited.set(self.visited.get() + 1);
        self.meta.get_mut(self.tree_base + p).map(|m| &mut m.word)
    }

    /// The lowest chunk at or after `from` whose leaf is at least `want`: up the tree while the
    /// nodes right of the path are all too small, then down to the leftmost leaf big enough; one
    /// word per level each way.
    pub(super) fn chunk_at_least(&self, from: usize, want: usize) -> Option<usize> {
        if from >= self.chunks || self.top < want {
            return None;
        }
        let mut v = self.leaves + from;
        // From the first chunk (every search's first look): straight down from the root, whose
        // value `top` is at least `want`; the climb below would read the levels on the way up first.
        if from == 0 {
            v = 0;
        }
        while v != 0 {
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
    pub(super) fn fit_in_chunk(
        &self,
        c: usize,
        n: usize,
        first: usize,
        period: usize,
    ) -> Option<(usize, (usize, usize))> {
        let lo = c * self.chunk;
        let hi = (lo + self.chunk).min(self.len());
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
                        if start + n > e {
                            // Later runs' aligned starts are later still: none fits here (sparse
                            // alignments skip a segment after one look).
                            break;
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
    pub(super) fn find(&self, n: usize, first: usize, period: usize) -> Option<(usize, (usize, usize))> {
        if self.top < n || self.free < n {
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
    pub(super) fn take(&mut self, i: usize, n: usize, (a, b): (usize, usize)) {
        self.set_bits(i, n, false);
        self.free -= n;
        let c = div(i, self.chunk, self.chunk_shift);
        if b - a < self.node(self.leaves + c) {
            return;
        }
        let lo = c * self.chunk;
        if self.chunk == self.seg && (a, b) == (lo, (lo + self.chunk).min(self.len())) {
            // The chunk is one segment and was wholly free: what is left of it are the two pieces
            // around the new run, no scan needed (the common case of a lightly used pool).
            self.set_leaf(c, (i - a).max(b - i - n));
        } else {
            self.update_leaf(c);
        }
    }

    /// Give back `[i, i + n)`: the merged free run around it may raise the chunk's leaf, nothing
    /// else. Returns that run's length.
    pub(super) fn give(&mut self, i: usize, n: usize) -> usize {
        self.set_bits(i, n, true);
        self.free += n;
        let (a, b) = self.run_around(i, n);
        self.raise_leaf(div(i, self.chunk, self.chunk_shift), b - a);
        b - a
    }
}

/// Marks a divisor that is not a power of two.
pub(super) const NO_SHIFT: u32 = u32::MAX;

/// log2 of `d` for a power of two, else [`NO_SHIFT`].
pub(super) fn shift_of(d: usize) -> u32 {
    if d.is_power_of_two() {
        d.trailing_zeros()
    } else {
        NO_SHIFT
    }
}

/// `x / d`, a shift when `shift` (from [`shift_of`]) says `d` is a power of two (0 for `d == 0`,
/// which no geometry has).
pub(super) fn div(x: usize, d: usize, shift: u32) -> usize {
    if shift == NO_SHIFT {
        x.checked_div(d).unwrap_or(0)
    } else {
        x >> (shift & (usize::BITS - 1))
    }
}

/// `x % d`, as [`div`].
pub(super) fn rem(x: usize, d: usize, shift: u32) -> usize {
    if shift == NO_SHIFT {
        x.checked_rem(d).unwrap_or(0)
    } else {
        x & d.wrapping_sub(1)
    }
}

/// The low `bits` bits set (`bits <= 64`).
pub(super) fn low_mask(bits: usize) -> u64 {
    if bits >= 64 {
        !0
    } else {
        (1u64 << bits) - 1
    }
}

/// The first index at or after `a` of the form `first + k * period` (`a >= first` or the result is
/// `first`).
pub(super) fn align_up(a: usize, first: usize, period: usize) -> usize {
    if a <= first {
        return first;
    }
    let r = if period.is_power_of_two() {
        (a - first) & (period - 1)
    } else {
        (a - first).checked_rem(period).unwrap_or(0)
    };
    if r == 0 {
        a
    } else {
        a + (period - r)
    }
}

/// An area: its lock and, on the same cache line, the counters read without it. 128 bytes (pinned
/// below): the layer holds `POOLS * AREAS` of them.
#[repr(align(128))]
pub(super) struct Area<'m> {
    pub(super) state: Mutex<AreaState<'m>>,
    /// The area's longest free run (the tree's root, or a bound while its front lists runs) and
    /// the sizes its front lists ([`super::front::summary`]), published after every change: an
    /// area that cannot serve a request is skipped without taking its lock.
    pub(super) summary: AtomicU64,
    /// Most slots allocated at once in this area (saturating; the slots in use now are read under
    /// the lock, [`Self::used`]).
    pub(super) high: AtomicU32,
    /// Counted runs ([`super::COUNTED`]) live now (wrapping; never more than the area's slots).
    pub(super) live: AtomicU32,
    /// Counted runs ever allocated: the maps of the layer's statistics made here.
    pub(super) maps: AtomicU64,
    /// Bytes copied in at those maps.
    pub(super) to_device: AtomicU64,
}

impl AreaState<'_> {
    /// Slots allocated (the front's listed runs are free for the counters).
    pub(super) fn used(&self) -> usize {
        self.len().saturating_sub(self.free + self.cached())
    }
}

// The layer's size is C's reservation (`CCDMA_LAYER_SIZE`, `CCDMA_SMALL_LAYER_SIZE`): an area is
// one 128-byte line, counters included (tests add a field to the state, hence `not(test)`).
#[cfg(not(test))]
const _: () = assert!(core::mem::size_of::<Area<'static>>() == 128);

/// Plain add by the lock holder (the only writer): a load and a store, no read-modify-write.
#[inline(always)]
fn bump64(c: &AtomicU64, by: u64) {
    c.store(c.load(Ordering::Relaxed).wrapping_add(by), Ordering::Relaxed);
}

impl<'m> Area<'m> {
    pub(super) const fn empty() -> Area<'m> {
        Area {
            state: Mutex::new(AreaState::empty()),
            summary: AtomicU64::new(0),
            high: AtomicU32::new(0),
            live: AtomicU32::new(0),
            maps: AtomicU64::new(0),
            to_device: AtomicU64::new(0),
        }
    }

    /// [`Self::publish`] after a change that took and freed nothing (a flush), out of line.
    #[inline(never)]
    pub(super) fn publish_outlined(&self, st: &AreaState<'_>) {
        self.publish(st, 0, 0);
    }

    /// Publish the summary and counters after a change made under the lock (`taken` or `freed`
    /// slots). Plain stores, no read-modify-write: only the lock holder writes them. The longest
    /// run is a bound of what a flush of the front could make (see `front.rs`); the front's slots
    /// are free for the counters.
    #[inline]
    pub(super) fn publish(&self, st: &AreaState<'_>, taken: usize, freed: usize) {
        self.summary.store(st.summary(), Ordering::Relaxed);
        if taken > freed {
            let used = u32::try_from(st.used()).unwrap_or(u32::MAX);
            if used > self.high.load(Ordering::Relaxed) {
                self.high.store(used, Ordering::Relaxed);
            }
        }
    }

    /// Slots allocated now (takes the lock: for reports and the shrink's idle check). Out of line:
    /// inlined, its lock's loop went into every caller's loop over the areas (pseries kernel: +~5 KB
    /// of .text in release_pools, shrink_all and remove_grown).
    #[inline(never)]
    pub(super) fn used(&self) -> usize {
        self.state.lock().used()
    }

    /// Count a map of `bytes` copied in, under the lock (the caller holds it: `_st`).
    #[inline(always)]
    pub(super) fn count_map(&self, _st: &AreaState<'_>, bytes: usize) {
        bump64(&self.maps, 1);
        bump64(&self.to_device, bytes as u64);
        self.live.store(self.live.load(Ordering::Relaxed).wrapping_add(1), Ordering::Relaxed);
    }

    /// Count the end of a counted run, under the lock (`_st`).
    #[inline(always)]
    pub(super) fn count_unmap(&self, _st: &AreaState<'_>) {
        self.live.store(self.live.load(Ordering::Relaxed).wrapping_sub(1), Ordering::Relaxed);
    }

    /// Take back a map counted by [`Self::count_map`] that did not happen (its run is freed with
    /// [`Self::count_unmap`] as well), under the lock (`_st`).
    pub(super) fn uncount_map(&self, _st: &AreaState<'_>, bytes: usize) {
        bump64(&self.maps, u64::MAX);
        bump64(&self.to_device, (bytes as u64).wrapping_neg());
    }

    /// The area's maps, unmaps and bytes in (read without the lock: a map or unmap running meanwhile
    /// may be seen in one counter and not yet the other; never more unmaps than maps).
    pub(super) fn tally(&self) -> PoolTally {
        let live = u64::from(self.live.load(Ordering::Relaxed));
        let maps = self.maps.load(Ordering::Relaxed);
        PoolTally {
            maps,
            unmaps: maps.saturating_sub(live),
            to_device: self.to_device.load(Ordering::Relaxed),
        }
    }
}
