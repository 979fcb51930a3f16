//! ccdma's IOMMU platform trait ([`TceCalls`]) on QEMU's virtio-iommu: MAP and UNMAP requests play
//! the part of the TCE hypercalls.
//!
//! Each managed device (endpoint = PCI requester ID) gets its own virtio-iommu domain when it is
//! [registered](IommuBackend::register), and in it the windows ccdma asks for:
//!
//! * a default window of [`DEFAULT_WINDOW_SIZE`] at [`DEFAULT_WINDOW_START`] (below 4 GiB, so
//!   32-bit devices can use it; above all RAM of the low configurations and clear of the MSI
//!   doorbell), in 4 KiB pages;
//! * on request, one dynamic window (DDW) at [`DDW_START`] (2^59, far above anything a 32-bit
//!   device could emit) with the page size ccdma picks.
//!
//! virtio-iommu keeps mappings, not entries, and refuses to split a mapping. The backend keeps a
//! shadow of every window's entries (real page, permission, and whether the entry starts a
//! virtio-iommu mapping): writing a run of entries whose pages are contiguous becomes one MAP;
//! clearing entries UNMAPs the whole mappings they belong to and MAPs back the parts outside the
//! cleared range. Every entry written must name memory the [ledger](crate::ledger) says is
//! shared: a call that would point a window at private memory is refused and counted as a
//! violation, so the premise "only the pool and shared coherent buffers are mapped" is checked on
//! every call, not just trusted.

use ccdma::iommu::hcall::{H_HARDWARE, H_PARAMETER, H_SUCCESS};
use ccdma::iommu::{DdwQuery, TceCalls, WindowGeometry, TCE_LIST_ENTRIES, TCE_PCI_READ, TCE_PCI_WRITE};
use ccdma::PhysAddr;
use core::fmt;
use core::ops::Range;
use spin::Mutex;
use virtio_drivers::transport::pci::PciTransport;

use crate::hal::DirectHal;
use crate::ledger::Violation;
use crate::memory::{self, PAGE_SIZE};
use crate::platform::PLATFORM;
use crate::virtio_iommu::{Domain, EndpointId, Fault, IommuError, Permissions, VirtioIommu};

/// The virtio-iommu driver as the backend uses it: its own DMA untranslated.
pub type Driver = VirtioIommu<DirectHal, PciTransport>;

/// First bus address of every device's default window.
pub const DEFAULT_WINDOW_START: u64 = 0x8000_0000;
/// Size of the default window: 256 MiB of 4 KiB entries.
pub const DEFAULT_WINDOW_SIZE: u64 = 256 << 20;
/// Where dynamic windows start.
pub const DDW_START: u64 = 1 << 59;
/// `ibm,query-pe-dma-window` page-size bits offered: 4 KiB, 64 KiB, 2 MiB, 16..256 MiB (any
/// power of two virtio-iommu's page-size mask allows; 16 GiB pages are left out).
const DDW_PAGE_SIZES: u32 = 0x01 | 0x02 | 0x100 | 0x04 | 0x08 | 0x10 | 0x20 | 0x40;
/// RTAS status for a refused DDW call.
const RTAS_ERROR: i64 = -3;

const MAX_ENDPOINTS: usize = 8;
const MAX_WINDOWS: usize = 16;
/// Shadow entries for all windows together (4 bytes each).
const SHADOW_ENTRIES: usize = 512 * 1024;

// Shadow entry: 0 = empty; bits 0..=1 permission (TCE_PCI_READ/WRITE), bit 2 = first entry of a
// virtio-iommu mapping, bits 3.. = 4 KiB frame number of the real page.
const SHADOW_PERMS: u32 = 3;
const SHADOW_HEAD: u32 = 4;
const SHADOW_PFN_SHIFT: u32 = 3;

/// Counters for the report.
#[derive(Clone, Copy, Debug, Default)]
pub struct IommuCounters {
    /// ATTACH requests sent.
    pub attach: u64,
    /// MAP requests sent.
    pub map: u64,
    /// UNMAP requests sent.
    pub unmap: u64,
    /// Requests the device refused or did not answer.
    pub failed: u64,
    /// Calls refused because an entry would name private memory (or a bad window or address).
    pub refused: u64,
    /// Fault reports taken off the event queue.
    pub faults: u64,
}

