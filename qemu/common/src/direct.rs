//! [`DirectHal`]: the `virtio_drivers::Hal` of devices whose DMA is not translated and not
//! bounced: the virtio-iommu itself (x86_64), and the benchmark's baseline blk. DMA pages come from a
//! private pool and a buffer's bus address is its physical address. Every managed device uses
//! ccdma's HAL instead.

use crate::memory::{self, SlotBitmap, StaticRegion, PAGE_SIZE};
use core::ptr::NonNull;
use spin::Mutex;
use virtio_drivers::{BufferDirection, Hal, PhysAddr};

/// Size of the direct (untranslated) DMA pool: virtqueues of the IOMMU and the baseline blk.
const DIRECT_POOL_PAGES: usize = 64;

static DIRECT_POOL: StaticRegion<{ DIRECT_POOL_PAGES * PAGE_SIZE }> = StaticRegion::new();
static DIRECT_PAGES: Mutex<SlotBitmap<{ DIRECT_POOL_PAGES / 64 }>> = Mutex::new(SlotBitmap::new());

fn mmio_identity(paddr: PhysAddr, size: usize) -> NonNull<u8> {
    crate::mmio(paddr, size)
}

/// DMA for untranslated devices: private pool, bus address = physical address.
pub struct DirectHal;

// SAFETY: `dma_alloc` returns zeroed, page-aligned pages that the bitmap gives to one caller until
// `dma_dealloc`; `mmio_phys_to_virt` returns the kernel's mapping of the caller's MMIO
// region ([`crate::Arch::mmio`]); `share` returns the buffer's own physical address, valid because the kernels reach memory at its physical address and the device is not behind a translation.
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
