//! An area's front: its recently freed runs, kept by exact size and reused before the run tree is
//! searched.
//!
//! A free of `n` slots (`1 <= n <=` [`CLASSES`], and no longer than a segment) may leave the bitmap
//! and the tree alone: the run stays marked used
//! there, its head is marked [`CACHED`] and pushed on the list of `n`-slot runs. An allocation of `n`
//! slots takes the list's first run when its start meets the request's alignment: no tree walk, no
//! bitmap scan, no leaf update either way. A run handed out is exactly the run that was freed, so
//! exact sizes, segments (a freed run was inside one) and alignment (checked on every reuse) hold as
//! they do for runs from the tree.
//!
//! Bounds: the lists hold at most a quarter of the area's slots and no more than the tree has free
//! (at most half of the area's free slots), so a front cannot starve the tree. A request no tree can meet flushes the fronts (every listed
//! run back to its tree, merged with its neighbours) and searches again, so the front never refuses
//! what the pool could give. (The allocation: the first area whose published mask lists `n`, no
//! lock waited for; then each area with room, its front then its tree, no lock waited for; then,
//! only when an area was busy or its tree failed beside a non-empty front, every area locked, its
//! front flushed before it is given up.) Listed slots are free for [`super::BouncePool::slots_in_use`]
//! and the high-water mark. A flush merges listed runs with the free runs around them, so while the
//! front holds anything the area's published longest run is a bound of what a flush could make
//! (its segment length at most): the lock-free refusal never skips an area that could serve, and
//! is exact again once a refusal has flushed the front.
//!
//! Which sizes an area lists is published beside its longest run (one atomic word, [`summary`]), so
//! an allocation looks for a listed run in every area before it searches any tree, without a lock.
//!
//! Storage: the mask of non-empty lists and the slots they hold in one word of the area's state
//! ([`AreaState::front`]); the list heads in the area's own metadata words after the tree's (word
//! `tree_base + leaves + n - 1` for runs of `n` slots: `index + 1` of its first run, 0 for none),
//! which every area of at least [`CLASSES`] slots has spare; the link
//! to the next run of a list is in the listed head's `orig` (`index + 1`, 0 at the end). Building
//! an area writes every entry to [`SlotMeta::EMPTY`] and its state anew, so a pool built again over
//! the same metadata (a released or regrown pool) starts with empty lists: no run of a former pool
//! can come back.

use super::area::AreaState;
use super::*;

/// Most size classes: runs of 1..=48 slots (96 KiB of 2 KiB slots), so the mask of non-empty
/// lists fits beside the 16-bit longest run in one published word.
pub(super) const CLASSES: usize = 48;
/// [`AreaState::front`]: the mask of non-empty lists (bit `n - 1` for runs of `n` slots).
const MASK: u64 = (1 << CLASSES) - 1;
/// [`AreaState::front`]: slots listed, 15 bits from bit 48.
const SLOTS_SHIFT: u32 = 48;
const SLOTS_MAX: usize = 0x7fff;
/// [`AreaState::front`]: this area has no front (too small for its list heads).
const OFF: u64 = 1 << 63;

/// An area's published word: `longest` (a bound of the longest run it can give, < 2^16) and the
/// mask of its non-empty lists (bit `n - 1` for runs of `n` slots) above it.
#[inline(always)]
pub(super) fn summary(longest: usize, mask: u64) -> u64 {
    (longest.min(0xffff) as u64) | (mask & MASK) << 16
}

/// The summary's bit for runs of `n` slots (0 for a size no front lists).
pub(super) fn class_bit(n: usize) -> u64 {
    let k = n.wrapping_sub(1);
    if k < CLASSES {
        1 << (16 + k)
    } else {
        0
    }
}

