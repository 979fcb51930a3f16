//! The checks of one configuration: devices of many masks on one PCI host bridge, each attached to
//! ccdma and driven through its `CcdmaHal` binding; DMA through QEMU's TCE tables.

use ccdma::{DeviceConfig, DmaMask, DmaPath, IommuConfig, IommuPolicy, VerifyPolicy};
use ccdma_qemu_common::attach::{attach_checked, init_checked};
use ccdma_qemu_common::checks::{self, Bounced};
use ccdma_qemu_common::direct::DirectHal;
use ccdma_qemu_common::held::Held;
use ccdma_qemu_common::net::Nic;
use ccdma_qemu_common::report::Report;
use ccdma_qemu_common::rng::VirtioRng;
use ccdma_qemu_common::transport::{self, PlatformAccessTransport};
use ccdma_qemu_common::virtio::pci::PciTransport;
use ccdma_qemu_common::{blk::Blk, println};
use core::fmt;
use virtio_drivers::transport::pci::bus::DeviceFunction;

use crate::config::{slot, Config};
use crate::devtree::{Bridge, Tree};
use crate::dma::{self, KernelBinding, Observed, PseriesDma};
use crate::pci::{self, PciBus};
use crate::platform::PLATFORM;
use crate::{containment, fidelity, summary};
use ccdma_qemu_common::dma_binding;

dma_binding!(
    /// virtio-blk, 64-bit mask.
    BlkBinding,
    "blk",
    PseriesDma
);
dma_binding!(
    /// virtio-rng, 32-bit mask; also the containment checks' device.
    RngBinding,
    "rng",
    PseriesDma
);
dma_binding!(
    /// First NIC, 32-bit mask.
    NetABinding,
    "net-a",
    PseriesDma
);
dma_binding!(
    /// Second NIC, 32-bit mask.
    NetBBinding,
    "net-b",
    PseriesDma
);
dma_binding!(
    /// virtio-rng whose mask (21 bits) is below the pool's size: strict entries.
    RngLowBinding,
    "rng-low",
    PseriesDma
);
dma_binding!(
    /// virtio-rng, 64-bit mask, on the blk's endpoint: it shares the blk's domain and DDW.
    Rng64Binding,
    "rng64",
    PseriesDma
);
dma_binding!(
    /// virtio-rng, 32-bit mask, on a second host bridge: an endpoint (and windows) of its own.
    RngB1Binding,
    "rng-b1",
    PseriesDma
);
dma_binding!(
    /// virtio-rng whose mask (12 bits) leaves no room for anything: attach refused.
    RngTinyBinding,
    "rng-tiny",
    PseriesDma
);

/// The transport of managed devices.
pub type Transport = PlatformAccessTransport<PciTransport>;
/// The rng driver over binding `B`.
pub type Rng<B> = VirtioRng<Observed<B>, Transport>;

/// Mask of the device below the pool: 2 MiB of bus space, less than the 4 MiB pool.
const LOW_MASK_BITS: u32 = 21;
/// Mask too small for anything: 8 KiB of bus space (ccdma takes masks above 12 bits), all of it
/// outside the device's slice of the window.
const TINY_MASK_BITS: u32 = 13;
const MIB: u64 = 1 << 20;

/// Each device's slice of the bridge's default window (bus addresses), see [`crate::tce`].
fn slice_of(slot: u8) -> (u64, u64) {
    match slot {
        slot::RNG_LOW => (0, 2 * MIB),
        slot::RNG_TINY => (2 * MIB, 4 * MIB),
        slot::RNG => (128 * MIB, 256 * MIB),
        slot::NET_A => (256 * MIB, 384 * MIB),
        slot::NET_B => (384 * MIB, 512 * MIB),
        _ => (512 * MIB, 640 * MIB),
    }
}

