//! The kernel's ccdma instance: one [`DmaLayer`] over [`PLATFORM`], its pools, and one
//! `virtio_drivers::Hal` per managed device.
//!
//! Each managed device gets a binding type (`ccdma_qemu_common::dma_binding!`, naming [`X86Dma`]);
//! its HAL is [`Observed`]`<Binding>`: ccdma's `CcdmaHal` plus the report's bookkeeping and a check
//! of every bus address against the page ledger.

use ccdma::iommu::BusRange;
use ccdma::storage::{CellInitError, LayerCell};
use ccdma::{BusAddr, DmaLayer, IommuConfig, PhysAddr, PoolConfig, SlotMeta};
use core::cell::UnsafeCell;

use core::sync::atomic::{AtomicU64, Ordering};
use spin::Mutex;

use ccdma_qemu_common::binding::KernelDma;
pub use ccdma_qemu_common::setup::{PoolInfo, SetupError};

use crate::memory::{self, SlotBitmap, StaticRegion, PAGE_SIZE};
use crate::platform::{QemuPlatform, PLATFORM};

/// The layer type of this kernel.
pub type Layer = DmaLayer<'static, &'static QemuPlatform>;

/// A bus address no device can reach: far above RAM and every BAR, and outside every IOMMU window
/// this kernel creates. `share` hands it out when ccdma refuses a mapping (see `ccdma::virtio_hal`).
pub const UNREACHABLE_BUS: BusAddr = BusAddr(0x0000_dead_0000_0000);

/// Bytes per pool.
pub const POOL_SIZE: usize = 4 << 20;
/// Slot metadata entries per pool.
const POOL_SLOTS: usize = POOL_SIZE / 2048;

static LAYER: LayerCell<&'static QemuPlatform> = LayerCell::new();

pub use ccdma_qemu_common::memory::TakeOnce;

/// Pool memory below 4 GiB (in `.bss`), 2 MiB aligned like the high pool so a dynamic window
/// can map both with 2 MiB entries.
#[repr(C, align(2097152))]
struct PoolRegion(UnsafeCell<[u8; POOL_SIZE]>);

// SAFETY: reached only through raw pointers, handed to the layer once (see `init`).
unsafe impl Sync for PoolRegion {}

static LOW_POOL: PoolRegion = PoolRegion(UnsafeCell::new([0; POOL_SIZE]));
/// Bus-range storage of the IOMMU path (split between the domains).
static BUS_RANGES: TakeOnce<[BusRange; 8 * 256]> = TakeOnce::new([BusRange::EMPTY; 8 * 256]);
static LOW_META: TakeOnce<[SlotMeta; POOL_SLOTS]> = TakeOnce::new([SlotMeta::EMPTY; POOL_SLOTS]);
static HIGH_META: TakeOnce<[SlotMeta; POOL_SLOTS]> = TakeOnce::new([SlotMeta::EMPTY; POOL_SLOTS]);

/// Where pools go.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum PoolPlacement {
    /// One pool below 4 GiB; coherent pages below 4 GiB.
    Low,
    /// One pool at the top of RAM above 4 GiB, and one below 4 GiB for devices that cannot reach
    /// it (without an IOMMU, a 32-bit device needs memory below 4 GiB); coherent pages below
    /// 4 GiB for the same reason.
    HighAndLow,
    /// Behind an IOMMU: everything above 4 GiB, one pool at the top of RAM and the coherent pages
    /// just below it. The windows give every device bus addresses below its mask.
    High,
}

