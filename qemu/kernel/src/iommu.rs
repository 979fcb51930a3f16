//! ccdma's native IOMMU backend ([`ccdma::iommu::IommuBackend`]) on QEMU's virtio-iommu: the
//! ranges ccdma enters into a device's windows become MAP requests, the ranges it clears UNMAP
//! requests. No TCE table is emulated: virtio-iommu keeps mappings, and so does this backend.
//!
//! Each managed device (endpoint = PCI requester ID) gets its own virtio-iommu domain when it is
//! [registered](VirtioIommuBackend::register), and in it the windows ccdma asks for:
//!
//! * a default window of [`DEFAULT_WINDOW_SIZE`] at [`DEFAULT_WINDOW_START`] (below 4 GiB, so
//!   32-bit devices can use it; above all RAM of the low configurations and clear of the MSI
//!   doorbell), in 4 KiB pages;
//! * on request, one dynamic window (DDW) at [`DDW_START`] (2^59, far above anything a 32-bit
//!   device could emit) with the page size ccdma picks.
//!
//! The backend records every live mapping (device, bus range, real range, permission) so the
//! checks can list what each device reaches. Every page a mapping names must be memory the
//! [ledger](crate::ledger) says is shared: a range that would point a window at private memory is
//! refused and counted as a violation, so the premise "only the pool and shared coherent buffers are
//! mapped" is checked on every call, not just trusted.

use ccdma::iommu::hcall::{H_HARDWARE, H_PARAMETER};
use ccdma::iommu::{DdwQuery, IommuBackend, PutFailure, WindowGeometry, TCE_PCI_READ, TCE_PCI_WRITE};
use ccdma::IommuError as CcdmaIommuError;
use ccdma_qemu_common::held::Held;
use core::fmt;
use core::mem::MaybeUninit;
use spin::Mutex;
use virtio_drivers::transport::pci::PciTransport;

use crate::hal::DirectHal;
use crate::ledger::Violation;
use crate::platform::PLATFORM;
use crate::virtio_iommu::{Domain, EndpointId, Fault, IommuError, Permissions, VirtioIommu};

/// The virtio-iommu driver as the backend uses it: its own DMA untranslated.
pub type Driver = VirtioIommu<DirectHal, PciTransport>;

/// First bus address of every device's default window.
pub const DEFAULT_WINDOW_START: u64 = 0x8000_0000;
/// Size of the default window: 256 MiB of 4 KiB pages.
pub const DEFAULT_WINDOW_SIZE: u64 = 256 << 20;
/// Where dynamic windows start.
pub const DDW_START: u64 = 1 << 59;
/// `ibm,query-pe-dma-window` page-size bits offered: 4 KiB, 64 KiB, 2 MiB, 16..256 MiB (any
/// power of two virtio-iommu's page-size mask allows; 16 GiB pages are left out).
const DDW_PAGE_SIZES: u32 = 0x01 | 0x02 | 0x100 | 0x04 | 0x08 | 0x10 | 0x20 | 0x40;
/// Pages a dynamic window may have.
const DDW_LARGEST_BLOCK: u64 = 1 << 31;
/// RTAS status for a refused DDW call.
const RTAS_ERROR: i64 = -3;

const MAX_ENDPOINTS: usize = 8;
const MAX_WINDOWS: usize = 16;
/// Live mappings of all devices together (premapped pools, strict mappings, lists, coherent
/// buffers; the refused-share check alone holds a few hundred).
const MAX_LIVE: usize = 4096;

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
    /// Ranges refused because a page would name private memory (or a bad window or address).
    pub refused: u64,
    /// Fault reports taken off the event queue.
    pub faults: u64,
}

#[derive(Clone, Copy)]
struct Window {
    geometry: WindowGeometry,
    domain: Domain,
    device: u32,
}

struct Endpoint {
    device: u32,
    domain: Domain,
    default_liobn: u32,
    ddw_liobn: Option<u32>,
}

/// One live virtio-iommu mapping.
#[derive(Clone, Copy)]
struct Live {
    device: u32,
    domain: Domain,
    iova: u64,
    len: u64,
    real: u64,
    perms: u64,
}

struct Backend {
    /// In [`DRIVER`]: built there in place, for good.
    driver: &'static mut Driver,
    endpoints: [Option<Endpoint>; MAX_ENDPOINTS],
    windows: [Option<Window>; MAX_WINDOWS],
    live: &'static mut [Option<Live>; MAX_LIVE],
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

/// The IOMMU half of the platform; empty until [`VirtioIommuBackend::install`].
pub struct VirtioIommuBackend {
    state: Mutex<Option<SendBackend>>,
}

static LIVE: crate::dma::TakeOnce<[Option<Live>; MAX_LIVE]> = crate::dma::TakeOnce::new([None; MAX_LIVE]);

/// Where the driver is built ([`driver_space`]): no stack frame holds it.
static DRIVER: Held<MaybeUninit<Driver>> = Held::new(MaybeUninit::uninit());

/// The memory to build the virtio-iommu driver in (`Driver::init_in`), the first time; `None` after.
pub fn driver_space() -> Option<&'static mut MaybeUninit<Driver>> {
    DRIVER.take()
}

