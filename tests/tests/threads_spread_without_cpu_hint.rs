//! Issue 21: when the platform names no CPU (`Platform::cpu_hint` `None`), threads mapping through
//! one device still start in different areas of the pool (a hash of the caller's stack), so they
//! take different locks as they do with a hint. Without that every map started where the last one
//! found room: area 0 for all of them, one lock for every CPU.
//!
//! Eight threads, all alive at once (so their stacks differ), map one after another (so no lock is
//! ever contended and only the starting area decides) and keep their mappings until all have
//! mapped; the areas their slots landed in are read from the bus addresses.

use std::sync::{Barrier, Mutex};

use ccdma::{DeviceConfig, DmaAttrs, DmaDirection, DmaLayer, DmaMask, PhysAddr, PoolConfig};
use ccdma_hv_model::{HvConfig, Hypervisor, Region};
use ccdma_tests::*;

const THREADS: usize = 8;
const POOL: u64 = 16 * MIB;

/// The area (of the default 4) each thread's 4 KiB mapping landed in; `hint(k)` is thread k's CPU.
fn areas(hint: fn(usize) -> Option<usize>) -> Vec<u64> {
    let hv = model(HvConfig::pseries(6 * GIB));
    let mut layer: Layer = DmaLayer::new(hv);
    add_pool(&mut layer, HIGH_POOL, POOL, PoolConfig::default()).unwrap();
    let areas = PoolConfig::default().areas as u64;
    let dev = layer.attach(DeviceConfig::new(1, DmaMask::BITS_64)).unwrap();
    let base = layer.pool(0).unwrap().1 .0;
    let bufs: Vec<u64> = (0..THREADS).map(|_| hv.alloc(4096, Region::High)).collect();
    let (turn, all_mapped) = (Mutex::new(()), Barrier::new(THREADS));
    let buses: Vec<u64> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..THREADS)
            .map(|k| {
                let (layer, dev, turn, all_mapped, buf) = (&layer, &dev, &turn, &all_mapped, bufs[k]);
                s.spawn(move || {
                    Hypervisor::set_cpu_hint(hint(k));
                    let bus = {
                        let _one_at_a_time = turn.lock().unwrap();
                        // SAFETY: the thread's own buffer, left alone until unmapped below.
                        unsafe {
                            layer.map_phys(dev, PhysAddr(buf), 4096, DmaDirection::ToDevice, DmaAttrs::NONE)
                        }
                        .unwrap()
                    };
                    all_mapped.wait();
                    bus.0
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for &bus in &buses {
        // SAFETY: each mapping made above, unmapped once.
        unsafe { layer.unmap(&dev, ccdma::BusAddr(bus), 4096, DmaDirection::ToDevice, DmaAttrs::NONE) }
            .unwrap();
    }
    assert_eq!(layer.stats().slots_in_use, 0);
    assert_no_faults(hv);
    buses.iter().map(|b| (b - base) / (POOL / areas)).collect()
}

#[test]
fn threads_without_a_cpu_hint_start_in_different_areas() {
    let got = areas(|_| None);
    let mut distinct = got.clone();
    distinct.sort();
    distinct.dedup();
    // A hash of eight stacks into four areas: all in one with probability 4^-7.
    assert!(distinct.len() >= 2, "every thread mapped in area {:?}: one lock for all", distinct);
}

#[test]
fn with_a_cpu_hint_each_thread_starts_in_its_cpus_area() {
    let got = areas(Some);
    assert_eq!(got, (0..THREADS as u64).map(|k| k % 4).collect::<Vec<_>>());
}
