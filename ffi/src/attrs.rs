//! Mapping attributes (`ccdma_map_attrs`, ...), as Linux's `*_attrs` calls take them, and the syncs
//! of a live mapping or list (`ccdma_sync_for_cpu`, ...). The calls without `_attrs` pass none.

use core::ffi::{c_int, c_void};
use core::mem::{align_of, size_of};

use ccdma::{BusAddr, DmaAttrs, PhysAddr};

use crate::handle::{self, Kind, Tag};
use crate::{
    ccdma_coherent, ccdma_device, ccdma_layer, check_mem, code, direction, result, CCDMA_ERR_INVALID,
    CCDMA_ERR_NULL, CCDMA_OK,
};

/// Skip the CPU copies at map and unmap (`DMA_ATTR_SKIP_CPU_SYNC`): the caller syncs explicitly.
pub const CCDMA_ATTR_SKIP_CPU_SYNC: c_int = 1;
/// From-device mappings start with the buffer's bytes instead of zeroes, so bytes the device does not
/// write come back unchanged. The buffer's bytes become visible to the host: not for secrets.
pub const CCDMA_ATTR_PRESERVE_UNWRITTEN: c_int = 2;
/// Do not log a failure of this mapping (the caller handles it).
pub const CCDMA_ATTR_NO_WARN: c_int = 4;
/// For a device accepted by the platform (`ccdma_accept`): bounce this mapping through a shared pool
/// as for an untrusted device (a ring the host reads too), instead of mapping the private buffer in
/// place (Linux's `DMA_ATTR_CC_SHARED`). No effect for other devices.
pub const CCDMA_ATTR_CC_SHARED: c_int = 8;

/// The attributes of `bits`, or `None` when a bit is unknown.
pub(crate) fn attrs(bits: c_int) -> Option<DmaAttrs> {
    let known = [
        (CCDMA_ATTR_SKIP_CPU_SYNC, DmaAttrs::SKIP_CPU_SYNC),
        (CCDMA_ATTR_PRESERVE_UNWRITTEN, DmaAttrs::PRESERVE_UNWRITTEN),
        (CCDMA_ATTR_NO_WARN, DmaAttrs::NO_WARN),
        (CCDMA_ATTR_CC_SHARED, DmaAttrs::CC_SHARED),
    ];
    let all = known.iter().fold(0, |acc, (bit, _)| acc | bit);
    if bits & !all != 0 {
        return None;
    }
    Some(known.iter().filter(|(bit, _)| bits & bit != 0).fold(DmaAttrs::NONE, |acc, (_, a)| acc | *a))
}

/// `ccdma_map` with attributes (`CCDMA_ATTR_*`, or-ed; unknown bits are `CCDMA_ERR_INVALID`).
///
/// # Safety
/// As for `ccdma_map`.
#[no_mangle]
pub unsafe extern "C" fn ccdma_map_attrs(
    layer: *const ccdma_layer,
    dev: *const ccdma_device,
    ptr: *mut c_void,
    len: usize,
    dir: c_int,
    attrs_bits: c_int,
    bus: *mut u64,
) -> c_int {
    // SAFETY: null or the caller's handles (contract).
    let (layer, dev) = match unsafe { handle::layer_dev(layer, dev) } {
        Ok(both) => both,
        Err(e) => return e,
    };
    if ptr.is_null() || bus.is_null() {
        return CCDMA_ERR_NULL;
    }
    let (Some(dir), Some(attrs)) = (direction(dir), attrs(attrs_bits)) else {
        return CCDMA_ERR_INVALID;
    };
    // SAFETY: the buffer is lent until unmap (contract).
    match unsafe { layer.inner.map_ptr(&dev.inner, ptr.cast(), len, dir, attrs) } {
        Ok(b) => {
            // SAFETY: valid for a write (contract).
            unsafe { bus.write(b.0) };
            CCDMA_OK
        }
        Err(e) => code(&e),
    }
}

/// `ccdma_unmap` with attributes (with `CCDMA_ATTR_SKIP_CPU_SYNC` nothing is copied back).
///
/// # Safety
/// As for `ccdma_unmap`.
#[no_mangle]
pub unsafe extern "C" fn ccdma_unmap_attrs(
    layer: *const ccdma_layer,
    dev: *const ccdma_device,
    bus: u64,
    len: usize,
    dir: c_int,
    attrs_bits: c_int,
) -> c_int {
    // SAFETY: null or the caller's handles (contract).
    let (layer, dev) = match unsafe { handle::layer_dev(layer, dev) } {
        Ok(both) => both,
        Err(e) => return e,
    };
    let (Some(dir), Some(attrs)) = (direction(dir), attrs(attrs_bits)) else {
        return CCDMA_ERR_INVALID;
    };
    // SAFETY: our own mapping (contract).
    result(unsafe { layer.inner.unmap(&dev.inner, BusAddr(bus), len, dir, attrs) })
}

