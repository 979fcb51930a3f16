//! A plain or premapped bounce map and its unmap are counted by the pool area they use, under the
//! area lock (issue 21: no shared read-modify-write per map). The layer's statistics must not
//! notice: exact from several threads, every direction and attribute, and kept when the pool that
//! counted them leaves the layer (a grown pool shrunk away, every pool released).

mod growth_support;
mod iommu_support;

use ccdma::{DeviceConfig, DmaAttrs, DmaDirection, DmaLayer, DmaMask, PoolConfig, StatsSnapshot};
use ccdma_hv_model::{HvConfig, Region};
use ccdma_tests::*;
use growth_support::*;

fn counts(s: &StatsSnapshot) -> [u64; 5] {
    [s.maps, s.bounced_maps, s.unmaps, s.bytes_to_device, s.bytes_from_device]
}

/// Each direction, with and without `SKIP_CPU_SYNC` and `PRESERVE_UNWRITTEN`: the bytes counted
/// are the bytes copied, a map and an unmap each.
#[test]
fn every_direction_counts_what_it_copied() {
    let hv = model(HvConfig::pseries(2 * GIB));
    let mut layer = DmaLayer::new(hv);
    add_pool(&mut layer, MID_POOL, 4 * MIB, PoolConfig::default()).unwrap();
    let dev = layer.attach(DeviceConfig::new(1, DmaMask::BITS_32)).unwrap();
    hv.add_device(1, 32);
    let cases = [
        (DmaDirection::ToDevice, DmaAttrs::NONE, 1000, 0),
        (DmaDirection::ToDevice, DmaAttrs::SKIP_CPU_SYNC, 0, 0),
        (DmaDirection::FromDevice, DmaAttrs::NONE, 0, 1000),
        (DmaDirection::FromDevice, DmaAttrs::PRESERVE_UNWRITTEN, 1000, 1000),
        (DmaDirection::FromDevice, DmaAttrs::SKIP_CPU_SYNC, 0, 0),
        (DmaDirection::Bidirectional, DmaAttrs::NONE, 1000, 1000),
    ];
    for (dir, attrs, to, from) in cases {
        let before = layer.stats();
        let mut buf = vec![7u8; 1000];
        let m = layer.map(&dev, &mut buf, dir, attrs).unwrap();
        let mid = layer.stats();
        assert_eq!(
            counts(&mid),
            [
                before.maps + 1,
                before.bounced_maps + 1,
                before.unmaps,
                before.bytes_to_device + to,
                before.bytes_from_device
            ],
            "{dir:?} {attrs:?}: while mapped"
        );
        m.unmap().unwrap();
        let after = layer.stats();
        assert_eq!(
            counts(&after),
            [mid.maps, mid.bounced_maps, mid.unmaps + 1, mid.bytes_to_device, mid.bytes_from_device + from],
            "{dir:?} {attrs:?}: after the unmap"
        );
    }
    // A refused unmap counts nothing (the record check fails under the area lock).
    let mut buf = vec![0u8; 64];
    let m = layer.map(&dev, &mut buf, DmaDirection::ToDevice, DmaAttrs::NONE).unwrap();
    let bus = m.bus_addr();
    let held = layer.stats();
    // SAFETY: the wrong length is refused before anything is written.
    let wrong = unsafe { layer.unmap(&dev, bus, 65, DmaDirection::ToDevice, DmaAttrs::NONE) };
    assert!(wrong.is_err());
    assert_eq!(counts(&layer.stats()), counts(&held));
    m.unmap().unwrap();
    assert_eq!(layer.stats().unmaps, held.unmaps + 1);
}

/// Four threads (four start areas, so several areas count) map and unmap at once: exact sums.
#[test]
fn concurrent_maps_sum_exactly() {
    let hv = model(HvConfig::pseries(2 * GIB));
    let mut layer = DmaLayer::new(hv);
    add_pool(&mut layer, MID_POOL, 4 * MIB, PoolConfig::default()).unwrap();
    let dev = layer.attach(DeviceConfig::new(1, DmaMask::BITS_32)).unwrap();
    hv.add_device(1, 32);
    let (layer, dev) = (&layer, &dev);
    std::thread::scope(|s| {
        for t in 0..4u8 {
            s.spawn(move || {
                let mut buf = vec![t; 300 + t as usize];
                for _ in 0..2000 {
                    layer
                        .map(dev, &mut buf, DmaDirection::ToDevice, DmaAttrs::NONE)
                        .unwrap()
                        .unmap()
                        .unwrap();
                }
            });
        }
    });
    let s = layer.stats();
    assert_eq!(counts(&s), [8000, 8000, 8000, 2000 * (300 + 301 + 302 + 303), 0]);
    assert_eq!(s.slots_in_use, 0);
}

/// Grown pools count their maps; when they are shrunk away the counts stay in the layer's.
#[test]
fn counts_outlive_a_shrunk_pool() {
    let (hv, layer, _src) = plain_guest(true);
    let dev = layer.attach(DeviceConfig::new(1, DmaMask::BITS_32)).unwrap();
    hv.add_device(1, 32);
    assert_eq!(workload(hv, &layer, &dev, 4 * INITIAL as usize, 64 * 1024), Ok(64));
    assert_eq!(layer.growth_stats().grown, 3);
    let before = counts(&layer.stats());
    assert_eq!(before, [64, 64, 64, 0, 64 * 64 * 1024]);
    assert_eq!(shrink_idle(&layer), 3);
    assert_eq!(layer.pools().count(), 1, "the grown pools are gone");
    assert_eq!(counts(&layer.stats()), before, "their counts are not");
}

/// Released pools (every one, fixed included) leave their counts behind too.
#[test]
fn counts_outlive_released_pools() {
    let hv = model(HvConfig::pseries(2 * GIB));
    let mut layer = DmaLayer::new(hv);
    add_pool(&mut layer, MID_POOL, MIB, PoolConfig::default()).unwrap();
    let dev = layer.attach(DeviceConfig::new(1, DmaMask::BITS_32)).unwrap();
    hv.add_device(1, 32);
    let buf = hv.alloc(4096, Region::Low);
    // SAFETY: a fresh allocation of the model, used only here.
    let b = unsafe { hv.slice_mut(buf, 4096) };
    for _ in 0..3 {
        layer.map(&dev, &mut *b, DmaDirection::ToDevice, DmaAttrs::NONE).unwrap().unmap().unwrap();
    }
    let before = counts(&layer.stats());
    assert_eq!(before, [3, 3, 3, 3 * 4096, 0]);
    layer.detach(dev).unwrap();
    layer.release_pools().unwrap();
    assert_eq!(layer.pools().count(), 0);
    assert_eq!(counts(&layer.stats()), before);
}
