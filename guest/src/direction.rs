//! Transfer direction and mapping attributes.
//!
//! ```
//! # use ccdma::*;
//! # use ccdma_hv_model::{HvConfig, Hypervisor, Region};
//! # let hv: &'static Hypervisor = Box::leak(Box::new(Hypervisor::new(HvConfig::pseries(6 << 30))));
//! # let mut layer = DmaLayer::new(hv);
//! # // SAFETY: the model never hands this range out.
//! # unsafe { layer.add_pool(PhysAddr(0x80_0000), 1 << 20, vec![SlotMeta::EMPTY; 512].leak(), PoolConfig::default()) }.unwrap();
//! let dev = layer.attach(DeviceConfig::new(1, DmaMask::BITS_32))?;
//! # let model_dev = hv.add_device(1, 32);
//! assert!(DmaDirection::ToDevice.device_reads() && !DmaDirection::ToDevice.device_writes());
//! let attrs = DmaAttrs::SKIP_CPU_SYNC | DmaAttrs::NO_WARN;
//! assert!(attrs.contains(DmaAttrs::NO_WARN) && !attrs.contains(DmaAttrs::PRESERVE_UNWRITTEN));
//!
//! // With SKIP_CPU_SYNC the caller says when device data is copied in (the full call takes attrs).
//! let mut buf = [0u8; 4];
//! let mut m = layer.map(&dev, &mut buf, DmaDirection::FromDevice, attrs)?;
//! model_dev.write(m.bus_addr().0, b"data").unwrap();
//! assert_eq!(m.buffer(), [0; 4]); // nothing copied yet
//! m.sync_for_cpu(0, 4)?;
//! assert_eq!(m.buffer(), b"data");
//! m.unmap()?;
//! # Ok::<(), ccdma::DmaError>(())
//! ```

/// Which way data moves for a streaming mapping. The direction decides what the bounce layer copies
/// (and, with an IOMMU, which permission a device gets), so a mapping made for one direction never
/// hands the device more than it needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum DmaDirection {
    /// The device reads guest data (`DMA_TO_DEVICE`).
    ToDevice = 1,
    /// The device writes data for the guest (`DMA_FROM_DEVICE`).
    FromDevice = 2,
    /// Both.
    Bidirectional = 3,
}

impl DmaDirection {
    /// True when the device may read the buffer (data goes guest -> device).
    pub const fn device_reads(self) -> bool {
        matches!(self, DmaDirection::ToDevice | DmaDirection::Bidirectional)
    }
    /// True when the device may write the buffer (data comes device -> guest).
    pub const fn device_writes(self) -> bool {
        matches!(self, DmaDirection::FromDevice | DmaDirection::Bidirectional)
    }
    /// True when a bounce run mapped this way with `attrs` is filled with a copy of the original
    /// (the bytes a map counts as sent to the device); otherwise it is zeroed or left. A to-device
    /// mapping that skips the CPU sync is zeroed unless the layer's stale-slot policy leaves it
    /// (crate::stale_slot): until the driver's `sync_for_device` the device reads whatever an earlier
    /// mapping (of another device, perhaps) left in the slot.
    #[inline(always)]
    pub(crate) const fn fills_by_copy(self, attrs: DmaAttrs) -> bool {
        if attrs.contains(DmaAttrs::SKIP_CPU_SYNC) {
            false
        } else {
            self.device_reads() || attrs.contains(DmaAttrs::PRESERVE_UNWRITTEN)
        }
    }
    pub(crate) const fn from_bits(v: u8) -> Option<DmaDirection> {
        match v {
            1 => Some(DmaDirection::ToDevice),
            2 => Some(DmaDirection::FromDevice),
            3 => Some(DmaDirection::Bidirectional),
            _ => None,
        }
    }
}

/// Attributes of one mapping (a small bit set).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct DmaAttrs(u8);

impl DmaAttrs {
    /// No attributes.
    pub const NONE: DmaAttrs = DmaAttrs(0);
    /// Skip the CPU copies at map/unmap (`DMA_ATTR_SKIP_CPU_SYNC`): the caller syncs explicitly.
    pub const SKIP_CPU_SYNC: DmaAttrs = DmaAttrs(1);
    /// For `FromDevice` mappings, initialise the slot with the original buffer instead of zeroes, so bytes
    /// the device does not write come back unchanged (what Linux does). Costs a copy of the original
    /// into shared memory, so private bytes of that buffer become visible to the host: only for buffers
    /// whose contents are not secret.
    pub const PRESERVE_UNWRITTEN: DmaAttrs = DmaAttrs(2);
    /// Do not log a warning when this mapping fails (the caller handles it, e.g. retries later).
    pub const NO_WARN: DmaAttrs = DmaAttrs(4);
    /// For a device the platform has accepted ([`crate::TrustState::Accepted`]): this mapping or
    /// coherent buffer is shared with the host (bounced, or shared pages) as it would be for an
    /// untrusted device, e.g. a ring the host also reads (Linux's `DMA_ATTR_CC_SHARED`). Ignored for
    /// untrusted devices, whose buffers are always shared.
    pub const CC_SHARED: DmaAttrs = DmaAttrs(8);

    /// True when every bit of `other` is set.
    pub const fn contains(self, other: DmaAttrs) -> bool {
        self.0 & other.0 == other.0
    }
    /// Union.
    pub const fn union(self, other: DmaAttrs) -> DmaAttrs {
        DmaAttrs(self.0 | other.0)
    }
    pub(crate) const fn bits(self) -> u8 {
        self.0
    }
    pub(crate) const fn from_bits_truncate(v: u8) -> DmaAttrs {
        DmaAttrs(v & 15)
    }
}

impl core::ops::BitOr for DmaAttrs {
    type Output = DmaAttrs;
    fn bitor(self, rhs: DmaAttrs) -> DmaAttrs {
        self.union(rhs)
    }
}
