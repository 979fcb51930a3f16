//! Call counters and fault injection, shared by every hypervisor interface the model offers.

use std::collections::HashMap;
use std::sync::Mutex;

/// Every call site the guest can reach, for counters and fault injection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CallKind {
    /// pseries `UV_SHARE_PAGE`.
    UvShare,
    /// pseries `UV_UNSHARE_PAGE`.
    UvUnshare,
    /// TDX `MapGPA`.
    MapGpa,
    /// TDX page accept.
    Accept,
    /// SEV-SNP `PVALIDATE` (validate or rescind one page).
    Pvalidate,
    /// SEV-SNP Page State Change through the GHCB MSR protocol (one page).
    PscMsr,
    /// SEV-SNP Page State Change through the GHCB shared buffer (up to 253 entries).
    Psc,
    /// Arm CCA `RSI_IPA_STATE_SET`.
    RsiIpaStateSet,
    /// `H_PUT_TCE`.
    PutTce,
    /// `H_GET_TCE`.
    GetTce,
    /// `H_PUT_TCE_INDIRECT`.
    PutTceIndirect,
    /// `H_STUFF_TCE`.
    StuffTce,
    /// RTAS `ibm,query-pe-dma-window`.
    DdwQuery,
    /// RTAS `ibm,create-pe-dma-window`.
    DdwCreate,
    /// RTAS `ibm,remove-pe-dma-window`.
    DdwRemove,
    /// RTAS `ibm,reset-pe-dma-window`.
    DdwReset,
    /// The TSM's accept of a device for this guest (TDISP: `DeviceTrust::accept_device`).
    TdispAccept,
    /// The TSM's revoke of a device's acceptance (`DeviceTrust::revoke_device`).
    TdispRevoke,
}

impl CallKind {
    /// Sharing-related calls.
    pub const SHARING: [CallKind; 8] = [
        CallKind::UvShare,
        CallKind::UvUnshare,
        CallKind::MapGpa,
        CallKind::Accept,
        CallKind::Pvalidate,
        CallKind::PscMsr,
        CallKind::Psc,
        CallKind::RsiIpaStateSet,
    ];
}

/// What an injected fault does to one call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Injection {
    /// Fail with this code, changing nothing.
    Fail(i64),
    /// Act on the first `pages` pages (or entries), then fail.
    Partial {
        /// Pages/entries handled before failing.
        pages: u64,
        /// The failure code.
        code: i64,
    },
    /// Report success without doing anything.
    LieSuccess,
    /// TDX: answer RETRY with no progress (resume at the start).
    Stall,
    /// TDX: answer RETRY with a resume address outside the request.
    BadResume,
    /// Answer busy (`H_BUSY` or a long-busy code) without acting; the guest should retry.
    Busy(i64),
    /// SEV-SNP `PVALIDATE`: report "no change" (rFLAGS.CF) without acting.
    NoChange,
}

#[derive(Clone, Copy, Debug)]
struct Plan {
    kind: CallKind,
    at: u64,
    every: bool,
    action: Injection,
}

/// Call counters and the injection plans.
#[derive(Default)]
pub struct CallLog {
    counts: Mutex<HashMap<CallKind, u64>>,
    plans: Mutex<Vec<Plan>>,
}

impl CallLog {
    /// Count a call and return the injection planned for it, if any.
    pub fn enter(&self, kind: CallKind) -> Option<Injection> {
        let n = {
            let mut c = self.counts.lock().unwrap();
            let e = c.entry(kind).or_insert(0);
            *e += 1;
            *e
        };
        let plans = self.plans.lock().unwrap();
        plans.iter().find(|p| p.kind == kind && (p.at == n || (p.every && n >= p.at))).map(|p| p.action)
    }

    /// Calls of `kind` so far.
    pub fn count(&self, kind: CallKind) -> u64 {
        *self.counts.lock().unwrap().get(&kind).unwrap_or(&0)
    }

    /// All counters.
    pub fn counts(&self) -> HashMap<CallKind, u64> {
        self.counts.lock().unwrap().clone()
    }

    /// Inject `action` at the `at`-th call of `kind` (1-based, counting from the model's start).
    pub fn inject_at(&self, kind: CallKind, at: u64, action: Injection) {
        self.plans.lock().unwrap().push(Plan { kind, at, every: false, action });
    }

    /// Inject `action` at every call of `kind` from the `from`-th on.
    pub fn inject_from(&self, kind: CallKind, from: u64, action: Injection) {
        self.plans.lock().unwrap().push(Plan { kind, at: from, every: true, action });
    }

    /// Inject `action` at the next call of `kind`.
    pub fn inject_next(&self, kind: CallKind, action: Injection) {
        let at = self.count(kind) + 1;
        self.inject_at(kind, at, action);
    }

    /// Remove every plan.
    pub fn clear_injections(&self) {
        self.plans.lock().unwrap().clear();
    }
}
