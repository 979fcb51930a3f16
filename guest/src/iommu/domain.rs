//! Per-endpoint IOMMU state: the windows the devices of one partitionable endpoint got, where each pool sits on its bus, the bus-address
//! allocator, and the counters of the whole IOMMU path.
//!
//! A domain slot goes FREE -> CLAIMED (attach; a deferred device stays here until its first map or
//! allocation) -> SETUP (one CPU programs the windows) -> READY. Its [`DomainInfo`] is written once in
//! SETUP and only read afterwards, so the map hot path reads it with one acquire load and no lock.
//!
//! # One domain per partitionable endpoint
//!
//! PAPR translates per partitionable endpoint (PE), not per device: QEMU's pseries machine has one PE
//! per PCI host bridge, with one default window and one DDW (one TCE table each) that every device
//! on the bridge translates through. A domain is therefore keyed by the endpoint
//! ([`TceCalls::endpoint`](super::calls::TceCalls::endpoint)) and counts the devices attached to it
//! (`users`): the second device on a bridge joins the first one's domain, its windows, pools and one
//! bus space, so no two devices are ever handed the same bus address of a shared window. The
//! windows are set up once, for the narrowest mask of the devices attached by then (a deferred
//! device set up later sees every mask that joined before); a device joining a domain already set
//! up must reach all of it, or its attach fails with
//! [`IommuError::EndpointOutOfReach`](super::error::IommuError::EndpointOutOfReach) and nothing
//! changes. Detach of one device leaves the domain to the others; the last detach clears the
//! windows and removes (or resets) what the set-up created.
//!
//! **Isolation.** Devices behind one endpoint reach each other's entries: every entry of the shared
//! windows translates for every device on the bridge. ccdma's per-device records (which mapping a
//! device made, which device may unmap it) are bookkeeping, not a wall; the only wall PAPR offers
//! is between endpoints (put devices that must not reach each other on different host bridges).

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};

use crate::cold_lock::ColdLock as Mutex;

use super::bus_space::{BusRange, BusSpace};
use super::code::IommuCode;
use super::config::{IommuConfig, MAX_DOMAINS};
use super::list_pages::ListPages;
use super::window::WindowGeometry;
use crate::addr::BusAddr;
use crate::error::DmaError;
use crate::growth::live::LivePools;
use crate::path::{DmaPath, PathReason};
use crate::pool::MAX_AREAS;
use crate::pool_set::{PoolOrder, MAX_POOLS};

/// What set-up decided for one endpoint's devices; written once, then read only. Part of each domain
/// slot, so its pool arrays are sized by the layer's pool slots (`N`, its `POOLS`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct DomainInfo<const N: usize = MAX_POOLS> {
    pub path: DmaPath,
    pub reason: PathReason,
    pub ddw: Option<WindowGeometry>,
    /// The window for per-mapping entries and coherent buffers (the default window).
    pub dynamic: Option<WindowGeometry>,
    /// Pools the device maps from, best first.
    pub pools: PoolOrder<N>,
    /// Where each premapped pool starts on the device's bus, by pool index.
    pub pool_bus: [BusAddr; N],
    /// The set-up removed the endpoint's default window (no window was left for the DDW, as Linux
    /// does) or reset the endpoint: the last detach resets it so the default window comes back.
    pub reset_at_detach: bool,
}

impl<const N: usize> DomainInfo<N> {
    pub(crate) const EMPTY: DomainInfo<N> = DomainInfo {
        path: DmaPath::IommuDeferred,
        reason: PathReason::StrictPolicy,
        ddw: None,
        dynamic: None,
        pools: PoolOrder::EMPTY,
        pool_bus: [BusAddr(0); N],
        reset_at_detach: false,
    };
}

impl DomainInfo {
    /// A `*_once` function's result (the default capacity's type) as the type of its generic
    /// caller's layer of `N` pool slots (see `DomainSlot::as_full`): the same value when `N` is the
    /// default, which is the only case a caller passes one (decided at compile time); for another
    /// `N`, [`DmaError::NotAttached`]. The whole `Result` at once, so the default's is passed
    /// through unchanged (no code: converting the `Ok` alone rebuilt the error on the map path).
    #[inline(always)]
    pub(crate) fn sized<const N: usize>(
        r: Result<&DomainInfo, DmaError>,
    ) -> Result<&DomainInfo<N>, DmaError> {
        if N == MAX_POOLS {
            // SAFETY: with `N == MAX_POOLS` both are the same type; `Result<&_, DmaError>` is `Copy`.
            unsafe {
                *(&r as *const Result<&DomainInfo, DmaError> as *const Result<&DomainInfo<N>, DmaError>)
            }
        } else {
            Err(DmaError::NotAttached)
        }
    }
}

