//! Check results in the format the runner parses.
//!
//! One line per check: `PASS <name>: <detail>`, `FAIL <name>: <why>` or `SKIP <name>: <why>`,
//! then a closing `N passed, M failed`. The runner fails the configuration on any `FAIL` line or
//! if the closing line is missing or reports failures.

use core::fmt::Display;

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
