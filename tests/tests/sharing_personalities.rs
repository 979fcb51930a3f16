//! The SEV-SNP and Arm CCA personalities end to end: the protocol each adapter follows (call counts,
//! partial progress, the MSR protocol for one page), DMA through a layer on each, the bus alias, and
//! what happens when the hypervisor or host misbehaves. The model checks that the guest re-validates
//! every page it takes back before using it.

use ccdma::sharing::snp::{PageOp, SnpCalls, VMGEXIT_PSC_MAX_COUNT};
use ccdma::sharing::tdx::TdxCalls;
use ccdma::{
    DeviceConfig, DmaAttrs, DmaDirection, DmaError, DmaLayer, DmaMask, PhysAddr, PhysMemory, Platform,
    PoolConfig, SharingErrorKind, StatusCode,
};
use ccdma_hv_model::{
    CallKind, HvConfig, Hypervisor, Injection, PageState, Personality, Region, CCA_IPA_BITS, SNP_C_BIT,
};
use ccdma_tests::*;

const PAGES: u64 = 1024;

fn pool(cfg: HvConfig, pages: u64) -> (&'static Hypervisor, Layer, Result<usize, DmaError>) {
    let hv = model(cfg);
    let mut layer = DmaLayer::new(hv);
    let r = add_pool(&mut layer, MID_POOL, pages * 4096, PoolConfig::default());
    (hv, layer, r)
}

fn states(hv: &Hypervisor, pages: u64) -> Vec<PageState> {
    (0..pages).map(|i| hv.memory().state(MID_POOL + i * 4096)).collect()
}

fn assert_private(hv: &Hypervisor, pages: u64) {
    assert!(states(hv, pages).iter().all(|s| *s == PageState::Private), "{:?}", states(hv, pages));
    assert_eq!(hv.shared_pages(), 0);
}

#[test]
fn snp_pool_is_rescinded_then_shared_in_ghcb_requests_and_revalidated_on_release() {
    let cfg = HvConfig { snp_entries_per_call: Some(100), ..HvConfig::snp(6 * GIB) };
    let (hv, mut layer, r) = pool(cfg, PAGES);
    r.unwrap();
    assert_eq!(hv.calls().count(CallKind::Pvalidate), PAGES, "one rescind per page");
    // Requests of 253 entries, each taking three calls at 100 entries per call; the last holds 12.
    let full = PAGES / VMGEXIT_PSC_MAX_COUNT as u64;
    assert_eq!(hv.calls().count(CallKind::Psc), full * 3 + 1);
    assert_eq!(hv.calls().count(CallKind::PscMsr), 0);
    assert_eq!(hv.shared_pages(), PAGES);
    layer.release_pools().unwrap();
    assert_eq!(hv.calls().count(CallKind::Pvalidate), 2 * PAGES, "one validate per page on the way back");
    assert_eq!(hv.calls().count(CallKind::Psc), 2 * (full * 3 + 1));
    assert_private(hv, PAGES);
    assert_no_faults(hv);
}

#[test]
fn snp_one_page_goes_through_the_msr_protocol() {
    let (hv, layer) = guest(HvConfig::snp(6 * GIB), &[(MID_POOL, 64 * 4096)]);
    let dev = layer.attach(DeviceConfig::new(1, DmaMask::BITS_32)).unwrap();
    let d = hv.add_device(1, 32);
    let psc = hv.calls().count(CallKind::Psc);
    let coh = hv.alloc(4096, Region::Low);
    // SAFETY: a fresh allocation handed to the layer until it is freed.
    let c = unsafe { layer.alloc_coherent(&dev, PhysAddr(coh), 1) }.unwrap();
    assert_eq!(d.read(c.bus_addr().0, 4096).unwrap(), vec![0; 4096], "zero as the device sees it");
    layer.free_coherent(&dev, c).unwrap();
    assert_eq!(hv.calls().count(CallKind::PscMsr), 2);
    assert_eq!(hv.calls().count(CallKind::Psc), psc, "no GHCB request for one page");
    assert_eq!(hv.memory().state(coh), PageState::Private);
    assert_no_faults(hv);
}

