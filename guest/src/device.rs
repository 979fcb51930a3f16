//! What the layer knows about a device, and the path chosen for it at attach.

use crate::addr::DmaMask;

/// A device's DMA limits and trust, as its driver declares them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceConfig {
    /// Highest bus address for streaming mappings.
    pub dma_mask: DmaMask,
    /// Highest bus address for coherent allocations.
    pub coherent_mask: DmaMask,
    /// Largest DMA segment the device takes (bytes).
    pub max_segment_size: u32,
    /// A segment must not cross an address boundary of `mask + 1` (`u64::MAX`: none).
    pub segment_boundary_mask: u64,
    /// Low address bits the device needs preserved between the original and the bounce address
    /// (NVMe-style `min_align_mask`). 0: none.
    pub min_align_mask: u64,
    /// A trusted device (e.g. inside the TCB). Trusted devices still go through the pool in a
    /// confidential guest: the flag only relaxes what is logged, never what is exposed.
    pub trusted: bool,
    /// Attach lazily, at the first map or allocation (not at unmap, sync or free).
    pub deferred_attach: bool,
    /// An identifier for logs and the IOMMU (e.g. PCI requester id).
    pub id: u32,
}

impl DeviceConfig {
    /// A device with `mask` for both streaming and coherent DMA and no other limits.
    pub const fn new(id: u32, mask: DmaMask) -> DeviceConfig {
        DeviceConfig {
            dma_mask: mask,
            coherent_mask: mask,
            max_segment_size: u32::MAX,
            segment_boundary_mask: u64::MAX,
            min_align_mask: 0,
            trusted: false,
            deferred_attach: false,
            id,
        }
    }
    /// Builder: coherent mask.
    pub const fn with_coherent_mask(mut self, mask: DmaMask) -> Self {
        self.coherent_mask = mask;
        self
    }
    /// Builder: `min_align_mask`.
    pub const fn with_min_align_mask(mut self, mask: u64) -> Self {
        self.min_align_mask = mask;
        self
    }
    /// Builder: max segment size.
    pub const fn with_max_segment_size(mut self, size: u32) -> Self {
        self.max_segment_size = size;
        self
    }
    /// Builder: segment boundary mask.
    pub const fn with_segment_boundary_mask(mut self, mask: u64) -> Self {
        self.segment_boundary_mask = mask;
        self
    }
    /// Builder: deferred attach.
    pub const fn with_deferred_attach(mut self, deferred: bool) -> Self {
        self.deferred_attach = deferred;
        self
    }
}

/// How streaming DMA reaches a device, decided at attach.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DmaPath {
    /// Not confidential, the mask covers all RAM: the device uses the buffer itself.
    Direct,
    /// Not confidential, the mask is smaller than RAM: buffers above the mask are bounced through a
    /// pool below it, the rest are used directly.
    BounceAboveMask,
    /// Confidential without IOMMU: everything is bounced; the bus address is the pool's shared address.
    BounceAlways,
    /// Confidential with IOMMU, 64-bit device: everything is bounced; the pools (only) are entered once
    /// into a dynamic DMA window with large IOMMU pages, so a map costs no hypercall.
    IommuDdw,
    /// Confidential with IOMMU: everything is bounced; the pools (only) are entered once into the
    /// default window below the device's mask.
    IommuPremapped,
    /// Confidential with IOMMU: everything is bounced; each mapping gets its own entries, with the
    /// direction's permission, below the device's mask, cleared at unmap.
    IommuStrict,
    /// Behind an IOMMU, attach deferred to the first map or allocation (the layer's `path_of` tells
    /// the path once it is chosen).
    IommuDeferred,
}

impl DmaPath {
    /// A short name for reports.
    pub const fn name(self) -> &'static str {
        match self {
            DmaPath::Direct => "direct",
            DmaPath::BounceAboveMask => "bounce-above-mask",
            DmaPath::BounceAlways => "bounce-always",
            DmaPath::IommuDdw => "iommu-ddw-premapped",
            DmaPath::IommuPremapped => "iommu-premapped",
            DmaPath::IommuStrict => "iommu-strict",
            DmaPath::IommuDeferred => "iommu-deferred",
        }
    }
    /// True on paths where every mapping is bounced (the buffer's own address never reaches the
    /// device, so it need not be translated).
    pub const fn bounces_everything(self) -> bool {
        !matches!(self, DmaPath::Direct | DmaPath::BounceAboveMask)
    }
}
