//! The checks the kernel runs with ccdma, in order, and the closing report.
//!
//! Every managed device (data blk, containment blk, rng, two NICs) is attached to the one
//! [`dma::Layer`](crate::dma::Layer) and driven by virtio-drivers through its own `CcdmaHal` binding; behind the
//! virtio-iommu each has its own domain. The benchmark blk is the exception on purpose: it sits
//! outside the IOMMU and uses its private buffers directly, as the no-bounce, no-IOMMU baseline.
//!
//! [`run`] is the sequence; the checks live by subject (the device checks and the benchmark are
//! the common crate's, `ccdma_qemu_common::checks`):
//!
//! - `boot`: RAM map, RAM above 4 GiB, HPET, ccdma's pools
//! - `survey`: the devices at their slots, the virtio-iommu brought up
//! - `attach`: each device attached to the layer (path and reason) and its driver started
//! - `masks`: bus addresses within each device's mask
//! - `iommu`: window contents, stray faults, containment, direction; fault report helpers
//! - `hal`: the refused share
//! - `ffi_c`: C code calling ccdma's C interface over this kernel's platform
//! - `ledger`: the ledger told the RAM; ledger and ccdma agree, no leaks
//! - `summary`: the closing report

mod attach;
mod boot;
mod ffi_c;
mod hal;
mod iommu;
mod ledger;
mod masks;
mod summary;
mod survey;

use ccdma_qemu_common::checks::{self, Bounced};
use ccdma_qemu_common::held::Held;
use ccdma_qemu_common::virtio::pci::PciTransport;

use crate::blk::Blk;
use crate::config::TestConfig;
use crate::dma::{KernelBinding, Observed, X86Dma};
use crate::hal::DirectHal;
use crate::net::Nic;
use crate::pci::{PciBus, RequesterId};
use crate::report::Report;
use crate::rng::VirtioRng;
use crate::start_info::StartInfo;
use crate::transport::PlatformAccessTransport;
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

/// Everything that must stay alive until the machine stops (dropping a virtio driver resets its
/// device). The virtio-iommu lives in the platform for good. Held in [`MACHINE`], never read.
#[allow(dead_code)]
pub struct Machine {
    blk: Option<DataBlk>,
    blk_fault: Option<FaultBlk>,
    rng: Option<Rng>,
    net_a: Option<Nic<Observed<NetABinding>>>,
    net_b: Option<Nic<Observed<NetBBinding>>>,
    bench: Option<BenchBlk>,
}

impl Machine {
    /// No device.
    const EMPTY: Self = Self { blk: None, blk_fault: None, rng: None, net_a: None, net_b: None, bench: None };
}

/// The devices, in a static for good: no stack frame holds them (9,760 bytes by value, in `run` and
/// `kmain` both; scripts/kernel-budgets.sh).
static MACHINE: Held<Machine> = Held::new(Machine::EMPTY);

/// Runs every check for `config`. The devices stay in [`MACHINE`] until the machine stops.
pub fn run(report: &mut Report, start_info: &StartInfo, config: &TestConfig) {
    let Some(devices) = MACHINE.take() else {
        return report.fail("boot.devices", "the checks ran twice");
    };
    boot::check_memory(report, start_info);
    boot::check_timer(report);
    ledger::set_ram(start_info);

    boot::check_before_init(report);

    let mut pci = PciBus::q35();
    let found = survey::survey(report, &pci, config);
    if !survey::start_iommu(report, &mut pci, &found, config) || !boot::init_pools(report, config) {
        return;
    }
    attach::open_devices(report, &mut pci, &found, config, devices);

    if let Some(blk) = devices.blk.as_mut() {
        checks::check_disk_signature(report, blk);
        checks::check_write_marker(report, blk);
        let stats = BlkBinding::stats();
        let bounced = Bounced { to_device: &stats.bytes_to_device, from_device: &stats.bytes_from_device };
        checks::check_blk_patterns(report, blk, &bounced);
    }
    let mut expected_failures = 0;
    if let Some(rng) = devices.rng.as_mut() {
        checks::check_rng(report, "rng", rng);
        expected_failures += ccdma_qemu_common::share_refusal::check_refused_share::<RngBinding>(
            report,
            crate::platform::PLATFORM.ledger(),
        );
    }
    if let (Some(a), Some(b)) = (devices.net_a.as_mut(), devices.net_b.as_mut()) {
        checks::check_net(report, a, b);
    }
    masks::check_masks(report, config);
    ffi_c::check_c_driver(report);
    if config.iommu.present() {
        iommu::check_windows(report);
        iommu::check_no_stray_faults(report);
        match (devices.blk_fault.as_mut(), found.blk_fault) {
            (Some(blk), Some(function)) => {
                let endpoint = RequesterId::from(function);
                iommu::check_direction(report, blk, endpoint, config.iommu);
                iommu::check_containment(report, blk, endpoint);
                expected_failures += hal::check_refused_share(report, blk, endpoint);
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
    ledger::check_ledger(report, devices, expected_failures);
    summary::print_summary(config, &found);
}
