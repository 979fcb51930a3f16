//! The report: every line ccdma-sim prints, from what the workload found and what the layer says.
//! Paths and reasons are the layer's own (`DmaPath::name`, `PathReason` and `DmaError` texts).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};

use ccdma::iommu::{BusRange, RangeKind};
use ccdma::{Device, DmaError, DmaLayer, DmaMask, DmaPath, IommuPolicy, StatsSnapshot};
use ccdma_hv_model::{Fault, Hypervisor, PageTouches, Personality, Region};

use crate::args::{DeviceSpec, Options};
use crate::num::{human, size_label};
use crate::table::Verdict;
use crate::transfer::DeviceReport;
use crate::workload::{bus_ranges, Calls};

type Layer = DmaLayer<'static, &'static Hypervisor>;

static STDOUT_CLOSED: AtomicBool = AtomicBool::new(false);

/// Print `text` as is. Once stdout is closed (`ccdma-sim | head -1`), printing stops quietly and the
/// run goes on to its exit status.
pub fn emit(text: &str) {
    if STDOUT_CLOSED.load(Ordering::Relaxed) {
        return;
    }
    let mut out = std::io::stdout().lock();
    if out.write_all(text.as_bytes()).and_then(|()| out.flush()).is_err() {
        STDOUT_CLOSED.store(true, Ordering::Relaxed);
    }
}

pub fn header(opts: &Options) -> String {
    let kind = match (opts.confidential, opts.personality) {
        (true, Personality::Pseries) => "pseries Secure VM (confidential, ultravisor sharing)",
        (true, Personality::Tdx) => "TDX guest (confidential, MapGPA sharing)",
        (false, Personality::Pseries) => "pseries guest, not confidential",
        (false, Personality::Tdx) => "TDX-personality guest, not confidential",
        (true, Personality::Snp) => {
            "SEV-SNP guest (confidential, PVALIDATE + Page State Change sharing, C-bit 51 clear on the bus)"
        }
        (false, Personality::Snp) => "SEV-SNP-personality guest, not confidential",
        (true, Personality::Cca) => {
            "Arm CCA realm (confidential, RSI_IPA_STATE_SET sharing, devices use the alias at IPA bit 47)"
        }
        (false, Personality::Cca) => "Arm CCA-personality guest, not confidential",
    };
    let iommu = match opts.iommu {
        None => "no IOMMU".to_string(),
        Some(p) => format!(
            "TCE IOMMU ({} policy, {})",
            if p == IommuPolicy::Strict { "strict" } else { "premapped" },
            if opts.ddw { "DDW offered" } else { "no DDW" }
        ),
    };
    format!("ccdma-sim: {kind}, {} RAM, {iommu}\npools:\n", human(opts.ram))
}

/// The layer's refusal of a pool, with the command-line pool its index names.
pub fn pool_error(e: &DmaError, arg_of_layer: &BTreeMap<usize, usize>, pools: &[(u64, u64)]) -> String {
    let mut text = e.to_string();
    if let DmaError::PoolOverlap { pool } = *e {
        if let Some((&n, &(p, l))) = arg_of_layer.get(&pool).map(|n| (n, &pools[*n])) {
            let _ = write!(text, " (layer pool #{pool} is pool {n}, phys {p:#x}..{:#x})", p + l);
        }
    }
    text
}

pub fn pool_added(layer: &Layer, i: usize, n: usize, opts: &Options) -> String {
    let (phys, len) = opts.pools[n];
    let (p, bus) = layer.pool(i).expect("pool just added");
    let bus = if opts.iommu.is_some() { "bus per device window".to_string() } else { format!("bus {bus}") };
    format!(
        "  pool {n} = #{i}  phys {phys:#x}..{:#x} ({}), {bus}, {} slots of {}, largest mapping {}{}\n",
        phys + len,
        human(len),
        p.slots(),
        human(p.slot_size() as u64),
        human(p.max_mapping() as u64),
        if opts.confidential { ", shared with the hypervisor" } else { "" }
    )
}

pub fn pool_refused(n: usize, phys: u64, len: u64, e: &str) -> String {
    format!("  pool {n}       phys {phys:#x}, {}: NOT ADDED: {e}\n", size_label(len))
}

