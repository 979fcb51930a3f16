//! A device's live mappings (`Device::live`, `live_counts`), its high-water mark and detach's
//! `Busy { live }` refusal stay exact whichever way a mapping is made and ended: safe and raw face,
//! to and from the device (the unmap that copies back), `SKIP_CPU_SYNC`, runs in the device's
//! first pool and in another, a `Mapping` forgotten; and with four threads mapping for one device
//! at once, each on its own CPU (so on different areas of the pools), checked at barriers while
//! every thread holds a known number of mappings.

use std::sync::Barrier;
use std::thread;

use ccdma::{DeviceConfig, DmaAttrs, DmaDirection, DmaError, DmaMask, PhysAddr};
use ccdma_hv_model::{HvConfig, Hypervisor, Region};
use ccdma_tests::*;

const THREADS: usize = 4;

/// Two pools, 512 KiB (256 slots of 2 KiB, two areas) above 1 MiB (four areas): maps try the
/// higher pool first, so with a hundred or so mappings live both pools hold some.
fn two_pool_guest() -> (&'static Hypervisor, Layer) {
    guest(HvConfig::pseries(6 * GIB), &[(HIGH_POOL, MIB / 2), (MID_POOL, MIB)])
}

/// One mapping held by a test: safe-face mappings are kept as values, raw ones by bus address.
enum Held<'a> {
    Safe(ccdma::Mapping<'a, 'static, &'static Hypervisor>),
    Raw { bus: ccdma::BusAddr, len: usize, dir: DmaDirection },
}

/// Map the `k`-th mapping of a mix: every face, direction and size class in turn.
fn map_one<'a>(
    hv: &'static Hypervisor,
    layer: &'a Layer,
    dev: &'a ccdma::Device,
    base: u64,
    k: usize,
) -> Held<'a> {
    let len = [512, 4096, 3000, 16 * 1024, 100, 8192][k % 6];
    let buf = base + (k as u64) * 16 * 1024;
    match k % 4 {
        0 | 1 => {
            let dir = if k % 4 == 0 { DmaDirection::ToDevice } else { DmaDirection::FromDevice };
            let attrs = if k % 8 == 0 { DmaAttrs::SKIP_CPU_SYNC } else { DmaAttrs::NONE };
            // SAFETY: each `k` has its own 16 KiB of the caller's allocation, borrowed only here.
            let b = unsafe { hv.slice_mut(buf, len) };
            Held::Safe(layer.map(dev, b, dir, attrs).expect("map"))
        }
        _ => {
            let dir = if k % 4 == 2 { DmaDirection::Bidirectional } else { DmaDirection::ToDevice };
            // SAFETY: as above; unmapped once by `unmap_one`.
            let bus =
                unsafe { layer.map_phys(dev, PhysAddr(buf), len, dir, DmaAttrs::NONE) }.expect("raw map");
            Held::Raw { bus, len, dir }
        }
    }
}

fn unmap_one(layer: &Layer, dev: &ccdma::Device, h: Held<'_>) {
    match h {
        Held::Safe(m) => m.unmap().map_err(|r| r.error).expect("unmap"),
        Held::Raw { bus, len, dir } => {
            // SAFETY: a raw mapping made by `map_one` on `dev`, unmapped once.
            unsafe { layer.unmap(dev, bus, len, dir, DmaAttrs::NONE) }.expect("raw unmap")
        }
    }
}

#[test]
fn live_count_and_detach_refusal_exact_on_every_kind_of_mapping() {
    let (hv, layer) = two_pool_guest();
    let base = Baseline::take(hv, &layer);
    let dev = layer.attach(DeviceConfig::new(1, DmaMask::BITS_64)).unwrap();
    hv.add_device(1, 64);
    let bufs = hv.alloc(100 * 16 * 1024, Region::High);
    // 100 mappings of up to 16 KiB: more than the first pool's 512 slots hold.
    let held: Vec<Held<'_>> = (0..100).map(|k| map_one(hv, &layer, &dev, bufs, k)).collect();
    let in_pool = |i: usize| layer.pool(i).map_or(0, |(p, _)| p.slots_in_use());
    assert!(in_pool(0) > 0 && in_pool(1) > 0, "both pools hold mappings: {} / {}", in_pool(0), in_pool(1));
    assert_eq!(dev.live(), 100);
    assert_eq!(dev.live_counts().mappings, 100);
    assert_eq!(dev.peaks().mappings_high_water, 100);
    // End every third one and ten more.
    let (mut kept, mut ended) = (Vec::new(), Vec::new());
    for (k, h) in held.into_iter().enumerate() {
        if k % 3 == 2 || k < 10 {
            ended.push(h);
        } else {
            kept.push(h);
        }
    }
    for h in ended {
        unmap_one(&layer, &dev, h);
    }
    let mut held = kept;
    assert_eq!(dev.live(), held.len() as u64);
    // Dropping a `Mapping` unmaps it.
    let safe = held.iter().position(|h| matches!(h, Held::Safe(_))).unwrap();
    drop(held.remove(safe));
    assert_eq!(dev.live(), held.len() as u64);
    // The safe-face ones end (a detach cannot compile while they borrow the device); the raw ones
    // stay, and a forgotten `Mapping` keeps its device busy, counted once.
    let mut raw = Vec::new();
    for h in held {
        match h {
            Held::Raw { bus, len, dir } => raw.push((bus, len, dir)),
            safe => unmap_one(&layer, &dev, safe),
        }
    }
    assert_eq!(dev.live(), raw.len() as u64);
    // SAFETY: 16 KiB of the buffer no mapping uses, never touched again.
    let b = unsafe { hv.slice_mut(bufs + 99 * 16 * 1024, 4096) };
    core::mem::forget(layer.map(&dev, b, DmaDirection::ToDevice, DmaAttrs::NONE).unwrap());
    let live = raw.len() as u64 + 1;
    assert_eq!(dev.live(), live);
    let r = layer.detach(dev).unwrap_err();
    assert_eq!(r.error, DmaError::Busy { live });
    let dev = r.value;
    assert_eq!(dev.peaks().mappings_high_water, 100);
    for (bus, len, dir) in raw {
        // SAFETY: a raw mapping made by `map_one` on `dev`, unmapped once.
        unsafe { layer.unmap(&dev, bus, len, dir, DmaAttrs::NONE) }.unwrap();
    }
    assert_eq!(dev.live_counts(), ccdma::LiveCounts { mappings: 1, lists: 0, coherent: 0 });
    let r = layer.detach(dev).unwrap_err();
    assert_eq!(r.error, DmaError::Busy { live: 1 });
    assert_eq!(layer.stats().slots_in_use, base.slots_in_use + 2);
    assert_no_faults(hv);
}

