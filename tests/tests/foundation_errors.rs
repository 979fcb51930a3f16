//! Bad input gets a clear error and loses nothing: exhaustion, too-large mappings, masks too small,
//! invalid handles, double unmap, size/direction mismatches (invariant 4: counters back to baseline,
//! the pool usable afterwards).

use ccdma::{
    BusAddr, DeviceConfig, DmaAttrs, DmaDirection, DmaError, DmaLayer, DmaMask, FailureKind, PhysAddr,
    PoolConfig,
};
use ccdma_hv_model::{HvConfig, Region};
use ccdma_tests::*;

#[test]
fn masks_too_small_or_too_large_are_rejected() {
    for bits in [0, 1, 8, 12, 65, 100] {
        assert_eq!(DmaMask::new(bits), Err(DmaError::InvalidMask { bits }), "{bits}");
    }
    assert_eq!(DmaMask::new(13).unwrap().max_addr(), 0x1fff);
    assert_eq!(DmaMask::from_value(0xffff_ffff).unwrap(), DmaMask::BITS_32);
    assert_eq!(DmaMask::from_value(u64::MAX).unwrap(), DmaMask::BITS_64);
    assert!(DmaMask::from_value(0x1234).is_err());
    assert!(DmaMask::from_value(0).is_err());
    assert!(DmaMask::from_value(0xfff).is_err(), "a mask that cannot hold one page");
    // covers() never wraps.
    assert!(!DmaMask::BITS_64.covers(u64::MAX, 2));
    assert!(DmaMask::BITS_32.covers(0xffff_f000, 0x1000));
    assert!(!DmaMask::BITS_32.covers(0xffff_f000, 0x1001));
}

#[test]
fn exhaustion_is_an_error_and_the_pool_recovers() {
    let (hv, layer) = guest(HvConfig::pseries(6 * GIB), &[(LOW_POOL, 256 * 1024)]);
    let dev = layer.attach(DeviceConfig::new(1, DmaMask::new(24).unwrap())).unwrap();
    let d = hv.add_device(1, 24);
    let base = Baseline::take(hv, &layer);
    let phys = hv.alloc(64 * 1024, Region::Low);
    let mut live = Vec::new();
    loop {
        // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
        match unsafe {
            layer.map_phys(&dev, PhysAddr(phys), 16 * 1024, DmaDirection::ToDevice, DmaAttrs::NONE)
        } {
            Ok(bus) => live.push(bus),
            Err(e) => {
                assert_eq!(e, DmaError::PoolExhausted { len: 16 * 1024 });
                break;
            }
        }
    }
    assert_eq!(live.len(), 16, "256 KiB pool holds sixteen 16 KiB mappings");
    let s = layer.stats();
    assert_eq!(s.slots_in_use, 128);
    assert_eq!(s.slots_high_water, 128);
    assert_eq!(s.failures_of(FailureKind::PoolExhausted), 1);
    // Still exhausted for a single slot; NO_WARN changes only logging.
    // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
    assert!(unsafe { layer.map_phys(&dev, PhysAddr(phys), 1, DmaDirection::ToDevice, DmaAttrs::NO_WARN) }
        .is_err());
    for bus in live.drain(..) {
        // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
        unsafe { layer.unmap(&dev, bus, 16 * 1024, DmaDirection::ToDevice, DmaAttrs::NONE) }.unwrap();
    }
    base.assert_same(hv, &layer);
    // Usable afterwards: the largest mapping fits again.
    hv.memory().write(phys, &pattern(64 * 1024, 3));
    // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
    let bus =
        unsafe { layer.map_phys(&dev, PhysAddr(phys), 64 * 1024, DmaDirection::ToDevice, DmaAttrs::NONE) }
            .unwrap();
    assert_eq!(d.read(bus.0, 64 * 1024).unwrap(), pattern(64 * 1024, 3));
    // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
    unsafe { layer.unmap(&dev, bus, 64 * 1024, DmaDirection::ToDevice, DmaAttrs::NONE) }.unwrap();
    assert_no_faults(hv);
    base.assert_same(hv, &layer);
}