/// Everything that must stay alive until the machine stops (dropping a virtio driver resets its
/// device). Held in [`MACHINE`], never read.
#[allow(dead_code)]
pub struct Machine {
    blk: Option<Blk<Observed<BlkBinding>>>,
    rng: Option<Rng<RngBinding>>,
    rng_low: Option<Rng<RngLowBinding>>,
    rng64: Option<Rng<Rng64Binding>>,
    rng_b1: Option<Rng<RngB1Binding>>,
    net_a: Option<Nic<Observed<NetABinding>>>,
    net_b: Option<Nic<Observed<NetBBinding>>>,
    bench: Option<Blk<DirectHal>>,
    /// ccdma refused the 13-bit device's attach.
    tiny_refused: bool,
    /// Failures the layer counted in the refused-share check (on purpose).
    share_refusal_failures: u64,
}

impl Machine {
    /// No device.
    const EMPTY: Self = Self {
        blk: None,
        rng: None,
        rng_low: None,
        rng64: None,
        rng_b1: None,
        net_a: None,
        net_b: None,
        bench: None,
        tiny_refused: false,
        share_refusal_failures: 0,
    };
}

/// The devices, in a static for good: no stack frame holds them (by value they made `run` and
/// `kmain` 19 KB and 11 KB; scripts/kernel-budgets.sh).
static MACHINE: Held<Machine> = Held::new(Machine::EMPTY);

