//! Trusted device I/O (issue 14): a device the platform has accepted (TDISP/IDE) maps private memory
//! directly, beside untrusted devices that keep bouncing on the same layer. Every claim is checked on
//! the model: its fault log, its log of private accesses by accepted devices, its TCE tables and its
//! page states.

mod iommu_support;

use ccdma::{
    DeviceConfig, DmaAttrs, DmaDirection, DmaError, DmaMask, DmaPath, IommuPolicy, PathReason, PhysAddr,
    TrustState,
};
use ccdma_hv_model::{AccessKind, FaultReason, HvConfig, PrivateAccess, Region};
use ccdma_tests::*;
use iommu_support::*;

const ACCEPTED: u32 = 1;
const UNTRUSTED: u32 = 2;

/// Every private access of an accepted device lies inside one of `live` (phys, len) ranges, widened
/// to whole `page`s (an IOMMU entry exposes the page around the buffer; without an IOMMU the layer
/// hands out exact addresses, so `page` is 1 there).
#[track_caller]
fn assert_private_within(accesses: &[PrivateAccess], live: &[(u64, u64)], page: u64) {
    for a in accesses {
        let ok = live.iter().any(|&(p, l)| {
            let lo = p & !(page - 1);
            let hi = (p + l).next_multiple_of(page);
            a.phys >= lo && a.phys + a.len as u64 <= hi
        });
        assert!(ok, "accepted device reached private {a:?} outside its live mappings {live:x?}");
    }
}

