//! Counters. All relaxed atomics: they are for reports and tests, never for decisions.
//!
//! The counters every map and unmap bumps are spread over `SHARDS` cache lines (one per pool slot of
//! the layer's capacity: 8 in the default layer, 1 in `DmaLayer<P, 1, 0>`), summed when read,
//! so CPUs mapping at the same time do not pull one line back and forth. The layer has no CPU number
//! to index them by (the platform gives none), so a shard is picked from the address of the
//! caller's stack: threads and CPUs run on different stacks, so concurrent callers mostly land on
//! different lines; two that collide only share a line, the counts stay exact.
//!
//! ```
//! # use ccdma::*;
//! # use ccdma_hv_model::{HvConfig, Hypervisor, Region};
//! # let hv: &'static Hypervisor = Box::leak(Box::new(Hypervisor::new(HvConfig::pseries(6 << 30))));
//! # let mut layer = DmaLayer::new(hv);
//! # // SAFETY: the model never hands this range out.
//! # unsafe { layer.add_pool(PhysAddr(0x80_0000), 1 << 20, vec![SlotMeta::EMPTY; 512].leak(), PoolConfig::default()) }.unwrap();
//! let dev = layer.attach(DeviceConfig::new(1, DmaMask::BITS_32))?;
//! layer.on(&dev).map_to_device(&[0u8; 1500])?.unmap()?;
//! assert!(layer.on(&dev).map_to_device(&[0u8; 4 << 20]).is_err());
//!
//! let s = layer.stats();
//! assert_eq!((s.maps, s.bounced_maps, s.bytes_to_device), (1, 1, 1500));
//! assert_eq!(s.failures_of(FailureKind::TooLarge), 1);
//! println!("{s}"); // labelled, one counter per line
//! # Ok::<(), ccdma::DmaError>(())
//! ```

use core::sync::atomic::{AtomicU64, Ordering};

/// Why a map or attach failed, for the failure counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum FailureKind {
    /// No free run in any reachable pool.
    PoolExhausted = 0,
    /// Mapping longer than a run.
    TooLarge,
    /// Buffer beyond the device's mask and not bounceable.
    BeyondMask,
    /// Unknown bus address at unmap/sync (invalid handle, double unmap).
    UnknownMapping,
    /// Size or direction at unmap/sync differs from the record.
    Mismatch,
    /// Sync range outside the mapping.
    OutOfRange,
    /// Sharing or unsharing call failed.
    Sharing,
    /// IOMMU programming failed.
    Iommu,
    /// Attach found no path.
    NoPath,
    /// Other invalid arguments.
    Invalid,
}

const KINDS: usize = 10;

/// The counters of the hot path, one cache line's worth.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Shard {
    /// Maps that did not bounce (the snapshot's `maps` adds `bounced_maps`: a bounced map bumps
    /// one counter, not two).
    direct_maps: AtomicU64,
    unmaps: AtomicU64,
    bounced_maps: AtomicU64,
    bytes_to_device: AtomicU64,
    bytes_from_device: AtomicU64,
}

/// Live counters of a layer instance. A plain or premapped bounce map and its unmap are counted by
/// the pool area they use, under the area lock they take anyway (no read-modify-write: see
/// `crate::pool::PoolTally`); the layer's snapshot adds those, and a pool that leaves hands them
/// here (`Stats::absorb`). The other hot ones are spread over `SHARDS` lines (the layer's `POOLS`:
/// a small configuration has few CPUs to spread over and little room). With no shard (`POOLS` 0)
/// maps and unmaps are not counted.
#[derive(Debug)]
pub struct Stats<const SHARDS: usize = { crate::pool_set::MAX_POOLS }> {
    hot: [Shard; SHARDS],
    quarantined_pages: AtomicU64,
    shared_pages: AtomicU64,
    failures: [AtomicU64; KINDS],
}

impl<const SHARDS: usize> Default for Stats<SHARDS> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const SHARDS: usize> Stats<SHARDS> {
    /// Every counter zero (what `Default` gives), as a `const fn`: a layer built in place
    /// ([`DmaLayer::init_in`](crate::DmaLayer::init_in)) writes it straight into its field.
    // Named constants of atomics are what `[C; N]` needs here: each use is a fresh zeroed value
    // (never a shared one), and unlike `const {}` blocks they let the optimiser write the whole
    // value in place (`scripts/budgets.sh`: `DmaLayer::init_in` 760 B of frame, 1,272 B otherwise).
    #[allow(clippy::declare_interior_mutable_const)]
    pub(crate) const fn new() -> Self {
        const ZERO: AtomicU64 = AtomicU64::new(0);
        const SHARD: Shard = Shard {
            direct_maps: ZERO,
            unmaps: ZERO,
            bounced_maps: ZERO,
            bytes_to_device: ZERO,
            bytes_from_device: ZERO,
        };
        Stats { hot: [SHARD; SHARDS], quarantined_pages: ZERO, shared_pages: ZERO, failures: [ZERO; KINDS] }
    }
}

