//! Setting up and releasing a layer's list pages ([`super::list_pages`]): checked, zeroed and shared
//! at `enable_iommu`, made private again at `disable_iommu`. Kept apart from the pages' own logic so
//! that the domain (which holds the pages) does not depend on the layer.

use super::config::{TceBatching, MAX_LIST_PAGES};
use super::list_pages::{ListMode, ListPages};
use crate::addr::{PhysAddr, PAGE_SIZE};
use crate::error::DmaError;
use crate::layer::DmaLayer;
use crate::platform::Platform;

impl<P: Platform, const POOLS: usize, const DOMAINS: usize> DmaLayer<'_, P, POOLS, DOMAINS> {
    /// The list pages `batching` names, checked, zeroed and (in a confidential guest) shared; `None`
    /// for [`TceBatching::PerEntry`]. A failed share rolls back (quarantining what it cannot) and
    /// leaves nothing shared.
    pub(crate) fn enable_list_pages(&self, batching: TceBatching) -> Result<Option<ListPages>, DmaError> {
        let (first, count, mode) = match batching {
            TceBatching::PerEntry => return Ok(None),
            TceBatching::SharedPage(p) => (p, 1, ListMode::Shared),
            TceBatching::PerCpuPages { first, count } => (first, count, ListMode::PerCpu),
        };
        if count == 0 || count > MAX_LIST_PAGES {
            return Err(DmaError::InvalidListPages(count));
        }
        if !first.is_page_aligned() {
            return Err(DmaError::Unaligned { addr: first.0, align: PAGE_SIZE });
        }
        let len = count as u64 * PAGE_SIZE;
        first.0.checked_add(len).ok_or(DmaError::Overflow)?;
        let cpu = self.platform.cpu_ptr(first, len as usize).ok_or(DmaError::NoCpuMapping(first))?;
        // Entries are written as u64: the CPU mapping must be aligned for them too.
        if cpu.as_ptr().align_offset(core::mem::align_of::<u64>()) != 0 {
            return Err(DmaError::Unaligned { addr: cpu.as_ptr() as u64, align: 8 });
        }
        // SAFETY: the caller gives us the pages for the layer's life (`enable_iommu` contract);
        // zeroing them before sharing keeps whatever private data they held from the hypervisor.
        unsafe { core::ptr::write_bytes(cpu.as_ptr(), 0, len as usize) };
        if self.platform.is_confidential() {
            self.share_pages(first, count as u64)?;
        }
        // SAFETY: as above: the pages are the layer's alone from now on; `count` was checked.
        Ok(Some(unsafe { ListPages::new(first, cpu, count, mode) }))
    }

    /// Make the list pages private again (`disable_iommu`); what cannot be is quarantined.
    pub(crate) fn release_list_pages(&self, range: Option<(PhysAddr, usize)>) -> Result<(), DmaError> {
        match range {
            Some((first, count)) if self.platform.is_confidential() => {
                self.unshare_pages(first, count as u64)
            }
            _ => Ok(()),
        }
    }
}
