//! Which path a device gets, and why: DESIGN.md's path table as data ([`DmaPath`], [`PathReason`],
//! [`DdwOutcome`]) and as one pure function ([`choose`]) from the facts of a platform, a device and
//! the pools to a decision. The layer gathers the facts and carries the decision out; the table test
//! below covers every row.
//!
//! ```
//! use ccdma::path::{choose, PathChoice, PathFacts};
//! use ccdma::{DmaPath, PathReason};
//!
//! // A confidential guest without IOMMU: everything bounces through a reachable pool.
//! let facts =
//!     PathFacts { confidential: true, mask_covers_ram: true, reachable_pools: 1, iommu: None, accepted: false };
//! assert_eq!(choose(&facts), PathChoice::Plain(DmaPath::BounceAlways));
//! println!("{}", PathReason::of_plain(DmaPath::BounceAlways).unwrap());
//!
//! // Not confidential and the mask covers RAM: the device uses buffers as they are.
//! let plain = PathFacts { confidential: false, ..facts };
//! assert_eq!(choose(&plain), PathChoice::Plain(DmaPath::Direct));
//! // Confidential with no pool the device can reach: attach fails rather than expose memory.
//! let stranded = PathFacts { reachable_pools: 0, ..facts };
//! assert_eq!(choose(&stranded), PathChoice::NoPath);
//! // A device the platform accepted (TDISP) reaches private memory in place: nothing bounces.
//! let accepted = PathFacts { accepted: true, ..facts };
//! assert!(matches!(choose(&accepted), PathChoice::Trusted(DmaPath::TrustedDirect, _)));
//! ```

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
    /// Confidential, the device accepted by the platform (TDISP/IDE), no IOMMU: private buffers are
    /// used in place, by their private bus address; shared buffers only on request
    /// ([`crate::DmaAttrs::CC_SHARED`]).
    TrustedDirect,
    /// Confidential, the device accepted by the platform, behind an IOMMU: each mapping gets entries
    /// of its own naming the private buffer's pages, with the direction's permission, cleared at
    /// unmap; shared buffers only on request.
    TrustedIommu,
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
            DmaPath::TrustedDirect => "trusted-direct",
            DmaPath::TrustedIommu => "trusted-iommu",
        }
    }
    /// True on paths where every mapping is bounced (the buffer's own address never reaches the
    /// device, so it need not be translated).
    pub const fn bounces_everything(self) -> bool {
        !matches!(
            self,
            DmaPath::Direct | DmaPath::BounceAboveMask | DmaPath::TrustedDirect | DmaPath::TrustedIommu
        )
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

/// A [`DdwOutcome`] without its status code or [`crate::IommuError`]: the step at which a dynamic
/// window was given up, one byte ([`crate::DmaError::NoIommuPath`] carries it; the full outcome is
/// logged when the attempt fails).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DdwStep {
    /// [`DdwOutcome::NotTried`].
    NotTried,
    /// [`DdwOutcome::QueryFailed`].
    QueryFailed,
    /// [`DdwOutcome::NoneAvailable`].
    NoneAvailable,
    /// [`DdwOutcome::NoPageSize`].
    NoPageSize,
    /// [`DdwOutcome::TooSmall`].
    TooSmall,
    /// [`DdwOutcome::CreateFailed`].
    CreateFailed,
    /// [`DdwOutcome::BadWindow`].
    BadWindow,
    /// [`DdwOutcome::PremapFailed`].
    PremapFailed,
}

impl DdwOutcome {
    /// The step at which the dynamic window was given up.
    pub const fn step(&self) -> DdwStep {
        match self {
            DdwOutcome::NotTried => DdwStep::NotTried,
            DdwOutcome::QueryFailed(_) => DdwStep::QueryFailed,
            DdwOutcome::NoneAvailable => DdwStep::NoneAvailable,
            DdwOutcome::NoPageSize => DdwStep::NoPageSize,
            DdwOutcome::TooSmall => DdwStep::TooSmall,
            DdwOutcome::CreateFailed(_) => DdwStep::CreateFailed,
            DdwOutcome::BadWindow => DdwStep::BadWindow,
            DdwOutcome::PremapFailed(_) => DdwStep::PremapFailed,
        }
    }
}

