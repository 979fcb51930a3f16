//! Faults injected in every step of a grow-shrink cycle lose nothing (issue 13): every sharing call,
//! every TCE call, and every request to the memory source of a cycle that grows three pools and
//! shrinks them again fails in turn, in a fresh guest each time; afterwards what the source lent is
//! in a live pool or kept and counted, the model and the layer agree on shared pages, no page was
//! shared twice or made private while an entry named it, and the layer still maps.

mod growth_support;
mod iommu_support;

use ccdma::{Device, IommuPolicy};
use ccdma_hv_model::{CallKind, HvConfig, Hypervisor, Injection, ModelSource};
use ccdma_tests::*;
use growth_support::*;

const CHUNK: usize = 64 * 1024;

/// One guest of the sweep.
struct Setup {
    hv: &'static Hypervisor,
    layer: Layer,
    src: &'static ModelSource<'static>,
    devs: Vec<Device>,
}

#[derive(Clone, Copy, Debug)]
enum Flavour {
    Plain(bool),
    Iommu(IommuPolicy),
}

fn setup(f: Flavour) -> Setup {
    match f {
        Flavour::Plain(tdx) => {
            let cfg = if tdx { HvConfig::tdx(2 * GIB) } else { HvConfig::pseries(2 * GIB) };
            let (hv, mut layer) = guest(cfg, &[(MID_POOL, INITIAL)]);
            let src = source(hv);
            layer.enable_growth(src, growth_cfg()).unwrap();
            hv.add_device(1, 32);
            let dev = layer.attach(ccdma::DeviceConfig::new(1, ccdma::DmaMask::BITS_32)).unwrap();
            Setup { hv, layer, src, devs: vec![dev] }
        }
        Flavour::Iommu(policy) => {
            let (g, src) = iommu_growing(policy, growth_cfg());
            let devs = vec![g.device(0x10, 64), g.device(0x20, 32)];
            Setup { hv: g.hv, layer: g.layer, src, devs }
        }
    }
}

/// Grow (each device maps four times the initial pool), then shrink.
fn cycle(s: &Setup) {
    for dev in &s.devs {
        let _ = workload(s.hv, &s.layer, dev, 4 * INITIAL as usize, CHUNK);
    }
    shrink_idle(&s.layer);
}

/// After a faulty cycle: nothing lost, and the layer still works (a clean cycle completes).
#[track_caller]
fn check(s: &Setup, what: &str) {
    s.hv.calls().clear_injections();
    let _ = s.layer.shrink_all();
    assert_nothing_lost(s.hv, &s.layer, s.src, what);
    for dev in &s.devs {
        let n = workload(s.hv, &s.layer, dev, INITIAL as usize / 2, CHUNK);
        assert_eq!(n, Ok(8), "{what}: the layer maps after the fault");
    }
    shrink_idle(&s.layer);
    assert_nothing_lost(s.hv, &s.layer, s.src, what);
}

fn kinds(f: Flavour) -> Vec<CallKind> {
    match f {
        Flavour::Plain(true) => vec![CallKind::MapGpa, CallKind::Accept],
        Flavour::Plain(false) => vec![CallKind::UvShare, CallKind::UvUnshare],
        Flavour::Iommu(IommuPolicy::Premapped) => vec![
            CallKind::UvShare,
            CallKind::UvUnshare,
            CallKind::PutTce,
            CallKind::PutTceIndirect,
            CallKind::StuffTce,
            CallKind::GetTce,
        ],
        // Strict entry calls are made per mapping, not by growth or shrinking (the strict tests
        // inject into those); here only the sharing steps.
        Flavour::Iommu(IommuPolicy::Strict) => vec![CallKind::UvShare, CallKind::UvUnshare],
    }
}

#[test]
fn faults_in_every_growth_and_shrink_step_lose_nothing() {
    let flavours = [
        Flavour::Plain(false),
        Flavour::Plain(true),
        Flavour::Iommu(IommuPolicy::Premapped),
        Flavour::Iommu(IommuPolicy::Strict),
    ];
    let mut runs = 0;
    // What the faults did, summed: the sweep must have hit growth and shrink steps, not only maps.
    let mut hit = ccdma::GrowthStats::default();
    let mut tally = |s: &Setup| {
        let g = s.layer.growth_stats();
        hit.failed += g.failed;
        hit.refused += g.refused;
        hit.quarantined_pools += g.quarantined_pools;
    };
    for f in flavours {
        // A clean cycle says how many calls of each kind a cycle makes.
        let clean = setup(f);
        let before = clean.hv.calls().counts();
        let takes = clean.src.counters().takes;
        cycle(&clean);
        let after = clean.hv.calls().counts();
        assert!(clean.layer.growth_stats().grown >= 3, "{f:?}: the cycle grows");
        let takes = clean.src.counters().takes - takes;
        for kind in kinds(f) {
            let base = before.get(&kind).copied().unwrap_or(0);
            let calls = after.get(&kind).copied().unwrap_or(0) - base;
            let stride = (calls / 12).max(1);
            for n in (1..=calls).step_by(stride as usize) {
                for action in [Injection::Fail(-1), Injection::Partial { pages: 1, code: -1 }] {
                    let s = setup(f);
                    let at = s.hv.calls().count(kind) + n;
                    s.hv.calls().inject_at(kind, at, action);
                    cycle(&s);
                    tally(&s);
                    check(&s, &format!("{f:?} {kind:?} call {n}/{calls} {action:?}"));
                    runs += 1;
                }
            }
        }
        for n in 0..takes {
            for meta in [false, true] {
                let s = setup(f);
                if meta {
                    s.src.fail_meta_in(n);
                } else {
                    s.src.fail_take_in(n);
                }
                cycle(&s);
                tally(&s);
                check(&s, &format!("{f:?} source request {n} (meta {meta})"));
                runs += 1;
            }
        }
    }
    println!(
        "growth fault sweep: {runs} faulty cycles, nothing lost; {} growths failed and rolled back, {} refused, \
         {} pools kept (quarantined)",
        hit.failed, hit.refused, hit.quarantined_pools
    );
    assert!(
        hit.failed > 0 && hit.refused > 0 && hit.quarantined_pools > 0,
        "the sweep reached every kind of step"
    );
}
