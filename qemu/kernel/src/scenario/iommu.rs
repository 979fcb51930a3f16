//! The checks only a virtio-iommu makes possible: what the device windows hold, no fault during
//! normal I/O, a private buffer kept out of reach (containment), a to-device mapping the device
//! writes (direction); and the helpers that wait for and drain fault reports.

use ccdma_qemu_common::checks::DISK_SIGNATURE;
use core::fmt;
use core::sync::atomic::Ordering;
use core::time::Duration;

use crate::blk::{self, BlkIoError, BlkRequest};
use crate::config::IommuMode;
use crate::dma::{self, KernelBinding};
use crate::pci::RequesterId;
use crate::platform::PLATFORM;
use crate::report::Report;
use crate::virtio_iommu::FaultReason;
use crate::{memory, patterns, println, time};

use super::{BlkBinding, BlkFaultBinding, FaultBlk, NetABinding, NetBBinding, RngBinding};

/// How long to wait for a fault report after provoking one.
const FAULT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a blocked request gets to (wrongly) complete.
pub(super) const BLOCKED_REQUEST_GRACE: Duration = Duration::from_millis(200);

/// Every live mapping of every managed device's windows lies in a pool or a coherent
/// buffer, and the ledger says it is shared: nothing else is reachable through the IOMMU.
pub(super) fn check_windows(report: &mut Report) {
    fn one<B: KernelBinding>(totals: &mut (u64, u64, u64)) {
        let Some(device) = B::slot().get() else {
            return;
        };
        let id = device.config().id;
        let Ok(layer) = dma::layer() else {
            return;
        };
        let pools: [(u64, u64); 2] = core::array::from_fn(|i| {
            layer.pool(i).map_or((0, 0), |(pool, _)| (pool.phys().0, pool.phys().0 + pool.len() as u64))
        });
        let coherent = dma::coherent_area();
        PLATFORM.iommu().for_each_entry(id, |_bus, len, real, _perms| {
            totals.0 += 1;
            let inside = |(start, end): (u64, u64)| real >= start && real + len <= end;
            if !(pools.iter().any(|&range| inside(range)) || inside((coherent.start, coherent.end))) {
                totals.1 += 1;
            }
            if PLATFORM.ledger().all_shared(real, len).is_err() {
                totals.2 += 1;
            }
        });
    }
    let mut totals = (0, 0, 0);
    one::<BlkBinding>(&mut totals);
    one::<BlkFaultBinding>(&mut totals);
    one::<RngBinding>(&mut totals);
    one::<NetABinding>(&mut totals);
    one::<NetBBinding>(&mut totals);
    let (mappings, outside, private) = totals;
    report.expect(
        "iommu.windows",
        mappings > 0 && outside == 0 && private == 0,
        format_args!(
            "{mappings} live mappings (virtio-iommu MAP ranges) over all device windows: {outside} outside the pools and coherent buffers, {private} on private pages"
        ),
    );
}

/// No fault was reported while every device did its I/O through ccdma.
pub(super) fn check_no_stray_faults(report: &mut Report) {
    let faults = PLATFORM.iommu().poll_faults();
    report.expect(
        "iommu.no_stray_faults",
        faults == 0,
        format_args!("{faults} fault reports after all I/O through ccdma"),
    );
}

