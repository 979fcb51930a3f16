//! Per-device `virtio_drivers::Hal` bindings on ccdma, with the bookkeeping both kernels report.
//!
//! Each managed device gets a binding type (see [`dma_binding!`](crate::dma_binding)) that names
//! the kernel's layer and the device's [`Device`] handle; its HAL is [`Observed`]`<Binding>`, which
//! is ccdma's [`CcdmaHal`] plus bookkeeping: bytes each way, the range of bus addresses the device
//! was given, the memory behind them, and a check of every such address against the page ledger
//! (through the kernel's [`KernelPlatform`]).

use ccdma::virtio_hal::{dma_direction, CcdmaHal, HalBinding, HalFailure};
use ccdma::{BusAddr, Device, DmaError, DmaLayer, PhysAddr, Platform};
use core::cell::UnsafeCell;
use core::mem::MaybeUninit;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use spin::Mutex;
use virtio_drivers::{BufferDirection, Hal, PhysAddr as VirtioAddr};

use crate::memory;

/// What a kernel's platform tells the bindings about a device's view of memory.
pub trait KernelPlatform: Platform + Sync + 'static {
    /// Where bus address `bus` of `device` leads: `Some(phys)`, or `None` where nothing is mapped.
    fn device_phys(&self, device: u32, bus: u64) -> Option<u64>;
    /// Checks that `[bus, bus + len)` given to `device` reaches only shared memory; records a
    /// ledger violation and returns `false` otherwise.
    fn check_device_address(&self, device: u32, bus: BusAddr, len: usize) -> bool;
    /// The IOMMU entry behind `bus` as the platform can read it back (for reports), if any.
    fn entry_of(&self, device: u32, bus: u64) -> Option<u64> {
        let _ = (device, bus);
        None
    }
}

/// The kernel's ccdma instance, as the bindings reach it.
pub trait KernelDma: 'static {
    /// The kernel's platform.
    type Platform: KernelPlatform;
    /// A bus address no device can reach, handed out when ccdma refuses a mapping.
    const UNREACHABLE_BUS: BusAddr;
    /// The layer, once the kernel's `dma::init` built it; [`NoLayer`] before.
    fn layer() -> Result<&'static DmaLayer<'static, &'static Self::Platform>, NoLayer>;
    /// The platform.
    fn platform() -> &'static Self::Platform;
    /// `pages` pages for a coherent buffer, owned by the caller until [`KernelDma::free_pages`].
    fn alloc_pages(pages: usize) -> Option<PhysAddr>;
    /// Gives pages from [`KernelDma::alloc_pages`] back.
    fn free_pages(phys: PhysAddr, pages: usize);
}

/// The layer was used before the kernel's `dma::init` built it (a kernel bug, reported as an error).
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub struct NoLayer;

impl core::fmt::Display for NoLayer {
    fn fmt(&self, f: &mut core::fmt::Formatter) -> core::fmt::Result {
        write!(f, "the DMA layer was used before dma::init built it")
    }
}

/// Why [`attach`] gave no device.
#[derive(Clone, Copy, Debug)]
pub enum AttachError {
    /// No layer yet.
    NoLayer,
    /// ccdma refused the attach (or the binding holds a device already: `DeviceIdInUse`).
    Refused(DmaError),
}

impl core::fmt::Display for AttachError {
    fn fmt(&self, f: &mut core::fmt::Formatter) -> core::fmt::Result {
        match self {
            Self::NoLayer => write!(f, "{NoLayer}"),
            Self::Refused(error) => write!(f, "{error}"),
        }
    }
}

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
    /// The same two, per half of the bus address space (below 4 GiB: default windows; above: a
    /// dynamic window or a 64-bit pool), so a report never prints one span across two windows.
    halves: [(AtomicU64, AtomicU64); 2],
    /// Lowest physical address behind those bus addresses (first page of each).
    pub min_phys: AtomicU64,
    /// Highest physical address behind them (first page of each).
    pub max_phys: AtomicU64,
    /// Coherent pages allocated (virtqueues).
    pub coherent_pages: AtomicU64,
    /// Requests ccdma refused (the device got [`KernelDma::UNREACHABLE_BUS`]).
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
    /// The bus address and the TCE behind it of the last such mapping (kept after `unshare`).
    pub to_device_last: Mutex<Option<(u64, Option<u64>)>>,
    /// The last HAL failure.
    pub last_failure: Mutex<Option<HalFailure>>,
}

