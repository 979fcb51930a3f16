//! What both kernels report about setting their DMA layer up.

use ccdma::DmaError;
use core::fmt;

/// A pool as set up, for the report.
#[derive(Clone, Copy, Debug)]
pub struct PoolInfo {
    /// Physical start.
    pub phys: u64,
    /// Bytes.
    pub len: usize,
}

/// Why the layer could not be set up.
#[derive(Debug)]
pub enum SetupError {
    /// No (identity-mapped) RAM above 4 GiB for the pool.
    NoHighRam,
    /// The layer refused a pool or the IOMMU configuration.
    Pool(DmaError),
    /// `init` ran twice.
    AlreadyInitialised,
}

impl fmt::Display for SetupError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Self::NoHighRam => write!(f, "no (identity-mapped) RAM above 4 GiB for the pool"),
            Self::Pool(error) => write!(f, "pool refused: {error}"),
            Self::AlreadyInitialised => write!(f, "layer already set up"),
        }
    }
}
