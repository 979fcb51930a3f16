//! Hostile devices and the stale-bounce-data class (CVE-2022-0854): whatever the device does, the
//! guest receives only bytes the device wrote into the mapping it was given (or zeroes), never another
//! mapping's data, and the host never sees private bytes.

use ccdma::{DeviceConfig, DmaAttrs, DmaDirection, DmaError, DmaMask, PhysAddr};
use ccdma_hv_model::{HvConfig, Region};
use ccdma_tests::*;

const SECRET: u8 = 0x5E;

#[test]
fn from_device_slot_never_carries_stale_data() {
    // A pool exactly as large as one mapping forces slot reuse.
    let (hv, layer) = guest(HvConfig::pseries(6 * GIB), &[(MID_POOL, 16 * 1024)]);
    let dev = layer.attach(DeviceConfig::new(1, DmaMask::BITS_32)).unwrap();
    let d = hv.add_device(1, 32);
    let a = hv.alloc(16384, Region::Low);
    let b = hv.alloc(16384, Region::Low);
    // Mapping A (to-device) fills the pool with its data, then is unmapped.
    hv.memory().write(a, &[0xAA; 16384]);
    // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
    let bus_a =
        unsafe { layer.map_phys(&dev, PhysAddr(a), 16384, DmaDirection::ToDevice, DmaAttrs::NONE) }.unwrap();
    // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
    unsafe { layer.unmap(&dev, bus_a, 16384, DmaDirection::ToDevice, DmaAttrs::NONE) }.unwrap();
    // Mapping B (from-device) reuses the same slots; B's original holds a secret.
    hv.memory().write(b, &[SECRET; 16384]);
    // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
    let bus_b = unsafe { layer.map_phys(&dev, PhysAddr(b), 16384, DmaDirection::FromDevice, DmaAttrs::NONE) }
        .unwrap();
    assert_eq!(bus_a, bus_b, "the test wants slot reuse");
    // The host/device sees neither A's data nor B's secret.
    let seen = d.read(bus_b.0, 16384).unwrap();
    assert!(seen.iter().all(|&x| x == 0), "slot not zeroed");
    // The device writes only the first 100 bytes (short write): the guest receives those and zeroes.
    d.write_short(bus_b.0, &[0x11; 16384], 100).unwrap();
    // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
    unsafe { layer.unmap(&dev, bus_b, 16384, DmaDirection::FromDevice, DmaAttrs::NONE) }.unwrap();
    let got = hv.memory().read(b, 16384);
    assert_eq!(&got[..100], &[0x11; 100]);
    assert!(got[100..].iter().all(|&x| x == 0), "guest received stale pool data");
    // A device that writes nothing: the guest gets zeroes, not A's data.
    // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
    let bus = unsafe { layer.map_phys(&dev, PhysAddr(b), 16384, DmaDirection::FromDevice, DmaAttrs::NONE) }
        .unwrap();
    // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
    unsafe { layer.unmap(&dev, bus, 16384, DmaDirection::FromDevice, DmaAttrs::NONE) }.unwrap();
    assert!(hv.memory().read(b, 16384).iter().all(|&x| x == 0));
    // SKIP_CPU_SYNC skips copies of the original but still never exposes stale data.
    hv.memory().write(a, &[0xAA; 16384]);
    // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
    let bus =
        unsafe { layer.map_phys(&dev, PhysAddr(a), 16384, DmaDirection::ToDevice, DmaAttrs::NONE) }.unwrap();
    // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
    unsafe { layer.unmap(&dev, bus, 16384, DmaDirection::ToDevice, DmaAttrs::NONE) }.unwrap();
    // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
    let bus = unsafe {
        layer.map_phys(&dev, PhysAddr(b), 16384, DmaDirection::FromDevice, DmaAttrs::SKIP_CPU_SYNC)
    }
    .unwrap();
    assert!(d.read(bus.0, 16384).unwrap().iter().all(|&x| x == 0));
    // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
    unsafe { layer.unmap(&dev, bus, 16384, DmaDirection::FromDevice, DmaAttrs::SKIP_CPU_SYNC) }.unwrap();
    assert_no_faults(hv);
}