/// Where the bus address space is split for [`DeviceStats::bus_ranges`].
const FOUR_GIB: u64 = 1 << 32;

impl DeviceStats {
    /// Nothing recorded.
    pub const fn new() -> Self {
        Self {
            maps: AtomicU64::new(0),
            bytes_to_device: AtomicU64::new(0),
            bytes_from_device: AtomicU64::new(0),
            min_bus: AtomicU64::new(u64::MAX),
            max_bus: AtomicU64::new(0),
            halves: [
                (AtomicU64::new(u64::MAX), AtomicU64::new(0)),
                (AtomicU64::new(u64::MAX), AtomicU64::new(0)),
            ],
            min_phys: AtomicU64::new(u64::MAX),
            max_phys: AtomicU64::new(0),
            coherent_pages: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            unshared_given: AtomicU64::new(0),
            passthrough_len: AtomicUsize::new(0),
            passthrough_given: AtomicU64::new(u64::MAX),
            to_device_len: AtomicUsize::new(0),
            to_device_given: AtomicU64::new(u64::MAX),
            to_device_last: Mutex::new(None),
            last_failure: Mutex::new(None),
        }
    }

    fn saw_bus(&self, platform: &impl KernelPlatform, device: u32, bus: u64, len: usize) {
        self.min_bus.fetch_min(bus, Ordering::Relaxed);
        self.max_bus.fetch_max(bus + len as u64 - 1, Ordering::Relaxed);
        let half = &self.halves[usize::from(bus >= FOUR_GIB)];
        half.0.fetch_min(bus, Ordering::Relaxed);
        half.1.fetch_max(bus + len as u64 - 1, Ordering::Relaxed);
        if let Some(phys) = platform.device_phys(device, bus) {
            self.min_phys.fetch_min(phys, Ordering::Relaxed);
            self.max_phys.fetch_max(phys, Ordering::Relaxed);
        }
    }

    /// Lowest and highest physical address behind the bus addresses handed out, if any.
    pub fn phys_range(&self) -> Option<(u64, u64)> {
        let min = self.min_phys.load(Ordering::Relaxed);
        (min != u64::MAX).then(|| (min, self.max_phys.load(Ordering::Relaxed)))
    }

    /// Lowest and highest bus address handed out below 4 GiB, and above, where any was.
    pub fn bus_ranges(&self) -> [Option<(u64, u64)>; 2] {
        core::array::from_fn(|i| {
            let min = self.halves[i].0.load(Ordering::Relaxed);
            (min != u64::MAX).then(|| (min, self.halves[i].1.load(Ordering::Relaxed)))
        })
    }

    /// Lowest and highest bus address handed out, if any.
    pub fn bus_range(&self) -> Option<(u64, u64)> {
        let min = self.min_bus.load(Ordering::Relaxed);
        (min != u64::MAX).then(|| (min, self.max_bus.load(Ordering::Relaxed)))
    }
}

/// Where a binding keeps its device handle: set once at attach, read by every HAL call, and taken
/// back (unsafely: no HAL call may run) to detach the device. A `spin::Once` cannot give the handle
/// back, so a kernel could never detach a device it drove through a binding.
pub struct DeviceCell {
    /// `EMPTY`, `WRITING`, `FULL`.
    state: AtomicU8,
    device: UnsafeCell<MaybeUninit<Device>>,
}

const EMPTY: u8 = 0;
const WRITING: u8 = 1;
const FULL: u8 = 2;

// SAFETY: the device is written once by the CPU that moved the state EMPTY -> WRITING (a
// compare-exchange makes it unique) and published with a release store of FULL; it is read only
// after an acquire load saw FULL, and moved out only by `take`, whose caller guarantees no reader.
unsafe impl Sync for DeviceCell {}

impl DeviceCell {
    /// No device.
    pub const fn new() -> Self {
        Self { state: AtomicU8::new(EMPTY), device: UnsafeCell::new(MaybeUninit::uninit()) }
    }

