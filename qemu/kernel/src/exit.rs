//! Leaving QEMU through the `isa-debug-exit` device.
//!
//! Writing value `v` to its port makes QEMU exit with status `(v << 1) | 1`. The runner counts
//! only [`ExitCode::Success`]'s status (33) as success: a triple fault with `-no-reboot` exits
//! with 0, and any other path out of the kernel uses a distinct failure code.

use x86_64::instructions::port::Port;

/// I/O port of `-device isa-debug-exit,iobase=0xf4,iosize=0x04`.
const DEBUG_EXIT_PORT: u16 = 0xf4;

/// Why the kernel is stopping; each maps to a distinct QEMU exit status.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
#[repr(u32)]
pub enum ExitCode {
    /// Every check passed: QEMU exits with status 33.
    Success = 0x10,
    /// At least one check failed: QEMU exits with status 35.
    Failure = 0x11,
    /// A panic or CPU exception: QEMU exits with status 37.
    Panic = 0x12,
}

/// Stops the machine with `code`. Never returns: if the debug-exit device is missing, the CPU
/// halts forever and the runner's timeout reports the hang.
pub fn exit_qemu(code: ExitCode) -> ! {
    let mut port = Port::<u32>::new(DEBUG_EXIT_PORT);
    // SAFETY: port 0xf4 belongs to the isa-debug-exit device, which has no state a write could
    // corrupt; on a machine without it the write is ignored.
    unsafe { port.write(code as u32) };
    loop {
        x86_64::instructions::interrupts::disable();
        x86_64::instructions::hlt();
    }
}
