//! Issue 18 item 5: a premapped attach that fails while entries cannot be cleared (`H_GET_TCE`
//! failing, so no write or clear can be verified, and `H_STUFF_TCE` failing) leaves entries in the device's window naming the pools,
//! grown ones included. Such a pool must never be unshared or handed back to the memory source: the
//! idle shrink must honour what `release_pools` honours.

mod growth_support;
mod iommu_support;

use ccdma::{DeviceConfig, DmaMask, IommuPolicy};
use ccdma_hv_model::{CallKind, Injection};
use ccdma_tests::*;
use growth_support::*;

#[test]
fn a_pool_named_by_a_stuck_entry_is_never_handed_back() {
    let (g, src) = iommu_growing(IommuPolicy::Premapped, growth_cfg());
    let a = g.device(1, 32);
    // Grow: 2 MiB of live mappings through a 1 MiB pool.
    workload(g.hv, &g.layer, &a, 2 * MIB as usize, 64 << 10).unwrap();
    let grown = g.layer.growth_stats().pools;
    assert!(grown >= 1, "the workload grew a pool");
    // A second device's premapped attach: the first pool's entries go in, then every read-back
    // fails, so the grown pool's entries are neither verified nor cleared.
    g.hv.add_iommu_device(2, 32);
    let from = g.hv.calls().count(CallKind::GetTce) + 3;
    g.hv.calls().inject_from(CallKind::GetTce, from, Injection::Fail(-1));
    // And the clears fail too, so the entries really stay (not only unconfirmed).
    let stuff = g.hv.calls().count(CallKind::StuffTce) + 1;
    g.hv.calls().inject_from(CallKind::StuffTce, stuff, Injection::Fail(-1));
    let e = g.layer.attach(DeviceConfig::new(2, DmaMask::BITS_32)).unwrap_err();
    g.hv.calls().clear_injections();
    let stuck: Vec<_> = g.hv.reachable(2);
    assert!(!stuck.is_empty(), "entries stay in the failed device's window: {e:?}");
    let returned_before = src.counters().bytes_out;
    // Idle: the shrink may hand back only pools no entry names.
    shrink_idle(&g.layer);
    shrink_idle(&g.layer);
    for r in &stuck {
        assert_eq!(
            g.hv.memory().state(r.phys),
            ccdma_hv_model::PageState::Shared,
            "a page a live entry names was made private: {r:x?}"
        );
    }
    let l = g.hv.sharing_ledger();
    assert_eq!(l.unshared_while_mapped, 0, "unshared while an entry named it: {l:?}");
    assert_eq!(g.hv.tces_to_private(), 0, "a live TCE names private memory");
    assert!(g.layer.growth_stats().quarantined_pools >= 1, "{:?}", g.layer.growth_stats());
    assert_nothing_lost(g.hv, &g.layer, src, "after the shrink");
    let _ = returned_before;
    g.layer.detach(a).unwrap();
}

/// Only the read-backs fail: the clears may have worked (in the model they did), but the guest
/// cannot know, so the pool is kept all the same (never handed back while an entry may name it).
#[test]
fn a_pool_whose_entries_are_unconfirmed_is_kept_too() {
    let (g, src) = iommu_growing(IommuPolicy::Premapped, growth_cfg());
    let a = g.device(1, 32);
    workload(g.hv, &g.layer, &a, 2 * MIB as usize, 64 << 10).unwrap();
    g.hv.add_iommu_device(2, 32);
    let from = g.hv.calls().count(CallKind::GetTce) + 3;
    g.hv.calls().inject_from(CallKind::GetTce, from, Injection::Fail(-1));
    g.layer.attach(DeviceConfig::new(2, DmaMask::BITS_32)).unwrap_err();
    g.hv.calls().clear_injections();
    shrink_idle(&g.layer);
    shrink_idle(&g.layer);
    let s = g.layer.growth_stats();
    assert!(s.quarantined_pools >= 1, "a pool unconfirmed entries may name was handed back: {s:?}");
    assert!(g.layer.iommu_stats().quarantined_ranges >= 1);
    assert_nothing_lost(g.hv, &g.layer, src, "after the shrink");
    g.layer.detach(a).unwrap();
}
