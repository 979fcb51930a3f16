//! The phase-1 checks (configuration `iommu`), kept until ccdma's IOMMU path replaces them.
//!
//! Phase 1 uses [`BounceHal`] as a stand-in for ccdma: a bounce area in `.bss`, mapped into the
//! virtio-blk's IOMMU domain at an IOVA different from its physical address. Nothing else is
//! mapped, so a buffer handed to the device without bouncing must fault.

use core::ops::Range;
use core::time::Duration;
use virtio_drivers::device::blk::{VirtIOBlk, SECTOR_SIZE};
use virtio_drivers::transport::pci::bus::DeviceFunction;
use virtio_drivers::transport::pci::PciTransport;

use crate::blk::{self, BlkIoError, BlkRequest};
use crate::config::TestConfig;
use crate::hal::{BounceHal, DirectHal};
use crate::memory;
use crate::pci::{PciBus, RequesterId, VIRTIO_BLK_MODERN, VIRTIO_IOMMU, VIRTIO_VENDOR};
use crate::report::Report;
use crate::scenario::{check_memory, check_timer};
use crate::start_info::StartInfo;
use crate::transport::PlatformAccessTransport;
use crate::virtio_iommu::{
    Domain, FaultReason, IommuError, Permissions, RequestKind, RequestStatus, VirtioIommu,
};

/// The IOMMU as this kernel drives it: its own DMA untranslated, over PCI.
pub type Iommu = VirtioIommu<DirectHal, PciTransport>;

/// The blk as phase 1 drives it: through the stand-in HAL.
type Blk = blk::Blk<BounceHal>;

/// IOVA of the bounce area in the blk's domain: 64 GiB, which is not RAM in any configuration,
/// so a device that bypassed translation would hit nothing instead of silently reaching the
/// same memory.
const BOUNCE_IOVA: u64 = 0x10_0000_0000;
/// IOVA for the map/unmap round trip, far from the bounce area.
const SCRATCH_IOVA: u64 = 0x20_0000_0000;
/// Domain ID no request ever creates, for the error-path check.
const UNUSED_DOMAIN: u32 = 0xdead;

/// A sector transfer should take microseconds; this only bounds a broken device.
const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// How long to wait for a fault report after provoking one.
const FAULT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a blocked request gets to (wrongly) complete.
const BLOCKED_REQUEST_GRACE: Duration = Duration::from_millis(200);

/// The runner writes this at the start of the disk image; reading it proves data comes from the
/// disk, not from stale memory.
const DISK_SIGNATURE: &[u8] = b"CCDMA-DISK-SIGNATURE";
/// Written at the start of sector [`WRITE_SECTOR`]; the runner looks for it in the image after
/// QEMU exits, which proves the write reached the disk.
const WRITE_MARKER: &[u8] = b"CCDMA-WRITE-CHECK";
const WRITE_SECTOR: usize = 1;
/// Sectors in the write/read round trip: 4 KiB, several bounce slots.
const WRITE_SECTORS: usize = 8;

/// Devices that must stay alive until the kernel exits: dropping the IOMMU resets it, which
/// deletes the blk's domain and turns bypass back on.
pub struct Machine {
    /// The virtio-iommu, if the configuration has one.
    pub iommu: Option<Iommu>,
    /// The virtio-blk, if it initialised.
    pub blk: Option<Blk>,
}

