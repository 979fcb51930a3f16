//! A run an area's front keeps for reuse (issue 21: freed runs listed by size, ahead of the run
//! tree) never outlives its pool: runs freed into grown pools' fronts, the pools handed back to
//! the memory source, and every mapping made afterwards lands in a pool that is live, the device
//! reaches it, and the bytes come back exact; the same after `release_pools` and a new pool.

mod growth_support;
mod iommu_support;

use ccdma::{DeviceConfig, DmaAttrs, DmaDirection, DmaMask, MAX_POOLS};
use ccdma_tests::*;
use growth_support::*;

/// True when `[bus, bus + len)` lies in a pool the layer has now (no IOMMU: bus = the pool's base).
fn in_a_live_pool(layer: &Layer, bus: u64, len: usize) -> bool {
    (0..MAX_POOLS).any(|i| {
        layer
            .pool_ref(i)
            .is_some_and(|(p, base)| bus >= base.0 && bus - base.0 + len as u64 <= p.len() as u64)
    })
}

/// `n` from-device mappings of `len` bytes, all live at once (the pool grows to hold them); the
/// device writes each through the model; each lands in a live pool; unmapped in turn, the bytes
/// come back exact. Returns the bus addresses used.
fn round(
    hv: &ccdma_hv_model::Hypervisor,
    layer: &Layer,
    dev: &ccdma::Device,
    n: usize,
    len: usize,
) -> Vec<u64> {
    let mut bufs: Vec<Vec<u8>> = (0..n).map(|_| vec![0u8; len]).collect();
    let model_dev = hv.device(dev.config().id);
    let mut maps = Vec::new();
    for (k, b) in bufs.iter_mut().enumerate() {
        let m = layer.map(dev, b, DmaDirection::FromDevice, DmaAttrs::NONE).expect("map");
        let bus = m.bus_addr().0;
        assert!(in_a_live_pool(layer, bus, len), "mapping {k} at {bus:#x} is in no live pool");
        model_dev.write(bus, &pattern(len, k as u64)).expect("the device reaches its mapping");
        maps.push(m);
    }
    let used = maps.iter().map(|m| m.bus_addr().0).collect();
    // Unmapped in an order unlike the mapping's, so the fronts hold runs from every pool.
    let mut maps: Vec<_> = maps.into_iter().enumerate().collect();
    maps.sort_by_key(|(k, _)| (k % 7, *k));
    for (_, m) in maps {
        m.unmap().map_err(|r| r.error).expect("unmap");
    }
    for (k, b) in bufs.iter().enumerate() {
        assert!(*b == pattern(len, k as u64), "mapping {k} came back wrong");
    }
    used
}

#[test]
fn runs_listed_in_a_grown_pool_go_with_it() {
    let (hv, layer, src) = plain_guest(true);
    let dev = layer.attach(DeviceConfig::new(1, DmaMask::BITS_32)).unwrap();
    hv.add_device(1, 32);
    // 3 MiB in 4 KiB mappings: the 1 MiB pool and two grown ones; the unmaps list runs in fronts.
    let first = round(hv, &layer, &dev, 768, 4096);
    assert!(layer.growth_stats().grown >= 2);
    assert_eq!(layer.stats().slots_in_use, 0, "listed runs are free for the counters");
    // Idle: the grown pools go back to the source, their listed runs with them.
    assert!(shrink_idle(&layer) >= 2, "the grown pools were handed back");
    assert!(
        first.iter().any(|&bus| !in_a_live_pool(&layer, bus, 4096)),
        "some runs were in a pool that is gone"
    );
    // Mapping again: every run from a live pool (grown anew where needed), none from the old ones.
    round(hv, &layer, &dev, 768, 4096);
    // And small again, from the fixed pool's front.
    round(hv, &layer, &dev, 16, 4096);
    let grown = layer.growth_stats().pools as usize;
    assert_eq!(shrink_idle(&layer), grown, "every grown pool goes back, listed runs or not");
    assert_nothing_lost(hv, &layer, src, "front");
    assert_no_faults(hv);
}

#[test]
fn runs_listed_before_release_pools_never_come_back() {
    let (hv, mut layer) = guest(ccdma_hv_model::HvConfig::pseries(2 * GIB), &[(MID_POOL, 4 * MIB)]);
    let dev = layer.attach(DeviceConfig::new(1, DmaMask::BITS_32)).unwrap();
    hv.add_device(1, 32);
    let old = round(hv, &layer, &dev, 64, 4096);
    layer.detach(dev).unwrap();
    layer.release_pools().expect("nothing live: the pools go");
    assert!(layer.pool(0).is_none());
    add_pool(&mut layer, MID_POOL + 64 * MIB, 4 * MIB, ccdma::PoolConfig::default()).expect("a new pool");
    let dev = layer.attach(DeviceConfig::new(2, DmaMask::BITS_32)).unwrap();
    hv.add_device(2, 32);
    let new = round(hv, &layer, &dev, 64, 4096);
    assert!(new.iter().all(|bus| !old.contains(bus)), "a run of the released pool came back");
    assert_eq!(layer.stats().slots_in_use, 0);
    assert_no_faults(hv);
}
