//! Taking a layer down: its pools made private again, its IOMMU path off, its memory free.

use core::ffi::c_int;

use crate::handle::{self, Tag};
use crate::{ccdma_layer, code, CCDMA_OK};

/// Release every pool: its memory is made private again (pages that cannot be are quarantined, and
/// `CCDMA_ERR_SHARING` says so: never use them for private data). Refused with nothing changed
/// (`CCDMA_ERR_BUSY`) while any mapping is live or a device behind the IOMMU is attached.
///
/// # Safety
/// `layer` is null or layer memory (the handle rules of `ccdma_layer`) and no other call uses it
/// during this one.
#[no_mangle]
pub unsafe extern "C" fn ccdma_release_pools(layer: *mut ccdma_layer) -> c_int {
    // SAFETY: null or the caller's layer memory with no other user now (contract).
    match unsafe { handle::live_mut(layer, None) } {
        Ok(layer) => match layer.inner.release_pools() {
            Ok(()) => CCDMA_OK,
            Err(e) => code(&e),
        },
        Err(e) => e,
    }
}

/// Take the layer down: pools released (`ccdma_release_pools`), the IOMMU path off
/// (`ccdma_disable_iommu`), then the layer's memory and the pool and bus-range storage it was given are
/// the caller's again, and the handle is ended (a second fini is `CCDMA_ERR_MISUSE`; devices still
/// attached are refused by any later layer, even one made in the same memory). Every device should be
/// detached first. If refused (`CCDMA_ERR_BUSY`, ...) the layer stays initialised and usable (pools
/// already released stay released), and the call can be repeated.
///
/// # Safety
/// `layer` is null or layer memory (the handle rules of `ccdma_layer`), and no other call uses it
/// during this one.
#[no_mangle]
pub unsafe extern "C" fn ccdma_layer_fini(layer: *mut ccdma_layer) -> c_int {
    // SAFETY: null or the caller's layer memory with no other user now (contract).
    let l = match unsafe { handle::live_mut(layer, None) } {
        Ok(l) => l,
        Err(e) => return e,
    };
    if let Err(e) = l.inner.release_pools().and_then(|()| l.inner.disable_iommu()) {
        return code(&e);
    }
    l.tag = Tag::DEAD;
    // SAFETY: live until the line above, unused from here on (contract); dropped once, in place: its
    // tag is dead, so no call makes a reference to it again.
    unsafe { core::ptr::drop_in_place(core::ptr::addr_of_mut!((*layer).inner)) };
    CCDMA_OK
}
