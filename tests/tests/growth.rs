//! Growing pools when mappings cannot be placed, and shrinking them back when idle (issue 13): a
//! workload four times the initial pool, with and without growth, on a guest without IOMMU and
//! behind the TCE IOMMU (DDW, default window, strict), with the model's ledger and fault log checked.

mod growth_support;
mod iommu_support;

use ccdma::{DeviceConfig, DmaError, DmaMask, DmaPath, GrowthVerdict, IommuPolicy};
use ccdma_tests::*;
use growth_support::*;

const CHUNK: usize = 64 * 1024;

#[test]
fn four_times_the_pool_completes_with_growth_on_tdx() {
    // MapGPA to shared and back (with accept): the same cycle, the same baseline afterwards.
    let (hv, layer, src) = plain_guest_on(ccdma_hv_model::HvConfig::tdx(2 * GIB), true);
    let dev = layer.attach(DeviceConfig::new(1, DmaMask::BITS_32)).unwrap();
    hv.add_device(1, 32);
    let base = Baseline::take(hv, &layer);
    assert_eq!(workload(hv, &layer, &dev, 4 * INITIAL as usize, CHUNK), Ok(64));
    assert_eq!(layer.growth_stats().grown, 3);
    assert_eq!(shrink_idle(&layer), 3);
    base.assert_same(hv, &layer);
    assert_eq!(src.counters().bytes_out, 0);
    assert_nothing_lost(hv, &layer, src, "tdx");
    assert_no_faults(hv);
}

#[test]
fn four_times_the_pool_completes_with_growth() {
    let (hv, layer, src) = plain_guest(true);
    let dev = layer.attach(DeviceConfig::new(1, DmaMask::BITS_32)).unwrap();
    hv.add_device(1, 32);
    let base = Baseline::take(hv, &layer);
    let n = workload(hv, &layer, &dev, 4 * INITIAL as usize, CHUNK).unwrap();
    assert_eq!(n, 64);
    let g = layer.growth_stats();
    assert_eq!((g.grown, g.pools, g.bytes), (3, 3, 3 * MIB), "exactly the three pools needed: {g:?}");
    assert_eq!(dev.peaks().mappings_high_water, 64);
    assert_eq!(dev.peaks().map_failures, 0);
    assert_eq!(layer.stats().total_failures(), 0, "a map served after growth is no failure");
    assert_no_faults(hv);
    // Idle: after the hysteresis every grown pool goes back, and every counter is at its baseline.
    assert_eq!(layer.growth_tick(), 0, "one idle tick is not enough");
    assert_eq!(shrink_idle(&layer), 3);
    assert_eq!(layer.growth_stats().pools, 0);
    assert_eq!(layer.pools().count(), 1, "back to the initial pool");
    base.assert_same(hv, &layer);
    assert_eq!(src.counters().bytes_out, 0);
    assert_eq!(src.counters().meta_out, 0);
    assert_nothing_lost(hv, &layer, src, "");
    // The ledger saw the pages rise and fall.
    let series = hv.sharing_ledger().shared_over_time;
    assert_eq!(series.iter().max(), Some(&(4 * MIB / 4096)));
    assert_eq!(series.last(), Some(&(MIB / 4096)));
}

#[test]
fn four_times_the_pool_fails_cleanly_without_growth() {
    let (hv, layer, _src) = plain_guest(false);
    let dev = layer.attach(DeviceConfig::new(1, DmaMask::BITS_32)).unwrap();
    hv.add_device(1, 32);
    let base = Baseline::take(hv, &layer);
    let err = workload(hv, &layer, &dev, 4 * INITIAL as usize, CHUNK).unwrap_err();
    assert_eq!(err, DmaError::PoolExhausted { len: CHUNK });
    base.assert_same(hv, &layer);
    assert_eq!(dev.peaks().mappings_high_water, 16);
    assert_eq!(dev.peaks().map_failures, 1);
    assert_eq!(layer.stats().failures_of(ccdma::FailureKind::PoolExhausted), 1);
    let r = layer.last_pool_full().expect("a pool-full report");
    assert_eq!((r.device, r.len, r.npools, r.growth), (1, CHUNK, 1, GrowthVerdict::Disabled));
    assert_eq!((r.pools[0].in_use, r.pools[0].slots), (512, 512), "the pool was full: {r}");
    assert!(r.to_string().contains("512/512 slots (100%)"), "{r}");
    assert_no_faults(hv);
}

