//! `ccdma::virtio_hal::CcdmaHal` against the model: the HAL calls virtio-drivers makes (`share`,
//! `unshare`, `dma_alloc`, `dma_dealloc`), with the model's devices doing the DMA at the addresses
//! the HAL returned. Assertions lean on the model's fault log, its shared-page count and sharing
//! call counters, and on the failures the HAL reported to its binding.

mod iommu_support;

use std::ptr::NonNull;
use std::sync::{Mutex, OnceLock};

use ccdma::virtio_hal::{AllocFailure, CcdmaHal, CoherentSlot, HalBinding, HalFailure};
use ccdma::{BusAddr, DeviceConfig, DmaDirection, DmaError, DmaMask, DmaPath, IommuPolicy, PhysAddr};
use ccdma_hv_model::{CallKind, FaultReason, HvConfig, Hypervisor, Region};
use ccdma_tests::*;
use iommu_support::{iommu_guest, Opts};
use virtio_drivers::{BufferDirection, Hal};

/// Far above the model's RAM and outside every window it creates.
const UNREACHABLE: BusAddr = BusAddr(0xdead_0000_0000);

/// What one binding is bound to, and what it saw.
struct Ctx {
    hv: &'static Hypervisor,
    layer: &'static Layer,
    device: ccdma::Device,
    slots: &'static [CoherentSlot],
    /// Pages handed out by `alloc_pages` and not yet given back.
    pages_out: Mutex<Vec<(u64, usize)>>,
    /// Pages given back by `free_pages`.
    pages_back: Mutex<Vec<(u64, usize)>>,
    failures: Mutex<Vec<HalFailure>>,
}

impl Ctx {
    fn failures(&self) -> Vec<HalFailure> {
        self.failures.lock().unwrap().clone()
    }
}

/// A binding type with its own context, installed once per test.
macro_rules! binding {
    ($name:ident) => {
        struct $name;

        impl $name {
            fn cell() -> &'static OnceLock<Ctx> {
                static CELL: OnceLock<Ctx> = OnceLock::new();
                &CELL
            }
            fn ctx() -> &'static Ctx {
                Self::cell().get().expect("binding not installed")
            }
            fn install(
                hv: &'static Hypervisor,
                layer: Layer,
                device: ccdma::Device,
                slots: usize,
            ) -> &'static Ctx {
                let layer: &'static Layer = Box::leak(Box::new(layer));
                let slots: &'static [CoherentSlot] =
                    (0..slots).map(|_| CoherentSlot::new()).collect::<Vec<_>>().leak();
                let ctx = Ctx {
                    hv,
                    layer,
                    device,
                    slots,
                    pages_out: Mutex::new(Vec::new()),
                    pages_back: Mutex::new(Vec::new()),
                    failures: Mutex::new(Vec::new()),
                };
                assert!(Self::cell().set(ctx).is_ok(), "installed twice");
                Self::ctx()
            }
        }

        // SAFETY: pages come from the model's allocator, fresh and used by nothing else until
        // returned; the unreachable address is outside the model's RAM and every window.
        unsafe impl HalBinding for $name {
            type Platform = &'static Hypervisor;

            fn layer() -> &'static Layer {
                Self::ctx().layer
            }
            fn device() -> &'static ccdma::Device {
                &Self::ctx().device
            }
            fn unreachable_bus_addr() -> BusAddr {
                UNREACHABLE
            }
            unsafe fn mmio_phys_to_virt(_paddr: u64, _size: usize) -> NonNull<u8> {
                unreachable!("no MMIO in the model")
            }
            fn alloc_pages(pages: usize) -> Option<PhysAddr> {
                let ctx = Self::ctx();
                let phys = ctx.hv.alloc(pages as u64 * 4096, Region::Low);
                ctx.pages_out.lock().unwrap().push((phys, pages));
                Some(PhysAddr(phys))
            }
            unsafe fn free_pages(phys: PhysAddr, pages: usize) {
                let ctx = Self::ctx();
                let mut out = ctx.pages_out.lock().unwrap();
                let at = out
                    .iter()
                    .position(|&p| p == (phys.0, pages))
                    .expect("pages given back twice or never given");
                out.remove(at);
                ctx.pages_back.lock().unwrap().push((phys.0, pages));
            }
            fn coherent_slots() -> &'static [CoherentSlot] {
                Self::ctx().slots
            }
            fn failed(failure: HalFailure) {
                Self::ctx().failures.lock().unwrap().push(failure);
            }
        }
    };
}

