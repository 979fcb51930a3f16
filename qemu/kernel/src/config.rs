//! Which machine the kernel is running on, from `config=<name>` on the command line.
//!
//! The runner (`qemu/run.sh`) builds a different QEMU machine for each configuration and passes
//! its name here, so the kernel knows what to expect. Devices sit at fixed PCI slots (the runner
//! passes `addr=`), so the kernel knows each device's role without probing it. To add a
//! configuration: add an entry to [`CONFIGS`] here and a matching case in `run.sh`.

/// How devices reach memory.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum IommuMode {
    /// No IOMMU (TDX-style): everything bounced, bus address = pool address.
    None,
    /// virtio-iommu, ccdma's premapped policy: the pools are entered into each device's window
    /// once (a dynamic window for 64-bit devices, the default window below 4 GiB otherwise).
    Premapped,
    /// virtio-iommu, ccdma's strict policy: entries per mapping, with the direction's permission,
    /// cleared at unmap.
    Strict,
}

impl IommuMode {
    /// Whether a virtio-iommu is on the machine.
    pub fn present(self) -> bool {
        self != Self::None
    }

    /// ccdma's IOMMU configuration for this mode. Entries are never read back: the "hypervisor"
    /// is this kernel's own shadow of the windows, so reading it back would prove nothing.
    pub fn ccdma_config(self) -> Option<ccdma::IommuConfig> {
        let config = match self {
            Self::None => return None,
            Self::Premapped => ccdma::IommuConfig::premapped(),
            Self::Strict => ccdma::IommuConfig::strict(),
        };
        Some(config.with_verify(ccdma::VerifyPolicy::Off))
    }

    /// Name for reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none (TDX-style: bounce everything, bus address = pool address)",
            Self::Premapped => "virtio-iommu, premapped (pools entered once per device window)",
            Self::Strict => "virtio-iommu, strict (entries per mapping, cleared at unmap)",
        }
    }
}

/// What a configuration promises about the machine.
#[derive(Clone, Copy, Debug)]
pub struct TestConfig {
    /// Name used by the runner.
    pub name: &'static str,
    /// The IOMMU and how ccdma uses it. With an IOMMU there is also the containment blk.
    pub iommu: IommuMode,
    /// Guest RAM extends above 4 GiB; a pool is placed there (and one below).
    pub high_ram: bool,
    /// Run the blk benchmark (with the baseline blk device).
    pub bench: bool,
}

/// Every configuration the runner knows.
pub const CONFIGS: &[TestConfig] = &[
    TestConfig { name: "iommu", iommu: IommuMode::Premapped, high_ram: true, bench: true },
    TestConfig { name: "iommu-strict", iommu: IommuMode::Strict, high_ram: true, bench: true },
    TestConfig { name: "iommu-low", iommu: IommuMode::Premapped, high_ram: false, bench: false },
    TestConfig { name: "no-iommu", iommu: IommuMode::None, high_ram: true, bench: true },
    TestConfig { name: "no-iommu-low", iommu: IommuMode::None, high_ram: false, bench: false },
];

/// Configuration used when the command line names none.
pub const DEFAULT_CONFIG: &str = "iommu";

/// Fixed PCI device numbers (bus 0) of each role; `run.sh` places devices with `addr=`.
pub mod slot {
    /// The virtio-iommu.
    pub const IOMMU: u8 = 0x03;
    /// virtio-blk for data patterns (managed by ccdma).
    pub const BLK: u8 = 0x04;
    /// virtio-blk for the containment check (managed by ccdma; dies when the IOMMU blocks it).
    pub const BLK_FAULT: u8 = 0x05;
    /// virtio-rng (managed by ccdma).
    pub const RNG: u8 = 0x06;
    /// First virtio-net (managed by ccdma).
    pub const NET_A: u8 = 0x07;
    /// Second virtio-net, on the same hub (managed by ccdma).
    pub const NET_B: u8 = 0x08;
    /// virtio-blk without `iommu_platform`: the benchmark's no-bounce, no-IOMMU baseline.
    pub const BLK_BENCH: u8 = 0x09;
}

/// Looks up `config=<name>` in `cmdline`. `Err` carries the unknown name.
pub fn from_cmdline(cmdline: &str) -> Result<TestConfig, &str> {
    let name = cmdline_value(cmdline, "config").unwrap_or(DEFAULT_CONFIG);
    CONFIGS.iter().find(|config| config.name == name).copied().ok_or(name)
}

/// The value of `key=value` in a space-separated command line.
pub fn cmdline_value<'a>(cmdline: &'a str, key: &str) -> Option<&'a str> {
    cmdline
        .split_ascii_whitespace()
        .filter_map(|word| word.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, value)| value)
}
