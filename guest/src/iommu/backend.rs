//! IOMMU policy apart from mechanism. The layer decides what goes where in a device's windows
//! ([`crate::path`], `iommu/setup.rs`, strict mappings, coherent buffers, scatter-gather lists); a
//! backend programs it. Two kinds of backend:
//!
//! - **PAPR TCE** (pseries, and `hv-model`): the platform implements the hypercall-level
//!   [`TceCalls`], and the layer's own entry writer (`tce.rs`: the shared list page, bounded busy
//!   retry, read-back) turns ranges into `H_PUT_TCE*` / `H_STUFF_TCE` calls.
//! - **Native** ([`IommuBackend`]): an IOMMU that maps whole ranges itself (virtio-iommu's MAP and
//!   UNMAP requests, a host IOMMU driver). The platform implements the range calls directly.
//!
//! [`crate::Platform::tce`] is asked first, then [`crate::Platform::iommu_backend`].
//!
//! A native backend in a few lines: an IOMMU whose page table is a map, under the strict policy (the
//! model stands in for memory and sharing):
//!
//! ```
//! use std::collections::BTreeMap;
//! use std::sync::Mutex;
//! use core::ptr::NonNull;
//! use ccdma::iommu::{BusRange, IommuBackend, IommuError, PutFailure, WindowGeometry, TCE_PCI_READ};
//! use ccdma::*;
//! # use ccdma_hv_model::{HvConfig, Hypervisor};
//!
//! /// Bus page -> entry (physical address | permission bits).
//! struct PageTable(Mutex<BTreeMap<u64, u64>>);
//!
//! impl IommuBackend for PageTable {
//!     fn default_window(&self, _device: u32) -> Option<WindowGeometry> {
//!         Some(WindowGeometry { liobn: 1, start: 0x8000_0000, size: 256 << 20, page_shift: 12 })
//!     }
//!     fn map(&self, win: &WindowGeometry, bus: u64, npages: u64, entry: &dyn Fn(u64) -> u64) -> Result<(), PutFailure> {
//!         let mut t = self.0.lock().unwrap();
//!         (0..npages).filter(|&i| entry(i) != 0).for_each(|i| { t.insert(bus + i * win.page_size(), entry(i)); });
//!         Ok(())
//!     }
//!     fn unmap(&self, win: &WindowGeometry, bus: u64, npages: u64) -> Result<(), IommuError> {
//!         let mut t = self.0.lock().unwrap();
//!         (0..npages).for_each(|i| { t.remove(&(bus + i * win.page_size())); });
//!         Ok(())
//!     }
//! }
//!
//! /// The model's memory and sharing, this IOMMU.
//! struct Guest { hv: Hypervisor, iommu: PageTable }
//! impl MemorySharing for Guest {
//!     fn share(&self, phys: PhysAddr, pages: u64) -> Result<(), PartialSharing> { self.hv.share(phys, pages) }
//!     fn unshare(&self, phys: PhysAddr, pages: u64) -> Result<(), PartialSharing> { self.hv.unshare(phys, pages) }
//! }
//! // SAFETY: forwards to the model, whose answers are truthful.
//! unsafe impl PhysMemory for Guest {
//!     fn cpu_ptr(&self, phys: PhysAddr, len: usize) -> Option<NonNull<u8>> { self.hv.cpu_ptr(phys, len) }
//!     fn virt_to_phys(&self, ptr: *const u8, len: usize) -> Option<PhysAddr> { self.hv.virt_to_phys(ptr, len) }
//!     fn ram_end(&self) -> PhysAddr { self.hv.ram_end() }
//! }
//! impl Platform for Guest {
//!     fn is_confidential(&self) -> bool { true }
//!     fn iommu_backend(&self) -> Option<&dyn IommuBackend> { Some(&self.iommu) }
//! }
//!
//! let guest = Guest { hv: Hypervisor::new(HvConfig::pseries(1 << 30)), iommu: PageTable(Mutex::new(BTreeMap::new())) };
//! let mut layer = DmaLayer::new(&guest);
//! // SAFETY: the model never hands this range out.
//! unsafe { layer.add_pool(PhysAddr(0x80_0000), 1 << 20, vec![SlotMeta::EMPTY; 512].leak(), PoolConfig::default())? };
//! let cfg = IommuConfig::strict().with_verify(VerifyPolicy::Off).with_ddw(false);
//! // SAFETY: no list page.
//! unsafe { layer.enable_iommu(cfg, vec![BusRange::EMPTY; 64].leak())? };
//! let nic = layer.attach(DeviceConfig::new(1, DmaMask::BITS_32))?;
//! let tx = layer.on(&nic).map_to_device(&[7u8; 100])?;
//! // One read-only entry, naming a page of the pool, at the bus address the device was given.
//! let entries: Vec<_> = guest.iommu.0.lock().unwrap().clone().into_iter().collect();
//! assert_eq!(entries.len(), 1);
//! let (bus, entry) = entries[0];
//! assert_eq!((bus, entry & 3), (tx.bus_addr().0 & !0xFFF, TCE_PCI_READ));
//! assert!((0x80_0000..0x90_0000).contains(&(entry & !0xFFF)));
//! tx.unmap()?;
//! assert!(guest.iommu.0.lock().unwrap().is_empty()); // cleared at unmap
//! # layer.detach(nic)?;
//! # Ok::<(), ccdma::DmaError>(())
//! ```

