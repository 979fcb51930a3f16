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
//!
//! In front of the tree each area keeps its recently freed runs by exact size (`front.rs`): a free
//! of `n` slots pushes the run on the area's list of `n`-slot runs instead of giving it back to the
//! bitmap and tree, and an allocation of `n` slots whose alignment the list's first run meets takes
//! it, with no search, from whichever area lists one. The lists hold at most a quarter of the area
//! and no more slots than its tree has free; a request no tree can meet gives every listed run back
//! to its tree and searches again, so the front never refuses a request the pool could meet. Listed runs are free for
//! `slots_in_use` and the high-water mark, and the lists live in the area's own metadata words, so
//! building a pool (`BouncePool::init`) empties them.
//!
//! ```
//! # use ccdma::*;
//! # use ccdma_hv_model::{HvConfig, Hypervisor, Region};
//! # let hv: &'static Hypervisor = Box::leak(Box::new(Hypervisor::new(HvConfig::pseries(6 << 30))));
//! # let mut layer = DmaLayer::new(hv);
//! # // SAFETY: the model never hands this range out.
//! # unsafe { layer.add_pool(PhysAddr(0x80_0000), 1 << 20, vec![SlotMeta::EMPTY; 512].leak(), PoolConfig::default()) }.unwrap();
//! let config = PoolConfig::default();
//! assert_eq!(config.slot_size, 2048);
//! assert_eq!(config.slots_for(1 << 20), 512); // one SlotMeta per slot, provided by the caller
//! let (pool, pool_bus) = layer.pool(0).unwrap();
//! assert_eq!((pool.phys(), pool.slots(), pool_bus.0), (PhysAddr(0x80_0000), 512, 0x80_0000));
//!
//! let dev = layer.attach(DeviceConfig::new(1, DmaMask::BITS_32))?;
//! let packet = [1u8; 3000];
//! let m = layer.on(&dev).map_to_device(&packet)?; // 3000 bytes take a run of 2 slots
//! assert_eq!(pool.slots_in_use(), 2);
//! assert!(pool.contains_phys(PhysAddr(m.bus_addr().0), 3000)); // the pool's shared address
//! pool.for_each_live(|run| assert_eq!((run.len, run.slots, run.device), (3000, 2, dev.serial())));
//! m.unmap()?;
//! assert_eq!((pool.slots_in_use(), pool.high_water()), (0, 2));
//! # Ok::<(), ccdma::DmaError>(())
//! ```

use core::ptr::NonNull;
use core::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};

use spin::Mutex;

use crate::addr::{PhysAddr, PAGE_SIZE};
use crate::direction::{DmaAttrs, DmaDirection};
use crate::error::DmaError;

/// Most areas one pool can have: the default of a layer's `AREAS` capacity (see
/// [`DmaLayer`](crate::DmaLayer)). Each area takes 128 bytes of the layer per pool slot.
pub const MAX_AREAS: usize = 16;

