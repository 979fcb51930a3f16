//! Sharing failures in both personalities: a failed share is rolled back (or quarantined when rolling
//! back fails too), TDX partial progress and retry limits are honoured, a lying hypervisor is contained.

use ccdma::{
    DeviceConfig, DmaAttrs, DmaDirection, DmaError, DmaLayer, DmaMask, PhysAddr, PoolConfig,
    SharingErrorKind, StatusCode,
};
use ccdma_hv_model::{CallKind, HvConfig, Injection, PageState, Region};
use ccdma_tests::*;

const POOL_PAGES: u64 = 64;
/// As the errors count pages (a sharing request is at most `u32::MAX` pages).
const POOL_PAGES_U32: u32 = POOL_PAGES as u32;
const POOL_LEN: u64 = POOL_PAGES * 4096;

fn try_pool(
    cfg: HvConfig,
    setup: impl FnOnce(&ccdma_hv_model::Hypervisor),
) -> (&'static ccdma_hv_model::Hypervisor, Layer, Result<usize, DmaError>) {
    let hv = model(cfg);
    setup(hv);
    let mut layer = DmaLayer::new(hv);
    let r = add_pool(&mut layer, MID_POOL, POOL_LEN, PoolConfig::default());
    (hv, layer, r)
}

fn assert_all_private(hv: &ccdma_hv_model::Hypervisor) {
    for i in 0..POOL_PAGES {
        assert_eq!(hv.memory().state(MID_POOL + i * 4096), PageState::Private, "page {i}");
    }
    assert_eq!(hv.shared_pages(), 0);
}

#[test]
fn pseries_failed_share_changes_nothing() {
    let (hv, layer, r) = try_pool(HvConfig::pseries(6 * GIB), |hv| {
        hv.calls().inject_next(CallKind::UvShare, Injection::Fail(-4))
    });
    assert_eq!(
        r,
        Err(DmaError::SharingFailed {
            phys: PhysAddr(MID_POOL),
            quarantined: 0,
            kind: SharingErrorKind::Hypervisor(StatusCode(-4))
        })
    );
    assert_all_private(hv);
    assert_eq!(layer.stats().shared_pages, 0);
    assert_eq!(layer.pools().count(), 0);
}

#[test]
fn pseries_partial_share_is_rolled_back() {
    let (hv, layer, r) = try_pool(HvConfig::pseries(6 * GIB), |hv| {
        hv.calls().inject_next(CallKind::UvShare, Injection::Partial { pages: 20, code: -44 })
    });
    assert!(matches!(r, Err(DmaError::SharingFailed { quarantined: 0, .. })));
    // The ultracall reports no progress, so the layer unshared the whole request.
    assert_eq!(hv.calls().count(CallKind::UvUnshare), 1);
    assert_all_private(hv);
    assert_eq!(layer.stats().quarantined_pages, 0);
}

#[test]
fn pseries_rollback_failure_quarantines() {
    let (hv, layer, r) = try_pool(HvConfig::pseries(6 * GIB), |hv| {
        hv.calls().inject_next(CallKind::UvShare, Injection::Partial { pages: 20, code: -44 });
        hv.calls().inject_next(CallKind::UvUnshare, Injection::Fail(-1));
    });
    // Nothing is known about which pages are shared: all of them are quarantined, never reused.
    assert!(matches!(r, Err(DmaError::SharingFailed { quarantined: POOL_PAGES_U32, .. })));
    let s = layer.stats();
    assert_eq!(s.quarantined_pages, POOL_PAGES);
    assert_eq!(s.failures_of(ccdma::FailureKind::Sharing), 1);
    assert_eq!(hv.shared_pages(), 20, "the model has what the failed call did");
    assert_eq!(layer.pools().count(), 0, "no pool made from quarantined memory");
}