/// Mixed layer without IOMMU (TDX style): one pool, one accepted and one untrusted device.
#[test]
fn mixed_layer_without_iommu() {
    let (hv, layer) = guest(HvConfig::tdx(6 * GIB), &[(LOW_POOL, 4 * MIB)]);
    let acc_model = hv.add_device(ACCEPTED, 64);
    let unt_model = hv.add_device(UNTRUSTED, 64);
    hv.tdisp_bind(ACCEPTED);
    let mut acc = layer.attach(DeviceConfig::new(ACCEPTED, DmaMask::BITS_64)).unwrap();
    let unt = layer.attach(DeviceConfig::new(UNTRUSTED, DmaMask::BITS_64)).unwrap();
    assert_eq!(acc.path(), DmaPath::BounceAlways);
    layer.accept(&mut acc).unwrap();
    assert_eq!(acc.trust(), TrustState::Accepted);
    assert_eq!(acc.path(), DmaPath::TrustedDirect);
    assert_eq!(layer.path_of(&acc), DmaPath::TrustedDirect);
    assert_eq!(layer.path_reason(&acc), Some(PathReason::Accepted { window: false }));
    assert_eq!(layer.path_of(&unt), DmaPath::BounceAlways);
    assert!(hv.is_accepted(ACCEPTED) && !hv.is_accepted(UNTRUSTED));

    let base = Baseline::take(hv, &layer);
    let shared_before = hv.shared_pages();
    let mut live = Vec::new();
    for (round, &len) in [64usize, 1500, 4096, 65536].iter().enumerate() {
        // Accepted, to the device: the bus address is the private buffer itself.
        let data = pattern(len, round as u64);
        let phys = hv.alloc(len as u64, Region::High);
        hv.memory().write(phys, &data);
        // SAFETY: a fresh allocation, used by this mapping only.
        let buf = unsafe { hv.slice_mut(phys, len) };
        let m = layer.map(&acc, buf, DmaDirection::ToDevice, DmaAttrs::NONE).unwrap();
        assert_eq!(m.bus_addr().0, phys, "accepted: bus address = the private page");
        assert!(!in_some_pool(&layer, m.bus_addr().0, len));
        live.push((phys, len as u64));
        assert_eq!(acc_model.read(m.bus_addr().0, len).unwrap(), data);
        m.unmap().unwrap();

        // Accepted, from the device.
        let phys = hv.alloc(len as u64, Region::High);
        // SAFETY: as above.
        let buf = unsafe { hv.slice_mut(phys, len) };
        let m = layer.map(&acc, buf, DmaDirection::FromDevice, DmaAttrs::NONE).unwrap();
        live.push((phys, len as u64));
        let wrote = pattern(len, 100 + round as u64);
        acc_model.write(m.bus_addr().0, &wrote).unwrap();
        m.unmap().unwrap();
        assert_eq!(hv.memory().read(phys, len), wrote);

        // Untrusted, both ways: bounced through the pool.
        let phys = hv.alloc(len as u64, Region::High);
        hv.memory().write(phys, &data);
        // SAFETY: as above.
        let buf = unsafe { hv.slice_mut(phys, len) };
        let m = layer.map(&unt, buf, DmaDirection::Bidirectional, DmaAttrs::NONE).unwrap();
        assert!(in_some_pool(&layer, m.bus_addr().0, len), "untrusted must bounce");
        assert_eq!(unt_model.read(m.bus_addr().0, len).unwrap(), data);
        unt_model.write(m.bus_addr().0, &wrote).unwrap();
        // The untrusted device aims at the private buffer itself: refused.
        assert!(unt_model.read(phys, len).is_err());
        m.unmap().unwrap();
        assert_eq!(hv.memory().read(phys, len), wrote);
    }
    // The accepted device moved everything with no bounce byte and no page shared.
    let s = layer.stats();
    let per_dev_bounced = 4; // the untrusted device's maps only
    assert_eq!(s.bounced_maps, per_dev_bounced);
    let untrusted_bytes: u64 = [64u64, 1500, 4096, 65536].iter().sum();
    assert_eq!(s.bytes_to_device, untrusted_bytes, "only the untrusted device's bytes were copied in");
    assert_eq!(s.bytes_from_device, untrusted_bytes, "only the untrusted device's bytes were copied out");
    assert_eq!(hv.shared_pages(), shared_before, "no page was shared for the accepted device");
    // Fault log: only the untrusted device's aims at private memory, all refused.
    let faults = hv.faults();
    assert_eq!(faults.len(), 4);
    assert!(faults.iter().all(|f| f.device == UNTRUSTED && f.reason == FaultReason::PrivateTarget));
    // The accepted device reached private memory only inside its own mappings; the untrusted never.
    let private = hv.private_accesses();
    assert_eq!(private.len(), 8);
    assert!(private.iter().all(|a| a.device == ACCEPTED));
    assert_private_within(&private, &live, 1);
    // Page by page: the accepted device touched no shared page, the untrusted one no private page.
    let (acc_t, unt_t) = (hv.page_touches(ACCEPTED), hv.page_touches(UNTRUSTED));
    assert_eq!(acc_t.shared, 0, "{acc_t:?}");
    assert!(acc_t.private >= 8 && unt_t.shared >= 8, "{acc_t:?} {unt_t:?}");
    assert_eq!(unt_t.private, 0, "{unt_t:?}");
    // Nothing left behind (the untrusted device's refused aims are the only faults, checked above).
    assert_eq!(layer.stats().slots_in_use, base.slots_in_use);
    assert_eq!((hv.shared_pages(), layer.stats().shared_pages), (base.shared_pages, base.layer_shared_pages));
    assert_eq!(acc.live(), 0);
    layer.detach(acc).unwrap();
    layer.detach(unt).unwrap();
}

