//! The closing report: devices found, each managed device's path and why, bytes each way, bus
//! ranges, ccdma's counters, the ledger, the virtio-iommu requests made and the faults caught.

use ccdma_qemu_common::bus_map;
use ccdma_qemu_common::report::{Bytes, LayerTotals};
use core::fmt;
use core::sync::atomic::Ordering;
use virtio_drivers::transport::pci::bus::DeviceFunction;

use crate::config::TestConfig;
use crate::dma::{self, KernelBinding};
use crate::platform::PLATFORM;
use crate::println;

use super::survey::Found;
use super::{BlkBinding, BlkFaultBinding, NetABinding, NetBBinding, RngBinding};
use ccdma_qemu_common::attach::Reason;

pub(super) fn print_summary(config: &TestConfig, found: &Found) {
    fn device_line<B: KernelBinding>(function: Option<DeviceFunction>) {
        let (Some(function), Some(device)) = (function, B::slot().get()) else {
            return;
        };
        let stats = B::stats();
        println!(
            "  {:<9} {function}  {:>2}-bit  {:<19} to device {:>8}, from device {:>8}, {:>4} maps, bus {}, refused {}",
            B::NAME,
            device.config().dma_mask.bits(),
            device.path().name(),
            Bytes(stats.bytes_to_device.load(Ordering::Relaxed)).to_padded(),
            Bytes(stats.bytes_from_device.load(Ordering::Relaxed)).to_padded(),
            stats.maps.load(Ordering::Relaxed),
            BusRanges(stats.bus_ranges()),
            stats.refused.load(Ordering::Relaxed),
        );
        println!("  {:<9} why: {}", "", Reason::<B>::of(device));
    }
    println!("--- ccdma report: configuration {} ---", config.name);
    println!("IOMMU: {}", config.iommu.name());
    println!("devices managed by ccdma (path chosen at attach and why; bytes through the bounce pools):");
    device_line::<BlkBinding>(found.blk);
    device_line::<BlkFaultBinding>(found.blk_fault);
    device_line::<RngBinding>(found.rng);
    device_line::<NetABinding>(found.net_a);
    device_line::<NetBBinding>(found.net_b);
    if let Some(function) = found.bench {
        println!("  {:<9} {function}  baseline outside ccdma and the IOMMU (benchmark only)", "bench-blk");
    }
    bus_map::print_header();
    bus_map::print_device::<BlkBinding>();
    bus_map::print_device::<BlkFaultBinding>();
    bus_map::print_device::<RngBinding>();
    bus_map::print_device::<NetABinding>();
    bus_map::print_device::<NetBBinding>();
    let Ok(layer) = dma::layer() else {
        return println!("ccdma: no layer (dma::init did not build it)");
    };
    println!("{}", LayerTotals(&layer.stats()));
    let l = PLATFORM.ledger().stats();
    println!(
        "ledger: {} pages shared now, {} share and {} unshare calls, {} violations",
        l.shared_pages, l.share_calls, l.unshare_calls, l.violations
    );
    if !config.iommu.present() {
        println!("IOMMU: none; faults caught: none possible");
        return;
    }
    let i = layer.iommu_stats();
    println!(
        "ccdma IOMMU (native virtio-iommu backend): {} range maps, {} range unmaps, {} DDW created; {} pages mapped, {} unmapped, {} live; {} strict maps",
        i.native_maps, i.native_unmaps, i.ddw_create, i.entries_written, i.entries_cleared, i.live_tces, i.strict_maps
    );
    let c = PLATFORM.iommu().counters();
    println!(
        "virtio-iommu requests made: {} ATTACH, {} MAP, {} UNMAP ({} failed, {} refused by the ledger check)",
        c.attach, c.map, c.unmap, c.failed, c.refused
    );
    println!("faults caught: {}", c.faults);
    // The last few; QEMU reports a blocked access once per piece it tried, so they repeat.
    let shown = c.faults.saturating_sub(4);
    for fault in PLATFORM.iommu().faults_since(shown).into_iter().flatten() {
        println!("  {fault}");
    }
}

/// A device's bus ranges for reports: one per half of the address space (a default window below
/// 4 GiB, a dynamic window or 64-bit pool above), never one span across both.
struct BusRanges([Option<(u64, u64)>; 2]);

impl fmt::Display for BusRanges {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let mut sep = "";
        for ((low, high), label) in
            self.0.iter().zip(["below 4 GiB", "above 4 GiB"]).filter_map(|(r, l)| Some(((*r)?, l)))
        {
            write!(f, "{sep}{low:#x}..={high:#x} ({label})")?;
            sep = ", ";
        }
        if sep.is_empty() {
            write!(f, "(none)")?;
        }
        Ok(())
    }
}
