//! Self-test of the runner (configuration `pseries-selftest-reject`): the kernel makes its rng DMA at
//! bus addresses that have no TCE, with no `CONTAIN` line announcing it, as a defect in ccdma or a
//! driver would. Its own checks pass (memory stays unchanged, the broken device is noticed); the
//! runner must still fail the configuration, once for the rejected access QEMU logs and once for the
//! device QEMU marks broken. `qemu/run.sh` inverts this configuration's verdict.

use ccdma_qemu_common::checks::IO_TIMEOUT;
use ccdma_qemu_common::memory::{self, leak_bytes};
use ccdma_qemu_common::println;
use ccdma_qemu_common::report::Report;
use ccdma_qemu_common::rng::RngError;
use core::sync::atomic::Ordering;

use crate::dma::KernelBinding;
use crate::scenario::{Rng, RngBinding};

/// Up to one 4 KiB page: QEMU bounces it, drops the write and logs it (`guest_errors`).
const SMALL_LEN: usize = 2500;
/// More than 4 KiB: QEMU cannot bounce it, marks the device broken ("bogus descriptor") and logs
/// nothing in `guest_errors`.
const BIG_LEN: usize = 12 << 10;

/// Makes both stray requests; the rng is broken afterwards.
pub fn provoke(report: &mut Report, rng: &mut Rng<RngBinding>) {
    let stats = RngBinding::stats();
    let Some(small) = leak_bytes(SMALL_LEN, 4096) else { return report.fail("selftest.small", "no memory") };
    small.fill(0xa5);
    let bus = memory::phys_of(small.as_ptr());
    println!("SELFTEST stray write of {SMALL_LEN:#x} bytes at bus {bus:#x} (no TCE, no CONTAIN line)");
    stats.passthrough_len.store(SMALL_LEN, Ordering::Relaxed);
    let result = rng.fill(small, IO_TIMEOUT);
    stats.passthrough_len.store(0, Ordering::Relaxed);
    match result {
        Ok((written, buffer)) => {
            let untouched = buffer.iter().all(|&b| b == 0xa5);
            report.expect(
                "selftest.small",
                untouched,
                format_args!(
                    "device reported {written:#x} bytes written, memory {}: the runner must find QEMU's rejection unexplained",
                    if untouched { "unchanged" } else { "CHANGED" }
                ),
            );
        }
        Err(error) => report.fail("selftest.small", format_args!("request did not complete: {error}")),
    }

    let Some(big) = leak_bytes(BIG_LEN, 4096) else { return report.fail("selftest.big", "no memory") };
    big.fill(0xa5);
    let bus = memory::phys_of(big.as_ptr());
    println!("SELFTEST stray write of {BIG_LEN:#x} bytes at bus {bus:#x} (no TCE, no CONTAIN line)");
    stats.passthrough_len.store(BIG_LEN, Ordering::Relaxed);
    let result = rng.fill(big, IO_TIMEOUT);
    stats.passthrough_len.store(0, Ordering::Relaxed);
    match result {
        Err(RngError::Timeout) => report.pass(
            "selftest.big",
            "the request never completed: QEMU marked the device broken (a blocked request over 4 KiB); \
             the runner must find the broken device unexplained",
        ),
        Ok((written, _)) => report.fail(
            "selftest.big",
            format_args!(
                "the blocked request completed ({written:#x} bytes): QEMU did not mark the device broken"
            ),
        ),
        Err(error) => report.fail("selftest.big", format_args!("unexpected error: {error}")),
    }
}
