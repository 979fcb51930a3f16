//! Issue 22: the `ccdma-sim --svg` picture reads right. Parsed from the file the binary writes:
//! each band's caption sits above its bar (not below, where the next band's key would read as its
//! own); adjacent pools have distinct fills; every small item (page 0, the live mapping, the coherent
//! buffer) is visible at a readable width in the bar or a zoom, not hidden under another shape and
//! not "beyond the zoom"; addresses in the text are grouped (`0x0000_0008_0000_0000`); LIOBN and
//! DDW are explained; each device says why it sees which pools; a pool's physical address is shown.

use std::process::Command;

const SIM: &str = env!("CARGO_BIN_EXE_ccdma-sim");

/// A shape as drawn: the bar it belongs to, its geometry, fill and (kind, start) if it names a region.
#[derive(Debug, Clone)]
struct Shape {
    bar: usize,
    x: f64,
    y: f64,
    w: f64,
    h: f64,
    fill: String,
    item: Option<(String, u64, u64)>,
}

struct Picture {
    /// Per band: the y of its caption (first text) and of its first bar.
    bands: Vec<(f64, f64)>,
    shapes: Vec<Shape>,
    texts: Vec<String>,
}

fn draw(args: &[&str]) -> Picture {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("sim_svg_readable-{n}.svg"));
    let all: Vec<String> = ["--rounds", "1", "--sizes", "64,4K"]
        .iter()
        .chain(args)
        .map(|s| s.to_string())
        .chain(["--svg".to_string(), path.display().to_string()])
        .collect();
    let o = Command::new(SIM).args(&all).output().expect("run ccdma-sim");
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stdout));
    let text = std::fs::read_to_string(&path).expect("the SVG is written");
    std::fs::remove_file(&path).ok();
    parse(&text)
}

fn parse(text: &str) -> Picture {
    use svg::node::element::tag::Type;
    use svg::parser::Event;
    let num = |v: &str| v.parse::<f64>().expect("a number");
    let hex = |v: &str| u64::from_str_radix(v.trim_start_matches("0x"), 16).expect("hex");
    let mut pic = Picture { bands: Vec::new(), shapes: Vec::new(), texts: Vec::new() };
    // Per band: the y of its first text (the caption) and of its first bar shape.
    let mut bands: Vec<(Option<f64>, Option<f64>)> = Vec::new();
    let mut bar = 0usize;
    let mut in_text = false;
    for event in svg::read(text).expect("the SVG parses") {
        match event {
            Event::Tag("g", Type::Start, a) => match a.get("class").map(|c| c.to_string()).as_deref() {
                Some("band") => bands.push((None, None)),
                Some("bar") => bar += 1,
                _ => {}
            },
            Event::Tag("text", Type::Start, a) => {
                in_text = true;
                if let Some(b) = bands.last_mut().filter(|b| b.0.is_none()) {
                    b.0 = Some(num(&a["y"]));
                }
            }
            Event::Tag("text", Type::End, _) => in_text = false,
            Event::Text(t) if in_text => pic.texts.push(t.to_string()),
            Event::Tag("rect", _, a) if a.contains_key("x") && a.contains_key("fill") => {
                let y = num(&a["y"]);
                if let Some(b) = bands.last_mut().filter(|b| b.1.is_none() && a.contains_key("data-kind")) {
                    b.1 = Some(y);
                }
                let item = match (a.get("data-kind"), a.get("data-zoom-kind")) {
                    (Some(k), _) => Some((k.to_string(), hex(&a["data-start"]), hex(&a["data-end"]))),
                    (None, Some(k)) => {
                        Some((k.to_string(), hex(&a["data-zoom-start"]), hex(&a["data-zoom-end"])))
                    }
                    _ => None,
                };
                let fill = a["fill"].to_string();
                let shape =
                    Shape { bar, x: num(&a["x"]), y, w: num(&a["width"]), h: num(&a["height"]), fill, item };
                pic.shapes.push(shape);
            }
            _ => {}
        }
    }
    for (caption, first_bar) in bands {
        let (Some(c), Some(b)) = (caption, first_bar) else { panic!("a band without caption or bar") };
        pic.bands.push((c, b));
    }
    pic
}