/// Builds the layer and its pools, and turns its IOMMU path on when `iommu` is given. The pools'
/// pages become shared (ledger) here.
pub fn init(
    placement: PoolPlacement,
    iommu: Option<IommuConfig>,
) -> Result<([Option<PoolInfo>; 2], &'static Layer), SetupError> {
    let mut pools = [None, None];
    // Built and configured inside LAYER (`LayerCell::init_with`): no stack frame holds the layer.
    let built = LAYER.init_with(&PLATFORM, |layer| {
        if placement != PoolPlacement::Low {
            let top = PLATFORM.ledger().ram_end();
            let phys = top.saturating_sub(POOL_SIZE as u64) & !((2 << 20) - 1);
            let coherent = phys - COHERENT_BYTES as u64;
            if coherent < 1 << 32 || memory::ptr_of(coherent, POOL_SIZE + COHERENT_BYTES).is_none() {
                return Err(SetupError::NoHighRam);
            }
            let meta = HIGH_META.take().ok_or(SetupError::AlreadyInitialised)?;
            // SAFETY: the top of RAM above 4 GiB is used by nothing else in this kernel (code, data,
            // stacks and every static live below 4 GiB) and the layer lives for the rest of the run.
            unsafe { layer.add_pool(PhysAddr(phys), POOL_SIZE, meta, PoolConfig::default()) }
                .map_err(SetupError::Pool)?;
            pools[0] = Some(PoolInfo { phys, len: POOL_SIZE });
            if placement == PoolPlacement::High {
                // Also unused by anything else (see above); handed out page by page by `alloc_pages`.
                COHERENT_BASE.store(coherent, Ordering::Relaxed);
            }
        }
        if placement != PoolPlacement::High {
            let low = memory::phys_of(LOW_POOL.0.get().cast());
            let meta = LOW_META.take().ok_or(SetupError::AlreadyInitialised)?;
            // SAFETY: LOW_POOL is used by nothing but the layer (it is private to this module and
            // handed over once, guarded by LOW_META's take-once flag).
            unsafe { layer.add_pool(PhysAddr(low), POOL_SIZE, meta, PoolConfig::default()) }
                .map_err(SetupError::Pool)?;
            pools[1] = Some(PoolInfo { phys: low, len: POOL_SIZE });
        }
        if let Some(config) = iommu {
            let ranges = BUS_RANGES.take().ok_or(SetupError::AlreadyInitialised)?;
            // No list page: the virtio-iommu backend maps ranges itself (no H_PUT_TCE_INDIRECT), so
            // sharing a page for entry lists would expose a page for nothing.
            // SAFETY: no list page is given, the one thing `enable_iommu`'s contract is about.
            unsafe { layer.enable_iommu(config, ranges) }.map_err(SetupError::Pool)?;
        }
        Ok(())
    });
    match built {
        Ok(layer) => Ok((pools, layer)),
        Err(CellInitError::Occupied) => Err(SetupError::AlreadyInitialised),
        Err(CellInitError::Configure(e)) => Err(e),
    }
}

/// The layer, once [`init`] built it; [`NoLayer`] before, an error the caller reports (no panic).
pub fn layer() -> Result<&'static Layer, NoLayer> {
    LAYER.get().ok_or(NoLayer)
}

// ---------------------------------------------------------------------------------------------
// Pages for coherent buffers (virtqueues).
//
// ccdma makes coherent buffers out of pages the caller owns: these come from a `.bss` area below
// 4 GiB (so they suit 32-bit devices without an IOMMU too). ccdma zeroes and shares them and,
// behind an IOMMU, enters them into the device's window.

const COHERENT_PAGES: usize = 128;
const COHERENT_BYTES: usize = COHERENT_PAGES * PAGE_SIZE;
static COHERENT_AREA: StaticRegion<COHERENT_BYTES> = StaticRegion::new();
static COHERENT_USED: Mutex<SlotBitmap<{ COHERENT_PAGES / 64 }>> = Mutex::new(SlotBitmap::new());
/// Physical start of the coherent area: `COHERENT_AREA` (below 4 GiB) unless `init` placed it
/// above 4 GiB ([`PoolPlacement::High`]).
static COHERENT_BASE: AtomicU64 = AtomicU64::new(0);

fn coherent_base() -> u64 {
    match COHERENT_BASE.load(Ordering::Relaxed) {
        0 => COHERENT_AREA.phys_range().start,
        base => base,
    }
}

/// `pages` free pages of the coherent area.
pub fn alloc_pages(pages: usize) -> Option<PhysAddr> {
    let first = COHERENT_USED.lock().alloc(pages, 1)?;
    Some(PhysAddr(coherent_base() + (first * PAGE_SIZE) as u64))
}

/// Physical range of the coherent area.
pub fn coherent_area() -> core::ops::Range<u64> {
    let base = coherent_base();
    base..base + COHERENT_BYTES as u64
}

/// Gives pages back to the coherent area.
pub fn free_pages(phys: PhysAddr, pages: usize) {
    let first = (phys.0 - coherent_base()) as usize / PAGE_SIZE;
    COHERENT_USED.lock().free(first, pages);
}

// ---------------------------------------------------------------------------------------------
// The bindings (common crate) reach this kernel's instance through `X86Dma`.

pub use ccdma_qemu_common::binding::{KernelBinding, NoLayer, Observed};

/// This kernel's ccdma instance, for the bindings declared with `ccdma_qemu_common::dma_binding!`.
pub struct X86Dma;

impl KernelDma for X86Dma {
    type Platform = QemuPlatform;
    const UNREACHABLE_BUS: BusAddr = UNREACHABLE_BUS;

    fn layer() -> Result<&'static Layer, NoLayer> {
        layer()
    }

    fn platform() -> &'static QemuPlatform {
        &PLATFORM
    }

    fn alloc_pages(pages: usize) -> Option<PhysAddr> {
        alloc_pages(pages)
    }

    fn free_pages(phys: PhysAddr, pages: usize) {
        free_pages(phys, pages)
    }
}
