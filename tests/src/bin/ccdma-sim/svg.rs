//! `--svg FILE`: each device's bus address space, drawn with the `svg` crate.
//!
//! Per device one band per window (the default window and the DDW behind the IOMMU, each on its own
//! scale: the DDW sits at 2^59), or one band of bus = guest physical addresses without an IOMMU. In a
//! band: reserved ranges (page 0 among them), the pools, a live coherent buffer and a live mapping,
//! each a `<rect>` carrying `data-kind`, `data-start` and `data-end` (hex), listed with their addresses
//! under the band. The regions come from the layer (`windows_of`, `bus_ranges_of`, `pool_bus_of`).
//!
//! Readability (issue 22): a band's caption sits above its bar; pools alternate shades so adjacent
//! ones stay apart; an item narrower than a few pixels is drawn wider and full height (it is not a
//! divider), and the band zooms (repeatedly) into each cluster of such items until they are readable;
//! zoomed copies carry `data-zoom-kind/start/end`. Addresses in text are grouped 4 digits at a time.

use ccdma::iommu::RangeKind;
use ccdma::{Device, DmaLayer};
use ccdma_hv_model::Hypervisor;
use svg::node::element::{Group, Line, Rectangle, Text};
use svg::Document;

use crate::num::{grouped_hex as gx, human};
use crate::workload::bus_ranges;

const WIDTH: f64 = 1100.0;
const LEFT: f64 = 20.0;
const BAR: f64 = 22.0;
const LINE: f64 = 15.0;

/// One drawn range of bus addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Region {
    /// `window`, `ddw`, `bus`, `reserved`, `pool`, `mapping`, `coherent`, `sg`, `quarantined`.
    pub kind: &'static str,
    pub start: u64,
    pub end: u64,
    pub label: String,
}

/// A buffer the device holds while the drawing is captured (a mapping or a coherent buffer).
pub struct Live {
    pub kind: &'static str,
    pub bus: u64,
    pub len: u64,
}

struct Band {
    frame: Region,
    regions: Vec<Region>,
}

pub struct DeviceDrawing {
    title: String,
    /// One past the highest bus address the device's mask reaches (`None` for a 64-bit mask).
    mask_end: Option<u64>,
    bands: Vec<Band>,
    notes: Vec<String>,
}

fn range_kind(kind: RangeKind) -> (&'static str, String) {
    match kind {
        RangeKind::Reserved => ("reserved", "reserved".into()),
        RangeKind::Premap { pool } => ("pool", format!("pool #{pool} premapped")),
        RangeKind::Mapping => ("mapping", "live mapping (strict entries)".into()),
        RangeKind::Coherent => ("coherent", "coherent buffer".into()),
        RangeKind::SgList => ("sg", "scatter-gather list".into()),
        RangeKind::Quarantined => ("quarantined", "quarantined".into()),
        RangeKind::Private => ("mapping", "live private mapping of an accepted device".into()),
    }
}

fn region(kind: &'static str, start: u64, end: u64, what: &str) -> Region {
    Region { kind, start, end, label: format!("{what}: {}..{} ({})", gx(start), gx(end), human(end - start)) }
}

