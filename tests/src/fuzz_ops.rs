//! The public API against the model, driven by bytes: the interpreter the coverage-guided fuzz
//! target (`fuzz/fuzz_targets/api.rs`) and its replay test (`tests/tests/fuzz_replay.rs`) share.
//!
//! The input picks a personality (pseries, TDX, SEV-SNP, Arm CCA: confidential, no IOMMU), then
//! decodes operations: attach and detach of three devices with chosen masks, raw maps and unmaps of
//! private buffers (right and wrong claims), syncs at any offset, coherent buffers, sharing-call
//! failures injected before the next call, and device accesses through every live mapping. After
//! every step the invariants hold or the run panics (which the fuzzer reports):
//!
//! - no device access landed in private memory (the model's fault log has no `PrivateTarget`);
//! - bytes a device reads through a to-device mapping are the buffer's; bytes it writes through a
//!   from-device mapping are the buffer's after unmap;
//! - a wrong claim (length, direction, address, device) is refused and the mapping stays usable;
//! - at the end, with everything unmapped, freed and detached: no slot in use, the model's shared
//!   pages back to the pools' plus those a free reported quarantined (nothing leaked).

use ccdma::{
    CoherentBuffer, Device, DeviceConfig, DmaAttrs, DmaDirection, DmaLayer, DmaMask, PhysAddr, PoolConfig,
};
use ccdma_hv_model::{CallKind, FaultReason, HvConfig, Hypervisor, Injection, Region};

use crate::{pattern, GIB, LOW_POOL, MIB};

const DEVICES: usize = 3;
const BUF_LEN: usize = 64 * 1024;
const MASKS: [u32; 4] = [24, 32, 40, 64];
/// Operations per input at most (keeps one execution short).
const MAX_OPS: usize = 256;

struct Live {
    dev: usize,
    bus: u64,
    phys: u64,
    len: usize,
    dir: DmaDirection,
    /// What the device wrote (from-device), to find in the buffer after unmap.
    wrote: Option<Vec<u8>>,
}

/// Bytes as a stream of small numbers (0 once exhausted).
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        let Some((&b, rest)) = self.0.split_first() else { return 0 };
        self.0 = rest;
        b
    }
    fn below(&mut self, n: usize) -> usize {
        self.byte() as usize % n
    }
    fn u16(&mut self) -> usize {
        usize::from(self.byte()) | usize::from(self.byte()) << 8
    }
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

const DIRS: [DmaDirection; 3] =
    [DmaDirection::ToDevice, DmaDirection::FromDevice, DmaDirection::Bidirectional];