/// A read whose data buffer is private memory outside the pool (handed to the device unmapped, as
/// a driver bug would) must be stopped by the IOMMU: mapping faults from the device's endpoint at
/// that buffer on the event queue, the private bytes unchanged, and the kernel back in control
/// within a bounded wait. QEMU drops the blocked writes and may still complete the request with
/// a success status, so completion proves nothing either way; it is reported, not relied on.
pub(super) fn check_containment(report: &mut Report, blk: &mut FaultBlk, endpoint: RequesterId) {
    const NAME: &str = "iommu.containment";
    const LEN: usize = 4096;
    const SEED: u64 = 0xc0ff_ee00;
    let Some(buffer) = memory::leak_bytes(LEN, 4096) else {
        return report.fail(NAME, "no memory for the buffer");
    };
    patterns::fill(buffer, SEED);
    let private = buffer.as_ptr();
    let private_phys = memory::phys_of(private);
    let request = match BlkRequest::with_buffer(buffer) {
        Ok(request) => request,
        Err(error) => return report.fail(NAME, error),
    };
    drain_faults();
    let faults_before = PLATFORM.iommu().counters().faults;
    let stats = BlkFaultBinding::stats();
    stats.passthrough_len.store(LEN, Ordering::Relaxed);
    let submitted = blk::start_read(blk, request, 0);
    stats.passthrough_len.store(0, Ordering::Relaxed);
    let in_flight = match submitted {
        Ok(in_flight) => in_flight,
        Err(error) => return report.fail(NAME, error),
    };
    let endpoint_id = u32::from(endpoint.0);
    let at_buffer = |fault: &crate::virtio_iommu::Fault| {
        fault.endpoint.0 == endpoint_id
            && fault.reason == FaultReason::Mapping
            && fault
                .address
                .is_some_and(|address| (private_phys..private_phys + LEN as u64).contains(&address))
    };
    let reported = wait_for_fault(faults_before, at_buffer);
    let completion = match in_flight.finish(blk, BLOCKED_REQUEST_GRACE) {
        Ok(_) => "completed with a success status (the data never arrived)",
        Err(BlkIoError::Timeout) => "never completed (bounded wait expired)",
        Err(_) => "completed with an error",
    };
    // SAFETY: the buffer is leaked and its request is over (completed, or abandoned to a device
    // that can no longer reach it): nothing writes it any more. Reading it is the point: it must
    // be unchanged.
    let now = unsafe { core::slice::from_raw_parts(private, LEN) };
    let unchanged = patterns::first_difference_from(now, SEED).is_none();
    drain_faults();
    let fault =
        PLATFORM.iommu().faults_since(faults_before).into_iter().flatten().find(|fault| at_buffer(fault));
    let faults = PLATFORM.iommu().counters().faults - faults_before;
    let Some(fault) = fault else {
        return report.fail(
            NAME,
            format_args!(
                "no fault report from endpoint {endpoint} at the private buffer; request {completion}; private bytes unchanged: {unchanged}"
            ),
        );
    };
    report.expect(
        NAME,
        reported && unchanged,
        format_args!(
            "read into private {private_phys:#x} (outside the pool, unmapped): {} ({faults} report(s)); private bytes unchanged: {unchanged}; request {completion}",
            FaultNote(fault)
        ),
    );
}

/// How long without a new fault report counts as "the device has stopped reporting".
const FAULT_QUIET: Duration = Duration::from_millis(20);

/// Takes fault reports off the event queue until none has come for [`FAULT_QUIET`] (bounded by
/// [`FAULT_TIMEOUT`]), so one check's reports neither fill the queue for the next (QEMU drops
/// reports while no event buffer is posted) nor get counted by it.
pub(super) fn drain_faults() {
    let mut deadline = time::Deadline::after(FAULT_TIMEOUT);
    let mut quiet = time::Deadline::after(FAULT_QUIET);
    loop {
        if PLATFORM.iommu().poll_faults() > 0 {
            quiet = time::Deadline::after(FAULT_QUIET);
        } else if quiet.expired() || deadline.expired() {
            return;
        }
        core::hint::spin_loop();
    }
}

/// Waits, bounded, until a fault report numbered `since` or later satisfies `wanted`.
pub(super) fn wait_for_fault(since: u64, wanted: impl Fn(&crate::virtio_iommu::Fault) -> bool) -> bool {
    time::poll_until(FAULT_TIMEOUT, || {
        drain_faults();
        PLATFORM.iommu().faults_since(since).iter().flatten().any(&wanted).then_some(())
    })
    .is_some()
}

