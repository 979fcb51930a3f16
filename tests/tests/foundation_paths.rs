//! Path selection without IOMMU and exact round trips for every direction, on guests of 6 GiB and
//! 64 GiB, devices with masks 24..64 bits, pools low and high (DESIGN.md section 6, first three rows;
//! invariants 1, 4 and 5 checked throughout).

use ccdma::{BusAddr, DeviceConfig, DmaAttrs, DmaDirection, DmaMask, DmaPath, PhysAddr};
use ccdma_hv_model::{DeviceRef, HvConfig, Hypervisor, Region};
use ccdma_tests::*;

const MASKS: [u32; 6] = [24, 32, 36, 40, 48, 64];
const SIZES: [usize; 6] = [1, 100, 2048, 4096, 12_345, 65_536];

fn layout() -> Vec<(u64, u64)> {
    vec![(LOW_POOL, 4 * MIB), (MID_POOL, 8 * MIB), (HIGH_POOL, 8 * MIB)]
}

fn expected_path(confidential: bool, ram: u64, bits: u32) -> DmaPath {
    let mask = DmaMask::new(bits).unwrap();
    match (confidential, mask.covers(0, ram)) {
        (true, _) => DmaPath::BounceAlways,
        (false, true) => DmaPath::Direct,
        (false, false) => DmaPath::BounceAboveMask,
    }
}

/// Map `phys..+len` (guest RAM) in `dir`, drive the device honestly, unmap, and check every byte
/// each side saw. Returns the bus address used.
fn round_trip(
    hv: &Hypervisor,
    layer: &Layer,
    dev: &ccdma::Device,
    d: DeviceRef<'_>,
    phys: u64,
    len: usize,
    dir: DmaDirection,
) -> u64 {
    let seed = phys ^ len as u64 ^ dir as u64;
    let orig = pattern(len, seed);
    let from_dev = pattern(len, seed + 1);
    hv.memory().write(phys, &orig);
    // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
    let bus = unsafe { layer.map_phys(dev, PhysAddr(phys), len, dir, DmaAttrs::NONE) }.unwrap();
    let mask = dev.config().dma_mask;
    assert!(mask.covers(bus.0, len as u64), "bus {bus} + {len} beyond {mask}");
    let bounced = bus.0 != phys;
    if bounced {
        assert!(in_some_pool(layer, bus.0, len), "bounce address {bus} not in a pool");
    }
    let seen = d.read(bus.0, len).unwrap();
    match dir {
        // The device sees exactly the original.
        DmaDirection::ToDevice | DmaDirection::Bidirectional => assert_eq!(seen, orig),
        // Bounced from-device slots start zeroed: no stale pool data, no private bytes.
        DmaDirection::FromDevice if bounced => assert!(seen.iter().all(|&b| b == 0)),
        DmaDirection::FromDevice => {}
    }
    if dir.device_writes() {
        d.write(bus.0, &from_dev).unwrap();
    }
    // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
    unsafe { layer.unmap(dev, bus, len, dir, DmaAttrs::NONE) }.unwrap();
    let now = hv.memory().read(phys, len);
    if dir.device_writes() {
        assert_eq!(now, from_dev, "device data did not come back exactly");
    } else {
        assert_eq!(now, orig, "a to-device mapping changed the original");
    }
    bus.0
}

fn run_matrix(cfg: HvConfig) {
    let (hv, layer) = guest(cfg, &layout());
    let base = Baseline::take(hv, &layer);
    let low_buf = hv.alloc(128 * 1024, Region::Low);
    let high_buf = hv.alloc(128 * 1024, Region::High);
    for (k, bits) in MASKS.into_iter().enumerate() {
        let id = k as u32 + 1;
        let dev = layer.attach(DeviceConfig::new(id, DmaMask::new(bits).unwrap())).unwrap();
        assert_eq!(dev.path(), expected_path(cfg.confidential, cfg.ram, bits), "{bits}-bit device");
        let d = hv.add_device(id, bits);
        for buf in [low_buf, high_buf] {
            for len in SIZES {
                for dir in [DmaDirection::ToDevice, DmaDirection::FromDevice, DmaDirection::Bidirectional] {
                    let bus = round_trip(hv, &layer, &dev, d, buf + 3, len, dir);
                    let direct = !cfg.confidential && DmaMask::new(bits).unwrap().covers(buf + 3, len as u64);
                    assert_eq!(
                        bus == buf + 3,
                        direct,
                        "{bits}-bit, buffer {buf:#x}: direct iff reachable and not confidential"
                    );
                }
            }
        }
        // Wide devices use the highest pool they reach, leaving low pools to narrow ones.
        if dev.path() != DmaPath::Direct {
            let first = dev.pool_indices().next().unwrap();
            let (_, bus) = layer.pool(first).unwrap();
            let highest_reachable = (0..3)
                .filter_map(|i| layer.pool(i))
                .filter(|(p, b)| DmaMask::new(bits).unwrap().covers(b.0, p.len() as u64))
                .map(|(_, b)| b)
                .max()
                .unwrap();
            assert_eq!(bus, highest_reachable);
        }
    }
    assert_no_faults(hv);
    base.assert_same(hv, &layer);
    let s = layer.stats();
    assert_eq!(s.maps, s.unmaps);
    assert_eq!(s.total_failures(), 0);
}

