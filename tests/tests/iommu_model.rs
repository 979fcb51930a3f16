//! The modelled IOMMU itself: PAPR-style answers to bad calls, the list page rule of a secure guest,
//! resource exhaustion reaching the guest as a clean failure, counters.

mod iommu_support;

use ccdma::iommu::hcall::{H_FUNCTION, H_NOT_ENOUGH_RESOURCES, H_PARAMETER, H_SUCCESS};
use ccdma::iommu::{TceCalls, TCE_PCI_READ, TCE_PCI_WRITE};
use ccdma::{DmaAttrs, DmaDirection, DmaError, IommuError, IommuPolicy, PhysAddr, Platform};
use ccdma_hv_model::{AccessKind, FaultReason, HvConfig, Region, TceConfig};
use ccdma_tests::*;
use iommu_support::*;

#[test]
fn tce_hypercalls_check_their_arguments() {
    let hv = model(HvConfig::pseries(6 * GIB));
    assert!(hv.tce().is_none(), "no IOMMU until enabled");
    hv.enable_iommu(TceConfig { reserved: vec![(0, MIB)], ..TceConfig::default() });
    hv.add_iommu_device(1, 32);
    let win = hv.default_window(1).unwrap();
    let l = win.liobn;
    let page = hv.alloc(4096, Region::Low);
    let target = 0x1000_0000;
    let rw = TCE_PCI_READ | TCE_PCI_WRITE;
    // Unknown table, out-of-window address, reserved range. (An address inside a page and a target
    // outside RAM are accepted, as QEMU accepts them: see qemu_fidelity.rs.)
    assert_eq!(hv.h_put_tce(l + 100, 0x10_0000, target | rw), H_PARAMETER);
    assert_eq!(hv.h_put_tce(l, win.end(), target | rw), H_PARAMETER);
    assert_eq!(hv.h_put_tce(l, 0x1000, target | rw), H_PARAMETER, "reserved range");
    assert_eq!(hv.tce_counters().live_entries, 0);
    // A good one, read back, cleared.
    assert_eq!(hv.h_put_tce(l, 0x10_0000, target | TCE_PCI_READ), H_SUCCESS);
    assert_eq!(hv.h_get_tce(l, 0x10_0000), (H_SUCCESS, target | TCE_PCI_READ));
    assert_eq!(hv.tce_tables()[0].live, 1);
    assert_eq!(hv.h_stuff_tce(l, 0x10_0000, 0, 1), H_SUCCESS);
    assert_eq!(hv.h_get_tce(l, 0x10_0000), (H_SUCCESS, 0));
    // The indirect list: 4 KiB aligned, at most 512 entries, and shared in a secure guest.
    hv.memory().write(page, &(target | rw).to_be_bytes());
    assert_eq!(hv.h_put_tce_indirect(l, 0x10_0000, PhysAddr(page), 1), H_PARAMETER, "private list page");
    hv.memory().set_state(page, 1, ccdma_hv_model::PageState::Shared);
    assert_eq!(hv.h_put_tce_indirect(l, 0x10_0000, PhysAddr(page), 513), H_PARAMETER);
    assert_eq!(hv.h_put_tce_indirect(l, 0x10_0000, PhysAddr(page + 8), 1), H_PARAMETER);
    assert_eq!(hv.h_put_tce_indirect(l, 0x10_0000, PhysAddr(page), 1), H_SUCCESS);
    assert_eq!(hv.h_get_tce(l, 0x10_0000).1, target | rw, "big-endian list entry read back");
    // Firmware without the indirect call.
    hv.set_indirect(false);
    assert!(!hv.indirect_available());
    assert_eq!(hv.h_put_tce_indirect(l, 0x10_0000, PhysAddr(page), 1), H_FUNCTION);
    // The device reaches the entry with its permission only.
    hv.memory().set_state(target, 1, ccdma_hv_model::PageState::Shared);
    let d = hv.device(1);
    assert!(d.probe(0x10_0000, AccessKind::Read));
    assert_eq!(hv.h_put_tce(l, 0x10_0000, target | TCE_PCI_READ), H_SUCCESS);
    assert!(!d.probe(0x10_0000, AccessKind::Write));
    assert_eq!(hv.faults().last().unwrap().reason, FaultReason::Permission);
    assert!(!d.probe(0x20_0000, AccessKind::Read));
    assert_eq!(hv.faults().last().unwrap().reason, FaultReason::NoEntry);
    let c = hv.tce_counters();
    assert_eq!((c.entries_written, c.live_entries, c.tables), (3, 1, 1));
}

#[test]
fn table_exhaustion_fails_a_map_cleanly() {
    let mut o = Opts::new(IommuPolicy::Strict);
    o.pool_len = 4 * MIB;
    let g = iommu_guest(o);
    // Rebuild the model's config with a small table (the device is added after).
    g.hv.enable_iommu(TceConfig { max_entries_per_table: Some(8), ..tce_config(&g.opts) });
    let dev = g.device(1, 32);
    let phys = g.hv.alloc(65536, Region::High);
    // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
    let a = unsafe { g.layer.map_phys(&dev, PhysAddr(phys), 32768, DmaDirection::ToDevice, DmaAttrs::NONE) }
        .unwrap();
    // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
    let err =
        unsafe { g.layer.map_phys(&dev, PhysAddr(phys), 32768, DmaDirection::ToDevice, DmaAttrs::NONE) }
            .unwrap_err();
    assert_eq!(err, DmaError::Iommu(IommuError::Hcall(H_NOT_ENOUGH_RESOURCES)));
    assert_eq!(g.hv.tce_counters().live_entries, 8, "the failed map left no entry");
    assert_eq!(g.layer.live_bus_ranges(), 1);
    // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
    unsafe { g.layer.unmap(&dev, a, 32768, DmaDirection::ToDevice, DmaAttrs::NONE) }.unwrap();
    // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
    let b = unsafe { g.layer.map_phys(&dev, PhysAddr(phys), 32768, DmaDirection::ToDevice, DmaAttrs::NONE) }
        .unwrap();
    // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
    unsafe { g.layer.unmap(&dev, b, 32768, DmaDirection::ToDevice, DmaAttrs::NONE) }.unwrap();
    assert_eq!(g.hv.tce_counters().live_entries, 0);
}
