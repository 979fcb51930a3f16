//! Wall-clock time from the HPET, for bounding every wait (deadlines: the common crate's).
//!
//! Nothing in the kernel may wait for a device without a deadline: a device that faults, hangs or
//! lies must turn into a failed check, not a hung boot. q35 always has an HPET at 0xFED0_0000;
//! if it is missing or unusable, deadlines fall back to counting polls so they still expire.

use core::sync::atomic::{AtomicU64, Ordering};
use core::time::Duration;

/// Physical address of the HPET register block on PC machines.
const HPET_BASE: u64 = 0xFED0_0000;
/// General capabilities: bits 63:32 = counter period in femtoseconds.
const HPET_CAPABILITIES: u64 = 0x00;
/// General configuration: bit 0 enables the main counter.
const HPET_CONFIG: u64 = 0x10;
const HPET_MAIN_COUNTER: u64 = 0xF0;
/// The HPET spec caps the period at 100 ns; zero means no device answered.
const MAX_PERIOD_FS: u64 = 100_000_000;

/// Femtoseconds per HPET tick; 0 until [`init`] found a working HPET.
static PERIOD_FS: AtomicU64 = AtomicU64::new(0);

fn hpet_read(register: u64) -> u64 {
    let ptr = (HPET_BASE + register) as *const u64;
    // SAFETY: the HPET block (one page at HPET_BASE) is identity-mapped uncached by the boot
    // trampoline; reading its registers has no side effects.
    unsafe { ptr.read_volatile() }
}

fn hpet_write(register: u64, value: u64) {
    let ptr = (HPET_BASE + register) as *mut u64;
    // SAFETY: as for `hpet_read`; the only register written is the configuration register, and
    // only this module touches the HPET.
    unsafe { ptr.write_volatile(value) }
}

/// Starts the HPET main counter. Returns the tick period in femtoseconds, or `None` if no usable
/// HPET was found (deadlines then count polls instead).
pub fn init() -> Option<u64> {
    let period_fs = hpet_read(HPET_CAPABILITIES) >> 32;
    if period_fs == 0 || period_fs > MAX_PERIOD_FS {
        return None;
    }
    hpet_write(HPET_CONFIG, hpet_read(HPET_CONFIG) | 1);
    PERIOD_FS.store(period_fs, Ordering::Relaxed);
    Some(period_fs)
}

/// Time since the HPET was started, or `None` without an HPET.
pub fn now() -> Option<Duration> {
    let period_fs = PERIOD_FS.load(Ordering::Relaxed);
    if period_fs == 0 {
        return None;
    }
    let femtos = u128::from(hpet_read(HPET_MAIN_COUNTER)) * u128::from(period_fs);
    Some(Duration::from_nanos((femtos / 1_000_000) as u64))
}

pub use ccdma_qemu_common::time::{poll_until, Deadline};