/// Runs every check of `config`. The devices stay in [`MACHINE`] until the machine stops.
pub fn run(report: &mut Report, tree: &Tree, config: &Config) {
    let Some(machine) = MACHINE.take() else {
        return report.fail("boot.devices", "the checks ran twice");
    };
    PLATFORM.ledger().set_ram(tree.ram());
    let ram: u64 = tree.ram().iter().map(|r| r.end - r.start).sum();
    report.expect(
        "boot.memory",
        ram >= 4 << 30,
        format_args!(
            "{} MiB of RAM in {} range(s), top {:#x}",
            ram >> 20,
            tree.ram().len(),
            PLATFORM.ledger().ram_end()
        ),
    );
    let Some(bridge) = tree.bridge else {
        report.fail("pci.bridge", "no PCI host bridge in the device tree");
        return;
    };
    report.pass("pci.bridge", BridgeNote(&bridge));
    report.expect(
        "pci.ddw_offered",
        bridge.ddw.is_some() == config.ddw,
        format_args!(
            "ibm,ddw-applicable {}, as the configuration asks",
            if bridge.ddw.is_some() { "present" } else { "absent" }
        ),
    );
    PLATFORM.tce_calls().set_bridge(bridge);

    let iommu = match config.policy {
        IommuPolicy::Premapped => IommuConfig::premapped(),
        IommuPolicy::Strict => IommuConfig::strict(),
    }
    .with_verify(VerifyPolicy::Ends);
    match dma::init(iommu, config.batching) {
        Ok((pool, _)) => report.expect(
            "ccdma.pool",
            pool.phys >= 1 << 32,
            format_args!(
                "{} KiB at phys {:#x}, above 4 GiB: no 32-bit device reaches it but through a TCE",
                pool.len >> 10,
                pool.phys
            ),
        ),
        Err(error) => {
            report.fail("ccdma.pool", error);
            return;
        }
    };

    let Some(mut pci) = PciBus::new(&bridge) else {
        report.fail("pci.rtas", "no ibm,read-pci-config / ibm,write-pci-config tokens in /rtas");
        return;
    };
    survey(report, &pci);

    let mask32 = DmaMask::BITS_32;
    let mask64 = DmaMask::BITS_64;
    let mask_low = DmaMask::new(LOW_MASK_BITS).unwrap_or(mask32);
    let mask_tiny = DmaMask::new(TINY_MASK_BITS).unwrap_or(mask32);
    machine.blk = open_managed::<BlkBinding, _, _>(report, &mut pci, slot::BLK, config, mask64, Blk::open);
    machine.rng =
        open_managed::<RngBinding, _, _>(report, &mut pci, slot::RNG, config, mask32, VirtioRng::new);
    machine.net_a =
        open_managed::<NetABinding, _, _>(report, &mut pci, slot::NET_A, config, mask32, Nic::open);
    machine.net_b =
        open_managed::<NetBBinding, _, _>(report, &mut pci, slot::NET_B, config, mask32, Nic::open);
    machine.rng_low = open_managed::<RngLowBinding, _, _>(
        report,
        &mut pci,
        slot::RNG_LOW,
        config,
        mask_low,
        VirtioRng::new,
    );
    machine.rng64 =
        open_managed::<Rng64Binding, _, _>(report, &mut pci, slot::RNG64, config, mask64, VirtioRng::new);
    check_shared_ddw(report);
    machine.tiny_refused = check_refused::<RngTinyBinding>(report, &mut pci, slot::RNG_TINY, mask_tiny);
    machine.bench = open_bench(report, &mut pci);
    machine.rng_b1 = open_second_bridge(report, tree, config, &bridge);
    announce_windows(&bridge);
    check_ddw_pages(report, config);

    if let Some(blk) = machine.blk.as_mut() {
        checks::check_disk_signature(report, blk);
        checks::check_write_marker(report, blk);
        let stats = BlkBinding::stats();
        let bounced = Bounced { to_device: &stats.bytes_to_device, from_device: &stats.bytes_from_device };
        checks::check_blk_patterns(report, blk, &bounced);
        crate::growth::check::<BlkBinding, _, RngBinding, _, _>(report, blk, machine.rng.as_mut());
    }
    if let Some(rng) = machine.rng.as_mut() {
        checks::check_rng(report, "rng", rng);
        machine.share_refusal_failures =
            ccdma_qemu_common::share_refusal::check_refused_share::<RngBinding>(report, PLATFORM.ledger());
    }
    if let Some(rng) = machine.rng_low.as_mut() {
        checks::check_rng(report, "rng-low", rng);
    }
    if let Some(rng) = machine.rng64.as_mut() {
        checks::check_rng(report, "rng64", rng);
    }
    if let Some(rng) = machine.rng_b1.as_mut() {
        checks::check_rng(report, "rng-b1", rng);
    }
    if let (Some(a), Some(b)) = (machine.net_a.as_mut(), machine.net_b.as_mut()) {
        checks::check_net(report, a, b);
    }
    summary::check_masks(report);
    if let Some(rng) = machine.rng.as_mut() {
        containment::check_private(report, rng);
        containment::check_direction(report, rng, config.policy);
        if config.is_selftest() {
            crate::selftest::provoke(report, rng);
        }
    }
    // Not in the self-test: an expected broken device there would explain the one it provokes.
    if !config.is_selftest() {
        containment::check_broken_recovery(report, &mut machine.rng);
    }
    if let (false, Some(managed), Some(baseline)) =
        (config.is_selftest(), machine.blk.as_mut(), machine.bench.as_mut())
    {
        checks::run_bench(report, managed, baseline, "ccdma + TCE");
    }
    fidelity::probe(report, &bridge);
    crate::detach::check(report, &mut pci, &mut machine.blk, &mut machine.rng64, slice_of(slot::BLK));
    summary::check_tces(report);
    summary::check_batching(report, config);
    summary::check_ledger(report, machine);
    summary::print(config);
}

impl Machine {
    /// NICs up (their receive buffers stay mapped).
    pub fn nics(&self) -> usize {
        usize::from(self.net_a.is_some()) + usize::from(self.net_b.is_some())
    }

    /// Failures the layer counted on purpose: the refused attach and the refused share.
    pub fn failures_on_purpose(&self) -> u64 {
        u64::from(self.tiny_refused) + self.share_refusal_failures
    }
}

