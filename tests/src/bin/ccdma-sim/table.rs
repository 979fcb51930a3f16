//! The closing table: one aligned row per device, then the one-line verdict (the last line printed).

use std::fmt::Write as _;

use ccdma::{DmaError, DmaPath};

use crate::args::DeviceSpec;
use crate::transfer::DeviceReport;
/// How a device came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    RefusedAsExpected,
    Failed,
}

impl Verdict {
    pub fn word(self) -> &'static str {
        match self {
            Verdict::Ok => "OK",
            Verdict::RefusedAsExpected => "OK (refused, as expected)",
            Verdict::Failed => "FAILED",
        }
    }
}

/// One line of the closing table.
pub struct DeviceRow {
    name: String,
    mask: String,
    path: String,
    pub transfers: u64,
    verified: u64,
    faults: usize,
    pub verdict: Verdict,
    pub note: String,
}

fn mask_text(spec: &DeviceSpec) -> String {
    format!("{}-bit", spec.mask_bits)
}

impl DeviceRow {
    pub fn refused(spec: &DeviceSpec, e: &DmaError, verdict: Verdict) -> DeviceRow {
        let note = format!("refused: {e}");
        DeviceRow {
            name: spec.name.clone(),
            mask: mask_text(spec),
            path: "-".into(),
            transfers: 0,
            verified: 0,
            faults: 0,
            verdict,
            note,
        }
    }
    pub fn attached(spec: &DeviceSpec, path: DmaPath, r: &DeviceReport, verdict: Verdict) -> DeviceRow {
        let mut problems = Vec::new();
        let errors: u64 = r.map_errors.values().sum();
        for (n, what) in [
            (r.mismatches.len() as u64, "wrong transfers"),
            (errors, "layer errors"),
            (r.unexpected_faults.len() as u64, "unexpected faults"),
            (r.leaked_slots, "leaked slots"),
            (u64::from(matches!(r.probe, Some(Err(_)))), "containment failure"),
        ] {
            if n > 0 {
                problems.push(format!("{n} {what}"));
            }
        }
        DeviceRow {
            name: spec.name.clone(),
            mask: mask_text(spec),
            path: path.name().into(),
            transfers: r.transfers,
            verified: r.verified,
            faults: r.unexpected_faults.len(),
            verdict,
            note: problems.join(", "),
        }
    }
}
/// The closing table (aligned columns) and the one-line verdict, last.
pub fn summary(rows: &[DeviceRow], layer_failures: u64, failures: &[String]) -> String {
    let head = ["device", "mask", "path", "transfers", "exact", "faults", "result"];
    let cells: Vec<[String; 7]> = rows
        .iter()
        .map(|r| {
            let refused = r.path == "-";
            let num = |v: u64| if refused { "-".to_string() } else { v.to_string() };
            let result = if r.note.is_empty() {
                r.verdict.word().to_string()
            } else {
                format!("{}: {}", r.verdict.word(), r.note)
            };
            [
                r.name.clone(),
                r.mask.clone(),
                r.path.clone(),
                num(r.transfers),
                num(r.verified),
                num(r.faults as u64),
                result,
            ]
        })
        .collect();
    let mut width = head.map(str::len);
    for c in &cells {
        for (w, s) in width.iter_mut().zip(c) {
            *w = (*w).max(s.len());
        }
    }
    let line = |c: [&str; 7]| {
        let mut s = String::new();
        for (i, (cell, w)) in c.iter().zip(width).enumerate() {
            let right = (3..6).contains(&i);
            if i == 6 {
                let _ = write!(s, "  {cell}");
            } else if right {
                let _ = write!(s, "  {cell:>w$}");
            } else {
                let _ = write!(s, "  {cell:<w$}");
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = String::from("\n");
    out += &line(head);
    for c in &cells {
        out += &line([&c[0], &c[1], &c[2], &c[3], &c[4], &c[5], &c[6]].map(String::as_str));
    }
    let attached = rows.iter().filter(|r| r.path != "-").count();
    let refused = rows.len() - attached;
    let expected = rows.iter().filter(|r| r.verdict == Verdict::RefusedAsExpected).count();
    let transfers: u64 = rows.iter().map(|r| r.transfers).sum();
    let verified: u64 = rows.iter().map(|r| r.verified).sum();
    let verdict =
        if failures.is_empty() { "OK".to_string() } else { format!("FAILED ({})", failures.join("; ")) };
    let _ = writeln!(
        out,
        "summary: {} attached, {refused} refused ({expected} expected); {verified}/{transfers} transfers exact; \
         {} counted by the layer; {verdict}",
        plural(attached as u64, "device"),
        plural(layer_failures, "failure")
    );
    out
}

/// `1 device`, `2 devices`.
fn plural(n: u64, word: &str) -> String {
    format!("{n} {word}{}", if n == 1 { "" } else { "s" })
}
