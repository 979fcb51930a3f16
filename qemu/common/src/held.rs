//! [`Held`]: a kernel's devices kept in a `static` for good, so no stack frame holds them.
//!
//! The virtio drivers are kilobytes each (a NIC 2.6 KiB: its queues' bookkeeping) and hold raw
//! pointers, so they are not `Send` and [`TakeOnce`](crate::memory::TakeOnce) cannot keep them.
//! Both kernels run on one CPU: the value is only ever reached from it.

use crate::memory::TakeOnce;

/// A value handed out once as a `&'static mut`, for a single-CPU kernel: [`TakeOnce`] without its
/// `Send` bound (the hand-out once is `TakeOnce`'s; only the claim to be `Sync` is this type's).
pub struct Held<T>(TakeOnce<T>);

// SAFETY: the value is reached only through `take`, which hands out one `&mut` ever (TakeOnce's
// flag); the kernels that use this run on one CPU, so the value never moves between threads.
unsafe impl<T> Sync for Held<T> {}

impl<T> Held<T> {
    /// Wraps `value` (a `const`: it lives in `.bss`/`.data`, not on a stack).
    pub const fn new(value: T) -> Self {
        Self(TakeOnce::new(value))
    }

    /// The value, the first time; `None` after.
    pub fn take(&'static self) -> Option<&'static mut T> {
        self.0.take()
    }
}
