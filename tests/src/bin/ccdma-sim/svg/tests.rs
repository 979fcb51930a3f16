//! The drawing checked against the layer's own ranges: parse the SVG, compare every region.

use std::collections::BTreeSet;

use ccdma::iommu::{BusRange, IommuConfig};
use ccdma::{DeviceConfig, DmaMask, IommuPolicy, PhysAddr};
use ccdma_hv_model::{HvConfig, Region as Place, TceConfig, PAGE};
use ccdma_tests::{guest, HIGH_POOL, LOW_POOL, MIB};

use super::*;
use crate::args::{parse, Parsed};
use crate::transfer::Sim;

/// `(kind, start, end)` of every `<rect>` with `data-kind`, as a reader of the file finds them.
fn regions_in(svg_text: &str) -> Vec<(String, u64, u64)> {
    let hex = |v: &str| u64::from_str_radix(v.trim_start_matches("0x"), 16).expect("hex address");
    let mut out = Vec::new();
    for event in svg::read(svg_text).expect("the SVG parses") {
        if let svg::parser::Event::Tag("rect", _, attrs) = event {
            if let Some(kind) = attrs.get("data-kind") {
                let (start, end) = (hex(&attrs["data-start"]), hex(&attrs["data-end"]));
                out.push((kind.to_string(), start, end));
            }
        }
    }
    out
}

/// Draw each device of a guest and check the drawing against the layer's own ranges.
fn check_guest(iommu: Option<IommuPolicy>, masks: &[u32]) {
    let Ok(Parsed::Run(opts)) = parse(Vec::new()) else { panic!("default options") };
    let (hv, mut layer) = guest(HvConfig::pseries(6 << 30), &[(LOW_POOL, 4 * MIB), (HIGH_POOL, 16 * MIB)]);
    if let Some(policy) = iommu {
        hv.enable_iommu(TceConfig { reserved: vec![(0x10_0000, 0x1000)], ..TceConfig::default() });
        let page = hv.alloc(PAGE, Place::Low);
        let cfg = IommuConfig { policy, ..IommuConfig::premapped() }.with_list_page(PhysAddr(page));
        // SAFETY: the list page is a fresh allocation from the model that nothing else uses.
        unsafe { layer.enable_iommu(cfg, vec![BusRange::EMPTY; 8 * 512].leak()) }.unwrap();
    }
    let sim = Sim { opts: &opts, hv, layer };
    for (k, &bits) in masks.iter().enumerate() {
        let id = k as u32 + 1;
        match iommu {
            Some(_) => hv.add_iommu_device(id, bits),
            None => hv.add_device(id, bits),
        };
        let dev = sim.layer.attach(DeviceConfig::new(id, DmaMask::new(bits).unwrap())).unwrap();
        let (buf, coh) = (hv.alloc(PAGE, Place::High), hv.alloc(PAGE, Place::Low));
        let layer = &sim.layer;
        let checked = sim.hold_live(&dev, (buf, 4096), coh, |live| {
            let drawn = regions_in(&render(&[DeviceDrawing::capture(layer, &dev, "dev", live)]));
            let mut expected: BTreeSet<(String, u64, u64)> = BTreeSet::new();
            let (window, ddw) = layer.windows_of(&dev);
            for (kind, w) in [("window", window), ("ddw", ddw)] {
                if let Some(w) = w {
                    expected.insert((kind.into(), w.start, w.start + w.size));
                }
            }
            let mut ranges = vec![BusRange::EMPTY; 64];
            let n = layer.bus_ranges_of(&dev, &mut ranges);
            for r in &ranges[..n] {
                expected.insert((range_kind(r.kind).0.into(), r.start, r.end()));
            }
            for i in dev.pool_indices() {
                let bus = layer.pool_bus_of(&dev, i).expect("the device's pool has a bus address").0;
                let len = layer.pool(i).unwrap().0.len() as u64;
                if window.is_none() {
                    expected.insert(("pool".into(), bus, bus + len));
                } else if iommu == Some(IommuPolicy::Premapped) {
                    // Premapped: the pool's bus address starts a drawn pool range.
                    assert!(drawn.iter().any(|(k, s, e)| k == "pool" && *s <= bus && bus + len <= *e));
                }
            }
            // Every range the layer reports is drawn; the live buffers lie in a drawn range.
            let drawn_set: BTreeSet<(String, u64, u64)> = drawn.iter().cloned().collect();
            let missing: Vec<_> = expected.difference(&drawn_set).collect();
            assert!(missing.is_empty(), "{bits}-bit: not drawn: {missing:x?}\ndrawn: {drawn:x?}");
            for l in live {
                let holds = |(k, s, e): &&(String, u64, u64)| {
                    (k == l.kind || k == "pool") && *s <= l.bus && l.bus + l.len <= *e
                };
                assert!(
                    drawn.iter().any(|r| holds(&r)),
                    "{bits}-bit: live {} at {:#x} not drawn",
                    l.kind,
                    l.bus
                );
            }
            // Nothing else is drawn: every drawn range is the layer's, a live buffer, or the frame.
            for (k, s, e) in &drawn {
                let known = expected.contains(&(k.clone(), *s, *e))
                    || live.iter().any(|l| l.kind == k && l.bus == *s && l.bus + l.len == *e)
                    || (k == "bus" && window.is_none() && *s == 0);
                assert!(known, "{bits}-bit: drawn {k} {s:#x}..{e:#x} is not the layer's");
                if let Some(w) =
                    [window, ddw].into_iter().flatten().find(|w| w.start <= *s && *s < w.start + w.size)
                {
                    assert!(*e <= w.start + w.size, "{k} {s:#x}..{e:#x} leaves its window");
                }
            }
            drawn.len()
        });
        let (count, _) = checked.expect("hold a mapping and a coherent buffer");
        assert!(count >= 2, "{bits}-bit: a frame and at least one region");
        sim.layer.detach(dev).ok();
    }
}

#[test]
fn drawing_matches_the_layer_without_iommu() {
    check_guest(None, &[24, 32, 64]);
}

#[test]
fn drawing_matches_the_layer_premapped_with_ddw() {
    check_guest(Some(IommuPolicy::Premapped), &[24, 32, 64]);
}

#[test]
fn drawing_matches_the_layer_strict() {
    check_guest(Some(IommuPolicy::Strict), &[32, 64]);
}
