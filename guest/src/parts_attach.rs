//! Attach's check for an IOMMU backend this build left out (see [`crate::parts`]; apart from the
//! constants so that they stay a leaf of the import graph).

use crate::error::DmaError;
use crate::layer::Cold;
use crate::parts::{require, NATIVE_IOMMU, PAPR_TCE};

impl<'a, 'm, const POOLS: usize, const DOMAINS: usize, const AREAS: usize>
    Cold<'a, 'm, POOLS, DOMAINS, AREAS>
{
    /// Refuse (at attach) a device the platform puts behind an IOMMU whose backend this build left
    /// out: bounced through shared bus addresses it would fault, so it gets no path at all.
    pub(crate) fn require_iommu_backend(&self, device: u32) -> Result<(), DmaError> {
        let tce = self.platform.tce();
        if !PAPR_TCE && tce.is_some_and(|t| t.behind_iommu(device)) {
            return require(false, "papr-tce");
        }
        let tce_serves = PAPR_TCE && tce.is_some();
        if !NATIVE_IOMMU
            && !tce_serves
            && self.platform.iommu_backend().is_some_and(|b| b.default_window(device).is_some())
        {
            return require(false, "native-iommu");
        }
        Ok(())
    }
}