/// Mixed layer behind the TCE IOMMU: the accepted device gets entries naming only its buffers' pages,
/// with the direction's permission, cleared at unmap; the untrusted device's window holds only the pool.
#[test]
fn mixed_layer_behind_the_iommu() {
    for policy in [IommuPolicy::Premapped, IommuPolicy::Strict] {
        let g = iommu_guest(Opts::new(policy));
        g.hv.tdisp_bind(ACCEPTED);
        let mut acc = g.device(ACCEPTED, 64);
        let unt = g.device(UNTRUSTED, 32);
        let untrusted_path = acc.path();
        g.layer.accept(&mut acc).unwrap();
        assert_eq!(acc.path(), DmaPath::TrustedIommu);
        assert_eq!(g.layer.path_reason(&acc), Some(PathReason::Accepted { window: true }));
        let acc_model = g.hv.device(ACCEPTED);
        let unt_model = g.hv.device(UNTRUSTED);
        let shared_before = g.hv.shared_pages();
        let stats_before = g.layer.stats();
        let mut live = Vec::new();
        for (round, &len) in [64usize, 1500, 4096, 10000].iter().enumerate() {
            let data = pattern(len, round as u64);
            // An odd offset inside the page, to see the entry name the page around it.
            let phys = g.hv.alloc(len as u64 + 4096, Region::High) + 0x123;
            g.hv.memory().write(phys, &data);
            // SAFETY: a fresh allocation, used by this mapping only.
            let buf = unsafe { g.hv.slice_mut(phys, len) };
            let m = g.layer.map(&acc, buf, DmaDirection::ToDevice, DmaAttrs::NONE).unwrap();
            live.push((phys, len as u64));
            let bus = m.bus_addr().0;
            assert_eq!(bus & 0xfff, 0x123, "the page offset is kept");
            // Its window: this buffer's pages (read only), plus the premapped pool (shared).
            let reach = g.hv.reachable(ACCEPTED);
            let private: Vec<_> =
                reach.iter().filter(|r| !(r.phys >= g.pool_range().0 && r.phys < g.pool_range().1)).collect();
            let pages = (phys + len as u64).div_ceil(4096) - phys / 4096;
            assert_eq!(private.len() as u64, pages, "{private:x?}");
            for r in &private {
                assert!(r.read && !r.write, "to-device: read permission only");
                assert!(r.phys >= phys & !0xfff && r.phys < phys + len as u64);
            }
            assert_eq!(acc_model.read(bus, len).unwrap(), data);
            // No write permission on a to-device mapping.
            assert!(acc_model.write(bus, &[0]).is_err());
            // The page after the mapping is not in the window.
            assert!(acc_model.read((bus | 0xfff) + 1 + 4096 * (pages - 1), 1).is_err());
            m.unmap().unwrap();
            // Cleared at unmap: the old bus address no longer translates.
            assert!(acc_model.read(bus, 1).is_err());

            // From the device.
            let phys = g.hv.alloc(len as u64, Region::High);
            // SAFETY: as above.
            let buf = unsafe { g.hv.slice_mut(phys, len) };
            let m = g.layer.map(&acc, buf, DmaDirection::FromDevice, DmaAttrs::NONE).unwrap();
            live.push((phys, len as u64));
            let wrote = pattern(len, 50 + round as u64);
            acc_model.write(m.bus_addr().0, &wrote).unwrap();
            m.unmap().unwrap();
            assert_eq!(g.hv.memory().read(phys, len), wrote);

            // The untrusted device bounces, and cannot reach the accepted device's buffer.
            let phys = g.hv.alloc(len as u64, Region::High);
            g.hv.memory().write(phys, &data);
            // SAFETY: as above.
            let buf = unsafe { g.hv.slice_mut(phys, len) };
            let m = g.layer.map(&unt, buf, DmaDirection::ToDevice, DmaAttrs::NONE).unwrap();
            assert_eq!(unt_model.read(m.bus_addr().0, len).unwrap(), data);
            g.assert_reach_within(UNTRUSTED, &[g.pool_range()]);
            m.unmap().unwrap();
        }
        let s = g.layer.stats();
        assert_eq!(
            s.bounced_maps - stats_before.bounced_maps,
            4,
            "{policy:?}: only the untrusted maps bounce"
        );
        // CC_SHARED: the accepted device's ring bounces through the pool like an untrusted mapping.
        let phys = g.hv.alloc(4096, Region::High);
        // SAFETY: as above.
        let buf = unsafe { g.hv.slice_mut(phys, 256) };
        let m = g.layer.map(&acc, buf, DmaDirection::FromDevice, DmaAttrs::CC_SHARED).unwrap();
        let (bus, pool) = (m.bus_addr().0, g.pool_range());
        let on_pool =
            g.hv.reachable(ACCEPTED)
                .into_iter()
                .any(|r| bus >= r.bus && bus < r.bus + r.len && r.phys >= pool.0 && r.phys < pool.1);
        assert!(on_pool, "{policy:?}: a CC_SHARED mapping lives in the pool");
        acc_model.write(bus, b"shared ring").unwrap();
        m.unmap().unwrap();
        assert_eq!(g.hv.memory().read(phys, 11), b"shared ring");
        assert_eq!(g.layer.stats().bounced_maps - s.bounced_maps, 1);
        assert_eq!(g.hv.shared_pages(), shared_before);
        let private = g.hv.private_accesses();
        assert!(private.iter().all(|a| a.device == ACCEPTED));
        assert_private_within(&private, &live, 4096);
        // Untrusted windows never name private memory (the model counts only untrusted devices).
        assert_eq!(g.hv.tces_to_private(), 0);
        assert!(g.hv.faults().iter().all(|f| f.device == ACCEPTED && f.reason != FaultReason::PrivateTarget));
        // Revoke: back to the untrusted path, the window as it was.
        g.layer.revoke(&mut acc).unwrap();
        assert_eq!(acc.path(), untrusted_path);
        assert!(!g.hv.is_accepted(ACCEPTED));
        g.assert_reach_within(ACCEPTED, &[g.pool_range()]);
        g.layer.detach(acc).unwrap();
        g.layer.detach(unt).unwrap();
    }
}

