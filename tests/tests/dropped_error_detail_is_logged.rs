//! What `DmaError` no longer carries (it is 24 bytes) is logged where it happens: a DDW attempt's
//! hypercall status or `IommuError` behind `NoIommuPath` (which keeps only its one-byte `DdwStep`),
//! and the `IommuError` that made a coherent allocation fail before its pages were quarantined
//! (`CoherentQuarantined` names the pages only). Each failure is injected into the model; the tests
//! read the log records the layer emits on the test's thread.

mod iommu_support;
mod log_support;

use ccdma::iommu::hcall::{H_HARDWARE, H_PARAMETER};
use ccdma::iommu::TceCalls;
use ccdma::{DdwStep, DeviceConfig, DmaError, DmaMask, IommuPolicy, PhysAddr};
use ccdma_hv_model::{CallKind, Injection, Region};
use iommu_support::*;
use log_support::{capture, with_all};

/// RTAS "parameter error": what a failed `ibm,create-pe-dma-window` answers.
const RTAS_PARAMETER_ERROR: i64 = -3;

/// A 64-bit device on an endpoint without a default window (a kernel before a kexec removed it) whose
/// reset fails (so the default window stays away): after a failed DDW attempt nothing is left to
/// fall back to, and the attach fails `NoIommuPath`.
#[test]
fn a_failed_ddw_attempts_status_is_logged_when_the_error_keeps_only_its_step() {
    let cases = [
        (CallKind::DdwQuery, Injection::Fail(H_HARDWARE), DdwStep::QueryFailed, "DDW query failed (-1)"),
        (
            CallKind::DdwCreate,
            Injection::Fail(RTAS_PARAMETER_ERROR),
            DdwStep::CreateFailed,
            "DDW creation failed (-3)",
        ),
        // The pool enters the DDW as one entry: one H_PUT_TCE.
        (
            CallKind::PutTce,
            Injection::Fail(H_PARAMETER),
            DdwStep::PremapFailed,
            "premapping into the DDW failed (Hcall(-4))",
        ),
    ];
    for (call, injection, step, logged) in cases {
        let g = iommu_guest(Opts::new(IommuPolicy::Premapped));
        g.hv.add_iommu_device(1, 64);
        let default = g.hv.default_window(1).unwrap();
        assert_eq!(g.hv.ddw_remove(1, default.liobn), 0);
        g.hv.calls().inject_next(CallKind::DdwReset, Injection::Fail(H_HARDWARE));
        g.hv.calls().inject_next(call, injection);
        let (result, records) = capture(|| g.layer.attach(DeviceConfig::new(1, DmaMask::BITS_64)));
        let err = result.unwrap_err();
        let DmaError::NoIommuPath { ddw, .. } = err else { panic!("{call:?}: {err:?}") };
        assert_eq!(ddw, step, "{call:?}");
        // The error says the detail is in the log ...
        assert!(err.to_string().contains("logged"), "{call:?}: {err}");
        // ... and the log has it, naming the device, at info level or above.
        let hits = with_all(&records, &["device 0x1", logged]);
        assert!(
            hits.iter().any(|r| r.level <= log::Level::Info),
            "{call:?}: no record says {logged:?}; records: {records:?}"
        );
        // Nothing left behind by the failed attempt.
        assert_eq!(g.hv.tce_counters().ddws, 0, "{call:?}");
        assert_eq!(g.layer.live_bus_ranges(), 0, "{call:?}");
    }
}

/// Entries that cannot be written (`H_PUT_TCE` fails), then pages that cannot be made private again
/// (`UV_UNSHARE_PAGE` fails): `CoherentQuarantined` names the pages; the cause is logged.
#[test]
fn a_quarantined_coherent_allocations_cause_is_logged() {
    let g = iommu_guest(Opts::new(IommuPolicy::Premapped));
    let dev = g.device(1, 32);
    let p = g.hv.alloc(4096, Region::High);
    g.hv.calls().inject_next(CallKind::PutTce, Injection::Fail(H_PARAMETER));
    g.hv.calls().inject_next(CallKind::UvUnshare, Injection::Fail(-1));
    // SAFETY: a fresh page, handed over (forever: the error says it is quarantined).
    let (result, records) = capture(|| unsafe { g.layer.alloc_coherent(&dev, PhysAddr(p), 1) });
    let err = result.unwrap_err();
    assert!(
        matches!(err, DmaError::CoherentQuarantined { phys, pages: 1, .. } if phys == PhysAddr(p)),
        "{err:?}"
    );
    assert_eq!(g.layer.stats().quarantined_pages, 1);
    // The cause, H_PUT_TCE's H_PARAMETER, is not in the error ...
    let cause = DmaError::Iommu(ccdma::IommuError::Hcall(H_PARAMETER)).to_string();
    assert!(!err.to_string().contains(&cause), "{err}");
    // ... but in an error record that also names the quarantined page.
    let page = PhysAddr(p).to_string();
    let hits = with_all(&records, &["coherent allocation failed", &cause, &page, "quarantined"]);
    assert!(
        hits.iter().any(|r| r.level == log::Level::Error),
        "no error record names the cause {cause:?} and page {page}; records: {records:?}"
    );
    g.layer.detach(dev).unwrap();
}
