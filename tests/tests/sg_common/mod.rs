//! Helpers shared by the scatter-gather tests: one guest per path, input lists laid out in guest RAM,
//! and the checks every mapped list must pass (limits, layout, exact bytes, clean fault log).
#![allow(dead_code)]

use ccdma::sg::{dma_segments, DmaSegment, SgEntry, SgOptions};
use ccdma::{DeviceConfig, DmaAttrs, DmaDirection, DmaError, DmaMask, DmaPath, PhysAddr};
use ccdma_hv_model::{DeviceRef, HvConfig, Hypervisor, Region};
use ccdma_tests::*;

/// The paths without IOMMU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathKind {
    /// Not confidential, 64-bit device.
    Direct,
    /// Not confidential, 32-bit device on a 6 GiB guest: high buffers bounced, low ones direct.
    BounceAboveMask,
    /// Confidential (pseries), everything bounced.
    BounceAlways,
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
        let (cfg, mask_bits, pools): (HvConfig, u32, &[(u64, u64)]) = match kind {
            PathKind::Direct => (HvConfig::plain(6 * GIB), 64, &[]),
            PathKind::BounceAboveMask => (HvConfig::plain(6 * GIB), 32, &[(MID_POOL, POOL_LEN)]),
            PathKind::BounceAlways => (HvConfig::pseries(6 * GIB), 64, &[(MID_POOL, POOL_LEN)]),
        };
        let (hv, layer) = guest(cfg, pools);
        let id = 7;
        hv.add_device(id, mask_bits);
        Env { hv, layer: Box::leak(Box::new(layer)), kind, id, mask_bits }
    }

    pub fn config(&self) -> DeviceConfig {
        DeviceConfig::new(self.id, DmaMask::new(self.mask_bits).unwrap())
    }

    pub fn attach(&self, cfg: DeviceConfig) -> ccdma::Device {
        let dev = self.layer.attach(cfg).unwrap();
        let want = match self.kind {
            PathKind::Direct => DmaPath::Direct,
            PathKind::BounceAboveMask => DmaPath::BounceAboveMask,
            PathKind::BounceAlways => DmaPath::BounceAlways,
        };
        assert_eq!(dev.path(), want);
        dev
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
                SgEntry::phys(PhysAddr(inp.phys), inp.len)
            } else {
                // SAFETY: `lay_out` gives every input its own range of fresh guest RAM.
                SgEntry::new(unsafe { hv.slice_mut(inp.phys, inp.len) })
            }
        })
        .collect()
}

/// The address whose low bits a bounced input keeps: its physical address, or on the bounce-always
/// path its CPU address for CPU buffers (the layer does not translate those there).
pub fn orig_addr(env: &Env, inp: &Input) -> u64 {
    if env.kind == PathKind::BounceAlways && !inp.as_phys {
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
pub fn check_layout(env: &Env, list: &[SgEntry<'_>], inputs: &[Input], segs: &[DmaSegment], mam: u64) {
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
            assert!(in_some_pool(env.layer, at, inp.len), "bounced entry {k} outside the pools");
            assert_eq!(at & mam, orig_addr(env, inp) & mam, "entry {k} lost its min_align bits");
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
    run_inputs(env, cfg, &inputs, dir, attrs, coalesce, seed)
}

/// [`run_list`] over inputs already laid out (and filled) by [`lay_out`].
pub fn run_inputs(
    env: &Env,
    cfg: DeviceConfig,
    inputs: &[Input],
    dir: DmaDirection,
    attrs: DmaAttrs,
    coalesce: bool,
    seed: u64,
) -> Result<usize, DmaError> {
    let (hv, layer) = (env.hv, env.layer);
    let base = Baseline::take(hv, layer);
    let calls = hv.calls().counts();
    let before = guest_stream(hv, inputs);
    let dev = env.attach(cfg);
    let mut list = entries(hv, inputs);
    let opts = SgOptions { coalesce, p2p: None };
    let n = match layer.map_sg_with(&dev, &mut list, dir, attrs, &opts) {
        Ok(n) => n,
        Err(e) => {
            assert!(
                list.iter().all(|e| !e.is_mapped() && e.dma_segment().is_none()),
                "list changed by a failed map"
            );
            drop(list);
            assert_eq!(guest_stream(hv, inputs), before, "a failed map changed the originals");
            base.assert_same(hv, layer);
            assert_no_faults(hv);
            return Err(e);
        }
    };
    let segs = checked_segments(&list, n, &cfg);
    check_layout(env, &list, inputs, &segs, cfg.min_align_mask);
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
    assert_eq!(device_read(d, &segs), expect, "the device does not see the list's bytes");
    let total = before.len();
    let written = pattern(total, seed.wrapping_add(0x5eed));
    if dir.device_writes() {
        device_write(d, &segs, &written);
    }
    layer.unmap_sg(&dev, &mut list, dir, attrs).unwrap();
    assert!(list.iter().all(|e| !e.is_mapped() && e.dma_segment().is_none()));
    drop(list);
    let after = guest_stream(hv, inputs);
    if dir.device_writes() {
        assert_eq!(after, written, "device data did not come back exactly");
    } else {
        assert_eq!(after, before, "a to-device list changed its originals");
    }
    base.assert_same(hv, layer);
    assert_no_faults(hv);
    // Scatter-gather never calls the hypervisor: the pool is shared once, at start.
    assert_eq!(hv.calls().counts(), calls, "map_sg/unmap_sg made hypervisor calls");
    Ok(n)
}
