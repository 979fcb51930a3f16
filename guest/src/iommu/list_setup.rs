//! Setting up and releasing a layer's list pages ([`super::list_pages`]): checked, zeroed and shared
//! at `enable_iommu`, made private again at `disable_iommu`. Kept apart from the pages' own logic so
//! that the domain (which holds the pages) does not depend on the layer.

use super::config::{TceBatching, MAX_LIST_PAGES};
use super::list_pages::{ListMode, ListPages, ListRange, PoolRun};
use crate::addr::{PhysAddr, PAGE_SIZE};
use crate::direction::{DmaAttrs, DmaDirection};
use crate::error::DmaError;
use crate::layer::{Cold, DmaLayer};
use crate::platform::Platform;
use crate::pool::{NewHead, Owner, RunRequest};

impl<'a, 'm, const POOLS: usize, const DOMAINS: usize, const AREAS: usize>
    Cold<'a, 'm, POOLS, DOMAINS, AREAS>
{
    /// The list pages `batching` names, checked, zeroed and (in a confidential guest) shared; `None`
    /// for [`TceBatching::PerEntry`]. A failed share rolls back (quarantining what it cannot) and
    /// leaves nothing shared. Without `papr-tce` nothing writes TCE lists (a native backend maps
    /// ranges itself): `None`, whatever `batching` says, and no page is taken or shared.
    pub(crate) fn enable_list_pages(&self, batching: TceBatching) -> Result<Option<ListPages>, DmaError> {
        if !crate::parts::PAPR_TCE {
            return Ok(None);
        }
        let (first, count, mode) = match batching {
            TceBatching::PerEntry => return Ok(None),
            TceBatching::PoolPages { count } => return self.pool_list_pages(count),
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

    /// [`TceBatching::PoolPages`]: `count` pages as one page-aligned slot run of the first fixed pool
    /// that has one (shared already: nothing is shared here), recorded for no device (serial 0,
    /// which no device has, so no unmap can claim it). `Ok(None)` (entries go one by one) when the
    /// platform has no `H_PUT_TCE_INDIRECT` or no pool has the run.
    fn pool_list_pages(&self, count: usize) -> Result<Option<ListPages>, DmaError> {
        if count == 0 || count > MAX_LIST_PAGES {
            return Err(DmaError::InvalidListPages(count));
        }
        if !crate::parts::PAPR_TCE || !self.platform.tce().is_some_and(|c| c.indirect_available()) {
            return Ok(None);
        }
        let len = count * PAGE_SIZE as usize;
        for i in 0..POOLS {
            let Some(pool) = self.pools.fixed(i) else { continue };
            let slot = pool.slot_size();
            if len > pool.max_mapping() || !pool.phys().is_page_aligned() {
                continue;
            }
            let nslots = len.div_ceil(slot);
            // Both fit (`count` <= MAX_LIST_PAGES, and a layer has far fewer than 256 pools); a
            // layer whose do not gets no list pages from this pool.
            let (Ok(pool_u8), Ok(nslots_u32)) = (u8::try_from(i), u32::try_from(nslots)) else { continue };
            let align_mask = (PAGE_SIZE - 1) & !(slot as u64 - 1);
            let req = RunRequest { nslots, align_mask, align_bits: 0 };
            let head = NewHead {
                offset: 0,
                len,
                dir: DmaDirection::ToDevice,
                attrs: DmaAttrs::NONE,
                orig: core::ptr::null_mut(),
                owner: Owner { device: 0, safe: false },
            };
            let Some(index) = pool.alloc(req, head) else { continue };
            let off = index * slot;
            let first = PhysAddr(pool.phys().0 + off as u64);
            let cpu = pool.cpu_at(off);
            let run = PoolRun { index, nslots: nslots_u32, pool: pool_u8 };
            let Some(cpu) = core::ptr::NonNull::new(cpu)
                .filter(|c| first.is_page_aligned() && c.as_ptr().align_offset(8) == 0)
            else {
                pool.free(index, nslots);
                continue;
            };
            // SAFETY: the run was just allocated, ours alone, `len` bytes from `cpu`.
            unsafe { core::ptr::write_bytes(cpu.as_ptr(), 0, len) };
            // SAFETY: the run is the layer's until `release_list_pages` frees it (`disable_iommu`, or
            // `release_pools`, which drops the pages first); its CPU mapping is u64-aligned (checked);
            // `count` was checked.
            let pages = unsafe { ListPages::new(first, cpu, count, ListMode::PerCpu) };
            log::debug!("ccdma: {count} TCE list page(s) at {first} in pool {i}");
            return Ok(Some(pages.in_pool(run)));
        }
        log::info!("ccdma: no pool has {count} page-aligned list page(s): TCEs written one by one");
        Ok(None)
    }

    /// Give the list pages back (`disable_iommu`): a pool's run to its pool; the caller's pages made
    /// private again, what cannot be quarantined.
    pub(crate) fn release_list_pages(&self, range: Option<ListRange>) -> Result<(), DmaError> {
        match range {
            Some(ListRange { pooled: Some(run), .. }) => {
                if let Some(pool) = self.pools.fixed(run.pool.into()) {
                    pool.free(run.index, run.nslots as usize);
                }
                Ok(())
            }
            Some(ListRange { first, count, pooled: None }) if self.platform.is_confidential() => {
                self.unshare_pages(first, count as u64)
            }
            _ => Ok(()),
        }
    }
}

impl<P: Platform + ?Sized, const POOLS: usize, const DOMAINS: usize, const AREAS: usize>
    DmaLayer<'_, P, POOLS, DOMAINS, AREAS>
{
    /// Pool slots the list pages hold ([`TceBatching::PoolPages`]): not mappings, so not in
    /// `slots_in_use`.
    pub(crate) fn list_pool_slots(&self) -> usize {
        self.iommu.as_ref().and_then(|i| i.list.as_ref()).map_or(0, |l| l.pool_slots())
    }
}

impl<const POOLS: usize, const DOMAINS: usize, const AREAS: usize> Cold<'_, '_, POOLS, DOMAINS, AREAS> {
    /// `release_pools`: give list pages taken from a pool back first (entries then go one by one).
    pub(crate) fn drop_pool_list_pages(&mut self) {
        let Some(iommu) = self.iommu.as_mut() else { return };
        if iommu.list.as_ref().is_some_and(|l| l.pool_slots() != 0) {
            let range = iommu.list.take().map(|l| l.range());
            let _ = self.release_list_pages(range);
        }
    }
}
