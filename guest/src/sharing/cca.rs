//! Arm CCA realms: `RSI_IPA_STATE_SET` (RIPAS `EMPTY` to share, `RAM` to make private again).
//!
//! A realm shares memory by setting the RIPAS of a protected IPA range to `EMPTY`; the host then
//! backs the *unprotected alias* of that range (the same IPA with the top IPA bit set) with memory it
//! can reach, and that alias is what devices use ([`BusEncoding::cca`](crate::BusEncoding::cca)).
//! Making the range private again sets RIPAS `RAM`; its content is lost (the realm must treat it as
//! undefined, never as data). The call is answered by the RMM, part of the realm's trusted base,
//! after the host has acted: it returns the new base (everything below it has the requested RIPAS),
//! which may stop short of the top (partial progress, the realm calls again from there), and whether
//! the host accepted or rejected the request (`RSI_REJECT`, possibly after some progress). The RMM
//! itself completes the acceptance of a `RAM` page, so there is no separate accept step; the
//! progress it reports is trusted, and checked anyway (inside the request, granule aligned, not
//! backwards).
//!
//! ```
//! use ccdma::sharing::cca::{CcaSharing, IpaStateSet, Ripas, RsiCalls, RsiResponse, RSI_SUCCESS};
//! use ccdma::{MemorySharing, PhysAddr};
//!
//! /// A host that converts at most 16 granules per call.
//! struct Slow;
//! impl RsiCalls for Slow {
//!     fn ipa_state_set(&self, base: u64, top: u64, _ripas: Ripas, _flags: u64) -> IpaStateSet {
//!         let new_base = top.min(base + 16 * 4096);
//!         IpaStateSet { status: RSI_SUCCESS, new_base, response: RsiResponse::Accept }
//!     }
//! }
//! let sharing = CcaSharing::new(Slow);
//! sharing.share(PhysAddr(0x8000_0000), 40).unwrap(); // three calls: 16, 16, 8 granules
//! sharing.unshare(PhysAddr(0x8000_0000), 40).unwrap();
//! ```

use crate::addr::{PhysAddr, PAGE_SIZE};
use crate::error::{SharingErrorKind, StatusCode};
use crate::platform::{MemorySharing, PartialSharing};

/// SMC function id of `RSI_IPA_STATE_SET`.
pub const SMC_RSI_IPA_STATE_SET: u32 = 0xC400_0197;
/// `RSI_SUCCESS`.
pub const RSI_SUCCESS: u64 = 0;
/// `RSI_ERROR_INPUT`: bad arguments (nothing changed).
pub const RSI_ERROR_INPUT: u64 = 1;
/// `RSI_ERROR_STATE`.
pub const RSI_ERROR_STATE: u64 = 2;
/// `RSI_INCOMPLETE`.
pub const RSI_INCOMPLETE: u64 = 3;
/// Flags: a granule whose RIPAS is `DESTROYED` must not be changed.
pub const RSI_NO_CHANGE_DESTROYED: u64 = 0;
/// Flags: a granule whose RIPAS is `DESTROYED` may be changed.
pub const RSI_CHANGE_DESTROYED: u64 = 1;
/// Calls allowed without progress before a conversion is abandoned.
pub const MAX_RETRIES_WITHOUT_PROGRESS: u32 = 8;

/// The realm IPA state asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ripas {
    /// `RSI_RIPAS_EMPTY` (0): not protected memory; the unprotected alias is shared with the host.
    Empty,
    /// `RSI_RIPAS_RAM` (1): protected realm memory.
    Ram,
}

impl Ripas {
    /// The value passed in X3.
    pub const fn code(self) -> u64 {
        match self {
            Ripas::Empty => 0,
            Ripas::Ram => 1,
        }
    }
}

/// The host's answer, relayed by the RMM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RsiResponse {
    /// `RSI_ACCEPT` (0).
    Accept,
    /// `RSI_REJECT` (1): the host declined the rest of the request.
    Reject,
}

