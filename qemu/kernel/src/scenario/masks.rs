//! Every bus address within each device's DMA mask, and high or low where the configuration says.

use crate::config::{IommuMode, TestConfig};
use crate::dma::KernelBinding;
use crate::report::Report;

use super::{BlkBinding, BlkFaultBinding, NetABinding, NetBBinding, RngBinding, FOUR_GIB};

/// Every bus address a device was given is within its DMA mask. A 64-bit device is given high
/// addresses where a high range exists for it: the pool above 4 GiB without an IOMMU, the dynamic
/// window (premapped). A 32-bit device gets addresses below 4 GiB even though the main pool is
/// above 4 GiB: through the IOMMU's default window, or the low pool without one.
pub(super) fn check_masks(report: &mut Report, config: &TestConfig) {
    fn one<B: KernelBinding>(report: &mut Report, config: &TestConfig, streams: bool) {
        let Some(device) = B::slot().get() else {
            return;
        };
        let mask = device.config().dma_mask;
        let Some((low, high)) = B::stats().bus_range() else {
            return report.fail(format_args!("dma.mask.{}", B::NAME), "device was never given an address");
        };
        let within = high <= mask.max_addr();
        let wants_high = streams
            && mask.bits() == 64
            && match config.iommu {
                IommuMode::None => config.high_ram,
                IommuMode::Premapped => true,
                IommuMode::Strict => false,
            };
        // Behind the IOMMU with all memory above 4 GiB, a 32-bit device reaches it only through
        // its window: every page it was given lies above 4 GiB, every bus address below.
        let (phys_low, phys_high) = B::stats().phys_range().unwrap_or((0, 0));
        let remapped = config.iommu.present() && config.high_ram && mask.bits() == 32;
        let ok = within && (!wants_high || high >= FOUR_GIB) && (!remapped || phys_low >= FOUR_GIB);
        report.expect(
            format_args!("dma.mask.{}", B::NAME),
            ok,
            format_args!(
                "{mask} mask, given bus addresses {low:#x}..={high:#x} for memory at {phys_low:#x}..={phys_high:#x}{}",
                match (wants_high, config.iommu) {
                    (true, IommuMode::None) => " (streaming from the pool above 4 GiB)",
                    (true, _) => " (streaming through the dynamic window)",
                    (false, _) if !streams => " (queues only so far)",
                    (false, IommuMode::None) if config.high_ram => " (the pool below 4 GiB)",
                    (false, IommuMode::None) => "",
                    (false, _) if remapped => " (memory above 4 GiB through the default window below 4 GiB)",
                    (false, _) => " (IOMMU default window)",
                }
            ),
        );
    }
    one::<BlkBinding>(report, config, true);
    // The containment blk has only its queues so far (coherent memory, in the default window).
    one::<BlkFaultBinding>(report, config, false);
    one::<RngBinding>(report, config, true);
    one::<NetABinding>(report, config, true);
    one::<NetBBinding>(report, config, true);
}