impl fmt::Display for DdwStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DdwStep::NotTried => "no DDW attempt",
            DdwStep::QueryFailed => "DDW query failed (status logged)",
            DdwStep::NoneAvailable => "no DDW available",
            DdwStep::NoPageSize => "no DDW page size fits the pools",
            DdwStep::TooSmall => "largest DDW block too small for the pools",
            DdwStep::CreateFailed => "DDW creation failed (status logged)",
            DdwStep::BadWindow => "created DDW unusable",
            DdwStep::PremapFailed => "premapping into the DDW failed (error logged)",
        })
    }
}

/// Why a device got the path it has (kept for reports; each fallback is also logged once).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathReason {
    /// Not confidential and the mask covers all RAM: the device uses buffers in place.
    MaskCoversRam,
    /// Not confidential, the mask is smaller than RAM: buffers above it bounce through pools below it.
    BelowMaskOnly,
    /// Confidential without an IOMMU: devices reach only shared memory, so every buffer bounces
    /// through the pools the mask reaches.
    SharedPoolsOnly,
    /// The layer's policy is strict.
    StrictPolicy,
    /// A 64-bit device: the pools sit alone in a dynamic DMA window.
    Ddw,
    /// The pools fit the default window below the mask (after the DDW attempt, if any).
    DefaultWindow(DdwOutcome),
    /// No pool fits the default window below the mask, so mappings are entered one by one.
    PoolsDoNotFit(DdwOutcome),
    /// The platform accepted the device (TDISP/IDE): its private buffers are mapped directly, through
    /// entries of its own when it has an IOMMU `window`, by private address when not.
    Accepted {
        /// The device sits behind an IOMMU: each mapping gets its own entries.
        window: bool,
    },
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
            PathReason::MaskCoversRam => write!(f, "not confidential and the mask covers all RAM"),
            PathReason::BelowMaskOnly => {
                write!(f, "not confidential, mask below the end of RAM: buffers above it bounce")
            }
            PathReason::SharedPoolsOnly => {
                write!(f, "confidential without IOMMU: every buffer bounces through a pool the mask reaches")
            }
            PathReason::StrictPolicy => write!(f, "strict policy"),
            PathReason::Ddw => write!(f, "pools premapped alone in a 64-bit DDW"),
            PathReason::DefaultWindow(d) => write!(f, "pools premapped in the default window ({d})"),
            PathReason::PoolsDoNotFit(d) => {
                write!(f, "no pool fits the default window below the mask ({d}): strict")
            }
            PathReason::Accepted { window: true } => write!(
                f,
                "accepted by the platform: private buffers mapped in place, entries of their own in its window"
            ),
            PathReason::Accepted { window: false } => {
                write!(f, "accepted by the platform: private buffers used in place by private address (bounced when beyond the mask)")
            }
        }
    }
}

impl PathReason {
    /// Why a path without IOMMU was chosen (`None` for the IOMMU paths, whose reason the set-up keeps).
    pub const fn of_plain(path: DmaPath) -> Option<PathReason> {
        match path {
            DmaPath::Direct => Some(PathReason::MaskCoversRam),
            DmaPath::BounceAboveMask => Some(PathReason::BelowMaskOnly),
            DmaPath::BounceAlways => Some(PathReason::SharedPoolsOnly),
            _ => None,
        }
    }
}

/// What a path decision rests on: facts about the platform, the device and the pools, gathered by the
/// layer (and, behind an IOMMU, by asking the hypervisor) before anything is programmed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PathFacts {
    /// Guest memory is private: devices reach only shared memory.
    pub confidential: bool,
    /// The device's streaming mask covers all of guest RAM.
    pub mask_covers_ram: bool,
    /// Pools the device's mask covers at their shared bus address (paths without an IOMMU).
    pub reachable_pools: usize,
    /// The device sits behind an IOMMU the layer uses (confidential guests with TCE windows).
    pub iommu: Option<IommuFacts>,
    /// The platform has accepted the device (TDISP/IDE): it may reach private memory it is given.
    pub accepted: bool,
}