/// `UvShare x2, MapGpa x5`, or `none`.
pub fn calls_delta(before: &Calls, after: &Calls) -> String {
    let parts: Vec<String> = after
        .iter()
        .filter_map(|(k, &n)| {
            let d = n - before.get(k).copied().unwrap_or(0);
            (d > 0).then(|| format!("{k:?} x{d}"))
        })
        .collect();
    if parts.is_empty() {
        "none".to_string()
    } else {
        parts.join(", ")
    }
}

pub fn setup(hv: &Hypervisor, at_start: &Calls, stats: &StatsSnapshot) -> String {
    format!(
        "  set-up calls: {}; pages shared now: {} (model) / {} (layer)\n",
        calls_delta(at_start, &crate::workload::call_counts(hv)),
        hv.shared_pages(),
        stats.shared_pages
    )
}

pub fn workload_line(opts: &Options, region: Region) -> String {
    let sizes: Vec<String> = opts.sizes.iter().map(|&s| size_label(s)).collect();
    let place = match (opts.buffers, region) {
        (Region::High, Region::High) => "above 4 GiB",
        (Region::High, _) => "below 4 GiB (RAM too small for high buffers)",
        _ => "below 4 GiB",
    };
    format!(
        "workload: sizes {} x 3 directions x {} round(s) per device; guest buffers {place}; every byte \
         checked by the model's device\n",
        sizes.join(", "),
        opts.rounds
    )
}

pub fn device_header(spec: &DeviceSpec, id: u32, mask: Result<DmaMask, DmaError>) -> String {
    let mask = mask.map_or_else(|_| format!("{} bits", spec.mask_bits), |m| m.to_string());
    format!("\ndevice {} (id {id}, mask {mask})\n", spec.name)
}

/// Every pool's bus range, as `#0 bus 0x800000..0xc00000 (4 MiB)`.
fn pools_on_bus(layer: &Layer, dev: Option<&Device>) -> Vec<String> {
    let indices: Vec<usize> = match dev {
        Some(d) => d.pool_indices().collect(),
        None => (0..ccdma::MAX_POOLS).filter(|&i| layer.pool(i).is_some()).collect(),
    };
    indices
        .into_iter()
        .filter_map(|i| {
            let (p, own) = layer.pool(i)?;
            let bus = dev.and_then(|d| layer.pool_bus_of(d, i)).unwrap_or(own).0;
            let len = p.len() as u64;
            Some(format!("#{i} bus {bus:#x}..{:#x} ({})", bus + len, human(len)))
        })
        .collect()
}

/// `alias_bit`: the bit the platform sets in every shared bus address (Arm CCA's alias), if any.
pub fn refused(layer: &Layer, e: &DmaError, verdict: Verdict, alias_bit: Option<u32>) -> String {
    let mut out = format!("  REFUSED   {e}\n");
    if let (DmaError::NoPath { mask, .. }, Some(bit)) = (e, alias_bit) {
        if mask.bits() <= bit {
            let _ = writeln!(
                out,
                "  why       Arm CCA: a device reaches shared memory through the alias, the IPA with bit {bit} \
                 ({}) set, so every pool's bus address lies above a mask of {} bits: give the device a mask of \
                 at least {} bits",
                crate::num::grouped_hex(1u64 << bit),
                mask.bits(),
                bit + 1
            );
        }
    }
    let pools = pools_on_bus(layer, None);
    let pools = if pools.is_empty() { "none".to_string() } else { pools.join(", ") };
    let _ = writeln!(out, "  pools     {pools}");
    let _ = writeln!(out, "  result    {}", verdict.word());
    out
}

fn kind_name(kind: RangeKind) -> String {
    match kind {
        RangeKind::Reserved => "reserved".into(),
        RangeKind::Premap { pool } => format!("pool #{pool} premapped"),
        RangeKind::Mapping => "mapping".into(),
        RangeKind::Coherent => "coherent buffer".into(),
        RangeKind::SgList => "scatter-gather list".into(),
        RangeKind::Quarantined => "quarantined".into(),
        RangeKind::Private => "private mapping (accepted device)".into(),
    }
}

