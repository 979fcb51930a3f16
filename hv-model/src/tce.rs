//! The IOMMU as a pseries hypervisor offers it: one TCE table per LIOBN, a default window per device
//! (partitionable endpoint), dynamic DMA windows created on request, the TCE hypercalls with PAPR
//! return codes, and a [`BusTranslate`] that puts the tables between each device and memory.
//!
//! Every call goes through the [`CallLog`](crate::CallLog), so it is counted and can be made to fail,
//! partially succeed, answer busy, or report success without acting.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ccdma::iommu::hcall::{H_FUNCTION, H_NOT_ENOUGH_RESOURCES, H_PARAMETER, H_SUCCESS};
use ccdma::iommu::{DdwQuery, TceCalls, WindowGeometry, DDW_PAGE_SIZES, TCE_PCI_READ, TCE_PCI_WRITE};
use ccdma::PhysAddr;
use zerocopy::byteorder::big_endian::U64;
use zerocopy::{FromBytes, Immutable, KnownLayout};

use crate::calls::{CallKind, Injection};
use crate::device::{BusTranslate, DeviceRef};
use crate::faults::{AccessKind, FaultReason};
use crate::memory::{PageState, PAGE};
use crate::Hypervisor;

/// RTAS "parameter error / not supported" status.
pub const RTAS_PARAMETER_ERROR: i64 = -3;
/// RTAS "hardware error" status.
pub const RTAS_HARDWARE_ERROR: i64 = -1;

/// The `H_PUT_TCE_INDIRECT` list page as the hypervisor reads it: 512 big-endian entries.
#[derive(FromBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct TceList {
    /// The entries.
    pub entries: [U64; 512],
}

/// Geometry and behaviour of the modelled IOMMU.
#[derive(Clone, Debug)]
pub struct TceConfig {
    /// First bus address of every device's default window.
    pub default_start: u64,
    /// Size of the default window.
    pub default_size: u64,
    /// IOMMU page shift of the default window.
    pub default_page_shift: u32,
    /// Bus ranges of every device's windows that are reserved (MSI doorbells, host-bridge windows,
    /// firmware): reported to the guest, refused as TCE targets, faulted on device access.
    pub reserved: Vec<(u64, u64)>,
    /// `H_PUT_TCE_INDIRECT` available (firmware feature `hcall-multi-tce`).
    pub indirect: bool,
    /// Dynamic DMA windows available at all.
    pub ddw: bool,
    /// Where a created DDW starts.
    pub ddw_start: u64,
    /// Supported DDW page sizes (`DDW_PAGE_SIZES` bits).
    pub ddw_page_sizes: u32,
    /// Largest block of TCEs a DDW may have.
    pub ddw_largest_block: u64,
    /// DDWs one device may have at once.
    pub ddw_windows: u32,
    /// Most live entries one table holds (then `H_NOT_ENOUGH_RESOURCES`); `None`: no limit.
    pub max_entries_per_table: Option<u64>,
    /// Broken or lying firmware: every created DDW is reported (and modelled) as `(start, size,
    /// page_shift)` instead of the geometry asked for, however absurd (page shifts of 64 and more,
    /// unaligned starts, empty windows). `None`: as asked.
    pub ddw_reported: Option<(u64, u64, u32)>,
    /// Removing the last window of an endpoint, when it is not the default window, brings the
    /// default window back, empty: what LoPAPR asks and later QEMU does. `false`: Debian's QEMU 7.2,
    /// which leaves the endpoint with no window (the pseries kernel's check `qemu.bridge_windows`).
    pub restore_default_on_last_remove: bool,
}

impl Default for TceConfig {
    /// What QEMU's pseries machine (7.2) gives a PCI host bridge: a 1 GiB default window at 0 with
    /// 4 KiB pages; one DDW at `1 << 59` with 4 KiB, 64 KiB, 2 MiB and 16 MiB pages and a largest
    /// block of `1 << 31` TCEs; indirect calls on. Pinned by `tests/tests/qemu_fidelity.rs`.
    fn default() -> Self {
        TceConfig {
            default_start: 0,
            default_size: 1 << 30,
            default_page_shift: 12,
            reserved: Vec::new(),
            indirect: true,
            ddw: true,
            ddw_start: 1 << 59,
            ddw_page_sizes: 0x01 | 0x02 | 0x100 | 0x04,
            ddw_largest_block: 1 << 31,
            ddw_windows: 1,
            max_entries_per_table: None,
            ddw_reported: None,
            restore_default_on_last_remove: true,
        }
    }
}

