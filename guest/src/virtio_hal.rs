//! [`virtio_drivers::Hal`] over ccdma, so any virtio-drivers user adopts the layer by naming a type
//! (feature `virtio-hal`).
//!
//! virtio-drivers calls its HAL through associated functions (`H::share(..)`), never through a
//! value, so the HAL cannot carry a reference to a layer or a device. The user names both through a
//! [`HalBinding`], one per device: `CcdmaHal<MyBlkBinding>` is the HAL of that one device.
//!
//! What each call does:
//!
//! | `Hal` call | ccdma |
//! |---|---|
//! | `share(buf, dir)` | streaming map of the CPU buffer ([`DmaLayer::map_ptr`]): bounced on every confidential path, copy in for `DriverToDevice`/`Both`, zero-filled slot for `DeviceToDriver` |
//! | `unshare(bus, buf, dir)` | [`DmaLayer::unmap`] with the same length and direction: copy back for `DeviceToDriver`/`Both`, from the guest's own record |
//! | `dma_alloc(pages, dir)` | pages from the binding ([`HalBinding::alloc_pages`]) made a coherent buffer ([`DmaLayer::alloc_coherent`]: zeroed, shared, entered into the device's window below its coherent mask), recorded in the binding's [`CoherentSlot`]s |
//! | `dma_dealloc(..)` | [`DmaLayer::free_coherent`] of the recorded buffer, then the pages go back to the binding |
//!
//! Directions: `DriverToDevice` -> [`DmaDirection::ToDevice`], `DeviceToDriver` ->
//! [`DmaDirection::FromDevice`], `Both` -> [`DmaDirection::Bidirectional`].
//!
//! Coherent buffers are read and written by the device whatever `dma_alloc`'s direction says
//! (virtio rings have parts each side writes), so the direction is not used.
//!
//! ## When releasing coherent memory fails
//!
//! virtio-drivers panics when `dma_dealloc` returns anything but 0, so it always returns 0. If the
//! layer cannot release the buffer (its window entries could not be cleared, or its pages could not
//! be made private again), the pages are not given back to the binding: they stay out of use for
//! good (quarantined, as the layer counts them), and [`HalBinding::failed`] hears about it.
//!
//! ## When `share` cannot map
//!
//! `Hal::share` has no error return. When the pools are full, `share` first waits for slots as
//! [`HalBinding::wait_for_slots`] says (a bounded retry: by default 8 short spins, for other CPUs to
//! unmap). When the layer still refuses the mapping (pool exhausted, buffer larger than a slot run),
//! `share` reports the error through [`HalBinding::failed`] (by default logged as an error, never
//! quietly; without a logger, [`last_failure`] still holds it) and returns [`HalBinding::unreachable_bus_addr`]: a bus address the
//! binding guarantees the device cannot reach (outside every IOMMU window; with no IOMMU, an
//! address that decodes to nothing). The device's access to it then fails at the bus (an IOMMU
//! fault, or a decode error) instead of touching memory. `unshare` recognises the address and
//! does nothing: there is no slot to free and nothing to copy back, so the caller's buffer keeps
//! its contents.
//!
//! Why not stop the machine: exhaustion is a load condition, not corruption. Stopping is a policy
//! the binding can still choose, by diverging in [`HalBinding::failed`]. Why not hand out any
//! other address: every other address is either private memory or somebody else's live mapping.
//!
//! The cost: what the device makes of the failed access is up to the device. Under QEMU, a
//! virtio-blk request whose header is unreachable never completes (the driver's bounded wait
//! expires), but one whose *data* buffer is unreachable can complete with a success status while
//! the data went nowhere. No byte reaches or leaves the wrong memory either way, but the request's
//! status alone cannot be trusted after a refusal: [`HalBinding::failed`] is the signal, and a
//! driver stack that can act on it (fail the request, reset the device) should.
//!
//! ## virtio-drivers versions
//!
//! Written against the released `Hal` (0.13). virtio-drivers' main branch adds an
//! `access_platform` argument to every `Hal` method (not released yet). Everything the HAL needs
//! per device already comes from the [`HalBinding`], so following that release is meant to touch
//! only [`CcdmaHal`]'s method signatures (take the argument; the layer's platform stays the one the
//! binding names), not the binding trait or its implementations.
//!
//! ## Example
//!
//! A binding for one virtio-net device, with the layer in a [`crate::storage::LayerCell`] and the
//! device in a `static`; virtio-drivers is then given `CcdmaHal<NetBinding>` as its `Hal`:
//!
//! ```
//! use core::ptr::NonNull;
//! use std::sync::OnceLock;
//! use ccdma::storage::LayerCell;
//! use ccdma::virtio_hal::{CcdmaHal, CoherentSlot, HalBinding};
//! use ccdma::{BusAddr, Device, DeviceConfig, DmaLayer, DmaMask, PhysAddr, PoolConfig, SlotMeta};
//! use ccdma_hv_model::{HvConfig, Hypervisor, Region};
//! use virtio_drivers::{BufferDirection, Hal};
//!
//! type Plat = &'static Hypervisor;
//! static HV: OnceLock<Hypervisor> = OnceLock::new();
//! static LAYER: LayerCell<Plat> = LayerCell::new();
//! static NET: OnceLock<Device> = OnceLock::new();
//! static NET_RINGS: [CoherentSlot; 4] = [const { CoherentSlot::new() }; 4];
//!
//! struct NetBinding;
//! // SAFETY: pages come fresh from the model's allocator and nothing else uses them; the
//! // unreachable address lies above the model's RAM (no IOMMU here, nothing decodes there).
//! unsafe impl HalBinding for NetBinding {
//!     type Platform = Plat;
//!     fn layer() -> &'static DmaLayer<'static, Plat> { LAYER.get().unwrap() }
//!     fn device() -> &'static Device { NET.get().unwrap() }
//!     fn unreachable_bus_addr() -> BusAddr { BusAddr(0xdead_0000_0000) }
//!     unsafe fn mmio_phys_to_virt(_: u64, _: usize) -> NonNull<u8> { unimplemented!("no MMIO here") }
//!     fn alloc_pages(pages: usize) -> Option<PhysAddr> {
//!         Some(PhysAddr(HV.get()?.alloc(pages as u64 * 4096, Region::Low)))
//!     }
//!     unsafe fn free_pages(_: PhysAddr, _: usize) {} // a real kernel returns them to its allocator
//!     fn coherent_slots() -> &'static [CoherentSlot] { &NET_RINGS }
//! }
//!
//! let hv: Plat = HV.get_or_init(|| Hypervisor::new(HvConfig::pseries(6 << 30)));
//! let mut layer = DmaLayer::new(hv);
//! // SAFETY: the model never hands this range out.
//! unsafe { layer.add_pool(PhysAddr(0x80_0000), 1 << 20, vec![SlotMeta::EMPTY; 512].leak(), PoolConfig::default())? };
//! let layer = LAYER.init(layer).ok().unwrap();
//! let _ = NET.set(layer.attach(DeviceConfig::new(1, DmaMask::BITS_32))?);
//!
//! // What virtio-drivers does with the HAL: a ring, and a buffer lent to the device.
//! let (ring_bus, ring) = CcdmaHal::<NetBinding>::dma_alloc(1, BufferDirection::Both);
//! let frame = [0x42u8; 64];
//! // SAFETY: `frame` is not touched until the unshare.
//! let bus = unsafe { CcdmaHal::<NetBinding>::share(NonNull::from(&frame[..]), BufferDirection::DriverToDevice) };
//! assert_ne!(bus, 0x_dead_0000_0000); // mapped: the pool's copy of the frame
//! // SAFETY: the share above, with the same buffer and direction.
//! unsafe { CcdmaHal::<NetBinding>::unshare(bus, NonNull::from(&frame[..]), BufferDirection::DriverToDevice) };
//! // SAFETY: the ring is no longer used.
//! assert_eq!(unsafe { CcdmaHal::<NetBinding>::dma_dealloc(ring_bus, ring, 1) }, 0);
//! assert_eq!(NetBinding::device().live(), 0);
//! # Ok::<(), ccdma::DmaError>(())
//! ```

