//! Cargo features that leave parts of the layer out of the image (see "Features" in the crate
//! docs). The default build has every part.
//!
//! A part that is left out keeps its API: the call returns [`DmaError::FeatureDisabled`] naming the
//! feature, and changes nothing. The code behind the call is not compiled out with `#[cfg]` but cut
//! by a constant test at the few places where the part is entered (these constants): the optimiser
//! removes everything only that branch reaches, so no image carries it, while the sources stay one
//! piece (no `#[cfg]` forest, every configuration type-checks the same code). The C library keeps
//! every export for the same reason: a call to a part left out answers `CCDMA_ERR_UNSUPPORTED`.
//!
//! Where the part's state could not exist without its entry call (a device is accepted only through
//! [`DmaLayer::accept`](crate::DmaLayer::accept), placed behind an IOMMU only by a backend the
//! build has, grows pools only after [`DmaLayer::enable_growth`](crate::DmaLayer::enable_growth)),
//! the tests of that state are constant too, so the map and unmap paths lose those branches.

use crate::error::DmaError;

/// Pool growth and shrinking (`growth`).
pub(crate) const GROWTH: bool = cfg!(feature = "growth");
/// Trusted devices: accept, revoke, private buffers mapped in place (`trusted-devices`).
pub(crate) const TRUSTED: bool = cfg!(feature = "trusted-devices");
/// Scatter-gather lists (`scatter-gather`).
pub(crate) const SG: bool = cfg!(feature = "scatter-gather");
/// The PAPR TCE entry writer (`papr-tce`): devices behind `Platform::tce`.
pub(crate) const PAPR_TCE: bool = cfg!(feature = "papr-tce");
/// The native IOMMU backend (`native-iommu`): devices behind `Platform::iommu_backend`.
pub(crate) const NATIVE_IOMMU: bool = cfg!(feature = "native-iommu");
/// Dynamic DMA windows (`ddw`): a DDW set-up when `IommuConfig::with_ddw` asks for one.
pub(crate) const DDW: bool = cfg!(feature = "ddw");
/// The last "pool full" record (`pool-full-report`): [`DmaLayer::last_pool_full`](crate::DmaLayer::last_pool_full).
pub(crate) const POOL_FULL_REPORT: bool = cfg!(feature = "pool-full-report");
/// The layer's counters (`stats`): [`DmaLayer::stats`](crate::DmaLayer::stats) beyond the pools' own.
pub(crate) const STATS: bool = cfg!(feature = "stats");
/// Any IOMMU path at all.
pub(crate) const IOMMU: bool = PAPR_TCE || NATIVE_IOMMU;

/// `Ok` when the part is in the build, else [`DmaError::FeatureDisabled`] naming `feature`.
#[inline(always)]
pub(crate) const fn require(on: bool, feature: &'static str) -> Result<(), DmaError> {
    if on {
        Ok(())
    } else {
        Err(DmaError::FeatureDisabled { feature })
    }
}
