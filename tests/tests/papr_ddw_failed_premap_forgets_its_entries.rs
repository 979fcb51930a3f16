//! A DDW set-up whose second pool cannot be entered: the window is removed (its table, and the first
//! pool's entries with it), the entries are no longer counted live and their bus ranges are
//! forgotten, and the device falls back to the default window with both pools there. Asserted on the
//! model's windows and live entries and on the layer's own live-entry count and bus ranges.

mod iommu_support;

use ccdma::iommu::{BusRange, DdwOutcome, IommuError, RangeKind};
use ccdma::{
    DeviceConfig, DmaLayer, DmaMask, DmaPath, IommuConfig, IommuPolicy, PathReason, PhysAddr, PoolConfig,
};
use ccdma_hv_model::{CallKind, HvConfig, Injection, Region};
use ccdma_tests::*;
use iommu_support::*;

const H_PARAMETER: i64 = -4;

#[test]
fn a_ddw_whose_second_pool_fails_forgets_the_first_pools_entries() {
    let opts = Opts::new(IommuPolicy::Premapped);
    let hv = model(HvConfig::pseries(opts.ram));
    hv.enable_iommu(tce_config(&opts));
    let mut layer: iommu_support::Layer = DmaLayer::new(hv);
    add_pool(&mut layer, MID_POOL, 16 * MIB, PoolConfig::default()).unwrap();
    add_pool(&mut layer, MID_POOL + 16 * MIB, 16 * MIB, PoolConfig::default()).unwrap();
    let list_page = hv.alloc(4096, Region::Low);
    let cfg = IommuConfig {
        policy: IommuPolicy::Premapped,
        verify: opts.verify,
        use_ddw: true,
        max_domains: 8,
        batching: ccdma::TceBatching::SharedPage(PhysAddr(list_page)),
    };
    // SAFETY: the list page is a fresh allocation the test never touches.
    unsafe { layer.enable_iommu(cfg, vec![BusRange::EMPTY; 8 * 512].leak()) }.unwrap();
    hv.add_iommu_device(1, 64);
    // Each pool is one 16 MiB entry in the DDW: one H_PUT_TCE each. The second one fails.
    let puts = hv.calls().count(CallKind::PutTce);
    hv.calls().inject_at(CallKind::PutTce, puts + 2, Injection::Fail(H_PARAMETER));
    let dev = layer.attach(DeviceConfig::new(1, DmaMask::BITS_64)).unwrap();
    assert_eq!(dev.path(), DmaPath::IommuPremapped);
    assert_eq!(
        layer.path_reason(&dev),
        Some(PathReason::DefaultWindow(DdwOutcome::PremapFailed(IommuError::Hcall(H_PARAMETER))))
    );
    assert_eq!(hv.tce_counters().ddws, 0, "the DDW was removed");
    // What is live now is the default window's premapping of the two pools, nothing of the DDW.
    let live = hv.tce_counters().live_entries;
    assert_eq!(live, 2 * 16 * MIB / 4096, "both pools in the default window, 4 KiB entries");
    assert_eq!(layer.iommu_stats().live_tces, live, "the layer counts what the model holds");
    let mut ranges = [BusRange::EMPTY; 16];
    let n = layer.bus_ranges_of(&dev, &mut ranges);
    let (win, ddw) = layer.windows_of(&dev);
    let win = win.unwrap();
    assert!(ddw.is_none());
    let premaps: Vec<_> = ranges[..n].iter().filter(|r| matches!(r.kind, RangeKind::Premap { .. })).collect();
    assert_eq!(premaps.len(), 2, "one premapped range per pool, none left of the DDW: {:x?}", &ranges[..n]);
    for r in premaps {
        assert!(r.start >= win.start && r.end() <= win.end(), "{r:?} outside the default window {win:?}");
    }
    let pools = MID_POOL..MID_POOL + 32 * MIB;
    for r in hv.reachable(1) {
        assert!(pools.contains(&r.phys) && r.phys + r.len <= pools.end, "{r:?}");
    }
    layer.detach(dev).unwrap();
    assert_eq!((hv.tce_counters().live_entries, layer.iommu_stats().live_tces), (0, 0));
}
