//! Storage that lives in a `static`, so firmware and kernels need no allocator and no hand-rolled
//! cells: [`PoolStorage`] holds a pool's slot metadata, [`LayerCell`] freezes a configured layer into
//! the `&'static DmaLayer` that HALs (such as the `virtio_hal` module, feature `virtio-hal`) need.
//!
//! ```
//! use ccdma::storage::{LayerCell, PoolStorage};
//! use ccdma::{DeviceConfig, DmaLayer, DmaMask, PhysAddr, PoolConfig};
//! # use ccdma_hv_model::{HvConfig, Hypervisor};
//! # type Plat = &'static Hypervisor;
//! # let platform: Plat = Box::leak(Box::new(Hypervisor::new(HvConfig::pseries(1 << 30))));
//! static META: PoolStorage<2048> = PoolStorage::new(); // 4 MiB of 2 KiB slots
//! static LAYER: LayerCell<Plat> = LayerCell::new();
//!
//! let mut layer = DmaLayer::new(platform);
//! let meta = META.take().expect("taken once");
//! // SAFETY: the range is guest RAM given to the layer for good.
//! unsafe { layer.add_pool(PhysAddr(0x80_0000), 4 << 20, meta, PoolConfig::default())? };
//! let layer: &'static DmaLayer<'static, Plat> = LAYER.init(layer).ok().expect("initialised once");
//! let nic = layer.attach(DeviceConfig::new(1, DmaMask::BITS_32))?;
//! assert!(LAYER.get().is_some() && META.take().is_none());
//! // A second layer is refused and handed back, never stored over the first.
//! assert!(LAYER.init(DmaLayer::new(platform)).is_err());
//! # let _ = nic;
//! # Ok::<(), ccdma::DmaError>(())
//! ```

use core::cell::UnsafeCell;
use core::mem::MaybeUninit;
use core::sync::atomic::{AtomicBool, AtomicU8, Ordering};

use crate::iommu::MAX_DOMAINS;
use crate::layer::DmaLayer;
use crate::platform::Platform;
use crate::pool::{SlotMeta, MAX_AREAS};
use crate::pool_set::MAX_POOLS;

/// Slot metadata for one pool of `SLOTS` slots, in a `static`. [`PoolStorage::take`] hands it out
/// once, as the `&'static mut` that [`DmaLayer::add_pool`] takes.
pub struct PoolStorage<const SLOTS: usize> {
    meta: UnsafeCell<[SlotMeta; SLOTS]>,
    taken: AtomicBool,
}

// SAFETY: the storage is reachable only through `take`, which hands out its one `&mut` at most once
// (the compare-exchange makes that unique across CPUs); nothing else reads or writes it.
unsafe impl<const SLOTS: usize> Sync for PoolStorage<SLOTS> {}

impl<const SLOTS: usize> PoolStorage<SLOTS> {
    /// Empty metadata for `SLOTS` slots (`PoolConfig::slots_for(pool bytes)`).
    pub const fn new() -> Self {
        PoolStorage { meta: UnsafeCell::new([SlotMeta::EMPTY; SLOTS]), taken: AtomicBool::new(false) }
    }

    /// The metadata, the first time; `None` afterwards.
    // A `&mut` out of `&self` is the point: the atomic makes it unique (see the SAFETY line).
    #[allow(clippy::mut_from_ref)]
    pub fn take(&'static self) -> Option<&'static mut [SlotMeta]> {
        if self.taken.compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire).is_err() {
            return None;
        }
        // SAFETY: the compare-exchange above succeeds once in the life of this static, so this is
        // the only reference to the array there will ever be.
        Some(unsafe { &mut *self.meta.get() })
    }
}

impl<const SLOTS: usize> Default for PoolStorage<SLOTS> {
    fn default() -> Self {
        Self::new()
    }
}

/// A place in a `static` where a configured layer is frozen: after [`LayerCell::init`] every CPU
/// shares it as `&'static DmaLayer` (pools are added and the IOMMU enabled before, through `&mut`).
/// `POOLS`, `DOMAINS` and `AREAS` are the layer's capacities ([`DmaLayer`]):
/// `LayerCell<P, 1, 0, 2>` holds a one-pool layer of two areas without IOMMU domains.
pub struct LayerCell<
    P: Platform + 'static,
    const POOLS: usize = MAX_POOLS,
    const DOMAINS: usize = MAX_DOMAINS,
    const AREAS: usize = MAX_AREAS,
> {
    /// 0: empty, 1: being written, 2: holds the layer.
    state: AtomicU8,
    layer: UnsafeCell<MaybeUninit<DmaLayer<'static, P, POOLS, DOMAINS, AREAS>>>,
}

const EMPTY: u8 = 0;
const WRITING: u8 = 1;
const READY: u8 = 2;

// SAFETY: the layer is written once, by the CPU that moved the state EMPTY -> WRITING, and read only
// after an acquire load saw READY (stored with release after the write); from then on it is only
// shared, which `DmaLayer: Sync` allows. Moving it in from another CPU needs `Send`.
unsafe impl<P: Platform + 'static, const POOLS: usize, const DOMAINS: usize, const AREAS: usize> Sync
    for LayerCell<P, POOLS, DOMAINS, AREAS>
where
    DmaLayer<'static, P, POOLS, DOMAINS, AREAS>: Send + Sync,
{
}

