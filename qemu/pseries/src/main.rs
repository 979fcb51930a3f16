//! ccdma test kernel for QEMU's pseries machine: a confidential guest whose devices reach memory
//! through the sPAPR TCE IOMMU, driven through ccdma with real hypercalls.
//!
//! Boots under VOF (`-machine pseries,x-vof=on`), reads the device tree through the client
//! interface, finds the PCI devices through RTAS, and runs the checks of the configuration named on
//! the command line (`/chosen/bootargs`, `config=<name>`). Prints one `PASS`/`FAIL` line per check,
//! a report and `N passed, M failed`, then powers the machine off through RTAS.

#![no_std]
#![no_main]
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

mod boot;
mod clock;
mod config;
mod console;
mod containment;
mod detach;
mod devtree;
mod dma;
mod fidelity;
mod growth;
mod hcall;
mod of;
mod pci;
mod platform;
mod rtas;
mod scenario;
mod selftest;
mod show;
mod summary;
mod tce;
mod uv;

use ccdma_qemu_common::report::Report;
use ccdma_qemu_common::{println, Arch};
use core::panic::PanicInfo;

/// The kernel's byte order, for reports.
pub const ENDIAN: &str = if cfg!(target_endian = "little") { "little" } else { "big" };

static ARCH: Arch = Arch { write: console::write_str, now: clock::now, mmio: dma::mmio_identity, exit };

fn exit(_passed: bool) -> ! {
    // QEMU exits with 0 either way: the runner reads the closing line.
    rtas::power_off()
}

/// Rust entry point, called by the entry code in 64-bit mode on the boot stack.
#[no_mangle]
extern "C" fn kmain() -> ! {
    ccdma_qemu_common::init(&ARCH, log::LevelFilter::Warn);
    println!("ccdma pseries test kernel ({ENDIAN}-endian)");
    let mut report = Report::default();
    let tokens = rtas::init();
    report.expect(
        "boot.rtas",
        tokens.power_off.is_some(),
        format_args!("power-off token {}", show::Hex(tokens.power_off)),
    );
    let frequency = clock::init();
    report.expect("boot.clock", frequency.is_some(), format_args!("timebase {} Hz", show::Hex(frequency)));
    let tree = devtree::Tree::read();
    let cmdline = tree.bootargs();
    if let Some(level) = config::cmdline_value(cmdline, "log").and_then(|level| level.parse().ok()) {
        log::set_max_level(level);
    }
    let config = match config::from_cmdline(cmdline) {
        Ok(config) => config,
        Err(name) => {
            report.fail("boot.config", format_args!("unknown configuration {name:?}"));
            report.finish();
        }
    };
    report.pass("boot.config", format_args!("configuration {} (command line {cmdline:?})", config.name));
    // The devices stay alive until the machine stops: see `scenario::Machine`.
    scenario::run(&mut report, &tree, &config);
    report.finish()
}

#[panic_handler]
fn panic(info: &PanicInfo) -> ! {
    println!("PANIC: {info}");
    rtas::power_off()
}
