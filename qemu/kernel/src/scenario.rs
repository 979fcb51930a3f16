//! The checks the kernel runs with ccdma, in order, and the closing report.
//!
//! Every managed device (data blk, containment blk, rng, two NICs) is attached to the one
//! [`dma::Layer`] and driven by virtio-drivers through its own `CcdmaHal` binding; behind the
//! virtio-iommu each has its own domain. The benchmark blk is the exception on purpose: it sits
//! outside the IOMMU and uses its private buffers directly, as the no-bounce, no-IOMMU baseline.

use ccdma::{Device, DeviceConfig, DmaMask, DmaPath};
use ccdma_qemu_common::checks::{self, Bounced, DISK_SIGNATURE};
use ccdma_qemu_common::report::Bytes;
use ccdma_qemu_common::virtio::blk::VirtioBlk;
use ccdma_qemu_common::virtio::net::VirtioNet;
use ccdma_qemu_common::virtio::pci::PciTransport;
use core::fmt;
use core::sync::atomic::Ordering;
use core::time::Duration;
use virtio_drivers::transport::pci::bus::DeviceFunction;

use crate::blk::{self, Blk, BlkIoError, BlkRequest};
use crate::config::{slot, IommuMode, TestConfig};
use crate::dma::{self, KernelBinding, Observed, PoolPlacement, X86Dma};
use crate::hal::DirectHal;
use crate::iommu::{Driver, DDW_START, DEFAULT_WINDOW_SIZE, DEFAULT_WINDOW_START};
use crate::net::Nic;
use crate::pci::{self, PciBus, RequesterId, VIRTIO_VENDOR};
use crate::platform::PLATFORM;
use crate::report::Report;
use crate::rng::VirtioRng;
use crate::start_info::StartInfo;
use crate::transport::PlatformAccessTransport;
use crate::virtio_iommu::{Domain, FaultReason, IommuError, Permissions, RequestKind, RequestStatus};
use crate::{boot, memory, patterns, println, time};
use ccdma_qemu_common::dma_binding;

dma_binding!(
    /// The data virtio-blk.
    BlkBinding,
    "blk",
    X86Dma
);
dma_binding!(
    /// The containment virtio-blk (its DMA is blocked on purpose).
    BlkFaultBinding,
    "blk-fault",
    X86Dma
);
dma_binding!(
    /// The virtio-rng.
    RngBinding,
    "rng",
    X86Dma
);
dma_binding!(
    /// The first virtio-net.
    NetABinding,
    "net-a",
    X86Dma
);
dma_binding!(
    /// The second virtio-net.
    NetBBinding,
    "net-b",
    X86Dma
);

type Transport = PlatformAccessTransport<PciTransport>;
type DataBlk = Blk<Observed<BlkBinding>>;
type FaultBlk = Blk<Observed<BlkFaultBinding>>;
type BenchBlk = Blk<DirectHal>;
type Rng = VirtioRng<Observed<RngBinding>, Transport>;

const FOUR_GIB: u64 = 1 << 32;
/// How long to wait for a fault report after provoking one.
const FAULT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a blocked request gets to (wrongly) complete.
const BLOCKED_REQUEST_GRACE: Duration = Duration::from_millis(200);
/// Domain ID no request ever creates, for the driver's error-path check.
const UNUSED_DOMAIN: u32 = 0xdead;

/// Everything that must stay alive until the machine stops (dropping a virtio driver resets its
/// device). The virtio-iommu lives in the platform for good. Held, never read.
#[allow(dead_code)]
#[derive(Default)]
pub struct Machine {
    blk: Option<DataBlk>,
    blk_fault: Option<FaultBlk>,
    rng: Option<Rng>,
    net_a: Option<Nic<Observed<NetABinding>>>,
    net_b: Option<Nic<Observed<NetBBinding>>>,
    bench: Option<BenchBlk>,
}