/// The IOMMU half of [`PathFacts`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IommuFacts {
    /// The layer's policy is premapped (else strict).
    pub premapped: bool,
    /// What became of a dynamic window: [`DdwOutcome::NotTried`] until one is tried; the decision
    /// asks for one ([`PathChoice::TryDdw`]) when `ddw_wanted` and nothing was tried yet.
    pub ddw: DdwOutcome,
    /// DDW use is on, the device is 64-bit and there is a pool to enter.
    pub ddw_wanted: bool,
    /// Some pool can be entered into the default window below the device's mask.
    pub pool_fits_default: bool,
    /// The default window has a free IOMMU page below the mask (strict mappings can be placed).
    pub default_has_room: bool,
}

/// What to do: a path, or (behind an IOMMU) the next step towards one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathChoice {
    /// A path without IOMMU: the buffer itself, or bounces through reachable pools.
    Plain(DmaPath),
    /// Create a dynamic window and enter the pools; if that fails, decide again with its outcome.
    TryDdw,
    /// Enter the pools that fit into the default window below the mask.
    DefaultWindow(PathReason),
    /// Entries per mapping in the default window.
    Strict(PathReason),
    /// An accepted device's trusted path ([`DmaPath::TrustedDirect`] or [`DmaPath::TrustedIommu`]).
    Trusted(DmaPath, PathReason),
    /// No path: attach fails.
    NoPath,
}

