//! The closing checks (masks, TCE tables, ledger) and the report: path per device and why, bytes
//! each way, hypercalls by kind, TCE entries live, containment.

use ccdma_qemu_common::attach::Reason;
use ccdma_qemu_common::bus_map;
use ccdma_qemu_common::ledger::Violation;
use ccdma_qemu_common::println;
use ccdma_qemu_common::report::{Bytes, LayerTotals, Report};
use core::fmt;
use core::sync::atomic::Ordering;

use crate::config::{Batching, Config};
use crate::dma::{self, KernelBinding};
use crate::platform::PLATFORM;
use crate::scenario::{BlkBinding, Machine, NetABinding, NetBBinding, RngBinding, RngLowBinding};
use ccdma::IommuPolicy;

const FOUR_GIB: u64 = 1 << 32;

/// Every bus address a device was given is within its mask; 64-bit devices on a DDW get bus
/// addresses above 4 GiB; 32-bit ones reach the pool (above 4 GiB) only through bus addresses
/// below their mask.
pub fn check_masks(report: &mut Report) {
    fn one<B: KernelBinding>(report: &mut Report) {
        let Some(device) = B::slot().get() else { return };
        let mask = device.config().dma_mask;
        let Some((low, high)) = B::stats().bus_range() else {
            return report.fail(format_args!("dma.mask.{}", B::NAME), "device was never given an address");
        };
        let (phys_low, phys_high) = B::stats().phys_range().unwrap_or((0, 0));
        let ddw = device.path() == ccdma::DmaPath::IommuDdw;
        // A DDW device streams through the dynamic window (high bus addresses); its queues sit in
        // its slice of the default window.
        let ok = high <= mask.max_addr() && (!ddw || high >= FOUR_GIB) && phys_low >= FOUR_GIB;
        report.expect(
            format_args!("dma.mask.{}", B::NAME),
            ok,
            format_args!(
                "{mask} mask, given bus addresses {low:#x}..={high:#x} for memory at {phys_low:#x}..={phys_high:#x}{}",
                if ddw { " (streaming through the dynamic window, queues in the default one)" } else { " (default window, memory above 4 GiB)" }
            ),
        );
    }
    one::<BlkBinding>(report);
    one::<RngBinding>(report);
    one::<NetABinding>(report);
    one::<NetBBinding>(report);
    one::<RngLowBinding>(report);
}

/// Every entry ccdma wrote was read back and named only shared pages; the final tables hold only
/// entries that name shared pages.
pub fn check_tces(report: &mut Report) {
    let c = &PLATFORM.tce_calls().counters;
    let checked = c.checked.load(Ordering::Relaxed);
    let bad = c.bad_entries.load(Ordering::Relaxed);
    report.expect(
        "uv.tce_writes",
        checked > 0 && bad == 0,
        format_args!("{checked} entries read back with H_GET_TCE after ccdma wrote them; {bad} granted a page not shared"),
    );
    let (live, bad_live) = PLATFORM.tce_calls().scan_live();
    let ccdma_live = match dma::layer() {
        Ok(layer) => layer.iommu_stats().live_tces,
        Err(error) => return report.fail("uv.tce_tables", error),
    };
    report.expect(
        "uv.tce_tables",
        bad_live == 0 && live == ccdma_live,
        format_args!("{live} live entries in QEMU's tables (ccdma counts {ccdma_live}); {bad_live} name a page not shared"),
    );
}

/// The batching the configuration chose is the one used: per entry makes no indirect call and
/// shares no list page; with list pages every indirect call's page was shared, none carried more
/// than PAPR's 512 entries, and premapped ones carried full pages of 512.
pub fn check_batching(report: &mut Report, config: &Config) {
    let c = &PLATFORM.tce_calls().counters;
    let indirect = c.put_indirect.load(Ordering::Relaxed);
    let unshared = c.unshared_lists.load(Ordering::Relaxed);
    let most = c.indirect_most.load(Ordering::Relaxed);
    let over = c.indirect_over_512.load(Ordering::Relaxed);
    let i = match dma::layer() {
        Ok(layer) => layer.iommu_stats(),
        Err(error) => return report.fail("ccdma.batching", error),
    };
    let ok = match config.batching {
        Batching::PerEntry => indirect == 0,
        // Premapped, the pool's 2048 entries in the default window go in full 512-entry lists.
        Batching::PerCpu | Batching::SharedPage | Batching::PoolPages => {
            indirect > 0
                && unshared == 0
                && over == 0
                && (most == 512 || !matches!(config.policy, IommuPolicy::Premapped))
        }
    };
    report.expect(
        "ccdma.batching",
        ok,
        format_args!(
            "{}: {indirect} H_PUT_TCE_INDIRECT ({unshared} with an unshared list page; most entries in one {most}, {over} over 512); list page moved {}, fell back {}, waited {}",
            config.batching.name(),
            i.list_page_busy,
            i.list_page_fallbacks,
            i.list_page_waits
        ),
    );
}

