//! The page ledger: told the RAM at the start, and at the end in agreement with ccdma (no
//! violation, no page shared that ccdma does not account for, no mapping leaked).

use core::fmt;

use crate::dma;
use crate::platform::PLATFORM;
use crate::report::Report;
use crate::start_info::StartInfo;

use super::Machine;

/// Tells the ledger which memory is RAM (at most the first 8 ranges).
pub(super) fn set_ram(start_info: &StartInfo) {
    let mut ram = [const { 0..0 }; 8];
    for (range, r) in ram.iter_mut().zip(start_info.ram()) {
        *range = r.start..r.end;
    }
    PLATFORM.ledger().set_ram(&ram[..start_info.ram().len().min(8)]);
}

/// The ledger agrees with ccdma: no violation, every shared page accounted for, and no device
/// was ever given an address outside shared memory.
pub(super) fn check_ledger(report: &mut Report, devices: &Machine, expected_failures: u64) {
    let ledger = PLATFORM.ledger().stats();
    let layer = match dma::layer() {
        Ok(layer) => layer,
        Err(error) => return report.fail("ledger.consistent", error),
    };
    let coherent = layer.iommu_stats().coherent_pages;
    let layer = layer.stats();
    report.expect(
        "ledger.consistent",
        ledger.violations == 0 && ledger.shared_pages == layer.shared_pages,
        format_args!(
            "{} pages shared = {} ccdma says it shares (pools and {coherent} pages of queues); {} share / {} unshare calls; {} violations{}",
            ledger.shared_pages,
            layer.shared_pages,
            ledger.share_calls,
            ledger.unshare_calls,
            ledger.violations,
            ViolationNote(PLATFORM.ledger().first_violation())
        ),
    );
    // Receive buffers posted on the NICs are live mappings; everything else was unmapped.
    let posted = [devices.net_a.is_some(), devices.net_b.is_some()].iter().filter(|&&up| up).count() as u64
        * crate::net::RX_BUFFERS as u64;
    report.expect(
        "ccdma.no_leaks",
        layer.maps - layer.unmaps == posted && layer.total_failures() == expected_failures,
        format_args!(
            "{} maps, {} unmaps, {posted} receive buffers still posted; {} failures ({expected_failures} provoked on purpose)",
            layer.maps,
            layer.unmaps,
            layer.total_failures()
        ),
    );
}

struct ViolationNote(Option<crate::ledger::Violation>);

impl fmt::Display for ViolationNote {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self.0 {
            Some(violation) => write!(f, " (first: {violation})"),
            None => Ok(()),
        }
    }
}
