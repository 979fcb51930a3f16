//! `ccdma-sim`: run the ccdma guest layer against the modelled hypervisor and report, per device, the
//! path the layer chose and its reason, the bus ranges of each window, the bytes moved each way, the
//! hypervisor calls made and the faults the model recorded.
//!
//! The platform (RAM, pools, confidential or not, personality, IOMMU) and the devices (name and DMA
//! mask) come from flags or from a `key value` file (`--config FILE`); with no arguments it runs a 6 GiB
//! pseries Secure VM with a low and a high pool and devices of 24, 32, 40 and 64 bits. Every transfer is
//! checked byte for byte by the model's device, so the exit status says whether the layer kept its
//! promises:
//!
//! - 0: every device attached and moved exact data with no unexpected fault and nothing leaked, or was
//!   refused and named with `--expect-refused`; every pool was added;
//! - 1: a check failed (a device refused unexpectedly or attached although expected refused, a pool
//!   refused, a wrong byte, an unexpected fault, a leak, a teardown error);
//! - 2: bad arguments or config file, or a configuration the model cannot run.
//!
//! Files: `args` (command line and config file), `num` (the number parser), `workload` (platform,
//! pools, devices, teardown), `transfer` (one device's byte-checked transfers), `report` (the lines
//! printed per pool and device), `table` (the closing table and verdict), `svg` (the bus address map).
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

mod args;
mod num;
mod report;
mod svg;
mod table;
mod transfer;
mod workload;

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opts = match args::parse(args) {
        Ok(args::Parsed::Run(o)) => o,
        Ok(args::Parsed::Help(text)) => {
            report::emit(&text);
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // Every error ends with a short usage (clap's own when it gave one), never the whole help.
            eprintln!("ccdma-sim: {e}");
            if !e.contains("Usage:") {
                eprintln!("\nUsage: ccdma-sim [OPTIONS]");
            }
            eprintln!("\nFor more information, try '--help'.");
            return ExitCode::from(2);
        }
    };
    match workload::run(&opts) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("ccdma-sim: {e}");
            ExitCode::from(2)
        }
    }
}
