//! The safe face of streaming DMA: a mapping borrows its buffer for as long as it lives, so safe code
//! cannot touch the buffer while the device owns it, nor unmap twice. Dropping a mapping unmaps it.

use core::marker::PhantomData;

use crate::addr::BusAddr;
use crate::direction::{DmaAttrs, DmaDirection};
use crate::error::DmaError;
use crate::layer::{Device, DmaLayer};
use crate::platform::Platform;

/// A live streaming mapping of a borrowed buffer.
pub struct Mapping<'a, 'm, P: Platform> {
    layer: &'a DmaLayer<'m, P>,
    dev: &'a Device,
    bus: BusAddr,
    buf: *mut u8,
    len: usize,
    dir: DmaDirection,
    attrs: DmaAttrs,
    live: bool,
    _buf: PhantomData<&'a mut [u8]>,
}

impl<'m, P: Platform> DmaLayer<'m, P> {
    /// Map `buf` for the device to read (`ToDevice`). The buffer stays borrowed until the mapping ends.
    pub fn map_to_device<'a>(
        &'a self,
        dev: &'a Device,
        buf: &'a [u8],
        attrs: DmaAttrs,
    ) -> Result<Mapping<'a, 'm, P>, DmaError> {
        // A to-device mapping never writes its original (no copy back, no sync for the CPU), so the
        // shared borrow suffices.
        self.map_buffer(dev, buf.as_ptr().cast_mut(), buf.len(), DmaDirection::ToDevice, attrs)
    }

    /// Map `buf` in any direction. The buffer stays borrowed until the mapping ends.
    pub fn map<'a>(
        &'a self,
        dev: &'a Device,
        buf: &'a mut [u8],
        dir: DmaDirection,
        attrs: DmaAttrs,
    ) -> Result<Mapping<'a, 'm, P>, DmaError> {
        self.map_buffer(dev, buf.as_mut_ptr(), buf.len(), dir, attrs)
    }

    fn map_buffer<'a>(
        &'a self,
        dev: &'a Device,
        ptr: *mut u8,
        len: usize,
        dir: DmaDirection,
        attrs: DmaAttrs,
    ) -> Result<Mapping<'a, 'm, P>, DmaError> {
        // SAFETY: the buffer is borrowed for 'a by the returned mapping, which unmaps (on `unmap` or
        // drop) before the borrow ends; to-device mappings never write through `ptr`.
        let bus = unsafe { self.map_ptr(dev, ptr, len, dir, attrs)? };
        Ok(Mapping { layer: self, dev, bus, buf: ptr, len, dir, attrs, live: true, _buf: PhantomData })
    }
}

impl<P: Platform> Mapping<'_, '_, P> {
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
    pub fn sync_for_cpu(&mut self, offset: usize, len: usize) -> Result<(), DmaError> {
        self.layer.sync_for_cpu(self.dev, self.bus, offset, len, self.dir)
    }
    /// Copy CPU changes in `[offset, offset + len)` of the buffer to the device's copy.
    pub fn sync_for_device(&mut self, offset: usize, len: usize) -> Result<(), DmaError> {
        self.layer.sync_for_device(self.dev, self.bus, offset, len, self.dir)
    }
    /// Read the buffer between `sync_for_cpu` and `sync_for_device`.
    pub fn buffer(&self) -> &[u8] {
        // SAFETY: the buffer is borrowed by this mapping for its life; on bounced paths the device
        // never touches it, and the caller reads it between syncs as the DMA API requires.
        unsafe { core::slice::from_raw_parts(self.buf, self.len) }
    }
    /// End the mapping: copy back per direction and release its slots.
    pub fn unmap(mut self) -> Result<(), DmaError> {
        self.live = false;
        self.layer.unmap(self.dev, self.bus, self.len, self.dir, self.attrs)
    }
}

impl<P: Platform> Drop for Mapping<'_, '_, P> {
    fn drop(&mut self) {
        if self.live {
            if let Err(e) = self.layer.unmap(self.dev, self.bus, self.len, self.dir, self.attrs) {
                log::error!("ccdma: unmap on drop of {} failed: {e}", self.bus);
            }
        }
    }
}