/// A TDX guest (no IOMMU) with one pool of `pool_len` bytes and device 1 (64-bit) attached.
fn tdx_guest(pool_len: u64) -> (&'static Hypervisor, Layer, ccdma::Device) {
    let (hv, layer) = guest(HvConfig::tdx(2 * GIB), &[(MID_POOL, pool_len)]);
    hv.add_device(1, 64);
    let device = layer.attach(DeviceConfig::new(1, DmaMask::BITS_64)).unwrap();
    assert_eq!(device.path(), DmaPath::BounceAlways);
    (hv, layer, device)
}

fn slice_ptr(buffer: &mut [u8]) -> NonNull<[u8]> {
    NonNull::from(buffer)
}

#[test]
fn streaming_maps_bounce_each_direction_and_copy_back_once() {
    binding!(Streaming);
    let (hv, layer, device) = tdx_guest(MIB);
    let ctx = Streaming::install(hv, layer, device, 4);
    let dev = hv.device(1);
    let before = Baseline::take(hv, ctx.layer);

    // Driver to device: the device reads the original's bytes at the bus address, in the pool.
    let mut out = pattern(3000, 1);
    // SAFETY: `out` lives until the matching unshare and is not touched meanwhile.
    let bus = unsafe { CcdmaHal::<Streaming>::share(slice_ptr(&mut out), BufferDirection::DriverToDevice) };
    assert!(in_some_pool(ctx.layer, bus, out.len()), "bus {bus:#x} not in the pool");
    assert_eq!(dev.read(bus, out.len()).unwrap(), pattern(3000, 1));
    // SAFETY: same buffer, same direction, as shared.
    unsafe { CcdmaHal::<Streaming>::unshare(bus, slice_ptr(&mut out), BufferDirection::DriverToDevice) };
    assert_eq!(out, pattern(3000, 1), "a to-device buffer was written");

    // Device to driver: the slot starts zeroed (no stale pool data), the device's bytes arrive at
    // unshare and not before.
    let mut input = vec![0x5a; 5000];
    // SAFETY: as above.
    let bus = unsafe { CcdmaHal::<Streaming>::share(slice_ptr(&mut input), BufferDirection::DeviceToDriver) };
    assert_eq!(dev.read(bus, 5000).unwrap(), vec![0; 5000], "from-device slot not zero-filled");
    dev.write(bus, &pattern(5000, 2)).unwrap();
    assert_eq!(input, vec![0x5a; 5000], "buffer changed before unshare");
    // SAFETY: as above.
    unsafe { CcdmaHal::<Streaming>::unshare(bus, slice_ptr(&mut input), BufferDirection::DeviceToDriver) };
    assert_eq!(input, pattern(5000, 2));

    // Both: the device reads the original and its writes come back.
    let mut both = pattern(700, 3);
    // SAFETY: as above.
    let bus = unsafe { CcdmaHal::<Streaming>::share(slice_ptr(&mut both), BufferDirection::Both) };
    assert_eq!(dev.read(bus, 700).unwrap(), pattern(700, 3));
    dev.write(bus + 100, &[0xee; 50]).unwrap();
    // SAFETY: as above.
    unsafe { CcdmaHal::<Streaming>::unshare(bus, slice_ptr(&mut both), BufferDirection::Both) };
    let mut expected = pattern(700, 3);
    expected[100..150].fill(0xee);
    assert_eq!(both, expected);

    let stats = ctx.layer.stats();
    assert_eq!((stats.maps, stats.unmaps, stats.bounced_maps), (3, 3, 3));
    assert_eq!(stats.bytes_to_device, 3000 + 700);
    assert_eq!(stats.bytes_from_device, 5000 + 700);
    assert!(ctx.failures().is_empty(), "{:?}", ctx.failures());
    assert_no_faults(hv);
    before.assert_same(hv, ctx.layer);
}

