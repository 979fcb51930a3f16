//! Issue 18 item 3: an accepted device's entries name private pages, so they must never be written
//! into a TCE list page (shared with the hypervisor): the model counts every private address a guest
//! puts in a list page (`listed_private_entries`), and it must stay 0 with `SharedPage` and
//! `PerCpuPages` batching, for multi-page streaming mappings and for private coherent buffers.

mod iommu_support;

use ccdma::{DmaAttrs, DmaDirection, IommuPolicy, PhysAddr};
use ccdma_hv_model::Region;
use ccdma_tests::*;
use iommu_support::*;

const ACCEPTED: u32 = 1;

#[test]
fn private_entries_never_enter_a_shared_list_page() {
    for per_cpu_pages in [0, 2] {
        for policy in [IommuPolicy::Premapped, IommuPolicy::Strict] {
            let what = format!("{policy:?}, per_cpu_pages {per_cpu_pages}");
            let g = iommu_guest(Opts { per_cpu_pages, ..Opts::new(policy) });
            g.hv.tdisp_bind(ACCEPTED);
            let mut dev = g.device(ACCEPTED, 64);
            g.layer.accept(&mut dev).unwrap();
            let model = g.hv.device(ACCEPTED);
            let indirect_before = g.hv.tce_counters();
            // Streaming: 5 pages at an odd offset, both directions.
            let len = 4 * 4096 + 100;
            let phys = g.hv.alloc(len as u64 + 4096, Region::High) + 0x40;
            let data = pattern(len, 7);
            g.hv.memory().write(phys, &data);
            // SAFETY: a fresh allocation, used by this mapping only.
            let buf = unsafe { g.hv.slice_mut(phys, len) };
            let m = g.layer.map(&dev, buf, DmaDirection::Bidirectional, DmaAttrs::NONE).unwrap();
            assert_eq!(model.read(m.bus_addr().0, len).unwrap(), data, "{what}");
            m.unmap().unwrap();
            // A private coherent buffer of 3 pages.
            let cp = g.hv.alloc(3 * 4096, Region::High);
            // SAFETY: fresh pages, ours until freed.
            let c = unsafe { g.layer.alloc_coherent(&dev, PhysAddr(cp), 3) }.unwrap();
            assert!(!c.is_shared(), "{what}");
            model.write(c.bus_addr().0 + 8192, b"ring").unwrap();
            g.layer.free_coherent(&dev, c).unwrap();
            assert_eq!(g.hv.memory().read(cp + 8192, 4), b"ring", "{what}");
            let tc = g.hv.tce_counters();
            assert_eq!(
                tc.listed_private_entries, 0,
                "{what}: private addresses written into a shared list page"
            );
            assert_eq!(tc.unshared_lists, indirect_before.unshared_lists, "{what}");
            // Untrusted work on the same layer still batches through the list page.
            let calls = g.hv.calls().count(ccdma_hv_model::CallKind::PutTceIndirect);
            g.layer.revoke(&mut dev).unwrap();
            let mut plain = vec![1u8; 3 * 4096];
            let m = g.layer.map(&dev, &mut plain, DmaDirection::ToDevice, DmaAttrs::NONE).unwrap();
            m.unmap().unwrap();
            if policy == IommuPolicy::Strict {
                assert!(
                    g.hv.calls().count(ccdma_hv_model::CallKind::PutTceIndirect) > calls,
                    "{what}: untrusted strict mappings still use the list page"
                );
            }
            assert_eq!(g.hv.tce_counters().listed_private_entries, 0, "{what}");
            assert!(g.hv.private_accesses().iter().all(|a| a.device == ACCEPTED));
            g.layer.detach(dev).unwrap();
        }
    }
}
