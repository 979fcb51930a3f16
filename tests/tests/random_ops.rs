//! Model-based random operations over every platform flavour (issue 8): plain (direct and
//! bounce-above-mask devices), pseries without IOMMU, TDX, SEV bus encoding, SEV-SNP, Arm CCA, pseries
//! behind the TCE IOMMU premapped with and without DDW, and strict.
//!
//! Each flavour attaches and detaches devices of masks 24..64 bits (`min_align_mask` 0, 0xFFF,
//! 0x1FFF, some deferred), maps and unmaps through the safe face (`Mapping`) and the raw face
//! (`map_phys`, `map_ptr` on guest RAM and on heap memory), every direction and attribute, 1 B to
//! 256 KiB at unaligned addresses; lets the model's DMA engine read and write at the bus address;
//! syncs both ways; maps and unmaps scatter-gather lists; allocates, uses and frees coherent buffers;
//! and tries misuse (double unmap, wrong size or direction, never-mapped address, sync outside the
//! mapping or with another direction, zero length, list misuse, free through the wrong device,
//! detach while busy), each of which must fail and change nothing. An oracle records everything live
//! with the bytes each side must see. After every step the DESIGN.md section 7 invariants are
//! checked against the model: no fault but those provoked on purpose (which must be exactly those),
//! strict devices reach only live mappings with their direction's permission, premapped windows hold
//! only pools and coherent buffers, every entry targets shared memory, counters back to baseline
//! whenever nothing is live, bytes exactly as the device wrote them.
//!
//! Reproduce a failure with the seed and op count it prints:
//! `CCDMA_RANDOM_SEED=0x... CCDMA_RANDOM_OPS=N cargo test --release -p ccdma-tests --test random_ops <flavour>`.
//! `CCDMA_RANDOM_OPS=N` alone runs N operations per flavour (default 45,000: 405,000 in all).

mod ccdma_api;
mod random_ops_support;

use random_ops_support::{ops_per_flavour, run_flavour, Flavour};

const DEFAULT_OPS: u64 = 45_000;

fn run(f: Flavour) {
    let s = run_flavour(f, ops_per_flavour(DEFAULT_OPS));
    assert!(s.ops >= ops_per_flavour(DEFAULT_OPS));
}

#[test]
fn plain() {
    run(Flavour::Plain);
}

#[test]
fn pseries_no_iommu() {
    run(Flavour::Pseries);
}

#[test]
fn tdx() {
    run(Flavour::Tdx);
}

#[test]
fn sev_encoding() {
    run(Flavour::Sev);
}

#[test]
fn snp() {
    run(Flavour::Snp);
}

#[test]
fn cca() {
    run(Flavour::Cca);
}

#[test]
fn iommu_premapped_ddw() {
    run(Flavour::IommuDdw);
}

#[test]
fn iommu_premapped_no_ddw() {
    run(Flavour::IommuNoDdw);
}

#[test]
fn iommu_strict() {
    run(Flavour::Strict);
}
