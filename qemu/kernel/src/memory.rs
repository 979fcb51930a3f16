//! Physical memory as this kernel reaches it (identity map); static regions, slot allocator and
//! leaked request buffers come from the common crate.
//!
//! The boot trampoline identity-maps memory, so a physical address below
//! [`boot::identity_map_limit`](crate::boot::identity_map_limit) is also a valid pointer and the
//! conversions here are plain casts. They are still the only places that make that assumption.

use core::ptr::NonNull;

pub use ccdma_qemu_common::memory::{leak_bytes, phys_of, SlotBitmap, StaticRegion, PAGE_SIZE};

/// Pointer through which the kernel reaches physical address `phys` (identity map).
///
/// Returns `None` for addresses outside the boot identity map.
pub fn ptr_of(phys: u64, len: usize) -> Option<NonNull<u8>> {
    let end = phys.checked_add(len as u64)?;
    if end > crate::boot::identity_map_limit() {
        return None;
    }
    NonNull::new(phys as *mut u8)
}
