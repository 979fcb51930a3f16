//! The kernel's ccdma instance: one [`DmaLayer`] over [`PLATFORM`], its pools, and one
//! `virtio_drivers::Hal` per managed device.
//!
//! Each managed device gets a binding type (see [`dma_binding!`]) that names the layer and the
//! device's [`Device`] handle; its HAL is [`Observed`]`<Binding>`, which is ccdma's
//! [`CcdmaHal`] plus bookkeeping for the report: bytes each way, the range of bus addresses the
//! device was given, and a check of every such address against the page ledger.

use ccdma::iommu::BusRange;
use ccdma::virtio_hal::{dma_direction, CcdmaHal, HalBinding, HalFailure};
use ccdma::{BusAddr, Device, DmaError, DmaLayer, IommuConfig, PhysAddr, PoolConfig, SlotMeta};
use core::cell::UnsafeCell;
use core::fmt;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use spin::{Mutex, Once};
use virtio_drivers::{BufferDirection, Hal, PhysAddr as VirtioAddr};

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

static LAYER: Once<Layer> = Once::new();

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
/// The page ccdma shares once and hands entries over in (`H_PUT_TCE_INDIRECT` list).
static LIST_PAGE: StaticRegion<PAGE_SIZE> = StaticRegion::new();
static LIST_PAGE_TAKEN: AtomicBool = AtomicBool::new(false);
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

/// A pool as set up, for the report.
#[derive(Clone, Copy, Debug)]
pub struct PoolInfo {
    /// Physical start.
    pub phys: u64,
    /// Bytes.
    pub len: usize,
}

/// Why the layer could not be set up.
#[derive(Debug)]
pub enum SetupError {
    /// No RAM above 4 GiB (or not identity-mapped) for the high pool.
    NoHighRam,
    /// The layer refused a pool or the IOMMU configuration.
    Pool(DmaError),
    /// `init` ran twice.
    AlreadyInitialised,
}

impl fmt::Display for SetupError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Self::NoHighRam => write!(f, "no identity-mapped RAM above 4 GiB for the high pool"),
            Self::Pool(error) => write!(f, "pool refused: {error}"),
            Self::AlreadyInitialised => write!(f, "layer already set up"),
        }
    }
}

/// Builds the layer and its pools, and turns its IOMMU path on when `iommu` is given. The pools'
/// pages become shared (ledger) here.
pub fn init(
    placement: PoolPlacement,
    iommu: Option<IommuConfig>,
) -> Result<([Option<PoolInfo>; 2], &'static Layer), SetupError> {
    let mut layer = Layer::new(&PLATFORM);
    let mut pools = [None, None];
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
        if LIST_PAGE_TAKEN.swap(true, Ordering::AcqRel) {
            return Err(SetupError::AlreadyInitialised);
        }
        let list = PhysAddr(LIST_PAGE.phys_range().start);
        // SAFETY: LIST_PAGE is used by nothing but the layer, handed over once (the flag above).
        unsafe { layer.enable_iommu(config.with_list_page(list), ranges) }.map_err(SetupError::Pool)?;
    }
    let mut fresh = false;
    let layer = LAYER.call_once(|| {
        fresh = true;
        layer
    });
    if !fresh {
        return Err(SetupError::AlreadyInitialised);
    }
    Ok((pools, layer))
}

/// The layer; panics if [`init`] has not run (a kernel bug: devices are only set up after it).
pub fn layer() -> &'static Layer {
    LAYER.get().expect("DMA layer used before dma::init")
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
// Per-device bindings and their bookkeeping.

