//! Bounded sector I/O on a virtio-blk device, through non-blocking requests ([`crate::virtio::blk`]).
//!
//! Blocking helpers would spin until the device answers, which it never does when the
//! IOMMU blocked the request. Here every request has a deadline. A request's header, status and
//! data live in leaked memory ([`memory::leak_bytes`]) and are owned by the device while it is in
//! flight: a completed request hands them back, a timed-out one keeps them for good, so nothing
//! the device might still write is ever reused.

use core::fmt;
use core::time::Duration;
use virtio_drivers::Hal;

use crate::memory;
use crate::time;
use crate::transport::PlatformAccessTransport;
use crate::virtio::blk::{BlkReq, BlkResp, VirtioBlk, SECTOR_SIZE};
use crate::virtio::pci::PciTransport;

/// The virtio-blk driver as this kernel uses it: DMA through `H`, `ACCESS_PLATFORM` acknowledged.
pub type BlkDevice<H> = VirtioBlk<H, PlatformAccessTransport<PciTransport>>;

/// A [`BlkDevice`] built in place in leaked memory by [`Blk::open`] (1.4 KiB: no stack frame holds
/// it, nor moves it between a `Result` and an `Option`); dropped (the device reset) with the handle.
/// Dereferences to the driver.
pub struct Blk<H: Hal + 'static>(&'static mut BlkDevice<H>);

impl<H: Hal + 'static> Blk<H> {
    /// Brings the virtio-blk device on `transport` up, in leaked memory.
    pub fn open(transport: PlatformAccessTransport<PciTransport>) -> virtio_drivers::Result<Self> {
        let place = memory::leak_uninit::<BlkDevice<H>>().ok_or(virtio_drivers::Error::DmaError)?;
        BlkDevice::<H>::init_in(place, transport).map(Blk)
    }
}

impl<H: Hal + 'static> core::ops::Deref for Blk<H> {
    type Target = BlkDevice<H>;
    fn deref(&self) -> &BlkDevice<H> {
        self.0
    }
}

impl<H: Hal + 'static> core::ops::DerefMut for Blk<H> {
    fn deref_mut(&mut self) -> &mut BlkDevice<H> {
        self.0
    }
}

impl<H: Hal + 'static> Drop for Blk<H> {
    fn drop(&mut self) {
        // SAFETY: `open` built the driver in leaked memory for this handle alone; it is dropped
        // once, here, and nothing reaches it afterwards (the leaked bytes are never handed out again).
        unsafe { core::ptr::drop_in_place::<BlkDevice<H>>(&mut *self.0) };
    }
}

/// The buffers of one request. The data buffer can be larger than one transfer: the transfer
/// uses `buffer[range]`, so one buffer serves requests of many sizes and alignments.
pub struct BlkRequest {
    header: &'static mut BlkReq,
    status: &'static mut BlkResp,
    buffer: &'static mut [u8],
    range: core::ops::Range<usize>,
}

/// Why a sector transfer failed.
#[derive(Debug)]
pub enum BlkIoError {
    /// No leaked memory left for the request's buffers.
    OutOfMemory,
    /// virtio-drivers refused to queue the request.
    Submit(virtio_drivers::Error),
    /// The device did not complete the request in time; its buffers stay with the device.
    Timeout,
    /// The device completed the request with an error.
    Device(virtio_drivers::Error),
}

impl fmt::Display for BlkIoError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Self::OutOfMemory => write!(f, "no memory for request buffers"),
            Self::Submit(error) => write!(f, "submit failed: {error}"),
            Self::Timeout => write!(f, "no completion before the deadline"),
            Self::Device(error) => write!(f, "device error: {error}"),
        }
    }
}

impl BlkRequest {
    /// Buffers for a transfer of `sectors` sectors.
    pub fn new(sectors: usize) -> Result<Self, BlkIoError> {
        let buffer = memory::leak_bytes(sectors * SECTOR_SIZE, SECTOR_SIZE).ok_or(BlkIoError::OutOfMemory)?;
        Self::with_buffer(buffer)
    }

