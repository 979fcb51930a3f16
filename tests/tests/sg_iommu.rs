//! Scatter-gather behind the TCE IOMMU: one bus range and one batch of entries per strict list,
//! merging of runs that meet on an IOMMU page, host-bridge P2P segments through the window on both
//! policies, bus-address P2P lists with no allocation at all, injected hypercall failures, deferred
//! attach and detach.

mod sg_common;

use ccdma::iommu::hcall::H_PARAMETER;
use ccdma::iommu::{BusRange, RangeKind};
use ccdma::sg::{dma_segments, P2pSegment, SgEntry, SgOptions};
use ccdma::{
    DeviceConfig, DmaAttrs, DmaDirection, DmaError, DmaMask, DmaPath, IommuConfig, IommuError, PhysAddr,
};
use ccdma_hv_model::p2p::{Bar, PciTopology};
use ccdma_hv_model::{CallKind, FaultReason, Hypervisor, Injection, PageState, Region};
use ccdma_tests::*;
use sg_common::*;

const ID: u32 = 7;

fn spec(len: usize, page_offset: usize) -> Spec {
    Spec { len, page_offset, high: true, phys: false, follows: false }
}

fn sg_ranges(layer: &Layer, dev: &ccdma::Device) -> Vec<BusRange> {
    let mut out = vec![BusRange::EMPTY; 64];
    let n = layer.bus_ranges_of(dev, &mut out);
    out[..n].iter().copied().filter(|r| r.kind == RangeKind::SgList).collect()
}

fn put_calls(hv: &Hypervisor) -> u64 {
    hv.calls().count(CallKind::PutTce) + hv.calls().count(CallKind::PutTceIndirect)
}

#[test]
fn strict_runs_that_meet_on_a_page_merge_in_one_range() {
    let env = Env::new(PathKind::IommuStrict);
    let dev = env.attach(env.config());
    // Three 200 KiB page-aligned buffers: too much for one run (256 KiB), so three runs, each whole
    // pages; laid out back to back in one range they form one segment.
    let specs = [spec(200 * 1024, 0), spec(200 * 1024, 0), spec(200 * 1024, 0)];
    let inputs = lay_out(env.hv, &specs, 1);
    let puts = put_calls(env.hv);
    let mut list = entries(env.hv, &inputs);
    let n = env.layer.map_sg(&dev, &mut list, DmaDirection::ToDevice, DmaAttrs::NONE).unwrap();
    assert_eq!(n, 1);
    assert_eq!(list[0].dma_segment().unwrap().len, 600 * 1024);
    assert_eq!(env.layer.stats().slots_in_use, 3 * 100);
    let ranges = sg_ranges(env.layer, &dev);
    assert_eq!(ranges.len(), 1);
    assert_eq!(ranges[0].len, 600 * 1024);
    assert_eq!(put_calls(env.hv) - puts, 1, "150 entries in one indirect call");
    assert_eq!(env.hv.reachable(ID).len(), 150);
    let seg = list[0].dma_segment().unwrap();
    assert_eq!(env.device().read(seg.addr.0, seg.len).unwrap(), guest_stream(env.hv, &inputs));
    // The single-mapping face cannot touch the list's range.
    // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
    assert_eq!(
        // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
        unsafe { env.layer.unmap(&dev, seg.addr, seg.len, DmaDirection::ToDevice, DmaAttrs::NONE) },
        Err(DmaError::UnknownMapping(seg.addr))
    );
    // Nor can detach while the list is mapped.
    let dev = env.layer.detach(dev).unwrap_err().value;
    env.layer.unmap_sg(&dev, &mut list, DmaDirection::ToDevice, DmaAttrs::NONE).unwrap();
    assert!(env.hv.reachable(ID).is_empty() && sg_ranges(env.layer, &dev).is_empty());
    assert_eq!(env.layer.stats().slots_in_use, 0);
    assert_eq!(env.layer.iommu_stats().live_tces, 0);
    // Without coalescing: still one range, three segments.
    let mut list = entries(env.hv, &inputs);
    let opts = SgOptions { coalesce: false, p2p: None };
    assert_eq!(env.layer.map_sg_with(&dev, &mut list, DmaDirection::ToDevice, DmaAttrs::NONE, &opts), Ok(3));
    assert_eq!(sg_ranges(env.layer, &dev).len(), 1);
    env.layer.unmap_sg(&dev, &mut list, DmaDirection::ToDevice, DmaAttrs::NONE).unwrap();
    env.detach(dev);
    assert_no_faults(env.hv);
}

