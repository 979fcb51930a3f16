//! Issue 19: one IOMMU domain per partitionable endpoint. QEMU's pseries machine has one endpoint per
//! PCI host bridge (one default window, one DDW, shared by the bridge's devices). ccdma gives the
//! devices of one endpoint one domain, counted by its devices: the windows are set up once, for the
//! narrowest mask of the devices attached by then; a device joining a set-up domain must reach all of
//! it or gets `EndpointOutOfReach` with nothing changed; detach of one device keeps the domain for the
//! others, the last one tears it down. Faults at any call of a shared attach or detach lose nothing.

mod iommu_support;

use ccdma::iommu::hcall::H_HARDWARE;
use ccdma::iommu::TceCalls;
use ccdma::{DeviceConfig, DmaError, DmaMask, DmaPath, IommuError, IommuPolicy};
use ccdma_hv_model::{CallKind, Injection};
use ccdma_tests::*;
use iommu_support::*;

const BRIDGE: u32 = 7;

fn cfg(id: u32, bits: u32) -> DeviceConfig {
    DeviceConfig::new(id, DmaMask::new(bits).unwrap())
}

/// Bridge `BRIDGE` with devices 1 (`a` bits) and 2 (`b` bits).
fn bridge(policy: IommuPolicy, a: u32, b: u32) -> IommuGuest {
    let g = iommu_guest(Opts::new(policy));
    g.hv.add_iommu_device_on_bridge(1, a, BRIDGE);
    g.hv.add_iommu_device_on_bridge(2, b, BRIDGE);
    g
}

/// What a test reads back after the last detach: the bridge as it was before any attach.
fn assert_bridge_clean(g: &IommuGuest) {
    let t = g.hv.tce_counters();
    assert_eq!((t.live_entries, t.ddws, t.tables), (0, 0, 1), "entries or windows left: {t:?}");
    let def = g.hv.default_window(1).expect("the default window is back");
    assert_eq!((def.start, def.size), (0, 1 << 30));
    assert_eq!(g.layer.live_bus_ranges(), 0);
    let s = g.layer.iommu_stats();
    assert_eq!((s.leaked_windows, s.quarantined_ranges, s.live_tces), (0, 0, 0), "{s:?}");
    assert_eq!(g.hv.tces_to_private(), 0);
}

#[test]
fn a_second_device_joins_the_domain_and_the_pool_is_entered_once() {
    let g = bridge(IommuPolicy::Premapped, 32, 64);
    let a = g.layer.attach(cfg(1, 32)).unwrap();
    let entries = g.hv.tce_counters().live_entries;
    let b = g.layer.attach(cfg(2, 64)).unwrap();
    // The 64-bit device shares the 32-bit device's default window: no DDW, no second copy.
    assert_eq!((a.path(), b.path()), (DmaPath::IommuPremapped, DmaPath::IommuPremapped));
    assert_eq!(g.hv.tce_counters().live_entries, entries, "the pool was entered a second time");
    assert_eq!(g.hv.tce_counters().ddws, 0);
    assert_eq!(g.layer.pool_bus_of(&a, 0), g.layer.pool_bus_of(&b, 0));
    let ma_data = pattern(3000, 1);
    let ma = g.layer.on(&a).map_to_device(&ma_data).unwrap();
    let mb_data = pattern(3000, 2);
    let mb = g.layer.on(&b).map_to_device(&mb_data).unwrap();
    assert_ne!(ma.bus_addr(), mb.bus_addr());
    // Isolation is per endpoint: each device reaches the other's entry (bookkeeping, not a wall).
    assert_eq!(g.hv.device(2).read(ma.bus_addr().0, 3000).unwrap(), pattern(3000, 1));
    assert_eq!(g.hv.device(1).read(mb.bus_addr().0, 3000).unwrap(), pattern(3000, 2));
    ma.unmap().map_err(|r| r.error).unwrap();
    mb.unmap().map_err(|r| r.error).unwrap();
    g.layer.detach(a).unwrap();
    g.layer.detach(b).unwrap();
    assert_bridge_clean(&g);
    assert_no_faults(g.hv);
}

