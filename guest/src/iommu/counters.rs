//! Counters of the IOMMU path: hypercalls by kind, entries, windows, coherent buffers.

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// A counter of the IOMMU backends: no bytes when both (`papr-tce`, `native-iommu`) are compiled
/// out (no IOMMU path exists then).
#[cfg(any(feature = "papr-tce", feature = "native-iommu"))]
pub(crate) type IommuCounter = AtomicU64;
#[cfg(not(any(feature = "papr-tce", feature = "native-iommu")))]
pub(crate) type IommuCounter = crate::off_counter::OffCounter;

/// Live counters of the IOMMU path (relaxed atomics, for reports and tests). Those of coherent
/// buffers and quarantined ranges count without an IOMMU too.
#[derive(Debug, Default)]
pub(crate) struct IommuCounters {
    pub put_tce: IommuCounter,
    pub get_tce: IommuCounter,
    pub put_indirect: IommuCounter,
    pub stuff_tce: IommuCounter,
    pub ddw_query: IommuCounter,
    pub ddw_create: IommuCounter,
    pub ddw_remove: IommuCounter,
    pub ddw_reset: IommuCounter,
    pub default_removed: IommuCounter,
    pub entries_written: IommuCounter,
    pub entries_cleared: IommuCounter,
    pub live_tces: IommuCounter,
    pub busy_retries: IommuCounter,
    pub verify_failures: IommuCounter,
    pub quarantined_ranges: AtomicU64,
    pub leaked_windows: IommuCounter,
    pub strict_maps: IommuCounter,
    pub coherent_buffers: AtomicU64,
    pub coherent_pages: AtomicU64,
    pub deferred_attaches: IommuCounter,
    pub native_maps: IommuCounter,
    pub native_unmaps: IommuCounter,
    pub list_page_busy: IommuCounter,
    pub list_page_fallbacks: IommuCounter,
    pub list_page_waits: IommuCounter,
    /// Entries that could not be cleared may name pool pages: the pools must stay shared for good.
    pub pools_pinned: AtomicBool,
    /// Which pools (bit `i`: pool index `i`) entries that could not be cleared may name, when the
    /// layer knows (a failed set-up): such a grown pool is never unshared nor handed back.
    pub pinned_pools: AtomicU64,
}

impl IommuCounters {
    /// True when an entry that could not be cleared may name pool `i`.
    pub(crate) fn pool_pinned(&self, i: usize) -> bool {
        i < 64 && self.pinned_pools.load(Ordering::Acquire) & (1 << i) != 0
    }
}

/// A copy of the IOMMU counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IommuStatsSnapshot {
    /// `H_PUT_TCE` calls (busy retries included).
    pub put_tce: u64,
    /// `H_GET_TCE` calls (read-back).
    pub get_tce: u64,
    /// `H_PUT_TCE_INDIRECT` calls.
    pub put_indirect: u64,
    /// `H_STUFF_TCE` calls.
    pub stuff_tce: u64,
    /// DDW queries.
    pub ddw_query: u64,
    /// DDW creations.
    pub ddw_create: u64,
    /// DDW removals.
    pub ddw_remove: u64,
    /// `ibm,reset-pe-dma-window` calls: a window left over at attach (a kexec) removed, or a
    /// removed default window brought back at the last detach.
    pub ddw_reset: u64,
    /// Default windows removed so a 64-bit device's DDW could be created (no window was left).
    pub default_removed: u64,
    /// Entries written (successful writes only).
    pub entries_written: u64,
    /// Entries cleared.
    pub entries_cleared: u64,
    /// Entries the guest considers live now (counting quarantined ranges whose clearing failed).
    pub live_tces: u64,
    /// Busy answers retried.
    pub busy_retries: u64,
    /// Read-backs that found another entry than the one written.
    pub verify_failures: u64,
    /// Bus ranges (and their slots or pages) that could not be cleared and are never reused.
    pub quarantined_ranges: u64,
    /// Windows whose removal failed.
    pub leaked_windows: u64,
    /// Strict mappings made.
    pub strict_maps: u64,
    /// Coherent buffers live now.
    pub coherent_buffers: u64,
    /// Pages of live coherent buffers.
    pub coherent_pages: u64,
    /// Deferred devices attached at their first map or allocation.
    pub deferred_attaches: u64,
    /// Map requests to a native (range) backend.
    pub native_maps: u64,
    /// Unmap requests to a native (range) backend.
    pub native_unmaps: u64,
    /// Per-CPU list pages: batches whose own CPU's page was busy and that took another page.
    pub list_page_busy: u64,
    /// Per-CPU list pages: entries written with `H_PUT_TCE` because every list page was busy.
    pub list_page_fallbacks: u64,
    /// One shared list page: batches that found it held by another CPU and waited.
    pub list_page_waits: u64,
}

