//! Per-device IOMMU state: the windows a device got, where each pool sits on its bus, the bus-address
//! allocator, and the counters of the whole IOMMU path.
//!
//! A domain slot goes FREE -> CLAIMED (attach; a deferred device stays here until its first map or
//! allocation) -> SETUP (one CPU programs the windows) -> READY. Its [`DomainInfo`] is written once in
//! SETUP and only read afterwards, so the map hot path reads it with one acquire load and no lock.

use core::cell::UnsafeCell;
use core::fmt;
use core::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};

use spin::Mutex;

use super::bus_space::{BusRange, BusSpace};
use super::tce::ListPage;
use super::{IommuConfig, WindowGeometry, MAX_DOMAINS, MAX_GLOBAL_RESERVATIONS};
use crate::addr::BusAddr;
use crate::device::DmaPath;
use crate::error::IommuError;
use crate::layer::{PoolOrder, MAX_POOLS};

/// Why a dynamic DMA window was not used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DdwOutcome {
    /// Not attempted: the device is not 64-bit, the policy is strict, or DDW use is off.
    NotTried,
    /// `ibm,query-pe-dma-window` failed with this status (e.g. the feature is disabled).
    QueryFailed(i64),
    /// The PE has no window left to create.
    NoneAvailable,
    /// No supported IOMMU page size fits the pools' alignment.
    NoPageSize,
    /// The largest block cannot hold the pools.
    TooSmall,
    /// `ibm,create-pe-dma-window` failed with this status.
    CreateFailed(i64),
    /// The created window does not match the request (geometry or above the mask).
    BadWindow,
    /// Entering the pools into the window failed.
    PremapFailed(IommuError),
}

/// Why a device got the path it has (kept for reports; each fallback is also logged once).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathReason {
    /// The layer's policy is strict.
    StrictPolicy,
    /// A 64-bit device: the pools sit alone in a dynamic DMA window.
    Ddw,
    /// The pools fit the default window below the mask (after the DDW attempt, if any).
    DefaultWindow(DdwOutcome),
    /// No pool fits the default window below the mask, so mappings are entered one by one.
    PoolsDoNotFit(DdwOutcome),
}

impl fmt::Display for DdwOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DdwOutcome::NotTried => write!(f, "no DDW attempt"),
            DdwOutcome::QueryFailed(rc) => write!(f, "DDW query failed ({rc})"),
            DdwOutcome::NoneAvailable => write!(f, "no DDW available"),
            DdwOutcome::NoPageSize => write!(f, "no DDW page size fits the pools"),
            DdwOutcome::TooSmall => write!(f, "largest DDW block too small for the pools"),
            DdwOutcome::CreateFailed(rc) => write!(f, "DDW creation failed ({rc})"),
            DdwOutcome::BadWindow => write!(f, "created DDW unusable"),
            DdwOutcome::PremapFailed(e) => write!(f, "premapping into the DDW failed ({e:?})"),
        }
    }
}

impl fmt::Display for PathReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PathReason::StrictPolicy => write!(f, "strict policy"),
            PathReason::Ddw => write!(f, "pools premapped alone in a 64-bit DDW"),
            PathReason::DefaultWindow(d) => write!(f, "pools premapped in the default window ({d})"),
            PathReason::PoolsDoNotFit(d) => {
                write!(f, "no pool fits the default window below the mask ({d}): strict")
            }
        }
    }
}

