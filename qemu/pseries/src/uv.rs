//! A software ultravisor: `UV_SHARE_PAGE` / `UV_UNSHARE_PAGE` semantics over the page ledger.
//!
//! TCG has no ultravisor (secure guests need KVM on PEF hardware), so sharing is bookkeeping: the
//! ledger holds each page's private/shared state and refuses inconsistent calls as an ultravisor
//! would. It also plays the ultravisor's other role here: every TCE ccdma writes is read back from
//! the hypervisor's table ([`crate::tce`]) and checked against the pages shared at that moment.

use ccdma::sharing::pseries::{Ultracalls, U_SUCCESS};
use ccdma_qemu_common::ledger::PageLedger;

/// `U_PARAMETER`: the refusal of an inconsistent request.
pub const U_PARAMETER: i64 = -4;

/// The ultravisor: the ledger, plus the pages each call named.
pub struct SoftUltravisor {
    ledger: PageLedger,
}

impl SoftUltravisor {
    /// Every page private.
    pub const fn new() -> Self {
        Self { ledger: PageLedger::new() }
    }

    /// The ledger.
    pub fn ledger(&self) -> &PageLedger {
        &self.ledger
    }
}

/// Guest frames are 4 KiB here (ccdma's page size), whatever the hypervisor's page size.
const FRAME_SHIFT: u32 = 12;

impl Ultracalls for SoftUltravisor {
    fn uv_share_page(&self, gfn: u64, npages: u64) -> i64 {
        match self.ledger.convert(gfn << FRAME_SHIFT, npages, true) {
            Ok(()) => U_SUCCESS,
            Err(_) => U_PARAMETER,
        }
    }

    fn uv_unshare_page(&self, gfn: u64, npages: u64) -> i64 {
        match self.ledger.convert(gfn << FRAME_SHIFT, npages, false) {
            Ok(()) => U_SUCCESS,
            Err(_) => U_PARAMETER,
        }
    }
}
