//! Issue 18 item 4: a coherent allocation whose entries cannot be written (`H_PUT_TCE*` fails, the
//! rollback is clean) and whose pages then cannot be made private again (`UV_UNSHARE_PAGE` fails)
//! leaves pages shared for good. The caller must be told which: the error names the quarantined
//! pages, not only the first hypercall's code.

mod iommu_support;

use ccdma::{DmaError, IommuPolicy, PhysAddr};
use ccdma_hv_model::{CallKind, Injection, PageState, Region};
use iommu_support::*;

#[test]
fn a_failed_alloc_whose_unshare_fails_names_the_quarantined_pages() {
    for (pages, put) in [(1u64, CallKind::PutTce), (2, CallKind::PutTceIndirect)] {
        let g = iommu_guest(Opts::new(IommuPolicy::Premapped));
        let dev = g.device(1, 32);
        let p = g.hv.alloc(pages * 4096, Region::High);
        let quarantined_before = g.layer.stats().quarantined_pages;
        let ranges_before = g.layer.live_bus_ranges();
        g.hv.calls().inject_next(put, Injection::Fail(-1));
        g.hv.calls().inject_next(CallKind::UvUnshare, Injection::Fail(-1));
        // SAFETY: fresh pages, handed over (forever, if the error says they are quarantined).
        let e = unsafe { g.layer.alloc_coherent(&dev, PhysAddr(p), pages) }.unwrap_err();
        // The pages are still shared: the host can read them.
        for k in 0..pages {
            assert_eq!(g.hv.memory().state(p + k * 4096), PageState::Shared);
        }
        assert_eq!(g.layer.stats().quarantined_pages - quarantined_before, pages);
        assert!(
            matches!(e, DmaError::CoherentQuarantined { phys, pages: n, .. } if phys == PhysAddr(p) && u64::from(n) == pages),
            "{pages} pages: the error must name the quarantined pages, got {e:?}"
        );
        assert!(e.to_string().contains("quarantined"), "{e}");
        // Nothing else left behind: no entry names the pages, the device holds nothing.
        assert!(g.hv.reachable(1).iter().all(|r| r.phys < p || r.phys >= p + pages * 4096));
        assert_eq!(g.layer.live_bus_ranges(), ranges_before);
        assert_eq!(dev.live(), 0);
        g.layer.detach(dev).unwrap();
    }
}
