//! The engine of `random_ops.rs`: a guest per platform flavour, an oracle of everything live (devices,
//! mappings of both faces, scatter-gather lists, coherent buffers) with the bytes each side must see,
//! random operations, and the DESIGN.md section 7 invariants checked against the model after every
//! step.
#![allow(dead_code)]

use std::collections::HashMap;
use std::fmt;

use ccdma::sg::{dma_segments, SgEntry};
use ccdma::{
    BusAddr, CoherentBuffer, Device, DeviceConfig, DmaAttrs, DmaDirection, DmaError, DmaMask, DmaPath,
    IommuConfig, IommuError, PhysAddr, PoolConfig,
};
use ccdma_hv_model::{
    AccessKind, CallKind, DeviceRef, Fault, FaultReason, HvConfig, Hypervisor, PageState, Region, TceConfig,
};

use crate::ccdma_api as api;
use crate::ccdma_api::{Hv, Layer, SafeMapping};

// ---------------------------------------------------------------------------------------------------
// Known defects of issue 8 that are being fixed on main. Each gate keeps the random test green today
// and is pinned by an ignored test in `api_props.rs`; flip it to `true` once the fix lands.

/// Paths without an IOMMU refuse `detach` while the device has live mappings or buffers
/// (today they return `Ok`).
pub const FIXED_DETACH_BUSY_WITHOUT_IOMMU: bool = true;
/// Paths without an IOMMU keep a record of coherent buffers and refuse a free through the wrong
/// device or a second free (today both return `Ok` and unshare the pages).
pub const FIXED_COHERENT_RECORDS_WITHOUT_IOMMU: bool = true;
/// The raw face refuses to unmap a mapping made by the safe face (today it unmaps it).
pub const FIXED_RAW_REFUSES_SAFE: bool = true;
/// The premapped default window keeps `min_align_mask` bits above 4 KiB (today it loses them, and
/// `map_sg` fails with `PoolExhausted` on an idle pool whose bus base is not aligned to the mask).
pub const FIXED_PREMAPPED_MIN_ALIGN: bool = true;

// ---------------------------------------------------------------------------------------------------

const KIB: usize = 1024;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const PAGE: u64 = 4096;
/// Largest single mapping the tests ask for (the default pool's longest run).
const MAX_LEN: usize = 256 * KIB;
/// Bytes of one buffer cell in guest RAM (a mapping or a list lives in one cell).
const CELL: usize = 512 * KIB;
/// Cells in low RAM and in high RAM.
const CELLS_PER_REGION: usize = 20;
/// Coherent cells: 64 KiB each, below 16 MiB so every device's coherent mask reaches them.
const COH_BASE: u64 = 0x0040_0000;
const COH_CELL_PAGES: u64 = 16;
const COH_CELLS: usize = 64;
/// Devices attached at once (at most).
const MAX_DEVICES: usize = 6;
const MASKS: [u32; 6] = [24, 32, 36, 40, 48, 64];
const MIN_ALIGNS: [u64; 3] = [0, 0xFFF, 0x1FFF];
const DIRS: [DmaDirection; 3] =
    [DmaDirection::ToDevice, DmaDirection::FromDevice, DmaDirection::Bidirectional];

/// The platform flavours.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavour {
    /// Not confidential: direct and bounce-above-mask devices.
    Plain,
    /// pseries Secure VM without IOMMU: bounce everything.
    Pseries,
    /// TDX (MapGPA converting a few pages per call, so retries happen).
    Tdx,
    /// SEV-style bus encoding (C-bit cleared in bus addresses).
    Sev,
    /// pseries behind the TCE IOMMU, premapped, DDW for 64-bit devices.
    IommuDdw,
    /// pseries behind the TCE IOMMU, premapped, no DDW.
    IommuNoDdw,
    /// pseries behind the TCE IOMMU, strict.
    Strict,
    /// AMD SEV-SNP: PVALIDATE + Page State Change (7 entries per call, so requests resume), C-bit 51
    /// cleared in bus addresses.
    Snp,
    /// Arm CCA realm: RSI_IPA_STATE_SET (7 granules per call), devices use the alias at IPA bit 47, so
    /// only masks of 48 bits and more attach.
    Cca,
}

impl Flavour {
    pub const ALL: [Flavour; 9] = [
        Flavour::Plain,
        Flavour::Pseries,
        Flavour::Tdx,
        Flavour::Sev,
        Flavour::IommuDdw,
        Flavour::IommuNoDdw,
        Flavour::Strict,
        Flavour::Snp,
        Flavour::Cca,
    ];
    fn iommu(self) -> bool {
        matches!(self, Flavour::IommuDdw | Flavour::IommuNoDdw | Flavour::Strict)
    }
    fn confidential(self) -> bool {
        self != Flavour::Plain
    }
    fn index(self) -> u64 {
        Flavour::ALL.iter().position(|f| *f == self).unwrap() as u64
    }
}

// ---------------------------------------------------------------------------------------------------
// Random numbers (splitmix64: tiny, reproducible, no dependency).

pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
    pub fn index(&mut self, n: usize) -> usize {
        self.below(n as u64) as usize
    }
    pub fn chance(&mut self, num: u64, den: u64) -> bool {
        self.below(den) < num
    }
    pub fn pick<T: Copy>(&mut self, v: &[T]) -> T {
        v[self.index(v.len())]
    }
    /// 1..=256 KiB, log-uniform (most mappings small, some near the largest run).
    pub fn len(&mut self) -> usize {
        let k = self.below(19);
        1 + self.below(1 << k) as usize
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n + 8);
        while v.len() < n {
            v.extend_from_slice(&self.next().to_le_bytes());
        }
        v.truncate(n);
        v
    }
    fn attrs(&mut self) -> DmaAttrs {
        let mut a = DmaAttrs::NONE;
        if self.chance(1, 8) {
            a = a | DmaAttrs::SKIP_CPU_SYNC;
        }
        if self.chance(1, 4) {
            a = a | DmaAttrs::PRESERVE_UNWRITTEN;
        }
        if self.chance(1, 4) {
            a = a | DmaAttrs::NO_WARN;
        }
        a
    }
}

// ---------------------------------------------------------------------------------------------------
// The oracle's records.

struct DevRec {
    /// Boxed so the address stays put while safe mappings hold `&'static Device` to it.
    dev: Box<Device>,
    serial: u64,
    id: u32,
    bits: u32,
    min_align: u64,
    /// `None` while a deferred attach has not happened yet.
    path: Option<DmaPath>,
    /// Entries the device's windows hold with nothing live (its premapped pools).
    premap_entries: u64,
    /// Live safe-face mappings borrowing the device.
    safe_live: usize,
}

enum Face {
    Safe(Option<SafeMapping>),
    RawPhys,
    RawPtr(Box<[u8]>),
}

struct MapRec {
    dev: usize,
    face: Face,
    /// Main cell holding the original (none for heap buffers).
    cell: Option<usize>,
    phys: Option<u64>,
    bus: u64,
    len: usize,
    dir: DmaDirection,
    attrs: DmaAttrs,
    bounced: bool,
    /// What the original must hold.
    orig: Vec<u8>,
    /// What the device must see at `bus` (the slot, or the original itself when direct).
    view: Vec<u8>,
    /// Guest physical address of the bounce data (pool), for the misuse cases.
    data_phys: Option<u64>,
}

struct SgRec {
    dev: usize,
    list: Vec<SgEntry<'static>>,
    cell: usize,
    pieces: Vec<(u64, usize)>,
    dir: DmaDirection,
    attrs: DmaAttrs,
    bounced: Vec<bool>,
    orig: Vec<Vec<u8>>,
    view: Vec<Vec<u8>>,
}

struct CohRec {
    dev: usize,
    cell: usize,
    buf: CoherentBuffer,
    phys: u64,
    bus: u64,
    pages: u64,
    content: Vec<u8>,
}

#[derive(Clone, Copy, Debug)]
struct Stale {
    dev_serial: u64,
    bus: u64,
    len: usize,
    dir: DmaDirection,
    data_phys: Option<u64>,
    bounced: bool,
}

/// What a misuse must leave untouched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Snap {
    slots: u64,
    bus_ranges: usize,
    live_tces: u64,
    layer_shared: u64,
    coherent: u64,
    quarantined: u64,
}

/// Operation kinds (for the op log and the per-flavour counts).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Op {
    Attach,
    Detach,
    DetachBusy,
    MapPhys,
    MapPtr,
    MapSafe,
    Unmap,
    DeviceRead,
    DeviceWrite,
    SyncCpu,
    SyncDevice,
    CpuWrite,
    MapSg,
    UnmapSg,
    SgDevice,
    SgSync,
    AllocCoherent,
    FreeCoherent,
    CoherentIo,
    MisuseDoubleUnmap,
    MisuseWrongSize,
    MisuseWrongDir,
    MisuseNeverMapped,
    MisuseSync,
    MisuseZeroLen,
    MisuseSg,
    MisuseFreeWrongDevice,
    ProvokeFault,
    DrainAll,
}

/// A counted outcome, for the summary.
#[derive(Default)]
pub struct Summary {
    pub ops: u64,
    pub by_op: HashMap<Op, u64>,
    pub errors: HashMap<String, u64>,
    pub paths: HashMap<&'static str, u64>,
    pub provoked_faults: u64,
    pub full_checks: u64,
    pub idle_checks: u64,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut ops: Vec<_> = self.by_op.iter().collect();
        ops.sort();
        let mut errs: Vec<_> = self.errors.iter().collect();
        errs.sort();
        let mut paths: Vec<_> = self.paths.iter().collect();
        paths.sort();
        write!(
            f,
            "{} ops; {} full reach checks, {} idle baseline checks, {} provoked faults\n  ops: {:?}\n  expected errors: {:?}\n  paths: {:?}",
            self.ops, self.full_checks, self.idle_checks, self.provoked_faults, ops, errs, paths
        )
    }
}

// ---------------------------------------------------------------------------------------------------

/// One flavour's guest, oracle and random source. Field order matters: mappings (which borrow
/// devices) drop before the devices.
pub struct Runner {
    maps: Vec<MapRec>,
    sgs: Vec<SgRec>,
    cohs: Vec<CohRec>,
    devs: Vec<Option<DevRec>>,
    stale: Vec<Stale>,
    hv: Hv,
    layer: &'static Layer,
    flavour: Flavour,
    rng: Rng,
    pools: Vec<(u64, u64)>,
    cells: Vec<(u64, bool)>,
    coh_cells: Vec<bool>,
    next_id: u32,
    next_serial: u64,
    base_model_shared: u64,
    base_layer_shared: u64,
    fp_tce: u64,
    fp_share: u64,
    pub summary: Summary,
}

