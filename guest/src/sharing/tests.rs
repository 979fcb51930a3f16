//! The SEV-SNP and Arm CCA adapters against scripted raw calls: what they accept from a hypervisor
//! that answers out of protocol.
extern crate std;
use core::cell::{Cell, RefCell};
use std::vec::Vec;

use super::cca::{CcaSharing, IpaStateSet, Ripas, RsiCalls, RsiResponse, RSI_SUCCESS};
use super::snp::{PageOp, PscDesc, PscHeader, PvalidateStatus, SnpCalls, SnpSharing};
use crate::addr::PhysAddr;
use crate::error::{SharingErrorKind, StatusCode};
use crate::platform::{MemorySharing, PartialSharing};

/// A GHCB hypervisor whose answer to each PSC call is scripted: it sets the header it is given and
/// may scribble over the entries; it records the entries it was sent.
#[derive(Default)]
struct ScriptedSnp {
    headers: RefCell<Vec<(PscHeader, u64)>>,
    sent: RefCell<Vec<Vec<u64>>>,
    validates: Cell<u32>,
}

impl SnpCalls for ScriptedSnp {
    fn pvalidate(&self, _gpa: u64, _validate: bool) -> PvalidateStatus {
        self.validates.set(self.validates.get() + 1);
        PvalidateStatus::Success
    }
    fn psc_msr(&self, _gfn: u64, _op: PageOp) -> u64 {
        0
    }
    fn psc_ghcb(&self, desc: &mut PscDesc) -> u64 {
        let end = usize::from(desc.header.end_entry);
        self.sent.borrow_mut().push(desc.entries[..=end].iter().map(|e| e.gfn()).collect());
        for e in desc.entries.iter_mut() {
            e.0 = 0xdead_0000_0000; // a hostile hypervisor rewrites the shared buffer
        }
        let (h, rc) = self.headers.borrow_mut().remove(0);
        desc.header = h;
        rc
    }
}

fn snp(script: &[(u16, u16, u32, u64)]) -> SnpSharing<ScriptedSnp> {
    let s = ScriptedSnp::default();
    *s.headers.borrow_mut() = script
        .iter()
        .map(|&(cur, end, reserved, rc)| (PscHeader { cur_entry: cur, end_entry: end, reserved }, rc))
        .collect();
    SnpSharing::new(s)
}

#[test]
fn snp_entries_are_rewritten_before_every_call() {
    let s = snp(&[(4, 9, 0, 0), (10, 9, 0, 0)]);
    s.share(PhysAddr(0x10_0000), 10).unwrap();
    let sent = s.calls().sent.borrow();
    let want: Vec<u64> = (0x100..0x10a).collect();
    assert_eq!(sent[0], want);
    assert_eq!(sent[1], want, "the second call must not send back what the hypervisor wrote");
}

#[test]
fn snp_header_allegations_are_refused() {
    let bad = SharingErrorKind::BadResume;
    let all = |kind| Err(PartialSharing { pages_done: 10, kind });
    // end_entry changed, reserved set, past the end, backwards after progress.
    assert_eq!(snp(&[(3, 8, 0, 0)]).share(PhysAddr(0), 10), all(bad));
    assert_eq!(snp(&[(3, 9, 1, 0)]).share(PhysAddr(0), 10), all(bad));
    assert_eq!(snp(&[(11, 9, 0, 0)]).share(PhysAddr(0), 10), all(bad));
    assert_eq!(snp(&[(5, 9, 0, 0), (4, 9, 0, 0)]).share(PhysAddr(0), 10), all(bad));
    // On the way back only confirmed progress counts and is validated: 5 entries, then the header lies.
    let s = snp(&[(5, 9, 0, 0), (4, 9, 0, 0)]);
    assert_eq!(s.unshare(PhysAddr(0), 10), Err(PartialSharing { pages_done: 5, kind: bad }));
    assert_eq!(s.calls().validates.get(), 5);
}

#[test]
fn snp_retries_without_progress_are_bounded() {
    let stalls = [(0u16, 9u16, 0u32, 0u64); 1 + super::snp::MAX_RETRIES_WITHOUT_PROGRESS as usize];
    let s = snp(&stalls);
    assert_eq!(
        s.unshare(PhysAddr(0), 10),
        Err(PartialSharing { pages_done: 0, kind: SharingErrorKind::NoProgress })
    );
    assert_eq!(s.calls().validates.get(), 0);
}

/// An RMM whose answers are scripted.
struct ScriptedRsi(RefCell<Vec<IpaStateSet>>);

impl RsiCalls for ScriptedRsi {
    fn ipa_state_set(&self, _base: u64, _top: u64, _ripas: Ripas, _flags: u64) -> IpaStateSet {
        self.0.borrow_mut().remove(0)
    }
}

fn cca(script: &[(u64, u64, RsiResponse)]) -> CcaSharing<ScriptedRsi> {
    CcaSharing::new(ScriptedRsi(RefCell::new(
        script
            .iter()
            .map(|&(status, new_base, response)| IpaStateSet { status, new_base, response })
            .collect(),
    )))
}

#[test]
fn cca_new_base_allegations_are_refused() {
    use RsiResponse::{Accept, Reject};
    let base = 0x8000_0000;
    let bad = |done| Err(PartialSharing { pages_done: done, kind: SharingErrorKind::BadResume });
    assert_eq!(cca(&[(RSI_SUCCESS, base + 0x800, Accept)]).share(PhysAddr(base), 4), bad(0), "unaligned");
    assert_eq!(
        cca(&[(RSI_SUCCESS, base + 5 * 4096, Accept)]).share(PhysAddr(base), 4),
        bad(0),
        "past the top"
    );
    let back = [(RSI_SUCCESS, base + 2 * 4096, Accept), (RSI_SUCCESS, base + 4096, Accept)];
    assert_eq!(cca(&back).share(PhysAddr(base), 4), bad(2), "backwards");
    // A rejection counts what was done before it; an error status counts nothing of its call.
    let rej = [(RSI_SUCCESS, base + 4096, Accept), (RSI_SUCCESS, base + 3 * 4096, Reject)];
    assert_eq!(
        cca(&rej).unshare(PhysAddr(base), 4),
        Err(PartialSharing { pages_done: 3, kind: SharingErrorKind::Rejected })
    );
    assert_eq!(
        cca(&[(RSI_SUCCESS, base + 4096, Accept), (1, 0, Accept)]).share(PhysAddr(base), 4),
        Err(PartialSharing { pages_done: 1, kind: SharingErrorKind::Hypervisor(StatusCode(1)) })
    );
    // A rejection after the whole range changed leaves nothing undone.
    assert_eq!(cca(&[(RSI_SUCCESS, base + 4 * 4096, Reject)]).share(PhysAddr(base), 4), Ok(()));
}
