//! Issue 19: QEMU's pseries machine puts every device of a PCI host bridge on one partitionable
//! endpoint: one default window and one DDW, one bus space, shared. Two devices on one bridge must
//! never be handed the same bus address of the shared window (or one device's map overwrites the other's entry, and one unmap clears the other's).
//!
//! ccdma keys its IOMMU domains by partitionable endpoint: the devices of a bridge share one domain,
//! one bus space, counted by the devices attached. Before that fix the first test failed with "one
//! bus address for two live maps of one bridge".

mod iommu_support;

use ccdma::{DeviceConfig, DmaAttrs, DmaDirection, DmaMask, IommuPolicy};
use ccdma_tests::*;
use iommu_support::*;

#[test]
fn two_devices_on_one_bridge_never_share_a_bus_address() {
    let g = iommu_guest(Opts::new(IommuPolicy::Strict));
    g.hv.add_iommu_device_on_bridge(1, 32, 7);
    g.hv.add_iommu_device_on_bridge(2, 32, 7);
    let a = g.layer.attach(DeviceConfig::new(1, DmaMask::new(32).unwrap())).unwrap();
    let b = g.layer.attach(DeviceConfig::new(2, DmaMask::new(32).unwrap())).unwrap();
    let mut x = pattern(4096, 1);
    let mut y = pattern(4096, 2);
    let mx = g.layer.map(&a, &mut x, DmaDirection::ToDevice, DmaAttrs::NONE).unwrap();
    let my = g.layer.map(&b, &mut y, DmaDirection::ToDevice, DmaAttrs::NONE).unwrap();
    assert_ne!(mx.bus_addr(), my.bus_addr(), "one bus address for two live maps of one bridge");
    assert_eq!(g.hv.device(1).read(mx.bus_addr().0, 4096).unwrap(), pattern(4096, 1));
    my.unmap().unwrap();
    assert_eq!(
        g.hv.device(1).read(mx.bus_addr().0, 4096).unwrap(),
        pattern(4096, 1),
        "b's unmap cleared a's entry"
    );
    mx.unmap().unwrap();
    g.layer.detach(a).unwrap();
    g.layer.detach(b).unwrap();
}
