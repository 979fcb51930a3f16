//! Issue 8: the misuse tracker (feature `debug-tracker`, here through `--features tracker`) against a
//! deliberately leaky, sloppy driver. Run: `cargo test -p ccdma-tests --features tracker --test tracker
//! -- --nocapture` prints the tracker's report.
#![cfg(feature = "tracker")]

use ccdma::tracker::{MisuseKind, TrackedKind};
use ccdma::{DeviceConfig, DmaAttrs, DmaDirection, DmaError, DmaLayer, DmaMask, PhysAddr, PoolConfig};
use ccdma_hv_model::{HvConfig, Region};
use ccdma_tests::*;

#[test]
fn a_leaky_driver_is_reported_with_call_sites() {
    let hv = model(HvConfig::pseries(6 * GIB));
    let mut layer = DmaLayer::new(hv);
    add_pool(&mut layer, MID_POOL, 4 * MIB, PoolConfig::default()).unwrap();
    let dev = layer.attach(DeviceConfig::new(0x42, DmaMask::BITS_32)).unwrap();
    let a = hv.alloc(8192, Region::High);
    let b = hv.alloc(4096, Region::High);
    let dir = DmaDirection::FromDevice;
    // SAFETY: the test's own allocations, never touched while mapped.
    let bus_a = unsafe { layer.map_phys(&dev, PhysAddr(a), 8192, dir, DmaAttrs::NONE) }.unwrap();
    // SAFETY: as above.
    let bus_b =
        unsafe { layer.map_phys(&dev, PhysAddr(b), 4096, DmaDirection::ToDevice, DmaAttrs::NONE) }.unwrap();
    // SAFETY: as above.
    let r = unsafe { layer.sync_for_cpu(&dev, bus_a, 8000, 500, dir) };
    assert!(matches!(r, Err(DmaError::OutOfRange { .. })));
    // SAFETY: as above: a wrong size changes nothing.
    let r = unsafe { layer.unmap(&dev, bus_a, 4096, dir, DmaAttrs::NONE) };
    assert!(matches!(r, Err(DmaError::SizeMismatch { .. })));
    // SAFETY: as above.
    unsafe { layer.unmap(&dev, bus_a, 8192, dir, DmaAttrs::NONE) }.unwrap();
    // SAFETY: deliberately a second unmap of the same address: refused, reported as double unmap.
    let r = unsafe { layer.unmap(&dev, bus_a, 8192, dir, DmaAttrs::NONE) };
    assert_eq!(r, Err(DmaError::UnknownMapping(bus_a)));
    // A coherent buffer, never freed.
    let coh = hv.alloc(4096, Region::Low);
    // SAFETY: a fresh page handed over for good.
    let buf = unsafe { layer.alloc_coherent(&dev, PhysAddr(coh), 1) }.unwrap();
    std::mem::forget(buf);

    let refused = layer.detach(dev).unwrap_err();
    assert_eq!(refused.error, DmaError::Busy { live: 2 });
    let t = layer.tracker();
    let mut kinds = Vec::new();
    println!("misuse tracker report ({} reports):", t.reports_total());
    t.for_each_report(|r| {
        println!(
            "  {:?} device #{} at {} (call at {}{})",
            r.kind,
            r.device,
            r.bus,
            r.site,
            r.earlier.map_or(String::new(), |m| format!("; earlier call at {m}"))
        );
        kinds.push(r.kind);
    });
    assert!(matches!(kinds[0], MisuseKind::SyncOutside(_)));
    assert!(matches!(kinds[1], MisuseKind::Mismatch(DmaError::SizeMismatch { .. })));
    assert_eq!(kinds[2], MisuseKind::DoubleUnmap);
    assert_eq!(kinds.iter().filter(|k| **k == MisuseKind::Leaked).count(), 2);
    let mut live = Vec::new();
    t.for_each_live(Some(refused.value.serial()), |e| live.push(*e));
    assert_eq!(live.len(), 2);
    assert!(live
        .iter()
        .any(|e| e.kind == TrackedKind::Mapping && e.bus == bus_b && e.site.file().ends_with("tracker.rs")));
    assert!(live.iter().any(|e| e.kind == TrackedKind::Coherent));
}
