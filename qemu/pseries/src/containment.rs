//! Containment on the real IOMMU: what a device does with memory it was not given.
//!
//! QEMU completes a request whose DMA the TCE table blocked as if it had worked (full length, no
//! error): the access is dropped and logged (`-d guest_errors`). So each check compares memory
//! before and after, and prints a `CONTAIN` line with the bus range it provoked; the runner reads
//! QEMU's log and attributes every rejected access to such a line (an access no line explains fails
//! the run, as does a line that expects a rejection and finds none).

use ccdma::IommuPolicy;
use ccdma_qemu_common::checks::IO_TIMEOUT;
use ccdma_qemu_common::memory::{self, leak_bytes};
use ccdma_qemu_common::println;
use ccdma_qemu_common::report::Report;
use ccdma_qemu_common::rng::RngError;
use core::sync::atomic::Ordering;

use crate::dma::KernelBinding;
use crate::platform::PLATFORM;
use crate::scenario::{Rng, RngBinding};
use crate::show::Hex;

/// Request length that the private-buffer knob recognises (no other rng request has it).
const PRIVATE_LEN: usize = 3000;
/// Request length the wrong-direction knob recognises.
const DIRECTION_LEN: usize = 2000;
/// Request length of the broken-device check: more than one 4 KiB page, which QEMU does not drop
/// quietly but answers by marking the device broken.
const BROKEN_LEN: usize = 8192;

/// A request whose buffer is private memory with no TCE: the device's write must not land.
pub fn check_private(report: &mut Report, rng: &mut Rng<RngBinding>) {
    const NAME: &str = "iommu.containment";
    let Some(buffer) = leak_bytes(PRIVATE_LEN, 4096) else { return report.fail(NAME, "no memory") };
    buffer.fill(0x5a);
    let bus = memory::phys_of(buffer.as_ptr());
    let entry = PLATFORM.entry_of(bus);
    if PLATFORM.ledger().is_shared(bus) || entry.is_some_and(|e| e & 3 != 0) {
        return report.fail(NAME, format_args!("buffer {bus:#x} is shared or mapped (entry {})", Hex(entry)));
    }
    println!("CONTAIN {NAME} bus={bus:#x} len={PRIVATE_LEN:#x} expect=rejected");
    let stats = RngBinding::stats();
    stats.passthrough_len.store(PRIVATE_LEN, Ordering::Relaxed);
    let result = rng.fill(buffer, IO_TIMEOUT);
    stats.passthrough_len.store(0, Ordering::Relaxed);
    match result {
        Ok((written, buffer)) => {
            let untouched = buffer.iter().all(|&b| b == 0x5a);
            report.expect(
                NAME,
                untouched,
                format_args!(
                    "rng given private buffer {bus:#x} (no TCE, entry {}): device reported {written:#x} bytes written, private bytes {}",
                    Hex(entry),
                    if untouched { "unchanged" } else { "CHANGED" }
                ),
            );
        }
        Err(error) => report.fail(NAME, format_args!("request did not complete: {error}")),
    }
}

/// A buffer mapped to-device that the device writes (a driver that got the direction wrong). Strict:
/// the entry is read-only and the write is rejected. Premapped: the pool is mapped read-write once,
/// so the write lands in the bounce slot, never in the buffer.
pub fn check_direction(report: &mut Report, rng: &mut Rng<RngBinding>, policy: IommuPolicy) {
    const NAME: &str = "iommu.direction";
    let Some(buffer) = leak_bytes(DIRECTION_LEN, 4096) else { return report.fail(NAME, "no memory") };
    buffer.fill(0x3c);
    let stats = RngBinding::stats();
    stats.to_device_len.store(DIRECTION_LEN, Ordering::Relaxed);
    let result = rng.fill(buffer, IO_TIMEOUT);
    stats.to_device_len.store(0, Ordering::Relaxed);
    let Some((bus, entry)) = *stats.to_device_last.lock() else {
        return report.fail(NAME, "the to-device mapping was not made");
    };
    let strict = policy == IommuPolicy::Strict;
    let expect = if strict { "rejected" } else { "none" };
    println!("CONTAIN {NAME} bus={bus:#x} len={DIRECTION_LEN:#x} expect={expect}");
    let (written, buffer) = match result {
        Ok(result) => result,
        Err(error) => return report.fail(NAME, format_args!("request did not complete: {error}")),
    };
    let untouched = buffer.iter().all(|&b| b == 0x3c);
    let permission = entry.map(|e| e & 3);
    let ok = untouched && permission == Some(if strict { 1 } else { 3 });
    report.expect(
        NAME,
        ok,
        format_args!(
            "to-device mapping at bus {bus:#x}, TCE {} ({}); device reported {written:#x} bytes written; buffer {}",
            Hex(entry),
            match permission {
                Some(1) => "read-only: the device's write is rejected",
                Some(3) => "premapped pool, read-write: the write lands in the bounce slot only",
                _ => "unexpected permission",
            },
            if untouched { "unchanged" } else { "CHANGED" }
        ),
    );
}

