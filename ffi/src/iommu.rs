//! An IOMMU written in C: [`ccdma_iommu`], a native range-mapping backend (ccdma's `IommuBackend`)
//! the platform table names, and [`ccdma_enable_iommu`] / [`ccdma_disable_iommu`].

use core::ffi::{c_int, c_void};
use core::mem::{align_of, size_of};

use ccdma::iommu::{BusRange, IommuBackend, IommuError, PutFailure, WindowGeometry};
use ccdma::{IommuConfig, VerifyPolicy};

use crate::{ccdma_layer, check_mem, code, result, CCDMA_ERR_INVALID, CCDMA_OK};

/// An IOMMU entry lets the device read the page.
pub const CCDMA_IOMMU_READ: u64 = 1;
/// An IOMMU entry lets the device write the page.
pub const CCDMA_IOMMU_WRITE: u64 = 2;

/// Windows hold the pools once; a map costs no IOMMU call (`ccdma_enable_iommu`'s `policy`).
pub const CCDMA_IOMMU_PREMAPPED: c_int = 0;
/// Each mapping gets its own entries with its direction's permission, removed at unmap.
pub const CCDMA_IOMMU_STRICT: c_int = 1;

/// Bytes of bus-range storage per entry (`ccdma_enable_iommu`).
pub const CCDMA_BUS_RANGE_SIZE: usize = 32;
/// Alignment of bus-range storage.
pub const CCDMA_BUS_RANGE_ALIGN: usize = 8;

/// Entries handed to `map` per call (a batch on the stack).
const MAP_BATCH: usize = 64;

const _: () = {
    assert!(size_of::<BusRange>() == CCDMA_BUS_RANGE_SIZE && align_of::<BusRange>() <= CCDMA_BUS_RANGE_ALIGN);
    assert!(
        CCDMA_IOMMU_READ == ccdma::iommu::TCE_PCI_READ && CCDMA_IOMMU_WRITE == ccdma::iommu::TCE_PCI_WRITE
    );
};

/// An IOMMU that maps ranges itself (virtio-iommu, a host IOMMU driver), written in C and named by
/// `ccdma_platform.iommu`. Every function gets `ctx` back first; `device` is the `id` given to
/// `ccdma_attach`. ccdma decides what goes where; these functions only program it.
///
/// Contract: the functions answer truthfully and may be called from any CPU, also concurrently.
/// - `window` describes the device's window: returns 0 with `*start`, `*size` (bytes) and
///   `*page_shift` (log2 of the IOMMU page, 12..=40) set, or non-zero when the device sits behind no
///   IOMMU.
/// - `map` maps `npages` IOMMU pages from bus address `bus`: page `i` to `entries[i]`, a physical
///   address with `CCDMA_IOMMU_READ` / `CCDMA_IOMMU_WRITE` in its low bits (0: leave the page
///   unmapped). Returns 0, or non-zero when nothing of the range translates.
/// - `unmap` removes `npages` pages from `bus`; 0 on success, non-zero when some may still translate.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ccdma_iommu {
    /// Passed back to every function.
    pub ctx: *mut c_void,
    /// The device's window; 0 on success.
    pub window: Option<
        unsafe extern "C" fn(
            ctx: *mut c_void,
            device: u32,
            start: *mut u64,
            size: *mut u64,
            page_shift: *mut u32,
        ) -> c_int,
    >,
    /// Map pages; 0 on success.
    pub map: Option<
        unsafe extern "C" fn(
            ctx: *mut c_void,
            device: u32,
            bus: u64,
            npages: u64,
            entries: *const u64,
        ) -> c_int,
    >,
    /// Unmap pages; 0 on success.
    pub unmap: Option<unsafe extern "C" fn(ctx: *mut c_void, device: u32, bus: u64, npages: u64) -> c_int>,
}

/// The C table, checked (no null function) and copied into the layer's platform.
pub(crate) struct CIommu {
    ctx: *mut c_void,
    window: unsafe extern "C" fn(*mut c_void, u32, *mut u64, *mut u64, *mut u32) -> c_int,
    map: unsafe extern "C" fn(*mut c_void, u32, u64, u64, *const u64) -> c_int,
    unmap: unsafe extern "C" fn(*mut c_void, u32, u64, u64) -> c_int,
}

// SAFETY: the header's contract for `ccdma_iommu` requires its functions (and so `ctx`) to be usable
// from any CPU, concurrently; the struct holds nothing else.
unsafe impl Sync for CIommu {}
// SAFETY: as above.
unsafe impl Send for CIommu {}

impl CIommu {
    /// `Ok(None)` for a null table, `Err(())` for a table with a null function.
    pub(crate) fn from_table(t: *const ccdma_iommu) -> Result<Option<CIommu>, ()> {
        // SAFETY: null or a valid table (the contract of `ccdma_layer_init`).
        let Some(t) = (unsafe { t.as_ref() }) else { return Ok(None) };
        Ok(Some(CIommu {
            ctx: t.ctx,
            window: t.window.ok_or(())?,
            map: t.map.ok_or(())?,
            unmap: t.unmap.ok_or(())?,
        }))
    }

    /// Unmap what a failed `map` had mapped before the failing batch; whether that worked.
    fn roll_back(&self, device: u32, bus: u64, npages: u64) -> bool {
        // SAFETY: a function of the C table with its own context.
        npages == 0 || unsafe { (self.unmap)(self.ctx, device, bus, npages) } == 0
    }
}