impl<const N: usize> DomainInfo<N> {
    /// Start a set-up's result in place: its path, why, its windows, no pool yet. Out of line: the
    /// three set-up variants share one copy of the stores (issue 20's code budget).
    #[inline(never)]
    pub(crate) fn start(
        &mut self,
        path: DmaPath,
        reason: PathReason,
        ddw: Option<WindowGeometry>,
        dynamic: Option<WindowGeometry>,
        reset_at_detach: bool,
    ) {
        // Field by field, not `..DomainInfo::EMPTY`: for a generic `N` that copies the constant from
        // memory (+32 B on ppc64) where this stores zeros.
        (self.path, self.reason, self.ddw, self.dynamic) = (path, reason, ddw, dynamic);
        self.reset_at_detach = reset_at_detach;
        self.pools = PoolOrder::EMPTY;
        self.pool_bus = [BusAddr(0); N];
    }
}

pub(crate) const FREE: u8 = 0;
pub(crate) const CLAIMED: u8 = 1;
pub(crate) const SETUP: u8 = 2;
pub(crate) const READY: u8 = 3;
/// A detach cleared part of the window and then failed: no map may use the domain; only a retried
/// detach moves it on.
pub(crate) const DETACHING: u8 = 4;

/// One partitionable endpoint's IOMMU state, shared by the devices attached to it.
pub(crate) struct DomainSlot<'m, const N: usize = MAX_POOLS> {
    pub state: AtomicU8,
    /// Bumped at every detach so a stale copy of a `Device` cannot reach the slot's next owner.
    pub generation: AtomicU32,
    pub device: AtomicU32,
    /// The endpoint the domain serves ([`TceCalls::endpoint`](super::calls::TceCalls::endpoint)).
    pub endpoint: AtomicU64,
    /// Devices attached to the domain (changed under [`Iommu::attach_lock`]); the last detach frees it.
    pub users: AtomicU32,
    /// A device of the domain is accepted (its entries may name private pages): no other device may
    /// join (changed under [`Iommu::attach_lock`]).
    pub accepted: AtomicBool,
    info: UnsafeCell<DomainInfo<N>>,
    pub space: Mutex<BusSpace<'m>>,
    /// Strict, trusted and list mappings live now, so detach can refuse while any is (premapped
    /// mappings are counted by their device alone: `DmaLayer::premapped_view`).
    pub live_mappings: AtomicU64,
    /// The pools the device maps from now and where each sits on its bus: filled at set-up, then
    /// changed only by pool growth and shrinking (under the layer's growth lock).
    pub live: LivePools<N>,
    /// The narrowest DMA mask and the widest `min_align_mask` of the devices attached (set-up and
    /// grown pools are placed for them).
    pub mask: AtomicU64,
    pub min_align: AtomicU64,
}

// SAFETY: `info` is written only by the CPU that moved the state CLAIMED -> SETUP (a compare-exchange
// makes it unique) and read only after an acquire load saw READY, which the writer published with a
// release store after the write; the rest is atomics and a lock.
unsafe impl<const N: usize> Sync for DomainSlot<'_, N> {}
// SAFETY: the slot owns its data; the range storage is a unique borrow.
unsafe impl<const N: usize> Send for DomainSlot<'_, N> {}

impl<'m, const N: usize> DomainSlot<'m, N> {
    /// A FREE slot over `storage`, written into `slot` in place (no frame holds the whole `Iommu`).
    pub(crate) fn init_in(slot: &mut Option<DomainSlot<'m, N>>, storage: &'m mut [BusRange]) {
        *slot = Some(DomainSlot {
            state: AtomicU8::new(FREE),
            generation: AtomicU32::new(0),
            device: AtomicU32::new(0),
            endpoint: AtomicU64::new(0),
            users: AtomicU32::new(0),
            accepted: AtomicBool::new(false),
            info: UnsafeCell::new(DomainInfo::EMPTY),
            space: Mutex::new(BusSpace::new(storage)),
            live_mappings: AtomicU64::new(0),
            live: LivePools::new(),
            mask: AtomicU64::new(0),
            min_align: AtomicU64::new(0),
        });
    }

