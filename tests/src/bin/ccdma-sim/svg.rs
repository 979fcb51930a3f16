//! `--svg FILE`: each device's bus address space, drawn with the `svg` crate.
//!
//! Per device one band per window (the default window and the DDW behind the IOMMU, each on its own
//! scale: the DDW sits at 2^59), or one band of bus = guest physical addresses without an IOMMU. In a
//! band: reserved ranges (page 0 among them), the pools, a live coherent buffer and a live mapping,
//! each a `<rect>` carrying `data-kind`, `data-start` and `data-end` (hex), listed with their addresses
//! under the band. The regions come from the layer (`windows_of`, `bus_ranges_of`, `pool_bus_of`).

use ccdma::iommu::RangeKind;
use ccdma::{Device, DmaLayer};
use ccdma_hv_model::Hypervisor;
use svg::node::element::{Group, Line, Rectangle, Text};
use svg::Document;

use crate::num::human;
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
    Region { kind, start, end, label: format!("{what}: {start:#x}..{end:#x} ({})", human(end - start)) }
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
        let (window, ddw) = layer.windows_of(dev);
        let mut regions: Vec<Region> = Vec::new();
        for r in bus_ranges(layer, dev) {
            let (kind, what) = range_kind(r.kind);
            let what =
                if r.start == 0 && kind == "reserved" { "page 0 (reserved)".to_string() } else { what };
            regions.push(region(kind, r.start, r.end(), &what));
        }
        let mut frames = Vec::new();
        for (kind, w) in [("window", window), ("ddw", ddw)] {
            if let Some(w) = w {
                let what = format!(
                    "{} LIOBN {:#x}, {} IOMMU pages",
                    kind.to_uppercase(),
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
                regions.push(region("pool", bus, bus + p.len() as u64, &format!("pool #{i}")));
            }
        }
        for l in live {
            let inside_own_range =
                regions.iter().any(|r| r.kind == l.kind && r.start <= l.bus && l.bus < r.end);
            if !inside_own_range {
                regions.push(region(l.kind, l.bus, l.bus + l.len, &format!("live {}", l.kind)));
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
        DeviceDrawing { title, mask_end, bands, notes: Vec::new() }
    }
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

fn rect(r: &Region, x: f64, y: f64, w: f64, h: f64) -> Rectangle {
    Rectangle::new()
        .set("x", format!("{x:.2}"))
        .set("y", y)
        .set("width", format!("{w:.2}"))
        .set("height", h)
        .set("fill", color(r.kind))
        .set("stroke", "#333333")
        .set("stroke-width", 0.5)
        .set("data-kind", r.kind)
        .set("data-start", format!("{:#x}", r.start))
        .set("data-end", format!("{:#x}", r.end))
}

fn text(x: f64, y: f64, size: u32, content: String) -> Text {
    Text::new(content).set("x", x).set("y", y).set("font-family", "monospace").set("font-size", size)
}

/// One bar: `frame` across the full width, its regions on top (the largest first, so small ones stay
/// visible), a dashed line where the device's mask ends. Only the main bar (`data = true`) carries the
/// `data-*` attributes a reader (or the test) takes the ranges from.
fn bar(frame: &Region, regions: &[Region], mask_end: Option<u64>, y: f64, data: bool) -> Group {
    let scale_w = WIDTH - 2.0 * LEFT;
    let span = (frame.end - frame.start) as f64;
    let x_of = |a: u64| LEFT + (a.clamp(frame.start, frame.end) - frame.start) as f64 / span * scale_w;
    let plain = |r: Rectangle| if data { r } else { r.set("class", "zoom") };
    let whole =
        if data { rect(frame, LEFT, y, scale_w, BAR) } else { zoom_rect(frame, LEFT, y, scale_w, BAR) };
    let mut g = Group::new().add(whole);
    let mut order: Vec<&Region> = regions.iter().filter(|r| r.start < frame.end).collect();
    order.sort_by_key(|r| std::cmp::Reverse(r.end - r.start));
    for r in order {
        let x = x_of(r.start);
        let w = (x_of(r.end) - x).max(1.5);
        let shape =
            if data { rect(r, x, y + 3.0, w, BAR - 6.0) } else { zoom_rect(r, x, y + 3.0, w, BAR - 6.0) };
        g = g.add(plain(shape));
    }
    if let Some(m) = mask_end.filter(|&m| frame.start < m && m < frame.end) {
        let x = x_of(m);
        let line = Line::new()
            .set("x1", format!("{x:.2}"))
            .set("x2", format!("{x:.2}"))
            .set("y1", y - 4.0)
            .set("y2", y + BAR + 4.0)
            .set("stroke", "#000000")
            .set("stroke-dasharray", "3,2");
        g = g.add(line).add(text(x + 3.0, y - 2.0, 10, format!("mask end {m:#x}")));
    }
    g
}

/// A region drawn without its `data-*` attributes (zoomed copies).
fn zoom_rect(r: &Region, x: f64, y: f64, w: f64, h: f64) -> Rectangle {
    Rectangle::new()
        .set("x", format!("{x:.2}"))
        .set("y", y)
        .set("width", format!("{w:.2}"))
        .set("height", h)
        .set("fill", color(r.kind))
        .set("stroke", "#333333")
        .set("stroke-width", 0.5)
}

/// When the regions in the lowest eighth of a band are small against it, the extent to zoom into.
fn zoom_extent(b: &Band) -> Option<u64> {
    let span = b.frame.end - b.frame.start;
    let low_end = b.regions.iter().map(|r| r.end - b.frame.start).filter(|&e| e <= span / 8).max()?;
    let zoom = low_end.checked_next_power_of_two()?;
    (zoom <= span / 8).then_some(zoom)
}

/// The drawing of every device, one under the other.
pub fn render(devices: &[DeviceDrawing]) -> String {
    let mut y = 24.0;
    let title = "ccdma-sim: bus address space per device (each band on its own scale)";
    let mut body = Group::new().add(text(LEFT, y, 14, title.into()));
    for d in devices {
        y += 30.0;
        let mut g = Group::new().set("class", "device").add(text(LEFT, y, 13, d.title.clone()));
        for b in &d.bands {
            y += 14.0;
            let mut band =
                Group::new().set("class", "band").add(bar(&b.frame, &b.regions, d.mask_end, y, true));
            y += BAR + LINE;
            band = band.add(text(LEFT, y, 12, b.frame.label.clone()));
            let zoom = zoom_extent(b);
            if let Some(zoom) = zoom {
                let frame = Region { end: b.frame.start + zoom, ..b.frame.clone() };
                y += 12.0;
                band = band.add(bar(&frame, &b.regions, d.mask_end, y, false));
                y += BAR + LINE;
                let label = format!("zoom: the first {} ({:#x}..{:#x})", human(zoom), frame.start, frame.end);
                band = band.add(text(LEFT, y, 12, label));
            }
            for r in &b.regions {
                y += LINE;
                let key = Rectangle::new()
                    .set("x", LEFT + 10.0)
                    .set("y", y - 10.0)
                    .set("width", 10)
                    .set("height", 10);
                // The key lists the whole band; say which entries the zoomed bar does not show.
                let outside = zoom.is_some_and(|z| r.start >= b.frame.start + z);
                let label = if outside { format!("{} (beyond the zoom)", r.label) } else { r.label.clone() };
                band = band.add(key.set("fill", color(r.kind))).add(text(LEFT + 26.0, y, 12, label));
            }
            g = g.add(band);
        }
        for n in &d.notes {
            y += LINE + 4.0;
            g = g.add(text(LEFT, y, 12, n.clone()));
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