fn tce_calls(hv: &Hypervisor) -> u64 {
    let c = hv.calls().counts();
    [CallKind::PutTce, CallKind::PutTceIndirect, CallKind::StuffTce, CallKind::DdwCreate, CallKind::DdwRemove]
        .iter()
        .map(|k| c.get(k).copied().unwrap_or(0))
        .sum()
}

fn share_calls(hv: &Hypervisor) -> u64 {
    let c = hv.calls().counts();
    CallKind::SHARING.iter().map(|k| c.get(k).copied().unwrap_or(0)).sum()
}

fn err_name(e: &DmaError) -> String {
    let s = format!("{e:?}");
    s.split(['(', ' ', '{']).next().unwrap_or("?").to_string()
}

impl Runner {
    pub fn new(flavour: Flavour, seed: u64) -> Runner {
        let ram = 6 * GIB;
        let cfg = match flavour {
            Flavour::Plain => HvConfig::plain(ram),
            Flavour::Pseries | Flavour::IommuDdw | Flavour::IommuNoDdw | Flavour::Strict => {
                HvConfig::pseries(ram)
            }
            Flavour::Tdx => HvConfig { tdx_pages_per_call: Some(7), ..HvConfig::tdx(ram) },
            Flavour::Sev => HvConfig { bus_encoding: ccdma::BusEncoding::sev(47), ..HvConfig::pseries(ram) },
            Flavour::Snp => HvConfig { snp_entries_per_call: Some(7), ..HvConfig::snp(ram) },
            Flavour::Cca => HvConfig { cca_granules_per_call: Some(7), ..HvConfig::cca(ram) },
        };
        let hv: Hv = Box::leak(Box::new(Hypervisor::new(cfg)));
        let mut layer = api::new_layer(hv);
        let pools: Vec<(u64, u64)> = if flavour.iommu() {
            vec![(0x0080_0000, 8 * MIB), (0x1000_0000, 8 * MIB)]
        } else {
            vec![(0x0080_0000, 4 * MIB), (0x1000_0000, 8 * MIB)]
        };
        for &(phys, len) in &pools {
            let cfg = PoolConfig::default();
            // SAFETY: the pools sit below 1 GiB, where `Hypervisor::alloc` never hands out memory, away
            // from the coherent cells, each range used for one pool only.
            unsafe { api::add_pool(&mut layer, phys, len as usize, cfg.slots_for(len as usize), cfg) }
                .expect("pool");
        }
        if flavour.iommu() {
            hv.enable_iommu(TceConfig {
                // Without DDW, no platform reservation: the first pool lands at bus 0x1000, so bus
                // addresses keep min_align_mask bits above 4 KiB only if the layer sees to it.
                reserved: if flavour == Flavour::IommuNoDdw { vec![] } else { vec![(0, MIB)] },
                ddw: flavour == Flavour::IommuDdw,
                ..TceConfig::default()
            });
            let list_page = hv.alloc(2 * PAGE, Region::Low);
            // One TCE batching per IOMMU flavour: strict maps through two per-CPU pages, the
            // default-window flavour has no list page (one H_PUT_TCE per entry), DDW the shared page.
            let batching = match flavour {
                Flavour::Strict => ccdma::TceBatching::PerCpuPages { first: PhysAddr(list_page), count: 2 },
                Flavour::IommuNoDdw => ccdma::TceBatching::PerEntry,
                _ => ccdma::TceBatching::SharedPage(PhysAddr(list_page)),
            };
            let cfg = match flavour {
                Flavour::Strict => IommuConfig::strict(),
                Flavour::IommuNoDdw => IommuConfig::premapped().with_ddw(false),
                _ => IommuConfig::premapped(),
            }
            .with_batching(batching)
            .with_max_domains(8);
            // SAFETY: the list pages are a fresh allocation nothing else touches.
            unsafe { api::enable_iommu(&mut layer, cfg, 8 * 512) }.expect("enable_iommu");
        }
        let mut cells = Vec::new();
        for region in [Region::Low, Region::High] {
            let base = hv.alloc((CELL * CELLS_PER_REGION) as u64, region);
            for k in 0..CELLS_PER_REGION {
                cells.push((base + (k * CELL) as u64, false));
            }
        }
        let layer: &'static Layer = Box::leak(Box::new(layer));
        let base_model_shared = hv.shared_pages();
        let base_layer_shared = layer.stats().shared_pages;
        let mut r = Runner {
            maps: Vec::new(),
            sgs: Vec::new(),
            cohs: Vec::new(),
            devs: (0..MAX_DEVICES).map(|_| None).collect(),
            stale: Vec::new(),
            hv,
            layer,
            flavour,
            rng: Rng::new(seed),
            pools,
            cells,
            coh_cells: vec![false; COH_CELLS],
            next_id: 0x100,
            next_serial: 1,
            base_model_shared,
            base_layer_shared,
            fp_tce: 0,
            fp_share: 0,
            summary: Summary::default(),
        };
        r.fp_tce = tce_calls(hv);
        r.fp_share = share_calls(hv);
        if flavour.confidential() {
            for &(p, l) in &r.pools {
                assert!(hv.memory().all_shared(p, l), "pool {p:#x} not shared");
            }
        }
        r
    }

    // -----------------------------------------------------------------------------------------------
    // Small helpers.

    fn dev(&self, slot: usize) -> &DevRec {
        self.devs[slot].as_ref().expect("device slot")
    }

