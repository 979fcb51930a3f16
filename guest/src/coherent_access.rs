//! Safe byte access to a [`CoherentBuffer`]: [`CoherentBuffer::read_at`], [`CoherentBuffer::write_at`]
//! and [`CoherentBuffer::copy_from`], bounds-checked and volatile inside.
//!
//! The device may read or write a coherent buffer at any time, so its bytes are never handed out as a
//! `&[u8]`; these calls copy through volatile byte accesses instead (each byte exactly once, never
//! cached, never elided). Writes take `&mut self`, so safe code cannot have two CPU writers, or a
//! writer and a reader, at once. A range that does not fit the buffer is refused with
//! [`OutOfBounds`] and nothing is read or written.
//!
//! ```
//! # use ccdma::*;
//! # use ccdma_hv_model::{HvConfig, Hypervisor, Region};
//! # let hv: &'static Hypervisor = Box::leak(Box::new(Hypervisor::new(HvConfig::pseries(6 << 30))));
//! # let mut layer = DmaLayer::new(hv);
//! # // SAFETY: the model never hands this range out.
//! # unsafe { layer.add_pool(PhysAddr(0x80_0000), 1 << 20, vec![SlotMeta::EMPTY; 512].leak(), PoolConfig::default()) }.unwrap();
//! let nic = layer.attach(DeviceConfig::new(1, DmaMask::BITS_32))?;
//! let model_nic = hv.add_device(1, 32); // model only: the device's side
//! let page = hv.alloc(4096, Region::Low); // model only: a free page of guest RAM
//! // SAFETY: `page` is a free page of guest RAM, handed over until the free succeeds.
//! let mut ring = unsafe { layer.on(&nic).alloc_coherent(PhysAddr(page), 1)? };
//! ring.write_at(16, b"hello")?;
//! assert_eq!(model_nic.read(ring.bus_addr().0 + 16, 5).unwrap(), b"hello"); // the device sees it
//! let mut back = [0u8; 5];
//! ring.read_at(16, &mut back)?;
//! assert_eq!(&back, b"hello");
//! assert!(ring.write_at(4092, b"hello").is_err()); // past the end: refused, nothing written
//! layer.on(&nic).free_coherent(ring)?;
//! # Ok::<(), ccdma::DmaError>(())
//! ```

use core::fmt;

use crate::coherent::CoherentBuffer;
use crate::error::DmaError;

/// A [`CoherentBuffer`] access whose range does not fit the buffer: nothing was read or written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutOfBounds {
    /// The offset given.
    pub offset: usize,
    /// The bytes asked for.
    pub len: usize,
    /// The buffer's length.
    pub buf_len: usize,
}

impl fmt::Display for OutOfBounds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "coherent buffer access of {} bytes at offset {:#x} passes the buffer's end ({:#x} bytes): \
             keep offset + len <= len()",
            self.len, self.offset, self.buf_len
        )
    }
}

impl core::error::Error for OutOfBounds {}

impl From<OutOfBounds> for DmaError {
    /// As [`DmaError::Overflow`] (a range outside what it names), so `?` works in functions returning
    /// `DmaError`; match on [`OutOfBounds`] itself for the numbers.
    fn from(_: OutOfBounds) -> DmaError {
        DmaError::Overflow
    }
}

impl CoherentBuffer {
    /// The start of `[offset, offset + len)` if it lies inside the buffer.
    fn checked_range(&self, offset: usize, len: usize) -> Result<*mut u8, OutOfBounds> {
        let buf_len = self.len();
        match offset.checked_add(len) {
            Some(end) if end <= buf_len => {
                // SAFETY: `offset <= end <= len()`, so the result stays inside (or one past the end
                // of) the buffer's `len()` bytes from `cpu_ptr`, one allocation for the CPU.
                Ok(unsafe { self.cpu_ptr().as_ptr().add(offset) })
            }
            _ => Err(OutOfBounds { offset, len, buf_len }),
        }
    }

    /// Copy `out.len()` bytes from offset `offset` of the buffer into `out` (volatile reads: the
    /// device may write the buffer at any time). Refused, with `out` untouched, if the range does not
    /// fit the buffer.
    pub fn read_at(&self, offset: usize, out: &mut [u8]) -> Result<(), OutOfBounds> {
        let src = self.checked_range(offset, out.len())?;
        for (i, byte) in out.iter_mut().enumerate() {
            // SAFETY: `checked_range` put `[src, src + out.len())` inside the buffer, which stays
            // mapped for the CPU while `self` (the layer's record of the live buffer) exists; a
            // volatile read of a byte the device may change concurrently is the coherent contract.
            *byte = unsafe { src.add(i).read_volatile() };
        }
        Ok(())
    }

    /// Copy `data` into the buffer at offset `offset` (volatile writes, so the device sees every byte).
    /// Refused, with nothing written, if the range does not fit the buffer.
    pub fn write_at(&mut self, offset: usize, data: &[u8]) -> Result<(), OutOfBounds> {
        let dst = self.checked_range(offset, data.len())?;
        for (i, &byte) in data.iter().enumerate() {
            // SAFETY: as in `read_at`; `&mut self` excludes every other safe CPU access meanwhile.
            unsafe { dst.add(i).write_volatile(byte) };
        }
        Ok(())
    }

    /// Copy `data` to the start of the buffer (`write_at(0, data)`); `data` may be shorter than the
    /// buffer, the rest is left as it is.
    pub fn copy_from(&mut self, data: &[u8]) -> Result<(), OutOfBounds> {
        self.write_at(0, data)
    }
}
