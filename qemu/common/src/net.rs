//! Bounded frame exchange on virtio-net, through the non-blocking [`VirtioNet`]
//! (which needs no allocator).
//!
//! Each NIC keeps [`RX_BUFFERS`] receive buffers posted. Buffers live in leaked memory: a buffer
//! whose request never completes stays with the device for good, and the NIC is marked broken.

use core::fmt;
use core::time::Duration;
use virtio_drivers::Hal;

use crate::memory;
use crate::time;
use crate::transport::PlatformAccessTransport;
use crate::virtio::net::VirtioNet;
use crate::virtio::pci::PciTransport;

/// Descriptors per queue.
const QUEUE_SIZE: usize = 16;
/// Receive buffers kept posted.
pub const RX_BUFFERS: usize = 4;
/// Bytes per buffer: the virtio-net header and a full Ethernet frame, rounded up.
pub const BUFFER_LEN: usize = 2048;
/// Largest frame (without FCS) on a 1500-byte MTU.
pub const MAX_FRAME: usize = 1514;

/// The virtio-net driver as this kernel uses it.
pub type NetDevice<H> = VirtioNet<H, PlatformAccessTransport<PciTransport>, QUEUE_SIZE>;

/// Why a frame did not make it.
#[derive(Clone, Copy, Debug)]
pub enum NetError {
    /// No leaked memory left for buffers.
    OutOfMemory,
    /// virtio-drivers refused.
    Virtio(virtio_drivers::Error),
    /// The device did not finish transmitting in time.
    TransmitTimeout,
    /// No frame arrived in time.
    ReceiveTimeout,
    /// The device completed a request this driver did not post.
    UnknownToken(u16),
    /// A previous timeout left buffers with the device.
    Broken,
    /// A frame too large for one buffer.
    FrameTooLarge(usize),
}

impl From<virtio_drivers::Error> for NetError {
    fn from(error: virtio_drivers::Error) -> Self {
        Self::Virtio(error)
    }
}

impl fmt::Display for NetError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Self::OutOfMemory => write!(f, "no memory for buffers"),
            Self::Virtio(error) => write!(f, "virtio: {error}"),
            Self::TransmitTimeout => write!(f, "device did not take the frame in time"),
            Self::ReceiveTimeout => write!(f, "no frame arrived in time"),
            Self::UnknownToken(token) => write!(f, "device completed token {token}, never posted"),
            Self::Broken => write!(f, "buffers left with the device by an earlier timeout"),
            Self::FrameTooLarge(len) => write!(f, "frame of {len} bytes does not fit a buffer"),
        }
    }
}

/// One NIC with its posted receive buffers and a transmit buffer.
pub struct Nic<H: Hal + 'static> {
    /// Built in place in leaked memory by [`Nic::open`] (2.5 KiB: no stack frame holds it);
    /// dropped (the device reset) with the NIC.
    device: &'static mut NetDevice<H>,
    /// Posted receive buffers, with the token each was posted under.
    rx: [Option<(u16, &'static mut [u8])>; RX_BUFFERS],
    tx: Option<&'static mut [u8]>,
    broken: bool,
}

impl<H: Hal + 'static> Drop for Nic<H> {
    fn drop(&mut self) {
        // SAFETY: `open` built the device in leaked memory for this NIC alone; it is dropped once,
        // here, and nothing reaches it afterwards (the leaked bytes are never handed out again).
        unsafe { core::ptr::drop_in_place::<NetDevice<H>>(&mut *self.device) };
    }
}

