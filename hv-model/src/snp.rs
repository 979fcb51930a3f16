//! The SEV-SNP personality: `PVALIDATE` and Page State Change requests (GHCB MSR protocol and shared
//! buffer), with the RMP as page states and fault injection at every call.
//!
//! RMP states map onto [`PageState`]: assigned and validated is `Private`, assigned with the validated
//! bit clear is `PendingAccept`, hypervisor-owned is `Shared`. Assigning a shared page to the guest
//! clears its validated bit (like `RMPUPDATE`) and its content becomes undefined (the model writes
//! [`SNP_POISON`]); so does sharing a page (the shared view of private memory is ciphertext).
//! `PVALIDATE` is a CPU instruction: the hypervisor cannot make it lie, so `LieSuccess` does not apply
//! to it; `Fail` and `NoChange` model the instruction's failures and a hypervisor that remapped the
//! page behind the guest's back. `PVALIDATE` of a page the RMP does not assign to the guest fails with
//! `FAIL_INPUT` here (real hardware raises a nested page fault to the hypervisor instead).

use ccdma::sharing::snp::{
    PageOp, PscDesc, PvalidateStatus, SnpCalls, PVALIDATE_FAIL_INPUT, VMGEXIT_PSC_ERROR_INVALID_ENTRY,
    VMGEXIT_PSC_ERROR_INVALID_HDR, VMGEXIT_PSC_MAX_COUNT,
};

use crate::calls::{CallKind, Injection};
use crate::memory::{PageState, PAGE};
use crate::{Hypervisor, Personality};

/// The byte the model leaves in a page whose content a conversion made undefined.
pub const SNP_POISON: u8 = 0xC5;

impl Hypervisor {
    fn snp_ready(&self, gpa: u64, pages: u64) -> bool {
        self.config().personality == Personality::Snp && self.pages_ok(gpa, pages)
    }

    /// The hypervisor's RMPUPDATE for one page.
    fn snp_assign(&self, gpa: u64, op: PageOp) {
        let to = if op == PageOp::Shared { PageState::Shared } else { PageState::PendingAccept };
        self.note_conversion(gpa, 1, to);
        match (op, self.mem.state(gpa)) {
            (PageOp::Shared, PageState::Shared) | (PageOp::Private, PageState::Private) => {}
            (PageOp::Private, PageState::PendingAccept) => {}
            (PageOp::Shared, _) => {
                self.mem.set_state(gpa, 1, PageState::Shared);
                self.mem.write(gpa, &[SNP_POISON; PAGE as usize]);
            }
            (PageOp::Private, PageState::Shared) => {
                self.mem.set_state(gpa, 1, PageState::PendingAccept);
                self.mem.write(gpa, &[SNP_POISON; PAGE as usize]);
            }
        }
    }
}

impl SnpCalls for Hypervisor {
    fn pvalidate(&self, gpa: u64, validate: bool) -> PvalidateStatus {
        let inj = self.calls.enter(CallKind::Pvalidate);
        if !self.snp_ready(gpa, 1) {
            return PvalidateStatus::Fail(PVALIDATE_FAIL_INPUT);
        }
        match inj {
            Some(Injection::Fail(c))
            | Some(Injection::Busy(c))
            | Some(Injection::Partial { code: c, .. }) => return PvalidateStatus::Fail(c as u32),
            Some(Injection::NoChange) => return PvalidateStatus::NoChange,
            _ => {}
        }
        let (from, to) = if validate {
            (PageState::PendingAccept, PageState::Private)
        } else {
            (PageState::Private, PageState::PendingAccept)
        };
        match self.mem.state(gpa) {
            PageState::Shared => PvalidateStatus::Fail(PVALIDATE_FAIL_INPUT),
            s if s == from => {
                self.mem.set_state(gpa, 1, to);
                PvalidateStatus::Success
            }
            _ => PvalidateStatus::NoChange,
        }
    }

    fn psc_msr(&self, gfn: u64, op: PageOp) -> u64 {
        let inj = self.calls.enter(CallKind::PscMsr);
        let Some(gpa) = gfn.checked_mul(PAGE) else { return VMGEXIT_PSC_ERROR_INVALID_ENTRY };
        if !self.snp_ready(gpa, 1) {
            return VMGEXIT_PSC_ERROR_INVALID_ENTRY;
        }
        match inj {
            Some(Injection::Fail(c)) | Some(Injection::Busy(c)) => c as u64,
            Some(Injection::Partial { pages, code }) => {
                if pages > 0 {
                    self.snp_assign(gpa, op);
                }
                code as u64
            }
            Some(Injection::LieSuccess) => 0,
            _ => {
                self.snp_assign(gpa, op);
                0
            }
        }
    }

    fn psc_ghcb(&self, desc: &mut PscDesc) -> u64 {
        let inj = self.calls.enter(CallKind::Psc);
        let h = desc.header;
        let end = usize::from(h.end_entry);
        let cur = usize::from(h.cur_entry);
        if self.config().personality != Personality::Snp || end >= VMGEXIT_PSC_MAX_COUNT || cur > end + 1 {
            return VMGEXIT_PSC_ERROR_INVALID_HDR;
        }
        let mut todo = Vec::with_capacity(end + 1 - cur);
        for e in &desc.entries[cur..=end] {
            let Some(op) = PageOp::from_code(e.op()) else { return VMGEXIT_PSC_ERROR_INVALID_ENTRY };
            let gpa = e.gfn() * PAGE;
            if e.is_2m() || !self.pages_ok(gpa, 1) {
                return VMGEXIT_PSC_ERROR_INVALID_ENTRY;
            }
            todo.push((gpa, op));
        }
        let remaining = todo.len();
        let (n, rc) = match inj {
            Some(Injection::Fail(c)) | Some(Injection::Busy(c)) => (0, c as u64),
            Some(Injection::Partial { pages, code }) => ((pages as usize).min(remaining), code as u64),
            Some(Injection::LieSuccess) => {
                desc.header.cur_entry = h.end_entry + 1;
                return 0;
            }
            Some(Injection::Stall) | Some(Injection::NoChange) => (0, 0),
            Some(Injection::BadResume) => {
                desc.header.cur_entry = h.end_entry + 2;
                return 0;
            }
            None => {
                (self.config().snp_entries_per_call.map_or(remaining, |m| usize::from(m).min(remaining)), 0)
            }
        };
        for &(gpa, op) in &todo[..n] {
            self.snp_assign(gpa, op);
        }
        desc.header.cur_entry = h.cur_entry + n as u16;
        rc
    }
}