#[test]
fn confidential_6g_pseries() {
    run_matrix(HvConfig::pseries(6 * GIB));
}

#[test]
fn confidential_64g_tdx() {
    run_matrix(HvConfig::tdx(64 * GIB));
}

#[test]
fn confidential_64g_snp() {
    run_matrix(HvConfig::snp(64 * GIB));
}

#[test]
fn plain_6g() {
    run_matrix(HvConfig::plain(6 * GIB));
}

#[test]
fn plain_64g() {
    run_matrix(HvConfig::plain(64 * GIB));
}

#[test]
fn sev_bus_encoding_clears_c_bit() {
    // SEV-style: bus addresses are physical addresses with the C-bit (here bit 47) cleared; the model's
    // devices decode them the same way.
    let cfg = HvConfig { bus_encoding: ccdma::BusEncoding::sev(47), ..HvConfig::pseries(6 * GIB) };
    let (hv, layer) = guest(cfg, &layout());
    let dev = layer.attach(DeviceConfig::new(1, DmaMask::BITS_64)).unwrap();
    let d = hv.add_device(1, 64);
    let buf = hv.alloc(8192, Region::High);
    for dir in [DmaDirection::ToDevice, DmaDirection::FromDevice, DmaDirection::Bidirectional] {
        round_trip(hv, &layer, &dev, d, buf, 8192, dir);
    }
    assert_no_faults(hv);
}

#[test]
fn narrow_device_without_reachable_pool_fails_to_attach() {
    // Only a high pool: a 32-bit device in a confidential guest has no path, and the error names the
    // mask and the pools.
    let (hv, layer) = guest(HvConfig::pseries(6 * GIB), &[(HIGH_POOL, 4 * MIB)]);
    let err = layer.attach(DeviceConfig::new(1, DmaMask::BITS_32)).unwrap_err();
    match err {
        ccdma::DmaError::NoPath { mask, pools, lowest_pool_bus_end } => {
            assert_eq!(mask, DmaMask::BITS_32);
            assert_eq!(pools, 1);
            assert_eq!(lowest_pool_bus_end, HIGH_POOL + 4 * MIB);
        }
        e => panic!("unexpected {e:?}"),
    }
    let msg = format!("{err}");
    assert!(msg.contains("32-bit") && msg.contains("1 pools"), "{msg}");
    // Same in a plain guest with 6 GiB RAM (the mask does not cover RAM, so it needs a pool).
    let (_, plain) = guest(HvConfig::plain(6 * GIB), &[(HIGH_POOL, 4 * MIB)]);
    assert!(matches!(
        plain.attach(DeviceConfig::new(1, DmaMask::BITS_32)),
        Err(ccdma::DmaError::NoPath { .. })
    ));
    assert_no_faults(hv);
}