#[test]
fn fragmentation_does_not_leak_slots() {
    // Free every other mapping, then ask for runs that only fit in merged holes.
    let (hv, layer) = guest(HvConfig::pseries(6 * GIB), &[(LOW_POOL, 512 * 1024)]);
    let dev = layer.attach(DeviceConfig::new(1, DmaMask::BITS_32)).unwrap();
    let phys = hv.alloc(256 * 1024, Region::Low);
    let mut live: Vec<Option<BusAddr>> = (0..128)
        .map(|_| {
            // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
            Some(
                unsafe { layer.map_phys(&dev, PhysAddr(phys), 2048, DmaDirection::ToDevice, DmaAttrs::NONE) }
                    .unwrap(),
            )
        })
        .collect();
    assert_eq!(layer.stats().slots_in_use, 128);
    // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
    let eight = unsafe { layer.map_phys(&dev, PhysAddr(phys), 8192, DmaDirection::ToDevice, DmaAttrs::NONE) }
        .unwrap();
    for (i, m) in live.iter_mut().enumerate() {
        if i % 2 == 0 {
            // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
            unsafe { layer.unmap(&dev, m.take().unwrap(), 2048, DmaDirection::ToDevice, DmaAttrs::NONE) }
                .unwrap();
        }
    }
    // 4 KiB runs cannot use 2 KiB holes; the rest of the pool still serves them.
    // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
    let big = unsafe { layer.map_phys(&dev, PhysAddr(phys), 4096, DmaDirection::ToDevice, DmaAttrs::NONE) }
        .unwrap();
    // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
    unsafe { layer.unmap(&dev, big, 4096, DmaDirection::ToDevice, DmaAttrs::NONE) }.unwrap();
    for m in live.iter_mut().filter_map(Option::take) {
        // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
        unsafe { layer.unmap(&dev, m, 2048, DmaDirection::ToDevice, DmaAttrs::NONE) }.unwrap();
    }
    // The 8 KiB mapping is the only one left.
    assert_eq!(layer.stats().slots_in_use, 4);
    // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
    unsafe { layer.unmap(&dev, eight, 8192, DmaDirection::ToDevice, DmaAttrs::NONE) }.unwrap();
    // Everything freed: the free counts merged back, so both 128-slot segments take a full run.
    let full = 128 * 2048;
    // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
    let a = unsafe { layer.map_phys(&dev, PhysAddr(phys), full, DmaDirection::ToDevice, DmaAttrs::NONE) }
        .unwrap();
    // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
    let b = unsafe { layer.map_phys(&dev, PhysAddr(phys), full, DmaDirection::ToDevice, DmaAttrs::NONE) }
        .unwrap();
    assert_eq!(layer.stats().slots_in_use, 256);
    // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
    unsafe { layer.unmap(&dev, a, full, DmaDirection::ToDevice, DmaAttrs::NONE) }.unwrap();
    // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
    unsafe { layer.unmap(&dev, b, full, DmaDirection::ToDevice, DmaAttrs::NONE) }.unwrap();
    assert_eq!(layer.stats().slots_in_use, 0);
}

#[test]
fn too_large_mappings_are_refused() {
    let (hv, layer) = guest(HvConfig::pseries(6 * GIB), &[(LOW_POOL, 4 * MIB)]);
    let dev = layer.attach(DeviceConfig::new(1, DmaMask::BITS_32)).unwrap();
    let base = Baseline::take(hv, &layer);
    let phys = hv.alloc(512 * 1024, Region::Low);
    let max = 128 * 2048;
    // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
    let bus = unsafe { layer.map_phys(&dev, PhysAddr(phys), max, DmaDirection::FromDevice, DmaAttrs::NONE) }
        .unwrap();
    // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
    unsafe { layer.unmap(&dev, bus, max, DmaDirection::FromDevice, DmaAttrs::NONE) }.unwrap();
    // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
    assert_eq!(
        // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
        unsafe { layer.map_phys(&dev, PhysAddr(phys), max + 1, DmaDirection::FromDevice, DmaAttrs::NONE) },
        Err(DmaError::TooLarge { len: max + 1, max })
    );
    // With min_align_mask the offset eats into the run.
    let aligned = layer.attach(DeviceConfig::new(2, DmaMask::BITS_32).with_min_align_mask(0x7ff)).unwrap();
    // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
    assert!(matches!(
        // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
        unsafe {
            layer.map_phys(&aligned, PhysAddr(phys + 0x10), max, DmaDirection::ToDevice, DmaAttrs::NONE)
        },
        Err(DmaError::TooLarge { .. })
    ));
    // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
    assert_eq!(
        // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
        unsafe { layer.map_phys(&dev, PhysAddr(phys), 0, DmaDirection::ToDevice, DmaAttrs::NONE) },
        Err(DmaError::ZeroLength)
    );
    assert_eq!(layer.stats().failures_of(FailureKind::TooLarge), 2);
    base.assert_same(hv, &layer);
}

