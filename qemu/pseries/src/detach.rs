//! `iommu.detach` (issue 19): the rng64, which shares the blk's domain (and DDW), is detached first:
//! the domain stays, the DDW too, and the blk still reads. Then the blk, the domain's last device,
//! is detached from ccdma and attached again. Each driver is dropped first (no HAL call can run), the
//! binding gives its `Device` back, and `DmaLayer::detach` counts the device out, or (the last one)
//! clears the domain's entries and removes the DDW. The check then reads QEMU's tables:
//! the DDW's LIOBN no longer answers `H_GET_TCE`, and no entry of the blk's slice of the default
//! window is left. ccdma removed no default window here (other devices use it), so none is reset. The
//! device is then attached again (a new DDW), its driver brought up, and sector 0 read back.

use ccdma::DeviceConfig;
use ccdma_qemu_common::binding;
use ccdma_qemu_common::blk::{self as blkio, Blk, BlkRequest};
use ccdma_qemu_common::checks::{DISK_SIGNATURE, IO_TIMEOUT};
use ccdma_qemu_common::report::Report;
use ccdma_qemu_common::transport;
use ccdma_qemu_common::virtio::pci::PciTransport;

use crate::config::slot;
use crate::dma::{KernelBinding, Observed};
use crate::pci::{self, PciBus};
use crate::platform::PLATFORM;
use crate::scenario::{BlkBinding, Rng, Rng64Binding};

/// Live entries (granting access) in `[start, end)` of the default window.
fn live_in(start: u64, end: u64) -> u64 {
    let tce = PLATFORM.tce_calls();
    let Some((liobn, _, _, shift)) = tce.default_geometry() else { return 0 };
    (start..end)
        .step_by(1 << shift)
        .filter(|&at| tce.read_entry(liobn, at).is_some_and(|e| e & 3 != 0))
        .count() as u64
}

/// Sector 0 of the blk, read: whether it holds the runner's signature.
fn reads_signature(driver: &mut Blk<Observed<BlkBinding>>) -> Result<bool, &'static str> {
    BlkRequest::new(1)
        .and_then(|request| blkio::read(driver, request, 0, IO_TIMEOUT))
        .map(|mut request| request.data().starts_with(DISK_SIGNATURE))
        .map_err(|_| "read failed")
}

/// The rng64 shares the blk's domain: detached first, the DDW must stay (the blk still uses it).
/// `None` when there is no rng64; else whether the DDW stayed and the blk still reads.
fn detach_sharer(
    blk: &mut Option<Blk<Observed<BlkBinding>>>,
    rng64: &mut Option<Rng<Rng64Binding>>,
) -> Option<Result<bool, &'static str>> {
    rng64.as_ref()?;
    let before = PLATFORM.tce_calls().ddw();
    drop(rng64.take());
    // SAFETY: the rng64's driver is dropped above and nothing else drives its binding.
    if unsafe { binding::detach::<Rng64Binding>() }.is_err() {
        return Some(Err("rng64's detach refused"));
    }
    let kept = PLATFORM.tce_calls().ddw() == before
        && before.is_none_or(|(liobn, start, _, _)| PLATFORM.tce_calls().read_entry(liobn, start).is_some());
    Some(match blk.as_mut().map(reads_signature) {
        Some(Ok(true)) => Ok(kept),
        _ => Err("the blk stopped working when the rng64 left"),
    })
}

/// Detach the rng64 (the domain stays), then the blk (the DDW goes), check what is left in QEMU's
/// tables, attach the blk again and read from it.
pub fn check(
    report: &mut Report,
    pci: &mut PciBus,
    blk: &mut Option<Blk<Observed<BlkBinding>>>,
    rng64: &mut Option<Rng<Rng64Binding>>,
    slice: (u64, u64),
) {
    let Some(device) = BlkBinding::slot().get() else { return };
    let (id, config) = (device.config().id, *device.config());
    let path = device.path();
    let ddw = PLATFORM.tce_calls().ddw();
    let sharer = detach_sharer(blk, rng64);
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
    let (read, again) = match reattach(report, pci, config) {
        Ok(mut driver) => {
            let read = reads_signature(&mut driver);
            *blk = Some(driver);
            (read, PLATFORM.tce_calls().ddw())
        }
        Err(error) => (Err(error), None),
    };
    let ok = sharer.is_none_or(|s| s == Ok(true))
        && ddw_gone
        && left == 0
        && read == Ok(true)
        && (ddw.is_none() || again.is_some());
    let hex = |d: Option<(u32, u64, u64, u32)>| crate::show::Hex(d.map(|d| d.0));
    report.expect(
        "iommu.detach",
        ok,
        format_args!(
            "rng64 detached first: {}; blk {id:#x} ({}) detached: DDW {} {}, {left} entries left in its \
             default-window slice, default window kept (others use it); attached again: DDW {}, sector 0 {}",
            match sharer {
                None => "no rng64",
                Some(Ok(true)) => "DDW kept, the blk still reads",
                Some(Ok(false)) => "DDW GONE while the blk used it",
                Some(Err(e)) => e,
            },
            path.name(),
            hex(ddw),
            match (ddw, ddw_gone) {
                (None, _) => "(none)",
                (Some(_), true) => "removed (H_GET_TCE refused)",
                (Some(_), false) => "STILL THERE",
            },
            hex(again),
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
    Blk::open(transport).map_err(|_| "driver did not come up")
}
