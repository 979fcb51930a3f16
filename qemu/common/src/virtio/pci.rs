//! The virtio 1.x PCI transport (modern devices, `disable-legacy=on`) with little-endian register
//! accesses. Capabilities are found through any `ConfigurationAccess` (x86_64: ECAM; pseries: RTAS);
//! BARs are reached through the kernel's MMIO hook ([`crate::Arch::mmio`]).

use core::mem::size_of;
use core::ptr::NonNull;
use virtio_drivers::transport::pci::bus::{ConfigurationAccess, DeviceFunction};
use virtio_drivers::transport::{DeviceStatus, DeviceType, InterruptStatus, Transport};
use virtio_drivers::{Error, PhysAddr, Result};
use zerocopy::{FromBytes, Immutable, IntoBytes};

use super::le;

/// Common configuration registers (virtio 1.x, 4.1.4.3).
mod common {
    pub const DEVICE_FEATURE_SELECT: usize = 0x00;
    pub const DEVICE_FEATURE: usize = 0x04;
    pub const DRIVER_FEATURE_SELECT: usize = 0x08;
    pub const DRIVER_FEATURE: usize = 0x0c;
    pub const DEVICE_STATUS: usize = 0x14;
    pub const CONFIG_GENERATION: usize = 0x15;
    pub const QUEUE_SELECT: usize = 0x16;
    pub const QUEUE_SIZE: usize = 0x18;
    pub const QUEUE_ENABLE: usize = 0x1c;
    pub const QUEUE_NOTIFY_OFF: usize = 0x1e;
    pub const QUEUE_DESC: usize = 0x20;
    pub const QUEUE_DRIVER: usize = 0x28;
    pub const QUEUE_DEVICE: usize = 0x30;
}

/// Capability types (`cfg_type`).
const CAP_COMMON: u8 = 1;
const CAP_NOTIFY: u8 = 2;
const CAP_ISR: u8 = 3;
const CAP_DEVICE: u8 = 4;
/// PCI capability ID of vendor-specific capabilities (virtio's).
const CAP_VENDOR: u8 = 0x09;
const VIRTIO_VENDOR: u16 = 0x1af4;

/// Why a function is not a usable modern virtio device.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum PciError {
    /// Not a virtio vendor/device ID (modern IDs are 0x1040 + type).
    NotVirtio(u16, u16),
    /// A required capability is missing (common, notify, ISR).
    MissingCapability(u8),
    /// A capability names a BAR that is not a memory BAR with an address.
    BadBar(u8),
}

impl core::fmt::Display for PciError {
    fn fmt(&self, f: &mut core::fmt::Formatter) -> core::fmt::Result {
        match self {
            Self::NotVirtio(vendor, device) => {
                write!(f, "{vendor:04x}:{device:04x} is not a modern virtio device")
            }
            Self::MissingCapability(kind) => write!(f, "virtio capability {kind} missing"),
            Self::BadBar(bar) => write!(f, "BAR {bar} unassigned or not memory"),
        }
    }
}

/// A modern virtio PCI device.
#[derive(Debug)]
pub struct PciTransport {
    device_type: DeviceType,
    common: NonNull<u8>,
    notify: NonNull<u8>,
    notify_multiplier: u32,
    isr: NonNull<u8>,
    config: Option<(NonNull<u8>, usize)>,
}

/// The memory address held by BAR `bar` of `function`, if it is an assigned memory BAR.
fn bar_address<C: ConfigurationAccess>(cam: &C, function: DeviceFunction, bar: u8) -> Option<u64> {
    if bar > 5 {
        return None;
    }
    let low = cam.read_word(function, 0x10 + 4 * bar);
    if low & 1 != 0 {
        return None; // I/O space
    }
    let address = match (low >> 1) & 3 {
        2 => u64::from(cam.read_word(function, 0x14 + 4 * bar)) << 32 | u64::from(low & !0xf),
        _ => u64::from(low & !0xf),
    };
    (address != 0).then_some(address)
}