use core::marker::PhantomData;
use core::ptr::NonNull;

use virtio_drivers::{BufferDirection, Hal, PhysAddr as VirtioAddr};

use spin::Mutex;

use crate::addr::{BusAddr, PhysAddr};
use crate::coherent::CoherentBuffer;
use crate::device::Device;
use crate::direction::{DmaAttrs, DmaDirection};
use crate::error::DmaError;
use crate::error::IommuError;
use crate::layer::{DmaLayer, FullCold};
use crate::platform::Platform;

/// A request the HAL could not serve. Reported to [`HalBinding::failed`]; what virtio-drivers sees
/// instead is documented per variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HalFailure {
    /// `share` could not map a buffer; the device was given the binding's unreachable address.
    Share {
        /// What the layer said.
        error: DmaError,
        /// The buffer's length.
        len: usize,
        /// The mapping's direction.
        direction: DmaDirection,
    },
    /// `unshare` of a bus address the layer does not know, or with another length or direction than
    /// it was mapped with. Nothing was copied or freed.
    Unshare {
        /// What the layer said.
        error: DmaError,
        /// The bus address given.
        bus: BusAddr,
        /// The length given.
        len: usize,
    },
    /// `dma_alloc` could not allocate; virtio-drivers saw address 0 (its `Error::DmaError`).
    Alloc {
        /// Why: [`AllocFailure`].
        cause: AllocFailure,
        /// Pages requested.
        pages: usize,
    },
    /// `dma_dealloc` of memory that is not a live coherent buffer of this device, or whose release
    /// failed. virtio-drivers was told it succeeded (it panics otherwise); a buffer the layer could
    /// not release is kept out of use for good.
    Dealloc {
        /// What the layer said (`UnknownMapping` when no record matches).
        error: DmaError,
        /// The bus address given.
        bus: BusAddr,
        /// Pages given.
        pages: usize,
    },
}