/// Map to and from the device through `layer` and check the bytes; returns the bus addresses used.
fn round_trip(hv: &'static Hypervisor, layer: &Layer, id: u32, bits: u32) -> Vec<u64> {
    let dev = layer.attach(DeviceConfig::new(id, DmaMask::new(bits).unwrap())).unwrap();
    let d = hv.add_device(id, bits);
    let (src, dst) = (hv.alloc(70_000, Region::High), hv.alloc(70_000, Region::High));
    hv.memory().write(src, &pattern(70_000, id.into()));
    // SAFETY: the test owns both buffers and keeps them alive, untouched, until the mappings end.
    let to = unsafe { layer.map_phys(&dev, PhysAddr(src), 70_000, DmaDirection::ToDevice, DmaAttrs::NONE) }
        .unwrap();
    assert_eq!(d.read(to.0, 70_000).unwrap(), pattern(70_000, id.into()));
    // SAFETY: as above.
    unsafe { layer.unmap(&dev, to, 70_000, DmaDirection::ToDevice, DmaAttrs::NONE) }.unwrap();
    // SAFETY: as above.
    let from =
        unsafe { layer.map_phys(&dev, PhysAddr(dst), 70_000, DmaDirection::FromDevice, DmaAttrs::NONE) }
            .unwrap();
    d.write(from.0, &pattern(70_000, 99)).unwrap();
    // SAFETY: as above.
    unsafe { layer.unmap(&dev, from, 70_000, DmaDirection::FromDevice, DmaAttrs::NONE) }.unwrap();
    assert_eq!(hv.memory().read(dst, 70_000), pattern(70_000, 99));
    layer.detach(dev).map_err(|r| r.error).unwrap();
    vec![to.0, from.0]
}

#[test]
fn dma_end_to_end_on_every_personality() {
    for p in Personality::ALL {
        let (hv, mut layer) = guest(HvConfig::confidential(p, 6 * GIB), &[(MID_POOL, 4 * MIB)]);
        let buses = round_trip(hv, &layer, 1, 64);
        let alias = if p == Personality::Cca { 1 << (CCA_IPA_BITS - 1) } else { 0 };
        for bus in buses {
            assert_eq!(bus & !(4 * MIB - 1), MID_POOL | alias, "{p:?}: bus {bus:#x}");
        }
        layer.release_pools().unwrap();
        assert_private(hv, 1024);
        assert_no_faults(hv);
    }
}

#[test]
fn snp_bus_addresses_clear_the_c_bit() {
    let (hv, layer) = guest(HvConfig::snp(6 * GIB), &[(MID_POOL, 4 * MIB)]);
    assert_eq!(hv.shared_bus_addr(PhysAddr(MID_POOL | 1 << SNP_C_BIT)).0, MID_POOL);
    // Without the C-bit in bus addresses a 32-bit device reaches a pool below 4 GiB.
    round_trip(hv, &layer, 2, 32);
    assert_no_faults(hv);
}

#[test]
fn cca_devices_reach_shared_memory_through_the_top_ipa_bit_alias() {
    let (hv, layer) = guest(HvConfig::cca(6 * GIB), &[(MID_POOL, 4 * MIB)]);
    let alias = 1u64 << (CCA_IPA_BITS - 1);
    assert_eq!(hv.shared_bus_addr(PhysAddr(MID_POOL)).0, MID_POOL | alias);
    assert_eq!(hv.shared_phys_addr(ccdma::BusAddr(MID_POOL | alias)).0, MID_POOL);
    // A device that cannot emit the alias bit reaches no pool: attach fails, naming its mask.
    let e = layer.attach(DeviceConfig::new(3, DmaMask::BITS_32)).unwrap_err();
    assert!(matches!(e, DmaError::NoPath { .. }), "{e}");
    round_trip(hv, &layer, 4, CCA_IPA_BITS);
    assert_no_faults(hv);
    assert_eq!(ccdma::BusEncoding::cca(0), None);
    assert_eq!(ccdma::BusEncoding::cca(65), None);
}

#[test]
fn snp_ghcb_header_going_backwards_is_refused_and_rolled_back() {
    let (hv, layer, r) = {
        let hv = model(HvConfig::snp(6 * GIB));
        hv.calls().inject_next(CallKind::Psc, Injection::BadResume);
        let mut layer = DmaLayer::new(hv);
        let r = add_pool(&mut layer, MID_POOL, 64 * 4096, PoolConfig::default());
        (hv, layer, r)
    };
    assert!(
        matches!(r, Err(DmaError::SharingFailed { kind: SharingErrorKind::BadResume, quarantined: 0, .. })),
        "{r:?}"
    );
    // Rescinded pages were converted back and validated again.
    assert_eq!(hv.calls().count(CallKind::Pvalidate), 2 * 64);
    assert_private(hv, 64);
    assert_eq!(layer.stats().shared_pages, 0);
    assert_no_faults(hv);
}

#[test]
fn snp_no_change_on_revalidation_quarantines_the_rest() {
    let (hv, mut layer, r) = pool(HvConfig::snp(6 * GIB), 64);
    r.unwrap();
    // The eleventh validate of the release answers "already validated": the page was not what the
    // guest recorded, so it and the pages after it are never reused.
    hv.calls().inject_at(CallKind::Pvalidate, 64 + 11, Injection::NoChange);
    match layer.release_pools() {
        Err(DmaError::UnsharingFailed {
            quarantined, kind: SharingErrorKind::ValidationNoChange, ..
        }) => {
            assert_eq!(quarantined, 64 - 10)
        }
        r => panic!("unexpected {r:?}"),
    }
    let s = states(hv, 64);
    assert!(s[..10].iter().all(|s| *s == PageState::Private));
    assert!(s[10..].iter().all(|s| *s == PageState::PendingAccept), "assigned, never validated: {s:?}");
    assert_eq!(layer.stats().quarantined_pages, 54);
    assert_no_faults(hv);
}