/// Live counters of the IOMMU path (relaxed atomics, for reports and tests).
#[derive(Debug, Default)]
pub(crate) struct IommuCounters {
    pub put_tce: AtomicU64,
    pub get_tce: AtomicU64,
    pub put_indirect: AtomicU64,
    pub stuff_tce: AtomicU64,
    pub ddw_query: AtomicU64,
    pub ddw_create: AtomicU64,
    pub ddw_remove: AtomicU64,
    pub entries_written: AtomicU64,
    pub entries_cleared: AtomicU64,
    pub live_tces: AtomicU64,
    pub busy_retries: AtomicU64,
    pub verify_failures: AtomicU64,
    pub quarantined_ranges: AtomicU64,
    pub leaked_windows: AtomicU64,
    pub strict_maps: AtomicU64,
    pub coherent_buffers: AtomicU64,
    pub coherent_pages: AtomicU64,
    pub deferred_attaches: AtomicU64,
    /// Entries that could not be cleared may name pool pages: the pools must stay shared for good.
    pub pools_pinned: core::sync::atomic::AtomicBool,
}

/// A copy of the IOMMU counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IommuStatsSnapshot {
    /// `H_PUT_TCE` calls (busy retries included).
    pub put_tce: u64,
    /// `H_GET_TCE` calls (read-back).
    pub get_tce: u64,
    /// `H_PUT_TCE_INDIRECT` calls.
    pub put_indirect: u64,
    /// `H_STUFF_TCE` calls.
    pub stuff_tce: u64,
    /// DDW queries.
    pub ddw_query: u64,
    /// DDW creations.
    pub ddw_create: u64,
    /// DDW removals.
    pub ddw_remove: u64,
    /// Entries written (successful writes only).
    pub entries_written: u64,
    /// Entries cleared.
    pub entries_cleared: u64,
    /// Entries the guest considers live now (counting quarantined ranges whose clearing failed).
    pub live_tces: u64,
    /// Busy answers retried.
    pub busy_retries: u64,
    /// Read-backs that found another entry than the one written.
    pub verify_failures: u64,
    /// Bus ranges (and their slots or pages) that could not be cleared and are never reused.
    pub quarantined_ranges: u64,
    /// Windows whose removal failed.
    pub leaked_windows: u64,
    /// Strict mappings made.
    pub strict_maps: u64,
    /// Coherent buffers live now.
    pub coherent_buffers: u64,
    /// Pages of live coherent buffers.
    pub coherent_pages: u64,
    /// Deferred devices attached at their first map or allocation.
    pub deferred_attaches: u64,
}

impl IommuStatsSnapshot {
    /// Every TCE hypercall (put, get, indirect, stuff).
    pub fn tce_hypercalls(&self) -> u64 {
        self.put_tce + self.get_tce + self.put_indirect + self.stuff_tce
    }
}

impl IommuCounters {
    pub(crate) fn snapshot(&self) -> IommuStatsSnapshot {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        IommuStatsSnapshot {
            put_tce: l(&self.put_tce),
            get_tce: l(&self.get_tce),
            put_indirect: l(&self.put_indirect),
            stuff_tce: l(&self.stuff_tce),
            ddw_query: l(&self.ddw_query),
            ddw_create: l(&self.ddw_create),
            ddw_remove: l(&self.ddw_remove),
            entries_written: l(&self.entries_written),
            entries_cleared: l(&self.entries_cleared),
            live_tces: l(&self.live_tces),
            busy_retries: l(&self.busy_retries),
            verify_failures: l(&self.verify_failures),
            quarantined_ranges: l(&self.quarantined_ranges),
            leaked_windows: l(&self.leaked_windows),
            strict_maps: l(&self.strict_maps),
            coherent_buffers: l(&self.coherent_buffers),
            coherent_pages: l(&self.coherent_pages),
            deferred_attaches: l(&self.deferred_attaches),
        }
    }
}

/// What set-up decided for one device; written once, then read only.
#[derive(Clone, Copy, Debug)]
pub(crate) struct DomainInfo {
    pub path: DmaPath,
    pub reason: PathReason,
    pub ddw: Option<WindowGeometry>,
    /// The window for per-mapping entries and coherent buffers (the default window).
    pub dynamic: Option<WindowGeometry>,
    /// Pools the device maps from, best first.
    pub pools: PoolOrder,
    /// Where each premapped pool starts on the device's bus.
    pub pool_bus: [BusAddr; MAX_POOLS],
}

