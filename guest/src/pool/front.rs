//! An area's front: its recently freed runs, kept by exact size and reused before the run tree is
//! searched.
//!
//! A free of `n` slots (`1 <= n <=` the area's class count: [`CLASSES`], or the segment length, or
//! what the area's spare metadata words hold, whichever is least) may leave the bitmap and the tree alone: the run stays marked used
//! there, its head is marked [`CACHED`] and pushed on the list of `n`-slot runs. An allocation of `n`
//! slots takes the list's first run when its start meets the request's alignment: no tree walk, no
//! bitmap scan, no leaf update either way. A run handed out is exactly the run that was freed, so
//! exact sizes, segments (a freed run was inside one) and alignment (checked on every reuse) hold as
//! they do for runs from the tree.
//!
//! Bounds: the lists hold at most an eighth of the area's slots and never more than the tree has
//! free, so a front cannot starve the tree. A request the tree cannot meet flushes the front (every
//! listed run back to the tree, merged with its neighbours) and searches again, so the front never
//! refuses what the pool could give. Listed slots are free for [`super::BouncePool::slots_in_use`]
//! and the high-water mark. A flush merges listed runs with the free runs around them, so while the
//! front holds anything the area's published longest run is a bound of what a flush could make
//! (its segment length at most): the lock-free refusal never skips an area that could serve, and
//! is exact again once a refusal has flushed the front.
//!
//! Which sizes an area lists is published beside its longest run (one atomic word, [`summary`]), so
//! an allocation looks for a listed run in every area before it searches any tree, without a lock.
//!
//! Storage: the area's own metadata words after the tree (word `tree_base + leaves` is the header:
//! slots listed and class count; the next word the mask of non-empty lists; then `classes` words
//! of list heads, each `index + 1` of its first run, 0 for none); the link
//! to the next run of a list is in the listed head's `orig` (`index + 1`, 0 at the end). Building
//! an area writes every entry to [`SlotMeta::EMPTY`], so a pool built again over the same metadata
//! (a released or regrown pool) starts with empty lists: no run of a former pool can come back.

use super::area::AreaState;
use super::*;

/// Most size classes: runs of 1..=48 slots (96 KiB of 2 KiB slots), so the mask of non-empty
/// lists fits beside the 16-bit longest run in one published word.
pub(super) const CLASSES: usize = 48;
/// Header bits: slots listed now.
const SLOTS: u64 = 0xffff_ffff;
/// Header: the number of size classes (0: this area has no front).
const CLASSES_SHIFT: u32 = 48;
/// The lists hold at most `len >> SHARE_SHIFT` slots.
const SHARE_SHIFT: u32 = 3;

/// An area's published word: `longest` (a bound of the longest run it can give, < 2^16) and the
/// mask of its non-empty lists (bit `n - 1` for runs of `n` slots) above it.
pub(super) fn summary(longest: usize, mask: u64) -> u64 {
    (longest.min(0xffff) as u64) | mask << 16
}

/// The summary's bit for runs of `n` slots (0 for a size no front lists).
pub(super) fn class_bit(n: usize) -> u64 {
    match n.checked_sub(1) {
        Some(k) if k < CLASSES => 1 << (16 + k),
        _ => 0,
    }
}

