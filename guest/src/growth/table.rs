//! The layer's pool table: one slot per pool index, each with a state and a count of the CPUs using
//! the pool right now, so pools can be added and removed through `&self` while devices map.
//!
//! A slot's word holds its state (top four bits) and its users (the rest). A reader adds itself with
//! one `fetch_add` and looks at the state in the same value: either the state admits it, and no
//! remover can pass until it leaves, or it takes itself off again without touching the pool. Pools
//! added with `&mut self` ([`DmaLayer::add_pool`](crate::DmaLayer::add_pool)) are FIXED: they are
//! never removed while the layer is shared, so readers use them without counting.
//!
//! ```text
//! EMPTY --install--> ADDING --publish--> ACTIVE --drain--> DRAINING --exclusive--> REMOVING --take--> EMPTY
//!                                           ^                  |
//!                                           +-- still in use --+   (checked while DRAINING: lookups of
//!                                                                   live mappings never find it REMOVING)
//! REMOVING or ADDING --entries would not clear--> QUARANTINED (for good)
//! ```

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use crate::addr::PhysAddr;
use crate::pool::{BouncePool, MAX_AREAS};
use crate::pool_set::MAX_POOLS;

const EMPTY: u32 = 0;
const FIXED: u32 = 1;
const ADDING: u32 = 2;
const ACTIVE: u32 = 3;
const DRAINING: u32 = 4;
const REMOVING: u32 = 5;
const QUARANTINED: u32 = 6;

const SHIFT: u32 = 28;
/// Spins a remover waits for a pool's users before it gives up (a map or lookup takes well under a
/// microsecond of them; this is milliseconds).
const SPIN_LIMIT: u32 = 1 << 22;
const USERS: u32 = (1 << SHIFT) - 1;

const fn state(word: u32) -> u32 {
    word >> SHIFT
}

struct Slot<'m, const A: usize> {
    word: AtomicU32,
    /// Set by every allocation attempt in a grown pool; the idle tick clears it.
    touched: AtomicBool,
    pool: UnsafeCell<Option<BouncePool<'m, A>>>,
}

/// The pools of one layer, by index: `N` pool slots of pools of at most `A` areas.
pub(crate) struct PoolTable<'m, const N: usize = MAX_POOLS, const A: usize = MAX_AREAS> {
    slots: [Slot<'m, A>; N],
}

// SAFETY: a slot's `pool` is written only (a) through `&mut self`, or (b) by the one grower (the
// caller of `install`/`take`, who holds the layer's growth lock) while the state is ADDING or
// REMOVING, states in which no reader dereferences it (readers check the state in the same atomic
// value that counts them, and REMOVING is entered only when that count is zero). It is read only
// while a reader is counted in an admitting state, or while FIXED. `BouncePool` itself is Sync.
unsafe impl<const N: usize, const A: usize> Sync for PoolTable<'_, N, A> {}
// SAFETY: the table owns its pools; `BouncePool` is Send.
unsafe impl<const N: usize, const A: usize> Send for PoolTable<'_, N, A> {}

/// A pool in use by this CPU: while it lives the pool cannot be removed.
pub struct PoolRef<'a, 'm, const A: usize = MAX_AREAS> {
    pool: &'a BouncePool<'m, A>,
    /// The word to leave through (None: a FIXED pool, never removed while the layer is shared).
    word: Option<&'a AtomicU32>,
}

impl<'m, const A: usize> core::ops::Deref for PoolRef<'_, 'm, A> {
    type Target = BouncePool<'m, A>;
    fn deref(&self) -> &BouncePool<'m, A> {
        self.pool
    }
}

impl<const A: usize> Drop for PoolRef<'_, '_, A> {
    fn drop(&mut self) {
        if let Some(w) = self.word {
            w.fetch_sub(1, Ordering::Release);
        }
    }
}

impl<const A: usize> core::fmt::Debug for PoolRef<'_, '_, A> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "PoolRef({}, {:#x} bytes)", self.pool.phys(), self.pool.len())
    }
}

impl<'m, const N: usize, const A: usize> PoolTable<'m, N, A> {
    /// An empty table. A `const fn` of constant parts: the optimiser writes it straight into its
    /// destination (no table-sized temporary on the stack; `scripts/budgets.sh` checks the frames).
    #[inline]
    pub(crate) const fn new() -> Self {
        const { assert!(N <= MAX_POOLS, "a layer holds at most MAX_POOLS pools") };
        const { assert!(A >= 1 && A <= MAX_AREAS, "a pool has 1..=MAX_AREAS areas (a layer's AREAS)") };
        PoolTable {
            slots: [const {
                Slot {
                    word: AtomicU32::new(EMPTY << SHIFT),
                    touched: AtomicBool::new(false),
                    pool: UnsafeCell::new(None),
                }
            }; N],
        }
    }

