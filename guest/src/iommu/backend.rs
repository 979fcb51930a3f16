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

impl Backend<'_> {
    pub(crate) fn default_window(&self, device: u32) -> Option<WindowGeometry> {
        match self {
            Backend::Tce(t, _) => t.default_window(device),
            Backend::Native(b, _) => b.default_window(device),
        }
    }
    pub(crate) fn reserved_range(&self, device: u32, index: usize) -> Option<(u64, u64)> {
        match self {
            Backend::Tce(t, _) => t.reserved_range(device, index),
            Backend::Native(b, _) => b.reserved_range(device, index),
        }
    }
    pub(crate) fn ddw_query(&self, device: u32) -> Result<DdwQuery, i64> {
        match self {
            Backend::Tce(t, _) => t.ddw_query(device),
            Backend::Native(b, _) => b.ddw_query(device),
        }
    }
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
    pub(crate) fn ddw_remove(&self, device: u32, liobn: u32) -> i64 {
        match self {
            Backend::Tce(t, _) => t.ddw_remove(device, liobn),
            Backend::Native(b, _) => b.ddw_remove(device, liobn),
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

    /// [`Self::put`] with entry `i` given by `entry(i)`.
    pub(crate) fn put_entries(
        &self,
        win: &WindowGeometry,
        bus: u64,
        npages: u64,
        entry: &dyn Fn(u64) -> u64,
    ) -> Result<(), PutFailure> {
        match self {
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