use super::calls::{DdwQuery, TceCalls};
use super::counters::IommuCounters;
use super::error::{IommuError, PutFailure};
use super::tce::TceWriter;
use super::window::WindowGeometry;

/// An IOMMU that maps and unmaps ranges itself: the mechanism under the layer's policy when the
/// platform is not PAPR. Windows are what the layer allocates bus addresses in; a backend without
/// dynamic windows keeps the defaults of the DDW calls (unsupported).
///
/// `device` is [`DeviceConfig::id`](crate::DeviceConfig::id).
pub trait IommuBackend: Sync {
    /// The device's window, or `None` when the device sits behind no IOMMU.
    fn default_window(&self, device: u32) -> Option<WindowGeometry>;
    /// The `index`-th bus range of the device's window that must never be handed out, as `(start,
    /// len)`; `None` past the last.
    fn reserved_range(&self, device: u32, index: usize) -> Option<(u64, u64)> {
        let _ = (device, index);
        None
    }
    /// Dynamic windows: none by default (the status is PAPR's "not supported").
    fn ddw_query(&self, device: u32) -> Result<DdwQuery, i64> {
        let _ = device;
        Err(super::calls::hcall::H_FUNCTION)
    }
    /// Create a dynamic window (not supported by default).
    fn ddw_create(&self, device: u32, page_shift: u32, window_shift: u32) -> Result<WindowGeometry, i64> {
        let _ = (device, page_shift, window_shift);
        Err(super::calls::hcall::H_FUNCTION)
    }
    /// Remove a dynamic window (nothing to do by default).
    fn ddw_remove(&self, device: u32, liobn: u32) -> i64 {
        let _ = (device, liobn);
        0
    }
    /// Map `npages` IOMMU pages of `win` from bus address `bus`: page `i` to the real address and
    /// permission bits of `entry(i)` (`TCE_PCI_READ` / `TCE_PCI_WRITE`; an entry of 0 is a hole that
    /// stays unmapped). All or nothing: on failure nothing of the range translates, or the failure
    /// says it may (`clean: false`).
    fn map(
        &self,
        win: &WindowGeometry,
        bus: u64,
        npages: u64,
        entry: &dyn Fn(u64) -> u64,
    ) -> Result<(), PutFailure>;
    /// Unmap `npages` pages from `bus`. On failure the range may still translate (the layer keeps
    /// its record and retries later).
    fn unmap(&self, win: &WindowGeometry, bus: u64, npages: u64) -> Result<(), IommuError>;
}

/// The backend of one operation: PAPR calls through the layer's entry writer, or a native backend.
pub(crate) enum Backend<'a> {
    /// PAPR TCE hypercalls.
    Tce(&'a dyn TceCalls, TceWriter<'a>),
    /// A range-mapping IOMMU.
    Native(&'a dyn IommuBackend, &'a IommuCounters),
}

/// What the entry writer's calls answer in a build without `papr-tce`, where `backend_of` never makes
/// a [`Backend::Tce`]: the constant test lets the optimiser drop the writer from such an image (it
/// cannot see that the variant is never made when a `Backend` reaches an out-of-line function).
const NO_PAPR: IommuError = IommuError::Hcall(super::calls::hcall::H_FUNCTION);

