//! The safe face of streaming DMA: a [`Mapping`] borrows its buffer for as long as it lives, so safe
//! code cannot touch the buffer while the device owns it, nor unmap twice.
//!
//! The layer records every mapping made here as owned by its `Mapping`: the raw face (by bus
//! address, `unsafe`) refuses to unmap or sync it, so the only way to end the mapping is through the
//! `Mapping` itself, and no call can write the buffer after its borrow has ended:
//! - [`Mapping::unmap`] that fails hands the mapping back ([`Refused`]) with the borrow still held;
//! - dropping a mapping unmaps it; if that fails (strict IOMMU entries that will not clear) the record
//!   forgets the buffer before the borrow ends and its slots stay reserved for good;
//! - `mem::forget` of a mapping leaks its slots and keeps its device busy (detach refuses), but the
//!   buffer is never written again: the borrow checker already considers it free, and no call can
//!   reach the record.
//!
//! ```
//! # use ccdma::*;
//! # use ccdma_hv_model::{HvConfig, Hypervisor};
//! # let hv: &'static Hypervisor = Box::leak(Box::new(Hypervisor::new(HvConfig::pseries(1 << 30))));
//! # let mut layer = DmaLayer::new(hv);
//! # let meta = vec![SlotMeta::EMPTY; 512].leak();
//! # // SAFETY: the model never hands this range out.
//! # unsafe { layer.add_pool(PhysAddr(0x80_0000), 1 << 20, meta, PoolConfig::default()) }.unwrap();
//! # let dev = layer.attach(DeviceConfig::new(1, DmaMask::BITS_32)).unwrap();
//! # let model_dev = hv.add_device(1, 32);
//! let mut buf = [0u8; 512];
//! let mut m = layer.map(&dev, &mut buf, DmaDirection::FromDevice, DmaAttrs::NONE)?;
//! model_dev.write(m.bus_addr().0, b"hello").unwrap();
//! m.sync_for_cpu(0, 5)?;
//! assert_eq!(&m.buffer()[..5], b"hello");
//! m.unmap().map_err(|r| r.error)?;
//! assert_eq!(&buf[..5], b"hello");
//! # Ok::<(), ccdma::DmaError>(())
//! ```
//!
//! The buffer cannot be touched while it is mapped:
//!
//! ```compile_fail,E0506
//! # use ccdma::*;
//! # use ccdma_hv_model::{HvConfig, Hypervisor};
//! # let hv: &'static Hypervisor = Box::leak(Box::new(Hypervisor::new(HvConfig::pseries(1 << 30))));
//! # let mut layer = DmaLayer::new(hv);
//! # let meta = vec![SlotMeta::EMPTY; 512].leak();
//! # // SAFETY: the model never hands this range out.
//! # unsafe { layer.add_pool(PhysAddr(0x80_0000), 1 << 20, meta, PoolConfig::default()) }.unwrap();
//! # let dev = layer.attach(DeviceConfig::new(1, DmaMask::BITS_32)).unwrap();
//! # let model_dev = hv.add_device(1, 32);
//! let mut buf = [0u8; 512];
//! let m = layer.map(&dev, &mut buf, DmaDirection::FromDevice, DmaAttrs::NONE).unwrap();
//! buf[0] = 1; // error: `buf` is borrowed by the mapping
//! drop(m);
//! ```

use core::fmt;
use core::marker::PhantomData;
use core::mem::ManuallyDrop;

use crate::addr::BusAddr;
use crate::device::Device;
use crate::direction::{DmaAttrs, DmaDirection};
use crate::error::{DmaError, Refused};
use crate::iommu::MAX_DOMAINS;
use crate::layer::DmaLayer;
use crate::platform::Platform;
use crate::pool::MAX_AREAS;
use crate::pool_set::MAX_POOLS;
use crate::stream::{MapRequest, Original, RunWord};

/// A live streaming mapping of a borrowed buffer.
pub struct Mapping<
    'a,
    'm,
    P: Platform,
    const POOLS: usize = MAX_POOLS,
    const DOMAINS: usize = MAX_DOMAINS,
    const AREAS: usize = MAX_AREAS,
