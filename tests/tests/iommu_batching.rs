//! TCE batching per layer (issue 13): no list page at all (`PerEntry`, as Linux in a secure guest),
//! one list page per CPU (`PerCpuPages`), or today's single page (`SharedPage`). Each test checks
//! what the model says was shared, which hypercalls were made, and that every failure leaves no
//! entry, slot or bus range behind (or pins and counts what it cannot clear).

use ccdma::iommu::hcall::{H_HARDWARE, H_PARAMETER, H_SUCCESS};
use ccdma::iommu::BusRange;
use ccdma::{
    DmaError, DmaLayer, IommuConfig, IommuError, MemorySharing, PhysAddr, TceBatching, TceCalls, VerifyPolicy,
};
use ccdma_hv_model::{CallKind, HvConfig, Hypervisor, Injection, PageState, Region, TceConfig, U_PARAMETER};
use ccdma_tests::*;

mod batching_support;

use batching_support::{strict_guest, Mode, MAP, POOL_LEN, POOL_PAGES};

#[test]
fn per_entry_shares_nothing_but_the_pool_and_never_goes_indirect() {
    let g = strict_guest(Mode::PerEntry, 12, VerifyPolicy::Off);
    assert_eq!(g.hv.shared_pages(), POOL_PAGES, "only the pool is shared");
    let buf = g.hv.alloc(MAP as u64, Region::High);
    g.round_trip(buf, MAP, 1).unwrap();
    assert_eq!(g.calls(CallKind::PutTceIndirect), 0);
    assert_eq!(g.calls(CallKind::PutTce), 64, "one H_PUT_TCE per 4 KiB entry");
    assert_eq!(g.calls(CallKind::StuffTce), 1, "one H_STUFF_TCE clears the mapping");
    assert!((0..4).all(|i| g.page_state(i) == PageState::Private));
    g.assert_baseline();
}

#[test]
fn per_cpu_pages_are_shared_while_enabled_and_private_after() {
    let mut g = strict_guest(Mode::PerCpu(4), 12, VerifyPolicy::Ends);
    assert_eq!(g.hv.shared_pages(), POOL_PAGES + 4);
    assert!((0..4).all(|i| g.page_state(i) == PageState::Shared));
    let buf = g.hv.alloc(MAP as u64, Region::High);
    for seed in 0..3 {
        g.round_trip(buf, MAP, seed).unwrap();
    }
    assert_eq!(g.calls(CallKind::PutTceIndirect), 3);
    assert_eq!(g.calls(CallKind::PutTce), 0);
    assert_eq!(g.calls(CallKind::StuffTce), 3);
    let s = g.layer.iommu_stats();
    assert_eq!((s.list_page_busy, s.list_page_fallbacks, s.list_page_waits), (0, 0, 0));
    g.assert_baseline();
    g.disable().unwrap();
    assert_eq!(g.hv.shared_pages(), POOL_PAGES);
    assert!((0..4).all(|i| g.page_state(i) == PageState::Private));
    assert_eq!(g.layer.stats().quarantined_pages, 0);
}

#[test]
fn the_shared_page_is_todays_single_page() {
    let g = strict_guest(Mode::Shared, 12, VerifyPolicy::Ends);
    assert_eq!(g.hv.shared_pages(), POOL_PAGES + 1);
    assert_eq!(g.page_state(0), PageState::Shared);
    assert_eq!(g.page_state(1), PageState::Private);
    let buf = g.hv.alloc(MAP as u64, Region::High);
    g.round_trip(buf, MAP, 4).unwrap();
    assert_eq!(g.calls(CallKind::PutTceIndirect), 1);
    g.assert_baseline();
}

