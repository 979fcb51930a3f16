//! Issue 18, defect 10: cheap checks an `unsafe` contract would leave to luck. A coherent buffer
//! over a bounce pool's pages, and a second attachment of an attached device's id, are refused with
//! nothing changed.

use ccdma::{DeviceConfig, DmaAttrs, DmaError, DmaMask, PhysAddr};
use ccdma_hv_model::{HvConfig, Region};
use ccdma_tests::*;

#[test]
fn a_coherent_buffer_inside_a_bounce_pool_is_refused() {
    let (hv, layer) = guest(HvConfig::pseries(6 * GIB), &[(MID_POOL, 4 * MIB)]);
    hv.add_device(1, 32);
    let dev = layer.attach(DeviceConfig::new(1, DmaMask::new(32).unwrap())).unwrap();
    let base = Baseline::take(hv, &layer);
    let shared = hv.shared_pages();
    // A live mapping in the pool: its page must stay shared whatever a careless caller asks.
    let phys = hv.alloc(4096, Region::High);
    // SAFETY: a fresh page, used by this mapping only.
    let buf = unsafe { hv.slice_mut(phys, 4096) };
    let m = layer.map_to_device(&dev, buf, DmaAttrs::NONE).unwrap();
    for (at, pages) in [(MID_POOL, 1), (MID_POOL + 4 * MIB - 4096, 1), (MID_POOL - 4096, 2)] {
        // SAFETY: refused before the pages are touched (the check under test); were it not, the test
        // would fail on the model's ledger below.
        let r = unsafe { layer.alloc_coherent(&dev, PhysAddr(at), pages) };
        assert_eq!(r.err(), Some(DmaError::PoolOverlap { pool: 0 }), "{at:#x} x{pages}");
    }
    assert_eq!(hv.shared_pages(), shared, "no page shared or unshared");
    m.unmap().unwrap();
    // Right beside the pool is fine.
    // SAFETY: the page after the pool is RAM nothing else uses.
    let c = unsafe { layer.alloc_coherent(&dev, PhysAddr(MID_POOL + 4 * MIB), 1) }.unwrap();
    layer.free_coherent(&dev, c).unwrap();
    base.assert_same(hv, &layer);
    assert_no_faults(hv);
}

#[test]
fn an_attached_id_cannot_attach_twice() {
    let (hv, layer) = guest(HvConfig::tdx(6 * GIB), &[(LOW_POOL, 4 * MIB)]);
    hv.add_device(3, 64);
    let dev = layer.attach(DeviceConfig::new(3, DmaMask::BITS_64)).unwrap();
    assert_eq!(
        layer.attach(DeviceConfig::new(3, DmaMask::new(32).unwrap())).err(),
        Some(DmaError::DeviceIdInUse(3))
    );
    // A refused attach (no path) does not keep the id.
    assert!(layer.attach(DeviceConfig::new(4, DmaMask::new(16).unwrap())).is_err());
    let four = layer.attach(DeviceConfig::new(4, DmaMask::BITS_64)).unwrap();
    layer.detach(dev).unwrap();
    let again = layer.attach(DeviceConfig::new(3, DmaMask::BITS_64)).unwrap();
    layer.detach(again).unwrap();
    layer.detach(four).unwrap();
}
