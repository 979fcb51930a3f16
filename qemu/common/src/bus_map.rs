//! A text map of each managed device's bus address space, for the reports: its windows (behind an
//! IOMMU), and in address order what occupies them: reserved ranges, pools (premapped into the
//! window, or at their shared bus address without an IOMMU), coherent buffers, strict mappings and
//! scatter-gather lists, and the live streaming mappings inside the pools. Everything comes from the
//! layer (`windows_of`, `bus_ranges_of`, `pool_bus_of`, the pools' live runs), as ccdma-sim's SVG
//! does; nothing is inferred from the driver side.

use ccdma::iommu::{BusRange, RangeKind, WindowGeometry};
use ccdma::{DmaDirection, DmaLayer, DmaPath, Platform, MAX_POOLS};
use core::fmt;
use core::sync::atomic::Ordering;

use crate::binding::{KernelBinding, KernelDma};
use crate::println;

/// Lines printed per device before the rest are summed up.
const MAX_LINES: usize = 14;
/// Used ranges read per device.
const MAX_RANGES: usize = 64;
/// Lines kept per device.
const LINES: usize = 48;

/// The lines and bus ranges of the device being printed: statics, not stack (2,304 and 2,048 bytes
/// of frame; scripts/kernel-budgets.sh). The map is printed from one CPU, one device at a time.
static SCRATCH: spin::Mutex<([Line; LINES], [BusRange; MAX_RANGES])> =
    spin::Mutex::new(([Line::NONE; LINES], [BusRange::EMPTY; MAX_RANGES]));

/// What one line of the map shows.
#[derive(Clone, Copy)]
enum What {
    /// A used range of an IOMMU window, as the layer records it.
    Range(RangeKind),
    /// A pool at its shared bus address (no IOMMU).
    Pool(usize),
    /// A live bounced mapping or list run inside a pool.
    Live { dir: DmaDirection, scatter_gather: bool },
}

#[derive(Clone, Copy)]
struct Line {
    start: u64,
    len: u64,
    /// Guest physical address behind the start, where the layer records it.
    phys: Option<u64>,
    what: What,
}

impl Line {
    const NONE: Line = Line { start: 0, len: 0, phys: None, what: What::Pool(0) };

    /// Live runs print under the pool that holds them.
    fn depth(&self) -> usize {
        usize::from(matches!(self.what, What::Live { .. }))
    }
}

impl fmt::Display for Line {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let end = self.start + self.len.max(1) - 1;
        let indent = if self.depth() == 1 { "  " } else { "" };
        write!(f, "      {indent}{:#x}..={end:#x} {}  ", self.start, Size(self.len))?;
        match self.what {
            What::Range(RangeKind::Reserved) => write!(f, "reserved")?,
            What::Range(RangeKind::Premap { pool }) => write!(f, "pool #{pool} (premapped)")?,
            What::Range(RangeKind::Mapping) => write!(f, "streaming mapping (strict entries)")?,
            What::Range(RangeKind::Coherent) => write!(f, "coherent buffer")?,
            What::Range(RangeKind::SgList) => write!(f, "scatter-gather list")?,
            What::Range(RangeKind::Quarantined) => write!(f, "quarantined")?,
            What::Range(RangeKind::Private) => write!(f, "private mapping of an accepted device")?,
            What::Pool(i) => write!(f, "pool #{i} (shared, bus = its address)")?,
            What::Live { dir, scatter_gather } => {
                let what = if scatter_gather { "live list run" } else { "live mapping" };
                write!(f, "{what}, {}", dir_name(dir))?
            }
        }
        match self.phys {
            Some(phys) => write!(f, " -> phys {phys:#x}"),
            None => Ok(()),
        }
    }
}

/// A size in the largest binary unit that divides it exactly (4 KiB, 2 MiB, 2500 B), eight
/// characters wide.
struct Size(u64);

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let (value, unit) = match self.0 {
            0 => (0, "B"),
            b if b % (1 << 30) == 0 => (b >> 30, "GiB"),
            b if b % (1 << 20) == 0 => (b >> 20, "MiB"),
            b if b % (1 << 10) == 0 => (b >> 10, "KiB"),
            b => (b, "B"),
        };
        write!(f, "{value:>4} {unit:<3}")
    }
}

fn dir_name(dir: DmaDirection) -> &'static str {
    match dir {
        DmaDirection::ToDevice => "to device",
        DmaDirection::FromDevice => "from device",
        DmaDirection::Bidirectional => "both ways",
    }
}