/// `CC_SHARED`: an accepted device still gets a shared (bounced) buffer when it asks for one, and a
/// shared coherent ring.
#[test]
fn accepted_device_can_ask_for_shared_buffers() {
    let (hv, layer) = guest(HvConfig::tdx(6 * GIB), &[(LOW_POOL, 4 * MIB)]);
    let model = hv.add_device(ACCEPTED, 64);
    hv.tdisp_bind(ACCEPTED);
    let mut acc = layer.attach(DeviceConfig::new(ACCEPTED, DmaMask::BITS_64)).unwrap();
    layer.accept(&mut acc).unwrap();
    let phys = hv.alloc(4096, Region::High);
    // SAFETY: fresh allocation.
    let buf = unsafe { hv.slice_mut(phys, 4096) };
    let m = layer.map(&acc, buf, DmaDirection::FromDevice, DmaAttrs::CC_SHARED).unwrap();
    assert!(in_some_pool(&layer, m.bus_addr().0, 4096), "CC_SHARED bounces");
    model.write(m.bus_addr().0, b"ring").unwrap();
    m.unmap().unwrap();
    assert_eq!(&hv.memory().read(phys, 4), b"ring");
    assert!(hv.private_accesses().is_empty());
    // Memory that is not guest RAM (no physical address) is bounced too.
    let mut heap = vec![3u8; 100];
    // SAFETY: `heap` outlives the mapping and is not touched until the unmap.
    let bus = unsafe { layer.map_ptr(&acc, heap.as_mut_ptr(), 100, DmaDirection::ToDevice, DmaAttrs::NONE) }
        .unwrap();
    assert!(in_some_pool(&layer, bus.0, 100));
    assert_eq!(model.read(bus.0, 100).unwrap(), heap);
    // SAFETY: the mapping just made.
    unsafe { layer.unmap(&acc, bus, 100, DmaDirection::ToDevice, DmaAttrs::NONE) }.unwrap();

    // Coherent: private by default (not shared), shared on request.
    let shared = hv.shared_pages();
    let p = hv.alloc(2 * 4096, Region::High);
    // SAFETY: fresh pages, ours until freed.
    let c = unsafe { layer.alloc_coherent_attrs(&acc, PhysAddr(p), 2, DmaAttrs::NONE) }.unwrap();
    assert_eq!(hv.shared_pages(), shared, "a private coherent buffer shares nothing");
    assert_eq!(c.bus_addr().0, p);
    model.write(c.bus_addr().0, b"private ring").unwrap();
    layer.free_coherent(&acc, c).unwrap();
    let q = hv.alloc(4096, Region::High);
    // SAFETY: as above.
    let c = unsafe { layer.alloc_coherent_attrs(&acc, PhysAddr(q), 1, DmaAttrs::CC_SHARED) }.unwrap();
    assert_eq!(hv.shared_pages(), shared + 1);
    layer.free_coherent(&acc, c).unwrap();
    assert_eq!(hv.shared_pages(), shared);
    assert_no_faults(hv);
}

