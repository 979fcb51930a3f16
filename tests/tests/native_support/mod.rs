//! A native range IOMMU backend over the model, shared by the native-backend tests: the platform
//! answers [`Platform::iommu_backend`] (no [`Platform::tce`]), and its backend maps whole ranges, as
//! virtio-iommu's MAP and UNMAP do. Underneath it drives the model's translation tables, so the
//! model's device DMA checks every access exactly as on the TCE path. The backend keeps its own
//! record: a log of every request, the ranges mapped now, and injectable map / unmap failures.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use ccdma::iommu::{BusRange, IommuBackend, PutFailure, WindowGeometry};
use ccdma::{
    DmaLayer, IommuConfig, IommuError, MemorySharing, PartialSharing, PhysAddr, PhysMemory, Platform,
    PoolConfig, TceCalls,
};
use ccdma_hv_model::{HvConfig, Hypervisor, TceConfig};
use ccdma_tests::*;
use core::ptr::NonNull;

/// One request the backend received.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    /// MAP of `npages` pages of window `liobn` from `bus`; page `i` to `phys + i * page`
    /// (`contiguous`: every entry said so).
    Map { liobn: u32, bus: u64, npages: u64, phys: u64, contiguous: bool, ok: bool },
    /// UNMAP of `npages` pages from `bus`.
    Unmap { liobn: u32, bus: u64, npages: u64, ok: bool },
}

/// How an injected map failure ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapFault {
    /// Half the range written, then cleared again: `clean: true`.
    Clean,
    /// Half the range written and left: `clean: false` (it may translate).
    Dirty,
}

#[derive(Default)]
struct Record {
    log: Vec<Request>,
    /// (liobn, bus) -> (npages, first physical address): the ranges mapped now.
    mapped: BTreeMap<(u32, u64), (u64, u64)>,
    /// The `n`-th next map request fails so.
    fail_map: Option<(u64, MapFault)>,
    /// The `n`-th next unmap request fails (nothing unmapped).
    fail_unmap: Option<u64>,
}

/// The model as a platform whose IOMMU maps ranges natively.
pub struct NativePlatform {
    pub hv: &'static Hypervisor,
    pub map_requests: AtomicU64,
    record: Mutex<Record>,
}

impl NativePlatform {
    /// Every request so far.
    pub fn log(&self) -> Vec<Request> {
        self.record.lock().unwrap().log.clone()
    }
    /// The ranges mapped now in window `liobn`, as `(bus, npages, phys)`.
    pub fn mapped(&self, liobn: u32) -> Vec<(u64, u64, u64)> {
        let r = self.record.lock().unwrap();
        r.mapped.range((liobn, 0)..=(liobn, u64::MAX)).map(|(&(_, bus), &(n, phys))| (bus, n, phys)).collect()
    }
    /// The `n`-th next map request (0: the next) fails as `fault`.
    pub fn fail_map_in(&self, n: u64, fault: MapFault) {
        self.record.lock().unwrap().fail_map = Some((n, fault));
    }
    /// The `n`-th next unmap request fails, unmapping nothing.
    pub fn fail_unmap_in(&self, n: u64) {
        self.record.lock().unwrap().fail_unmap = Some(n);
    }
    /// The window of `device`'s default (the native backend has no dynamic windows).
    pub fn liobn_of(&self, device: u32) -> u32 {
        self.hv.default_window(device).expect("device behind the IOMMU").liobn
    }
}

/// Count down an injection: `true` when it fires now.
fn fires(slot: &mut Option<u64>) -> bool {
    match slot {
        Some(0) => {
            *slot = None;
            true
        }
        Some(n) => {
            *n -= 1;
            false
        }
        None => false,
    }
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
        self.map_requests.fetch_add(1, Ordering::Relaxed);
        let mut r = self.record.lock().unwrap();
        let page_mask = win.page_size() - 1;
        let phys = entry(0) & !page_mask;
        let contiguous = (0..npages).all(|i| entry(i) & !page_mask == phys + (i << win.page_shift));
        let mut fault = None;
        if let Some((n, f)) = r.fail_map {
            let mut left = Some(n);
            if fires(&mut left) {
                fault = Some(f);
            }
            r.fail_map = left.map(|n| (n, f));
        }
        let put = |i: u64, e: u64| self.hv.h_put_tce(win.liobn, bus + (i << win.page_shift), e);
        let upto = if fault.is_some() { npages / 2 } else { npages };
        let mut rc = 0;
        for i in 0..upto {
            rc = put(i, entry(i));
            if rc != 0 {
                fault = Some(MapFault::Clean);
                break;
            }
        }
        let Some(fault) = fault else {
            r.log.push(Request::Map { liobn: win.liobn, bus, npages, phys, contiguous, ok: true });
            r.mapped.insert((win.liobn, bus), (npages, phys));
            return Ok(());
        };
        r.log.push(Request::Map { liobn: win.liobn, bus, npages, phys, contiguous, ok: false });
        let err = IommuError::Hcall(if rc != 0 { rc } else { -1 });
        match fault {
            MapFault::Clean => {
                let cleared = (0..upto).all(|k| put(k, 0) == 0);
                Err(PutFailure { err, clean: cleared })
            }
            MapFault::Dirty => {
                r.mapped.insert((win.liobn, bus), (upto, phys));
                Err(PutFailure { err, clean: false })
            }
        }
    }
    fn unmap(&self, win: &WindowGeometry, bus: u64, npages: u64) -> Result<(), IommuError> {
        let mut r = self.record.lock().unwrap();
        if fires(&mut r.fail_unmap) {
            r.log.push(Request::Unmap { liobn: win.liobn, bus, npages, ok: false });
            return Err(IommuError::Hcall(-1));
        }
        let rc = self.hv.h_stuff_tce(win.liobn, bus, 0, npages);
        r.log.push(Request::Unmap { liobn: win.liobn, bus, npages, ok: rc == 0 });
        if rc != 0 {
            return Err(IommuError::Hcall(rc));
        }
        // Forget every recorded range inside the unmapped one.
        let end = bus + (npages << win.page_shift);
        r.mapped.retain(|&(l, b), _| l != win.liobn || b < bus || b >= end);
        Ok(())
    }
}

/// A pseries model (`ram` bytes) with its IOMMU on (default windows only), as a native platform.
pub fn native_platform(ram: u64) -> &'static NativePlatform {
    let hv = model(HvConfig::pseries(ram));
    hv.enable_iommu(TceConfig { ddw: false, ..TceConfig::default() });
    Box::leak(Box::new(NativePlatform { hv, map_requests: Default::default(), record: Default::default() }))
}

/// A layer over `platform` with one pool of `pool_len` bytes at [`MID_POOL`] and the IOMMU under
/// `policy`.
pub fn native_layer(
    platform: &'static NativePlatform,
    pool_len: u64,
    policy: IommuConfig,
) -> DmaLayer<'static, &'static NativePlatform> {
    let mut layer = DmaLayer::new(platform);
    let meta = meta_for(pool_len, &PoolConfig::default());
    // SAFETY: a fixed test range the model never hands out.
    unsafe { layer.add_pool(PhysAddr(MID_POOL), pool_len as usize, meta, PoolConfig::default()) }.unwrap();
    // SAFETY: no list page: a native backend has none.
    unsafe { layer.enable_iommu(policy, vec![BusRange::EMPTY; 512].leak()) }.unwrap();
    layer
}