    fn enter(&self, i: usize, alloc: bool) -> Option<PoolRef<'_, 'm, A>> {
        let slot = self.slots.get(i)?;
        let w = slot.word.load(Ordering::Acquire);
        if state(w) == FIXED {
            // SAFETY: FIXED pools change only through `&mut self`, which cannot coexist with this `&self`.
            let pool = unsafe { (*slot.pool.get()).as_ref()? };
            return Some(PoolRef { pool, word: None });
        }
        if !matches!(state(w), ACTIVE | DRAINING) {
            return None;
        }
        let w = slot.word.fetch_add(1, Ordering::Acquire);
        let admitted = match state(w) {
            ACTIVE => true,
            DRAINING => !alloc,
            _ => false,
        };
        if !admitted || w & USERS == USERS {
            slot.word.fetch_sub(1, Ordering::Release);
            return None;
        }
        if alloc && !slot.touched.load(Ordering::Relaxed) {
            slot.touched.store(true, Ordering::Relaxed);
        }
        // SAFETY: counted in an admitting state: the grower writes `pool` only in ADDING (published
        // with a release RMW this acquire RMW reads after) or REMOVING (entered only at zero users).
        let pool = unsafe { (*slot.pool.get()).as_ref() };
        match pool {
            Some(pool) => Some(PoolRef { pool, word: Some(&slot.word) }),
            None => {
                slot.word.fetch_sub(1, Ordering::Release);
                None
            }
        }
    }

    /// Pool `i` for a lookup (unmap, sync, statistics): FIXED, ACTIVE or DRAINING.
    #[inline]
    pub(crate) fn get(&self, i: usize) -> Option<PoolRef<'_, 'm, A>> {
        self.enter(i, false)
    }

    /// Pool `i` for a new allocation: FIXED or ACTIVE (a draining pool takes nothing new).
    #[inline]
    pub(crate) fn get_for_alloc(&self, i: usize) -> Option<PoolRef<'_, 'm, A>> {
        self.enter(i, true)
    }