#[test]
fn sub_range_syncs_follow_direction_rules() {
    let (hv, layer) = guest(HvConfig::pseries(6 * GIB), &layout());
    let dev = layer.attach(DeviceConfig::new(1, DmaMask::BITS_64)).unwrap();
    let d = hv.add_device(1, 64);
    let phys = hv.alloc(16384, Region::High);
    let len = 10_000;
    let base = Baseline::take(hv, &layer);

    // FROM_DEVICE: the device writes everything, the CPU pulls one window at a time.
    hv.memory().write(phys, &vec![0xEE; len]);
    // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
    let bus = unsafe { layer.map_phys(&dev, PhysAddr(phys), len, DmaDirection::FromDevice, DmaAttrs::NONE) }
        .unwrap();
    let dev_data = pattern(len, 7);
    d.write(bus.0, &dev_data).unwrap();
    // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
    unsafe { layer.sync_for_cpu(&dev, bus, 1000, 500, DmaDirection::FromDevice) }.unwrap();
    let now = hv.memory().read(phys, len);
    assert_eq!(&now[1000..1500], &dev_data[1000..1500]);
    assert!(now[..1000].iter().chain(&now[1500..]).all(|&b| b == 0xEE), "sync copied outside its range");
    // sync_for_device on FROM_DEVICE copies nothing to the device.
    hv.memory().write(phys, &[0x11; 64]);
    // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
    unsafe { layer.sync_for_device(&dev, bus, 0, 64, DmaDirection::FromDevice) }.unwrap();
    assert_eq!(d.read(bus.0, 64).unwrap(), dev_data[..64]);
    // The device rewrites part after the sync: unmap brings the latest device bytes back, all of them.
    d.write(bus.0 + 1200, &[0x5A; 100]).unwrap();
    // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
    unsafe { layer.unmap(&dev, bus, len, DmaDirection::FromDevice, DmaAttrs::NONE) }.unwrap();
    let mut expect = dev_data.clone();
    expect[1200..1300].fill(0x5A);
    assert_eq!(hv.memory().read(phys, len), expect);

    // TO_DEVICE: the CPU changes a window and pushes just that.
    let orig = pattern(len, 9);
    hv.memory().write(phys, &orig);
    // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
    let bus =
        unsafe { layer.map_phys(&dev, PhysAddr(phys), len, DmaDirection::ToDevice, DmaAttrs::NONE) }.unwrap();
    hv.memory().write(phys + 4000, &[0x77; 300]);
    // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
    unsafe { layer.sync_for_device(&dev, bus, 4100, 100, DmaDirection::ToDevice) }.unwrap();
    let seen = d.read(bus.0, len).unwrap();
    assert_eq!(&seen[..4100], &orig[..4100]);
    assert_eq!(&seen[4100..4200], &[0x77; 100]);
    assert_eq!(&seen[4200..], &orig[4200..]);
    // sync_for_cpu on TO_DEVICE brings nothing back even if the device scribbles.
    d.write(bus.0, &[0x99; 16]).unwrap();
    // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
    unsafe { layer.sync_for_cpu(&dev, bus, 0, 16, DmaDirection::ToDevice) }.unwrap();
    assert_eq!(hv.memory().read(phys, 16), orig[..16]);
    // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
    unsafe { layer.unmap(&dev, bus, len, DmaDirection::ToDevice, DmaAttrs::NONE) }.unwrap();
    assert_eq!(hv.memory().read(phys, 16), orig[..16]);

    // BIDIRECTIONAL both ways on sub-ranges.
    // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
    let bus =
        unsafe { layer.map_phys(&dev, PhysAddr(phys), len, DmaDirection::Bidirectional, DmaAttrs::NONE) }
            .unwrap();
    d.write(bus.0 + 10, &[1; 10]).unwrap();
    // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
    unsafe { layer.sync_for_cpu(&dev, bus, 10, 10, DmaDirection::Bidirectional) }.unwrap();
    assert_eq!(hv.memory().read(phys + 10, 10), vec![1; 10]);
    hv.memory().write(phys + 30, &[2; 10]);
    // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
    unsafe { layer.sync_for_device(&dev, bus, 30, 10, DmaDirection::Bidirectional) }.unwrap();
    assert_eq!(d.read(bus.0 + 30, 10).unwrap(), vec![2; 10]);
    // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
    unsafe { layer.unmap(&dev, bus, len, DmaDirection::Bidirectional, DmaAttrs::NONE) }.unwrap();

    // Out-of-range and wrong-direction syncs are errors that change nothing.
    // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
    let bus = unsafe { layer.map_phys(&dev, PhysAddr(phys), 100, DmaDirection::FromDevice, DmaAttrs::NONE) }
        .unwrap();
    // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
    assert!(matches!(
        // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
        unsafe { layer.sync_for_cpu(&dev, bus, 90, 11, DmaDirection::FromDevice) },
        Err(ccdma::DmaError::OutOfRange { offset: 90, mapped: 100 })
    ));
    // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
    assert!(matches!(
        // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
        unsafe { layer.sync_for_cpu(&dev, bus, usize::MAX, 2, DmaDirection::FromDevice) },
        Err(ccdma::DmaError::OutOfRange { .. })
    ));
    // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
    assert!(matches!(
        // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
        unsafe { layer.sync_for_cpu(&dev, bus, 0, 10, DmaDirection::ToDevice) },
        Err(ccdma::DmaError::DirectionMismatch { .. })
    ));
    // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
    assert!(matches!(
        // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
        unsafe { layer.sync_for_cpu(&dev, BusAddr(bus.0 + 1), 0, 10, DmaDirection::FromDevice) },
        Err(ccdma::DmaError::UnknownMapping(_))
    ));
    // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
    unsafe { layer.unmap(&dev, bus, 100, DmaDirection::FromDevice, DmaAttrs::NONE) }.unwrap();
    assert_no_faults(hv);
    base.assert_same(hv, &layer);
}