/// One TCE table (one window).
#[derive(Clone, Debug)]
struct Table {
    device: u32,
    /// The partitionable endpoint (host bridge) the window belongs to.
    pe: u32,
    geometry: WindowGeometry,
    ddw: bool,
    entries: HashMap<u64, u64>,
}

impl Table {
    /// The entry holding `ioba`. Like QEMU, an address inside an IOMMU page names that page: the
    /// offset bits are ignored, not refused.
    fn index(&self, ioba: u64) -> Option<u64> {
        let g = &self.geometry;
        (ioba >= g.start && ioba < g.end()).then(|| (ioba - g.start) >> g.page_shift)
    }
    fn contains(&self, bus: u64) -> bool {
        bus >= self.geometry.start && bus < self.geometry.end()
    }
}

/// A partitionable endpoint: like QEMU, one per PCI host bridge, shared by every device on it. Its
/// window slots hold LIOBNs: slot 0 is the default window's (and the window created at bus 0 once the
/// default window is removed), the others DDWs'. A slot's table exists while the window is active.
#[derive(Clone, Debug, Default)]
struct Pe {
    slots: Vec<u32>,
    ddw_disabled: bool,
}

impl Pe {
    fn default(&self) -> u32 {
        self.slots[0]
    }
}

/// Counters of the modelled IOMMU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TceCounters {
    /// Entries set to a non-zero value by any call.
    pub entries_written: u64,
    /// Entries set to zero by any call (whether they were live or not).
    pub entries_cleared: u64,
    /// Entries live now over all tables.
    pub live_entries: u64,
    /// Tables (windows) existing now.
    pub tables: usize,
    /// DDWs existing now.
    pub ddws: usize,
    /// `H_PUT_TCE_INDIRECT` entries (in a secure guest) that named RAM which was not shared: the
    /// guest put a private address into a shared list page. A correct guest: never.
    pub listed_private_entries: u64,
    /// `H_PUT_TCE_INDIRECT` calls (in a secure guest) refused because the list page was not shared.
    pub unshared_lists: u64,
}

/// A window as the model reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableInfo {
    /// Owning device.
    pub device: u32,
    /// Geometry.
    pub geometry: WindowGeometry,
    /// A dynamic window.
    pub ddw: bool,
    /// Live entries.
    pub live: u64,
}

/// One live entry as a device can use it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reach {
    /// First bus address of the IOMMU page.
    pub bus: u64,
    /// Guest physical address it translates to.
    pub phys: u64,
    /// Bytes (the IOMMU page size).
    pub len: u64,
    /// The device may read.
    pub read: bool,
    /// The device may write.
    pub write: bool,
}

#[derive(Default)]
pub(crate) struct IommuState {
    cfg: TceConfig,
    tables: HashMap<u32, Table>,
    /// Partitionable endpoints by index.
    pes: HashMap<u32, Pe>,
    /// The endpoint of every device.
    dev_pe: HashMap<u32, u32>,
    /// Named host bridges (see [`Hypervisor::add_iommu_device_on_bridge`]) to their endpoint.
    bridges: HashMap<u32, u32>,
    next_pe: u32,
    next_liobn: u32,
    entries_written: u64,
    entries_cleared: u64,
    listed_private_entries: u64,
    unshared_lists: u64,
}

/// The IOMMU part of the model (off until [`Hypervisor::enable_iommu`]).
#[derive(Default)]
pub(crate) struct IommuModel {
    enabled: AtomicBool,
    state: Arc<Mutex<IommuState>>,
    /// Time every TCE hypercall takes outside the model's lock (see `set_tce_call_latency`).
    latency_ns: AtomicU64,
}

impl IommuModel {
    pub(crate) fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Acquire)
    }
}

/// The translation a device behind the IOMMU sees: its tables, looked up at every access.
pub struct TceTranslate {
    state: Arc<Mutex<IommuState>>,
}

