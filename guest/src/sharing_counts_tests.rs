//! The sharing errors count pages in a `u32` (so that `DmaError` is 24 bytes): a sharing request
//! of `2^32` pages or more is refused before the platform is called, and the largest accepted
//! request reports its quarantined pages exactly. No public call reaches 16 TiB without 16 TiB of
//! RAM (`alloc_coherent` zeroes its pages first, `add_pool` needs a slot record per slot), so the
//! layer's `share_pages` is called directly, over a platform that only counts.

extern crate std;

use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, Ordering};
use std::boxed::Box;

use crate::error::{SharingErrorKind, StatusCode};
use crate::{DmaError, DmaLayer, MemorySharing, PartialSharing, PhysAddr, PhysMemory, Platform};

/// Counts share calls; fails every call when `fail` (a share that did everything, an unshare
/// that did nothing: every page quarantined).
struct Counting {
    shares: AtomicU64,
    fail: bool,
}

const REFUSED: SharingErrorKind = SharingErrorKind::Hypervisor(StatusCode(-4));

impl MemorySharing for Counting {
    fn share(&self, _: PhysAddr, pages: u64) -> Result<(), PartialSharing> {
        self.shares.fetch_add(1, Ordering::Relaxed);
        if self.fail {
            return Err(PartialSharing { pages_done: pages, kind: REFUSED });
        }
        Ok(())
    }
    fn unshare(&self, _: PhysAddr, _: u64) -> Result<(), PartialSharing> {
        Err(PartialSharing { pages_done: 0, kind: REFUSED })
    }
}

// SAFETY: no range has a CPU mapping and no pointer is a guest address: the layer touches nothing.
unsafe impl PhysMemory for Counting {
    fn cpu_ptr(&self, _: PhysAddr, _: usize) -> Option<NonNull<u8>> {
        None
    }
    fn virt_to_phys(&self, _: *const u8, _: usize) -> Option<PhysAddr> {
        None
    }
    fn ram_end(&self) -> PhysAddr {
        PhysAddr(!0xfff)
    }
}

impl Platform for Counting {
    fn is_confidential(&self) -> bool {
        true
    }
}

fn layer(fail: bool) -> (&'static Counting, DmaLayer<'static, &'static Counting>) {
    let p: &'static Counting = Box::leak(Box::new(Counting { shares: AtomicU64::new(0), fail }));
    (p, DmaLayer::new(p))
}

#[test]
fn a_request_of_2_pow_32_pages_is_refused_before_the_platform_is_called() {
    let (p, layer) = layer(false);
    assert_eq!(layer.cold().share_pages(PhysAddr(0), 1 << 32), Err(DmaError::Overflow));
    assert_eq!(layer.cold().share_pages(PhysAddr(0), u64::MAX), Err(DmaError::Overflow));
    assert_eq!(p.shares.load(Ordering::Relaxed), 0, "nothing shared");
    assert_eq!(layer.stats().shared_pages, 0);
    assert_eq!(layer.cold().share_pages(PhysAddr(0), u64::from(u32::MAX)), Ok(()));
    assert_eq!(p.shares.load(Ordering::Relaxed), 1);
}

#[test]
fn the_largest_request_reports_every_quarantined_page() {
    let (_, layer) = layer(true);
    let pages = u64::from(u32::MAX);
    assert_eq!(
        layer.cold().share_pages(PhysAddr(0x1000), pages),
        Err(DmaError::SharingFailed { phys: PhysAddr(0x1000), quarantined: u32::MAX, kind: REFUSED })
    );
    // Counted with the `stats` part (without it the counter reads 0).
    assert_eq!(layer.stats().quarantined_pages, if crate::parts::STATS { pages } else { 0 });
    assert_eq!(
        layer.cold().unshare_pages(PhysAddr(0x1000), pages),
        Err(DmaError::UnsharingFailed { phys: PhysAddr(0x1000), quarantined: u32::MAX, kind: REFUSED })
    );
}
