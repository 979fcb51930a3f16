//! Issue 18 item 11: an accepted device's entries cover whole IOMMU pages, so by default it reaches
//! the private bytes that share an IOMMU page with its buffer (the docs say so). With the device
//! option `bounce_partial_pages` (Linux dma-iommu's choice for untrusted devices) a buffer that does
//! not cover whole IOMMU pages is bounced through the pool instead, so the device reaches no private
//! byte outside its buffer: the model's log of private accesses proves it.

mod iommu_support;

use ccdma::{DeviceConfig, DmaAttrs, DmaDirection, DmaMask, DmaPath, IommuPolicy};
use ccdma_hv_model::Region;
use ccdma_tests::*;
use iommu_support::*;

const ACCEPTED: u32 = 1;

/// Map `len` bytes at page offset `off` for the accepted device; the device then reads the whole
/// IOMMU pages around its bus address (what a hostile device would try). Returns (bus, phys,
/// private bytes it reached outside the buffer, whether the mapping bounced through the pool).
fn probe(g: &IommuGuest, dev: &ccdma::Device, off: u64, len: usize) -> (u64, u64, u64, bool) {
    let base = g.hv.alloc(len as u64 + 2 * 4096, Region::High);
    let phys = base + off;
    // Secrets around the buffer, in the same pages.
    g.hv.memory().write(base, &vec![0xEE; len + 2 * 4096]);
    g.hv.memory().write(phys, &pattern(len, 1));
    // SAFETY: a fresh allocation used only by this mapping.
    let buf = unsafe { g.hv.slice_mut(phys, len) };
    let before = g.hv.private_accesses().len();
    let m = g.layer.map(dev, buf, DmaDirection::ToDevice, DmaAttrs::NONE).unwrap();
    let bus = m.bus_addr().0;
    let model = g.hv.device(ACCEPTED);
    assert_eq!(model.read(bus, len).unwrap(), pattern(len, 1));
    // A hostile device reads every byte of the IOMMU pages the mapping touches.
    let (first, last) = (bus & !0xfff, (bus + len as u64 - 1) & !0xfff);
    let mut at = first;
    while at <= last {
        let _ = model.read(at, 4096);
        at += 4096;
    }
    let outside: u64 = g.hv.private_accesses()[before..]
        .iter()
        .map(|a| {
            let (s, e) = (a.phys, a.phys + a.len as u64);
            let inside = s.max(phys).min(e.min(phys + len as u64));
            let inside_len = e.min(phys + len as u64).saturating_sub(inside);
            a.len as u64 - inside_len
        })
        .sum();
    let bounced = in_some_pool(&g.layer, bus, len) || g.hv.private_accesses().len() == before;
    m.unmap().unwrap();
    (bus, phys, outside, bounced)
}

#[test]
fn by_default_an_accepted_device_reaches_its_whole_iommu_pages() {
    let g = iommu_guest(Opts::new(IommuPolicy::Premapped));
    g.hv.tdisp_bind(ACCEPTED);
    let mut dev = g.device(ACCEPTED, 64);
    g.layer.accept(&mut dev).unwrap();
    let (bus, phys, outside, bounced) = probe(&g, &dev, 0x123, 64);
    assert!(!bounced && bus & 0xfff == phys & 0xfff);
    assert_eq!(outside, 4096 - 64, "the docs say so: the rest of the IOMMU page is reachable");
    g.layer.revoke(&mut dev).unwrap();
    g.layer.detach(dev).unwrap();
}

#[test]
fn with_bounce_partial_pages_no_private_byte_outside_the_buffer_is_reachable() {
    for policy in [IommuPolicy::Premapped, IommuPolicy::Strict] {
        let g = iommu_guest(Opts::new(policy));
        g.hv.tdisp_bind(ACCEPTED);
        g.hv.add_iommu_device(ACCEPTED, 64);
        let cfg = DeviceConfig::new(ACCEPTED, DmaMask::BITS_64).with_bounce_partial_pages(true);
        assert!(cfg.bounce_partial_pages);
        let mut dev = g.layer.attach(cfg).unwrap();
        g.layer.accept(&mut dev).unwrap();
        assert_eq!(dev.path(), DmaPath::TrustedIommu);
        let shared = g.hv.shared_pages();
        // Partial pages: bounced, nothing private reachable beyond the buffer.
        for (off, len) in [(0x123u64, 64usize), (0, 100), (0x800, 4096), (0xF00, 3 * 4096)] {
            let (_, _, outside, bounced) = probe(&g, &dev, off, len);
            assert!(bounced, "{policy:?} {off:#x}+{len}: a partial page must bounce");
            assert_eq!(outside, 0, "{policy:?} {off:#x}+{len}: private bytes outside the buffer reached");
        }
        // Whole pages: still mapped in place (no copy), and still nothing outside.
        let (bus, phys, outside, bounced) = probe(&g, &dev, 0, 2 * 4096);
        assert!(!bounced, "{policy:?}: whole pages map in place");
        assert_eq!((bus & 0xfff, phys & 0xfff), (0, 0));
        assert_eq!(outside, 0);
        assert_eq!(g.hv.shared_pages(), shared, "nothing was shared for the accepted device");
        assert_eq!(g.hv.tces_to_private(), 0);
        g.layer.revoke(&mut dev).unwrap();
        g.layer.detach(dev).unwrap();
    }
}
