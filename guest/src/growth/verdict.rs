//! Why a full pool set did not grow: a leaf, so errors can carry it without depending on the
//! diagnostics that report it.

use core::fmt;

/// Why a full pool set did not grow (or grew without helping).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrowthVerdict {
    /// No memory source: growth is not enabled.
    Disabled,
    /// The configured limits (pools, bytes) or the pool table are full.
    LimitReached,
    /// The memory source had nothing (below the device's limit).
    SourceEmpty,
    /// Sharing the new memory failed (rolled back, or quarantined).
    SharingFailed,
    /// Entering the new pool into a device window failed (rolled back, or quarantined).
    WindowFailed,
    /// A pool was added but the device cannot reach it (its window has no room below its mask).
    Unreachable,
}

impl fmt::Display for GrowthVerdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            GrowthVerdict::Disabled => "growth not enabled",
            GrowthVerdict::LimitReached => "growth limit reached",
            GrowthVerdict::SourceEmpty => "memory source empty",
            GrowthVerdict::SharingFailed => "sharing new pool memory failed",
            GrowthVerdict::WindowFailed => "entering a new pool into a window failed",
            GrowthVerdict::Unreachable => "new pool not reachable by the device",
        })
    }
}
