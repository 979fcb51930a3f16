//! Issue 10: the IOMMU mechanism apart from its policy. The same layer policy (premapped windows,
//! strict per-mapping entries) programmed through a native range backend ([`IommuBackend`]: map and
//! unmap whole ranges, as virtio-iommu's MAP/UNMAP do) instead of PAPR TCE hypercalls. The backend
//! here drives the model's translation tables range by range, so the model's device DMA checks
//! every access exactly as on the TCE path, and no TCE hypercall is ever made by the layer.

use ccdma::iommu::{BusRange, IommuBackend, PutFailure, WindowGeometry};
use ccdma::{
    BusAddr, DeviceConfig, DmaAttrs, DmaDirection, DmaLayer, DmaMask, DmaPath, IommuConfig, IommuError,
    MemorySharing, PartialSharing, PhysAddr, PhysMemory, Platform, PoolConfig, TceCalls,
};
use ccdma_hv_model::{CallKind, HvConfig, Hypervisor, Region, TceConfig};
use ccdma_tests::*;
use core::ptr::NonNull;

/// The model as a platform whose IOMMU maps ranges natively (no [`Platform::tce`]).
struct NativePlatform {
    hv: &'static Hypervisor,
    map_requests: std::sync::atomic::AtomicU64,
}

impl MemorySharing for NativePlatform {
    fn share(&self, phys: PhysAddr, pages: u64) -> Result<(), PartialSharing> {
        self.hv.share(phys, pages)
    }
    fn unshare(&self, phys: PhysAddr, pages: u64) -> Result<(), PartialSharing> {
        self.hv.unshare(phys, pages)
    }
}

// SAFETY: forwards to the model's own implementation, which upholds the contract.
unsafe impl PhysMemory for NativePlatform {
    fn cpu_ptr(&self, phys: PhysAddr, len: usize) -> Option<NonNull<u8>> {
        self.hv.cpu_ptr(phys, len)
    }
    fn virt_to_phys(&self, ptr: *const u8, len: usize) -> Option<PhysAddr> {
        self.hv.virt_to_phys(ptr, len)
    }
    fn ram_end(&self) -> PhysAddr {
        self.hv.ram_end()
    }
}

impl Platform for NativePlatform {
    fn is_confidential(&self) -> bool {
        true
    }
    fn iommu_backend(&self) -> Option<&dyn IommuBackend> {
        Some(self)
    }
}

impl IommuBackend for NativePlatform {
    fn default_window(&self, device: u32) -> Option<WindowGeometry> {
        self.hv.default_window(device)
    }
    fn map(
        &self,
        win: &WindowGeometry,
        bus: u64,
        npages: u64,
        entry: &dyn Fn(u64) -> u64,
    ) -> Result<(), PutFailure> {
        // One request per range, as a range IOMMU takes it (the model's table is filled page by page
        // underneath, which is the model's business, not the layer's).
        self.map_requests.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        for i in 0..npages {
            let rc = self.hv.h_put_tce(win.liobn, bus + (i << win.page_shift), entry(i));
            if rc != 0 {
                let cleared =
                    (0..i).all(|k| self.hv.h_put_tce(win.liobn, bus + (k << win.page_shift), 0) == 0);
                return Err(PutFailure { err: IommuError::Hcall(rc), clean: cleared });
            }
        }
        Ok(())
    }
    fn unmap(&self, win: &WindowGeometry, bus: u64, npages: u64) -> Result<(), IommuError> {
        match self.hv.h_stuff_tce(win.liobn, bus, 0, npages) {
            0 => Ok(()),
            rc => Err(IommuError::Hcall(rc)),
        }
    }
}

fn native(policy: IommuConfig) -> (&'static NativePlatform, DmaLayer<'static, &'static NativePlatform>) {
    let hv = model(HvConfig::pseries(6 * GIB));
    hv.enable_iommu(TceConfig { ddw: false, ..TceConfig::default() });
    let platform: &'static NativePlatform =
        Box::leak(Box::new(NativePlatform { hv, map_requests: Default::default() }));
    let mut layer = DmaLayer::new(platform);
    let meta = meta_for(4 * MIB, &PoolConfig::default());
    // SAFETY: a fixed test range the model never hands out.
    unsafe { layer.add_pool(PhysAddr(MID_POOL), (4 * MIB) as usize, meta, PoolConfig::default()) }.unwrap();
    // SAFETY: no list page: a native backend has none.
    unsafe { layer.enable_iommu(policy, vec![BusRange::EMPTY; 512].leak()) }.unwrap();
    (platform, layer)
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