/// The ledger agrees with ccdma; every mapping but the posted receive buffers was unmapped.
pub fn check_ledger(report: &mut Report, machine: &Machine) {
    let ledger = PLATFORM.ledger().stats();
    let layer = match dma::layer() {
        Ok(layer) => layer.stats(),
        Err(error) => return report.fail("ledger.consistent", error),
    };
    report.expect(
        "ledger.consistent",
        ledger.violations == 0 && ledger.shared_pages == layer.shared_pages,
        format_args!(
            "{} pages shared = {} ccdma says it shares; {} UV_SHARE_PAGE / {} UV_UNSHARE_PAGE; {} violations{}",
            ledger.shared_pages,
            layer.shared_pages,
            ledger.share_calls,
            ledger.unshare_calls,
            ledger.violations,
            ViolationNote(PLATFORM.ledger().first_violation())
        ),
    );
    let posted = (machine.nics() * ccdma_qemu_common::net::RX_BUFFERS) as u64;
    // The failures ccdma may count: the attach (rng-tiny) and the share refused on purpose.
    let refused = machine.failures_on_purpose();
    report.expect(
        "ccdma.no_leaks",
        layer.maps - layer.unmaps == posted && layer.total_failures() == refused,
        format_args!(
            "{} maps, {} unmaps, {posted} receive buffers still posted; {} failures ({refused} on purpose: refused attach and share)",
            layer.maps,
            layer.unmaps,
            layer.total_failures()
        ),
    );
}

/// One bus range of a device, labelled, or nothing.
struct Span(Option<(u64, u64)>, &'static str);

impl Span {
    /// Prefixed with a separator when another range was printed before it.
    fn after(self, other: bool) -> SpanAfter {
        SpanAfter(self, other)
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self.0 {
            Some((lo, hi)) => write!(f, "{lo:#x}..={hi:#x} ({})", self.1),
            None => Ok(()),
        }
    }
}

struct SpanAfter(Span, bool);

impl fmt::Display for SpanAfter {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        if self.0 .0.is_some() && self.1 {
            write!(f, ", ")?;
        }
        self.0.fmt(f)
    }
}

struct ViolationNote(Option<Violation>);

impl fmt::Display for ViolationNote {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self.0 {
            Some(violation) => write!(f, " (first: {violation})"),
            None => Ok(()),
        }
    }
}

/// The closing report.
pub fn print(config: &Config) {
    fn device_line<B: KernelBinding>() {
        let Some(device) = B::slot().get() else { return };
        let stats = B::stats();
        let [low, high] = stats.bus_ranges();
        println!(
            "  {:<8} {:>2}-bit  {:<15} to device {:>8}, from device {:>8}, {:>4} maps, bus {}{}",
            B::NAME,
            device.config().dma_mask.bits(),
            device.path().name(),
            Bytes(stats.bytes_to_device.load(Ordering::Relaxed)).to_padded(),
            Bytes(stats.bytes_from_device.load(Ordering::Relaxed)).to_padded(),
            stats.maps.load(Ordering::Relaxed),
            Span(low, "below 4 GiB"),
            Span(high, "above 4 GiB").after(low.is_some()),
        );
        println!("  {:<8} why: {}", "", Reason::<B>::of(device));
    }
    println!(
        "--- ccdma report: pseries configuration {} ({}-endian, {}) ---",
        config.name,
        crate::ENDIAN,
        config.batching.name()
    );
    println!("devices managed by ccdma (path and why; bytes through the bounce pool):");
    device_line::<BlkBinding>();
    device_line::<RngBinding>();
    device_line::<NetABinding>();
    device_line::<NetBBinding>();
    device_line::<RngLowBinding>();
    bus_map::print_header();
    bus_map::print_device::<BlkBinding>();
    bus_map::print_device::<RngBinding>();
    bus_map::print_device::<NetABinding>();
    bus_map::print_device::<NetBBinding>();
    bus_map::print_device::<RngLowBinding>();
    let Ok(layer) = dma::layer() else {
        return println!("ccdma: no layer (dma::init did not build it)");
    };
    println!("{}", LayerTotals(&layer.stats()));
    let i = layer.iommu_stats();
    println!(
        "ccdma TCE entries: {} written, {} cleared, {} live; {} strict maps",
        i.entries_written, i.entries_cleared, i.live_tces, i.strict_maps
    );
    let c = &PLATFORM.tce_calls().counters;
    let n = |x: &core::sync::atomic::AtomicU64| x.load(Ordering::Relaxed);
    println!(
        "hypercalls: H_PUT_TCE {}, H_PUT_TCE_INDIRECT {}, H_STUFF_TCE {}, H_GET_TCE {} (ccdma) + {} (ultravisor checks), errors {}",
        n(&c.put),
        n(&c.put_indirect),
        n(&c.stuff),
        n(&c.get),
        n(&c.get_check),
        n(&c.errors)
    );
    println!(
        "RTAS DDW calls: query {}, create {}, remove {}; window {}",
        n(&c.ddw_query),
        n(&c.ddw_create),
        n(&c.ddw_remove),
        DdwNote(PLATFORM.tce_calls().ddw())
    );
    let l = PLATFORM.ledger().stats();
    println!(
        "ultravisor: {} pages shared now, {} UV_SHARE_PAGE, {} UV_UNSHARE_PAGE, {} violations; {} TCEs checked, {} bad",
        l.shared_pages,
        l.share_calls,
        l.unshare_calls,
        l.violations,
        n(&c.checked),
        n(&c.bad_entries)
    );
    println!("faults: blocked device accesses are listed by the runner from QEMU's guest_errors log");
}

struct DdwNote(Option<(u32, u64, u64, u32)>);

impl fmt::Display for DdwNote {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self.0 {
            Some((liobn, start, size, shift)) => {
                write!(f, "LIOBN {liobn:#x} bus {start:#x}+{size:#x}, {} KiB pages", (1u64 << shift) >> 10)
            }
            None => write!(f, "none"),
        }
    }
}
