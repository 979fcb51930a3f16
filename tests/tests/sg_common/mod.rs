//! Helpers shared by the scatter-gather tests: one guest per path, input lists laid out in guest RAM,
//! and the checks every mapped list must pass (limits, layout, exact bytes, clean fault log).
#![allow(dead_code)]

use ccdma::iommu::BusRange;
use ccdma::sg::{dma_segments, DmaSegment, SgEntry, SgOptions};
use ccdma::{
    DeviceConfig, DmaAttrs, DmaDirection, DmaError, DmaLayer, DmaMask, DmaPath, IommuConfig, PhysAddr,
};
use ccdma_hv_model::{CallKind, DeviceRef, HvConfig, Hypervisor, Region, TceConfig};
use ccdma_tests::*;

/// The paths a scatter-gather list can take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathKind {
    /// Not confidential, 64-bit device.
    Direct,
    /// Not confidential, 32-bit device on a 6 GiB guest: high buffers bounced, low ones direct.
    BounceAboveMask,
    /// Confidential (pseries), everything bounced.
    BounceAlways,
    /// Confidential behind the TCE IOMMU, 32-bit device: the pool premapped in its default window.
    IommuPremapped,
    /// Confidential behind the TCE IOMMU, strict policy: entries per list.
    IommuStrict,
}

impl PathKind {
    /// Every mapping goes through a pool (CPU buffers are not translated).
    pub fn bounces_everything(self) -> bool {
        !matches!(self, PathKind::Direct | PathKind::BounceAboveMask)
    }
    pub fn iommu(self) -> bool {
        matches!(self, PathKind::IommuPremapped | PathKind::IommuStrict)
    }
}

/// Reserved in the IOMMU guests' windows: firmware at the bottom, as on pseries.
pub const RESERVED: (u64, u64) = (0, 1 << 20);

/// A pseries guest whose devices sit behind the modelled TCE IOMMU, with one pool and `cfg`.
pub fn iommu_layer(cfg: IommuConfig) -> (&'static Hypervisor, Layer) {
    let hv = model(HvConfig::pseries(6 * GIB));
    hv.enable_iommu(TceConfig { reserved: vec![RESERVED], ..TceConfig::default() });
    let mut layer = DmaLayer::new(hv);
    add_pool(&mut layer, MID_POOL, POOL_LEN, ccdma::PoolConfig::default()).unwrap();
    let list_page = hv.alloc(4096, Region::Low);
    let ranges = vec![BusRange::EMPTY; 8 * 256].leak();
    // SAFETY: the list page is a fresh allocation nothing else uses.
    unsafe { layer.enable_iommu(cfg.with_list_page(PhysAddr(list_page)).with_max_domains(8), ranges) }
        .unwrap();
    (hv, layer)
}

/// A guest for one path: model, layer (leaked so closures can share it) and the device's id/mask.
pub struct Env {
    pub hv: &'static Hypervisor,
    pub layer: &'static Layer,
    pub kind: PathKind,
    pub id: u32,
    pub mask_bits: u32,
}

/// Pool size of every scatter-gather test guest.
pub const POOL_LEN: u64 = 4 * MIB;

impl Env {
    pub fn new(kind: PathKind) -> Env {
        let id = 7;
        let (hv, layer, mask_bits) = match kind {
            PathKind::Direct => {
                let (hv, layer) = guest(HvConfig::plain(6 * GIB), &[]);
                (hv, layer, 64)
            }
            PathKind::BounceAboveMask => {
                let (hv, layer) = guest(HvConfig::plain(6 * GIB), &[(MID_POOL, POOL_LEN)]);
                (hv, layer, 32)
            }
            PathKind::BounceAlways => {
                let (hv, layer) = guest(HvConfig::pseries(6 * GIB), &[(MID_POOL, POOL_LEN)]);
                (hv, layer, 64)
            }
            PathKind::IommuPremapped => {
                let (hv, layer) = iommu_layer(IommuConfig::premapped());
                (hv, layer, 32)
            }
            PathKind::IommuStrict => {
                let (hv, layer) = iommu_layer(IommuConfig::strict());
                (hv, layer, 32)
            }
        };
        if kind.iommu() {
            hv.add_iommu_device(id, mask_bits);
        } else {
            hv.add_device(id, mask_bits);
        }
        Env { hv, layer: Box::leak(Box::new(layer)), kind, id, mask_bits }
    }

