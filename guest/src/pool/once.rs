//! One copy of the pool's out-of-line code for the default capacity (`MAX_AREAS` areas).
//!
//! Rust compiles a generic function in every crate that uses it: `BouncePool<AREAS>`'s allocation,
//! lookup and free were compiled by ccdma, by the x86 test kernel and by the C interface it links
//! (three copies of `alloc_from`). As the layer's cold paths do (`layer.rs`, `FullCold`), the calls
//! here are shells, inlined into their callers: a pool of the default capacity calls a non-generic
//! `*_once` function, compiled in ccdma alone; a pool of another capacity its own copy, as before.
//! The choice is made at compile time, so a map or an unmap makes the same one call it made: the
//! bodies (`*_any`) are inlined into exactly two functions, the `*_once` one and the generic
//! `*_other` one (the copy of another capacity, one per crate as before).

use super::dev_live::AreaLive;
use super::*;

/// A pool of the default capacity: what the `*_once` functions take.
type FullPool<'m> = BouncePool<'m, MAX_AREAS>;

impl<'m, const AREAS: usize> BouncePool<'m, AREAS> {
    /// This pool as the default capacity's type when that is its capacity (decided at compile time).
    #[inline(always)]
    fn as_full(&self) -> Option<&FullPool<'m>> {
        if AREAS == MAX_AREAS {
            // SAFETY: with `AREAS == MAX_AREAS` both are the same type.
            Some(unsafe { &*(self as *const Self as *const FullPool<'m>) })
        } else {
            None
        }
    }

    /// Every live run of the pool (locks one area at a time, so a concurrent map or unmap may or may
    /// not be seen). Not a hot path: the closure is called through `dyn`, so its body is compiled
    /// once per capacity (in ccdma alone for the default one), not once per closure.
    pub fn for_each_live(&self, mut f: impl FnMut(LiveRun)) {
        match self.as_full() {
            Some(p) => for_each_live_once(p, &mut f),
            None => self.for_each_live_any(&mut f),
        }
    }

    /// [`Self::alloc_from_any`].
    #[inline(always)]
    pub(super) fn alloc_from(
        &self,
        req: RunRequest,
        new: NewHead,
        attr_bits: u8,
        first: Option<usize>,
        live: Option<&AreaLive>,
    ) -> Option<usize> {
        match self.as_full() {
            Some(p) => alloc_from_once(p, req, new, attr_bits, first, live),
            None => self.alloc_from_other(req, new, attr_bits, first, live),
        }
    }

    /// [`Self::lookup_at_any`].
    #[inline(always)]
    pub(super) fn lookup_at(&self, index: usize, off: u64, release: bool, sg: bool) -> Option<SlotRecord> {
        match self.as_full() {
            Some(p) => lookup_at_once(p, index, off, release, sg),
            None => self.lookup_at_other(index, off, release, sg),
        }
    }

    /// Undo a `lookup(.., true)` that the caller decided not to complete ([`Self::unrelease_any`]).
    #[inline(always)]
    pub(crate) fn unrelease(&self, index: usize) {
        match self.as_full() {
            Some(p) => unrelease_once(p, index),
            None => self.unrelease_other(index),
        }
    }

    /// Keep a released head allocated for good, its original forgotten ([`Self::orphan_any`]).
    #[inline(always)]
    pub(crate) fn orphan(&self, index: usize) {
        match self.as_full() {
            Some(p) => orphan_once(p, index),
            None => self.orphan_other(index),
        }
    }

    /// Free a run `alloc` returned, of `nslots` slots ([`Self::free_any`]: anything else changes
    /// nothing).
    #[inline(always)]
    pub(crate) fn free(&self, index: usize, nslots: usize) {
        match self.as_full() {
            Some(p) => free_once(p, index, nslots),
            None => self.free_other(index, nslots),
        }
    }

    /// The shells' path for a pool of another capacity than the default: one copy per crate.
    fn alloc_from_other(
        &self,
        req: RunRequest,
        new: NewHead,
        attr_bits: u8,
        first: Option<usize>,
        live: Option<&AreaLive>,
    ) -> Option<usize> {
        self.alloc_from_any(req, new, attr_bits, first, live)
    }

    fn lookup_at_other(&self, index: usize, off: u64, release: bool, sg: bool) -> Option<SlotRecord> {
        self.lookup_at_any(index, off, release, sg)
    }

    fn unrelease_other(&self, index: usize) {
        self.unrelease_any(index)
    }

    fn orphan_other(&self, index: usize) {
        self.orphan_any(index)
    }

    fn free_other(&self, index: usize, nslots: usize) {
        self.free_any(index, nslots)
    }
}

fn for_each_live_once(p: &FullPool<'_>, f: &mut dyn FnMut(LiveRun)) {
    p.for_each_live_any(f)
}

fn alloc_from_once(
    p: &FullPool<'_>,
    req: RunRequest,
    new: NewHead,
    attr_bits: u8,
    first: Option<usize>,
    live: Option<&AreaLive>,
) -> Option<usize> {
    p.alloc_from_any(req, new, attr_bits, first, live)
}

fn lookup_at_once(p: &FullPool<'_>, index: usize, off: u64, release: bool, sg: bool) -> Option<SlotRecord> {
    p.lookup_at_any(index, off, release, sg)
}

fn unrelease_once(p: &FullPool<'_>, index: usize) {
    p.unrelease_any(index)
}

fn orphan_once(p: &FullPool<'_>, index: usize) {
    p.orphan_any(index)
}

fn free_once(p: &FullPool<'_>, index: usize, nslots: usize) {
    p.free_any(index, nslots)
}
