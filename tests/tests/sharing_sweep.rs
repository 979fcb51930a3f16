//! Fault-injection sweep over every sharing call site of the SEV-SNP and Arm CCA personalities (and,
//! under the same rules, of pseries and TDX).
//!
//! A standard scenario (a pool, a device, a map each way with the device moving data, a one-page and a
//! three-page coherent buffer, detach, teardown) is run once clean to count the calls of every kind,
//! then once per (call kind, call index, injection) with that one call misbehaving. At every step: an
//! operation that fails changes nothing (or, for a failed unshare, quarantines what it could not make
//! private), the model never holds more shared pages than the layer counts, no device access lands in
//! private memory and the guest never uses a page it has not re-validated (the model's fault log). At
//! the end every counter is back to its baseline: no slot, no coherent buffer, no shared page except
//! quarantined ones.

use ccdma::sharing::cca::RSI_ERROR_INPUT;
use ccdma::sharing::snp::{PVALIDATE_FAIL_INPUT, PVALIDATE_FAIL_SIZEMISMATCH, VMGEXIT_PSC_ERROR_GENERIC};
use ccdma::{DeviceConfig, DmaAttrs, DmaDirection, DmaError, DmaLayer, DmaMask, PhysAddr, PoolConfig};
use ccdma_hv_model::{
    CallKind, FaultReason, HvConfig, Hypervisor, Injection, Personality, Region, TDX_INVALID_OPERAND,
    U_PARAMETER,
};
use ccdma_tests::*;

/// 32 pages: 32 rescinds, one GHCB request of 32 entries (3 calls at 12 per call).
const POOL_LEN: u64 = 32 * 4096;
const LEN: usize = 10_000;

fn config(p: Personality) -> HvConfig {
    HvConfig {
        snp_entries_per_call: Some(12),
        cca_granules_per_call: Some(12),
        ..HvConfig::confidential(p, 6 * GIB)
    }
}

/// How one injection is planned.
#[derive(Clone, Copy, Debug)]
enum Plan {
    /// At the `at`-th call only.
    Once(Injection),
    /// At every call from the `at`-th on.
    From(Injection),
}

/// The injections each call site is swept with.
fn injections(kind: CallKind) -> Vec<Plan> {
    let psc = VMGEXIT_PSC_ERROR_GENERIC as i64;
    match kind {
        CallKind::Pvalidate => vec![
            Plan::Once(Injection::Fail(PVALIDATE_FAIL_INPUT as i64)),
            Plan::Once(Injection::Fail(PVALIDATE_FAIL_SIZEMISMATCH as i64)),
            Plan::Once(Injection::NoChange),
        ],
        CallKind::PscMsr => vec![
            Plan::Once(Injection::Fail(psc)),
            Plan::Once(Injection::Partial { pages: 1, code: psc }),
            Plan::Once(Injection::LieSuccess),
        ],
        CallKind::Psc => vec![
            Plan::Once(Injection::Fail(psc)),
            Plan::Once(Injection::Partial { pages: 5, code: psc }),
            Plan::Once(Injection::Stall),
            Plan::From(Injection::Stall),
            Plan::Once(Injection::BadResume),
            Plan::Once(Injection::LieSuccess),
        ],
        // The RMM is trusted: a lie about completion is outside the threat model (and undetectable
        // by design), so it is not swept; everything the host can do is.
        CallKind::RsiIpaStateSet => vec![
            Plan::Once(Injection::Fail(RSI_ERROR_INPUT as i64)),
            Plan::Once(Injection::Partial { pages: 5, code: 0 }),
            Plan::Once(Injection::Partial { pages: 0, code: 0 }),
            Plan::Once(Injection::Stall),
            Plan::From(Injection::Stall),
            Plan::Once(Injection::BadResume),
        ],
        // The same rules on the two older personalities. The ultravisor and the TDX module are trusted
        // (a lie about an unshare or an accept is undetectable by design); the TDX VMM is not.
        CallKind::UvShare | CallKind::UvUnshare => vec![
            Plan::Once(Injection::Fail(U_PARAMETER)),
            Plan::Once(Injection::Partial { pages: 5, code: U_PARAMETER }),
        ],
        CallKind::MapGpa => vec![
            Plan::Once(Injection::Fail(TDX_INVALID_OPERAND)),
            Plan::Once(Injection::Partial { pages: 5, code: TDX_INVALID_OPERAND }),
            Plan::Once(Injection::Stall),
            Plan::From(Injection::Stall),
            Plan::Once(Injection::BadResume),
            Plan::Once(Injection::LieSuccess),
        ],
        CallKind::Accept => vec![Plan::Once(Injection::Fail(TDX_INVALID_OPERAND))],
        _ => Vec::new(),
    }
}

/// What must not change when an operation fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Snap {
    shared_not_quarantined: u64,
    slots: u64,
    coherent: u64,
}