#[test]
fn high_water_is_the_most_live_at_once_in_one_thread() {
    let (hv, layer) = two_pool_guest();
    let dev = layer.attach(DeviceConfig::new(1, DmaMask::BITS_64)).unwrap();
    let bufs = hv.alloc(100 * 16 * 1024, Region::High);
    // Waves of 10, 40, 5, 90 and 20 live at once, in both pools: the mark is the largest wave.
    for wave in [10, 40, 5, 90, 20] {
        let held: Vec<Held<'_>> = (0..wave).map(|k| map_one(hv, &layer, &dev, bufs, k)).collect();
        assert_eq!(dev.live(), wave as u64);
        for h in held {
            unmap_one(&layer, &dev, h);
        }
        assert_eq!(dev.live(), 0);
    }
    assert_eq!(dev.peaks().mappings_high_water, 90);
    assert_eq!(dev.peaks().map_failures, 0);
    layer.detach(dev).unwrap();
}

#[test]
fn four_threads_mapping_for_one_device_keep_its_count_exact() {
    let (hv, layer) = two_pool_guest();
    let base = Baseline::take(hv, &layer);
    let dev = layer.attach(DeviceConfig::new(1, DmaMask::BITS_64)).unwrap();
    hv.add_device(1, 64);
    let bufs: Vec<u64> = (0..THREADS).map(|_| hv.alloc(40 * 16 * 1024, Region::High)).collect();
    let barrier = Barrier::new(THREADS + 1);
    // Per round, thread t holds `held(t, r)` mappings at the barrier; between rounds it churns.
    let held = |t: usize, r: usize| (t * 7 + r * 5) % 23 + 1;
    const ROUNDS: usize = 12;
    let mut seen = Vec::new();
    let most = thread::scope(|s| {
        for (t, &buf) in bufs.iter().enumerate() {
            let (layer, dev, barrier) = (&layer, &dev, &barrier);
            s.spawn(move || {
                Hypervisor::set_cpu_hint(Some(t));
                for r in 0..ROUNDS {
                    // Churn: map and unmap many times, every face and direction.
                    for k in 0..200 {
                        let h = map_one(hv, layer, dev, buf, (k + t) % 40);
                        unmap_one(layer, dev, h);
                    }
                    let mine: Vec<Held<'_>> =
                        (0..held(t, r)).map(|k| map_one(hv, layer, dev, buf, k)).collect();
                    barrier.wait(); // everyone holds its mappings
                    barrier.wait(); // the main thread has counted
                    for h in mine {
                        unmap_one(layer, dev, h);
                    }
                    barrier.wait(); // everyone has unmapped
                    barrier.wait(); // counted again
                }
            });
        }
        // Checked after the scope: a panic here would leave the threads waiting at the barrier.
        let mut most = 0;
        for r in 0..ROUNDS {
            barrier.wait();
            let want: u64 = (0..THREADS).map(|t| held(t, r) as u64).sum();
            most = most.max(want);
            seen.push((r, want, dev.live(), dev.live_counts().mappings, dev.peaks().mappings_high_water));
            barrier.wait();
            barrier.wait();
            seen.push((r, 0, dev.live(), dev.live_counts().mappings, u32::MAX));
            barrier.wait();
        }
        most
    });
    for (r, want, live, mappings, high) in seen {
        assert_eq!((live, mappings), (want, want), "round {r}: live mappings");
        assert!(u64::from(high) >= want, "round {r}: high water {high} below {want}");
    }
    let high = u64::from(dev.peaks().mappings_high_water);
    assert!(high >= most, "high water {high}, held at most {most}");
    base.assert_same(hv, &layer);
    assert_no_faults(hv);
    layer.detach(dev).unwrap();
}
