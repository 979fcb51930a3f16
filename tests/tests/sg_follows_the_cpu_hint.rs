//! Issue 21: a scatter-gather list's bounce run starts in the area of the caller's CPU, as a single
//! map does (`Platform::cpu_hint`; without one, the area picked from the caller's stack). Before,
//! every list started where the last allocation found room: area 0 for all of them, whatever the
//! CPU, so CPUs mapping lists at once took one lock.
//!
//! The area a list's run landed in is read from the bus address of its first entry.

use std::sync::{Barrier, Mutex};

use ccdma::sg::SgEntry;
use ccdma::{BusAddr, DeviceConfig, DmaAttrs, DmaDirection, DmaLayer, DmaMask, PhysAddr, PoolConfig};
use ccdma_hv_model::{HvConfig, Hypervisor, Region};
use ccdma_tests::*;

const POOL: u64 = 16 * MIB;
const THREADS: usize = 8;

fn setup() -> (&'static Hypervisor, Layer) {
    let hv = model(HvConfig::pseries(6 * GIB));
    hv.add_device(1, 64);
    let mut layer: Layer = DmaLayer::new(hv);
    add_pool(&mut layer, HIGH_POOL, POOL, PoolConfig::default()).unwrap();
    (hv, layer)
}

/// A list of two 3000-byte buffers (packed into one run); returns the list, mapped.
fn map_list(hv: &Hypervisor, layer: &Layer, dev: &ccdma::Device) -> Vec<SgEntry<'static>> {
    let (a, b) = (hv.alloc(4096, Region::High), hv.alloc(4096, Region::High));
    hv.memory().write(a, &pattern(3000, a));
    hv.memory().write(b, &pattern(3000, b));
    // SAFETY: the test's own buffers, left alone until the list is unmapped.
    let mut list = unsafe { vec![SgEntry::phys(PhysAddr(a), 3000), SgEntry::phys(PhysAddr(b), 3000)] };
    layer.map_sg(dev, &mut list, DmaDirection::ToDevice, DmaAttrs::NONE).unwrap();
    assert!(list[0].is_bounced());
    let bus = list[0].mapped_at().unwrap().0;
    assert_eq!(hv.device(1).read(bus, 3000).unwrap(), pattern(3000, a));
    list
}

fn area(layer: &Layer, list: &[SgEntry<'_>]) -> u64 {
    let base = layer.pool(0).unwrap().1 .0;
    let areas = PoolConfig::default().areas as u64;
    (list[0].mapped_at().unwrap().0 - base) / (POOL / areas)
}

fn unmap_all(hv: &Hypervisor, layer: &Layer, dev: &ccdma::Device, lists: &mut [Vec<SgEntry<'static>>]) {
    for l in lists {
        layer.unmap_sg(dev, l, DmaDirection::ToDevice, DmaAttrs::NONE).unwrap();
    }
    assert_eq!(layer.stats().slots_in_use, 0);
    assert_no_faults(hv);
}

#[test]
fn lists_mapped_with_different_cpu_hints_land_in_their_cpus_areas() {
    let (hv, layer) = setup();
    let dev = layer.attach(DeviceConfig::new(1, DmaMask::BITS_64)).unwrap();
    let mut lists = Vec::new();
    for cpu in [2, 0, 3, 1, 6] {
        Hypervisor::set_cpu_hint(Some(cpu));
        lists.push(map_list(hv, &layer, &dev));
    }
    Hypervisor::set_cpu_hint(None);
    let got: Vec<u64> = lists.iter().map(|l| area(&layer, l)).collect();
    assert_eq!(got, [2, 0, 3, 1, 2], "each list in its CPU's area (CPU 6: area 6 % 4)");
    // A single map and a list of the same CPU start in the same area.
    Hypervisor::set_cpu_hint(Some(3));
    let buf = hv.alloc(4096, Region::High);
    // SAFETY: the test's own buffer, left alone until unmapped.
    let bus =
        unsafe { layer.map_phys(&dev, PhysAddr(buf), 3000, DmaDirection::ToDevice, DmaAttrs::NONE) }.unwrap();
    Hypervisor::set_cpu_hint(None);
    let base = layer.pool(0).unwrap().1 .0;
    assert_eq!((bus.0 - base) / (POOL / 4), 3);
    // SAFETY: the mapping made above, unmapped once.
    unsafe { layer.unmap(&dev, BusAddr(bus.0), 3000, DmaDirection::ToDevice, DmaAttrs::NONE) }.unwrap();
    unmap_all(hv, &layer, &dev, &mut lists);
}

#[test]
fn threads_without_a_cpu_hint_map_lists_in_different_areas() {
    let (hv, layer) = setup();
    let dev = layer.attach(DeviceConfig::new(1, DmaMask::BITS_64)).unwrap();
    let (turn, all_mapped) = (Mutex::new(()), Barrier::new(THREADS));
    let mut lists: Vec<Vec<SgEntry<'static>>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..THREADS)
            .map(|_| {
                let (layer, dev, turn, all_mapped) = (&layer, &dev, &turn, &all_mapped);
                s.spawn(move || {
                    Hypervisor::set_cpu_hint(None);
                    let list = {
                        let _one_at_a_time = turn.lock().unwrap();
                        map_list(hv, layer, dev)
                    };
                    all_mapped.wait();
                    list
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut distinct: Vec<u64> = lists.iter().map(|l| area(&layer, l)).collect();
    distinct.sort();
    distinct.dedup();
    // Eight stacks hashed into four areas: all in one with probability 4^-7.
    assert!(distinct.len() >= 2, "every list mapped in area {distinct:?}: one lock for all");
    unmap_all(hv, &layer, &dev, &mut lists);
}