/// Why `dma_alloc` failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AllocFailure {
    /// [`HalBinding::alloc_pages`] had no pages.
    NoPages,
    /// The layer refused the coherent buffer.
    Layer(DmaError),
    /// Every [`CoherentSlot`] of the binding holds a live buffer.
    NoRecord,
    /// The layer gave the buffer bus address 0, which virtio-drivers reads as failure. A binding
    /// avoids this by reserving bus page 0 ([`DmaLayer::reserve_bus_range`]).
    AtBusZero,
}

impl core::fmt::Display for AllocFailure {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            AllocFailure::NoPages => write!(f, "the binding's alloc_pages had no pages"),
            AllocFailure::Layer(e) => write!(f, "the layer refused the coherent buffer: {e}"),
            AllocFailure::NoRecord => write!(
                f,
                "no free coherent slot: every CoherentSlot of the binding holds a live buffer \
                 (give coherent_slots() more, two per virtqueue)"
            ),
            AllocFailure::AtBusZero => write!(
                f,
                "the buffer got bus address 0, which virtio-drivers reads as failure \
                 (reserve bus page 0 with reserve_bus_range)"
            ),
        }
    }
}

impl core::fmt::Display for HalFailure {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            HalFailure::Share { error, len, direction } => write!(
                f,
                "share of {len} bytes ({direction:?}) refused, the device got the unreachable address: {error}"
            ),
            HalFailure::Unshare { error, bus, len } => {
                write!(f, "unshare of {len} bytes at bus {bus} refused, nothing copied or freed: {error}")
            }
            HalFailure::Alloc { cause, pages } => {
                write!(f, "dma_alloc of {pages} pages failed (virtio-drivers sees DmaError): {cause}")
            }
            HalFailure::Dealloc { error, bus, pages } => write!(
                f,
                "dma_dealloc of {pages} pages at bus {bus} failed, the pages stay out of use: {error}"
            ),
        }
    }
}

impl core::error::Error for HalFailure {}

/// The record of one live coherent buffer of a binding (see [`HalBinding::coherent_slots`]).
pub struct CoherentSlot(Mutex<Option<CoherentBuffer>>);

impl CoherentSlot {
    /// An empty record.
    pub const fn new() -> Self {
        Self(Mutex::new(None))
    }
}

impl Default for CoherentSlot {
    fn default() -> Self {
        Self::new()
    }
}