/// Path, pools and (behind the IOMMU) each window with the used ranges that lie in it.
pub fn attached(layer: &Layer, dev: &Device) -> String {
    let mut out = String::new();
    let path = layer.path_of(dev);
    match layer.path_reason(dev) {
        Some(reason @ ccdma::PathReason::StrictPolicy) => writeln!(
            out,
            "  path      {}: {reason}\n  why       strict: every map enters the buffer's pages into the device's \
             IOMMU window and every unmap clears them, so the device reaches only buffers live for it; the cost \
             is hypercalls (H_PUT_TCE / H_STUFF_TCE) on every map and unmap; --iommu premapped enters the pools \
             once at attach instead (no hypercall per transfer, the device reaches all of every pool)",
            path.name()
        ),
        Some(reason) => writeln!(out, "  path      {}: {reason}", path.name()),
        None => writeln!(out, "  path      {}", path.name()),
    }
    .ok();
    if dev.trust().is_accepted() {
        let _ = writeln!(
            out,
            "  trust     accepted by the platform (TDISP RUN, --accept): no bounce, no shared page; \
             shared buffers only on request (CC_SHARED)"
        );
    }
    let pools = pools_on_bus(layer, Some(dev));
    let ranges = bus_ranges(layer, dev);
    // Strict windows hold no pool; an accepted device behind an IOMMU shows its pools only when they
    // are premapped (its shared buffers bounce through them).
    let premapped = ranges.iter().any(|r| matches!(r.kind, RangeKind::Premap { .. }));
    let no_pools = path == DmaPath::IommuStrict || (path == DmaPath::TrustedIommu && !premapped);
    if !pools.is_empty() && !no_pools {
        let _ = writeln!(out, "  pools     {} (in the order tried)", pools.join(", "));
    }
    let (window, ddw) = layer.windows_of(dev);
    let mut shown = vec![false; ranges.len()];
    for (what, w) in [("window", window), ("DDW", ddw)] {
        let Some(w) = w else { continue };
        let end = w.start.saturating_add(w.size);
        let _ = writeln!(
            out,
            "  {what:<9} LIOBN {:#x}: bus {:#x}..{end:#x} ({}), {} IOMMU pages",
            w.liobn,
            w.start,
            human(w.size),
            human(w.page_size())
        );
        let inside: Vec<(usize, &BusRange)> =
            ranges.iter().enumerate().filter(|(_, r)| r.start >= w.start && r.start < end).collect();
        for &(i, _) in &inside {
            shown[i] = true;
        }
        out += &range_lines(inside.into_iter().map(|(_, r)| r));
    }
    let outside: Vec<&BusRange> = ranges.iter().zip(&shown).filter(|(_, &s)| !s).map(|(r, _)| r).collect();
    if !outside.is_empty() {
        let _ = writeln!(out, "  outside every window:");
        out += &range_lines(outside.into_iter());
    }
    out
}

/// One aligned line per used range: `0x1000..0x401000  4 MiB  pool #0 premapped (phys 0x800000)`.
fn range_lines<'a>(ranges: impl Iterator<Item = &'a BusRange>) -> String {
    let rows: Vec<(String, String, String)> = ranges
        .map(|r| {
            let what = match r.kind {
                RangeKind::Reserved => kind_name(r.kind),
                k => format!("{} (phys {:#x})", kind_name(k), r.phys),
            };
            (format!("{:#x}..{:#x}", r.start, r.end()), human(r.len), what)
        })
        .collect();
    let w0 = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    let w1 = rows.iter().map(|r| r.1.len()).max().unwrap_or(0);
    rows.iter().map(|(a, b, c)| format!("            {a:<w0$}  {b:>w1$}  {c}\n")).collect()
}

/// Faults summarised by kind: `Read NoEntry x3 (first at bus 0x1000)`.
pub fn fault_kinds(faults: &[Fault]) -> Vec<String> {
    let mut kinds: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for f in faults {
        kinds.entry(format!("{:?} {:?}", f.kind, f.reason)).or_insert((0, f.bus)).0 += 1;
    }
    kinds.into_iter().map(|(k, (n, bus))| format!("{k} x{n} (first at bus {bus:#x})")).collect()
}

