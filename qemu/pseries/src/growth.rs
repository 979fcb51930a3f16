//! Pool growth on real TCE hypercalls (issue 13): a memory source over RAM just below the coherent
//! pages, and the check that a device attached before growth does DMA through a grown pool in its
//! window (QEMU's own TCE table), and that the pool goes back when idle with its entries cleared.

use ccdma::{DmaAttrs, DmaDirection, DmaPath, GrowthConfig, MemorySource, PhysAddr, PoolConfig, SlotMeta};
use ccdma_qemu_common::blk::Blk;
use ccdma_qemu_common::checks;
use ccdma_qemu_common::memory::{StaticRegion, TakeOnce};
use ccdma_qemu_common::report::Report;
use ccdma_qemu_common::rng::VirtioRng;
use core::ptr::NonNull;
use spin::Mutex;
use virtio_drivers::transport::Transport;
use virtio_drivers::Hal;

use crate::dma::{self, KernelBinding};

/// Bytes per grown pool, and how many the source holds.
pub const GROW_BYTES: usize = 2 << 20;
const GROW_POOLS: usize = 2;
const GROW_SLOTS: usize = GROW_BYTES / 2048;

static META_A: TakeOnce<[SlotMeta; GROW_SLOTS]> = TakeOnce::new([SlotMeta::EMPTY; GROW_SLOTS]);
static META_B: TakeOnce<[SlotMeta; GROW_SLOTS]> = TakeOnce::new([SlotMeta::EMPTY; GROW_SLOTS]);

/// What the source has: its base, which chunks are lent, and the metadata blocks not lent.
struct State {
    base: u64,
    lent: [bool; GROW_POOLS],
    meta: [Option<NonNull<SlotMeta>>; GROW_POOLS],
}

// SAFETY: the pointers name `'static` metadata blocks owned by the source while stored here.
unsafe impl Send for State {}

/// `GROW_POOLS` chunks of `GROW_BYTES` of RAM, 2 MiB aligned, used by nothing else in this kernel.
pub struct KernelSource(Mutex<State>);

/// The kernel's source (set up by [`init`]).
pub static SOURCE: KernelSource =
    KernelSource(Mutex::new(State { base: 0, lent: [false; GROW_POOLS], meta: [None; GROW_POOLS] }));

/// Bytes of RAM the source needs below `top` (2 MiB aligned).
pub const SOURCE_BYTES: u64 = (GROW_BYTES * GROW_POOLS) as u64;

/// Give the source its RAM `[base, base + SOURCE_BYTES)` and its metadata.
pub fn init(base: u64) -> bool {
    let (Some(a), Some(b)) = (META_A.take(), META_B.take()) else { return false };
    let mut s = SOURCE.0.lock();
    s.base = base;
    s.meta = [NonNull::new(a.as_mut_ptr()), NonNull::new(b.as_mut_ptr())];
    true
}

/// The growth policy of this kernel: 2 MiB pools, two at most, shrunk after two idle ticks.
pub fn config() -> GrowthConfig {
    GrowthConfig {
        align: GROW_BYTES as u64,
        idle_ticks: 2,
        pool: PoolConfig::default(),
        ..GrowthConfig::new(GROW_BYTES, GROW_POOLS)
    }
}

// SAFETY: the chunks are RAM that nothing else in this kernel uses (`dma::init` places them below
// the coherent pages, above everything else), each lent at most once until given back; the metadata
// blocks are private statics, each lent at most once until given back.
unsafe impl MemorySource for KernelSource {
    fn take(&self, len: usize, align: u64, limit: u64) -> Option<PhysAddr> {
        let mut s = self.0.lock();
        if len != GROW_BYTES || s.base == 0 || align > GROW_BYTES as u64 {
            return None;
        }
        let k = (0..GROW_POOLS).find(|&k| !s.lent[k])?;
        let at = s.base + (k * GROW_BYTES) as u64;
        if at + len as u64 - 1 > limit {
            return None;
        }
        s.lent[k] = true;
        Some(PhysAddr(at))
    }
    fn give_back(&self, phys: PhysAddr, _len: usize) {
        let mut s = self.0.lock();
        let k = ((phys.0 - s.base) / GROW_BYTES as u64) as usize;
        if k < GROW_POOLS {
            s.lent[k] = false;
        }
    }
    fn take_meta(&self, slots: usize) -> Option<NonNull<SlotMeta>> {
        if slots > GROW_SLOTS {
            return None;
        }
        self.0.lock().meta.iter_mut().find_map(|m| m.take())
    }
    fn give_back_meta(&self, meta: NonNull<SlotMeta>, _slots: usize) {
        if let Some(free) = self.0.lock().meta.iter_mut().find(|m| m.is_none()) {
            *free = Some(meta);
        }
    }
}

/// A buffer the fill mappings name (to-device, CPU sync skipped: nothing is read from it).
static FILL: StaticRegion<{ 256 << 10 }> = StaticRegion::new();

/// The fill mappings of [`check`].
static HELD: Mutex<[Option<(ccdma::BusAddr, usize)>; 2100]> = Mutex::new([None; 2100]);