#[test]
fn bad_list_page_choices_are_refused_with_nothing_shared() {
    let hv = model(HvConfig::pseries(6 * GIB));
    hv.enable_iommu(TceConfig::default());
    let list = hv.alloc(4096, Region::Low);
    let mut layer: Layer = DmaLayer::new(hv);
    let bad = [
        (TceBatching::PerCpuPages { first: PhysAddr(list), count: 0 }, DmaError::InvalidListPages(0)),
        (
            TceBatching::PerCpuPages { first: PhysAddr(list), count: ccdma::iommu::MAX_LIST_PAGES + 1 },
            DmaError::InvalidListPages(ccdma::iommu::MAX_LIST_PAGES + 1),
        ),
        (
            TceBatching::PerCpuPages { first: PhysAddr(list + 8), count: 2 },
            DmaError::Unaligned { addr: list + 8, align: 4096 },
        ),
        (TceBatching::SharedPage(PhysAddr(list + 1)), DmaError::Unaligned { addr: list + 1, align: 4096 }),
        // Beyond RAM: no CPU mapping.
        (
            TceBatching::PerCpuPages { first: PhysAddr(6 * GIB), count: 1 },
            DmaError::NoCpuMapping(PhysAddr(6 * GIB)),
        ),
    ];
    for (b, want) in bad {
        let cfg = IommuConfig::strict().with_batching(b);
        // SAFETY: the page is a fresh allocation the test never touches (or not RAM at all).
        let e = unsafe { layer.enable_iommu(cfg, vec![BusRange::EMPTY; 64].leak()) }.unwrap_err();
        assert_eq!(e, want, "{b:?}");
        assert_eq!(hv.shared_pages(), 0, "{b:?} shared something");
    }
    let cfg =
        IommuConfig::strict().with_batching(TceBatching::PerCpuPages { first: PhysAddr(list), count: 1 });
    // SAFETY: as above.
    unsafe { layer.enable_iommu(cfg, vec![BusRange::EMPTY; 64].leak()) }.unwrap();
    assert_eq!(hv.shared_pages(), 1);
}

#[test]
fn a_failed_share_of_the_per_cpu_pages_rolls_back() {
    let hv = model(HvConfig::pseries(6 * GIB));
    hv.enable_iommu(TceConfig::default());
    let list = hv.alloc(4 * 4096, Region::Low);
    let mut layer: Layer = DmaLayer::new(hv);
    let cfg =
        IommuConfig::strict().with_batching(TceBatching::PerCpuPages { first: PhysAddr(list), count: 4 });
    hv.calls().inject_next(CallKind::UvShare, Injection::Partial { pages: 2, code: U_PARAMETER });
    // SAFETY: fresh pages the test never touches.
    let e = unsafe { layer.enable_iommu(cfg, vec![BusRange::EMPTY; 64].leak()) }.unwrap_err();
    assert!(
        matches!(e, DmaError::SharingFailed { phys: PhysAddr(first), quarantined: 0, .. } if first == list),
        "{e:?}"
    );
    assert_eq!(hv.shared_pages(), 0, "the two shared pages were made private again");
    assert_eq!(hv.calls().count(CallKind::UvUnshare), 1);
    // The rollback fails too. The ultravisor reports no progress, so the layer assumes the worst:
    // every page may be shared, and every page is quarantined and counted.
    hv.calls().inject_next(CallKind::UvShare, Injection::Partial { pages: 3, code: U_PARAMETER });
    hv.calls().inject_next(CallKind::UvUnshare, Injection::Fail(U_PARAMETER));
    // SAFETY: as above.
    let e = unsafe { layer.enable_iommu(cfg, vec![BusRange::EMPTY; 64].leak()) }.unwrap_err();
    assert!(matches!(e, DmaError::SharingFailed { quarantined: 4, .. }), "{e:?}");
    assert_eq!(hv.shared_pages(), 3);
    assert_eq!(layer.stats().quarantined_pages, 4);
    assert_eq!(layer.iommu_stats(), Default::default(), "nothing enabled");
}

#[test]
fn a_failed_unshare_at_disable_quarantines_the_list_pages() {
    let mut g = strict_guest(Mode::PerCpu(4), 12, VerifyPolicy::Ends);
    g.hv.calls().inject_next(CallKind::UvUnshare, Injection::Fail(U_PARAMETER));
    let e = g.disable().unwrap_err();
    assert!(matches!(e, DmaError::UnsharingFailed { quarantined: 4, .. }), "{e:?}");
    assert_eq!(g.layer.stats().quarantined_pages, 4);
    assert_eq!(g.layer.stats().shared_pages, POOL_PAGES + 4);
    assert_eq!(g.hv.shared_pages(), POOL_PAGES + 4);
    assert!((0..4).all(|i| g.page_state(i) == PageState::Shared));
    // The layer is off all the same; turning it on again shares fresh pages, never these.
    assert_eq!(g.layer.disable_iommu(), Ok(()));
}

