//! `cargo run --release -p ccdma-tests --example hot_map -- N [MODE]`: N 4 KiB to-device map+unmap
//! pairs on the bounce path (confidential pseries model, no IOMMU, growth off, one 16 MiB pool), and N
//! page-aligned 4 KiB memcpys, for instruction counts under callgrind. Run it with two values of N and
//! subtract, so set-up (model, pool, device) cancels out:
//!
//! ```text
//! valgrind --tool=callgrind --callgrind-out-file=/tmp/hm1 target/release/examples/hot_map 1000
//! valgrind --tool=callgrind --callgrind-out-file=/tmp/hm2 target/release/examples/hot_map 2000
//! ```
//!
//! (`(Ir(2000) - Ir(1000)) / 1000` is one map+unmap plus one memcpy; `MODE` `map` or `memcpy` runs only
//! that loop, to split the two.) `MODE` `skip` maps with `SKIP_CPU_SYNC` instead; `ddw` maps through
//! the modelled TCE IOMMU, the pool premapped in a 64-bit device's DDW (the bench's premapped row);
//! `full` makes N 4 KiB maps that are refused, the pool held full by raw 256 KiB mappings (the
//! bench's "refused" row).

use std::hint::black_box;

use ccdma::iommu::BusRange;
use ccdma::{
    DeviceConfig, DmaAttrs, DmaDirection, DmaLayer, DmaMask, DmaPath, IommuConfig, PhysAddr, PoolConfig,
};
use ccdma_hv_model::{HvConfig, Region, TceConfig};
use ccdma_tests::{add_pool, model, pattern, GIB, HIGH_POOL, MIB, MID_POOL};

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let mode = args.next().unwrap_or_else(|| "both".into());
    let hv = model(HvConfig::pseries(6 * GIB));
    let ddw = mode == "ddw";
    if ddw {
        hv.enable_iommu(TceConfig::default());
        hv.add_iommu_device(1, 64);
    }
    let mut layer = DmaLayer::new(hv);
    // As the bench's fixtures: the IOMMU one has its pool at 256 MiB.
    add_pool(&mut layer, if ddw { MID_POOL } else { HIGH_POOL }, 16 * MIB, PoolConfig::default())
        .expect("pool");
    if ddw {
        let cfg = IommuConfig { max_domains: 1, ..IommuConfig::premapped() };
        // SAFETY: no list page is named by a premapped configuration; the ranges are a fresh allocation.
        unsafe { layer.enable_iommu(cfg, vec![BusRange::EMPTY; 256].leak()) }.expect("iommu");
    }
    let dev = layer.attach(DeviceConfig::new(1, DmaMask::BITS_64)).expect("attach");
    assert_eq!(dev.path(), if ddw { DmaPath::IommuDdw } else { DmaPath::BounceAlways });
    // Page-aligned, and not a multiple of 1 GiB from the pool's slots (see benches/dma.rs).
    let skew = (1 << 20) + 5 * 4096;
    let buf = hv.alloc(4096 + skew, Region::High) + skew;
    hv.memory().write(buf, &pattern(4096, 3));
    let attrs = if mode == "skip" { DmaAttrs::SKIP_CPU_SYNC } else { DmaAttrs::NONE };
    if mode == "full" {
        let run = 256 << 10;
        let held = hv.alloc(16 * MIB, Region::High);
        let mut live = Vec::new();
        loop {
            let phys = PhysAddr(held + (live.len() * run) as u64);
            // SAFETY: a fresh private allocation kept untouched until these mappings end; each
            // mapping lends a different 256 KiB of it.
            match unsafe { layer.map_phys(&dev, phys, run, DmaDirection::ToDevice, DmaAttrs::NO_WARN) } {
                Ok(b) => live.push(b),
                Err(_) => break,
            }
        }
        for _ in 0..n {
            // SAFETY: the program's own buffer; the map fails, so nothing is lent.
            let r = unsafe {
                layer.map_phys(
                    &dev,
                    PhysAddr(black_box(buf)),
                    4096,
                    DmaDirection::ToDevice,
                    DmaAttrs::NO_WARN,
                )
            };
            assert!(black_box(r).is_err());
        }
        for b in live {
            // SAFETY: a raw mapping made above, unmapped once.
            unsafe { layer.unmap(&dev, b, run, DmaDirection::ToDevice, DmaAttrs::NONE) }.expect("unmap");
        }
    }
    if mode != "memcpy" && mode != "full" {
        for _ in 0..n {
            // SAFETY: the buffer is a fresh allocation of this program; this slice is the only view.
            let b = unsafe { hv.slice_mut(buf, 4096) };
            let m = layer.map(&dev, black_box(b), DmaDirection::ToDevice, attrs).expect("map");
            black_box(m.bus_addr());
            m.unmap().expect("unmap");
        }
    }
    if mode != "map" && mode != "skip" && mode != "ddw" && mode != "full" {
        let layout = std::alloc::Layout::from_size_align(4096, 4096).unwrap();
        // SAFETY: non-zero sizes; freed below with the same layout.
        let (src, dst) = unsafe { (std::alloc::alloc_zeroed(layout), std::alloc::alloc_zeroed(layout)) };
        assert!(!src.is_null() && !dst.is_null());
        for _ in 0..n {
            // SAFETY: two distinct live 4 KiB allocations.
            unsafe { core::ptr::copy_nonoverlapping(black_box(src), black_box(dst), 4096) };
        }
        // SAFETY: allocated above with `layout`.
        unsafe {
            std::alloc::dealloc(src, layout);
            std::alloc::dealloc(dst, layout);
        }
    }
    assert_eq!(layer.stats().slots_in_use, 0);
    println!("{n} x 4 KiB ({mode})");
}
