//! What the kernel starts from: the RAM map firmware gave (RAM above 4 GiB reachable through the
//! boot map), the HPET that bounds every wait, and ccdma's pools placed in that RAM.

use ccdma::{DeviceConfig, DmaMask};
use ccdma_qemu_common::binding::{attach, AttachError};
use core::fmt;

use crate::config::TestConfig;
use crate::dma::{self, KernelBinding, NoLayer, PoolPlacement};
use crate::report::Report;
use crate::start_info::StartInfo;
use crate::{boot, memory, time};

use super::{RngBinding, FOUR_GIB};

/// RAM layout from firmware; RAM above 4 GiB, if any, must be reachable through the boot map.
pub(super) fn check_memory(report: &mut Report, start_info: &StartInfo) {
    let total: u64 = start_info.ram().iter().map(|range| range.end - range.start).sum();
    let above = start_info.ram_above(FOUR_GIB);
    report.expect(
        "boot.memory_map",
        total > 0,
        format_args!(
            "{} RAM ranges, {} MiB, {} MiB above 4 GiB (start_info v{})",
            start_info.ram().len(),
            total >> 20,
            above >> 20,
            start_info.version
        ),
    );
    let Some(top) = start_info.ram().iter().map(|range| range.end).max().filter(|&end| end > FOUR_GIB) else {
        report.skip("boot.high_ram", "no RAM above 4 GiB");
        return;
    };
    let limit = boot::identity_map_limit();
    let Some(probe) = memory::ptr_of(top - 8, 8) else {
        report
            .fail("boot.high_ram", format_args!("RAM ends at {top:#x}, identity map only covers {limit:#x}"));
        return;
    };
    let pattern = 0x5a5a_c3c3_0f0f_f0f0 ^ top;
    let probe = probe.as_ptr().cast::<u64>();
    // SAFETY: firmware reports the last 8 bytes below `top` as RAM, `ptr_of` checked they are
    // identity-mapped, and nothing uses that memory yet (the high pool is set up later).
    let read_back = unsafe {
        probe.write_volatile(pattern);
        probe.read_volatile()
    };
    report.expect(
        "boot.high_ram",
        read_back == pattern,
        format_args!("wrote and read back {:#x} (top of RAM, map covers {} GiB)", top - 8, limit >> 30),
    );
}

/// Starts the HPET, which bounds every wait.
pub(super) fn check_timer(report: &mut Report) {
    match time::init() {
        Some(period_fs) => report.pass("time.hpet", format_args!("HPET period {period_fs} fs")),
        None => report.fail("time.hpet", "no usable HPET: deadlines fall back to poll counts"),
    }
}

/// Sets up the layer with its pools where this configuration puts them (above 4 GiB, both sides,
/// or the only RAM there is) and reports them. False when the layer could not start.
/// `dma.before_init`: before `dma::init` the layer is an error, not a panic: `dma::layer()` answers
/// `NoLayer` and a binding's attach is refused with it (nothing attached, the binding left empty).
pub(super) fn check_before_init(report: &mut Report) {
    let layer = dma::layer().err();
    let attach = attach::<RngBinding>(DeviceConfig::new(0, DmaMask::BITS_32)).err();
    let empty = RngBinding::slot().get().is_none();
    report.expect(
        "dma.before_init",
        layer == Some(NoLayer) && matches!(attach, Some(AttachError::NoLayer)) && empty,
        format_args!("before dma::init: layer {layer:?}, attach {attach:?}, binding empty: {empty}"),
    );
}

pub(super) fn init_pools(report: &mut Report, config: &TestConfig) -> bool {
    let placement = match (config.high_ram, config.iommu.present()) {
        (false, _) => PoolPlacement::Low,
        (true, false) => PoolPlacement::HighAndLow,
        (true, true) => PoolPlacement::High,
    };
    match dma::init(placement, config.iommu.ccdma_config()) {
        Ok((pools, _)) => {
            let pools = pools.iter().flatten();
            let count = pools.clone().count();
            let high = pools.clone().any(|pool| pool.phys >= FOUR_GIB);
            report.expect(
                "ccdma.pools",
                high == config.high_ram,
                format_args!(
                    "{count} pool(s) shared: {}",
                    PoolList(pools.clone().map(|pool| (pool.phys, pool.len)).collect_array())
                ),
            );
        }
        Err(error) => {
            report.fail("ccdma.pools", error);
            return false;
        }
    }
    true
}

/// Up to two pools (address, length), for a report line.
struct PoolList([Option<(u64, usize)>; 2]);

impl fmt::Display for PoolList {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let mut first = true;
        for &(phys, len) in self.0.iter().flatten() {
            if !first {
                write!(f, ", ")?;
            }
            first = false;
            let side = if phys >= FOUR_GIB { "above" } else { "below" };
            write!(f, "{} KiB at phys {phys:#x} ({side} 4 GiB)", len >> 10)?;
        }
        Ok(())
    }
}

trait CollectArray<T> {
    fn collect_array(self) -> [Option<T>; 2];
}

impl<T: Copy, I: Iterator<Item = T>> CollectArray<T> for I {
    fn collect_array(self) -> [Option<T>; 2] {
        let mut out = [None; 2];
        for (slot, value) in out.iter_mut().zip(self) {
            *slot = Some(value);
        }
        out
    }
}