impl PciTransport {
    /// Opens `function` through configuration access `cam`. Its BARs must be assigned and memory
    /// decoding enabled.
    pub fn new<C: ConfigurationAccess>(
        cam: &C,
        function: DeviceFunction,
    ) -> core::result::Result<Self, PciError> {
        let id = cam.read_word(function, 0);
        let (vendor, device) = (id as u16, (id >> 16) as u16);
        if vendor != VIRTIO_VENDOR || device < 0x1040 {
            return Err(PciError::NotVirtio(vendor, device));
        }
        let device_type =
            DeviceType::try_from(device - 0x1040).map_err(|_| PciError::NotVirtio(vendor, device))?;
        let (mut common, mut notify, mut isr, mut config) = (None, None, None, None);
        let mut notify_multiplier = 0;
        // Capabilities list: pointer at 0x34, each entry <id, next, ...>.
        let mut at = (cam.read_word(function, 0x34) & 0xfc) as u8;
        let mut guard = 0;
        while at != 0 && guard < 48 {
            guard += 1;
            let head = cam.read_word(function, at);
            let next = ((head >> 8) & 0xfc) as u8;
            let kind = (head >> 24) as u8;
            // Only the structures this transport uses: others (PCI config access, shared memory)
            // may name BARs that are not there.
            if head as u8 == CAP_VENDOR && matches!(kind, CAP_COMMON | CAP_NOTIFY | CAP_ISR | CAP_DEVICE) {
                let bar = cam.read_word(function, at + 4) as u8;
                let offset = u64::from(cam.read_word(function, at + 8));
                let length = cam.read_word(function, at + 12) as usize;
                let base = bar_address(cam, function, bar).ok_or(PciError::BadBar(bar))?;
                let ptr = crate::mmio(base + offset, length);
                match kind {
                    CAP_COMMON if common.is_none() => common = Some(ptr),
                    CAP_NOTIFY if notify.is_none() => {
                        notify = Some(ptr);
                        notify_multiplier = cam.read_word(function, at + 16);
                    }
                    CAP_ISR if isr.is_none() => isr = Some(ptr),
                    CAP_DEVICE if config.is_none() => config = Some((ptr, length)),
                    _ => {}
                }
            }
            at = next;
        }
        Ok(Self {
            device_type,
            common: common.ok_or(PciError::MissingCapability(CAP_COMMON))?,
            notify: notify.ok_or(PciError::MissingCapability(CAP_NOTIFY))?,
            notify_multiplier,
            isr: isr.ok_or(PciError::MissingCapability(CAP_ISR))?,
            config,
        })
    }

    fn reg(&self, offset: usize) -> *mut u8 {
        // SAFETY: every offset used is a register of the common configuration structure, which
        // the capability's length covers (virtio 1.x requires at least 0x38 bytes).
        unsafe { self.common.as_ptr().add(offset) }
    }

    fn read8(&self, offset: usize) -> u8 {
        // SAFETY: a register of the common configuration (see `reg`); bytes have no byte order.
        unsafe { self.reg(offset).read_volatile() }
    }

    fn write8(&mut self, offset: usize, value: u8) {
        // SAFETY: as in `read8`.
        unsafe { self.reg(offset).write_volatile(value) }
    }

    fn read16(&self, offset: usize) -> u16 {
        // SAFETY: a 2-byte-aligned register of the common configuration (see `reg`).
        unsafe { le::read16(self.reg(offset)) }
    }

    fn write16(&mut self, offset: usize, value: u16) {
        // SAFETY: as in `read16`.
        unsafe { le::write16(self.reg(offset), value) }
    }

    fn read32(&self, offset: usize) -> u32 {
        // SAFETY: a 4-byte-aligned register of the common configuration (see `reg`).
        unsafe { le::read32(self.reg(offset)) }
    }

    fn write32(&mut self, offset: usize, value: u32) {
        // SAFETY: as in `read32`.
        unsafe { le::write32(self.reg(offset), value) }
    }

    fn write64(&mut self, offset: usize, value: u64) {
        // SAFETY: a 64-bit register of the common configuration, 4-byte aligned (see `reg`).
        unsafe { le::write64(self.reg(offset), value) }
    }
}

impl Drop for PciTransport {
    fn drop(&mut self) {
        // Reset: the device forgets its queues before their memory can be given back.
        self.write8(common::DEVICE_STATUS, 0);
    }
}

impl Transport for PciTransport {
    fn device_type(&self) -> DeviceType {
        self.device_type
    }

    fn read_device_features(&mut self) -> u64 {
        self.write32(common::DEVICE_FEATURE_SELECT, 0);
        let low = self.read32(common::DEVICE_FEATURE);
        self.write32(common::DEVICE_FEATURE_SELECT, 1);
        u64::from(self.read32(common::DEVICE_FEATURE)) << 32 | u64::from(low)
    }