impl BusTranslate for TceTranslate {
    fn translate(&self, device: u32, bus: u64, kind: AccessKind) -> Result<u64, FaultReason> {
        let st = self.state.lock().unwrap();
        if st.cfg.reserved.iter().any(|&(s, l)| bus >= s && bus - s < l) {
            return Err(FaultReason::ReservedRange);
        }
        let pe = st.dev_pe.get(&device).and_then(|p| st.pes.get(p)).ok_or(FaultReason::NoEntry)?;
        let table = pe
            .slots
            .iter()
            .filter_map(|l| st.tables.get(l))
            .find(|t| t.contains(bus))
            .ok_or(FaultReason::NoEntry)?;
        let g = table.geometry;
        let idx = (bus - g.start) >> g.page_shift;
        let tce = *table.entries.get(&idx).ok_or(FaultReason::NoEntry)?;
        let need = match kind {
            AccessKind::Read => TCE_PCI_READ,
            AccessKind::Write => TCE_PCI_WRITE,
        };
        if tce & need == 0 {
            return Err(FaultReason::Permission);
        }
        Ok((tce & !(g.page_size() - 1)) + (bus & (g.page_size() - 1)))
    }
}

impl IommuState {
    fn pe_of(&self, device: u32) -> Option<u32> {
        self.dev_pe.get(&device).copied()
    }

    /// Windows active on endpoint `pe`.
    fn active(&self, pe: u32) -> u32 {
        self.pes.get(&pe).map_or(0, |p| p.slots.iter().filter(|l| self.tables.contains_key(l)).count() as u32)
    }

    /// A new endpoint with its default window.
    fn new_pe(&mut self, device: u32) -> u32 {
        let pe = self.next_pe;
        self.next_pe += 1;
        let liobn = self.next_liobn;
        self.next_liobn += 1;
        self.pes.insert(pe, Pe { slots: vec![liobn], ddw_disabled: false });
        self.open_default(pe, device);
        pe
    }

    /// (Re)open endpoint `pe`'s default window, empty, as QEMU's `spapr_phb_dma_reset` does.
    fn open_default(&mut self, pe: u32, device: u32) {
        let Some(liobn) = self.pes.get(&pe).map(|p| p.default()) else { return };
        let geometry = WindowGeometry {
            liobn,
            start: self.cfg.default_start,
            size: self.cfg.default_size,
            page_shift: self.cfg.default_page_shift,
        };
        self.tables.insert(liobn, Table { device, pe, geometry, ddw: false, entries: HashMap::new() });
    }

    /// Like QEMU's `spapr_phb_dma_reset`: every window of `pe` goes, the default window comes back
    /// empty.
    fn reset_pe(&mut self, pe: u32, device: u32) {
        let slots = self.pes.get(&pe).map(|p| p.slots.clone()).unwrap_or_default();
        for l in slots {
            self.tables.remove(&l);
        }
        self.open_default(pe, device);
    }

    fn table_of(&mut self, liobn: u32) -> Option<&mut Table> {
        self.tables.get_mut(&liobn)
    }

    fn reserved_overlap(&self, start: u64, len: u64) -> bool {
        self.cfg.reserved.iter().any(|&(s, l)| start < s + l && s < start + len)
    }

    /// Validate one entry for `table` at `ioba`: `Ok(idx)` to write. Like QEMU, the target is not
    /// checked against RAM: an entry beyond RAM is stored, and a device access through it faults
    /// (`OutsideRam`), as QEMU rejects it.
    fn check_entry(&self, table: &Table, ioba: u64, tce: u64) -> Result<u64, i64> {
        let idx = table.index(ioba).ok_or(H_PARAMETER)?;
        let page = table.geometry.page_size();
        if tce & (TCE_PCI_READ | TCE_PCI_WRITE) != 0 && self.reserved_overlap(ioba & !(page - 1), page) {
            return Err(H_PARAMETER);
        }
        Ok(idx)
    }

    fn set(&mut self, liobn: u32, idx: u64, tce: u64) -> i64 {
        let max = self.cfg.max_entries_per_table;
        let Some(t) = self.tables.get_mut(&liobn) else { return H_PARAMETER };
        // Like QEMU (put_tce_emu): the value is stored as written; only zero empties the entry. An
        // entry without permission bits stays, and a device access through it is rejected.
        if tce == 0 {
            t.entries.remove(&idx);
            self.entries_cleared += 1;
        } else {
            if !t.entries.contains_key(&idx) && max.is_some_and(|m| t.entries.len() as u64 >= m) {
                return H_NOT_ENOUGH_RESOURCES;
            }
            t.entries.insert(idx, tce);
            self.entries_written += 1;
        }
        H_SUCCESS
    }
}

