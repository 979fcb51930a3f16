//! The "pool full" report keeps every pool's fill as it was when the map failed (issue 20 built it
//! straight into the layer's record instead of copying a full-size report into it).

use ccdma::{DeviceConfig, DmaAttrs, DmaDirection, DmaError, DmaMask, GrowthVerdict, PhysAddr};
use ccdma_hv_model::{HvConfig, Region};
use ccdma_tests::*;

#[test]
fn a_pool_full_report_names_each_pool_with_its_fill() {
    // Two pools below 4 GiB, 256 KiB (128 slots) and 512 KiB (256 slots); no growth.
    let (hv, layer) = guest(HvConfig::pseries(6 * GIB), &[(LOW_POOL, 256 * 1024), (MID_POOL, 512 * 1024)]);
    let dev = layer.attach(DeviceConfig::new(7, DmaMask::BITS_32)).unwrap();
    hv.add_device(7, 32);
    assert!(layer.last_pool_full().is_none());
    let phys = hv.alloc(64 * 1024, Region::Low);
    let mut live = Vec::new();
    let err = loop {
        // SAFETY: the test owns the buffer behind these raw mappings and keeps it, untouched, until they end.
        match unsafe {
            layer.map_phys(&dev, PhysAddr(phys), 64 * 1024, DmaDirection::ToDevice, DmaAttrs::NONE)
        } {
            Ok(bus) => live.push(bus),
            Err(e) => break e,
        }
    };
    assert_eq!(err, DmaError::PoolExhausted { len: 64 * 1024 });
    assert_eq!(live.len(), 12, "4 + 8 mappings of 64 KiB");
    let r = layer.last_pool_full().expect("a pool-full report");
    assert_eq!((r.device, r.len, r.npools, r.growth), (7, 64 * 1024, 2, GrowthVerdict::Disabled), "{r}");
    let mut fills: Vec<_> = r.pools[..2].iter().map(|f| (f.index, f.slots, f.in_use, f.bytes)).collect();
    fills.sort();
    assert_eq!(fills, [(0, 128, 128, 256 * 1024), (1, 256, 256, 512 * 1024)], "{r}");
    assert!(r.pools[2..].iter().all(|f| *f == Default::default()), "no pool past npools: {r}");
    for bus in live {
        // SAFETY: mapped above, unmapped once.
        unsafe { layer.unmap(&dev, bus, 64 * 1024, DmaDirection::ToDevice, DmaAttrs::NONE) }.unwrap();
    }
    assert_eq!(layer.stats().slots_in_use, 0);
    assert_no_faults(hv);
}
