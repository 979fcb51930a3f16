use ccdma::{DeviceConfig, DmaAttrs, DmaDirection, DmaLayer, DmaMask, DmaPath, PoolConfig};
use ccdma_hv_model::{HvConfig, Region};
use ccdma_tests::*;

#[test]
fn bounce_round_trip() {
    let hv = model(HvConfig::pseries(6 * GIB));
    let mut layer = DmaLayer::new(hv);
    add_pool(&mut layer, MID_POOL, 4 * MIB, PoolConfig::default()).unwrap();
    assert_eq!(hv.shared_pages(), 1024);
    let dev = layer.attach(DeviceConfig::new(1, DmaMask::new(32).unwrap())).unwrap();
    assert_eq!(dev.path(), DmaPath::BounceAlways);
    let d = hv.add_device(1, 32);
    let phys = hv.alloc(8192, Region::High);
    // SAFETY: fresh allocation.
    let buf = unsafe { hv.slice_mut(phys, 8192) };
    let data = pattern(8192, 1);
    buf.copy_from_slice(&data);
    let m = layer.map_to_device(&dev, buf, DmaAttrs::NONE).unwrap();
    assert_eq!(d.read(m.bus_addr().0, 8192).unwrap(), data);
    m.unmap().unwrap();
    // SAFETY: the previous slice's mapping has ended; this is the only live slice of the buffer.
    let buf = unsafe { hv.slice_mut(phys, 8192) };
    let mut m = layer.map(&dev, buf, DmaDirection::FromDevice, DmaAttrs::NONE).unwrap();
    assert_eq!(d.read(m.bus_addr().0, 8192).unwrap(), vec![0; 8192]);
    let back = pattern(8192, 2);
    d.write(m.bus_addr().0, &back).unwrap();
    m.sync_for_cpu(0, 100).unwrap();
    assert_eq!(&m.buffer()[..100], &back[..100]);
    m.unmap().unwrap();
    assert_eq!(hv.memory().read(phys, 8192), back);
    assert_no_faults(hv);
    assert_eq!(layer.stats().slots_in_use, 0);
    // The device cannot reach the private original.
    let wide = hv.add_device(2, 64);
    assert!(wide.read(phys, 16).is_err());
    assert_eq!(hv.private_faults(), 1);
}
