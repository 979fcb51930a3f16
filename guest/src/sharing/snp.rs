//! AMD SEV-SNP: Page State Change (PSC) requests through the GHCB protocol and `PVALIDATE`.
//!
//! Sharing a page takes two steps, in this order: the guest rescinds its validation
//! (`PVALIDATE` with validate = 0), then asks the hypervisor to make the page shared in the RMP with a
//! PSC request. Making it private again is the reverse: a PSC request to private, then `PVALIDATE`
//! (validate = 1) of every page, because the RMP clears a page's validated bit whenever the
//! hypervisor reassigns it. A page the guest uses before re-validating it faults; a page whose
//! `PVALIDATE` reports "no change" (rFLAGS.CF) was not in the state the guest recorded, which only a
//! hypervisor remapping it can cause: the page is never reused (Linux terminates the guest instead).
//!
//! PSC requests go through the GHCB MSR protocol for a single page (`GHCB_MSR_PSC_REQ` 0x014) and
//! through the GHCB shared buffer otherwise: a header (`cur_entry`, `end_entry`) and up to
//! [`VMGEXIT_PSC_MAX_COUNT`] entries. The hypervisor advances `cur_entry` as it goes and may return
//! before the end (partial progress, the guest calls again) or with an error in `SW_EXITINFO2`. The
//! header and entries live in shared memory, so whatever comes back is an allegation: the entries are
//! rewritten from the guest's own record before every call, and a header that goes backwards, past
//! the end, or changes `end_entry` or the reserved field stops the conversion.
//!
//! ```
//! use ccdma::sharing::snp::{PageOp, PscDesc, PvalidateStatus, SnpCalls, SnpSharing};
//! use ccdma::{MemorySharing, PhysAddr};
//!
//! /// A hypervisor that does everything asked at once (real firmware issues VMGEXIT and PVALIDATE).
//! struct Honest;
//! impl SnpCalls for Honest {
//!     fn pvalidate(&self, _gpa: u64, _validate: bool) -> PvalidateStatus {
//!         PvalidateStatus::Success
//!     }
//!     fn psc_msr(&self, _gfn: u64, _op: PageOp) -> u64 {
//!         0
//!     }
//!     fn psc_ghcb(&self, desc: &mut PscDesc) -> u64 {
//!         desc.header.cur_entry = desc.header.end_entry + 1;
//!         0
//!     }
//! }
//! let sharing = SnpSharing::new(Honest);
//! sharing.share(PhysAddr(0x10_0000), 300).unwrap(); // two GHCB requests (253 + 47 entries)
//! sharing.unshare(PhysAddr(0x10_0000), 300).unwrap();
//! ```

use crate::addr::{PhysAddr, PAGE_SHIFT, PAGE_SIZE};
use crate::error::{SharingErrorKind, StatusCode};
use crate::platform::{MemorySharing, PartialSharing};

/// Entries one GHCB PSC request can hold (GHCB specification; Linux's `VMGEXIT_PSC_MAX_COUNT`).
pub const VMGEXIT_PSC_MAX_COUNT: usize = 253;
/// `SW_EXITCODE` of the PSC NAE event.
pub const SVM_VMGEXIT_PSC: u64 = 0x8000_0010;
/// GHCB MSR protocol: page state change request.
pub const GHCB_MSR_PSC_REQ: u64 = 0x014;
/// GHCB MSR protocol: page state change response.
pub const GHCB_MSR_PSC_RESP: u64 = 0x015;
/// PSC error: generic (in `SW_EXITINFO2`).
pub const VMGEXIT_PSC_ERROR_GENERIC: u64 = 0x100 << 32;
/// PSC error: the header is invalid.
pub const VMGEXIT_PSC_ERROR_INVALID_HDR: u64 = (1 << 32) | 1;
/// PSC error: an entry is invalid.
pub const VMGEXIT_PSC_ERROR_INVALID_ENTRY: u64 = (1 << 32) | 2;
/// `PVALIDATE` return code: success.
pub const PVALIDATE_SUCCESS: u32 = 0;
/// `PVALIDATE` return code: bad input (e.g. a page the RMP does not assign to the guest).
pub const PVALIDATE_FAIL_INPUT: u32 = 1;
/// `PVALIDATE` return code: the page size does not match the RMP entry.
pub const PVALIDATE_FAIL_SIZEMISMATCH: u32 = 6;
/// Calls allowed without progress before a conversion is abandoned.
pub const MAX_RETRIES_WITHOUT_PROGRESS: u32 = 8;