impl Backend<'_> {
    #[inline(never)]
    pub(crate) fn default_window(&self, device: u32) -> Option<WindowGeometry> {
        match self {
            Backend::Tce(t, _) => t.default_window(device),
            Backend::Native(b, _) => b.default_window(device),
        }
    }
    /// The device sits behind this IOMMU (a TCE device may have lost its default window).
    #[inline(never)]
    pub(crate) fn behind_iommu(&self, device: u32) -> bool {
        match self {
            Backend::Tce(t, _) => t.behind_iommu(device),
            Backend::Native(b, _) => b.default_window(device).is_some(),
        }
    }
    /// The key of the device's domain: its partitionable endpoint on PAPR; a native backend gives
    /// every device a domain of its own.
    #[inline(never)]
    pub(crate) fn endpoint(&self, device: u32) -> u64 {
        match self {
            Backend::Tce(t, _) => t.endpoint(device),
            Backend::Native(..) => 1 << 33 | u64::from(device),
        }
    }
    #[inline(never)]
    pub(crate) fn reserved_range(&self, device: u32, index: usize) -> Option<(u64, u64)> {
        match self {
            Backend::Tce(t, _) => t.reserved_range(device, index),
            Backend::Native(b, _) => b.reserved_range(device, index),
        }
    }
    #[inline(never)]
    pub(crate) fn ddw_query(&self, device: u32) -> Result<DdwQuery, i64> {
        match self {
            Backend::Tce(t, _) => t.ddw_query(device),
            Backend::Native(b, _) => b.ddw_query(device),
        }
    }
    #[inline(never)]
    pub(crate) fn ddw_create(
        &self,
        device: u32,
        page_shift: u32,
        window_shift: u32,
    ) -> Result<WindowGeometry, i64> {
        match self {
            Backend::Tce(t, _) => t.ddw_create(device, page_shift, window_shift),
            Backend::Native(b, _) => b.ddw_create(device, page_shift, window_shift),
        }
    }
    #[inline(never)]
    pub(crate) fn ddw_remove(&self, device: u32, liobn: u32) -> i64 {
        match self {
            Backend::Tce(t, _) => t.ddw_remove(device, liobn),
            Backend::Native(b, _) => b.ddw_remove(device, liobn),
        }
    }
    /// `ibm,reset-pe-dma-window`: a native backend has none (-3).
    #[inline(never)]
    pub(crate) fn ddw_reset(&self, device: u32) -> i64 {
        match self {
            Backend::Tce(t, _) => t.ddw_reset(device),
            Backend::Native(..) => -3,
        }
    }

    /// Enter `npages` pages from `bus` mapping `phys` onwards with permission bits `perm`.
    pub(crate) fn put(
        &self,
        win: &WindowGeometry,
        bus: u64,
        phys: u64,
        npages: u64,
        perm: u64,
    ) -> Result<(), PutFailure> {
        let entry = |i: u64| (phys + (i << win.page_shift)) | perm;
        self.put_entries(win, bus, npages, &entry)
    }

    /// [`Self::put`] for entries that name private memory (an accepted device's buffers): never through
    /// a list page, which the hypervisor reads, so a private page's address never enters shared memory
    /// (one `H_PUT_TCE` per entry; a native backend is asked as usual).
    pub(crate) fn put_private(
        &self,
        win: &WindowGeometry,
        bus: u64,
        phys: u64,
        npages: u64,
        perm: u64,
    ) -> Result<(), PutFailure> {
        match self {
            Backend::Tce(..) if !crate::parts::PAPR_TCE => Err(PutFailure { err: NO_PAPR, clean: true }),
            Backend::Tce(_, w) => {
                let per_entry = TceWriter { list: None, ..*w };
                per_entry.put_entries(win, bus, npages, &|i: u64| (phys + (i << win.page_shift)) | perm)
            }
            Backend::Native(..) => self.put(win, bus, phys, npages, perm),
        }
    }

    /// [`Self::put`] with entry `i` given by `entry(i)`.
    pub(crate) fn put_entries(
        &self,
        win: &WindowGeometry,
        bus: u64,
        npages: u64,
        entry: &dyn Fn(u64) -> u64,
    ) -> Result<(), PutFailure> {
        match self {
            Backend::Tce(..) if !crate::parts::PAPR_TCE => Err(PutFailure { err: NO_PAPR, clean: true }),
            Backend::Tce(_, w) => w.put_entries(win, bus, npages, entry),
            Backend::Native(b, c) => {
                c.count_native_map(npages);
                let r = b.map(win, bus, npages, entry);
                if r.is_ok() {
                    c.count_written(npages);
                }
                r
            }
        }
    }

    /// Clear `npages` pages from `bus`.
    pub(crate) fn clear(&self, win: &WindowGeometry, bus: u64, npages: u64) -> Result<(), IommuError> {
        match self {
            Backend::Tce(..) if !crate::parts::PAPR_TCE => Err(NO_PAPR),
            Backend::Tce(_, w) => w.clear(win, bus, npages),
            Backend::Native(b, c) => {
                c.count_native_unmap();
                b.unmap(win, bus, npages)?;
                c.count_cleared(npages);
                Ok(())
            }
        }
    }
}
