//! The layer without its platform: [`LayerCore`], and [`Cold`], the view the cold paths run on.
//!
//! A [`DmaLayer`](crate::DmaLayer) is its platform `P` beside a `LayerCore`. Code generic over `P`
//! is compiled once per platform type, so a program with two platform types (the x86 test kernel:
//! its own platform and the C interface's `CPlatform`) would carry the whole layer twice. So only
//! the streaming calls stay generic: map, unmap and sync are short and hot, and the platform's hooks
//! (`mask_interrupts`, `cpu_hint`, `virt_to_phys`, `shared_bus_addr`) inline into them. Everything
//! else (attach and detach, IOMMU set-up and windows, growth and shrinking, coherent buffers,
//! accept/revoke, pools added and released, diagnostics) is a method of [`Cold`]: the core and the
//! platform as `&dyn Platform`. Those are compiled once per capacity (`POOLS`, `DOMAINS`); the
//! layer's public methods of the same names are one-line shells that build the view and call them.
//! A platform call on a cold path costs one indirect call, next to hypercalls and locks.
//!
//! Compiled once per capacity *per crate*, though: Rust compiles a generic function in every crate
//! that uses it, so a program whose layers are used from two crates (the x86 test kernel and the
//! C interface it links) would still carry two copies of `Cold<8, 16>`. So the shells of the
//! default capacities (`MAX_POOLS`, `MAX_DOMAINS`, the kernels' and the C interface's) call
//! non-generic functions of this crate ([`Cold::as_full`], the `*_once` functions beside the
//! shells): compiled here, once, whoever calls them.

use core::ops::{Deref, DerefMut};
use core::sync::atomic::{AtomicU32, Ordering};

use crate::device_ids::DeviceIds;
use crate::growth::live::LivePools;
use crate::growth::state::Growth;
use crate::growth::table::PoolTable;
use crate::iommu::config::MAX_DOMAINS;
use crate::iommu::counters::IommuCounters;
use crate::iommu::domain::Iommu;
use crate::platform::Platform;
use crate::pool_set::MAX_POOLS;
use crate::stale_slot::StaleSlotPolicy;
use crate::stats::Stats;
use crate::stream::raw_records::RawRecords;
use crate::tracker::Tracker;

/// Source of layer ids (never 0): a device names its layer by it.
pub(crate) static NEXT_LAYER_ID: AtomicU32 = AtomicU32::new(1);

/// Everything a [`DmaLayer`](crate::DmaLayer) holds but its platform; the layer derefs to it. It
/// has no public constructor or methods of its own: a layer's calls are the layer's.
pub struct LayerCore<'m, const POOLS: usize, const DOMAINS: usize> {
    /// Every pool, by index (fixed ones from `add_pool`, grown ones from the memory source).
    pub(crate) pools: PoolTable<'m, POOLS>,
    /// The pools as devices without an IOMMU see them (shared bus addresses), sorted by bus.
    pub(crate) plain: LivePools,
    /// Growing and shrinking (off until `enable_growth`); its lock orders every change of a pool
    /// set or window.
    pub(crate) growth: Growth<'m, POOLS>,
    pub(crate) stats: Stats<POOLS>,
    pub(crate) id: u32,
    /// Source of device serials (never 0).
    pub(crate) next_serial: AtomicU32,
    /// The IOMMU path, once enabled (`enable_iommu`).
    pub(crate) iommu: Option<Iommu<'m, DOMAINS>>,
    /// Counters of the IOMMU path and coherent buffers.
    pub(crate) iommu_counters: IommuCounters,
    /// The misuse tracker (feature `debug-tracker`; an empty value without it).
    pub(crate) tracker: Tracker,
    /// Ids of the attached devices (no two attachments share one).
    pub(crate) device_ids: DeviceIds<POOLS>,
    /// What to-device `SKIP_CPU_SYNC` slots hold (None: by confidentiality; see [`crate::stale_slot`]).
    pub(crate) stale_slots: Option<StaleSlotPolicy>,
    /// Records of raw-face mappings on paths without pool slots (direct, trusted).
    pub(crate) raw: RawRecords<'m, POOLS>,
}