/// Runs every check for `config`.
pub fn run(report: &mut Report, start_info: &StartInfo, config: &TestConfig) -> Machine {
    check_memory(report, start_info);
    check_timer(report);

    let mut pci = PciBus::q35();
    let functions = pci.functions().count();
    for (function, info) in pci.functions() {
        log::info!("pci {function} {info}");
    }
    report.expect("pci.enumerate", functions > 0, format_args!("{functions} functions on bus 0"));

    let iommu_function = pci.find(VIRTIO_VENDOR, VIRTIO_IOMMU).next();
    report.expect(
        "pci.virtio_iommu",
        iommu_function.is_some() == config.iommu.present(),
        format_args!(
            "virtio-iommu {} (expected {})",
            present(iommu_function),
            if config.iommu.present() { "present" } else { "absent" }
        ),
    );
    let blk_function = pci.find(VIRTIO_VENDOR, VIRTIO_BLK_MODERN).next();
    report.expect(
        "pci.virtio_blk",
        blk_function.is_some(),
        format_args!("modern virtio-blk {}", present(blk_function)),
    );

    let mut machine = Machine { iommu: None, blk: None };
    let Some(blk_function) = blk_function else {
        return machine;
    };
    let blk_endpoint = RequesterId::from(blk_function);

    // Decide where the device sees the bounce area before the blk driver allocates its queues.
    let bounce = BounceHal::area_phys();
    if config.iommu.present() {
        let Some(function) = iommu_function else {
            return machine;
        };
        let Some(mut iommu) = init_iommu(report, &mut pci, function) else {
            return machine;
        };
        let domain = match iommu.attach(blk_endpoint.into()) {
            Ok(domain) => {
                report.pass(
                    "iommu.attach",
                    format_args!("blk endpoint {blk_endpoint} in domain {}", domain.id()),
                );
                domain
            }
            Err(error) => {
                report.fail("iommu.attach", error);
                machine.iommu = Some(iommu);
                return machine;
            }
        };
        let mapped = map_bounce_area(report, &mut iommu, domain, &bounce);
        check_request_errors(report, &mut iommu, domain);
        machine.iommu = Some(iommu);
        if !mapped {
            return machine;
        }
        BounceHal::set_bus_base(BOUNCE_IOVA);
    } else {
        // No translation: the device sees physical addresses.
        BounceHal::set_bus_base(bounce.start);
    }

    machine.blk = init_blk(report, &mut pci, blk_function, config);
    let Some(blk) = machine.blk.as_mut() else {
        return machine;
    };
    check_disk_signature(report, blk);
    check_write_read(report, blk);

    match machine.iommu.as_mut() {
        Some(iommu) => {
            check_no_stray_faults(report, iommu);
            check_fault_on_unmapped_buffer(report, iommu, blk, blk_endpoint);
        }
        None => report.skip("iommu.fault", "no IOMMU in this configuration"),
    }
    machine
}

fn present<T>(found: Option<T>) -> &'static str {
    if found.is_some() {
        "present"
    } else {
        "absent"
    }
}

fn init_iommu(report: &mut Report, pci: &mut PciBus, function: DeviceFunction) -> Option<Iommu> {
    let transport = match pci.virtio_transport(function) {
        Ok(transport) => transport,
        Err(error) => {
            report.fail("iommu.init", format_args!("PCI transport: {error}"));
            return None;
        }
    };
    let mut iommu = match Iommu::new(transport) {
        Ok(iommu) => iommu,
        Err(error) => {
            report.fail("iommu.init", format_args!("{error}"));
            return None;
        }
    };
    let config = *iommu.config();
    report.pass(
        "iommu.init",
        format_args!(
            "features {:#x}, page sizes {:#x}, input range {:#x}..={:#x}, domains {}..={}",
            iommu.features(),
            config.page_size_mask,
            config.input_start,
            config.input_end,
            config.domain_start,
            config.domain_end
        ),
    );
    let bounce_len = BounceHal::area_phys().end - BounceHal::area_phys().start;
    report.expect(
        "iommu.geometry",
        config.granule() <= memory::PAGE_SIZE as u64
            && config.input_start <= BOUNCE_IOVA
            && BOUNCE_IOVA + bounce_len - 1 <= config.input_end
            && config.bypass_configurable,
        format_args!(
            "granule {:#x}, bounce IOVA {BOUNCE_IOVA:#x} in range, bypass configurable: {}",
            config.granule(),
            config.bypass_configurable
        ),
    );
    let was = iommu.bypass();
    match iommu.set_bypass(false) {
        Ok(()) => report.pass(
            "iommu.bypass_off",
            format_args!("bypass was {:?}, now off: unattached endpoints fault", was),
        ),
        Err(error) => report.fail("iommu.bypass_off", format_args!("{error}")),
    }
    Some(iommu)
}