#[test]
fn pseries_lying_share_is_contained() {
    // The ultravisor says "shared" but shares nothing: the guest bounces into memory the device cannot
    // reach. Every device access faults; none lands in private memory.
    let (hv, layer, r) = try_pool(HvConfig::pseries(6 * GIB), |hv| {
        hv.calls().inject_next(CallKind::UvShare, Injection::LieSuccess)
    });
    r.unwrap();
    let dev = layer.attach(DeviceConfig::new(1, DmaMask::BITS_32)).unwrap();
    let d = hv.add_device(1, 32);
    let p = hv.alloc(4096, Region::Low);
    hv.memory().write(p, &[0x5E; 4096]);
    // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
    let bus =
        unsafe { layer.map_phys(&dev, PhysAddr(p), 4096, DmaDirection::ToDevice, DmaAttrs::NONE) }.unwrap();
    assert!(d.read(bus.0, 4096).is_err());
    assert!(d.write(bus.0, &[0; 16]).is_err());
    assert_eq!(hv.private_faults(), 2);
    // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
    unsafe { layer.unmap(&dev, bus, 4096, DmaDirection::ToDevice, DmaAttrs::NONE) }.unwrap();
}

#[test]
fn pseries_failed_unshare_at_teardown_quarantines() {
    let (hv, mut layer, r) = try_pool(HvConfig::pseries(6 * GIB), |_| {});
    r.unwrap();
    hv.calls().inject_next(CallKind::UvUnshare, Injection::Fail(-1));
    assert!(matches!(
        layer.release_pools(),
        Err(DmaError::UnsharingFailed { quarantined: POOL_PAGES_U32, .. })
    ));
    assert_eq!(layer.stats().quarantined_pages, POOL_PAGES);
    assert_eq!(layer.stats().shared_pages, POOL_PAGES, "quarantined pages stay counted as shared");
    assert_eq!(hv.shared_pages(), POOL_PAGES);
}

#[test]
fn tdx_retry_with_progress_completes() {
    let cfg = HvConfig { tdx_pages_per_call: Some(5), ..HvConfig::tdx(6 * GIB) };
    let (hv, mut layer, r) = try_pool(cfg, |_| {});
    r.unwrap();
    assert_eq!(hv.calls().count(CallKind::MapGpa), POOL_PAGES.div_ceil(5));
    assert_eq!(hv.shared_pages(), POOL_PAGES);
    layer.release_pools().unwrap();
    assert_eq!(hv.calls().count(CallKind::MapGpa), 2 * POOL_PAGES.div_ceil(5));
    assert_eq!(hv.calls().count(CallKind::Accept), POOL_PAGES);
    assert_all_private(hv);
}

#[test]
fn tdx_retry_without_progress_is_bounded_and_rolled_back() {
    let (hv, layer, r) = try_pool(HvConfig::tdx(6 * GIB), |hv| {
        // One call and eight retries stall: the ninth stall gives up.
        for i in 1..=9 {
            hv.calls().inject_at(CallKind::MapGpa, i, Injection::Stall);
        }
    });
    assert!(matches!(
        r,
        Err(DmaError::SharingFailed { kind: SharingErrorKind::NoProgress, quarantined: 0, .. })
    ));
    let stalls = 1 + ccdma::sharing::tdx::MAX_RETRIES_WITHOUT_PROGRESS as u64;
    assert_eq!(hv.calls().count(CallKind::MapGpa), stalls + 1, "stalls, then one rollback call");
    assert_all_private(hv);
    assert_eq!(layer.stats().shared_pages, 0);
}

#[test]
fn tdx_retry_forever_fails_and_quarantines() {
    let (hv, layer, r) =
        try_pool(HvConfig::tdx(6 * GIB), |hv| hv.calls().inject_from(CallKind::MapGpa, 1, Injection::Stall));
    // Even the rollback stalls: the guest gives up on both and quarantines the whole range.
    assert!(matches!(
        r,
        Err(DmaError::SharingFailed { kind: SharingErrorKind::NoProgress, quarantined: POOL_PAGES_U32, .. })
    ));
    assert_eq!(
        hv.calls().count(CallKind::MapGpa),
        2 * (1 + ccdma::sharing::tdx::MAX_RETRIES_WITHOUT_PROGRESS as u64)
    );
    assert_eq!(layer.stats().quarantined_pages, POOL_PAGES);
}