/// The state a PSC entry asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageOp {
    /// Page assignment, private (operation 1).
    Private,
    /// Page assignment, shared (operation 2).
    Shared,
}

impl PageOp {
    /// The operation code in PSC entries and the MSR protocol.
    pub const fn code(self) -> u64 {
        match self {
            PageOp::Private => 1,
            PageOp::Shared => 2,
        }
    }
    /// The operation for a code, if it is one of the two.
    pub const fn from_code(code: u64) -> Option<PageOp> {
        match code {
            1 => Some(PageOp::Private),
            2 => Some(PageOp::Shared),
            _ => None,
        }
    }
}

/// One PSC entry as the GHCB lays it out: `cur_page` bits 0..12, `gfn` 12..52, `operation` 52..56,
/// `pagesize` bit 56 (0 = 4 KiB, the only size this layer asks for).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[repr(transparent)]
pub struct PscEntry(pub u64);

impl PscEntry {
    /// A 4 KiB entry for `gfn` (40 bits) and `op`.
    pub const fn new(gfn: u64, op: PageOp) -> PscEntry {
        PscEntry(((gfn & ((1 << 40) - 1)) << 12) | (op.code() << 52))
    }
    /// The guest frame number.
    pub const fn gfn(self) -> u64 {
        (self.0 >> 12) & ((1 << 40) - 1)
    }
    /// The operation code.
    pub const fn op(self) -> u64 {
        (self.0 >> 52) & 0xF
    }
    /// True for a 2 MiB entry.
    pub const fn is_2m(self) -> bool {
        self.0 & (1 << 56) != 0
    }
}

/// The PSC header: `cur_entry` (first entry not yet processed), `end_entry` (last entry, inclusive).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[repr(C)]
pub struct PscHeader {
    /// First entry not yet processed; the hypervisor advances it.
    pub cur_entry: u16,
    /// Index of the last entry.
    pub end_entry: u16,
    /// Must stay zero.
    pub reserved: u32,
}

/// A PSC request as it travels in the GHCB shared buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct PscDesc {
    /// The header.
    pub header: PscHeader,
    /// The entries (`0..=header.end_entry` are used).
    pub entries: [PscEntry; VMGEXIT_PSC_MAX_COUNT],
}

/// What one `PVALIDATE` reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PvalidateStatus {
    /// The validated bit now has the requested value.
    Success,
    /// rFLAGS.CF: the bit already had the requested value (nothing changed).
    NoChange,
    /// Failure with the instruction's code (nothing changed).
    Fail(u32),
}

/// The raw SEV-SNP operations, as firmware or a model provides them.
pub trait SnpCalls {
    /// `PVALIDATE` one 4 KiB page at `gpa`: validate (`true`) or rescind (`false`).
    fn pvalidate(&self, gpa: u64, validate: bool) -> PvalidateStatus;
    /// One page through the GHCB MSR protocol; returns the response's error field (`GHCBData[63:32]`,
    /// 0 = success).
    fn psc_msr(&self, gfn: u64, op: PageOp) -> u64;
    /// One `SVM_VMGEXIT_PSC` on the GHCB shared buffer holding `desc` (copied in, and back out after
    /// the exit); returns `SW_EXITINFO2` (0 = no error).
    fn psc_ghcb(&self, desc: &mut PscDesc) -> u64;
}

/// [`MemorySharing`] over PSC requests and `PVALIDATE`.
#[derive(Debug)]
pub struct SnpSharing<S> {
    calls: S,
}

impl<S: SnpCalls> SnpSharing<S> {
    /// Wrap the raw calls.
    pub const fn new(calls: S) -> Self {
        SnpSharing { calls }
    }
    /// The raw calls.
    pub fn calls(&self) -> &S {
        &self.calls
    }

