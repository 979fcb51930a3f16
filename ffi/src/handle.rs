//! Handle safety: every handle in caller memory (a layer, a device, a coherent buffer, a list's
//! entries) starts with a [`Tag`] that says whether it is live, where it lives and whose it is, so a
//! misused handle is refused with `CCDMA_ERR_MISUSE` before anything is touched.
//!
//! - A tag is live when its `magic` is its kind's and its `addr` is the handle's own address: memory
//!   never initialised, a handle that was freed, detached or finished (its tag is written dead then),
//!   and a byte copy of a handle at another address are not.
//! - Each live handle gets a generation, unique for the process (a 64-bit counter that is never
//!   reused). A device records its layer's generation, a coherent buffer and a list their device's:
//!   a device of another layer (or of a layer finished and made again in the same memory), a buffer
//!   of another device, are refused.
//! - Memory that holds a live handle is refused as the memory of a new one (it would leak the first).
//!
//! The checks are a few loads and compares per call. What they cannot see: memory that a caller
//! reuses for a new handle of the same kind makes the old pointer name the new handle (the pointer
//! is the handle); and a caller that restores a handle's bytes after it was freed.

use core::ffi::{c_int, c_void};
use core::mem::{align_of, size_of};
use core::sync::atomic::{AtomicU64, Ordering};

use ccdma::sg::SgEntry;

use crate::{
    ccdma_coherent, ccdma_device, ccdma_layer, CCDMA_ERR_MISUSE, CCDMA_ERR_NULL, CCDMA_SG_ENTRY_SIZE,
};

/// The head of every handle.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub(crate) struct Tag {
    /// The kind's magic while live; anything else is dead.
    magic: u64,
    /// The handle's own address while live.
    addr: usize,
    /// This handle's generation.
    pub(crate) gen: u64,
    /// The generation of what it belongs to (a device's layer, a buffer's or list's device).
    pub(crate) owner: u64,
}

/// The kinds of handle.
#[derive(Clone, Copy)]
pub(crate) enum Kind {
    Layer,
    Device,
    Coherent,
    List,
}

impl Kind {
    const fn magic(self) -> u64 {
        match self {
            Kind::Layer => 0xCCD3_A11A_7E50_0001,
            Kind::Device => 0xCCD3_A11A_7E50_0002,
            Kind::Coherent => 0xCCD3_A11A_7E50_0003,
            Kind::List => 0xCCD3_A11A_7E50_0004,
        }
    }
}

/// The next generation (0 is never handed out).
static NEXT_GEN: AtomicU64 = AtomicU64::new(1);

impl Tag {
    /// The tag of a handle that is not live.
    pub(crate) const DEAD: Tag = Tag { magic: 0, addr: 0, gen: 0, owner: 0 };

    /// A live tag for a new handle of `kind` at `addr` belonging to `owner`.
    pub(crate) fn live(kind: Kind, addr: usize, owner: u64) -> Tag {
        Tag { magic: kind.magic(), addr, gen: NEXT_GEN.fetch_add(1, Ordering::Relaxed), owner }
    }

    /// Is this the tag of a live handle of `kind` at `addr`?
    pub(crate) fn is_live(&self, kind: Kind, addr: usize) -> bool {
        self.magic == kind.magic() && self.addr == addr
    }
}

/// A handle type: its kind and where its tag is.
pub(crate) trait Handle {
    /// Its kind.
    const KIND: Kind;
    /// The address of the tag of the handle at `p`.
    ///
    /// # Safety
    /// `p` is non-null, aligned and points into memory of at least `size_of::<Self>()` bytes.
    unsafe fn tag(p: *const Self) -> *const Tag;
}

