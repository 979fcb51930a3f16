//! Console on COM1 (the only output the runner sees) and the `log` backend.
//!
//! Output goes through one spin lock so lines from `println!` and `log` never interleave. The
//! kernel is single-threaded with interrupts off, so the lock is never contended; it exists to
//! make the static safe to share.

use core::fmt::{self, Write};
use spin::Mutex;
use uart_16550::backend::PioBackend;
use uart_16550::{Config, Uart16550Tty};

/// Standard PC I/O port of COM1; QEMU's `-serial stdio` is attached to it.
const COM1_PORT: u16 = 0x3f8;

static CONSOLE: Mutex<Option<Uart16550Tty<PioBackend>>> = Mutex::new(None);

/// Initialises COM1 and installs the logger. Until this has run, output is dropped.
pub fn init(max_level: log::LevelFilter) {
    // SAFETY: COM1 is the PC's standard UART at 0x3f8..0x3ff; this kernel touches those ports only
    // through `CONSOLE`, and `init` runs once, before anything else prints.
    let tty = unsafe { Uart16550Tty::new_port(COM1_PORT, Config::default()) };
    *CONSOLE.lock() = tty.ok();
    // Only fails if a logger is already installed, in which case the existing one keeps working.
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(max_level);
}

/// Writes formatted text to the console. Use [`println!`](crate::println) instead.
pub fn write_fmt(args: fmt::Arguments) {
    if let Some(tty) = CONSOLE.lock().as_mut() {
        // A serial write cannot fail in a way worth reporting: there is nowhere else to report it.
        let _ = tty.write_fmt(args);
    }
}

/// Prints a line to the serial console.
#[macro_export]
macro_rules! println {
    () => { $crate::serial::write_fmt(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::serial::write_fmt(format_args!("{}\n", format_args!($($arg)*))) };
}

struct ConsoleLogger;

static LOGGER: ConsoleLogger = ConsoleLogger;

impl log::Log for ConsoleLogger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record) {
        if self.enabled(record.metadata()) {
            write_fmt(format_args!("[{:<5} {}] {}\n", record.level(), record.target(), record.args()));
        }
    }

    fn flush(&self) {}
}