impl AreaState<'_> {
    /// Word index of the front's header: the first word after the tree's.
    fn front_at(&self) -> usize {
        self.tree_base + self.leaves
    }

    fn front_word(&self, k: usize) -> u64 {
        self.meta.get(self.front_at() + k).map_or(0, |m| m.word)
    }

    fn set_front_word(&mut self, k: usize, x: u64) {
        let at = self.front_at() + k;
        if let Some(m) = self.meta.get_mut(at) {
            m.word = x;
        }
    }

    /// Set up an empty front (the metadata is all [`SlotMeta::EMPTY`]): one class per run length up
    /// to [`CLASSES`] and the segment, as many as the spare words after the tree hold.
    pub(super) fn init_front(&mut self) {
        let classes = CLASSES.min(self.seg).min(self.len.saturating_sub(self.front_at() + 2));
        self.set_front_word(0, (classes as u64) << CLASSES_SHIFT);
        self.set_front_word(1, 0);
    }

    /// Slots held by the front (allocated in the bitmap, free for the counters).
    pub(super) fn cached(&self) -> usize {
        (self.front_word(0) & SLOTS) as usize
    }

    /// The mask of non-empty lists (bit `n - 1` for runs of `n` slots).
    pub(super) fn front_mask(&self) -> u64 {
        self.front_word(1)
    }

    /// At least the longest free run a flush could leave: the tree's when the front is empty;
    /// otherwise listed runs may merge with free ones around them, within one segment.
    pub(super) fn longest_bound(&self) -> usize {
        let cached = self.cached();
        if cached == 0 {
            self.top
        } else {
            self.top.max(self.seg.min(self.free + cached))
        }
    }

    /// What [`super::area::Area::publish`] stores: [`summary`] of this area now.
    pub(super) fn summary(&self) -> u64 {
        summary(self.longest_bound(), self.front_mask())
    }

    /// Take the first listed run of exactly `n` slots if `fits` accepts its start: its index.
    pub(super) fn front_pop(&mut self, n: usize, fits: impl FnOnce(usize) -> bool) -> Option<usize> {
        let mask = self.front_word(1);
        let k = n.checked_sub(1)?;
        if k >= CLASSES || mask >> k & 1 == 0 {
            return None;
        }
        let at = self.front_at() + 1 + n;
        let first = (self.meta.get(at)?.word as usize).checked_sub(1)?;
        if !fits(first) {
            return None;
        }
        let h = self.front_word(0);
        let head = self.meta.get_mut(first)?;
        if head.state() != CACHED || head.nslots as usize != n {
            // Not a listed run: a broken list is dropped rather than followed (its runs stay
            // allocated in the bitmap: lost to the pool, never handed out twice).
            self.meta.get_mut(at)?.word = 0;
            self.set_front_word(1, mask & !(1 << k));
            return None;
        }
        let next = head.orig as u64;
        head.orig = 0;
        head.set_state(FREE);
        self.meta.get_mut(at)?.word = next;
        self.set_front_word(0, h & !SLOTS | (h & SLOTS).saturating_sub(n as u64));
        if next == 0 {
            self.set_front_word(1, mask & !(1 << k));
        }
        Some(first)
    }

    /// List the run `[i, i + n)` (its head's record cleared already) instead of freeing it in the
    /// bitmap; false, and nothing changed, when it does not fit the front's bounds.
    pub(super) fn front_push(&mut self, i: usize, n: usize) -> bool {
        let h = self.front_word(0);
        let classes = (h >> CLASSES_SHIFT) as usize;
        let listed = (h & SLOTS) as usize;
        if n == 0 || n > classes || listed + n > (self.len >> SHARE_SHIFT).min(self.free >> 2) {
            return false;
        }
        let at = self.front_at() + 1 + n;
        let Some(first) = self.meta.get(at).map(|m| m.word) else { return false };
        let Some(head) = self.meta.get_mut(i) else { return false };
        head.set_state(CACHED);
        head.nslots = n as u16;
        head.orig = first as usize;
        if let Some(m) = self.meta.get_mut(at) {
            m.word = i as u64 + 1;
        }
        self.set_front_word(0, h + n as u64);
        let mask = self.front_word(1);
        self.set_front_word(1, mask | 1 << (n - 1));
        true
    }

    /// Give every listed run back to the bitmap and tree. Returns whether there was any.
    pub(super) fn front_flush(&mut self) -> bool {
        let h = self.front_word(0);
        if h & SLOTS == 0 {
            return false;
        }
        let classes = (h >> CLASSES_SHIFT) as usize;
        let base = self.front_at() + 1;
        for n in 1..=classes {
            let Some(m) = self.meta.get_mut(base + n) else { break };
            let mut link = core::mem::take(&mut m.word) as usize;
            // A list is never longer than the area; the bound keeps a broken one from looping.
            let mut steps = self.len;
            while let (Some(i), true) = (link.checked_sub(1), steps > 0) {
                let Some(head) = self.meta.get_mut(i) else { break };
                if head.state() != CACHED || head.nslots as usize != n {
                    break;
                }
                link = head.orig;
                head.orig = 0;
                head.set_state(FREE);
                self.give(i, n);
                steps -= 1;
            }
        }
        self.set_front_word(0, (classes as u64) << CLASSES_SHIFT);
        self.set_front_word(1, 0);
        true
    }
}
