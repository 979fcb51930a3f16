//! Which entries the TCE writer reads back (`H_GET_TCE`) after writing or clearing a range: the first
//! and the last under `VerifyPolicy::Ends` (one read for a range of one entry), every entry under
//! `All`, none under `Off`. Counted on the layer's `get_tce` counter and on the hypervisor model's
//! own call log, for a one-entry map (`H_PUT_TCE`) and a four-entry map (`H_PUT_TCE_INDIRECT`), and
//! for the `H_STUFF_TCE` that clears each at unmap.

mod iommu_support;

use ccdma::{DmaAttrs, DmaDirection, IommuPolicy, PhysAddr, VerifyPolicy};
use ccdma_hv_model::{CallKind, Region};
use iommu_support::*;

fn strict(verify: VerifyPolicy) -> IommuGuest {
    let mut o = Opts::new(IommuPolicy::Strict);
    o.verify = verify;
    iommu_guest(o)
}

#[test]
fn read_back_reads_the_ends_or_every_entry() {
    for verify in [VerifyPolicy::Off, VerifyPolicy::Ends, VerifyPolicy::All] {
        for len in [100usize, 16384] {
            let g = strict(verify);
            let (hv, layer) = (g.hv, &g.layer);
            let dev = g.device(1, 32);
            let phys = hv.alloc(16384, Region::High);
            let (stats0, calls0) = (layer.iommu_stats().get_tce, hv.calls().count(CallKind::GetTce));
            // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
            let bus =
                unsafe { layer.map_phys(&dev, PhysAddr(phys), len, DmaDirection::ToDevice, DmaAttrs::NONE) }
                    .unwrap();
            let entries = hv.tce_counters().live_entries;
            assert_eq!(entries, if len == 100 { 1 } else { 4 }, "{verify:?} {len}");
            let expect = match verify {
                VerifyPolicy::Off => 0,
                VerifyPolicy::All => entries,
                _ => entries.min(2),
            };
            let read = layer.iommu_stats().get_tce - stats0;
            assert_eq!(read, expect, "{verify:?}, {entries} entries written: reads");
            assert_eq!(hv.calls().count(CallKind::GetTce) - calls0, expect, "{verify:?}: the model's count");
            // SAFETY: the mapping above, still live.
            unsafe { layer.unmap(&dev, bus, len, DmaDirection::ToDevice, DmaAttrs::NONE) }.unwrap();
            let read = layer.iommu_stats().get_tce - stats0;
            assert_eq!(read, 2 * expect, "{verify:?}, {entries} entries cleared: reads");
            assert_eq!(hv.tce_counters().live_entries, 0);
        }
    }
}
