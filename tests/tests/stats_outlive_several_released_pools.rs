//! `release_pools` hands what every fixed pool counted (maps, unmaps, bytes in: counted in the
//! pools' areas, issue 21) to the layer's statistics in one step, summed over the pools (three
//! atomic read-modify-writes in all rather than three a pool: issue 20's code budget). Every
//! pool's counts must survive, whichever pools the maps used.

use ccdma::{DmaAttrs, DmaDirection, DmaLayer, PoolConfig};
use ccdma_hv_model::HvConfig;
use ccdma_tests::release_stats::{hold_maps, narrow_and_wide, pool_counts as counts, unmap_held};
use ccdma_tests::*;

#[test]
fn counts_of_every_released_pool_stay() {
    let hv = model(HvConfig::pseries(8 * GIB));
    let mut layer = DmaLayer::new(hv);
    add_pool(&mut layer, LOW_POOL, MIB, PoolConfig::default()).unwrap();
    add_pool(&mut layer, MID_POOL, MIB, PoolConfig::default()).unwrap();
    add_pool(&mut layer, HIGH_POOL, MIB, PoolConfig::default()).unwrap();
    // A 24-bit device reaches the low pool only; a 64-bit one takes the highest first, then the
    // others as it fills them.
    let (low, wide, buf) = narrow_and_wide(hv, &layer);
    // SAFETY: a fresh allocation of the model, used only here.
    let b = unsafe { hv.slice_mut(buf, 64 * 1024) };
    for _ in 0..2 {
        layer.map(&low, &mut b[..4096], DmaDirection::ToDevice, DmaAttrs::NONE).unwrap().unmap().unwrap();
    }
    // 40 maps of 64 KiB held at once: more than one 1 MiB pool holds, so several pools count.
    let held = hold_maps(&layer, &wide, buf, 40);
    let used = layer.pools().filter(|p| p.slots_in_use() > 0).count();
    assert_eq!(used, 3, "the maps spread over every pool");
    unmap_held(&layer, &wide, held);
    let before = counts(&layer.stats());
    assert_eq!(before, [42, 42, 42, 2 * 4096 + 40 * 64 * 1024, 0]);
    layer.detach(low).unwrap();
    layer.detach(wide).unwrap();
    layer.release_pools().unwrap();
    assert_eq!(layer.pools().count(), 0);
    assert_eq!(counts(&layer.stats()), before, "every pool's counts stay in the statistics");
    assert_no_faults(hv);
}