struct Window {
    geometry: WindowGeometry,
    domain: Domain,
    device: u32,
    /// This window's entries in the shadow array.
    shadow: Range<usize>,
}

struct Endpoint {
    device: u32,
    domain: Domain,
    default_liobn: u32,
    ddw_liobn: Option<u32>,
}

struct Backend {
    driver: Driver,
    endpoints: [Option<Endpoint>; MAX_ENDPOINTS],
    windows: [Option<Window>; MAX_WINDOWS],
    shadow: &'static mut [u32],
    shadow_used: usize,
    counters: IommuCounters,
    /// The last [`FAULT_LOG`] fault reports, by sequence number (`counters.faults` before each).
    faults: [Option<(u64, Fault)>; FAULT_LOG],
}

/// Fault reports kept for inspection.
pub const FAULT_LOG: usize = 16;

/// Lets the backend live in a static.
struct SendBackend(Backend);

// SAFETY: the kernel runs on one CPU with interrupts off; the driver's raw pointers name its own
// queues and DMA page, which it owns for its whole life, and every access goes through the mutex.
unsafe impl Send for SendBackend {}

/// The IOMMU half of the platform; empty until [`IommuBackend::install`].
pub struct IommuBackend {
    state: Mutex<Option<SendBackend>>,
}

static SHADOW: crate::dma::TakeOnce<[u32; SHADOW_ENTRIES]> = crate::dma::TakeOnce::new([0; SHADOW_ENTRIES]);

/// The platform already has an IOMMU.
#[derive(Debug)]
pub struct AlreadyInstalled;

/// Why registering a device failed.
#[derive(Debug)]
pub enum RegisterError {
    /// No IOMMU installed.
    NoIommu,
    /// No room for another endpoint, window or shadow.
    Full,
    /// The device refused the ATTACH.
    Attach(IommuError),
}

impl fmt::Display for RegisterError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Self::NoIommu => write!(f, "no IOMMU"),
            Self::Full => write!(f, "no room for another endpoint or window"),
            Self::Attach(error) => write!(f, "ATTACH: {error}"),
        }
    }
}

impl IommuBackend {
    /// No IOMMU yet.
    pub const fn new() -> Self {
        Self { state: Mutex::new(None) }
    }

    /// Takes over the initialised driver (bypass already off). Fails, dropping (resetting) the
    /// driver, if the backend already has one.
    pub fn install(&self, driver: Driver) -> Result<(), AlreadyInstalled> {
        let mut state = self.state.lock();
        if state.is_some() {
            return Err(AlreadyInstalled);
        }
        let Some(shadow) = SHADOW.take() else {
            return Err(AlreadyInstalled);
        };
        *state = Some(SendBackend(Backend {
            driver,
            endpoints: [const { None }; MAX_ENDPOINTS],
            windows: [const { None }; MAX_WINDOWS],
            shadow,
            shadow_used: 0,
            counters: IommuCounters::default(),
            faults: [None; FAULT_LOG],
        }));
        Ok(())
    }

    /// Whether an IOMMU is installed.
    pub fn present(&self) -> bool {
        self.state.lock().is_some()
    }

    /// Puts device `device` (its requester ID) behind the IOMMU: a domain of its own with a
    /// default window and nothing mapped. ccdma's attach of the device then finds the window.
    pub fn register(&self, device: u32) -> Result<u32, RegisterError> {
        let mut guard = self.state.lock();
        let backend = &mut guard.as_mut().ok_or(RegisterError::NoIommu)?.0;
        let slot = backend.endpoints.iter().position(Option::is_none).ok_or(RegisterError::Full)?;
        backend.counters.attach += 1;
        let domain = backend.driver.attach(EndpointId(device)).map_err(|error| {
            backend.counters.failed += 1;
            RegisterError::Attach(error)
        })?;
        let liobn = backend
            .new_window(device, domain, DEFAULT_WINDOW_START, DEFAULT_WINDOW_SIZE, 12)
            .ok_or(RegisterError::Full)?;
        backend.endpoints[slot] = Some(Endpoint { device, domain, default_liobn: liobn, ddw_liobn: None });
        Ok(domain.id())
    }

