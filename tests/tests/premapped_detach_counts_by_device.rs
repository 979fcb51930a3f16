//! Issue 21: a premapped mapping (pool premapped into the default window or a DDW) is counted live by
//! its device alone, not also by its IOMMU domain (two atomic read-modify-writes per map+unmap
//! saved on the hot path). What that count backed must stay exact: detach refuses a device with
//! anything live (the exact number), the last detach of an endpoint never takes the windows down
//! under a live mapping, and `disable_iommu` refuses while any device is attached. Mappings are
//! made and ended from several threads on two devices of one endpoint (one domain) at once.
//!
//! Fail-first: with `detach`'s check of the device's own count removed (`DmaLayer::detach_dyn`,
//! `live != 0`), the last detach below takes the DDW down under a live raw mapping.

mod iommu_support;

use ccdma::{DeviceConfig, DmaAttrs, DmaDirection, DmaError, DmaMask, DmaPath, IommuPolicy, PhysAddr};
use ccdma_hv_model::Region;
use ccdma_tests::*;
use iommu_support::*;

const BRIDGE: u32 = 9;
const THREADS: usize = 4;
const ROUNDS: usize = 300;

/// A raw mapping left live: bus address, buffer, pattern seed.
type Live = (u64, u64, u64);

fn cfg(id: u32, bits: u32, deferred: bool) -> DeviceConfig {
    DeviceConfig { deferred_attach: deferred, ..DeviceConfig::new(id, DmaMask::new(bits).unwrap()) }
}