impl AreaState<'_> {
    /// Word index of the list head of runs of `n` slots (`1 <= n <= CLASSES`).
    #[inline(always)]
    fn list_at(&self, n: usize) -> usize {
        self.tree_base + self.leaves + n - 1
    }

    /// Set up an empty front (the metadata is all [`SlotMeta::EMPTY`]); none when the spare words
    /// after the tree cannot hold every list head.
    pub(super) fn init_front(&mut self) {
        let spare = self.len().saturating_sub(self.tree_base + self.leaves);
        self.front = if spare >= CLASSES { 0 } else { OFF };
    }

    /// Whether the front lists a run of `n` slots (a load and a test, before [`Self::front_pop`]'s
    /// call).
    #[inline(always)]
    pub(super) fn lists(&self, n: usize) -> bool {
        n.wrapping_sub(1) < CLASSES && self.front >> (n - 1) & 1 != 0
    }

    /// Slots held by the front (allocated in the bitmap, free for the counters).
    #[inline(always)]
    pub(super) fn cached(&self) -> usize {
        (self.front >> SLOTS_SHIFT) as usize & SLOTS_MAX
    }

    /// At least the longest free run a flush could leave: the tree's when the front is empty;
    /// otherwise listed runs may merge with free ones around them, within one segment.
    #[inline]
    pub(super) fn longest_bound(&self) -> usize {
        let cached = self.cached();
        if cached == 0 {
            self.top
        } else {
            self.top.max(self.seg.min(self.free + cached))
        }
    }

    /// What [`super::area::Area::publish`] stores: [`summary`] of this area now.
    #[inline]
    pub(super) fn summary(&self) -> u64 {
        summary(self.longest_bound(), self.front)
    }

    /// The first listed run of exactly `n` slots, if `fits` accepts its start: its index.
    #[inline(never)]
    pub(super) fn front_pop(&mut self, n: usize, fits: impl Fn(usize) -> bool) -> Option<usize> {
        if n.wrapping_sub(1) >= CLASSES {
            return None;
        }
        self.take_listed(n, &fits)
    }

    /// Take the first listed run of `n` slots (`1 <= n <= CLASSES`) if `fits` accepts its start.
    #[inline]
    fn take_listed(&mut self, n: usize, fits: &impl Fn(usize) -> bool) -> Option<usize> {
        let k = n.wrapping_sub(1);
        if self.front >> k & 1 == 0 {
            return None;
        }
        let at = self.list_at(n);
        let first = (self.meta.get(at)?.word as usize).wrapping_sub(1);
        if !fits(first) {
            return None;
        }
        let Some(head) = self.meta.get_mut(first).filter(|h| h.state() == CACHED && h.nslots as usize == n)
        else {
            // Not a listed run: a broken list is dropped rather than followed (its runs stay
            // allocated in the bitmap: lost to the pool, never handed out twice).
            self.front &= !(1 << k);
            return None;
        };
        let next = head.orig as u64;
        head.orig = 0;
        head.set_state(FREE);
        if let Some(m) = self.meta.get_mut(at) {
            m.word = next;
        }
        let slots = self.cached().saturating_sub(n) as u64;
        let mask = if next == 0 { self.front & !(1 << k) } else { self.front };
        self.front = mask & MASK | slots << SLOTS_SHIFT;
        Some(first)
    }

    /// List the run `[i, i + n)` (its head's record cleared already) instead of freeing it in the
    /// bitmap; false, and nothing changed, when it does not fit the front's bounds.
    #[inline]
    pub(super) fn front_push(&mut self, i: usize, n: usize) -> bool {
        self.front_push_inline(i, n)
    }

    /// [`Self::front_push`], always inline: the unmap's free to the front (`free_to_front`), where
    /// the compiler's own choice varied with the code around it (out of line: +27 callgrind
    /// instructions per 4 KiB map+unmap).
    #[inline(always)]
    pub(super) fn front_push_inline(&mut self, i: usize, n: usize) -> bool {
        let listed = self.cached() + n;
        let cap = (self.len() >> 2).min(self.free).min(SLOTS_MAX);
        if n.wrapping_sub(1) >= CLASSES || n > self.seg || listed > cap || self.front & OFF != 0 {
            return false;
        }
        self.list(i, n);
        true
    }

    /// Put `[i, i + n)` (`1 <= n <= CLASSES`, allocated in the bitmap, no live record) first on
    /// its list. Its one caller is [`Self::front_push_inline`].
    #[inline(always)]
    fn list(&mut self, i: usize, n: usize) {
        let k = n.wrapping_sub(1);
        let at = self.list_at(n);
        let Some(first) = self.meta.get(at).map(|m| m.word) else { return };
        let Some(head) = self.meta.get_mut(i) else { return };
        head.set_state(CACHED);
        head.nslots = n as u16;
        head.orig = first as usize;
        if let Some(m) = self.meta.get_mut(at) {
            m.word = i as u64 + 1;
        }
        let listed = (self.cached() + n) as u64;
        self.front = (self.front | 1 << k) & MASK | listed << SLOTS_SHIFT;
    }

    /// Give listed runs back to the bitmap and tree, the longest sizes first, until one merges
    /// into a free run of `want` slots or more (with `want` past a segment: every listed run).
    /// Returns whether there was any. The runs still listed after an early stop are runs the
    /// request did not need: a run of `want` holds the request at any alignment (`want` is its
    /// length plus the alignment's stride less one), and they stay for hits at their sizes.
    #[inline(never)]
    pub(super) fn front_flush(&mut self, want: usize) -> bool {
        if self.cached() == 0 {
            return false;
        }
        let (mut mask, mut listed) = (self.front & MASK, self.cached());
        while mask != 0 {
            let k = 63 - mask.leading_zeros() as usize;
            let n = k + 1;
            let at = self.list_at(n);
            let Some(m) = self.meta.get_mut(at) else { break };
            let mut link = core::mem::take(&mut m.word) as usize;
            // The lists hold `listed` slots; the bound keeps a broken list from looping (a broken
            // list is dropped where it breaks: its runs stay allocated, never handed out).
            while let (Some(i), true) = (link.checked_sub(1), listed >= n) {
                let Some(head) = self.meta.get_mut(i) else { break };
                if head.state() != CACHED || head.nslots as usize != n {
                    break;
                }
                link = head.orig;
                head.orig = 0;
                head.set_state(FREE);
                listed -= n;
                if self.give(i, n) >= want {
                    // Made: the rest of this list and the shorter sizes stay listed.
                    if let Some(m) = self.meta.get_mut(at) {
                        m.word = link as u64;
                    }
                    self.front = mask & !(u64::from(link == 0) << k) | (listed as u64) << SLOTS_SHIFT;
                    return true;
                }
            }
            mask &= !(1 << k);
        }
        self.front = 0;
        true
    }
}
