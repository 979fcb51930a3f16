//! `iommu.detach` (issue 19): the blk, on the bridge's DDW, is detached from ccdma and attached
//! again. Its driver is dropped first (no HAL call can run), the binding gives its `Device` back, and
//! `DmaLayer::detach` clears its entries and removes the DDW. The check then reads QEMU's tables:
//! the DDW's LIOBN no longer answers `H_GET_TCE`, and no entry of the blk's slice of the default
//! window is left. ccdma removed no default window here (other devices use it), so none is reset. The
//! device is then attached again (a new DDW), its driver brought up, and sector 0 read back.

use ccdma::DeviceConfig;
use ccdma_qemu_common::binding;
use ccdma_qemu_common::blk::{self as blkio, Blk, BlkRequest};
use ccdma_qemu_common::checks::{DISK_SIGNATURE, IO_TIMEOUT};
use ccdma_qemu_common::report::Report;
use ccdma_qemu_common::transport;
use ccdma_qemu_common::virtio::blk::VirtioBlk;
use ccdma_qemu_common::virtio::pci::PciTransport;

use crate::config::slot;
use crate::dma::{KernelBinding, Observed};
use crate::pci::{self, PciBus};
use crate::platform::PLATFORM;
use crate::scenario::BlkBinding;

/// Live entries (granting access) in `[start, end)` of the default window.
fn live_in(start: u64, end: u64) -> u64 {
    let tce = PLATFORM.tce_calls();
    let Some((liobn, _, _, shift)) = tce.default_geometry() else { return 0 };
    (start..end).step_by(1 << shift).filter(|&at| tce.read_entry(liobn, at).is_some_and(|e| e & 3 != 0)).count()
        as u64
}

/// Detach the blk, check what is left in QEMU's tables, attach it again and read from it.
pub fn check(report: &mut Report, pci: &mut PciBus, blk: &mut Option<Blk<Observed<BlkBinding>>>, slice: (u64, u64)) {
    let Some(device) = BlkBinding::slot().get() else { return };
    let (id, config) = (device.config().id, *device.config());
    let path = device.path();
    let ddw = PLATFORM.tce_calls().ddw();
    // The driver goes first: dropping it takes its queues back (coherent buffers freed) and no
    // HAL call of the binding can run after.
    drop(blk.take());
    // SAFETY: the blk's driver is dropped above and nothing else drives the binding.
    if let Err(error) = unsafe { binding::detach::<BlkBinding>() } {
        report.fail("iommu.detach", format_args!("blk ({}): detach refused: {error}", path.name()));
        return;
    }
    let ddw_gone = match ddw {
        Some((liobn, start, _, _)) => {
            PLATFORM.tce_calls().ddw().is_none() && PLATFORM.tce_calls().read_entry(liobn, start).is_none()
        }
        None => true,
    };
    let left = live_in(slice.0, slice.1);
    let reattached = reattach(report, pci, config);
    let (read, again) = match reattached {
        Ok(mut driver) => {
            let read = BlkRequest::new(1)
                .and_then(|request| blkio::read(&mut driver, request, 0, IO_TIMEOUT))
                .map(|mut request| request.data().starts_with(DISK_SIGNATURE));
            *blk = Some(driver);
            (read.map_err(|_| "read failed"), PLATFORM.tce_calls().ddw())
        }
        Err(error) => (Err(error), None),
    };
    let ok = ddw_gone && left == 0 && read == Ok(true) && (ddw.is_none() || again.is_some());
    report.expect(
        "iommu.detach",
        ok,
        format_args!(
            "blk {id:#x} ({}) detached: DDW {} {}, {left} entries left in its default-window slice, default \
             window kept (others use it); attached again: DDW {}, sector 0 {}",
            path.name(),
            crate::show::Hex(ddw.map(|d| d.0)),
            if ddw_gone { "removed (H_GET_TCE refused)" } else { "STILL THERE" },
            crate::show::Hex(again.map(|d| d.0)),
            match read {
                Ok(true) => "read back with the signature",
                Ok(false) => "read back WITHOUT the signature",
                Err(e) => e,
            }
        ),
    );
}

/// Attach the blk again and bring its driver up.
fn reattach(
    report: &mut Report,
    pci: &mut PciBus,
    config: DeviceConfig,
) -> Result<Blk<Observed<BlkBinding>>, &'static str> {
    let (function, _) = pci.at_slot(slot::BLK).ok_or("no blk function")?;
    if pci::config_address(function) != config.id {
        return Err("the blk moved");
    }
    binding::attach::<BlkBinding>(config).map_err(|_| "attach refused")?;
    let transport =
        transport::managed(report, "blk", PciTransport::new(pci.cam(), function)).ok_or("no transport")?;
    VirtioBlk::new(transport).map_err(|_| "driver did not come up")
}