/// Runs every check for `config`.
pub fn run(report: &mut Report, start_info: &StartInfo, config: &TestConfig) -> Machine {
    let mut devices = Machine::default();
    check_memory(report, start_info);
    check_timer(report);
    let mut ram = [const { 0..0 }; 8];
    for (range, r) in ram.iter_mut().zip(start_info.ram()) {
        *range = r.start..r.end;
    }
    PLATFORM.ledger().set_ram(&ram[..start_info.ram().len().min(8)]);

    let mut pci = PciBus::q35();
    let found = survey(report, &pci, config);

    if config.iommu.present() {
        let Some(function) = found.iommu else {
            return devices;
        };
        let Some(driver) = init_iommu(report, &mut pci, function) else {
            return devices;
        };
        if PLATFORM.iommu().install(driver).is_err() {
            report.fail("iommu.install", "the platform already has an IOMMU");
            return devices;
        }
    } else {
        report.skip("iommu", "no IOMMU in this configuration: containment is the hardware's job (TDX)");
    }

    let placement = match (config.high_ram, config.iommu.present()) {
        (false, _) => PoolPlacement::Low,
        (true, false) => PoolPlacement::HighAndLow,
        (true, true) => PoolPlacement::High,
    };
    match dma::init(placement, config.iommu.ccdma_config()) {
        Ok((pools, _)) => {
            let pools = pools.iter().flatten();
            let count = pools.clone().count();
            let high = pools.clone().any(|pool| pool.phys >= FOUR_GIB);
            report.expect(
                "ccdma.pools",
                high == config.high_ram,
                format_args!(
                    "{count} pool(s) shared: {}",
                    PoolList(pools.clone().map(|pool| (pool.phys, pool.len)).collect_array())
                ),
            );
        }
        Err(error) => {
            report.fail("ccdma.pools", error);
            return devices;
        }
    }

    let mask32 = DmaMask::BITS_32;
    let mask64 = DmaMask::BITS_64;
    if let Some(function) = found.blk {
        devices.blk = open_managed::<BlkBinding, _, _>(
            report,
            &mut pci,
            function,
            config.iommu,
            mask64,
            VirtioBlk::new,
        );
    }
    if let Some(function) = found.blk_fault {
        devices.blk_fault = open_managed::<BlkFaultBinding, _, _>(
            report,
            &mut pci,
            function,
            config.iommu,
            mask64,
            VirtioBlk::new,
        );
    }
    if let Some(function) = found.rng {
        devices.rng = open_managed::<RngBinding, _, _>(
            report,
            &mut pci,
            function,
            config.iommu,
            mask32,
            VirtioRng::new,
        );
    }
    if let Some(function) = found.net_a {
        devices.net_a =
            open_managed::<NetABinding, _, _>(report, &mut pci, function, config.iommu, mask32, |t| {
                VirtioNet::new(t).map_err(crate::net::NetError::from).and_then(Nic::new)
            });
    }
    if let Some(function) = found.net_b {
        devices.net_b =
            open_managed::<NetBBinding, _, _>(report, &mut pci, function, config.iommu, mask64, |t| {
                VirtioNet::new(t).map_err(crate::net::NetError::from).and_then(Nic::new)
            });
    }
    if let Some(function) = found.bench {
        devices.bench = open_bench(report, &mut pci, function);
    }

    if let Some(blk) = devices.blk.as_mut() {
        checks::check_disk_signature(report, blk);
        checks::check_write_marker(report, blk);
        let stats = BlkBinding::stats();
        let bounced = Bounced { to_device: &stats.bytes_to_device, from_device: &stats.bytes_from_device };
        checks::check_blk_patterns(report, blk, &bounced);
    }
    if let Some(rng) = devices.rng.as_mut() {
        checks::check_rng(report, "rng", rng);
    }
    if let (Some(a), Some(b)) = (devices.net_a.as_mut(), devices.net_b.as_mut()) {
        checks::check_net(report, a, b);
    }
    check_masks(report, config);
    let mut expected_failures = 0;
    if config.iommu.present() {
        check_windows(report);
        check_no_stray_faults(report);
        match (devices.blk_fault.as_mut(), found.blk_fault) {
            (Some(blk), Some(function)) => {
                let endpoint = RequesterId::from(function);
                check_direction(report, blk, endpoint, config.iommu);
                check_containment(report, blk, endpoint);
                expected_failures = check_refused_share(report, blk, endpoint);
            }
            _ => report.fail("iommu.containment", "no containment blk"),
        }
    }
    if config.bench {
        match (devices.blk.as_mut(), devices.bench.as_mut()) {
            (Some(managed), Some(baseline)) => {
                let path = if config.iommu.present() { "bounce + IOMMU" } else { "bounce, no IOMMU" };
                checks::run_bench(report, managed, baseline, path)
            }
            _ => report.fail("bench.blk", "benchmark needs the data blk and the baseline blk"),
        }
    }
    check_ledger(report, &devices, expected_failures);
    print_summary(config, &found);
    devices
}

/// Up to two pools (address, length), for a report line.
struct PoolList([Option<(u64, usize)>; 2]);

impl fmt::Display for PoolList {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let mut first = true;
        for &(phys, len) in self.0.iter().flatten() {
            if !first {
                write!(f, ", ")?;
            }
            first = false;
            let side = if phys >= FOUR_GIB { "above" } else { "below" };
            write!(f, "{} KiB at phys {phys:#x} ({side} 4 GiB)", len >> 10)?;
        }
        Ok(())
    }
}

trait CollectArray<T> {
    fn collect_array(self) -> [Option<T>; 2];
}

impl<T: Copy, I: Iterator<Item = T>> CollectArray<T> for I {
    fn collect_array(self) -> [Option<T>; 2] {
        let mut out = [None; 2];
        for (slot, value) in out.iter_mut().zip(self) {
            *slot = Some(value);
        }
        out
    }
}

/// RAM layout from firmware; RAM above 4 GiB, if any, must be reachable through the boot map.
pub fn check_memory(report: &mut Report, start_info: &StartInfo) {
    let total: u64 = start_info.ram().iter().map(|range| range.end - range.start).sum();
    let above = start_info.ram_above(FOUR_GIB);
    report.expect(
        "boot.memory_map",
        total > 0,
        format_args!(
            "{} RAM ranges, {} MiB, {} MiB above 4 GiB (start_info v{})",
            start_info.ram().len(),
            total >> 20,
            above >> 20,
            start_info.version
        ),
    );
    let Some(top) = start_info.ram().iter().map(|range| range.end).max().filter(|&end| end > FOUR_GIB) else {
        report.skip("boot.high_ram", "no RAM above 4 GiB");
        return;
    };
    let limit = boot::identity_map_limit();
    let Some(probe) = memory::ptr_of(top - 8, 8) else {
        report
            .fail("boot.high_ram", format_args!("RAM ends at {top:#x}, identity map only covers {limit:#x}"));
        return;
    };
    let pattern = 0x5a5a_c3c3_0f0f_f0f0 ^ top;
    let probe = probe.as_ptr().cast::<u64>();
    // SAFETY: firmware reports the last 8 bytes below `top` as RAM, `ptr_of` checked they are
    // identity-mapped, and nothing uses that memory yet (the high pool is set up later).
    let read_back = unsafe {
        probe.write_volatile(pattern);
        probe.read_volatile()
    };
    report.expect(
        "boot.high_ram",
        read_back == pattern,
        format_args!("wrote and read back {:#x} (top of RAM, map covers {} GiB)", top - 8, limit >> 30),
    );
}

