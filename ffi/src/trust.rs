//! Trusted device I/O from C: a device the platform has accepted (TDISP with PCIe IDE) maps private
//! buffers in place, every other device keeps bouncing. The platform's answer comes from the
//! `accept` / `revoke` / `private_bus_addr` functions of the platform table (`ccdma_platform`);
//! [`ccdma_accept`] and [`ccdma_revoke`] ask it, [`ccdma_device_path`] tells a device's path.

use core::ffi::{c_char, c_int, c_void};

use ccdma::{BusAddr, DeviceTrust, DmaPath, PhysAddr};

use crate::handle;
use crate::{ccdma_device, ccdma_layer, ccdma_platform, result};

/// The live layer and its live device, the device to this call alone.
///
/// # Safety
/// As for `handle::live_mut`, for both.
unsafe fn live_dev_mut<'a>(
    layer: *const ccdma_layer,
    dev: *mut ccdma_device,
) -> Result<(&'a ccdma_layer, &'a mut ccdma_device), c_int> {
    // SAFETY: the same contract.
    let layer = unsafe { handle::live(layer, None) }?;
    // SAFETY: the same contract.
    let dev = unsafe { handle::live_mut(dev, Some(layer.tag.gen)) }?;
    Ok((layer, dev))
}

/// The path of a device whose buffers are used directly (not confidential, mask covers RAM).
pub const CCDMA_PATH_DIRECT: c_int = 0;
/// Not confidential: buffers above the device's mask are bounced, the rest used directly.
pub const CCDMA_PATH_BOUNCE_ABOVE_MASK: c_int = 1;
/// Confidential without IOMMU: every buffer is bounced through a shared pool.
pub const CCDMA_PATH_BOUNCE_ALWAYS: c_int = 2;
/// Confidential with IOMMU, 64-bit device: bounced, the pools premapped in a dynamic window.
pub const CCDMA_PATH_IOMMU_DDW: c_int = 3;
/// Confidential with IOMMU: bounced, the pools premapped in the default window.
pub const CCDMA_PATH_IOMMU_PREMAPPED: c_int = 4;
/// Confidential with IOMMU: bounced, entries per mapping, cleared at unmap.
pub const CCDMA_PATH_IOMMU_STRICT: c_int = 5;
/// Behind an IOMMU, the path chosen at the device's first map or allocation.
pub const CCDMA_PATH_IOMMU_DEFERRED: c_int = 6;
/// Accepted by the platform, no IOMMU: private buffers used in place by their private bus address.
pub const CCDMA_PATH_TRUSTED_DIRECT: c_int = 7;
/// Accepted by the platform, behind an IOMMU: entries per mapping naming the private buffer.
pub const CCDMA_PATH_TRUSTED_IOMMU: c_int = 8;

/// Every path, in `CCDMA_PATH_*` order.
const ALL_PATHS: [DmaPath; 9] = [
    DmaPath::Direct,
    DmaPath::BounceAboveMask,
    DmaPath::BounceAlways,
    DmaPath::IommuDdw,
    DmaPath::IommuPremapped,
    DmaPath::IommuStrict,
    DmaPath::IommuDeferred,
    DmaPath::TrustedDirect,
    DmaPath::TrustedIommu,
];

/// The `CCDMA_PATH_*` number of a path (exhaustive, so a new path must be placed).
fn path_code(p: DmaPath) -> c_int {
    match p {
        DmaPath::Direct => CCDMA_PATH_DIRECT,
        DmaPath::BounceAboveMask => CCDMA_PATH_BOUNCE_ABOVE_MASK,
        DmaPath::BounceAlways => CCDMA_PATH_BOUNCE_ALWAYS,
        DmaPath::IommuDdw => CCDMA_PATH_IOMMU_DDW,
        DmaPath::IommuPremapped => CCDMA_PATH_IOMMU_PREMAPPED,
        DmaPath::IommuStrict => CCDMA_PATH_IOMMU_STRICT,
        DmaPath::IommuDeferred => CCDMA_PATH_IOMMU_DEFERRED,
        DmaPath::TrustedDirect => CCDMA_PATH_TRUSTED_DIRECT,
        DmaPath::TrustedIommu => CCDMA_PATH_TRUSTED_IOMMU,
    }
}

/// The trusted platform's functions of the C table (both present), implementing `DeviceTrust`.
pub(crate) struct CTrust {
    ctx: *mut c_void,
    accept: unsafe extern "C" fn(*mut c_void, u32) -> c_int,
    revoke: unsafe extern "C" fn(*mut c_void, u32) -> c_int,
    private_bus_addr: Option<unsafe extern "C" fn(*mut c_void, u64) -> u64>,
}

