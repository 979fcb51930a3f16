//! Whether a window can serve the strict path at all: a strict mapping takes a run of whole IOMMU
//! pages, so a window whose pages are longer than the longest run of every pool (2 MiB pages, 256 KiB
//! runs) could never place one. Attach refuses such a path with the reason instead of promising it.

use super::window::WindowGeometry;
use crate::error::DmaError;
use crate::layer::Cold;

impl<'a, 'm, const POOLS: usize, const DOMAINS: usize, const AREAS: usize>
    Cold<'a, 'm, POOLS, DOMAINS, AREAS>
{
    /// `Ok` when some pool (or a pool growth may add) has runs of at least one IOMMU page of `win`.
    pub(crate) fn strict_window_serves(&self, win: &WindowGeometry) -> Result<(), DmaError> {
        let page = win.page_size();
        let grown = match self.growth.source {
            Some(_) => {
                let pool = self.growth.cfg.pool;
                pool.max_run_slots.saturating_mul(pool.slot_size) as u64
            }
            None => 0,
        };
        let max_run = self.pools().map(|p| p.max_mapping() as u64).fold(grown, u64::max);
        if page > max_run {
            log::warn!(
                "ccdma: strict IOMMU pages of {page:#x} bytes exceed every pool's longest run ({max_run:#x})"
            );
            return Err(DmaError::IommuPageTooLarge { page, max_run });
        }
        Ok(())
    }
}