impl DeviceDrawing {
    /// The device's bus address space now, as the layer reports it, with `live` buffers on top.
    pub fn capture(
        layer: &DmaLayer<'static, &'static Hypervisor>,
        dev: &Device,
        name: &str,
        live: &[Live],
    ) -> DeviceDrawing {
        let path = layer.path_of(dev);
        let mask = dev.config().dma_mask;
        let title = format!("device {name} ({}-bit mask): {}", mask.bits(), path.name());
        let mut regions: Vec<Region> = Vec::new();
        // The device's pools: bus range and the guest physical address behind it.
        // Behind an IOMMU only a pool premapped into a window has a bus range of its own (strict
        // entries are per mapping).
        let ranges = bus_ranges(layer, dev);
        let premapped: Vec<usize> = ranges
            .iter()
            .filter_map(
                |r| if let RangeKind::Premap { pool } = r.kind { Some(usize::from(pool)) } else { None },
            )
            .collect();
        let (window, ddw) = layer.windows_of(dev);
        let iommu = window.is_some() || ddw.is_some();
        let pools: Vec<(usize, u64, u64, u64)> = dev
            .pool_indices()
            .filter(|i| !iommu || premapped.contains(i))
            .filter_map(|i| {
                let (p, own) = layer.pool(i)?;
                let bus = layer.pool_bus_of(dev, i).unwrap_or(own).0;
                Some((i, bus, bus + p.len() as u64, p.phys().0))
            })
            .collect();
        let phys_of = |bus: u64| pools.iter().find(|p| p.1 <= bus && bus < p.2).map(|p| p.3 + (bus - p.1));
        let with_phys = |what: String, bus: u64| match phys_of(bus) {
            Some(phys) => format!("{what} (phys {})", gx(phys)),
            None => what,
        };
        for r in ranges {
            let (kind, what) = range_kind(r.kind);
            let what =
                if r.start == 0 && kind == "reserved" { "page 0 (reserved)".to_string() } else { what };
            let mut reg = region(kind, r.start, r.end(), &what);
            reg.label = with_phys(reg.label, r.start);
            regions.push(reg);
        }
        let mut frames = Vec::new();
        for (kind, w) in [("window", window), ("ddw", ddw)] {
            if let Some(w) = w {
                let what = format!(
                    "{} LIOBN {:#x}, {} IOMMU pages",
                    if kind == "ddw" { "DDW (dynamic DMA window)" } else { "default DMA WINDOW" },
                    w.liobn,
                    human(w.page_size())
                );
                frames.push(region(kind, w.start, w.start.saturating_add(w.size), &what));
            }
        }
        if frames.is_empty() {
            // No IOMMU: bus addresses are guest physical; the pools are where the device reaches.
            for i in dev.pool_indices() {
                let Some((p, own)) = layer.pool(i) else { continue };
                let bus = layer.pool_bus_of(dev, i).unwrap_or(own).0;
                let mut reg = region("pool", bus, bus + p.len() as u64, &format!("pool #{i}"));
                reg.label = format!("{} (phys {})", reg.label, gx(p.phys().0));
                regions.push(reg);
            }
        }
        for l in live {
            let inside_own_range =
                regions.iter().any(|r| r.kind == l.kind && r.start <= l.bus && l.bus < r.end);
            if !inside_own_range {
                let mut reg = region(l.kind, l.bus, l.bus + l.len, &format!("live {}", l.kind));
                reg.label = with_phys(reg.label, l.bus);
                regions.push(reg);
            }
        }
        if frames.is_empty() {
            let top = regions.iter().map(|r| r.end).max().unwrap_or(1 << 12);
            let end = top.checked_next_power_of_two().unwrap_or(u64::MAX);
            frames.push(region("bus", 0, end, "bus = guest physical"));
        }
        let mut bands: Vec<Band> =
            frames.into_iter().map(|frame| Band { frame, regions: Vec::new() }).collect();
        for r in regions {
            match bands.iter_mut().find(|b| b.frame.start <= r.start && r.start < b.frame.end) {
                Some(b) => b.regions.push(r),
                None => {
                    let frame = region("outside", r.start, r.end, "outside every window");
                    bands.push(Band { frame, regions: vec![r] });
                }
            }
        }
        for b in &mut bands {
            b.regions.sort_by_key(|r| (r.start, r.end));
        }
        let mask_end = 1u64.checked_shl(mask.bits()).filter(|_| mask.bits() < 64);
        let notes = pool_notes(layer, dev, mask.bits(), mask_end, iommu.then_some(&premapped[..]));
        DeviceDrawing { title, mask_end, bands, notes }
    }
}

/// Why the device sees which pools, one line per pool of the layer.
fn pool_notes(
    layer: &DmaLayer<'static, &'static Hypervisor>,
    dev: &Device,
    bits: u32,
    mask_end: Option<u64>,
    premapped: Option<&[usize]>,
) -> Vec<String> {
    let iommu = premapped.is_some();
    let seen: Vec<usize> = dev.pool_indices().filter(|i| premapped.is_none_or(|p| p.contains(i))).collect();
    let path = layer.path_of(dev).name();
    let mut notes = Vec::new();
    for i in 0..ccdma::MAX_POOLS {
        let Some((p, own)) = layer.pool(i) else { continue };
        let len = p.len() as u64;
        let phys = gx(p.phys().0);
        let note = if seen.contains(&i) {
            let bus = layer.pool_bus_of(dev, i).unwrap_or(own).0;
            let how = if iommu {
                format!("premapped into its window at bus {}", gx(bus))
            } else {
                format!("its bus range {}..{} lies below the mask", gx(bus), gx(bus + len))
            };
            format!("sees pool #{i} (phys {phys}): {how}")
        } else if !iommu && mask_end.is_some_and(|m| own.0 + len > m) {
            let end = gx(own.0 + len);
            format!("does not see pool #{i} (phys {phys}): its bus end {end} lies beyond the {bits}-bit mask")
        } else if iommu && path.contains("strict") {
            format!(
                "does not see pool #{i} (phys {phys}) as premapped: on {path} each mapping gets IOMMU entries of its own"
            )
        } else if iommu {
            format!(
                "does not see pool #{i} (phys {phys}): it does not fit its window below the {bits}-bit mask"
            )
        } else {
            format!("does not see pool #{i} (phys {phys}): not among the pools it was attached with")
        };
        notes.push(note);
    }
    notes
}

