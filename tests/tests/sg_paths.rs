//! Scatter-gather on the paths without IOMMU: packing, merging, limits, syncs, misuse and failures
//! in the middle of a list. Every mapped list is checked by `run_list` (limits, layout, exact bytes
//! both ways, fault log, counters back to baseline, no hypervisor call).

mod sg_common;

use ccdma::sg::{dma_segments, SgEntry, SgOptions};
use ccdma::{DeviceConfig, DmaAttrs, DmaDirection, DmaError, FailureKind, PhysAddr};
use ccdma_hv_model::Region;
use ccdma_tests::*;
use sg_common::*;

const DIRS: [DmaDirection; 3] =
    [DmaDirection::ToDevice, DmaDirection::FromDevice, DmaDirection::Bidirectional];

fn spec(len: usize, page_offset: usize, high: bool) -> Spec {
    Spec { len, page_offset, high, phys: false, follows: false }
}

/// A list mixing small and page-sized buffers, CPU buffers and physical ranges, low and high RAM,
/// and runs of contiguous buffers.
fn mixed_specs() -> Vec<Spec> {
    let mut v = Vec::new();
    for k in 0..12usize {
        v.push(Spec {
            len: [64, 1500, 4096, 9000, 300, 2048][k % 6],
            page_offset: (k * 712) % 4096,
            high: k % 3 != 0,
            phys: k % 4 == 1,
            follows: k % 5 == 2,
        });
    }
    v
}

#[test]
fn every_path_every_direction_round_trips_a_mixed_list() {
    for kind in [PathKind::Direct, PathKind::BounceAboveMask, PathKind::BounceAlways] {
        let env = Env::new(kind);
        for dir in DIRS {
            for coalesce in [true, false] {
                let n =
                    run_list(&env, env.config(), &mixed_specs(), dir, DmaAttrs::NONE, coalesce, 1).unwrap();
                if coalesce && kind == PathKind::BounceAlways {
                    // Everything is bounced and the device has no limits: one run holds it all.
                    assert_eq!(n, 1, "{kind:?} {dir:?}");
                }
            }
        }
    }
}

#[test]
fn network_list_packs_into_few_segments() {
    let env = Env::new(PathKind::BounceAlways);
    let specs = network_specs(64, 3);
    let total: usize = specs.iter().map(|s| s.len).sum();
    let cfg = env.config().with_max_segment_size(16 * 1024);
    let packed = run_list(&env, cfg, &specs, DmaDirection::ToDevice, DmaAttrs::NONE, true, 3).unwrap();
    let unpacked = run_list(&env, cfg, &specs, DmaDirection::ToDevice, DmaAttrs::NONE, false, 3).unwrap();
    assert_eq!(unpacked, 64);
    // Packing fills segments up to the max segment size: at most one more segment than the bytes
    // need, per segment a buffer may not fit at the end.
    assert!(packed <= total.div_ceil(16 * 1024) * 2, "{packed} segments for {total} bytes");
    assert!(packed * 4 <= unpacked, "packing gave {packed} segments for 64 buffers");
}

#[test]
fn direct_path_merges_contiguous_buffers_within_limits() {
    let env = Env::new(PathKind::Direct);
    // Eight 4 KiB pages back to back: one segment without limits.
    let pages: Vec<Spec> = (0..8).map(|k| Spec { follows: k > 0, ..spec(4096, 0, true) }).collect();
    assert_eq!(run_list(&env, env.config(), &pages, DmaDirection::ToDevice, DmaAttrs::NONE, true, 5), Ok(1));
    // Max segment 8 KiB: pairs.
    let cfg = env.config().with_max_segment_size(8192);
    assert_eq!(run_list(&env, cfg, &pages, DmaDirection::FromDevice, DmaAttrs::NONE, true, 6), Ok(4));
    // Boundary every 16 KiB: the merged segments stop at each boundary.
    let cfg = env.config().with_segment_boundary_mask(0x3fff);
    assert_eq!(run_list(&env, cfg, &pages, DmaDirection::Bidirectional, DmaAttrs::NONE, true, 7), Ok(2));
    // Not contiguous (each buffer ends 96 bytes before the next page): nothing to merge.
    let apart: Vec<Spec> = (0..8).map(|_| spec(4000, 0, true)).collect();
    assert_eq!(run_list(&env, env.config(), &apart, DmaDirection::ToDevice, DmaAttrs::NONE, true, 8), Ok(8));
    // A buffer crossing the boundary cannot be used directly and cannot be bounced here.
    let cfg = env.config().with_segment_boundary_mask(0xfff);
    let r = run_list(
        &env,
        cfg,
        &[spec(100, 0, true), spec(200, 4000, true)],
        DmaDirection::ToDevice,
        DmaAttrs::NONE,
        true,
        9,
    );
    assert_eq!(r, Err(DmaError::SegmentLimit { index: 1, len: 200 }));
}