    /// This slot as the default capacity's type when that is its capacity (decided at compile time;
    /// see `Cold::as_full`).
    #[inline(always)]
    pub(crate) fn as_full(&self) -> Option<&DomainSlot<'m>> {
        if N == MAX_POOLS {
            // SAFETY: with `N == MAX_POOLS` both are the same type.
            Some(unsafe { &*(self as *const Self as *const DomainSlot<'m>) })
        } else {
            None
        }
    }

    /// The set-up result, once READY.
    #[inline]
    pub(crate) fn info(&self, generation: u32) -> Option<&DomainInfo<N>> {
        if self.state.load(Ordering::Acquire) != READY
            || self.generation.load(Ordering::Relaxed) != generation
        {
            return None;
        }
        // SAFETY: READY was published (release) after the single writer finished; nothing writes
        // `info` again until the slot is freed, which needs no live user (detach checks).
        Some(unsafe { &*self.info.get() })
    }

    /// The set-up result being written, in place: set-up fills it field by field rather than
    /// building copies on its frames (a deferred device's first map runs it, issue 20's stack
    /// budget), then [`Self::publish`] makes it readable.
    ///
    /// # Safety
    /// The caller holds the slot in SETUP (won the CLAIMED -> SETUP compare-exchange) and the
    /// growth lock, and makes no other reference to the slot's result (`info`, `info_unchecked`)
    /// while the one returned lives. Every other reader checks READY first or holds a lock the
    /// set-up holds (the attach lock, the growth lock), so none reads it meanwhile.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn info_in_setup(&self) -> &mut DomainInfo<N> {
        // SAFETY: as the contract says: the caller is the only one to touch `info` now.
        unsafe { &mut *self.info.get() }
    }

    /// Publish the set-up result written through [`Self::info_in_setup`]. Only the CPU holding the
    /// slot in SETUP may call this, after its last use of that reference.
    pub(crate) fn publish(&self) {
        self.state.store(READY, Ordering::Release);
    }

    /// The set-up result while the caller holds the slot in READY-and-detaching or SETUP, or holds
    /// the attach lock and saw the slot READY (only a detach, which takes that lock, frees it).
    pub(crate) fn info_unchecked(&self) -> DomainInfo<N> {
        // SAFETY: callers are the detaching CPU (the slot is READY and no mapping is live), the
        // set-up CPU, or the holder of the growth lock (which set-up and detach take, so `publish`
        // cannot run meanwhile).
        unsafe { *self.info.get() }
    }
}

/// The IOMMU part of a layer of `N` pool slots.
pub(crate) struct Iommu<
    'm,
    const D: usize = MAX_DOMAINS,
    const N: usize = MAX_POOLS,
    const A: usize = MAX_AREAS,
> {
    /// The IOMMU path's cold code (attach, detach, a deferred set-up), named only by
    /// `enable_iommu`: a program that never enables the path does not link it (`code.rs`). Set
    /// before `enable_iommu` returns.
    pub code: Option<&'static IommuCode<N, D, A>>,
    pub cfg: IommuConfig,
    pub domains: [Option<DomainSlot<'m, N>>; D],
    pub list: Option<ListPages>,
    /// Reservations applied to every domain set up later (and to those live when they were made):
    /// one per domain slot ([`super::config::MAX_GLOBAL_RESERVATIONS`] in the default layer; none,
    /// and no bytes, in a layer that can have no domain).
    pub reservations: Mutex<([(u64, u64); D], usize)>,
    /// Serialises finding or claiming an endpoint's domain, setting it up and detaching from it, so
    /// two devices of one endpoint never claim two domains and a set-up never races a join.
    pub attach_lock: Mutex<()>,
}

/// A device's handle on its domain slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct DomainRef {
    pub index: u8,
    pub generation: u32,
}

#[cfg(test)]
mod sized_tests {
    //! The two casts between a result sized by `N` and the default one (`DomainInfo::sized`,
    //! `PoolOrder::widen`) are taken only for the default `N`; for another `N` they convert (or
    //! refuse). Run under Miri by `scripts/miri.sh` (the integration tests that use them cannot be).
    extern crate std;
    use super::*;

    #[test]
    fn a_default_result_passes_through_and_another_size_is_refused() {
        let mut info = DomainInfo::EMPTY;
        info.start(DmaPath::IommuPremapped, PathReason::StrictPolicy, None, None, true);
        info.pools.push(3);
        info.pools.push(1);
        info.pool_bus[3] = BusAddr(0x3000);
        let same = DomainInfo::sized::<MAX_POOLS>(Ok(&info)).unwrap();
        assert!(core::ptr::eq(same, &info));
        assert_eq!(same.pool_bus[3], BusAddr(0x3000));
        assert_eq!(
            DomainInfo::sized::<MAX_POOLS>(Err(DmaError::Busy { live: 2 })).err(),
            Some(DmaError::Busy { live: 2 })
        );
        assert_eq!(DomainInfo::sized::<1>(Ok(&info)).err(), Some(DmaError::NotAttached));
    }

    #[test]
    fn a_pool_order_widens_to_the_default_size() {
        let mut full = PoolOrder::<MAX_POOLS>::EMPTY;
        let mut two = PoolOrder::<2>::EMPTY;
        for i in [1, 0, 5] {
            full.push(i);
            two.push(i);
        }
        assert_eq!(full.widen(), full);
        assert_eq!(two.iter().collect::<std::vec::Vec<_>>(), [1, 0], "a third pool has no room");
        assert_eq!(two.widen().iter().collect::<std::vec::Vec<_>>(), [1, 0]);
        let mut bus = [BusAddr(0x100), BusAddr(0x200)];
        two.sort_by_bus(&bus);
        assert_eq!(two.iter().collect::<std::vec::Vec<_>>(), [1, 0]);
        bus.reverse();
        two.sort_by_bus(&bus);
        assert_eq!(two.iter().collect::<std::vec::Vec<_>>(), [0, 1]);
    }
}
