//! The growth part of a layer's state (what [`crate::DmaLayer`] holds): the pools taken from the
//! source, the counters, the last "pool full" report. A leaf, so the layer can hold it without
//! depending on the growth logic that drives it.

use core::ptr::NonNull;
use core::sync::atomic::AtomicBool;

use crate::cold_lock::ColdLock as Mutex;

use super::source::{GrowthConfig, MemorySource};
use crate::addr::{PhysAddr, PAGE_SIZE};
use crate::diagnostics::{GrowthVerdict, PoolFill, PoolFullReport};
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

/// The pools taken from the source, by pool index: one entry per pool slot of the layer's capacity
/// (`POOLS`) with the `growth` feature, none without it (nothing is ever grown then).
pub(crate) struct GrownSlots<const POOLS: usize>(
    #[cfg(feature = "growth")] [Option<Grown>; POOLS],
    #[cfg(not(feature = "growth"))] [Option<Grown>; 0],
);

impl<const POOLS: usize> GrownSlots<POOLS> {
    const fn new() -> Self {
        #[cfg(feature = "growth")]
        return GrownSlots([None; POOLS]);
        #[cfg(not(feature = "growth"))]
        return GrownSlots([]);
    }
}

impl<const POOLS: usize> core::ops::Deref for GrownSlots<POOLS> {
    type Target = [Option<Grown>];
    fn deref(&self) -> &[Option<Grown>] {
        &self.0
    }
}

impl<const POOLS: usize> core::ops::DerefMut for GrownSlots<POOLS> {
    fn deref_mut(&mut self) -> &mut [Option<Grown>] {
        &mut self.0
    }
}

/// What the growth lock guards: the pools taken from the source.
pub(crate) struct GrowState<const POOLS: usize> {
    /// Indexed by pool index; checked access (`get`): it may be shorter than the pool table.
    pub grown: GrownSlots<POOLS>,
    /// Bytes kept from the source for good (quarantined).
    pub kept_bytes: u64,
}

impl<const POOLS: usize> GrowState<POOLS> {
    /// The grown pool at index `i`, if any.
    pub(crate) fn grown_at(&self, i: usize) -> Option<Grown> {
        self.grown.get(i).copied().flatten()
    }
    /// Record (or clear) the grown pool at index `i`; an index with no entry changes nothing.
    pub(crate) fn set_grown(&mut self, i: usize, g: Option<Grown>) {
        if let Some(slot) = self.grown.get_mut(i) {
            *slot = g;
        }
    }

    pub(crate) fn totals(&self) -> (usize, u64) {
        let g = self.grown.iter().flatten();
        (g.clone().count(), g.map(|p| p.len as u64).sum::<u64>() + self.kept_bytes)
    }
}

/// A growth counter: no bytes without the `growth` feature (nothing grows then).
#[cfg(feature = "growth")]
pub(crate) type GrowthCounter = core::sync::atomic::AtomicU64;
#[cfg(not(feature = "growth"))]
pub(crate) type GrowthCounter = crate::off_counter::OffCounter;

/// Counters of growth and shrinking.
#[derive(Default)]
pub(crate) struct GrowthCounters {
    pub grown: GrowthCounter,
    pub shrunk: GrowthCounter,
    pub refused: GrowthCounter,
    pub failed: GrowthCounter,
    pub quarantined_pools: GrowthCounter,
    pub bytes_now: GrowthCounter,
    pub bytes_peak: GrowthCounter,
    pub reserve_maps: GrowthCounter,
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

/// The last "pool full" report as the layer keeps it: one fill per pool slot of its capacity
/// (`POOLS`), made a [`PoolFullReport`] when read.
#[derive(Clone, Copy)]
pub(crate) struct LastFull<const POOLS: usize> {
    pub device: u32,
    pub len: usize,
    pub fills: [PoolFill; POOLS],
    pub npools: usize,
    pub growth: GrowthVerdict,
}

impl<const POOLS: usize> LastFull<POOLS> {
    /// The report: the fills kept, the rest of its `MAX_POOLS` entries empty.
    pub(crate) fn report(&self) -> PoolFullReport {
        let mut pools = [PoolFill::default(); crate::pool_set::MAX_POOLS];
        for (o, f) in pools.iter_mut().zip(&self.fills) {
            *o = *f;
        }
        PoolFullReport { device: self.device, len: self.len, pools, npools: self.npools, growth: self.growth }
    }
}

/// The growth configuration `enable_growth` set; without the `growth` feature nothing can set one,
/// and this holds no bytes (it reads as the default).
#[derive(Clone, Copy)]
pub(crate) struct GrowthCfg(#[cfg(feature = "growth")] GrowthConfig);

/// What a layer that never enabled growth reads.
const NO_GROWTH: GrowthConfig = GrowthConfig::new(PAGE_SIZE as usize, 0);

impl GrowthCfg {
    const fn new() -> Self {
        GrowthCfg(
            #[cfg(feature = "growth")]
            NO_GROWTH,
        )
    }
    /// Set by `enable_growth` (which refuses without the feature before calling this).
    pub(crate) fn set(&mut self, _cfg: GrowthConfig) {
        #[cfg(feature = "growth")]
        {
            self.0 = _cfg;
        }
    }
}

impl core::ops::Deref for GrowthCfg {
    type Target = GrowthConfig;
    fn deref(&self) -> &GrowthConfig {
        #[cfg(feature = "growth")]
        return &self.0;
        #[cfg(not(feature = "growth"))]
        return &NO_GROWTH;
    }
}

/// The growth part of a layer.
pub(crate) struct Growth<'m, const POOLS: usize> {
    pub lock: Mutex<GrowState<POOLS>>,
    /// True while a pool is being added: maps may use reserve pools.
    pub growing: AtomicBool,
    pub source: Option<&'m dyn MemorySource>,
    pub cfg: GrowthCfg,
    pub counters: GrowthCounters,
    pub last_full: Mutex<Option<LastFull<POOLS>>>,
}

impl<'m, const POOLS: usize> Growth<'m, POOLS> {
    pub(crate) fn new() -> Self {
        Growth {
            lock: Mutex::new(GrowState { grown: GrownSlots::new(), kept_bytes: 0 }),
            growing: AtomicBool::new(false),
            source: None,
            cfg: GrowthCfg::new(),
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