impl Hypervisor {
    /// Put devices behind the modelled IOMMU (before adding them with [`Hypervisor::add_iommu_device`]).
    pub fn enable_iommu(&self, cfg: TceConfig) {
        let mut st = self.iommu.state.lock().unwrap();
        st.cfg = cfg;
        st.next_liobn = st.next_liobn.max(1);
        self.iommu.enabled.store(true, Ordering::Release);
    }

    /// Add a device behind the IOMMU: its default window (a table of its own) and a translation through
    /// its tables.
    ///
    /// The device gets a PCI host bridge of its own (one partitionable endpoint, its default window
    /// and DDWs its alone). Devices that share a bridge: [`Hypervisor::add_iommu_device_on_bridge`].
    pub fn add_iommu_device(&self, id: u32, mask_bits: u32) -> DeviceRef<'_> {
        assert!(self.iommu.enabled(), "enable_iommu first");
        {
            let mut st = self.iommu.state.lock().unwrap();
            let pe = st.new_pe(id);
            st.dev_pe.insert(id, pe);
        }
        self.add_device_with(id, mask_bits, Arc::new(TceTranslate { state: self.iommu.state.clone() }))
    }

    /// Add a device behind the IOMMU on the PCI host bridge named `bridge` (any number; the first
    /// device names it). Like QEMU's pseries machine, the bridge is one partitionable endpoint: its
    /// default window and its DDW are shared by every device on it, each reaching every entry.
    pub fn add_iommu_device_on_bridge(&self, id: u32, mask_bits: u32, bridge: u32) -> DeviceRef<'_> {
        assert!(self.iommu.enabled(), "enable_iommu first");
        {
            let mut st = self.iommu.state.lock().unwrap();
            let pe = match st.bridges.get(&bridge) {
                Some(&pe) => pe,
                None => {
                    let pe = st.new_pe(id);
                    st.bridges.insert(bridge, pe);
                    pe
                }
            };
            st.dev_pe.insert(id, pe);
        }
        self.add_device_with(id, mask_bits, Arc::new(TceTranslate { state: self.iommu.state.clone() }))
    }

    /// Refuse DDW queries for one device (like booting with `disable_ddw`, or firmware without DDW for
    /// this slot).
    pub fn set_ddw_disabled(&self, device: u32, disabled: bool) {
        let mut st = self.iommu.state.lock().unwrap();
        if let Some(pe) = st.pe_of(device).and_then(|p| st.pes.get_mut(&p)) {
            pe.ddw_disabled = disabled;
        }
    }

    /// Turn the indirect call on or off (firmware with or without `hcall-multi-tce`).
    pub fn set_indirect(&self, on: bool) {
        self.iommu.state.lock().unwrap().cfg.indirect = on;
    }

    /// Counters of the modelled IOMMU.
    pub fn tce_counters(&self) -> TceCounters {
        let st = self.iommu.state.lock().unwrap();
        TceCounters {
            entries_written: st.entries_written,
            entries_cleared: st.entries_cleared,
            live_entries: st.tables.values().map(|t| t.entries.len() as u64).sum(),
            tables: st.tables.len(),
            ddws: st.tables.values().filter(|t| t.ddw).count(),
            listed_private_entries: st.listed_private_entries,
            unshared_lists: st.unshared_lists,
        }
    }

    /// Every table, sorted by LIOBN.
    pub fn tce_tables(&self) -> Vec<TableInfo> {
        let st = self.iommu.state.lock().unwrap();
        let mut v: Vec<TableInfo> = st
            .tables
            .values()
            .map(|t| TableInfo {
                device: t.device,
                geometry: t.geometry,
                ddw: t.ddw,
                live: t.entries.len() as u64,
            })
            .collect();
        v.sort_by_key(|t| t.geometry.liobn);
        v
    }

    /// Every live entry of a device's tables, sorted by bus address: what the device can reach.
    pub fn reachable(&self, device: u32) -> Vec<Reach> {
        let st = self.iommu.state.lock().unwrap();
        let pe = st.pe_of(device);
        let mut v: Vec<Reach> = st
            .tables
            .values()
            .filter(|t| Some(t.pe) == pe)
            .flat_map(|t| {
                let g = t.geometry;
                t.entries.iter().map(move |(&idx, &tce)| Reach {
                    bus: g.start + (idx << g.page_shift),
                    phys: tce & !(g.page_size() - 1),
                    len: g.page_size(),
                    read: tce & TCE_PCI_READ != 0,
                    write: tce & TCE_PCI_WRITE != 0,
                })
            })
            .collect();
        v.sort_by_key(|r| r.bus);
        v
    }

    /// Live entries (of any device) that name a page of `[phys, phys + len)`.
    pub fn tces_naming(&self, phys: u64, len: u64) -> usize {
        let st = self.iommu.state.lock().unwrap();
        st.tables
            .values()
            .flat_map(|t| {
                let page = t.geometry.page_size();
                t.entries.values().map(move |&tce| (tce & !(page - 1), page))
            })
            .filter(|&(p, page)| p < phys + len && phys < p + page)
            .count()
    }

    /// The 4 KiB frames some live entry names.
    pub(crate) fn named_frames(&self) -> std::collections::HashSet<u64> {
        let st = self.iommu.state.lock().unwrap();
        let mut out = std::collections::HashSet::new();
        for t in st.tables.values() {
            let page = t.geometry.page_size();
            for &tce in t.entries.values() {
                let p = tce & !(page - 1);
                out.extend(p / PAGE..(p + page) / PAGE);
            }
        }
        out
    }

    /// Live entries of untrusted devices whose target is not entirely shared memory: a device could aim
    /// at private memory through them. Invariant 1 wants none, ever. (An accepted device's entries
    /// name private pages on purpose; they count again the moment it stops being accepted.)
    pub fn tces_to_private(&self) -> usize {
        // Per endpoint, not per device: devices sharing a bridge reach the same entries once.
        let devices: Vec<(u32, u32)> =
            self.iommu.state.lock().unwrap().dev_pe.iter().map(|(&d, &p)| (d, p)).collect();
        let mut seen = std::collections::HashSet::new();
        devices
            .into_iter()
            .filter(|&(d, _)| !self.trust.is_accepted(d))
            .filter(|&(_, p)| seen.insert(p))
            .flat_map(|(d, _)| self.reachable(d))
            .filter(|r| (0..r.len / PAGE).any(|i| self.mem.state(r.phys + i * PAGE) != PageState::Shared))
            .count()
    }

    /// Make every TCE hypercall take `latency` (spun outside the model's lock, so calls of several
    /// threads overlap as a hypervisor serving several vCPUs does): the exit, entry and table work a
    /// real call costs. Zero (the default): calls cost what the model's bookkeeping costs.
    pub fn set_tce_call_latency(&self, latency: Duration) {
        self.iommu.latency_ns.store(latency.as_nanos() as u64, Ordering::Relaxed);
    }

    fn tce_enter(&self, kind: CallKind) -> Option<Injection> {
        let ns = self.iommu.latency_ns.load(Ordering::Relaxed);
        if ns > 0 {
            let until = Instant::now() + Duration::from_nanos(ns);
            while Instant::now() < until {
                std::hint::spin_loop();
            }
        }
        self.calls.enter(kind)
    }
}

