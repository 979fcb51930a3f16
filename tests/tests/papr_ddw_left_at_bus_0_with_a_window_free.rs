//! Issue 19's leftover: a kernel before a kexec removed the default window and created a DDW in its
//! place (bus 0, the default window's LIOBN), on an endpoint that offers one more window (QEMU: the
//! query then says 1). PAPR has no call that lists an endpoint's windows, and with a window free the
//! DDW set-up never reset the endpoint (only a query answering 0 did): ccdma created its own DDW
//! beside the old one, which stayed with the old kernel's entries, and after the last detach the
//! endpoint had no default window. ccdma sees "no default window" (`TceCalls::default_window` is
//! `None`) and resets the endpoint first, which removes every DDW and brings the default window back.

mod iommu_support;

use ccdma::iommu::{TceCalls, WindowGeometry, TCE_PCI_READ};
use ccdma::{DeviceConfig, DmaMask, DmaPath, IommuPolicy};
use ccdma_tests::*;
use iommu_support::*;

const BRIDGE: u32 = 3;
/// A page the old kernel's DDW entry names.
const OLD_PAGE: u64 = 0x1234_0000;

/// An endpoint whose default window a kernel before a kexec replaced by a DDW at bus 0, with one
/// entry in it, and a window still free. Returns the guest and the original default window.
fn leftover_at_bus_0() -> (IommuGuest, WindowGeometry) {
    let g = iommu_guest(Opts { reserved: &[], ..Opts::new(IommuPolicy::Premapped) });
    g.hv.add_iommu_device_on_bridge(1, 64, BRIDGE);
    let default = g.hv.default_window(1).unwrap();
    assert_eq!(g.hv.ddw_remove(1, default.liobn), 0);
    let old = g.hv.ddw_create(1, 12, 24).unwrap();
    assert_eq!((old.start, old.liobn), (0, default.liobn));
    assert_eq!(g.hv.h_put_tce(old.liobn, 0x5000, OLD_PAGE | TCE_PCI_READ), 0);
    assert_eq!(g.hv.ddw_query(1).unwrap().windows_available, 1, "a window is still free");
    assert_eq!(g.hv.default_window(1), None);
    (g, default)
}

#[test]
fn a_64_bit_device_removes_a_ddw_left_at_bus_0_and_detach_leaves_the_default_window() {
    let (g, default) = leftover_at_bus_0();
    let dev = g.layer.attach(DeviceConfig::new(1, DmaMask::BITS_64)).unwrap();
    assert_eq!(dev.path(), DmaPath::IommuDdw);
    assert_eq!(g.hv.tces_naming(OLD_PAGE, 4096), 0, "the old kernel's entry survived");
    let ddws: Vec<_> = g.hv.tce_tables().into_iter().filter(|t| t.ddw).collect();
    assert_eq!(ddws.len(), 1, "the old DDW is still there: {ddws:?}");
    assert_eq!(Some(ddws[0].geometry), g.layer.windows_of(&dev).1);
    map_reads_back(&g, &dev);
    g.layer.detach(dev).unwrap();
    // The endpoint as before the old kernel: its default window alone, empty; nothing leaked.
    let tables = g.hv.tce_tables();
    assert_eq!(tables.len(), 1, "windows left: {tables:?}");
    assert_eq!((tables[0].geometry, tables[0].ddw, tables[0].live), (default, false, 0));
    let s = g.layer.iommu_stats();
    assert_eq!((s.leaked_windows, s.quarantined_ranges, s.live_tces), (0, 0, 0), "{s:?}");
    assert_eq!(g.layer.live_bus_ranges(), 0);
    assert_no_faults(g.hv);
}
