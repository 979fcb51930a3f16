//! `cargo run --release -p ccdma-tests --example iommu_figures`: the IOMMU figures of the closing
//! note, counted on the modelled pseries hypervisor (hypercalls are the model's call counters, so the
//! numbers are exact and repeatable; times are host times of the model, not of real hypercalls).
//!
//! - hypercalls per MiB mapped in strict mode, with and without `H_PUT_TCE_INDIRECT`, for several
//!   mapping sizes and read-back policies;
//! - hypercalls on the premapped hot path (must be 0);
//! - TCE entries (and calls) to premap a 64 MiB pool in a DDW and in the default window;
//! - map+unmap ns per policy (4 KiB to-device), beside the bounce-only path.

use std::time::Instant;

use ccdma::iommu::BusRange;
use ccdma::{
    DeviceConfig, DmaAttrs, DmaDirection, DmaLayer, DmaMask, DmaPath, IommuConfig, IommuPolicy, PhysAddr,
    PoolConfig, VerifyPolicy,
};
use ccdma_hv_model::{CallKind, HvConfig, Hypervisor, Region, TceConfig};
use ccdma_tests::{add_pool, model, GIB, MIB, MID_POOL};

type Layer = DmaLayer<'static, &'static Hypervisor>;

const TCE_KINDS: [CallKind; 4] =
    [CallKind::PutTce, CallKind::GetTce, CallKind::PutTceIndirect, CallKind::StuffTce];

fn tce_calls(hv: &Hypervisor) -> u64 {
    TCE_KINDS.iter().map(|&k| hv.calls().count(k)).sum()
}

struct Fixture {
    hv: &'static Hypervisor,
    layer: Layer,
    dev: ccdma::Device,
    buf: u64,
}

/// A pseries guest with the IOMMU on (or off: `policy == None`), one pool, one device of `bits`.
fn fixture(
    policy: Option<IommuPolicy>,
    pool_len: u64,
    bits: u32,
    indirect: bool,
    verify: VerifyPolicy,
) -> Fixture {
    fixture_with(policy, pool_len, bits, indirect, verify, false)
}

fn fixture_with(
    policy: Option<IommuPolicy>,
    pool_len: u64,
    bits: u32,
    indirect: bool,
    verify: VerifyPolicy,
    deferred: bool,
) -> Fixture {
    let hv = model(HvConfig::pseries(6 * GIB));
    let mut layer = DmaLayer::new(hv);
    add_pool(&mut layer, MID_POOL, pool_len, PoolConfig::default()).expect("pool");
    if let Some(policy) = policy {
        hv.enable_iommu(TceConfig { indirect, ..TceConfig::default() });
        hv.add_iommu_device(1, bits);
        let list = hv.alloc(4096, Region::Low);
        let cfg = IommuConfig {
            policy,
            verify,
            use_ddw: true,
            max_domains: 1,
            batching: ccdma::TceBatching::SharedPage(PhysAddr(list)),
        };
        // SAFETY: the list page is a fresh allocation nothing else uses.
        unsafe { layer.enable_iommu(cfg, vec![BusRange::EMPTY; 1024].leak()) }.expect("iommu");
    } else {
        hv.add_device(1, bits);
    }
    let cfg = DeviceConfig::new(1, DmaMask::new(bits).unwrap()).with_deferred_attach(deferred);
    let dev = layer.attach(cfg).expect("attach");
    let buf = hv.alloc(MIB, Region::High);
    Fixture { hv, layer, dev, buf }
}

impl Fixture {
    fn map_unmap(&self, len: usize) {
        // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
        let bus = unsafe {
            self.layer.map_phys(&self.dev, PhysAddr(self.buf), len, DmaDirection::ToDevice, DmaAttrs::NONE)
        }
        .expect("map");
        // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
        unsafe { self.layer.unmap(&self.dev, bus, len, DmaDirection::ToDevice, DmaAttrs::NONE) }
            .expect("unmap");
    }
}