/// How many of the `valid` leading entries a multi-entry call writes, and its status: an injected
/// failure writes none, an injected partial success at most its pages, and a bad entry (`bad`) ends
/// the call after the entries before it, as QEMU does.
fn prefix_outcome(inj: Option<Injection>, valid: u64, bad: Option<i64>) -> (u64, i64) {
    match (inj, bad) {
        (Some(Injection::Fail(c)) | Some(Injection::Busy(c)), _) => (0, c),
        (Some(Injection::Partial { pages, code }), _) if pages < valid => (pages, code),
        (Some(Injection::LieSuccess), None) => (0, H_SUCCESS),
        (_, Some(rc)) => (valid, rc),
        (Some(Injection::Partial { code, .. }), None) => (valid, code),
        (_, None) => (valid, H_SUCCESS),
    }
}

impl TceCalls for Hypervisor {
    fn default_window(&self, device: u32) -> Option<WindowGeometry> {
        if !self.iommu.enabled() {
            return None;
        }
        let st = self.iommu.state.lock().unwrap();
        let pe = st.pes.get(&st.pe_of(device)?)?;
        st.tables.get(&pe.default()).filter(|t| !t.ddw).map(|t| t.geometry)
    }

    fn behind_iommu(&self, device: u32) -> bool {
        self.iommu.enabled() && self.iommu.state.lock().unwrap().dev_pe.contains_key(&device)
    }

