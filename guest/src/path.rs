//! Which path a device gets, and why: DESIGN.md's path table as data ([`DmaPath`], [`PathReason`],
//! [`DdwOutcome`]) and as one pure function ([`choose`]) from the facts of a platform, a device and
//! the pools to a decision. The layer gathers the facts and carries the decision out; the table test
//! below covers every row.

use core::fmt;

use crate::iommu::error::IommuError;

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

/// Why a dynamic DMA window was not used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DdwOutcome {
    /// Not attempted: the device is not 64-bit, the policy is strict, or DDW use is off.
    NotTried,
    /// `ibm,query-pe-dma-window` failed with this status (e.g. the feature is disabled).
    QueryFailed(i64),
    /// The PE has no window left to create.
    NoneAvailable,
    /// No supported IOMMU page size fits the pools' alignment.
    NoPageSize,
    /// The largest block cannot hold the pools.
    TooSmall,
    /// `ibm,create-pe-dma-window` failed with this status.
    CreateFailed(i64),
    /// The created window does not match the request (geometry or above the mask).
    BadWindow,
    /// Entering the pools into the window failed.
    PremapFailed(IommuError),
}

/// Why a device got the path it has (kept for reports; each fallback is also logged once).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathReason {
    /// The layer's policy is strict.
    StrictPolicy,
    /// A 64-bit device: the pools sit alone in a dynamic DMA window.
    Ddw,
    /// The pools fit the default window below the mask (after the DDW attempt, if any).
    DefaultWindow(DdwOutcome),
    /// No pool fits the default window below the mask, so mappings are entered one by one.
    PoolsDoNotFit(DdwOutcome),
}

impl fmt::Display for DdwOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DdwOutcome::NotTried => write!(f, "no DDW attempt"),
            DdwOutcome::QueryFailed(rc) => write!(f, "DDW query failed ({rc})"),
            DdwOutcome::NoneAvailable => write!(f, "no DDW available"),
            DdwOutcome::NoPageSize => write!(f, "no DDW page size fits the pools"),
            DdwOutcome::TooSmall => write!(f, "largest DDW block too small for the pools"),
            DdwOutcome::CreateFailed(rc) => write!(f, "DDW creation failed ({rc})"),
            DdwOutcome::BadWindow => write!(f, "created DDW unusable"),
            DdwOutcome::PremapFailed(e) => write!(f, "premapping into the DDW failed ({e:?})"),
        }
    }
}

impl fmt::Display for PathReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PathReason::StrictPolicy => write!(f, "strict policy"),
            PathReason::Ddw => write!(f, "pools premapped alone in a 64-bit DDW"),
            PathReason::DefaultWindow(d) => write!(f, "pools premapped in the default window ({d})"),
            PathReason::PoolsDoNotFit(d) => {
                write!(f, "no pool fits the default window below the mask ({d}): strict")
            }
        }
    }
}