/// Starts the HPET, which bounds every wait.
pub fn check_timer(report: &mut Report) {
    match time::init() {
        Some(period_fs) => report.pass("time.hpet", format_args!("HPET period {period_fs} fs")),
        None => report.fail("time.hpet", "no usable HPET: deadlines fall back to poll counts"),
    }
}

/// The PCI functions of each role, where present.
#[derive(Default)]
struct Found {
    iommu: Option<DeviceFunction>,
    blk: Option<DeviceFunction>,
    blk_fault: Option<DeviceFunction>,
    rng: Option<DeviceFunction>,
    net_a: Option<DeviceFunction>,
    net_b: Option<DeviceFunction>,
    bench: Option<DeviceFunction>,
}

/// Lists bus 0 and finds each role at its slot, checking the device there is what the
/// configuration promised.
fn survey(report: &mut Report, pci: &PciBus, config: &TestConfig) -> Found {
    println!("devices on PCI bus 0:");
    for (function, info) in pci.functions() {
        if info.vendor_id == VIRTIO_VENDOR {
            println!(
                "  {function} {} ({:04x}:{:04x})",
                pci::virtio_name(info.device_id),
                info.vendor_id,
                info.device_id
            );
        }
    }
    let mut found = Found::default();
    let roles: [(&str, u8, u16, bool, &mut Option<DeviceFunction>); 7] = [
        ("virtio-iommu", slot::IOMMU, pci::VIRTIO_IOMMU, config.iommu.present(), &mut found.iommu),
        ("blk", slot::BLK, pci::VIRTIO_BLK_MODERN, true, &mut found.blk),
        ("blk-fault", slot::BLK_FAULT, pci::VIRTIO_BLK_MODERN, config.iommu.present(), &mut found.blk_fault),
        ("rng", slot::RNG, pci::VIRTIO_RNG_MODERN, true, &mut found.rng),
        ("net-a", slot::NET_A, pci::VIRTIO_NET_MODERN, true, &mut found.net_a),
        ("net-b", slot::NET_B, pci::VIRTIO_NET_MODERN, true, &mut found.net_b),
        ("bench-blk", slot::BLK_BENCH, pci::VIRTIO_BLK_MODERN, config.bench, &mut found.bench),
    ];
    let mut missing = 0;
    let mut present = 0;
    for (name, slot, device_id, expected, out) in roles {
        let at = pci
            .at_slot(slot)
            .filter(|(_, info)| info.vendor_id == VIRTIO_VENDOR && info.device_id == device_id);
        match (at, expected) {
            (Some((function, _)), true) => {
                present += 1;
                *out = Some(function);
            }
            (None, false) => {}
            (Some(_), false) => {
                missing += 1;
                println!("  unexpected {name} at slot {slot:#04x}");
            }
            (None, true) => {
                missing += 1;
                println!("  missing {name} at slot {slot:#04x}");
            }
        }
    }
    report.expect(
        "pci.devices",
        missing == 0,
        format_args!("{present} devices where the configuration puts them, {missing} missing or unexpected"),
    );
    found
}

/// Opens the transport of a managed device, attaches it to the layer with `mask` and creates its
/// driver with `init`. Reports the path ccdma chose.
fn open_managed<B, D, E>(
    report: &mut Report,
    pci: &mut PciBus,
    function: DeviceFunction,
    mode: IommuMode,
    mask: DmaMask,
    init: impl FnOnce(Transport) -> Result<D, E>,
) -> Option<D>
where
    B: KernelBinding,
    E: fmt::Display,
{
    let transport = match pci.managed_transport(function) {
        Ok(transport) => transport,
        Err(error) => {
            report.fail(format_args!("{}.init", B::NAME), format_args!("PCI transport: {error}"));
            return None;
        }
    };
    let mut transport = PlatformAccessTransport::new(transport);
    if !transport.offers_access_platform() {
        report.fail(
            format_args!("{}.init", B::NAME),
            "device does not offer VIRTIO_F_ACCESS_PLATFORM (iommu_platform=on missing)",
        );
        return None;
    }
    let id = u32::from(RequesterId::from(function).0);
    let domain = if PLATFORM.iommu().present() {
        match PLATFORM.iommu().register(id) {
            Ok(domain) => Some(domain),
            Err(error) => {
                report.fail(format_args!("{}.attach", B::NAME), format_args!("IOMMU domain: {error}"));
                return None;
            }
        }
    } else {
        None
    };
    let device = match dma::attach::<B>(DeviceConfig::new(id, mask)) {
        Ok(device) => device,
        Err(error) => {
            report.fail(format_args!("{}.attach", B::NAME), error);
            return None;
        }
    };
    let expected = expected_path(mode, mask);
    report.expect(
        format_args!("{}.attach", B::NAME),
        device.path() == expected,
        format_args!(
            "{function}, {mask} mask{}: path {} ({}){}",
            DomainNote(domain),
            device.path().name(),
            Reason(device),
            if device.path() == expected { "" } else { " - expected another" }
        ),
    );
    match init(transport) {
        Ok(driver) => {
            let stats = B::stats();
            report.pass(
                format_args!("{}.init", B::NAME),
                format_args!(
                    "driver up, {} coherent page(s) for its queues",
                    stats.coherent_pages.load(Ordering::Relaxed),
                ),
            );
            Some(driver)
        }
        Err(error) => {
            report.fail(format_args!("{}.init", B::NAME), error);
            None
        }
    }
}