    pub fn config(&self) -> DeviceConfig {
        DeviceConfig::new(self.id, DmaMask::new(self.mask_bits).unwrap())
    }

    /// Attach the device with `cfg` (on IOMMU paths this takes a domain: [`Env::detach`] after use).
    pub fn attach(&self, cfg: DeviceConfig) -> ccdma::Device {
        let dev = self.layer.attach(cfg).unwrap();
        let want = match self.kind {
            PathKind::Direct => DmaPath::Direct,
            PathKind::BounceAboveMask => DmaPath::BounceAboveMask,
            PathKind::BounceAlways => DmaPath::BounceAlways,
            PathKind::IommuPremapped => DmaPath::IommuPremapped,
            PathKind::IommuStrict => DmaPath::IommuStrict,
        };
        assert_eq!(self.layer.path_of(&dev), want);
        dev
    }

    /// Give the device's IOMMU domain back (nothing to do off the IOMMU paths).
    pub fn detach(&self, dev: ccdma::Device) {
        self.layer.detach(dev).unwrap();
        if self.kind.iommu() {
            assert!(self.hv.reachable(self.id).is_empty(), "a detached device still reaches memory");
        }
    }

    /// True when `[bus, bus + len)` is bounce memory the device reaches: inside a pool where the
    /// device sees it, or (strict) translated by live entries into the pool.
    pub fn bounce_target_ok(&self, dev: &ccdma::Device, bus: u64, len: usize) -> bool {
        let in_pool = |phys: u64| phys >= MID_POOL && phys + len as u64 <= MID_POOL + POOL_LEN;
        match self.kind {
            PathKind::IommuStrict => {
                let reach = self.hv.reachable(self.id);
                let page = 4096;
                (bus / page..=(bus + len as u64 - 1) / page)
                    .all(|p| reach.iter().any(|r| r.bus == p * page && in_pool(r.phys)))
            }
            PathKind::IommuPremapped => {
                let base = self.layer.pool_bus_of(dev, 0).unwrap().0;
                bus >= base && bus + len as u64 <= base + POOL_LEN
            }
            _ => in_some_pool(self.layer, bus, len),
        }
    }

    /// Counters of the IOMMU side that must come back to where they were (live entries and ranges the
    /// guest and the model count, what the device reaches, entries aimed at private memory).
    pub fn iommu_baseline(&self) -> (u64, usize, u64, usize, usize) {
        (
            self.layer.iommu_stats().live_tces,
            self.layer.live_bus_ranges(),
            if self.kind.iommu() { self.hv.tce_counters().live_entries } else { 0 },
            if self.kind.iommu() { self.hv.reachable(self.id).len() } else { 0 },
            if self.kind.iommu() { self.hv.tces_to_private() } else { 0 },
        )
    }

    /// TCE hypercalls so far.
    pub fn tce_calls(&self) -> u64 {
        [CallKind::PutTce, CallKind::GetTce, CallKind::PutTceIndirect, CallKind::StuffTce]
            .iter()
            .map(|&k| self.hv.calls().count(k))
            .sum()
    }

    pub fn device(&self) -> DeviceRef<'static> {
        self.hv.device(self.id)
    }
}

/// How to lay out one input segment.
#[derive(Clone, Copy, Debug)]
pub struct Spec {
    pub len: usize,
    /// Offset inside its page (ignored when the segment follows the previous one).
    pub page_offset: usize,
    /// Above 4 GiB.
    pub high: bool,
    /// Given as a physical range rather than a CPU buffer.
    pub phys: bool,
    /// Placed right after the previous segment in guest RAM (a merge candidate).
    pub follows: bool,
}

/// A laid-out input segment.
#[derive(Clone, Copy, Debug)]
pub struct Input {
    pub phys: u64,
    pub len: usize,
    pub as_phys: bool,
}

