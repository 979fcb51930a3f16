//! A `Transport` wrapper that negotiates `VIRTIO_F_ACCESS_PLATFORM`.
//!
//! virtio-drivers only offers the feature bits its device drivers know, and none of them knows
//! bit 33. A device behind an IOMMU offers it to say "my DMA goes through the platform's address
//! translation"; a driver that does not acknowledge it may see the device fail `FEATURES_OK` or
//! bypass translation. This wrapper acknowledges the bit whenever the device offers it and
//! forwards everything else unchanged.

use virtio_drivers::transport::{DeviceStatus, DeviceType, InterruptStatus, Transport};
use virtio_drivers::{PhysAddr, Result};
use zerocopy::{FromBytes, Immutable, IntoBytes};

/// `VIRTIO_F_ACCESS_PLATFORM`: the device's DMA is translated by the platform (an IOMMU).
pub const VIRTIO_F_ACCESS_PLATFORM: u64 = 1 << 33;

/// Wraps a transport and acknowledges `VIRTIO_F_ACCESS_PLATFORM` when the device offers it.
#[derive(Debug)]
pub struct PlatformAccessTransport<T: Transport> {
    inner: T,
    offered: u64,
}

impl<T: Transport> PlatformAccessTransport<T> {
    /// Wraps `inner`.
    pub fn new(inner: T) -> Self {
        Self { inner, offered: 0 }
    }

    /// Whether the device offers `VIRTIO_F_ACCESS_PLATFORM` (reads the feature registers).
    pub fn offers_access_platform(&mut self) -> bool {
        self.inner.read_device_features() & VIRTIO_F_ACCESS_PLATFORM != 0
    }
}

/// A managed device's transport, wrapped, once it offers `VIRTIO_F_ACCESS_PLATFORM` (its DMA must go
/// through the IOMMU for ccdma's windows to mean anything); `None`, with `<name>.init` failed in the
/// report, when the transport could not be opened or the device does not offer it.
pub fn managed<T: Transport, E: core::fmt::Display>(
    report: &mut crate::report::Report,
    name: &str,
    opened: core::result::Result<T, E>,
) -> Option<PlatformAccessTransport<T>> {
    let transport = match opened {
        Ok(transport) => transport,
        Err(error) => {
            report.fail(format_args!("{name}.init"), format_args!("PCI transport: {error}"));
            return None;
        }
    };
    let mut transport = PlatformAccessTransport::new(transport);
    if !transport.offers_access_platform() {
        report.fail(
            format_args!("{name}.init"),
            "device does not offer VIRTIO_F_ACCESS_PLATFORM (iommu_platform=on missing)",
        );
        return None;
    }
    Some(transport)
}

impl<T: Transport> Transport for PlatformAccessTransport<T> {
    fn device_type(&self) -> DeviceType {
        self.inner.device_type()
    }

    fn read_device_features(&mut self) -> u64 {
        self.offered = self.inner.read_device_features();
        self.offered
    }

    fn write_driver_features(&mut self, driver_features: u64) {
        let platform = self.offered & VIRTIO_F_ACCESS_PLATFORM;
        self.inner.write_driver_features(driver_features | platform);
    }

    fn max_queue_size(&mut self, queue: u16) -> u32 {
        self.inner.max_queue_size(queue)
    }

    fn notify(&mut self, queue: u16) {
        self.inner.notify(queue)
    }

    fn get_status(&self) -> DeviceStatus {
        self.inner.get_status()
    }

    fn set_status(&mut self, status: DeviceStatus) {
        self.inner.set_status(status)
    }

    fn set_guest_page_size(&mut self, guest_page_size: u32) {
        self.inner.set_guest_page_size(guest_page_size)
    }

    fn requires_legacy_layout(&self) -> bool {
        self.inner.requires_legacy_layout()
    }

    fn queue_set(
        &mut self,
        queue: u16,
        size: u32,
        descriptors: PhysAddr,
        driver_area: PhysAddr,
        device_area: PhysAddr,
    ) {
        self.inner.queue_set(queue, size, descriptors, driver_area, device_area)
    }

    fn queue_unset(&mut self, queue: u16) {
        self.inner.queue_unset(queue)
    }

    fn queue_used(&mut self, queue: u16) -> bool {
        self.inner.queue_used(queue)
    }

    fn ack_interrupt(&mut self) -> InterruptStatus {
        self.inner.ack_interrupt()
    }

    fn read_config_generation(&self) -> u32 {
        self.inner.read_config_generation()
    }

    fn read_config_space<V: FromBytes + IntoBytes>(&self, offset: usize) -> Result<V> {
        self.inner.read_config_space(offset)
    }

    fn write_config_space<V: IntoBytes + Immutable>(&mut self, offset: usize, value: V) -> Result<()> {
        self.inner.write_config_space(offset, value)
    }
}