/// Fill the fixed pool, so blk's next request can only go to a grown pool; read the disk signature
/// through it; let go, and check the grown pool goes back with its window entries cleared.
pub fn check<B: KernelBinding, H: Hal, R: KernelBinding, RH: Hal, RT: Transport>(
    report: &mut Report,
    blk: &mut Blk<H>,
    rng: Option<&mut VirtioRng<RH, RT>>,
) {
    let layer = match dma::layer() {
        Ok(layer) => layer,
        Err(error) => return report.fail("growth.windows", error),
    };
    let Some(dev) = B::slot().get() else { return };
    let fill = PhysAddr(FILL.phys_range().start);
    let attrs = DmaAttrs::SKIP_CPU_SYNC;
    // The fill mappings live in a static, not in this frame (50 KB).
    let mut held = HELD.lock();
    let mut n = 0;
    let live_tces = layer.iommu_stats().live_tces;
    // Fill every fixed pool: large runs first, then single slots, until no fixed slot is free.
    let fixed_free = || {
        (0..ccdma::MAX_POOLS)
            .filter_map(|i| layer.pool(i))
            .map(|(p, _)| p.slots() - p.slots_in_use())
            .sum::<usize>()
    };
    for len in [256 << 10, 2048] {
        while fixed_free() * 2048 >= len && n < held.len() {
            // SAFETY: FILL is a static this kernel uses for nothing else; to-device with the CPU sync
            // skipped, the layer never reads or writes it.
            match unsafe { layer.map_phys(dev, fill, len, DmaDirection::ToDevice, attrs) } {
                Ok(bus) => {
                    held[n] = Some((bus, len));
                    n += 1;
                }
                Err(_) => break,
            }
        }
    }
    let failures = layer.stats().total_failures();
    let before = (0..ccdma::MAX_POOLS)
        .filter(|&i| layer.pool(i).is_none())
        .filter_map(|i| layer.pool_ref(i).map(|(p, _)| p.high_water()))
        .sum::<usize>();
    checks::check_disk_signature(report, blk);
    // The rng device sits in the default window (32-bit mask): its buffers go to the grown pool too.
    if let Some(rng) = rng {
        checks::check_rng(report, "rng-grown", rng);
    }
    let grown = layer.growth_stats();
    // Where the grown pool sits for each device: in blk's DDW (above 4 GiB), in rng's default window.
    let grown_index = (0..ccdma::MAX_POOLS).find(|&i| layer.pool(i).is_none() && layer.pool_ref(i).is_some());
    let rng_dev = R::slot().get();
    let at_blk = grown_index.and_then(|i| layer.pool_bus_of(dev, i));
    let at_rng = grown_index.zip(rng_dev).and_then(|(i, d)| layer.pool_bus_of(d, i));
    // Premapped: the pool sits in the device's DDW (above 4 GiB) or default window (below); strict
    // devices enter it per mapping (no premapped address).
    let placed = |path: DmaPath, bus: Option<ccdma::BusAddr>| match (path, bus) {
        (DmaPath::IommuDdw, Some(b)) => b.0 >= 1 << 32,
        (DmaPath::IommuPremapped, Some(b)) => b.0 < 1 << 32,
        (DmaPath::IommuStrict, Some(_)) => true,
        _ => false,
    };
    let rng_ok = rng_dev.is_none_or(|d| placed(d.path(), at_rng));
    report.expect(
        "growth.windows",
        placed(dev.path(), at_blk) && rng_ok && fixed_free() == 0,
        format_args!(
            "grown pool {} at bus {} for blk ({}) and {} for rng ({}); the fixed \
             pool stayed full, so both devices' DMA went through the grown pool",
            crate::show::Hex(grown_index),
            crate::show::Hex(at_blk.map(|b| b.0)),
            dev.path().name(),
            crate::show::Hex(at_rng.map(|b| b.0)),
            rng_dev.map_or("absent", |d| d.path().name())
        ),
    );
    let after = (0..ccdma::MAX_POOLS)
        .filter(|&i| layer.pool(i).is_none())
        .filter_map(|i| layer.pool_ref(i).map(|(p, _)| p.high_water()))
        .sum::<usize>();
    report.expect(
        "growth.grown_pool_used",
        grown.grown >= 1 && fixed_free() == 0 && after > before && layer.stats().total_failures() == failures,
        format_args!(
            "{} mappings filled the fixed pool; {} pool(s) grown ({} KiB); the requests of blk and rng raised the grown pool's high water {before} -> {after} slots; failures {failures} before, {} after",
            n,
            grown.pools,
            grown.bytes >> 10,
            layer.stats().total_failures()
        ),
    );
    for (bus, len) in held.iter_mut().filter_map(Option::take) {
        // SAFETY: each is a mapping made above on `dev`, unmapped once (taken out of `held`).
        let _ = unsafe { layer.unmap(dev, bus, len, DmaDirection::ToDevice, attrs) };
    }
    let mut returned = 0;
    for _ in 0..=config().idle_ticks {
        returned += layer.growth_tick();
    }
    let after = layer.growth_stats();
    report.expect(
        "growth.shrunk",
        after.pools == 0 && returned as u64 == grown.pools && layer.iommu_stats().live_tces == live_tces,
        format_args!(
            "{returned} grown pool(s) handed back after {} idle ticks; {} live entries as before growth; {} kept",
            config().idle_ticks + 1,
            layer.iommu_stats().live_tces,
            after.kept_bytes
        ),
    );
}