/// The path ccdma must choose for a device with `mask` in this configuration (DESIGN.md section
/// 6): bounce everything without IOMMU; behind it, a dynamic window for 64-bit devices and the
/// default window below the mask for the others (premapped), or entries per mapping (strict).
fn expected_path(mode: IommuMode, mask: DmaMask) -> DmaPath {
    match mode {
        IommuMode::None => DmaPath::BounceAlways,
        IommuMode::Strict => DmaPath::IommuStrict,
        IommuMode::Premapped if mask.bits() == 64 => DmaPath::IommuDdw,
        IommuMode::Premapped => DmaPath::IommuPremapped,
    }
}

/// Why ccdma chose a device's path, in words.
struct Reason<'a>(&'a Device);

impl fmt::Display for Reason<'_> {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        if let Some(reason) = dma::layer().path_reason(self.0) {
            return write!(f, "{reason}");
        }
        match self.0.path() {
            DmaPath::BounceAlways => write!(
                f,
                "confidential guest without IOMMU: every buffer bounced through a pool below the mask, bus address = pool address"
            ),
            other => write!(f, "{}", other.name()),
        }
    }
}

/// ", domain N" when the device has a virtio-iommu domain.
struct DomainNote(Option<u32>);

impl fmt::Display for DomainNote {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self.0 {
            Some(domain) => write!(f, ", virtio-iommu domain {domain}"),
            None => Ok(()),
        }
    }
}

/// A bus address range for reports.
struct BusRange(Option<(u64, u64)>);

impl fmt::Display for BusRange {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self.0 {
            Some((low, high)) => write!(f, "{low:#x}..={high:#x}"),
            None => write!(f, "(none)"),
        }
    }
}

fn open_bench(report: &mut Report, pci: &mut PciBus, function: DeviceFunction) -> Option<BenchBlk> {
    let transport = match pci.managed_transport(function) {
        Ok(transport) => PlatformAccessTransport::new(transport),
        Err(error) => {
            report.fail("bench-blk.init", format_args!("PCI transport: {error}"));
            return None;
        }
    };
    match VirtioBlk::new(transport) {
        Ok(blk) => {
            report.pass(
                "bench-blk.init",
                format_args!("{function}: outside the IOMMU, buffers used in place (baseline, not ccdma)"),
            );
            Some(blk)
        }
        Err(error) => {
            report.fail("bench-blk.init", error);
            None
        }
    }
}

/// Brings the virtio-iommu up: features, geometry, bypass off (unattached endpoints fault from
/// now on), and the driver's own error paths.
fn init_iommu(report: &mut Report, pci: &mut PciBus, function: DeviceFunction) -> Option<Driver> {
    let transport = match pci.virtio_transport(function) {
        Ok(transport) => transport,
        Err(error) => {
            report.fail("iommu.init", format_args!("PCI transport: {error}"));
            return None;
        }
    };
    let mut iommu = match Driver::new(transport) {
        Ok(iommu) => iommu,
        Err(error) => {
            report.fail("iommu.init", format_args!("{error}"));
            return None;
        }
    };
    let config = *iommu.config();
    let fits = config.granule() <= memory::PAGE_SIZE as u64
        && config.input_start <= DEFAULT_WINDOW_START
        && DDW_START.checked_add(1 << 40).is_some_and(|end| end - 1 <= config.input_end)
        && config.bypass_configurable;
    report.expect(
        "iommu.init",
        fits,
        format_args!(
            "features {:#x}, page sizes {:#x}, input range {:#x}..={:#x}, domains {}..={}; windows at {DEFAULT_WINDOW_START:#x} ({} MiB) and {DDW_START:#x} fit: {fits}",
            iommu.features(),
            config.page_size_mask,
            config.input_start,
            config.input_end,
            config.domain_start,
            config.domain_end,
            DEFAULT_WINDOW_SIZE >> 20
        ),
    );
    let was = iommu.bypass();
    match iommu.set_bypass(false) {
        Ok(()) => report.pass(
            "iommu.bypass_off",
            format_args!("bypass was {was:?}, now off: endpoints in no domain fault"),
        ),
        Err(error) => report.fail("iommu.bypass_off", error),
    }
    let page = memory::PAGE_SIZE as u64;
    let missing =
        iommu.map(Domain::from_raw(UNUSED_DOMAIN), DEFAULT_WINDOW_START, 0, page, Permissions::READ);
    let misaligned =
        iommu.map(Domain::from_raw(UNUSED_DOMAIN), DEFAULT_WINDOW_START + 1, 0, page, Permissions::READ);
    report.expect(
        "iommu.request_errors",
        missing == Err(IommuError::Request { kind: RequestKind::Map, status: RequestStatus::NoEntry })
            && misaligned == Err(IommuError::Unaligned),
        format_args!("MAP into a domain that does not exist: {missing:?}; misaligned MAP: {misaligned:?}"),
    );
    Some(iommu)
}