    /// The device, once attached (and until taken back).
    pub fn get(&self) -> Option<&Device> {
        if self.state.load(Ordering::Acquire) != FULL {
            return None;
        }
        // SAFETY: FULL was published after the write and nothing moves the device out while a
        // reference may live (`take`'s contract).
        Some(unsafe { (*self.device.get()).assume_init_ref() })
    }

    /// Keeps `device`; a cell that holds one already hands the new one back.
    pub fn set(&self, device: Device) -> Result<&Device, Device> {
        if self.state.compare_exchange(EMPTY, WRITING, Ordering::AcqRel, Ordering::Relaxed).is_err() {
            return Err(device);
        }
        // SAFETY: this CPU won EMPTY -> WRITING: no one else reads or writes the cell.
        let stored: *const Device = unsafe { (*self.device.get()).write(device) };
        self.state.store(FULL, Ordering::Release);
        // SAFETY: just written and published; only `take` moves it out, under its contract.
        Ok(unsafe { &*stored })
    }

    /// Takes the device back (to detach it); `None` when the cell is empty.
    ///
    /// # Safety
    /// No reference from [`DeviceCell::get`] (or the binding's `device()`) may be alive, and no HAL
    /// call of the binding may run until this returns: the device's driver is gone (dropped, which
    /// resets the device) and nothing else uses the binding.
    pub unsafe fn take(&self) -> Option<Device> {
        self.state.compare_exchange(FULL, WRITING, Ordering::AcqRel, Ordering::Relaxed).ok()?;
        // SAFETY: FULL: the device was written; the caller guarantees no reader, and WRITING keeps
        // `get` and `set` away until EMPTY is stored.
        let device = unsafe { (*self.device.get()).assume_init_read() };
        self.state.store(EMPTY, Ordering::Release);
        Some(device)
    }
}

impl Default for DeviceCell {
    fn default() -> Self {
        Self::new()
    }
}

/// A [`HalBinding`] with the kernel's bookkeeping.
pub trait KernelBinding: HalBinding<Platform = &'static <Self::Dma as KernelDma>::Platform> {
    /// The kernel's ccdma instance.
    type Dma: KernelDma;
    /// Short name for reports.
    const NAME: &'static str;
    /// The device's bookkeeping.
    fn stats() -> &'static DeviceStats;
    /// Where the binding keeps its device handle.
    fn slot() -> &'static DeviceCell;
}

/// Declares a binding type `$name` for one device of kernel `$dma` (a [`KernelDma`]), reported as
/// `$label`. Its HAL is [`Observed`]`<$name>`.
#[macro_export]
macro_rules! dma_binding {
    ($(#[$meta:meta])* $name:ident, $label:literal, $dma:ty) => {
        $(#[$meta])*
        pub struct $name;

        const _: () = {
            static DEVICE: $crate::binding::DeviceCell = $crate::binding::DeviceCell::new();
            static STATS: $crate::binding::DeviceStats = $crate::binding::DeviceStats::new();
            static COHERENT: [::ccdma::virtio_hal::CoherentSlot; 8] =
                [const { ::ccdma::virtio_hal::CoherentSlot::new() }; 8];

            // SAFETY: `alloc_pages` hands out pages the kernel owns for nothing else until
            // `free_pages` returns them; the unreachable address lies outside every window and all
            // RAM (each kernel's `UNREACHABLE_BUS`).
            unsafe impl ::ccdma::virtio_hal::HalBinding for $name {
                type Platform = &'static <$dma as $crate::binding::KernelDma>::Platform;

                fn layer() -> &'static ::ccdma::DmaLayer<'static, Self::Platform> {
                    // A HAL serves a device attached through `attach`, which needs the layer: a
                    // missing layer here is the HAL used before the attach, as in `device`.
                    <$dma as $crate::binding::KernelDma>::layer()
                        .expect(concat!($label, ": HAL used before the device was attached"))
                }

                fn device() -> &'static ::ccdma::Device {
                    DEVICE.get().expect(concat!($label, ": HAL used before the device was attached"))
                }

                fn unreachable_bus_addr() -> ::ccdma::BusAddr {
                    <$dma as $crate::binding::KernelDma>::UNREACHABLE_BUS
                }

                unsafe fn mmio_phys_to_virt(paddr: u64, size: usize) -> ::core::ptr::NonNull<u8> {
                    $crate::mmio(paddr, size)
                }

                fn alloc_pages(pages: usize) -> Option<::ccdma::PhysAddr> {
                    <$dma as $crate::binding::KernelDma>::alloc_pages(pages)
                }

                unsafe fn free_pages(phys: ::ccdma::PhysAddr, pages: usize) {
                    <$dma as $crate::binding::KernelDma>::free_pages(phys, pages)
                }

                fn coherent_slots() -> &'static [::ccdma::virtio_hal::CoherentSlot] {
                    &COHERENT
                }

                fn failed(failure: ::ccdma::virtio_hal::HalFailure) {
                    $crate::binding::record_failure(&STATS, $label, failure)
                }
            }

            impl $crate::binding::KernelBinding for $name {
                type Dma = $dma;
                const NAME: &'static str = $label;

                fn stats() -> &'static $crate::binding::DeviceStats {
                    &STATS
                }

                fn slot() -> &'static $crate::binding::DeviceCell {
                    &DEVICE
                }
            }
        };
    };
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
/// device behind the IOMMU must be registered with the platform first. A binding that holds a
/// device already is refused (the new attach is undone).
pub fn attach<B: KernelBinding>(config: ccdma::DeviceConfig) -> Result<&'static Device, AttachError> {
    let layer = <B::Dma as KernelDma>::layer().map_err(|NoLayer| AttachError::NoLayer)?;
    let device = layer.attach(config).map_err(AttachError::Refused)?;
    B::slot().set(device).map_err(|again| {
        if let Err(refused) = layer.detach(again) {
            log::error!("{}: a second attach could not be undone: {}", B::NAME, refused.error);
        }
        AttachError::Refused(DmaError::DeviceIdInUse(config.id))
    })
}