/// DESIGN.md's path table as one function: the same facts always give the same choice.
pub fn choose(f: &PathFacts) -> PathChoice {
    if f.confidential && f.accepted {
        let window = f.iommu.is_some();
        let path = if window { DmaPath::TrustedIommu } else { DmaPath::TrustedDirect };
        return PathChoice::Trusted(path, PathReason::Accepted { window });
    }
    let Some(io) = f.iommu.filter(|_| f.confidential) else {
        return match (f.confidential, f.mask_covers_ram, f.reachable_pools) {
            (false, true, _) => PathChoice::Plain(DmaPath::Direct),
            (_, _, 0) => PathChoice::NoPath,
            (false, false, _) => PathChoice::Plain(DmaPath::BounceAboveMask),
            (true, _, _) => PathChoice::Plain(DmaPath::BounceAlways),
        };
    };
    if io.premapped {
        if io.ddw_wanted && io.ddw == DdwOutcome::NotTried {
            return PathChoice::TryDdw;
        }
        if io.pool_fits_default {
            return PathChoice::DefaultWindow(PathReason::DefaultWindow(io.ddw));
        }
    }
    let reason = if io.premapped { PathReason::PoolsDoNotFit(io.ddw) } else { PathReason::StrictPolicy };
    if io.default_has_room {
        PathChoice::Strict(reason)
    } else {
        PathChoice::NoPath
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NO_IOMMU: PathFacts = PathFacts {
        confidential: false,
        mask_covers_ram: true,
        reachable_pools: 1,
        iommu: None,
        accepted: false,
    };
    const IOMMU: IommuFacts = IommuFacts {
        premapped: true,
        ddw: DdwOutcome::NotTried,
        ddw_wanted: false,
        pool_fits_default: true,
        default_has_room: true,
    };

    fn with(io: IommuFacts) -> PathFacts {
        PathFacts {
            confidential: true,
            mask_covers_ram: false,
            reachable_pools: 0,
            iommu: Some(io),
            accepted: false,
        }
    }

    /// One line per row of DESIGN.md's path table.
    #[test]
    fn every_row_of_the_path_table() {
        use DmaPath::*;
        let failed = DdwOutcome::CreateFailed(-3);
        let rows: &[(&str, PathFacts, PathChoice)] = &[
            ("plain, mask covers RAM", NO_IOMMU, PathChoice::Plain(Direct)),
            (
                "plain, mask covers RAM, no pool",
                PathFacts { reachable_pools: 0, ..NO_IOMMU },
                PathChoice::Plain(Direct),
            ),
            (
                "plain, smaller mask",
                PathFacts { mask_covers_ram: false, ..NO_IOMMU },
                PathChoice::Plain(BounceAboveMask),
            ),
            (
                "plain, smaller mask, no pool below it",
                PathFacts { mask_covers_ram: false, reachable_pools: 0, ..NO_IOMMU },
                PathChoice::NoPath,
            ),
            (
                "confidential, no IOMMU, a pool reachable",
                PathFacts { confidential: true, ..NO_IOMMU },
                PathChoice::Plain(BounceAlways),
            ),
            (
                "confidential, no IOMMU, even a 64-bit mask bounces",
                PathFacts {
                    confidential: true,
                    mask_covers_ram: true,
                    reachable_pools: 2,
                    iommu: None,
                    accepted: false,
                },
                PathChoice::Plain(BounceAlways),
            ),
            (
                "confidential, no IOMMU, no pool reachable",
                PathFacts { confidential: true, reachable_pools: 0, ..NO_IOMMU },
                PathChoice::NoPath,
            ),
            (
                "plain guest: an IOMMU is not used",
                PathFacts { confidential: false, iommu: Some(IOMMU), ..NO_IOMMU },
                PathChoice::Plain(Direct),
            ),
            (
                "IOMMU, 64-bit, DDW creatable: try it",
                with(IommuFacts { ddw_wanted: true, ..IOMMU }),
                PathChoice::TryDdw,
            ),
            (
                "IOMMU, 64-bit, DDW failed: default window",
                with(IommuFacts { ddw_wanted: true, ddw: failed, ..IOMMU }),
                PathChoice::DefaultWindow(PathReason::DefaultWindow(failed)),
            ),
            (
                "IOMMU, below 64-bit: default window below the mask",
                with(IOMMU),
                PathChoice::DefaultWindow(PathReason::DefaultWindow(DdwOutcome::NotTried)),
            ),
            (
                "IOMMU, pools do not fit below the mask: strict",
                with(IommuFacts { pool_fits_default: false, ..IOMMU }),
                PathChoice::Strict(PathReason::PoolsDoNotFit(DdwOutcome::NotTried)),
            ),
            (
                "IOMMU, DDW failed and pools do not fit: strict, saying why",
                with(IommuFacts { ddw_wanted: true, ddw: failed, pool_fits_default: false, ..IOMMU }),
                PathChoice::Strict(PathReason::PoolsDoNotFit(failed)),
            ),
            (
                "IOMMU, strict policy",
                with(IommuFacts { premapped: false, ddw_wanted: true, ..IOMMU }),
                PathChoice::Strict(PathReason::StrictPolicy),
            ),
            (
                "IOMMU, nothing fits and no room below the mask",
                with(IommuFacts { pool_fits_default: false, default_has_room: false, ..IOMMU }),
                PathChoice::NoPath,
            ),
            (
                "IOMMU, strict policy, no room below the mask",
                with(IommuFacts { premapped: false, default_has_room: false, ..IOMMU }),
                PathChoice::NoPath,
            ),
            (
                "confidential, no IOMMU, accepted: private buffers by private address",
                PathFacts { confidential: true, accepted: true, ..NO_IOMMU },
                PathChoice::Trusted(TrustedDirect, PathReason::Accepted { window: false }),
            ),
            (
                "confidential, no IOMMU, accepted, no pool: still trusted (shared buffers need one)",
                PathFacts { confidential: true, accepted: true, reachable_pools: 0, ..NO_IOMMU },
                PathChoice::Trusted(TrustedDirect, PathReason::Accepted { window: false }),
            ),
            (
                "confidential, IOMMU, accepted: entries of its own naming private pages",
                PathFacts { accepted: true, ..with(IOMMU) },
                PathChoice::Trusted(TrustedIommu, PathReason::Accepted { window: true }),
            ),
            (
                "not confidential: acceptance changes nothing",
                PathFacts { accepted: true, ..NO_IOMMU },
                PathChoice::Plain(Direct),
            ),
        ];
        for (row, facts, want) in rows {
            assert_eq!(choose(facts), *want, "{row}");
        }
    }
}