> {
    layer: &'a DmaLayer<'m, P, POOLS, DOMAINS, AREAS>,
    dev: &'a Device,
    bus: BusAddr,
    /// Where its bounce run lies (unmap goes there without a search; none on other paths), and
    /// whether its device's live count has it already.
    run: RunWord,
    buf: *mut u8,
    len: usize,
    dir: DmaDirection,
    attrs: DmaAttrs,
    _buf: PhantomData<&'a mut [u8]>,
}

// SAFETY: a mapping is a unique borrow of a `[u8]` (Send) plus references to a `Sync` layer and
// device; moving it to another CPU moves the borrow with it.
unsafe impl<P: Platform, const POOLS: usize, const DOMAINS: usize, const AREAS: usize> Send
    for Mapping<'_, '_, P, POOLS, DOMAINS, AREAS>
{
}
// SAFETY: `&Mapping` only reads the buffer (`buffer`) and the record; every mutation takes `&mut`.
unsafe impl<P: Platform, const POOLS: usize, const DOMAINS: usize, const AREAS: usize> Sync
    for Mapping<'_, '_, P, POOLS, DOMAINS, AREAS>
{
}

impl<'m, P: Platform, const POOLS: usize, const DOMAINS: usize, const AREAS: usize>
    DmaLayer<'m, P, POOLS, DOMAINS, AREAS>
{
    /// Map `buf` for the device to read (`ToDevice`). The buffer stays borrowed until the mapping ends.
    #[track_caller]
    pub fn map_to_device<'a>(
        &'a self,
        dev: &'a Device,
        buf: &'a [u8],
        attrs: DmaAttrs,
    ) -> Result<Mapping<'a, 'm, P, POOLS, DOMAINS, AREAS>, DmaError> {
        // A to-device mapping never writes its original (no copy back, sync for the CPU copies
        // nothing), so the shared borrow suffices.
        self.map_buffer(dev, buf.as_ptr().cast_mut(), buf.len(), DmaDirection::ToDevice, attrs)
    }

    /// Map `buf` in any direction. The buffer stays borrowed until the mapping ends.
    #[track_caller]
    pub fn map<'a>(
        &'a self,
        dev: &'a Device,
        buf: &'a mut [u8],
        dir: DmaDirection,
        attrs: DmaAttrs,
    ) -> Result<Mapping<'a, 'm, P, POOLS, DOMAINS, AREAS>, DmaError> {
        self.map_buffer(dev, buf.as_mut_ptr(), buf.len(), dir, attrs)
    }

    #[track_caller]
    #[inline(always)]
    fn map_buffer<'a>(
        &'a self,
        dev: &'a Device,
        ptr: *mut u8,
        len: usize,
        dir: DmaDirection,
        attrs: DmaAttrs,
    ) -> Result<Mapping<'a, 'm, P, POOLS, DOMAINS, AREAS>, DmaError> {
        self.check_device(dev)?;
        // Bounce-always needs the physical address only for `min_align_mask` bits above the page
        // offset; the translation is skipped otherwise (as in `map_ptr`).
        let phys = self.translate_for(dev, ptr, len);
        // The buffer is borrowed for 'a by the returned mapping; the record is marked as the
        // mapping's, so only the mapping can end it, and it forgets `ptr` before the borrow ends.
        self.map_original_inline(
            dev,
            &MapRequest { orig: Original { cpu: ptr, phys, safe: true }, len, dir, attrs },
            |m| {
                Ok(Mapping {
                    layer: self,
                    dev,
                    bus: m.bus,
                    run: m.run,
                    buf: ptr,
                    len,
                    dir,
                    attrs,
                    _buf: PhantomData,
                })
            },
            Err,
        )
    }
}

