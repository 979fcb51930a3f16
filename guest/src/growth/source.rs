//! Where grown pools come from ([`MemorySource`]) and the policy that bounds growth
//! ([`GrowthConfig`]).

use core::ptr::NonNull;

use crate::addr::PhysAddr;
use crate::error::DmaError;
use crate::pool::{PoolConfig, SlotMeta};

/// Guest memory the layer may turn into pools when a mapping cannot be placed, and take back when a
/// pool has stayed idle (see [`crate::growth`]).
///
/// # Safety
/// The layer shares what this hands out with the hypervisor and devices and overwrites it, so an
/// implementation guarantees:
/// - every range [`take`](Self::take) returns is guest RAM, `len` bytes, aligned to `align`, whose
///   last byte is at or below `limit`, and is used by nothing else (no other owner, no CPU data) until
///   the layer hands it back with [`give_back`](Self::give_back);
/// - every pointer [`take_meta`](Self::take_meta) returns is valid for reads and writes of `slots`
///   [`SlotMeta`] (aligned), is private memory the hypervisor cannot reach, and is used by nothing
///   else until [`give_back_meta`](Self::give_back_meta);
/// - nothing is handed out twice while the layer holds it.
///
/// The layer hands back exactly what it took (same address and length), or keeps it for good: a
/// range whose pages could not be made private again, or that an IOMMU entry may still name, is
/// never given back.
pub unsafe trait MemorySource: Sync {
    /// `len` bytes of guest RAM aligned to `align` and ending at or below `limit`, or `None`.
    fn take(&self, len: usize, align: u64, limit: u64) -> Option<PhysAddr>;
    /// A range `take` handed out, private again and unused by the layer from now on.
    fn give_back(&self, phys: PhysAddr, len: usize);
    /// Private storage for `slots` slot records, or `None`.
    fn take_meta(&self, slots: usize) -> Option<NonNull<SlotMeta>>;
    /// Storage `take_meta` handed out, unused by the layer from now on.
    fn give_back_meta(&self, meta: NonNull<SlotMeta>, slots: usize);
}

/// How far and how a layer grows, and when it shrinks back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GrowthConfig {
    /// Bytes of each grown pool (page multiple).
    pub pool_bytes: usize,
    /// Alignment of each grown pool (a power of two, at least a page). A DDW created while growth is
    /// enabled uses IOMMU pages no larger than this, so grown pools can enter it.
    pub align: u64,
    /// Most bytes of grown pools at once (reserve included).
    pub max_total_bytes: u64,
    /// Most grown pools at once (reserve included).
    pub max_pools: usize,
    /// Bytes of the reserve pool taken when growth is enabled (0: none). Maps use it only while
    /// another CPU is adding a pool, so they need not wait for that CPU's hypercalls.
    pub reserve_bytes: usize,
    /// A grown pool with no live slot and no allocation attempt for this many consecutive
    /// [`DmaLayer::growth_tick`](crate::DmaLayer::growth_tick) calls is removed. The layer has no
    /// clock: the caller decides what a tick is (e.g. one per second from a timer).
    pub idle_ticks: u32,
    /// Geometry of grown pools.
    pub pool: PoolConfig,
}

impl GrowthConfig {
    /// Grow by `pool_bytes` at a time, up to `max_pools` pools; 2 MiB alignment, no reserve,
    /// shrink after 4 idle ticks.
    pub const fn new(pool_bytes: usize, max_pools: usize) -> GrowthConfig {
        GrowthConfig {
            pool_bytes,
            align: 2 << 20,
            max_total_bytes: (pool_bytes as u64).saturating_mul(max_pools as u64),
            max_pools,
            reserve_bytes: 0,
            idle_ticks: 4,
            pool: PoolConfig { slot_size: 2048, max_run_slots: 128, areas: 4 },
        }
    }

    pub(crate) fn validate(&self) -> Result<(), DmaError> {
        self.pool.validate()?;
        let page = crate::addr::PAGE_SIZE;
        for len in [self.pool_bytes, self.reserve_bytes] {
            if len as u64 % page != 0 || (len != 0 && len < self.pool.slot_size) {
                return Err(DmaError::Unaligned { addr: len as u64, align: page });
            }
        }
        if self.pool_bytes == 0 {
            return Err(DmaError::PoolTooSmall { len: 0, slot_size: self.pool.slot_size });
        }
        if !self.align.is_power_of_two() || self.align < page {
            return Err(DmaError::Unaligned { addr: self.align, align: page });
        }
        Ok(())
    }

    /// log2 of the largest IOMMU page every grown pool is aligned to.
    pub(crate) fn page_shift_limit(&self) -> u32 {
        self.align.trailing_zeros().min((self.pool_bytes as u64).trailing_zeros())
    }
}
