//! Issue 18, defect 1: a device the guest lets go must not stay accepted by the platform. When the
//! platform's revoke fails, the guest stops trusting the device at once (it bounces), and every
//! later revoke or detach asks the platform again until it confirms; detach never succeeds while
//! the platform may still accept the device.

mod iommu_support;

use ccdma::{DeviceConfig, DmaAttrs, DmaDirection, DmaError, DmaMask, DmaPath, IommuPolicy, TrustState};
use ccdma_hv_model::{CallKind, FaultReason, HvConfig, Injection, Region};
use ccdma_tests::*;
use iommu_support::*;

const DEV: u32 = 7;

/// The device reads a private page by its physical address: refused, and logged as private.
fn assert_cannot_read_private(hv: &ccdma_hv_model::Hypervisor, phys: u64) {
    let faults_before = hv.faults().len();
    assert!(hv.device(DEV).read(phys, 64).is_err(), "device read private memory at {phys:#x}");
    let f = &hv.faults()[faults_before..];
    assert!(f.iter().any(|f| f.device == DEV), "the refused access is in the fault log: {f:?}");
}

#[test]
fn a_detach_whose_revoke_failed_revokes_again_on_retry_without_iommu() {
    let (hv, layer) = guest(HvConfig::tdx(6 * GIB), &[(LOW_POOL, 4 * MIB)]);
    hv.add_device(DEV, 64);
    hv.tdisp_bind(DEV);
    let mut dev = layer.attach(DeviceConfig::new(DEV, DmaMask::BITS_64)).unwrap();
    layer.accept(&mut dev).unwrap();
    let secret = hv.alloc(4096, Region::High);
    hv.memory().write(secret, &[0x5a; 4096]);

    hv.calls().inject_next(CallKind::TdispRevoke, Injection::Fail(-5));
    let refused = layer.detach(dev).unwrap_err();
    assert_eq!(refused.error, DmaError::RevokeRefused { device: DEV, status: -5 });
    let dev = refused.value;
    // The guest trusts it no more: its buffers bounce while the platform answer is pending.
    assert_eq!(dev.trust(), TrustState::RevokePending);
    assert_eq!(dev.path(), DmaPath::BounceAlways);
    assert!(hv.is_accepted(DEV), "the model kept the device accepted (the failed call)");

    let before = hv.calls().count(CallKind::TdispRevoke);
    layer.detach(dev).unwrap();
    assert_eq!(hv.calls().count(CallKind::TdispRevoke), before + 1, "the retry asked the platform again");
    assert!(!hv.is_accepted(DEV), "the platform no longer accepts the detached device");
    assert_cannot_read_private(hv, secret);
}

#[test]
fn a_detach_whose_revoke_keeps_failing_is_refused_every_time() {
    let g = iommu_guest(Opts::new(IommuPolicy::Premapped));
    g.hv.tdisp_bind(DEV);
    g.hv.add_iommu_device(DEV, 64);
    let mut dev = g.layer.attach(DeviceConfig::new(DEV, DmaMask::BITS_64)).unwrap();
    g.layer.accept(&mut dev).unwrap();
    g.hv.calls().inject_from(CallKind::TdispRevoke, 1, Injection::Fail(-1));
    for _ in 0..3 {
        let refused = g.layer.detach(dev).unwrap_err();
        assert!(matches!(refused.error, DmaError::RevokeRefused { .. }), "{:?}", refused.error);
        dev = refused.value;
        assert!(g.hv.is_accepted(DEV));
    }
    // Meanwhile the device is served as untrusted: a map bounces (the bus address names the pool).
    let phys = g.hv.alloc(4096, Region::High);
    // SAFETY: a fresh page, used by this mapping only.
    let buf = unsafe { g.hv.slice_mut(phys, 4096) };
    let m = g.layer.map(&dev, buf, DmaDirection::ToDevice, DmaAttrs::NONE).unwrap();
    assert_eq!(g.hv.tces_to_private(), 0, "no entry of the pending device names private memory");
    m.unmap().unwrap();
    g.hv.calls().clear_injections();
    g.layer.detach(dev).unwrap();
    assert!(!g.hv.is_accepted(DEV));
    assert_eq!(g.hv.tces_to_private(), 0);
    let private_faults = g.hv.faults().iter().filter(|f| f.reason == FaultReason::PrivateTarget).count();
    assert_eq!(private_faults, 0);
}

#[test]
fn an_explicit_revoke_retries_the_platform_too() {
    let (hv, layer) = guest(HvConfig::tdx(6 * GIB), &[(LOW_POOL, 4 * MIB)]);
    hv.add_device(DEV, 64);
    hv.tdisp_bind(DEV);
    let mut dev = layer.attach(DeviceConfig::new(DEV, DmaMask::BITS_64)).unwrap();
    layer.accept(&mut dev).unwrap();
    hv.calls().inject_next(CallKind::TdispRevoke, Injection::Fail(-5));
    assert!(matches!(layer.revoke(&mut dev), Err(DmaError::RevokeRefused { .. })));
    assert_eq!(dev.trust(), TrustState::RevokePending);
    assert!(hv.is_accepted(DEV));
    layer.revoke(&mut dev).unwrap();
    assert_eq!(dev.trust(), TrustState::Untrusted);
    assert!(!hv.is_accepted(DEV));
    // Revoking an untrusted device asks nothing of the platform.
    let before = hv.calls().count(CallKind::TdispRevoke);
    layer.revoke(&mut dev).unwrap();
    assert_eq!(hv.calls().count(CallKind::TdispRevoke), before);
    layer.detach(dev).unwrap();
}
