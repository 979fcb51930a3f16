//! Deadlines for every wait, on the kernel's clock ([`crate::Arch::now`]).
//!
//! Nothing in a kernel may wait for a device without a deadline: a device that faults, hangs or
//! lies must turn into a failed check, not a hung boot. Without a clock, deadlines count polls so
//! they still expire.

use core::time::Duration;

/// Polls per millisecond assumed when there is no clock (generous for TCG).
const FALLBACK_POLLS_PER_MS: u64 = 1_000;

/// Time since boot, or `None` without a clock.
pub fn now() -> Option<Duration> {
    crate::arch().and_then(|arch| (arch.now)())
}

/// A point in time after which a wait gives up.
pub struct Deadline {
    kind: DeadlineKind,
}

enum DeadlineKind {
    At(Duration),
    PollsLeft(u64),
}

impl Deadline {
    /// A deadline `timeout` from now.
    pub fn after(timeout: Duration) -> Self {
        let kind = match now() {
            Some(now) => DeadlineKind::At(now + timeout),
            None => DeadlineKind::PollsLeft((timeout.as_millis() as u64).max(1) * FALLBACK_POLLS_PER_MS),
        };
        Self { kind }
    }

    /// Whether the deadline has passed. Call once per poll: without an HPET each call counts as
    /// one poll.
    pub fn expired(&mut self) -> bool {
        match &mut self.kind {
            DeadlineKind::At(at) => now().is_none_or(|now| now >= *at),
            DeadlineKind::PollsLeft(left) => {
                *left = left.saturating_sub(1);
                *left == 0
            }
        }
    }
}

/// Polls `ready` until it returns `Some` or `timeout` passes.
pub fn poll_until<T>(timeout: Duration, mut ready: impl FnMut() -> Option<T>) -> Option<T> {
    let mut deadline = Deadline::after(timeout);
    loop {
        if let Some(value) = ready() {
            return Some(value);
        }
        if deadline.expired() {
            return None;
        }
        core::hint::spin_loop();
    }
}
