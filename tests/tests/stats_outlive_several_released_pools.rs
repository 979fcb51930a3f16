//! `release_pools` hands what every fixed pool counted (maps, unmaps, bytes in: counted in the
//! pools' areas, issue 21) to the layer's statistics in one step, summed over the pools (three
//! atomic read-modify-writes in all rather than three a pool: issue 20's code budget). Every
//! pool's counts must survive, whichever pools the maps used.

use ccdma::{DeviceConfig, DmaAttrs, DmaDirection, DmaLayer, DmaMask, PoolConfig, StatsSnapshot};
use ccdma_hv_model::{HvConfig, Region};
use ccdma_tests::*;

fn counts(s: &StatsSnapshot) -> [u64; 5] {
    [s.maps, s.bounced_maps, s.unmaps, s.bytes_to_device, s.bytes_from_device]
}

#[test]
fn counts_of_every_released_pool_stay() {
    let hv = model(HvConfig::pseries(8 * GIB));
    let mut layer = DmaLayer::new(hv);
    add_pool(&mut layer, LOW_POOL, MIB, PoolConfig::default()).unwrap();
    add_pool(&mut layer, MID_POOL, MIB, PoolConfig::default()).unwrap();
    add_pool(&mut layer, HIGH_POOL, MIB, PoolConfig::default()).unwrap();
    // A 24-bit device reaches the low pool only; a 64-bit one takes the highest first, then the
    // others as it fills them.
    let low = layer.attach(DeviceConfig::new(1, DmaMask::new(24).unwrap())).unwrap();
    let wide = layer.attach(DeviceConfig::new(2, DmaMask::BITS_64)).unwrap();
    hv.add_device(1, 24);
    hv.add_device(2, 64);
    let buf = hv.alloc(64 * 1024, Region::Low);
    // SAFETY: a fresh allocation of the model, used only here.
    let b = unsafe { hv.slice_mut(buf, 64 * 1024) };
    for _ in 0..2 {
        layer.map(&low, &mut b[..4096], DmaDirection::ToDevice, DmaAttrs::NONE).unwrap().unmap().unwrap();
    }
    // 40 maps of 64 KiB held at once: more than one 1 MiB pool holds, so several pools count.
    let held: Vec<_> = (0..40)
        .map(|_| {
            // SAFETY: the same private buffer mapped to-device many times: the device only reads.
            unsafe {
                layer.map_phys(&wide, ccdma::PhysAddr(buf), 64 * 1024, DmaDirection::ToDevice, DmaAttrs::NONE)
            }
            .unwrap()
        })
        .collect();
    let used = layer.pools().filter(|p| p.slots_in_use() > 0).count();
    assert_eq!(used, 3, "the maps spread over every pool");
    for bus in held {
        // SAFETY: this program's raw mapping, unmapped once.
        unsafe { layer.unmap(&wide, bus, 64 * 1024, DmaDirection::ToDevice, DmaAttrs::NONE) }.unwrap();
    }
    let before = counts(&layer.stats());
    assert_eq!(before, [42, 42, 42, 2 * 4096 + 40 * 64 * 1024, 0]);
    layer.detach(low).unwrap();
    layer.detach(wide).unwrap();
    layer.release_pools().unwrap();
    assert_eq!(layer.pools().count(), 0);
    assert_eq!(counts(&layer.stats()), before, "every pool's counts stay in the statistics");
    assert_no_faults(hv);
}