    /// The device as `&'static` for a safe-face mapping.
    fn dev_static(&self, slot: usize) -> &'static Device {
        let p: *const Device = &*self.dev(slot).dev;
        // SAFETY: the device lives in a `Box` that is neither moved out of nor dropped while a safe
        // mapping made with this reference is live: `safe_live` counts those mappings, the runner never
        // detaches (moves out of the box) while it is non-zero, and the `maps` field drops before
        // `devs`.
        unsafe { &*p }
    }

    fn model_dev(&self, slot: usize) -> DeviceRef<'static> {
        self.hv.device(self.dev(slot).id)
    }

    fn attached(&self) -> Vec<usize> {
        (0..MAX_DEVICES).filter(|&i| self.devs[i].is_some()).collect()
    }

    fn pick_dev(&mut self) -> Option<usize> {
        let a = self.attached();
        (!a.is_empty()).then(|| self.rng.pick(&a))
    }

    fn free_cell(&mut self) -> Option<usize> {
        let free: Vec<usize> = (0..self.cells.len()).filter(|&i| !self.cells[i].1).collect();
        (!free.is_empty()).then(|| self.rng.pick(&free))
    }

    fn dev_live(&self, slot: usize) -> usize {
        self.maps.iter().filter(|m| m.dev == slot).count()
            + self.sgs.iter().filter(|s| s.dev == slot).count()
            + self.cohs.iter().filter(|c| c.dev == slot).count()
    }

    fn idle(&self) -> bool {
        self.maps.is_empty() && self.sgs.is_empty() && self.cohs.is_empty()
    }

    fn snap(&self) -> Snap {
        let s = self.layer.stats();
        Snap {
            slots: s.slots_in_use,
            bus_ranges: self.layer.live_bus_ranges(),
            live_tces: if self.flavour.iommu() { self.hv.tce_counters().live_entries } else { 0 },
            layer_shared: s.shared_pages,
            coherent: self.layer.iommu_stats().coherent_buffers,
            quarantined: s.quarantined_pages,
        }
    }

    /// After a failed call on `slot`: nothing changed, except the premapped windows of a deferred
    /// device that the call attached (attach happens at the first map or allocation, even one that
    /// fails).
    fn assert_unchanged_after(&self, before: Snap, was_deferred: bool, slot: usize, what: &str) {
        let now = self.snap();
        if was_deferred && self.path(slot).is_some() {
            let strip = |s: Snap| Snap { bus_ranges: 0, live_tces: 0, ..s };
            assert_eq!(strip(before), strip(now), "{what} left something behind");
        } else {
            assert_eq!(before, now, "{what} left something behind");
        }
    }

    fn expect_err(&mut self, r: Result<(), DmaError>, what: &str) -> DmaError {
        match r {
            Ok(()) => panic!("{what}: expected an error, got Ok"),
            Err(e) => {
                *self.summary.errors.entry(err_name(&e)).or_default() += 1;
                e
            }
        }
    }

    fn count_err(&mut self, e: &DmaError) {
        *self.summary.errors.entry(err_name(e)).or_default() += 1;
    }

    /// Expect exactly `want` in the fault log, then forget it.
    fn expect_faults(&mut self, want: &[Fault]) {
        let got = self.hv.faults();
        assert_eq!(got, want, "fault log differs from the faults provoked on purpose");
        self.summary.provoked_faults += want.len() as u64;
        self.hv.clear_faults();
    }

    fn fault(&self, slot: usize, bus: u64, kind: AccessKind, reason: FaultReason) -> Fault {
        Fault { device: self.dev(slot).id, bus, kind, reason }
    }

    fn path(&self, slot: usize) -> Option<DmaPath> {
        self.dev(slot).path
    }

    fn strict(&self, slot: usize) -> bool {
        self.path(slot) == Some(DmaPath::IommuStrict)
    }

    /// After an operation that may have attached a deferred device: learn its path.
    fn refresh_path(&mut self, slot: usize) {
        if self.dev(slot).path.is_some() {
            return;
        }
        let p = api::path_of(self.layer, &self.dev(slot).dev);
        if p == DmaPath::IommuDeferred {
            return;
        }
        self.resolve_path(slot, p);
    }

    fn resolve_path(&mut self, slot: usize, p: DmaPath) {
        let bits = self.dev(slot).bits;
        let allowed: &[DmaPath] = match self.flavour {
            Flavour::Plain if bits >= 33 => &[DmaPath::Direct],
            Flavour::Plain => &[DmaPath::BounceAboveMask],
            Flavour::Pseries | Flavour::Tdx | Flavour::Sev | Flavour::Snp | Flavour::Cca => {
                &[DmaPath::BounceAlways]
            }
            Flavour::IommuDdw if bits == 64 => &[DmaPath::IommuDdw],
            Flavour::IommuDdw | Flavour::IommuNoDdw if bits >= 32 => &[DmaPath::IommuPremapped],
            Flavour::IommuDdw | Flavour::IommuNoDdw => &[DmaPath::IommuPremapped, DmaPath::IommuStrict],
            Flavour::Strict => &[DmaPath::IommuStrict],
        };
        assert!(allowed.contains(&p), "{bits}-bit device got path {p:?}, expected one of {allowed:?}");
        *self.summary.paths.entry(p.name()).or_default() += 1;
        let id = self.dev(slot).id;
        let premap = if self.flavour.iommu() && p != DmaPath::IommuStrict {
            let reach = self.hv.reachable(id);
            reach.iter().filter(|r| self.in_pool(r.phys, r.len)).count() as u64
        } else {
            0
        };
        let d = self.devs[slot].as_mut().unwrap();
        d.path = Some(p);
        d.premap_entries = premap;
    }

    fn in_pool(&self, phys: u64, len: u64) -> bool {
        self.pools.iter().any(|&(p, l)| phys >= p && phys + len <= p + l)
    }

    /// Pool-relative data address of a bounced mapping, computed through the model's translation.
    fn data_phys(&self, slot: usize, bus: u64) -> Option<u64> {
        let id = self.dev(slot).id;
        if self.flavour.iommu() {
            let path = self.path(slot)?;
            if path == DmaPath::IommuStrict {
                let page = bus & !(PAGE - 1);
                return self.hv.reachable(id).iter().find(|r| r.bus == page).map(|r| r.phys + (bus - page));
            }
            let dev = &self.dev(slot).dev;
            for i in 0..self.pools.len() {
                if let Some(b) = self.layer.pool_bus_of(dev, i) {
                    let (p, l) = self.pools[i];
                    if bus >= b.0 && bus < b.0 + l {
                        return Some(p + (bus - b.0));
                    }
                }
            }
            None
        } else {
            let phys = self.hv.config().bus_encoding.phys(BusAddr(bus)).0;
            self.in_pool(phys, 1).then_some(phys)
        }
    }

    // -----------------------------------------------------------------------------------------------
    // The invariants, after every step.

    pub fn check(&mut self) {
        // Invariant 1 (and every other refused access): the log holds no fault we did not provoke
        // (provoked ones are matched and cleared where they are provoked).
        let faults = self.hv.faults();
        assert!(faults.is_empty(), "unexpected device faults: {faults:?}");
        // Coherent buffers as the oracle knows them.
        let st = self.layer.iommu_stats();
        assert_eq!(st.coherent_buffers, self.cohs.len() as u64, "coherent buffer count");
        assert_eq!(st.coherent_pages, self.cohs.iter().map(|c| c.pages).sum::<u64>(), "coherent pages");
        assert_eq!(self.layer.stats().quarantined_pages, 0, "quarantine without any injected failure");
        let tce = tce_calls(self.hv);
        let share = share_calls(self.hv);
        let share_changed = share != self.fp_share;
        if share_changed {
            self.fp_share = share;
            self.check_shared();
        }
        if tce != self.fp_tce || share_changed {
            self.fp_tce = tce;
            self.check_reach();
        }
        if self.idle() {
            self.check_idle();
        }
    }

    fn check_shared(&mut self) {
        if !self.flavour.confidential() {
            return;
        }
        let coh: u64 = self.cohs.iter().map(|c| c.pages).sum();
        assert_eq!(self.hv.shared_pages(), self.base_model_shared + coh, "model: shared pages");
        assert_eq!(self.layer.stats().shared_pages, self.base_layer_shared + coh, "layer: shared pages");
        for c in &self.cohs {
            assert!(self.hv.memory().all_shared(c.phys, c.pages * PAGE), "coherent buffer not shared");
        }
    }

    /// Invariants 1-3 on every window: entries only on shared memory; strict devices reach only live
    /// mappings (and coherent buffers) with their direction's permission; premapped devices reach only
    /// the pools and their coherent buffers.
    fn check_reach(&mut self) {
        if !self.flavour.iommu() {
            return;
        }
        self.summary.full_checks += 1;
        for &(p, l) in &self.pools {
            assert!(self.hv.memory().all_shared(p, l), "pool {p:#x} not shared while premapped");
        }
        for slot in self.attached() {
            let d = self.dev(slot);
            let reach = self.hv.reachable(d.id);
            let Some(path) = d.path else {
                assert!(reach.is_empty(), "deferred device reaches memory before its attach");
                continue;
            };
            for r in &reach {
                let coh = self
                    .cohs
                    .iter()
                    .find(|c| c.dev == slot && r.bus >= c.bus && r.bus + r.len <= c.bus + c.pages * PAGE);
                if let Some(c) = coh {
                    assert!(r.read && r.write, "coherent entry without both permissions: {r:?}");
                    assert_eq!(r.phys, c.phys + (r.bus - c.bus), "coherent entry translates elsewhere");
                    continue;
                }
                if path != DmaPath::IommuStrict {
                    assert!(
                        self.in_pool(r.phys, r.len),
                        "premapped device {:#x} reaches {r:x?} outside the pools and its coherent buffers",
                        d.id
                    );
                    continue;
                }
                assert!(self.in_pool(r.phys, r.len), "strict entry outside the pools: {r:x?}");
                let single = self
                    .maps
                    .iter()
                    .find(|m| m.dev == slot && r.bus < m.bus + m.len as u64 && m.bus < r.bus + r.len);
                let perm = match single {
                    Some(m) => m.dir,
                    None => {
                        let list = self.sgs.iter().find(|s| {
                            let lo = dma_segments(&s.list).map(|g| g.addr.0 & !(PAGE - 1)).min().unwrap_or(0);
                            let hi =
                                dma_segments(&s.list).map(|g| g.addr.0 + g.len as u64).max().unwrap_or(0);
                            s.dev == slot && r.bus >= lo && r.bus < hi
                        });
                        match list {
                            Some(s) => s.dir,
                            None => panic!(
                                "strict device {:#x} reaches {r:x?}, which no live mapping covers",
                                d.id
                            ),
                        }
                    }
                };
                assert_eq!(
                    (r.read, r.write),
                    (perm.device_reads(), perm.device_writes()),
                    "strict entry {r:x?} has other permissions than its {perm:?} mapping"
                );
            }
        }
    }

    /// Invariant 4: with nothing live, every counter is back at its baseline.
    fn check_idle(&mut self) {
        self.summary.idle_checks += 1;
        let s = self.layer.stats();
        assert_eq!(s.slots_in_use, 0, "slots in use with nothing mapped");
        for d in self.devs.iter().flatten() {
            assert_eq!(api::live_bus_ranges_of(self.layer, &d.dev), 0, "bus ranges live with nothing mapped");
        }
        assert_eq!(s.shared_pages, self.base_layer_shared, "layer shared pages with nothing live");
        if self.flavour.confidential() {
            assert_eq!(
                self.hv.shared_pages(),
                self.base_model_shared,
                "model shared pages with nothing live"
            );
        }
        if self.flavour.iommu() {
            let want: u64 = self.devs.iter().flatten().map(|d| d.premap_entries).sum();
            assert_eq!(
                self.hv.tce_counters().live_entries,
                want,
                "live TCEs with nothing mapped differ from the premapped pools"
            );
            let ddws = self.devs.iter().flatten().filter(|d| d.path == Some(DmaPath::IommuDdw)).count();
            assert_eq!(self.hv.tce_counters().ddws, ddws, "DDWs with nothing mapped");
        }
    }

    // -----------------------------------------------------------------------------------------------
    // Operations.

    pub fn step(&mut self) -> Op {
        let op = self.choose();
        *self.summary.by_op.entry(op).or_default() += 1;
        self.summary.ops += 1;
        op
    }

    fn choose(&mut self) -> Op {
        let ndev = self.attached().len();
        let nmaps = self.maps.len();
        let table: [(Op, u64); 29] = [
            (
                Op::Attach,
                if ndev < MAX_DEVICES {
                    if ndev == 0 {
                        100
                    } else {
                        3
                    }
                } else {
                    0
                },
            ),
            (Op::Detach, 2),
            (Op::DetachBusy, 1),
            (Op::MapPhys, 10),
            (Op::MapPtr, 5),
            (Op::MapSafe, 8),
            (Op::Unmap, if nmaps > 0 { 22 } else { 0 }),
            (Op::DeviceRead, 8),
            (Op::DeviceWrite, 8),
            (Op::SyncCpu, 4),
            (Op::SyncDevice, 4),
            (Op::CpuWrite, 3),
            (Op::MapSg, 4),
            (Op::UnmapSg, if self.sgs.is_empty() { 0 } else { 4 }),
            (Op::SgDevice, 3),
            (Op::SgSync, 2),
            (Op::AllocCoherent, 2),
            (Op::FreeCoherent, if self.cohs.is_empty() { 0 } else { 2 }),
            (Op::CoherentIo, 2),
            (Op::MisuseDoubleUnmap, 2),
            (Op::MisuseWrongSize, 1),
            (Op::MisuseWrongDir, 1),
            (Op::MisuseNeverMapped, 1),
            (Op::MisuseSync, 1),
            (Op::MisuseZeroLen, 1),
            (Op::MisuseSg, 1),
            (Op::MisuseFreeWrongDevice, 1),
            (Op::ProvokeFault, 2),
            (Op::DrainAll, 0),
        ];
        // About every 400 operations everything is unmapped (and sometimes every device detached),
        // so the baseline checks run often.
        if self.rng.chance(1, 400) {
            return Op::DrainAll;
        }
        let total: u64 = table.iter().map(|t| t.1).sum();
        let mut x = self.rng.below(total);
        for (op, w) in table {
            if x < w {
                return op;
            }
            x -= w;
        }
        unreachable!()
    }

    pub fn run(&mut self, op: Op) {
        match op {
            Op::Attach => self.op_attach(),
            Op::Detach => self.op_detach(false),
            Op::DetachBusy => self.op_detach(true),
            Op::MapPhys | Op::MapPtr | Op::MapSafe => self.op_map(op),
            Op::Unmap => self.op_unmap(),
            Op::DeviceRead => self.op_device_read(),
            Op::DeviceWrite => self.op_device_write(),
            Op::SyncCpu | Op::SyncDevice => self.op_sync(op == Op::SyncCpu),
            Op::CpuWrite => self.op_cpu_write(),
            Op::MapSg => self.op_map_sg(),
            Op::UnmapSg => self.op_unmap_sg(),
            Op::SgDevice => self.op_sg_device(),
            Op::SgSync => self.op_sg_sync(),
            Op::AllocCoherent => self.op_alloc_coherent(),
            Op::FreeCoherent => self.op_free_coherent(),
            Op::CoherentIo => self.op_coherent_io(),
            Op::MisuseDoubleUnmap => self.op_double_unmap(),
            Op::MisuseWrongSize | Op::MisuseWrongDir => self.op_wrong_unmap(op == Op::MisuseWrongSize),
            Op::MisuseNeverMapped => self.op_never_mapped(),
            Op::MisuseSync => self.op_misuse_sync(),
            Op::MisuseZeroLen => self.op_zero_len(),
            Op::MisuseSg => self.op_misuse_sg(),
            Op::MisuseFreeWrongDevice => self.op_free_wrong_device(),
            Op::ProvokeFault => self.op_provoke(),
            Op::DrainAll => {
                let detach = self.rng.chance(1, 3);
                self.drain_all(detach);
            }
        }
    }

    fn op_attach(&mut self) {
        let Some(slot) = (0..MAX_DEVICES).find(|&i| self.devs[i].is_none()) else { return };
        // A realm's shared alias sits at IPA bit 47: narrower masks reach no pool (a test of its own).
        let bits =
            if self.flavour == Flavour::Cca { self.rng.pick(&[48, 64]) } else { self.rng.pick(&MASKS) };
        let min_align = self.rng.pick(&MIN_ALIGNS);
        let deferred = self.flavour.iommu() && self.rng.chance(1, 4);
        let id = self.next_id;
        self.next_id += 1;
        if self.flavour.iommu() {
            self.hv.add_iommu_device(id, bits);
        } else {
            self.hv.add_device(id, bits);
        }
        let cfg = DeviceConfig::new(id, DmaMask::new(bits).unwrap())
            .with_min_align_mask(min_align)
            .with_deferred_attach(deferred);
        let before = self.snap();
        let dev =
            api::attach(self.layer, cfg).unwrap_or_else(|e| panic!("attach of a {bits}-bit device: {e}"));
        assert_eq!(before.slots, self.snap().slots, "attach changed mappings");
        let serial = self.next_serial;
        self.next_serial += 1;
        self.devs[slot] = Some(DevRec {
            dev: Box::new(dev),
            serial,
            id,
            bits,
            min_align,
            path: None,
            premap_entries: 0,
            safe_live: 0,
        });
        let p = api::path_of(self.layer, &self.dev(slot).dev);
        if deferred {
            assert_eq!(p, DmaPath::IommuDeferred, "deferred device attached at once");
            assert!(self.hv.reachable(id).is_empty(), "deferred device reaches memory");
        } else {
            self.resolve_path(slot, p);
        }
    }

    /// Detach a device: an idle one must detach; a busy one (live raw mappings, lists or coherent
    /// buffers) must be refused with nothing changed.
    fn op_detach(&mut self, busy: bool) {
        let Some(slot) = self.pick_dev() else { return };
        if self.dev(slot).safe_live > 0 {
            // A safe mapping borrows the device: moving it into `detach` is what the type system
            // forbids (after issue 8), so the runner does not try.
            return;
        }
        if busy {
            if self.dev_live(slot) == 0 {
                return;
            }
            if !self.flavour.iommu() && !FIXED_DETACH_BUSY_WITHOUT_IOMMU {
                return;
            }
            let before = self.snap();
            let rec = self.devs[slot].take().unwrap();
            let DevRec { dev, .. } = rec;
            match api::detach(self.layer, *dev) {
                Ok(()) => panic!("detach of a device with live mappings or buffers succeeded"),
                Err((dev, e)) => {
                    assert!(api::is_busy(&e));
                    self.count_err(&e);
                    self.devs[slot] = Some(DevRec { dev: Box::new(dev), ..rec });
                }
            }
            assert_eq!(before, self.snap(), "a refused detach changed something");
            return;
        }
        self.drain_device(slot);
        self.detach_idle(slot);
    }

    fn detach_idle(&mut self, slot: usize) {
        assert_eq!(self.dev_live(slot), 0);
        let rec = self.devs[slot].take().unwrap();
        let id = rec.id;
        let DevRec { dev, .. } = rec;
        if let Err((_, e)) = api::detach(self.layer, *dev) {
            panic!("detach of an idle device {id:#x}: {e}");
        }
        self.stale.retain(|s| s.dev_serial != rec.serial);
        if self.flavour.iommu() {
            assert!(self.hv.reachable(id).is_empty(), "a detached device still reaches memory");
        }
    }

    fn drain_device(&mut self, slot: usize) {
        while let Some(i) = self.maps.iter().position(|m| m.dev == slot) {
            self.unmap_at(i);
        }
        while let Some(i) = self.sgs.iter().position(|s| s.dev == slot) {
            self.unmap_sg_at(i);
        }
        while let Some(i) = self.cohs.iter().position(|c| c.dev == slot) {
            self.free_coherent_at(i);
        }
    }

    pub fn drain_all(&mut self, detach: bool) {
        while !self.maps.is_empty() {
            let i = self.rng.index(self.maps.len());
            self.unmap_at(i);
        }
        while !self.sgs.is_empty() {
            self.unmap_sg_at(0);
        }
        while !self.cohs.is_empty() {
            self.free_coherent_at(0);
        }
        if detach {
            for slot in self.attached() {
                self.detach_idle(slot);
            }
            if self.flavour.iommu() {
                let c = self.hv.tce_counters();
                assert_eq!(
                    (c.live_entries, c.ddws),
                    (0, 0),
                    "entries or DDWs left with every device detached"
                );
            }
        }
    }

    fn op_map(&mut self, op: Op) {
        let Some(slot) = self.pick_dev() else { return };
        let Some(cell) = self.free_cell() else { return };
        let len = self.rng.len();
        let offset = self.rng.below(PAGE) as usize;
        let dir = self.rng.pick(&DIRS);
        let attrs = self.rng.attrs();
        let content = self.rng.bytes(len);
        let cell_phys = self.cells[cell].0;
        let phys = cell_phys + offset as u64;
        let before = self.snap();
        let was_deferred = self.path(slot).is_none();
        let dev_live = self.dev_live(slot);
        let (res, face, cell_used, orig_addr) = match op {
            Op::MapPtr if self.rng.chance(1, 2) => {
                // A heap buffer outside guest RAM: no physical address.
                let mut b = content.clone().into_boxed_slice();
                let ptr = b.as_mut_ptr();
                // SAFETY: the box stays alive, untouched except between syncs, until the record unmaps.
                let r = unsafe { api::map_ptr(self.layer, &self.dev(slot).dev, ptr, len, dir, attrs) };
                (r, Face::RawPtr(b), None, ptr as u64)
            }
            Op::MapPtr => {
                self.hv.memory().write(phys, &content);
                let ptr = self.hv.memory().ptr(phys, len as u64).unwrap().as_ptr();
                // SAFETY: the cell belongs to this record alone until it unmaps.
                let r = unsafe { api::map_ptr(self.layer, &self.dev(slot).dev, ptr, len, dir, attrs) };
                (r, Face::RawPhys, Some(cell), phys)
            }
            Op::MapPhys => {
                self.hv.memory().write(phys, &content);
                // SAFETY: the cell belongs to this record alone until it unmaps.
                let r = unsafe { api::map_phys(self.layer, &self.dev(slot).dev, phys, len, dir, attrs) };
                (r, Face::RawPhys, Some(cell), phys)
            }
            _ => {
                self.hv.memory().write(phys, &content);
                // SAFETY: the cell belongs to this record alone until it unmaps; the slice is handed to
                // the mapping and never used again.
                let buf: &'static mut [u8] = unsafe { self.hv.slice_mut(phys, len) };
                let dev = self.dev_static(slot);
                match api::map_safe(self.layer, dev, buf, dir, attrs) {
                    Ok(m) => {
                        let bus = api::safe_bus(&m);
                        (Ok(bus), Face::Safe(Some(m)), Some(cell), phys)
                    }
                    Err(e) => (Err(e), Face::Safe(None), Some(cell), phys),
                }
            }
        };
        self.refresh_path(slot);
        let bus = match res {
            Ok(b) => b.0,
            Err(e) => {
                self.map_failed(slot, &e, len, dev_live, face_is_heap(&face), before, was_deferred);
                return;
            }
        };
        let path = self.path(slot).expect("path after a successful map");
        let bits = self.dev(slot).bits;
        let min_align = self.dev(slot).min_align;
        assert!(DmaMask::new(bits).unwrap().covers(bus, len as u64), "bus {bus:#x}+{len} beyond {bits} bits");
        let direct = matches!(path, DmaPath::Direct | DmaPath::BounceAboveMask) && bus == orig_addr;
        if path == DmaPath::Direct {
            assert!(direct, "direct path bounced");
        }
        if path == DmaPath::BounceAboveMask && !face_is_heap(&face) {
            let reach = DmaMask::new(bits).unwrap().covers(phys, len as u64);
            assert_eq!(direct, reach, "bounce-above-mask: direct iff the buffer is below the mask");
        }
        let keep_bits = FIXED_PREMAPPED_MIN_ALIGN || path != DmaPath::IommuPremapped || min_align < PAGE;
        if keep_bits {
            assert_eq!(
                bus & min_align,
                orig_addr & min_align,
                "bus {bus:#x} does not keep min_align_mask {min_align:#x} bits of {orig_addr:#x} ({path:?})"
            );
        }
        let data_phys = if direct { None } else { self.data_phys(slot, bus) };
        if !direct {
            assert!(data_phys.is_some(), "bounced mapping at {bus:#x} not in a pool as the device sees it");
        }
        let view = if direct {
            content.clone()
        } else if attrs.contains(DmaAttrs::SKIP_CPU_SYNC)
            && dir == DmaDirection::ToDevice
            && self.layer.stale_slot_policy() == ccdma::StaleSlotPolicy::Leave
        {
            // The slot holds what its last mapping left (issue 21: shared already); unchanged until a sync.
            self.model_dev(slot).read(bus, len).unwrap_or_else(|f| panic!("device read refused: {f}"))
        } else if attrs.contains(DmaAttrs::SKIP_CPU_SYNC) {
            vec![0; len]
        } else if dir.device_reads() || attrs.contains(DmaAttrs::PRESERVE_UNWRITTEN) {
            content.clone()
        } else {
            vec![0; len]
        };
        if let Some(c) = cell_used {
            self.cells[c].1 = true;
        }
        if matches!(face, Face::Safe(_)) {
            self.devs[slot].as_mut().unwrap().safe_live += 1;
        }
        let rec = MapRec {
            dev: slot,
            face,
            cell: cell_used,
            phys: cell_used.map(|_| phys),
            bus,
            len,
            dir,
            attrs,
            bounced: !direct,
            orig: content,
            view,
            data_phys,
        };
        self.maps.push(rec);
        // Check the device sees what it must right away (a read where the path allows one).
        let i = self.maps.len() - 1;
        self.device_read_at(i, 0, len.min(8 * KIB));
    }

    #[allow(clippy::too_many_arguments)]
    fn map_failed(
        &mut self,
        slot: usize,
        e: &DmaError,
        len: usize,
        dev_live: usize,
        heap: bool,
        before: Snap,
        was_deferred: bool,
    ) {
        let path = self.path(slot);
        let min_align = self.dev(slot).min_align;
        let ok = match e {
            DmaError::TooLarge { .. } => len + 2 * PAGE as usize > MAX_LEN,
            DmaError::PoolExhausted { .. } if before.slots == 0 => {
                // A run that can never be placed (min_align_mask bits above the slot push it across
                // a segment end) is reported as exhaustion, not as too large (see the report).
                let never = len + 2 * PAGE as usize > MAX_LEN && min_align > 0x7FF;
                if never {
                    *self
                        .summary
                        .errors
                        .entry("PoolExhausted on an idle pool (never fits)".into())
                        .or_default() += 1;
                }
                never
            }
            DmaError::PoolExhausted { .. } => true,
            DmaError::Iommu(IommuError::BusSpaceExhausted) => dev_live > 0,
            DmaError::NotTranslatable => heap && path == Some(DmaPath::Direct),
            _ => false,
        };
        assert!(
            ok,
            "map of {len} bytes on {path:?} failed unexpectedly: {e:?} (live: {dev_live}, {before:?})"
        );
        self.count_err(e);
        self.assert_unchanged_after(before, was_deferred, slot, "a failed map");
    }

    fn pick_map(&mut self) -> Option<usize> {
        (!self.maps.is_empty()).then(|| self.rng.index(self.maps.len()))
    }

    fn op_unmap(&mut self) {
        if let Some(i) = self.pick_map() {
            self.unmap_at(i);
        }
    }

    /// Unmap record `i` (its face's way) and check the original holds exactly what it must.
    fn unmap_at(&mut self, i: usize) {
        let mut m = self.maps.swap_remove(i);
        let slot = m.dev;
        let drop_instead = self.rng.chance(1, 4);
        let r = match &mut m.face {
            Face::Safe(s) => {
                let mapping = s.take().unwrap();
                if drop_instead {
                    drop(mapping);
                    Ok(())
                } else {
                    api::unmap_safe(mapping).map_err(|(_, e)| e)
                }
            }
            // SAFETY: the record's original (cell or box) is still ours and valid.
            _ => unsafe {
                api::unmap(self.layer, &self.dev(slot).dev, BusAddr(m.bus), m.len, m.dir, m.attrs)
            },
        };
        if let Err(e) = r {
            panic!("unmap of a live mapping ({:?} at {:#x}, {} bytes) failed: {e}", m.dir, m.bus, m.len);
        }
        if matches!(m.face, Face::Safe(_)) {
            self.devs[slot].as_mut().unwrap().safe_live -= 1;
        }
        if m.bounced && m.dir.device_writes() && !m.attrs.contains(DmaAttrs::SKIP_CPU_SYNC) {
            m.orig = m.view.clone();
        }
        let now = self.read_orig(&m);
        assert!(now == m.orig, "original after unmap ({:?}, {} bytes, {:?}) differs", m.dir, m.len, m.attrs);
        if let Some(c) = m.cell {
            self.cells[c].1 = false;
        }
        if !matches!(m.face, Face::Safe(_)) {
            let serial = self.dev(slot).serial;
            self.stale.push(Stale {
                dev_serial: serial,
                bus: m.bus,
                len: m.len,
                dir: m.dir,
                data_phys: m.data_phys,
                bounced: m.bounced,
            });
            if self.stale.len() > 16 {
                self.stale.remove(0);
            }
        }
        // Strict: the entries are gone unless something else of the device lives on those pages.
        if self.strict(slot) && self.rng.chance(1, 4) {
            let page = m.bus & !(PAGE - 1);
            if !self.dev_covers(slot, page, PAGE) {
                let d = self.model_dev(slot);
                assert!(d.read(m.bus, 1).is_err(), "strict: device still reads an unmapped address");
                let f = self.fault(slot, m.bus, AccessKind::Read, FaultReason::NoEntry);
                self.expect_faults(&[f]);
            }
        }
    }

    /// True when a live mapping, list or coherent buffer of the device overlaps `[bus, bus + len)`.
    fn dev_covers(&self, slot: usize, bus: u64, len: u64) -> bool {
        let hit = |b: u64, l: u64| b < bus + len && bus < b + l;
        self.maps
            .iter()
            .any(|m| m.dev == slot && hit(m.bus & !(PAGE - 1), (m.bus % PAGE) + m.len as u64 + PAGE))
            || self.sgs.iter().any(|s| {
                s.dev == slot
                    && dma_segments(&s.list).any(|g| hit(g.addr.0 & !(PAGE - 1), g.len as u64 + 2 * PAGE))
            })
            || self.cohs.iter().any(|c| c.dev == slot && hit(c.bus, c.pages * PAGE))
    }

    fn read_orig(&self, m: &MapRec) -> Vec<u8> {
        match &m.face {
            Face::RawPtr(b) => b.to_vec(),
            _ => self.hv.memory().read(m.phys.unwrap(), m.len),
        }
    }

    fn write_orig(&mut self, i: usize, off: usize, data: &[u8]) {
        let m = &mut self.maps[i];
        match &mut m.face {
            Face::RawPtr(b) => b[off..off + data.len()].copy_from_slice(data),
            _ => self.hv.memory().write(m.phys.unwrap() + off as u64, data),
        }
        m.orig[off..off + data.len()].copy_from_slice(data);
        if !m.bounced {
            m.view[off..off + data.len()].copy_from_slice(data);
        }
    }

    fn sub_range(&mut self, len: usize) -> (usize, usize) {
        let off = self.rng.index(len);
        let l = 1 + self.rng.index((len - off).min(64 * KIB));
        (off, l)
    }

    /// The device reads `[off, off + l)` of mapping `i`: exactly the view, or (strict, direction
    /// without read) a permission fault. On strict paths the padding of the IOMMU pages is zero.
    fn device_read_at(&mut self, i: usize, off: usize, l: usize) {
        let (slot, bus, dir, len) = (self.maps[i].dev, self.maps[i].bus, self.maps[i].dir, self.maps[i].len);
        let d = self.model_dev(slot);
        if self.strict(slot) && !dir.device_reads() {
            assert!(d.read(bus + off as u64, l).is_err(), "strict: device read a from-device mapping");
            let f = self.fault(slot, bus + off as u64, AccessKind::Read, FaultReason::Permission);
            self.expect_faults(&[f]);
            return;
        }
        let got = d.read(bus + off as u64, l).unwrap_or_else(|f| panic!("device read refused: {f}"));
        assert!(got == self.maps[i].view[off..off + l], "device read differs from what it must see");
        if self.strict(slot) && off == 0 && l == len {
            // Padding around the data in its IOMMU pages: zeroes, never another mapping's bytes.
            let start = bus & !(PAGE - 1);
            let end = (bus + len as u64).next_multiple_of(PAGE);
            let head = d.read(start, (bus - start) as usize).unwrap();
            let tail = d.read(bus + len as u64, (end - bus - len as u64) as usize).unwrap();
            assert!(head.iter().chain(&tail).all(|&b| b == 0), "strict padding holds data");
        }
    }

    fn op_device_read(&mut self) {
        let Some(i) = self.pick_map() else { return };
        let (off, l) = self.sub_range(self.maps[i].len);
        self.device_read_at(i, off, l);
    }

    fn op_device_write(&mut self) {
        let Some(i) = self.pick_map() else { return };
        let (slot, bus, dir) = (self.maps[i].dev, self.maps[i].bus, self.maps[i].dir);
        let (off, l) = self.sub_range(self.maps[i].len);
        let data = self.rng.bytes(l);
        let d = self.model_dev(slot);
        if self.strict(slot) && !dir.device_writes() {
            assert!(d.write(bus + off as u64, &data).is_err(), "strict: device wrote a to-device mapping");
            let f = self.fault(slot, bus + off as u64, AccessKind::Write, FaultReason::Permission);
            self.expect_faults(&[f]);
            return;
        }
        d.write(bus + off as u64, &data).unwrap_or_else(|f| panic!("device write refused: {f}"));
        let m = &mut self.maps[i];
        m.view[off..off + l].copy_from_slice(&data);
        if !m.bounced {
            m.orig[off..off + l].copy_from_slice(&data);
        }
    }

    fn op_sync(&mut self, for_cpu: bool) {
        let Some(i) = self.pick_map() else { return };
        let (off, l) = self.sub_range(self.maps[i].len);
        let m = &mut self.maps[i];
        let r = match &mut m.face {
            Face::Safe(Some(s)) => {
                if for_cpu {
                    api::safe_sync_for_cpu(s, off, l)
                } else {
                    api::safe_sync_for_device(s, off, l)
                }
            }
            Face::Safe(None) => unreachable!(),
            _ => {
                let dev = &self.devs[m.dev].as_ref().unwrap().dev;
                // SAFETY: a live raw mapping of ours; its original is valid.
                unsafe {
                    if for_cpu {
                        api::sync_for_cpu(self.layer, dev, BusAddr(m.bus), off, l, m.dir)
                    } else {
                        api::sync_for_device(self.layer, dev, BusAddr(m.bus), off, l, m.dir)
                    }
                }
            }
        };
        r.unwrap_or_else(|e| panic!("sync of a live mapping failed: {e}"));
        if m.bounced {
            if for_cpu && m.dir.device_writes() {
                m.orig[off..off + l].copy_from_slice(&m.view[off..off + l]);
            } else if !for_cpu && (m.dir.device_reads() || m.attrs.contains(DmaAttrs::PRESERVE_UNWRITTEN)) {
                m.view[off..off + l].copy_from_slice(&m.orig[off..off + l]);
            }
        }
        let m = &self.maps[i];
        let now = match &m.face {
            Face::Safe(Some(s)) => api::safe_buffer(s).to_vec(),
            _ => self.read_orig(m),
        };
        assert!(now == m.orig, "original after sync differs");
    }

    /// The CPU changes a raw mapping's original (as it may between syncs) and syncs for the device.
    fn op_cpu_write(&mut self) {
        let Some(i) = self.pick_map() else { return };
        if matches!(self.maps[i].face, Face::Safe(_)) {
            return;
        }
        let (off, l) = self.sub_range(self.maps[i].len);
        let data = self.rng.bytes(l);
        self.write_orig(i, off, &data);
        let m = &mut self.maps[i];
        let dev = &self.devs[m.dev].as_ref().unwrap().dev;
        // SAFETY: a live raw mapping of ours.
        unsafe { api::sync_for_device(self.layer, dev, BusAddr(m.bus), off, l, m.dir) }
            .unwrap_or_else(|e| panic!("sync_for_device: {e}"));
        if m.bounced && (m.dir.device_reads() || m.attrs.contains(DmaAttrs::PRESERVE_UNWRITTEN)) {
            m.view[off..off + l].copy_from_slice(&data);
        }
        self.device_read_at(i, off, l);
    }

    // -----------------------------------------------------------------------------------------------
    // Scatter-gather.

    fn op_map_sg(&mut self) {
        let Some(slot) = self.pick_dev() else { return };
        let Some(cell) = self.free_cell() else { return };
        let n = 1 + self.rng.index(6);
        let mut at = self.cells[cell].0 + self.rng.below(PAGE);
        let mut pieces = Vec::new();
        for _ in 0..n {
            let max = if self.rng.chance(1, 4) { 40 * KIB } else { 4 * KIB };
            let len = 1 + self.rng.index(max);
            pieces.push((at, len));
            at += len as u64;
            if self.rng.chance(1, 2) {
                at += self.rng.below(200);
            }
        }
        let dir = self.rng.pick(&DIRS);
        let attrs = if self.rng.chance(1, 4) { DmaAttrs::PRESERVE_UNWRITTEN } else { DmaAttrs::NONE };
        let coalesce = self.rng.chance(3, 4);
        let mut orig = Vec::new();
        let mut list = Vec::new();
        for &(p, l) in &pieces {
            let data = self.rng.bytes(l);
            self.hv.memory().write(p, &data);
            orig.push(data);
            if self.rng.chance(1, 2) {
                // SAFETY: the cell belongs to this list alone until it unmaps.
                list.push(unsafe { api::sg_phys(p, l) });
            } else {
                // SAFETY: as above; the slice goes into the entry and is never used otherwise.
                list.push(api::sg_entry(unsafe { self.hv.slice_mut(p, l) }));
            }
        }
        let before = self.snap();
        let was_deferred = self.path(slot).is_none();
        let dev_live = self.dev_live(slot);
        let r = api::map_sg(self.layer, &self.dev(slot).dev, &mut list, dir, attrs, coalesce);
        self.refresh_path(slot);
        let nseg = match r {
            Ok(n) => n,
            Err(e) => {
                let premapped_defect = !FIXED_PREMAPPED_MIN_ALIGN
                    && self.path(slot) == Some(DmaPath::IommuPremapped)
                    && self.dev(slot).min_align > 0xFFF;
                let ok = match e {
                    DmaError::PoolExhausted { .. } if before.slots == 0 && premapped_defect => {
                        *self
                            .summary
                            .errors
                            .entry("PoolExhausted of map_sg on an idle premapped pool".into())
                            .or_default() += 1;
                        true
                    }
                    DmaError::PoolExhausted { .. } => before.slots > 0,
                    DmaError::Iommu(IommuError::BusSpaceExhausted) => dev_live > 0,
                    _ => false,
                };
                let d = self.dev(slot);
                assert!(
                    ok,
                    "map_sg of {pieces:x?} ({dir:?}, coalesce {coalesce}) failed unexpectedly: {e:?} ({}-bit device, \
                     min_align {:#x}, {:?}, {before:?})",
                    d.bits,
                    d.min_align,
                    d.path
                );
                self.count_err(&e);
                self.assert_unchanged_after(before, was_deferred, slot, "a failed map_sg");
                assert!(list.iter().all(|e| !e.is_mapped()), "a failed map_sg left entries mapped");
                return;
            }
        };
        let segs: Vec<_> = dma_segments(&list).collect();
        assert_eq!(segs.len(), nseg);
        let total: usize = pieces.iter().map(|p| p.1).sum();
        assert_eq!(segs.iter().map(|s| s.len).sum::<usize>(), total, "segments do not hold the list");
        let bits = self.dev(slot).bits;
        for s in &segs {
            assert!(DmaMask::new(bits).unwrap().covers(s.addr.0, s.len as u64), "segment beyond the mask");
        }
        let bounced: Vec<bool> = list.iter().map(|e| e.is_bounced()).collect();
        let view = orig
            .iter()
            .zip(&bounced)
            .map(|(o, &b)| {
                if !b || dir.device_reads() || attrs.contains(DmaAttrs::PRESERVE_UNWRITTEN) {
                    o.clone()
                } else {
                    vec![0; o.len()]
                }
            })
            .collect();
        self.cells[cell].1 = true;
        self.sgs.push(SgRec { dev: slot, list, cell, pieces, dir, attrs, bounced, orig, view });
        let i = self.sgs.len() - 1;
        self.sg_device_read(i);
    }

    fn sg_stream(&self, i: usize) -> Vec<u8> {
        self.sgs[i].view.concat()
    }

    fn sg_device_read(&mut self, i: usize) {
        let s = &self.sgs[i];
        if self.strict(s.dev) && !s.dir.device_reads() {
            return;
        }
        let d = self.model_dev(s.dev);
        let mut got = Vec::new();
        for g in dma_segments(&s.list) {
            got.extend(d.read(g.addr.0, g.len).unwrap_or_else(|f| panic!("sg device read refused: {f}")));
        }
        assert!(got == self.sg_stream(i), "device reads another stream than the list's");
    }

    fn op_sg_device(&mut self) {
        if self.sgs.is_empty() {
            return;
        }
        let i = self.rng.index(self.sgs.len());
        if !self.sgs[i].dir.device_writes() || self.rng.chance(1, 3) {
            self.sg_device_read(i);
            return;
        }
        let total: usize = self.sgs[i].pieces.iter().map(|p| p.1).sum();
        let data = self.rng.bytes(total);
        let d = self.model_dev(self.sgs[i].dev);
        let mut at = 0;
        for g in dma_segments(&self.sgs[i].list) {
            d.write(g.addr.0, &data[at..at + g.len])
                .unwrap_or_else(|f| panic!("sg device write refused: {f}"));
            at += g.len;
        }
        let s = &mut self.sgs[i];
        let mut at = 0;
        for k in 0..s.pieces.len() {
            let l = s.pieces[k].1;
            s.view[k].copy_from_slice(&data[at..at + l]);
            if !s.bounced[k] {
                s.orig[k].copy_from_slice(&data[at..at + l]);
            }
            at += l;
        }
    }

    fn op_sg_sync(&mut self) {
        if self.sgs.is_empty() {
            return;
        }
        let i = self.rng.index(self.sgs.len());
        let for_cpu = self.rng.chance(1, 2);
        let s = &mut self.sgs[i];
        let dev = &self.devs[s.dev].as_ref().unwrap().dev;
        let r = if for_cpu {
            api::sync_sg_for_cpu(self.layer, dev, &mut s.list, s.dir)
        } else {
            api::sync_sg_for_device(self.layer, dev, &mut s.list, s.dir)
        };
        r.unwrap_or_else(|e| panic!("sg sync: {e}"));
        for k in 0..s.pieces.len() {
            if !s.bounced[k] {
                continue;
            }
            if for_cpu && s.dir.device_writes() {
                s.orig[k] = s.view[k].clone();
            } else if !for_cpu && (s.dir.device_reads() || s.attrs.contains(DmaAttrs::PRESERVE_UNWRITTEN)) {
                s.view[k] = s.orig[k].clone();
            }
        }
        self.check_sg_orig(i);
    }

    fn check_sg_orig(&self, i: usize) {
        let s = &self.sgs[i];
        for (k, &(p, l)) in s.pieces.iter().enumerate() {
            assert!(self.hv.memory().read(p, l) == s.orig[k], "list entry {k} original differs");
        }
    }

    fn op_unmap_sg(&mut self) {
        if !self.sgs.is_empty() {
            let i = self.rng.index(self.sgs.len());
            self.unmap_sg_at(i);
        }
    }

    fn unmap_sg_at(&mut self, i: usize) {
        let mut s = self.sgs.swap_remove(i);
        let dev = &self.devs[s.dev].as_ref().unwrap().dev;
        api::unmap_sg(self.layer, dev, &mut s.list, s.dir, s.attrs)
            .unwrap_or_else(|e| panic!("unmap_sg: {e}"));
        assert!(s.list.iter().all(|e| !e.is_mapped()), "entries still mapped after unmap_sg");
        if s.dir.device_writes() {
            for k in 0..s.pieces.len() {
                if s.bounced[k] {
                    s.orig[k] = s.view[k].clone();
                }
            }
        }
        for (k, &(p, l)) in s.pieces.iter().enumerate() {
            assert!(
                self.hv.memory().read(p, l) == s.orig[k],
                "list entry {k} original after unmap_sg differs"
            );
        }
        self.cells[s.cell].1 = false;
    }

    // -----------------------------------------------------------------------------------------------
    // Coherent buffers.

    fn op_alloc_coherent(&mut self) {
        let Some(slot) = self.pick_dev() else { return };
        let free: Vec<usize> = (0..COH_CELLS).filter(|&i| !self.coh_cells[i]).collect();
        if free.is_empty() {
            return;
        }
        let cell = self.rng.pick(&free);
        let pages = 1 + self.rng.below(COH_CELL_PAGES);
        let phys = COH_BASE + cell as u64 * COH_CELL_PAGES * PAGE;
        // Whatever the pages held before must not reach the device.
        let junk = self.rng.bytes((pages * PAGE) as usize);
        self.hv.memory().write(phys, &junk);
        let before = self.snap();
        let was_deferred = self.path(slot).is_none();
        let dev_live = self.dev_live(slot);
        // SAFETY: the coherent cell belongs to this record alone until it is freed.
        let r = unsafe { api::alloc_coherent(self.layer, &self.dev(slot).dev, phys, pages) };
        self.refresh_path(slot);
        let bits = self.dev(slot).bits;
        let mask = DmaMask::new(bits).unwrap();
        let buf = match r {
            Ok(b) => b,
            Err(e) => {
                let ok = match e {
                    DmaError::BeyondMask { .. } => !self.flavour.iommu() && !mask.covers(phys, pages * PAGE),
                    DmaError::Iommu(IommuError::BusSpaceExhausted) => dev_live > 0,
                    _ => false,
                };
                assert!(ok, "alloc_coherent of {pages} pages failed unexpectedly: {e:?}");
                self.count_err(&e);
                self.assert_unchanged_after(before, was_deferred, slot, "a failed alloc_coherent");
                return;
            }
        };
        let bus = buf.bus_addr().0;
        assert_eq!(buf.pages(), pages);
        assert!(mask.covers(bus, pages * PAGE), "coherent buffer beyond the coherent mask");
        if !self.flavour.iommu() {
            let want = if self.flavour.confidential() {
                self.hv.config().bus_encoding.bus(PhysAddr(phys)).0
            } else {
                phys
            };
            assert_eq!(bus, want, "coherent bus address");
        }
        let content = vec![0; (pages * PAGE) as usize];
        assert!(self.hv.memory().read(phys, content.len()) == content, "coherent buffer not zeroed");
        self.coh_cells[cell] = true;
        self.cohs.push(CohRec { dev: slot, cell, buf, phys, bus, pages, content });
        let i = self.cohs.len() - 1;
        self.coherent_check(i);
    }

    fn coherent_check(&mut self, i: usize) {
        let c = &self.cohs[i];
        let d = self.model_dev(c.dev);
        let got = d.read(c.bus, c.content.len()).unwrap_or_else(|f| panic!("coherent read refused: {f}"));
        assert!(got == c.content, "device sees other coherent bytes than the CPU wrote");
    }

    fn op_coherent_io(&mut self) {
        if self.cohs.is_empty() {
            return;
        }
        let i = self.rng.index(self.cohs.len());
        let len = self.cohs[i].content.len();
        let (off, l) = self.sub_range(len);
        let data = self.rng.bytes(l);
        let (bus, phys, slot) = (self.cohs[i].bus, self.cohs[i].phys, self.cohs[i].dev);
        if self.rng.chance(1, 2) {
            self.model_dev(slot)
                .write(bus + off as u64, &data)
                .unwrap_or_else(|f| panic!("coherent write: {f}"));
            assert!(self.hv.memory().read(phys + off as u64, l) == data, "CPU sees other coherent bytes");
        } else {
            // SAFETY: the CPU side of a live coherent buffer of ours.
            unsafe {
                let p = self.cohs[i].buf.cpu_ptr().as_ptr().add(off);
                std::ptr::copy_nonoverlapping(data.as_ptr(), p, l);
            }
        }
        self.cohs[i].content[off..off + l].copy_from_slice(&data);
        self.coherent_check(i);
    }

    fn op_free_coherent(&mut self) {
        if !self.cohs.is_empty() {
            let i = self.rng.index(self.cohs.len());
            self.free_coherent_at(i);
        }
    }

    fn free_coherent_at(&mut self, i: usize) {
        let c = self.cohs.swap_remove(i);
        let dup = api::coherent_duplicate(&c.buf);
        if let Err((_, e)) = api::free_coherent(self.layer, &self.dev(c.dev).dev, c.buf) {
            panic!("free_coherent of a live buffer: {e}");
        }
        self.coh_cells[c.cell] = false;
        if self.flavour.confidential() {
            for p in 0..c.pages {
                assert_eq!(
                    self.hv.memory().state(c.phys + p * PAGE),
                    PageState::Private,
                    "freed page still shared"
                );
            }
        }
        // The device no longer reaches the pages.
        if self.flavour.confidential() && !self.dev_covers(c.dev, c.bus, PAGE) {
            let d = self.model_dev(c.dev);
            assert!(d.read(c.bus, 1).is_err(), "device still reads a freed coherent buffer");
            let reason = if self.flavour.iommu() { FaultReason::NoEntry } else { FaultReason::PrivateTarget };
            let f = self.fault(c.dev, c.bus, AccessKind::Read, reason);
            self.expect_faults(&[f]);
        }
        // A second free of the same buffer (where the type still allows a copy) is refused.
        if let Some(again) = dup {
            if self.flavour.iommu() || FIXED_COHERENT_RECORDS_WITHOUT_IOMMU {
                let before = self.snap();
                let r = api::free_coherent(self.layer, &self.dev(c.dev).dev, again).map_err(|(_, e)| e);
                self.expect_err(r, "double free_coherent");
                assert_eq!(before, self.snap(), "a refused double free changed something");
            }
        }
    }

    // -----------------------------------------------------------------------------------------------
    // Misuse: each must be an error and change nothing.

    fn op_double_unmap(&mut self) {
        if self.stale.is_empty() {
            return;
        }
        let s = self.stale[self.rng.index(self.stale.len())];
        let Some(slot) =
            (0..MAX_DEVICES).find(|&i| self.devs[i].as_ref().is_some_and(|d| d.serial == s.dev_serial))
        else {
            return;
        };
        // The slots may since hold another live mapping starting at the same place: unmapping that
        // by address is not misuse the layer can see, so skip.
        let taken = self.maps.iter().any(|m| {
            (s.data_phys.is_some() && m.data_phys == s.data_phys) || (m.dev == slot && m.bus == s.bus)
        });
        // A direct mapping leaves no record to refuse by: naming it again breaks the raw face's
        // contract in a way the layer cannot see (the debug tracker reports it), so it is not tried.
        if taken || !s.bounced {
            return;
        }
        let before = self.snap();
        // SAFETY: the address names no live mapping of ours (checked above); a refusal is expected.
        let r = unsafe {
            api::unmap(self.layer, &self.dev(slot).dev, BusAddr(s.bus), s.len, s.dir, DmaAttrs::NONE)
        };
        if s.bounced {
            self.expect_err(r, "double unmap");
        } else if let Err(e) = r {
            // A direct mapping leaves no record: Ok (nothing to undo) or an error, both fine.
            self.count_err(&e);
        }
        assert_eq!(before, self.snap(), "a double unmap changed something");
    }

    fn op_wrong_unmap(&mut self, size: bool) {
        let Some(i) = self.pick_map() else { return };
        if matches!(self.maps[i].face, Face::Safe(_)) {
            if FIXED_RAW_REFUSES_SAFE && self.maps[i].bounced {
                // A safe-face mapping named through the raw face, exactly: refused, nothing changed.
                let m = &self.maps[i];
                let (bus, len, dir, attrs, slot) = (m.bus, m.len, m.dir, m.attrs, m.dev);
                let before = self.snap();
                // SAFETY: the original is a live cell of ours; the call must refuse.
                let r = unsafe { api::unmap(self.layer, &self.dev(slot).dev, BusAddr(bus), len, dir, attrs) };
                self.expect_err(r, "raw unmap of a safe-face mapping");
                assert_eq!(before, self.snap(), "a refused raw unmap of a safe mapping changed something");
            }
            return;
        }
        let m = &self.maps[i];
        let (len, dir) = if size {
            let len = if m.len > 1 && self.rng.chance(1, 2) {
                m.len - 1 - self.rng.index(m.len - 1)
            } else {
                m.len + 1 + self.rng.index(4096)
            };
            (len, m.dir)
        } else {
            let others: Vec<_> = DIRS.iter().copied().filter(|&d| d != m.dir).collect();
            (m.len, self.rng.pick(&others))
        };
        let before = self.snap();
        let (bus, bounced, slot) = (m.bus, m.bounced, m.dev);
        if !bounced {
            // No record to check against on a direct mapping (see `op_double_unmap`).
            return;
        }
        // SAFETY: a live raw mapping of ours; the call must refuse (or, direct, do nothing).
        let r =
            unsafe { api::unmap(self.layer, &self.dev(slot).dev, BusAddr(bus), len, dir, DmaAttrs::NONE) };
        if bounced {
            let e = self.expect_err(r, "unmap with the wrong size or direction");
            let want = if size {
                matches!(e, DmaError::SizeMismatch { .. })
            } else {
                matches!(e, DmaError::DirectionMismatch { .. })
            };
            assert!(want, "wrong error for a mismatched unmap: {e:?}");
        }
        assert_eq!(before, self.snap(), "a mismatched unmap changed something");
        // The mapping is still fully usable.
        let l = self.maps[i].len.min(4096);
        self.device_read_at(i, 0, l);
    }

    fn op_never_mapped(&mut self) {
        let Some(slot) = self.pick_dev() else { return };
        if self.path(slot).is_none() {
            return;
        }
        let path = self.path(slot).unwrap();
        let bus = match self.rng.below(3) {
            0 => self.rng.next(),
            1 => {
                // Inside a pool as the device sees it, but no mapping starts there.
                let pools: Vec<u64> = (0..self.pools.len())
                    .filter_map(|p| self.layer.pool_bus_of(&self.dev(slot).dev, p).map(|b| b.0))
                    .collect();
                if pools.is_empty() {
                    self.rng.next() & 0xFFFF_FFFF
                } else {
                    (self.rng.pick(&pools) + self.rng.below(4 * MIB)) | 1
                }
            }
            _ => self.rng.next() & 0xFF_FFFF,
        };
        if self.maps.iter().any(|m| m.bus == bus)
            || self.data_phys(slot, bus).is_some_and(|p| self.maps.iter().any(|m| m.data_phys == Some(p)))
        {
            return;
        }
        let in_pool = self.data_phys(slot, bus).is_some();
        if !(path.bounces_everything() || in_pool) {
            // Outside every pool on a path with direct mappings: indistinguishable from a direct
            // mapping (see `op_double_unmap`).
            return;
        }
        let before = self.snap();
        let len = self.rng.len();
        let dir = self.rng.pick(&DIRS);
        // SAFETY: no live mapping of ours is at `bus`; the call must refuse or do nothing.
        let r =
            unsafe { api::unmap(self.layer, &self.dev(slot).dev, BusAddr(bus), len, dir, DmaAttrs::NONE) };
        if path.bounces_everything() || in_pool {
            self.expect_err(r, "unmap of a never-mapped address");
        }
        assert_eq!(before, self.snap(), "unmap of a never-mapped address changed something");
    }

    fn op_misuse_sync(&mut self) {
        let Some(i) = self.pick_map() else { return };
        let len = self.maps[i].len;
        let (off, l) = match self.rng.below(3) {
            0 => (len, 1),
            1 => (0, len + 1),
            _ => (usize::MAX, 2),
        };
        let wrong_dir = self.rng.chance(1, 3);
        let other = DIRS[(self.maps[i].dir as usize) % 3];
        let before = self.snap();
        let before_orig = self.maps[i].orig.clone();
        let bounced = self.maps[i].bounced;
        let m = &mut self.maps[i];
        let (r, dir_misuse) = match &mut m.face {
            Face::Safe(Some(s)) => (api::safe_sync_for_cpu(s, off, l), false),
            Face::Safe(None) => unreachable!(),
            _ => {
                let dev = &self.devs[m.dev].as_ref().unwrap().dev;
                let dir = if wrong_dir { other } else { m.dir };
                // SAFETY: a live raw mapping of ours; range or direction is wrong, so it must refuse.
                let r = unsafe {
                    if wrong_dir {
                        api::sync_for_cpu(self.layer, dev, BusAddr(m.bus), 0, 1, dir)
                    } else {
                        api::sync_for_device(self.layer, dev, BusAddr(m.bus), off, l, dir)
                    }
                };
                (r, wrong_dir)
            }
        };
        if bounced {
            let e = self.expect_err(r, "sync outside the mapping or with another direction");
            if dir_misuse {
                assert!(
                    matches!(e, DmaError::DirectionMismatch { .. }),
                    "sync with another direction: {e:?}"
                );
            } else {
                assert!(matches!(e, DmaError::OutOfRange { .. }), "sync outside the mapping: {e:?}");
            }
        }
        assert_eq!(before, self.snap(), "a refused sync changed something");
        assert!(self.read_orig(&self.maps[i]) == before_orig, "a refused sync changed the original");
        self.device_read_at(i, 0, len.min(4096));
    }

    fn op_zero_len(&mut self) {
        let Some(slot) = self.pick_dev() else { return };
        let Some(cell) = self.free_cell() else { return };
        let before = self.snap();
        let phys = self.cells[cell].0;
        // SAFETY: the cell is free; a zero-length map must refuse.
        let r = unsafe {
            api::map_phys(self.layer, &self.dev(slot).dev, phys, 0, DmaDirection::ToDevice, DmaAttrs::NONE)
        };
        let e = self.expect_err(r.map(|_| ()), "zero-length map");
        assert!(matches!(e, DmaError::ZeroLength), "zero-length map: {e:?}");
        let mut empty: Vec<SgEntry<'static>> = Vec::new();
        let r = api::map_sg(
            self.layer,
            &self.dev(slot).dev,
            &mut empty,
            DmaDirection::ToDevice,
            DmaAttrs::NONE,
            true,
        );
        self.expect_err(r.map(|_| ()), "empty list");
        assert_eq!(before, self.snap(), "a zero-length map changed something");
    }

    fn op_misuse_sg(&mut self) {
        if self.sgs.is_empty() {
            return;
        }
        let i = self.rng.index(self.sgs.len());
        let before = self.snap();
        let s = &mut self.sgs[i];
        let dev = &self.devs[s.dev].as_ref().unwrap().dev;
        let case = self.rng.below(3);
        let r = match case {
            // Map a list that is mapped.
            0 => api::map_sg(self.layer, dev, &mut s.list, s.dir, s.attrs, true).map(|_| ()),
            // Unmap it with another direction.
            1 => {
                let others: Vec<_> = DIRS.iter().copied().filter(|&d| d != s.dir).collect();
                let d = others[(s.pieces.len()) % 2];
                api::unmap_sg(self.layer, dev, &mut s.list, d, s.attrs)
            }
            // Unmap only part of it (a list is unmapped whole).
            _ if s.list.len() > 1 => api::unmap_sg(self.layer, dev, &mut s.list[1..], s.dir, s.attrs),
            _ => return,
        };
        let all_direct = self.sgs[i].bounced.iter().all(|b| !b);
        if case == 1 && all_direct && r.is_ok() {
            // A list of direct entries only has nothing to copy, and the layer does not check the
            // direction for it (as for single direct mappings): the list is unmapped.
            *self
                .summary
                .errors
                .entry("unchecked: unmap_sg direction of a direct list".into())
                .or_default() += 1;
            let s = self.sgs.swap_remove(i);
            assert!(s.list.iter().all(|e| !e.is_mapped()), "an accepted unmap_sg left entries mapped");
            for (k, &(p, l)) in s.pieces.iter().enumerate() {
                assert!(self.hv.memory().read(p, l) == s.orig[k], "direct list entry {k} differs");
            }
            self.cells[s.cell].1 = false;
            return;
        }
        let what = format!("scatter-gather misuse case {case} (bounced {:?})", self.sgs[i].bounced);
        self.expect_err(r, &what);
        assert_eq!(before, self.snap(), "a refused list operation changed something");
        assert!(self.sgs[i].list.iter().all(|e| e.is_mapped()), "a refused list operation unmapped entries");
        self.check_sg_orig(i);
        self.sg_device_read(i);
    }

    fn op_free_wrong_device(&mut self) {
        if self.cohs.is_empty() || !(self.flavour.iommu() || FIXED_COHERENT_RECORDS_WITHOUT_IOMMU) {
            return;
        }
        let i = self.rng.index(self.cohs.len());
        let owner = self.cohs[i].dev;
        let others: Vec<usize> = self.attached().into_iter().filter(|&d| d != owner).collect();
        if others.is_empty() {
            return;
        }
        let wrong = self.rng.pick(&others);
        let before = self.snap();
        let Some(copy) = api::coherent_duplicate(&self.cohs[i].buf) else { return };
        match api::free_coherent(self.layer, &self.dev(wrong).dev, copy) {
            Ok(()) => panic!("free_coherent through the wrong device succeeded"),
            Err((_, e)) => self.count_err(&e),
        }
        assert_eq!(before, self.snap(), "a refused free changed something");
        self.coherent_check(i);
    }

    /// Device accesses that must fault, and be exactly the faults in the log.
    fn op_provoke(&mut self) {
        let Some(slot) = self.pick_dev() else { return };
        let bits = self.dev(slot).bits;
        let d = self.model_dev(slot);
        match self.rng.below(2) {
            // Above the device's mask.
            0 if bits < 64 => {
                let bus = (1u64 << bits) + self.rng.below(PAGE);
                assert!(d.read(bus, 1).is_err(), "device read above its mask");
                let f = self.fault(slot, bus, AccessKind::Read, FaultReason::AboveMask);
                self.expect_faults(&[f]);
            }
            // A private original, by its own address (confidential, no IOMMU).
            _ if self.flavour.confidential() && !self.flavour.iommu() => {
                let Some(m) = self.maps.iter().find(|m| m.phys.is_some()) else { return };
                let bus = self.hv.config().bus_encoding.bus(PhysAddr(m.phys.unwrap())).0;
                if !DmaMask::new(bits).unwrap().covers(bus, 1) {
                    return;
                }
                assert!(d.write(bus, &[0xA5]).is_err(), "device wrote a private original");
                let f = self.fault(slot, bus, AccessKind::Write, FaultReason::PrivateTarget);
                self.expect_faults(&[f]);
            }
            // Behind the IOMMU: a bus address in the window that holds nothing of the device.
            _ if self.flavour.iommu() && self.path(slot).is_some() => {
                let top = (2 * GIB).min(1u64 << bits.min(63));
                let bus = (MIB + self.rng.below(top - MIB)) & !(PAGE - 1);
                let hit =
                    self.hv.reachable(self.dev(slot).id).iter().any(|r| r.bus <= bus && bus < r.bus + r.len);
                if hit || !DmaMask::new(bits).unwrap().covers(bus, 1) || self.dev_covers(slot, bus, PAGE) {
                    return;
                }
                assert!(d.read(bus, 1).is_err(), "device read an unmapped window address");
                let f = self.fault(slot, bus, AccessKind::Read, FaultReason::NoEntry);
                self.expect_faults(&[f]);
            }
            _ => {}
        }
    }
}

