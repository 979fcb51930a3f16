//! The Arm CCA personality: `RSI_IPA_STATE_SET` with partial progress and the host's accept or reject,
//! with fault injection at every call.
//!
//! RIPAS `RAM` is [`PageState::Private`], `EMPTY` (the unprotected alias backed by the host) is
//! [`PageState::Shared`]. A conversion either way leaves the page's content undefined (the model writes
//! [`CCA_POISON`]): the alias is other memory, and a granule returning to `RAM` is fresh. The call is
//! answered by the RMM (trusted) on the host's behalf, so the injections model what the host can do:
//! `Fail(code)` an error status with nothing changed, `Partial` part of the range then `RSI_REJECT`,
//! `Stall`/`Busy` a return without progress, and (to exercise the guest's checks) `BadResume` a new
//! base past the top and `LieSuccess` a claim of completion with nothing done.

use ccdma::sharing::cca::{IpaStateSet, Ripas, RsiCalls, RsiResponse, RSI_ERROR_INPUT, RSI_SUCCESS};

use crate::calls::{CallKind, Injection};
use crate::memory::{PageState, PAGE};
use crate::{Hypervisor, Personality};

/// The byte the model leaves in a granule whose content a RIPAS change made undefined.
pub const CCA_POISON: u8 = 0xCA;

impl Hypervisor {
    fn cca_set(&self, gpa: u64, ripas: Ripas) {
        let to = match ripas {
            Ripas::Empty => PageState::Shared,
            Ripas::Ram => PageState::Private,
        };
        self.note_conversion(gpa, 1, to);
        if self.mem.state(gpa) != to {
            self.mem.set_state(gpa, 1, to);
            self.mem.write(gpa, &[CCA_POISON; PAGE as usize]);
        }
    }
}

impl RsiCalls for Hypervisor {
    fn ipa_state_set(&self, base: u64, top: u64, ripas: Ripas, _flags: u64) -> IpaStateSet {
        let inj = self.calls.enter(CallKind::RsiIpaStateSet);
        let refused = IpaStateSet { status: RSI_ERROR_INPUT, new_base: base, response: RsiResponse::Accept };
        if self.config().personality != Personality::Cca
            || base % PAGE != 0
            || top % PAGE != 0
            || top <= base
            || !self.pages_ok(base, (top - base) / PAGE)
        {
            return refused;
        }
        let pages = (top - base) / PAGE;
        let answer = |n: u64, response| {
            for i in 0..n {
                self.cca_set(base + i * PAGE, ripas);
            }
            IpaStateSet { status: RSI_SUCCESS, new_base: base + n * PAGE, response }
        };
        match inj {
            Some(Injection::Fail(c)) => IpaStateSet { status: c as u64, ..refused },
            Some(Injection::Partial { pages: n, .. }) => answer(n.min(pages), RsiResponse::Reject),
            Some(Injection::Stall) | Some(Injection::Busy(_)) | Some(Injection::NoChange) => {
                answer(0, RsiResponse::Accept)
            }
            Some(Injection::BadResume) => {
                IpaStateSet { status: RSI_SUCCESS, new_base: top + PAGE, response: RsiResponse::Accept }
            }
            Some(Injection::LieSuccess) => {
                IpaStateSet { status: RSI_SUCCESS, new_base: top, response: RsiResponse::Accept }
            }
            None => answer(
                self.config().cca_granules_per_call.map_or(pages, |m| m.clamp(1, pages)),
                RsiResponse::Accept,
            ),
        }
    }
}