    /// Takes every pending fault report off the event queue; returns how many there were.
    pub fn poll_faults(&self) -> u64 {
        let mut guard = self.state.lock();
        let Some(SendBackend(backend)) = guard.as_mut() else {
            return 0;
        };
        let mut taken = 0;
        while let Ok(Some(fault)) = backend.driver.poll_fault() {
            log::info!("iommu: {fault}");
            let seq = backend.counters.faults;
            backend.faults[(seq % FAULT_LOG as u64) as usize] = Some((seq, fault));
            backend.counters.faults += 1;
            taken += 1;
        }
        taken
    }

    /// The fault reports numbered `since` and later (sequence numbers count from 0, as
    /// [`IommuCounters::faults`] does), as far as the log still holds them.
    pub fn faults_since(&self, since: u64) -> [Option<Fault>; FAULT_LOG] {
        let mut out = [None; FAULT_LOG];
        if let Some(SendBackend(backend)) = self.state.lock().as_ref() {
            let mut recent = backend.faults;
            recent.sort_unstable_by_key(|entry| entry.map_or(u64::MAX, |(seq, _)| seq));
            let kept = recent.iter().flatten().filter(|(seq, _)| *seq >= since).map(|&(_, fault)| fault);
            for (slot, fault) in out.iter_mut().zip(kept) {
                *slot = Some(fault);
            }
        }
        out
    }

    /// The counters.
    pub fn counters(&self) -> IommuCounters {
        self.state.lock().as_ref().map_or_else(IommuCounters::default, |backend| backend.0.counters)
    }

    /// Calls `visit(window start, entry index, page size, real address, permission)` for every
    /// live entry of `device`'s windows.
    pub fn for_each_entry(&self, device: u32, mut visit: impl FnMut(u64, u64, u64, u32)) {
        let guard = self.state.lock();
        let Some(SendBackend(backend)) = guard.as_ref() else {
            return;
        };
        for window in backend.windows.iter().flatten().filter(|w| w.device == device) {
            let page = window.geometry.page_size();
            for (index, &entry) in backend.shadow[window.shadow.clone()].iter().enumerate() {
                if entry != 0 {
                    let bus = window.geometry.start + index as u64 * page;
                    visit(bus, page, entry_real(entry), entry & SHADOW_PERMS);
                }
            }
        }
    }

    /// Where device `device` reaches bus address `bus`: `None` if the device is not behind the
    /// IOMMU, `Some(None)` if no entry translates `bus`, else the physical address.
    pub fn translate(&self, device: u32, bus: u64) -> Option<Option<u64>> {
        let guard = self.state.lock();
        let backend = &guard.as_ref()?.0;
        backend.endpoints.iter().flatten().find(|e| e.device == device)?;
        let found = backend.windows.iter().flatten().filter(|w| w.device == device).find_map(|w| {
            let g = w.geometry;
            let offset = bus.checked_sub(g.start).filter(|&o| o < g.size)?;
            let entry = backend.shadow[w.shadow.start + (offset >> g.page_shift) as usize];
            (entry != 0).then(|| entry_real(entry) + (offset & (g.page_size() - 1)))
        });
        Some(found)
    }

    /// Runs `f` on the installed backend, or returns `default` without one.
    fn with<R>(&self, default: R, f: impl FnOnce(&mut Backend) -> R) -> R {
        match self.state.lock().as_mut() {
            Some(SendBackend(backend)) => f(backend),
            None => default,
        }
    }
}

fn entry_real(entry: u32) -> u64 {
    u64::from(entry >> SHADOW_PFN_SHIFT) << 12
}

fn entry_of(tce: u64, head: bool) -> u32 {
    let perms = (tce & (TCE_PCI_READ | TCE_PCI_WRITE)) as u32;
    (((tce >> 12) as u32) << SHADOW_PFN_SHIFT) | perms | if head { SHADOW_HEAD } else { 0 }
}

