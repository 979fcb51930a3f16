//! Shared set-up for the growth tests: guests whose layer grows from a `ModelSource`, a workload
//! that holds many mappings at once with the device writing each through the model, and the checks
//! that nothing was lost.
#![allow(dead_code)]

use ccdma::{Device, DmaAttrs, DmaDirection, DmaError, GrowthConfig, IommuPolicy};
use ccdma_hv_model::{Hypervisor, ModelSource, PAGE};
use ccdma_tests::*;

use crate::iommu_support::{iommu_guest, IommuGuest, Opts};

/// The initial (fixed) pool.
pub const INITIAL: u64 = MIB;
/// Where the memory source's region starts, and its size.
pub const SOURCE_AT: u64 = 0x2000_0000;
pub const SOURCE_LEN: u64 = 64 * MIB;

/// Growth by 1 MiB pools, up to 8 of them, shrinking after 3 idle ticks.
pub fn growth_cfg() -> GrowthConfig {
    GrowthConfig { idle_ticks: 3, ..GrowthConfig::new(MIB as usize, 8) }
}

pub fn source(hv: &'static Hypervisor) -> &'static ModelSource<'static> {
    Box::leak(Box::new(ModelSource::new(hv, SOURCE_AT, SOURCE_LEN)))
}

/// A confidential pseries guest without IOMMU: one 1 MiB pool, growth on (or off).
pub fn plain_guest(grow: bool) -> (&'static Hypervisor, Layer, &'static ModelSource<'static>) {
    plain_guest_on(ccdma_hv_model::HvConfig::pseries(2 * GIB), grow)
}

/// The same on another model configuration (e.g. TDX).
pub fn plain_guest_on(
    cfg: ccdma_hv_model::HvConfig,
    grow: bool,
) -> (&'static Hypervisor, Layer, &'static ModelSource<'static>) {
    let (hv, mut layer) = guest(cfg, &[(MID_POOL, INITIAL)]);
    let src = source(hv);
    if grow {
        layer.enable_growth(src, growth_cfg()).unwrap();
    }
    (hv, layer, src)
}

/// A pseries guest behind the TCE IOMMU with `policy`: one 1 MiB pool, growth on.
pub fn iommu_growing(policy: IommuPolicy, cfg: GrowthConfig) -> (IommuGuest, &'static ModelSource<'static>) {
    let mut g = iommu_guest(Opts { pool_len: INITIAL, ram: 2 * GIB, ..Opts::new(policy) });
    let src = source(g.hv);
    g.layer.enable_growth(src, cfg).unwrap();
    (g, src)
}

/// Map `total` bytes in `chunk`-byte from-device mappings, all live at once; the device writes a
/// pattern into each through the model; then unmap all and check the bytes. Returns how many maps
/// succeeded, or the first error (everything mapped so far unmapped).
pub fn workload(
    hv: &Hypervisor,
    layer: &Layer,
    dev: &Device,
    total: usize,
    chunk: usize,
) -> Result<usize, DmaError> {
    let n = total / chunk;
    let mut bufs: Vec<Vec<u8>> = (0..n).map(|_| vec![0u8; chunk]).collect();
    let model_dev = hv.device(dev.config().id);
    let mut maps = Vec::new();
    let mut err = None;
    for (k, b) in bufs.iter_mut().enumerate() {
        match layer.map(dev, b, DmaDirection::FromDevice, DmaAttrs::NONE) {
            Ok(m) => {
                model_dev
                    .write(m.bus_addr().0, &pattern(chunk, k as u64))
                    .expect("device reaches its mapping");
                maps.push(m);
            }
            Err(e) => {
                err = Some(e);
                break;
            }
        }
    }
    let done = maps.len();
    for m in maps {
        // An injected fault may refuse one unmap (strict entries that would not clear): the mapping
        // comes back and the retry completes.
        if let Err(r) = m.unmap() {
            r.value.unmap().map_err(|r| r.error).expect("unmap retried");
        }
    }
    if let Some(e) = err {
        return Err(e);
    }
    for (k, b) in bufs.iter().enumerate() {
        assert!(*b == pattern(chunk, k as u64), "mapping {k} came back wrong");
    }
    Ok(done)
}

/// Nothing lost: what the source lent is either in a live grown pool or kept (quarantined) and
/// counted; the model and the layer agree on shared pages; no page was shared twice or made private
/// while an entry named it; no device reached private memory.
#[track_caller]
pub fn assert_nothing_lost(hv: &Hypervisor, layer: &Layer, src: &ModelSource<'_>, what: &str) {
    let g = layer.growth_stats();
    let s = src.counters();
    assert_eq!(s.bytes_out, g.bytes + g.kept_bytes, "{what}: source bytes out vs pools + kept: {s:?} {g:?}");
    assert!(s.meta_out <= g.pools + g.quarantined_pools, "{what}: metadata out: {s:?} {g:?}");
    assert_eq!((s.bad_gives, s.returned_shared), (0, 0), "{what}: source misuse: {s:?}");
    // The layer counts a page shared until it knows otherwise: a failed unshare that did part of
    // its work leaves pages the layer quarantines (and still counts) that the model made private.
    let st = layer.stats();
    let model = hv.shared_pages();
    assert!(
        st.shared_pages >= model && st.shared_pages - model <= st.quarantined_pages,
        "{what}: layer ({} shared, {} quarantined) and model ({model} shared) disagree",
        st.shared_pages,
        st.quarantined_pages
    );
    let l = hv.sharing_ledger();
    assert_eq!((l.double_shares, l.unshared_while_mapped), (0, 0), "{what}: ledger: {l:?}");
    assert_eq!(hv.private_faults(), 0, "{what}");
    assert_eq!(hv.tces_to_private(), 0, "{what}: a live TCE names private memory");
    assert_eq!(layer.stats().slots_in_use, 0, "{what}");
    let _ = PAGE;
}

/// Tick until every idle grown pool is gone (at most `idle_ticks + 1` ticks).
pub fn shrink_idle(layer: &Layer) -> usize {
    (0..=growth_cfg().idle_ticks).map(|_| layer.growth_tick()).sum()
}
