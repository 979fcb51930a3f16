//! `virtio_drivers::Hal` implementations: where device-visible memory comes from and which bus
//! address a device is given for it.
//!
//! * [`DirectHal`] is for devices whose DMA is not translated, i.e. the virtio-iommu itself: DMA
//!   pages come from a private pool and a buffer's bus address is its physical address.
//! * [`BounceHal`] is the phase-1 stand-in for ccdma, for devices behind the IOMMU: every buffer is
//!   copied through a bounce area, and the device is given the bounce copy's *bus* address
//!   (physical address + a configurable offset, the IOVA at which the area is mapped in the
//!   IOMMU). With no IOMMU the offset is zero.
//!
//! `Hal::share` cannot fail. When the bounce area is exhausted, [`BounceHal`] panics: the kernel
//! stops with the panic exit status. Handing out any address instead would let the device reach
//! memory that is not a bounce slot.

use crate::memory::{self, SlotBitmap, StaticRegion, PAGE_SIZE};
use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use spin::Mutex;
use virtio_drivers::{BufferDirection, Hal, PhysAddr};

/// Size of the direct (untranslated) DMA pool: virtqueues and buffers of the IOMMU itself.
const DIRECT_POOL_PAGES: usize = 64;

static DIRECT_POOL: StaticRegion<{ DIRECT_POOL_PAGES * PAGE_SIZE }> = StaticRegion::new();
static DIRECT_PAGES: Mutex<SlotBitmap<{ DIRECT_POOL_PAGES / 64 }>> = Mutex::new(SlotBitmap::new());

/// Size of the bounce area: 1 MiB, 2048 slots of 512 bytes.
pub const BOUNCE_AREA_SIZE: usize = 1024 * 1024;
/// Bounce allocation unit: one virtio-blk sector. Pages for virtqueues are 8 aligned slots.
const BOUNCE_SLOT_SIZE: usize = 512;
const BOUNCE_SLOTS: usize = BOUNCE_AREA_SIZE / BOUNCE_SLOT_SIZE;
const SLOTS_PER_PAGE: usize = PAGE_SIZE / BOUNCE_SLOT_SIZE;

static BOUNCE_AREA: StaticRegion<BOUNCE_AREA_SIZE> = StaticRegion::new();
static BOUNCE_SLOTS_USED: Mutex<SlotBitmap<{ BOUNCE_SLOTS / 64 }>> = Mutex::new(SlotBitmap::new());
/// Bus address minus physical address for the bounce area (wrapping arithmetic).
static BOUNCE_BUS_OFFSET: AtomicU64 = AtomicU64::new(0);
/// Test knob: hand devices the original buffer's physical address instead of a bounce copy.
static PASSTHROUGH: AtomicBool = AtomicBool::new(false);
/// Buffers shared through the bounce area since boot.
static BOUNCED_BUFFERS: AtomicU64 = AtomicU64::new(0);

fn mmio_identity(paddr: PhysAddr, size: usize) -> NonNull<u8> {
    memory::ptr_of(paddr, size)
        .unwrap_or_else(|| panic!("MMIO region {paddr:#x}+{size:#x} is outside the identity map"))
}

/// DMA for untranslated devices: private pool, bus address = physical address.
pub struct DirectHal;

// SAFETY: `dma_alloc` returns zeroed, page-aligned pages that the bitmap gives to one caller until
// `dma_dealloc`; `mmio_phys_to_virt` returns the identity-mapped address of the caller's MMIO
// region; `share` returns the buffer's own physical address, valid because memory is
// identity-mapped and the device is not behind a translation.
unsafe impl Hal for DirectHal {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        let Some(first) = DIRECT_PAGES.lock().alloc(pages, 1) else {
            // `Dma::new` turns a zero address into `Error::DmaError`.
            return (0, NonNull::dangling());
        };
        // SAFETY: `first + pages <= DIRECT_POOL_PAGES`, so the range is inside the pool.
        let ptr = unsafe { DIRECT_POOL.base().add(first * PAGE_SIZE) };
        // SAFETY: the bitmap just gave these pages to us alone; zeroing them is required by `Hal`.
        unsafe { ptr.write_bytes(0, pages * PAGE_SIZE) };
        let ptr = NonNull::new(ptr).expect("pool is not at address 0");
        (memory::phys_of(ptr.as_ptr()), ptr)
    }

    unsafe fn dma_dealloc(_paddr: PhysAddr, vaddr: NonNull<u8>, pages: usize) -> i32 {
        let first = (vaddr.as_ptr() as usize - DIRECT_POOL.base() as usize) / PAGE_SIZE;
        DIRECT_PAGES.lock().free(first, pages);
        0
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, size: usize) -> NonNull<u8> {
        mmio_identity(paddr, size)
    }

    unsafe fn share(buffer: NonNull<[u8]>, _direction: BufferDirection) -> PhysAddr {
        memory::phys_of(buffer.as_ptr().cast())
    }

    unsafe fn unshare(_paddr: PhysAddr, _buffer: NonNull<[u8]>, _direction: BufferDirection) {}
}

/// Stand-in for ccdma: bounce every buffer through [`BOUNCE_AREA`], expose bus addresses.
pub struct BounceHal;

impl BounceHal {
    /// Physical range of the bounce area (what gets mapped into the IOMMU).
    pub fn area_phys() -> core::ops::Range<u64> {
        BOUNCE_AREA.phys_range()
    }