impl<P: Platform, const POOLS: usize, const DOMAINS: usize, const AREAS: usize>
    Mapping<'_, '_, P, POOLS, DOMAINS, AREAS>
{
    /// The address the device uses.
    pub fn bus_addr(&self) -> BusAddr {
        self.bus
    }
    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Always false (zero-length mappings are refused).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Direction.
    pub fn direction(&self) -> DmaDirection {
        self.dir
    }
    /// Copy device writes in `[offset, offset + len)` into the buffer.
    #[track_caller]
    pub fn sync_for_cpu(&mut self, offset: usize, len: usize) -> Result<(), DmaError> {
        self.layer.sync(self.dev, self.bus, offset, len, self.dir, true, true)
    }
    /// Copy CPU changes in `[offset, offset + len)` of the buffer to the device's copy.
    #[track_caller]
    pub fn sync_for_device(&mut self, offset: usize, len: usize) -> Result<(), DmaError> {
        self.layer.sync(self.dev, self.bus, offset, len, self.dir, false, true)
    }
    /// Read the buffer (between `sync_for_cpu` and the next device access). The returned borrow ends
    /// before any `&mut self` call (sync, unmap) can write the buffer.
    pub fn buffer(&self) -> &[u8] {
        // SAFETY: the buffer is borrowed by this mapping for its life and nothing else can write it:
        // the layer writes it only in `sync_for_cpu`/`unmap` (which take `&mut self`/`self`), the raw
        // face refuses this mapping's record, and on bounced paths the device writes only the slot.
        // On direct paths the device may write the buffer itself, as with any DMA API.
        unsafe { core::slice::from_raw_parts(self.buf, self.len) }
    }
    /// Write the buffer (then `sync_for_device` hands the change to the device). Only for mappings
    /// made with a unique borrow (`map`), so `ToDevice` mappings of a shared buffer are refused.
    pub fn buffer_mut(&mut self) -> Option<&mut [u8]> {
        if self.dir == DmaDirection::ToDevice {
            // `map_to_device` may hold only a shared borrow: never hand out a unique one.
            return None;
        }
        // SAFETY: as in `buffer`, and `&mut self` excludes every other use of the mapping; a mapping
        // that is not `ToDevice` came from `map`, which holds a unique borrow of the buffer.
        Some(unsafe { core::slice::from_raw_parts_mut(self.buf, self.len) })
    }
    /// End the mapping: copy back per direction and release its slots. If that fails (strict IOMMU
    /// entries that will not clear) the mapping comes back unchanged inside the error, the buffer
    /// still borrowed: retry, or drop it (which gives the slots up for good).
    #[track_caller]
    #[inline]
    pub fn unmap(self) -> Result<(), Refused<Self>> {
        let this = ManuallyDrop::new(self);
        // The result tested on each way out (`unmap_mapping_then`), not merged first.
        let (layer, dev, bus, run, len, dir, attrs) =
            (this.layer, this.dev, this.bus, this.run, this.len, this.dir, this.attrs);
        layer.unmap_mapping_then(dev, bus, run, len, dir, attrs, |result| match result {
            Ok(()) => Ok(()),
            Err(error) => Err(Refused { value: ManuallyDrop::into_inner(this), error }),
        })
    }
}

impl<P: Platform, const POOLS: usize, const DOMAINS: usize, const AREAS: usize> fmt::Debug
    for Mapping<'_, '_, P, POOLS, DOMAINS, AREAS>
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mapping")
            .field("bus", &self.bus)
            .field("len", &self.len)
            .field("dir", &self.dir)
            .field("device", &self.dev.serial())
            .finish()
    }
}

impl<P: Platform, const POOLS: usize, const DOMAINS: usize, const AREAS: usize> Drop
    for Mapping<'_, '_, P, POOLS, DOMAINS, AREAS>
{
    fn drop(&mut self) {
        if let Err(e) = self.layer.unmap_mapping(self.dev, self.bus, self.run, self.len, self.dir, self.attrs)
        {
            log::error!("ccdma: unmap on drop of {} failed: {e}", self.bus);
            // The borrow ends now: the record must forget the buffer before it does.
            self.layer.orphan(self.dev, self.bus);
        }
    }
}
