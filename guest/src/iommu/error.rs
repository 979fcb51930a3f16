//! Why an IOMMU (TCE) operation failed.
//!
//! ```
//! use ccdma::iommu::{IommuError, PutFailure};
//! use ccdma::{BusAddr, DmaError};
//!
//! let e = IommuError::Verify { bus: BusAddr(0x8000) };
//! assert_eq!(e.to_string(), format!("read-back of the entry at {} differs", BusAddr(0x8000)));
//! // A failed write says whether the rollback left every entry clear.
//! let failure = PutFailure { err: IommuError::Hcall(-4), clean: true };
//! assert!(failure.clean);
//! // Layer calls report it as `DmaError::Iommu`.
//! assert_eq!(DmaError::from(e), DmaError::Iommu(e));
//! ```

use core::fmt;

use crate::addr::BusAddr;

/// Why an IOMMU (TCE) operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IommuError {
    /// The hypervisor returned this code.
    Hcall(i64),
    /// The hypervisor kept answering busy beyond the retry bound.
    Busy,
    /// Read-back found an entry other than the one written.
    Verify {
        /// Bus address of the entry.
        bus: BusAddr,
    },
    /// The hypervisor accepted a clear (`H_STUFF_TCE` succeeded) but reading the entries back failed:
    /// the entries are most likely gone (the device no longer reaches the memory), but that is not
    /// confirmed, so the layer keeps its record (still live, still shared) and a retry clears again.
    Unverified {
        /// First bus address of the entries not verified.
        bus: BusAddr,
    },
    /// No bus range of the needed size below the device's mask.
    BusSpaceExhausted,
    /// A reservation overlaps a live mapping.
    ReservationConflict,
    /// The window cannot be created.
    NoWindow,
    /// The device sits on a partitionable endpoint whose windows other attached devices already set
    /// up, and its mask cannot reach all that the endpoint's domain uses (a premapped pool or DDW up
    /// to `end`, or no part of the default window): attach failed, nothing changed. Attach the
    /// narrowest-mask device first, or attach them deferred so the set-up sees every mask.
    EndpointOutOfReach {
        /// One past the highest bus address the device would have to reach.
        end: u64,
    },
    /// The device would share its partitionable endpoint with an accepted device: every device of
    /// an endpoint reaches every entry of its windows, so an accepted device's private pages would
    /// be open to the others. Accepting a device that shares its endpoint with `devices` other
    /// attached devices, or attaching a device to the endpoint of an accepted one, is refused;
    /// nothing changed.
    EndpointShared {
        /// Other devices attached to the endpoint (accept), or 1 (the accepted device, at attach).
        devices: u32,
    },
    /// Entries could not be written and then not cleared either: the bus range, and the memory it
    /// names, are quarantined (never reused). For a coherent buffer its pages stay shared: the caller
    /// must never use them again.
    Quarantined {
        /// First bus address of the quarantined range.
        bus: BusAddr,
    },
}

impl fmt::Display for IommuError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IommuError::Hcall(rc) => write!(f, "hypercall returned {rc}"),
            IommuError::Busy => write!(f, "hypervisor stayed busy beyond the retry bound"),
            IommuError::Verify { bus } => write!(f, "read-back of the entry at {bus} differs"),
            IommuError::Unverified { bus } => {
                write!(f, "entries from {bus} cleared but the read-back failed: unverified, kept live")
            }
            IommuError::BusSpaceExhausted => write!(f, "no free bus range below the mask"),
            IommuError::ReservationConflict => write!(f, "reservation overlaps a live mapping"),
            IommuError::NoWindow => write!(f, "no window"),
            IommuError::EndpointShared { devices } => write!(
                f,
                "the device's endpoint is shared with {devices} other device(s) and one side is accepted: \
                 they would reach its private pages"
            ),
            IommuError::EndpointOutOfReach { end } => {
                write!(f, "the shared endpoint's windows reach up to {end:#x}, beyond the device's mask")
            }
            IommuError::Quarantined { bus } => write!(f, "entries at {bus} stuck; range quarantined"),
        }
    }
}

impl core::error::Error for IommuError {}

/// A failed write of a range of entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PutFailure {
    /// What went wrong first.
    pub err: IommuError,
    /// True when every entry of the range is known clear again (the rollback worked); false when some
    /// may still translate, so the bus range and its target must be quarantined.
    pub clean: bool,
}