#[test]
fn preserve_unwritten_keeps_the_original_bytes() {
    let (hv, layer) = guest(HvConfig::tdx(6 * GIB), &[(MID_POOL, MIB)]);
    let dev = layer.attach(DeviceConfig::new(1, DmaMask::BITS_32)).unwrap();
    let d = hv.add_device(1, 32);
    let p = hv.alloc(4096, Region::Low);
    hv.memory().write(p, &pattern(4096, 1));
    // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
    let bus = unsafe {
        layer.map_phys(&dev, PhysAddr(p), 4096, DmaDirection::FromDevice, DmaAttrs::PRESERVE_UNWRITTEN)
    }
    .unwrap();
    d.write(bus.0 + 1000, &[0; 10]).unwrap();
    // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
    unsafe { layer.unmap(&dev, bus, 4096, DmaDirection::FromDevice, DmaAttrs::PRESERVE_UNWRITTEN) }.unwrap();
    let mut expect = pattern(4096, 1);
    expect[1000..1010].fill(0);
    assert_eq!(hv.memory().read(p, 4096), expect);
    assert_no_faults(hv);
}

#[test]
fn device_writing_past_its_length_is_contained() {
    let (hv, layer) = guest(HvConfig::pseries(6 * GIB), &[(MID_POOL, MIB)]);
    let dev = layer.attach(DeviceConfig::new(1, DmaMask::BITS_32)).unwrap();
    let d = hv.add_device(1, 32);
    let p = hv.alloc(8192, Region::Low);
    let q = hv.alloc(8192, Region::Low);
    hv.memory().write(p, &[1; 8192]);
    hv.memory().write(q, &[2; 8192]);
    // Two neighbouring mappings: A from-device of 1000 bytes, B to-device right after it.
    // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
    let a =
        unsafe { layer.map_phys(&dev, PhysAddr(p), 1000, DmaDirection::FromDevice, DmaAttrs::NONE) }.unwrap();
    // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
    let b =
        unsafe { layer.map_phys(&dev, PhysAddr(q), 1000, DmaDirection::ToDevice, DmaAttrs::NONE) }.unwrap();
    // The device writes 3000 bytes at A (past its 1000-byte length, over B's slot).
    d.write_past(a.0, &[0xF0; 1000], 2000, 0xF1).unwrap();
    // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
    unsafe { layer.unmap(&dev, a, 1000, DmaDirection::FromDevice, DmaAttrs::NONE) }.unwrap();
    // The guest takes exactly 1000 bytes: its buffer beyond the length is untouched.
    let got = hv.memory().read(p, 8192);
    assert_eq!(&got[..1000], &[0xF0; 1000]);
    assert!(got[1000..].iter().all(|&x| x == 1), "copy-back went past the recorded length");
    // B's original (private) is untouched; a to-device mapping never copies back.
    // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
    unsafe { layer.unmap(&dev, b, 1000, DmaDirection::ToDevice, DmaAttrs::NONE) }.unwrap();
    assert_eq!(hv.memory().read(q, 8192), vec![2; 8192]);
    // Writing beyond the pool into private memory is refused by the model (the only undetectable
    // part is inside the shared pool, which holds no private data).
    let end = MID_POOL + MIB;
    assert!(d.write(end - 10, &[0; 20]).is_err());
    assert_eq!(hv.private_faults(), 1);
    assert_eq!(layer.stats().slots_in_use, 0);
}