impl DomainInfo {
    pub(crate) const EMPTY: DomainInfo = DomainInfo {
        path: DmaPath::IommuDeferred,
        reason: PathReason::StrictPolicy,
        ddw: None,
        dynamic: None,
        pools: PoolOrder::EMPTY,
        pool_bus: [BusAddr(0); MAX_POOLS],
    };
}

pub(crate) const FREE: u8 = 0;
pub(crate) const CLAIMED: u8 = 1;
pub(crate) const SETUP: u8 = 2;
pub(crate) const READY: u8 = 3;
/// A detach cleared part of the window and then failed: no map may use the domain; only a retried
/// detach moves it on.
pub(crate) const DETACHING: u8 = 4;

/// One device's IOMMU state.
pub(crate) struct DomainSlot<'m> {
    pub state: AtomicU8,
    /// Bumped at every detach so a stale copy of a `Device` cannot reach the slot's next owner.
    pub generation: AtomicU32,
    pub device: AtomicU32,
    info: UnsafeCell<DomainInfo>,
    pub space: Mutex<BusSpace<'m>>,
    /// Streaming mappings live now (premapped and strict), so detach can refuse while any is.
    pub live_mappings: AtomicU64,
}

// SAFETY: `info` is written only by the CPU that moved the state CLAIMED -> SETUP (a compare-exchange
// makes it unique) and read only after an acquire load saw READY, which the writer published with a
// release store after the write; the rest is atomics and a lock.
unsafe impl Sync for DomainSlot<'_> {}
// SAFETY: the slot owns its data; the range storage is a unique borrow.
unsafe impl Send for DomainSlot<'_> {}

impl<'m> DomainSlot<'m> {
    pub(crate) fn new(storage: &'m mut [BusRange]) -> DomainSlot<'m> {
        DomainSlot {
            state: AtomicU8::new(FREE),
            generation: AtomicU32::new(0),
            device: AtomicU32::new(0),
            info: UnsafeCell::new(DomainInfo::EMPTY),
            space: Mutex::new(BusSpace::new(storage)),
            live_mappings: AtomicU64::new(0),
        }
    }

    /// The set-up result, once READY.
    #[inline]
    pub(crate) fn info(&self, generation: u32) -> Option<&DomainInfo> {
        if self.state.load(Ordering::Acquire) != READY
            || self.generation.load(Ordering::Relaxed) != generation
        {
            return None;
        }
        // SAFETY: READY was published (release) after the single writer finished; nothing writes
        // `info` again until the slot is freed, which needs no live user (detach checks).
        Some(unsafe { &*self.info.get() })
    }

    /// Publish the set-up result. Only the CPU holding the slot in SETUP may call this.
    pub(crate) fn publish(&self, info: DomainInfo) {
        // SAFETY: the caller holds the slot in SETUP (won the compare-exchange), so no one reads or
        // writes `info` concurrently.
        unsafe { *self.info.get() = info };
        self.state.store(READY, Ordering::Release);
    }

    /// The set-up result while the caller holds the slot in READY-and-detaching or SETUP.
    pub(crate) fn info_unchecked(&self) -> DomainInfo {
        // SAFETY: callers are the detaching CPU (the slot is READY and no mapping is live) or the
        // set-up CPU; neither races with `publish`.
        unsafe { *self.info.get() }
    }
}

/// The IOMMU part of a layer.
pub(crate) struct Iommu<'m> {
    pub cfg: IommuConfig,
    pub domains: [Option<DomainSlot<'m>>; MAX_DOMAINS],
    pub list: Option<ListPage>,
    /// Reservations applied to every domain set up later (and to those live when they were made).
    pub reservations: Mutex<([(u64, u64); MAX_GLOBAL_RESERVATIONS], usize)>,
}

/// A device's handle on its domain slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct DomainRef {
    pub index: u8,
    pub generation: u32,
}