#[test]
fn snp_lying_page_state_change_is_caught_by_pvalidate() {
    let (hv, mut layer, r) = pool(HvConfig::snp(6 * GIB), 64);
    r.unwrap();
    // "Done", but every page is still the hypervisor's: validating the first one fails.
    hv.calls().inject_next(CallKind::Psc, Injection::LieSuccess);
    let e = layer.release_pools().unwrap_err();
    assert!(
        matches!(
            e,
            DmaError::UnsharingFailed {
                quarantined: 64,
                kind: SharingErrorKind::ValidateFailed(StatusCode(1)),
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(hv.shared_pages(), 64, "still shared, and all of it quarantined");
    assert_no_faults(hv);
}

#[test]
fn cca_pool_changes_ripas_in_steps() {
    let cfg = HvConfig { cca_granules_per_call: Some(100), ..HvConfig::cca(6 * GIB) };
    let (hv, mut layer, r) = pool(cfg, PAGES);
    r.unwrap();
    assert_eq!(hv.calls().count(CallKind::RsiIpaStateSet), PAGES.div_ceil(100));
    assert_eq!(hv.shared_pages(), PAGES);
    layer.release_pools().unwrap();
    assert_eq!(hv.calls().count(CallKind::RsiIpaStateSet), 2 * PAGES.div_ceil(100));
    assert_private(hv, PAGES);
    assert_no_faults(hv);
}

#[test]
fn cca_reject_after_partial_progress_rolls_back_exactly_that() {
    let hv = model(HvConfig::cca(6 * GIB));
    hv.calls().inject_next(CallKind::RsiIpaStateSet, Injection::Partial { pages: 40, code: 0 });
    let mut layer = DmaLayer::new(hv);
    let r = add_pool(&mut layer, MID_POOL, 64 * 4096, PoolConfig::default());
    assert!(
        matches!(r, Err(DmaError::SharingFailed { kind: SharingErrorKind::Rejected, quarantined: 0, .. })),
        "{r:?}"
    );
    // One call rejected after 40 granules, one call gives those 40 back.
    assert_eq!(hv.calls().count(CallKind::RsiIpaStateSet), 2);
    assert_private(hv, 64);
    assert_no_faults(hv);
}

#[test]
fn cca_reject_on_the_way_back_quarantines_the_rest_and_the_content_is_not_trusted() {
    let (hv, mut layer, r) = pool(HvConfig::cca(6 * GIB), 64);
    r.unwrap();
    hv.memory().write(MID_POOL, &[0x11; 4096]);
    hv.calls().inject_next(CallKind::RsiIpaStateSet, Injection::Partial { pages: 30, code: 0 });
    let e = layer.release_pools().unwrap_err();
    assert!(
        matches!(e, DmaError::UnsharingFailed { quarantined: 34, kind: SharingErrorKind::Rejected, .. }),
        "{e:?}"
    );
    assert_eq!(hv.shared_pages(), 34);
    // The granules that became RAM again hold undefined content, not what the host left there.
    assert_eq!(hv.memory().read(MID_POOL, 4096), vec![ccdma_hv_model::CCA_POISON; 4096]);
    assert_no_faults(hv);
}

#[test]
fn the_model_flags_a_guest_that_uses_a_page_before_revalidating_it() {
    // SEV-SNP, by the raw calls: share a page, take it back without PVALIDATE, touch it.
    let hv = model(HvConfig::snp(6 * GIB));
    let page = hv.alloc(4096, Region::Low);
    assert_eq!(hv.pvalidate(page, false), ccdma::sharing::snp::PvalidateStatus::Success);
    assert_eq!(hv.psc_msr(page / 4096, PageOp::Shared), 0);
    assert_eq!(hv.psc_msr(page / 4096, PageOp::Private), 0);
    assert!(hv.cpu_ptr(PhysAddr(page), 16).is_some());
    assert_eq!(hv.unvalidated_faults(), 1, "{:?}", hv.faults());
    assert_eq!(hv.pvalidate(page, true), ccdma::sharing::snp::PvalidateStatus::Success);
    assert!(hv.cpu_ptr(PhysAddr(page), 16).is_some());
    assert_eq!(hv.unvalidated_faults(), 1, "validated: no new fault");
    // TDX: converted back with MapGPA, not accepted.
    let hv = model(HvConfig::tdx(6 * GIB));
    let page = hv.alloc(4096, Region::Low);
    hv.map_gpa(page, 4096, true);
    hv.map_gpa(page, 4096, false);
    assert!(hv.cpu_ptr(PhysAddr(page), 4096).is_some());
    assert_eq!(hv.unvalidated_faults(), 1);
    assert_eq!(hv.accept_page(page), 0);
    assert!(hv.cpu_ptr(PhysAddr(page), 4096).is_some());
    assert_eq!(hv.unvalidated_faults(), 1);
}