fn strict_per_mib() {
    println!("## Strict mode: TCE hypercalls per MiB mapped (map + unmap, to-device, 32-bit device)");
    println!(
        "{:<12} {:<10} {:<8} {:>10} {:>10} {:>10}",
        "mapping", "indirect", "verify", "map", "unmap", "total"
    );
    for len in [4096usize, 65536, 262144] {
        for indirect in [true, false] {
            for verify in [VerifyPolicy::Off, VerifyPolicy::Ends] {
                let f = fixture(Some(IommuPolicy::Strict), 16 * MIB, 32, indirect, verify);
                assert_eq!(f.dev.path(), DmaPath::IommuStrict);
                let n = (MIB as usize) / len;
                let c0 = tce_calls(f.hv);
                let mut buses = Vec::new();
                for _ in 0..n {
                    // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
                    let bus = unsafe {
                        f.layer.map_phys(&f.dev, PhysAddr(f.buf), len, DmaDirection::ToDevice, DmaAttrs::NONE)
                    }
                    .expect("map");
                    buses.push(bus);
                }
                let c1 = tce_calls(f.hv);
                for bus in buses {
                    // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
                    unsafe { f.layer.unmap(&f.dev, bus, len, DmaDirection::ToDevice, DmaAttrs::NONE) }
                        .expect("unmap");
                }
                let c2 = tce_calls(f.hv);
                assert_eq!(f.hv.tce_counters().live_entries, 0);
                println!(
                    "{:<12} {:<10} {:<8} {:>10} {:>10} {:>10}",
                    format!("{} KiB", len / 1024),
                    if indirect { "yes" } else { "no" },
                    format!("{verify:?}"),
                    c1 - c0,
                    c2 - c1,
                    c2 - c0
                );
            }
        }
    }
    println!();
}

fn premapped_hot_path() {
    println!("## Premapped hot path: TCE hypercalls for 10000 map+unmap of 4 KiB");
    for (name, bits) in [("DDW (64-bit device)", 64), ("default window (32-bit device)", 32)] {
        let f = fixture(Some(IommuPolicy::Premapped), 16 * MIB, bits, true, VerifyPolicy::Ends);
        let c0 = f.hv.calls().counts().values().sum::<u64>();
        for _ in 0..10_000 {
            f.map_unmap(4096);
        }
        let c1 = f.hv.calls().counts().values().sum::<u64>();
        println!("{name:<34} path {:<22} hypercalls {}", f.dev.path().name(), c1 - c0);
        assert_eq!(c1, c0, "the premapped hot path made a hypercall");
    }
    println!();
}

fn premap_64mib() {
    println!("## Premapping a 64 MiB pool (at 256 MiB): TCE entries and calls at attach");
    println!("{:<34} {:>8} {:>10} {:>9} {:>9} {:>9}", "window", "page", "entries", "put", "indirect", "get");
    for (name, bits, indirect) in [
        ("DDW (64-bit device)", 64, true),
        ("default window (32-bit device)", 32, true),
        ("default window, no indirect call", 32, false),
    ] {
        let f = fixture(Some(IommuPolicy::Premapped), 64 * MIB, bits, indirect, VerifyPolicy::Ends);
        let reach = f.hv.reachable(1);
        let page = reach.first().map_or(0, |r| r.len);
        let calls = |k| f.hv.calls().count(k);
        println!(
            "{name:<34} {:>8} {:>10} {:>9} {:>9} {:>9}",
            if page >= MIB { format!("{} MiB", page / MIB) } else { format!("{} KiB", page / 1024) },
            f.layer.iommu_stats().entries_written,
            calls(CallKind::PutTce),
            calls(CallKind::PutTceIndirect),
            calls(CallKind::GetTce)
        );
        assert_eq!(reach.len() as u64 * page, 64 * MIB);
    }
    println!();
}

fn timing() {
    println!(
        "## map+unmap of 4 KiB to-device, ns (host time on the model; a model hypercall is a lock and a"
    );
    println!("## hash-map update, far cheaper than a real one)");
    let p = Some(IommuPolicy::Premapped);
    let s = Some(IommuPolicy::Strict);
    let (ends, off) = (VerifyPolicy::Ends, VerifyPolicy::Off);
    // (name, policy, mask bits, indirect call, read-back, deferred attach)
    type Case = (&'static str, Option<IommuPolicy>, u32, bool, VerifyPolicy, bool);
    let cases: [Case; 8] = [
        ("bounce only (no IOMMU)", None, 64, true, ends, false),
        ("premapped, DDW", p, 64, true, ends, false),
        ("premapped, default window", p, 32, true, ends, false),
        ("premapped, DDW, deferred attach", p, 64, true, ends, true),
        ("premapped, window, deferred attach", p, 32, true, ends, true),
        ("strict, verify ends", s, 32, true, ends, false),
        ("strict, verify off", s, 32, true, off, false),
        ("strict, no indirect, verify off", s, 32, false, off, false),
    ];
    for (name, policy, bits, indirect, verify, deferred) in cases {
        let f = fixture_with(policy, 16 * MIB, bits, indirect, verify, deferred);
        for _ in 0..2000 {
            f.map_unmap(4096);
        }
        let mut best = f64::MAX;
        for _ in 0..7 {
            let n = 20_000;
            let t = Instant::now();
            for _ in 0..n {
                f.map_unmap(4096);
            }
            best = best.min(t.elapsed().as_nanos() as f64 / n as f64);
        }
        println!("{name:<34} {:<22} {best:>8.0} ns", f.layer.path_of(&f.dev).name());
    }
    println!();
}

fn main() {
    strict_per_mib();
    premapped_hot_path();
    premap_64mib();
    timing();
}