/// Prints the bridge's windows for the runner, which takes each `CONTAIN` range as an offset inside
/// the window that holds it (QEMU logs a rejected access by that offset).
fn announce_windows(bridge: &Bridge) {
    let (liobn, start, size) = (bridge.liobn, bridge.window_start, bridge.window_size);
    println!("WINDOW default liobn={liobn:#x} bus={start:#x} len={size:#x}");
    if let Some((liobn, start, size, _)) = PLATFORM.tce_calls().ddw() {
        println!("WINDOW ddw liobn={liobn:#x} bus={start:#x} len={size:#x}");
    }
}

/// The DDW uses the largest IOMMU page the bridge offers that the pool fills: 2 MiB by QEMU's
/// default (16 MiB is offered, the pool is 8 MiB), 64 KiB where the machine offers no more (as
/// PowerVM usually does).
/// Premapped only: the strict policy maps into the default window.
fn check_ddw_pages(report: &mut Report, config: &Config) {
    if !config.ddw || !matches!(config.policy, IommuPolicy::Premapped) {
        return;
    }
    match PLATFORM.tce_calls().ddw() {
        Some((liobn, _, size, shift)) => {
            report.expect(
                "iommu.ddw_pages",
                shift == config.ddw_page_shift,
                format_args!(
                    "DDW {liobn:#x}: {} KiB IOMMU pages (expected {} KiB), {} entries for {:#x} bytes",
                    (1u64 << shift) >> 10,
                    (1u64 << config.ddw_page_shift) >> 10,
                    size >> shift,
                    size
                ),
            );
        }
        None => report.fail("iommu.ddw_pages", "the bridge offers DDW but ccdma created none"),
    }
}

struct BridgeNote<'a>(&'a Bridge);

impl fmt::Display for BridgeNote<'_> {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "BUID {:#x}; default window LIOBN {:#x} bus {:#x}+{:#x}; DDW tokens ",
            b.buid, b.liobn, b.window_start, b.window_size
        )?;
        match b.ddw {
            Some([query, create, remove]) => write!(f, "{query:#x} {create:#x} {remove:#x}")?,
            None => f.write_str("none")?,
        }
        write!(f, ", reset {}; 64-bit MMIO ", crate::show::Hex(b.ddw_reset))?;
        match b.mem64 {
            Some((pci, cpu, size)) => write!(f, "pci {pci:#x} cpu {cpu:#x} size {size:#x}"),
            None => f.write_str("none"),
        }
    }
}

/// The 64-bit devices share one ccdma domain, as PAPR shares the bridge's windows: the first one's
/// slice and DDW serve both (see [`crate::tce`]).
fn group_of(slot: u8) -> Option<u32> {
    matches!(slot, slot::BLK | slot::RNG64).then_some(1)
}

/// `iommu.shared_ddw`: the second 64-bit device joined the blk's domain: the same path and windows,
/// and its attach made no DDW call (the bridge has no window left: QEMU's query says 0 available).
fn check_shared_ddw(report: &mut Report) {
    let (Some(blk), Some(rng)) = (BlkBinding::slot().get(), Rng64Binding::slot().get()) else { return };
    // Both attached: the layer is there.
    let Ok(layer) = crate::dma::layer() else { return };
    let (windows, shared) = (layer.windows_of(blk), layer.windows_of(rng));
    let stats = layer.iommu_stats();
    let ok = blk.path() == rng.path() && windows == shared && stats.ddw_create <= 1;
    let liobn = |w: Option<ccdma::iommu::WindowGeometry>| crate::show::Hex(w.map(|w| w.liobn));
    report.expect(
        "iommu.shared_ddw",
        ok,
        format_args!(
            "rng64 {:#x} shares blk {:#x}'s domain: path {} (blk {}), DDW {} (blk {}); {} DDW created, {} queried, \
             {} removed in all",
            rng.config().id,
            blk.config().id,
            rng.path().name(),
            blk.path().name(),
            liobn(shared.1),
            liobn(windows.1),
            stats.ddw_create,
            stats.ddw_query,
            stats.ddw_remove
        ),
    );
}

