//! Shared helpers for the integration tests: a guest layout on the model, and invariant checks.

use ccdma::{DmaLayer, PhysAddr, PoolConfig, SlotMeta};
use ccdma_hv_model::{HvConfig, Hypervisor};

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