    /// Buffers for transfers within `buffer` (the whole of it to start with).
    pub fn with_buffer(buffer: &'static mut [u8]) -> Result<Self, BlkIoError> {
        Ok(Self {
            header: memory::leak_value(BlkReq::default()).ok_or(BlkIoError::OutOfMemory)?,
            status: memory::leak_value(BlkResp::default()).ok_or(BlkIoError::OutOfMemory)?,
            range: 0..buffer.len(),
            buffer,
        })
    }

    /// Makes the next transfer use `len` bytes at `offset` of the buffer. `None` if that is not
    /// inside the buffer.
    pub fn select(&mut self, offset: usize, len: usize) -> Option<&mut [u8]> {
        let end = offset.checked_add(len).filter(|&end| end <= self.buffer.len())?;
        self.range = offset..end;
        Some(&mut self.buffer[offset..end])
    }

    /// The data of the next (or last) transfer.
    pub fn data(&mut self) -> &mut [u8] {
        &mut self.buffer[self.range.clone()]
    }
}

/// Which way a request moves data.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
enum Direction {
    Read,
    Write,
}

/// A submitted request. Its buffers belong to the device until [`InFlight::finish`] succeeds;
/// dropping an `InFlight` abandons them to the device for good.
pub struct InFlight {
    token: u16,
    direction: Direction,
    request: BlkRequest,
}

impl InFlight {
    /// Waits, bounded, for the device to complete the request and collects its result.
    /// On timeout the buffers are abandoned to the device.
    pub fn finish<H: Hal>(self, blk: &mut Blk<H>, timeout: Duration) -> Result<BlkRequest, BlkIoError> {
        let token = self.token;
        time::poll_until(timeout, || (blk.peek_used() == Some(token)).then_some(()))
            .ok_or(BlkIoError::Timeout)?;
        let BlkRequest { header, status, buffer, range } = self.request;
        let data = &mut buffer[range.clone()];
        // SAFETY: the same buffers as were passed to `*_blocks_nb` for `token`.
        let result = unsafe {
            match self.direction {
                Direction::Read => blk.complete_read_blocks(token, header, data, status),
                Direction::Write => blk.complete_write_blocks(token, header, data, status),
            }
        };
        result.map_err(BlkIoError::Device)?;
        Ok(BlkRequest { header, status, buffer, range })
    }
}

/// Submits a read of `request.data().len()` bytes from `sector`, without waiting.
pub fn start_read<H: Hal>(
    blk: &mut Blk<H>,
    request: BlkRequest,
    sector: usize,
) -> Result<InFlight, BlkIoError> {
    let BlkRequest { header, status, buffer, range } = request;
    // SAFETY: the buffers are leaked and exclusively ours; `InFlight` keeps them untouched until
    // the request completes, and if it never does they are never used again.
    let token = unsafe { blk.read_blocks_nb(sector, header, &mut buffer[range.clone()], status) }
        .map_err(BlkIoError::Submit)?;
    Ok(InFlight { token, direction: Direction::Read, request: BlkRequest { header, status, buffer, range } })
}

/// Submits a write of `request.data()` to `sector`, without waiting.
pub fn start_write<H: Hal>(
    blk: &mut Blk<H>,
    request: BlkRequest,
    sector: usize,
) -> Result<InFlight, BlkIoError> {
    let BlkRequest { header, status, buffer, range } = request;
    // SAFETY: as in `start_read`.
    let token = unsafe { blk.write_blocks_nb(sector, header, &buffer[range.clone()], status) }
        .map_err(BlkIoError::Submit)?;
    Ok(InFlight { token, direction: Direction::Write, request: BlkRequest { header, status, buffer, range } })
}

/// Reads from `sector` into `request.data()`, waiting at most `timeout`.
pub fn read<H: Hal>(
    blk: &mut Blk<H>,
    request: BlkRequest,
    sector: usize,
    timeout: Duration,
) -> Result<BlkRequest, BlkIoError> {
    start_read(blk, request, sector)?.finish(blk, timeout)
}

/// Writes `request.data()` to `sector`, waiting at most `timeout`.
pub fn write<H: Hal>(
    blk: &mut Blk<H>,
    request: BlkRequest,
    sector: usize,
    timeout: Duration,
) -> Result<BlkRequest, BlkIoError> {
    start_write(blk, request, sector)?.finish(blk, timeout)
}
