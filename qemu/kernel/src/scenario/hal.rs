//! The HAL's refused share: with the pools full, the device is given an address it cannot reach,
//! faults there at the IOMMU, and nothing else happens.

use core::sync::atomic::Ordering;

use crate::blk::{self, BlkIoError, BlkRequest};
use crate::dma::{self, KernelBinding};
use crate::pci::RequesterId;
use crate::platform::PLATFORM;
use crate::report::Report;
use crate::{memory, patterns};

use super::iommu::{drain_faults, wait_for_fault, BLOCKED_REQUEST_GRACE};
use super::{BlkFaultBinding, FaultBlk};

/// The filler mappings of [`check_refused_share`].
static HELD: spin::Mutex<[(ccdma::BusAddr, usize); 512]> = spin::Mutex::new([(ccdma::BusAddr(0), 0); 512]);

/// With every pool slot the device can reach taken, `share` is refused: the device is given the
/// unreachable bus address, its access faults at the IOMMU, the buffer stays as it was and the
/// kernel goes on. Returns the failures the check provoked on purpose (for the leak check).
pub(super) fn check_refused_share(report: &mut Report, blk: &mut FaultBlk, endpoint: RequesterId) -> u64 {
    const NAME: &str = "hal.refused_share";
    const LEN: usize = 4096;
    const SEED: u64 = 0x0ff1_0ad0;
    let layer = match dma::layer() {
        Ok(layer) => layer,
        Err(error) => {
            report.fail(NAME, error);
            return 0;
        }
    };
    let failures_before = layer.stats().total_failures();
    let Some(device) = BlkFaultBinding::slot().get() else {
        report.fail(NAME, "no containment blk");
        return 0;
    };
    let (Some(filler), Some(buffer)) = (memory::leak_bytes(256 << 10, 4096), memory::leak_bytes(LEN, 4096))
    else {
        report.fail(NAME, "no memory for buffers");
        return 0;
    };
    // Take every slot the device reaches: runs of 256 KiB, then smaller ones down to one slot.
    // The filler mappings live in a static, not in this frame (8 KiB).
    let mut held = HELD.lock();
    let mut count = 0;
    let mut size = 256 << 10;
    while size >= 2048 && count < held.len() {
        let attrs = ccdma::DmaAttrs::SKIP_CPU_SYNC | ccdma::DmaAttrs::NO_WARN;
        // SAFETY: `filler` is leaked and only ever read through these to-device mappings (and
        // SKIP_CPU_SYNC copies nothing); they are all unmapped below.
        match unsafe {
            layer.map_ptr(device, filler.as_mut_ptr(), size, ccdma::DmaDirection::ToDevice, attrs)
        } {
            Ok(bus) => {
                held[count] = (bus, size);
                count += 1;
            }
            Err(_) => size /= 2,
        }
    }
    let slots_full = layer.stats().slots_in_use;
    patterns::fill(buffer, SEED);
    let private = buffer.as_ptr();
    let refused_before = BlkFaultBinding::stats().refused.load(Ordering::Relaxed);
    drain_faults();
    let faults_before = PLATFORM.iommu().counters().faults;
    let unreachable = dma::UNREACHABLE_BUS.0..dma::UNREACHABLE_BUS.0 + LEN as u64;
    let at_unreachable = |fault: &crate::virtio_iommu::Fault| {
        fault.endpoint.0 == u32::from(endpoint.0) && fault.address.is_some_and(|a| unreachable.contains(&a))
    };
    let mut reported = false;
    let outcome = match BlkRequest::with_buffer(buffer) {
        Ok(request) => match blk::start_read(blk, request, 0) {
            Ok(in_flight) => {
                reported = wait_for_fault(faults_before, at_unreachable);
                match in_flight.finish(blk, BLOCKED_REQUEST_GRACE) {
                    Ok(_) => "completed",
                    Err(BlkIoError::Timeout) => "never completed (bounded wait expired)",
                    Err(_) => "completed with an error",
                }
            }
            Err(_) => "refused by virtio-drivers",
        },
        Err(_) => "not built",
    };
    drain_faults();
    for &(bus, size) in &held[..count] {
        let attrs = ccdma::DmaAttrs::SKIP_CPU_SYNC;
        // SAFETY: each filler mapping was made above by this function, on this device, and is unmapped
        // once; the leaked filler stays valid.
        let unmapped = unsafe { layer.unmap(device, bus, size, ccdma::DmaDirection::ToDevice, attrs) };
        if let Err(error) = unmapped {
            report.fail(NAME, format_args!("unmapping a filler at {bus}: {error}"));
        }
    }
    let refused = BlkFaultBinding::stats().refused.load(Ordering::Relaxed) - refused_before;
    let faults = PLATFORM.iommu().counters().faults - faults_before;
    // SAFETY: the buffer is leaked and its request is over: nothing writes it any more.
    let now = unsafe { core::slice::from_raw_parts(private, LEN) };
    let unchanged = patterns::first_difference_from(now, SEED).is_none();
    report.expect(
        NAME,
        refused > 0 && reported && unchanged,
        format_args!(
            "{count} filler mappings took every slot ({slots_full} in use); {refused} request buffer(s) refused and given bus {}; {faults} fault(s) at it; buffer unchanged: {unchanged}; request {outcome}",
            dma::UNREACHABLE_BUS
        ),
    );
    layer.stats().total_failures() - failures_before
}
