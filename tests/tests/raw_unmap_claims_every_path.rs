//! Issue 18 item 2: the raw face checks a caller's claim on every path. "A wrong size, direction or
//! device, a mapping owned by a `Mapping`, or an address that is not a live mapping is an error and
//! changes nothing" (the docs of `DmaLayer::unmap`), also on the paths without pool slots (direct,
//! the direct part of bounce-above-mask, trusted-direct, trusted-IOMMU).
//!
//! Each path x each bad claim: the error, then nothing changed (the device's live count, the layer's
//! slots, the model's TCE calls, fault log and what the device reaches; detach refused while the raw
//! mapping is live), then the honest unmap still works and a second one is refused.

mod iommu_support;

use ccdma::{
    BusAddr, Device, DeviceConfig, DmaAttrs, DmaDirection, DmaError, DmaMask, DmaPath, IommuPolicy, PhysAddr,
};
use ccdma_hv_model::{CallKind, HvConfig, Hypervisor, Region};
use ccdma_tests::*;
use iommu_support::{iommu_guest, Opts};

const DEV: u32 = 1;
const OTHER: u32 = 2;
const RAW_LEN: usize = 6000;
const SAFE_LEN: usize = 1000;

/// What must not move when a claim is refused.
#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    live_mappings: u64,
    slots_in_use: u64,
    unmaps: u64,
    hcalls: [u64; 4],
    faults: usize,
    reach: Vec<ccdma_hv_model::Reach>,
}

fn snapshot(hv: &Hypervisor, layer: &Layer, dev: &Device) -> Snapshot {
    let s = layer.stats();
    let kinds = [CallKind::PutTce, CallKind::GetTce, CallKind::PutTceIndirect, CallKind::StuffTce];
    Snapshot {
        live_mappings: dev.live_counts().mappings,
        slots_in_use: s.slots_in_use,
        unmaps: s.unmaps,
        hcalls: kinds.map(|k| hv.calls().count(k)),
        faults: hv.faults().len(),
        reach: hv.reachable(DEV),
    }
}

/// A buffer of guest RAM in `region` (with an odd page offset), filled with a pattern.
fn buffer(hv: &Hypervisor, len: usize, region: Region, seed: u64) -> u64 {
    let phys = hv.alloc(len as u64 + 8192, region) + 0x123;
    hv.memory().write(phys, &pattern(len, seed));
    phys
}

/// A guest with two devices on one path.
struct Env {
    hv: &'static Hypervisor,
    layer: Layer,
    dev: Device,
    other: Device,
    path: DmaPath,
    region: Region,
}

/// The kinds of path under test.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Direct,
    AboveMaskDirectPart,
    AboveMaskBounced,
    BounceAlways,
    TrustedDirect,
    TrustedIommu(IommuPolicy),
    Iommu(IommuPolicy),
}

fn env(kind: Kind) -> Env {
    let plain = |mask: DmaMask, path, region| {
        let (hv, layer) = guest(HvConfig::plain(6 * GIB), &[(LOW_POOL, 4 * MIB)]);
        hv.add_device(DEV, mask.bits());
        hv.add_device(OTHER, mask.bits());
        let dev = layer.attach(DeviceConfig::new(DEV, mask)).unwrap();
        let other = layer.attach(DeviceConfig::new(OTHER, mask)).unwrap();
        Env { hv, layer, dev, other, path, region }
    };
    let tdx = |accept: bool, path| {
        let (hv, layer) = guest(HvConfig::tdx(6 * GIB), &[(LOW_POOL, 4 * MIB)]);
        hv.add_device(DEV, 64);
        hv.add_device(OTHER, 64);
        hv.tdisp_bind(DEV);
        hv.tdisp_bind(OTHER);
        let mut dev = layer.attach(DeviceConfig::new(DEV, DmaMask::BITS_64)).unwrap();
        let mut other = layer.attach(DeviceConfig::new(OTHER, DmaMask::BITS_64)).unwrap();
        if accept {
            layer.accept(&mut dev).unwrap();
            layer.accept(&mut other).unwrap();
        }
        Env { hv, layer, dev, other, path, region: Region::High }
    };
    let iommu = |policy, accept: bool| {
        let g = iommu_guest(Opts::new(policy));
        g.hv.tdisp_bind(DEV);
        g.hv.tdisp_bind(OTHER);
        let mut dev = g.device(DEV, 64);
        let mut other = g.device(OTHER, 64);
        if accept {
            g.layer.accept(&mut dev).unwrap();
            g.layer.accept(&mut other).unwrap();
        }
        let path = g.layer.path_of(&dev);
        Env { hv: g.hv, layer: g.layer, dev, other, path, region: Region::High }
    };
    match kind {
        Kind::Direct => plain(DmaMask::BITS_64, DmaPath::Direct, Region::High),
        Kind::AboveMaskDirectPart => plain(DmaMask::BITS_32, DmaPath::BounceAboveMask, Region::Low),
        Kind::AboveMaskBounced => plain(DmaMask::BITS_32, DmaPath::BounceAboveMask, Region::High),
        Kind::BounceAlways => tdx(false, DmaPath::BounceAlways),
        Kind::TrustedDirect => tdx(true, DmaPath::TrustedDirect),
        Kind::TrustedIommu(p) => iommu(p, true),
        Kind::Iommu(p) => iommu(p, false),
    }
}