/// Every live entry of every managed device's windows names a page of a pool or of a coherent
/// buffer, and the ledger says it is shared: nothing else is reachable through the IOMMU.
fn check_windows(report: &mut Report) {
    fn one<B: KernelBinding>(totals: &mut (u64, u64, u64)) {
        let Some(device) = B::slot().get() else {
            return;
        };
        let id = device.config().id;
        let pools: [(u64, u64); 2] = core::array::from_fn(|i| {
            dma::layer()
                .pool(i)
                .map_or((0, 0), |(pool, _)| (pool.phys().0, pool.phys().0 + pool.len() as u64))
        });
        let coherent = dma::coherent_area();
        PLATFORM.iommu().for_each_entry(id, |_bus, len, real, _perms| {
            totals.0 += 1;
            let inside = |(start, end): (u64, u64)| real >= start && real + len <= end;
            if !(pools.iter().any(|&range| inside(range)) || inside((coherent.start, coherent.end))) {
                totals.1 += 1;
            }
            if PLATFORM.ledger().all_shared(real, len).is_err() {
                totals.2 += 1;
            }
        });
    }
    let mut totals = (0, 0, 0);
    one::<BlkBinding>(&mut totals);
    one::<BlkFaultBinding>(&mut totals);
    one::<RngBinding>(&mut totals);
    one::<NetABinding>(&mut totals);
    one::<NetBBinding>(&mut totals);
    let (entries, outside, private) = totals;
    report.expect(
        "iommu.windows",
        entries > 0 && outside == 0 && private == 0,
        format_args!(
            "{entries} live entries over all device windows: {outside} outside the pools and coherent buffers, {private} on private pages"
        ),
    );
}

/// No fault was reported while every device did its I/O through ccdma.
fn check_no_stray_faults(report: &mut Report) {
    let faults = PLATFORM.iommu().poll_faults();
    report.expect(
        "iommu.no_stray_faults",
        faults == 0,
        format_args!("{faults} fault reports after all I/O through ccdma"),
    );
}

/// A read whose data buffer is private memory outside the pool (handed to the device unmapped, as
/// a driver bug would) must be stopped by the IOMMU: mapping faults from the device's endpoint at
/// that buffer on the event queue, the private bytes unchanged, and the kernel back in control
/// within a bounded wait. QEMU drops the blocked writes and may still complete the request with
/// a success status, so completion proves nothing either way; it is reported, not relied on.
fn check_containment(report: &mut Report, blk: &mut FaultBlk, endpoint: RequesterId) {
    const NAME: &str = "iommu.containment";
    const LEN: usize = 4096;
    const SEED: u64 = 0xc0ff_ee00;
    let Some(buffer) = memory::leak_bytes(LEN, 4096) else {
        return report.fail(NAME, "no memory for the buffer");
    };
    patterns::fill(buffer, SEED);
    let private = buffer.as_ptr();
    let private_phys = memory::phys_of(private);
    let request = match BlkRequest::with_buffer(buffer) {
        Ok(request) => request,
        Err(error) => return report.fail(NAME, error),
    };
    drain_faults();
    let faults_before = PLATFORM.iommu().counters().faults;
    let stats = BlkFaultBinding::stats();
    stats.passthrough_len.store(LEN, Ordering::Relaxed);
    let submitted = blk::start_read(blk, request, 0);
    stats.passthrough_len.store(0, Ordering::Relaxed);
    let in_flight = match submitted {
        Ok(in_flight) => in_flight,
        Err(error) => return report.fail(NAME, error),
    };
    let endpoint_id = u32::from(endpoint.0);
    let at_buffer = |fault: &crate::virtio_iommu::Fault| {
        fault.endpoint.0 == endpoint_id
            && fault.reason == FaultReason::Mapping
            && fault
                .address
                .is_some_and(|address| (private_phys..private_phys + LEN as u64).contains(&address))
    };
    let reported = wait_for_fault(faults_before, at_buffer);
    let completion = match in_flight.finish(blk, BLOCKED_REQUEST_GRACE) {
        Ok(_) => "completed with a success status (the data never arrived)",
        Err(BlkIoError::Timeout) => "never completed (bounded wait expired)",
        Err(_) => "completed with an error",
    };
    // SAFETY: the buffer is leaked and its request is over (completed, or abandoned to a device
    // that can no longer reach it): nothing writes it any more. Reading it is the point: it must
    // be unchanged.
    let now = unsafe { core::slice::from_raw_parts(private, LEN) };
    let mut scratch = [0u8; LEN];
    let unchanged = patterns::check(now, SEED, &mut scratch).is_none();
    drain_faults();
    let fault =
        PLATFORM.iommu().faults_since(faults_before).into_iter().flatten().find(|fault| at_buffer(fault));
    let faults = PLATFORM.iommu().counters().faults - faults_before;
    let Some(fault) = fault else {
        return report.fail(
            NAME,
            format_args!(
                "no fault report from endpoint {endpoint} at the private buffer; request {completion}; private bytes unchanged: {unchanged}"
            ),
        );
    };
    report.expect(
        NAME,
        reported && unchanged,
        format_args!(
            "read into private {private_phys:#x} (outside the pool, unmapped): {} ({faults} report(s)); private bytes unchanged: {unchanged}; request {completion}",
            FaultNote(fault)
        ),
    );
}

/// How long without a new fault report counts as "the device has stopped reporting".
const FAULT_QUIET: Duration = Duration::from_millis(20);

/// Takes fault reports off the event queue until none has come for [`FAULT_QUIET`] (bounded by
/// [`FAULT_TIMEOUT`]), so one check's reports neither fill the queue for the next (QEMU drops
/// reports while no event buffer is posted) nor get counted by it.
fn drain_faults() {
    let mut deadline = time::Deadline::after(FAULT_TIMEOUT);
    let mut quiet = time::Deadline::after(FAULT_QUIET);
    loop {
        if PLATFORM.iommu().poll_faults() > 0 {
            quiet = time::Deadline::after(FAULT_QUIET);
        } else if quiet.expired() || deadline.expired() {
            return;
        }
        core::hint::spin_loop();
    }
}

