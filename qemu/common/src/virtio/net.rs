//! virtio-net (virtio 1.x, 5.1) over [`LeQueue`]: raw frames behind the 12-byte header that
//! `VERSION_1` implies, no offloads.

use core::mem::MaybeUninit;
use core::ptr::addr_of_mut;
use virtio_drivers::transport::{DeviceStatus, DeviceType, Transport};
use virtio_drivers::{Error, Hal, Result};

use super::queue::LeQueue;
use super::F_VERSION_1;

/// `VIRTIO_NET_F_MAC`: the device has a MAC address in its configuration.
const F_MAC: u64 = 1 << 5;
/// `struct virtio_net_hdr` with `VERSION_1` (num_buffers included).
pub const HEADER_LEN: usize = 12;
const RX: u16 = 0;
const TX: u16 = 1;

/// A virtio-net device with `SIZE` descriptors per queue.
pub struct VirtioNet<H: Hal, T: Transport, const SIZE: usize> {
    transport: T,
    rx: LeQueue<H, SIZE>,
    tx: LeQueue<H, SIZE>,
    mac: [u8; 6],
}

impl<H: Hal, T: Transport, const SIZE: usize> VirtioNet<H, T, SIZE> {
    /// Initialises the device, built in `place` (caller memory): no stack frame holds the driver
    /// (2.5 KiB with 16-descriptor queues) or either of its queues but while it is set up. On an
    /// error `place` is left uninitialised and what was set up is dropped again.
    pub fn init_in(place: &mut MaybeUninit<Self>, mut transport: T) -> Result<&mut Self> {
        if transport.device_type() != DeviceType::Network {
            return Err(Error::InvalidParam);
        }
        transport.set_status(DeviceStatus::empty());
        transport.set_status(DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER);
        let offered = transport.read_device_features();
        transport.write_driver_features(offered & (F_VERSION_1 | F_MAC));
        let features_ok = DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER | DeviceStatus::FEATURES_OK;
        transport.set_status(features_ok);
        if !transport.get_status().contains(DeviceStatus::FEATURES_OK) {
            transport.set_status(DeviceStatus::FAILED);
            return Err(Error::Unsupported);
        }
        let mac = transport.read_config_space::<[u8; 6]>(0)?;
        let this = place.as_mut_ptr();
        // SAFETY: a field of `place`: aligned, valid for writes, holding nothing yet.
        unsafe { LeQueue::init_at(addr_of_mut!((*this).rx), &mut transport, RX) }?;
        // SAFETY: as above.
        if let Err(error) = unsafe { LeQueue::init_at(addr_of_mut!((*this).tx), &mut transport, TX) } {
            // SAFETY: the receive queue was written just above; dropped once, here.
            unsafe { core::ptr::drop_in_place(addr_of_mut!((*this).rx)) };
            return Err(error);
        }
        transport.set_status(features_ok | DeviceStatus::DRIVER_OK);
        // SAFETY: fields of `place` not written yet, each written once; with the queues above,
        // every field is initialised after this.
        unsafe {
            addr_of_mut!((*this).transport).write(transport);
            addr_of_mut!((*this).mac).write(mac);
        }
        // SAFETY: every field was written above.
        Ok(unsafe { place.assume_init_mut() })
    }

    /// The MAC address.
    pub fn mac_address(&self) -> [u8; 6] {
        self.mac
    }

    /// Writes an empty header at the start of `buffer`; returns its length.
    pub fn fill_buffer_header(&self, buffer: &mut [u8]) -> Result<usize> {
        let header = buffer.get_mut(..HEADER_LEN).ok_or(Error::InvalidParam)?;
        header.fill(0);
        Ok(HEADER_LEN)
    }

    /// Starts sending `packet` (header and frame); returns its token.
    ///
    /// # Safety
    /// `packet` must stay valid and untouched until [`VirtioNet::transmit_complete`].
    pub unsafe fn transmit_begin(&mut self, packet: &[u8]) -> Result<u16> {
        // SAFETY: the caller's contract.
        let token = unsafe { self.tx.add(&[packet], &mut []) }?;
        self.tx.notify(&mut self.transport);
        Ok(token)
    }

    /// The token of the next sent packet, if any.
    pub fn poll_transmit(&self) -> Option<u16> {
        self.tx.peek_used()
    }

    /// Takes back sent packet `token`.
    ///
    /// # Safety
    /// The same buffer as was passed to [`VirtioNet::transmit_begin`] for `token`.
    pub unsafe fn transmit_complete(&mut self, token: u16, packet: &[u8]) -> Result<()> {
        // SAFETY: the caller's contract.
        unsafe { self.tx.pop_used(token, &[packet], &mut []) }.map(|_| ())
    }

    /// Posts `buffer` for a received packet; returns its token.
    ///
    /// # Safety
    /// `buffer` must stay valid and untouched until [`VirtioNet::receive_complete`].
    pub unsafe fn receive_begin(&mut self, buffer: &mut [u8]) -> Result<u16> {
        // SAFETY: the caller's contract.
        let token = unsafe { self.rx.add(&[], &mut [buffer]) }?;
        self.rx.notify(&mut self.transport);
        Ok(token)
    }

    /// The token of the next filled receive buffer, if any.
    pub fn poll_receive(&self) -> Option<u16> {
        self.rx.peek_used()
    }

    /// Takes back receive buffer `token`; returns the header length and the frame length.
    ///
    /// # Safety
    /// The same buffer as was passed to [`VirtioNet::receive_begin`] for `token`.
    pub unsafe fn receive_complete(&mut self, token: u16, buffer: &mut [u8]) -> Result<(usize, usize)> {
        // SAFETY: the caller's contract.
        let written = unsafe { self.rx.pop_used(token, &[], &mut [buffer]) }? as usize;
        if written < HEADER_LEN || written > buffer.len() {
            return Err(Error::IoError);
        }
        Ok((HEADER_LEN, written - HEADER_LEN))
    }
}

impl<H: Hal, T: Transport, const SIZE: usize> Drop for VirtioNet<H, T, SIZE> {
    fn drop(&mut self) {
        self.transport.set_status(DeviceStatus::empty());
    }
}