#[test]
fn bounce_above_mask_uses_low_buffers_directly_and_bounces_the_rest() {
    let env = Env::new(PathKind::BounceAboveMask);
    let hv = env.hv;
    let specs = [spec(1000, 0, false), spec(1000, 0, true), spec(1000, 0, true), spec(1000, 0, false)];
    let inputs = lay_out(hv, &specs, 11);
    let dev = env.attach(env.config());
    let mut list = entries(hv, &inputs);
    let n = env.layer.map_sg(&dev, &mut list, DmaDirection::ToDevice, DmaAttrs::NONE).unwrap();
    assert_eq!(n, 3, "low, packed pair of high buffers, low");
    let bounced: Vec<bool> = list.iter().map(|e| e.is_bounced()).collect();
    assert_eq!(bounced, [false, true, true, false]);
    assert_eq!(list[0].mapped_at().unwrap().0, inputs[0].phys);
    assert_eq!(env.layer.stats().slots_in_use, 1, "two 1000-byte buffers share one 2 KiB slot");
    env.layer.unmap_sg(&dev, &mut list, DmaDirection::ToDevice, DmaAttrs::NONE).unwrap();
    assert_eq!(env.layer.stats().slots_in_use, 0);
    env.detach(dev);
    // A low buffer that crosses the device's boundary is bounced instead of refused.
    let cfg = env.config().with_segment_boundary_mask(0xfff);
    let n = run_list(
        &env,
        cfg,
        &[spec(3000, 3000, false)],
        DmaDirection::Bidirectional,
        DmaAttrs::NONE,
        true,
        12,
    );
    assert_eq!(n, Ok(1));
}

#[test]
fn min_align_mask_bits_are_kept_and_limit_packing() {
    let env = Env::new(PathKind::BounceAlways);
    // NVMe style: page-aligned full pages keep offset 0 back to back, so they all pack.
    let cfg = env.config().with_min_align_mask(0xfff);
    let pages: Vec<Spec> = (0..6).map(|_| spec(4096, 0, true)).collect();
    assert_eq!(run_list(&env, cfg, &pages, DmaDirection::ToDevice, DmaAttrs::NONE, true, 13), Ok(1));
    // Buffers at unrelated page offsets cannot follow each other: each keeps its own bits.
    let odd = [spec(100, 0x123, true), spec(100, 0x456, true), spec(100, 0x789, true)];
    assert_eq!(run_list(&env, cfg, &odd, DmaDirection::FromDevice, DmaAttrs::NONE, true, 14), Ok(3));
    // ... unless the next one starts exactly where the stream puts it.
    let chain = [spec(0x100, 0x100, true), spec(0x300, 0x200, true)];
    assert_eq!(run_list(&env, cfg, &chain, DmaDirection::Bidirectional, DmaAttrs::NONE, true, 15), Ok(1));
}

