//! A hypervisor that reports success without writing (or clearing) entries: caught by read-back where
//! the verify policy checks, contained otherwise (the device faults, no private byte is exposed).

mod iommu_support;

use ccdma::{DmaAttrs, DmaDirection, DmaError, IommuError, IommuPolicy, PhysAddr, VerifyPolicy};
use ccdma_hv_model::{CallKind, FaultReason, Injection, Region};
use ccdma_tests::*;
use iommu_support::*;

fn strict(verify: VerifyPolicy) -> IommuGuest {
    let mut o = Opts::new(IommuPolicy::Strict);
    o.verify = verify;
    iommu_guest(o)
}

#[test]
fn a_write_that_did_not_happen_is_caught_by_read_back() {
    for kind in [CallKind::PutTce, CallKind::PutTceIndirect] {
        let g = strict(VerifyPolicy::Ends);
        let (hv, layer) = (g.hv, &g.layer);
        let dev = g.device(1, 32);
        let phys = hv.alloc(16384, Region::High);
        // One page goes through H_PUT_TCE, four through the indirect call.
        let len = if kind == CallKind::PutTce { 100 } else { 16384 };
        hv.calls().inject_next(kind, Injection::LieSuccess);
        // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
        let err =
            unsafe { layer.map_phys(&dev, PhysAddr(phys), len, DmaDirection::ToDevice, DmaAttrs::NONE) }
                .unwrap_err();
        assert!(matches!(err, DmaError::Iommu(IommuError::Verify { .. })), "{kind:?}: {err:?}");
        assert_eq!(layer.iommu_stats().verify_failures, 1);
        assert_eq!(hv.tce_counters().live_entries, 0);
        assert_eq!(layer.iommu_stats().live_tces, 0);
        assert_eq!(layer.stats().slots_in_use, 0);
        assert_eq!(layer.live_bus_ranges(), 0);
        // The next map works.
        // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
        let bus =
            unsafe { layer.map_phys(&dev, PhysAddr(phys), len, DmaDirection::ToDevice, DmaAttrs::NONE) }
                .unwrap();
        // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
        unsafe { layer.unmap(&dev, bus, len, DmaDirection::ToDevice, DmaAttrs::NONE) }.unwrap();
    }
}

#[test]
fn a_partial_batch_reported_as_success_is_caught_at_its_last_entry() {
    let g = strict(VerifyPolicy::Ends);
    let (hv, layer) = (g.hv, &g.layer);
    let dev = g.device(1, 32);
    let phys = hv.alloc(65536, Region::High);
    // 16 entries asked, 15 written, success answered.
    hv.calls().inject_next(CallKind::PutTceIndirect, Injection::Partial { pages: 15, code: 0 });
    // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
    let err = unsafe { layer.map_phys(&dev, PhysAddr(phys), 65536, DmaDirection::ToDevice, DmaAttrs::NONE) }
        .unwrap_err();
    assert!(matches!(err, DmaError::Iommu(IommuError::Verify { .. })), "{err:?}");
    assert_eq!(hv.tce_counters().live_entries, 0, "the 15 written entries were cleared again");
}

#[test]
fn unverified_lies_are_contained_by_the_window_and_the_sharing_state() {
    let g = strict(VerifyPolicy::Off);
    let (hv, layer) = (g.hv, &g.layer);
    let dev = g.device(1, 32);
    let d = hv.device(1);
    let phys = hv.alloc(8192, Region::High);
    hv.memory().write(phys, &pattern(8192, 3));
    // The write is skipped and nobody checks: the map "works" but the device reaches nothing.
    hv.calls().inject_next(CallKind::PutTceIndirect, Injection::LieSuccess);
    // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
    let bus = unsafe { layer.map_phys(&dev, PhysAddr(phys), 8192, DmaDirection::ToDevice, DmaAttrs::NONE) }
        .unwrap();
    assert!(d.read(bus.0, 8192).is_err());
    assert_eq!(hv.faults().last().unwrap().reason, FaultReason::NoEntry);
    hv.clear_faults();
    // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
    unsafe { layer.unmap(&dev, bus, 8192, DmaDirection::ToDevice, DmaAttrs::NONE) }.unwrap();

    // A coherent buffer whose clearing is skipped at free: the page goes back to private with an entry
    // left on it. The device's access is refused by the sharing state: no private byte reaches it.
    let coh = hv.alloc(4096, Region::Low);
    // SAFETY: fresh page handed to the layer.
    let c = unsafe { layer.alloc_coherent(&dev, PhysAddr(coh), 1) }.unwrap();
    hv.calls().inject_next(CallKind::StuffTce, Injection::LieSuccess);
    let c_bus = c.bus_addr();
    layer.free_coherent(&dev, c).unwrap();
    hv.memory().write(coh, b"private again");
    assert_eq!(hv.tces_to_private(), 1, "the lie left an entry on a private page");
    assert!(d.read(c_bus.0, 13).is_err());
    assert_eq!(hv.faults().last().unwrap().reason, FaultReason::PrivateTarget);
}

#[test]
fn a_clear_that_did_not_happen_is_caught_and_the_buffer_kept() {
    let g = strict(VerifyPolicy::Ends);
    let (hv, layer) = (g.hv, &g.layer);
    let dev = g.device(1, 32);
    let coh = hv.alloc(4096, Region::Low);
    // SAFETY: fresh page handed to the layer.
    let c = unsafe { layer.alloc_coherent(&dev, PhysAddr(coh), 1) }.unwrap();
    hv.calls().inject_next(CallKind::StuffTce, Injection::LieSuccess);
    let Err(ccdma::FreeError::Refused(refused)) = layer.free_coherent(&dev, c) else {
        panic!("free not refused")
    };
    assert!(matches!(refused.error, DmaError::Iommu(IommuError::Verify { .. })), "{:?}", refused.error);
    let c = refused.value;
    // Not unshared while an entry names it; the retry clears and frees.
    assert!(hv.memory().all_shared(coh, 4096));
    assert_eq!(hv.tces_to_private(), 0);
    layer.free_coherent(&dev, c).unwrap();
    assert_eq!(hv.tces_to_private(), 0);
    assert_eq!(hv.reachable(1).len(), 0);
    // Same for a strict unmap: refused, mapping kept (still reachable), retry works.
    let phys = hv.alloc(4096, Region::High);
    // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
    let bus = unsafe { layer.map_phys(&dev, PhysAddr(phys), 4096, DmaDirection::FromDevice, DmaAttrs::NONE) }
        .unwrap();
    hv.device(1).write(bus.0, &[9; 4096]).unwrap();
    hv.calls().inject_next(CallKind::StuffTce, Injection::LieSuccess);
    // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
    assert!(unsafe { layer.unmap(&dev, bus, 4096, DmaDirection::FromDevice, DmaAttrs::NONE) }.is_err());
    assert_eq!(hv.memory().read(phys, 4096), vec![0; 4096], "nothing copied back yet");
    // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
    unsafe { layer.unmap(&dev, bus, 4096, DmaDirection::FromDevice, DmaAttrs::NONE) }.unwrap();
    assert_eq!(hv.memory().read(phys, 4096), vec![9; 4096]);
    assert_eq!(hv.tce_counters().live_entries, 0);
}