#[test]
fn growth_stops_at_its_limit_and_says_so() {
    let (hv, mut layer) = guest(ccdma_hv_model::HvConfig::pseries(2 * GIB), &[(MID_POOL, INITIAL)]);
    let src = source(hv);
    layer.enable_growth(src, ccdma::GrowthConfig { max_pools: 2, ..growth_cfg() }).unwrap();
    let dev = layer.attach(DeviceConfig::new(1, DmaMask::BITS_32)).unwrap();
    hv.add_device(1, 32);
    let base = Baseline::take(hv, &layer);
    let err = workload(hv, &layer, &dev, 4 * INITIAL as usize, CHUNK).unwrap_err();
    assert_eq!(err, DmaError::PoolExhausted { len: CHUNK });
    let r = layer.last_pool_full().unwrap();
    assert_eq!((r.npools, r.growth), (3, GrowthVerdict::LimitReached), "{r}");
    assert_eq!(layer.stats().failures_of(ccdma::FailureKind::PoolExhausted), 1, "counted once, at the end");
    assert_eq!(shrink_idle(&layer), 2);
    base.assert_same(hv, &layer);
    assert_nothing_lost(hv, &layer, src, "");
}

#[test]
fn a_busy_pool_is_not_shrunk_and_activity_resets_the_hysteresis() {
    let (hv, layer, src) = plain_guest(true);
    let dev = layer.attach(DeviceConfig::new(1, DmaMask::BITS_32)).unwrap();
    hv.add_device(1, 32);
    // Fill the initial pool, then one mapping in a grown pool, held across many ticks.
    let mut bufs: Vec<Vec<u8>> = (0..17).map(|_| vec![1u8; CHUNK]).collect();
    let mut maps: Vec<_> = bufs
        .iter_mut()
        .map(|b| layer.map(&dev, b, ccdma::DmaDirection::ToDevice, ccdma::DmaAttrs::NONE).unwrap())
        .collect();
    assert_eq!(layer.growth_stats().pools, 1);
    for _ in 0..10 {
        assert_eq!(layer.growth_tick(), 0, "a pool with a live slot stays");
    }
    let last = maps.pop().unwrap();
    drop(last);
    assert_eq!(layer.growth_tick(), 0);
    assert_eq!(layer.growth_tick(), 0);
    // A map and unmap in the grown pool resets its idle count (the initial pool is still full).
    let mut b = vec![0u8; 4096];
    drop(layer.map(&dev, &mut b, ccdma::DmaDirection::ToDevice, ccdma::DmaAttrs::NONE).unwrap());
    // The tick after the use sees it; then three idle ticks.
    assert_eq!(layer.growth_tick(), 0);
    assert_eq!(layer.growth_tick(), 0);
    assert_eq!(layer.growth_tick(), 0);
    assert_eq!(layer.growth_tick(), 1, "three idle ticks after the last use");
    drop(maps);
    assert_nothing_lost(hv, &layer, src, "");
}