/// What one device's HAL did, for the report.
pub struct DeviceStats {
    /// Streaming maps (`share`).
    pub maps: AtomicU64,
    /// Bytes of buffers the device reads (`DriverToDevice`, `Both`).
    pub bytes_to_device: AtomicU64,
    /// Bytes of buffers the device writes (`DeviceToDriver`, `Both`).
    pub bytes_from_device: AtomicU64,
    /// Lowest bus address handed to the device (maps and coherent memory).
    pub min_bus: AtomicU64,
    /// Highest bus address (last byte) handed to the device.
    pub max_bus: AtomicU64,
    /// Lowest physical address behind those bus addresses (first page of each).
    pub min_phys: AtomicU64,
    /// Highest physical address behind them (first page of each).
    pub max_phys: AtomicU64,
    /// Coherent pages allocated (virtqueues).
    pub coherent_pages: AtomicU64,
    /// Requests ccdma refused (the device got [`UNREACHABLE_BUS`]).
    pub refused: AtomicU64,
    /// Addresses given to the device that were not shared memory.
    pub unshared_given: AtomicU64,
    /// Test knob: buffers of exactly this length (0: none) are not mapped; the device is handed
    /// the private buffer's own physical address (containment checks).
    pub passthrough_len: AtomicUsize,
    /// The address the knob last handed out, so its `unshare` is recognised later.
    passthrough_given: AtomicU64,
    /// Test knob: buffers of exactly this length (0: none) are mapped `DriverToDevice` whatever
    /// the driver asked (a driver that gets the direction wrong; strict-mode permission checks).
    pub to_device_len: AtomicUsize,
    /// The bus address of the last such mapping, so its `unshare` uses the same direction.
    pub to_device_given: AtomicU64,
    /// The last HAL failure.
    pub last_failure: Mutex<Option<HalFailure>>,
}

impl DeviceStats {
    /// Nothing recorded.
    pub const fn new() -> Self {
        Self {
            maps: AtomicU64::new(0),
            bytes_to_device: AtomicU64::new(0),
            bytes_from_device: AtomicU64::new(0),
            min_bus: AtomicU64::new(u64::MAX),
            max_bus: AtomicU64::new(0),
            min_phys: AtomicU64::new(u64::MAX),
            max_phys: AtomicU64::new(0),
            coherent_pages: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            unshared_given: AtomicU64::new(0),
            passthrough_len: AtomicUsize::new(0),
            passthrough_given: AtomicU64::new(u64::MAX),
            to_device_len: AtomicUsize::new(0),
            to_device_given: AtomicU64::new(u64::MAX),
            last_failure: Mutex::new(None),
        }
    }

    fn saw_bus(&self, device: u32, bus: u64, len: usize) {
        self.min_bus.fetch_min(bus, Ordering::Relaxed);
        self.max_bus.fetch_max(bus + len as u64 - 1, Ordering::Relaxed);
        // Behind the IOMMU the window says where the memory is; without, the bus address is it.
        if let Some(phys) = PLATFORM.iommu().translate(device, bus).unwrap_or(Some(bus)) {
            self.min_phys.fetch_min(phys, Ordering::Relaxed);
            self.max_phys.fetch_max(phys, Ordering::Relaxed);
        }
    }

    /// Lowest and highest physical address behind the bus addresses handed out, if any.
    pub fn phys_range(&self) -> Option<(u64, u64)> {
        let min = self.min_phys.load(Ordering::Relaxed);
        (min != u64::MAX).then(|| (min, self.max_phys.load(Ordering::Relaxed)))
    }

    /// Lowest and highest bus address handed out, if any.
    pub fn bus_range(&self) -> Option<(u64, u64)> {
        let min = self.min_bus.load(Ordering::Relaxed);
        (min != u64::MAX).then(|| (min, self.max_bus.load(Ordering::Relaxed)))
    }
}

/// A [`HalBinding`] with the kernel's bookkeeping.
pub trait KernelBinding: HalBinding<Platform = &'static QemuPlatform> {
    /// Short name for reports.
    const NAME: &'static str;
    /// The device's bookkeeping.
    fn stats() -> &'static DeviceStats;
    /// Where the binding keeps its device handle.
    fn slot() -> &'static Once<Device>;
}

