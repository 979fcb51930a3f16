//! A spin lock for cold paths whose acquire is one out-of-line, non-generic function.
//!
//! `spin::Mutex::lock` is `#[inline(always)]`: every lock site carries its own compare-exchange and
//! spin loop. The pool areas' locks (the map/unmap hot path) keep that. The locks that only set-up,
//! attach/detach, growth and the IOMMU's bus space take are [`ColdLock`]s: each site is a call to
//! [`acquire`] (one copy in the image, whatever `T`) and an inline release store. Same semantics as
//! `spin::Mutex` (acquire on lock, release on unlock, no fairness), same size (a flag beside `T`).
//!
//! Interrupts: like every ccdma lock it spins; the call that takes it masks interrupts first (the
//! contract in the crate docs, `interrupts.rs`). Nothing here changes that.

use core::cell::UnsafeCell;
use core::ops::{Deref, DerefMut};
use core::sync::atomic::{AtomicBool, Ordering};

/// A spin lock over `T` whose acquire is out of line (cold paths only).
pub(crate) struct ColdLock<T> {
    locked: AtomicBool,
    value: UnsafeCell<T>,
}

// SAFETY: `value` is reached only through a `ColdGuard`, and at most one guard exists at a time (the
// flag, taken with an acquire compare-exchange and released with a release store), so sharing the
// lock across threads hands `T` from one thread to another, never to two at once: `T: Send` suffices,
// as for `spin::Mutex`.
unsafe impl<T: Send> Sync for ColdLock<T> {}

/// Spin until `flag` goes false -> true: the one copy of every cold lock site's acquire.
#[inline(never)]
fn acquire(flag: &AtomicBool) {
    while flag.compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed).is_err() {
        while flag.load(Ordering::Relaxed) {
            core::hint::spin_loop();
        }
    }
}

impl<T> ColdLock<T> {
    /// An unlocked lock over `value`.
    pub(crate) const fn new(value: T) -> Self {
        ColdLock { locked: AtomicBool::new(false), value: UnsafeCell::new(value) }
    }

    /// The guard of the lock just taken.
    #[inline(always)]
    fn guard(&self) -> ColdGuard<'_, T> {
        // SAFETY: the caller has just set the flag (it holds the lock): no other reference to
        // `value` exists until the guard's drop clears it.
        ColdGuard { flag: &self.locked, value: unsafe { &mut *self.value.get() } }
    }

    /// Spin until the lock is ours.
    #[inline(always)]
    pub(crate) fn lock(&self) -> ColdGuard<'_, T> {
        acquire(&self.locked);
        self.guard()
    }

    /// Spin until the lock is ours, the acquire inline: for the few sites on a map/unmap path (a
    /// strict or trusted mapping's bus range), where a call would cost the caller's registers.
    #[inline(always)]
    pub(crate) fn lock_inline(&self) -> ColdGuard<'_, T> {
        while self.locked.compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed).is_err() {
            while self.locked.load(Ordering::Relaxed) {
                core::hint::spin_loop();
            }
        }
        self.guard()
    }

    /// The lock if it is free now, else `None` (never spins).
    #[inline]
    pub(crate) fn try_lock(&self) -> Option<ColdGuard<'_, T>> {
        // A guard only once the flag is ours: made and dropped on a refusal, it would release the
        // holder's lock.
        match self.locked.compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed) {
            Ok(_) => Some(self.guard()),
            Err(_) => None,
        }
    }
}

/// The lock held; released when dropped.
pub(crate) struct ColdGuard<'a, T> {
    flag: &'a AtomicBool,
    value: &'a mut T,
}

impl<T> Deref for ColdGuard<'_, T> {
    type Target = T;
    #[inline(always)]
    fn deref(&self) -> &T {
        self.value
    }
}

impl<T> DerefMut for ColdGuard<'_, T> {
    #[inline(always)]
    fn deref_mut(&mut self) -> &mut T {
        self.value
    }
}

impl<T> Drop for ColdGuard<'_, T> {
    #[inline(always)]
    fn drop(&mut self) {
        self.flag.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::ColdLock;

    #[test]
    fn excludes_and_releases() {
        let l = ColdLock::new(5u32);
        {
            let mut g = l.lock();
            *g += 1;
            assert!(l.try_lock().is_none(), "held: a second taker must not get it");
            // A refused try_lock must leave the holder's lock alone (a guard made and dropped on the
            // refusal would release it).
            assert!(l.try_lock().is_none(), "a refused try_lock released the lock");
        }
        assert_eq!(*l.try_lock().expect("released at drop"), 6);
        assert_eq!(*l.lock(), 6);
    }

    #[test]
    fn counts_across_threads() {
        let l = ColdLock::new(0u64);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..if cfg!(miri) { 50 } else { 1000 } {
                        *l.lock() += 1;
                    }
                });
            }
        });
        assert_eq!(*l.lock(), if cfg!(miri) { 200 } else { 4000 });
    }
}