/// Slot state, kept in [`SlotMeta`].
const FREE: u8 = 0;
const HEAD: u8 = 1;
// 2 was TAIL: the slots after a head are no longer marked (only the head's record is written).
/// A head whose unmap is in progress: no second unmap or sync may use it.
const RELEASING: u8 = 3;
/// A head whose owner is gone while its unmap could not complete: allocated for good, no original.
const ORPHANED: u8 = 4;
/// The head of a freed run held by its area's front (`front.rs`) for reuse at the same size: free
/// for every count and every face (no record), still marked used in the bitmap and the tree.
const CACHED: u8 = 5;
/// Head `attrs` bit (above the `DmaAttrs` bits) marking a scatter-gather run: several originals
/// packed in one run, described by the list (see `sg.rs`), not by the head's one `orig`. The
/// single-mapping face must never unmap or sync such a run, nor the list face a single mapping.
const SG_RUN: u8 = 0x80;
/// Head `attrs` bit marking a mapping owned by a [`crate::Mapping`] (the safe face): the raw face
/// refuses to unmap or sync it, so no raw call can write a buffer whose borrow the `Mapping` holds.
const SAFE_FACE: u8 = 0x40;
/// Head `attrs` bit marking a run its pool counts for the layer's statistics (a map at allocation, an
/// unmap when it is freed: [`BouncePool::alloc_counted`], [`PoolTally`]), so the hot path bumps no
/// shared counter. Plain and premapped bounce maps set it; strict, scatter-gather and list-page runs
/// do not (their paths count on the layer's shards).
const COUNTED: u8 = 0x20;
/// Head `attrs` bit marking a run its device counts among its live mappings in the pool's areas
/// ([`AreaLive`], `dev_live.rs`): set and cleared under the area lock, so `Device::live` needs no
/// read-modify-write on the hot path. Above the `DmaAttrs` bits (0..=3).
const DEV_COUNTED: u8 = 0x10;
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
    /// Number of independently locked areas (1..=[`MAX_AREAS`]; 0 or more is
    /// [`DmaError::InvalidAreas`]). Default 4. A request, like the segment count: a pool gets at
    /// most one area per segment and at most its layer's `AREAS` capacity (the last parameter of
    /// [`DmaLayer`](crate::DmaLayer)), and a larger request is clamped, not refused, since fewer
    /// areas cost only lock contention, never a mapping ([`BouncePool::areas`] says how many it got).
    pub areas: usize,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig { slot_size: 2048, max_run_slots: 128, areas: 4 }
    }
}

impl PoolConfig {
    /// Slots needed for `len` bytes of pool memory (the size of the metadata storage to provide).
    /// 0 for a slot size of 0 (which [`DmaLayer::add_pool`](crate::DmaLayer::add_pool) refuses);
    /// [`Self::checked_slots_for`] says why.
    pub const fn slots_for(&self, len: usize) -> usize {
        match len.checked_div(self.slot_size) {
            Some(n) => n,
            None => 0,
        }
    }

    /// [`Self::slots_for`] for a configuration that is checked first: a slot size outside
    /// 512..=65536 or not a power of two is [`DmaError::InvalidSlotSize`].
    pub fn checked_slots_for(&self, len: usize) -> Result<usize, DmaError> {
        self.validate()?;
        Ok(self.slots_for(len))
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
    /// Counted by its pool ([`COUNTED`]): freeing it counts its unmap there.
    pub counted: bool,
    /// Counted among its device's live mappings by the pool ([`DEV_COUNTED`]): taken down already
    /// when a release handed this record out.
    pub dev_counted: bool,
}

/// What a pool counted for the layer's statistics ([`BouncePool::tally`]): the maps of its counted
/// runs, those of them freed again (unmaps), and the bytes copied in at those maps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct PoolTally {
    pub maps: u64,
    pub unmaps: u64,
    pub to_device: u64,
}

impl PoolTally {
    /// Both tallies together (wrapping, as the counters do).
    pub(crate) fn plus(self, o: PoolTally) -> PoolTally {
        PoolTally {
            maps: self.maps.wrapping_add(o.maps),
            unmaps: self.unmaps.wrapping_add(o.unmaps),
            to_device: self.to_device.wrapping_add(o.to_device),
        }
    }
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

mod area;
#[cfg(test)]
mod area_hint_tests;
mod bounce_pool;
mod dev_live;
#[cfg(test)]
mod flush_stop_tests;
mod front;
#[cfg(test)]
mod front_cap_tests;
#[cfg(test)]
mod front_tests;
mod once;
#[cfg(test)]
mod search_front_tests;
#[cfg(test)]
mod tally_tests;
#[cfg(test)]
mod tests;

pub use bounce_pool::BouncePool;
pub(crate) use bounce_pool::{Claim, Taken};
pub(crate) use dev_live::{AreaLive, HomePool};
