//! Whether flushing an area's front could help a request its tree refused (issue 21).
//!
//! A flush gives every listed run back to the tree, where it merges with the free and listed runs
//! beside it, inside its segment. So a flush can make a run of `n` slots only in a segment holding
//! at least `n` free and listed slots together. Each area with a front counts its free (bitmap)
//! slots per segment, moved by the tree's `take` and `give` (not by the front's push and pop, the
//! hot path: a listed run stays allocated in the bitmap); the refusal path counts the listed slots
//! per segment from the lists and adds them ([`AreaState::merge_bound`]). A front that no merge
//! could turn into a run of `n` keeps its runs, so a pool near full that refuses a large request
//! no longer loses every listed run (and the hits they would have been) to a flush that could
//! not have helped; and the bound (the most any segment holds) is published, so the same refusal
//! is made again from the summaries without a lock.
//!
//! Words (after the list heads): the free counts, one 16-bit lane per segment (a segment has at
//! most 4096 slots), four to a word; then as many words of scratch for the listed counts. An area
//! without room for both has no front (`init_front`).

use super::area::{div, max_lane, AreaState};
use super::front::CLASSES;

impl AreaState<'_> {
    /// Words of counts (free and scratch) for an area of `len` slots in segments of `seg`.
    pub(super) fn count_words(len: usize, seg: usize) -> usize {
        2 * len.div_ceil(seg.max(1)).div_ceil(4)
    }

    /// Word index of the first free count.
    #[inline(always)]
    fn counts_at(&self) -> usize {
        self.tree_base + self.leaves + CLASSES
    }

    /// Set every segment's free count to its length (a new area, all free). Only for an area with
    /// a front (the words exist).
    pub(super) fn init_counts(&mut self) {
        let (at, seg, len) = (self.counts_at(), self.seg.max(1), self.len());
        let mut s = 0;
        while s * seg < len {
            if let Some(m) = self.meta.get_mut(at + s / 4) {
                m.word |= ((len - s * seg).min(seg) as u64) << (16 * (s % 4));
            }
            s += 1;
        }
    }

    /// `[i, i + n)` (inside one segment) turned free (`free`) or used in the bitmap: its segment's
    /// free count. Nothing for an area without a front.
    #[inline]
    pub(super) fn count_free(&mut self, i: usize, n: usize, free: bool) {
        if !self.front_on() {
            return;
        }
        let s = div(i, self.seg, self.seg_shift);
        if let Some(m) = self.meta.get_mut(self.counts_at() + s / 4) {
            let d = (n as u64) << (16 * (s % 4));
            m.word = if free { m.word.wrapping_add(d) } else { m.word.wrapping_sub(d) };
        }
    }

    /// The most free and listed slots one segment holds: at least the longest run a flush of the
    /// front could leave. (The segment's length, conservatively, for an area without a front.)
    /// Counts the listed slots per segment from the lists, into the scratch words.
    pub(super) fn merge_bound(&mut self) -> usize {
        if !self.front_on() {
            return self.seg;
        }
        let words = Self::count_words(self.len(), self.seg) / 2;
        let (free, listed) = (self.counts_at(), self.counts_at() + words);
        for w in listed..listed + words {
            if let Some(m) = self.meta.get_mut(w) {
                m.word = 0;
            }
        }
        // Listed slots per segment, from the lists (each bounded as in `front_flush`).
        let mut mask = self.front_mask();
        while mask != 0 {
            let k = mask.trailing_zeros() as usize + 1;
            mask &= mask - 1;
            let mut link = self.list_first(k);
            let mut steps = self.len();
            while let (Some(i), true) = (link.checked_sub(1), steps > 0) {
                let Some(next) = self.listed_next(i, k) else { break };
                let s = div(i, self.seg, self.seg_shift);
                if let Some(m) = self.meta.get_mut(listed + s / 4) {
                    m.word = m.word.wrapping_add((k as u64) << (16 * (s % 4)));
                }
                link = next;
                steps -= 1;
            }
        }
        // Free and listed slots of a segment are at most its length (<= 4096): the lanes' sums
        // stay in their lanes.
        (0..words)
            .map(|w| max_lane(self.word(free + w).wrapping_add(self.word(listed + w))))
            .max()
            .unwrap_or(0)
    }

    /// The free count of segment `s`, for the tests.
    #[cfg(test)]
    pub(super) fn free_count(&self, s: usize) -> usize {
        (self.word(self.counts_at() + s / 4) >> (16 * (s % 4)) & 0xffff) as usize
    }
}