/// Waits, bounded, until a fault report numbered `since` or later satisfies `wanted`.
fn wait_for_fault(since: u64, wanted: impl Fn(&crate::virtio_iommu::Fault) -> bool) -> bool {
    time::poll_until(FAULT_TIMEOUT, || {
        drain_faults();
        PLATFORM.iommu().faults_since(since).iter().flatten().any(&wanted).then_some(())
    })
    .is_some()
}

/// The data buffer of a read is mapped to-device (a driver that gets the direction wrong), so
/// the device may only read it. Strict: the entry is read-only and the device's write faults.
/// Premapped: the pools are mapped read/write once, so the write lands in the bounce slot (shared
/// memory, by design), and nothing comes back into the buffer because a to-device mapping is
/// never copied back. Either way the private buffer is unchanged.
fn check_direction(report: &mut Report, blk: &mut FaultBlk, endpoint: RequesterId, mode: IommuMode) {
    const NAME: &str = "iommu.direction";
    const LEN: usize = 2048;
    const SEED: u64 = 0xd1ec_7000;
    let Some(buffer) = memory::leak_bytes(LEN, 8) else {
        return report.fail(NAME, "no memory for the buffer");
    };
    patterns::fill(buffer, SEED);
    let private = buffer.as_ptr();
    let request = match BlkRequest::with_buffer(buffer) {
        Ok(request) => request,
        Err(error) => return report.fail(NAME, error),
    };
    let stats = BlkFaultBinding::stats();
    drain_faults();
    let faults_before = PLATFORM.iommu().counters().faults;
    stats.to_device_len.store(LEN, Ordering::Relaxed);
    let submitted = blk::start_read(blk, request, 0);
    stats.to_device_len.store(0, Ordering::Relaxed);
    let bus = stats.to_device_given.load(Ordering::Relaxed);
    let in_flight = match submitted {
        Ok(in_flight) => in_flight,
        Err(error) => return report.fail(NAME, error),
    };
    let slot = PLATFORM.iommu().translate(u32::from(endpoint.0), bus).flatten();
    let strict = mode == IommuMode::Strict;
    let at_mapping = |fault: &crate::virtio_iommu::Fault| {
        fault.endpoint.0 == u32::from(endpoint.0)
            && fault.address.is_some_and(|address| (bus..bus + LEN as u64).contains(&address))
    };
    let fault_at_slot = strict && wait_for_fault(faults_before, at_mapping);
    let completion = match in_flight.finish(blk, BLOCKED_REQUEST_GRACE) {
        Ok(_) => "completed",
        Err(BlkIoError::Timeout) => "never completed (bounded wait expired)",
        Err(_) => "completed with an error",
    };
    drain_faults();
    let faults = PLATFORM.iommu().counters().faults - faults_before;
    // SAFETY: the buffer is leaked and its request is over (completed or abandoned): nothing
    // writes it any more.
    let now = unsafe { core::slice::from_raw_parts(private, LEN) };
    let mut scratch = [0u8; LEN];
    let unchanged = patterns::check(now, SEED, &mut scratch).is_none();
    // Premapped: the slot (shared pool memory, freed but not reused yet) holds what the device
    // wrote: the runner's signature at the start of the containment disk.
    let slot_written = slot.and_then(|phys| memory::ptr_of(phys, DISK_SIGNATURE.len())).is_some_and(|ptr| {
        // SAFETY: pool memory, identity-mapped, not in use by any mapping now (single CPU).
        unsafe { core::slice::from_raw_parts(ptr.as_ptr(), DISK_SIGNATURE.len()) == DISK_SIGNATURE }
    });
    let ok = unchanged && if strict { faults > 0 && fault_at_slot } else { faults == 0 && slot_written };
    report.expect(
        NAME,
        ok,
        format_args!(
            "read into a buffer mapped to-device at bus {bus:#x}: {}; request {completion}; private buffer unchanged: {unchanged}",
            if strict {
                "read-only entry, the device's write faulted"
            } else if slot_written {
                "pools are read/write when premapped: the write landed in the bounce slot only"
            } else {
                "no fault, and the slot does not hold the device's data"
            }
        ),
    );
    if strict && !fault_at_slot {
        println!("  ({faults} fault(s), none at the mapping)");
    }
}

