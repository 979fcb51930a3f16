//! Issue 19: devices behind one partitionable endpoint reach every entry of its windows. An accepted
//! device's entries name its private pages, so accepting a device that shares its endpoint (QEMU: its
//! PCI host bridge) with other attached devices would open those pages to them. ccdma refuses both
//! orders: accepting a device that is not alone on its endpoint, and attaching a device to the
//! endpoint of an accepted one (`IommuError::EndpointShared`), nothing changed. Before the check the
//! accept succeeded and an entry the untrusted sibling reaches named a private page (invariant 1; the
//! model's memory protection then refused the sibling's read, which real hardware need not do).

mod iommu_support;

use ccdma::{DeviceConfig, DmaError, DmaMask, DmaPath, IommuError, IommuPolicy};
use ccdma_hv_model::Region;
use ccdma_tests::*;
use iommu_support::*;

const ACCEPTED: u32 = 1;
const UNTRUSTED: u32 = 2;
const BRIDGE: u32 = 5;

fn cfg(id: u32, bits: u32) -> DeviceConfig {
    DeviceConfig::new(id, DmaMask::new(bits).unwrap())
}

#[test]
fn a_device_sharing_its_bridge_is_not_accepted() {
    let g = iommu_guest(Opts::new(IommuPolicy::Strict));
    g.hv.add_iommu_device_on_bridge(ACCEPTED, 64, BRIDGE);
    g.hv.add_iommu_device_on_bridge(UNTRUSTED, 64, BRIDGE);
    g.hv.tdisp_bind(ACCEPTED);
    let mut acc = g.layer.attach(cfg(ACCEPTED, 64)).unwrap();
    let unt = g.layer.attach(cfg(UNTRUSTED, 64)).unwrap();
    let accepted = g.layer.accept(&mut acc);
    if accepted.is_ok() {
        // What the check prevents: the untrusted sibling reads the accepted device's private buffer.
        let data = pattern(4096, 3);
        let phys = g.hv.alloc(4096, Region::High);
        g.hv.memory().write(phys, &data);
        // SAFETY: a fresh allocation, used by this mapping only.
        let buf = unsafe { g.hv.slice_mut(phys, 4096) };
        let m = g.layer.on(&acc).map_to_device(buf).unwrap();
        let _ = g.hv.device(UNTRUSTED).read(m.bus_addr().0, 4096);
        panic!(
            "accepted on a shared bridge: {} entries the untrusted sibling reaches name private memory, {:?}",
            g.hv.tces_to_private(),
            g.hv.faults().last()
        );
    }
    assert_eq!(accepted, Err(DmaError::Iommu(IommuError::EndpointShared { devices: 1 })));
    assert!(!g.hv.is_accepted(ACCEPTED), "the platform was asked to accept");
    assert_eq!(acc.path(), DmaPath::IommuStrict);
    g.layer.detach(unt).unwrap();
    // Alone on its bridge now: accepted.
    g.layer.accept(&mut acc).unwrap();
    assert_eq!(acc.path(), DmaPath::TrustedIommu);
    g.layer.revoke(&mut acc).unwrap();
    g.layer.detach(acc).unwrap();
    assert_no_faults(g.hv);
}

#[test]
fn no_device_joins_the_bridge_of_an_accepted_device() {
    let g = iommu_guest(Opts::new(IommuPolicy::Premapped));
    g.hv.add_iommu_device_on_bridge(ACCEPTED, 64, BRIDGE);
    g.hv.add_iommu_device_on_bridge(UNTRUSTED, 64, BRIDGE);
    g.hv.tdisp_bind(ACCEPTED);
    let mut acc = g.layer.attach(cfg(ACCEPTED, 64)).unwrap();
    g.layer.accept(&mut acc).unwrap();
    let tables = g.hv.tce_tables();
    let e = g.layer.attach(cfg(UNTRUSTED, 64)).unwrap_err();
    assert_eq!(e, DmaError::Iommu(IommuError::EndpointShared { devices: 1 }));
    assert_eq!(g.hv.tce_tables(), tables, "a refused attach changed the windows");
    // Revoked, its private entries are gone: the sibling may join.
    g.layer.revoke(&mut acc).unwrap();
    let unt = g.layer.attach(cfg(UNTRUSTED, 64)).unwrap();
    g.layer.detach(unt).unwrap();
    g.layer.detach(acc).unwrap();
    assert_eq!((g.hv.tce_counters().live_entries, g.hv.tce_counters().ddws), (0, 0));
    assert_no_faults(g.hv);
}