#[test]
fn strict_min_align_above_the_iommu_page_and_boundary_leave_holes() {
    let env = Env::new(PathKind::IommuStrict);
    // NVMe-like: 16 KiB of preserved bits, 64 KiB boundary; buffers at scattered offsets.
    let cfg = env.config().with_min_align_mask(0x3fff).with_segment_boundary_mask(0xffff);
    let specs: Vec<Spec> = (0..8).map(|k| spec(3000 + 1000 * k, (k * 1234) % 4096)).collect();
    for dir in [DmaDirection::ToDevice, DmaDirection::FromDevice, DmaDirection::Bidirectional] {
        run_list(&env, cfg, &specs, dir, DmaAttrs::NONE, true, 2).unwrap();
    }
    assert_eq!(env.layer.iommu_stats().live_tces, 0);
}

/// Host bridge 0 routes P2P. Device 7 (the client) shares a switch with provider 11; provider 10 sits
/// on another root port. The model has no MMIO, so the BARs are modelled as shared guest-physical
/// ranges: a device reaching them through the window reads real bytes.
/// PCI bus address = CPU physical - this: the BARs (above 4 GiB) are below 4 GiB on the bus.
const HB_OFFSET: u64 = 1 << 32;

fn topology(bar10: u64, bar11: u64) -> PciTopology {
    let mut t = PciTopology::new();
    let hb = t.host_bridge(true, HB_OFFSET);
    let rp = t.root_port(hb);
    let sw = t.switch(rp, false);
    t.endpoint(ID, sw, &[]);
    t.endpoint(11, sw, &[Bar { phys: bar11, len: 64 * 1024 }]);
    let rp = t.root_port(hb);
    t.endpoint(10, rp, &[Bar { phys: bar10, len: 64 * 1024 }]);
    t
}

fn bar(hv: &Hypervisor) -> u64 {
    let b = hv.alloc(64 * 1024, Region::High);
    hv.memory().set_state(b, 16, PageState::Shared);
    hv.memory().write(b, &pattern(64 * 1024, b));
    b
}