impl<H: Hal + 'static> Nic<H> {
    /// Brings the virtio-net device on `transport` up (in leaked memory) and posts its receive
    /// buffers.
    pub fn open(transport: PlatformAccessTransport<PciTransport>) -> Result<Self, NetError> {
        let place = memory::leak_uninit::<NetDevice<H>>().ok_or(NetError::OutOfMemory)?;
        let device = NetDevice::<H>::init_in(place, transport)?;
        // From here a failure drops the NIC, which drops (resets) the device.
        let mut nic = Self { device, rx: [const { None }; RX_BUFFERS], tx: None, broken: false };
        nic.tx = Some(memory::leak_bytes(BUFFER_LEN, 64).ok_or(NetError::OutOfMemory)?);
        for slot in 0..RX_BUFFERS {
            let buffer = memory::leak_bytes(BUFFER_LEN, 64).ok_or(NetError::OutOfMemory)?;
            nic.post(slot, buffer)?;
        }
        Ok(nic)
    }

    /// The device's MAC address.
    pub fn mac(&self) -> [u8; 6] {
        self.device.mac_address()
    }

    fn post(&mut self, slot: usize, buffer: &'static mut [u8]) -> Result<(), NetError> {
        // SAFETY: the buffer is leaked and exclusively ours; it is not touched until the device
        // returns it (`receive`), and a buffer that never comes back is never touched again.
        let token = unsafe { self.device.receive_begin(buffer) }?;
        self.rx[slot] = Some((token, buffer));
        Ok(())
    }

    /// Sends `frame` (an Ethernet frame without FCS) and waits, bounded, for the device to take it.
    pub fn send(&mut self, frame: &[u8], timeout: Duration) -> Result<(), NetError> {
        if self.broken {
            return Err(NetError::Broken);
        }
        let tx = self.tx.take().ok_or(NetError::Broken)?;
        let header = match self.device.fill_buffer_header(tx) {
            Ok(header) => header,
            Err(error) => {
                self.tx = Some(tx);
                return Err(error.into());
            }
        };
        if header + frame.len() > tx.len() {
            self.tx = Some(tx);
            return Err(NetError::FrameTooLarge(frame.len()));
        }
        tx[header..header + frame.len()].copy_from_slice(frame);
        let packet = &tx[..header + frame.len()];
        // SAFETY: `tx` is leaked and exclusively ours; it is not touched until the device returns
        // it below, and if it never does it is never used again (`self.tx` stays `None`).
        let token = unsafe { self.device.transmit_begin(packet) }?;
        let device = &mut self.device;
        if time::poll_until(timeout, || (device.poll_transmit() == Some(token)).then_some(())).is_none() {
            self.broken = true;
            return Err(NetError::TransmitTimeout);
        }
        // SAFETY: the same buffer as was passed to `transmit_begin` for `token`.
        unsafe { self.device.transmit_complete(token, packet) }?;
        self.tx = Some(tx);
        Ok(())
    }

    /// Waits, bounded, for the next received frame, copies it into `out` (truncated to its
    /// length) and reposts the buffer. Returns the frame length.
    pub fn receive(&mut self, out: &mut [u8], timeout: Duration) -> Result<usize, NetError> {
        if self.broken {
            return Err(NetError::Broken);
        }
        let device = &self.device;
        let Some(token) = time::poll_until(timeout, || device.poll_receive()) else {
            return Err(NetError::ReceiveTimeout);
        };
        let Some(slot) = self.rx.iter().position(|posted| posted.as_ref().is_some_and(|(t, _)| *t == token))
        else {
            self.broken = true;
            return Err(NetError::UnknownToken(token));
        };
        let (_, buffer) = self.rx[slot].take().ok_or(NetError::Broken)?;
        // SAFETY: the same buffer as was passed to `receive_begin` for `token`.
        let completed = unsafe { self.device.receive_complete(token, buffer) };
        // Copy the frame out (the device's length claim checked against the buffer), then give
        // the buffer back to the device whatever the outcome.
        let copied = completed.map_err(NetError::from).and_then(|(header, len)| {
            let frame = buffer.get(header..header + len).ok_or(NetError::FrameTooLarge(len))?;
            let copied = len.min(out.len());
            out[..copied].copy_from_slice(&frame[..copied]);
            Ok(len)
        });
        self.post(slot, buffer)?;
        copied
    }
}
