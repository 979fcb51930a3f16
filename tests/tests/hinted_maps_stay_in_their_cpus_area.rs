//! Issue 21, two threads with a CPU hint: a map starts in its CPU's area and stays there while that
//! area can serve it. Before, an allocation took an exact-size run from the front (recently freed
//! runs) of whichever area listed one before it looked at its own area's tree: a CPU whose own front
//! was empty took the run another CPU had just freed, freed it back there, and from then on shared
//! that area's lock and lines with the other CPU for good. `cargo bench -p ccdma-tests --bench
//! threads` showed it: two hinted threads mapped at 0.6x one thread's throughput (perf: the time in
//! the area's lock `cmpxchg` and its summary load), in the runs where the threads met this way.

use ccdma::{DeviceConfig, DmaAttrs, DmaDirection, DmaLayer, DmaMask, PhysAddr, PoolConfig};
use ccdma_hv_model::{HvConfig, Hypervisor, Region};
use ccdma_tests::*;

const POOL: u64 = 16 * MIB;

#[test]
fn a_map_takes_its_own_areas_tree_before_another_cpus_freed_run() {
    let hv = model(HvConfig::pseries(6 * GIB));
    let mut layer: Layer = DmaLayer::new(hv);
    add_pool(&mut layer, HIGH_POOL, POOL, PoolConfig::default()).unwrap();
    let dev = layer.attach(DeviceConfig::new(1, DmaMask::BITS_64)).unwrap();
    let base = layer.pool(0).unwrap().1 .0;
    let area = |bus: u64| (bus - base) / (POOL / PoolConfig::default().areas as u64);
    let buf = hv.alloc(4096, Region::High);
    let (dir, attrs) = (DmaDirection::ToDevice, DmaAttrs::NONE);
    let mut got = Vec::new();
    // CPU 0 maps and unmaps (its area's front now lists the run), then CPU 1, then each again.
    for cpu in [0, 1, 0, 1, 2, 1] {
        Hypervisor::set_cpu_hint(Some(cpu));
        // SAFETY: the test's own buffer, left alone until unmapped.
        let bus = unsafe { layer.map_phys(&dev, PhysAddr(buf), 4096, dir, attrs) }.unwrap();
        got.push(area(bus.0));
        // SAFETY: the mapping just made, unmapped once.
        unsafe { layer.unmap(&dev, bus, 4096, dir, attrs) }.unwrap();
    }
    Hypervisor::set_cpu_hint(None);
    assert_eq!(got, [0, 1, 0, 1, 2, 1], "each map in its CPU's area");
    assert_eq!(layer.stats().slots_in_use, 0);
    assert_no_faults(hv);
}
