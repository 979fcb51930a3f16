//! ccdma's `TceCalls` on QEMU's sPAPR IOMMU: real `sc 1` TCE hypercalls and the DDW RTAS calls.
//!
//! Every entry a successful call wrote is read back with `H_GET_TCE` and checked by the software
//! ultravisor: an entry that grants access must name only shared pages ([`Tce::check_entries`]).
//!
//! QEMU gives each PCI host bridge one partitionable endpoint: all devices on the bridge share its
//! default window (one TCE table, one LIOBN) and its one dynamic window. ccdma keeps one domain (one
//! bus space, one set-up for the narrowest mask) per endpoint ([`TceCalls::endpoint`]). This kernel
//! puts devices of very different masks on one bridge (a 64-bit blk on the DDW next to 32-bit and
//! 21-bit devices on the default window), which one shared domain would serve only on the narrowest
//! mask's path. So it partitions the endpoint itself: each device gets its own slice of the default
//! window, reports the rest of the window as reserved for it ([`TceCalls::reserved_range`]) and is an
//! endpoint of its own to ccdma; no two devices' entries can land on the same bus address. Devices
//! registered into a group ([`Tce::register_in_group`]) share one ccdma domain instead, as PAPR
//! shares the windows: the group's first device's slice and windows serve them all.

use ccdma::iommu::hcall::{H_GET_TCE, H_PUT_TCE, H_PUT_TCE_INDIRECT, H_STUFF_TCE};
use ccdma::iommu::{DdwQuery, TceCalls, WindowGeometry};
use ccdma::PhysAddr;
use core::sync::atomic::{AtomicU64, Ordering};
use spin::Mutex;

use crate::devtree::Bridge;
use crate::hcall::hcall;
use crate::rtas;
use crate::uv::SoftUltravisor;

/// Page shift of QEMU's default window (4 KiB TCEs).
pub const DEFAULT_PAGE_SHIFT: u32 = 12;
/// Most devices the kernel registers.
const MAX_DEVICES: usize = 16;

/// Calls made, by kind.
#[derive(Default)]
pub struct Counters {
    /// `H_PUT_TCE`.
    pub put: AtomicU64,
    /// `H_PUT_TCE_INDIRECT`.
    pub put_indirect: AtomicU64,
    /// `H_PUT_TCE_INDIRECT` calls whose list page was not shared (the hypervisor could not read it).
    pub unshared_lists: AtomicU64,
    /// The most entries one `H_PUT_TCE_INDIRECT` carried (PAPR allows 512: one 4 KiB list page).
    pub indirect_most: AtomicU64,
    /// `H_PUT_TCE_INDIRECT` calls with more than 512 entries (PAPR's limit; QEMU refuses them).
    pub indirect_over_512: AtomicU64,
    /// `H_STUFF_TCE`.
    pub stuff: AtomicU64,
    /// `H_GET_TCE` made by ccdma (its read-back verification).
    pub get: AtomicU64,
    /// `H_GET_TCE` made by the ultravisor's check.
    pub get_check: AtomicU64,
    /// Entries the check read back.
    pub checked: AtomicU64,
    /// Entries that granted access to a page that was not shared.
    pub bad_entries: AtomicU64,
    /// Calls that returned an error.
    pub errors: AtomicU64,
    /// `ibm,query-pe-dma-window`, `ibm,create-pe-dma-window`, `ibm,remove-pe-dma-window`.
    pub ddw_query: AtomicU64,
    /// See `ddw_query`.
    pub ddw_create: AtomicU64,
    /// See `ddw_query`.
    pub ddw_remove: AtomicU64,
}

/// A device on the bridge and its slice of the default window.
#[derive(Clone, Copy)]
struct Registered {
    id: u32,
    slice: (u64, u64),
    /// The endpoint ccdma keys its domain by: the device alone, or a group sharing one domain.
    endpoint: u64,
    /// The bridge it sits on, when not the main one.
    bridge: Option<Bridge>,
}

/// Device ids of devices on another bridge than the main one carry this bit above the RTAS
/// configuration address (`bus << 16 | devfn << 8`), which alone does not tell bridges apart.
pub const OTHER_BRIDGE: u32 = 1 << 24;

/// The bridge's IOMMU as ccdma sees it.
pub struct Tce {
    bridge: Mutex<Option<Bridge>>,
    devices: Mutex<([Option<Registered>; MAX_DEVICES], usize)>,
    /// The dynamic window created, if any: (LIOBN, start, size, page shift).
    ddw: Mutex<Option<(u32, u64, u64, u32)>>,
    uv: &'static SoftUltravisor,
    /// The counters.
    pub counters: Counters,
}