#[test]
fn boundary_and_max_segment_split_packed_runs() {
    let env = Env::new(PathKind::BounceAlways);
    let specs: Vec<Spec> = (0..16).map(|k| spec(1000 + k * 10, k * 100, true)).collect();
    for (mss, boundary) in [(4096u32, u64::MAX), (u32::MAX, 0xfff), (3000, 0x1fff), (1200, 0xfff)] {
        let cfg = env.config().with_max_segment_size(mss).with_segment_boundary_mask(boundary);
        for dir in DIRS {
            let n = run_list(&env, cfg, &specs, dir, DmaAttrs::NONE, true, 16).unwrap();
            let fit = (mss as u64).min(boundary.saturating_add(1));
            let total: u64 = specs.iter().map(|s| s.len as u64).sum();
            assert!(n as u64 >= total.div_ceil(fit), "{n} segments for mss {mss} boundary {boundary:#x}");
            // Two buffers fit in a segment except with the smallest max segment.
            assert_eq!(n == 16, mss == 1200, "{n} segments for mss {mss} boundary {boundary:#x}");
        }
    }
    // A buffer longer than the max segment is refused whole.
    let cfg = env.config().with_max_segment_size(1024);
    let r = run_list(
        &env,
        cfg,
        &[spec(100, 0, true), spec(1025, 0, true)],
        DmaDirection::ToDevice,
        DmaAttrs::NONE,
        true,
        17,
    );
    assert_eq!(r, Err(DmaError::SegmentLimit { index: 1, len: 1025 }));
}

#[test]
fn attributes_follow_single_mapping_semantics() {
    let env = Env::new(PathKind::BounceAlways);
    let specs = mixed_specs();
    // Preserve-unwritten: the device sees the originals on a from-device list.
    run_list(&env, env.config(), &specs, DmaDirection::FromDevice, DmaAttrs::PRESERVE_UNWRITTEN, true, 18)
        .unwrap();
    // Skip-CPU-sync: nothing copied either way; the caller syncs explicitly.
    let hv = env.hv;
    let inputs = lay_out(hv, &specs, 19);
    let before = guest_stream(hv, &inputs);
    let dev = env.attach(env.config());
    let mut list = entries(hv, &inputs);
    let dir = DmaDirection::Bidirectional;
    let n = env.layer.map_sg(&dev, &mut list, dir, DmaAttrs::SKIP_CPU_SYNC).unwrap();
    let segs: Vec<_> = dma_segments(&list).collect();
    assert_eq!(segs.len(), n);
    let d = env.device();
    assert!(device_read(d, &segs).iter().all(|&b| b == 0), "skip-sync copied the originals");
    env.layer.sync_sg_for_device(&dev, &mut list, dir).unwrap();
    assert_eq!(device_read(d, &segs), before);
    let written = pattern(before.len(), 20);
    device_write(d, &segs, &written);
    env.layer.sync_sg_for_cpu(&dev, &mut list, dir).unwrap();
    assert_eq!(guest_stream(hv, &inputs), written, "sync for cpu did not bring the device's bytes");
    // Skip-sync at unmap: later device writes do not come back.
    device_write(d, &segs, &pattern(before.len(), 21));
    env.layer.unmap_sg(&dev, &mut list, dir, DmaAttrs::SKIP_CPU_SYNC).unwrap();
    assert_eq!(guest_stream(hv, &inputs), written);
    assert_eq!(env.layer.stats().slots_in_use, 0);
    assert_no_faults(hv);
}