#[test]
fn host_bridge_p2p_goes_through_the_window_on_both_policies() {
    for kind in [PathKind::IommuStrict, PathKind::IommuPremapped] {
        let env = Env::new(kind);
        let hv = env.hv;
        let (bar10, bar11) = (bar(hv), bar(hv));
        let t = topology(bar10, bar11);
        let opts = SgOptions { coalesce: true, p2p: Some(&t) };
        let dev = env.attach(env.config());
        let base = Baseline::take(hv, env.layer);
        let iommu_base = env.iommu_baseline();
        let reach_before = hv.reachable(ID).len();
        let inputs = lay_out(hv, &[spec(1000, 0), spec(2000, 100)], 3);
        let mut g = entries(hv, &inputs).into_iter();
        let p2p = |provider, bar: u64, off: u64, len| {
            SgEntry::p2p(P2pSegment { provider, bar: PhysAddr(bar + off), len })
        };
        // guest, host-bridge P2P, bus-address P2P, guest
        let mut list =
            vec![g.next().unwrap(), p2p(10, bar10, 0x100, 5000), p2p(11, bar11, 0, 300), g.next().unwrap()];
        let n = env
            .layer
            .map_sg_with(&dev, &mut list, DmaDirection::Bidirectional, DmaAttrs::NONE, &opts)
            .unwrap();
        assert_eq!(n, 4, "{kind:?}");
        let segs: Vec<_> = dma_segments(&list).collect();
        assert_eq!(segs.iter().map(|s| s.p2p_bus_address).collect::<Vec<_>>(), [false, false, true, false]);
        // The bus-address segment bypasses the IOMMU: its PCI bus address.
        assert_eq!(segs[2].addr.0, bar11 - HB_OFFSET);
        // The host-bridge segment is reachable through the window, with its page offset kept.
        assert_eq!(segs[1].addr.0 & 0xfff, 0x100);
        let d = env.device();
        assert_eq!(d.read(segs[1].addr.0, 5000).unwrap(), hv.memory().read(bar10 + 0x100, 5000));
        // One list range: strict holds both runs and the BAR pages, premapped only the BAR pages.
        let ranges = sg_ranges(env.layer, &dev);
        assert_eq!(ranges.len(), 1);
        let bar_pages = 2;
        let expect_pages = if kind == PathKind::IommuStrict { bar_pages + 2 } else { bar_pages };
        assert_eq!(ranges[0].len / 4096, expect_pages, "{kind:?}");
        assert_eq!(hv.reachable(ID).len() - reach_before, expect_pages as usize);
        // Guest data round-trips.
        assert_eq!(d.read(segs[0].addr.0, 1000).unwrap(), hv.memory().read(inputs[0].phys, 1000));
        d.write(segs[3].addr.0, &[0xab; 2000]).unwrap();
        env.layer.unmap_sg(&dev, &mut list, DmaDirection::Bidirectional, DmaAttrs::NONE).unwrap();
        drop(list);
        assert_eq!(hv.memory().read(inputs[1].phys, 2000), vec![0xab; 2000]);
        assert!(d.read(segs[1].addr.0, 1).is_err(), "the BAR is still reachable after unmap");
        assert_eq!(hv.faults().len(), 1);
        hv.clear_faults();
        base.assert_same(hv, env.layer);
        assert_eq!(env.iommu_baseline(), iommu_base);
        env.detach(dev);
    }
}

#[test]
fn a_bus_address_only_list_makes_no_allocation_and_no_hypercall() {
    for kind in [PathKind::IommuStrict, PathKind::IommuPremapped] {
        let env = Env::new(kind);
        let hv = env.hv;
        let (bar10, bar11) = (bar(hv), bar(hv));
        let t = topology(bar10, bar11);
        let opts = SgOptions { coalesce: true, p2p: Some(&t) };
        let dev = env.attach(env.config());
        let calls = hv.calls().counts();
        let ranges = env.layer.live_bus_ranges();
        let mut list: Vec<_> = (0..4)
            .map(|k| SgEntry::p2p(P2pSegment { provider: 11, bar: PhysAddr(bar11 + k * 4096), len: 4096 }))
            .collect();
        assert_eq!(
            env.layer.map_sg_with(&dev, &mut list, DmaDirection::ToDevice, DmaAttrs::NONE, &opts),
            Ok(1)
        );
        assert_eq!(env.layer.live_bus_ranges(), ranges);
        assert_eq!(env.layer.stats().slots_in_use, 0);
        assert!(list.iter().all(|e| e.is_p2p_bus_address()));
        env.layer.unmap_sg(&dev, &mut list, DmaDirection::ToDevice, DmaAttrs::NONE).unwrap();
        assert_eq!(hv.calls().counts(), calls, "{kind:?}: hypercalls for a bus-address list");
        env.detach(dev);
    }
}