/// With every pool slot the device can reach taken, `share` is refused: the device is given the
/// unreachable bus address, its access faults at the IOMMU, the buffer stays as it was and the
/// kernel goes on. Returns the failures the check provoked on purpose (for the leak check).
fn check_refused_share(report: &mut Report, blk: &mut FaultBlk, endpoint: RequesterId) -> u64 {
    const NAME: &str = "hal.refused_share";
    const LEN: usize = 4096;
    const SEED: u64 = 0x0ff1_0ad0;
    let layer = dma::layer();
    let failures_before = layer.stats().total_failures();
    let Some(device) = BlkFaultBinding::slot().get() else {
        report.fail(NAME, "no containment blk");
        return 0;
    };
    let (Some(filler), Some(buffer)) = (memory::leak_bytes(256 << 10, 4096), memory::leak_bytes(LEN, 4096))
    else {
        report.fail(NAME, "no memory for buffers");
        return 0;
    };
    // Take every slot the device reaches: runs of 256 KiB, then smaller ones down to one slot.
    let mut held = [(ccdma::BusAddr(0), 0usize); 512];
    let mut count = 0;
    let mut size = 256 << 10;
    while size >= 2048 && count < held.len() {
        let attrs = ccdma::DmaAttrs::SKIP_CPU_SYNC | ccdma::DmaAttrs::NO_WARN;
        // SAFETY: `filler` is leaked and only ever read through these to-device mappings (and
        // SKIP_CPU_SYNC copies nothing); they are all unmapped below.
        match unsafe {
            layer.map_ptr(device, filler.as_mut_ptr(), size, ccdma::DmaDirection::ToDevice, attrs)
        } {
            Ok(bus) => {
                held[count] = (bus, size);
                count += 1;
            }
            Err(_) => size /= 2,
        }
    }
    let slots_full = layer.stats().slots_in_use;
    patterns::fill(buffer, SEED);
    let private = buffer.as_ptr();
    let refused_before = BlkFaultBinding::stats().refused.load(Ordering::Relaxed);
    drain_faults();
    let faults_before = PLATFORM.iommu().counters().faults;
    let unreachable = dma::UNREACHABLE_BUS.0..dma::UNREACHABLE_BUS.0 + LEN as u64;
    let at_unreachable = |fault: &crate::virtio_iommu::Fault| {
        fault.endpoint.0 == u32::from(endpoint.0) && fault.address.is_some_and(|a| unreachable.contains(&a))
    };
    let mut reported = false;
    let outcome = match BlkRequest::with_buffer(buffer) {
        Ok(request) => match blk::start_read(blk, request, 0) {
            Ok(in_flight) => {
                reported = wait_for_fault(faults_before, at_unreachable);
                match in_flight.finish(blk, BLOCKED_REQUEST_GRACE) {
                    Ok(_) => "completed",
                    Err(BlkIoError::Timeout) => "never completed (bounded wait expired)",
                    Err(_) => "completed with an error",
                }
            }
            Err(_) => "refused by virtio-drivers",
        },
        Err(_) => "not built",
    };
    drain_faults();
    for &(bus, size) in &held[..count] {
        let attrs = ccdma::DmaAttrs::SKIP_CPU_SYNC;
        // SAFETY: each filler mapping was made above by this function, on this device, and is unmapped
        // once; the leaked filler stays valid.
        let unmapped = unsafe { layer.unmap(device, bus, size, ccdma::DmaDirection::ToDevice, attrs) };
        if let Err(error) = unmapped {
            report.fail(NAME, format_args!("unmapping a filler at {bus}: {error}"));
        }
    }
    let refused = BlkFaultBinding::stats().refused.load(Ordering::Relaxed) - refused_before;
    let faults = PLATFORM.iommu().counters().faults - faults_before;
    // SAFETY: the buffer is leaked and its request is over: nothing writes it any more.
    let now = unsafe { core::slice::from_raw_parts(private, LEN) };
    let mut scratch = [0u8; LEN];
    let unchanged = patterns::check(now, SEED, &mut scratch).is_none();
    report.expect(
        NAME,
        refused > 0 && reported && unchanged,
        format_args!(
            "{count} filler mappings took every slot ({slots_full} in use); {refused} request buffer(s) refused and given bus {}; {faults} fault(s) at it; buffer unchanged: {unchanged}; request {outcome}",
            dma::UNREACHABLE_BUS
        ),
    );
    layer.stats().total_failures() - failures_before
}

struct FaultNote(crate::virtio_iommu::Fault);