/// Accept and revoke change the trust state only while the device is quiesced.
#[test]
fn accept_and_revoke_refuse_while_anything_is_live() {
    let g = iommu_guest(Opts::new(IommuPolicy::Premapped));
    g.hv.tdisp_bind(ACCEPTED);
    let mut dev = g.device(ACCEPTED, 64);
    let phys = g.hv.alloc(4096, Region::High);
    // SAFETY: a fresh page, lent to the device until the unmap below.
    let bus = unsafe { g.layer.map_phys(&dev, PhysAddr(phys), 512, DmaDirection::ToDevice, DmaAttrs::NONE) }
        .unwrap();
    assert_eq!(g.layer.accept(&mut dev), Err(DmaError::Busy { live: 1 }));
    assert_eq!(dev.trust(), TrustState::Untrusted);
    assert!(!g.hv.is_accepted(ACCEPTED), "the platform was not even asked");
    // SAFETY: the mapping made above.
    unsafe { g.layer.unmap(&dev, bus, 512, DmaDirection::ToDevice, DmaAttrs::NONE) }.unwrap();
    g.layer.accept(&mut dev).unwrap();

    // SAFETY: as above.
    let bus = unsafe { g.layer.map_phys(&dev, PhysAddr(phys), 512, DmaDirection::ToDevice, DmaAttrs::NONE) }
        .unwrap();
    assert_eq!(bus.0 & 0xfff, phys & 0xfff);
    assert_eq!(g.layer.revoke(&mut dev), Err(DmaError::Busy { live: 1 }));
    assert_eq!(dev.trust(), TrustState::Accepted);
    assert!(g.hv.is_accepted(ACCEPTED));
    // A coherent buffer keeps it busy too.
    // SAFETY: as above.
    unsafe { g.layer.unmap(&dev, bus, 512, DmaDirection::ToDevice, DmaAttrs::NONE) }.unwrap();
    let cp = g.hv.alloc(4096, Region::High);
    // SAFETY: a fresh page.
    let c = unsafe { g.layer.alloc_coherent(&dev, PhysAddr(cp), 1) }.unwrap();
    assert_eq!(g.layer.revoke(&mut dev), Err(DmaError::Busy { live: 1 }));
    g.layer.free_coherent(&dev, c).unwrap();
    g.layer.revoke(&mut dev).unwrap();
    assert_eq!(dev.trust(), TrustState::Untrusted);
    // Every private entry is gone: the window holds only the pool again.
    g.assert_reach_within(ACCEPTED, &[g.pool_range()]);
    g.layer.detach(dev).unwrap();
}

/// The guest never assumes acceptance: without the platform's yes the device stays untrusted.
#[test]
fn acceptance_is_the_platforms_answer() {
    let (hv, layer) = guest(HvConfig::tdx(6 * GIB), &[(LOW_POOL, 4 * MIB)]);
    hv.add_device(ACCEPTED, 64);
    let mut dev = layer.attach(DeviceConfig::new(ACCEPTED, DmaMask::BITS_64)).unwrap();
    // Not bound/running under TDISP: the platform refuses.
    let e = layer.accept(&mut dev).unwrap_err();
    assert!(matches!(e, DmaError::AcceptRefused { device: ACCEPTED, .. }), "{e:?}");
    assert_eq!(dev.trust(), TrustState::Untrusted);
    assert_eq!(dev.path(), DmaPath::BounceAlways);
    // The trusted flag of the config is no substitute.
    let mut cfg = DeviceConfig::new(3, DmaMask::BITS_64);
    cfg.trusted = true;
    hv.add_device(3, 64);
    let d3 = layer.attach(cfg).unwrap();
    assert_eq!(d3.trust(), TrustState::Untrusted);
    assert_eq!(d3.path(), DmaPath::BounceAlways);
    // A guest that is not confidential has nothing to accept.
    let (phv, player) = guest(HvConfig::plain(GIB), &[]);
    phv.add_device(5, 64);
    phv.tdisp_bind(5);
    let mut pd = player.attach(DeviceConfig::new(5, DmaMask::BITS_64)).unwrap();
    assert_eq!(player.accept(&mut pd), Err(DmaError::TrustUnavailable));
}