#[test]
fn refused_share_gets_the_unreachable_address_and_unshare_ignores_it() {
    binding!(Exhausted);
    // 64 KiB of pool: two 32 KiB buffers fill it.
    let (hv, layer, device) = tdx_guest(64 << 10);
    let ctx = Exhausted::install(hv, layer, device, 4);
    let dev = hv.device(1);
    let before = Baseline::take(hv, ctx.layer);

    let mut a = vec![1u8; 32 << 10];
    let mut b = vec![2u8; 32 << 10];
    let mut c = vec![3u8; 4096];
    // SAFETY: the buffers outlive their mappings and are untouched until unshared.
    let (bus_a, bus_b, bus_c) = unsafe {
        (
            CcdmaHal::<Exhausted>::share(slice_ptr(&mut a), BufferDirection::DriverToDevice),
            CcdmaHal::<Exhausted>::share(slice_ptr(&mut b), BufferDirection::DriverToDevice),
            CcdmaHal::<Exhausted>::share(slice_ptr(&mut c), BufferDirection::DeviceToDriver),
        )
    };
    assert!(in_some_pool(ctx.layer, bus_a, a.len()) && in_some_pool(ctx.layer, bus_b, b.len()));
    assert_eq!(bus_c, UNREACHABLE.0);
    assert_eq!(
        ctx.failures(),
        vec![HalFailure::Share {
            error: DmaError::PoolExhausted { len: 4096 },
            len: 4096,
            direction: DmaDirection::FromDevice
        }]
    );

    // The device's access to the address fails at the bus and touches nothing.
    assert!(dev.write(bus_c, &[0xff; 4096]).is_err());
    let faults = hv.faults();
    assert_eq!(faults.len(), 1);
    assert_eq!((faults[0].bus, faults[0].reason), (UNREACHABLE.0, FaultReason::OutsideRam));
    hv.clear_faults();

    // Unsharing it does nothing: no copy back, no unmap, no further failure.
    let unmaps = ctx.layer.stats().unmaps;
    // SAFETY: the buffer and direction `share` was given.
    unsafe { CcdmaHal::<Exhausted>::unshare(bus_c, slice_ptr(&mut c), BufferDirection::DeviceToDriver) };
    assert_eq!(c, vec![3u8; 4096], "the caller's buffer changed");
    assert_eq!(ctx.layer.stats().unmaps, unmaps);
    assert_eq!(ctx.failures().len(), 1);

    // SAFETY: as shared.
    unsafe {
        CcdmaHal::<Exhausted>::unshare(bus_a, slice_ptr(&mut a), BufferDirection::DriverToDevice);
        CcdmaHal::<Exhausted>::unshare(bus_b, slice_ptr(&mut b), BufferDirection::DriverToDevice);
    }
    // With room again, the same request maps.
    // SAFETY: as above.
    let bus = unsafe { CcdmaHal::<Exhausted>::share(slice_ptr(&mut c), BufferDirection::DeviceToDriver) };
    assert!(in_some_pool(ctx.layer, bus, c.len()));
    // SAFETY: as above.
    unsafe { CcdmaHal::<Exhausted>::unshare(bus, slice_ptr(&mut c), BufferDirection::DeviceToDriver) };
    assert_eq!(c, vec![0; 4096], "unwritten from-device bytes come back as the slot's zeroes");
    assert_no_faults(hv);
    before.assert_same(hv, ctx.layer);
}

#[test]
fn unshare_with_the_wrong_length_is_reported_and_changes_nothing() {
    binding!(WrongLength);
    let (hv, layer, device) = tdx_guest(MIB);
    let ctx = WrongLength::install(hv, layer, device, 4);
    let before = Baseline::take(hv, ctx.layer);
    let mut buffer = vec![7u8; 2048];
    // SAFETY: `buffer` outlives the mapping.
    let bus =
        unsafe { CcdmaHal::<WrongLength>::share(slice_ptr(&mut buffer), BufferDirection::DeviceToDriver) };
    hv.device(1).write(bus, &[9u8; 2048]).unwrap();
    // SAFETY: a shorter view of the same buffer: the layer must refuse it (its record says 2048).
    unsafe {
        CcdmaHal::<WrongLength>::unshare(bus, slice_ptr(&mut buffer[..1024]), BufferDirection::DeviceToDriver)
    };
    assert_eq!(buffer, vec![7u8; 2048], "a refused unshare copied back");
    assert_eq!(
        ctx.failures(),
        vec![HalFailure::Unshare {
            error: DmaError::SizeMismatch { mapped: 2048, given: 1024 },
            bus: BusAddr(bus),
            len: 1024
        }]
    );
    // The mapping is still live and unshares properly.
    // SAFETY: as shared.
    unsafe { CcdmaHal::<WrongLength>::unshare(bus, slice_ptr(&mut buffer), BufferDirection::DeviceToDriver) };
    assert_eq!(buffer, vec![9u8; 2048]);
    before.assert_same(hv, ctx.layer);
}

