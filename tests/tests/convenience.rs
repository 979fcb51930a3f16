//! The short forms (`layer.on(&dev)`, ccdma::DeviceDma) do exactly what the full calls with
//! `DmaAttrs::NONE` do: the same workload through each, on twin guests, leaves the same bus
//! addresses, the same bytes at the device and in the buffers, the same TCE hypercalls and entries,
//! the same counters, and no fault in the model.

mod iommu_support;

use ccdma::sg::{dma_segments, SgEntry};
use ccdma::{DmaAttrs, DmaDirection, IommuPolicy, PhysAddr, StatsSnapshot};
use ccdma_hv_model::{CallKind, Region};
use iommu_support::{iommu_guest, IommuGuest, Opts};

/// What one run of the workload left behind.
#[derive(Debug, PartialEq)]
struct Outcome {
    buses: Vec<u64>,
    device_saw: Vec<Vec<u8>>,
    buffers: Vec<Vec<u8>>,
    stats: StatsSnapshot,
    tce_calls: Vec<u64>,
    live_tces: u64,
}

/// Streaming both ways (safe face), a raw mapping with a sync, a list, a coherent buffer: through the
/// short forms (`short`) or the full calls.
fn workload(g: &IommuGuest, short: bool) -> Outcome {
    let dev = g.device(1, 32);
    let model = g.hv.device(1);
    let l = &g.layer;
    let dma = l.on(&dev);
    let mut buses = Vec::new();
    let mut device_saw = Vec::new();

    let packet: Vec<u8> = (0..1500u32).map(|i| (i * 7) as u8).collect();
    let tx = if short { dma.map_to_device(&packet) } else { l.map_to_device(&dev, &packet, DmaAttrs::NONE) }
        .unwrap();
    buses.push(tx.bus_addr().0);
    device_saw.push(model.read(tx.bus_addr().0, packet.len()).unwrap());
    tx.unmap().unwrap();

    let mut block = vec![0u8; 4096];
    let rx = if short {
        dma.map(&mut block, DmaDirection::FromDevice)
    } else {
        l.map(&dev, &mut block, DmaDirection::FromDevice, DmaAttrs::NONE)
    }
    .unwrap();
    buses.push(rx.bus_addr().0);
    model.write(rx.bus_addr().0, &[0x5A; 4096]).unwrap();
    rx.unmap().unwrap();

    let raw = g.hv.alloc(8192, Region::Low);
    let dir = DmaDirection::Bidirectional;
    // SAFETY: the test's own allocation, untouched while mapped but between the syncs.
    let bus = unsafe {
        if short {
            dma.map_phys(PhysAddr(raw), 8192, dir)
        } else {
            l.map_phys(&dev, PhysAddr(raw), 8192, dir, DmaAttrs::NONE)
        }
    }
    .unwrap();
    buses.push(bus.0);
    model.write(bus.0 + 100, b"from the device").unwrap();
    // SAFETY: this test's raw mapping, synced and unmapped once.
    unsafe {
        if short {
            dma.sync_for_cpu(bus, 100, 15, dir).unwrap();
            dma.sync_for_device(bus, 0, 8192, dir).unwrap();
            dma.unmap(bus, 8192, dir).unwrap();
        } else {
            l.sync_for_cpu(&dev, bus, 100, 15, dir).unwrap();
            l.sync_for_device(&dev, bus, 0, 8192, dir).unwrap();
            l.unmap(&dev, bus, 8192, dir, DmaAttrs::NONE).unwrap();
        }
    }

    let (mut a, mut b) = (vec![1u8; 300], vec![2u8; 5000]);
    let mut list = [SgEntry::new(&mut a), SgEntry::new(&mut b)];
    let dir = DmaDirection::FromDevice;
    let n = if short { dma.map_sg(&mut list, dir) } else { l.map_sg(&dev, &mut list, dir, DmaAttrs::NONE) }
        .unwrap();
    for seg in dma_segments(&list[..n]) {
        buses.push(seg.addr.0);
        model.write(seg.addr.0, &vec![0xC3; seg.len]).unwrap();
    }
    if short {
        dma.sync_sg_for_cpu(&mut list, dir).unwrap();
        dma.unmap_sg(&mut list, dir).unwrap();
    } else {
        l.sync_sg_for_cpu(&dev, &mut list, dir).unwrap();
        l.unmap_sg(&dev, &mut list, dir, DmaAttrs::NONE).unwrap();
    }

    let page = g.hv.alloc(4096, Region::Low);
    // SAFETY: a fresh page handed over until the free.
    let ring = unsafe {
        if short {
            dma.alloc_coherent(PhysAddr(page), 1)
        } else {
            l.alloc_coherent(&dev, PhysAddr(page), 1)
        }
    }
    .unwrap();
    buses.push(ring.bus_addr().0);
    if short { dma.free_coherent(ring) } else { l.free_coherent(&dev, ring) }.unwrap();

    assert_eq!(dev.live(), 0);
    l.detach(dev).unwrap();
    assert!(g.hv.faults().is_empty(), "the model logged faults: {:?}", g.hv.faults());
    let raw_bytes = g.hv.memory().read(raw, 8192);
    let kinds = [CallKind::PutTce, CallKind::PutTceIndirect, CallKind::StuffTce, CallKind::GetTce];
    Outcome {
        buses,
        device_saw,
        buffers: vec![block, a, b, raw_bytes],
        stats: l.stats(),
        tce_calls: kinds.iter().map(|&k| g.hv.calls().count(k)).collect(),
        live_tces: g.hv.tce_counters().live_entries,
    }
}

fn twins(policy: IommuPolicy) {
    let full = workload(&iommu_guest(Opts::new(policy)), false);
    let short = workload(&iommu_guest(Opts::new(policy)), true);
    assert_eq!(short, full);
    // The workload did reach the device: its bytes and the device's came through.
    assert!(full.device_saw[0].iter().enumerate().all(|(i, &b)| b == (i as u32 * 7) as u8));
    assert!(full.buffers[0].iter().all(|&b| b == 0x5A));
    assert!(full.buffers[1].iter().chain(&full.buffers[2]).all(|&b| b == 0xC3));
    assert_eq!(&full.buffers[3][100..115], b"from the device");
    assert_eq!(full.live_tces, short.live_tces);
}

#[test]
fn short_forms_equal_the_full_calls_under_a_strict_iommu() {
    twins(IommuPolicy::Strict);
}

#[test]
fn short_forms_equal_the_full_calls_premapped() {
    twins(IommuPolicy::Premapped);
}

/// The short forms pass the caller's location through (`#[track_caller]`): the misuse tracker names
/// the driver's line, not ccdma's.
#[cfg(feature = "tracker")]
#[test]
fn short_forms_report_the_callers_site() {
    let g = iommu_guest(Opts::new(IommuPolicy::Strict));
    let dev = g.device(1, 32);
    let raw = g.hv.alloc(4096, Region::Low);
    // SAFETY: the test's own allocation, deliberately left mapped (a leak the tracker reports).
    let bus = unsafe { g.layer.on(&dev).map_phys(PhysAddr(raw), 4096, DmaDirection::ToDevice) }.unwrap();
    let line = line!() - 1;
    let mut sites = Vec::new();
    g.layer
        .tracker()
        .for_each_live(Some(dev.serial()), |e| sites.push((e.bus.0, e.site.file(), e.site.line())));
    assert_eq!(sites, [(bus.0, file!(), line)]);
}