/// The platform revokes an accepted device mid-flight (TDISP error): its next access faults, and the
/// guest's unmap and revoke still complete with nothing left behind.
#[test]
fn revoke_mid_flight_is_contained() {
    // Behind the IOMMU.
    let g = iommu_guest(Opts::new(IommuPolicy::Premapped));
    g.hv.tdisp_bind(ACCEPTED);
    let mut dev = g.device(ACCEPTED, 64);
    g.layer.accept(&mut dev).unwrap();
    let model = g.hv.device(ACCEPTED);
    let phys = g.hv.alloc(8192, Region::High);
    // SAFETY: fresh pages lent to the device until the unmap.
    let bus =
        unsafe { g.layer.map_phys(&dev, PhysAddr(phys), 8192, DmaDirection::FromDevice, DmaAttrs::NONE) }
            .unwrap();
    model.write(bus.0, &[7; 4096]).unwrap();
    g.hv.tdisp_error(ACCEPTED);
    let f = model.write(bus.0 + 4096, &[8; 4096]).unwrap_err();
    assert_eq!((f.device, f.reason, f.kind), (ACCEPTED, FaultReason::PrivateTarget, AccessKind::Write));
    assert_eq!(g.hv.memory().read(phys + 4096, 1), [0], "the refused write changed nothing");
    // The stale entries name private memory of a device that is no longer trusted: the model says so
    // until the guest unmaps.
    assert_eq!(g.hv.tces_to_private(), 2);
    // SAFETY: the mapping made above.
    unsafe { g.layer.unmap(&dev, bus, 8192, DmaDirection::FromDevice, DmaAttrs::NONE) }.unwrap();
    assert_eq!(g.hv.tces_to_private(), 0);
    g.layer.revoke(&mut dev).unwrap();
    assert_eq!(dev.path(), DmaPath::IommuDdw);
    // Back to bouncing.
    // SAFETY: as above.
    let bus = unsafe { g.layer.map_phys(&dev, PhysAddr(phys), 64, DmaDirection::ToDevice, DmaAttrs::NONE) }
        .unwrap();
    assert!(bus.0 >= 1 << 59, "bounced through the pool in the DDW");
    // SAFETY: as above.
    unsafe { g.layer.unmap(&dev, bus, 64, DmaDirection::ToDevice, DmaAttrs::NONE) }.unwrap();
    g.layer.detach(dev).unwrap();

    // Without IOMMU: the guest revokes after unmap while the device still holds the address.
    let (hv, layer) = guest(HvConfig::tdx(6 * GIB), &[(LOW_POOL, 4 * MIB)]);
    let model = hv.add_device(ACCEPTED, 64);
    hv.tdisp_bind(ACCEPTED);
    let mut dev = layer.attach(DeviceConfig::new(ACCEPTED, DmaMask::BITS_64)).unwrap();
    layer.accept(&mut dev).unwrap();
    let phys = hv.alloc(4096, Region::High);
    // SAFETY: a fresh page.
    let bus = unsafe { layer.map_phys(&dev, PhysAddr(phys), 4096, DmaDirection::FromDevice, DmaAttrs::NONE) }
        .unwrap();
    model.write(bus.0, &[1; 16]).unwrap();
    // SAFETY: the mapping made above.
    unsafe { layer.unmap(&dev, bus, 4096, DmaDirection::FromDevice, DmaAttrs::NONE) }.unwrap();
    layer.revoke(&mut dev).unwrap();
    let f = model.write(bus.0, &[2; 16]).unwrap_err();
    assert_eq!(f.reason, FaultReason::PrivateTarget);
    assert_eq!(hv.memory().read(phys, 16), [1; 16]);
    assert_private_within(&hv.private_accesses(), &[(phys, 4096)], 1);
    assert_eq!(hv.private_accesses().len(), 1);
}

