//! ccdma test kernel: a freestanding x86_64 kernel that QEMU boots through PVH, used to drive real
//! virtio devices through a virtio-iommu.
//!
//! It runs the checks in [`scenario`] for the configuration named on its command line
//! (`config=<name>`, see [`config`]), prints one `PASS`/`FAIL` line per check and a closing
//! `N passed, M failed` line, then leaves QEMU through `isa-debug-exit` with a status that says
//! whether everything passed.

#![no_std]
#![no_main]
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

mod boot;
mod config;
mod dma;
mod exceptions;
mod exit;
mod iommu;
mod mem;
mod memory;
mod pci;
mod platform;
mod scenario;
mod serial;
mod start_info;
mod time;
// The driver exposes its whole API (detach, permissions per direction, fault access kinds) even
// where the kernel does not use all of it.
#[allow(dead_code)]
mod virtio_iommu;

// What both test kernels share (qemu/common), under the names the modules here use.
pub(crate) use ccdma_qemu_common::direct as hal;
pub(crate) use ccdma_qemu_common::println;
pub(crate) use ccdma_qemu_common::{blk, ledger, net, patterns, report, rng, transport};

use ccdma_qemu_common::Arch;
// Linked for the C code that calls it (`ffi_check`).
use ccdma_ffi as _;
use core::panic::PanicInfo;
use core::ptr::NonNull;
use exit::{exit_qemu, ExitCode};
use report::Report;
use start_info::StartInfo;

/// This machine's console, clock, MMIO mapping and exit, for the common crate.
static ARCH: Arch = Arch { write: serial::write_str, now: time::now, mmio: mmio_identity, exit: exit_checks };

fn mmio_identity(phys: u64, size: usize) -> NonNull<u8> {
    memory::ptr_of(phys, size)
        .unwrap_or_else(|| panic!("MMIO region {phys:#x}+{size:#x} is outside the identity map"))
}

fn exit_checks(passed: bool) -> ! {
    exit_qemu(if passed { ExitCode::Success } else { ExitCode::Failure })
}

/// Rust entry point, called by the boot trampoline on the boot stack with paging and SSE on.
#[no_mangle]
extern "C" fn kmain(start_info_phys: u32) -> ! {
    serial::init();
    ccdma_qemu_common::init(&ARCH, log::LevelFilter::Warn);
    exceptions::init();
    println!("ccdma test kernel");

    let mut report = Report::default();
    // Borrowed out of the result, not moved: one copy of the 1 KiB start info in this frame.
    let parsed = StartInfo::parse(u64::from(start_info_phys));
    let start_info = match &parsed {
        Ok(start_info) => start_info,
        Err(error) => {
            report.fail("boot.start_info", error);
            report.finish();
        }
    };
    let cmdline = start_info.cmdline();
    if let Some(level) = config::cmdline_value(cmdline, "log").and_then(|level| level.parse().ok()) {
        log::set_max_level(level);
    }
    report.pass("boot.start_info", format_args!("command line {cmdline:?}"));
    let config = match config::from_cmdline(cmdline) {
        Ok(config) => config,
        Err(name) => {
            report.fail("boot.config", format_args!("unknown configuration {name:?}"));
            report.finish();
        }
    };
    report.pass("boot.config", format_args!("configuration {}", config.name));

    // The devices stay alive until the machine stops: see `scenario::Machine`.
    scenario::run(&mut report, start_info, &config);
    report.finish()
}

#[panic_handler]
fn panic(info: &PanicInfo) -> ! {
    println!("PANIC: {info}");
    exit_qemu(ExitCode::Panic)
}