    /// Sets the bus address at which devices see the start of the bounce area. Must be called
    /// before any device using this HAL is initialised.
    pub fn set_bus_base(bus_base: u64) {
        let offset = bus_base.wrapping_sub(Self::area_phys().start);
        BOUNCE_BUS_OFFSET.store(offset, Ordering::Relaxed);
    }

    /// Bus address at which devices see the start of the bounce area.
    pub fn bus_base() -> u64 {
        Self::phys_to_bus(Self::area_phys().start)
    }

    /// Test knob for provoking IOMMU faults: while on, buffers are not bounced and the device is
    /// given their private physical address, which is not mapped in its IOMMU domain.
    pub fn set_passthrough(on: bool) {
        PASSTHROUGH.store(on, Ordering::Relaxed);
    }

    /// Number of buffers bounced since boot.
    pub fn bounced_buffers() -> u64 {
        BOUNCED_BUFFERS.load(Ordering::Relaxed)
    }

    /// Bytes of the bounce area currently allocated.
    pub fn bytes_in_use() -> usize {
        BOUNCE_SLOTS_USED.lock().used_count() * BOUNCE_SLOT_SIZE
    }

    fn phys_to_bus(phys: u64) -> PhysAddr {
        phys.wrapping_add(BOUNCE_BUS_OFFSET.load(Ordering::Relaxed))
    }

    fn bus_to_phys(bus: PhysAddr) -> u64 {
        bus.wrapping_sub(BOUNCE_BUS_OFFSET.load(Ordering::Relaxed))
    }

    fn slot_ptr(slot: usize) -> *mut u8 {
        debug_assert!(slot < BOUNCE_SLOTS);
        BOUNCE_AREA.base().wrapping_add(slot * BOUNCE_SLOT_SIZE)
    }

    /// Bounce slot holding physical address `phys`, if it is inside the bounce area.
    fn slot_of(phys: u64) -> Option<usize> {
        let area = Self::area_phys();
        area.contains(&phys).then(|| ((phys - area.start) as usize) / BOUNCE_SLOT_SIZE)
    }
}

// SAFETY: `dma_alloc` returns zeroed, page-aligned memory from the bounce area that the slot
// bitmap gives to one caller until `dma_dealloc`; `share` copies into freshly allocated slots that
// nothing else references and returns their bus address; `unshare` only touches slots recorded by
// `share`; `mmio_phys_to_virt` returns the identity-mapped address of the caller's MMIO region.
unsafe impl Hal for BounceHal {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        let slots = pages * SLOTS_PER_PAGE;
        let Some(first) = BOUNCE_SLOTS_USED.lock().alloc(slots, SLOTS_PER_PAGE) else {
            return (0, NonNull::dangling());
        };
        let ptr = Self::slot_ptr(first);
        // SAFETY: the bitmap just gave these slots to us alone; `Hal` requires zeroed pages.
        unsafe { ptr.write_bytes(0, slots * BOUNCE_SLOT_SIZE) };
        let ptr = NonNull::new(ptr).expect("bounce area is not at address 0");
        (Self::phys_to_bus(memory::phys_of(ptr.as_ptr())), ptr)
    }

    unsafe fn dma_dealloc(_paddr: PhysAddr, vaddr: NonNull<u8>, pages: usize) -> i32 {
        let first = Self::slot_of(memory::phys_of(vaddr.as_ptr()))
            .expect("dma_dealloc of memory outside the bounce area");
        BOUNCE_SLOTS_USED.lock().free(first, pages * SLOTS_PER_PAGE);
        0
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, size: usize) -> NonNull<u8> {
        mmio_identity(paddr, size)
    }

    unsafe fn share(buffer: NonNull<[u8]>, direction: BufferDirection) -> PhysAddr {
        let original = buffer.as_ptr().cast::<u8>();
        if PASSTHROUGH.load(Ordering::Relaxed) {
            return memory::phys_of(original);
        }
        let len = buffer.len();
        let first = BOUNCE_SLOTS_USED
            .lock()
            .alloc(len.div_ceil(BOUNCE_SLOT_SIZE), 1)
            .unwrap_or_else(|| panic!("bounce area exhausted sharing {len} bytes"));
        let slot = Self::slot_ptr(first);
        if direction == BufferDirection::DeviceToDriver {
            // Nothing to send: clear the slot so the device never sees a previous user's data.
            // SAFETY: the slots were just allocated to us and cover `len` bytes.
            unsafe { slot.write_bytes(0, len) };
        } else {
            // SAFETY: the caller guarantees `buffer` is valid for `len` bytes and not accessed
            // concurrently; the slots are ours and cannot overlap a caller's buffer.
            unsafe { core::ptr::copy_nonoverlapping(original, slot, len) };
        }
        BOUNCED_BUFFERS.fetch_add(1, Ordering::Relaxed);
        Self::phys_to_bus(memory::phys_of(slot))
    }

    unsafe fn unshare(paddr: PhysAddr, buffer: NonNull<[u8]>, direction: BufferDirection) {
        // A passthrough buffer was never bounced: nothing to copy or free.
        let Some(first) = Self::slot_of(Self::bus_to_phys(paddr)) else {
            return;
        };
        let len = buffer.len();
        if direction != BufferDirection::DriverToDevice {
            // SAFETY: `paddr` came from `share` for this very buffer, so slot `first` onwards
            // holds `len` bytes of its bounce copy; the caller guarantees `buffer` is valid and
            // not accessed concurrently.
            unsafe { core::ptr::copy_nonoverlapping(Self::slot_ptr(first), buffer.as_ptr().cast(), len) };
        }
        BOUNCE_SLOTS_USED.lock().free(first, len.div_ceil(BOUNCE_SLOT_SIZE));
    }
}
