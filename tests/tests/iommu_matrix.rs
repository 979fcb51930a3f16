//! The IOMMU matrix: masks {24, 31, 32, 40, 48, 64} x {DDW available, DDW unavailable, indirect call
//! disabled} x {premapped, strict}. For each: the expected path, exact data each way (and sub-range
//! syncs), and the model's proof of what the device can reach: only the pool and coherent buffers
//! (premapped) or only live mappings with their direction's permission (strict); an unmapped bus
//! address faults in strict mode; counters back to baseline at the end.

mod iommu_support;

use ccdma::{DmaAttrs, DmaDirection, DmaPath, IommuPolicy, PathReason, PhysAddr};
use ccdma_hv_model::{AccessKind, CallKind, FaultReason, Region};
use ccdma_tests::*;
use iommu_support::*;

const MASKS: [u32; 6] = [24, 31, 32, 40, 48, 64];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Firmware {
    DdwAvailable,
    DdwUnavailable,
    IndirectDisabled,
}

fn opts(policy: IommuPolicy, fw: Firmware) -> Opts {
    let mut o = Opts::new(policy);
    o.ddw = fw != Firmware::DdwUnavailable;
    o.indirect = fw != Firmware::IndirectDisabled;
    o
}

fn run_case(policy: IommuPolicy, fw: Firmware, bits: u32) {
    let what = format!("{policy:?} / {fw:?} / {bits}-bit");
    let o = opts(policy, fw);
    let mut g = iommu_guest(o);
    let hv = g.hv;
    let baseline_shared = hv.shared_pages();
    let id = 0x100 + bits;
    let dev = g.device(id, bits);
    let layer = &g.layer;
    let d = hv.device(id);
    let path = layer.path_of(&dev);
    assert_eq!(path, expected_path(&o, bits), "{what}: path");
    assert_eq!(dev.path(), path, "{what}: the device handle names the same path");
    let reason = layer.path_reason(&dev).unwrap();
    match (policy, path) {
        (IommuPolicy::Strict, _) => assert_eq!(reason, PathReason::StrictPolicy, "{what}"),
        (_, DmaPath::IommuDdw) => assert_eq!(reason, PathReason::Ddw, "{what}"),
        (_, DmaPath::IommuPremapped) => assert!(matches!(reason, PathReason::DefaultWindow(_)), "{what}"),
        (_, DmaPath::IommuStrict) => assert!(matches!(reason, PathReason::PoolsDoNotFit(_)), "{what}"),
        _ => unreachable!(),
    }
    let mask = ccdma::DmaMask::new(bits).unwrap();

    // A coherent buffer: shared, mapped below the coherent mask.
    let coh_phys = hv.alloc(2 * 4096, Region::Low);
    // SAFETY: a fresh allocation the test gives to the layer until free.
    let coh = unsafe { layer.alloc_coherent(&dev, PhysAddr(coh_phys), 2) }.unwrap();
    assert!(mask.covers(coh.bus_addr().0, 8192), "{what}: coherent bus {:#x}", coh.bus_addr().0);
    d.write(coh.bus_addr().0, &pattern(8192, 9)).unwrap();
    assert_eq!(hv.memory().read(coh_phys, 8192), pattern(8192, 9), "{what}: coherent bytes");

    // Streaming: to-device, from-device, bidirectional with sub-range syncs.
    let len = 10_000;
    let src = hv.alloc(len as u64, Region::High);
    let dst = hv.alloc(len as u64, Region::High);
    let bid = hv.alloc(len as u64, Region::High);
    // SAFETY: fresh, distinct allocations.
    let (sbuf, dbuf, bbuf) =
        unsafe { (hv.slice_mut(src, len), hv.slice_mut(dst, len), hv.slice_mut(bid, len)) };
    sbuf.copy_from_slice(&pattern(len, 1));
    bbuf.copy_from_slice(&pattern(len, 3));
    let calls_before = g.tce_calls();
    let to = layer.map_to_device(&dev, sbuf, DmaAttrs::NONE).unwrap();
    let mut from = layer.map(&dev, dbuf, DmaDirection::FromDevice, DmaAttrs::NONE).unwrap();
    let mut both = layer.map(&dev, bbuf, DmaDirection::Bidirectional, DmaAttrs::NONE).unwrap();
    for m in [to.bus_addr(), from.bus_addr(), both.bus_addr()] {
        assert!(mask.covers(m.0, len as u64), "{what}: bus {m} above the mask");
    }
    if path != DmaPath::IommuStrict {
        assert_eq!(g.tce_calls(), calls_before, "{what}: premapped maps must make no hypercall");
    }
    assert_eq!(d.read(to.bus_addr().0, len).unwrap(), pattern(len, 1), "{what}: to-device bytes");
    // The from-device slot is zero-filled (read through the window's own translation: in strict mode
    // the device itself may not read a from-device mapping).
    let from_phys = phys_of(hv, id, from.bus_addr().0);
    assert_eq!(hv.memory().read(from_phys, len), vec![0; len], "{what}: from-device zero-filled");
    d.write(from.bus_addr().0, &pattern(len, 2)).unwrap();
    assert_eq!(d.read(both.bus_addr().0, len).unwrap(), pattern(len, 3), "{what}: bidirectional in");
    d.write(both.bus_addr().0 + 100, &[0xAB; 50]).unwrap();
    both.sync_for_cpu(100, 50).unwrap();
    assert_eq!(&both.buffer()[100..150], &[0xAB; 50][..], "{what}: sub-range sync for cpu");
    from.sync_for_cpu(0, 10).unwrap();
    assert_eq!(&from.buffer()[..10], &pattern(len, 2)[..10], "{what}: sub-range sync");

    let pool = g.pool_range();
    let coh_range = (coh_phys, coh_phys + 8192);
    if path == DmaPath::IommuStrict {
        // Exactly the live mappings (whole IOMMU pages) and the coherent buffer, with their permission.
        let reach = g.assert_reach_within(id, &[pool, coh_range]);
        let pages_of = |bus: u64| (bus & !4095..(bus + len as u64).div_ceil(4096) * 4096).step_by(4096);
        let expect: usize = 3 * pages_of(to.bus_addr().0).count() + 2;
        assert_eq!(reach.len(), expect, "{what}: strict reach is the mappings and the coherent buffer");
        for p in pages_of(to.bus_addr().0) {
            let r = reach.iter().find(|r| r.bus == p).unwrap();
            assert!(r.read && !r.write, "{what}: to-device page {p:#x} must be read-only");
        }
        for p in pages_of(from.bus_addr().0) {
            let r = reach.iter().find(|r| r.bus == p).unwrap();
            assert!(!r.read && r.write, "{what}: from-device page {p:#x} must be write-only");
        }
        hv.clear_faults();
        assert!(d.write(to.bus_addr().0, &[1]).is_err());
        assert!(d.read(from.bus_addr().0, 1).is_err());
        let f = hv.faults();
        assert_eq!(f.len(), 2);
        assert!(f.iter().all(|f| f.reason == FaultReason::Permission), "{what}: {f:?}");
        hv.clear_faults();
    } else {
        // The pool (whole) and the coherent buffer, nothing else.
        let reach = g.assert_reach_within(id, &[pool, coh_range]);
        let pool_bytes: u64 =
            reach.iter().filter(|r| r.phys >= pool.0 && r.phys < pool.1).map(|r| r.len).sum();
        assert_eq!(pool_bytes, o.pool_len, "{what}: the whole pool is in the window");
        if path == DmaPath::IommuDdw {
            assert!(reach.iter().any(|r| r.len == 16 * MIB), "{what}: DDW uses 16 MiB pages for this pool");
        }
    }
    let (to_bus, from_bus) = (to.bus_addr(), from.bus_addr());
    to.unmap().unwrap();
    from.unmap().unwrap();
    both.unmap().unwrap();
    assert_eq!(hv.memory().read(dst, len), pattern(len, 2), "{what}: from-device bytes back");
    let mut b = pattern(len, 3);
    b[100..150].fill(0xAB);
    assert_eq!(hv.memory().read(bid, len), b, "{what}: bidirectional bytes back");
    if path == DmaPath::IommuStrict {
        hv.clear_faults();
        assert!(d.read(to_bus.0, 1).is_err(), "{what}: unmapped bus address must fault");
        assert!(d.write(from_bus.0, &[0]).is_err(), "{what}: unmapped bus address must fault");
        assert!(hv.faults().iter().all(|f| f.reason == FaultReason::NoEntry), "{what}: {:?}", hv.faults());
        assert_eq!(hv.faults().len(), 2);
        hv.clear_faults();
        assert_eq!(hv.reachable(id).len(), 2, "{what}: only the coherent buffer stays reachable");
    }
    // Nothing private anywhere, and the private originals are not reachable by bus = phys.
    assert!(!d.probe(src, AccessKind::Read));
    hv.clear_faults();
    let coh_bus = coh.bus_addr();
    layer.free_coherent(&dev, coh).unwrap();
    assert!(d.read(coh_bus.0, 1).is_err(), "{what}: a freed coherent buffer must fault");
    hv.clear_faults();
    assert_eq!(hv.private_faults(), 0);

    // Call pattern of the firmware variant.
    let calls = hv.calls();
    if fw == Firmware::IndirectDisabled {
        assert_eq!(calls.count(CallKind::PutTceIndirect), 0, "{what}");
        assert!(calls.count(CallKind::PutTce) > 0, "{what}");
    } else {
        assert!(calls.count(CallKind::PutTceIndirect) > 0, "{what}");
    }
    if bits == 64 && policy == IommuPolicy::Premapped {
        assert_eq!(calls.count(CallKind::DdwCreate), u64::from(fw != Firmware::DdwUnavailable), "{what}");
    }

    // Teardown: back to the baseline everywhere.
    assert_eq!(layer.stats().slots_in_use, 0);
    layer.detach(dev).unwrap();
    assert_eq!(hv.tce_counters().live_entries, 0, "{what}: live TCEs after detach");
    assert_eq!(layer.iommu_stats().live_tces, 0, "{what}");
    assert_eq!(hv.tce_counters().ddws, 0, "{what}: DDW removed");
    assert_eq!(layer.live_bus_ranges(), 0);
    g.layer.disable_iommu().unwrap();
    assert_eq!(hv.shared_pages(), baseline_shared - 1, "{what}: list page unshared");
    g.layer.release_pools().unwrap();
    assert_eq!(hv.shared_pages(), 0);
    assert_eq!(hv.faults().len(), 0);
}

/// The guest physical address the device's window translates `bus` to.
fn phys_of(hv: &ccdma_hv_model::Hypervisor, id: u32, bus: u64) -> u64 {
    let r = hv.reachable(id).into_iter().find(|r| bus >= r.bus && bus < r.bus + r.len).expect("no entry");
    r.phys + (bus - r.bus)
}

fn run_policy(policy: IommuPolicy) {
    for fw in [Firmware::DdwAvailable, Firmware::DdwUnavailable, Firmware::IndirectDisabled] {
        for bits in MASKS {
            run_case(policy, fw, bits);
        }
    }
}

#[test]
fn matrix_premapped() {
    run_policy(IommuPolicy::Premapped);
}

#[test]
fn matrix_strict() {
    run_policy(IommuPolicy::Strict);
}
