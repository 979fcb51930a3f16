//! virtio-blk (virtio 1.x, 5.2) over [`LeQueue`]: non-blocking sector reads and writes, with the
//! request header in little-endian.

use core::mem::MaybeUninit;
use core::ptr::addr_of_mut;
use virtio_drivers::transport::{DeviceStatus, DeviceType, Transport};
use virtio_drivers::{Error, Hal, Result};

use super::queue::LeQueue;
use super::F_VERSION_1;

/// Bytes per sector.
pub const SECTOR_SIZE: usize = 512;
const QUEUE_SIZE: usize = 16;
const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const S_OK: u8 = 0;
/// What the status byte holds until the device writes it.
const S_NOT_WRITTEN: u8 = 0xff;

/// A request header: type, reserved, sector (little-endian).
#[derive(Debug, Default)]
pub struct BlkReq {
    bytes: [u8; 16],
}

impl BlkReq {
    fn set(&mut self, kind: u32, sector: u64) {
        self.bytes[..4].copy_from_slice(&kind.to_le_bytes());
        self.bytes[4..8].fill(0);
        self.bytes[8..].copy_from_slice(&sector.to_le_bytes());
    }
}

/// The status byte the device writes.
#[derive(Debug)]
pub struct BlkResp {
    status: [u8; 1],
}

impl Default for BlkResp {
    fn default() -> Self {
        Self { status: [S_NOT_WRITTEN] }
    }
}

/// A virtio-blk device.
pub struct VirtioBlk<H: Hal, T: Transport> {
    transport: T,
    queue: LeQueue<H, QUEUE_SIZE>,
    capacity: u64,
}

impl<H: Hal, T: Transport> VirtioBlk<H, T> {
    /// Initialises the device (VERSION_1 plus whatever the transport adds).
    ///
    /// Built in `place` (caller memory): no stack frame holds the driver (1.4 KiB: its queue's
    /// bookkeeping). On an error `place` is left uninitialised.
    pub fn init_in(place: &mut MaybeUninit<Self>, mut transport: T) -> Result<&mut Self> {
        if transport.device_type() != DeviceType::Block {
            return Err(Error::InvalidParam);
        }
        transport.set_status(DeviceStatus::empty());
        transport.set_status(DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER);
        let offered = transport.read_device_features();
        transport.write_driver_features(offered & F_VERSION_1);
        let features_ok = DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER | DeviceStatus::FEATURES_OK;
        transport.set_status(features_ok);
        if !transport.get_status().contains(DeviceStatus::FEATURES_OK) {
            transport.set_status(DeviceStatus::FAILED);
            return Err(Error::Unsupported);
        }
        let capacity = u64::from_le_bytes(transport.read_config_space::<[u8; 8]>(0)?);
        let this = place.as_mut_ptr();
        // SAFETY: a field of `place`: aligned, valid for writes, holding nothing yet.
        unsafe { LeQueue::init_at(addr_of_mut!((*this).queue), &mut transport, 0) }?;
        transport.set_status(features_ok | DeviceStatus::DRIVER_OK);
        // SAFETY: the fields not written above, each once: every field is initialised after this.
        unsafe {
            addr_of_mut!((*this).transport).write(transport);
            addr_of_mut!((*this).capacity).write(capacity);
        }
        // SAFETY: every field was written above.
        Ok(unsafe { place.assume_init_mut() })
    }

    /// Sectors on the disk.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Submits a read of `buf.len()` bytes (whole sectors) from `sector`; returns its token.
    ///
    /// # Safety
    /// `req`, `buf` and `resp` must stay valid and untouched until the request is completed with
    /// [`VirtioBlk::complete_read_blocks`].
    pub unsafe fn read_blocks_nb(
        &mut self,
        sector: usize,
        req: &mut BlkReq,
        buf: &mut [u8],
        resp: &mut BlkResp,
    ) -> Result<u16> {
        if buf.is_empty() || !buf.len().is_multiple_of(SECTOR_SIZE) {
            return Err(Error::InvalidParam);
        }
        req.set(T_IN, sector as u64);
        resp.status[0] = S_NOT_WRITTEN;
        // SAFETY: the caller's contract.
        let token = unsafe { self.queue.add(&[&req.bytes], &mut [buf, &mut resp.status]) }?;
        self.queue.notify(&mut self.transport);
        Ok(token)
    }

    /// Submits a write of `buf` (whole sectors) to `sector`; returns its token.
    ///
    /// # Safety
    /// As for [`VirtioBlk::read_blocks_nb`], until [`VirtioBlk::complete_write_blocks`].
    pub unsafe fn write_blocks_nb(
        &mut self,
        sector: usize,
        req: &mut BlkReq,
        buf: &[u8],
        resp: &mut BlkResp,
    ) -> Result<u16> {
        if buf.is_empty() || !buf.len().is_multiple_of(SECTOR_SIZE) {
            return Err(Error::InvalidParam);
        }
        req.set(T_OUT, sector as u64);
        resp.status[0] = S_NOT_WRITTEN;
        // SAFETY: the caller's contract.
        let token = unsafe { self.queue.add(&[&req.bytes, buf], &mut [&mut resp.status]) }?;
        self.queue.notify(&mut self.transport);
        Ok(token)
    }

    /// The token of the next completed request, if any.
    pub fn peek_used(&self) -> Option<u16> {
        self.queue.peek_used()
    }

    /// Completes read `token`.
    ///
    /// # Safety
    /// The same buffers as were submitted for `token`.
    pub unsafe fn complete_read_blocks(
        &mut self,
        token: u16,
        req: &BlkReq,
        buf: &mut [u8],
        resp: &mut BlkResp,
    ) -> Result<()> {
        // SAFETY: the caller's contract.
        unsafe { self.queue.pop_used(token, &[&req.bytes], &mut [buf, &mut resp.status]) }?;
        if resp.status[0] == S_OK {
            Ok(())
        } else {
            Err(Error::IoError)
        }
    }

    /// Completes write `token`.
    ///
    /// # Safety
    /// The same buffers as were submitted for `token`.
    pub unsafe fn complete_write_blocks(
        &mut self,
        token: u16,
        req: &BlkReq,
        buf: &[u8],
        resp: &mut BlkResp,
    ) -> Result<()> {
        // SAFETY: the caller's contract.
        unsafe { self.queue.pop_used(token, &[&req.bytes, buf], &mut [&mut resp.status]) }?;
        if resp.status[0] == S_OK {
            Ok(())
        } else {
            Err(Error::IoError)
        }
    }
}

impl<H: Hal, T: Transport> Drop for VirtioBlk<H, T> {
    fn drop(&mut self) {
        // Reset: the device stops using the queue before its memory can go.
        self.transport.set_status(DeviceStatus::empty());
    }
}