fn pictures() -> Vec<(&'static str, Picture)> {
    vec![
        ("no IOMMU", draw(&[])),
        ("premapped", draw(&["--iommu", "premapped"])),
        ("strict", draw(&["--iommu", "strict"])),
    ]
}

#[test]
fn captions_sit_above_their_bars() {
    for (name, pic) in pictures() {
        assert!(pic.bands.len() >= 4, "{name}: {} bands", pic.bands.len());
        for (caption, bar) in &pic.bands {
            assert!(caption < bar, "{name}: caption at y {caption} is below its bar at y {bar}");
        }
    }
}

#[test]
fn adjacent_pools_have_distinct_fills() {
    let mut adjacent = 0;
    for (name, pic) in pictures() {
        let mut pools: Vec<&Shape> =
            pic.shapes.iter().filter(|s| s.item.as_ref().is_some_and(|(k, ..)| k == "pool")).collect();
        pools.sort_by_key(|s| (s.bar, s.item.as_ref().unwrap().1));
        for pair in pools.windows(2) {
            let (a, b) = (pair[0].item.as_ref().unwrap(), pair[1].item.as_ref().unwrap());
            if pair[0].bar == pair[1].bar && a.2 == b.1 {
                adjacent += 1;
                assert_ne!(pair[0].fill, pair[1].fill, "{name}: pools {a:x?} and {b:x?} share a fill");
            }
        }
    }
    assert!(adjacent > 0, "the premapped picture has adjacent pools");
}

#[test]
fn small_items_are_visible_somewhere_and_nothing_is_beyond_the_zoom() {
    for (name, pic) in pictures() {
        for t in &pic.texts {
            assert!(!t.contains("beyond the zoom"), "{name}: {t}");
        }
        let items: Vec<(String, u64, u64)> = pic
            .shapes
            .iter()
            .filter_map(|s| s.item.clone())
            .filter(|(k, ..)| ["reserved", "mapping", "coherent"].contains(&k.as_str()))
            .collect();
        assert!(!items.is_empty(), "{name}: small items drawn");
        for item in items {
            // Visible: some shape of the item at least 3 px wide that no later shape of its bar covers.
            let visible = pic.shapes.iter().enumerate().any(|(i, s)| {
                s.item.as_ref() == Some(&item)
                    && s.w >= 3.0
                    && !pic.shapes[i + 1..].iter().any(|o| {
                        o.bar == s.bar
                            && o.x <= s.x
                            && o.x + o.w >= s.x + s.w
                            && o.y <= s.y
                            && o.y + o.h >= s.y + s.h
                    })
            });
            assert!(visible, "{name}: {item:x?} is nowhere visible at a readable width");
        }
    }
}

#[test]
fn text_groups_hex_digits_and_explains_windows_pools_and_phys() {
    for (name, pic) in pictures() {
        let all = pic.texts.join("\n");
        for t in &pic.texts {
            let bare = t.split(|c: char| !c.is_ascii_alphanumeric()).any(|w| {
                w.strip_prefix("0x").is_some_and(|d| d.len() > 4 && d.chars().all(|c| c.is_ascii_hexdigit()))
            });
            assert!(!bare, "{name}: ungrouped hex in {t:?}");
        }
        assert!(all.contains("phys 0x"), "{name}: a pool's physical address is shown");
        assert!(
            all.contains("sees pool #") || all.contains("does not see pool #"),
            "{name}: each device says why it sees which pools:\n{all}"
        );
        if name != "no IOMMU" {
            assert!(all.contains("LIOBN ="), "{name}: LIOBN explained");
            assert!(all.contains("DDW ="), "{name}: DDW explained");
        }
    }
}
