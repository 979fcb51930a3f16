//! A device's live mappings in one pool, counted by the pool under the area locks its maps and
//! unmaps take anyway: no read-modify-write of a device-wide counter on the hot path.
//!
//! A [`crate::Device`] holds one [`AreaLive`]: a counter per area of one pool, its "home", the
//! first pool one of its runs is counted in (set once: [`AreaLive::counts_pool`]), if that pool has
//! at most [`AreaLive::AREAS`] areas (8: the default pool has 4; a device holds 8 counters so that
//! a refused detach, which hands the device back with its error, stays small). A run the layer allocates there for one of the
//! device's mappings is counted in the counter of its area while the area's lock is held, and its
//! head is marked ([`DEV_COUNTED`]); the unmap that finds the head (under the same lock) takes the
//! count down. Each counter is written only by the holder of its area's lock, so a plain load and
//! store suffice (as for the area's own counters). Runs in other pools, and mappings with no pool
//! run, keep the device's atomic count. `Device::live` adds them all up: exact whenever no map or
//! unmap of the device runs at the same time (detach, which takes the device by value, always).

use core::sync::atomic::{AtomicU32, AtomicU8, Ordering};

use super::area::AreaState;

/// A device's live mappings in its home pool, per area (see the module docs).
#[derive(Debug)]
pub(crate) struct AreaLive {
    per_area: [AtomicU32; AreaLive::AREAS],
}

impl Default for AreaLive {
    fn default() -> Self {
        AreaLive { per_area: [const { AtomicU32::new(0) }; AreaLive::AREAS] }
    }
}

/// Which pool a device's [`AreaLive`] counts: [`NO_HOME`] until its first run is counted. Beside
/// it rather than in it, so that the byte fits in the device's padding.
#[derive(Debug)]
pub(crate) struct HomePool(AtomicU8);

/// [`HomePool`] before it names a pool.
const NO_HOME: u8 = u8::MAX;

impl Default for HomePool {
    fn default() -> Self {
        HomePool(AtomicU8::new(NO_HOME))
    }
}

impl HomePool {
    /// Whether a run of pool `i`, of `areas` areas, is counted in the device's [`AreaLive`]: `i`
    /// is the home pool, or becomes it when there is none yet (once: the counters are then written
    /// under that pool's area locks only); never for a pool of more areas than counters.
    #[inline(always)]
    pub(crate) fn counts_pool(&self, i: usize, areas: usize) -> bool {
        if areas > AreaLive::AREAS {
            return false;
        }
        let home = self.0.load(Ordering::Relaxed);
        if usize::from(home) == i {
            return true;
        }
        home == NO_HOME && self.claim(i)
    }

    #[cold]
    fn claim(&self, i: usize) -> bool {
        let Ok(i) = u8::try_from(i) else { return false };
        i != NO_HOME
            && match self.0.compare_exchange(NO_HOME, i, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => true,
                Err(home) => home == i,
            }
    }

    /// Whether any run was ever counted in the device's [`AreaLive`] (else every counter is 0).
    #[inline(always)]
    pub(crate) fn is_set(&self) -> bool {
        self.0.load(Ordering::Relaxed) != NO_HOME
    }
}

impl AreaLive {
    /// Most areas a home pool may have (one counter each).
    pub(crate) const AREAS: usize = 8;

    /// One more in area `a`, by the holder of its lock (`_st`): a load and a store.
    #[inline(always)]
    pub(super) fn up(&self, a: usize, _st: &AreaState<'_>) {
        if let Some(c) = self.per_area.get(a) {
            c.store(c.load(Ordering::Relaxed).wrapping_add(1), Ordering::Relaxed);
        }
    }

    /// One fewer in area `a`, by the holder of its lock (`_st`), for a head marked [`super::DEV_COUNTED`]
    /// (`counted`); returns `counted`.
    #[inline(always)]
    pub(super) fn down_if_counted(&self, a: usize, counted: bool, _st: &AreaState<'_>) -> bool {
        if counted {
            if let Some(c) = self.per_area.get(a) {
                c.store(c.load(Ordering::Relaxed).wrapping_sub(1), Ordering::Relaxed);
            }
        }
        counted
    }

    /// The live mappings counted in the first `areas` areas (all of them: [`Self::AREAS`]).
    #[inline]
    pub(crate) fn sum(&self, areas: usize) -> u64 {
        self.per_area.iter().take(areas).map(|c| u64::from(c.load(Ordering::Acquire))).sum()
    }
}
