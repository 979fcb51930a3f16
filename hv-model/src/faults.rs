//! The fault log: every device access the model refused, with why. Tests assert on it.

use std::fmt;

/// Read or write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AccessKind {
    /// The device read memory (data going to the device).
    Read,
    /// The device wrote memory.
    Write,
}

/// Why an access was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FaultReason {
    /// The bus address (or the access's last byte) is above the device's DMA mask.
    AboveMask,
    /// No translation entry (IOMMU) for the bus address, or outside every window.
    NoEntry,
    /// The entry exists but lacks the permission for this access.
    Permission,
    /// The target is private guest memory.
    PrivateTarget,
    /// The target is not guest RAM.
    OutsideRam,
    /// The bus address is in a reserved range.
    ReservedRange,
    /// The guest CPU (device [`CPU`]) used, or reported usable, a page it had converted back to
    /// private without accepting (TDX) or re-validating (SEV-SNP) it; `bus` is the page's guest
    /// physical address.
    Unvalidated,
    /// The guest reported usable as private (device [`CPU`]) a page the hypervisor still shares. Logged
    /// for SEV-SNP and Arm CCA only, where the guest can know (validation fails on a shared page; the
    /// trusted RMM reports progress); a pseries or TDX guest has no way to tell.
    StillShared,
}

/// The device id of faults caused by the guest CPU itself rather than a device.
pub const CPU: u32 = u32::MAX;

/// One refused access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault {
    /// Device id.
    pub device: u32,
    /// Bus address of the refused page (or of the access start).
    pub bus: u64,
    /// Read or write.
    pub kind: AccessKind,
    /// Why.
    pub reason: FaultReason,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "device {:#x} {:?} at bus {:#x}: {:?}", self.device, self.kind, self.bus, self.reason)
    }
}
