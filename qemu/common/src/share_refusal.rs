//! A share the host or ultravisor refuses (out of resources, or hostile): both kernels check that a
//! coherent allocation then fails cleanly, as ccdma promises: nothing left shared, nothing kept,
//! and the next allocation works.

use core::sync::atomic::Ordering;
use virtio_drivers::{BufferDirection, Hal};

use crate::binding::{KernelBinding, KernelDma, Observed};
use crate::ledger::PageLedger;
use crate::report::Report;

/// Refuses the next share call of `ledger` and asks binding `B`'s HAL for one coherent page.
/// Returns the failures the layer counted meanwhile (the refusal is one, on purpose), for the
/// kernel's leak check.
pub fn check_refused_share<B: KernelBinding>(report: &mut Report, ledger: &PageLedger) -> u64 {
    let layer = match <B::Dma as KernelDma>::layer() {
        Ok(layer) => layer,
        Err(error) => {
            report.fail("sharing.refused", error);
            return 0;
        }
    };
    let (shared_before, failures_before) = (ledger.stats().shared_pages, layer.stats().total_failures());
    let coherent_before = B::stats().coherent_pages.load(Ordering::Relaxed);

    ledger.refuse_next_shares(1);
    let (refused_bus, _) = Observed::<B>::dma_alloc(1, BufferDirection::Both);
    // Disarm whatever the call did not use (a layer that never asked to share).
    ledger.refuse_next_shares(0);
    let failures = layer.stats().total_failures() - failures_before;
    let shared_after_refusal = ledger.stats().shared_pages;
    let kept = B::stats().coherent_pages.load(Ordering::Relaxed) - coherent_before;

    // The next request is served; it is given back at once.
    let (bus, cpu) = Observed::<B>::dma_alloc(1, BufferDirection::Both);
    let served = bus != 0;
    if served {
        // SAFETY: the allocation just made, of one page, used by nothing since.
        unsafe { Observed::<B>::dma_dealloc(bus, cpu, 1) };
    }
    let shared_end = ledger.stats().shared_pages;

    report.expect(
        "sharing.refused",
        refused_bus == 0 && shared_after_refusal == shared_before && kept == 0 && served && shared_end == shared_before,
        format_args!(
            "{}: a refused share made the coherent allocation fail (bus {refused_bus:#x}, {failures} failure \
             counted), {shared_before} pages shared before, {shared_after_refusal} after, {kept} pages kept; the \
             next allocation {} and was freed ({shared_end} pages shared at the end)",
            B::NAME,
            if served { "was served" } else { "FAILED" },
        ),
    );
    failures
}
