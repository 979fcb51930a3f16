//! Opening the devices: each managed device attached to the layer with its mask (the path ccdma
//! chose, and why) and its driver started; the benchmark blk opened outside ccdma and the IOMMU.

use ccdma::{DeviceConfig, DmaMask, DmaPath};
use ccdma_qemu_common::attach::{attach_checked, init_checked};
use core::fmt;
use virtio_drivers::transport::pci::bus::DeviceFunction;

use crate::blk::Blk;
use crate::config::{IommuMode, TestConfig};
use crate::dma::KernelBinding;
use crate::net::Nic;
use crate::pci::{PciBus, RequesterId};
use crate::platform::PLATFORM;
use crate::report::Report;
use crate::rng::VirtioRng;
use crate::transport::{self, PlatformAccessTransport};

use super::survey::Found;
use super::{
    BenchBlk, BlkBinding, BlkFaultBinding, Machine, NetABinding, NetBBinding, RngBinding, Transport,
};

/// Opens every device found: the managed ones attached to the layer, the benchmark blk outside it.
pub(super) fn open_devices(
    report: &mut Report,
    pci: &mut PciBus,
    found: &Found,
    config: &TestConfig,
    devices: &mut Machine,
) {
    let mask32 = DmaMask::BITS_32;
    let mask64 = DmaMask::BITS_64;
    if let Some(function) = found.blk {
        devices.blk =
            open_managed::<BlkBinding, _, _>(report, pci, function, config.iommu, mask64, Blk::open);
    }
    if let Some(function) = found.blk_fault {
        devices.blk_fault =
            open_managed::<BlkFaultBinding, _, _>(report, pci, function, config.iommu, mask64, Blk::open);
    }
    if let Some(function) = found.rng {
        devices.rng =
            open_managed::<RngBinding, _, _>(report, pci, function, config.iommu, mask32, VirtioRng::new);
    }
    if let Some(function) = found.net_a {
        devices.net_a =
            open_managed::<NetABinding, _, _>(report, pci, function, config.iommu, mask32, Nic::open);
    }
    if let Some(function) = found.net_b {
        devices.net_b =
            open_managed::<NetBBinding, _, _>(report, pci, function, config.iommu, mask64, Nic::open);
    }
    if let Some(function) = found.bench {
        devices.bench = open_bench(report, pci, function);
    }
}

/// Opens the transport of a managed device, attaches it to the layer with `mask` and creates its
/// driver with `init`. Reports the path ccdma chose.
// Not inlined: each device's driver value (up to 2.6 KiB, a NIC) stays in this function's own frame
// instead of adding up in the caller's (scripts/kernel-budgets.sh).
#[inline(never)]
fn open_managed<B, D, E>(
    report: &mut Report,
    pci: &mut PciBus,
    function: DeviceFunction,
    mode: IommuMode,
    mask: DmaMask,
    init: impl FnOnce(Transport) -> Result<D, E>,
) -> Option<D>
where
    B: KernelBinding,
    E: fmt::Display,
{
    let transport = transport::managed(report, B::NAME, pci.managed_transport(function))?;
    let id = u32::from(RequesterId::from(function).0);
    let domain = if PLATFORM.iommu().present() {
        match PLATFORM.iommu().register(id) {
            Ok(domain) => Some(domain),
            Err(error) => {
                report.fail(format_args!("{}.attach", B::NAME), format_args!("IOMMU domain: {error}"));
                return None;
            }
        }
    } else {
        None
    };
    let expected = expected_path(mode, mask);
    let what = format_args!("{function}, {mask} mask{}", DomainNote(domain));
    attach_checked::<B>(report, DeviceConfig::new(id, mask), expected, what)?;
    init_checked::<B, D, E>(report, init(transport))
}

/// The path ccdma must choose for a device with `mask` in this configuration (DESIGN.md section
/// 6): bounce everything without IOMMU; behind it, a dynamic window for 64-bit devices and the
/// default window below the mask for the others (premapped), or entries per mapping (strict).
fn expected_path(mode: IommuMode, mask: DmaMask) -> DmaPath {
    match mode {
        IommuMode::None => DmaPath::BounceAlways,
        IommuMode::Strict => DmaPath::IommuStrict,
        IommuMode::Premapped if mask.bits() == 64 => DmaPath::IommuDdw,
        IommuMode::Premapped => DmaPath::IommuPremapped,
    }
}

/// ", domain N" when the device has a virtio-iommu domain.
struct DomainNote(Option<u32>);

impl fmt::Display for DomainNote {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self.0 {
            Some(domain) => write!(f, ", virtio-iommu domain {domain}"),
            None => Ok(()),
        }
    }
}

// Not inlined: each device's driver value (up to 2.6 KiB, a NIC) stays in this function's own frame
// instead of adding up in the caller's (scripts/kernel-budgets.sh).
#[inline(never)]
fn open_bench(report: &mut Report, pci: &mut PciBus, function: DeviceFunction) -> Option<BenchBlk> {
    let transport = match pci.managed_transport(function) {
        Ok(transport) => PlatformAccessTransport::new(transport),
        Err(error) => {
            report.fail("bench-blk.init", format_args!("PCI transport: {error}"));
            return None;
        }
    };
    match Blk::open(transport) {
        Ok(blk) => {
            report.pass(
                "bench-blk.init",
                format_args!("{function}: outside the IOMMU, buffers used in place (baseline, not ccdma)"),
            );
            Some(blk)
        }
        Err(error) => {
            report.fail("bench-blk.init", error);
            None
        }
    }
}