pub fn device_result(
    r: &DeviceReport,
    before: &StatsSnapshot,
    after: &StatsSnapshot,
    (dev_read, dev_wrote): (u64, u64),
    touches: PageTouches,
    (calls_before, calls_attach, calls_end): &(Calls, Calls, Calls),
    buf_phys: u64,
) -> String {
    let mut out = String::new();
    let (to_dev, from_dev) = (r.payload_to_device, r.payload_from_device);
    let _ = writeln!(
        out,
        "  moved     to device {to_dev} B ({}), from device {from_dev} B ({}); the model's device DMA read \
         {dev_read} B (with its zero-fill checks), wrote {dev_wrote} B",
        human(to_dev),
        human(from_dev)
    );
    let _ = writeln!(
        out,
        "  bounced   {} of {} maps; copies into shared memory {} B, back to the guest (incl. sub-range \
         syncs) {} B",
        after.bounced_maps - before.bounced_maps,
        after.maps - before.maps,
        after.bytes_to_device - before.bytes_to_device,
        after.bytes_from_device - before.bytes_from_device
    );
    let moved_mib = (to_dev + from_dev) as f64 / (1u64 << 20) as f64;
    let _ = writeln!(
        out,
        "  pages     the device's DMA touched {} shared and {} private page pieces: {:.0} shared pages per \
         MiB moved",
        touches.shared,
        touches.private,
        if moved_mib > 0.0 { touches.shared as f64 / moved_mib } else { 0.0 }
    );
    let _ = writeln!(
        out,
        "  calls     at attach: {}; during the workload: {}",
        calls_delta(calls_before, calls_attach),
        calls_delta(calls_attach, calls_end)
    );
    let _ = writeln!(out, "  faults    {} unexpected", r.unexpected_faults.len());
    for k in fault_kinds(&r.unexpected_faults) {
        let _ = writeln!(out, "            UNEXPECTED {k}");
    }
    if r.permission_refusals > 0 {
        let _ = writeln!(
            out,
            "            expected: Read Permission x{} (device reads of write-only from-device mappings)",
            r.permission_refusals
        );
    }
    match &r.probe {
        Some(Ok(f)) => {
            let _ = writeln!(
                out,
                "            expected: {:?} {:?} x1 (containment probe: the device reads the private buffer at \
                 {buf_phys:#x})",
                f.kind, f.reason
            );
        }
        Some(Err(msg)) => {
            let _ = writeln!(out, "            CONTAINMENT FAILURE: {msg}");
        }
        None if r.probe_skipped_trusted => {
            let _ = writeln!(
                out,
                "            probe skipped: an accepted device without IOMMU reaches private memory on the \
                 platform's word"
            );
        }
        None => {}
    }
    if r.private_accesses > 0 || !r.private_outside.is_empty() {
        let _ = writeln!(
            out,
            "  private   {} device accesses in private memory, {} outside its own buffer",
            r.private_accesses,
            r.private_outside.len()
        );
        for a in r.private_outside.iter().take(5) {
            let _ = writeln!(out, "            OUTSIDE {:?} {} B at phys {:#x}", a.kind, a.len, a.phys);
        }
    }
    for (err, n) in &r.map_errors {
        let _ = writeln!(out, "  ERROR     {err} (x{n})");
    }
    let _ = writeln!(
        out,
        "  verified  {} of {} transfers exact; slots leaked: {}",
        r.verified, r.transfers, r.leaked_slots
    );
    for m in r.mismatches.iter().take(5) {
        let _ = writeln!(out, "            MISMATCH {m}");
    }
    if r.mismatches.len() > 5 {
        let _ = writeln!(out, "            ... {} mismatches in all", r.mismatches.len());
    }
    out
}

pub fn teardown(
    hv: &Hypervisor,
    calls_before: &Calls,
    errors: &[String],
    quarantined: u64,
    iommu: bool,
) -> String {
    let mut out = String::new();
    for e in errors {
        let _ = writeln!(out, "\nTEARDOWN ERROR: {e}");
    }
    let _ = writeln!(
        out,
        "\nteardown: {}; calls {}; pages shared now {} (model); quarantined {quarantined}",
        if errors.is_empty() { "devices detached, pools released" } else { "INCOMPLETE" },
        calls_delta(calls_before, &crate::workload::call_counts(hv)),
        hv.shared_pages(),
    );
    if iommu {
        let tce = hv.tce_counters();
        let _ = writeln!(
            out,
            "IOMMU after teardown: {} live entries, {} DDWs (entries written {}, cleared {})",
            tce.live_entries, tce.ddws, tce.entries_written, tce.entries_cleared
        );
    }
    out
}
