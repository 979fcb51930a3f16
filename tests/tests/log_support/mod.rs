//! Log records captured per thread: a `log::Log` that keeps what the calling thread logs while it
//! runs `capture`, for tests that check detail the errors no longer carry (`DmaError` is 24 bytes:
//! the rest is logged where it happens).
#![allow(dead_code)]

use std::cell::RefCell;
use std::sync::Once;

/// One record: its level and its text.
#[derive(Clone, Debug)]
pub struct Logged {
    pub level: log::Level,
    pub text: String,
}

thread_local! {
    /// The records of the thread's running `capture`, `None` outside one.
    static RECORDS: RefCell<Option<Vec<Logged>>> = const { RefCell::new(None) };
}

struct Capture;

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        // Formatted before the borrow: nothing the formatting logs can find the cell borrowed.
        let text = record.args().to_string();
        RECORDS.with(|r| {
            if let Some(v) = r.borrow_mut().as_mut() {
                v.push(Logged { level: record.level(), text });
            }
        });
    }

    fn flush(&self) {}
}

static CAPTURE: Capture = Capture;
static INSTALL: Once = Once::new();

/// Run `f`, returning its result and every record it logged on this thread (other tests' threads
/// log elsewhere). Fails when the log statements are compiled out: the checks would mean nothing.
pub fn capture<T>(f: impl FnOnce() -> T) -> (T, Vec<Logged>) {
    assert!(
        log::STATIC_MAX_LEVEL >= log::LevelFilter::Info,
        "log statements compiled out (ccdma's `log-off`?): run with the default features"
    );
    INSTALL.call_once(|| {
        log::set_logger(&CAPTURE).expect("no other logger in this test binary");
        log::set_max_level(log::LevelFilter::Trace);
    });
    RECORDS.with(|r| *r.borrow_mut() = Some(Vec::new()));
    let out = f();
    let records = RECORDS.with(|r| r.borrow_mut().take()).unwrap_or_default();
    (out, records)
}

/// The records whose text holds every one of `parts`.
pub fn with_all<'a>(records: &'a [Logged], parts: &[&str]) -> Vec<&'a Logged> {
    records.iter().filter(|r| parts.iter().all(|p| r.text.contains(p))).collect()
}