/// The data buffer of a read is mapped to-device (a driver that gets the direction wrong), so
/// the device may only read it. Strict: the entry is read-only and the device's write faults.
/// Premapped: the pools are mapped read/write once, so the write lands in the bounce slot (shared
/// memory, by design), and nothing comes back into the buffer because a to-device mapping is
/// never copied back. Either way the private buffer is unchanged.
pub(super) fn check_direction(
    report: &mut Report,
    blk: &mut FaultBlk,
    endpoint: RequesterId,
    mode: IommuMode,
) {
    const NAME: &str = "iommu.direction";
    const LEN: usize = 2048;
    const SEED: u64 = 0xd1ec_7000;
    let Some(buffer) = memory::leak_bytes(LEN, 8) else {
        return report.fail(NAME, "no memory for the buffer");
    };
    patterns::fill(buffer, SEED);
    let private = buffer.as_ptr();
    let request = match BlkRequest::with_buffer(buffer) {
        Ok(request) => request,
        Err(error) => return report.fail(NAME, error),
    };
    let stats = BlkFaultBinding::stats();
    drain_faults();
    let faults_before = PLATFORM.iommu().counters().faults;
    stats.to_device_len.store(LEN, Ordering::Relaxed);
    let submitted = blk::start_read(blk, request, 0);
    stats.to_device_len.store(0, Ordering::Relaxed);
    let bus = stats.to_device_given.load(Ordering::Relaxed);
    let in_flight = match submitted {
        Ok(in_flight) => in_flight,
        Err(error) => return report.fail(NAME, error),
    };
    let slot = PLATFORM.iommu().translate(u32::from(endpoint.0), bus).flatten();
    let strict = mode == IommuMode::Strict;
    let at_mapping = |fault: &crate::virtio_iommu::Fault| {
        fault.endpoint.0 == u32::from(endpoint.0)
            && fault.address.is_some_and(|address| (bus..bus + LEN as u64).contains(&address))
    };
    let fault_at_slot = strict && wait_for_fault(faults_before, at_mapping);
    let completion = match in_flight.finish(blk, BLOCKED_REQUEST_GRACE) {
        Ok(_) => "completed",
        Err(BlkIoError::Timeout) => "never completed (bounded wait expired)",
        Err(_) => "completed with an error",
    };
    drain_faults();
    let faults = PLATFORM.iommu().counters().faults - faults_before;
    // SAFETY: the buffer is leaked and its request is over (completed or abandoned): nothing
    // writes it any more.
    let now = unsafe { core::slice::from_raw_parts(private, LEN) };
    let unchanged = patterns::first_difference_from(now, SEED).is_none();
    // Premapped: the slot (shared pool memory, freed but not reused yet) holds what the device
    // wrote: the runner's signature at the start of the containment disk.
    let slot_written = slot.and_then(|phys| memory::ptr_of(phys, DISK_SIGNATURE.len())).is_some_and(|ptr| {
        // SAFETY: pool memory, identity-mapped, not in use by any mapping now (single CPU).
        unsafe { core::slice::from_raw_parts(ptr.as_ptr(), DISK_SIGNATURE.len()) == DISK_SIGNATURE }
    });
    let ok = unchanged && if strict { faults > 0 && fault_at_slot } else { faults == 0 && slot_written };
    report.expect(
        NAME,
        ok,
        format_args!(
            "read into a buffer mapped to-device at bus {bus:#x}: {}; request {completion}; private buffer unchanged: {unchanged}",
            if strict {
                "read-only entry, the device's write faulted"
            } else if slot_written {
                "pools are read/write when premapped: the write landed in the bounce slot only"
            } else {
                "no fault, and the slot does not hold the device's data"
            }
        ),
    );
    if strict && !fault_at_slot {
        println!("  ({faults} fault(s), none at the mapping)");
    }
}

struct FaultNote(crate::virtio_iommu::Fault);

impl fmt::Display for FaultNote {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}