fn permissions(perms: u32) -> Permissions {
    match perms {
        1 => Permissions::READ,
        2 => Permissions::WRITE,
        _ => Permissions::READ_WRITE,
    }
}

impl Backend {
    fn new_window(
        &mut self,
        device: u32,
        domain: Domain,
        start: u64,
        size: u64,
        page_shift: u32,
    ) -> Option<u32> {
        let entries = usize::try_from(size >> page_shift).ok()?;
        if self.shadow_used + entries > self.shadow.len() {
            return None;
        }
        let index = self.windows.iter().position(Option::is_none)?;
        let shadow = self.shadow_used..self.shadow_used + entries;
        self.shadow[shadow.clone()].fill(0);
        self.shadow_used += entries;
        let liobn = index as u32 + 1;
        let geometry = WindowGeometry { liobn, start, size, page_shift };
        self.windows[index] = Some(Window { geometry, domain, device, shadow });
        Some(liobn)
    }

    fn window(&self, liobn: u32) -> Option<&Window> {
        self.windows.get(liobn.checked_sub(1)? as usize)?.as_ref()
    }

    /// Entry index of `ioba` in window `liobn`, if it is a page-aligned address inside it with
    /// room for `count` entries.
    fn index(
        &self,
        liobn: u32,
        ioba: u64,
        count: u64,
    ) -> Option<(usize, WindowGeometry, Domain, Range<usize>)> {
        let window = self.window(liobn)?;
        let g = window.geometry;
        let offset = ioba.checked_sub(g.start)?;
        if offset % g.page_size() != 0 {
            return None;
        }
        let first = usize::try_from(offset >> g.page_shift).ok()?;
        let end = first.checked_add(usize::try_from(count).ok()?)?;
        (end <= window.shadow.len()).then(|| (first, g, window.domain, window.shadow.clone()))
    }

    /// Writes `count` entries from `first` with values `tce(i)` (0 clears). Entries are checked
    /// before anything changes.
    fn put(&mut self, liobn: u32, ioba: u64, count: u64, tce: impl Fn(u64) -> u64) -> i64 {
        let Some((first, g, domain, shadow)) = self.index(liobn, ioba, count) else {
            self.counters.refused += 1;
            return H_PARAMETER;
        };
        let page = g.page_size();
        for i in 0..count {
            let value = tce(i);
            if value == 0 {
                continue;
            }
            let real = value & !(page - 1) & !0xfff;
            let aligned = value & (page - 1) & !(TCE_PCI_READ | TCE_PCI_WRITE) == 0;
            let shared = PLATFORM.ledger().all_shared(real, page);
            if !aligned || value & (TCE_PCI_READ | TCE_PCI_WRITE) == 0 || shared.is_err() {
                if let Err(private) = shared {
                    PLATFORM.ledger().violation(Violation::DeviceGivenPrivate {
                        device: self.window(liobn).map_or(0, |w| w.device),
                        page: private,
                    });
                }
                self.counters.refused += 1;
                return H_PARAMETER;
            }
        }
        let base = shadow.start;
        // Old entries in the range go first (virtio-iommu refuses overlapping mappings).
        if let Err(code) = self.clear(domain, &g, base, first, count as usize) {
            return code;
        }
        // Runs of entries with contiguous real pages and one permission become one MAP each.
        let mut i = 0;
        while i < count {
            let value = tce(i);
            if value == 0 {
                i += 1;
                continue;
            }
            let mut run = 1;
            while i + run < count {
                let next = tce(i + run);
                if next == 0
                    || next & SHADOW_PERMS as u64 != value & SHADOW_PERMS as u64
                    || next & !(page - 1) != (value & !(page - 1)) + run * page
                {
                    break;
                }
                run += 1;
            }
            let iova = g.start + (first as u64 + i) * page;
            let real = value & !(page - 1);
            let perms = (value & SHADOW_PERMS as u64) as u32;
            if let Err(code) = self.map_run(domain, iova, real, run * page, perms) {
                return code;
            }
            for k in 0..run {
                let entry_value = (real + k * page) | u64::from(perms);
                self.shadow[base + first + (i + k) as usize] = entry_of(entry_value, k == 0);
            }
            i += run;
        }
        H_SUCCESS
    }