/// Ties a [`CcdmaHal`] to one layer and one attached device. Implement it on a unit type per
/// device; the functions are called on every DMA operation, so they should be cheap (a static).
///
/// # Safety
///
/// The HAL zeroes, shares and hands to the device the pages [`HalBinding::alloc_pages`] returns, so
/// an implementation guarantees that they are exactly what its documentation says: page-aligned guest
/// RAM that the binding owns and that nothing else uses until [`HalBinding::free_pages`] takes them
/// back. [`HalBinding::unreachable_bus_addr`] must be an address no device access can turn into a
/// memory access.
pub unsafe trait HalBinding: 'static {
    /// The platform of the layer.
    type Platform: Platform + 'static;

    /// The layer the device is attached to.
    fn layer() -> &'static DmaLayer<'static, Self::Platform>;

    /// The device as returned by [`DmaLayer::attach`].
    fn device() -> &'static Device;

    /// A bus address this device can never reach: outside every IOMMU window of the device, or, with
    /// no IOMMU, an address at which nothing (no RAM, no MMIO) decodes. Never a bus address the layer
    /// hands out. Given to the device when `share` cannot map (see the module documentation).
    fn unreachable_bus_addr() -> BusAddr;

    /// A CPU pointer to the MMIO range `[paddr, paddr + size)` of a BAR (PCI transport set-up).
    ///
    /// # Safety
    ///
    /// As `Hal::mmio_phys_to_virt`: the range is a valid MMIO region of the device.
    unsafe fn mmio_phys_to_virt(paddr: u64, size: usize) -> NonNull<u8>;

    /// `pages` page-aligned pages of guest RAM that the binding owns and nothing uses, for a
    /// coherent buffer; `None` when there are none. The layer zeroes and shares them. With no IOMMU
    /// they must lie below the device's coherent mask (the device uses their shared address);
    /// behind an IOMMU they may be anywhere (the window gives them a bus address below the mask).
    fn alloc_pages(pages: usize) -> Option<PhysAddr>;

    /// Takes back pages [`HalBinding::alloc_pages`] gave out, once they are private again.
    ///
    /// # Safety
    ///
    /// `phys` and `pages` are exactly what one `alloc_pages` returned and was asked for, and
    /// nothing uses the pages any more.
    unsafe fn free_pages(phys: PhysAddr, pages: usize);

    /// Records of the device's live coherent buffers (virtio-drivers hands back only addresses;
    /// the layer frees by its own handle). One per virtqueue ring allocation is needed: two per
    /// queue with virtio-drivers 0.13. A `static [CoherentSlot; N]` initialised with
    /// `[const { CoherentSlot::new() }; N]`.
    fn coherent_slots() -> &'static [CoherentSlot];

    /// Called for every request the HAL could not serve, before it answers as [`HalFailure`] says.
    /// The default logs it as an error: a refused share means a request whose data goes nowhere
    /// (see the module documentation), which must never pass quietly. A binding that prefers to stop
    /// the machine diverges here; one that can fail the request itself records it.
    fn failed(failure: HalFailure) {
        log::error!("ccdma virtio HAL: request not served: {failure}");
    }

    /// Called when `share` found every pool the device reaches full, before it tries again: wait for
    /// other CPUs to unmap (spin, yield, sleep) and say whether to try once more (`attempt` counts
    /// from 1). The default spins briefly, up to 8 times; a single-CPU binding returns `false`.
    fn wait_for_slots(attempt: u32) -> bool {
        for _ in 0..1024 {
            core::hint::spin_loop();
        }
        attempt <= 8
    }
}

/// The most recent [`HalFailure`] of any binding, kept so that a program without a logger (where the
/// default [`HalBinding::failed`] logs to nowhere) still learns the cause behind virtio-drivers'
/// bare `Error::DmaError`. Recording never waits: a failure that finds the record busy is only
/// passed to `failed`.
static LAST_FAILURE: spin::Mutex<Option<HalFailure>> = spin::Mutex::new(None);

/// The most recent request any binding's HAL could not serve (`None` if none failed yet): print it
/// when virtio-drivers returns `Error::DmaError`. Its `Display` names the cause and what to do.
pub fn last_failure() -> Option<HalFailure> {
    *LAST_FAILURE.lock()
}

/// Keep `failure` for [`last_failure`], then hand it to the binding.
fn report<B: HalBinding>(failure: HalFailure) {
    record(failure);
    B::failed(failure);
}

/// Keep `failure` for [`last_failure`] (never waits).
fn record(failure: HalFailure) {
    if let Some(mut last) = LAST_FAILURE.try_lock() {
        *last = Some(failure);
    }
}

