//! Check results in the format the runner parses.
//!
//! One line per check: `PASS <name>: <detail>`, `FAIL <name>: <why>` or `SKIP <name>: <why>`,
//! then a closing `N passed, M failed`. The runner fails the configuration on any `FAIL` line or
//! if the closing line is missing or reports failures.

use core::fmt::{self, Display};

use crate::println;

/// Running tally of checks.
#[derive(Default)]
pub struct Report {
    passed: u32,
    failed: u32,
}

impl Report {
    /// Records a passed check.
    pub fn pass(&mut self, name: impl Display, detail: impl Display) {
        self.passed += 1;
        println!("PASS {name}: {detail}");
    }

    /// Records a failed check.
    pub fn fail(&mut self, name: impl Display, why: impl Display) {
        self.failed += 1;
        println!("FAIL {name}: {why}");
    }

    /// Notes a check that does not apply to this configuration. Not counted.
    pub fn skip(&mut self, name: impl Display, why: impl Display) {
        println!("SKIP {name}: {why}");
    }

    /// Records a pass if `ok`, a failure otherwise, with the same description either way.
    pub fn expect(&mut self, name: impl Display, ok: bool, detail: impl Display) -> bool {
        if ok {
            self.pass(name, detail);
        } else {
            self.fail(name, detail);
        }
        ok
    }

    /// Checks failed so far.
    pub fn failed(&self) -> u32 {
        self.failed
    }

    /// Prints the closing line and stops the machine through the kernel's exit hook.
    pub fn finish(&self) -> ! {
        println!("{} passed, {} failed", self.passed, self.failed);
        let passed = self.failed == 0 && self.passed > 0;
        match crate::arch() {
            Some(arch) => (arch.exit)(passed),
            None => loop {
                core::hint::spin_loop();
            },
        }
    }
}

/// Bytes in human units.
pub struct Bytes(pub u64);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self.0 {
            b if b >= 10 << 20 => write!(f, "{} MiB", b >> 20),
            b if b >= 10 << 10 => write!(f, "{} KiB", b >> 10),
            b => write!(f, "{b} B"),
        }
    }
}

impl Bytes {
    /// The same, honouring width and alignment flags.
    pub fn to_padded(&self) -> PaddedBytes {
        PaddedBytes(self.0)
    }
}

/// [`Bytes`] that honours width and alignment flags.
pub struct PaddedBytes(u64);

impl fmt::Display for PaddedBytes {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let mut buffer = [0u8; 32];
        let mut writer = SliceWriter { buffer: &mut buffer, len: 0 };
        let _ = fmt::write(&mut writer, format_args!("{}", Bytes(self.0)));
        let len = writer.len;
        f.pad(core::str::from_utf8(&buffer[..len]).unwrap_or("?"))
    }
}

struct SliceWriter<'a> {
    buffer: &'a mut [u8],
    len: usize,
}

impl fmt::Write for SliceWriter<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = (self.len + s.len()).min(self.buffer.len());
        let n = end - self.len;
        self.buffer[self.len..end].copy_from_slice(&s.as_bytes()[..n]);
        self.len = end;
        Ok(())
    }
}

/// The layer's totals as both kernels print them: `ccdma: N maps (...)`.
pub struct LayerTotals<'a>(pub &'a ccdma::StatsSnapshot);

impl fmt::Display for LayerTotals<'_> {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let s = self.0;
        write!(
            f,
            "ccdma: {} maps ({} bounced), {} unmaps; {} copied to devices, {} copied back; {} pages shared; slots in use {} (high water {}); {} failures",
            s.maps,
            s.bounced_maps,
            s.unmaps,
            Bytes(s.bytes_to_device),
            Bytes(s.bytes_from_device),
            s.shared_pages,
            s.slots_in_use,
            s.slots_high_water,
            s.total_failures()
        )
    }
}