/// `pci.bridge1` (configuration `pseries`): a 32-bit virtio-rng on a second PCI host bridge
/// (`-device spapr-pci-host-bridge,index=1`), slot 1. It is a partitionable endpoint of its own: its
/// own BUID, default window (LIOBN) and ccdma domain; ccdma's pool is entered into that window.
// Not inlined: each device's driver value (up to 2.6 KiB, a NIC) stays in this function's own frame
// instead of adding up in the caller's (scripts/kernel-budgets.sh).
#[inline(never)]
fn open_second_bridge(
    report: &mut Report,
    tree: &Tree,
    config: &Config,
    main: &Bridge,
) -> Option<Rng<RngB1Binding>> {
    let Some(bridge) = tree.bridge1 else {
        if config.name == "pseries" {
            report.fail("pci.bridge1", "no second PCI host bridge in the device tree");
        }
        return None;
    };
    crate::fidelity::probe_window_life_cycle(report, &bridge);
    let mut pci = PciBus::new(&bridge)?;
    // The transport maps the BARs through this bridge's memory windows; the main bridge's come back
    // right after.
    let opened = function_at(report, &mut pci, 1, RngB1Binding::NAME).and_then(|function| {
        let transport =
            transport::managed(report, RngB1Binding::NAME, PciTransport::new(pci.cam(), function));
        Some((function, transport?))
    });
    pci::use_windows_of(main);
    let (function, transport) = opened?;
    let id = pci::config_address(function) | crate::tce::OTHER_BRIDGE;
    PLATFORM.tce_calls().register_on_bridge(id, bridge);
    let mask = DmaMask::BITS_32;
    let what = format_args!("bridge {:#x} {function}, {mask} mask", bridge.buid);
    let device = attach_checked::<RngB1Binding>(
        report,
        DeviceConfig::new(id, mask),
        expected_path(config, mask),
        what,
    )?;
    let layer = crate::dma::layer().ok()?;
    let window = layer.windows_of(device).0;
    let pool_bus = layer.pool_bus_of(device, 0);
    let entry = pool_bus.and_then(|bus| PLATFORM.tce_calls().read_entry(bridge.liobn, bus.0));
    let separate = bridge.buid != main.buid && bridge.liobn != main.liobn;
    let ok = separate && window.is_some_and(|w| w.liobn == bridge.liobn) && entry.is_some_and(|e| e & 3 != 0);
    report.expect(
        "pci.bridge1",
        ok,
        format_args!(
            "second bridge BUID {:#x} (main {:#x}), default window LIOBN {:#x} (main {:#x}); rng-b1's window \
             {}, pool at bus {} there with entry {}",
            bridge.buid,
            main.buid,
            bridge.liobn,
            main.liobn,
            crate::show::Hex(window.map(|w| w.liobn)),
            crate::show::Hex(pool_bus.map(|b| b.0)),
            crate::show::Hex(entry)
        ),
    );
    init_checked::<RngB1Binding, _, _>(report, VirtioRng::new(transport))
}

/// Lists the functions on the bridge.
fn survey(report: &mut Report, pci: &PciBus) {
    let mut count = 0;
    for (function, info) in pci.functions() {
        count += 1;
        println!("  pci {function}: {:04x}:{:04x}", info.vendor_id, info.device_id);
    }
    report.expect(
        "pci.enumerate",
        count > 0,
        format_args!("{count} function(s) on bus 0 through RTAS config calls"),
    );
}

/// The function at `slot`, its BARs assigned and enabled.
fn function_at(report: &mut Report, pci: &mut PciBus, slot: u8, name: &str) -> Option<DeviceFunction> {
    let (function, _) = pci.at_slot(slot)?;
    if let Err(error) = pci.assign_and_enable(function) {
        report.fail(format_args!("{name}.init"), format_args!("BARs: {error}"));
        return None;
    }
    Some(function)
}

