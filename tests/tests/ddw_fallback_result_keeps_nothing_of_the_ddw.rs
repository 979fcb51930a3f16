//! Set-up writes a domain's result in place (issue 20: no copies on the set-up's frames): a DDW
//! attempt that fails after the window was created and its result begun must leave nothing of it in
//! the result the default window's set-up publishes: no DDW among the device's windows, the pool's
//! premapped range in the default window, the device's maps there, the removed DDW's bus range
//! never handed out. Asserted on the layer's windows and ranges and on the model's windows and reach.

mod iommu_support;

use ccdma::iommu::{BusRange, DdwOutcome, IommuError, RangeKind};
use ccdma::{DeviceConfig, DmaMask, DmaPath, IommuPolicy, PathReason};
use ccdma_hv_model::{CallKind, Injection};
use iommu_support::*;

const H_PARAMETER: i64 = -4;

#[test]
fn a_failed_ddw_leaves_nothing_in_the_default_window_result() {
    let g = iommu_guest(Opts::new(IommuPolicy::Premapped));
    g.hv.add_iommu_device(3, 64);
    // The pool's one 16 MiB DDW entry fails: the DDW is removed, the default window used.
    g.hv.calls().inject_next(CallKind::PutTce, Injection::Fail(H_PARAMETER));
    let dev = g.layer.attach(DeviceConfig::new(3, DmaMask::BITS_64)).unwrap();
    assert_eq!(dev.path(), DmaPath::IommuPremapped);
    assert_eq!(
        g.layer.path_reason(&dev),
        Some(PathReason::DefaultWindow(DdwOutcome::PremapFailed(IommuError::Hcall(H_PARAMETER))))
    );
    let (default, ddw) = g.layer.windows_of(&dev);
    assert!(ddw.is_none(), "a removed DDW among the windows: {ddw:?}");
    let win = default.expect("the default window");
    assert_eq!(g.hv.tce_counters().ddws, 0);
    let mut ranges = [BusRange::EMPTY; 16];
    let n = g.layer.bus_ranges_of(&dev, &mut ranges);
    let premaps: Vec<_> = ranges[..n].iter().filter(|r| matches!(r.kind, RangeKind::Premap { .. })).collect();
    assert_eq!(premaps.len(), 1, "{:x?}", &ranges[..n]);
    assert!(
        premaps[0].start >= win.start && premaps[0].end() <= win.end(),
        "{:?} not in {win:?}",
        premaps[0]
    );
    let pool_bus = g.layer.pool_bus_of(&dev, 0).expect("the pool's bus base");
    assert_eq!(pool_bus.0, premaps[0].start);
    // A map lands in the default window and the device reaches only the pool.
    let m = g.layer.on(&dev).map_to_device(&[5u8; 256]).unwrap();
    assert!(m.bus_addr().0 >= win.start && m.bus_addr().0 < win.end(), "{:?} outside {win:?}", m.bus_addr());
    g.assert_reach_within(3, &[g.pool_range()]);
    m.unmap().unwrap();
    g.layer.detach(dev).unwrap();
    assert_eq!(g.hv.tce_counters().live_entries, 0);
}
