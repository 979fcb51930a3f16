//! Configurations: what the runner (`qemu/run.sh`) gives the machine and what the kernel then
//! expects. The name comes from the command line (`config=<name>`).

use ccdma::IommuPolicy;

/// How ccdma hands entries to the hypervisor (`ccdma::TceBatching`; the kernel places the pages).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Batching {
    /// One `H_PUT_TCE` per entry, no list page shared (Linux's choice in a secure guest).
    PerEntry,
    /// [`crate::dma::LIST_PAGES`] per-CPU list pages.
    PerCpu,
    /// One list page for the layer.
    SharedPage,
    /// ccdma's strict default: list pages taken from the pool, which is shared already.
    PoolPages,
}

impl Batching {
    /// Its name in the report.
    pub fn name(self) -> &'static str {
        match self {
            Batching::PerEntry => "per-entry (no list page)",
            Batching::PerCpu => "per-CPU list pages",
            Batching::SharedPage => "one shared list page",
            Batching::PoolPages => "list pages from the pool (strict default)",
        }
    }
}

/// One configuration.
#[derive(Clone, Copy, Debug)]
pub struct Config {
    /// Its name.
    pub name: &'static str,
    /// ccdma's IOMMU policy.
    pub policy: IommuPolicy,
    /// Whether the bridge offers DDW (the runner turns it off with `ddw=off` otherwise).
    pub ddw: bool,
    /// How entries are batched.
    pub batching: Batching,
    /// The DDW's IOMMU page shift the kernel must end up with: the largest size the bridge offers
    /// (`pgsz`, set by the runner) that the 8 MiB pool fills: 2 MiB of QEMU's default 4K|64K|2M|16M.
    pub ddw_page_shift: u32,
}

/// Every configuration; the first is the default.
pub const CONFIGS: &[Config] = &[
    Config {
        name: "pseries",
        policy: IommuPolicy::Premapped,
        ddw: true,
        batching: Batching::SharedPage,
        ddw_page_shift: 21,
    },
    // Strict with ccdma's default batching: list pages from the pool (shared already), so nothing
    // more is shared and a map of up to 2 MiB costs one H_PUT_TCE_INDIRECT.
    Config {
        name: "pseries-strict",
        policy: IommuPolicy::Strict,
        ddw: true,
        batching: Batching::PoolPages,
        ddw_page_shift: 21,
    },
    // Strict with per-CPU list pages.
    Config {
        name: "pseries-percpu",
        policy: IommuPolicy::Strict,
        ddw: true,
        batching: Batching::PerCpu,
        ddw_page_shift: 21,
    },
    // The default window only, premapped as a secure guest's Linux writes entries: nothing shared
    // for batching, one H_PUT_TCE per entry (`IommuConfig::premapped`'s default).
    Config {
        name: "pseries-no-ddw",
        policy: IommuPolicy::Premapped,
        ddw: false,
        batching: Batching::PerEntry,
        ddw_page_shift: 21,
    },
    // DDW pages of 64 KiB at most (`pgsz` 4K|64K), what PowerVM usually offers.
    Config {
        name: "pseries-ddw64k",
        policy: IommuPolicy::Premapped,
        ddw: true,
        batching: Batching::SharedPage,
        ddw_page_shift: 16,
    },
    // The big-endian kernel on the premapped machine.
    Config {
        name: "pseries-be",
        policy: IommuPolicy::Premapped,
        ddw: true,
        batching: Batching::SharedPage,
        ddw_page_shift: 21,
    },
    // The big-endian kernel, strict, with per-CPU list pages (the entries' byte order in a list
    // page is big-endian whatever the CPU's).
    Config {
        name: "pseries-be-percpu",
        policy: IommuPolicy::Strict,
        ddw: true,
        batching: Batching::PerCpu,
        ddw_page_shift: 21,
    },
    // Runner self-test: stray DMA no check announces (`selftest.rs`); the runner must fail it.
    Config {
        name: "pseries-selftest-reject",
        policy: IommuPolicy::Premapped,
        ddw: true,
        batching: Batching::SharedPage,
        ddw_page_shift: 21,
    },
];

impl Config {
    /// Whether this is a self-test of the runner (`qemu/run.sh` inverts its verdict).
    pub fn is_selftest(&self) -> bool {
        self.name.contains("-selftest-")
    }
}

/// The value of `key=` on the command line.
pub fn cmdline_value<'a>(cmdline: &'a str, key: &str) -> Option<&'a str> {
    cmdline.split_ascii_whitespace().find_map(|word| word.strip_prefix(key)?.strip_prefix('='))
}

/// The configuration the command line names (the default without `config=`), or the unknown name.
pub fn from_cmdline(cmdline: &str) -> Result<Config, &str> {
    match cmdline_value(cmdline, "config") {
        None => Ok(CONFIGS[0]),
        Some(name) => CONFIGS.iter().find(|c| c.name == name).copied().ok_or(name),
    }
}

/// PCI slots of the devices (`addr=` in run.sh), so the kernel knows each one's role.
pub mod slot {
    /// virtio-blk, 64-bit mask: a dynamic window.
    pub const BLK: u8 = 1;
    /// virtio-rng, 32-bit mask: the default window.
    pub const RNG: u8 = 2;
    /// First virtio-net, 32-bit mask.
    pub const NET_A: u8 = 3;
    /// Second virtio-net, on the same hub.
    pub const NET_B: u8 = 4;
    /// virtio-rng with a 21-bit mask, below the pool: strict entries.
    pub const RNG_LOW: u8 = 5;
    /// virtio-rng with a 12-bit mask: nothing fits, attach refused.
    pub const RNG_TINY: u8 = 6;
    /// virtio-blk outside ccdma and the IOMMU (no `iommu_platform`): the benchmark's baseline.
    pub const BENCH: u8 = 7;
    /// virtio-rng with a 64-bit mask, a second 64-bit device on the bridge whose windows the blk
    /// used up: it shares the blk's ccdma domain (and DDW).
    pub const RNG64: u8 = 8;
}