struct Run {
    hv: &'static Hypervisor,
    layer: Layer,
    lying: bool,
    failed: Vec<String>,
    /// Pages the errors said were quarantined.
    reported_quarantined: u64,
}

impl Run {
    fn failed(&mut self, name: &str, e: &DmaError) {
        self.failed.push(format!("{name}: {e}"));
        if let DmaError::SharingFailed { quarantined, .. } | DmaError::UnsharingFailed { quarantined, .. } = e
        {
            self.reported_quarantined += u64::from(*quarantined);
        }
    }
}

impl Run {
    fn snap(&self) -> Snap {
        let s = self.layer.stats();
        // The model may hold fewer shared pages than the layer counts (a lie, or quarantined pages
        // the hypervisor made private without saying so), never more: that would be a page the guest
        // forgot to roll back.
        assert!(
            self.hv.shared_pages() <= s.shared_pages,
            "model {} > layer {}",
            self.hv.shared_pages(),
            s.shared_pages
        );
        if !self.lying && s.quarantined_pages == 0 {
            assert_eq!(self.hv.shared_pages(), s.shared_pages, "model and layer disagree");
        }
        Snap {
            shared_not_quarantined: s.shared_pages - s.quarantined_pages,
            slots: s.slots_in_use,
            coherent: self.layer.iommu_stats().coherent_buffers,
        }
    }

    fn op<T>(&mut self, name: &str, f: impl FnOnce(&Layer) -> Result<T, DmaError>) -> Result<T, DmaError> {
        let before = self.snap();
        let r = f(&self.layer);
        let after = self.snap();
        if let Err(e) = &r {
            self.failed(name, e);
            if !matches!(e, DmaError::UnsharingFailed { .. }) {
                assert_eq!(before, after, "{name} failed ({e}) but changed state");
            }
        }
        self.check(name);
        r
    }

    fn check(&self, name: &str) {
        assert_eq!(self.hv.unvalidated_faults(), 0, "after {name}: {:?}", self.hv.faults());
        // A lie leaves the guest bouncing through pages the device cannot reach: those accesses are
        // refused (and logged), never served from private memory.
        if !self.lying {
            assert!(self.hv.faults().is_empty(), "after {name}: {:?}", self.hv.faults());
        }
        assert!(self.hv.faults().iter().all(|f| f.reason == FaultReason::PrivateTarget));
        // The guest never asks to share a page that is shared already (the model's sharing ledger).
        assert_eq!(self.hv.sharing_ledger().double_shares, 0, "after {name}");
    }
}

/// The standard scenario; returns the failed operations and the calls made, per kind.
fn scenario(p: Personality, plan: Option<(CallKind, u64, Plan)>) -> (Vec<String>, Vec<(CallKind, u64)>) {
    let hv = model(config(p));
    let lying = matches!(plan, Some((_, _, Plan::Once(Injection::LieSuccess))));
    let src = hv.alloc(LEN as u64, Region::High);
    let dst = hv.alloc(LEN as u64, Region::High);
    let coh1 = hv.alloc(4096, Region::Low);
    let coh3 = hv.alloc(3 * 4096, Region::Low);
    hv.memory().write(src, &pattern(LEN, 1));
    match plan {
        Some((kind, at, Plan::Once(inj))) => hv.calls().inject_at(kind, at, inj),
        Some((kind, at, Plan::From(inj))) => hv.calls().inject_from(kind, at, inj),
        None => {}
    }
    let mut run = Run { hv, layer: DmaLayer::new(hv), lying, failed: Vec::new(), reported_quarantined: 0 };
    if let Err(e) = add_pool(&mut run.layer, MID_POOL, POOL_LEN, PoolConfig::default()) {
        run.failed("add_pool", &e);
        run.check("add_pool");
        return finish(run);
    }
    run.check("add_pool");
    let dev = run.layer.attach(DeviceConfig::new(1, DmaMask::BITS_64)).expect("attach");
    let d = hv.add_device(1, 64);
    let to = run.op("map to", |l| {
        // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
        unsafe { l.map_phys(&dev, PhysAddr(src), LEN, DmaDirection::ToDevice, DmaAttrs::NONE) }
    });
    if let Ok(bus) = to {
        let read = d.read(bus.0, LEN);
        assert!(lying || read.as_deref() == Ok(&pattern(LEN, 1)[..]), "{read:?}");
        // SAFETY: as above.
        run.op("unmap to", |l| unsafe { l.unmap(&dev, bus, LEN, DmaDirection::ToDevice, DmaAttrs::NONE) })
            .expect("unmap to");
    }
    let from = run.op("map from", |l| {
        // SAFETY: as above.
        unsafe { l.map_phys(&dev, PhysAddr(dst), LEN, DmaDirection::FromDevice, DmaAttrs::NONE) }
    });
    if let Ok(bus) = from {
        let wrote = d.write(bus.0, &pattern(LEN, 2)).is_ok();
        // SAFETY: as above.
        run.op("unmap from", |l| unsafe {
            l.unmap(&dev, bus, LEN, DmaDirection::FromDevice, DmaAttrs::NONE)
        })
        .expect("unmap from");
        let want = if wrote { pattern(LEN, 2) } else { vec![0; LEN] };
        assert_eq!(hv.memory().read(dst, LEN), want, "the guest reads exactly what the device wrote");
    }
    for (name, phys, pages) in [("coherent 1", coh1, 1u64), ("coherent 3", coh3, 3)] {
        // SAFETY: a fresh allocation handed to the layer until it is freed (or quarantined).
        let c = run.op(name, |l| unsafe { l.alloc_coherent(&dev, PhysAddr(phys), pages) });
        if let Ok(c) = c {
            let bytes = (pages * 4096) as usize;
            // A coherent buffer is zero as the device sees it, whatever the conversion did to it.
            let seen = d.read(c.bus_addr().0, bytes);
            assert!(lying || seen == Ok(vec![0; bytes]), "{name}: not zero on the bus");
            let _ = d.write(c.bus_addr().0, &vec![7; bytes]);
            let free = run.op(&format!("free {name}"), |l| {
                l.free_coherent(&dev, c).map_err(|e| match e {
                    ccdma::FreeError::Quarantined(e) => e,
                    ccdma::FreeError::Refused(r) => panic!("free refused: {}", r.error),
                })
            });
            assert!(matches!(free, Ok(()) | Err(DmaError::UnsharingFailed { .. })), "{free:?}");
        }
    }
    run.layer.detach(dev).map_err(|r| r.error).expect("detach");
    finish(run)
}

