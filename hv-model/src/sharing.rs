//! The two sharing personalities: pseries ultracalls and TDX `MapGPA` + accept, with fault injection.

use ccdma::sharing::pseries::{Ultracalls, U_SUCCESS};
use ccdma::sharing::tdx::{MapGpaStatus, TdxCalls};

use crate::calls::{CallKind, Injection};
use crate::memory::{PageState, PAGE};
use crate::{Hypervisor, Personality};

/// Ultravisor "bad parameter" code.
pub const U_PARAMETER: i64 = -4;
/// TDX `TDG.VP.VMCALL_INVALID_OPERAND`.
pub const TDX_INVALID_OPERAND: i64 = -1;

impl Hypervisor {
    pub(crate) fn pages_ok(&self, phys: u64, pages: u64) -> bool {
        phys % PAGE == 0 && pages > 0 && pages.checked_mul(PAGE).is_some_and(|l| self.mem.contains(phys, l))
    }

    fn uv_convert(&self, kind: CallKind, gfn: u64, npages: u64, to: PageState) -> i64 {
        let inj = self.calls.enter(kind);
        let Some(phys) = gfn.checked_mul(PAGE) else { return U_PARAMETER };
        if self.config().personality != Personality::Pseries || !self.pages_ok(phys, npages) {
            return U_PARAMETER;
        }
        let done = match inj {
            None
            | Some(Injection::Busy(_))
            | Some(Injection::Stall)
            | Some(Injection::BadResume)
            | Some(Injection::NoChange) => npages,
            Some(Injection::Partial { pages, .. }) => pages.min(npages),
            _ => 0,
        };
        self.note_conversion(phys, done, to);
        self.mem.set_state(phys, done, to);
        self.note_shared_now();
        match inj {
            Some(Injection::LieSuccess) => U_SUCCESS,
            Some(Injection::Fail(code)) | Some(Injection::Partial { code, .. }) => code,
            _ => U_SUCCESS,
        }
    }
}

impl Ultracalls for Hypervisor {
    fn uv_share_page(&self, gfn: u64, npages: u64) -> i64 {
        self.uv_convert(CallKind::UvShare, gfn, npages, PageState::Shared)
    }
    fn uv_unshare_page(&self, gfn: u64, npages: u64) -> i64 {
        self.uv_convert(CallKind::UvUnshare, gfn, npages, PageState::Private)
    }
}

impl TdxCalls for Hypervisor {
    fn map_gpa(&self, gpa: u64, len: u64, shared: bool) -> MapGpaStatus {
        let inj = self.calls.enter(CallKind::MapGpa);
        if self.config().personality != Personality::Tdx || len % PAGE != 0 || !self.pages_ok(gpa, len / PAGE)
        {
            return MapGpaStatus::Error(TDX_INVALID_OPERAND);
        }
        let pages = len / PAGE;
        let to = if shared { PageState::Shared } else { PageState::PendingAccept };
        let convert = |n: u64| {
            if !shared {
                // Content does not survive a conversion to private.
                for i in 0..n {
                    self.mem.write(gpa + i * PAGE, &[0; PAGE as usize]);
                }
            }
            self.note_conversion(gpa, n, to);
            // Pages already private stay private (nothing to accept).
            for i in 0..n {
                let p = gpa + i * PAGE;
                if shared || self.mem.state(p) == PageState::Shared {
                    self.mem.set_state(p, 1, to);
                }
            }
            self.note_shared_now();
        };
        match inj {
            Some(Injection::Fail(code)) => MapGpaStatus::Error(code),
            Some(Injection::LieSuccess) => MapGpaStatus::Success,
            Some(Injection::Stall) | Some(Injection::Busy(_)) | Some(Injection::NoChange) => {
                MapGpaStatus::Retry { resume: gpa }
            }
            Some(Injection::BadResume) => MapGpaStatus::Retry { resume: gpa + len + PAGE },
            Some(Injection::Partial { pages: done, code }) => {
                convert(done.min(pages));
                MapGpaStatus::Error(code)
            }
            None => match self.config().tdx_pages_per_call {
                Some(max) if max < pages => {
                    convert(max);
                    MapGpaStatus::Retry { resume: gpa + max * PAGE }
                }
                _ => {
                    convert(pages);
                    MapGpaStatus::Success
                }
            },
        }
    }

    fn accept_page(&self, gpa: u64) -> i64 {
        let inj = self.calls.enter(CallKind::Accept);
        if !self.pages_ok(gpa, 1) {
            return TDX_INVALID_OPERAND;
        }
        match inj {
            Some(Injection::Fail(code)) | Some(Injection::Partial { code, .. }) => code,
            Some(Injection::LieSuccess) => {
                self.mem.mark_accepted(gpa);
                0
            }
            // The TDX module finds no private page to accept where the VMM left a shared one.
            _ if self.mem.state(gpa) == PageState::Shared => TDX_INVALID_OPERAND,
            _ => {
                if self.mem.state(gpa) == PageState::PendingAccept {
                    self.mem.set_state(gpa, 1, PageState::Private);
                }
                0
            }
        }
    }
}