fn face_is_heap(f: &Face) -> bool {
    matches!(f, Face::RawPtr(_))
}

/// The seed of a flavour: `CCDMA_RANDOM_SEED` (decimal or 0x-hex) or a fixed default, mixed with the
/// flavour so every flavour runs its own sequence.
pub fn seed_for(flavour: Flavour) -> (u64, u64) {
    let base = std::env::var("CCDMA_RANDOM_SEED")
        .ok()
        .and_then(|s| {
            let s = s.trim();
            match s.strip_prefix("0x") {
                Some(h) => u64::from_str_radix(h, 16).ok(),
                None => s.parse().ok(),
            }
        })
        .unwrap_or(0xCCD4_0008);
    (base, base ^ (flavour.index() + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// Operations per flavour: `CCDMA_RANDOM_OPS` or `default`.
pub fn ops_per_flavour(default: u64) -> u64 {
    std::env::var("CCDMA_RANDOM_OPS").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(default)
}

/// Run `ops` operations on `flavour`, checking the invariants after each; on failure print the seed,
/// the op index and the last operations, then fail.
pub fn run_flavour(flavour: Flavour, ops: u64) -> Summary {
    let (base, seed) = seed_for(flavour);
    let t0 = std::time::Instant::now();
    let mut r = Runner::new(flavour, seed);
    let mut recent: std::collections::VecDeque<(u64, Op)> = std::collections::VecDeque::new();
    for n in 0..ops {
        let op = r.step();
        recent.push_back((n, op));
        if recent.len() > 12 {
            recent.pop_front();
        }
        let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            r.run(op);
            r.check();
        }));
        if let Err(p) = res {
            eprintln!(
                "random_ops: {flavour:?} failed at op #{n} ({op:?}); reproduce with \
                 CCDMA_RANDOM_SEED={base:#x} CCDMA_RANDOM_OPS={} (flavour seed {seed:#x}); last ops: {:?}",
                n + 1,
                recent
            );
            // The runner's records may be inconsistent now: leak it rather than unmapping on drop.
            std::mem::forget(r);
            std::panic::resume_unwind(p);
        }
    }
    let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        r.drain_all(true);
        r.check();
    }));
    if let Err(p) = res {
        eprintln!("random_ops: {flavour:?} failed in the final drain; CCDMA_RANDOM_SEED={base:#x} CCDMA_RANDOM_OPS={ops}");
        std::mem::forget(r);
        std::panic::resume_unwind(p);
    }
    let s = std::mem::take(&mut r.summary);
    eprintln!("random_ops: {flavour:?} (seed {base:#x}) in {:.2?}: {s}", t0.elapsed());
    s
}