    fn map_run(&mut self, domain: Domain, iova: u64, real: u64, len: u64, perms: u32) -> Result<(), i64> {
        self.counters.map += 1;
        self.driver.map(domain, iova, real, len, permissions(perms)).map_err(|error| {
            self.counters.failed += 1;
            log::warn!("iommu: MAP {iova:#x}+{len:#x} -> {real:#x}: {error}");
            H_HARDWARE
        })
    }

    /// Clears entries `[first, first + count)` of the window whose shadow starts at `base`:
    /// UNMAPs every mapping touching the range and MAPs back what lies outside it.
    fn clear(
        &mut self,
        domain: Domain,
        g: &WindowGeometry,
        base: usize,
        first: usize,
        count: usize,
    ) -> Result<(), i64> {
        let end = first + count;
        let entries = &self.shadow[base..];
        if entries[first..end].iter().all(|&e| e == 0) {
            return Ok(());
        }
        // Widen to whole mappings: back to the head of the first, on past the tail of the last.
        let mut start = first;
        while start > 0 && entries[start] != 0 && entries[start] & SHADOW_HEAD == 0 {
            start -= 1;
        }
        let limit = (g.size >> g.page_shift) as usize;
        let mut stop = end;
        while stop < limit && entries[stop] != 0 && entries[stop] & SHADOW_HEAD == 0 {
            stop += 1;
        }
        let page = g.page_size();
        self.counters.unmap += 1;
        let iova = g.start + start as u64 * page;
        if let Err(error) = self.driver.unmap(domain, iova, (stop - start) as u64 * page) {
            self.counters.failed += 1;
            log::warn!("iommu: UNMAP {iova:#x}+{:#x}: {error}", (stop - start) as u64 * page);
            return Err(H_HARDWARE);
        }
        // Keep the outside parts: remember them, clear the whole span, write them back.
        let keep_before: Range<usize> = start..first;
        let keep_after: Range<usize> = end..stop;
        for part in [keep_before, keep_after] {
            if part.is_empty() {
                continue;
            }
            // Runs inside a kept part: a new mapping starts at its first entry and wherever a
            // head (an old mapping start) was.
            let mut i = part.start;
            while i < part.end {
                let entry = self.shadow[base + i];
                if entry == 0 {
                    i += 1;
                    continue;
                }
                let mut run = 1;
                while i + run < part.end {
                    let next = self.shadow[base + i + run];
                    if next == 0 || next & SHADOW_HEAD != 0 {
                        break;
                    }
                    run += 1;
                }
                let real = entry_real(entry);
                let iova = g.start + i as u64 * page;
                self.map_run(domain, iova, real, run as u64 * page, entry & SHADOW_PERMS)?;
                self.shadow[base + i] |= SHADOW_HEAD;
                i += run;
            }
        }
        self.shadow[base + first..base + end].fill(0);
        Ok(())
    }
}

impl TceCalls for IommuBackend {
    fn default_window(&self, device: u32) -> Option<WindowGeometry> {
        self.with(None, |b| {
            let endpoint = b.endpoints.iter().flatten().find(|e| e.device == device)?;
            b.window(endpoint.default_liobn).map(|w| w.geometry)
        })
    }

    fn indirect_available(&self) -> bool {
        true
    }

    fn h_put_tce(&self, liobn: u32, ioba: u64, tce: u64) -> i64 {
        self.with(H_HARDWARE, |b| b.put(liobn, ioba, 1, |_| tce))
    }

    fn h_get_tce(&self, liobn: u32, ioba: u64) -> (i64, u64) {
        self.with((H_HARDWARE, 0), |b| match b.index(liobn, ioba, 1) {
            Some((index, _, _, shadow)) => {
                let entry = b.shadow[shadow.start + index];
                let value = if entry == 0 { 0 } else { entry_real(entry) | u64::from(entry & SHADOW_PERMS) };
                (H_SUCCESS, value)
            }
            None => (H_PARAMETER, 0),
        })
    }

