//! Issue 22: a HAL failure in a program without a logger must still tell its cause. virtio-drivers
//! only sees `Error::DmaError`; the binding's default `failed` logs (to nowhere when no logger is
//! installed), so the HAL also keeps the last failure where the program can read it:
//! `ccdma::virtio_hal::last_failure()`, whose `Display` says what happened and what to do.

use std::ptr::NonNull;
use std::sync::OnceLock;

use ccdma::virtio_hal::{last_failure, AllocFailure, CcdmaHal, CoherentSlot, HalBinding, HalFailure};
use ccdma::{BusAddr, DeviceConfig, DmaMask, PhysAddr};
use ccdma_hv_model::{CallKind, HvConfig, Hypervisor, Region};
use ccdma_tests::*;
use virtio_drivers::{BufferDirection, Hal};

struct Ctx {
    hv: &'static Hypervisor,
    layer: &'static Layer,
    device: ccdma::Device,
    slots: &'static [CoherentSlot],
}

static CTX: OnceLock<Ctx> = OnceLock::new();

/// A binding with one coherent slot and the default `failed` (no logger is installed here).
struct NoLogger;

// SAFETY: pages come from the model's allocator, fresh and used by nothing else until returned (they
// are never returned: the test process ends); the unreachable address is outside the model's RAM.
unsafe impl HalBinding for NoLogger {
    type Platform = &'static Hypervisor;

    fn layer() -> &'static Layer {
        CTX.get().unwrap().layer
    }
    fn device() -> &'static ccdma::Device {
        &CTX.get().unwrap().device
    }
    fn unreachable_bus_addr() -> BusAddr {
        BusAddr(0xdead_0000_0000)
    }
    unsafe fn mmio_phys_to_virt(_paddr: u64, _size: usize) -> NonNull<u8> {
        unreachable!("no MMIO in the model")
    }
    fn alloc_pages(pages: usize) -> Option<PhysAddr> {
        Some(PhysAddr(CTX.get().unwrap().hv.alloc(pages as u64 * 4096, Region::Low)))
    }
    unsafe fn free_pages(_phys: PhysAddr, _pages: usize) {}
    fn coherent_slots() -> &'static [CoherentSlot] {
        CTX.get().unwrap().slots
    }
}

#[test]
fn the_last_failure_is_kept_and_says_no_free_coherent_slot() {
    let (hv, layer) = guest(HvConfig::tdx(2 * GIB), &[(MID_POOL, MIB)]);
    hv.add_device(1, 64);
    let device = layer.attach(DeviceConfig::new(1, DmaMask::BITS_64)).unwrap();
    let layer: &'static Layer = Box::leak(Box::new(layer));
    let slots = vec![CoherentSlot::new()].leak();
    assert!(CTX.set(Ctx { hv, layer, device, slots }).is_ok());
    assert_eq!(last_failure(), None, "nothing failed yet");

    let (bus, _cpu) = CcdmaHal::<NoLogger>::dma_alloc(1, BufferDirection::Both);
    assert_ne!(bus, 0, "the first allocation takes the one slot");
    let calls = hv.calls().count(CallKind::MapGpa);
    let (failed, _) = CcdmaHal::<NoLogger>::dma_alloc(1, BufferDirection::Both);
    assert_eq!(failed, 0, "virtio-drivers reads address 0 as failure (its Error::DmaError)");
    assert_eq!(hv.calls().count(CallKind::MapGpa), calls, "no sharing call for the refused allocation");

    let kept = last_failure().expect("the cause is kept for a program without a logger");
    assert_eq!(kept, HalFailure::Alloc { cause: AllocFailure::NoRecord, pages: 1 });
    let text = kept.to_string();
    println!("{text}");
    assert!(text.contains("no free coherent slot"), "{text}");
}
