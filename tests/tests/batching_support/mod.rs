//! Shared set-up for the TCE batching tests and figures: a secure pseries guest with one pool, the
//! strict policy, a 32-bit device behind the modelled IOMMU, and list pages set aside for any
//! batching.
#![allow(dead_code)]

use ccdma::iommu::BusRange;
use ccdma::{
    DeviceConfig, DmaAttrs, DmaDirection, DmaError, DmaLayer, DmaMask, IommuConfig, PhysAddr, PoolConfig,
    TceBatching, VerifyPolicy,
};
use ccdma_hv_model::{CallKind, HvConfig, Hypervisor, PageState, Region, TceConfig};
use ccdma_tests::*;

pub const POOL_LEN: u64 = 16 * MIB;
pub const POOL_PAGES: u64 = POOL_LEN / 4096;
pub const MAP: usize = 256 * 1024;

/// Which batching a guest uses; the list pages are placed by the guest builder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    PerEntry,
    PerCpu(usize),
    Shared,
}

pub struct Guest {
    pub hv: &'static Hypervisor,
    pub layer: Layer,
    /// First list page (four pages are set aside whatever the mode).
    pub list: u64,
    pub dev: Option<ccdma::Device>,
}

pub fn batching(mode: Mode, list: u64) -> TceBatching {
    match mode {
        Mode::PerEntry => TceBatching::PerEntry,
        Mode::PerCpu(count) => TceBatching::PerCpuPages { first: PhysAddr(list), count },
        Mode::Shared => TceBatching::SharedPage(PhysAddr(list)),
    }
}

/// A secure pseries guest with one 16 MiB pool, the strict policy, and a 32-bit device.
pub fn strict_guest(mode: Mode, page_shift: u32, verify: VerifyPolicy) -> Guest {
    let hv = model(HvConfig::pseries(6 * GIB));
    hv.enable_iommu(TceConfig { default_page_shift: page_shift, ..TceConfig::default() });
    let list = hv.alloc(4 * 4096, Region::Low);
    let mut layer: Layer = DmaLayer::new(hv);
    add_pool(&mut layer, MID_POOL, POOL_LEN, PoolConfig::default()).unwrap();
    let cfg = IommuConfig::strict().with_verify(verify).with_batching(batching(mode, list));
    // SAFETY: the four list pages are a fresh allocation the test never touches.
    unsafe { layer.enable_iommu(cfg, vec![BusRange::EMPTY; 8 * 64].leak()) }.unwrap();
    hv.add_iommu_device(2, 32);
    let dev = layer.attach(DeviceConfig::new(2, DmaMask::BITS_32)).unwrap();
    Guest { hv, layer, list, dev: Some(dev) }
}

impl Guest {
    pub fn dev(&self) -> &ccdma::Device {
        self.dev.as_ref().unwrap()
    }

    /// Detach the device and turn the IOMMU path off.
    pub fn disable(&mut self) -> Result<(), DmaError> {
        if let Some(dev) = self.dev.take() {
            self.layer.detach(dev).unwrap();
        }
        self.layer.disable_iommu()
    }

    /// Map `len` bytes of `buf` to the device, check what it reads, unmap.
    pub fn round_trip(&self, buf: u64, len: usize, seed: u64) -> Result<(), DmaError> {
        self.hv.memory().write(buf, &pattern(len, seed));
        // SAFETY: the test owns `buf` and leaves it alone until the mapping ends.
        let bus = unsafe {
            self.layer.map_phys(self.dev(), PhysAddr(buf), len, DmaDirection::ToDevice, DmaAttrs::NONE)
        }?;
        assert_eq!(self.hv.device(2).read(bus.0, len).unwrap(), pattern(len, seed));
        // SAFETY: as above.
        unsafe { self.layer.unmap(self.dev(), bus, len, DmaDirection::ToDevice, DmaAttrs::NONE) }
    }

    pub fn calls(&self, kind: CallKind) -> u64 {
        self.hv.calls().count(kind)
    }

    /// Nothing of the IOMMU path is live, and nothing private was listed, reached or faulted on.
    pub fn assert_baseline(&self) {
        assert_eq!(self.hv.tce_counters().live_entries, 0, "live entries in the model");
        assert_eq!(self.layer.iommu_stats().live_tces, 0, "guest counts live entries");
        assert_eq!(self.layer.stats().slots_in_use, 0);
        assert_eq!(self.layer.live_bus_ranges(), 0);
        assert_eq!(self.hv.tce_counters().listed_private_entries, 0);
        assert_eq!(self.hv.tce_counters().unshared_lists, 0);
        assert_eq!(self.hv.tces_to_private(), 0);
        assert_no_faults(self.hv);
    }

    pub fn page_state(&self, i: u64) -> PageState {
        self.hv.memory().state(self.list + i * 4096)
    }
}