/// An RTAS status that is not a hypervisor code: reported to ccdma as is.
const RTAS_FAILED: i64 = -1;
/// Query answer for a bridge without `ibm,ddw-applicable`: "no window available".
const NO_WINDOWS: DdwQuery = DdwQuery { windows_available: 0, largest_block: 0, page_sizes: 0 };

impl Tce {
    /// No bridge yet.
    pub const fn new(uv: &'static SoftUltravisor) -> Self {
        Self {
            bridge: Mutex::new(None),
            devices: Mutex::new(([None; MAX_DEVICES], 0)),
            ddw: Mutex::new(None),
            uv,
            counters: Counters {
                put: AtomicU64::new(0),
                put_indirect: AtomicU64::new(0),
                unshared_lists: AtomicU64::new(0),
                indirect_most: AtomicU64::new(0),
                indirect_over_512: AtomicU64::new(0),
                stuff: AtomicU64::new(0),
                get: AtomicU64::new(0),
                get_check: AtomicU64::new(0),
                checked: AtomicU64::new(0),
                bad_entries: AtomicU64::new(0),
                errors: AtomicU64::new(0),
                ddw_query: AtomicU64::new(0),
                ddw_create: AtomicU64::new(0),
                ddw_remove: AtomicU64::new(0),
            },
        }
    }

    /// Sets the bridge.
    pub fn set_bridge(&self, bridge: Bridge) {
        *self.bridge.lock() = Some(bridge);
    }

    /// Registers device `id` with its slice `[start, end)` of the default window.
    pub fn register(&self, id: u32, start: u64, end: u64) -> bool {
        let mut guard = self.devices.lock();
        let (list, count) = &mut *guard;
        if *count == MAX_DEVICES {
            return false;
        }
        list[*count] =
            Some(Registered { id, slice: (start, end), endpoint: 1 << 32 | u64::from(id), bridge: None });
        *count += 1;
        true
    }

    /// Registers device `id` into group `group`: one ccdma domain for the group's devices, with the
    /// slice of the group's first device (`start`, `end` of later ones are ignored).
    pub fn register_in_group(&self, id: u32, start: u64, end: u64, group: u32) -> bool {
        let endpoint = 2 << 32 | u64::from(group);
        let first = {
            let guard = self.devices.lock();
            guard.0[..guard.1].iter().flatten().find(|d| d.endpoint == endpoint).map(|d| d.slice)
        };
        let (start, end) = first.unwrap_or((start, end));
        if !self.register(id, start, end) {
            return false;
        }
        let mut guard = self.devices.lock();
        if let Some(d) = guard.0.iter_mut().flatten().find(|d| d.id == id) {
            d.endpoint = endpoint;
        }
        true
    }

    /// Registers device `id` (tagged [`OTHER_BRIDGE`]) on `bridge`, a host bridge of its own: its
    /// endpoint is the bridge's, its slice the bridge's whole default window.
    pub fn register_on_bridge(&self, id: u32, bridge: Bridge) -> bool {
        let (start, end) = (bridge.window_start, bridge.window_start + bridge.window_size);
        if !self.register(id, start, end) {
            return false;
        }
        let mut guard = self.devices.lock();
        if let Some(d) = guard.0.iter_mut().flatten().find(|d| d.id == id) {
            (d.endpoint, d.bridge) = (3 << 32 | bridge.buid, Some(bridge));
        }
        true
    }

    /// The bridge device `id` sits on.
    fn bridge_of(&self, id: u32) -> Option<Bridge> {
        self.registered(id).and_then(|d| d.bridge).or_else(|| self.bridge())
    }

    /// The windows device `id` translates through: (LIOBN, start, size, page shift) of its bridge's
    /// default window and, on the main bridge, the DDW.
    pub fn windows_of(&self, id: u32) -> [Option<(u32, u64, u64, u32)>; 2] {
        match self.registered(id).and_then(|d| d.bridge) {
            Some(b) => [Some((b.liobn, b.window_start, b.window_size, DEFAULT_PAGE_SHIFT)), None],
            None => [self.default_geometry(), self.ddw()],
        }
    }

    fn registered(&self, id: u32) -> Option<Registered> {
        let guard = self.devices.lock();
        guard.0[..guard.1].iter().flatten().find(|d| d.id == id).copied()
    }

    fn slice_of(&self, id: u32) -> Option<(u64, u64)> {
        self.registered(id).map(|d| d.slice)
    }

    /// The dynamic window, if one was created: (LIOBN, start, size, page shift).
    pub fn ddw(&self) -> Option<(u32, u64, u64, u32)> {
        *self.ddw.lock()
    }

    fn page_shift(&self, liobn: u32) -> u32 {
        match *self.ddw.lock() {
            Some((ddw, _, _, shift)) if ddw == liobn => shift,
            _ => DEFAULT_PAGE_SHIFT,
        }
    }

