//! "Pool full" reports: when a mapping finally fails for want of pool space, the layer records which
//! device asked for what, how full each pool was, and whether growth was possible and why not
//! ([`DmaLayer::last_pool_full`]). Per-device peaks and failures are on [`crate::Device`].

use core::fmt;

use crate::device::Device;
use crate::layer::DmaLayer;
use crate::platform::Platform;
use crate::pool_set::MAX_POOLS;

/// Why a full pool set did not grow (or grew without helping).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrowthVerdict {
    /// No memory source: growth is not enabled.
    Disabled,
    /// The configured limits (pools, bytes) or the pool table are full.
    LimitReached,
    /// The memory source had nothing (below the device's limit).
    SourceEmpty,
    /// Sharing the new memory failed (rolled back, or quarantined).
    SharingFailed,
    /// Entering the new pool into a device window failed (rolled back, or quarantined).
    WindowFailed,
    /// A pool was added but the device cannot reach it (its window has no room below its mask).
    Unreachable,
}

impl fmt::Display for GrowthVerdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            GrowthVerdict::Disabled => "growth not enabled",
            GrowthVerdict::LimitReached => "growth limit reached",
            GrowthVerdict::SourceEmpty => "memory source empty",
            GrowthVerdict::SharingFailed => "sharing new pool memory failed",
            GrowthVerdict::WindowFailed => "entering a new pool into a window failed",
            GrowthVerdict::Unreachable => "new pool not reachable by the device",
        })
    }
}

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
        for p in &self.pools[..self.npools] {
            let pct = if p.slots == 0 { 0 } else { u64::from(p.in_use) * 100 / u64::from(p.slots) };
            write!(f, " pool {} {}/{} slots ({pct}%) of {} bytes;", p.index, p.in_use, p.slots, p.bytes)?;
        }
        write!(f, " {}", self.growth)
    }
}

impl<P: Platform> DmaLayer<'_, P> {
    /// The last "pool full" failure, if any.
    pub fn last_pool_full(&self) -> Option<PoolFullReport> {
        *self.growth.last_full.lock()
    }

    pub(crate) fn report_full(&self, dev: &Device, len: usize, growth: GrowthVerdict) {
        let mut r = PoolFullReport {
            device: dev.config.id,
            len,
            pools: [PoolFill::default(); MAX_POOLS],
            npools: 0,
            growth,
        };
        for (i, p) in self.pools.iter() {
            r.pools[r.npools] = PoolFill {
                index: i as u8,
                slots: p.slots() as u32,
                in_use: p.slots_in_use() as u32,
                bytes: p.len() as u64,
            };
            r.npools += 1;
        }
        log::warn!("ccdma: {r}");
        *self.growth.last_full.lock() = Some(r);
    }
}
