//! pseries Secure VM: `UV_SHARE_PAGE` / `UV_UNSHARE_PAGE` ultracalls.
//!
//! ```
//! use ccdma::sharing::pseries::UltravisorSharing;
//! use ccdma::{MemorySharing, PhysAddr};
//! # use ccdma_hv_model::{HvConfig, Hypervisor, PageState};
//! # let hv = Hypervisor::new(HvConfig::pseries(1 << 30));
//! // `hv` stands for the firmware's `UV_SHARE_PAGE`/`UV_UNSHARE_PAGE` ultracalls (`Ultracalls`).
//! let sharing = UltravisorSharing::new(&hv);
//! sharing.share(PhysAddr(0x10_0000), 2)?;
//! assert_eq!(hv.memory().state(0x10_1000), PageState::Shared);
//! sharing.unshare(PhysAddr(0x10_0000), 2)?;
//! assert_eq!(hv.memory().state(0x10_1000), PageState::Private);
//! # Ok::<(), ccdma::PartialSharing>(())
//! ```

use crate::addr::{PhysAddr, PAGE_SHIFT};
use crate::error::{SharingErrorKind, StatusCode};
use crate::platform::{MemorySharing, PartialSharing};

/// Ultracall number of `UV_SHARE_PAGE`.
pub const UV_SHARE_PAGE: u64 = 0xF130;
/// Ultracall number of `UV_UNSHARE_PAGE`.
pub const UV_UNSHARE_PAGE: u64 = 0xF134;
/// `U_SUCCESS`.
pub const U_SUCCESS: i64 = 0;

/// The raw ultracalls, as firmware or a model provides them. Each returns the ultravisor's code.
pub trait Ultracalls {
    /// `UV_SHARE_PAGE(gfn, npages)`.
    fn uv_share_page(&self, gfn: u64, npages: u64) -> i64;
    /// `UV_UNSHARE_PAGE(gfn, npages)`.
    fn uv_unshare_page(&self, gfn: u64, npages: u64) -> i64;
}

/// [`MemorySharing`] over ultracalls.
///
/// The ultracalls report no progress on failure, so a failed call is treated as if it had converted
/// every page of the request: the caller then rolls back (or quarantines) the whole range. Unsharing a
/// page that was never shared is harmless, guessing too little is not.
#[derive(Debug)]
pub struct UltravisorSharing<U> {
    calls: U,
}

impl<U: Ultracalls> UltravisorSharing<U> {
    /// Wrap the raw calls.
    pub const fn new(calls: U) -> Self {
        UltravisorSharing { calls }
    }
    /// The raw calls.
    pub fn calls(&self) -> &U {
        &self.calls
    }
}

impl<U: Ultracalls> MemorySharing for UltravisorSharing<U> {
    fn share(&self, phys: PhysAddr, pages: u64) -> Result<(), PartialSharing> {
        match self.calls.uv_share_page(phys.0 >> PAGE_SHIFT, pages) {
            U_SUCCESS => Ok(()),
            rc => {
                Err(PartialSharing { pages_done: pages, kind: SharingErrorKind::Hypervisor(StatusCode(rc)) })
            }
        }
    }
    fn unshare(&self, phys: PhysAddr, pages: u64) -> Result<(), PartialSharing> {
        match self.calls.uv_unshare_page(phys.0 >> PAGE_SHIFT, pages) {
            U_SUCCESS => Ok(()),
            rc => Err(PartialSharing { pages_done: 0, kind: SharingErrorKind::Hypervisor(StatusCode(rc)) }),
        }
    }
}

impl<U: Ultracalls + ?Sized> Ultracalls for &U {
    fn uv_share_page(&self, gfn: u64, npages: u64) -> i64 {
        (**self).uv_share_page(gfn, npages)
    }
    fn uv_unshare_page(&self, gfn: u64, npages: u64) -> i64 {
        (**self).uv_unshare_page(gfn, npages)
    }
}
