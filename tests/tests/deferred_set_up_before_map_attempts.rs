//! A deferred device's domain is set up by its first map before the map's attempts (issue 20: the
//! set-up's frames are no longer under the growth retry's): on every IOMMU policy the first map sets
//! the domain up once and maps; a zero-length first map sets nothing up; later maps make no set-up.

mod iommu_support;

use ccdma::iommu::IommuPolicy;
use ccdma::{DeviceConfig, DmaAttrs, DmaDirection, DmaError, DmaMask, DmaPath, PhysAddr};
use ccdma_hv_model::Region;
use ccdma_tests::*;
use iommu_support::*;

fn first_map_sets_up_once(policy: IommuPolicy, mask: DmaMask, expect: DmaPath) {
    let g = iommu_guest(Opts::new(policy));
    let (hv, layer) = (g.hv, &g.layer);
    hv.add_iommu_device(1, mask.bits());
    let calls = || hv.calls().counts().values().sum::<u64>();
    let dev = layer.attach(DeviceConfig::new(1, mask).with_deferred_attach(true)).unwrap();
    let before = calls();
    let phys = hv.alloc(4096, Region::Low);
    hv.memory().write(phys, &pattern(4096, 7));
    // Zero bytes: the map's own error, and no set-up.
    // SAFETY: the test owns the buffer and keeps it alive, untouched, while it is mapped.
    let zero = unsafe { layer.map_phys(&dev, PhysAddr(phys), 0, DmaDirection::ToDevice, DmaAttrs::NONE) };
    assert!(matches!(zero, Err(DmaError::ZeroLength)), "{zero:?}");
    assert_eq!(calls(), before, "a zero-length map sets nothing up");
    assert_eq!(layer.path_of(&dev), DmaPath::IommuDeferred);
    assert_eq!(layer.iommu_stats().deferred_attaches, 0);
    // The first map sets the domain up, then maps.
    // SAFETY: as above.
    let bus = unsafe { layer.map_phys(&dev, PhysAddr(phys), 4096, DmaDirection::ToDevice, DmaAttrs::NONE) }
        .unwrap();
    assert_eq!(layer.path_of(&dev), expect);
    assert_eq!(layer.iommu_stats().deferred_attaches, 1);
    assert_eq!(hv.device(1).read(bus.0, 4096).unwrap(), pattern(4096, 7));
    // SAFETY: the mapping above, ended once.
    unsafe { layer.unmap(&dev, bus, 4096, DmaDirection::ToDevice, DmaAttrs::NONE) }.unwrap();
    // Later maps find the domain set up: no second set-up.
    for _ in 0..3 {
        // SAFETY: as above.
        let b = unsafe { layer.map_phys(&dev, PhysAddr(phys), 4096, DmaDirection::ToDevice, DmaAttrs::NONE) }
            .unwrap();
        // SAFETY: the mapping just made, ended once.
        unsafe { layer.unmap(&dev, b, 4096, DmaDirection::ToDevice, DmaAttrs::NONE) }.unwrap();
    }
    assert_eq!(layer.iommu_stats().deferred_attaches, 1);
    assert_eq!(layer.stats().total_failures(), 0);
    assert!(hv.faults().is_empty(), "{:?}", hv.faults());
    layer.detach(dev).unwrap();
}

#[test]
fn premapped_first_map_sets_up_once() {
    first_map_sets_up_once(IommuPolicy::Premapped, DmaMask::BITS_32, DmaPath::IommuPremapped);
}

#[test]
fn ddw_first_map_sets_up_once() {
    first_map_sets_up_once(IommuPolicy::Premapped, DmaMask::BITS_64, DmaPath::IommuDdw);
}

#[test]
fn strict_first_map_sets_up_once() {
    first_map_sets_up_once(IommuPolicy::Strict, DmaMask::BITS_32, DmaPath::IommuStrict);
}
