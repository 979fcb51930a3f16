//! Building a layer in the caller's memory: [`DmaLayer::init_in`] writes every field in place, so
//! no layer-sized temporary sits on the stack (firmware stacks are a few KiB; the layer is not).
//!
//! ```
//! use core::mem::MaybeUninit;
//! use ccdma::DmaLayer;
//! # use ccdma_hv_model::{HvConfig, Hypervisor};
//! # let hv: &'static Hypervisor = Box::leak(Box::new(Hypervisor::new(HvConfig::pseries(1 << 30))));
//! let place: &'static mut MaybeUninit<DmaLayer<'static, &'static Hypervisor>> =
//!     Box::leak(Box::new(MaybeUninit::uninit()));
//! let layer = DmaLayer::init_in(place, hv);
//! assert_eq!(layer.pools().count(), 0);
//! ```

use core::mem::MaybeUninit;
use core::ptr::addr_of_mut;
use core::sync::atomic::{AtomicU32, Ordering};

use crate::device_ids::DeviceIds;
use crate::growth::live::LivePools;
use crate::growth::state::Growth;
use crate::growth::table::PoolTable;
use crate::iommu::counters::IommuCounters;
use crate::layer::{DmaLayer, NEXT_LAYER_ID};
use crate::platform::Platform;
use crate::stats::Stats;
use crate::stream::raw_records::RawRecords;
use crate::tracker::Tracker;

impl<'m, P: Platform, const POOLS: usize, const DOMAINS: usize, const AREAS: usize>
    DmaLayer<'m, P, POOLS, DOMAINS, AREAS>
{
    /// Build a layer with no pools in `place` and return it: the same layer as [`DmaLayer::new`],
    /// written field by field into the caller's memory (a `static`, a `LayerCell`, C memory), so the
    /// stack never holds the whole layer (`scripts/budgets.sh` checks the frames). Whatever `place`
    /// held is overwritten without being dropped.
    pub fn init_in(place: &mut MaybeUninit<Self>, platform: P) -> &mut Self {
        // Every field is written below: this pattern names them all, so a new field fails to compile
        // here until it is initialised too.
        let _all_fields = |l: Self| {
            let DmaLayer {
                platform: _,
                pools: _,
                plain: _,
                growth: _,
                stats: _,
                id: _,
                next_serial: _,
                iommu: _,
                iommu_counters: _,
                tracker: _,
                device_ids: _,
                stale_slots: _,
                raw: _,
            } = l;
        };
        const { assert!(DOMAINS <= crate::iommu::MAX_DOMAINS, "a layer holds at most MAX_DOMAINS IOMMU domains") };
        let p = place.as_mut_ptr();
        // SAFETY: `p` is valid for writes of a whole `Self` (it comes from `&mut MaybeUninit<Self>`);
        // each write goes to one field through `addr_of_mut!`, making no reference to uninitialised
        // memory; the pattern above shows every field is written.
        unsafe {
            addr_of_mut!((*p).platform).write(platform);
            addr_of_mut!((*p).pools).write(PoolTable::new());
            addr_of_mut!((*p).plain).write(LivePools::new());
            addr_of_mut!((*p).growth).write(Growth::new());
            addr_of_mut!((*p).stats).write(Stats::new());
            addr_of_mut!((*p).id).write(NEXT_LAYER_ID.fetch_add(1, Ordering::Relaxed));
            addr_of_mut!((*p).next_serial).write(AtomicU32::new(1));
            addr_of_mut!((*p).iommu).write(None);
            addr_of_mut!((*p).iommu_counters).write(IommuCounters::default());
            addr_of_mut!((*p).tracker).write(Tracker::default());
            addr_of_mut!((*p).device_ids).write(DeviceIds::new());
            addr_of_mut!((*p).stale_slots).write(None);
            addr_of_mut!((*p).raw).write(const { RawRecords::new() });
        }
        // SAFETY: every field was initialised above.
        unsafe { place.assume_init_mut() }
    }
}