    fn endpoint(&self, device: u32) -> u64 {
        // The host bridge's endpoint, stable whatever happens to its windows (like the bridge's BUID
        // a pseries kernel reads from the device tree).
        let st = self.iommu.state.lock().unwrap();
        st.pe_of(device).map_or(1 << 32 | u64::from(device), |pe| 2 << 32 | u64::from(pe))
    }

    fn reserved_range(&self, device: u32, index: usize) -> Option<(u64, u64)> {
        let st = self.iommu.state.lock().unwrap();
        st.pe_of(device)?;
        st.cfg.reserved.get(index).copied()
    }

    fn indirect_available(&self) -> bool {
        self.iommu.state.lock().unwrap().cfg.indirect
    }

    fn h_put_tce(&self, liobn: u32, ioba: u64, tce: u64) -> i64 {
        let inj = self.tce_enter(CallKind::PutTce);
        let mut st = self.iommu.state.lock().unwrap();
        let Some(table) = st.tables.get(&liobn) else { return H_PARAMETER };
        let idx = match st.check_entry(table, ioba, tce) {
            Ok(i) => i,
            Err(rc) => return rc,
        };
        match inj {
            Some(Injection::Fail(c))
            | Some(Injection::Busy(c))
            | Some(Injection::Partial { code: c, .. }) => c,
            Some(Injection::LieSuccess) => H_SUCCESS,
            _ => st.set(liobn, idx, tce),
        }
    }

    fn h_get_tce(&self, liobn: u32, ioba: u64) -> (i64, u64) {
        let inj = self.tce_enter(CallKind::GetTce);
        let mut st = self.iommu.state.lock().unwrap();
        let Some(table) = st.table_of(liobn) else { return (H_PARAMETER, 0) };
        let Some(idx) = table.index(ioba) else { return (H_PARAMETER, 0) };
        let v = table.entries.get(&idx).copied().unwrap_or(0);
        match inj {
            Some(Injection::Fail(c))
            | Some(Injection::Busy(c))
            | Some(Injection::Partial { code: c, .. }) => (c, 0),
            // A lying read-back: success with an empty entry.
            Some(Injection::LieSuccess) => (H_SUCCESS, 0),
            _ => (H_SUCCESS, v),
        }
    }

    fn h_put_tce_indirect(&self, liobn: u32, ioba: u64, list: PhysAddr, count: u64) -> i64 {
        let inj = self.tce_enter(CallKind::PutTceIndirect);
        let mut st = self.iommu.state.lock().unwrap();
        if !st.cfg.indirect {
            return H_FUNCTION;
        }
        if count == 0 || count > 512 || list.0 % PAGE != 0 || !self.mem.contains(list.0, PAGE) {
            return H_PARAMETER;
        }
        // In a secure guest the hypervisor can read only shared pages.
        let secure = self.config().confidential;
        if secure && self.mem.state(list.0) != PageState::Shared {
            st.unshared_lists += 1;
            return H_PARAMETER;
        }
        let bytes = self.mem.read(list.0, PAGE as usize);
        let Ok(entries) = TceList::ref_from_bytes(&bytes[..]) else { return H_PARAMETER };
        let Some(table) = st.tables.get(&liobn) else { return H_PARAMETER };
        let page = table.geometry.page_size();
        if secure {
            // What the guest wrote into shared memory: an entry naming RAM that is not shared tells
            // the host a private address (the call itself goes on; the counter is the finding).
            let private = (0..count)
                .map(|i| entries.entries[i as usize].get())
                .filter(|&tce| tce & (TCE_PCI_READ | TCE_PCI_WRITE) != 0)
                .filter(|&tce| {
                    let phys = tce & !(page - 1);
                    (0..page / PAGE).any(|k| {
                        let p = phys + k * PAGE;
                        self.mem.contains(p, PAGE) && self.mem.state(p) != PageState::Shared
                    })
                })
                .count() as u64;
            st.listed_private_entries += private;
        }
        let Some(table) = st.tables.get(&liobn) else { return H_PARAMETER };
        // Like QEMU (h_put_tce_indirect): entries are written in order and the call stops at the
        // first bad one, so a list crossing the window end leaves its in-window prefix written.
        let mut todo = Vec::with_capacity(count as usize);
        let mut bad = None;
        for i in 0..count {
            let tce = entries.entries[i as usize].get();
            match st.check_entry(table, ioba + i * page, tce) {
                Ok(idx) => todo.push((idx, tce)),
                Err(rc) => {
                    bad = Some(rc);
                    break;
                }
            }
        }
        let (n, rc) = prefix_outcome(inj, todo.len() as u64, bad);
        for &(idx, tce) in &todo[..n as usize] {
            let r = st.set(liobn, idx, tce);
            if r != H_SUCCESS {
                return r;
            }
        }
        rc
    }