    fn h_put_tce_indirect(&self, liobn: u32, ioba: u64, list: PhysAddr, count: u64) -> i64 {
        if count as usize > TCE_LIST_ENTRIES || !list.0.is_multiple_of(PAGE_SIZE as u64) {
            return H_PARAMETER;
        }
        // The hypervisor can only read a shared list page.
        if PLATFORM.ledger().all_shared(list.0, PAGE_SIZE as u64).is_err() {
            return H_PARAMETER;
        }
        let Some(ptr) = memory::ptr_of(list.0, PAGE_SIZE) else {
            return H_PARAMETER;
        };
        let mut entries = [0u64; TCE_LIST_ENTRIES];
        // SAFETY: the list page is identity-mapped RAM (checked) that ccdma wrote the entries to
        // before the call; the "hypervisor" reads it once, into its own memory, as a real one would.
        unsafe {
            core::ptr::copy_nonoverlapping(ptr.as_ptr().cast::<u64>(), entries.as_mut_ptr(), count as usize)
        };
        self.with(H_HARDWARE, |b| b.put(liobn, ioba, count, |i| u64::from_be(entries[i as usize])))
    }

    fn h_stuff_tce(&self, liobn: u32, ioba: u64, value: u64, count: u64) -> i64 {
        self.with(H_HARDWARE, |b| {
            if value != 0 {
                return b.put(liobn, ioba, count, |_| value);
            }
            let Some((first, g, domain, shadow)) = b.index(liobn, ioba, count) else {
                b.counters.refused += 1;
                return H_PARAMETER;
            };
            match b.clear(domain, &g, shadow.start, first, count as usize) {
                Ok(()) => H_SUCCESS,
                Err(code) => code,
            }
        })
    }

    fn ddw_query(&self, device: u32) -> Result<DdwQuery, i64> {
        self.with(Err(RTAS_ERROR), |b| {
            let endpoint = b.endpoints.iter().flatten().find(|e| e.device == device).ok_or(RTAS_ERROR)?;
            Ok(DdwQuery {
                windows_available: u32::from(endpoint.ddw_liobn.is_none()),
                largest_block: (b.shadow.len() - b.shadow_used) as u64,
                page_sizes: DDW_PAGE_SIZES,
            })
        })
    }

    fn ddw_create(&self, device: u32, page_shift: u32, window_shift: u32) -> Result<WindowGeometry, i64> {
        self.with(Err(RTAS_ERROR), |b| {
            let slot = b.endpoints.iter().position(|e| e.as_ref().is_some_and(|e| e.device == device));
            let slot = slot.ok_or(RTAS_ERROR)?;
            let (domain, existing) =
                b.endpoints[slot].as_ref().map(|e| (e.domain, e.ddw_liobn)).ok_or(RTAS_ERROR)?;
            if existing.is_some() || window_shift < page_shift || window_shift > 40 {
                return Err(RTAS_ERROR);
            }
            let liobn =
                b.new_window(device, domain, DDW_START, 1 << window_shift, page_shift).ok_or(RTAS_ERROR)?;
            if let Some(endpoint) = b.endpoints[slot].as_mut() {
                endpoint.ddw_liobn = Some(liobn);
            }
            b.window(liobn).map(|w| w.geometry).ok_or(RTAS_ERROR)
        })
    }

    fn ddw_remove(&self, device: u32, liobn: u32) -> i64 {
        self.with(RTAS_ERROR, |b| {
            let Some(window) = b.window(liobn) else {
                return RTAS_ERROR;
            };
            if window.device != device {
                return RTAS_ERROR;
            }
            let (g, domain, shadow) = (window.geometry, window.domain, window.shadow.clone());
            b.counters.unmap += 1;
            if b.driver.unmap(domain, g.start, g.size).is_err() {
                b.counters.failed += 1;
                return RTAS_ERROR;
            }
            b.shadow[shadow].fill(0);
            b.windows[liobn as usize - 1] = None;
            if let Some(endpoint) = b.endpoints.iter_mut().flatten().find(|e| e.device == device) {
                endpoint.ddw_liobn = None;
            }
            0
        })
    }
}