#[test]
fn tdx_bad_resume_is_refused() {
    let (hv, _layer, r) =
        try_pool(HvConfig::tdx(6 * GIB), |hv| hv.calls().inject_next(CallKind::MapGpa, Injection::BadResume));
    assert!(matches!(
        r,
        Err(DmaError::SharingFailed { kind: SharingErrorKind::BadResume, quarantined: 0, .. })
    ));
    assert_all_private(hv);
}

#[test]
fn tdx_partial_progress_then_error_rolls_back_everything() {
    // The VMM converts 10 pages and then reports an error: the guest cannot trust the error to mean
    // "nothing happened", so it converts the whole request back.
    let cfg = HvConfig { tdx_pages_per_call: Some(16), ..HvConfig::tdx(6 * GIB) };
    let (hv, layer, r) = try_pool(cfg, |hv| {
        hv.calls().inject_at(CallKind::MapGpa, 3, Injection::Partial { pages: 10, code: -5 })
    });
    assert!(matches!(
        r,
        Err(DmaError::SharingFailed {
            kind: SharingErrorKind::Hypervisor(StatusCode(-5)),
            quarantined: 0,
            ..
        })
    ));
    assert_all_private(hv);
    assert_eq!(layer.stats().shared_pages, 0);
}

#[test]
fn tdx_accept_failure_quarantines_the_rest() {
    let (hv, mut layer, r) = try_pool(HvConfig::tdx(6 * GIB), |_| {});
    r.unwrap();
    hv.calls().inject_at(CallKind::Accept, 11, Injection::Fail(-9));
    match layer.release_pools() {
        Err(DmaError::UnsharingFailed { quarantined, kind: SharingErrorKind::AcceptFailed, .. }) => {
            assert_eq!(u64::from(quarantined), POOL_PAGES - 10)
        }
        r => panic!("unexpected {r:?}"),
    }
    // The first ten pages are private again; the others are not usable and never handed out.
    for i in 0..10 {
        assert_eq!(hv.memory().state(MID_POOL + i * 4096), PageState::Private);
    }
    assert_eq!(hv.memory().state(MID_POOL + 10 * 4096), PageState::PendingAccept);
    assert_eq!(layer.stats().quarantined_pages, POOL_PAGES - 10);
}

#[test]
fn tdx_lying_share_is_contained() {
    let (hv, layer, r) = try_pool(HvConfig::tdx(6 * GIB), |hv| {
        hv.calls().inject_next(CallKind::MapGpa, Injection::LieSuccess)
    });
    r.unwrap();
    let dev = layer.attach(DeviceConfig::new(1, DmaMask::BITS_64)).unwrap();
    let d = hv.add_device(1, 64);
    let p = hv.alloc(100, Region::High);
    // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
    let bus =
        unsafe { layer.map_phys(&dev, PhysAddr(p), 100, DmaDirection::FromDevice, DmaAttrs::NONE) }.unwrap();
    assert!(d.write(bus.0, &[1; 100]).is_err());
    assert_eq!(hv.private_faults(), 1);
    // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
    unsafe { layer.unmap(&dev, bus, 100, DmaDirection::FromDevice, DmaAttrs::NONE) }.unwrap();
    // The guest got zeroes (its own fill), not device data.
    assert_eq!(hv.memory().read(p, 100), vec![0; 100]);
}

#[test]
fn not_confidential_shares_nothing() {
    let (hv, mut layer, r) = try_pool(HvConfig::plain(6 * GIB), |_| {});
    r.unwrap();
    assert_eq!(hv.shared_pages(), 0);
    assert_eq!(hv.calls().count(CallKind::UvShare), 0);
    layer.release_pools().unwrap();
    assert_eq!(hv.calls().count(CallKind::UvUnshare), 0);
}