    fn h_stuff_tce(&self, liobn: u32, ioba: u64, value: u64, count: u64) -> i64 {
        let inj = self.tce_enter(CallKind::StuffTce);
        let mut st = self.iommu.state.lock().unwrap();
        // Like QEMU: an empty stuff is refused, as an empty indirect list is.
        if count == 0 {
            return H_PARAMETER;
        }
        let Some(table) = st.tables.get(&liobn) else { return H_PARAMETER };
        let page = table.geometry.page_size();
        // Like QEMU (h_stuff_tce): a count beyond the table's size is refused before anything is
        // written; otherwise entries are written in order up to the first bad one (a stuff crossing
        // the window end leaves its in-window prefix written).
        if count > table.geometry.size >> table.geometry.page_shift {
            return H_PARAMETER;
        }
        let mut idxs = Vec::with_capacity(count as usize);
        let mut bad = None;
        for i in 0..count {
            let checked = ioba.checked_add(i * page).ok_or(H_PARAMETER);
            match checked.and_then(|at| st.check_entry(table, at, value)) {
                Ok(idx) => idxs.push(idx),
                Err(rc) => {
                    bad = Some(rc);
                    break;
                }
            }
        }
        let (n, rc) = prefix_outcome(inj, idxs.len() as u64, bad);
        for &idx in &idxs[..n as usize] {
            let r = st.set(liobn, idx, value);
            if r != H_SUCCESS {
                return r;
            }
        }
        rc
    }

    fn ddw_query(&self, device: u32) -> Result<DdwQuery, i64> {
        let inj = self.tce_enter(CallKind::DdwQuery);
        let st = self.iommu.state.lock().unwrap();
        match inj {
            Some(Injection::Fail(c))
            | Some(Injection::Busy(c))
            | Some(Injection::Partial { code: c, .. }) => return Err(c),
            _ => {}
        }
        let pe_id = st.pe_of(device).ok_or(RTAS_PARAMETER_ERROR)?;
        let pe = st.pes.get(&pe_id).ok_or(RTAS_PARAMETER_ERROR)?;
        if !st.cfg.ddw || pe.ddw_disabled {
            return Err(RTAS_PARAMETER_ERROR);
        }
        // Like QEMU (rtas_ibm_query_pe_dma_window): the windows the bridge may still open, counting
        // the default window among the active ones.
        Ok(DdwQuery {
            windows_available: (1 + st.cfg.ddw_windows).saturating_sub(st.active(pe_id)),
            largest_block: st.cfg.ddw_largest_block,
            page_sizes: st.cfg.ddw_page_sizes,
        })
    }

