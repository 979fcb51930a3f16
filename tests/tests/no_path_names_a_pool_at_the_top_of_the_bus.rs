//! Issue 20, no panic paths: a device that no pool serves is refused with `NoPath`, which names the
//! lowest pool's bus end. A platform whose bus encoding puts a pool at the top of the bus (bus base +
//! length past `u64::MAX`: an absurd encoding, but `Platform::shared_bus_addr` is safe code and the C
//! platform's hook is the caller's) made that sum overflow, a panic with overflow checks on (the CI
//! profile). The end now saturates: the attach fails with the error, nothing shared or faulted beyond
//! the pool's own pages.

use ccdma::{BusEncoding, DeviceConfig, DmaError, DmaLayer, DmaMask, PoolConfig};
use ccdma_hv_model::HvConfig;
use ccdma_tests::*;

#[test]
fn attach_with_a_pool_at_the_top_of_the_bus_is_refused_with_no_path() {
    // Shared memory at phys reaches the device at `phys | 0xffff_ffff_fff0_0000`.
    let top = BusEncoding { set: !0xf_ffff, clear: 0 };
    let hv = model(HvConfig { bus_encoding: top, ..HvConfig::pseries(2 * GIB) });
    let mut layer = DmaLayer::new(hv);
    add_pool(&mut layer, LOW_POOL, MIB, PoolConfig::default()).unwrap();
    let shared = hv.shared_pages();
    assert_eq!(shared, MIB / 4096, "the pool's pages are shared");
    let e = layer.attach(DeviceConfig::new(1, DmaMask::BITS_32)).unwrap_err();
    assert_eq!(e, DmaError::NoPath { mask: DmaMask::BITS_32, pools: 1, lowest_pool_bus_end: u64::MAX });
    assert!(e.to_string().contains("lowest ends at bus 0xffffffffffffffff"), "{e}");
    // Nothing else happened: no page shared or unshared, no fault, and the id is free again.
    assert_eq!(hv.shared_pages(), shared);
    assert!(hv.faults().is_empty(), "{:?}", hv.faults());
    let e = layer.attach(DeviceConfig::new(1, DmaMask::BITS_32)).unwrap_err();
    assert!(matches!(e, DmaError::NoPath { .. }), "{e:?}");
}