    /// `H_GET_TCE` as the ultravisor's check makes it (counted apart from ccdma's).
    pub fn read_entry(&self, liobn: u32, ioba: u64) -> Option<u64> {
        self.counters.get_check.fetch_add(1, Ordering::Relaxed);
        // SAFETY: H_GET_TCE takes no guest addresses.
        let (status, out) = unsafe { hcall(H_GET_TCE, [u64::from(liobn), ioba, 0, 0, 0, 0]) };
        (status == 0).then_some(out[0])
    }

    /// Reads back `count` entries from `ioba` and checks each one that grants access: every page
    /// it names must be shared. Counts entries that are not.
    fn check_entries(&self, liobn: u32, ioba: u64, count: u64) {
        let shift = self.page_shift(liobn);
        let page = 1u64 << shift;
        for i in 0..count {
            let at = ioba + i * page;
            self.counters.checked.fetch_add(1, Ordering::Relaxed);
            let Some(entry) = self.read_entry(liobn, at) else {
                self.counters.bad_entries.fetch_add(1, Ordering::Relaxed);
                log::error!("uv: H_GET_TCE({liobn:#x}, {at:#x}) failed after a successful write");
                continue;
            };
            if entry & 3 == 0 {
                continue;
            }
            let real = entry & !(page - 1) & !3;
            if let Err(private) = self.uv.ledger().all_shared(real, page) {
                self.counters.bad_entries.fetch_add(1, Ordering::Relaxed);
                log::error!("uv: TCE {liobn:#x}:{at:#x} = {entry:#x} grants private page {private:#x}");
            }
        }
    }

    fn count_error(&self, status: i64) -> i64 {
        if status != 0 {
            self.counters.errors.fetch_add(1, Ordering::Relaxed);
        }
        status
    }

    fn bridge(&self) -> Option<Bridge> {
        *self.bridge.lock()
    }

    /// The default window: (LIOBN, start, size, page shift).
    pub fn default_geometry(&self) -> Option<(u32, u64, u64, u32)> {
        let bridge = self.bridge()?;
        Some((bridge.liobn, bridge.window_start, bridge.window_size, DEFAULT_PAGE_SHIFT))
    }

    /// Scans the whole default window and the dynamic window with `H_GET_TCE`: live entries
    /// and how many of them name pages that are not shared.
    pub fn scan_live(&self) -> (u64, u64) {
        let other = {
            let guard = self.devices.lock();
            guard.0[..guard.1].iter().flatten().find_map(|d| d.bridge)
        };
        let other = other.map(|b| (b.liobn, b.window_start, b.window_size, DEFAULT_PAGE_SHIFT));
        let windows = [self.default_geometry(), self.ddw(), other];
        let (mut live, mut bad) = (0, 0);
        for (liobn, start, size, shift) in windows.into_iter().flatten() {
            let page = 1u64 << shift;
            for i in 0..size >> shift {
                let Some(entry) = self.read_entry(liobn, start + i * page) else { continue };
                if entry & 3 != 0 {
                    live += 1;
                    if self.uv.ledger().all_shared(entry & !(page - 1) & !3, page).is_err() {
                        bad += 1;
                    }
                }
            }
        }
        (live, bad)
    }

    /// The RTAS arguments naming the device's PE: config address, BUID high, BUID low.
    fn pe_args(&self, device: u32) -> Option<[u32; 3]> {
        let bridge = self.bridge_of(device)?;
        Some([device & !OTHER_BRIDGE, (bridge.buid >> 32) as u32, bridge.buid as u32])
    }
}

impl TceCalls for Tce {
    fn default_window(&self, device: u32) -> Option<WindowGeometry> {
        self.slice_of(device)?;
        let bridge = self.bridge_of(device)?;
        Some(WindowGeometry {
            liobn: bridge.liobn,
            start: bridge.window_start,
            size: bridge.window_size,
            page_shift: DEFAULT_PAGE_SHIFT,
        })
    }

    fn endpoint(&self, device: u32) -> u64 {
        self.registered(device).map_or(1 << 32 | u64::from(device), |d| d.endpoint)
    }

    fn reserved_range(&self, device: u32, index: usize) -> Option<(u64, u64)> {
        let (start, end) = self.slice_of(device)?;
        let bridge = self.bridge_of(device)?;
        let window_end = bridge.window_start + bridge.window_size;
        let below = (start > bridge.window_start).then(|| (bridge.window_start, start - bridge.window_start));
        let above = (end < window_end).then(|| (end, window_end - end));
        [below, above].into_iter().flatten().nth(index)
    }

    fn indirect_available(&self) -> bool {
        true
    }