/// Threads map and unmap through the safe face on `devs` (thread `t` on `devs[t % devs.len()]`),
/// each thread leaving `t + 1` raw 4 KiB to-device mappings live; returns them per device:
/// (bus, phys, pattern seed).
fn churn_and_leave(g: &IommuGuest, devs: &[&ccdma::Device]) -> Vec<Vec<Live>> {
    let layer = &g.layer;
    let hv = g.hv;
    let left: Vec<(usize, Vec<Live>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let dev = devs[t % devs.len()];
                s.spawn(move || {
                    let mut buf = pattern(4096, t as u64);
                    for _ in 0..ROUNDS {
                        let m = layer.map(dev, &mut buf, DmaDirection::ToDevice, DmaAttrs::NONE).unwrap();
                        m.unmap().map_err(|r| r.error).unwrap();
                    }
                    let mut mine = Vec::new();
                    for k in 0..=t {
                        let seed = (16 * t + k) as u64;
                        let phys = hv.alloc(4096, Region::High);
                        hv.memory().write(phys, &pattern(4096, seed));
                        // SAFETY: a fresh allocation of this test, untouched until the mapping ends.
                        let bus = unsafe {
                            layer.map_phys(dev, PhysAddr(phys), 4096, DmaDirection::ToDevice, DmaAttrs::NONE)
                        }
                        .unwrap();
                        mine.push((bus.0, phys, seed));
                    }
                    (t % devs.len(), mine)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut out = vec![Vec::new(); devs.len()];
    for (d, mine) in left {
        out[d].extend(mine);
    }
    out
}

fn unmap_all(g: &IommuGuest, dev: &ccdma::Device, live: &mut Vec<Live>, keep: usize) {
    while live.len() > keep {
        let (bus, _, _) = live.pop().unwrap();
        // SAFETY: a raw mapping this test made on `dev`; its buffer is untouched.
        unsafe { g.layer.unmap(dev, ccdma::BusAddr(bus), 4096, DmaDirection::ToDevice, DmaAttrs::NONE) }
            .unwrap();
    }
}

/// Every live raw mapping still reads back as its pattern through the device's window.
fn assert_reachable(g: &IommuGuest, id: u32, live: &[Live]) {
    for &(bus, _, seed) in live {
        assert_eq!(g.hv.device(id).read(bus, 4096).unwrap(), pattern(4096, seed), "mapping at {bus:#x} lost");
    }
}

fn run(policy: IommuPolicy, bits: u32, deferred: bool, expect: DmaPath) {
    let mut g = iommu_guest(Opts::new(policy));
    g.hv.add_iommu_device_on_bridge(1, bits, BRIDGE);
    g.hv.add_iommu_device_on_bridge(2, bits, BRIDGE);
    let a = g.layer.attach(cfg(1, bits, deferred)).unwrap();
    let b = g.layer.attach(cfg(2, bits, deferred)).unwrap();
    let mut left = churn_and_leave(&g, &[&a, &b]);
    let (mut live_a, mut live_b) = (left.remove(0), left.remove(0));
    assert_eq!((g.layer.path_of(&a), g.layer.path_of(&b)), (expect, expect));
    let (na, nb) = (live_a.len() as u64, live_b.len() as u64);
    assert_eq!((a.live(), b.live()), (na, nb));
    assert_eq!(g.layer.stats().slots_in_use, 2 * (na + nb), "one run of two slots per live mapping");
    let before = g.hv.tce_counters();

    // Neither device may go while it has mappings; the answer is its own exact count.
    let r = g.layer.detach(b).unwrap_err();
    assert_eq!(r.error, DmaError::Busy { live: nb });
    let b = r.value;
    let r = g.layer.detach(a).unwrap_err();
    assert_eq!(r.error, DmaError::Busy { live: na });
    let a = r.value;
    assert_eq!(g.layer.disable_iommu(), Err(DmaError::DomainsInUse));
    assert_eq!(g.hv.tce_counters(), before, "a refused detach changed the windows");

    // b goes (a keeps the domain); then a is the last device of the endpoint, with mappings live.
    unmap_all(&g, &b, &mut live_b, 0);
    g.layer.detach(b).unwrap();
    unmap_all(&g, &a, &mut live_a, 1);
    let r = g.layer.detach(a).unwrap_err();
    assert_eq!(r.error, DmaError::Busy { live: 1 });
    let a = r.value;
    assert_eq!(g.layer.disable_iommu(), Err(DmaError::DomainsInUse));
    assert_eq!(g.hv.tce_counters().live_entries, before.live_entries, "the window lost entries");
    assert_eq!(g.hv.tce_counters().ddws, before.ddws);
    assert_reachable(&g, 1, &live_a);

    unmap_all(&g, &a, &mut live_a, 0);
    g.layer.detach(a).unwrap();
    let t = g.hv.tce_counters();
    assert_eq!((t.live_entries, t.ddws), (0, 0), "the last detach left entries or windows: {t:?}");
    assert_eq!(g.layer.stats().slots_in_use, 0);
    g.layer.disable_iommu().unwrap();
    assert_eq!(g.hv.tces_to_private(), 0);
    assert_no_faults(g.hv);
}

#[test]
fn ddw_detach_refuses_by_the_device_count_under_threads() {
    run(IommuPolicy::Premapped, 64, false, DmaPath::IommuDdw);
}

#[test]
fn default_window_detach_refuses_by_the_device_count_under_threads() {
    run(IommuPolicy::Premapped, 32, false, DmaPath::IommuPremapped);
}

/// Deferred devices keep `IommuDeferred` as their attach-time path: their maps take the route
/// out of line (`iommu_map`), which must not count in the domain either (the unmap no longer
/// uncounts it there).
#[test]
fn deferred_ddw_detach_refuses_by_the_device_count_under_threads() {
    run(IommuPolicy::Premapped, 64, true, DmaPath::IommuDdw);
}

/// One device, so every detach is the last of its endpoint: the device's count is all that stands
/// between a live mapping and its window being taken down (with the check removed this fails; on
/// the code before issue 21's change the domain's own count refused too).
#[test]
fn the_last_device_alone_is_refused_while_threads_left_mappings() {
    for (bits, expect) in [(64, DmaPath::IommuDdw), (32, DmaPath::IommuPremapped)] {
        let mut g = iommu_guest(Opts::new(IommuPolicy::Premapped));
        g.hv.add_iommu_device_on_bridge(1, bits, BRIDGE);
        let a = g.layer.attach(cfg(1, bits, false)).unwrap();
        let mut live = churn_and_leave(&g, &[&a]).remove(0);
        assert_eq!(g.layer.path_of(&a), expect);
        let n = live.len() as u64;
        assert_eq!(n, (1..=THREADS as u64).sum::<u64>());
        let before = g.hv.tce_counters();
        let r = g.layer.detach(a).unwrap_err();
        assert_eq!(r.error, DmaError::Busy { live: n });
        let a = r.value;
        assert_eq!(g.layer.disable_iommu(), Err(DmaError::DomainsInUse));
        assert_eq!(g.hv.tce_counters(), before, "a refused detach changed the windows");
        assert_reachable(&g, 1, &live);
        unmap_all(&g, &a, &mut live, 0);
        g.layer.detach(a).unwrap();
        assert_eq!(g.hv.tce_counters().live_entries, 0);
        g.layer.disable_iommu().unwrap();
        assert_no_faults(g.hv);
    }
}