#[test]
fn detach_of_one_device_keeps_the_domain_for_the_other() {
    let g = bridge(IommuPolicy::Strict, 32, 32);
    let a = g.layer.attach(cfg(1, 32)).unwrap();
    let b = g.layer.attach(cfg(2, 32)).unwrap();
    let mb_data = pattern(4096, 2);
    let mb = g.layer.on(&b).map_to_device(&mb_data).unwrap();
    let before = g.hv.tce_counters();
    g.layer.detach(a).unwrap();
    // Nothing of the endpoint changed: b's entry, the window, the bus range are all still there.
    assert_eq!(g.hv.tce_counters(), before);
    assert_eq!(g.layer.live_bus_ranges(), 1);
    assert_eq!(g.hv.device(2).read(mb.bus_addr().0, 4096).unwrap(), pattern(4096, 2));
    let mb2_data = pattern(4096, 3);
    let mb2 = g.layer.on(&b).map_to_device(&mb2_data).unwrap();
    assert_eq!(g.hv.device(2).read(mb2.bus_addr().0, 4096).unwrap(), pattern(4096, 3));
    mb.unmap().map_err(|r| r.error).unwrap();
    mb2.unmap().map_err(|r| r.error).unwrap();
    // The device comes back and joins again.
    let a = g.layer.attach(cfg(1, 32)).unwrap();
    g.layer.detach(b).unwrap();
    g.layer.detach(a).unwrap();
    assert_bridge_clean(&g);
    assert_no_faults(g.hv);
}

#[test]
fn a_device_that_cannot_reach_the_shared_ddw_is_refused_and_nothing_changes() {
    let g = bridge(IommuPolicy::Premapped, 64, 32);
    let a = g.layer.attach(cfg(1, 64)).unwrap();
    assert_eq!(a.path(), DmaPath::IommuDdw);
    let (tables, stats) = (g.hv.tce_tables(), g.layer.iommu_stats());
    let e = g.layer.attach(cfg(2, 32)).unwrap_err();
    assert!(matches!(e, DmaError::Iommu(IommuError::EndpointOutOfReach { end }) if end > 1 << 32), "{e:?}");
    assert_eq!(
        (g.hv.tce_tables(), g.layer.iommu_stats()),
        (tables, stats),
        "a refused join changed something"
    );
    // The refused device's id is free again, and the 64-bit device is unharmed.
    let m_data = pattern(100, 4);
    let m = g.layer.on(&a).map_to_device(&m_data).unwrap();
    assert_eq!(g.hv.device(1).read(m.bus_addr().0, 100).unwrap(), pattern(100, 4));
    m.unmap().map_err(|r| r.error).unwrap();
    g.layer.detach(a).unwrap();
    assert_bridge_clean(&g);
    // With the 64-bit device gone, the 32-bit one sets the endpoint up for itself.
    let b = g.layer.attach(cfg(2, 32)).unwrap();
    assert_eq!(b.path(), DmaPath::IommuPremapped);
    g.layer.detach(b).unwrap();
    assert_bridge_clean(&g);
}

#[test]
fn deferred_devices_are_set_up_for_the_narrowest_mask() {
    let g = bridge(IommuPolicy::Premapped, 64, 32);
    let a = g.layer.attach(cfg(1, 64).with_deferred_attach(true)).unwrap();
    let b = g.layer.attach(cfg(2, 32).with_deferred_attach(true)).unwrap();
    assert_eq!(g.hv.tce_counters().live_entries, 0, "deferred: nothing programmed yet");
    // The 64-bit device's first map sets the endpoint up, for the 32-bit device too.
    let m_data = pattern(512, 5);
    let m = g.layer.on(&a).map_to_device(&m_data).unwrap();
    assert_eq!(g.layer.path_of(&a), DmaPath::IommuPremapped);
    assert_eq!(g.hv.tce_counters().ddws, 0, "a DDW the 32-bit device cannot reach");
    assert!(m.bus_addr().0 < 1 << 32);
    let n_data = pattern(512, 6);
    let n = g.layer.on(&b).map_to_device(&n_data).unwrap();
    assert_eq!(g.hv.device(2).read(n.bus_addr().0, 512).unwrap(), pattern(512, 6));
    m.unmap().map_err(|r| r.error).unwrap();
    n.unmap().map_err(|r| r.error).unwrap();
    g.layer.detach(a).unwrap();
    g.layer.detach(b).unwrap();
    assert_bridge_clean(&g);
    assert_no_faults(g.hv);
}

