//! What both ccdma test kernels share (x86_64 under `qemu/kernel/`, pseries under `qemu/pseries/`):
//! the check report, the page ledger, bounded virtio drivers, data patterns and the memory helpers
//! they rest on. The architecture-specific parts (boot, console output, clock, exit, PCI
//! configuration access, hypercalls) stay in each kernel, which hands this crate its console, clock
//! and exit through [`Arch`].

#![no_std]
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]
// The shared state lives in statics, built by `const fn new()`; `Default` would never be used.
#![allow(clippy::new_without_default)]

pub mod attach;
pub mod binding;
pub mod blk;
pub mod bus_map;
pub mod checks;
pub mod console;
pub mod direct;
pub mod held;
pub mod ledger;
pub mod memory;
pub mod net;
pub mod patterns;
pub mod report;
pub mod rng;
pub mod setup;
pub mod share_refusal;
pub mod time;
pub mod transport;
pub mod virtio;

use spin::Once;

/// The kernel's architecture-specific services.
pub struct Arch {
    /// Writes text to the console.
    pub write: fn(&str),
    /// Time since boot, or `None` if the machine has no usable clock (deadlines then count polls).
    pub now: fn() -> Option<core::time::Duration>,
    /// The kernel's pointer to MMIO region `[phys, phys + size)` (a BAR).
    pub mmio: fn(phys: u64, size: usize) -> core::ptr::NonNull<u8>,
    /// Stops the machine; `passed` says whether every check passed.
    pub exit: fn(passed: bool) -> !,
}

static ARCH: Once<&'static Arch> = Once::new();

/// Installs the kernel's services and the logger (at `level`). Call first thing at boot.
pub fn init(arch: &'static Arch, level: log::LevelFilter) {
    ARCH.call_once(|| arch);
    console::init_logger(level);
}

fn arch() -> Option<&'static Arch> {
    ARCH.get().copied()
}

/// The kernel's pointer to MMIO region `[phys, phys + size)`; panics before [`init`].
pub fn mmio(phys: u64, size: usize) -> core::ptr::NonNull<u8> {
    match arch() {
        Some(arch) => (arch.mmio)(phys, size),
        None => panic!("MMIO region {phys:#x}+{size:#x} mapped before ccdma_qemu_common::init"),
    }
}