#[test]
fn per_entry_put_failure_clears_the_range_with_one_stuff() {
    let g = strict_guest(Mode::PerEntry, 12, VerifyPolicy::Off);
    let buf = g.hv.alloc(MAP as u64, Region::High);
    g.hv.calls().inject_at(CallKind::PutTce, 10, Injection::Fail(H_HARDWARE));
    let e = g.round_trip(buf, MAP, 1).unwrap_err();
    assert_eq!(e, DmaError::Iommu(IommuError::Hcall(H_HARDWARE)));
    assert_eq!(g.calls(CallKind::PutTce), 10, "stops at the failing entry");
    assert_eq!(g.calls(CallKind::StuffTce), 1, "the nine written entries are cleared at once");
    assert_eq!(g.layer.iommu_stats().quarantined_ranges, 0);
    g.assert_baseline();
    g.round_trip(buf, MAP, 2).unwrap();
    g.assert_baseline();
}

#[test]
fn per_entry_put_and_clear_failing_quarantines_and_pins() {
    let g = strict_guest(Mode::PerEntry, 12, VerifyPolicy::Off);
    let buf = g.hv.alloc(MAP as u64, Region::High);
    g.hv.calls().inject_at(CallKind::PutTce, 10, Injection::Fail(H_HARDWARE));
    g.hv.calls().inject_next(CallKind::StuffTce, Injection::Fail(H_HARDWARE));
    let e = g.round_trip(buf, MAP, 1).unwrap_err();
    assert_eq!(e, DmaError::Iommu(IommuError::Hcall(H_HARDWARE)));
    let s = g.layer.iommu_stats();
    assert_eq!(s.quarantined_ranges, 1);
    assert_eq!(s.live_tces, 64, "the whole range is counted live: the hypervisor may hold it");
    assert_eq!(g.hv.tce_counters().live_entries, 9);
    // What stays in the window names pool pages only, and the pool can no longer be released.
    let (lo, hi) = (MID_POOL, MID_POOL + POOL_LEN);
    assert!(g.hv.reachable(2).iter().all(|r| r.phys >= lo && r.phys + r.len <= hi));
    assert_eq!(g.hv.tces_to_private(), 0);
    assert_no_faults(g.hv);
}

#[test]
fn per_cpu_indirect_failure_rolls_back_and_frees_the_page() {
    let g = strict_guest(Mode::PerCpu(2), 12, VerifyPolicy::Ends);
    let buf = g.hv.alloc(MAP as u64, Region::High);
    g.hv.calls().inject_next(CallKind::PutTceIndirect, Injection::Partial { pages: 10, code: H_HARDWARE });
    let e = g.round_trip(buf, MAP, 1).unwrap_err();
    assert_eq!(e, DmaError::Iommu(IommuError::Hcall(H_HARDWARE)));
    assert_eq!(g.calls(CallKind::StuffTce), 1, "the ten entries that landed are cleared");
    g.assert_baseline();
    // The page went back: the next batch takes the same page without moving or falling back.
    g.round_trip(buf, MAP, 2).unwrap();
    let s = g.layer.iommu_stats();
    assert_eq!((s.list_page_busy, s.list_page_fallbacks), (0, 0));
    assert_eq!(g.calls(CallKind::PutTce), 0);
    g.assert_baseline();
}

#[test]
fn per_cpu_lying_indirect_is_caught_and_cleared() {
    let g = strict_guest(Mode::PerCpu(2), 12, VerifyPolicy::Ends);
    let buf = g.hv.alloc(MAP as u64, Region::High);
    g.hv.calls().inject_next(CallKind::PutTceIndirect, Injection::LieSuccess);
    let e = g.round_trip(buf, MAP, 1).unwrap_err();
    assert!(matches!(e, DmaError::Iommu(IommuError::Verify { .. })), "{e:?}");
    assert_eq!(g.layer.iommu_stats().verify_failures, 1);
    g.assert_baseline();
}