/// Declares a binding type `$name` for one device, reported as `$label`.
macro_rules! dma_binding {
    ($(#[$meta:meta])* $name:ident, $label:literal) => {
        $(#[$meta])*
        pub struct $name;

        const _: () = {
            static DEVICE: ::spin::Once<::ccdma::Device> = ::spin::Once::new();
            static STATS: $crate::dma::DeviceStats = $crate::dma::DeviceStats::new();
            static COHERENT: [::ccdma::virtio_hal::CoherentSlot; 8] =
                [const { ::ccdma::virtio_hal::CoherentSlot::new() }; 8];

            impl ::ccdma::virtio_hal::HalBinding for $name {
                type Platform = &'static $crate::platform::QemuPlatform;

                fn layer() -> &'static $crate::dma::Layer {
                    $crate::dma::layer()
                }

                fn device() -> &'static ::ccdma::Device {
                    DEVICE.get().expect(concat!($label, ": HAL used before the device was attached"))
                }

                fn unreachable_bus_addr() -> ::ccdma::BusAddr {
                    $crate::dma::UNREACHABLE_BUS
                }

                unsafe fn mmio_phys_to_virt(paddr: u64, size: usize) -> ::core::ptr::NonNull<u8> {
                    $crate::dma::mmio_identity(paddr, size)
                }

                fn alloc_pages(pages: usize) -> Option<::ccdma::PhysAddr> {
                    $crate::dma::alloc_pages(pages)
                }

                unsafe fn free_pages(phys: ::ccdma::PhysAddr, pages: usize) {
                    $crate::dma::free_pages(phys, pages)
                }

                fn coherent_slots() -> &'static [::ccdma::virtio_hal::CoherentSlot] {
                    &COHERENT
                }

                fn failed(failure: ::ccdma::virtio_hal::HalFailure) {
                    $crate::dma::record_failure(&STATS, $label, failure)
                }
            }

            impl $crate::dma::KernelBinding for $name {
                const NAME: &'static str = $label;

                fn stats() -> &'static $crate::dma::DeviceStats {
                    &STATS
                }

                fn slot() -> &'static ::spin::Once<::ccdma::Device> {
                    &DEVICE
                }
            }
        };
    };
}
pub(crate) use dma_binding;

/// Identity mapping of a BAR range (every BAR sits below the identity map's limit).
pub fn mmio_identity(paddr: u64, size: usize) -> NonNull<u8> {
    memory::ptr_of(paddr, size)
        .unwrap_or_else(|| panic!("MMIO region {paddr:#x}+{size:#x} is outside the identity map"))
}

/// Records a HAL failure of one device (and logs it: a refused request is worth a line).
pub fn record_failure(stats: &DeviceStats, label: &str, failure: HalFailure) {
    if matches!(failure, HalFailure::Share { .. }) {
        stats.refused.fetch_add(1, Ordering::Relaxed);
    }
    log::info!("{label}: HAL request refused: {failure:?}");
    *stats.last_failure.lock() = Some(failure);
}

/// Attaches the device of binding `B` to the layer with `config` and records its handle. A
/// device behind the IOMMU must be registered with the platform first.
pub fn attach<B: KernelBinding>(config: ccdma::DeviceConfig) -> Result<&'static Device, DmaError> {
    let device = layer().attach(config)?;
    Ok(B::slot().call_once(|| device))
}

/// The HAL of binding `B`'s device: ccdma's [`CcdmaHal`] plus the kernel's bookkeeping and its
/// check that every bus address given to the device reaches only shared memory.
pub struct Observed<B: KernelBinding>(core::marker::PhantomData<B>);

impl<B: KernelBinding> Observed<B> {
    fn device_id() -> u32 {
        B::device().config().id
    }
}

