//! `map_sg_cpu`, the scatter-gather entry for lists of CPU buffers only (what the C library
//! passes): the same result as `map_sg` for such a list, and a physical-range or P2P entry is
//! refused with nothing mapped and the list as it was (issue 20: the C image links no code for them).

use ccdma::sg::{dma_segments, P2pSegment, SgEntry};
use ccdma::{DeviceConfig, DmaAttrs, DmaDirection, DmaError, DmaMask, PhysAddr};
use ccdma_hv_model::{HvConfig, Region};
use ccdma_tests::*;

#[test]
fn a_cpu_list_maps_as_with_map_sg() {
    let (hv, layer) = guest(HvConfig::pseries(6 * GIB), &[(LOW_POOL, 256 * 1024)]);
    let dev = layer.attach(DeviceConfig::new(7, DmaMask::BITS_32)).unwrap();
    let model = hv.add_device(7, 32);
    let (a, b) = ([0x11u8; 64], [0x22u8; 4000]);
    let mut segs = Vec::new();
    for cpu_only in [false, true] {
        let mut list = [SgEntry::to_device(&a), SgEntry::to_device(&b)];
        let n = if cpu_only {
            layer.map_sg_cpu(&dev, &mut list, DmaDirection::ToDevice, DmaAttrs::NONE)
        } else {
            layer.map_sg(&dev, &mut list, DmaDirection::ToDevice, DmaAttrs::NONE)
        }
        .unwrap();
        let mut seen = Vec::new();
        for seg in dma_segments(&list) {
            seen.extend(model.read(seg.addr.0, seg.len).unwrap());
        }
        assert_eq!(seen.len(), 4064);
        assert!(seen[..64].iter().all(|&x| x == 0x11) && seen[64..].iter().all(|&x| x == 0x22));
        segs.push((n, dma_segments(&list).count()));
        layer.unmap_sg(&dev, &mut list, DmaDirection::ToDevice, DmaAttrs::NONE).unwrap();
    }
    assert_eq!(segs[0], segs[1]);
    assert_eq!(layer.stats().slots_in_use, 0);
    assert_no_faults(hv);
}

#[test]
fn a_physical_or_p2p_entry_is_refused_with_nothing_mapped() {
    let (hv, layer) = guest(HvConfig::pseries(6 * GIB), &[(LOW_POOL, 256 * 1024)]);
    let dev = layer.attach(DeviceConfig::new(7, DmaMask::BITS_32)).unwrap();
    hv.add_device(7, 32);
    let data = [0x33u8; 512];
    let phys = hv.alloc(4096, Region::Low);
    let p2p = P2pSegment { provider: 3, bar: PhysAddr(0x2_0000_0000), len: 4096 };
    for second in 0..2 {
        let other = if second == 0 {
            // SAFETY: the test owns `phys`'s page and keeps it until the list is gone.
            unsafe { SgEntry::phys(PhysAddr(phys), 512) }
        } else {
            SgEntry::p2p(p2p)
        };
        let mut list = [SgEntry::to_device(&data), other];
        let e = layer.map_sg_cpu(&dev, &mut list, DmaDirection::ToDevice, DmaAttrs::NONE);
        assert_eq!(e, Err(DmaError::NotTranslatable));
        assert!(list.iter().all(|e| !e.is_mapped() && e.dma_segment().is_none()));
        assert_eq!(layer.stats().slots_in_use, 0);
        // The list is as it was: map_sg still maps the physical entry (P2P without a topology is
        // refused by map_sg too).
        let r = layer.map_sg(&dev, &mut list, DmaDirection::ToDevice, DmaAttrs::NONE);
        if second == 0 {
            r.unwrap();
            layer.unmap_sg(&dev, &mut list, DmaDirection::ToDevice, DmaAttrs::NONE).unwrap();
        } else {
            assert!(matches!(r, Err(DmaError::P2pUnsupported { .. })), "{r:?}");
        }
    }
    assert_eq!(layer.stats().slots_in_use, 0);
    assert_no_faults(hv);
}