impl IommuBackend for CIommu {
    fn default_window(&self, device: u32) -> Option<WindowGeometry> {
        let (mut start, mut size, mut page_shift) = (0u64, 0u64, 0u32);
        // SAFETY: a function of the C table with its own context; the out pointers are valid.
        let rc = unsafe { (self.window)(self.ctx, device, &mut start, &mut size, &mut page_shift) };
        // The layer checks the geometry (`is_usable`) before using it.
        (rc == 0).then_some(WindowGeometry { liobn: device, start, size, page_shift })
    }

    fn map(
        &self,
        win: &WindowGeometry,
        bus: u64,
        npages: u64,
        entry: &dyn Fn(u64) -> u64,
    ) -> Result<(), PutFailure> {
        let device = win.liobn;
        let page = win.page_size();
        let mut batch = [0u64; MAP_BATCH];
        let mut done = 0u64;
        while done < npages {
            let n = (npages - done).min(MAP_BATCH as u64);
            for (i, e) in batch.iter_mut().take(n as usize).enumerate() {
                *e = entry(done + i as u64);
            }
            let at = bus + done * page;
            // SAFETY: a function of the C table with its own context; `batch` holds `n` entries.
            let rc = unsafe { (self.map)(self.ctx, device, at, n, batch.as_ptr()) };
            if rc != 0 {
                let clean = self.roll_back(device, bus, done);
                return Err(PutFailure { err: IommuError::Hcall(rc.into()), clean });
            }
            done += n;
        }
        Ok(())
    }

    fn unmap(&self, win: &WindowGeometry, bus: u64, npages: u64) -> Result<(), IommuError> {
        // SAFETY: a function of the C table with its own context.
        match unsafe { (self.unmap)(self.ctx, win.liobn, bus, npages) } {
            0 => Ok(()),
            rc => Err(IommuError::Hcall(rc.into())),
        }
    }
}

/// Put the devices the platform's `iommu` table places behind an IOMMU on the IOMMU path:
/// `policy` is `CCDMA_IOMMU_PREMAPPED` or `CCDMA_IOMMU_STRICT`; `max_domains` (1..=16) devices
/// behind it at once; `ranges` (`ranges_size` bytes, aligned to `CCDMA_BUS_RANGE_ALIGN`) is the
/// bus-range storage, split evenly between the domains (each needs at least 4 entries of
/// `CCDMA_BUS_RANGE_SIZE` bytes; each live strict mapping, coherent buffer or list takes one). Before
/// any `ccdma_attach`. Fails with `CCDMA_ERR_IOMMU` if already enabled.
///
/// # Safety
/// `layer` is null or layer memory (the handle rules of `ccdma_layer`) and no other call uses it
/// during this one; `ranges` is valid for
/// writes of `ranges_size` bytes and used for nothing else while the layer lives.
#[no_mangle]
pub unsafe extern "C" fn ccdma_enable_iommu(
    layer: *mut ccdma_layer,
    policy: c_int,
    max_domains: usize,
    ranges: *mut c_void,
    ranges_size: usize,
) -> c_int {
    // SAFETY: null or the caller's layer memory with no other user now (contract).
    let layer = match unsafe { crate::handle::live_mut(layer, None) } {
        Ok(layer) => layer,
        Err(e) => return e,
    };
    let cfg = match policy {
        CCDMA_IOMMU_PREMAPPED => IommuConfig::premapped(),
        CCDMA_IOMMU_STRICT => IommuConfig::strict(),
        _ => return CCDMA_ERR_INVALID,
    };
    // A native backend has no read-back and no dynamic windows.
    let cfg = cfg.with_verify(VerifyPolicy::Off).with_ddw(false).with_max_domains(max_domains);
    let n = ranges_size / size_of::<BusRange>();
    if let Err(e) = check_mem(ranges, ranges_size, size_of::<BusRange>(), align_of::<BusRange>()) {
        return e;
    }
    let ranges = ranges.cast::<BusRange>();
    for i in 0..n {
        // SAFETY: within the `ranges_size` bytes the caller lent, aligned (checked).
        unsafe { ranges.add(i).write(BusRange::EMPTY) };
    }
    // SAFETY: `n` initialised entries in memory the caller lends for the layer's life.
    let ranges: &'static mut [BusRange] = unsafe { core::slice::from_raw_parts_mut(ranges, n) };
    // SAFETY: no list page is named (a native backend needs none).
    result(unsafe { layer.inner.enable_iommu(cfg, ranges) })
}

/// Turn the IOMMU path off again. Refused (`CCDMA_ERR_BUSY`) while any device is attached behind it.
/// `CCDMA_OK` when it was not enabled.
///
/// # Safety
/// `layer` is null or layer memory (the handle rules of `ccdma_layer`) and no other call uses it
/// during this one.
#[no_mangle]
pub unsafe extern "C" fn ccdma_disable_iommu(layer: *mut ccdma_layer) -> c_int {
    // SAFETY: null or the caller's layer memory with no other user now (contract).
    match unsafe { crate::handle::live_mut(layer, None) } {
        Ok(layer) => match layer.inner.disable_iommu() {
            Ok(()) => CCDMA_OK,
            Err(e) => code(&e),
        },
        Err(e) => e,
    }
}