impl Handle for ccdma_layer {
    const KIND: Kind = Kind::Layer;
    unsafe fn tag(p: *const Self) -> *const Tag {
        // SAFETY: a field of the memory `p` points into (contract); no reference is made.
        unsafe { core::ptr::addr_of!((*p).tag) }
    }
}
impl Handle for ccdma_device {
    const KIND: Kind = Kind::Device;
    unsafe fn tag(p: *const Self) -> *const Tag {
        // SAFETY: a field of the memory `p` points into (contract); no reference is made.
        unsafe { core::ptr::addr_of!((*p).tag) }
    }
}
impl Handle for ccdma_coherent {
    const KIND: Kind = Kind::Coherent;
    unsafe fn tag(p: *const Self) -> *const Tag {
        // SAFETY: a field of the memory `p` points into (contract); no reference is made.
        unsafe { core::ptr::addr_of!((*p).tag) }
    }
}

/// The live handle at `p` belonging to `owner` (`None`: any owner), or `CCDMA_ERR_NULL` (null) or
/// `CCDMA_ERR_MISUSE` (misaligned, not live, not `owner`'s).
///
/// # Safety
/// `p` is null, misaligned, or valid for reads of `size_of::<H>()` bytes (any content); if it holds a
/// live handle, no other call uses it mutably meanwhile.
pub(crate) unsafe fn live<'a, H: Handle>(p: *const H, owner: Option<u64>) -> Result<&'a H, c_int> {
    if p.is_null() {
        return Err(CCDMA_ERR_NULL);
    }
    if !p.is_aligned() {
        return Err(CCDMA_ERR_MISUSE);
    }
    // SAFETY: non-null, aligned, readable (contract); the tag is read raw, any bytes.
    unsafe { check(H::tag(p), H::KIND, owner) }?;
    // SAFETY: a live tag: this crate initialised the handle at this address and has not ended it.
    Ok(unsafe { &*p })
}

/// [`live`], for a call that has the handle to itself.
///
/// # Safety
/// As for [`live`], and no other call uses the handle meanwhile.
pub(crate) unsafe fn live_mut<'a, H: Handle>(p: *mut H, owner: Option<u64>) -> Result<&'a mut H, c_int> {
    // SAFETY: the same contract.
    unsafe { live::<H>(p, owner) }?;
    // SAFETY: live (checked), and used by this call alone (contract).
    Ok(unsafe { &mut *p })
}

/// The live layer at `layer` and the live device at `dev` attached to it.
///
/// # Safety
/// As for [`live`], for both.
pub(crate) unsafe fn layer_dev<'a>(
    layer: *const ccdma_layer,
    dev: *const ccdma_device,
) -> Result<(&'a ccdma_layer, &'a ccdma_device), c_int> {
    // SAFETY: the same contract.
    let layer = unsafe { live(layer, None) }?;
    // SAFETY: the same contract.
    let dev = unsafe { live(dev, Some(layer.tag.gen)) }?;
    Ok((layer, dev))
}

/// The head of a list's entry memory (`ccdma_map_sg`): its tag and its number of entries, then the
/// entries.
#[repr(C, align(16))]
pub(crate) struct ListHead {
    pub(crate) tag: Tag,
    pub(crate) n: usize,
}

/// Bytes before the first entry.
pub(crate) const LIST_HEAD: usize = size_of::<ListHead>();