/// What one `RSI_IPA_STATE_SET` returned: X0 status, X1 new base, X2 response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpaStateSet {
    /// `RSI_SUCCESS` or an error (then nothing changed and the other fields mean nothing).
    pub status: u64,
    /// Every granule in `[base, new_base)` has the requested RIPAS.
    pub new_base: u64,
    /// Whether the host accepted the request.
    pub response: RsiResponse,
}

/// The raw RSI call, as firmware or a model provides it.
pub trait RsiCalls {
    /// `RSI_IPA_STATE_SET(base, top, ripas, flags)`.
    fn ipa_state_set(&self, base: u64, top: u64, ripas: Ripas, flags: u64) -> IpaStateSet;
}

/// [`MemorySharing`] over `RSI_IPA_STATE_SET`.
#[derive(Debug)]
pub struct CcaSharing<R> {
    calls: R,
}

impl<R: RsiCalls> CcaSharing<R> {
    /// Wrap the raw call.
    pub const fn new(calls: R) -> Self {
        CcaSharing { calls }
    }
    /// The raw call.
    pub fn calls(&self) -> &R {
        &self.calls
    }

    /// Set `[start, start + pages)` to `ripas`; on failure return the address reached and why it
    /// stopped.
    fn set_range(
        &self,
        start: u64,
        pages: u64,
        ripas: Ripas,
        flags: u64,
    ) -> Result<(), (u64, SharingErrorKind)> {
        let end = start.saturating_add(pages.saturating_mul(PAGE_SIZE));
        let mut cur = start;
        let mut stalls = 0u32;
        while cur < end {
            let r = self.calls.ipa_state_set(cur, end, ripas, flags);
            if r.status != RSI_SUCCESS {
                return Err((cur, SharingErrorKind::Hypervisor(StatusCode(r.status as i64))));
            }
            if r.new_base < cur || r.new_base > end || r.new_base % PAGE_SIZE != 0 {
                return Err((cur, SharingErrorKind::BadResume));
            }
            // The RMM guarantees the RIPAS below the new base: a rejection after the whole range
            // changed leaves nothing undone.
            if r.response == RsiResponse::Reject && r.new_base < end {
                return Err((r.new_base, SharingErrorKind::Rejected));
            }
            if r.new_base == cur {
                stalls += 1;
                if stalls > MAX_RETRIES_WITHOUT_PROGRESS {
                    return Err((cur, SharingErrorKind::NoProgress));
                }
            } else {
                stalls = 0;
                cur = r.new_base;
            }
        }
        Ok(())
    }
}

impl<R: RsiCalls> MemorySharing for CcaSharing<R> {
    fn share(&self, phys: PhysAddr, pages: u64) -> Result<(), PartialSharing> {
        // The progress comes from the RMM, which the realm trusts: roll back exactly that much.
        self.set_range(phys.0, pages, Ripas::Empty, RSI_CHANGE_DESTROYED)
            .map_err(|(reached, kind)| PartialSharing { pages_done: (reached - phys.0) / PAGE_SIZE, kind })
    }

    fn unshare(&self, phys: PhysAddr, pages: u64) -> Result<(), PartialSharing> {
        // RAM again, without resurrecting a granule the host destroyed (its content would be the
        // host's choice); the content of every converted granule is undefined and never read.
        self.set_range(phys.0, pages, Ripas::Ram, RSI_NO_CHANGE_DESTROYED)
            .map_err(|(reached, kind)| PartialSharing { pages_done: (reached - phys.0) / PAGE_SIZE, kind })
    }
}

impl<R: RsiCalls + ?Sized> RsiCalls for &R {
    fn ipa_state_set(&self, base: u64, top: u64, ripas: Ripas, flags: u64) -> IpaStateSet {
        (**self).ipa_state_set(base, top, ripas, flags)
    }
}
