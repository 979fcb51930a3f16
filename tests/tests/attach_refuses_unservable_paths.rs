//! Issue 18 item 8: attach must not promise a path it cannot serve. A strict window whose IOMMU
//! pages are larger than the longest run of any pool (2 MiB default-window pages, 256 KiB runs) would
//! fail every map with `TooLarge { len: 1, max: 0 }`; a segment boundary mask that is not `2^n - 1`
//! would be refused only later, by `map_sg`. Both are refused at attach, with the reason, and
//! nothing stays claimed.

mod iommu_support;

use ccdma::iommu::BusRange;
use ccdma::{
    DeviceConfig, DmaAttrs, DmaDirection, DmaError, DmaLayer, DmaMask, DmaPath, IommuConfig, IommuPolicy,
    PoolConfig,
};
use ccdma_hv_model::{HvConfig, TceConfig};
use ccdma_tests::*;

fn big_page_guest(
    policy: IommuPolicy,
    page_shift: u32,
) -> (&'static ccdma_hv_model::Hypervisor, DmaLayer<'static, &'static ccdma_hv_model::Hypervisor>) {
    let hv = model(HvConfig::pseries(2 * GIB));
    hv.enable_iommu(TceConfig { default_page_shift: page_shift, ddw: false, ..TceConfig::default() });
    let mut layer = DmaLayer::new(hv);
    add_pool(&mut layer, 0x400_0000, 16 * MIB, PoolConfig::default()).unwrap();
    let cfg = IommuConfig { policy, ..IommuConfig::strict() }.with_ddw(false);
    // SAFETY: no list page.
    unsafe { layer.enable_iommu(cfg, vec![BusRange::EMPTY; 8 * 64].leak()) }.unwrap();
    (hv, layer)
}

#[test]
fn a_strict_window_with_pages_larger_than_any_run_is_refused_at_attach() {
    let (hv, layer) = big_page_guest(IommuPolicy::Strict, 21);
    hv.add_iommu_device(1, 32);
    let e = layer.attach(DeviceConfig::new(1, DmaMask::BITS_32)).unwrap_err();
    assert_eq!(
        e,
        DmaError::IommuPageTooLarge { page: 2 << 20, max_run: 256 << 10 },
        "attach must say why no strict mapping could ever be made"
    );
    assert!(e.to_string().contains("0x200000"), "{e}");
    // Nothing stays claimed: the slot is free for another device, and no entry was written.
    assert_eq!(hv.tce_counters().live_entries, 0);
    assert_eq!(layer.live_bus_ranges(), 0);
    // A 64 KiB page fits a 256 KiB run: that strict window serves.
    let (hv, layer) = big_page_guest(IommuPolicy::Strict, 16);
    hv.add_iommu_device(1, 32);
    let dev = layer.attach(DeviceConfig::new(1, DmaMask::BITS_32)).unwrap();
    assert_eq!(dev.path(), DmaPath::IommuStrict);
    let mut buf = [9u8; 64];
    let m = layer.map(&dev, &mut buf, DmaDirection::ToDevice, DmaAttrs::NONE).unwrap();
    assert_eq!(hv.device(1).read(m.bus_addr().0, 64).unwrap(), [9u8; 64]);
    m.unmap().unwrap();
    layer.detach(dev).unwrap();
    // Premapped on 2 MiB pages serves too (the pool is entered whole, no run needs a page).
    let (hv, layer) = big_page_guest(IommuPolicy::Premapped, 21);
    hv.add_iommu_device(1, 32);
    let dev = layer.attach(DeviceConfig::new(1, DmaMask::BITS_32)).unwrap();
    assert_eq!(dev.path(), DmaPath::IommuPremapped);
    layer.detach(dev).unwrap();
}

#[test]
fn a_deferred_device_is_refused_at_its_first_map() {
    let (hv, layer) = big_page_guest(IommuPolicy::Strict, 21);
    hv.add_iommu_device(1, 32);
    let dev = layer.attach(DeviceConfig::new(1, DmaMask::BITS_32).with_deferred_attach(true)).unwrap();
    let mut buf = [9u8; 64];
    let e = layer.map(&dev, &mut buf, DmaDirection::ToDevice, DmaAttrs::NONE).unwrap_err();
    assert_eq!(e, DmaError::IommuPageTooLarge { page: 2 << 20, max_run: 256 << 10 });
    layer.detach(dev).unwrap();
}

#[test]
fn a_segment_boundary_mask_that_is_not_two_to_the_n_minus_one_is_refused_at_attach() {
    let (hv, layer) = guest(HvConfig::pseries(2 * GIB), &[(MID_POOL, 4 * MIB)]);
    for (id, bad) in [(1u32, 0x1234u64), (3, 0xFFFF_0000), (4, u64::MAX - 1)] {
        hv.add_device(id, 64);
        let e = layer
            .attach(DeviceConfig::new(id, DmaMask::BITS_64).with_segment_boundary_mask(bad))
            .unwrap_err();
        assert_eq!(e, DmaError::InvalidSegmentBoundary(bad));
    }
    hv.add_device(6, 64);
    let e = layer.attach(DeviceConfig::new(6, DmaMask::BITS_64).with_max_segment_size(0)).unwrap_err();
    assert_eq!(e, DmaError::ZeroMaxSegment);
    for (id, good) in [(10u32, 0xFFFFu64), (11, u64::MAX), (12, 0xFFF)] {
        hv.add_device(id, 64);
        let dev =
            layer.attach(DeviceConfig::new(id, DmaMask::BITS_64).with_segment_boundary_mask(good)).unwrap();
        layer.detach(dev).unwrap();
    }
    // Behind the IOMMU too, before any domain is claimed.
    let g = iommu_support::iommu_guest(iommu_support::Opts::new(IommuPolicy::Premapped));
    g.hv.add_iommu_device(5, 32);
    let e = g
        .layer
        .attach(DeviceConfig::new(5, DmaMask::BITS_32).with_segment_boundary_mask(0x1234))
        .unwrap_err();
    assert_eq!(e, DmaError::InvalidSegmentBoundary(0x1234));
    assert_eq!(g.hv.tce_counters().live_entries, 0);
    let ok = g.layer.attach(DeviceConfig::new(5, DmaMask::BITS_32)).unwrap();
    g.layer.detach(ok).unwrap();
}