/// Run one input. Panics when an invariant breaks.
pub fn run(data: &[u8]) {
    let mut input = Input(data);
    let (cfg, share_call) = match input.below(4) {
        0 => (HvConfig::pseries(6 * GIB), CallKind::UvShare),
        1 => (HvConfig::tdx(6 * GIB), CallKind::MapGpa),
        2 => (HvConfig::snp(6 * GIB), CallKind::Psc),
        _ => (HvConfig::cca(6 * GIB), CallKind::RsiIpaStateSet),
    };
    let hv = Hypervisor::new(cfg);
    let pool_cfg = PoolConfig { areas: 1 + input.below(4), ..PoolConfig::default() };
    let mut meta = vec![ccdma::SlotMeta::EMPTY; pool_cfg.slots_for(4 * MIB as usize)];
    let mut layer = DmaLayer::new(&hv);
    // SAFETY: LOW_POOL..+4 MiB is RAM the model's allocator never hands out (it starts above).
    unsafe { layer.add_pool(PhysAddr(LOW_POOL), 4 * MIB as usize, &mut meta, pool_cfg) }.expect("pool");
    let pool_shared = hv.shared_pages();
    let layer = layer;
    for id in 0..DEVICES {
        hv.add_device(id as u32 + 1, 64);
    }
    let bufs: Vec<u64> = (0..4).map(|_| hv.alloc(BUF_LEN as u64, Region::High)).collect();
    let coherent_base = hv.alloc(16 * 4096, Region::Low);
    let mut devs: Vec<Option<Device>> = (0..DEVICES).map(|_| None).collect();
    let mut live: Vec<Live> = Vec::new();
    let mut coherent: Vec<(usize, CoherentBuffer)> = Vec::new();
    let mut coherent_used = [false; 16];
    let mut seq = 0u64;
    let mut quarantined = 0u64;

    for _ in 0..MAX_OPS {
        if input.is_empty() {
            break;
        }
        seq += 1;
        let k = input.below(DEVICES);
        match input.below(9) {
            0 if devs[k].is_none() => {
                let mask = MASKS[input.below(MASKS.len())];
                let cfg = DeviceConfig::new(k as u32 + 1, DmaMask::new(mask).unwrap());
                hv.add_device(k as u32 + 1, mask); // the model checks the same mask
                devs[k] = layer.attach(cfg).ok();
            }
            1 => {
                if let Some(d) = devs[k].take() {
                    let busy = live.iter().any(|l| l.dev == k)
                        || coherent.iter().any(|(_, c)| c.device_serial() == d.serial());
                    match layer.detach(d) {
                        Ok(()) => assert!(!busy, "detach succeeded with live objects"),
                        Err(r) => devs[k] = Some(r.value),
                    }
                }
            }
            2 => {
                let Some(dev) = &devs[k] else { continue };
                let b = input.below(bufs.len());
                if live.iter().any(|l| l.phys >= bufs[b] && l.phys < bufs[b] + BUF_LEN as u64) {
                    continue; // one live mapping per buffer: the raw contract
                }
                let off = input.u16() % BUF_LEN;
                let len = 1 + input.u16() % (BUF_LEN - off);
                let dir = DIRS[input.below(3)];
                let phys = bufs[b] + off as u64;
                let data = pattern(len, seq);
                hv.memory().write(phys, &data);
                // SAFETY: the buffer is this run's, mapped at most once at a time, and not touched
                // by the CPU until its unmap.
                if let Ok(bus) = unsafe { layer.map_phys(dev, PhysAddr(phys), len, dir, DmaAttrs::NONE) } {
                    let model = hv.device(k as u32 + 1);
                    if dir != DmaDirection::FromDevice {
                        assert_eq!(model.read(bus.0, len).expect("device read"), data, "to-device bytes");
                    }
                    let wrote = (dir != DmaDirection::ToDevice).then(|| {
                        let w = pattern(len, !seq);
                        model.write(bus.0, &w).expect("device write");
                        w
                    });
                    live.push(Live { dev: k, bus: bus.0, phys, len, dir, wrote });
                }
            }
            3 if !live.is_empty() => {
                let l = live.swap_remove(input.below(live.len()));
                let dev = devs[l.dev].as_ref().expect("a live mapping's device is attached");
                // SAFETY: the record's own mapping, unmapped once.
                unsafe { layer.unmap(dev, ccdma::BusAddr(l.bus), l.len, l.dir, DmaAttrs::NONE) }
                    .expect("unmap");
                if let Some(w) = l.wrote {
                    assert_eq!(hv.memory().read(l.phys, l.len), w, "from-device bytes after unmap");
                }
            }
            4 if !live.is_empty() => {
                let i = input.below(live.len());
                let l = &live[i];
                let dev = devs[l.dev].as_ref().expect("attached");
                let (bus, len, dir, who) = match input.below(4) {
                    0 if l.len > 1 => (l.bus, l.len - 1, l.dir, dev),
                    1 => (l.bus, l.len, DIRS[(DIRS.iter().position(|&d| d == l.dir).unwrap() + 1) % 3], dev),
                    2 => (l.bus + 1, l.len, l.dir, dev),
                    _ => match devs.iter().enumerate().find(|(j, d)| *j != l.dev && d.is_some()) {
                        Some((_, Some(other))) => (l.bus, l.len, l.dir, other),
                        _ => continue,
                    },
                };
                // SAFETY: a wrong claim on a live mapping of this run: refused before any copy
                // (the property under test); were it accepted, the checks below fail the run.
                let r = unsafe { layer.unmap(who, ccdma::BusAddr(bus), len, dir, DmaAttrs::NONE) };
                assert!(r.is_err(), "a wrong claim was accepted: {bus:#x} {len} {dir:?}");
                if l.dir != DmaDirection::FromDevice {
                    let model = hv.device(l.dev as u32 + 1);
                    assert!(
                        model.read(l.bus, l.len).is_ok(),
                        "the mapping stays usable after a refused claim"
                    );
                }
            }
            5 if !live.is_empty() => {
                let l = &live[input.below(live.len())];
                let dev = devs[l.dev].as_ref().expect("attached");
                let (off, len) = (input.u16(), input.u16());
                // SAFETY: the record's own mapping; the CPU does not touch the buffer meanwhile.
                let r = unsafe { layer.sync_for_cpu(dev, ccdma::BusAddr(l.bus), off, len, l.dir) };
                if off.checked_add(len).is_none_or(|e| e > l.len) {
                    assert!(r.is_err(), "a sync outside the mapping was accepted ({off}+{len} of {})", l.len);
                }
            }
            6 => {
                let Some(dev) = &devs[k] else { continue };
                let pages = 1 + input.below(2);
                let Some(at) = (0..16 - pages).find(|&p| !coherent_used[p..p + pages].iter().any(|&u| u))
                else {
                    continue;
                };
                let phys = coherent_base + at as u64 * 4096;
                // SAFETY: these pages are this run's coherent region, handed out once.
                if let Ok(c) = unsafe { layer.alloc_coherent(dev, PhysAddr(phys), pages as u64) } {
                    coherent_used[at..at + pages].iter_mut().for_each(|u| *u = true);
                    let model = hv.device(k as u32 + 1);
                    model.write(c.bus_addr().0, &[0xa5; 64]).expect("coherent buffer reachable");
                    coherent.push((at, c));
                }
            }
            7 if !coherent.is_empty() => {
                let (at, c) = coherent.swap_remove(input.below(coherent.len()));
                let pages = c.pages() as usize;
                let dev =
                    devs.iter().flatten().find(|d| d.serial() == c.device_serial()).expect("its device");
                match layer.free_coherent(dev, c) {
                    Ok(()) => coherent_used[at..at + pages].iter_mut().for_each(|u| *u = false),
                    Err(ccdma::FreeError::Refused(r)) => coherent.push((at, r.value)),
                    // An injected failure hit the unshare (the same call on TDX, SNP, CCA): the
                    // pages are quarantined, stay shared and are never handed out again.
                    Err(ccdma::FreeError::Quarantined(ccdma::DmaError::UnsharingFailed {
                        quarantined: q,
                        ..
                    })) => {
                        quarantined += u64::from(q);
                    }
                    Err(e) => panic!("free_coherent: {e:?}"),
                }
            }
            8 => {
                // The next share call fails (whole or part way): the guest rolls back.
                let action = if input.byte() & 1 == 0 {
                    Injection::Fail(-1)
                } else {
                    Injection::Partial { pages: input.below(2) as u64, code: -1 }
                };
                hv.calls().inject_next(share_call, action);
            }
            _ => {}
        }
        let private = hv.faults().into_iter().filter(|f| f.reason == FaultReason::PrivateTarget).count();
        assert_eq!(private, 0, "a device reached private memory");
    }

    hv.calls().clear_injections();
    for l in live.drain(..) {
        let dev = devs[l.dev].as_ref().expect("attached");
        // SAFETY: the record's own mapping, unmapped once.
        unsafe { layer.unmap(dev, ccdma::BusAddr(l.bus), l.len, l.dir, DmaAttrs::NONE) }
            .expect("final unmap");
    }
    for (_, c) in coherent.drain(..) {
        let dev = devs.iter().flatten().find(|d| d.serial() == c.device_serial()).expect("its device");
        layer.free_coherent(dev, c).expect("final free");
    }
    for d in devs.into_iter().flatten() {
        layer.detach(d).expect("final detach");
    }
    assert_eq!(layer.stats().slots_in_use, 0, "slots leaked");
    // Every page shared now is a pool's or one a free reported quarantined. (A part-way failed
    // unshare reports its whole request quarantined, though the pages before the failure did go
    // private: the count is an upper bound, never short.)
    let shared = hv.shared_pages();
    assert!(shared >= pool_shared, "pool pages were unshared: {shared} < {pool_shared}");
    assert!(
        shared <= pool_shared + quarantined,
        "shared pages leaked: {shared} > {pool_shared} + {quarantined}"
    );
}
