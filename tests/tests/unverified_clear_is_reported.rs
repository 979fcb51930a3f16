//! Issue 18 item 6: a free (or strict unmap) whose `H_STUFF_TCE` succeeded but whose read-back
//! (`H_GET_TCE`) failed has changed things: the entries are gone as far as the hypervisor said, so
//! the device no longer reaches the buffer. The refusal must say so (`IommuError::Unverified`), not
//! claim that nothing changed; a retry completes.

mod iommu_support;

use ccdma::iommu::IommuError;
use ccdma::{DmaAttrs, DmaDirection, DmaError, FreeError, IommuPolicy, PhysAddr};
use ccdma_hv_model::{CallKind, Injection, PageState, Region};
use ccdma_tests::*;
use iommu_support::*;

#[test]
fn free_coherent_whose_read_back_fails_says_the_entries_are_gone() {
    let g = iommu_guest(Opts::new(IommuPolicy::Premapped));
    let dev = g.device(1, 32);
    let model = g.hv.device(1);
    let p = g.hv.alloc(2 * 4096, Region::High);
    // SAFETY: fresh pages, ours until the free succeeds.
    let c = unsafe { g.layer.alloc_coherent(&dev, PhysAddr(p), 2) }.unwrap();
    let bus = c.bus_addr();
    model.write(bus.0, b"ring").unwrap();
    g.hv.calls().inject_next(CallKind::GetTce, Injection::Fail(-1));
    let Err(FreeError::Refused(r)) = g.layer.free_coherent(&dev, c) else { panic!("expected a refusal") };
    // What the model says happened: the entries are gone, the device cannot reach the buffer.
    assert!(model.read(bus.0, 4).is_err(), "the clear took effect");
    assert!(g.hv.reachable(1).iter().all(|e| e.phys < p || e.phys >= p + 8192));
    // And the error says it, instead of "refused, nothing changed".
    assert!(
        matches!(r.error, DmaError::Iommu(IommuError::Unverified { .. })),
        "the refusal must say the entries were cleared but not verified, got {:?}",
        r.error
    );
    let text = r.error.to_string();
    assert!(text.contains("cleared") || text.contains("verif"), "{text}");
    // The buffer comes back still shared (an unverified clear never makes pages private); a retry
    // completes.
    assert_eq!(g.hv.memory().state(p), PageState::Shared);
    g.layer.free_coherent(&dev, r.value).unwrap();
    assert_eq!(g.hv.memory().state(p), PageState::Private);
    assert_eq!(g.hv.sharing_ledger().unshared_while_mapped, 0);
    g.layer.detach(dev).unwrap();
}

#[test]
fn strict_unmap_whose_read_back_fails_says_the_entries_are_gone() {
    let g = iommu_guest(Opts::new(IommuPolicy::Strict));
    let dev = g.device(1, 32);
    let model = g.hv.device(1);
    let mut buf = vec![0u8; 6000];
    let m = g.layer.map(&dev, &mut buf, DmaDirection::FromDevice, DmaAttrs::NONE).unwrap();
    let bus = m.bus_addr();
    model.write(bus.0, &pattern(6000, 3)).unwrap();
    g.hv.calls().inject_next(CallKind::GetTce, Injection::Fail(-1));
    let ccdma::Refused { value, error } = m.unmap().unwrap_err();
    assert!(model.read(bus.0, 1).is_err(), "the clear took effect");
    assert!(
        matches!(error, DmaError::Iommu(IommuError::Unverified { .. })),
        "the refusal must say the entries were cleared but not verified, got {error:?}"
    );
    value.unmap().unwrap();
    assert_eq!(buf, pattern(6000, 3));
    assert_no_faults_but_the_probes(g.hv);
    g.layer.detach(dev).unwrap();
}

/// The two probes of a cleared bus address above are the only faults.
fn assert_no_faults_but_the_probes(hv: &ccdma_hv_model::Hypervisor) {
    let f = hv.faults();
    assert!(f.len() <= 2, "{f:?}");
    assert!(f.iter().all(|f| f.reason == ccdma_hv_model::FaultReason::NoEntry), "{f:?}");
}