#[test]
fn dma_alloc_shares_zeroed_pages_and_dealloc_makes_them_private_and_gives_them_back() {
    binding!(Coherent);
    let (hv, layer, device) = tdx_guest(MIB);
    let ctx = Coherent::install(hv, layer, device, 4);
    let dev = hv.device(1);
    let shared_before = hv.shared_pages();

    let (bus, cpu) = Coherent::dma_alloc_for_test(3);
    let (phys, pages) = ctx.pages_out.lock().unwrap()[0];
    assert_eq!((bus, pages), (phys, 3), "without an IOMMU the bus address is the shared address");
    assert_eq!(hv.shared_pages(), shared_before + 3);
    assert_eq!(dev.read(bus, 3 * 4096).unwrap(), vec![0; 3 * 4096], "pages not zeroed");
    // Coherent: the CPU sees device writes at once, the device sees CPU writes.
    dev.write(bus + 4096, b"ring entry").unwrap();
    // SAFETY: the buffer is 3 pages long and ours until dealloc.
    let cpu_view = unsafe { std::slice::from_raw_parts_mut(cpu.as_ptr(), 3 * 4096) };
    assert_eq!(&cpu_view[4096..4106], b"ring entry");
    cpu_view[8191] = 0x42;
    assert_eq!(dev.read(bus + 8191, 1).unwrap(), vec![0x42]);

    // SAFETY: exactly what dma_alloc returned, no longer used.
    assert_eq!(unsafe { CcdmaHal::<Coherent>::dma_dealloc(bus, cpu, 3) }, 0);
    assert_eq!(hv.shared_pages(), shared_before, "pages still shared after dealloc");
    assert_eq!(*ctx.pages_back.lock().unwrap(), vec![(phys, 3)]);
    assert!(ctx.pages_out.lock().unwrap().is_empty());
    assert!(dev.read(bus, 1).is_err(), "device reaches a freed coherent page");
    assert_eq!(hv.faults()[0].reason, FaultReason::PrivateTarget);
    assert!(ctx.failures().is_empty(), "{:?}", ctx.failures());
}

#[test]
fn dealloc_of_an_unknown_buffer_is_reported_frees_nothing_and_returns_zero() {
    binding!(UnknownDealloc);
    let (hv, layer, device) = tdx_guest(MIB);
    let ctx = UnknownDealloc::install(hv, layer, device, 4);
    let (bus, cpu) = UnknownDealloc::dma_alloc_for_test(1);
    let shared = hv.shared_pages();
    // SAFETY: a wrong page count on purpose: the HAL must match no record and free nothing.
    assert_eq!(unsafe { CcdmaHal::<UnknownDealloc>::dma_dealloc(bus, cpu, 2) }, 0);
    assert_eq!(
        ctx.failures(),
        vec![HalFailure::Dealloc {
            error: DmaError::UnknownMapping(BusAddr(bus)),
            bus: BusAddr(bus),
            pages: 2
        }]
    );
    assert_eq!(hv.shared_pages(), shared);
    assert!(ctx.pages_back.lock().unwrap().is_empty());
    // SAFETY: the right values this time.
    assert_eq!(unsafe { CcdmaHal::<UnknownDealloc>::dma_dealloc(bus, cpu, 1) }, 0);
    assert_eq!(hv.shared_pages(), shared - 1);
}