    /// Pool `i` if it is FIXED: borrowed for as long as the layer.
    pub(crate) fn fixed(&self, i: usize) -> Option<&BouncePool<'m, A>> {
        let slot = self.slots.get(i)?;
        if state(slot.word.load(Ordering::Acquire)) != FIXED {
            return None;
        }
        // SAFETY: FIXED pools change only through `&mut self`.
        unsafe { (*slot.pool.get()).as_ref() }
    }

    /// Every usable pool with its index (FIXED, ACTIVE, DRAINING).
    pub(crate) fn iter(&self) -> impl Iterator<Item = (usize, PoolRef<'_, 'm, A>)> + '_ {
        (0..N).filter_map(|i| self.get(i).map(|p| (i, p)))
    }

    /// True when slot `i` holds no pool and may take one.
    pub(crate) fn is_empty(&self, i: usize) -> bool {
        self.slots.get(i).is_some_and(|s| state(s.word.load(Ordering::Acquire)) == EMPTY)
    }

    /// Number of slots in any state but EMPTY.
    pub(crate) fn occupied(&self) -> usize {
        self.slots.iter().filter(|s| state(s.word.load(Ordering::Acquire)) != EMPTY).count()
    }

    /// Build a pool added through `&mut self` in slot `i`, in place (`init` makes the empty pool it
    /// is given a real one); FIXED if `init` succeeds, EMPTY again (and its error) if it fails.
    pub(crate) fn set_fixed_with<E>(
        &mut self,
        i: usize,
        init: impl FnOnce(&mut BouncePool<'m, A>) -> Result<(), E>,
    ) -> Result<(), Option<E>> {
        let Some(slot) = self.slots.get_mut(i) else { return Err(None) };
        if state(*slot.word.get_mut()) != EMPTY {
            return Err(None);
        }
        let cell = slot.pool.get_mut();
        let pool = cell.insert(const { BouncePool::empty() });
        if let Err(e) = init(pool) {
            *cell = None;
            return Err(Some(e));
        }
        *slot.word.get_mut() = FIXED << SHIFT;
        Ok(())
    }

    /// Take every FIXED pool out (through `&mut self`: no reader exists), dropping it in place;
    /// yields where each one was.
    pub(crate) fn take_fixed(&mut self) -> impl Iterator<Item = (PhysAddr, usize)> + use<'_, 'm, N, A> {
        self.slots.iter_mut().filter_map(|s| {
            if state(*s.word.get_mut()) != FIXED {
                return None;
            }
            *s.word.get_mut() = EMPTY << SHIFT;
            let cell = s.pool.get_mut();
            let range = cell.as_ref().map(|p| (p.phys(), p.len()));
            *cell = None;
            range
        })
    }

    /// Build a new pool in EMPTY slot `i`, in place, and hold it ADDING (no reader sees it yet):
    /// `init` makes the empty pool it is given a real one. If the slot is not EMPTY (`Err(None)`) or
    /// `init` fails (`Err(Some(..))`, the slot EMPTY again) nothing is installed.
    ///
    /// # Safety
    /// The caller holds the growth lock (the only writer of slot states other than `&mut self`).
    pub(crate) unsafe fn install_with<E>(
        &self,
        i: usize,
        init: impl FnOnce(&mut BouncePool<'m, A>) -> Result<(), E>,
    ) -> Result<(), Option<E>> {
        let Some(slot) = self.slots.get(i) else { return Err(None) };
        let ok = slot
            .word
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
                (state(w) == EMPTY).then_some((ADDING << SHIFT) | (w & USERS))
            })
            .is_ok();
        if !ok {
            return Err(None);
        }
        // SAFETY: ADDING admits no reader; the growth lock makes this CPU the only writer.
        let cell = unsafe { &mut *slot.pool.get() };
        let pool = cell.insert(const { BouncePool::empty() });
        if let Err(e) = init(pool) {
            *cell = None;
            slot.word
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| Some((EMPTY << SHIFT) | (w & USERS)))
                .ok();
            return Err(Some(e));
        }
        // Born touched: the next idle tick does not count a pool its grower has not used yet.
        slot.touched.store(true, Ordering::Relaxed);
        Ok(())
    }

    fn set_state(&self, i: usize, from: u32, to: u32) -> bool {
        let Some(slot) = self.slots.get(i) else { return false };
        slot.word
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
                (state(w) == from).then_some((to << SHIFT) | (w & USERS))
            })
            .is_ok()
    }

    /// ADDING -> ACTIVE: readers may use the pool from now on (release: they see it whole).
    pub(crate) fn publish(&self, i: usize) -> bool {
        self.set_state(i, ADDING, ACTIVE)
    }

    /// ACTIVE -> DRAINING: no new allocation enters the pool; lookups still do.
    pub(crate) fn drain(&self, i: usize) -> bool {
        self.set_state(i, ACTIVE, DRAINING)
    }

    /// Wait until no CPU is inside DRAINING slot `i`: every allocation that entered before the drain
    /// has finished (and its slots are counted). Lookups may still enter afterwards.
    /// Gives up (false) after [`SPIN_LIMIT`] tries: a caller holding a [`PoolRef`] for long (safe
    /// code may) makes the shrink fail, never hang.
    pub(crate) fn wait_users(&self, i: usize) -> bool {
        for _ in 0..SPIN_LIMIT {
            if self.slots.get(i).is_none_or(|s| s.word.load(Ordering::Acquire) & USERS == 0) {
                return true;
            }
            core::hint::spin_loop();
        }
        false
    }

    /// DRAINING -> ACTIVE: the pool turned out to be in use.
    pub(crate) fn undrain(&self, i: usize) -> bool {
        self.set_state(i, DRAINING, ACTIVE)
    }

    /// DRAINING with no user -> REMOVING: from here the caller has the pool to itself. Spins while
    /// users (lookups of addresses in this pool) finish; none blocks on anything.
    /// Gives up (false, still DRAINING) after [`SPIN_LIMIT`] tries, as [`Self::wait_users`].
    pub(crate) fn exclusive(&self, i: usize) -> bool {
        let Some(w) = self.slots.get(i).map(|s| &s.word) else { return false };
        for _ in 0..SPIN_LIMIT {
            let swapped = w.compare_exchange_weak(
                DRAINING << SHIFT,
                REMOVING << SHIFT,
                Ordering::AcqRel,
                Ordering::Relaxed,
            );
            if swapped.is_ok() {
                return true;
            }
            core::hint::spin_loop();
        }
        false
    }

    /// REMOVING or ADDING -> QUARANTINED: the pool stays, unused, for good. Out of line: cold,
    /// with two callers (inlined into `remove_grown` it cost the pseries kernel ~180 B).
    #[inline(never)]
    pub(crate) fn quarantine(&self, i: usize) -> bool {
        self.set_state(i, REMOVING, QUARANTINED) || self.set_state(i, ADDING, QUARANTINED)
    }

    /// Drop the pool of a slot held REMOVING or ADDING; the slot is EMPTY again. True if it held one.
    ///
    /// # Safety
    /// The caller holds the growth lock and moved the slot to ADDING or REMOVING itself.
    pub(crate) unsafe fn take(&self, i: usize) -> bool {
        let Some(slot) = self.slots.get(i) else { return false };
        let w = slot.word.load(Ordering::Acquire);
        if !matches!(state(w), REMOVING | ADDING) {
            return false;
        }
        // SAFETY: per the contract the cell is ours alone. Dropped in place (no pool-sized move).
        let had = unsafe { (*slot.pool.get()).take_in_place() };
        slot.word
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| Some((EMPTY << SHIFT) | (w & USERS)))
            .ok();
        had
    }

    /// Clear slot `i`'s activity mark; true when it was set (an allocation was tried there).
    pub(crate) fn take_touched(&self, i: usize) -> bool {
        self.slots.get(i).is_some_and(|s| s.touched.swap(false, Ordering::Relaxed))
    }

    /// True when slot `i` is ACTIVE (a grown pool taking allocations).
    pub(crate) fn is_active(&self, i: usize) -> bool {
        self.slots.get(i).is_some_and(|s| state(s.word.load(Ordering::Acquire)) == ACTIVE)
    }
}

/// Emptying an `Option` without moving its value out (`Option::take` returns it: a pool-sized copy).
trait TakeInPlace {
    fn take_in_place(&mut self) -> bool;
}

impl<T> TakeInPlace for Option<T> {
    fn take_in_place(&mut self) -> bool {
        let had = self.is_some();
        *self = None;
        had
    }
}