    /// Ask for `[phys, phys + pages)` to become `op` in the RMP; on failure return the pages the
    /// hypervisor confirmed (from the start) and why it stopped.
    fn psc(&self, phys: u64, pages: u64, op: PageOp) -> Result<(), (u64, SharingErrorKind)> {
        let gfn = phys >> PAGE_SHIFT;
        if pages == 1 {
            return match self.calls.psc_msr(gfn, op) {
                0 => Ok(()),
                rc => Err((0, SharingErrorKind::Hypervisor(StatusCode(rc as i64)))),
            };
        }
        let mut desc =
            PscDesc { header: PscHeader::default(), entries: [PscEntry(0); VMGEXIT_PSC_MAX_COUNT] };
        let mut done = 0u64;
        while done < pages {
            // At most 253 entries: the cast cannot truncate.
            let n = (pages - done).min(VMGEXIT_PSC_MAX_COUNT as u64) as u16;
            let mut cur = 0u16;
            let mut stalls = 0u32;
            while cur < n {
                // Entries and header come from the guest's own record before every call: whatever the
                // hypervisor left in the shared buffer is never sent back as a request.
                for (i, e) in desc.entries.iter_mut().enumerate().take(usize::from(n)) {
                    *e = PscEntry::new(gfn + done + i as u64, op);
                }
                desc.header = PscHeader { cur_entry: cur, end_entry: n - 1, reserved: 0 };
                let rc = self.calls.psc_ghcb(&mut desc);
                let h = desc.header;
                // The header is an allegation: it must not go backwards, past the end, or change the
                // request.
                if h.end_entry != n - 1 || h.reserved != 0 || h.cur_entry < cur || h.cur_entry > n {
                    return Err((done + u64::from(cur), SharingErrorKind::BadResume));
                }
                if rc != 0 {
                    return Err((
                        done + u64::from(h.cur_entry),
                        SharingErrorKind::Hypervisor(StatusCode(rc as i64)),
                    ));
                }
                if h.cur_entry == cur {
                    stalls += 1;
                    if stalls > MAX_RETRIES_WITHOUT_PROGRESS {
                        return Err((done + u64::from(cur), SharingErrorKind::NoProgress));
                    }
                } else {
                    stalls = 0;
                    cur = h.cur_entry;
                }
            }
            done += u64::from(n);
        }
        Ok(())
    }
}

impl<S: SnpCalls> MemorySharing for SnpSharing<S> {
    fn share(&self, phys: PhysAddr, pages: u64) -> Result<(), PartialSharing> {
        // Rescind first: a page the hypervisor may own must not stay validated in the guest's view.
        for i in 0..pages {
            match self.calls.pvalidate(phys.0.wrapping_add(i * PAGE_SIZE), false) {
                PvalidateStatus::Success => {}
                // Nothing changed for this page: roll back the ones before it.
                PvalidateStatus::Fail(code) => {
                    return Err(PartialSharing {
                        pages_done: i,
                        kind: SharingErrorKind::ValidateFailed(code.into()),
                    })
                }
                // The page was not validated: someone changed it. Include it in the rollback, which
                // makes it private and validated again (fresh content) or quarantines it.
                PvalidateStatus::NoChange => {
                    return Err(PartialSharing {
                        pages_done: i + 1,
                        kind: SharingErrorKind::ValidationNoChange,
                    })
                }
            }
        }
        // Every page is rescinded now, so all of them need the rollback (PSC to private, validate),
        // whatever the hypervisor confirmed.
        self.psc(phys.0, pages, PageOp::Shared)
            .map_err(|(_, kind)| PartialSharing { pages_done: pages, kind })
    }

    fn unshare(&self, phys: PhysAddr, pages: u64) -> Result<(), PartialSharing> {
        // Only confirmed progress counts; the caller quarantines the rest.
        let (confirmed, failure) = match self.psc(phys.0, pages, PageOp::Private) {
            Ok(()) => (pages, None),
            Err((done, kind)) => (done.min(pages), Some(kind)),
        };
        // A page assigned to the guest again is unusable until validated. A page whose validation
        // fails, or reports no change (it was already validated: the PSC was not what it claimed),
        // stops the progress: it and the rest are quarantined.
        for i in 0..confirmed {
            let kind = match self.calls.pvalidate(phys.0.wrapping_add(i * PAGE_SIZE), true) {
                PvalidateStatus::Success => continue,
                PvalidateStatus::Fail(code) => SharingErrorKind::ValidateFailed(code.into()),
                PvalidateStatus::NoChange => SharingErrorKind::ValidationNoChange,
            };
            return Err(PartialSharing { pages_done: i, kind });
        }
        match failure {
            // Every page validated: that proves each is assigned to the guest again, whatever error the
            // hypervisor reported after processing them all.
            Some(kind) if confirmed < pages => Err(PartialSharing { pages_done: confirmed, kind }),
            _ => Ok(()),
        }
    }
}

impl<S: SnpCalls + ?Sized> SnpCalls for &S {
    fn pvalidate(&self, gpa: u64, validate: bool) -> PvalidateStatus {
        (**self).pvalidate(gpa, validate)
    }
    fn psc_msr(&self, gfn: u64, op: PageOp) -> u64 {
        (**self).psc_msr(gfn, op)
    }
    fn psc_ghcb(&self, desc: &mut PscDesc) -> u64 {
        (**self).psc_ghcb(desc)
    }
}