/// The platform already has an IOMMU.
#[derive(Debug)]
pub struct AlreadyInstalled;

/// Why registering a device failed.
#[derive(Debug)]
pub enum RegisterError {
    /// No IOMMU installed.
    NoIommu,
    /// No room for another endpoint or window.
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

impl VirtioIommuBackend {
    /// No IOMMU yet.
    pub const fn new() -> Self {
        Self { state: Mutex::new(None) }
    }

    /// Takes over the initialised driver (bypass already off). Fails if the backend already has
    /// one (the driver is left as it is).
    pub fn install(&self, driver: &'static mut Driver) -> Result<(), AlreadyInstalled> {
        let mut state = self.state.lock();
        if state.is_some() {
            return Err(AlreadyInstalled);
        }
        let Some(live) = LIVE.take() else {
            return Err(AlreadyInstalled);
        };
        *state = Some(SendBackend(Backend {
            driver,
            endpoints: [const { None }; MAX_ENDPOINTS],
            windows: [None; MAX_WINDOWS],
            live,
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

    /// Calls `visit(bus, length, real address, permission)` for every live mapping of `device`.
    pub fn for_each_entry(&self, device: u32, mut visit: impl FnMut(u64, u64, u64, u32)) {
        let guard = self.state.lock();
        let Some(SendBackend(backend)) = guard.as_ref() else {
            return;
        };
        for m in backend.live.iter().flatten().filter(|m| m.device == device) {
            visit(m.iova, m.len, m.real, m.perms as u32);
        }
    }

    /// Where device `device` reaches bus address `bus`: `None` if the device is not behind the
    /// IOMMU, `Some(None)` if no mapping translates `bus`, else the physical address.
    pub fn translate(&self, device: u32, bus: u64) -> Option<Option<u64>> {
        let guard = self.state.lock();
        let backend = &guard.as_ref()?.0;
        backend.endpoints.iter().flatten().find(|e| e.device == device)?;
        let found = backend.live.iter().flatten().find_map(|m| {
            let off = bus.checked_sub(m.iova).filter(|&o| o < m.len)?;
            (m.device == device).then_some(m.real + off)
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

impl Default for VirtioIommuBackend {
    fn default() -> Self {
        Self::new()
    }
}

fn permissions(perms: u64) -> Permissions {
    match perms & (TCE_PCI_READ | TCE_PCI_WRITE) {
        TCE_PCI_READ => Permissions::READ,
        TCE_PCI_WRITE => Permissions::WRITE,
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
        let index = self.windows.iter().position(Option::is_none)?;
        let liobn = index as u32 + 1;
        let geometry = WindowGeometry { liobn, start, size, page_shift };
        self.windows[index] = Some(Window { geometry, domain, device });
        Some(liobn)
    }

    /// The window ccdma names, checked against what this backend created.
    fn window(&self, win: &WindowGeometry) -> Option<Window> {
        let w = (*self.windows.get(win.liobn.checked_sub(1)? as usize)?)?;
        (w.geometry == *win).then_some(w)
    }

    fn unmap_range(&mut self, domain: Domain, iova: u64, len: u64) -> Result<(), i64> {
        self.counters.unmap += 1;
        if let Err(error) = self.driver.unmap(domain, iova, len) {
            self.counters.failed += 1;
            log::warn!("iommu: UNMAP {iova:#x}+{len:#x}: {error}");
            return Err(H_HARDWARE);
        }
        let end = iova + len;
        for slot in self.live.iter_mut() {
            if slot.is_some_and(|m| m.domain == domain && m.iova >= iova && m.iova + m.len <= end) {
                *slot = None;
            }
        }
        Ok(())
    }

    /// Maps `npages` pages of `w` from `bus`, page `i` to `entry(i)`: one MAP per run of pages
    /// with contiguous real addresses and one permission. Every page is checked first.
    fn map(
        &mut self,
        w: Window,
        bus: u64,
        npages: u64,
        entry: &dyn Fn(u64) -> u64,
    ) -> Result<(), PutFailure> {
        let g = w.geometry;
        let page = g.page_size();
        let refuse = |b: &mut Backend| {
            b.counters.refused += 1;
            Err(PutFailure { err: CcdmaIommuError::Hcall(H_PARAMETER), clean: true })
        };
        let inside = bus.checked_sub(g.start).is_some_and(|off| {
            off % page == 0
                && npages
                    .checked_mul(page)
                    .is_some_and(|len| off.checked_add(len).is_some_and(|e| e <= g.size))
        });
        if !inside {
            return refuse(self);
        }
        for i in 0..npages {
            let value = entry(i);
            if value == 0 {
                continue;
            }
            let real = value & !(page - 1);
            let shared = PLATFORM.ledger().all_shared(real, page);
            if value & (page - 1) & !(TCE_PCI_READ | TCE_PCI_WRITE) != 0
                || value & (TCE_PCI_READ | TCE_PCI_WRITE) == 0
                || shared.is_err()
            {
                if let Err(private) = shared {
                    PLATFORM
                        .ledger()
                        .violation(Violation::DeviceGivenPrivate { device: w.device, page: private });
                }
                return refuse(self);
            }
        }
        let mut i = 0;
        while i < npages {
            let value = entry(i);
            if value == 0 {
                i += 1;
                continue;
            }
            let perms = value & (TCE_PCI_READ | TCE_PCI_WRITE);
            let real = value & !(page - 1);
            let mut run = 1;
            while i + run < npages {
                let next = entry(i + run);
                if next == 0
                    || next & (TCE_PCI_READ | TCE_PCI_WRITE) != perms
                    || next & !(page - 1) != real + run * page
                {
                    break;
                }
                run += 1;
            }
            let iova = bus + i * page;
            let len = run * page;
            let recorded = self.live.iter().position(Option::is_none);
            self.counters.map += 1;
            let mapped = match recorded {
                Some(_) => self.driver.map(w.domain, iova, real, len, permissions(perms)).map_err(|error| {
                    log::warn!("iommu: MAP {iova:#x}+{len:#x} -> {real:#x}: {error}");
                }),
                None => Err(()),
            };
            match (mapped, recorded) {
                (Ok(()), Some(slot)) => {
                    self.live[slot] =
                        Some(Live { device: w.device, domain: w.domain, iova, len, real, perms });
                }
                _ => {
                    self.counters.failed += 1;
                    // Undo what this call mapped: the range is all or nothing.
                    let clean = i == 0 || self.unmap_range(w.domain, bus, i * page).is_ok();
                    return Err(PutFailure { err: CcdmaIommuError::Hcall(H_HARDWARE), clean });
                }
            }
            i += run;
        }
        Ok(())
    }
}

impl IommuBackend for VirtioIommuBackend {
    fn default_window(&self, device: u32) -> Option<WindowGeometry> {
        self.with(None, |b| {
            let endpoint = b.endpoints.iter().flatten().find(|e| e.device == device)?;
            let liobn = endpoint.default_liobn;
            b.windows.get(liobn as usize - 1).copied().flatten().map(|w| w.geometry)
        })
    }

    fn ddw_query(&self, device: u32) -> Result<DdwQuery, i64> {
        self.with(Err(RTAS_ERROR), |b| {
            let endpoint = b.endpoints.iter().flatten().find(|e| e.device == device).ok_or(RTAS_ERROR)?;
            Ok(DdwQuery {
                windows_available: u32::from(endpoint.ddw_liobn.is_none()),
                largest_block: DDW_LARGEST_BLOCK,
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
            b.windows[liobn as usize - 1].map(|w| w.geometry).ok_or(RTAS_ERROR)
        })
    }

    fn ddw_remove(&self, device: u32, liobn: u32) -> i64 {
        self.with(RTAS_ERROR, |b| {
            let Some(window) = b.windows.get(liobn.wrapping_sub(1) as usize).copied().flatten() else {
                return RTAS_ERROR;
            };
            if window.device != device {
                return RTAS_ERROR;
            }
            let g = window.geometry;
            if b.unmap_range(window.domain, g.start, g.size).is_err() {
                return RTAS_ERROR;
            }
            b.windows[liobn as usize - 1] = None;
            if let Some(endpoint) = b.endpoints.iter_mut().flatten().find(|e| e.device == device) {
                endpoint.ddw_liobn = None;
            }
            0
        })
    }

    fn map(
        &self,
        win: &WindowGeometry,
        bus: u64,
        npages: u64,
        entry: &dyn Fn(u64) -> u64,
    ) -> Result<(), PutFailure> {
        let refused = Err(PutFailure { err: CcdmaIommuError::NoWindow, clean: true });
        self.with(refused, |b| match b.window(win) {
            Some(w) => b.map(w, bus, npages, entry),
            None => {
                b.counters.refused += 1;
                Err(PutFailure { err: CcdmaIommuError::NoWindow, clean: true })
            }
        })
    }

    fn unmap(&self, win: &WindowGeometry, bus: u64, npages: u64) -> Result<(), CcdmaIommuError> {
        self.with(Err(CcdmaIommuError::NoWindow), |b| {
            let w = b.window(win).ok_or(CcdmaIommuError::NoWindow)?;
            let len =
                npages.checked_mul(w.geometry.page_size()).ok_or(CcdmaIommuError::Hcall(H_PARAMETER))?;
            b.unmap_range(w.domain, bus, len).map_err(CcdmaIommuError::Hcall)
        })
    }
}
