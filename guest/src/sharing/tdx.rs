//! Intel TDX: `TDG.VP.VMCALL<MapGPA>` with RETRY and a resume address, and `TDG.MEM.PAGE.ACCEPT` on the
//! way back to private.
//!
//! ```
//! use ccdma::sharing::tdx::TdxSharing;
//! use ccdma::{MemorySharing, PhysAddr};
//! # use ccdma_hv_model::{HvConfig, Hypervisor, PageState};
//! # let hv = Hypervisor::new(HvConfig::tdx(1 << 30));
//! // `hv` stands for the guest's `MapGPA` TDVMCALL and `TDG.MEM.PAGE.ACCEPT` (`TdxCalls`).
//! let sharing = TdxSharing::new(&hv);
//! sharing.share(PhysAddr(0x10_0000), 4)?;
//! assert_eq!(hv.memory().state(0x10_3000), PageState::Shared);
//! sharing.unshare(PhysAddr(0x10_0000), 4)?; // converted back and accepted, page by page
//! assert_eq!(hv.memory().state(0x10_3000), PageState::Private);
//! # Ok::<(), ccdma::PartialSharing>(())
//! ```

use crate::addr::{PhysAddr, PAGE_SIZE};
use crate::error::{SharingErrorKind, StatusCode};
use crate::platform::{MemorySharing, PartialSharing};

/// What one `MapGPA` call answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapGpaStatus {
    /// The whole range was converted.
    Success,
    /// The VMM stopped early and asks the guest to call again from `resume` (an allegation: the guest
    /// checks it lies inside the request and after the previous start).
    Retry {
        /// Address to resume from.
        resume: u64,
    },
    /// Failure with the VMM's code.
    Error(i64),
}

/// The raw TDX calls.
pub trait TdxCalls {
    /// `MapGPA(gpa, len)` to shared (`shared == true`) or private.
    fn map_gpa(&self, gpa: u64, len: u64, shared: bool) -> MapGpaStatus;
    /// Accept one 4 KiB page after conversion to private; returns the TDX module's code (0 = success).
    fn accept_page(&self, gpa: u64) -> i64;
}

/// Retries of `MapGPA` allowed without progress before the conversion is abandoned.
pub const MAX_RETRIES_WITHOUT_PROGRESS: u32 = 8;

/// [`MemorySharing`] over `MapGPA`.
#[derive(Debug)]
pub struct TdxSharing<T> {
    calls: T,
}

impl<T: TdxCalls> TdxSharing<T> {
    /// Wrap the raw calls.
    pub const fn new(calls: T) -> Self {
        TdxSharing { calls }
    }
    /// The raw calls.
    pub fn calls(&self) -> &T {
        &self.calls
    }

    /// Convert `[start, start + pages)`; on failure return the address up to which the VMM confirmed
    /// progress and why it stopped.
    fn convert(&self, start: u64, pages: u64, shared: bool) -> Result<(), (u64, SharingErrorKind)> {
        let end = start + pages * PAGE_SIZE;
        let mut cur = start;
        let mut stalls = 0u32;
        while cur < end {
            match self.calls.map_gpa(cur, end - cur, shared) {
                MapGpaStatus::Success => cur = end,
                MapGpaStatus::Error(rc) => return Err((cur, SharingErrorKind::Hypervisor(StatusCode(rc)))),
                MapGpaStatus::Retry { resume } => {
                    // The resume address is an allegation: it must be page aligned, inside the
                    // request, and not behind where this call started.
                    if resume < cur || resume > end || resume % PAGE_SIZE != 0 {
                        return Err((cur, SharingErrorKind::BadResume));
                    }
                    if resume == cur {
                        stalls += 1;
                        if stalls > MAX_RETRIES_WITHOUT_PROGRESS {
                            return Err((cur, SharingErrorKind::NoProgress));
                        }
                    } else {
                        stalls = 0;
                        cur = resume;
                    }
                }
            }
        }
        Ok(())
    }
}

impl<T: TdxCalls> MemorySharing for TdxSharing<T> {
    fn share(&self, phys: PhysAddr, pages: u64) -> Result<(), PartialSharing> {
        // After a failed call the VMM may have converted more than it confirmed (an error return says
        // nothing about the pages of that call), so report the whole request as possibly shared: the
        // caller makes all of it private again. Converting a private page to private is harmless.
        self.convert(phys.0, pages, true).map_err(|(_, kind)| PartialSharing { pages_done: pages, kind })
    }

    fn unshare(&self, phys: PhysAddr, pages: u64) -> Result<(), PartialSharing> {
        // Only confirmed progress counts; the rest of the request is quarantined by the caller.
        let (confirmed, failure) = match self.convert(phys.0, pages, false) {
            Ok(()) => (pages, None),
            Err((cur, kind)) => ((cur - phys.0) / PAGE_SIZE, Some(kind)),
        };
        // Converted pages are unusable as private memory until accepted. A page whose accept fails
        // stays unusable: report progress up to it so the caller quarantines the rest.
        for i in 0..confirmed {
            if self.calls.accept_page(phys.0 + i * PAGE_SIZE) != 0 {
                return Err(PartialSharing { pages_done: i, kind: SharingErrorKind::AcceptFailed });
            }
        }
        match failure {
            None => Ok(()),
            Some(kind) => Err(PartialSharing { pages_done: confirmed, kind }),
        }
    }
}

impl<T: TdxCalls + ?Sized> TdxCalls for &T {
    fn map_gpa(&self, gpa: u64, len: u64, shared: bool) -> MapGpaStatus {
        (**self).map_gpa(gpa, len, shared)
    }
    fn accept_page(&self, gpa: u64) -> i64 {
        (**self).accept_page(gpa)
    }
}