fn map_bounce_area(report: &mut Report, iommu: &mut Iommu, domain: Domain, bounce: &Range<u64>) -> bool {
    let len = bounce.end - bounce.start;
    let result = iommu.map(domain, BOUNCE_IOVA, bounce.start, len, Permissions::READ_WRITE);
    report.expect(
        "iommu.map_bounce_area",
        result.is_ok() && BOUNCE_IOVA != bounce.start,
        format_args!(
            "IOVA {BOUNCE_IOVA:#x} -> phys {:#x}, {} KiB, read/write: {:?}",
            bounce.start,
            len >> 10,
            result
        ),
    )
}

/// The driver's and the device's error paths: a MAP into a domain that does not exist must come
/// back with the device's NOENT status, a misaligned MAP must be refused before it is sent, and a
/// MAP/UNMAP round trip outside the bounce area must succeed.
fn check_request_errors(report: &mut Report, iommu: &mut Iommu, domain: Domain) {
    let phys = BounceHal::area_phys().start;
    let page = memory::PAGE_SIZE as u64;

    let missing = iommu.map(Domain::from_raw(UNUSED_DOMAIN), SCRATCH_IOVA, phys, page, Permissions::READ);
    report.expect(
        "iommu.map_unknown_domain",
        missing == Err(IommuError::Request { kind: RequestKind::Map, status: RequestStatus::NoEntry }),
        format_args!("MAP into domain {UNUSED_DOMAIN:#x}: {missing:?}"),
    );

    let misaligned = iommu.map(domain, SCRATCH_IOVA + 1, phys, page, Permissions::READ);
    report.expect(
        "iommu.map_misaligned",
        misaligned == Err(IommuError::Unaligned),
        format_args!("MAP at IOVA {:#x}: {misaligned:?}", SCRATCH_IOVA + 1),
    );

    let mapped = iommu.map(domain, SCRATCH_IOVA, phys, page, Permissions::READ);
    let unmapped = iommu.unmap(domain, SCRATCH_IOVA, page);
    report.expect(
        "iommu.map_unmap",
        mapped.is_ok() && unmapped.is_ok(),
        format_args!("one page at IOVA {SCRATCH_IOVA:#x}: map {mapped:?}, unmap {unmapped:?}"),
    );
}

fn init_blk(
    report: &mut Report,
    pci: &mut PciBus,
    function: DeviceFunction,
    config: &TestConfig,
) -> Option<Blk> {
    let transport = match pci.virtio_transport(function) {
        Ok(transport) => transport,
        Err(error) => {
            report.fail("blk.init", format_args!("PCI transport: {error}"));
            return None;
        }
    };
    let mut transport = PlatformAccessTransport::new(transport);
    let offered = transport.offers_access_platform();
    report.expect(
        "blk.access_platform",
        offered == config.iommu.present(),
        format_args!("VIRTIO_F_ACCESS_PLATFORM offered: {offered} (expected {})", config.iommu.present()),
    );
    match VirtIOBlk::new(transport) {
        Ok(blk) => {
            report.pass(
                "blk.init",
                format_args!(
                    "{} sectors; queues and buffers in the bounce area at bus {:#x}",
                    blk.capacity(),
                    BounceHal::bus_base()
                ),
            );
            Some(blk)
        }
        Err(error) => {
            report.fail("blk.init", format_args!("{error}"));
            None
        }
    }
}

fn check_disk_signature(report: &mut Report, blk: &mut Blk) {
    let result = BlkRequest::new(1).and_then(|request| blk::read(blk, request, 0, IO_TIMEOUT));
    match result {
        Ok(mut request) => {
            let found = request.data().starts_with(DISK_SIGNATURE);
            report.expect(
                "blk.read_signature",
                found,
                format_args!("sector 0 starts with the runner's signature: {found}"),
            );
        }
        Err(error) => report.fail("blk.read_signature", error),
    }
}