#[test]
fn running_out_of_records_fails_before_any_sharing_call() {
    binding!(OneRecord);
    let (hv, layer, device) = tdx_guest(MIB);
    let ctx = OneRecord::install(hv, layer, device, 1);
    let (bus, cpu) = OneRecord::dma_alloc_for_test(1);
    let calls = hv.calls().count(CallKind::MapGpa);
    let shared = hv.shared_pages();
    let (failed_bus, _) = CcdmaHal::<OneRecord>::dma_alloc(1, BufferDirection::Both);
    assert_eq!(failed_bus, 0, "virtio-drivers reads address 0 as failure");
    assert_eq!(ctx.failures(), vec![HalFailure::Alloc { cause: AllocFailure::NoRecord, pages: 1 }]);
    assert_eq!(hv.calls().count(CallKind::MapGpa), calls, "a sharing call was made");
    assert_eq!(hv.shared_pages(), shared);
    assert_eq!(ctx.pages_out.lock().unwrap().len(), 1, "pages taken for a buffer that cannot be recorded");
    // SAFETY: what dma_alloc returned.
    assert_eq!(unsafe { CcdmaHal::<OneRecord>::dma_dealloc(bus, cpu, 1) }, 0);
    // The record is free again.
    let (bus, cpu) = OneRecord::dma_alloc_for_test(1);
    // SAFETY: as above.
    assert_eq!(unsafe { CcdmaHal::<OneRecord>::dma_dealloc(bus, cpu, 1) }, 0);
}

#[test]
fn behind_the_iommu_rings_and_buffers_get_window_addresses_and_nothing_else_is_reachable() {
    binding!(Windowed);
    let g = iommu_guest(Opts::new(IommuPolicy::Strict));
    let device = g.device(2, 32);
    assert_eq!(device.path(), DmaPath::IommuStrict);
    let (hv, pool) = (g.hv, g.pool_range());
    let ctx = Windowed::install(hv, g.layer, device, 4);
    let dev = hv.device(2);

    let (ring_bus, ring_cpu) = Windowed::dma_alloc_for_test(2);
    let (ring_phys, _) = ctx.pages_out.lock().unwrap()[0];
    assert_ne!(ring_bus, ring_phys, "a ring's bus address is an IOVA, not its physical address");
    assert!(ring_bus + 2 * 4096 <= 1 << 32, "ring above the 32-bit mask: {ring_bus:#x}");
    let mut data = pattern(6000, 4);
    // SAFETY: `data` outlives its mapping.
    let data_bus =
        unsafe { CcdmaHal::<Windowed>::share(slice_ptr(&mut data), BufferDirection::DriverToDevice) };
    assert!(data_bus + 6000 <= 1 << 32);
    assert_eq!(dev.read(data_bus, 6000).unwrap(), pattern(6000, 4));
    // Strict: a to-device mapping is read-only for the device.
    assert!(dev.write(data_bus, &[0; 16]).is_err());
    assert_eq!(hv.faults().last().map(|f| f.reason), Some(FaultReason::Permission));
    hv.clear_faults();
    dev.write(ring_bus, b"used ring").unwrap();
    g_assert_reach(hv, 2, &[pool, (ring_phys, ring_phys + 2 * 4096)]);

    // SAFETY: as shared / allocated.
    unsafe {
        CcdmaHal::<Windowed>::unshare(data_bus, slice_ptr(&mut data), BufferDirection::DriverToDevice);
        assert_eq!(CcdmaHal::<Windowed>::dma_dealloc(ring_bus, ring_cpu, 2), 0);
    }
    assert!(hv.reachable(2).is_empty(), "entries left after unshare and dealloc: {:?}", hv.reachable(2));
    assert!(!dev.probe(ring_bus, ccdma_hv_model::AccessKind::Read));
    assert_eq!(*ctx.pages_back.lock().unwrap(), vec![(ring_phys, 2)]);
    assert!(ctx.failures().is_empty(), "{:?}", ctx.failures());
}

/// Every page device `id` reaches lies in one of `allowed`, and no entry targets private memory.
fn g_assert_reach(hv: &Hypervisor, id: u32, allowed: &[(u64, u64)]) {
    for r in hv.reachable(id) {
        assert!(allowed.iter().any(|&(s, e)| r.phys >= s && r.phys + r.len <= e), "device reaches {r:?}");
    }
    assert_eq!(hv.tces_to_private(), 0);
}

/// `dma_alloc` that must succeed.
trait AllocForTest {
    fn dma_alloc_for_test(pages: usize) -> (u64, NonNull<u8>);
}

impl<B: HalBinding> AllocForTest for B {
    fn dma_alloc_for_test(pages: usize) -> (u64, NonNull<u8>) {
        let (bus, cpu) = CcdmaHal::<B>::dma_alloc(pages, BufferDirection::Both);
        assert_ne!(bus, 0, "dma_alloc failed");
        (bus, cpu)
    }
}
