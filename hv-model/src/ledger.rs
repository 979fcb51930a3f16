//! The sharing ledger: every page conversion the guest asks for, checked and counted over time.
//! A correct guest never shares a page that is already shared, and never makes a page private
//! while an IOMMU entry still names it (a device could then reach private memory).

use std::sync::Mutex;

use crate::memory::{PageState, PAGE};
use crate::Hypervisor;

/// What the ledger saw ([`Hypervisor::sharing_ledger`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SharingLedger {
    /// Pages shared that were shared already.
    pub double_shares: u64,
    /// Pages made private while a live TCE named them.
    pub unshared_while_mapped: u64,
    /// Pages shared after each conversion call, in call order.
    pub shared_over_time: Vec<u64>,
}

#[derive(Default)]
pub(crate) struct Ledger {
    inner: Mutex<SharingLedger>,
}

impl Hypervisor {
    /// Record (and check) the conversion of `pages` pages from `phys` to `to`, before it happens.
    pub(crate) fn note_conversion(&self, phys: u64, pages: u64, to: PageState) {
        let mut double = 0;
        let mut mapped = 0;
        let named = (to != PageState::Shared && self.iommu.enabled()).then(|| self.named_frames());
        for k in 0..pages {
            let p = phys + k * PAGE;
            let shared = self.mem.state(p) == PageState::Shared;
            if to == PageState::Shared && shared {
                double += 1;
            }
            if shared && named.as_ref().is_some_and(|n| n.contains(&(p / PAGE))) {
                mapped += 1;
            }
        }
        let mut l = self.ledger.inner.lock().unwrap();
        l.double_shares += double;
        l.unshared_while_mapped += mapped;
    }

    /// Record the shared page count after a conversion call.
    pub(crate) fn note_shared_now(&self) {
        let now = self.mem.shared_pages();
        self.ledger.inner.lock().unwrap().shared_over_time.push(now);
    }

    /// The sharing ledger so far.
    pub fn sharing_ledger(&self) -> SharingLedger {
        self.ledger.inner.lock().unwrap().clone()
    }
}