/// The map's lines for one device, sorted by address (a pool before the live runs inside it).
/// Returns how many lines there are and how many used ranges did not fit the buffer.
fn lines_of<P: Platform>(
    layer: &DmaLayer<'_, P>,
    dev: &ccdma::Device,
    out: &mut [Line],
    ranges: &mut [BusRange; MAX_RANGES],
) -> (usize, usize) {
    let mut n = 0;
    let mut push = |line: Line| {
        if let Some(slot) = out.get_mut(n) {
            *slot = line;
        }
        n += 1;
    };
    let used = layer.bus_ranges_of(dev, ranges);
    for r in &ranges[..used.min(MAX_RANGES)] {
        let phys = (!matches!(r.kind, RangeKind::Reserved)).then_some(r.phys);
        push(Line { start: r.start, len: r.len, phys, what: What::Range(r.kind) });
    }
    let iommu = layer.windows_of(dev) != (None, None);
    // Strict mappings and lists are used ranges of their own (above); the pools are not in the window.
    if layer.path_of(dev) == DmaPath::IommuStrict {
        return sort(out, n, used);
    }
    for i in 0..MAX_POOLS {
        let (Some((pool, _)), Some(bus)) = (layer.pool(i), layer.pool_bus_of(dev, i)) else { continue };
        if !iommu {
            push(Line {
                start: bus.0,
                len: pool.len() as u64,
                phys: Some(pool.phys().0),
                what: What::Pool(i),
            });
        }
        pool.for_each_live(|run| {
            if run.device == dev.serial() {
                let start = bus.0 + (run.phys.0 - pool.phys().0);
                let what = What::Live { dir: run.dir, scatter_gather: run.scatter_gather };
                push(Line { start, len: run.len as u64, phys: Some(run.phys.0), what });
            }
        });
    }
    sort(out, n, used)
}

fn sort(out: &mut [Line], n: usize, used: usize) -> (usize, usize) {
    let shown = n.min(out.len());
    // Insertion sort: a few dozen lines, and core's sorts keep a scratch of elements on the stack.
    for i in 1..shown {
        let mut j = i;
        while j > 0 && (out[j - 1].start, out[j - 1].depth()) > (out[j].start, out[j].depth()) {
            out.swap(j - 1, j);
            j -= 1;
        }
    }
    (n, used.saturating_sub(MAX_RANGES))
}

struct Window(&'static str, WindowGeometry);

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let w = &self.1;
        let end = w.start + w.size.max(1) - 1;
        write!(
            f,
            "    {:<7} {:#x}..={end:#x} {}, {} pages, LIOBN {:#x}",
            self.0,
            w.start,
            Size(w.size),
            Size(w.page_size()),
            w.liobn
        )
    }
}

/// Prints the map of binding `B`'s device (nothing if it was never attached).
pub fn print_device<B: KernelBinding>() {
    let Some(dev) = B::slot().get() else { return };
    // An attached device implies the layer; without one there is nothing to print.
    let Ok(layer) = <B::Dma as KernelDma>::layer() else { return };
    let path = layer.path_of(dev);
    println!("  {:<9} {:>2}-bit  {}", B::NAME, dev.config().dma_mask.bits(), path.name());
    let mut scratch = SCRATCH.lock();
    let (lines, ranges) = &mut *scratch;
    let (n, ranges_left) = lines_of(layer, dev, lines, ranges);
    let lines = &lines[..n.min(lines.len())];
    let mut printed = 0;
    let mut show = |line: &Line| {
        if printed < MAX_LINES {
            println!("{line}");
        }
        printed += 1;
    };
    let (window, ddw) = layer.windows_of(dev);
    let windows = [("window", window), ("DDW", ddw)];
    if window.is_none() && ddw.is_none() {
        println!("    no IOMMU: the device reaches the pools at their shared bus addresses");
        lines.iter().for_each(&mut show);
    }
    for (name, w) in windows {
        let Some(w) = w else { continue };
        println!("{}", Window(name, w));
        let inside = |l: &&Line| l.start >= w.start && l.start - w.start < w.size;
        lines.iter().filter(inside).for_each(&mut show);
    }
    let coherent = B::stats().coherent_pages.load(Ordering::Relaxed);
    let untold = (n - lines.len()) + ranges_left;
    if printed > MAX_LINES || untold > 0 {
        println!("      ... {} more", printed.saturating_sub(MAX_LINES) + untold);
    }
    if window.is_none() && ddw.is_none() && coherent > 0 {
        println!("      + coherent buffers: {coherent} pages, at their own shared addresses");
    }
}

/// The header line of the map section.
pub fn print_header() {
    println!("bus address map (per device; used ranges in address order; live mappings under their pool):");
}
