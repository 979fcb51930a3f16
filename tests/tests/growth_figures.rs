//! Figures for issue 13: map latency while a pool is added (median, 99th percentile and worst, on a
//! CPU that maps while another grows, with and without a reserve; and of the maps that grow), and
//! pages shared over a grow-shrink cycle. Printed, never asserted on (timings vary by machine).
//!
//! `cargo test --release -p ccdma-tests --test growth_figures -- --nocapture --test-threads 1`

mod growth_support;
mod iommu_support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use ccdma::{DeviceConfig, DmaAttrs, DmaDirection, DmaMask, GrowthConfig};
use ccdma_hv_model::HvConfig;
use ccdma_tests::*;
use growth_support::*;

const CHUNK: usize = 64 * 1024;
const CYCLES: usize = 30;

fn summary(v: &mut [Duration]) -> String {
    if v.is_empty() {
        return "none".into();
    }
    v.sort();
    let at = |q: f64| v[((v.len() - 1) as f64 * q) as usize];
    format!("n={:>6} median {:>8.1?} p99 {:>8.1?} worst {:>8.1?}", v.len(), at(0.5), at(0.99), v[v.len() - 1])
}

#[test]
fn map_latency_while_a_pool_is_added() {
    println!("map latency while pools are added ({CYCLES} grow-shrink cycles, pseries model, no IOMMU)");
    for reserve in [0usize, 256 * 1024] {
        let (hv, mut layer) = guest(HvConfig::pseries(2 * GIB), &[(MID_POOL, INITIAL)]);
        let src = source(hv);
        layer
            .enable_growth(src, GrowthConfig { idle_ticks: 1, reserve_bytes: reserve, ..growth_cfg() })
            .unwrap();
        let grower = layer.attach(DeviceConfig::new(1, DmaMask::BITS_32)).unwrap();
        let other = layer.attach(DeviceConfig::new(2, DmaMask::BITS_32)).unwrap();
        let stop = AtomicBool::new(false);
        let (mut growing, mut plain, mut during) = (Vec::new(), Vec::new(), Vec::new());
        thread::scope(|s| {
            let m = s.spawn(|| {
                let mut lat = Vec::new();
                let mut b = vec![1u8; 4096];
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    let r = layer.map(&other, &mut b, DmaDirection::ToDevice, DmaAttrs::NO_WARN);
                    lat.push(t.elapsed());
                    drop(r);
                }
                lat
            });
            for _ in 0..CYCLES {
                // Fill what there is (leaving a few slots so the other CPU sometimes finds room),
                // then one more map grows.
                let mut bufs: Vec<Vec<u8>> = (0..15).map(|_| vec![2u8; CHUNK]).collect();
                let mut held = Vec::new();
                for b in bufs.iter_mut() {
                    let t = Instant::now();
                    let before = layer.growth_stats().grown;
                    if let Ok(m) = layer.map(&grower, b, DmaDirection::ToDevice, DmaAttrs::NO_WARN) {
                        held.push(m);
                    }
                    let d = t.elapsed();
                    if layer.growth_stats().grown != before {
                        growing.push(d)
                    } else {
                        plain.push(d)
                    }
                }
                let mut extra = vec![3u8; 2 * CHUNK];
                let t = Instant::now();
                let before = layer.growth_stats().grown;
                let m = layer.map(&grower, &mut extra, DmaDirection::ToDevice, DmaAttrs::NO_WARN);
                let d = t.elapsed();
                if layer.growth_stats().grown != before {
                    growing.push(d)
                } else {
                    plain.push(d)
                }
                drop(m);
                drop(held);
                layer.growth_tick();
                layer.growth_tick();
            }
            stop.store(true, Ordering::Relaxed);
            during = m.join().unwrap();
        });
        let st = layer.growth_stats();
        println!(
            "  reserve {:>3} KiB: {} pools added, {} removed, {} maps waited",
            reserve / 1024,
            st.grown,
            st.shrunk,
            st.waited_maps
        );
        println!("    maps that grew a pool        {}", summary(&mut growing));
        println!("    other maps of the grower     {}", summary(&mut plain));
        println!("    4 KiB maps on another CPU    {}", summary(&mut during));
        layer.shrink_all().unwrap();
        assert_nothing_lost(hv, &layer, src, "figures");
    }
}

#[test]
fn pages_shared_over_a_grow_shrink_cycle() {
    let (hv, layer, src) = plain_guest(true);
    let dev = layer.attach(DeviceConfig::new(1, DmaMask::BITS_32)).unwrap();
    hv.add_device(1, 32);
    let start = hv.sharing_ledger().shared_over_time.len();
    workload(hv, &layer, &dev, 4 * INITIAL as usize, CHUNK).unwrap();
    let mut ticks = Vec::new();
    for _ in 0..=growth_cfg().idle_ticks {
        layer.growth_tick();
        ticks.push(hv.shared_pages());
    }
    let series = hv.sharing_ledger().shared_over_time;
    println!(
        "pages shared after each sharing call of a 4x workload and its shrink (1 MiB pools, 4 KiB pages):"
    );
    println!("  {:?}", &series[start..]);
    println!("  after each idle tick: {ticks:?}");
    assert_nothing_lost(hv, &layer, src, "figure");
}