/// A copy of the counters at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Successful maps.
    pub maps: u64,
    /// Successful unmaps.
    pub unmaps: u64,
    /// Maps that went through a pool.
    pub bounced_maps: u64,
    /// Bytes copied guest -> shared memory.
    pub bytes_to_device: u64,
    /// Bytes copied shared memory -> guest.
    pub bytes_from_device: u64,
    /// Pages that could not be made private again and are never reused.
    pub quarantined_pages: u64,
    /// Pages this layer shares now (pools and coherent buffers).
    pub shared_pages: u64,
    /// Slots allocated now, over all pools.
    pub slots_in_use: u64,
    /// Highest slot count ever in use (sum over pools of each pool's high-water mark).
    pub slots_high_water: u64,
    /// Failures by [`FailureKind`].
    pub failures: [u64; KINDS],
}

impl FailureKind {
    /// Every kind, in counter order.
    pub const ALL: [FailureKind; KINDS] = [
        FailureKind::PoolExhausted,
        FailureKind::TooLarge,
        FailureKind::BeyondMask,
        FailureKind::UnknownMapping,
        FailureKind::Mismatch,
        FailureKind::OutOfRange,
        FailureKind::Sharing,
        FailureKind::Iommu,
        FailureKind::NoPath,
        FailureKind::Invalid,
    ];
    /// A short name for reports.
    pub const fn name(self) -> &'static str {
        match self {
            FailureKind::PoolExhausted => "pool exhausted",
            FailureKind::TooLarge => "too large",
            FailureKind::BeyondMask => "beyond mask",
            FailureKind::UnknownMapping => "unknown mapping",
            FailureKind::Mismatch => "mismatch",
            FailureKind::OutOfRange => "out of range",
            FailureKind::Sharing => "sharing",
            FailureKind::Iommu => "iommu",
            FailureKind::NoPath => "no path",
            FailureKind::Invalid => "invalid",
        }
    }
}

/// One line per counter, failures by name (only those that happened).
impl core::fmt::Display for StatsSnapshot {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "maps {} (bounced {}), unmaps {}; bytes to device {}, from device {}; slots in use {} (high {}); \
             shared pages {}, quarantined {}; failures {}",
            self.maps,
            self.bounced_maps,
            self.unmaps,
            self.bytes_to_device,
            self.bytes_from_device,
            self.slots_in_use,
            self.slots_high_water,
            self.shared_pages,
            self.quarantined_pages,
            self.total_failures()
        )?;
        let mut sep = " (";
        for kind in FailureKind::ALL {
            let n = self.failures_of(kind);
            if n != 0 {
                write!(f, "{sep}{}: {n}", kind.name())?;
                sep = ", ";
            }
        }
        if sep == ", " {
            write!(f, ")")?;
        }
        Ok(())
    }
}

impl StatsSnapshot {
    /// Failures of one kind.
    pub fn failures_of(&self, kind: FailureKind) -> u64 {
        self.failures[kind as usize]
    }
    /// All failures.
    pub fn total_failures(&self) -> u64 {
        self.failures.iter().sum()
    }
}

