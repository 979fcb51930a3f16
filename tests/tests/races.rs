//! Issue 8: attach, detach, map, unmap, scatter-gather and coherent buffers racing on one layer from
//! several threads, on shared and per-thread devices, with every byte checked by the model.
//!
//! Why this cannot race: a `Device` is move-only and `detach` consumes it, so a device that threads
//! share (by `&Device`) cannot be detached while any of them maps; the IOMMU domain slot it names is
//! republished only after its one owner gave it up. What the test exercises is the rest: domain
//! slots claimed and freed by attaches and detaches on other CPUs while the shared device maps, and
//! the pools' and bus spaces' locks under contention.

mod iommu_support;

use std::thread;

use ccdma::sg::SgEntry;
use ccdma::{DeviceConfig, DmaAttrs, DmaDirection, DmaMask, IommuPolicy, PhysAddr};
use ccdma_hv_model::Region;
use ccdma_tests::*;
use iommu_support::*;

const THREADS: u32 = 4;
const ROUNDS: usize = 60;

fn race(policy: IommuPolicy, per_cpu_pages: usize) {
    let g = iommu_guest(Opts { per_cpu_pages, ..Opts::new(policy) });
    let (hv, layer) = (g.hv, &g.layer);
    let shared = g.device(100, 32);
    for t in 0..THREADS {
        hv.add_iommu_device(t + 1, if t % 2 == 0 { 64 } else { 32 });
    }
    let live_tces = layer.iommu_stats().live_tces;
    let slots = layer.stats().slots_in_use;
    thread::scope(|s| {
        for t in 0..THREADS {
            let shared = &shared;
            s.spawn(move || {
                // Four threads on CPUs 0..4: with two per-CPU list pages, two threads per page.
                ccdma_hv_model::Hypervisor::set_cpu_hint(Some(t as usize));
                let src = hv.alloc(64 * 1024, Region::High);
                let dst = hv.alloc(64 * 1024, Region::High);
                let coh = hv.alloc(4096, Region::Low);
                for r in 0..ROUNDS {
                    let seed = u64::from(t) * 10_000 + r as u64;
                    let len = 1 + (seed as usize * 7919) % (40 * 1024);
                    // Every round: a fresh attach of this thread's own device (claiming a domain slot
                    // that another thread's detach may just have freed), used, then detached.
                    let cfg =
                        DeviceConfig::new(t + 1, DmaMask::new(if t % 2 == 0 { 64 } else { 32 }).unwrap())
                            .with_deferred_attach(r % 2 == 0);
                    let own = layer.attach(cfg).unwrap();
                    for dev in [&own, shared] {
                        let model = hv.device(if std::ptr::eq(dev, shared) { 100 } else { t + 1 });
                        // To the device through the safe face.
                        let data = pattern(len, seed);
                        hv.memory().write(src, &data);
                        // SAFETY: the thread's own allocation, borrowed only by this mapping.
                        let buf = unsafe { hv.slice_mut(src, len) };
                        let m = layer.map_to_device(dev, buf, DmaAttrs::NONE).unwrap();
                        assert_eq!(model.read(m.bus_addr().0, len).unwrap(), data, "t{t} r{r} to-device");
                        m.unmap().unwrap();
                        // From the device.
                        // SAFETY: as above.
                        let buf = unsafe { hv.slice_mut(dst, len) };
                        let m = layer.map(dev, buf, DmaDirection::FromDevice, DmaAttrs::NONE).unwrap();
                        let back = pattern(len, seed + 1);
                        model.write(m.bus_addr().0, &back).unwrap();
                        m.unmap().unwrap();
                        assert_eq!(hv.memory().read(dst, len), back, "t{t} r{r} from-device");
                    }
                    // A two-entry list on the thread's own device.
                    let half = len.div_ceil(2);
                    // SAFETY: the thread's own allocation; the two slices do not overlap.
                    let (a, b) = unsafe { (hv.slice_mut(src, half), hv.slice_mut(src + 32 * 1024, half)) };
                    let mut list = [SgEntry::new(a), SgEntry::new(b)];
                    let n =
                        layer.map_sg(&own, &mut list, DmaDirection::Bidirectional, DmaAttrs::NONE).unwrap();
                    assert!(n >= 1);
                    layer.unmap_sg(&own, &mut list, DmaDirection::Bidirectional, DmaAttrs::NONE).unwrap();
                    // A coherent page.
                    // SAFETY: the thread's own page, handed to the layer until freed.
                    let c = unsafe { layer.alloc_coherent(&own, PhysAddr(coh), 1) }.unwrap();
                    hv.device(t + 1).write(c.bus_addr().0, &[t as u8; 64]).unwrap();
                    assert_eq!(hv.memory().read(coh, 64), vec![t as u8; 64]);
                    layer.free_coherent(&own, c).unwrap();
                    assert_eq!(own.live(), 0);
                    layer.detach(own).unwrap();
                    assert!(hv.reachable(t + 1).is_empty(), "t{t} r{r}: a detached device reaches memory");
                }
            });
        }
    });
    assert_eq!(shared.live(), 0);
    assert_eq!(layer.stats().slots_in_use, slots);
    assert_eq!(layer.iommu_stats().live_tces, live_tces);
    assert_eq!(hv.tces_to_private(), 0);
    assert_eq!(hv.tce_counters().listed_private_entries, 0);
    if per_cpu_pages > 0 {
        assert_eq!(layer.iommu_stats().list_page_waits, 0, "per-CPU pages never wait");
    }
    assert_no_faults(hv);
    layer.detach(shared).unwrap();
}

#[test]
fn attach_detach_and_maps_race_on_premapped_windows() {
    race(IommuPolicy::Premapped, 0);
}

#[test]
fn attach_detach_and_maps_race_on_strict_windows() {
    race(IommuPolicy::Strict, 0);
}

#[test]
fn attach_detach_and_maps_race_on_strict_windows_with_per_cpu_list_pages() {
    race(IommuPolicy::Strict, 2);
}