    fn write_driver_features(&mut self, features: u64) {
        self.write32(common::DRIVER_FEATURE_SELECT, 0);
        self.write32(common::DRIVER_FEATURE, features as u32);
        self.write32(common::DRIVER_FEATURE_SELECT, 1);
        self.write32(common::DRIVER_FEATURE, (features >> 32) as u32);
    }

    fn max_queue_size(&mut self, queue: u16) -> u32 {
        self.write16(common::QUEUE_SELECT, queue);
        u32::from(self.read16(common::QUEUE_SIZE))
    }

    fn notify(&mut self, queue: u16) {
        self.write16(common::QUEUE_SELECT, queue);
        let offset = usize::from(self.read16(common::QUEUE_NOTIFY_OFF)) * self.notify_multiplier as usize;
        // SAFETY: the notify capability covers `queue_notify_off * multiplier + 2` bytes for
        // every queue (virtio 1.x, 4.1.4.4).
        unsafe { le::write16(self.notify.as_ptr().add(offset), queue) }
    }

    fn get_status(&self) -> DeviceStatus {
        DeviceStatus::from_bits_truncate(u32::from(self.read8(common::DEVICE_STATUS)))
    }

    fn set_status(&mut self, status: DeviceStatus) {
        self.write8(common::DEVICE_STATUS, status.bits() as u8);
    }

    fn set_guest_page_size(&mut self, _guest_page_size: u32) {}

    fn requires_legacy_layout(&self) -> bool {
        false
    }

    fn queue_set(
        &mut self,
        queue: u16,
        size: u32,
        descriptors: PhysAddr,
        driver: PhysAddr,
        device: PhysAddr,
    ) {
        self.write16(common::QUEUE_SELECT, queue);
        self.write16(common::QUEUE_SIZE, size as u16);
        self.write64(common::QUEUE_DESC, descriptors);
        self.write64(common::QUEUE_DRIVER, driver);
        self.write64(common::QUEUE_DEVICE, device);
        self.write16(common::QUEUE_ENABLE, 1);
    }

    fn queue_unset(&mut self, queue: u16) {
        // A modern queue cannot be disabled; a device reset (status 0) releases it.
        self.write16(common::QUEUE_SELECT, queue);
        self.write16(common::QUEUE_SIZE, 0);
        self.write64(common::QUEUE_DESC, 0);
        self.write64(common::QUEUE_DRIVER, 0);
        self.write64(common::QUEUE_DEVICE, 0);
    }

    fn queue_used(&mut self, queue: u16) -> bool {
        self.write16(common::QUEUE_SELECT, queue);
        self.read16(common::QUEUE_ENABLE) == 1
    }

    fn ack_interrupt(&mut self) -> InterruptStatus {
        // SAFETY: the ISR capability is at least one byte; reading it acknowledges.
        InterruptStatus::from_bits_truncate(u32::from(unsafe { self.isr.as_ptr().read_volatile() }))
    }

    fn read_config_generation(&self) -> u32 {
        u32::from(self.read8(common::CONFIG_GENERATION))
    }

    /// Reads `T`'s bytes as the device holds them (little-endian fields stay little-endian:
    /// callers convert).
    fn read_config_space<T: FromBytes + IntoBytes>(&self, offset: usize) -> Result<T> {
        let (base, len) = self.config.ok_or(Error::ConfigSpaceMissing)?;
        if offset + size_of::<T>() > len {
            return Err(Error::ConfigSpaceTooSmall);
        }
        let mut value = T::new_zeroed();
        for (i, byte) in value.as_mut_bytes().iter_mut().enumerate() {
            // SAFETY: inside the device configuration capability (checked above).
            *byte = unsafe { base.as_ptr().add(offset + i).read_volatile() };
        }
        Ok(value)
    }

    fn write_config_space<T: IntoBytes + Immutable>(&mut self, offset: usize, value: T) -> Result<()> {
        let (base, len) = self.config.ok_or(Error::ConfigSpaceMissing)?;
        if offset + size_of::<T>() > len {
            return Err(Error::ConfigSpaceTooSmall);
        }
        for (i, byte) in value.as_bytes().iter().enumerate() {
            // SAFETY: inside the device configuration capability (checked above).
            unsafe { base.as_ptr().add(offset + i).write_volatile(*byte) };
        }
        Ok(())
    }
}
