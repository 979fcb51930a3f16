//! Counters of the IOMMU path: hypercalls by kind, entries, windows, coherent buffers.

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Live counters of the IOMMU path (relaxed atomics, for reports and tests).
#[derive(Debug, Default)]
pub(crate) struct IommuCounters {
    pub put_tce: AtomicU64,
    pub get_tce: AtomicU64,
    pub put_indirect: AtomicU64,
    pub stuff_tce: AtomicU64,
    pub ddw_query: AtomicU64,
    pub ddw_create: AtomicU64,
    pub ddw_remove: AtomicU64,
    pub ddw_reset: AtomicU64,
    pub default_removed: AtomicU64,
    pub entries_written: AtomicU64,
    pub entries_cleared: AtomicU64,
    pub live_tces: AtomicU64,
    pub busy_retries: AtomicU64,
    pub verify_failures: AtomicU64,
    pub quarantined_ranges: AtomicU64,
    pub leaked_windows: AtomicU64,
    pub strict_maps: AtomicU64,
    pub coherent_buffers: AtomicU64,
    pub coherent_pages: AtomicU64,
    pub deferred_attaches: AtomicU64,
    pub native_maps: AtomicU64,
    pub native_unmaps: AtomicU64,
    pub list_page_busy: AtomicU64,
    pub list_page_fallbacks: AtomicU64,
    pub list_page_waits: AtomicU64,
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
            put_tce: l(&self.put_tce),
            get_tce: l(&self.get_tce),
            put_indirect: l(&self.put_indirect),
            stuff_tce: l(&self.stuff_tce),
            ddw_query: l(&self.ddw_query),
            ddw_create: l(&self.ddw_create),
            ddw_remove: l(&self.ddw_remove),
            ddw_reset: l(&self.ddw_reset),
            default_removed: l(&self.default_removed),
            entries_written: l(&self.entries_written),
            entries_cleared: l(&self.entries_cleared),
            live_tces: l(&self.live_tces),
            busy_retries: l(&self.busy_retries),
            verify_failures: l(&self.verify_failures),
            quarantined_ranges: l(&self.quarantined_ranges),
            leaked_windows: l(&self.leaked_windows),
            strict_maps: l(&self.strict_maps),
            coherent_buffers: l(&self.coherent_buffers),
            coherent_pages: l(&self.coherent_pages),
            deferred_attaches: l(&self.deferred_attaches),
            native_maps: l(&self.native_maps),
            native_unmaps: l(&self.native_unmaps),
            list_page_busy: l(&self.list_page_busy),
            list_page_fallbacks: l(&self.list_page_fallbacks),
            list_page_waits: l(&self.list_page_waits),
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