/// One run of a shared attach, use and detach with a fault planned; every detach is retried (the
/// plan cleared) until it completes. Returns the calls of each kind the run made.
fn shared_run(
    policy: IommuPolicy,
    bits: (u32, u32),
    plan: Option<(CallKind, u64)>,
) -> (IommuGuest, Vec<u64>) {
    let g = bridge(policy, bits.0, bits.1);
    if let Some((kind, at)) = plan {
        g.hv.calls().inject_at(kind, at, Injection::Fail(H_HARDWARE));
    }
    let mut devs = Vec::new();
    for (id, b) in [(1, bits.0), (2, bits.1)] {
        if let Ok(d) = g.layer.attach(cfg(id, b)) {
            devs.push(d);
        }
    }
    for d in &devs {
        let data = pattern(5000, 7);
        if let Ok(m) = g.layer.on(d).map_to_device(&data) {
            assert_eq!(g.hv.device(d.config().id).read(m.bus_addr().0, 5000).unwrap(), pattern(5000, 7));
            let mut m = Some(m);
            for _ in 0..3 {
                match m.take().unwrap().unmap() {
                    Ok(()) => break,
                    Err(r) => {
                        g.hv.calls().clear_injections();
                        m = Some(r.value);
                    }
                }
            }
            assert!(m.is_none(), "unmap never completed");
        };
    }
    for d in devs {
        let mut d = Some(d);
        for _ in 0..3 {
            match g.layer.detach(d.take().unwrap()) {
                Ok(()) => break,
                Err(r) => {
                    g.hv.calls().clear_injections();
                    d = Some(r.value);
                }
            }
        }
        assert!(d.is_none(), "detach never completed");
    }
    g.hv.calls().clear_injections();
    let kinds = KINDS.iter().map(|&k| g.hv.calls().count(k)).collect();
    (g, kinds)
}

const KINDS: [CallKind; 8] = [
    CallKind::PutTce,
    CallKind::GetTce,
    CallKind::PutTceIndirect,
    CallKind::StuffTce,
    CallKind::DdwQuery,
    CallKind::DdwCreate,
    CallKind::DdwRemove,
    CallKind::DdwReset,
];

#[test]
fn a_fault_at_any_call_of_a_shared_attach_or_detach_loses_nothing() {
    for (policy, bits) in [
        (IommuPolicy::Premapped, (64, 64)),
        (IommuPolicy::Premapped, (32, 64)),
        (IommuPolicy::Strict, (32, 32)),
    ] {
        let (clean, counts) = shared_run(policy, bits, None);
        assert_bridge_clean(&clean);
        let mut runs = 0;
        for (k, &kind) in KINDS.iter().enumerate() {
            for at in 1..=counts[k] {
                let (g, _) = shared_run(policy, bits, Some((kind, at)));
                let what = format!("{policy:?} {bits:?}: fault at {kind:?} #{at}");
                let t = g.hv.tce_counters();
                let s = g.layer.iommu_stats();
                // Nothing left behind that is not counted: no entry, no bus range, no window.
                assert_eq!(g.layer.live_bus_ranges(), 0, "{what}");
                assert_eq!(t.ddws as u64, s.leaked_windows, "{what}: windows left {t:?} {s:?}");
                if s.quarantined_ranges == 0 {
                    assert_eq!(t.live_entries, 0, "{what}: entries left {s:?}");
                }
                assert_eq!(g.hv.tces_to_private(), 0, "{what}");
                assert_no_faults(g.hv);
                runs += 1;
            }
        }
        assert!(runs >= 5, "{policy:?} {bits:?}: only {runs} faults planned");
    }
}
