//! Issue 19: a platform may split one partitionable endpoint into several ccdma domains (the pseries
//! test kernel gives each device of its one bridge a slice of the default window and an endpoint of
//! its own, `TceCalls::endpoint`). A 64-bit device of such a platform that finds no window left must
//! not make room the Linux way: resetting the endpoint or removing its default window would wipe the
//! entries of the other domains that use it. ccdma checks that no other domain uses the window first,
//! and falls back to the default window. Seen failing with the check disabled ("made room in a
//! window others use": one reset). On QEMU the same reset, provoked by a 64-bit rng given an endpoint
//! of its own, wiped every device's entries on the bridge (22 checks failed).

use std::ptr::NonNull;

use ccdma::iommu::{BusRange, DdwQuery, TceCalls, WindowGeometry};
use ccdma::{
    BusAddr, DeviceConfig, DmaLayer, DmaMask, DmaPath, IommuConfig, MemorySharing, PartialSharing, PhysAddr,
    PhysMemory, Platform, PoolConfig,
};
use ccdma_hv_model::{HvConfig, Hypervisor, TceConfig};
use ccdma_tests::*;

/// The model behind a platform that reports every device as an endpoint of its own (each with a
/// slice of the shared default window, the rest reserved), as the pseries test kernel does.
struct Partitioned(&'static Hypervisor);

const SLICE: u64 = 256 << 20;

fn slice_of(device: u32) -> (u64, u64) {
    let i = u64::from(device);
    (i * SLICE, (i + 1) * SLICE)
}

impl MemorySharing for Partitioned {
    fn share(&self, phys: PhysAddr, pages: u64) -> Result<(), PartialSharing> {
        self.0.share(phys, pages)
    }
    fn unshare(&self, phys: PhysAddr, pages: u64) -> Result<(), PartialSharing> {
        self.0.unshare(phys, pages)
    }
}

// SAFETY: forwards to the model, whose answers are truthful.
unsafe impl PhysMemory for Partitioned {
    fn cpu_ptr(&self, phys: PhysAddr, len: usize) -> Option<NonNull<u8>> {
        self.0.cpu_ptr(phys, len)
    }
    fn virt_to_phys(&self, ptr: *const u8, len: usize) -> Option<PhysAddr> {
        self.0.virt_to_phys(ptr, len)
    }
    fn ram_end(&self) -> PhysAddr {
        self.0.ram_end()
    }
}

impl Platform for Partitioned {
    fn is_confidential(&self) -> bool {
        true
    }
    fn shared_bus_addr(&self, phys: PhysAddr) -> BusAddr {
        self.0.shared_bus_addr(phys)
    }
    fn shared_phys_addr(&self, bus: BusAddr) -> PhysAddr {
        self.0.shared_phys_addr(bus)
    }
    fn tce(&self) -> Option<&dyn TceCalls> {
        Some(self)
    }
}

impl TceCalls for Partitioned {
    fn endpoint(&self, device: u32) -> u64 {
        1 << 32 | u64::from(device)
    }
    fn default_window(&self, device: u32) -> Option<WindowGeometry> {
        self.0.default_window(device)
    }
    fn behind_iommu(&self, device: u32) -> bool {
        self.0.behind_iommu(device)
    }
    fn reserved_range(&self, device: u32, index: usize) -> Option<(u64, u64)> {
        let (start, end) = slice_of(device);
        [(0, start), (end, (1 << 30) - end)].into_iter().filter(|r| r.1 != 0).nth(index)
    }
    fn indirect_available(&self) -> bool {
        self.0.indirect_available()
    }
    fn h_put_tce(&self, liobn: u32, ioba: u64, tce: u64) -> i64 {
        self.0.h_put_tce(liobn, ioba, tce)
    }
    fn h_get_tce(&self, liobn: u32, ioba: u64) -> (i64, u64) {
        self.0.h_get_tce(liobn, ioba)
    }
    fn h_put_tce_indirect(&self, liobn: u32, ioba: u64, list: PhysAddr, count: u64) -> i64 {
        self.0.h_put_tce_indirect(liobn, ioba, list, count)
    }
    fn h_stuff_tce(&self, liobn: u32, ioba: u64, value: u64, count: u64) -> i64 {
        self.0.h_stuff_tce(liobn, ioba, value, count)
    }
    fn ddw_query(&self, device: u32) -> Result<DdwQuery, i64> {
        self.0.ddw_query(device)
    }
    fn ddw_create(&self, device: u32, page_shift: u32, window_shift: u32) -> Result<WindowGeometry, i64> {
        self.0.ddw_create(device, page_shift, window_shift)
    }
    fn ddw_remove(&self, device: u32, liobn: u32) -> i64 {
        self.0.ddw_remove(device, liobn)
    }
    fn ddw_reset(&self, device: u32) -> i64 {
        self.0.ddw_reset(device)
    }
}

#[test]
fn a_partitioned_endpoint_is_never_reset_for_a_second_ddw() {
    let hv = model(HvConfig::pseries(6 * GIB));
    hv.enable_iommu(TceConfig::default());
    for (id, bits) in [(1, 32), (2, 64), (3, 64)] {
        hv.add_iommu_device_on_bridge(id, bits, 9);
    }
    let platform: &'static Partitioned = Box::leak(Box::new(Partitioned(hv)));
    let mut layer = DmaLayer::new(platform);
    // SAFETY: the model never hands this range out.
    unsafe {
        layer.add_pool(
            PhysAddr(MID_POOL),
            4 << 20,
            vec![ccdma::SlotMeta::EMPTY; 2048].leak(),
            PoolConfig::default(),
        )
    }
    .unwrap();
    // SAFETY: no list page.
    unsafe {
        layer.enable_iommu(IommuConfig::premapped().with_max_domains(4), vec![BusRange::EMPTY; 256].leak())
    }
    .unwrap();
    let narrow = layer.attach(DeviceConfig::new(1, DmaMask::BITS_32)).unwrap();
    let wide = layer.attach(DeviceConfig::new(2, DmaMask::BITS_64)).unwrap();
    assert_eq!((narrow.path(), wide.path()), (DmaPath::IommuPremapped, DmaPath::IommuDdw));
    let before = (hv.tce_tables(), hv.tce_counters().live_entries);
    // A third domain on the same endpoint: the bridge's DDW is taken, no window is left.
    let second = layer.attach(DeviceConfig::new(3, DmaMask::BITS_64)).unwrap();
    let stats = layer.iommu_stats();
    assert_eq!((stats.ddw_reset, stats.default_removed), (0, 0), "made room in a window others use");
    assert_eq!(second.path(), DmaPath::IommuPremapped, "falls back to its slice of the default window");
    assert_eq!(hv.tce_tables().len(), before.0.len(), "a window of another domain went");
    let data = pattern(3000, 1);
    for dev in [&narrow, &wide, &second] {
        let m = layer.on(dev).map_to_device(&data).unwrap();
        assert_eq!(hv.device(dev.config().id).read(m.bus_addr().0, 3000).unwrap(), data);
        m.unmap().map_err(|r| r.error).unwrap();
    }
    for dev in [second, wide, narrow] {
        layer.detach(dev).unwrap();
    }
    assert_eq!((hv.tce_counters().live_entries, hv.tce_counters().ddws), (0, 0));
    assert_eq!(layer.iommu_stats().leaked_windows, 0);
    assert_no_faults(hv);
}
