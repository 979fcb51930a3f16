//! A bounded virtio-rng driver: one device-writable buffer per request, every wait with a
//! deadline.
//!
//! A blocking request would spin until the device answers, which it may never do when the IOMMU
//! blocked the request; this driver posts the buffer on its queue ([`LeQueue`]) and polls with a
//! deadline. A buffer whose request timed out stays with the
//! device: the driver marks itself broken and never posts again.

use crate::virtio::queue::LeQueue;
use crate::virtio::F_VERSION_1;
use core::fmt;
use core::time::Duration;
use virtio_drivers::transport::{DeviceStatus, DeviceType, Transport};
use virtio_drivers::Hal;

use crate::time;

const REQUEST_QUEUE: u16 = 0;
const QUEUE_SIZE: usize = 8;

/// Why a request failed.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum RngError {
    /// The transport is not a virtio-rng.
    NotAnRng,
    /// The device did not accept the driver's features.
    FeaturesRejected,
    /// virtio-drivers refused (queue set-up, DMA allocation, token mismatch).
    Virtio(virtio_drivers::Error),
    /// The device did not answer in time; the buffer stays with it.
    Timeout,
    /// A previous timeout left a buffer with the device.
    Broken,
    /// The device claims to have written more than the buffer holds.
    Overlong(u32),
}

impl From<virtio_drivers::Error> for RngError {
    fn from(error: virtio_drivers::Error) -> Self {
        Self::Virtio(error)
    }
}

impl fmt::Display for RngError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// A virtio-rng device.
pub struct VirtioRng<H: Hal, T: Transport> {
    // First, so it is dropped (device reset) before the queue memory goes.
    transport: T,
    queue: LeQueue<H, QUEUE_SIZE>,
    broken: bool,
}

impl<H: Hal, T: Transport> VirtioRng<H, T> {
    /// Initialises the device (VERSION_1 plus whatever the transport adds, e.g.
    /// `ACCESS_PLATFORM`).
    pub fn new(mut transport: T) -> Result<Self, RngError> {
        if transport.device_type() != DeviceType::EntropySource {
            return Err(RngError::NotAnRng);
        }
        transport.set_status(DeviceStatus::empty());
        transport.set_status(DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER);
        let offered = transport.read_device_features();
        transport.write_driver_features(offered & F_VERSION_1);
        let features_ok = DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER | DeviceStatus::FEATURES_OK;
        transport.set_status(features_ok);
        if !transport.get_status().contains(DeviceStatus::FEATURES_OK) {
            transport.set_status(DeviceStatus::FAILED);
            return Err(RngError::FeaturesRejected);
        }
        let queue = LeQueue::new(&mut transport, REQUEST_QUEUE)?;
        transport.set_status(features_ok | DeviceStatus::DRIVER_OK);
        Ok(Self { transport, queue, broken: false })
    }

    /// Whether the device asks to be reset (`DEVICE_NEEDS_RESET`: QEMU sets it when it marks the
    /// device broken, for example after a blocked DMA of more than one page).
    pub fn needs_reset(&self) -> bool {
        self.transport.get_status().contains(DeviceStatus::DEVICE_NEEDS_RESET)
    }

    /// Resets the device and sets it up again. A request that timed out is abandoned: the reset
    /// stops the device using its buffer, and the old queue's memory is given back after it.
    pub fn reset(self) -> Result<Self, RngError> {
        let Self { mut transport, queue, .. } = self;
        transport.set_status(DeviceStatus::empty());
        drop(queue);
        Self::new(transport)
    }

    /// Asks the device to fill `buffer`; returns how many bytes it wrote.
    ///
    /// `buffer` is `'static` because a request that times out leaves it with the device for good.
    pub fn fill(
        &mut self,
        buffer: &'static mut [u8],
        timeout: Duration,
    ) -> Result<(usize, &'static mut [u8]), RngError> {
        if self.broken {
            return Err(RngError::Broken);
        }
        // SAFETY: `buffer` is exclusively ours and is not touched until popped below; if the
        // request times out, the driver is marked broken and the buffer is never touched again.
        let token = unsafe { self.queue.add(&[], &mut [&mut *buffer]) }?;
        self.queue.notify(&mut self.transport);
        let queue = &self.queue;
        if time::poll_until(timeout, || (queue.peek_used() == Some(token)).then_some(())).is_none() {
            self.broken = true;
            return Err(RngError::Timeout);
        }
        // SAFETY: the same buffer that was added under `token`.
        let written = unsafe { self.queue.pop_used(token, &[], &mut [&mut *buffer]) }?;
        if written as usize > buffer.len() {
            return Err(RngError::Overlong(written));
        }
        Ok((written as usize, buffer))
    }
}