#[test]
fn pool_exhausted_mid_list_leaves_nothing_mapped() {
    let env = Env::new(PathKind::BounceAlways);
    let (hv, layer) = (env.hv, env.layer);
    // The blockers' device is another id: run_list attaches (and detaches) the env's own.
    let dev = env.attach(DeviceConfig { id: env.id + 100, ..env.config() });
    // Fill the pool with 256 KiB blockers, then free one: room for part of the list only.
    let block = hv.alloc(256 * 1024, Region::High);
    let mut blockers = Vec::new();
    // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
    while let Ok(b) = unsafe {
        layer.map_phys(&dev, PhysAddr(block), 256 * 1024, DmaDirection::ToDevice, DmaAttrs::NO_WARN)
    } {
        blockers.push(b);
    }
    assert_eq!(blockers.len() as u64, POOL_LEN / (256 * 1024));
    let b = blockers.pop().unwrap();
    // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
    unsafe { layer.unmap(&dev, b, 256 * 1024, DmaDirection::ToDevice, DmaAttrs::NONE) }.unwrap();
    let failures = layer.stats().failures_of(FailureKind::PoolExhausted);
    // 24 buffers of 20 KB, one run each: the first dozen fit, then the pool runs dry.
    let specs: Vec<Spec> = (0..24).map(|k| spec(20_000, k * 8, true)).collect();
    for dir in DIRS {
        let r = run_list(&env, env.config(), &specs, dir, DmaAttrs::NO_WARN, false, 22);
        assert!(matches!(r, Err(DmaError::PoolExhausted { .. })), "{r:?}");
        // Packed, the list needs fewer slots but still more than are free.
        let r = run_list(&env, env.config(), &specs, dir, DmaAttrs::NO_WARN, true, 23);
        assert!(matches!(r, Err(DmaError::PoolExhausted { .. })), "{r:?}");
    }
    assert_eq!(layer.stats().failures_of(FailureKind::PoolExhausted), failures + 6);
    // The part that fits maps fine: the pool is usable afterwards.
    run_list(&env, env.config(), &specs[..10], DmaDirection::Bidirectional, DmaAttrs::NONE, false, 24)
        .unwrap();
    for b in blockers {
        // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
        unsafe { layer.unmap(&dev, b, 256 * 1024, DmaDirection::ToDevice, DmaAttrs::NONE) }.unwrap();
    }
    assert_eq!(layer.stats().slots_in_use, 0);
}