/// Detaches binding `B`'s device from the layer; on refusal the handle goes back into the binding.
///
/// # Safety
/// As [`DeviceCell::take`]: the device's driver is gone and no HAL call of `B` runs meanwhile.
pub unsafe fn detach<B: KernelBinding>() -> Result<(), DmaError> {
    // No layer: no device was ever attached to it.
    let layer = <B::Dma as KernelDma>::layer().map_err(|NoLayer| DmaError::NotAttached)?;
    // SAFETY: the caller's contract.
    let device = unsafe { B::slot().take() }.ok_or(DmaError::NotAttached)?;
    layer.detach(device).map_err(|refused| {
        let error = refused.error;
        if B::slot().set(refused.value).is_err() {
            log::error!("{}: the refused device could not be kept", B::NAME);
        }
        error
    })
}

/// The HAL of binding `B`'s device: ccdma's [`CcdmaHal`] plus the kernel's bookkeeping and its
/// check that every bus address given to the device reaches only shared memory.
pub struct Observed<B: KernelBinding>(core::marker::PhantomData<B>);

impl<B: KernelBinding> Observed<B> {
    fn device_id() -> u32 {
        B::device().config().id
    }

    fn platform() -> &'static <B::Dma as KernelDma>::Platform {
        <B::Dma as KernelDma>::platform()
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
            let bytes = pages * memory::PAGE_SIZE;
            stats.saw_bus(Self::platform(), Self::device_id(), bus, bytes);
            if !Self::platform().check_device_address(Self::device_id(), BusAddr(bus), bytes) {
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
        if bus == <B::Dma as KernelDma>::UNREACHABLE_BUS.0 {
            return bus;
        }
        if lie {
            stats.to_device_given.store(bus, Ordering::Relaxed);
            *stats.to_device_last.lock() = Some((bus, Self::platform().entry_of(Self::device_id(), bus)));
        }
        stats.maps.fetch_add(1, Ordering::Relaxed);
        let direction = dma_direction(direction);
        if direction.device_reads() {
            stats.bytes_to_device.fetch_add(len as u64, Ordering::Relaxed);
        }
        if direction.device_writes() {
            stats.bytes_from_device.fetch_add(len as u64, Ordering::Relaxed);
        }
        stats.saw_bus(Self::platform(), Self::device_id(), bus, len);
        if !Self::platform().check_device_address(Self::device_id(), BusAddr(bus), len) {
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
