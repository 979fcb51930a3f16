//! "Pool full" reports: when a mapping finally fails for want of pool space, the layer records which
//! device asked for what, how full each pool was, and whether growth was possible and why not
//! ([`DmaLayer::last_pool_full`](crate::DmaLayer::last_pool_full)). Per-device peaks and failures are on [`crate::Device`].

use core::fmt;

use crate::pool_set::MAX_POOLS;

pub use crate::growth::verdict::GrowthVerdict;

/// How full one pool was.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolFill {
    /// Pool index.
    pub index: u8,
    /// Slots of the pool.
    pub slots: u32,
    /// Slots allocated when the report was made.
    pub in_use: u32,
    /// Pool bytes.
    pub bytes: u64,
}

/// A mapping that failed because no pool had room.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolFullReport {
    /// The device's id ([`crate::DeviceConfig::id`]).
    pub device: u32,
    /// Bytes requested.
    pub len: usize,
    /// The layer's pools, `npools` of them.
    pub pools: [PoolFill; MAX_POOLS],
    /// Entries of `pools` in use.
    pub npools: usize,
    /// Why growth did not help.
    pub growth: GrowthVerdict,
}

impl fmt::Display for PoolFullReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pool full: device {:#x} asked for {} bytes;", self.device, self.len)?;
        for p in self.pools.iter().take(self.npools) {
            let pct = if p.slots == 0 { 0 } else { u64::from(p.in_use) * 100 / u64::from(p.slots) };
            write!(f, " pool {} {}/{} slots ({pct}%) of {} bytes;", p.index, p.in_use, p.slots, p.bytes)?;
        }
        write!(f, " {}", self.growth)
    }
}