/// What of a binding the coherent calls use, as values: `alloc` and `free` take it and are compiled
/// once in this crate, not once per binding (a kernel has one binding per device).
#[derive(Clone, Copy)]
struct Pages {
    /// The layer, over `dyn Platform` (a binding's layer has the default capacities).
    layer: &'static FullCold<'static, 'static>,
    device: &'static Device,
    slots: &'static [CoherentSlot],
    alloc_pages: fn(usize) -> Option<PhysAddr>,
    free_pages: unsafe fn(PhysAddr, usize),
}

impl Pages {
    #[inline]
    fn of<B: HalBinding>() -> Pages {
        Pages {
            layer: B::layer(),
            device: B::device(),
            slots: B::coherent_slots(),
            alloc_pages: B::alloc_pages,
            free_pages: B::free_pages,
        }
    }
}

/// The `virtio_drivers::Hal` of the device named by `B`.
pub struct CcdmaHal<B: HalBinding>(PhantomData<B>);

/// True when the pages behind a failed allocation or release may be used again: nothing left them
/// shared or named by a window entry.
fn pages_reusable(error: &DmaError) -> bool {
    match error {
        DmaError::SharingFailed { quarantined, .. } => *quarantined == 0,
        DmaError::UnsharingFailed { .. } | DmaError::Iommu(IommuError::Quarantined { .. }) => false,
        _ => true,
    }
}

/// A coherent buffer of `pages` pages for the binding's device, recorded in one of its slots.
fn alloc(b: Pages, pages: usize) -> Result<(BusAddr, NonNull<u8>), AllocFailure> {
    let layer = b.layer;
    let device = b.device;
    // Claim a record first: running out of records must not cost a sharing call.
    let slot = b.slots.iter().find_map(|slot| {
        let record = slot.0.try_lock()?;
        record.is_none().then_some(record)
    });
    let Some(mut record) = slot else {
        return Err(AllocFailure::NoRecord);
    };
    let phys = (b.alloc_pages)(pages).ok_or(AllocFailure::NoPages)?;
    // SAFETY: the binding hands these pages over for the buffer's life (`alloc_pages` contract);
    // they go back to it only after `free_coherent` made them private again.
    let buffer = match unsafe { layer.alloc_coherent_dyn(device, phys, pages as u64) } {
        Ok(buffer) => buffer,
        Err(error) => {
            if pages_reusable(&error) {
                // SAFETY: exactly what `alloc_pages` returned; the layer left them private.
                unsafe { (b.free_pages)(phys, pages) };
            }
            return Err(AllocFailure::Layer(error));
        }
    };
    if buffer.bus_addr().0 == 0 {
        if layer.free_coherent_dyn(device, buffer).is_ok() {
            // SAFETY: as above: private again, unused.
            unsafe { (b.free_pages)(phys, pages) };
        }
        return Err(AllocFailure::AtBusZero);
    }
    let out = (buffer.bus_addr(), buffer.cpu_ptr());
    *record = Some(buffer);
    Ok(out)
}

/// Releases the recorded coherent buffer at `bus`/`cpu` of `pages` pages.
fn free(b: Pages, bus: BusAddr, cpu: NonNull<u8>, pages: usize) -> Result<(), DmaError> {
    let found = b.slots.iter().find_map(|slot| {
        let mut record = slot.0.lock();
        let matches = record
            .as_ref()
            .is_some_and(|b| b.bus_addr() == bus && b.cpu_ptr() == cpu && b.pages() == pages as u64);
        if matches {
            record.take().map(|b| (slot, b))
        } else {
            None
        }
    });
    let (slot, buffer) = found.ok_or(DmaError::UnknownMapping(bus))?;
    let phys = buffer.phys();
    match b.layer.free_coherent_dyn(b.device, buffer) {
        Ok(()) => {
            // SAFETY: the pages came from `alloc_pages` for this buffer, are private again and no
            // longer used by anyone (virtio-drivers' `dma_dealloc` contract).
            unsafe { (b.free_pages)(phys, pages) };
            Ok(())
        }
        // Not released and still live: keep its record (it stays out of use; a later dealloc of the
        // same address retries).
        Err(crate::coherent::FreeError::Refused(r)) => {
            *slot.0.lock() = Some(r.value);
            Err(r.error)
        }
        // Released but quarantined: the pages stay out of use for good.
        Err(crate::coherent::FreeError::Quarantined(error)) => Err(error),
    }
}

