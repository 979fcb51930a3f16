//! Review of issues 20/21: `release_pools` hands every fixed pool's counts (kept in the pools'
//! areas) to the layer's statistics in one summed step before the pools leave. When making a
//! pool's pages private again fails part way through the release (the ultravisor refuses one
//! unshare), the counts must still all be there, exactly once, the refused pool's pages must be
//! quarantined (still shared in the model, counted), and a second `release_pools` must neither
//! count them again nor touch the quarantined pages.
//!
//! Fail-first (checked once by mutation): with the summed tally absorbed only when the release
//! succeeds, the counts of every pool are lost here.

use ccdma::{DmaAttrs, DmaDirection, DmaError, DmaLayer, PoolConfig};
use ccdma_hv_model::{CallKind, HvConfig, Injection};
use ccdma_tests::release_stats::{hold_maps, narrow_and_wide, pool_counts as counts, unmap_held};
use ccdma_tests::*;

#[test]
fn counts_stay_exactly_once_when_a_pool_will_not_become_private() {
    let hv = model(HvConfig::pseries(8 * GIB));
    let mut layer = DmaLayer::new(hv);
    add_pool(&mut layer, LOW_POOL, MIB, PoolConfig::default()).unwrap();
    add_pool(&mut layer, HIGH_POOL, MIB, PoolConfig::default()).unwrap();
    let shared_pools = hv.shared_pages();
    assert_eq!(shared_pools, 2 * MIB / 4096);
    let (low, wide, buf) = narrow_and_wide(hv, &layer);
    // SAFETY: a fresh allocation of the model, used only here.
    let b = unsafe { hv.slice_mut(buf, 64 * 1024) };
    for _ in 0..3 {
        layer.map(&low, &mut b[..4096], DmaDirection::FromDevice, DmaAttrs::NONE).unwrap().unmap().unwrap();
    }
    // 20 maps of 64 KiB held at once: more than one 1 MiB pool holds, so both pools count.
    let held = hold_maps(&layer, &wide, buf, 20);
    assert_eq!(layer.pools().filter(|p| p.slots_in_use() > 0).count(), 2, "both pools used");
    unmap_held(&layer, &wide, held);
    let before = counts(&layer.stats());
    assert_eq!(before, [23, 23, 23, 20 * 64 * 1024, 3 * 4096]);
    layer.detach(low).unwrap();
    layer.detach(wide).unwrap();

    // The first pool's unshare is refused: its 256 pages stay shared, quarantined.
    let unshares = hv.calls().count(CallKind::UvUnshare);
    hv.calls().inject_at(CallKind::UvUnshare, unshares + 1, Injection::Fail(-4));
    let err = layer.release_pools().unwrap_err();
    assert!(matches!(err, DmaError::UnsharingFailed { quarantined: 256, .. }), "{err:?}");
    assert_eq!(layer.pools().count(), 0, "both pools left the layer");
    let s = layer.stats();
    assert_eq!(counts(&s), before, "every pool's counts stay, once");
    assert_eq!(s.quarantined_pages, 256);
    assert_eq!(hv.shared_pages(), 256, "only the refused pool's pages stay shared");

    // A second release finds nothing to release: nothing counted twice, nothing unshared.
    let unshares = hv.calls().count(CallKind::UvUnshare);
    layer.release_pools().unwrap();
    assert_eq!(hv.calls().count(CallKind::UvUnshare), unshares);
    let s = layer.stats();
    assert_eq!(counts(&s), before, "a second release counted again");
    assert_eq!((s.quarantined_pages, s.slots_in_use), (256, 0));
    assert_eq!(hv.shared_pages(), 256);
    assert_no_faults(hv);
}