impl<const POOLS: usize, const DOMAINS: usize> LayerCore<'_, POOLS, DOMAINS> {
    /// A core with no pools, by value (a new layer id).
    pub(crate) fn new() -> Self {
        LayerCore {
            pools: PoolTable::new(),
            plain: LivePools::new(),
            growth: Growth::new(),
            stats: Stats::default(),
            id: NEXT_LAYER_ID.fetch_add(1, Ordering::Relaxed),
            next_serial: AtomicU32::new(1),
            iommu: None,
            iommu_counters: IommuCounters::default(),
            tracker: Tracker::default(),
            device_ids: DeviceIds::new(),
            stale_slots: None,
            raw: RawRecords::new(),
        }
    }
}

/// A layer as its cold paths see it: the core, and the platform as a trait object. Built by
/// `DmaLayer::cold` (two references, no copy of the layer).
#[derive(Clone, Copy)]
pub(crate) struct Cold<'a, 'm, const POOLS: usize, const DOMAINS: usize> {
    pub(crate) core: &'a LayerCore<'m, POOLS, DOMAINS>,
    pub(crate) platform: &'a dyn Platform,
}

impl<'m, const POOLS: usize, const DOMAINS: usize> Deref for Cold<'_, 'm, POOLS, DOMAINS> {
    type Target = LayerCore<'m, POOLS, DOMAINS>;
    #[inline(always)]
    fn deref(&self) -> &Self::Target {
        self.core
    }
}

/// A [`Cold`] of the default capacities: what the `*_once` functions take.
pub(crate) type FullCold<'a, 'm> = Cold<'a, 'm, MAX_POOLS, MAX_DOMAINS>;
/// A [`ColdMut`] of the default capacities.
pub(crate) type FullColdMut<'a, 'm> = ColdMut<'a, 'm, MAX_POOLS, MAX_DOMAINS>;

impl<'a, 'm, const POOLS: usize, const DOMAINS: usize> Cold<'a, 'm, POOLS, DOMAINS> {
    /// This view as the default capacities' type when those are its capacities (decided at compile
    /// time): the shells then call a `*_once` function, compiled in this crate only.
    #[inline(always)]
    pub(crate) fn as_full(self) -> Option<FullCold<'a, 'm>> {
        if POOLS == MAX_POOLS && DOMAINS == MAX_DOMAINS {
            // SAFETY: with equal capacities `Self` and `FullCold` are the same type; `Cold` is `Copy`.
            Some(unsafe { *(&self as *const Self).cast::<FullCold<'a, 'm>>() })
        } else {
            None
        }
    }
}

impl<'a, 'm, const POOLS: usize, const DOMAINS: usize> ColdMut<'a, 'm, POOLS, DOMAINS> {
    /// [`Cold::as_full`] for the mutable view: `Err(self)` for other capacities.
    #[inline(always)]
    pub(crate) fn into_full(self) -> Result<FullColdMut<'a, 'm>, Self> {
        if POOLS == MAX_POOLS && DOMAINS == MAX_DOMAINS {
            let me = core::mem::ManuallyDrop::new(self);
            // SAFETY: with equal capacities `Self` and `FullColdMut` are the same type; the value is
            // moved out of `me`, which is never used again.
            Ok(unsafe { core::ptr::read((&*me as *const Self).cast::<FullColdMut<'a, 'm>>()) })
        } else {
            Err(self)
        }
    }
}

/// [`Cold`] with the core borrowed mutably, for the calls that take `&mut DmaLayer` (pools added
/// and released, the IOMMU enabled and disabled, growth configured).
pub(crate) struct ColdMut<'a, 'm, const POOLS: usize, const DOMAINS: usize> {
    pub(crate) core: &'a mut LayerCore<'m, POOLS, DOMAINS>,
    pub(crate) platform: &'a dyn Platform,
}

impl<'m, const POOLS: usize, const DOMAINS: usize> ColdMut<'_, 'm, POOLS, DOMAINS> {
    /// The same view, shared.
    #[inline(always)]
    pub(crate) fn cold(&self) -> Cold<'_, 'm, POOLS, DOMAINS> {
        Cold { core: self.core, platform: self.platform }
    }
}

impl<'m, const POOLS: usize, const DOMAINS: usize> Deref for ColdMut<'_, 'm, POOLS, DOMAINS> {
    type Target = LayerCore<'m, POOLS, DOMAINS>;
    #[inline(always)]
    fn deref(&self) -> &Self::Target {
        self.core
    }
}

impl<const POOLS: usize, const DOMAINS: usize> DerefMut for ColdMut<'_, '_, POOLS, DOMAINS> {
    #[inline(always)]
    fn deref_mut(&mut self) -> &mut Self::Target {
        self.core
    }
}