#[test]
fn invalid_handles_double_unmap_and_mismatches_change_nothing() {
    let (hv, layer) = guest(HvConfig::pseries(6 * GIB), &[(MID_POOL, 4 * MIB)]);
    let dev = layer.attach(DeviceConfig::new(1, DmaMask::BITS_32)).unwrap();
    let d = hv.add_device(1, 32);
    let base = Baseline::take(hv, &layer);
    let phys = hv.alloc(8192, Region::Low);
    hv.memory().write(phys, &[0xAB; 5000]);
    // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
    let bus = unsafe { layer.map_phys(&dev, PhysAddr(phys), 5000, DmaDirection::FromDevice, DmaAttrs::NONE) }
        .unwrap();
    d.write(bus.0, &[0xCD; 5000]).unwrap();

    // Wrong size and wrong direction: errors, mapping untouched, original untouched.
    // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
    assert_eq!(
        // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
        unsafe { layer.unmap(&dev, bus, 4999, DmaDirection::FromDevice, DmaAttrs::NONE) },
        Err(DmaError::SizeMismatch { mapped: 5000, given: 4999 })
    );
    // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
    assert!(matches!(
        // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
        unsafe { layer.unmap(&dev, bus, 5000, DmaDirection::ToDevice, DmaAttrs::NONE) },
        Err(DmaError::DirectionMismatch { .. })
    ));
    // Addresses inside the mapping, outside the pool, or in a free slot are not handles.
    for junk in [bus.0 + 1, bus.0 + 2048, MID_POOL + 4 * MIB - 2048, 0x1234, u64::MAX] {
        // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
        assert_eq!(
            // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
            unsafe { layer.unmap(&dev, BusAddr(junk), 5000, DmaDirection::FromDevice, DmaAttrs::NONE) },
            Err(DmaError::UnknownMapping(BusAddr(junk)))
        );
    }
    assert_eq!(hv.memory().read(phys, 5000), vec![0xAB; 5000]);
    assert_eq!(layer.stats().slots_in_use, 3);

    // A device from another layer is not attached here.
    let (_, other) = guest(HvConfig::pseries(6 * GIB), &[(MID_POOL, 4 * MIB)]);
    let foreign = other.attach(DeviceConfig::new(1, DmaMask::BITS_32)).unwrap();
    // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
    assert_eq!(
        // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
        unsafe { layer.unmap(&foreign, bus, 5000, DmaDirection::FromDevice, DmaAttrs::NONE) },
        Err(DmaError::NotAttached)
    );

    // The real unmap works once, then the handle is dead.
    // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
    unsafe { layer.unmap(&dev, bus, 5000, DmaDirection::FromDevice, DmaAttrs::NONE) }.unwrap();
    assert_eq!(hv.memory().read(phys, 5000), vec![0xCD; 5000]);
    hv.memory().write(phys, &[0xAB; 5000]);
    // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
    assert_eq!(
        // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
        unsafe { layer.unmap(&dev, bus, 5000, DmaDirection::FromDevice, DmaAttrs::NONE) },
        Err(DmaError::UnknownMapping(bus))
    );
    assert_eq!(hv.memory().read(phys, 5000), vec![0xAB; 5000], "double unmap copied stale data");
    let s = layer.stats();
    assert_eq!(s.failures_of(FailureKind::Mismatch), 2);
    assert_eq!(s.failures_of(FailureKind::UnknownMapping), 6);
    base.assert_same(hv, &layer);
    assert_no_faults(hv);
}

