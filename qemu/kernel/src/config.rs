//! Which machine the kernel is running on, from `config=<name>` on the command line.
//!
//! The runner (`qemu/run.sh`) builds a different QEMU machine for each configuration and passes
//! its name here, so the kernel knows what to expect (e.g. whether an IOMMU must be present).
//! To add a configuration: add an entry to [`CONFIGS`] here and a matching case in `run.sh`.

/// What a configuration promises about the machine.
#[derive(Clone, Copy, Debug)]
pub struct TestConfig {
    /// Name used by the runner.
    pub name: &'static str,
    /// A virtio-iommu is present and the virtio-blk sits behind it.
    pub iommu: bool,
}

/// Every configuration the runner knows.
pub const CONFIGS: &[TestConfig] =
    &[TestConfig { name: "iommu", iommu: true }, TestConfig { name: "no-iommu", iommu: false }];

/// Configuration used when the command line names none.
pub const DEFAULT_CONFIG: &str = "iommu";

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