/// A private mapping whose entries could not be written nor rolled back leaves a quarantined range
/// naming private pages in the accepted device's window. Revoke clears it before the device is
/// untrusted again, and refuses (still accepted) while it cannot.
#[test]
fn revoke_clears_private_entries_a_failed_map_left() {
    use ccdma::iommu::hcall::H_HARDWARE;
    use ccdma_hv_model::{CallKind, Injection};
    let g = iommu_guest(Opts::new(IommuPolicy::Premapped));
    g.hv.tdisp_bind(ACCEPTED);
    let mut dev = g.device(ACCEPTED, 64);
    g.layer.accept(&mut dev).unwrap();
    let phys = g.hv.alloc(3 * 4096, Region::High);
    // Private entries go one H_PUT_TCE each (never through the list page): the second one fails.
    let second = g.hv.calls().count(CallKind::PutTce) + 2;
    g.hv.calls().inject_at(CallKind::PutTce, second, Injection::Fail(H_HARDWARE));
    g.hv.calls().inject_next(CallKind::StuffTce, Injection::Fail(H_HARDWARE));
    // SAFETY: fresh pages; the map fails, so nothing stays lent.
    let e =
        unsafe { g.layer.map_phys(&dev, PhysAddr(phys), 3 * 4096, DmaDirection::ToDevice, DmaAttrs::NONE) }
            .unwrap_err();
    assert!(matches!(e, DmaError::Iommu(_)), "{e:?}");
    assert_eq!(dev.live(), 0);
    let private_entries = |g: &IommuGuest| {
        g.hv.reachable(ACCEPTED).iter().filter(|r| r.phys >= phys && r.phys < phys + 3 * 4096).count()
    };
    assert_eq!(private_entries(&g), 1, "one entry on a private page was left behind");
    // Revoke cannot clear it yet: refused, still accepted.
    g.hv.calls().inject_next(CallKind::StuffTce, Injection::Fail(H_HARDWARE));
    assert!(matches!(g.layer.revoke(&mut dev), Err(DmaError::Iommu(_))));
    assert_eq!(dev.trust(), TrustState::Accepted);
    assert!(g.hv.is_accepted(ACCEPTED));
    // Then it can: the entry is gone before the device is untrusted.
    g.layer.revoke(&mut dev).unwrap();
    assert_eq!(private_entries(&g), 0);
    assert_eq!(g.hv.tces_to_private(), 0);
    g.assert_reach_within(ACCEPTED, &[g.pool_range()]);
    assert_eq!(g.layer.iommu_stats().live_tces, g.hv.tce_counters().live_entries);
    g.layer.detach(dev).unwrap();
}