impl<P: Platform + 'static, const POOLS: usize, const DOMAINS: usize, const AREAS: usize>
    LayerCell<P, POOLS, DOMAINS, AREAS>
{
    /// An empty cell.
    pub const fn new() -> Self {
        LayerCell { state: AtomicU8::new(EMPTY), layer: UnsafeCell::new(MaybeUninit::uninit()) }
    }

    /// Freeze `layer` here and return it shared; if the cell already holds one (or another CPU is
    /// storing one), `layer` comes back.
    #[allow(clippy::result_large_err)] // the layer comes back by value: there is no allocator
    pub fn init(
        &'static self,
        layer: DmaLayer<'static, P, POOLS, DOMAINS, AREAS>,
    ) -> Result<
        &'static DmaLayer<'static, P, POOLS, DOMAINS, AREAS>,
        DmaLayer<'static, P, POOLS, DOMAINS, AREAS>,
    > {
        if self.state.compare_exchange(EMPTY, WRITING, Ordering::AcqRel, Ordering::Acquire).is_err() {
            return Err(layer);
        }
        // SAFETY: the compare-exchange made this CPU the only writer, and nobody reads before READY.
        let stored = unsafe { (*self.layer.get()).write(layer) };
        self.state.store(READY, Ordering::Release);
        Ok(stored)
    }

    /// Build a layer in the cell, in place ([`DmaLayer::init_in`]: no layer-sized value on any
    /// stack, unlike [`Self::init`], which moves one in), let `configure` add its pools and enable
    /// what it needs through `&mut`, then freeze it and return it shared.
    ///
    /// If the cell already holds a layer (or another CPU is building one) nothing is built:
    /// [`CellInitError::Occupied`]. If `configure` fails, its pools are released
    /// ([`DmaLayer::release_pools`]) and its IOMMU path disabled, the layer is dropped and the cell
    /// is empty again: [`CellInitError::Configure`] with its error. (A panic in `configure`, where
    /// panics unwind, leaves the cell being written for good: every later `init` is refused.)
    ///
    /// ```
    /// use ccdma::storage::{LayerCell, PoolStorage};
    /// use ccdma::{DmaError, PhysAddr, PoolConfig};
    /// # use ccdma_hv_model::{HvConfig, Hypervisor};
    /// # type Plat = &'static Hypervisor;
    /// # let platform: Plat = Box::leak(Box::new(Hypervisor::new(HvConfig::pseries(1 << 30))));
    /// static META: PoolStorage<512> = PoolStorage::new(); // 1 MiB of 2 KiB slots
    /// static LAYER: LayerCell<Plat> = LayerCell::new();
    ///
    /// // The layer is built inside LAYER: no stack frame ever holds it.
    /// let layer = LAYER
    ///     .init_with(platform, |layer| {
    ///         let meta = META.take().ok_or(DmaError::TooManyPools)?;
    ///         // SAFETY: the range is guest RAM given to the layer for good.
    ///         unsafe { layer.add_pool(PhysAddr(0x80_0000), 1 << 20, meta, PoolConfig::default()) }.map(|_| ())
    ///     })
    ///     .expect("initialised once");
    /// assert_eq!(layer.pools().count(), 1);
    /// ```
    pub fn init_with<E>(
        &'static self,
        platform: P,
        configure: impl FnOnce(&mut DmaLayer<'static, P, POOLS, DOMAINS, AREAS>) -> Result<(), E>,
    ) -> Result<&'static DmaLayer<'static, P, POOLS, DOMAINS, AREAS>, CellInitError<E>> {
        if self.state.compare_exchange(EMPTY, WRITING, Ordering::AcqRel, Ordering::Acquire).is_err() {
            return Err(CellInitError::Occupied);
        }
        // SAFETY: the compare-exchange made this CPU the only writer, and nobody reads before READY.
        let place = unsafe { &mut *self.layer.get() };
        let layer = DmaLayer::init_in(place, platform);
        if let Err(e) = configure(layer) {
            // Give back what `configure` took before the layer goes (it has no destructor that would).
            let _ = layer.disable_iommu();
            let _ = layer.release_pools();
            // SAFETY: `init_in` initialised the value and no reference to it outlives this call.
            unsafe { place.assume_init_drop() };
            self.state.store(EMPTY, Ordering::Release);
            return Err(CellInitError::Configure(e));
        }
        self.state.store(READY, Ordering::Release);
        // SAFETY: initialised above; from now on it is only shared (READY is never left).
        Ok(unsafe { place.assume_init_ref() })
    }

    /// The frozen layer, once initialised.
    pub fn get(&'static self) -> Option<&'static DmaLayer<'static, P, POOLS, DOMAINS, AREAS>> {
        if self.state.load(Ordering::Acquire) != READY {
            return None;
        }
        // SAFETY: READY was stored (release) after the one write; the value is never written again.
        Some(unsafe { (*self.layer.get()).assume_init_ref() })
    }
}

/// Why [`LayerCell::init_with`] froze no layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CellInitError<E> {
    /// The cell holds a layer already, or another CPU is building one.
    Occupied,
    /// The configuration step failed with this error; the cell is empty again.
    Configure(E),
}

impl<P: Platform + 'static, const POOLS: usize, const DOMAINS: usize, const AREAS: usize> Default
    for LayerCell<P, POOLS, DOMAINS, AREAS>
{
    fn default() -> Self {
        Self::new()
    }
}
