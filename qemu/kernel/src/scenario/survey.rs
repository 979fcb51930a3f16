//! The PCI survey: each role found at its slot as the configuration promised, and the
//! virtio-iommu brought up (features, geometry, bypass off, its error paths) and installed.

use virtio_drivers::transport::pci::bus::DeviceFunction;

use crate::config::{slot, TestConfig};
use crate::iommu::{Driver, DDW_START, DEFAULT_WINDOW_SIZE, DEFAULT_WINDOW_START};
use crate::pci::{self, PciBus, VIRTIO_VENDOR};
use crate::platform::PLATFORM;
use crate::report::Report;
use crate::virtio_iommu::{Domain, IommuError, Permissions, RequestKind, RequestStatus};
use crate::{memory, println};

/// Domain ID no request ever creates, for the driver's error-path check.
const UNUSED_DOMAIN: u32 = 0xdead;

/// The PCI functions of each role, where present.
#[derive(Default)]
pub(super) struct Found {
    pub(super) iommu: Option<DeviceFunction>,
    pub(super) blk: Option<DeviceFunction>,
    pub(super) blk_fault: Option<DeviceFunction>,
    pub(super) rng: Option<DeviceFunction>,
    pub(super) net_a: Option<DeviceFunction>,
    pub(super) net_b: Option<DeviceFunction>,
    pub(super) bench: Option<DeviceFunction>,
}

/// Lists bus 0 and finds each role at its slot, checking the device there is what the
/// configuration promised.
pub(super) fn survey(report: &mut Report, pci: &PciBus, config: &TestConfig) -> Found {
    println!("devices on PCI bus 0:");
    for (function, info) in pci.functions() {
        if info.vendor_id == VIRTIO_VENDOR {
            println!(
                "  {function} {} ({:04x}:{:04x})",
                pci::virtio_name(info.device_id),
                info.vendor_id,
                info.device_id
            );
        }
    }
    let mut found = Found::default();
    let roles: [(&str, u8, u16, bool, &mut Option<DeviceFunction>); 7] = [
        ("virtio-iommu", slot::IOMMU, pci::VIRTIO_IOMMU, config.iommu.present(), &mut found.iommu),
        ("blk", slot::BLK, pci::VIRTIO_BLK_MODERN, true, &mut found.blk),
        ("blk-fault", slot::BLK_FAULT, pci::VIRTIO_BLK_MODERN, config.iommu.present(), &mut found.blk_fault),
        ("rng", slot::RNG, pci::VIRTIO_RNG_MODERN, true, &mut found.rng),
        ("net-a", slot::NET_A, pci::VIRTIO_NET_MODERN, true, &mut found.net_a),
        ("net-b", slot::NET_B, pci::VIRTIO_NET_MODERN, true, &mut found.net_b),
        ("bench-blk", slot::BLK_BENCH, pci::VIRTIO_BLK_MODERN, config.bench, &mut found.bench),
    ];
    let mut missing = 0;
    let mut present = 0;
    for (name, slot, device_id, expected, out) in roles {
        let at = pci
            .at_slot(slot)
            .filter(|(_, info)| info.vendor_id == VIRTIO_VENDOR && info.device_id == device_id);
        match (at, expected) {
            (Some((function, _)), true) => {
                present += 1;
                *out = Some(function);
            }
            (None, false) => {}
            (Some(_), false) => {
                missing += 1;
                println!("  unexpected {name} at slot {slot:#04x}");
            }
            (None, true) => {
                missing += 1;
                println!("  missing {name} at slot {slot:#04x}");
            }
        }
    }
    report.expect(
        "pci.devices",
        missing == 0,
        format_args!("{present} devices where the configuration puts them, {missing} missing or unexpected"),
    );
    found
}

/// With an IOMMU in this configuration, brings it up and installs it in the platform; without one,
/// says so. False when the configuration's IOMMU is not there to use.
pub(super) fn start_iommu(report: &mut Report, pci: &mut PciBus, found: &Found, config: &TestConfig) -> bool {
    if config.iommu.present() {
        let Some(function) = found.iommu else {
            return false;
        };
        let Some(driver) = init_iommu(report, pci, function) else {
            return false;
        };
        if PLATFORM.iommu().install(driver).is_err() {
            report.fail("iommu.install", "the platform already has an IOMMU");
            return false;
        }
    } else {
        report.skip("iommu", "no IOMMU in this configuration: containment is the hardware's job (TDX)");
    }
    true
}

/// Brings the virtio-iommu up: features, geometry, bypass off (unattached endpoints fault from
/// now on), and the driver's own error paths.
fn init_iommu(
    report: &mut Report,
    pci: &mut PciBus,
    function: DeviceFunction,
) -> Option<&'static mut Driver> {
    let transport = match pci.virtio_transport(function) {
        Ok(transport) => transport,
        Err(error) => {
            report.fail("iommu.init", format_args!("PCI transport: {error}"));
            return None;
        }
    };
    let Some(space) = crate::iommu::driver_space() else {
        report.fail("iommu.init", "the driver's memory is taken: the IOMMU was brought up before");
        return None;
    };
    let iommu = match Driver::init_in(space, transport) {
        Ok(iommu) => iommu,
        Err(error) => {
            report.fail("iommu.init", format_args!("{error}"));
            return None;
        }
    };
    let config = *iommu.config();
    let fits = config.granule() <= memory::PAGE_SIZE as u64
        && config.input_start <= DEFAULT_WINDOW_START
        && DDW_START.checked_add(1 << 40).is_some_and(|end| end - 1 <= config.input_end)
        && config.bypass_configurable;
    report.expect(
        "iommu.init",
        fits,
        format_args!(
            "features {:#x}, page sizes {:#x}, input range {:#x}..={:#x}, domains {}..={}; windows at {DEFAULT_WINDOW_START:#x} ({} MiB) and {DDW_START:#x} fit: {fits}",
            iommu.features(),
            config.page_size_mask,
            config.input_start,
            config.input_end,
            config.domain_start,
            config.domain_end,
            DEFAULT_WINDOW_SIZE >> 20
        ),
    );
    let was = iommu.bypass();
    match iommu.set_bypass(false) {
        Ok(()) => report.pass(
            "iommu.bypass_off",
            format_args!("bypass was {was:?}, now off: endpoints in no domain fault"),
        ),
        Err(error) => report.fail("iommu.bypass_off", error),
    }
    let page = memory::PAGE_SIZE as u64;
    let missing =
        iommu.map(Domain::from_raw(UNUSED_DOMAIN), DEFAULT_WINDOW_START, 0, page, Permissions::READ);
    let misaligned =
        iommu.map(Domain::from_raw(UNUSED_DOMAIN), DEFAULT_WINDOW_START + 1, 0, page, Permissions::READ);
    report.expect(
        "iommu.request_errors",
        missing == Err(IommuError::Request { kind: RequestKind::Map, status: RequestStatus::NoEntry })
            && misaligned == Err(IommuError::Unaligned),
        format_args!("MAP into a domain that does not exist: {missing:?}; misaligned MAP: {misaligned:?}"),
    );
    Some(iommu)
}
