//! The growth part of a layer's state (what [`crate::DmaLayer`] holds): the pools taken from the
//! source, the counters, the last "pool full" report. A leaf, so the layer can hold it without
//! depending on the growth logic that drives it.

use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, AtomicU64};

use spin::Mutex;

use super::source::{GrowthConfig, MemorySource};
use crate::addr::{PhysAddr, PAGE_SIZE};
use crate::diagnostics::PoolFullReport;
use crate::pool::SlotMeta;
use crate::pool_set::MAX_POOLS;

/// Metadata storage the layer holds from the source.
#[derive(Clone, Copy, Debug)]
pub(crate) struct MetaPtr(pub(crate) NonNull<SlotMeta>);
// SAFETY: the pointer names storage the source lent to the layer alone; it is only used under the
// growth lock (to give it back) and through the pool built over it.
unsafe impl Send for MetaPtr {}

/// A pool the layer took from its source.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Grown {
    pub phys: PhysAddr,
    pub len: usize,
    pub meta: MetaPtr,
    pub slots: usize,
    pub reserve: bool,
    /// Consecutive idle ticks.
    pub idle: u32,
}

/// What the growth lock guards: the pools taken from the source.
pub(crate) struct GrowState {
    pub grown: [Option<Grown>; MAX_POOLS],
    /// Bytes kept from the source for good (quarantined).
    pub kept_bytes: u64,
}

impl GrowState {
    pub(crate) fn totals(&self) -> (usize, u64) {
        let g = self.grown.iter().flatten();
        (g.clone().count(), g.map(|p| p.len as u64).sum::<u64>() + self.kept_bytes)
    }
}

/// Counters of growth and shrinking.
#[derive(Default)]
pub(crate) struct GrowthCounters {
    pub grown: AtomicU64,
    pub shrunk: AtomicU64,
    pub refused: AtomicU64,
    pub failed: AtomicU64,
    pub quarantined_pools: AtomicU64,
    pub bytes_now: AtomicU64,
    pub bytes_peak: AtomicU64,
    pub reserve_maps: AtomicU64,
}

/// A snapshot of the growth counters ([`DmaLayer::growth_stats`](crate::DmaLayer::growth_stats)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GrowthStats {
    /// Grown pools now (reserve included).
    pub pools: u64,
    /// Bytes of grown pools now (reserve included).
    pub bytes: u64,
    /// Most bytes of grown pools at once.
    pub bytes_peak: u64,
    /// Pools added so far.
    pub grown: u64,
    /// Pools removed and handed back so far.
    pub shrunk: u64,
    /// Growths refused by the limits or an empty source.
    pub refused: u64,
    /// Growths that failed part way (sharing, entering a window) and were rolled back.
    pub failed: u64,
    /// Pools (or partly built pools) kept out of the source for good: pages that would not be made
    /// private again, or IOMMU entries that would not clear.
    pub quarantined_pools: u64,
    /// Bytes taken from the source and kept for good (quarantined): never handed back.
    pub kept_bytes: u64,
    /// Maps that found every pool full, found another CPU holding the growth lock, and were then
    /// served (by the reserve, or by the pool that CPU added) without growing themselves.
    pub waited_maps: u64,
}

/// The growth part of a layer.
pub(crate) struct Growth<'m> {
    pub lock: Mutex<GrowState>,
    /// True while a pool is being added: maps may use reserve pools.
    pub growing: AtomicBool,
    pub source: Option<&'m dyn MemorySource>,
    pub cfg: GrowthConfig,
    pub counters: GrowthCounters,
    pub last_full: Mutex<Option<PoolFullReport>>,
}

impl<'m> Growth<'m> {
    pub(crate) fn new() -> Self {
        Growth {
            lock: Mutex::new(GrowState { grown: [None; MAX_POOLS], kept_bytes: 0 }),
            growing: AtomicBool::new(false),
            source: None,
            cfg: GrowthConfig::new(PAGE_SIZE as usize, 0),
            counters: GrowthCounters::default(),
            last_full: Mutex::new(None),
        }
    }

    /// The largest IOMMU page shift every pool grown later will be aligned to (64: no growth).
    pub(crate) fn page_shift_limit(&self) -> u32 {
        if self.source.is_some() {
            self.cfg.page_shift_limit()
        } else {
            64
        }
    }

    /// Bus space a DDW should keep for pools grown later.
    pub(crate) fn window_budget(&self) -> u64 {
        if self.source.is_some() {
            // No more than the pools growth can hold at once, whatever `max_total_bytes` says
            // (`u64::MAX`: no byte limit).
            let largest = self.cfg.pool_bytes.max(self.cfg.reserve_bytes) as u64;
            let pools = self.cfg.max_pools.min(MAX_POOLS) as u64;
            self.cfg.max_total_bytes.min(largest.saturating_mul(pools))
        } else {
            0
        }
    }
}