/// Fills sector-sized chunks with a pattern that differs per sector and per byte, starting
/// each sector with [`WRITE_MARKER`].
fn fill_pattern(data: &mut [u8]) {
    for (sector, chunk) in data.chunks_mut(SECTOR_SIZE).enumerate() {
        for (index, byte) in chunk.iter_mut().enumerate() {
            *byte = (index as u8).wrapping_mul(7).wrapping_add(sector as u8 * 31 + 1);
        }
        chunk[..WRITE_MARKER.len()].copy_from_slice(WRITE_MARKER);
    }
}

fn check_write_read(report: &mut Report, blk: &mut Blk) {
    let bounced_before = BounceHal::bounced_buffers();
    let result = (|| -> Result<bool, BlkIoError> {
        let mut request = BlkRequest::new(WRITE_SECTORS)?;
        fill_pattern(request.data());
        let mut written = blk::write(blk, request, WRITE_SECTOR, IO_TIMEOUT)?;
        let mut read_back = blk::read(blk, BlkRequest::new(WRITE_SECTORS)?, WRITE_SECTOR, IO_TIMEOUT)?;
        Ok(written.data() == read_back.data())
    })();
    let bounced = BounceHal::bounced_buffers() - bounced_before;
    match result {
        Ok(same) => {
            report.expect(
                "blk.write_read",
                same && bounced >= 6,
                format_args!(
                    "{} bytes at sector {WRITE_SECTOR} written and read back {}, {bounced} buffers bounced, {} bytes of bounce area in use",
                    WRITE_SECTORS * SECTOR_SIZE,
                    if same { "identical" } else { "DIFFERENT" },
                    BounceHal::bytes_in_use()
                ),
            );
        }
        Err(error) => report.fail("blk.write_read", error),
    }
}

fn check_no_stray_faults(report: &mut Report, iommu: &mut Iommu) {
    match iommu.poll_fault() {
        Ok(None) => report.pass("iommu.no_stray_faults", "no fault reported during bounced I/O"),
        Ok(Some(fault)) => report.fail("iommu.no_stray_faults", fault),
        Err(error) => report.fail("iommu.no_stray_faults", error),
    }
}

/// Hands the device a request whose buffers are private memory (not bounced, so their physical
/// addresses, which the domain does not map). The request must not complete, and the IOMMU must
/// report a mapping fault from the blk's endpoint at one of those addresses. The blk device is
/// unusable afterwards (QEMU marks it broken), so this runs last.
fn check_fault_on_unmapped_buffer(
    report: &mut Report,
    iommu: &mut Iommu,
    blk: &mut Blk,
    endpoint: RequesterId,
) {
    const NAME: &str = "iommu.fault_on_unmapped_buffer";
    let request = match BlkRequest::new(1) {
        Ok(request) => request,
        Err(error) => return report.fail(NAME, error),
    };
    BounceHal::set_passthrough(true);
    let submitted = blk::start_read(blk, request, 0);
    BounceHal::set_passthrough(false);
    let in_flight = match submitted {
        Ok(in_flight) => in_flight,
        Err(error) => return report.fail(NAME, error),
    };
    let private = in_flight.phys_ranges();
    let fault = iommu.wait_fault(FAULT_TIMEOUT);
    let completion = in_flight.finish(blk, BLOCKED_REQUEST_GRACE);

    let fault = match fault {
        Ok(Some(fault)) => fault,
        Ok(None) => return report.fail(NAME, "no fault reported before the deadline"),
        Err(error) => return report.fail(NAME, error),
    };
    let page = memory::PAGE_SIZE as u64;
    let in_private_buffer = fault.address.is_some_and(|address| {
        private.iter().any(|range| (range.start & !(page - 1)..range.end).contains(&address))
    });
    let blocked = matches!(completion, Err(BlkIoError::Timeout));
    let mut extra = 0;
    while let Ok(Some(_)) = iommu.poll_fault() {
        extra += 1;
    }
    report.expect(
        NAME,
        fault.reason == FaultReason::Mapping
            && fault.endpoint.0 == u32::from(endpoint.0)
            && in_private_buffer
            && blocked,
        format_args!(
            "{fault}; in the request's private buffers: {in_private_buffer}; request blocked: {blocked}; {extra} more fault(s)"
        ),
    );
}
