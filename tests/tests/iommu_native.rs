//! Issue 10: the IOMMU mechanism apart from its policy. The same layer policy (premapped windows,
//! strict per-mapping entries) programmed through a native range backend ([`IommuBackend`]: map and
//! unmap whole ranges, as virtio-iommu's MAP/UNMAP do) instead of PAPR TCE hypercalls. The backend
//! here drives the model's translation tables range by range, so the model's device DMA checks
//! every access exactly as on the TCE path, and no TCE hypercall is ever made by the layer.

mod native_support;

use ccdma::{BusAddr, DeviceConfig, DmaAttrs, DmaDirection, DmaLayer, DmaMask, DmaPath, IommuConfig};
use ccdma_hv_model::{CallKind, Region};
use ccdma_tests::*;
use native_support::{native_layer, native_platform, NativePlatform};

fn native(policy: IommuConfig) -> (&'static NativePlatform, DmaLayer<'static, &'static NativePlatform>) {
    let platform = native_platform(6 * GIB);
    (platform, native_layer(platform, 4 * MIB, policy))
}

fn round_trip(policy: IommuConfig, want: DmaPath) {
    let (p, layer) = native(policy);
    let hv = p.hv;
    hv.add_iommu_device(1, 32);
    let dev = layer.attach(DeviceConfig::new(1, DmaMask::BITS_32)).unwrap();
    assert_eq!(layer.path_of(&dev), want);
    let phys = hv.alloc(8192, Region::High);
    let data = pattern(8192, 3);
    hv.memory().write(phys, &data);
    // SAFETY: the test's own allocation, used only through this slice while mapped.
    let buf = unsafe { hv.slice_mut(phys, 8192) };
    let m = layer.map_to_device(&dev, buf, DmaAttrs::NONE).unwrap();
    assert_eq!(hv.device(1).read(m.bus_addr().0, 8192).unwrap(), data);
    let bus = m.bus_addr();
    m.unmap().unwrap();
    // SAFETY: as above; the previous mapping has ended.
    let buf = unsafe { hv.slice_mut(phys, 8192) };
    let m = layer.map(&dev, buf, DmaDirection::FromDevice, DmaAttrs::NONE).unwrap();
    hv.device(1).write(m.bus_addr().0, &pattern(8192, 4)).unwrap();
    m.unmap().unwrap();
    assert_eq!(hv.memory().read(phys, 8192), pattern(8192, 4));
    if want == DmaPath::IommuStrict {
        // Unmapped: the entries are gone, the device faults.
        assert!(hv.device(1).read(bus.0, 16).is_err());
        hv.clear_faults();
    }
    // The mechanism was the native backend: requests to it, not one TCE hypercall from the layer.
    let s = layer.iommu_stats();
    assert!(s.native_maps > 0 && p.map_requests.load(std::sync::atomic::Ordering::Relaxed) == s.native_maps);
    assert_eq!(s.tce_hypercalls(), 0);
    assert_eq!(hv.calls().count(CallKind::PutTceIndirect), 0);
    assert_eq!(hv.tces_to_private(), 0);
    layer.detach(dev).unwrap();
    assert!(hv.reachable(1).is_empty(), "a detached device still reaches memory");
    assert_eq!(layer.iommu_stats().live_tces, 0);
    assert_no_faults(hv);
    let _ = BusAddr(0);
}

#[test]
fn premapped_policy_through_a_native_backend() {
    round_trip(IommuConfig::premapped().with_ddw(false), DmaPath::IommuPremapped);
}

#[test]
fn strict_policy_through_a_native_backend() {
    round_trip(IommuConfig::strict(), DmaPath::IommuStrict);
}