/// The layer's direction for a virtio buffer direction.
pub const fn dma_direction(direction: BufferDirection) -> DmaDirection {
    match direction {
        BufferDirection::DriverToDevice => DmaDirection::ToDevice,
        BufferDirection::DeviceToDriver => DmaDirection::FromDevice,
        BufferDirection::Both => DmaDirection::Bidirectional,
    }
}

// SAFETY: `dma_alloc` returns a coherent buffer the layer zeroed over pages the binding handed over
// for its life (page-aligned, owned by nobody else until `dma_dealloc`), or address 0 on failure;
// `mmio_phys_to_virt` is the binding's; `share` returns either a bus address of a fresh bounce slot
// run that holds a copy of (or zeroes for) the buffer and that no one else uses until `unshare`, or
// the binding's unreachable address, which no device access can turn into a memory access; `unshare`
// copies back only through the layer's own record of a mapping of the same length and direction.
unsafe impl<B: HalBinding> Hal for CcdmaHal<B> {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (VirtioAddr, NonNull<u8>) {
        match alloc(Pages::of::<B>(), pages) {
            Ok((bus, cpu)) => (bus.0, cpu),
            Err(cause) => {
                report::<B>(HalFailure::Alloc { cause, pages });
                (0, NonNull::dangling())
            }
        }
    }

    unsafe fn dma_dealloc(paddr: VirtioAddr, vaddr: NonNull<u8>, pages: usize) -> i32 {
        let bus = BusAddr(paddr);
        if let Err(error) = free(Pages::of::<B>(), bus, vaddr, pages) {
            report::<B>(HalFailure::Dealloc { error, bus, pages });
        }
        // Always 0: virtio-drivers panics on anything else (see the module documentation).
        0
    }

    unsafe fn mmio_phys_to_virt(paddr: VirtioAddr, size: usize) -> NonNull<u8> {
        // SAFETY: the caller's contract is passed on unchanged.
        unsafe { B::mmio_phys_to_virt(paddr, size) }
    }

    unsafe fn share(buffer: NonNull<[u8]>, direction: BufferDirection) -> VirtioAddr {
        let direction = dma_direction(direction);
        let len = buffer.len();
        // SAFETY: virtio-drivers guarantees the buffer is valid and untouched by others from `share`
        // until the matching `unshare` (it is a descriptor of an in-flight request), which is the
        // layer's contract for a streaming mapping. `DriverToDevice` buffers are never written: the
        // layer writes the original only for directions in which the device writes.
        let map = || unsafe {
            B::layer().map_ptr(B::device(), buffer.as_ptr().cast::<u8>(), len, direction, DmaAttrs::NO_WARN)
        };
        let mut mapped = map();
        let mut attempt = 1;
        // Exhaustion is a load condition: slots free up as other requests complete.
        while matches!(mapped, Err(DmaError::PoolExhausted { .. })) && B::wait_for_slots(attempt) {
            attempt += 1;
            mapped = map();
        }
        match mapped {
            Ok(bus) => bus.0,
            Err(error) => {
                report::<B>(HalFailure::Share { error, len, direction });
                B::unreachable_bus_addr().0
            }
        }
    }

    unsafe fn unshare(paddr: VirtioAddr, buffer: NonNull<[u8]>, direction: BufferDirection) {
        let bus = BusAddr(paddr);
        if bus == B::unreachable_bus_addr() {
            // `share` failed for this buffer: nothing was mapped, nothing to copy back.
            return;
        }
        let len = buffer.len();
        // The copy back goes to the original recorded at map time, which is this buffer
        // (virtio-drivers passes the same one); the layer checks length and direction against its
        // record and changes nothing if they differ.
        // SAFETY: virtio-drivers calls `unshare` once per `share`, with the same address and buffer,
        // after the device is done with it: `bus` is the raw mapping `share` made on this device for
        // this buffer, which is still valid and untouched by the driver until we return.
        let unmapped =
            unsafe { B::layer().unmap(B::device(), bus, len, dma_direction(direction), DmaAttrs::NONE) };
        if let Err(error) = unmapped {
            report::<B>(HalFailure::Unshare { error, bus, len });
        }
    }
}
