//! Figures for issue 13: TCE hypercalls per MiB mapped (and unmapped) in strict mode, for each
//! batching against Linux in a secure guest, with 4 KiB and 64 KiB IOMMU pages. The counts are the
//! model's, per kind, and are exact: they are asserted, and printed with
//! `cargo test --release -p ccdma-tests --test tce_batching_figures -- --nocapture` (each table
//! is printed at once, after its counts were asserted).
//!
//! One MiB is four mappings of 256 KiB (the largest strict mapping a default pool makes), each
//! mapped and unmapped. Linux in a secure guest clears `FW_FEATURE_PUT_TCE_IND`, so it maps with one
//! `H_PUT_TCE` per entry, and clears a mapping with one `H_STUFF_TCE` (`tce_freemulti_pSeriesLP`):
//! its row is that arithmetic, not a measurement.

mod batching_support;

use std::fmt::Write;

use batching_support::{strict_guest, Mode, MAP};
use ccdma::VerifyPolicy;
use ccdma_hv_model::{CallKind, Region};
use ccdma_tests::MIB;

const KINDS: [CallKind; 4] =
    [CallKind::PutTce, CallKind::PutTceIndirect, CallKind::StuffTce, CallKind::GetTce];

/// Calls per kind (in `KINDS` order) to map and unmap one MiB.
fn per_mib(mode: Mode, page_shift: u32, verify: VerifyPolicy) -> [u64; 4] {
    let g = strict_guest(mode, page_shift, verify);
    let buf = g.hv.alloc(MAP as u64, Region::High);
    let before = KINDS.map(|k| g.calls(k));
    for seed in 0..(MIB as usize / MAP) as u64 {
        g.round_trip(buf, MAP, seed).unwrap();
    }
    g.assert_baseline();
    let after = KINDS.map(|k| g.calls(k));
    core::array::from_fn(|i| after[i] - before[i])
}

#[test]
fn hypercalls_per_mib_mapped_in_strict_mode() {
    let mut out = String::new();
    let mappings = MIB / MAP as u64;
    writeln!(out, "strict mode: TCE hypercalls per MiB mapped and unmapped ({mappings} mappings of 256 KiB)")
        .unwrap();
    writeln!(
        out,
        "{:<9} {:<24} {:>9} {:>18} {:>11} {:>6} | {:>9} {:>6}",
        "IOMMU pg",
        "batching",
        "H_PUT_TCE",
        "H_PUT_TCE_INDIRECT",
        "H_STUFF_TCE",
        "total",
        "+H_GET_TCE",
        "total"
    )
    .unwrap();
    for shift in [12u32, 16] {
        let entries = MIB >> shift;
        let per_map = entries / mappings;
        let page = format!("{} KiB", (1u64 << shift) / 1024);
        for (name, mode) in [
            ("(a) per-entry", Mode::PerEntry),
            ("(b) per-CPU pages (2)", Mode::PerCpu(2)),
            ("(c) one shared page", Mode::Shared),
        ] {
            let off = per_mib(mode, shift, VerifyPolicy::Off);
            let ends = per_mib(mode, shift, VerifyPolicy::Ends);
            // Exact: (a) one H_PUT_TCE per entry; (b), (c) one H_PUT_TCE_INDIRECT per mapping (at most
            // 512 entries); one H_STUFF_TCE per unmap. Read-back of the ends: one read per single-entry
            // call, two per batch.
            let want = match mode {
                Mode::PerEntry => [entries, 0, mappings, 0],
                _ => [0, mappings, mappings, 0],
            };
            assert_eq!(off, want, "{name}, {page}");
            let reads = match mode {
                Mode::PerEntry => entries + mappings * 2.min(per_map),
                _ => 2 * mappings * 2.min(per_map),
            };
            assert_eq!(ends[..3], want[..3], "{name}, {page}, read-back on");
            assert_eq!(ends[3], reads, "{name}, {page}: reads");
            let total: u64 = off.iter().sum();
            writeln!(
                out,
                "{page:<9} {name:<24} {:>9} {:>18} {:>11} {total:>6} | {:>9} {:>6}",
                off[0],
                off[1],
                off[2],
                ends[3],
                total + ends[3]
            )
            .unwrap();
        }
        // Linux (secure guest): arithmetic, as the module docs say. Its read-back column is empty:
        // Linux does not read entries back.
        writeln!(
            out,
            "{page:<9} {:<24} {:>9} {:>18} {:>11} {:>6} | {:>9} {:>6}",
            "Linux, secure guest",
            entries,
            0,
            mappings,
            entries + mappings,
            "-",
            "-"
        )
        .unwrap();
    }
    print!("{out}");
}

/// Calls per kind to map and unmap one scatter-gather list of 1 MiB (four 256 KiB entries): one
/// bus range and one batch of entries for the whole list.
fn sg_per_mib(mode: Mode, page_shift: u32) -> [u64; 4] {
    use ccdma::sg::SgEntry;
    use ccdma::{DmaAttrs, DmaDirection, PhysAddr};
    let g = strict_guest(mode, page_shift, VerifyPolicy::Off);
    let buf = g.hv.alloc(MIB, Region::High);
    let before = KINDS.map(|k| g.calls(k));
    let mut list: Vec<SgEntry<'static>> = (0..MIB / MAP as u64)
        // SAFETY: the test owns `buf` and leaves it alone until the list is unmapped.
        .map(|i| unsafe { SgEntry::phys(PhysAddr(buf + i * MAP as u64), MAP) })
        .collect();
    let (dir, attrs) = (DmaDirection::ToDevice, DmaAttrs::NONE);
    g.layer.map_sg(g.dev(), &mut list, dir, attrs).unwrap();
    g.layer.unmap_sg(g.dev(), &mut list, dir, attrs).unwrap();
    g.assert_baseline();
    let after = KINDS.map(|k| g.calls(k));
    core::array::from_fn(|i| after[i] - before[i])
}

#[test]
fn hypercalls_per_mib_of_one_scatter_gather_list() {
    let mut out = String::new();
    writeln!(out, "strict mode: TCE hypercalls to map and unmap one 1 MiB scatter-gather list (4 x 256 KiB), read-back off").unwrap();
    writeln!(
        out,
        "{:<9} {:<24} {:>9} {:>18} {:>11} {:>6}",
        "IOMMU pg", "batching", "H_PUT_TCE", "H_PUT_TCE_INDIRECT", "H_STUFF_TCE", "total"
    )
    .unwrap();
    for shift in [12u32, 16] {
        let entries = MIB >> shift;
        let page = format!("{} KiB", (1u64 << shift) / 1024);
        for (name, mode) in [
            ("(a) per-entry", Mode::PerEntry),
            ("(b) per-CPU pages (2)", Mode::PerCpu(2)),
            ("(c) one shared page", Mode::Shared),
        ] {
            let got = sg_per_mib(mode, shift);
            let want = match mode {
                Mode::PerEntry => [entries, 0, 1, 0],
                _ => [0, 1, 1, 0],
            };
            assert_eq!(got, want, "{name}, {page}");
            let total: u64 = got.iter().sum();
            writeln!(out, "{page:<9} {name:<24} {:>9} {:>18} {:>11} {total:>6}", got[0], got[1], got[2])
                .unwrap();
        }
    }
    print!("{out}");
}