#[test]
fn device_rewriting_after_completion_cannot_reach_the_guest() {
    // A one-page pool forces slot reuse.
    let (hv, layer) = guest(HvConfig::pseries(6 * GIB), &[(MID_POOL, 4096)]);
    let dev = layer.attach(DeviceConfig::new(1, DmaMask::BITS_32)).unwrap();
    let d = hv.add_device(1, 32);
    let p = hv.alloc(4096, Region::Low);
    let mut m_bus = 0;
    {
        // SAFETY: fresh allocation, no other slice of it.
        let buf = unsafe { hv.slice_mut(p, 4096) };
        let mut m = layer.map(&dev, buf, DmaDirection::FromDevice, DmaAttrs::NONE).unwrap();
        m_bus = m.bus_addr().0.max(m_bus);
        d.write(m_bus, &[7; 4096]).unwrap();
        m.sync_for_cpu(0, 4096).unwrap();
        // The guest reads once, into private memory; a rewrite after the sync does not change it.
        d.write(m_bus, &[8; 4096]).unwrap();
        assert_eq!(m.buffer(), &[7; 4096]);
        // ... until the next sync or unmap, which is the device's data for this mapping.
    }
    assert_eq!(hv.memory().read(p, 4096), vec![8; 4096]);
    // After unmap the device keeps writing at the old address: the guest buffer is no longer linked.
    d.write(m_bus, &[9; 4096]).unwrap();
    assert_eq!(hv.memory().read(p, 4096), vec![8; 4096]);
    // A new from-device mapping that reuses those slots starts from zeroes again.
    // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
    let bus =
        unsafe { layer.map_phys(&dev, PhysAddr(p), 4096, DmaDirection::FromDevice, DmaAttrs::NONE) }.unwrap();
    assert_eq!(bus.0, m_bus);
    // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
    unsafe { layer.unmap(&dev, bus, 4096, DmaDirection::FromDevice, DmaAttrs::NONE) }.unwrap();
    assert_eq!(hv.memory().read(p, 4096), vec![0; 4096]);
    assert_no_faults(hv);
}

#[test]
fn false_length_claims_are_checked_against_the_record() {
    let (hv, layer) = guest(HvConfig::pseries(6 * GIB), &[(MID_POOL, MIB)]);
    let dev = layer.attach(DeviceConfig::new(1, DmaMask::BITS_32)).unwrap();
    let d = hv.add_device(1, 32);
    let p = hv.alloc(8192, Region::Low);
    hv.memory().write(p, &[SECRET; 8192]);
    // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
    let bus =
        unsafe { layer.map_phys(&dev, PhysAddr(p), 512, DmaDirection::FromDevice, DmaAttrs::NONE) }.unwrap();
    d.write(bus.0, &[3; 512]).unwrap();
    // The device (e.g. a virtio used-ring length) claims 4096 bytes: a driver that syncs what the
    // device says gets an error, not a copy of 4096 bytes.
    let claimed = 4096;
    assert!(matches!(
        // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
        unsafe { layer.sync_for_cpu(&dev, bus, 0, claimed, DmaDirection::FromDevice) },
        Err(DmaError::OutOfRange { mapped: 512, .. })
    ));
    assert_eq!(hv.memory().read(p, 8192), vec![SECRET; 8192]);
    // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
    unsafe { layer.unmap(&dev, bus, 512, DmaDirection::FromDevice, DmaAttrs::NONE) }.unwrap();
    let got = hv.memory().read(p, 8192);
    assert_eq!(&got[..512], &[3; 512]);
    assert!(got[512..].iter().all(|&x| x == SECRET));
    assert_no_faults(hv);
}

#[test]
fn no_private_byte_ever_reaches_shared_memory() {
    // Map every direction over a buffer full of a secret marker and scan all shared memory the device
    // can read: the marker appears only where a to-device mapping put it on purpose.
    let (hv, layer) = guest(HvConfig::pseries(6 * GIB), &[(MID_POOL, 256 * 1024)]);
    let dev = layer.attach(DeviceConfig::new(1, DmaMask::BITS_32)).unwrap();
    let d = hv.add_device(1, 32);
    let p = hv.alloc(65536, Region::Low);
    hv.memory().write(p, &[SECRET; 65536]);
    let mut live = Vec::new();
    for (i, len) in [100usize, 4096, 5000, 30000].into_iter().enumerate() {
        let dir = if i % 2 == 0 { DmaDirection::FromDevice } else { DmaDirection::Bidirectional };
        // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
        live.push((
            unsafe { layer.map_phys(&dev, PhysAddr(p), len, dir, DmaAttrs::NONE) }.unwrap(),
            len,
            dir,
        ));
    }
    let pool = d.read(MID_POOL, 256 * 1024).unwrap();
    let exposed = pool.iter().filter(|&&x| x == SECRET).count();
    let bidir: usize = live.iter().filter(|m| m.2 == DmaDirection::Bidirectional).map(|m| m.1).sum();
    assert_eq!(exposed, bidir, "only bidirectional mappings may carry the original into shared memory");
    for (bus, len, dir) in live {
        // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
        unsafe { layer.unmap(&dev, bus, len, dir, DmaAttrs::NONE) }.unwrap();
    }
    assert_no_faults(hv);
}