// SAFETY: the header's contract for `ccdma_platform` requires its functions (and so `ctx`) to be
// usable from any CPU, concurrently; the struct holds nothing else.
unsafe impl Sync for CTrust {}
// SAFETY: as above.
unsafe impl Send for CTrust {}

impl CTrust {
    /// `Ok(None)` when the table has no trusted platform (`accept` and `revoke` both NULL), `Err` when
    /// only one of them is set.
    pub(crate) fn from_table(t: &ccdma_platform) -> Result<Option<CTrust>, ()> {
        match (t.accept, t.revoke) {
            (None, None) => Ok(None),
            (Some(accept), Some(revoke)) => {
                Ok(Some(CTrust { ctx: t.ctx, accept, revoke, private_bus_addr: t.private_bus_addr }))
            }
            _ => Err(()),
        }
    }
}

impl DeviceTrust for CTrust {
    fn accept_device(&self, device: u32) -> Result<(), i64> {
        // SAFETY: a function of the C table with its own context.
        match unsafe { (self.accept)(self.ctx, device) } {
            0 => Ok(()),
            status => Err(status.into()),
        }
    }
    fn revoke_device(&self, device: u32) -> Result<(), i64> {
        // SAFETY: a function of the C table with its own context.
        match unsafe { (self.revoke)(self.ctx, device) } {
            0 => Ok(()),
            status => Err(status.into()),
        }
    }
    fn private_bus_addr(&self, phys: PhysAddr) -> BusAddr {
        match self.private_bus_addr {
            // SAFETY: a function of the C table with its own context.
            Some(f) => BusAddr(unsafe { f(self.ctx, phys.0) }),
            None => BusAddr(phys.0),
        }
    }
}

/// Accept `dev` for direct access to private memory, on the platform's word (its `accept` function).
/// From then on its private buffers are mapped in place (`ccdma_map` hands the device the buffer's
/// own, private bus address: no bounce, no share call) unless a mapping asks for
/// `CCDMA_ATTR_CC_SHARED`; coherent buffers are private too. Accepting an accepted device does
/// nothing.
///
/// Refused, nothing changed: `CCDMA_ERR_BUSY` while the device has a live mapping, list or coherent
/// buffer; `CCDMA_ERR_TRUST` when the guest is not confidential, the table has no `accept`, or the
/// platform says no.
///
/// # Safety
/// `layer` is null or layer memory, `dev` null or device memory (the handle rules of `ccdma_layer`),
/// `dev` not used by any
/// other call during this one.
#[no_mangle]
pub unsafe extern "C" fn ccdma_accept(layer: *const ccdma_layer, dev: *mut ccdma_device) -> c_int {
    // SAFETY: null or the caller's handles, `dev` used by no other call now (contract).
    let (layer, dev) = match unsafe { live_dev_mut(layer, dev) } {
        Ok(both) => both,
        Err(e) => return e,
    };
    result(layer.inner.accept(&mut dev.inner))
}

/// Revoke `dev`'s acceptance: it is untrusted again and its buffers bounce. Revoking an untrusted
/// device does nothing.
///
/// Refused, nothing changed: `CCDMA_ERR_BUSY` while the device has anything live; `CCDMA_ERR_IOMMU`
/// when an IOMMU entry naming private memory (left by a failed unmap) still will not clear.
/// `CCDMA_ERR_TRUST` when the platform's `revoke` failed: the layer treats the device as untrusted
/// anyway, but the platform may still let it reach private memory.
///
/// # Safety
/// As for `ccdma_accept`.
#[no_mangle]
pub unsafe extern "C" fn ccdma_revoke(layer: *const ccdma_layer, dev: *mut ccdma_device) -> c_int {
    // SAFETY: null or the caller's handles, `dev` used by no other call now (contract).
    let (layer, dev) = match unsafe { live_dev_mut(layer, dev) } {
        Ok(both) => both,
        Err(e) => return e,
    };
    result(layer.inner.revoke(&mut dev.inner))
}

/// The path of `dev` now (`CCDMA_PATH_*`, >= 0; `CCDMA_PATH_TRUSTED_DIRECT` or
/// `CCDMA_PATH_TRUSTED_IOMMU` once accepted), or `CCDMA_ERR_NULL`.
///
/// # Safety
/// `layer` is null or layer memory, `dev` null or device memory (the handle rules of `ccdma_layer`).
#[no_mangle]
pub unsafe extern "C" fn ccdma_device_path(layer: *const ccdma_layer, dev: *const ccdma_device) -> c_int {
    // SAFETY: null or the caller's handles (contract).
    let (layer, dev) = match unsafe { handle::layer_dev(layer, dev) } {
        Ok(both) => both,
        Err(e) => return e,
    };
    path_code(layer.inner.path_of(&dev.inner))
}