impl<const SHARDS: usize> Stats<SHARDS> {
    /// Without the `stats` part nothing is counted: 1, every failure is a first (warned).
    pub(crate) fn fail(&self, kind: FailureKind) -> u64 {
        if !crate::parts::STATS {
            return 1;
        }
        self.failures[kind as usize].fetch_add(1, Ordering::Relaxed) + 1
    }
    /// The caller's shard: from its stack address ([`stack_slot`]), see the module docs.
    /// `None` only with no shard at all. `SHARDS` is a constant of each layer type, so the index is
    /// a mask for a power of two (the default 8) and the bounds check folds away.
    #[inline]
    fn shard(&self) -> Option<&Shard> {
        let probe = 0u8;
        self.hot.get(stack_slot(core::ptr::addr_of!(probe) as usize) % SHARDS.max(1))
    }
    pub(crate) fn mapped(&self, bounced: bool) {
        if !crate::parts::STATS {
            return;
        }
        if let Some(s) = self.shard() {
            let counter = if bounced { &s.bounced_maps } else { &s.direct_maps };
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }
    pub(crate) fn unmapped(&self) {
        if !crate::parts::STATS {
            return;
        }
        if let Some(s) = self.shard() {
            s.unmaps.fetch_add(1, Ordering::Relaxed);
        }
    }
    pub(crate) fn to_device(&self, bytes: usize) {
        if !crate::parts::STATS {
            return;
        }
        if let Some(s) = self.shard() {
            s.bytes_to_device.fetch_add(bytes as u64, Ordering::Relaxed);
        }
    }
    // Named after the direction the bytes moved, like `to_device`; not a conversion.
    #[allow(clippy::wrong_self_convention)]
    pub(crate) fn from_device(&self, bytes: usize) {
        if !crate::parts::STATS {
            return;
        }
        if let Some(s) = self.shard() {
            s.bytes_from_device.fetch_add(bytes as u64, Ordering::Relaxed);
        }
    }
    /// Keep what a pool counted ([`crate::pool::PoolTally`]) when the pool leaves the layer: its
    /// areas' counters go with it. Read-modify-writes, once per pool removed.
    pub(crate) fn absorb(&self, t: crate::pool::PoolTally) {
        if !crate::parts::STATS {
            return;
        }
        if let Some(s) = self.hot.first() {
            s.bounced_maps.fetch_add(t.maps, Ordering::Relaxed);
            s.unmaps.fetch_add(t.unmaps, Ordering::Relaxed);
            s.bytes_to_device.fetch_add(t.to_device, Ordering::Relaxed);
        }
    }
    pub(crate) fn quarantine(&self, pages: u64) {
        if !crate::parts::STATS {
            return;
        }
        self.quarantined_pages.fetch_add(pages, Ordering::Relaxed);
    }
    pub(crate) fn shared(&self, pages: u64) {
        if !crate::parts::STATS {
            return;
        }
        self.shared_pages.fetch_add(pages, Ordering::Relaxed);
    }
    pub(crate) fn unshared(&self, pages: u64) {
        if !crate::parts::STATS {
            return;
        }
        self.shared_pages.fetch_sub(pages, Ordering::Relaxed);
    }
    pub(crate) fn snapshot(&self) -> StatsSnapshot {
        let mut failures = [0; KINDS];
        for (o, f) in failures.iter_mut().zip(&self.failures) {
            *o = f.load(Ordering::Relaxed);
        }
        let sum = |f: fn(&Shard) -> &AtomicU64| self.hot.iter().map(|s| f(s).load(Ordering::Relaxed)).sum();
        StatsSnapshot {
            maps: sum(|s| &s.direct_maps) + sum(|s| &s.bounced_maps),
            unmaps: sum(|s| &s.unmaps),
            bounced_maps: sum(|s| &s.bounced_maps),
            bytes_to_device: sum(|s| &s.bytes_to_device),
            bytes_from_device: sum(|s| &s.bytes_from_device),
            quarantined_pages: self.quarantined_pages.load(Ordering::Relaxed),
            shared_pages: self.shared_pages.load(Ordering::Relaxed),
            slots_in_use: 0,
            slots_high_water: 0,
            failures,
        }
    }
}

/// Warn on the first failure and then at every power of two, so a storm of failures costs a few log
/// lines, not one per request.
pub(crate) fn should_warn(count: u64) -> bool {
    count.is_power_of_two()
}

/// A slot for a caller whose stack is at `a` (a stats shard, the start area of a map without a CPU
/// hint), before the modulo: the 16 KiB granule plus the 2 MiB one. A sum, not a XOR: the stack one
/// below differs by 1 to 3 (mod 4 and mod 8) whether stacks lie 16 or 32 KiB apart (kernel stacks)
/// or 2 MiB and a guard page apart (Rust threads), and by 4 to 6 (mod 8) 8 MiB and a guard page
/// apart (C threads), so neighbours never share a line; a XOR of the two lets a borrow in both
/// cancel out.
#[inline(always)]
pub(crate) fn stack_slot(a: usize) -> usize {
    (a >> 14).wrapping_add(a >> 21)
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;

    /// Neighbouring stacks never share a slot (of 8 stats shards; of 4 areas, the default, but for
    /// 8 MiB stacks), wherever the stacks lie and at whatever depth the caller is: 16 and 32 KiB
    /// kernel stacks, the 2 MiB of a Rust thread and the 8 MiB of a C thread (each with its 4 KiB
    /// guard page). Two threads sharing one pull one line back and forth on every map (issue 21;
    /// the XOR fold failed this for 16 KiB stacks, the multiplying hash of the no-hint start area
    /// put the threads bench's two threads in one area in one process of four).
    #[test]
    fn neighbouring_stacks_get_different_shards() {
        let spacings = [(16 << 10, 4), (32 << 10, 4), ((2 << 20) + 4096, 4), ((8 << 20) + 4096, 8)];
        // Plain arithmetic: Miri (slow at it) checks a few positions, the host thousands.
        let positions = if cfg!(miri) { 50 } else { 3_000 };
        for (d, slots) in spacings {
            for top in (0x7f00_0000_0000usize..).step_by(4096 * 7 + 8 * 37).take(positions) {
                for m in [slots, 8] {
                    let (a, b) = (stack_slot(top) % m, stack_slot(top - d) % m);
                    assert_ne!(a, b, "stacks {d:#x} apart at {top:#x} share slot {a} of {m}");
                }
            }
        }
    }

    /// Counts bumped from several threads (several stacks, so several shards) sum exactly.
    #[cfg(feature = "stats")]
    #[test]
    fn shards_sum_exactly() {
        let stats = Stats::<8>::default();
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..1000 {
                        stats.mapped(true);
                        stats.to_device(3);
                        stats.from_device(5);
                        stats.unmapped();
                    }
                });
            }
        });
        stats.mapped(false);
        let snap = stats.snapshot();
        assert_eq!((snap.maps, snap.bounced_maps, snap.unmaps), (4001, 4000, 4000));
        assert_eq!((snap.bytes_to_device, snap.bytes_from_device), (12000, 20000));
    }
}