/// `ccdma_alloc_coherent` with attributes. For a device the platform has accepted (`ccdma_accept`) the
/// buffer stays private (no share call; its bus address is the private one) unless `attrs_bits` holds
/// `CCDMA_ATTR_CC_SHARED`; for every other device the attributes change nothing.
///
/// # Safety
/// As for `ccdma_alloc_coherent`.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn ccdma_alloc_coherent_attrs(
    layer: *const ccdma_layer,
    dev: *const ccdma_device,
    phys: u64,
    pages: u64,
    attrs_bits: c_int,
    buf_mem: *mut c_void,
    buf_size: usize,
    cpu: *mut *mut c_void,
    bus: *mut u64,
) -> c_int {
    // SAFETY: null or the caller's handles (contract).
    let (layer, dev) = match unsafe { handle::layer_dev(layer, dev) } {
        Ok(both) => both,
        Err(e) => return e,
    };
    if cpu.is_null() || bus.is_null() {
        return CCDMA_ERR_NULL;
    }
    let Some(attrs) = attrs(attrs_bits) else {
        return CCDMA_ERR_INVALID;
    };
    if let Err(e) = check_mem(buf_mem, buf_size, size_of::<ccdma_coherent>(), align_of::<ccdma_coherent>()) {
        return e;
    }
    let buf = buf_mem.cast::<ccdma_coherent>();
    // SAFETY: large and aligned enough (checked), the caller's memory; a tag is read raw.
    let tag = unsafe { core::ptr::addr_of_mut!((*buf).tag) };
    // SAFETY: as above.
    if let Err(e) = unsafe { handle::check_free(tag, Kind::Coherent) } {
        return e;
    }
    // SAFETY: the pages are the caller's to give (contract).
    match unsafe { layer.inner.alloc_coherent_attrs(&dev.inner, PhysAddr(phys), pages, attrs) } {
        Ok(b) => {
            let tag = Tag::live(Kind::Coherent, tag as usize, dev.tag.gen);
            // SAFETY: valid for writes (contract; `buf_mem` checked above).
            unsafe {
                cpu.write(b.cpu_ptr().as_ptr().cast());
                bus.write(b.bus_addr().0);
                buf.write(ccdma_coherent { tag, inner: b });
            }
            CCDMA_OK
        }
        Err(e) => code(&e),
    }
}

/// Make the device's writes to `[offset, offset + len)` of the mapping at `bus` visible in the
/// buffer (copied from the bounce slot). `dir` as given to the map.
///
/// # Safety
/// As for `ccdma_unmap`; nothing reads or writes that part of the buffer during the call.
#[no_mangle]
pub unsafe extern "C" fn ccdma_sync_for_cpu(
    layer: *const ccdma_layer,
    dev: *const ccdma_device,
    bus: u64,
    offset: usize,
    len: usize,
    dir: c_int,
) -> c_int {
    // SAFETY: null or the caller's handles (contract).
    let (layer, dev) = match unsafe { handle::layer_dev(layer, dev) } {
        Ok(both) => both,
        Err(e) => return e,
    };
    let Some(dir) = direction(dir) else {
        return CCDMA_ERR_INVALID;
    };
    // SAFETY: our own mapping, its buffer untouched meanwhile (contract).
    result(unsafe { layer.inner.sync_for_cpu(&dev.inner, BusAddr(bus), offset, len, dir) })
}

/// Make the CPU's writes to `[offset, offset + len)` of the buffer visible to the device (copied to
/// the bounce slot) before handing the mapping back to it.
///
/// # Safety
/// As for `ccdma_sync_for_cpu`.
#[no_mangle]
pub unsafe extern "C" fn ccdma_sync_for_device(
    layer: *const ccdma_layer,
    dev: *const ccdma_device,
    bus: u64,
    offset: usize,
    len: usize,
    dir: c_int,
) -> c_int {
    // SAFETY: null or the caller's handles (contract).
    let (layer, dev) = match unsafe { handle::layer_dev(layer, dev) } {
        Ok(both) => both,
        Err(e) => return e,
    };
    let Some(dir) = direction(dir) else {
        return CCDMA_ERR_INVALID;
    };
    // SAFETY: our own mapping, its buffer untouched meanwhile (contract).
    result(unsafe { layer.inner.sync_for_device(&dev.inner, BusAddr(bus), offset, len, dir) })
}

/// Make the device's writes visible in the buffers of a mapped list (`entries`, `n`, `dir` as given to
/// `ccdma_map_sg`).
///
/// # Safety
/// As for `ccdma_unmap_sg`; the list stays mapped.
#[no_mangle]
pub unsafe extern "C" fn ccdma_sync_sg_for_cpu(
    layer: *const ccdma_layer,
    dev: *const ccdma_device,
    entries: *mut c_void,
    n: usize,
    dir: c_int,
) -> c_int {
    // SAFETY: the same contract.
    unsafe { crate::list_call(layer, dev, entries, n, dir, crate::ListCall::ForCpu) }
}

/// Make the CPU's writes to the buffers of a mapped list visible to the device.
///
/// # Safety
/// As for `ccdma_sync_sg_for_cpu`.
#[no_mangle]
pub unsafe extern "C" fn ccdma_sync_sg_for_device(
    layer: *const ccdma_layer,
    dev: *const ccdma_device,
    entries: *mut c_void,
    n: usize,
    dir: c_int,
) -> c_int {
    // SAFETY: the same contract.
    unsafe { crate::list_call(layer, dev, entries, n, dir, crate::ListCall::ForDevice) }
}