impl DeviceDrawing {
    /// A line of text under the device's bands.
    pub fn note(&mut self, text: String) {
        self.notes.push(text);
    }
}

fn color(kind: &str) -> &'static str {
    match kind {
        "reserved" => "#9e9e9e",
        "pool" => "#4caf50",
        "mapping" => "#e53935",
        "coherent" => "#1e88e5",
        "sg" => "#fb8c00",
        "quarantined" => "#6d4c41",
        _ => "#eeeeee",
    }
}

/// Pools alternate shades of green by their position in the band, so two pools that touch stay two.
const POOL_SHADES: [&str; 3] = ["#4caf50", "#a5d6a7", "#2e7d32"];

/// The fill of each region of a band (pools by their order in the band).
fn fills(regions: &[Region]) -> Vec<&'static str> {
    let mut pools = 0;
    regions
        .iter()
        .map(|r| {
            if r.kind == "pool" {
                pools += 1;
                POOL_SHADES[(pools - 1) % POOL_SHADES.len()]
            } else {
                color(r.kind)
            }
        })
        .collect()
}

/// Narrower than this on a bar, an item is drawn this wide, full height, and zoomed into.
const MIN_PX: f64 = 4.0;
/// Zoom bars a band may add.
const MAX_ZOOMS: usize = 5;

fn text(x: f64, y: f64, size: u32, content: String) -> Text {
    Text::new(content).set("x", x).set("y", y).set("font-family", "monospace").set("font-size", size)
}