#[test]
fn safe_face_borrows_and_unmaps_on_drop() {
    let (hv, layer) = guest(HvConfig::tdx(6 * GIB), &layout());
    let dev = layer.attach(DeviceConfig::new(1, DmaMask::BITS_32)).unwrap();
    let d = hv.add_device(1, 32);
    let base = Baseline::take(hv, &layer);
    // Host (non-guest-RAM) buffers work on the bounce path: the layer never needs their address.
    let mut host = vec![0u8; 3000];
    {
        let m = layer.map(&dev, &mut host, DmaDirection::FromDevice, DmaAttrs::NONE).unwrap();
        d.write(m.bus_addr().0, &pattern(3000, 1)).unwrap();
        assert_eq!(layer.stats().slots_in_use, 2);
        // Dropped here: unmapped, data copied back.
    }
    assert_eq!(host, pattern(3000, 1));
    let m = layer.map_to_device(&dev, &host, DmaAttrs::NONE).unwrap();
    assert_eq!(d.read(m.bus_addr().0, 3000).unwrap(), pattern(3000, 1));
    assert_eq!(m.len(), 3000);
    drop(m);
    assert_no_faults(hv);
    base.assert_same(hv, &layer);
}

#[test]
fn min_align_mask_bits_are_preserved() {
    let (hv, layer) = guest(HvConfig::pseries(6 * GIB), &layout());
    let d = hv.add_device(1, 64);
    for mask in [0xfffu64, 0x7ff, 0x3, 0x1fff] {
        let dev = layer.attach(DeviceConfig::new(1, DmaMask::BITS_64).with_min_align_mask(mask)).unwrap();
        let phys = hv.alloc(64 * 1024, Region::High);
        for off in [0u64, 1, 0x7ff, 0x800, 0xabc, 0x1234] {
            for len in [16usize, 4096, 9000] {
                let orig = pattern(len, off);
                hv.memory().write(phys + off, &orig);
                // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
                let bus = unsafe {
                    layer.map_phys(&dev, PhysAddr(phys + off), len, DmaDirection::ToDevice, DmaAttrs::NONE)
                }
                .unwrap();
                assert_eq!(bus.0 & mask, (phys + off) & mask, "mask {mask:#x} off {off:#x} len {len}");
                assert_eq!(d.read(bus.0, len).unwrap(), orig);
                // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
                unsafe { layer.unmap(&dev, bus, len, DmaDirection::ToDevice, DmaAttrs::NONE) }.unwrap();
            }
        }
        layer.detach(dev).unwrap();
    }
    // A mask that is not 2^n - 1 is refused at attach.
    assert!(layer.attach(DeviceConfig::new(2, DmaMask::BITS_64).with_min_align_mask(0x5)).is_err());
    assert_no_faults(hv);
    assert_eq!(layer.stats().slots_in_use, 0);
}

#[test]
fn page_sized_mappings_are_page_aligned() {
    let (hv, layer) = guest(HvConfig::pseries(6 * GIB), &layout());
    let dev = layer.attach(DeviceConfig::new(1, DmaMask::BITS_64)).unwrap();
    let phys = hv.alloc(65536, Region::High);
    let mut live = Vec::new();
    // Interleave small (one-slot) and page-or-larger mappings so the allocator must skip slots.
    for i in 0..40 {
        let len = if i % 2 == 0 { 100 } else { 4096 + i * 10 };
        // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
        let bus =
            unsafe { layer.map_phys(&dev, PhysAddr(phys), len, DmaDirection::ToDevice, DmaAttrs::NONE) }
                .unwrap();
        if len >= 4096 {
            assert_eq!(bus.0 % 4096, 0, "mapping of {len} bytes at {bus}");
        }
        live.push((bus, len));
    }
    for (bus, len) in live {
        // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
        unsafe { layer.unmap(&dev, bus, len, DmaDirection::ToDevice, DmaAttrs::NONE) }.unwrap();
    }
    assert_eq!(layer.stats().slots_in_use, 0);
    assert_no_faults(hv);
}

#[test]
fn device_cannot_reach_private_memory() {
    let (hv, layer) = guest(HvConfig::pseries(6 * GIB), &layout());
    let dev = layer.attach(DeviceConfig::new(1, DmaMask::BITS_64)).unwrap();
    let d = hv.add_device(1, 64);
    let phys = hv.alloc(8192, Region::High);
    hv.memory().write(phys, &[0x42; 8192]);
    // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
    let bus =
        unsafe { layer.map_phys(&dev, PhysAddr(phys), 8192, DmaDirection::Bidirectional, DmaAttrs::NONE) }
            .unwrap();
    // The original is private: reads and writes there are refused and logged, nothing changes.
    assert!(d.read(phys, 8).is_err());
    assert!(d.write(phys, &[0; 8]).is_err());
    assert_eq!(hv.memory().read(phys, 8192), vec![0x42; 8192]);
    assert_eq!(hv.private_faults(), 2);
    // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
    unsafe { layer.unmap(&dev, bus, 8192, DmaDirection::Bidirectional, DmaAttrs::NONE) }.unwrap();
}
