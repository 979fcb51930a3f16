//! The kernel's ccdma instance: one [`DmaLayer`] over [`PLATFORM`], its pool above 4 GiB, the
//! pages for coherent buffers, and one `virtio_drivers::Hal` per managed device.
//!
//! Each managed device gets a binding type (`ccdma_qemu_common::dma_binding!`, naming
//! [`PseriesDma`]); its HAL is [`Observed`]`<Binding>`: ccdma's `CcdmaHal` plus the report's
//! bookkeeping and a check of every bus address against QEMU's TCE table and the ledger.

use ccdma::iommu::BusRange;
use ccdma::storage::{CellInitError, LayerCell};
use ccdma::{BusAddr, DmaLayer, IommuConfig, PhysAddr, PoolConfig, SlotMeta, TceBatching};
use ccdma_qemu_common::binding::KernelDma;
use ccdma_qemu_common::memory::{SlotBitmap, StaticRegion, TakeOnce, PAGE_SIZE};
pub use ccdma_qemu_common::setup::{PoolInfo, SetupError};
use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use spin::Mutex;

use crate::config::Batching;
use crate::platform::{PseriesPlatform, PLATFORM};

/// The layer type of this kernel.
pub type Layer = DmaLayer<'static, &'static PseriesPlatform>;

/// A bus address no device can reach: far above RAM and every BAR, and outside every IOMMU window
/// this kernel creates. `share` hands it out when ccdma refuses a mapping (see `ccdma::virtio_hal`).
pub const UNREACHABLE_BUS: BusAddr = BusAddr(0x0000_dead_0000_0000);

/// Bytes per pool.
pub const POOL_SIZE: usize = 4 << 20;
/// Slot metadata entries per pool.
const POOL_SLOTS: usize = POOL_SIZE / 2048;

static LAYER: LayerCell<&'static PseriesPlatform> = LayerCell::new();

/// Bus-range storage of the IOMMU path (split between the domains).
static BUS_RANGES: TakeOnce<[BusRange; 8 * 256]> = TakeOnce::new([BusRange::EMPTY; 8 * 256]);
/// Per-CPU list pages (`Batching::PerCpu`); the shared page is the first of them.
pub const LIST_PAGES: usize = 2;
/// The pages ccdma shares once and hands entries over in (`H_PUT_TCE_INDIRECT` lists), as the
/// configuration's batching asks: none, the first, or all of them.
static LIST_PAGE: StaticRegion<{ LIST_PAGES * PAGE_SIZE }> = StaticRegion::new();
static LIST_PAGE_TAKEN: AtomicBool = AtomicBool::new(false);
static HIGH_META: TakeOnce<[SlotMeta; POOL_SLOTS]> = TakeOnce::new([SlotMeta::EMPTY; POOL_SLOTS]);

