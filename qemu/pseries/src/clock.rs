//! Time from the timebase register, at the frequency the device tree gives.

use core::sync::atomic::{AtomicU64, Ordering};
use core::time::Duration;

use crate::of;

/// Ticks per second; 0 until [`init`] found it.
static FREQUENCY: AtomicU64 = AtomicU64::new(0);
static START: AtomicU64 = AtomicU64::new(0);

fn timebase() -> u64 {
    let value: u64;
    // SAFETY: reading the timebase has no side effects.
    unsafe { core::arch::asm!("mftb {0}", out(reg) value, options(nomem, nostack)) };
    value
}

/// Reads `timebase-frequency` from the first CPU node; returns it.
pub fn init() -> Option<u64> {
    let cpus = of::find(b"/cpus\0")?;
    let frequency = of::children(cpus).find_map(|cpu| of::u32_prop(cpu, b"timebase-frequency\0"))?;
    START.store(timebase(), Ordering::Relaxed);
    FREQUENCY.store(u64::from(frequency), Ordering::Relaxed);
    Some(u64::from(frequency))
}

/// Time since [`init`], or `None` without a frequency.
pub fn now() -> Option<Duration> {
    let frequency = FREQUENCY.load(Ordering::Relaxed);
    if frequency == 0 {
        return None;
    }
    let ticks = timebase().wrapping_sub(START.load(Ordering::Relaxed));
    Some(Duration::from_nanos((u128::from(ticks) * 1_000_000_000 / u128::from(frequency)) as u64))
}