/// The path ccdma must choose for a device with `mask` in `config`.
fn expected_path(config: &Config, mask: DmaMask) -> DmaPath {
    match config.policy {
        IommuPolicy::Strict => DmaPath::IommuStrict,
        IommuPolicy::Premapped if mask.bits() == 64 && config.ddw => DmaPath::IommuDdw,
        IommuPolicy::Premapped if mask.bits() <= LOW_MASK_BITS => DmaPath::IommuStrict,
        IommuPolicy::Premapped => DmaPath::IommuPremapped,
    }
}

/// Opens the device at `slot` (if the runner put one there), attaches it to ccdma with `mask`
/// and brings its driver up.
// Not inlined: each device's driver value (up to 2.6 KiB, a NIC) stays in this function's own frame
// instead of adding up in the caller's (scripts/kernel-budgets.sh).
#[inline(never)]
fn open_managed<B, D, E>(
    report: &mut Report,
    pci: &mut PciBus,
    slot: u8,
    config: &Config,
    mask: DmaMask,
    init: impl FnOnce(Transport) -> Result<D, E>,
) -> Option<D>
where
    B: KernelBinding,
    E: fmt::Display,
{
    let function = function_at(report, pci, slot, B::NAME)?;
    let transport = transport::managed(report, B::NAME, PciTransport::new(pci.cam(), function))?;
    let id = pci::config_address(function);
    let (start, end) = slice_of(slot);
    match group_of(slot) {
        Some(group) => PLATFORM.tce_calls().register_in_group(id, start, end, group),
        None => PLATFORM.tce_calls().register(id, start, end),
    };
    let expected = expected_path(config, mask);
    let what = format_args!("{function}, {mask} mask, default-window slice {start:#x}..{end:#x}");
    attach_checked::<B>(report, DeviceConfig::new(id, mask), expected, what)?;
    init_checked::<B, D, E>(report, init(transport))
}

/// A device whose mask leaves no room: ccdma must refuse the attach, and say why.
/// Returns whether the attach was refused.
fn check_refused<B: KernelBinding>(report: &mut Report, pci: &mut PciBus, slot: u8, mask: DmaMask) -> bool {
    let Some(function) = function_at(report, pci, slot, B::NAME) else { return false };
    let id = pci::config_address(function);
    let (start, end) = slice_of(slot);
    PLATFORM.tce_calls().register(id, start, end);
    match dma::attach::<B>(DeviceConfig::new(id, mask)) {
        Ok(device) => {
            report.fail(
                format_args!("{}.attach_refused", B::NAME),
                format_args!("{mask} mask attached with path {}", device.path().name()),
            );
            false
        }
        Err(dma::AttachError::Refused(error)) => {
            report.pass(
                format_args!("{}.attach_refused", B::NAME),
                format_args!("{function}, {mask} mask: attach refused: {error}"),
            );
            true
        }
        Err(error @ dma::AttachError::NoLayer) => {
            report.fail(format_args!("{}.attach_refused", B::NAME), error);
            false
        }
    }
}

/// The benchmark's baseline: a virtio-blk outside ccdma and the IOMMU.
// Not inlined: each device's driver value (up to 2.6 KiB, a NIC) stays in this function's own frame
// instead of adding up in the caller's (scripts/kernel-budgets.sh).
#[inline(never)]
fn open_bench(report: &mut Report, pci: &mut PciBus) -> Option<Blk<DirectHal>> {
    let function = function_at(report, pci, slot::BENCH, "bench-blk")?;
    let transport = match PciTransport::new(pci.cam(), function) {
        Ok(transport) => PlatformAccessTransport::new(transport),
        Err(error) => {
            report.fail("bench-blk.init", format_args!("PCI transport: {error}"));
            return None;
        }
    };
    match Blk::open(transport) {
        Ok(blk) => Some(blk),
        Err(error) => {
            report.fail("bench-blk.init", error);
            None
        }
    }
}
