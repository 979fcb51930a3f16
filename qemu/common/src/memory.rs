//! Physical memory owned by the kernel: static regions in `.bss`, a slot allocator over them, and
//! leaked private buffers for requests a device may never give back.
//!
//! Both kernels reach memory at its physical address (x86_64: identity map; pseries: real mode),
//! so a pointer into the kernel's image is also its physical address.

use core::cell::UnsafeCell;
use core::mem::{align_of, size_of, MaybeUninit};
use core::ops::Range;
use core::sync::atomic::{AtomicBool, Ordering};
use spin::Mutex;

/// CPU page size (and the DMA page size virtio-drivers assumes).
pub const PAGE_SIZE: usize = 4096;

/// Physical address of memory the kernel can reach (identity map: same as the pointer value).
pub fn phys_of(ptr: *const u8) -> u64 {
    ptr as u64
}

/// A page-aligned, zero-initialised block of `.bss` reached only through raw pointers.
#[repr(C, align(4096))]
pub struct StaticRegion<const N: usize>(UnsafeCell<[u8; N]>);

// SAFETY: the region itself is never read or written through references; allocators hand out
// disjoint parts of it as raw pointers or exclusive slices, each with a single owner at a time.
unsafe impl<const N: usize> Sync for StaticRegion<N> {}

impl<const N: usize> StaticRegion<N> {
    /// A zeroed region; as a `static` it lands in `.bss`, which the entry code zeroes.
    pub const fn new() -> Self {
        Self(UnsafeCell::new([0; N]))
    }

    /// Start of the region.
    pub fn base(&self) -> *mut u8 {
        self.0.get().cast()
    }

    /// Physical address range of the region.
    pub fn phys_range(&self) -> Range<u64> {
        let start = phys_of(self.base());
        start..start + N as u64
    }
}

/// Free/used bitmap over `64 * WORDS` equally sized slots. Finds the first aligned run of free
/// slots; small and linear, which is all a test kernel needs.
pub struct SlotBitmap<const WORDS: usize> {
    used: [u64; WORDS],
}

impl<const WORDS: usize> SlotBitmap<WORDS> {
    /// Number of slots tracked.
    pub const SLOTS: usize = WORDS * 64;

    /// All slots free.
    pub const fn new() -> Self {
        Self { used: [0; WORDS] }
    }

    fn is_used(&self, slot: usize) -> bool {
        self.used[slot / 64] & (1 << (slot % 64)) != 0
    }

    fn set(&mut self, slots: Range<usize>, used: bool) {
        for slot in slots {
            if used {
                self.used[slot / 64] |= 1 << (slot % 64);
            } else {
                self.used[slot / 64] &= !(1 << (slot % 64));
            }
        }
    }

    /// Marks `count` free slots starting at a multiple of `align` as used and returns the first
    /// one, or `None` if no such run exists.
    pub fn alloc(&mut self, count: usize, align: usize) -> Option<usize> {
        if count == 0 || count > Self::SLOTS {
            return None;
        }
        let align = align.max(1);
        let mut first = 0;
        while first + count <= Self::SLOTS {
            match (first..first + count).find(|&slot| self.is_used(slot)) {
                None => {
                    self.set(first..first + count, true);
                    return Some(first);
                }
                // Restart after the used slot, at the next aligned position.
                Some(used) => first = (used + 1).next_multiple_of(align),
            }
        }
        None
    }

    /// Marks `count` slots starting at `first` as free again.
    ///
    /// Panics if any of them is not in use: that would be a double free in the caller, and
    /// continuing would hand the same memory to two owners.
    pub fn free(&mut self, first: usize, count: usize) {
        let slots = first..first + count;
        assert!(
            slots.end <= Self::SLOTS && slots.clone().all(|slot| self.is_used(slot)),
            "freeing slots {slots:?} that are not allocated"
        );
        self.set(slots, false);
    }
}

/// Private memory for request headers and data buffers handed to devices.
///
/// Buffers are leaked on purpose (`&'static mut`): a request that times out leaves its buffers
/// with the device, and the only safe thing to do with them is to never touch them again. Buffers
/// that come back are reused by their owner, so 8 MiB holds every buffer the checks use.
const LEAKED_SIZE: usize = 8 << 20;
static LEAKED_REGION: StaticRegion<LEAKED_SIZE> = StaticRegion::new();
static LEAKED_NEXT: Mutex<usize> = Mutex::new(0);

/// Takes `len` zeroed bytes aligned to `align` (a power of two) out of the leaked region.
/// Returns `None` when the region is exhausted.
pub fn leak_bytes(len: usize, align: usize) -> Option<&'static mut [u8]> {
    let base = LEAKED_REGION.base();
    let mut next = LEAKED_NEXT.lock();
    let start = (base as usize + *next).next_multiple_of(align) - base as usize;
    let end = start.checked_add(len)?;
    if end > LEAKED_SIZE {
        return None;
    }
    *next = end;
    // SAFETY: `start..end` lies inside the region and the bump pointer never hands out a byte
    // twice, so this is the only reference to these bytes, for the rest of the run; the region is
    // in `.bss`, zeroed by the entry code.
    Some(unsafe { core::slice::from_raw_parts_mut(base.add(start), len) })
}

/// Moves `value` into the leaked region and returns the only reference to it.
pub fn leak_value<T>(value: T) -> Option<&'static mut T> {
    let bytes = leak_bytes(size_of::<T>().max(1), align_of::<T>())?;
    let ptr = bytes.as_mut_ptr().cast::<T>();
    // SAFETY: `bytes` is exclusively ours, large enough and aligned for `T` (`leak_bytes`
    // honoured `align_of::<T>()`); writing initialises it before the reference is created.
    unsafe {
        ptr.write(value);
        Some(&mut *ptr)
    }
}

/// Room for one `T` in the leaked region, to build it there in place (no copy of it on a stack).
pub fn leak_uninit<T>() -> Option<&'static mut MaybeUninit<T>> {
    let bytes = leak_bytes(size_of::<T>().max(1), align_of::<T>())?;
    // SAFETY: `bytes` is exclusively ours for the rest of the run, large enough and aligned for
    // `T` (`leak_bytes` honoured `align_of::<T>()`); a `MaybeUninit<T>` may hold any bytes.
    Some(unsafe { &mut *bytes.as_mut_ptr().cast::<MaybeUninit<T>>() })
}

/// A value in `.bss` that can be borrowed mutably exactly once, for the kernel's lifetime (pool
/// metadata, which the layer keeps `&'static mut`).
pub struct TakeOnce<T> {
    taken: AtomicBool,
    value: UnsafeCell<T>,
}

// SAFETY: the value is only reached through `take`, which hands out one `&mut` ever.
unsafe impl<T: Send> Sync for TakeOnce<T> {}

impl<T> TakeOnce<T> {
    /// Wraps `value`.
    pub const fn new(value: T) -> Self {
        Self { taken: AtomicBool::new(false), value: UnsafeCell::new(value) }
    }

    /// The value, the first time; `None` after.
    // The `&mut` comes out of the `UnsafeCell`, handed out once (the flag), not out of `&self`.
    #[allow(clippy::mut_from_ref)]
    pub fn take(&'static self) -> Option<&'static mut T> {
        if self.taken.swap(true, Ordering::AcqRel) {
            return None;
        }
        // SAFETY: the flag was clear, so this is the only reference ever created, and `self` is
        // `'static`.
        Some(unsafe { &mut *self.value.get() })
    }
}