impl IommuStatsSnapshot {
    /// Every TCE hypercall (put, get, indirect, stuff).
    pub fn tce_hypercalls(&self) -> u64 {
        self.put_tce + self.get_tce + self.put_indirect + self.stuff_tce
    }
}

impl IommuCounters {
    pub(crate) fn snapshot(&self) -> IommuStatsSnapshot {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        IommuStatsSnapshot {
            put_tce: self.put_tce.load(Ordering::Relaxed),
            get_tce: self.get_tce.load(Ordering::Relaxed),
            put_indirect: self.put_indirect.load(Ordering::Relaxed),
            stuff_tce: self.stuff_tce.load(Ordering::Relaxed),
            ddw_query: self.ddw_query.load(Ordering::Relaxed),
            ddw_create: self.ddw_create.load(Ordering::Relaxed),
            ddw_remove: self.ddw_remove.load(Ordering::Relaxed),
            ddw_reset: self.ddw_reset.load(Ordering::Relaxed),
            default_removed: self.default_removed.load(Ordering::Relaxed),
            entries_written: self.entries_written.load(Ordering::Relaxed),
            entries_cleared: self.entries_cleared.load(Ordering::Relaxed),
            live_tces: self.live_tces.load(Ordering::Relaxed),
            busy_retries: self.busy_retries.load(Ordering::Relaxed),
            verify_failures: self.verify_failures.load(Ordering::Relaxed),
            quarantined_ranges: l(&self.quarantined_ranges),
            leaked_windows: self.leaked_windows.load(Ordering::Relaxed),
            strict_maps: self.strict_maps.load(Ordering::Relaxed),
            coherent_buffers: l(&self.coherent_buffers),
            coherent_pages: l(&self.coherent_pages),
            deferred_attaches: self.deferred_attaches.load(Ordering::Relaxed),
            native_maps: self.native_maps.load(Ordering::Relaxed),
            native_unmaps: self.native_unmaps.load(Ordering::Relaxed),
            list_page_busy: self.list_page_busy.load(Ordering::Relaxed),
            list_page_fallbacks: self.list_page_fallbacks.load(Ordering::Relaxed),
            list_page_waits: self.list_page_waits.load(Ordering::Relaxed),
        }
    }
}

impl IommuCounters {
    pub(crate) fn count_native_map(&self, _pages: u64) {
        self.native_maps.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn count_native_unmap(&self) {
        self.native_unmaps.fetch_add(1, Ordering::Relaxed);
    }
    /// Entries written by a backend (they are live until cleared).
    pub(crate) fn count_written(&self, pages: u64) {
        self.entries_written.fetch_add(pages, Ordering::Relaxed);
        self.live_tces.fetch_add(pages, Ordering::Relaxed);
    }
    /// Entries cleared by a backend.
    pub(crate) fn count_cleared(&self, pages: u64) {
        self.entries_cleared.fetch_add(pages, Ordering::Relaxed);
        self.live_tces.fetch_sub(pages, Ordering::Relaxed);
    }
}
