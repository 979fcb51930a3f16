//! The private/shared state of every guest page, kept by the kernel itself.
//!
//! Under TCG there is no memory encryption: "sharing" a page changes nothing in hardware. The
//! ledger stands in for it. ccdma's sharing calls go through it (the platform's
//! `MemorySharing`), and everything that hands an address to a device checks it: a device may only
//! ever be given shared pages. A call that would share a page twice, unshare a private page or
//! touch memory that is not RAM is refused (as a real ultravisor would) and counted as a
//! violation; the kernel reports violations as a failed check.

use core::fmt;
use core::ops::Range;
use core::sync::atomic::{AtomicU64, Ordering};
use spin::Mutex;

use crate::memory::PAGE_SIZE;

/// Highest address the ledger tracks: 8 GiB (every configuration's RAM fits below it).
pub const LEDGER_LIMIT: u64 = 8 << 30;
const PAGES: usize = (LEDGER_LIMIT / PAGE_SIZE as u64) as usize;
const MAX_RAM_RANGES: usize = 8;

/// A sharing call the ledger refused.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum Violation {
    /// Sharing a page that is already shared.
    AlreadyShared(u64),
    /// Unsharing a page that is private.
    NotShared(u64),
    /// A page that is not RAM (or beyond [`LEDGER_LIMIT`]).
    NotRam(u64),
    /// A device behind the IOMMU was handed a bus address no entry of its windows translates.
    DeviceGivenUnmapped {
        /// PCI requester ID of the device.
        device: u32,
        /// The bus address.
        bus: u64,
    },
    /// A share refused on purpose ([`PageLedger::refuse_next_shares`], a check's doing): not a
    /// violation, never counted as one.
    Refused(u64),
    /// A device was handed an address whose memory is not shared.
    DeviceGivenPrivate {
        /// PCI requester ID of the device.
        device: u32,
        /// The physical page.
        page: u64,
    },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Self::AlreadyShared(page) => write!(f, "page {page:#x} shared twice"),
            Self::NotShared(page) => write!(f, "private page {page:#x} unshared"),
            Self::NotRam(page) => write!(f, "page {page:#x} is not RAM"),
            Self::Refused(page) => write!(f, "share of page {page:#x} refused on purpose"),
            Self::DeviceGivenUnmapped { device, bus } => {
                write!(f, "device {device:#06x} given bus address {bus:#x}, which its windows do not map")
            }
            Self::DeviceGivenPrivate { device, page } => {
                write!(f, "device {device:#06x} given private page {page:#x}")
            }
        }
    }
}

/// One bit per page below [`LEDGER_LIMIT`]: set = shared.
pub struct PageLedger {
    bits: [AtomicU64; PAGES / 64],
    ram: Mutex<([Range<u64>; MAX_RAM_RANGES], usize)>,
    shared_pages: AtomicU64,
    share_calls: AtomicU64,
    unshare_calls: AtomicU64,
    violations: AtomicU64,
    first_violation: Mutex<Option<Violation>>,
    refuse_shares: AtomicU64,
    /// The range of the last share refused on purpose: ccdma cannot know how much a failed
    /// `UV_SHARE_PAGE` converted, so it unshares the whole request; that one unshare of still
    /// private pages is the documented rollback, accepted as a no-op, not a violation.
    refused_range: Mutex<Option<(u64, u64)>>,
}

/// Counters of the ledger, for the report.
#[derive(Clone, Copy, Debug, Default)]
pub struct LedgerStats {
    /// Pages shared now.
    pub shared_pages: u64,
    /// Share calls accepted or refused.
    pub share_calls: u64,
    /// Unshare calls accepted or refused.
    pub unshare_calls: u64,
    /// Refused calls and device addresses that were not shared.
    pub violations: u64,
}

impl PageLedger {
    /// Every page private, no RAM known yet.
    pub const fn new() -> Self {
        Self {
            bits: [const { AtomicU64::new(0) }; PAGES / 64],
            ram: Mutex::new(([const { 0..0 }; MAX_RAM_RANGES], 0)),
            shared_pages: AtomicU64::new(0),
            share_calls: AtomicU64::new(0),
            unshare_calls: AtomicU64::new(0),
            violations: AtomicU64::new(0),
            first_violation: Mutex::new(None),
            refuse_shares: AtomicU64::new(0),
            refused_range: Mutex::new(None),
        }
    }

    /// Records the firmware's RAM map (ranges beyond [`LEDGER_LIMIT`] are cut).
    pub fn set_ram(&self, ram: &[Range<u64>]) {
        let mut guard = self.ram.lock();
        let (ranges, len) = &mut *guard;
        *len = 0;
        for range in ram.iter().take(MAX_RAM_RANGES) {
            ranges[*len] = range.start..range.end.min(LEDGER_LIMIT);
            *len += 1;
        }
    }

