//! Issue 21 on QEMU: under the premapped policy a device whose default window cannot hold the pool
//! below its mask (rng-low, a 21-bit mask) falls back to strict entries per mapping. With
//! `IommuConfig::premapped()`'s own defaults (one `H_PUT_TCE` per entry, `VerifyPolicy::Premap`:
//! no read-back per mapping), which `pseries-no-ddw` runs, a to-device map+unmap of `n` 4 KiB pages
//! costs what Linux's secure guest pays, `n + 1` hypercalls, never more (`ccdma.fallback_calls`).
//! The configurations that choose read-back of the ends print their price and are not held to it.

use ccdma::{DmaAttrs, DmaDirection, DmaPath, PhysAddr};
use ccdma_qemu_common::memory::StaticRegion;
use ccdma_qemu_common::report::Report;

use crate::dma::{self, KernelBinding};

/// The buffer the fallback's mappings copy from (to the device: the layer only reads it).
static BUF: StaticRegion<{ 64 << 10 }> = StaticRegion::new();

const SIZES: [usize; 3] = [4096, 16 << 10, 64 << 10];

/// Map and unmap `SIZES` on `B`'s device when it fell back to strict; `held` asks for Linux's price.
pub fn check<B: KernelBinding>(report: &mut Report, held: bool) {
    let layer = match dma::layer() {
        Ok(layer) => layer,
        Err(error) => return report.fail("ccdma.fallback_calls", error),
    };
    let Some(dev) = B::slot().get() else { return };
    if dev.path() != DmaPath::IommuStrict {
        return;
    }
    let calls = || {
        let s = layer.iommu_stats();
        s.put_tce + s.put_indirect + s.stuff_tce + s.get_tce
    };
    let (mut got, mut ok) = ([0u64; 3], true);
    let (dir, attrs) = (DmaDirection::ToDevice, DmaAttrs::NONE);
    for (k, &len) in SIZES.iter().enumerate() {
        let before = calls();
        // SAFETY: BUF is a static this kernel uses for nothing else; the device only reads it.
        match unsafe { layer.map_phys(dev, PhysAddr(BUF.phys_range().start), len, dir, attrs) } {
            // SAFETY: the mapping just made, unmapped once.
            Ok(bus) => ok &= unsafe { layer.unmap(dev, bus, len, dir, attrs) }.is_ok(),
            Err(_) => ok = false,
        }
        got[k] = calls() - before;
        ok &= !held || got[k] <= (len / 4096) as u64 + 1;
    }
    report.expect(
        "ccdma.fallback_calls",
        ok,
        format_args!(
            "{} maps through strict entries (a fallback under the premapped policy): {} / {} / {} \
             hypercalls per 4 / 16 / 64 KiB map+unmap (Linux 2 / 5 / 17){}",
            B::NAME,
            got[0],
            got[1],
            got[2],
            if held { "" } else { "; read-back chosen, not held to Linux's price" }
        ),
    );
}
