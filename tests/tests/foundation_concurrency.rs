//! One layer instance serves every CPU: threads map, drive the device and unmap at once, with the model
//! checking every byte, and the counters return to baseline.

use std::sync::Arc;
use std::thread;

use ccdma::{DeviceConfig, DmaAttrs, DmaDirection, DmaLayer, DmaMask, PhysAddr, PoolConfig};
use ccdma_hv_model::{HvConfig, Region};
use ccdma_tests::*;

fn assert_send_sync<T: Send + Sync>() {}

#[test]
fn layer_is_send_and_sync() {
    assert_send_sync::<Layer>();
    assert_send_sync::<ccdma::Device>();
}

#[test]
fn many_threads_map_and_unmap_with_every_byte_checked() {
    const THREADS: usize = 8;
    const ROUNDS: usize = 300;
    let hv = model(HvConfig::pseries(6 * GIB));
    let mut layer = DmaLayer::new(hv);
    // A pool small enough that threads contend for it (and sometimes exhaust it).
    add_pool(&mut layer, MID_POOL, 512 * 1024, PoolConfig { areas: 4, ..PoolConfig::default() }).unwrap();
    let layer: &'static Layer = Box::leak(Box::new(layer));
    let base = Baseline::take(hv, layer);
    let dev = Arc::new(layer.attach(DeviceConfig::new(1, DmaMask::BITS_32)).unwrap());
    hv.add_device(1, 32);
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let dev = dev.clone();
            thread::spawn(move || {
                let d = hv.device(1);
                let buf = hv.alloc(64 * 1024, Region::Low);
                let mut exhausted = 0;
                for r in 0..ROUNDS {
                    let len = 1 + (t * 7919 + r * 104_729) % (48 * 1024);
                    let dir = [DmaDirection::ToDevice, DmaDirection::FromDevice, DmaDirection::Bidirectional]
                        [r % 3];
                    let seed = (t * ROUNDS + r) as u64;
                    let orig = pattern(len, seed);
                    hv.memory().write(buf, &orig);
                    // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
                    let bus =
                        match unsafe { layer.map_phys(&dev, PhysAddr(buf), len, dir, DmaAttrs::NO_WARN) } {
                            Ok(b) => b,
                            Err(ccdma::DmaError::PoolExhausted { .. }) => {
                                exhausted += 1;
                                continue;
                            }
                            Err(e) => panic!("{e}"),
                        };
                    let seen = d.read(bus.0, len).unwrap();
                    if dir.device_reads() {
                        assert_eq!(seen, orig, "thread {t} round {r}: device saw other data");
                    } else {
                        assert!(seen.iter().all(|&b| b == 0), "thread {t} round {r}: stale slot");
                    }
                    let reply = pattern(len, seed ^ 0xFFFF);
                    if dir.device_writes() {
                        d.write(bus.0, &reply).unwrap();
                    }
                    thread::yield_now();
                    // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
                    unsafe { layer.unmap(&dev, bus, len, dir, DmaAttrs::NONE) }.unwrap();
                    let now = hv.memory().read(buf, len);
                    assert_eq!(now, if dir.device_writes() { reply } else { orig }, "thread {t} round {r}");
                }
                exhausted
            })
        })
        .collect();
    let exhausted: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
    let s = layer.stats();
    assert_eq!(s.maps, s.unmaps);
    assert_eq!(s.maps as usize + exhausted, THREADS * ROUNDS);
    assert!(s.slots_high_water > 0);
    assert_no_faults(hv);
    base.assert_same(hv, layer);
}
