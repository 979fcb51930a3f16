//! Console on COM1 (the only output the runner sees): the common crate's console hook, behind its
//! `println!` and `log` backend.
//!
//! Output goes through one spin lock. The kernel is single-threaded with interrupts off, so the lock
//! is never contended; it exists to make the static safe to share.

use core::fmt::Write;
use spin::Mutex;
use uart_16550::backend::PioBackend;
use uart_16550::{Config, Uart16550Tty};

/// Standard PC I/O port of COM1; QEMU's `-serial stdio` is attached to it.
const COM1_PORT: u16 = 0x3f8;

static CONSOLE: Mutex<Option<Uart16550Tty<PioBackend>>> = Mutex::new(None);

/// Initialises COM1. Until this has run, output is dropped.
pub fn init() {
    // SAFETY: COM1 is the PC's standard UART at 0x3f8..0x3ff; this kernel touches those ports only
    // through `CONSOLE`, and `init` runs once, before anything else prints.
    let tty = unsafe { Uart16550Tty::new_port(COM1_PORT, Config::default()) };
    *CONSOLE.lock() = tty.ok();
}

/// Writes `text` to the console.
pub fn write_str(text: &str) {
    if let Some(tty) = CONSOLE.lock().as_mut() {
        // A serial write cannot fail in a way worth reporting: there is nowhere else to report it.
        let _ = tty.write_str(text);
    }
}