/// Detach revokes an accepted device at the platform; a deferred device is attached by accept.
#[test]
fn detach_revokes_and_accept_attaches_a_deferred_device() {
    let g = iommu_guest(Opts::new(IommuPolicy::Premapped));
    g.hv.tdisp_bind(ACCEPTED);
    g.hv.add_iommu_device(ACCEPTED, 48);
    let cfg = DeviceConfig::new(ACCEPTED, DmaMask::new(48).unwrap()).with_deferred_attach(true);
    let mut dev = g.layer.attach(cfg).unwrap();
    assert_eq!(g.layer.path_of(&dev), DmaPath::IommuDeferred);
    g.layer.accept(&mut dev).unwrap();
    assert_eq!(g.layer.path_of(&dev), DmaPath::TrustedIommu);
    let phys = g.hv.alloc(4096, Region::High);
    // SAFETY: a fresh page.
    let buf = unsafe { g.hv.slice_mut(phys, 4096) };
    let mut m = g.layer.map(&dev, buf, DmaDirection::FromDevice, DmaAttrs::NONE).unwrap();
    g.hv.device(ACCEPTED).write(m.bus_addr().0 + 10, b"xyz").unwrap();
    m.sync_for_cpu(10, 3).unwrap();
    assert_eq!(&m.buffer()[10..13], b"xyz");
    assert_eq!(m.sync_for_cpu(4000, 200), Err(DmaError::OutOfRange { offset: 4000, mapped: 4096 }));
    m.unmap().unwrap();
    g.layer.detach(dev).unwrap();
    assert!(!g.hv.is_accepted(ACCEPTED), "detach revoked it at the platform");
    assert_eq!(g.hv.tces_to_private(), 0);
}

/// Two mappings on one private page get entries of their own; unmapping one leaves the other's, and
/// `min_align_mask` bits survive on the trusted IOMMU path as on the strict one.
#[test]
fn private_entries_are_per_mapping() {
    let g = iommu_guest(Opts::new(IommuPolicy::Strict));
    g.hv.tdisp_bind(ACCEPTED);
    g.hv.add_iommu_device(ACCEPTED, 64);
    let cfg = DeviceConfig::new(ACCEPTED, DmaMask::BITS_64).with_min_align_mask(0x3fff);
    let mut dev = g.layer.attach(cfg).unwrap();
    g.layer.accept(&mut dev).unwrap();
    let model = g.hv.device(ACCEPTED);
    let page = g.hv.alloc(5 * 4096, Region::High) + 0x2000;
    let (a, b) = (page + 0x100, page + 0x800);
    // SAFETY: two disjoint ranges of a fresh allocation, each lent to one mapping.
    let ba =
        unsafe { g.layer.map_phys(&dev, PhysAddr(a), 64, DmaDirection::ToDevice, DmaAttrs::NONE) }.unwrap();
    // SAFETY: as above.
    let bb =
        unsafe { g.layer.map_phys(&dev, PhysAddr(b), 64, DmaDirection::FromDevice, DmaAttrs::NONE) }.unwrap();
    assert_eq!((ba.0 & 0x3fff, bb.0 & 0x3fff), (a & 0x3fff, b & 0x3fff), "min_align_mask bits kept");
    assert_ne!(ba.0 & !0xfff, bb.0 & !0xfff, "each mapping has its own entry");
    let entries: Vec<_> = g.hv.reachable(ACCEPTED).into_iter().filter(|r| r.phys == page).collect();
    assert_eq!(entries.len(), 2);
    assert!(entries.iter().any(|r| r.read && !r.write) && entries.iter().any(|r| !r.read && r.write));
    // SAFETY: the first mapping made above.
    unsafe { g.layer.unmap(&dev, ba, 64, DmaDirection::ToDevice, DmaAttrs::NONE) }.unwrap();
    assert_eq!(model.read(ba.0, 1).unwrap_err().reason, FaultReason::NoEntry);
    model.write(bb.0, b"still mine").unwrap();
    // A wrong size at unmap is refused and changes nothing.
    // SAFETY: the second mapping, named with a size larger than its entry.
    let e = unsafe { g.layer.unmap(&dev, bb, 8192, DmaDirection::FromDevice, DmaAttrs::NONE) }.unwrap_err();
    assert!(matches!(e, DmaError::SizeMismatch { .. }), "{e:?}");
    // SAFETY: the second mapping.
    unsafe { g.layer.unmap(&dev, bb, 64, DmaDirection::FromDevice, DmaAttrs::NONE) }.unwrap();
    assert_eq!(g.hv.memory().read(b, 10), b"still mine");
    assert!(g.hv.reachable(ACCEPTED).is_empty(), "strict: nothing left in the window");
    g.layer.detach(dev).unwrap();
    assert!(g.hv.faults().iter().all(|f| f.reason == FaultReason::NoEntry));
}
