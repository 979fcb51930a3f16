//! The layer's set of pools as devices see it: at most [`MAX_POOLS`], and per device the order in
//! which they are tried.
//!
//! Each device tries, in order, the pools its mask reaches; a 24-bit device gets a pool below 16 MiB
//! or no path at all.
//!
//! ```
//! use ccdma::{DeviceConfig, DmaLayer, DmaMask, PhysAddr, PoolConfig, SlotMeta, MAX_POOLS};
//! # use ccdma_hv_model::{HvConfig, Hypervisor};
//! # let hv: &'static Hypervisor = Box::leak(Box::new(Hypervisor::new(HvConfig::pseries(6 << 30))));
//! let mut layer = DmaLayer::new(hv);
//! for phys in [0x80_0000, 0x1_0000_0000] {
//!     // SAFETY: both ranges are guest RAM this program gives the layer for good.
//!     unsafe { layer.add_pool(PhysAddr(phys), 1 << 20, vec![SlotMeta::EMPTY; 512].leak(), PoolConfig::default())? };
//! }
//! assert!(layer.pools().count() <= MAX_POOLS);
//! let old = layer.attach(DeviceConfig::new(1, DmaMask::new(24)?))?;
//! assert_eq!(old.pool_indices().collect::<Vec<_>>(), [0]); // only the low pool is below 16 MiB
//! let new = layer.attach(DeviceConfig::new(2, DmaMask::BITS_64))?;
//! assert_eq!(new.pool_indices().count(), 2);
//! let m = layer.on(&old).map_to_device(&[0u8; 64])?;
//! assert!(m.bus_addr().0 < 1 << 24);
//! # drop(m);
//! # Ok::<(), ccdma::DmaError>(())
//! ```

use crate::addr::BusAddr;

/// Most pools one layer can have.
pub const MAX_POOLS: usize = 8;

/// Pools a device may use, best first (highest bus range first, so wide devices leave low pools to the
/// devices that can use nothing else), of a layer of `N` pool slots: an IOMMU domain's set-up result
/// keeps one sized by its layer's `POOLS` (part of the layer: a small layer's is small); a `Device`
/// and the values on the stack keep the default ([`Self::widen`] turns the one into the other).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PoolOrder<const N: usize = MAX_POOLS> {
    idx: [u8; N],
    len: u8,
}

impl<const N: usize> PoolOrder<N> {
    /// The pools, best first (checked slicing: `len <= N` always, but no panic path either).
    fn used(&self) -> &[u8] {
        self.idx.get(..self.len as usize).unwrap_or(&[])
    }
    pub(crate) fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.used().iter().map(|&i| i as usize)
    }
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub(crate) const EMPTY: PoolOrder<N> = PoolOrder { idx: [0; N], len: 0 };
    pub(crate) fn push(&mut self, pool: usize) {
        if let Some(slot) = self.idx.get_mut(self.len as usize) {
            *slot = pool as u8;
            self.len += 1;
        }
    }
    /// Sort best first: highest bus base first (`bus` by pool index).
    pub(crate) fn sort_by_bus(&mut self, bus: &[BusAddr; N]) {
        let n = (self.len as usize).min(N);
        let at = |i: &u8| bus.get(*i as usize).copied().unwrap_or(BusAddr(0));
        if let Some(used) = self.idx.get_mut(..n) {
            used.sort_unstable_by_key(|i| core::cmp::Reverse(at(i)));
        }
    }
    /// The same order as the default capacity's (a device's): `N <= MAX_POOLS`, so it fits (a
    /// plain copy for the default `N`).
    pub(crate) fn widen(&self) -> PoolOrder {
        const { assert!(N <= MAX_POOLS, "a layer holds at most MAX_POOLS pools") };
        if N == MAX_POOLS {
            // SAFETY: with `N == MAX_POOLS` both are the same type (a plain copy, decided at
            // compile time).
            return unsafe { *(self as *const Self as *const PoolOrder) };
        }
        let mut out = PoolOrder { idx: [0; MAX_POOLS], len: self.len };
        for (o, &i) in out.idx.iter_mut().zip(self.idx.iter()) {
            *o = i;
        }
        out
    }
}