/// A blocked DMA of more than one page: QEMU marks the device broken ("bogus descriptor", nothing
/// in `guest_errors`) and the request never completes. The kernel must notice (the request times
/// out, the device asks for a reset), reset the device and go on using it; the private buffer
/// stays untouched throughout.
pub fn check_broken_recovery(report: &mut Report, slot: &mut Option<Rng<RngBinding>>) {
    const NAME: &str = "iommu.broken_recovery";
    let Some(rng) = slot.as_mut() else { return report.fail(NAME, "no rng") };
    let Some(buffer) = leak_bytes(BROKEN_LEN, 4096) else { return report.fail(NAME, "no memory") };
    buffer.fill(0x77);
    let private: *const u8 = buffer.as_ptr();
    let bus = memory::phys_of(buffer.as_ptr());
    if PLATFORM.ledger().is_shared(bus) || PLATFORM.entry_of(bus).is_some_and(|e| e & 3 != 0) {
        return report.fail(NAME, format_args!("buffer {bus:#x} is shared or mapped"));
    }
    println!("CONTAIN {NAME} bus={bus:#x} len={BROKEN_LEN:#x} expect=broken");
    let stats = RngBinding::stats();
    stats.passthrough_len.store(BROKEN_LEN, Ordering::Relaxed);
    // A broken device never answers: wait a bounded while, not the full I/O timeout.
    let blocked = rng.fill(buffer, core::time::Duration::from_millis(300));
    stats.passthrough_len.store(0, Ordering::Relaxed);
    let timed_out = matches!(blocked, Err(RngError::Timeout));
    let needs_reset = rng.needs_reset();
    let Some(old) = slot.take() else { return };
    let recovered = match old.reset() {
        Ok(fresh) => slot.insert(fresh).fill(alloc_probe(), IO_TIMEOUT).map(|(written, _)| written),
        Err(error) => Err(error),
    };
    // SAFETY: the buffer is leaked, and its request was abandoned by the reset: nothing writes it.
    let untouched = unsafe { core::slice::from_raw_parts(private, BROKEN_LEN) }.iter().all(|&b| b == 0x77);
    report.expect(
        NAME,
        timed_out && needs_reset && untouched && matches!(recovered, Ok(64)),
        format_args!(
            "{BROKEN_LEN:#x}-byte request into private {bus:#x}: {}, device {}; reset and set up again: {}; private bytes {}",
            if timed_out { "never completed" } else { "did NOT time out" },
            if needs_reset { "asked for a reset (DEVICE_NEEDS_RESET)" } else { "did NOT ask for a reset" },
            Recovered(&recovered),
            if untouched { "unchanged" } else { "CHANGED" }
        ),
    );
}

/// What the request after the reset got.
struct Recovered<'a>(&'a Result<usize, RngError>);

impl core::fmt::Display for Recovered<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter) -> core::fmt::Result {
        match self.0 {
            Ok(written) => write!(f, "a 64-byte request then got {written} bytes"),
            Err(error) => write!(f, "FAILED ({error})"),
        }
    }
}

/// A fresh 64-byte buffer for a request after the reset.
fn alloc_probe() -> &'static mut [u8] {
    leak_bytes(64, 64).unwrap_or(&mut [])
}