// The header's promise: `n * CCDMA_SG_ENTRY_SIZE` bytes hold a list of `n` (head included), at the
// header's alignment.
const _: () = {
    assert!(LIST_HEAD + size_of::<SgEntry<'static>>() <= CCDMA_SG_ENTRY_SIZE);
    assert!(LIST_HEAD % align_of::<SgEntry<'static>>() == 0);
    assert!(align_of::<ListHead>() <= crate::CCDMA_SG_ENTRY_ALIGN);
};

/// The `n` entries of the live list of `dev` in `entries`, or an error code (`CCDMA_ERR_MISUSE`
/// when `entries` holds no live list of `dev` with `n` entries).
///
/// # Safety
/// `entries` is null, misaligned, or valid for reads of a `ListHead` (any content) and, when that
/// holds a live list, is the memory `ccdma_map_sg` initialised, used by no other call.
pub(crate) unsafe fn list<'a>(
    dev: &ccdma_device,
    entries: *mut c_void,
    n: usize,
) -> Result<(&'a mut ListHead, &'a mut [SgEntry<'static>]), c_int> {
    if entries.is_null() {
        return Err(CCDMA_ERR_NULL);
    }
    let head = entries.cast::<ListHead>();
    if !head.is_aligned() {
        return Err(CCDMA_ERR_MISUSE);
    }
    // SAFETY: non-null, aligned, readable (contract); the tag is read raw.
    unsafe { check(core::ptr::addr_of!((*head).tag), Kind::List, Some(dev.tag.gen)) }?;
    // SAFETY: a live list's head, initialised by `ccdma_map_sg`.
    let head = unsafe { &mut *head };
    if head.n != n {
        return Err(CCDMA_ERR_MISUSE);
    }
    // SAFETY: the `n` entries `ccdma_map_sg` initialised after the head (contract).
    let list = unsafe { core::slice::from_raw_parts_mut(entries.cast::<u8>().add(LIST_HEAD).cast(), n) };
    Ok((head, list))
}

/// The tag at `p`, checked: `CCDMA_ERR_NULL` for null, `CCDMA_ERR_MISUSE` when `p` is misaligned or
/// its tag is not a live one of `kind` at `p` belonging to `owner` (`None`: any owner).
///
/// # Safety
/// `p` is null, or misaligned, or valid for reads of a `Tag` (any bytes).
pub(crate) unsafe fn check(p: *const Tag, kind: Kind, owner: Option<u64>) -> Result<Tag, c_int> {
    if p.is_null() {
        return Err(CCDMA_ERR_NULL);
    }
    if !p.is_aligned() {
        return Err(CCDMA_ERR_MISUSE);
    }
    // SAFETY: aligned and readable (contract); every bit pattern is a valid `Tag`.
    let tag = unsafe { p.read() };
    if !tag.is_live(kind, p as usize) || owner.is_some_and(|o| o != tag.owner) {
        return Err(CCDMA_ERR_MISUSE);
    }
    Ok(tag)
}

/// `CCDMA_ERR_MISUSE` when the memory at `p` (aligned, readable) holds a live handle of `kind`.
///
/// # Safety
/// `p` is aligned and valid for reads of a `Tag` (any bytes).
pub(crate) unsafe fn check_free(p: *const Tag, kind: Kind) -> Result<(), c_int> {
    // SAFETY: aligned and readable (contract); every bit pattern is a valid `Tag`.
    if unsafe { p.read() }.is_live(kind, p as usize) {
        Err(CCDMA_ERR_MISUSE)
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tag_is_live_only_for_its_kind_address_and_owner() {
        let mut t = Tag::DEAD;
        let at = core::ptr::addr_of!(t) as usize;
        t = Tag::live(Kind::Device, at, 7);
        let p: *const Tag = &t;
        // SAFETY: a valid, aligned `Tag`.
        unsafe {
            assert!(check(p, Kind::Device, Some(7)).is_ok());
            assert!(check(p, Kind::Device, None).is_ok());
            assert_eq!(check(p, Kind::Device, Some(8)).err(), Some(CCDMA_ERR_MISUSE), "another owner");
            assert_eq!(check(p, Kind::Coherent, None).err(), Some(CCDMA_ERR_MISUSE), "another kind");
            assert_eq!(check_free(p, Kind::Device), Err(CCDMA_ERR_MISUSE));
            assert_eq!(check_free(p, Kind::List), Ok(()));
            assert_eq!(check(core::ptr::null(), Kind::Device, None).err(), Some(CCDMA_ERR_NULL));
        }
        let copy = t;
        // SAFETY: a valid, aligned `Tag`.
        let elsewhere = unsafe { check(&copy, Kind::Device, None) };
        assert_eq!(elsewhere.err(), Some(CCDMA_ERR_MISUSE), "a copy elsewhere");
        let other = Tag::live(Kind::Device, at, 7);
        assert!(other.gen > t.gen, "generations are never reused");
    }
}