/// One bar showing `view` (bus addresses) across the full width: `frame` behind, the regions on top
/// (the largest first, so small ones stay visible; an item under `MIN_PX` is widened to it and drawn
/// full height, so it does not read as a divider between pools), a dashed line where the device's
/// mask ends. The main bar (`zoom = false`) carries `data-kind/start/end`, zooms `data-zoom-*`.
fn bar(
    frame: &Region,
    view: (u64, u64),
    regions: &[Region],
    fill: &[&'static str],
    mask_end: Option<u64>,
    y: f64,
    zoom: bool,
) -> Group {
    let scale_w = WIDTH - 2.0 * LEFT;
    let span = (view.1 - view.0) as f64;
    let x_of = |a: u64| LEFT + (a.clamp(view.0, view.1) - view.0) as f64 / span * scale_w;
    let attrs = |r: Rectangle, reg: &Region| {
        let (k, s, e) = if zoom {
            ("data-zoom-kind", "data-zoom-start", "data-zoom-end")
        } else {
            ("data-kind", "data-start", "data-end")
        };
        r.set(k, reg.kind).set(s, format!("{:#x}", reg.start)).set(e, format!("{:#x}", reg.end))
    };
    let shape = |x: f64, y: f64, w: f64, h: f64, fill: &str| {
        Rectangle::new()
            .set("x", format!("{x:.2}"))
            .set("y", y)
            .set("width", format!("{w:.2}"))
            .set("height", h)
            .set("fill", fill)
            .set("stroke", "#333333")
            .set("stroke-width", 0.5)
    };
    let mut g =
        Group::new().set("class", "bar").add(attrs(shape(LEFT, y, scale_w, BAR, color(frame.kind)), frame));
    let mut order: Vec<(&Region, &str)> = regions
        .iter()
        .zip(fill.iter().copied())
        .filter(|(r, _)| r.start < view.1 && r.end > view.0)
        .collect();
    // Largest first; among equals, reserved ranges last (on top): page 0 never hides under a mapping.
    order.sort_by_key(|(r, _)| {
        (std::cmp::Reverse(r.end.min(view.1) - r.start.max(view.0)), r.kind == "reserved")
    });
    for (r, fill) in order {
        let x = x_of(r.start);
        let w = x_of(r.end) - x;
        let s = if w < MIN_PX {
            shape(x.min(LEFT + scale_w - MIN_PX), y, MIN_PX, BAR, fill)
        } else {
            shape(x, y + 3.0, w, BAR - 6.0, fill)
        };
        g = g.add(attrs(s, r));
    }
    if let Some(m) = mask_end.filter(|&m| view.0 < m && m < view.1) {
        let x = x_of(m);
        let line = Line::new()
            .set("x1", format!("{x:.2}"))
            .set("x2", format!("{x:.2}"))
            .set("y1", y - 4.0)
            .set("y2", y + BAR + 4.0)
            .set("stroke", "#000000")
            .set("stroke-dasharray", "3,2");
        g = g.add(line).add(text(x + 3.0, y + BAR - 7.0, 10, format!("mask end {}", gx(m))));
    }
    g
}

/// The views to zoom into: in `view`, the items narrower than `MIN_PX` grouped into clusters (items
/// closer than 40 px join), each cluster widened by its own span on both sides (at least a page) and
/// zoomed into again while something in it stays too narrow. At most `MAX_ZOOMS` views.
fn zooms(view: (u64, u64), regions: &[Region], out: &mut Vec<(u64, u64)>) {
    let scale_w = WIDTH - 2.0 * LEFT;
    let span = view.1 - view.0;
    let px = |len: u64| len as f64 / span as f64 * scale_w;
    let mut small: Vec<(u64, u64)> = regions
        .iter()
        .filter(|r| r.start < view.1 && r.end > view.0)
        .map(|r| (r.start.max(view.0), r.end.min(view.1)))
        .filter(|&(s, e)| px(e - s) < MIN_PX)
        .collect();
    small.sort();
    let mut clusters: Vec<(u64, u64)> = Vec::new();
    for (s, e) in small {
        match clusters.last_mut() {
            Some(c) if px(s.saturating_sub(c.1)) < 40.0 => c.1 = c.1.max(e),
            _ => clusters.push((s, e)),
        }
    }
    for (s, e) in clusters {
        if out.len() >= MAX_ZOOMS {
            return;
        }
        let pad = (e - s).max(0x1000);
        let z = (s.saturating_sub(pad).max(view.0) & !0xfff, e.saturating_add(pad).min(view.1));
        // Only a real magnification is worth a bar.
        if (z.1 - z.0).saturating_mul(4) > span {
            continue;
        }
        out.push(z);
        zooms(z, regions, out);
    }
}

/// The legend's explanation of the IOMMU words the captions use.
const IOMMU_WORDS: [&str; 2] = [
    "LIOBN = logical I/O bus number: the hypervisor's handle for one DMA window (its table of IOMMU entries, TCEs).",
    "DDW = dynamic DMA window: a second, large window a 64-bit device asks for (ibm,create-pe-dma-window), high on the bus with large pages.",
];

/// The drawing of every device, one under the other.
pub fn render(devices: &[DeviceDrawing]) -> String {
    let mut y = 24.0;
    let title = "ccdma-sim: bus address space per device (each band on its own scale)";
    let mut body = Group::new().add(text(LEFT, y, 14, title.into()));
    if devices.iter().flat_map(|d| &d.bands).any(|b| b.frame.kind == "window" || b.frame.kind == "ddw") {
        for w in IOMMU_WORDS {
            y += LINE;
            body = body.add(text(LEFT, y, 11, w.into()));
        }
    }
    for d in devices {
        y += 34.0;
        let mut g = Group::new().set("class", "device").add(text(LEFT, y, 13, d.title.clone()));
        for b in &d.bands {
            let fill = fills(&b.regions);
            // Caption first, then its bar, zooms (each captioned above), then the key.
            y += LINE + 8.0;
            let mut band = Group::new().set("class", "band").add(text(LEFT, y, 12, b.frame.label.clone()));
            y += 6.0;
            let view = (b.frame.start, b.frame.end);
            band = band.add(bar(&b.frame, view, &b.regions, &fill, d.mask_end, y, false));
            y += BAR;
            let mut views = Vec::new();
            zooms(view, &b.regions, &mut views);
            for (n, &z) in views.iter().enumerate() {
                y += LINE + 4.0;
                let label = format!("zoom {}: {}..{} ({})", n + 1, gx(z.0), gx(z.1), human(z.1 - z.0));
                band = band.add(text(LEFT, y, 11, label));
                y += 5.0;
                band = band.add(bar(&b.frame, z, &b.regions, &fill, d.mask_end, y, true));
                y += BAR;
            }
            y += 4.0;
            for (r, f) in b.regions.iter().zip(&fill) {
                y += LINE;
                let key = Rectangle::new()
                    .set("x", LEFT + 10.0)
                    .set("y", y - 10.0)
                    .set("width", 10)
                    .set("height", 10);
                band = band.add(key.set("fill", *f)).add(text(LEFT + 26.0, y, 12, r.label.clone()));
            }
            g = g.add(band);
        }
        for n in &d.notes {
            y += LINE;
            g = g.add(text(LEFT, y, 12, crate::num::group_hex_in(n)));
        }
        body = body.add(g);
    }
    y += 20.0;
    let background = Rectangle::new().set("width", "100%").set("height", "100%").set("fill", "white");
    Document::new()
        .set("width", WIDTH)
        .set("height", y)
        .set("viewBox", (0.0, 0.0, WIDTH, y))
        .add(background)
        .add(body)
        .to_string()
}

#[cfg(test)]
mod tests;