    fn ddw_create(&self, device: u32, page_shift: u32, window_shift: u32) -> Result<WindowGeometry, i64> {
        let inj = self.tce_enter(CallKind::DdwCreate);
        let mut st = self.iommu.state.lock().unwrap();
        match inj {
            Some(Injection::Fail(c))
            | Some(Injection::Busy(c))
            | Some(Injection::Partial { code: c, .. }) => return Err(c),
            _ => {}
        }
        let cfg = st.cfg.clone();
        let pe_id = st.pe_of(device).ok_or(RTAS_PARAMETER_ERROR)?;
        let pe = st.pes.get(&pe_id).ok_or(RTAS_PARAMETER_ERROR)?;
        let supported =
            DDW_PAGE_SIZES.iter().any(|&(bit, s)| s == page_shift && cfg.ddw_page_sizes & bit != 0);
        // Like QEMU (rtas_ibm_create_pe_dma_window): the parameters are checked first (-3), then
        // asking for a window beyond the ones available is a hardware error (-1). QEMU has no
        // largest-block check; the model keeps one (-3) so no test can ask for an absurd table.
        if !cfg.ddw
            || pe.ddw_disabled
            || !supported
            || window_shift < page_shift
            || window_shift >= 64
            || (1u64 << (window_shift - page_shift)) > cfg.ddw_largest_block
        {
            return Err(RTAS_PARAMETER_ERROR);
        }
        let windows = st.active(pe_id);
        if windows > cfg.ddw_windows {
            return Err(RTAS_HARDWARE_ERROR);
        }
        // Like QEMU: the first free slot's LIOBN (the default window's once it was removed), at the
        // default window's start when no window is active, else at the DDW start.
        let free = pe.slots.iter().copied().find(|l| !st.tables.contains_key(l));
        let liobn = match free {
            Some(l) => l,
            None => {
                let l = st.next_liobn;
                st.next_liobn += 1;
                st.pes.get_mut(&pe_id).ok_or(RTAS_HARDWARE_ERROR)?.slots.push(l);
                l
            }
        };
        let start = if windows == 0 { cfg.default_start } else { cfg.ddw_start };
        let geometry = match cfg.ddw_reported {
            Some((start, size, page_shift)) => WindowGeometry { liobn, start, size, page_shift },
            None => WindowGeometry { liobn, start, size: 1 << window_shift, page_shift },
        };
        st.tables.insert(liobn, Table { device, pe: pe_id, geometry, ddw: true, entries: HashMap::new() });
        Ok(geometry)
    }

    fn ddw_remove(&self, device: u32, liobn: u32) -> i64 {
        let _ = device;
        let inj = self.tce_enter(CallKind::DdwRemove);
        let mut st = self.iommu.state.lock().unwrap();
        if let Some(status) = injected_rtas_status(&inj) {
            return status;
        }
        // Like QEMU (rtas_ibm_remove_pe_dma_window): the window is named by its LIOBN alone (any
        // device, any bridge may remove it), the default window included. When the last
        // non-default window of the bridge goes and no window is left, LoPAPR (and QEMU after 7.2)
        // reset the bridge: its default window comes back, empty. QEMU 7.2 does not
        // (`restore_default_on_last_remove`).
        let Some((pe, owner, ddw)) = st.tables.get(&liobn).map(|t| (t.pe, t.device, t.ddw)) else {
            return RTAS_PARAMETER_ERROR;
        };
        if !st.cfg.ddw {
            return RTAS_PARAMETER_ERROR;
        }
        st.tables.remove(&liobn);
        if ddw && st.active(pe) == 0 && st.cfg.restore_default_on_last_remove {
            st.reset_pe(pe, owner);
        }
        0
    }

    fn ddw_reset(&self, device: u32) -> i64 {
        let inj = self.tce_enter(CallKind::DdwReset);
        let mut st = self.iommu.state.lock().unwrap();
        if let Some(status) = injected_rtas_status(&inj) {
            return status;
        }
        // Like QEMU (rtas_ibm_reset_pe_dma_window, spapr_phb_dma_reset): every DDW of the bridge is
        // removed and the default window comes back with no entry.
        let Some(pe) = st.pe_of(device) else { return RTAS_PARAMETER_ERROR };
        if !st.cfg.ddw {
            return RTAS_PARAMETER_ERROR;
        }
        st.reset_pe(pe, device);
        0
    }
}

/// The status an injected fault makes an RTAS window call (remove, reset) return at once: the
/// failure's code, or 0 for a lie of success; `None` to run the call.
fn injected_rtas_status(inj: &Option<Injection>) -> Option<i64> {
    match inj {
        Some(Injection::Fail(c)) | Some(Injection::Busy(c)) | Some(Injection::Partial { code: c, .. }) => {
            Some(*c)
        }
        Some(Injection::LieSuccess) => Some(0),
        _ => None,
    }
}
