//! Figure for the closing note: DMA segments out per segment in for a network-like list (64 buffers
//! of 64..=1514 bytes at scattered page offsets), with and without packing, on each path and for a
//! few device limits. Every list goes through `run_list` (limits, layout, bytes, counters checked).
//!
//! `cargo test --release -p ccdma-tests --test sg_figures -- --nocapture` prints the table.

mod sg_common;

use ccdma::{DmaAttrs, DmaDirection};
use sg_common::*;

const LISTS: u64 = 16;
const BUFFERS: usize = 64;

#[test]
fn segments_out_per_segment_in_for_network_lists() {
    println!("DMA segments out per segment in, {BUFFERS} buffers of 64..=1514 bytes, mean of {LISTS} lists");
    println!("{:<18} {:<34} {:>9} {:>11}", "path", "device limits", "packing", "no packing");
    for kind in [PathKind::BounceAlways, PathKind::IommuPremapped, PathKind::IommuStrict, PathKind::Direct] {
        let env = Env::new(kind);
        for (limits, mss, boundary, mam) in [
            ("no limits", u32::MAX, u64::MAX, 0u64),
            ("max seg 64 KiB, boundary 4 GiB", 65536, 0xffff_ffff, 0),
            ("max seg 4 KiB, boundary 4 KiB", 4096, 0xfff, 0),
            ("min_align 0xfff (NVMe-like)", 65536, 0xffff_ffff, 0xfff),
        ] {
            if kind == PathKind::Direct && boundary == 0xfff {
                // Buffers crossing a page cannot be used directly with a 4 KiB boundary (refused).
                continue;
            }
            let cfg = env
                .config()
                .with_max_segment_size(mss)
                .with_segment_boundary_mask(boundary)
                .with_min_align_mask(mam);
            let mut out = [0usize; 2];
            for (i, coalesce) in [true, false].into_iter().enumerate() {
                for seed in 0..LISTS {
                    let specs = network_specs(BUFFERS, seed);
                    out[i] +=
                        run_list(&env, cfg, &specs, DmaDirection::ToDevice, DmaAttrs::NONE, coalesce, seed)
                            .expect("network list maps");
                }
            }
            let per_in = |n: usize| n as f64 / (LISTS as usize * BUFFERS) as f64;
            println!(
                "{:<18} {:<34} {:>9.3} {:>11.3}",
                format!("{kind:?}"),
                limits,
                per_in(out[0]),
                per_in(out[1])
            );
            assert_eq!(out[1], LISTS as usize * BUFFERS, "without packing every buffer is a segment");
            if kind == PathKind::Direct {
                // Nothing is bounced and the buffers are not contiguous: nothing to pack.
                assert_eq!(out[0], out[1]);
            } else if mam == 0 {
                // Bytes per list ~ 50 KB: a handful of segments where limits allow, at most one per
                // 4 KiB block with the tight limits.
                assert!(per_in(out[0]) < 0.35, "{kind:?} {limits}: {}", per_in(out[0]));
            }
        }
    }
}