impl fmt::Display for FaultNote {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Every bus address a device was given is within its DMA mask. A 64-bit device is given high
/// addresses where a high range exists for it: the pool above 4 GiB without an IOMMU, the dynamic
/// window (premapped). A 32-bit device gets addresses below 4 GiB even though the main pool is
/// above 4 GiB: through the IOMMU's default window, or the low pool without one.
fn check_masks(report: &mut Report, config: &TestConfig) {
    fn one<B: KernelBinding>(report: &mut Report, config: &TestConfig, streams: bool) {
        let Some(device) = B::slot().get() else {
            return;
        };
        let mask = device.config().dma_mask;
        let Some((low, high)) = B::stats().bus_range() else {
            return report.fail(format_args!("dma.mask.{}", B::NAME), "device was never given an address");
        };
        let within = high <= mask.max_addr();
        let wants_high = streams
            && mask.bits() == 64
            && match config.iommu {
                IommuMode::None => config.high_ram,
                IommuMode::Premapped => true,
                IommuMode::Strict => false,
            };
        // Behind the IOMMU with all memory above 4 GiB, a 32-bit device reaches it only through
        // its window: every page it was given lies above 4 GiB, every bus address below.
        let (phys_low, phys_high) = B::stats().phys_range().unwrap_or((0, 0));
        let remapped = config.iommu.present() && config.high_ram && mask.bits() == 32;
        let ok = within && (!wants_high || high >= FOUR_GIB) && (!remapped || phys_low >= FOUR_GIB);
        report.expect(
            format_args!("dma.mask.{}", B::NAME),
            ok,
            format_args!(
                "{mask} mask, given bus addresses {low:#x}..={high:#x} for memory at {phys_low:#x}..={phys_high:#x}{}",
                match (wants_high, config.iommu) {
                    (true, IommuMode::None) => " (streaming from the pool above 4 GiB)",
                    (true, _) => " (streaming through the dynamic window)",
                    (false, _) if !streams => " (queues only so far)",
                    (false, IommuMode::None) if config.high_ram => " (the pool below 4 GiB)",
                    (false, IommuMode::None) => "",
                    (false, _) if remapped => " (memory above 4 GiB through the default window below 4 GiB)",
                    (false, _) => " (IOMMU default window)",
                }
            ),
        );
    }
    one::<BlkBinding>(report, config, true);
    // The containment blk has only its queues so far (coherent memory, in the default window).
    one::<BlkFaultBinding>(report, config, false);
    one::<RngBinding>(report, config, true);
    one::<NetABinding>(report, config, true);
    one::<NetBBinding>(report, config, true);
}

/// The ledger agrees with ccdma: no violation, every shared page accounted for, and no device
/// was ever given an address outside shared memory.
fn check_ledger(report: &mut Report, devices: &Machine, expected_failures: u64) {
    let ledger = PLATFORM.ledger().stats();
    let layer = dma::layer().stats();
    let coherent = dma::layer().iommu_stats().coherent_pages;
    report.expect(
        "ledger.consistent",
        ledger.violations == 0 && ledger.shared_pages == layer.shared_pages,
        format_args!(
            "{} pages shared = {} ccdma says it shares (pools and {coherent} pages of queues); {} share / {} unshare calls; {} violations{}",
            ledger.shared_pages,
            layer.shared_pages,
            ledger.share_calls,
            ledger.unshare_calls,
            ledger.violations,
            ViolationNote(PLATFORM.ledger().first_violation())
        ),
    );
    // Receive buffers posted on the NICs are live mappings; everything else was unmapped.
    let posted = [devices.net_a.is_some(), devices.net_b.is_some()].iter().filter(|&&up| up).count() as u64
        * crate::net::RX_BUFFERS as u64;
    report.expect(
        "ccdma.no_leaks",
        layer.maps - layer.unmaps == posted && layer.total_failures() == expected_failures,
        format_args!(
            "{} maps, {} unmaps, {posted} receive buffers still posted; {} failures ({expected_failures} provoked on purpose)",
            layer.maps,
            layer.unmaps,
            layer.total_failures()
        ),
    );
}

struct ViolationNote(Option<crate::ledger::Violation>);

impl fmt::Display for ViolationNote {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self.0 {
            Some(violation) => write!(f, " (first: {violation})"),
            None => Ok(()),
        }
    }
}

fn print_summary(config: &TestConfig, found: &Found) {
    fn device_line<B: KernelBinding>(function: Option<DeviceFunction>) {
        let (Some(function), Some(device)) = (function, B::slot().get()) else {
            return;
        };
        let stats = B::stats();
        println!(
            "  {:<9} {function}  {:>2}-bit  {:<19} to device {:>8}, from device {:>8}, {:>4} maps, bus {}, refused {}",
            B::NAME,
            device.config().dma_mask.bits(),
            device.path().name(),
            Bytes(stats.bytes_to_device.load(Ordering::Relaxed)).to_padded(),
            Bytes(stats.bytes_from_device.load(Ordering::Relaxed)).to_padded(),
            stats.maps.load(Ordering::Relaxed),
            BusRange(stats.bus_range()),
            stats.refused.load(Ordering::Relaxed),
        );
        println!("  {:<9} why: {}", "", Reason(device));
    }
    println!("--- ccdma report: configuration {} ---", config.name);
    println!("IOMMU: {}", config.iommu.name());
    println!("devices managed by ccdma (path chosen at attach and why; bytes through the bounce pools):");
    device_line::<BlkBinding>(found.blk);
    device_line::<BlkFaultBinding>(found.blk_fault);
    device_line::<RngBinding>(found.rng);
    device_line::<NetABinding>(found.net_a);
    device_line::<NetBBinding>(found.net_b);
    if let Some(function) = found.bench {
        println!("  {:<9} {function}  baseline outside ccdma and the IOMMU (benchmark only)", "bench-blk");
    }
    let s = dma::layer().stats();
    println!(
        "ccdma: {} maps ({} bounced), {} unmaps; {} copied to devices, {} copied back; {} pages shared; slots in use {} (high water {}); {} failures",
        s.maps,
        s.bounced_maps,
        s.unmaps,
        Bytes(s.bytes_to_device),
        Bytes(s.bytes_from_device),
        s.shared_pages,
        s.slots_in_use,
        s.slots_high_water,
        s.total_failures()
    );
    let l = PLATFORM.ledger().stats();
    println!(
        "ledger: {} pages shared now, {} share and {} unshare calls, {} violations",
        l.shared_pages, l.share_calls, l.unshare_calls, l.violations
    );
    if !config.iommu.present() {
        println!("IOMMU: none; faults caught: none possible");
        return;
    }
    let i = dma::layer().iommu_stats();
    println!(
        "ccdma IOMMU calls: {} H_PUT_TCE, {} H_PUT_TCE_INDIRECT, {} H_STUFF_TCE, {} DDW created; {} entries written, {} cleared, {} live; {} strict maps",
        i.put_tce, i.put_indirect, i.stuff_tce, i.ddw_create, i.entries_written, i.entries_cleared, i.live_tces, i.strict_maps
    );
    let c = PLATFORM.iommu().counters();
    println!(
        "virtio-iommu requests made: {} ATTACH, {} MAP, {} UNMAP ({} failed, {} refused by the ledger check)",
        c.attach, c.map, c.unmap, c.failed, c.refused
    );
    println!("faults caught: {}", c.faults);
    // The last few; QEMU reports a blocked access once per piece it tried, so they repeat.
    let shown = c.faults.saturating_sub(4);
    for fault in PLATFORM.iommu().faults_since(shown).into_iter().flatten() {
        println!("  {fault}");
    }
}
