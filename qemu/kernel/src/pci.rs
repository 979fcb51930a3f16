//! PCI on QEMU's q35: ECAM at 0xB000_0000, bus 0 only (every device the runner adds sits there).

use ccdma_qemu_common::virtio::pci::{PciError, PciTransport as ManagedTransport};
use core::fmt;
use virtio_drivers::transport::pci::bus::{
    Cam, Command, ConfigurationAccess, DeviceFunction, DeviceFunctionInfo, MmioCam, PciRoot,
};
use virtio_drivers::transport::pci::{PciTransport, VirtioPciError};

use crate::hal::DirectHal;

/// Physical base of q35's PCIe enhanced configuration space (MCFG), 256 MiB.
const Q35_ECAM_BASE: u64 = 0xB000_0000;

/// Red Hat / virtio PCI vendor.
pub const VIRTIO_VENDOR: u16 = 0x1af4;
/// Modern virtio-blk (`disable-legacy=on`): 0x1040 + device type 2.
pub const VIRTIO_BLK_MODERN: u16 = 0x1042;
/// virtio-iommu: 0x1040 + device type 23 (there is no legacy ID).
pub const VIRTIO_IOMMU: u16 = 0x1057;
/// Modern virtio-net: 0x1040 + device type 1.
pub const VIRTIO_NET_MODERN: u16 = 0x1041;
/// Modern virtio-rng: 0x1040 + device type 4.
pub const VIRTIO_RNG_MODERN: u16 = 0x1044;

/// A short name for a virtio PCI device ID, for reports.
pub fn virtio_name(device_id: u16) -> &'static str {
    match device_id {
        VIRTIO_BLK_MODERN => "virtio-blk",
        VIRTIO_IOMMU => "virtio-iommu",
        VIRTIO_NET_MODERN => "virtio-net",
        VIRTIO_RNG_MODERN => "virtio-rng",
        _ => "other",
    }
}

/// A PCI function's requester ID (`bus << 8 | device << 3 | function`): what a virtio-iommu calls
/// the endpoint ID of a PCI device.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub struct RequesterId(pub u16);

impl From<DeviceFunction> for RequesterId {
    fn from(function: DeviceFunction) -> Self {
        RequesterId(
            u16::from(function.bus) << 8 | u16::from(function.device) << 3 | u16::from(function.function),
        )
    }
}

impl fmt::Display for RequesterId {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{:#06x}", self.0)
    }
}

/// The root complex, through ECAM.
pub struct PciBus {
    root: PciRoot<MmioCam<'static>>,
    /// Read-only access for the common virtio transport (capabilities and BARs).
    reader: MmioCam<'static>,
}

impl PciBus {
    /// The q35 root complex. Only one `PciBus` may exist: it owns the ECAM window.
    pub fn q35() -> Self {
        // SAFETY: on q35 the 256 MiB at Q35_ECAM_BASE are the MCFG window, identity-mapped
        // uncached by the trampoline and reached only through this `PciRoot`.
        let cam = unsafe { MmioCam::new(Q35_ECAM_BASE as *mut u8, Cam::Ecam) };
        // SAFETY: the clone is only used to read capabilities and BARs (`managed_transport`),
        // never to write.
        let reader = unsafe { cam.unsafe_clone() };
        Self { root: PciRoot::new(cam), reader }
    }

    /// Every function on bus 0.
    pub fn functions(&self) -> impl Iterator<Item = (DeviceFunction, DeviceFunctionInfo)> + '_ {
        self.root.enumerate_bus(0)
    }

    /// Function 0 of device `slot` on bus 0, if something is there.
    pub fn at_slot(&self, slot: u8) -> Option<(DeviceFunction, DeviceFunctionInfo)> {
        self.functions().find(|(function, _)| function.device == slot && function.function == 0)
    }

    /// Lets `function` decode its memory BARs and master DMA. Firmware leaves bus mastering off on
    /// devices it did not use itself (the virtio-iommu among them).
    pub fn enable_memory_and_dma(&mut self, function: DeviceFunction) {
        let (_, command) = self.root.get_status_command(function);
        self.root.set_command(function, command | Command::MEMORY_SPACE | Command::BUS_MASTER);
    }

    /// Enables `function` and opens the common crate's virtio transport (the managed devices; it is
    /// correct in either byte order, which the pseries kernel needs).
    pub fn managed_transport(&mut self, function: DeviceFunction) -> Result<ManagedTransport, PciError> {
        self.enable_memory_and_dma(function);
        ManagedTransport::new(&self.reader, function)
    }

    /// Enables `function` and opens virtio-drivers' PCI transport (the virtio-iommu; BARs as
    /// assigned by firmware, reached through the identity map).
    pub fn virtio_transport(&mut self, function: DeviceFunction) -> Result<PciTransport, VirtioPciError> {
        self.enable_memory_and_dma(function);
        PciTransport::new::<DirectHal, _>(&mut self.root, function)
    }
}