// SAFETY: every call is forwarded to `CcdmaHal<B>`, whose guarantees carry over unchanged; the
// bookkeeping only reads addresses and lengths. The passthrough knob (tests of IOMMU containment
// only) hands the device the buffer's own physical address, which is valid memory of the buffer
// that virtio-drivers owns until `unshare`; the to-device knob asks for a mapping that gives the
// device less than the driver wanted, never more.
unsafe impl<B: KernelBinding> Hal for Observed<B> {
    fn dma_alloc(pages: usize, direction: BufferDirection) -> (VirtioAddr, NonNull<u8>) {
        let (bus, cpu) = CcdmaHal::<B>::dma_alloc(pages, direction);
        if bus != 0 {
            let stats = B::stats();
            stats.coherent_pages.fetch_add(pages as u64, Ordering::Relaxed);
            stats.saw_bus(Self::device_id(), bus, pages * PAGE_SIZE);
            if !PLATFORM.check_device_address(Self::device_id(), BusAddr(bus), pages * PAGE_SIZE) {
                stats.unshared_given.fetch_add(1, Ordering::Relaxed);
            }
        }
        (bus, cpu)
    }

    unsafe fn dma_dealloc(paddr: VirtioAddr, vaddr: NonNull<u8>, pages: usize) -> i32 {
        B::stats().coherent_pages.fetch_sub(pages as u64, Ordering::Relaxed);
        // SAFETY: the caller's contract, passed on.
        unsafe { CcdmaHal::<B>::dma_dealloc(paddr, vaddr, pages) }
    }

    unsafe fn mmio_phys_to_virt(paddr: VirtioAddr, size: usize) -> NonNull<u8> {
        // SAFETY: the caller's contract, passed on.
        unsafe { CcdmaHal::<B>::mmio_phys_to_virt(paddr, size) }
    }

    unsafe fn share(buffer: NonNull<[u8]>, direction: BufferDirection) -> VirtioAddr {
        let stats = B::stats();
        let len = buffer.len();
        if len == stats.passthrough_len.load(Ordering::Relaxed) {
            let phys = memory::phys_of(buffer.as_ptr().cast());
            stats.passthrough_given.store(phys, Ordering::Relaxed);
            return phys;
        }
        let lie = len == stats.to_device_len.load(Ordering::Relaxed);
        let direction = if lie { BufferDirection::DriverToDevice } else { direction };
        // SAFETY: the caller's contract, passed on (a to-device mapping only reads the buffer).
        let bus = unsafe { CcdmaHal::<B>::share(buffer, direction) };
        if bus == UNREACHABLE_BUS.0 {
            return bus;
        }
        if lie {
            stats.to_device_given.store(bus, Ordering::Relaxed);
        }
        stats.maps.fetch_add(1, Ordering::Relaxed);
        let direction = dma_direction(direction);
        if direction.device_reads() {
            stats.bytes_to_device.fetch_add(len as u64, Ordering::Relaxed);
        }
        if direction.device_writes() {
            stats.bytes_from_device.fetch_add(len as u64, Ordering::Relaxed);
        }
        stats.saw_bus(Self::device_id(), bus, len);
        if !PLATFORM.check_device_address(Self::device_id(), BusAddr(bus), len) {
            stats.unshared_given.fetch_add(1, Ordering::Relaxed);
        }
        bus
    }

    unsafe fn unshare(paddr: VirtioAddr, buffer: NonNull<[u8]>, direction: BufferDirection) {
        let given = &B::stats().passthrough_given;
        if paddr == given.load(Ordering::Relaxed) && paddr == memory::phys_of(buffer.as_ptr().cast()) {
            // Handed out by the passthrough knob: nothing was mapped.
            given.store(u64::MAX, Ordering::Relaxed);
            return;
        }
        let lied = &B::stats().to_device_given;
        let direction = if paddr == lied.load(Ordering::Relaxed) {
            lied.store(u64::MAX, Ordering::Relaxed);
            BufferDirection::DriverToDevice
        } else {
            direction
        };
        // SAFETY: the caller's contract, passed on.
        unsafe { CcdmaHal::<B>::unshare(paddr, buffer, direction) }
    }
}
