//! Shared set-up for the IOMMU integration tests: a pseries guest whose devices sit behind the
//! modelled TCE IOMMU, a layer with one pool, and checks of what the model says a device can reach.
#![allow(dead_code)]

use ccdma::iommu::BusRange;
use ccdma::{
    DeviceConfig, DmaLayer, DmaMask, DmaPath, IommuConfig, IommuPolicy, PhysAddr, PoolConfig, VerifyPolicy,
};
use ccdma_hv_model::{CallKind, HvConfig, Hypervisor, Reach, Region, TceConfig};
use ccdma_tests::*;

/// The layer type the tests use.
pub type Layer = DmaLayer<'static, &'static Hypervisor>;

/// Reserved in every device window: firmware at the bottom, a host-bridge range, an MSI doorbell.
pub const RESERVED: [(u64, u64); 3] = [(0, MIB), (0x4000_0000, 16 * MIB), (0x7FF0_0000, MIB)];

/// What a test guest looks like.
#[derive(Clone, Copy, Debug)]
pub struct Opts {
    pub policy: IommuPolicy,
    pub ddw: bool,
    pub indirect: bool,
    pub pool_len: u64,
    pub pool_at: u64,
    pub verify: VerifyPolicy,
    pub ram: u64,
    /// Bus ranges the platform reserves in every window.
    pub reserved: &'static [(u64, u64)],
    /// 0: one shared list page (`TceBatching::SharedPage`); n: n per-CPU list pages.
    pub per_cpu_pages: usize,
}

impl Opts {
    pub fn new(policy: IommuPolicy) -> Opts {
        Opts {
            policy,
            ddw: true,
            indirect: true,
            pool_len: 16 * MIB,
            pool_at: MID_POOL,
            verify: VerifyPolicy::Ends,
            ram: 6 * GIB,
            reserved: &RESERVED,
            per_cpu_pages: 0,
        }
    }
}

/// A guest: model, layer, pool.
pub struct IommuGuest {
    pub hv: &'static Hypervisor,
    pub layer: Layer,
    pub opts: Opts,
    pub list_page: u64,
}

/// The model's IOMMU configuration for `opts`.
pub fn tce_config(opts: &Opts) -> TceConfig {
    TceConfig {
        reserved: opts.reserved.to_vec(),
        indirect: opts.indirect,
        ddw: opts.ddw,
        ..TceConfig::default()
    }
}

/// Build the guest: IOMMU on in the model and the layer, one pool.
pub fn iommu_guest(opts: Opts) -> IommuGuest {
    let hv = model(HvConfig::pseries(opts.ram));
    hv.enable_iommu(tce_config(&opts));
    let mut layer = DmaLayer::new(hv);
    add_pool(&mut layer, opts.pool_at, opts.pool_len, PoolConfig::default()).unwrap();
    let list_page = hv.alloc(4096 * opts.per_cpu_pages.max(1) as u64, Region::Low);
    let batching = match opts.per_cpu_pages {
        0 => ccdma::TceBatching::SharedPage(PhysAddr(list_page)),
        count => ccdma::TceBatching::PerCpuPages { first: PhysAddr(list_page), count },
    };
    let cfg =
        IommuConfig { policy: opts.policy, verify: opts.verify, use_ddw: true, max_domains: 8, batching };
    let ranges = vec![BusRange::EMPTY; 8 * 512].leak();
    // SAFETY: the list pages are a fresh allocation the test never touches.
    unsafe { layer.enable_iommu(cfg, ranges) }.unwrap();
    IommuGuest { hv, layer, opts, list_page }
}

impl IommuGuest {
    /// Add a device behind the IOMMU in the model and attach it.
    pub fn device(&self, id: u32, bits: u32) -> ccdma::Device {
        self.hv.add_iommu_device(id, bits);
        self.layer.attach(DeviceConfig::new(id, DmaMask::new(bits).unwrap())).unwrap()
    }

    /// Pages of `[phys, phys + len)`.
    pub fn pool_range(&self) -> (u64, u64) {
        (self.opts.pool_at, self.opts.pool_at + self.opts.pool_len)
    }

    /// Every page the device can reach lies in one of `allowed` (`[start, end)` physical ranges) and
    /// inside the pool or a coherent buffer, never on private memory.
    pub fn assert_reach_within(&self, dev: u32, allowed: &[(u64, u64)]) -> Vec<Reach> {
        let reach = self.hv.reachable(dev);
        for r in &reach {
            assert!(
                allowed.iter().any(|&(s, e)| r.phys >= s && r.phys + r.len <= e),
                "device {dev:#x} reaches {r:?} outside {allowed:x?}"
            );
        }
        assert_eq!(self.hv.tces_to_private(), 0, "a live TCE targets private memory");
        reach
    }

    /// Sum of the model's hypercall counters for the TCE calls.
    pub fn tce_calls(&self) -> u64 {
        [CallKind::PutTce, CallKind::GetTce, CallKind::PutTceIndirect, CallKind::StuffTce]
            .iter()
            .map(|&k| self.hv.calls().count(k))
            .sum()
    }
}

/// The path a device of `bits` must get under `opts`, per DESIGN.md section 6 (with a 16 MiB pool:
/// a 24-bit device's window below its mask holds 15 MiB once the firmware MiB is reserved).
pub fn expected_path(opts: &Opts, bits: u32) -> DmaPath {
    match opts.policy {
        IommuPolicy::Strict => DmaPath::IommuStrict,
        IommuPolicy::Premapped if bits == 64 && opts.ddw => DmaPath::IommuDdw,
        IommuPolicy::Premapped => {
            let below = (1u64 << bits.min(63)).min(2 * GIB);
            let reserved: u64 = RESERVED.iter().filter(|r| r.0 < below).map(|r| r.1.min(below - r.0)).sum();
            if below - reserved >= opts.pool_len {
                DmaPath::IommuPremapped
            } else {
                DmaPath::IommuStrict
            }
        }
    }
}

/// A map through the device reads back (6,000 bytes to the device, read by the model's device).
pub fn map_reads_back(g: &IommuGuest, dev: &ccdma::Device) {
    let data = pattern(6000, 9);
    let m = g.layer.on(dev).map_to_device(&data).unwrap();
    assert_eq!(g.hv.device(dev.config().id).read(m.bus_addr().0, data.len()).unwrap(), data);
    m.unmap().map_err(|r| r.error).unwrap();
}
