//! Counters. All relaxed atomics: they are for reports and tests, never for decisions.

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

/// Live counters of a layer instance.
#[derive(Debug, Default)]
pub struct Stats {
    maps: AtomicU64,
    unmaps: AtomicU64,
    bounced_maps: AtomicU64,
    bytes_to_device: AtomicU64,
    bytes_from_device: AtomicU64,
    quarantined_pages: AtomicU64,
    shared_pages: AtomicU64,
    failures: [AtomicU64; KINDS],
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

impl Stats {
    pub(crate) fn fail(&self, kind: FailureKind) -> u64 {
        self.failures[kind as usize].fetch_add(1, Ordering::Relaxed) + 1
    }
    pub(crate) fn mapped(&self, bounced: bool) {
        self.maps.fetch_add(1, Ordering::Relaxed);
        if bounced {
            self.bounced_maps.fetch_add(1, Ordering::Relaxed);
        }
    }
    pub(crate) fn unmapped(&self) {
        self.unmaps.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn to_device(&self, bytes: usize) {
        self.bytes_to_device.fetch_add(bytes as u64, Ordering::Relaxed);
    }
    // Named after the direction the bytes moved, like `to_device`; not a conversion.
    #[allow(clippy::wrong_self_convention)]
    pub(crate) fn from_device(&self, bytes: usize) {
        self.bytes_from_device.fetch_add(bytes as u64, Ordering::Relaxed);
    }
    pub(crate) fn quarantine(&self, pages: u64) {
        self.quarantined_pages.fetch_add(pages, Ordering::Relaxed);
    }
    pub(crate) fn shared(&self, pages: u64) {
        self.shared_pages.fetch_add(pages, Ordering::Relaxed);
    }
    pub(crate) fn unshared(&self, pages: u64) {
        self.shared_pages.fetch_sub(pages, Ordering::Relaxed);
    }
    pub(crate) fn snapshot(&self) -> StatsSnapshot {
        let mut failures = [0; KINDS];
        for (o, f) in failures.iter_mut().zip(&self.failures) {
            *o = f.load(Ordering::Relaxed);
        }
        StatsSnapshot {
            maps: self.maps.load(Ordering::Relaxed),
            unmaps: self.unmaps.load(Ordering::Relaxed),
            bounced_maps: self.bounced_maps.load(Ordering::Relaxed),
            bytes_to_device: self.bytes_to_device.load(Ordering::Relaxed),
            bytes_from_device: self.bytes_from_device.load(Ordering::Relaxed),
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