/// Devices attached before growth reach the grown pools in their windows: a 64-bit device in its
/// DDW, a 32-bit one in the default window, a strict one through per-mapping entries; after the
/// shrink no entry names a grown pool any more.
#[test]
fn devices_attached_before_growth_reach_new_pools_in_every_window() {
    for policy in [IommuPolicy::Premapped, IommuPolicy::Strict] {
        let (g, src) = iommu_growing(policy, growth_cfg());
        let devs = [g.device(0x10, 64), g.device(0x20, 32)];
        let expect = match policy {
            IommuPolicy::Premapped => [DmaPath::IommuDdw, DmaPath::IommuPremapped],
            IommuPolicy::Strict => [DmaPath::IommuStrict, DmaPath::IommuStrict],
        };
        assert_eq!([devs[0].path(), devs[1].path()], expect);
        let base = Baseline::take(g.hv, &g.layer);
        let initial = (MID_POOL, MID_POOL + INITIAL);
        for dev in &devs {
            assert_eq!(workload(g.hv, &g.layer, dev, 4 * INITIAL as usize, CHUNK), Ok(64), "{policy:?}");
        }
        let grown = g.layer.growth_stats().pools;
        assert!(grown >= 3, "{policy:?}: {grown} pools grown");
        if policy == IommuPolicy::Premapped {
            // Each premapped device reaches every grown pool through its own window: DDW entries
            // above 4 GiB for the 64-bit device, default-window entries below 2 GiB for the other.
            for (dev, id) in devs.iter().zip([0x10, 0x20]) {
                let reach = g.hv.reachable(id);
                let outside: u64 =
                    reach.iter().filter(|r| r.phys < initial.0 || r.phys >= initial.1).map(|r| r.len).sum();
                assert_eq!(outside, grown * MIB, "{id:#x}: grown pools in its window");
                let (dynamic, ddw) = g.layer.windows_of(dev);
                let win = if id == 0x10 { ddw.unwrap() } else { dynamic.unwrap() };
                assert!(
                    reach.iter().all(|r| r.bus >= win.start && r.bus < win.end()),
                    "{id:#x} outside its window"
                );
            }
        }
        assert_eq!(shrink_idle(&g.layer), grown as usize);
        for id in [0x10, 0x20] {
            g.assert_reach_within(id, &[initial]);
        }
        base.assert_same(g.hv, &g.layer);
        assert_nothing_lost(g.hv, &g.layer, src, "");
        // And it grows again after shrinking (slots, windows and bus ranges were all given back).
        assert_eq!(workload(g.hv, &g.layer, &devs[1], 4 * INITIAL as usize, CHUNK), Ok(64));
        assert!(shrink_idle(&g.layer) >= 3);
        assert_nothing_lost(g.hv, &g.layer, src, "");
    }
}

/// A device attached (deferred) after growth enters the grown pools at its set-up.
#[test]
fn a_device_set_up_after_growth_enters_grown_pools() {
    let (g, src) = iommu_growing(IommuPolicy::Premapped, growth_cfg());
    let first = g.device(0x10, 32);
    assert_eq!(workload(g.hv, &g.layer, &first, 2 * INITIAL as usize, CHUNK), Ok(32));
    assert_eq!(g.layer.growth_stats().pools, 1);
    g.hv.add_iommu_device(0x30, 32);
    let late = g.layer.attach(DeviceConfig::new(0x30, DmaMask::BITS_32).with_deferred_attach(true)).unwrap();
    // Its first map sets it up with both pools premapped: 2 MiB without growing again.
    assert_eq!(workload(g.hv, &g.layer, &late, 2 * INITIAL as usize, CHUNK), Ok(32));
    assert_eq!(g.layer.growth_stats().grown, 1);
    assert_eq!(g.hv.reachable(0x30).iter().map(|r| r.len).sum::<u64>(), 2 * MIB);
    shrink_idle(&g.layer);
    assert_nothing_lost(g.hv, &g.layer, src, "");
    assert_eq!(g.hv.reachable(0x30).iter().map(|r| r.len).sum::<u64>(), MIB);
}

/// Safe code may hold a pool reference as long as it likes: the shrink then gives up on that pool
/// (and tries again at the next tick) instead of waiting for it.
#[test]
fn a_held_pool_reference_delays_the_shrink_and_never_hangs_it() {
    let (hv, layer, src) = plain_guest(true);
    let dev = layer.attach(DeviceConfig::new(1, DmaMask::BITS_32)).unwrap();
    hv.add_device(1, 32);
    assert_eq!(workload(hv, &layer, &dev, 2 * INITIAL as usize, CHUNK), Ok(32));
    let grown =
        (0..ccdma::MAX_POOLS).find(|&i| layer.pool(i).is_none() && layer.pool_ref(i).is_some()).unwrap();
    let held = layer.pool_ref(grown).unwrap();
    assert_eq!(shrink_idle(&layer), 0, "held: not removed");
    drop(held);
    assert_eq!(layer.growth_tick(), 1, "removed at the next tick once let go");
    assert_nothing_lost(hv, &layer, src, "");
}