/// Builds the layer with one pool at the top of RAM (above 4 GiB: no 32-bit device reaches it
/// but through a window) and the coherent pages just below it, and turns the IOMMU path on. The
/// pool's pages (and the list pages `batching` asks for) become shared (ultravisor) here.
pub fn init(iommu: IommuConfig, batching: Batching) -> Result<(PoolInfo, &'static Layer), SetupError> {
    let top = PLATFORM.ledger().ram_end();
    let phys = top.saturating_sub(POOL_SIZE as u64) & !((2 << 20) - 1);
    let coherent = phys - COHERENT_BYTES as u64;
    if coherent < 1 << 32 || !PLATFORM.ledger().is_ram(coherent, (POOL_SIZE + COHERENT_BYTES) as u64) {
        return Err(SetupError::NoHighRam);
    }
    // Built and configured inside LAYER (`LayerCell::init_with`): no stack frame holds the layer,
    // and a failed set-up gives its shared pools back.
    let built = LAYER.init_with(&PLATFORM, |layer| {
        let meta = HIGH_META.take().ok_or(SetupError::AlreadyInitialised)?;
        // SAFETY: the top of RAM above 4 GiB is used by nothing else in this kernel (image, stack and
        // statics live below 16 MiB) and the layer lives for the rest of the run.
        unsafe { layer.add_pool(PhysAddr(phys), POOL_SIZE, meta, PoolConfig::default()) }
            .map_err(SetupError::Pool)?;
        COHERENT_BASE.store(coherent, Ordering::Relaxed);
        // Pool growth: RAM just below the coherent pages (2 MiB aligned), before any device attaches
        // so every DDW keeps room for grown pools.
        let grow_base = (coherent & !((2 << 20) - 1)).saturating_sub(crate::growth::SOURCE_BYTES);
        if grow_base >= 1 << 32
            && PLATFORM.ledger().is_ram(grow_base, crate::growth::SOURCE_BYTES)
            && crate::growth::init(grow_base)
        {
            layer.enable_growth(&crate::growth::SOURCE, crate::growth::config()).map_err(SetupError::Pool)?;
        }
        let ranges = BUS_RANGES.take().ok_or(SetupError::AlreadyInitialised)?;
        if LIST_PAGE_TAKEN.swap(true, Ordering::AcqRel) {
            return Err(SetupError::AlreadyInitialised);
        }
        let first = PhysAddr(LIST_PAGE.phys_range().start);
        let batching = match batching {
            Batching::PerEntry => TceBatching::PerEntry,
            Batching::PerCpu => TceBatching::PerCpuPages { first, count: LIST_PAGES },
            Batching::SharedPage => TceBatching::SharedPage(first),
            Batching::PoolPages => TceBatching::PoolPages { count: ccdma::DEFAULT_POOL_LIST_PAGES },
        };
        // SAFETY: LIST_PAGE is used by nothing but the layer, handed over once (the flag above).
        unsafe { layer.enable_iommu(iommu.with_batching(batching), ranges) }.map_err(SetupError::Pool)?;
        Ok(())
    });
    match built {
        Ok(layer) => Ok((PoolInfo { phys, len: POOL_SIZE }, layer)),
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
// ccdma makes coherent buffers out of pages the caller owns: these come from just below the pool,
// above 4 GiB. ccdma zeroes and shares them and enters them into the device's window.

const COHERENT_PAGES: usize = 128;
const COHERENT_BYTES: usize = COHERENT_PAGES * PAGE_SIZE;
static COHERENT_USED: Mutex<SlotBitmap<{ COHERENT_PAGES / 64 }>> = Mutex::new(SlotBitmap::new());
/// Physical start of the coherent area (set by `init`).
static COHERENT_BASE: AtomicU64 = AtomicU64::new(0);

fn coherent_base() -> u64 {
    COHERENT_BASE.load(Ordering::Relaxed)
}

/// `pages` free pages of the coherent area.
pub fn alloc_pages(pages: usize) -> Option<PhysAddr> {
    let first = COHERENT_USED.lock().alloc(pages, 1)?;
    Some(PhysAddr(coherent_base() + (first * PAGE_SIZE) as u64))
}

/// Gives pages back to the coherent area.
pub fn free_pages(phys: PhysAddr, pages: usize) {
    let first = (phys.0 - coherent_base()) as usize / PAGE_SIZE;
    COHERENT_USED.lock().free(first, pages);
}

// ---------------------------------------------------------------------------------------------
// The bindings (common crate) reach this kernel's instance through `PseriesDma`.

pub use ccdma_qemu_common::binding::{attach, AttachError, KernelBinding, NoLayer, Observed};

/// This kernel's ccdma instance, for the bindings declared with `ccdma_qemu_common::dma_binding!`.
pub struct PseriesDma;

impl KernelDma for PseriesDma {
    type Platform = PseriesPlatform;
    const UNREACHABLE_BUS: BusAddr = UNREACHABLE_BUS;

    fn layer() -> Result<&'static Layer, NoLayer> {
        layer()
    }

    fn platform() -> &'static PseriesPlatform {
        &PLATFORM
    }

    fn alloc_pages(pages: usize) -> Option<PhysAddr> {
        alloc_pages(pages)
    }

    fn free_pages(phys: PhysAddr, pages: usize) {
        free_pages(phys, pages)
    }
}

/// A BAR range as the CPU reaches it: real mode, so the CPU address of the PCI address.
pub fn mmio_identity(paddr: u64, size: usize) -> NonNull<u8> {
    let cpu = crate::pci::cpu_address_of(paddr);
    NonNull::new(cpu as *mut u8).unwrap_or_else(|| panic!("MMIO region {paddr:#x}+{size:#x} at address 0"))
}