/// Tear down and check the baseline.
fn finish(mut run: Run) -> (Vec<String>, Vec<(CallKind, u64)>) {
    let hv = run.hv;
    if let Err(e) = run.layer.release_pools() {
        assert!(matches!(e, DmaError::UnsharingFailed { .. }), "release_pools: {e}");
        run.failed("release_pools", &e);
    }
    run.check("release_pools");
    let s = run.layer.stats();
    assert_eq!(s.slots_in_use, 0);
    assert_eq!(run.layer.iommu_stats().coherent_buffers, 0);
    assert_eq!(s.shared_pages, s.quarantined_pages, "shared pages other than quarantined ones left");
    assert_eq!(s.quarantined_pages, run.reported_quarantined, "quarantine counted as the errors reported it");
    assert!(hv.shared_pages() <= s.quarantined_pages, "the model has shared pages the guest does not count");
    if run.failed.iter().any(|f| f.contains("unsharing")) {
        assert!(s.quarantined_pages > 0, "a failed unshare quarantined nothing: {:?}", run.failed);
    }
    (run.failed, hv.calls().counts().into_iter().collect())
}

fn sweep(p: Personality, kinds: &[CallKind]) {
    let (failed, clean) = scenario(p, None);
    assert!(failed.is_empty(), "clean run failed: {failed:?}");
    let mut runs = 0;
    let mut failing = 0;
    for &kind in kinds {
        let n = clean.iter().find(|(k, _)| *k == kind).map_or(0, |(_, n)| *n);
        assert!(n > 0, "the scenario never calls {kind:?}");
        for at in 1..=n {
            for plan in injections(kind) {
                let (failed, _) = scenario(p, Some((kind, at, plan)));
                runs += 1;
                match plan {
                    // One call without progress, or a lie the guest cannot see: nothing fails.
                    Plan::Once(Injection::Stall) => {
                        assert!(failed.is_empty(), "{kind:?}#{at} {plan:?}: {failed:?}")
                    }
                    Plan::Once(Injection::LieSuccess) => {}
                    // Partial progress that covered what was left of the call's range changed
                    // nothing the guest cares about (the baseline checks hold either way).
                    Plan::Once(Injection::Partial { .. }) => failing += usize::from(!failed.is_empty()),
                    // A lying "no change" about the rescind of a page is caught; everything else
                    // fails the operation that hit it.
                    _ => {
                        assert!(!failed.is_empty(), "{kind:?}#{at} {plan:?}: the failure went unnoticed");
                        failing += 1;
                    }
                }
            }
        }
    }
    println!("{p:?} sharing sweep: {runs} runs, {failing} with a failed operation");
}

#[test]
fn snp_every_call_site_fails_cleanly() {
    sweep(Personality::Snp, &[CallKind::Pvalidate, CallKind::PscMsr, CallKind::Psc]);
}

#[test]
fn cca_every_call_site_fails_cleanly() {
    sweep(Personality::Cca, &[CallKind::RsiIpaStateSet]);
}

#[test]
fn tdx_every_call_site_fails_cleanly() {
    sweep(Personality::Tdx, &[CallKind::MapGpa, CallKind::Accept]);
}

#[test]
fn pseries_every_call_site_fails_cleanly() {
    sweep(Personality::Pseries, &[CallKind::UvShare, CallKind::UvUnshare]);
}