#[test]
fn injected_tce_failures_leave_nothing_behind() {
    let env = Env::new(PathKind::IommuStrict);
    let (hv, layer) = (env.hv, env.layer);
    let dev = env.attach(env.config());
    let specs: Vec<Spec> = (0..12).map(|k| spec(900 * (k + 1), 0)).collect();
    let inputs = lay_out(hv, &specs, 4);
    let base = Baseline::take(hv, layer);
    let iommu_base = env.iommu_baseline();
    let dir = DmaDirection::Bidirectional;

    // The batch write fails: rolled back cleanly, nothing mapped, the list as it was.
    let mut list = entries(hv, &inputs);
    hv.calls().inject_next(CallKind::PutTceIndirect, Injection::Fail(H_PARAMETER));
    let r = layer.map_sg(&dev, &mut list, dir, DmaAttrs::NONE);
    assert_eq!(r, Err(DmaError::Iommu(IommuError::Hcall(H_PARAMETER))));
    assert!(list.iter().all(|e| !e.is_mapped() && e.dma_segment().is_none()));
    base.assert_same(hv, layer);
    assert_eq!(env.iommu_baseline(), iommu_base);

    // Clearing fails at unmap: the list stays mapped (and usable), a retry unmaps it.
    assert!(layer.map_sg(&dev, &mut list, dir, DmaAttrs::NONE).is_ok());
    let segs: Vec<_> = dma_segments(&list).collect();
    let data = pattern(segs.iter().map(|s| s.len).sum(), 5);
    device_write(env.device(), &segs, &data);
    hv.calls().inject_next(CallKind::StuffTce, Injection::Fail(H_PARAMETER));
    assert!(matches!(layer.unmap_sg(&dev, &mut list, dir, DmaAttrs::NONE), Err(DmaError::Iommu(_))));
    assert!(list.iter().all(|e| e.is_mapped()));
    layer.sync_sg_for_cpu(&dev, &mut list, dir).unwrap();
    layer.unmap_sg(&dev, &mut list, dir, DmaAttrs::NONE).unwrap();
    drop(list);
    assert_eq!(guest_stream(hv, &inputs), data);
    base.assert_same(hv, layer);
    assert_eq!(env.iommu_baseline(), iommu_base);

    // The write fails and so does the rollback: the range is quarantined and its runs never reused
    // (slots stay allocated), the list is as it was, and no entry targets private memory.
    let mut list = entries(hv, &inputs);
    hv.calls().inject_next(CallKind::PutTceIndirect, Injection::Partial { pages: 3, code: H_PARAMETER });
    hv.calls().inject_next(CallKind::StuffTce, Injection::Fail(H_PARAMETER));
    assert!(matches!(layer.map_sg(&dev, &mut list, dir, DmaAttrs::NONE), Err(DmaError::Iommu(_))));
    assert!(list.iter().all(|e| !e.is_mapped() && e.dma_segment().is_none()));
    assert_eq!(layer.iommu_stats().quarantined_ranges, 1);
    assert!(layer.stats().slots_in_use > 0, "runs behind uncleared entries were reused");
    assert_eq!(hv.tces_to_private(), 0);
    assert_no_faults(hv);
}

#[test]
fn deferred_device_attaches_at_map_sg_and_never_at_unmap_or_sync() {
    let (hv, layer) = iommu_layer(IommuConfig::strict());
    hv.add_iommu_device(ID, 32);
    let dev = layer.attach(DeviceConfig::new(ID, DmaMask::BITS_32).with_deferred_attach(true)).unwrap();
    assert_eq!(layer.path_of(&dev), DmaPath::IommuDeferred);
    let phys = hv.alloc(8192, Region::High);
    // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
    let mut list = [unsafe { SgEntry::phys(PhysAddr(phys), 5000) }, unsafe {
        SgEntry::phys(PhysAddr(phys + 5000), 3000)
    }];
    let dir = DmaDirection::ToDevice;
    assert_eq!(
        layer.unmap_sg(&dev, &mut list, dir, DmaAttrs::NONE),
        Err(DmaError::SgListState { mapped: false })
    );
    assert!(layer.sync_sg_for_device(&dev, &mut list, dir).is_err());
    assert_eq!(layer.path_of(&dev), DmaPath::IommuDeferred);
    assert_eq!(layer.map_sg(&dev, &mut list, dir, DmaAttrs::NONE), Ok(1));
    assert_eq!(layer.path_of(&dev), DmaPath::IommuStrict);
    assert_eq!(layer.iommu_stats().deferred_attaches, 1);
    layer.unmap_sg(&dev, &mut list, dir, DmaAttrs::NONE).unwrap();
    layer.detach(dev).unwrap();
    assert!(hv.reachable(ID).is_empty());
    assert_eq!(layer.stats().slots_in_use, 0);
    assert_eq!(hv.faults().iter().filter(|f| f.reason != FaultReason::NoEntry).count(), 0);
}