    fn h_put_tce(&self, liobn: u32, ioba: u64, tce: u64) -> i64 {
        self.counters.put.fetch_add(1, Ordering::Relaxed);
        // SAFETY: H_PUT_TCE takes no guest addresses (the entry names memory for the device, which
        // the check below holds to shared pages).
        let (status, _) = unsafe { hcall(H_PUT_TCE, [u64::from(liobn), ioba, tce, 0, 0, 0]) };
        if status == 0 {
            self.check_entries(liobn, ioba, 1);
        }
        self.count_error(status)
    }

    fn h_get_tce(&self, liobn: u32, ioba: u64) -> (i64, u64) {
        self.counters.get.fetch_add(1, Ordering::Relaxed);
        // SAFETY: H_GET_TCE takes no guest addresses.
        let (status, out) = unsafe { hcall(H_GET_TCE, [u64::from(liobn), ioba, 0, 0, 0, 0]) };
        (self.count_error(status), out[0])
    }

    fn h_put_tce_indirect(&self, liobn: u32, ioba: u64, list: PhysAddr, count: u64) -> i64 {
        self.counters.put_indirect.fetch_add(1, Ordering::Relaxed);
        self.counters.indirect_most.fetch_max(count, Ordering::Relaxed);
        if count > 512 {
            self.counters.indirect_over_512.fetch_add(1, Ordering::Relaxed);
        }
        // The ultravisor's view: the hypervisor can read the list only if the page is shared.
        if !self.uv.ledger().is_shared(list.0) {
            self.counters.unshared_lists.fetch_add(1, Ordering::Relaxed);
            log::error!("uv: H_PUT_TCE_INDIRECT with list page {:#x}, which is not shared", list.0);
        }
        // SAFETY: the hypervisor only reads the list page (ccdma's shared list page, `count` <= 512
        // entries of it).
        let (status, _) = unsafe { hcall(H_PUT_TCE_INDIRECT, [u64::from(liobn), ioba, list.0, count, 0, 0]) };
        if status == 0 {
            self.check_entries(liobn, ioba, count);
        }
        self.count_error(status)
    }

    fn h_stuff_tce(&self, liobn: u32, ioba: u64, value: u64, count: u64) -> i64 {
        self.counters.stuff.fetch_add(1, Ordering::Relaxed);
        // SAFETY: H_STUFF_TCE takes no guest addresses.
        let (status, _) = unsafe { hcall(H_STUFF_TCE, [u64::from(liobn), ioba, value, count, 0, 0]) };
        if status == 0 && value & 3 != 0 {
            self.check_entries(liobn, ioba, count);
        }
        self.count_error(status)
    }

    fn ddw_query(&self, device: u32) -> Result<DdwQuery, i64> {
        let Some([query, _, _]) = self.bridge_of(device).and_then(|b| b.ddw) else { return Ok(NO_WINDOWS) };
        self.counters.ddw_query.fetch_add(1, Ordering::Relaxed);
        let args = self.pe_args(device).ok_or(RTAS_FAILED)?;
        // status, windows available, largest block (pages), page sizes, migration
        let [status, windows, largest, sizes, _] = rtas::call::<5>(query, &args).ok_or(RTAS_FAILED)?;
        if status != 0 {
            return Err(i64::from(status as i32));
        }
        Ok(DdwQuery { windows_available: windows, largest_block: u64::from(largest), page_sizes: sizes })
    }

    fn ddw_create(&self, device: u32, page_shift: u32, window_shift: u32) -> Result<WindowGeometry, i64> {
        let Some([_, create, _]) = self.bridge_of(device).and_then(|b| b.ddw) else {
            return Err(RTAS_FAILED);
        };
        self.counters.ddw_create.fetch_add(1, Ordering::Relaxed);
        let [a, b, c] = self.pe_args(device).ok_or(RTAS_FAILED)?;
        // status, LIOBN, start high, start low
        let [status, liobn, hi, lo] =
            rtas::call::<4>(create, &[a, b, c, page_shift, window_shift]).ok_or(RTAS_FAILED)?;
        if status != 0 {
            return Err(i64::from(status as i32));
        }
        let start = u64::from(hi) << 32 | u64::from(lo);
        let size = 1u64 << window_shift;
        *self.ddw.lock() = Some((liobn, start, size, page_shift));
        Ok(WindowGeometry { liobn, start, size, page_shift })
    }

    fn ddw_remove(&self, _device: u32, liobn: u32) -> i64 {
        let Some([_, _, remove]) = self.bridge().and_then(|b| b.ddw) else { return RTAS_FAILED };
        self.counters.ddw_remove.fetch_add(1, Ordering::Relaxed);
        let Some([status]) = rtas::call::<1>(remove, &[liobn]) else { return RTAS_FAILED };
        if status == 0 {
            *self.ddw.lock() = None;
        }
        i64::from(status as i32)
    }
}
