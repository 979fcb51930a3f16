//! [`Held`]: a kernel's devices kept in a `static` for good, so no stack frame holds them.
//!
//! The virtio drivers are kilobytes each (a NIC 2.6 KiB: its queues' bookkeeping) and hold raw
//! pointers, so they are not `Send` and [`TakeOnce`](crate::memory::TakeOnce) cannot keep them.
//! Both kernels run on one CPU: the value is only ever reached from it.

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, Ordering};

/// A value handed out once as a `&'static mut`, for a single-CPU kernel.
pub struct Held<T> {
    taken: AtomicBool,
    value: UnsafeCell<T>,
}

// SAFETY: the value is reached only through `take`, which hands out one `&mut` ever (the flag);
// the kernels that use this run on one CPU, so the value never moves between threads.
unsafe impl<T> Sync for Held<T> {}

impl<T> Held<T> {
    /// Wraps `value` (a `const`: it lives in `.bss`/`.data`, not on a stack).
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