/// A static, NUL-terminated name of a `CCDMA_PATH_*` number ("trusted-direct", ...; never null).
#[no_mangle]
pub extern "C" fn ccdma_path_name(path: c_int) -> *const c_char {
    let name: &'static core::ffi::CStr = match ALL_PATHS.into_iter().find(|p| path_code(*p) == path) {
        Some(p) => c_name(p),
        None => c"unknown path",
    };
    name.as_ptr()
}

/// `DmaPath::name` as a C string (the same words; checked by the unit test below).
fn c_name(p: DmaPath) -> &'static core::ffi::CStr {
    match p {
        DmaPath::Direct => c"direct",
        DmaPath::BounceAboveMask => c"bounce-above-mask",
        DmaPath::BounceAlways => c"bounce-always",
        DmaPath::IommuDdw => c"iommu-ddw-premapped",
        DmaPath::IommuPremapped => c"iommu-premapped",
        DmaPath::IommuStrict => c"iommu-strict",
        DmaPath::IommuDeferred => c"iommu-deferred",
        DmaPath::TrustedDirect => c"trusted-direct",
        DmaPath::TrustedIommu => c"trusted-iommu",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    unsafe extern "C" fn yes(_: *mut c_void, _: u32) -> c_int {
        0
    }
    unsafe extern "C" fn no(_: *mut c_void, device: u32) -> c_int {
        -(device as c_int)
    }
    unsafe extern "C" fn c_bit(_: *mut c_void, phys: u64) -> u64 {
        phys | 1 << 51
    }
    fn table(
        accept: Option<unsafe extern "C" fn(*mut c_void, u32) -> c_int>,
        revoke: Option<unsafe extern "C" fn(*mut c_void, u32) -> c_int>,
        private_bus_addr: Option<unsafe extern "C" fn(*mut c_void, u64) -> u64>,
    ) -> ccdma_platform {
        ccdma_platform {
            ctx: core::ptr::null_mut(),
            confidential: 1,
            share: None,
            unshare: None,
            cpu_ptr: None,
            virt_to_phys: None,
            ram_end: None,
            iommu: core::ptr::null(),
            accept,
            revoke,
            private_bus_addr,
            shared_bus: crate::ccdma_bus_encoding::IDENTITY,
            mask_interrupts: None,
            restore_interrupts: None,
        }
    }

    #[test]
    fn the_table_s_trust_functions_answer_for_the_platform() {
        assert!(matches!(CTrust::from_table(&table(None, None, None)), Ok(None)));
        assert!(CTrust::from_table(&table(Some(yes), None, None)).is_err(), "accept without revoke");
        assert!(CTrust::from_table(&table(None, Some(yes), None)).is_err(), "revoke without accept");
        let plain = CTrust::from_table(&table(Some(yes), Some(no), None)).unwrap().unwrap();
        assert_eq!(plain.accept_device(7), Ok(()));
        assert_eq!(plain.revoke_device(7), Err(-7), "the C status is passed on");
        assert_eq!(plain.private_bus_addr(PhysAddr(0x5000)), BusAddr(0x5000), "NULL: identity");
        let sev = CTrust::from_table(&table(Some(no), Some(yes), Some(c_bit))).unwrap().unwrap();
        assert_eq!(sev.accept_device(3), Err(-3));
        assert_eq!(sev.private_bus_addr(PhysAddr(0x5000)), BusAddr(0x5000 | 1 << 51));
    }

    #[test]
    fn path_names_match_the_rust_names_and_numbers_round_trip() {
        for (i, p) in ALL_PATHS.into_iter().enumerate() {
            assert_eq!(path_code(p), i as c_int);
            assert_eq!(c_name(p).to_bytes(), p.name().as_bytes());
            // SAFETY: a static NUL-terminated string.
            let name = unsafe { core::ffi::CStr::from_ptr(ccdma_path_name(path_code(p))) };
            assert_eq!(name.to_bytes(), p.name().as_bytes());
        }
        // SAFETY: a static NUL-terminated string.
        assert_eq!(unsafe { core::ffi::CStr::from_ptr(ccdma_path_name(99)) }.to_bytes(), b"unknown path");
    }
}