/// Lay the specs out in fresh guest RAM and fill each input with a pattern from `seed`.
pub fn lay_out(hv: &Hypervisor, specs: &[Spec], seed: u64) -> Vec<Input> {
    let mut out: Vec<Input> = Vec::new();
    let mut i = 0;
    while i < specs.len() {
        // A chunk: spec i and every following spec that follows it, back to back in one allocation.
        let mut j = i + 1;
        while j < specs.len() && specs[j].follows && specs[j].high == specs[i].high {
            j += 1;
        }
        let total: usize = specs[i].page_offset + specs[i..j].iter().map(|s| s.len).sum::<usize>();
        let base = hv.alloc(total as u64, if specs[i].high { Region::High } else { Region::Low });
        let mut at = base + specs[i].page_offset as u64;
        for s in &specs[i..j] {
            out.push(Input { phys: at, len: s.len, as_phys: s.phys });
            at += s.len as u64;
        }
        i = j;
    }
    for (k, inp) in out.iter().enumerate() {
        hv.memory().write(inp.phys, &pattern(inp.len, seed ^ (k as u64) << 32));
    }
    out
}

/// The list for `inputs` (CPU buffers borrow guest RAM through the model; the ranges never overlap).
pub fn entries(hv: &'static Hypervisor, inputs: &[Input]) -> Vec<SgEntry<'static>> {
    inputs
        .iter()
        .map(|inp| {
            if inp.as_phys {
                // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
                unsafe { SgEntry::phys(PhysAddr(inp.phys), inp.len) }
            } else {
                // SAFETY: `lay_out` gives every input its own range of fresh guest RAM.
                SgEntry::new(unsafe { hv.slice_mut(inp.phys, inp.len) })
            }
        })
        .collect()
}

/// The address whose low bits a bounced input keeps under `min_align`: its physical address, or on
/// paths that bounce everything its CPU address for CPU buffers when only page-offset bits are kept
/// (the layer does not translate those there; the page offset is the same).
pub fn orig_addr(env: &Env, inp: &Input, min_align: u64) -> u64 {
    if env.kind.bounces_everything() && !inp.as_phys && min_align < 4096 {
        env.hv.memory().ptr(inp.phys, inp.len as u64).unwrap().as_ptr() as u64
    } else {
        inp.phys
    }
}

/// True when `[addr, addr + len)` crosses a boundary of `mask + 1`.
pub fn crosses(mask: u64, addr: u64, len: u64) -> bool {
    addr & !mask != (addr + len - 1) & !mask
}

/// The DMA segments of a mapped list, checked to be exactly `n` and each within every device limit.
pub fn checked_segments(list: &[SgEntry<'_>], n: usize, cfg: &DeviceConfig) -> Vec<DmaSegment> {
    let segs: Vec<DmaSegment> = dma_segments(list).collect();
    assert_eq!(segs.len(), n, "map_sg returned {n} but the list holds {} segments", segs.len());
    assert!(list[n..].iter().all(|e| e.dma_segment().is_none()), "stale segment past the count");
    assert!(n >= 1 && n <= list.len());
    for s in &segs {
        assert!(s.len > 0 && s.len as u64 <= cfg.max_segment_size as u64, "{s:?} exceeds max segment size");
        assert!(!crosses(cfg.segment_boundary_mask, s.addr.0, s.len as u64), "{s:?} crosses the boundary");
        assert!(cfg.dma_mask.covers(s.addr.0, s.len as u64), "{s:?} beyond the mask");
    }
    segs
}

/// Check that the segments carry the list's byte stream in order: entry k's first byte is where the
/// segments put stream offset `sum(len[..k])`, and it keeps the `min_align_mask` bits.
pub fn check_layout(
    env: &Env,
    dev: &ccdma::Device,
    list: &[SgEntry<'_>],
    inputs: &[Input],
    segs: &[DmaSegment],
    mam: u64,
) {
    let mut seg = 0;
    let mut seg_off = 0usize;
    for (k, (e, inp)) in list.iter().zip(inputs).enumerate() {
        while seg_off == segs[seg].len {
            seg += 1;
            seg_off = 0;
        }
        let at = e.mapped_at().expect("mapped entry has an address").0;
        assert_eq!(at, segs[seg].addr.0 + seg_off as u64, "entry {k} is not where the stream puts it");
        if e.is_bounced() {
            assert!(env.bounce_target_ok(dev, at, inp.len), "bounced entry {k} outside the pools");
            assert_eq!(at & mam, orig_addr(env, inp, mam) & mam, "entry {k} lost its min_align bits");
        } else {
            assert_eq!(at, inp.phys, "direct entry {k} not at its own address");
        }
        // The entry lies inside one segment (segments are made of whole entries).
        assert!(seg_off + inp.len <= segs[seg].len, "entry {k} straddles two segments");
        seg_off += inp.len;
    }
    assert_eq!(seg, segs.len() - 1);
    assert_eq!(seg_off, segs[seg].len, "segments longer than the list");
}

/// Device reads of every segment, concatenated.
pub fn device_read(d: DeviceRef<'_>, segs: &[DmaSegment]) -> Vec<u8> {
    segs.iter().flat_map(|s| d.read(s.addr.0, s.len).expect("device read refused")).collect()
}

/// Device writes `data` (the stream) across the segments.
pub fn device_write(d: DeviceRef<'_>, segs: &[DmaSegment], data: &[u8]) {
    let mut at = 0;
    for s in segs {
        d.write(s.addr.0, &data[at..at + s.len]).expect("device write refused");
        at += s.len;
    }
}

/// The inputs' bytes as the guest sees them now, concatenated.
pub fn guest_stream(hv: &Hypervisor, inputs: &[Input]) -> Vec<u8> {
    inputs.iter().flat_map(|i| hv.memory().read(i.phys, i.len)).collect()
}

/// A network-like list: `count` buffers of 64..=1514 bytes (deterministic from `seed`).
pub fn network_specs(count: usize, seed: u64) -> Vec<Spec> {
    let lens = pattern(count * 2, seed);
    (0..count)
        .map(|k| {
            let r = u16::from_le_bytes([lens[2 * k], lens[2 * k + 1]]) as usize;
            Spec {
                len: 64 + r % (1514 - 64 + 1),
                page_offset: (r * 64) % 4096,
                high: true,
                phys: false,
                follows: false,
            }
        })
        .collect()
}

/// Map `specs` laid out fresh as one list with `cfg`, check everything a mapped list must satisfy,
/// drive the device honestly across the segments, unmap, and check the bytes and counters.
/// On a mapping error, checks that nothing changed and returns the error.
pub fn run_list(
    env: &Env,
    cfg: DeviceConfig,
    specs: &[Spec],
    dir: DmaDirection,
    attrs: DmaAttrs,
    coalesce: bool,
    seed: u64,
) -> Result<usize, DmaError> {
    let inputs = lay_out(env.hv, specs, seed);
    let dev = env.attach(cfg);
    let r = run_inputs(env, &dev, &inputs, dir, attrs, coalesce, seed);
    env.detach(dev);
    r
}

/// The one scatter-gather bus range of the device, in pages (strict path).
fn sg_range_pages(env: &Env, dev: &ccdma::Device) -> Vec<u64> {
    let mut out = vec![BusRange::EMPTY; 256];
    let n = env.layer.bus_ranges_of(dev, &mut out);
    out[..n].iter().filter(|r| r.kind == ccdma::iommu::RangeKind::SgList).map(|r| r.len / 4096).collect()
}

/// [`run_list`] over inputs already laid out (and filled) by [`lay_out`], for an attached device.
pub fn run_inputs(
    env: &Env,
    dev: &ccdma::Device,
    inputs: &[Input],
    dir: DmaDirection,
    attrs: DmaAttrs,
    coalesce: bool,
    seed: u64,
) -> Result<usize, DmaError> {
    let (hv, layer) = (env.hv, env.layer);
    let cfg = *dev.config();
    let base = Baseline::take(hv, layer);
    let iommu_base = env.iommu_baseline();
    let calls = hv.calls().counts();
    let tce_calls = env.tce_calls();
    let reach_before: std::collections::BTreeSet<u64> = if env.kind.iommu() {
        hv.reachable(env.id).iter().map(|r| r.bus).collect()
    } else {
        Default::default()
    };
    let before = guest_stream(hv, inputs);
    let mut list = entries(hv, inputs);
    let opts = SgOptions { coalesce, p2p: None };
    let n = match layer.map_sg_with(dev, &mut list, dir, attrs, &opts) {
        Ok(n) => n,
        Err(e) => {
            assert!(
                list.iter().all(|e| !e.is_mapped() && e.dma_segment().is_none()),
                "list changed by a failed map"
            );
            drop(list);
            assert_eq!(guest_stream(hv, inputs), before, "a failed map changed the originals");
            base.assert_same(hv, layer);
            assert_eq!(env.iommu_baseline(), iommu_base, "IOMMU counters after a failed map");
            assert_no_faults(hv);
            return Err(e);
        }
    };
    let segs = checked_segments(&list, n, &cfg);
    check_layout(env, dev, &list, inputs, &segs, cfg.min_align_mask);
    if env.kind == PathKind::IommuStrict {
        // One bus range for the whole list, its entries written in one batch (one call per 512).
        let ranges = sg_range_pages(env, dev);
        assert_eq!(ranges.len(), 1, "strict list ranges {ranges:?}");
        let puts = hv.calls().count(CallKind::PutTce) + hv.calls().count(CallKind::PutTceIndirect);
        let puts_before =
            calls.get(&CallKind::PutTce).unwrap_or(&0) + calls.get(&CallKind::PutTceIndirect).unwrap_or(&0);
        assert_eq!(puts - puts_before, ranges[0].div_ceil(512), "entries not written in one batch");
        assert_eq!(hv.tces_to_private(), 0, "an entry aims at private memory");
        // The device reaches exactly the pages the segments span: holes in the range stay empty,
        // and the permission is the direction's.
        let reach: Vec<_> =
            hv.reachable(env.id).into_iter().filter(|r| !reach_before.contains(&r.bus)).collect();
        let spanned: std::collections::BTreeSet<u64> = segs
            .iter()
            .flat_map(|s| (s.addr.0 / 4096..=(s.addr.0 + s.len as u64 - 1) / 4096).map(|p| p * 4096))
            .collect();
        assert_eq!(reach.iter().map(|r| r.bus).collect::<std::collections::BTreeSet<_>>(), spanned);
        assert!(reach.iter().all(|r| r.read == dir.device_reads() && r.write == dir.device_writes()));
    }
    if !coalesce {
        assert_eq!(n, list.len(), "without coalescing every input is its own segment");
    }
    // What the device must see: the originals, except zeroes where a from-device mapping bounced.
    let expect: Vec<u8> = list
        .iter()
        .zip(inputs)
        .scan(0usize, |at, (e, inp)| {
            let bytes = &before[*at..*at + inp.len];
            *at += inp.len;
            Some(
                if dir == DmaDirection::FromDevice
                    && e.is_bounced()
                    && !attrs.contains(DmaAttrs::PRESERVE_UNWRITTEN)
                {
                    vec![0; inp.len]
                } else {
                    bytes.to_vec()
                },
            )
        })
        .flatten()
        .collect();
    let d = env.device();
    if env.kind == PathKind::IommuStrict && !dir.device_reads() {
        // Strict entries carry the direction's permission: a from-device list cannot be read.
        let s = segs[0];
        assert!(d.read(s.addr.0, s.len).is_err(), "strict from-device entry readable");
        let f = hv.faults();
        assert!(f.len() == 1 && f[0].reason == ccdma_hv_model::FaultReason::Permission, "{f:?}");
        hv.clear_faults();
    } else {
        assert_eq!(device_read(d, &segs), expect, "the device does not see the list's bytes");
    }
    let total = before.len();
    let written = pattern(total, seed.wrapping_add(0x5eed));
    if dir.device_writes() {
        device_write(d, &segs, &written);
    }
    layer.unmap_sg(dev, &mut list, dir, attrs).unwrap();
    assert!(list.iter().all(|e| !e.is_mapped() && e.dma_segment().is_none()));
    drop(list);
    let after = guest_stream(hv, inputs);
    if dir.device_writes() {
        assert_eq!(after, written, "device data did not come back exactly");
    } else {
        assert_eq!(after, before, "a to-device list changed its originals");
    }
    base.assert_same(hv, layer);
    assert_eq!(env.iommu_baseline(), iommu_base, "IOMMU counters after unmap");
    if env.kind == PathKind::IommuStrict {
        // Unmapped: the device reaches nothing of the list any more.
        assert!(d.read(segs[0].addr.0, 1).is_err());
        let f = hv.faults();
        assert!(f.len() == 1 && f[0].reason == ccdma_hv_model::FaultReason::NoEntry, "{f:?}");
        hv.clear_faults();
    } else {
        // Without entries to write, scatter-gather never calls the hypervisor.
        assert_eq!(hv.calls().counts(), calls, "map_sg/unmap_sg made hypervisor calls");
        assert_eq!(env.tce_calls(), tce_calls);
    }
    assert_no_faults(hv);
    Ok(n)
}