#[test]
fn misuse_is_refused_and_changes_nothing() {
    let env = Env::new(PathKind::BounceAlways);
    let (hv, layer) = (env.hv, env.layer);
    let dev = env.attach(env.config());
    let specs: Vec<Spec> = (0..6).map(|k| spec(700 + k, 0, true)).collect();
    let dir = DmaDirection::FromDevice;
    let ins_a = lay_out(hv, &specs, 30);
    let ins_b = lay_out(hv, &specs, 31);
    let mut a = entries(hv, &ins_a);
    let mut b = entries(hv, &ins_b);
    let opts = SgOptions { coalesce: false, p2p: None };
    assert_eq!(layer.map_sg_with(&dev, &mut a, dir, DmaAttrs::NONE, &opts), Ok(6));
    assert_eq!(layer.map_sg(&dev, &mut b, dir, DmaAttrs::NONE), Ok(1));
    let slots = layer.stats().slots_in_use;
    let segs_a: Vec<_> = dma_segments(&a).collect();
    let seg_b = b[0].dma_segment().unwrap();

    // Mapping a mapped list.
    assert_eq!(layer.map_sg(&dev, &mut a, dir, DmaAttrs::NONE), Err(DmaError::SgListState { mapped: true }));
    // The single-mapping face cannot unmap or sync a scatter-gather run.
    // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
    assert_eq!(
        // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
        unsafe { layer.unmap(&dev, seg_b.addr, seg_b.len, dir, DmaAttrs::NONE) },
        Err(DmaError::UnknownMapping(seg_b.addr))
    );
    // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
    assert!(unsafe { layer.sync_for_cpu(&dev, segs_a[0].addr, 0, 1, dir) }.is_err());
    // Wrong direction at unmap.
    assert!(matches!(
        layer.unmap_sg(&dev, &mut a, DmaDirection::Bidirectional, DmaAttrs::NONE),
        Err(DmaError::DirectionMismatch { .. })
    ));
    // Half a list, or entries swapped between lists.
    assert!(layer.unmap_sg(&dev, &mut a[1..], dir, DmaAttrs::NONE).is_err());
    std::mem::swap(&mut a[2], &mut b[0]);
    assert!(layer.unmap_sg(&dev, &mut a, dir, DmaAttrs::NONE).is_err());
    assert!(layer.unmap_sg(&dev, &mut b, dir, DmaAttrs::NONE).is_err());
    assert!(layer.sync_sg_for_cpu(&dev, &mut a, dir).is_err());
    std::mem::swap(&mut a[2], &mut b[0]);
    // Another device of the layer whose pools differ, and an unmapped list.
    let mut fresh = entries(hv, &lay_out(hv, &specs, 32));
    assert_eq!(
        layer.unmap_sg(&dev, &mut fresh, dir, DmaAttrs::NONE),
        Err(DmaError::SgListState { mapped: false })
    );
    assert_eq!(
        layer.unmap_sg(&dev, &mut [], dir, DmaAttrs::NONE),
        Err(DmaError::SgListState { mapped: false })
    );
    assert_eq!(layer.map_sg(&dev, &mut [], dir, DmaAttrs::NONE), Err(DmaError::ZeroLength));
    // A read-only buffer cannot be mapped for the device to write.
    let ro = [1u8; 16];
    let mut l = [SgEntry::to_device(&ro)];
    assert_eq!(layer.map_sg(&dev, &mut l, dir, DmaAttrs::NONE), Err(DmaError::WrongDirection));
    assert_eq!(layer.map_sg(&dev, &mut l, DmaDirection::ToDevice, DmaAttrs::NONE), Ok(1));
    layer.unmap_sg(&dev, &mut l, DmaDirection::ToDevice, DmaAttrs::NONE).unwrap();
    // A zero-length entry anywhere: nothing mapped.
    let mut z = entries(hv, &lay_out(hv, &specs[..2], 33));
    // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
    z.push(unsafe { SgEntry::phys(PhysAddr(ins_a[0].phys), 0) });
    assert_eq!(layer.map_sg(&dev, &mut z, dir, DmaAttrs::NONE), Err(DmaError::ZeroLength));
    assert!(z.iter().all(|e| !e.is_mapped()));

    // Nothing above changed either list: both unmap cleanly and bring the device's bytes back.
    assert_eq!(layer.stats().slots_in_use, slots);
    let d = env.device();
    let wa = pattern(segs_a.iter().map(|s| s.len).sum(), 34);
    device_write(d, &segs_a, &wa);
    layer.unmap_sg(&dev, &mut a, dir, DmaAttrs::NONE).unwrap();
    layer.unmap_sg(&dev, &mut b, dir, DmaAttrs::NONE).unwrap();
    drop(a);
    assert_eq!(guest_stream(hv, &ins_a), wa);
    // Double unmap.
    assert_eq!(
        layer.unmap_sg(&dev, &mut b, dir, DmaAttrs::NONE),
        Err(DmaError::SgListState { mapped: false })
    );
    assert_eq!(layer.stats().slots_in_use, 0);
    assert_no_faults(hv);
}

#[test]
fn a_list_from_another_device_is_refused() {
    // Two pools; a 24-bit device reaches only the low one, a 64-bit device prefers the high one.
    let (hv, layer) = guest(ccdma_hv_model::HvConfig::pseries(6 * GIB), &[(LOW_POOL, MIB), (HIGH_POOL, MIB)]);
    let wide = layer.attach(ccdma::DeviceConfig::new(1, ccdma::DmaMask::new(64).unwrap())).unwrap();
    let narrow = layer.attach(ccdma::DeviceConfig::new(2, ccdma::DmaMask::new(24).unwrap())).unwrap();
    let phys = hv.alloc(4096, Region::High);
    // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
    let mut l = [unsafe { SgEntry::phys(PhysAddr(phys), 4096) }];
    layer.map_sg(&wide, &mut l, DmaDirection::ToDevice, DmaAttrs::NONE).unwrap();
    assert!(l[0].mapped_at().unwrap().0 >= HIGH_POOL);
    assert!(layer.unmap_sg(&narrow, &mut l, DmaDirection::ToDevice, DmaAttrs::NONE).is_err());
    layer.unmap_sg(&wide, &mut l, DmaDirection::ToDevice, DmaAttrs::NONE).unwrap();
    assert_eq!(layer.stats().slots_in_use, 0);
}