/// The bad claims, by name.
const CLAIMS: [&str; 9] = [
    "shorter length",
    "longer length",
    "wrong direction",
    "wrong device",
    "interior address",
    "interior address, a page on",
    "never mapped",
    "never mapped, another device",
    "owned by a Mapping",
];

/// Run each bad claim on a fresh guest of `kind`: a raw mapping of the device beside a `Mapping` of
/// it; the claim must be refused and change nothing, and the raw sync face must refuse it too.
/// Then the honest unmap works once, and detach is refused while the raw mapping is live. Fails
/// listing every claim that was accepted or changed something.
fn every_bad_claim(kind: Kind) {
    let mut accepted = Vec::new();
    for what in CLAIMS {
        let Env { hv, layer, dev, other, path, region } = env(kind);
        let layer = &layer;
        let model = hv.device(DEV);
        let raw_phys = buffer(hv, RAW_LEN, region, 1);
        let bi = DmaDirection::Bidirectional;
        // SAFETY: a fresh allocation, used by this raw mapping only, until its unmap below.
        let bus = unsafe { layer.map_phys(&dev, PhysAddr(raw_phys), RAW_LEN, bi, DmaAttrs::NONE) }.unwrap();
        let safe_phys = buffer(hv, SAFE_LEN, region, 2);
        // SAFETY: a fresh allocation.
        let safe_buf = unsafe { hv.slice_mut(safe_phys, SAFE_LEN) };
        let m = layer.map(&dev, safe_buf, DmaDirection::FromDevice, DmaAttrs::NONE).unwrap();
        let safe_bus = m.bus_addr();
        assert_eq!(model.read(bus.0, RAW_LEN).unwrap(), pattern(RAW_LEN, 1), "{kind:?}: the device reads");
        let never = BusAddr(buffer(hv, 4096, region, 3));
        let before = snapshot(hv, layer, &dev);
        assert_eq!(before.live_mappings, 2);
        let (d, b, len, dir) = match what {
            "shorter length" => (&dev, bus, RAW_LEN - 1, bi),
            "longer length" => (&dev, bus, RAW_LEN + 1, bi),
            "wrong direction" => (&dev, bus, RAW_LEN, DmaDirection::ToDevice),
            "wrong device" => (&other, bus, RAW_LEN, bi),
            "interior address" => (&dev, BusAddr(bus.0 + 1), RAW_LEN - 1, bi),
            "interior address, a page on" => (&dev, BusAddr(bus.0 + 4096), RAW_LEN - 4096, bi),
            "never mapped" => (&dev, never, 4096, bi),
            "never mapped, another device" => (&other, never, 4096, bi),
            _ => (&dev, safe_bus, SAFE_LEN, DmaDirection::FromDevice),
        };
        // SAFETY: every claim is wrong on purpose; a layer that accepted one would at worst end
        // this test's own raw mapping or the Mapping's entries (and the test fails).
        let r = unsafe { layer.unmap(d, b, len, dir, DmaAttrs::NONE) };
        let changed = snapshot(hv, layer, &dev) != before;
        if r.is_ok() || changed {
            accepted.push(format!("{what}: {r:?}, changed: {changed}"));
            continue;
        }
        if what == "owned by a Mapping" && path == DmaPath::TrustedIommu {
            assert_eq!(r, Err(DmaError::OwnedByMapping(safe_bus)), "{kind:?}: {what}");
        }
        // Still mapped: the device still reads the raw buffer.
        assert_eq!(model.read(bus.0, RAW_LEN).unwrap(), pattern(RAW_LEN, 1), "{kind:?}: {what}");
        // The raw sync face checks the same claims (a shorter range from the start, or one from an
        // interior offset, may name a valid part of the mapping; the others never do).
        if !what.starts_with("shorter") && !what.starts_with("interior") {
            // SAFETY: as above; a refused sync copies nothing.
            let s = unsafe { layer.sync_for_cpu(d, b, 0, len, dir) };
            if s.is_ok() || snapshot(hv, layer, &dev) != before {
                accepted.push(format!("{what} (sync_for_cpu): {s:?}"));
            }
        }
        m.unmap().unwrap();
        // The raw mapping is live: detach is refused.
        let dev = match layer.detach(dev) {
            Err(refused) => {
                assert!(matches!(refused.error, DmaError::Busy { live: 1 }), "{kind:?}: {:?}", refused.error);
                refused.value
            }
            Ok(()) => panic!("{kind:?}: detach succeeded while a raw mapping is live"),
        };
        // The honest unmap works, once.
        model.write(bus.0, b"from device").unwrap();
        // SAFETY: this test's raw mapping, unmapped once with its own claim.
        unsafe { layer.unmap(&dev, bus, RAW_LEN, bi, DmaAttrs::NONE) }.unwrap();
        assert_eq!(hv.memory().read(raw_phys, 11), b"from device");
        assert_eq!(dev.live_counts().mappings, 0);
        // SAFETY: unmapped already: refused.
        let again = unsafe { layer.unmap(&dev, bus, RAW_LEN, bi, DmaAttrs::NONE) };
        assert!(again.is_err(), "{kind:?}: double unmap returned {again:?}");
        assert_eq!(dev.live_counts().mappings, 0);
        assert_eq!(
            layer.stats().unmaps,
            before.unmaps + 2,
            "{kind:?}: the safe and the honest raw unmap only"
        );
        assert_eq!(hv.faults().len(), before.faults, "{kind:?}");
        layer.detach(dev).unwrap();
        layer.detach(other).unwrap();
    }
    assert!(
        accepted.is_empty(),
        "{kind:?}: claims accepted or that changed something:\n  {}",
        accepted.join("\n  ")
    );
}