    /// Whether `[phys, phys + len)` is RAM the ledger tracks.
    pub fn is_ram(&self, phys: u64, len: u64) -> bool {
        let Some(end) = phys.checked_add(len) else {
            return false;
        };
        let guard = self.ram.lock();
        guard.0[..guard.1].iter().any(|range| range.start <= phys && end <= range.end)
    }

    /// One past the highest RAM address.
    pub fn ram_end(&self) -> u64 {
        let guard = self.ram.lock();
        guard.0[..guard.1].iter().map(|range| range.end).max().unwrap_or(0)
    }

    fn bit(&self, page: u64) -> (&AtomicU64, u64) {
        let index = (page / PAGE_SIZE as u64) as usize;
        (&self.bits[index / 64], 1 << (index % 64))
    }

    /// Whether the page holding `phys` is shared.
    pub fn is_shared(&self, phys: u64) -> bool {
        if phys >= LEDGER_LIMIT {
            return false;
        }
        let (word, mask) = self.bit(phys & !(PAGE_SIZE as u64 - 1));
        word.load(Ordering::Acquire) & mask != 0
    }

    /// Whether every page of `[phys, phys + len)` is shared.
    pub fn all_shared(&self, phys: u64, len: u64) -> Result<(), u64> {
        let first = phys & !(PAGE_SIZE as u64 - 1);
        let end = phys.saturating_add(len.max(1));
        (first..end).step_by(PAGE_SIZE).find(|&page| !self.is_shared(page)).map_or(Ok(()), Err)
    }

    /// Records a violation found outside the ledger's own calls.
    pub fn violation(&self, violation: Violation) {
        self.violations.fetch_add(1, Ordering::Relaxed);
        log::error!("ledger: {violation}");
        self.first_violation.lock().get_or_insert(violation);
    }

    /// Refuses the next `calls` share calls whole (nothing changes), as a host or ultravisor out of
    /// resources may; 0 disarms. Not counted as violations.
    pub fn refuse_next_shares(&self, calls: u64) {
        self.refuse_shares.store(calls, Ordering::Relaxed);
    }

    /// Changes `pages` pages from `phys` to `shared`. Stops at the first page in the wrong state or
    /// not RAM and returns how many pages changed before it (as a partial hypercall would).
    pub fn convert(&self, phys: u64, pages: u64, shared: bool) -> Result<(), (u64, Violation)> {
        let counter = if shared { &self.share_calls } else { &self.unshare_calls };
        counter.fetch_add(1, Ordering::Relaxed);
        if shared
            && self
                .refuse_shares
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok()
        {
            *self.refused_range.lock() = Some((phys, pages));
            return Err((0, Violation::Refused(phys)));
        }
        // The rollback, if the caller makes one, is its next call: any other call ends the grace
        // (a platform that reports progress, as the x86 kernel's does, makes none).
        let rollback = self.refused_range.lock().take() == Some((phys, pages));
        if !shared && rollback {
            return Ok(());
        }
        for done in 0..pages {
            let page = phys + done * PAGE_SIZE as u64;
            let refused = if !self.is_ram(page, PAGE_SIZE as u64) {
                Some(Violation::NotRam(page))
            } else {
                let (word, mask) = self.bit(page);
                let before = if shared {
                    word.fetch_or(mask, Ordering::AcqRel)
                } else {
                    word.fetch_and(!mask, Ordering::AcqRel)
                };
                match (before & mask != 0, shared) {
                    (true, true) => Some(Violation::AlreadyShared(page)),
                    // `fetch_and` cleared nothing: the page was private and stays so.
                    (false, false) => Some(Violation::NotShared(page)),
                    _ => None,
                }
            };
            if let Some(violation) = refused {
                self.violation(violation);
                return Err((done, violation));
            }
            if shared {
                self.shared_pages.fetch_add(1, Ordering::Relaxed);
            } else {
                self.shared_pages.fetch_sub(1, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    /// The counters.
    pub fn stats(&self) -> LedgerStats {
        LedgerStats {
            shared_pages: self.shared_pages.load(Ordering::Relaxed),
            share_calls: self.share_calls.load(Ordering::Relaxed),
            unshare_calls: self.unshare_calls.load(Ordering::Relaxed),
            violations: self.violations.load(Ordering::Relaxed),
        }
    }

    /// The first violation seen, if any.
    pub fn first_violation(&self) -> Option<Violation> {
        *self.first_violation.lock()
    }
}