#[test]
fn pool_configuration_errors() {
    let hv = model(HvConfig::pseries(6 * GIB));
    let mut layer = DmaLayer::new(hv);
    let bad = [
        PoolConfig { slot_size: 3000, ..PoolConfig::default() },
        PoolConfig { slot_size: 256, ..PoolConfig::default() },
        PoolConfig { max_run_slots: 0, ..PoolConfig::default() },
        PoolConfig { areas: 0, ..PoolConfig::default() },
        PoolConfig { areas: 17, ..PoolConfig::default() },
    ];
    for cfg in bad {
        assert!(
            matches!(
                add_pool(&mut layer, LOW_POOL, MIB, cfg),
                Err(DmaError::InvalidSlotSize(_) | DmaError::InvalidMaxRun(_) | DmaError::InvalidAreas(_))
            ),
            "{cfg:?}"
        );
    }
    assert!(matches!(
        add_pool(&mut layer, LOW_POOL + 1, MIB, PoolConfig::default()),
        Err(DmaError::Unaligned { align: 4096, .. })
    ));
    assert!(matches!(
        add_pool(&mut layer, LOW_POOL, 100, PoolConfig::default()),
        Err(DmaError::Unaligned { align: 4096, .. })
    ));
    assert!(matches!(
        add_pool(&mut layer, 7 * GIB, MIB, PoolConfig::default()),
        Err(DmaError::NoCpuMapping(_))
    ));
    let small = vec![ccdma::SlotMeta::EMPTY; 10].leak();
    // SAFETY: fixed test range, unused by anything else.
    let r = unsafe { layer.add_pool(PhysAddr(LOW_POOL), MIB as usize, small, PoolConfig::default()) };
    assert_eq!(r.unwrap_err(), DmaError::MetadataTooSmall { needed: 512, provided: 10 });
    // None of the refused pools shared anything.
    assert_eq!(hv.shared_pages(), 0);
    add_pool(&mut layer, LOW_POOL, MIB, PoolConfig::default()).unwrap();
    assert!(matches!(
        add_pool(&mut layer, LOW_POOL + 4096, MIB, PoolConfig::default()),
        Err(DmaError::PoolOverlap { pool: 0 })
    ));
    assert_eq!(hv.shared_pages(), 256);
    for i in 1..ccdma::MAX_POOLS as u64 {
        add_pool(&mut layer, MID_POOL + i * MIB, MIB, PoolConfig::default()).unwrap();
    }
    assert_eq!(add_pool(&mut layer, 2 * GIB, MIB, PoolConfig::default()), Err(DmaError::TooManyPools));
    // Tear down: everything unshared.
    layer.release_pools().unwrap();
    assert_eq!(hv.shared_pages(), 0);
    assert_eq!(layer.stats().shared_pages, 0);
}

#[test]
fn release_pools_refuses_while_mapped() {
    let (hv, mut layer) = guest(HvConfig::tdx(6 * GIB), &[(LOW_POOL, MIB)]);
    let dev = layer.attach(DeviceConfig::new(1, DmaMask::BITS_32)).unwrap();
    let phys = hv.alloc(4096, Region::Low);
    // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
    let bus =
        unsafe { layer.map_phys(&dev, PhysAddr(phys), 10, DmaDirection::ToDevice, DmaAttrs::NONE) }.unwrap();
    assert!(layer.release_pools().is_err());
    assert_eq!(hv.shared_pages(), 256);
    // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
    unsafe { layer.unmap(&dev, bus, 10, DmaDirection::ToDevice, DmaAttrs::NONE) }.unwrap();
    layer.release_pools().unwrap();
    assert_eq!(hv.shared_pages(), 0);
}

#[test]
fn small_slots_and_many_areas() {
    // A pool with 512-byte slots, 16-slot runs and 16 areas works the same way.
    let hv = model(HvConfig::pseries(6 * GIB));
    let mut layer = DmaLayer::new(hv);
    let cfg = PoolConfig { slot_size: 512, max_run_slots: 16, areas: 16 };
    add_pool(&mut layer, LOW_POOL, MIB, cfg).unwrap();
    assert_eq!(layer.pool(0).unwrap().0.areas(), 16);
    let dev = layer.attach(DeviceConfig::new(1, DmaMask::new(24).unwrap())).unwrap();
    let d = hv.add_device(1, 24);
    let phys = hv.alloc(8192, Region::Low);
    let mut live = Vec::new();
    for i in 0..200 {
        let len = 1 + (i * 37) % 8192;
        hv.memory().write(phys, &pattern(len, i as u64));
        // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
        let bus =
            unsafe { layer.map_phys(&dev, PhysAddr(phys), len, DmaDirection::ToDevice, DmaAttrs::NONE) }
                .unwrap();
        assert_eq!(d.read(bus.0, len).unwrap(), pattern(len, i as u64));
        live.push((bus, len));
    }
    // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
    assert_eq!(
        // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
        unsafe { layer.map_phys(&dev, PhysAddr(phys), 8193, DmaDirection::ToDevice, DmaAttrs::NONE) },
        Err(DmaError::TooLarge { len: 8193, max: 8192 })
    );
    for (bus, len) in live {
        // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
        unsafe { layer.unmap(&dev, bus, len, DmaDirection::ToDevice, DmaAttrs::NONE) }.unwrap();
    }
    assert_eq!(layer.stats().slots_in_use, 0);
    assert_no_faults(hv);
}