#[test]
fn direct() {
    every_bad_claim(Kind::Direct);
}

#[test]
fn bounce_above_mask_direct_part() {
    every_bad_claim(Kind::AboveMaskDirectPart);
}

#[test]
fn bounce_above_mask_bounced_part() {
    every_bad_claim(Kind::AboveMaskBounced);
}

#[test]
fn bounce_always() {
    every_bad_claim(Kind::BounceAlways);
}

#[test]
fn trusted_direct() {
    every_bad_claim(Kind::TrustedDirect);
}

#[test]
fn trusted_iommu_premapped() {
    every_bad_claim(Kind::TrustedIommu(IommuPolicy::Premapped));
}

#[test]
fn trusted_iommu_strict() {
    every_bad_claim(Kind::TrustedIommu(IommuPolicy::Strict));
}

#[test]
fn iommu_premapped() {
    every_bad_claim(Kind::Iommu(IommuPolicy::Premapped));
}

#[test]
fn iommu_strict() {
    every_bad_claim(Kind::Iommu(IommuPolicy::Strict));
}

/// The raw records are fixed: when all are in use a raw map on a record-less path fails with
/// `RawRecordsFull` and maps nothing; safe-face maps need none; lent storage adds more.
#[test]
fn raw_records_are_bounded_and_lendable() {
    for kind in [Kind::Direct, Kind::TrustedDirect, Kind::TrustedIommu(IommuPolicy::Premapped)] {
        let Env { hv, mut layer, dev, other, region, .. } = env(kind);
        let (capacity, in_use) = layer.raw_records();
        assert_eq!((capacity, in_use), (ccdma::RAW_RECORDS, 0), "{kind:?}");
        let bi = DmaDirection::Bidirectional;
        let map = |layer: &Layer, seed: u64| {
            let phys = buffer(hv, 64, region, seed);
            // SAFETY: a fresh allocation, used by this raw mapping only.
            unsafe { layer.map_phys(&dev, PhysAddr(phys), 64, bi, DmaAttrs::NONE) }
        };
        let mut live: Vec<BusAddr> = (0..capacity as u64).map(|i| map(&layer, i).unwrap()).collect();
        let before = snapshot(hv, &layer, &dev);
        let full = map(&layer, 99);
        assert_eq!(full, Err(DmaError::RawRecordsFull { capacity }), "{kind:?}");
        assert_eq!(snapshot(hv, &layer, &dev), before, "{kind:?}: a refused map changes nothing");
        // The safe face takes no record.
        let safe_phys = buffer(hv, 64, region, 100);
        // SAFETY: a fresh allocation.
        let m = layer.map(&dev, unsafe { hv.slice_mut(safe_phys, 64) }, bi, DmaAttrs::NONE).unwrap();
        m.unmap().unwrap();
        // Lend eight more (no `&mut` while raw mappings are live is needed for anything else).
        let lent = vec![ccdma::RawRecord::EMPTY; 8].leak();
        layer.add_raw_records(lent).unwrap();
        assert_eq!(layer.raw_records(), (capacity + 8, capacity), "{kind:?}");
        for i in 0..8 {
            live.push(map(&layer, 200 + i).unwrap());
        }
        assert!(matches!(map(&layer, 300), Err(DmaError::RawRecordsFull { .. })), "{kind:?}");
        // Lending again while the lent records are live is refused and changes nothing.
        let refused = layer.add_raw_records(vec![ccdma::RawRecord::EMPTY; 64].leak()).unwrap_err();
        assert!(matches!(refused.error, DmaError::Busy { .. }), "{kind:?}");
        assert_eq!(layer.raw_records(), (capacity + 8, capacity + 8));
        for bus in live.drain(..) {
            // SAFETY: this test's raw mappings, each unmapped once.
            unsafe { layer.unmap(&dev, bus, 64, bi, DmaAttrs::NONE) }.unwrap();
        }
        assert_eq!(layer.raw_records().1, 0);
        assert_eq!(dev.live(), 0);
        assert_eq!(hv.faults().len(), 0, "{kind:?}");
        layer.detach(dev).unwrap();
        layer.detach(other).unwrap();
    }
}
