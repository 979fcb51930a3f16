//! Shared helpers for the integration tests: a guest layout on the model, and invariant checks.

use ccdma::{DmaLayer, PhysAddr, PoolConfig, SlotMeta};
use ccdma_hv_model::{HvConfig, Hypervisor};

pub mod fuzz_ops;
pub mod hooked;
pub mod release_stats;
pub mod timing;

/// 1 GiB.
pub const GIB: u64 = 1 << 30;
/// 1 MiB.
pub const MIB: u64 = 1 << 20;

/// Where the tests put a low pool (below 16 MiB, reachable by a 24-bit device).
pub const LOW_POOL: u64 = 0x0080_0000;
/// Where the tests put a mid pool (below 4 GiB).
pub const MID_POOL: u64 = 0x1000_0000;
/// Where the tests put a high pool (above 4 GiB).
pub const HIGH_POOL: u64 = 0x1_0000_0000;

/// A model with pools added by the test.
pub struct Guest {
    /// The model (leaked so the layer can borrow it for 'static).
    pub hv: &'static Hypervisor,
}

/// Leak a model so layers and devices can borrow it for `'static` in tests.
pub fn model(cfg: HvConfig) -> &'static Hypervisor {
    Box::leak(Box::new(Hypervisor::new(cfg)))
}

/// Slot metadata storage for a pool of `len` bytes (leaked: tests are short-lived processes).
pub fn meta_for(len: u64, cfg: &PoolConfig) -> &'static mut [SlotMeta] {
    vec![SlotMeta::EMPTY; cfg.slots_for(len as usize)].leak()
}

/// Add a pool at `phys` of `len` bytes with `cfg`.
pub fn add_pool(
    layer: &mut DmaLayer<'static, &'static Hypervisor>,
    phys: u64,
    len: u64,
    cfg: PoolConfig,
) -> Result<usize, ccdma::DmaError> {
    let meta = meta_for(len, &cfg);
    // SAFETY: tests place pools at fixed addresses that `Hypervisor::alloc` never hands out
    // (it starts above them) and use each range for one pool only.
    unsafe { layer.add_pool(PhysAddr(phys), len as usize, meta, cfg) }
}

/// Assert invariant 1: no device access landed in private memory (no fault at all, unless expected).
pub fn assert_no_faults(hv: &Hypervisor) {
    let f = hv.faults();
    assert!(f.is_empty(), "unexpected device faults: {f:?}");
}

/// A deterministic pattern of `len` bytes from `seed`.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// The layer type every test uses.
pub type Layer = DmaLayer<'static, &'static Hypervisor>;

/// A model with `pools` (address, length) added with the default pool configuration.
pub fn guest(cfg: HvConfig, pools: &[(u64, u64)]) -> (&'static Hypervisor, Layer) {
    let hv = model(cfg);
    let mut layer = DmaLayer::new(hv);
    for &(phys, len) in pools {
        add_pool(&mut layer, phys, len, PoolConfig::default()).expect("pool");
    }
    (hv, layer)
}

/// Counters that must return to their baseline after any sequence of operations that ends with
/// nothing mapped (invariant 4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Baseline {
    /// Slots allocated in every pool.
    pub slots_in_use: u64,
    /// Pages shared according to the model.
    pub shared_pages: u64,
    /// Pages the layer believes are shared.
    pub layer_shared_pages: u64,
    /// Private-memory faults in the model's log.
    pub private_faults: usize,
}

impl Baseline {
    /// Read the counters now.
    pub fn take(hv: &Hypervisor, layer: &Layer) -> Baseline {
        let s = layer.stats();
        Baseline {
            slots_in_use: s.slots_in_use,
            shared_pages: hv.shared_pages(),
            layer_shared_pages: s.shared_pages,
            private_faults: hv.private_faults(),
        }
    }

    /// Assert the counters are back where they were.
    #[track_caller]
    pub fn assert_same(&self, hv: &Hypervisor, layer: &Layer) {
        assert_eq!(*self, Baseline::take(hv, layer), "counters did not return to baseline");
    }
}

/// True when `bus..bus+len` lies inside one of the layer's pools as the device sees it.
pub fn in_some_pool(layer: &Layer, bus: u64, len: usize) -> bool {
    (0..ccdma::MAX_POOLS)
        .filter_map(|i| layer.pool(i))
        .any(|(p, b)| bus >= b.0 && bus + len as u64 <= b.0 + p.len() as u64)
}

/// TCE hypercalls of one map+unmap of `bytes` (4 KiB IOMMU pages) in Linux's secure guest: one
/// `H_PUT_TCE` per entry (multi-TCE is off there) and one `H_STUFF_TCE` per 512 entries to clear.
pub fn linux_secure_guest_calls(bytes: usize) -> u64 {
    let n = (bytes / 4096) as u64;
    n + n.div_ceil(512)
}

/// Print a row of hypercall counts per size beside Linux's ([`linux_secure_guest_calls`]).
pub fn show_vs_linux(name: &str, sizes: &[usize], got: &[u64]) {
    let row: Vec<String> = sizes
        .iter()
        .zip(got)
        .map(|(&b, n)| format!("{} KiB: {n} (Linux {})", b / 1024, linux_secure_guest_calls(b)))
        .collect();
    println!("{name:<34} {}", row.join(", "));
}
