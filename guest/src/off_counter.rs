//! A counter of a part compiled out (a cargo feature off): no bytes, always zero. It has the
//! `AtomicU64` methods the counters are used with, so the code that bumps them compiles unchanged
//! and the bump folds away; a part's counter type is `AtomicU64` with the feature and this without.

use core::sync::atomic::Ordering;

/// Always zero; writes are dropped. Unused when every part that has one is compiled in.
#[cfg_attr(all(feature = "growth", any(feature = "papr-tce", feature = "native-iommu")), allow(dead_code))]
#[derive(Debug, Default)]
pub(crate) struct OffCounter;

// Which methods a build uses depends on which parts are out.
#[allow(dead_code)]
impl OffCounter {
    #[inline(always)]
    pub(crate) fn load(&self, _: Ordering) -> u64 {
        0
    }
    #[inline(always)]
    pub(crate) fn fetch_add(&self, _: u64, _: Ordering) -> u64 {
        0
    }
    #[inline(always)]
    pub(crate) fn fetch_sub(&self, _: u64, _: Ordering) -> u64 {
        0
    }
    #[inline(always)]
    pub(crate) fn fetch_max(&self, _: u64, _: Ordering) -> u64 {
        0
    }
}