#[test]
fn two_threads_claiming_one_cpu_never_share_a_page() {
    // Both threads say they run on CPU 0, over two pages and then over one: a busy page moves a
    // batch to the other page or to per-entry calls, never into a page another batch is using.
    // Calls take 20 us (outside the model's lock) so batches overlap; every byte the device reads
    // through the entries is checked, and the ends of every call are read back.
    for count in [2, 1] {
        let g = strict_guest(Mode::PerCpu(count), 12, VerifyPolicy::Ends);
        g.hv.set_tce_call_latency(std::time::Duration::from_micros(20));
        let bufs = [g.hv.alloc(MAP as u64, Region::High), g.hv.alloc(MAP as u64, Region::High)];
        std::thread::scope(|s| {
            for (t, &buf) in bufs.iter().enumerate() {
                let g = &g;
                s.spawn(move || {
                    Hypervisor::set_cpu_hint(Some(0));
                    for i in 0..150 {
                        g.round_trip(buf, MAP, (t * 1000 + i) as u64).unwrap();
                    }
                });
            }
        });
        let s = g.layer.iommu_stats();
        println!(
            "{count} page(s), two threads on CPU 0: {} batches moved to another page, {} entries per-entry",
            s.list_page_busy, s.list_page_fallbacks
        );
        assert_eq!(s.verify_failures, 0);
        assert_eq!(s.list_page_waits, 0, "per-CPU pages never wait");
        if count == 1 {
            assert_eq!(s.list_page_busy, 0, "one page: nowhere to move");
        }
        g.assert_baseline();
    }
}

#[test]
fn threads_on_their_own_cpus_never_meet_on_a_page() {
    // Two threads on CPUs 0 and 1 over two pages: each batch finds its own page free, every time,
    // however the calls overlap (20 us each, outside the model's lock).
    let g = strict_guest(Mode::PerCpu(2), 12, VerifyPolicy::Ends);
    g.hv.set_tce_call_latency(std::time::Duration::from_micros(20));
    let bufs = [g.hv.alloc(MAP as u64, Region::High), g.hv.alloc(MAP as u64, Region::High)];
    std::thread::scope(|s| {
        for (cpu, &buf) in bufs.iter().enumerate() {
            let g = &g;
            s.spawn(move || {
                Hypervisor::set_cpu_hint(Some(cpu));
                for i in 0..100 {
                    g.round_trip(buf, MAP, (cpu * 1000 + i) as u64).unwrap();
                }
            });
        }
    });
    let s = g.layer.iommu_stats();
    assert_eq!((s.list_page_busy, s.list_page_fallbacks, s.list_page_waits), (0, 0, 0));
    assert_eq!(g.calls(CallKind::PutTceIndirect), 200);
    assert_eq!(g.calls(CallKind::PutTce), 0);
    g.assert_baseline();
}

#[test]
fn the_model_refuses_an_unshared_list_and_counts_private_entries() {
    let hv = model(HvConfig::pseries(2 * GIB));
    hv.enable_iommu(TceConfig::default());
    hv.add_iommu_device(1, 32);
    let win = hv.default_window(1).unwrap();
    let list = hv.alloc(4096, Region::Low);
    let private = hv.alloc(4096, Region::Low);
    let shared = hv.alloc(4096, Region::Low);
    hv.share(PhysAddr(shared), 1).unwrap();
    hv.memory().write(list, &(shared | 3).to_be_bytes());
    assert_eq!(hv.h_put_tce_indirect(win.liobn, 0x10_0000, PhysAddr(list), 1), H_PARAMETER);
    assert_eq!(hv.tce_counters().unshared_lists, 1);
    assert_eq!(hv.tce_counters().live_entries, 0);
    hv.share(PhysAddr(list), 1).unwrap();
    assert_eq!(hv.h_put_tce_indirect(win.liobn, 0x10_0000, PhysAddr(list), 1), H_SUCCESS);
    assert_eq!(hv.tce_counters().listed_private_entries, 0);
    hv.memory().write(list + 8, &(private | 1).to_be_bytes());
    assert_eq!(hv.h_put_tce_indirect(win.liobn, 0x10_0000, PhysAddr(list), 2), H_SUCCESS);
    assert_eq!(hv.tce_counters().listed_private_entries, 1, "the private address was in a shared page");
    assert_eq!(hv.tces_to_private(), 1);
}
