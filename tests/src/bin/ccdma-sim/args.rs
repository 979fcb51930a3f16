//! The command line and the config file, checked into [`Options`].
//!
//! Flags are parsed by `clap`; a config file (`--config FILE`) holds the same options as `key value`
//! lines. Each line is parsed on its own first, so an error names the file and the line; then the
//! file's lines and the command line are parsed together, the command line last (it wins for single
//! values; repeatable options such as `--pool` add up).

use std::path::{Path, PathBuf};

use ccdma_hv_model::{Personality, Region, PAGE};
use ccdma_tests::{GIB, HIGH_POOL, LOW_POOL, MIB};
use clap::error::ErrorKind;
use clap::{Parser, ValueEnum};

use crate::num::{parse_number, parse_range, parse_u32};

/// One device as given: `--device NAME:BITS`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceSpec {
    pub name: String,
    pub mask_bits: u32,
}

/// A comma-separated list of sizes (`--sizes 64,1500,4K`); a later `--sizes` replaces an earlier one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SizeList(pub Vec<u64>);

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PersonalityArg {
    Pseries,
    Tdx,
    Snp,
    Cca,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum IommuArg {
    /// Pools entered once into each device's window
    Premapped,
    /// Entries written per mapping, cleared at unmap
    Strict,
    /// No IOMMU (the default)
    None,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BuffersArg {
    Low,
    High,
}

/// Run the ccdma guest layer against the modelled hypervisor; every transfer is checked byte for byte.
#[derive(Parser, Debug)]
#[command(
    name = "ccdma-sim",
    args_override_self = true,
    after_help = "Sizes and addresses: decimal or 0x hex, optional K/M/G/T (or KiB..TiB) suffix, powers of 1024 (KB, GB are refused).\n\
                  A config file holds the same options as `key value` lines (`ram 6G`, `pool 0x800000:4M`,\n\
                  `device nic:64`, `tdx`), # comments; the command line wins over it.\n\
                  Exit status: 0 every device attached (or was refused as expected) and moved exact data\n\
                  with no unexpected fault or leak; 1 a check failed; 2 bad arguments or config."
)]
pub struct Cli {
    /// Guest RAM [default: 6G]
    #[arg(long, value_name = "SIZE", value_parser = parse_number, help_heading = "Platform")]
    ram: Option<u64>,
    /// Add a bounce pool (repeatable) [default: 0x800000:4M and 0x100000000:16M]
    #[arg(long = "pool", value_name = "ADDR:SIZE", value_parser = parse_range, help_heading = "Platform")]
    pools: Vec<(u64, u64)>,
    /// Confidential guest: devices reach only shared memory (the default)
    #[arg(long, overrides_with = "plain", help_heading = "Platform")]
    confidential: bool,
    /// Not confidential: devices reach all RAM
    #[arg(long, overrides_with = "confidential", help_heading = "Platform")]
    plain: bool,
    /// Sharing interface (also --platform) [default: pseries]
    #[arg(
        long,
        alias = "platform",
        value_enum,
        overrides_with_all = ["pseries", "tdx", "snp", "cca"],
        help_heading = "Platform"
    )]
    personality: Option<PersonalityArg>,
    /// Same as --personality pseries
    #[arg(long, overrides_with_all = ["personality", "tdx", "snp", "cca"], help_heading = "Platform")]
    pseries: bool,
    /// Same as --personality tdx
    #[arg(long, overrides_with_all = ["personality", "pseries", "snp", "cca"], help_heading = "Platform")]
    tdx: bool,
    /// Same as --personality snp (AMD SEV-SNP: PVALIDATE + Page State Change, C-bit 51 cleared in bus addresses)
    #[arg(long, overrides_with_all = ["personality", "pseries", "tdx", "cca"], help_heading = "Platform")]
    snp: bool,
    /// Same as --personality cca (Arm CCA realm: RSI_IPA_STATE_SET, devices use the alias with IPA bit 47 set)
    #[arg(long, overrides_with_all = ["personality", "pseries", "tdx", "snp"], help_heading = "Platform")]
    cca: bool,
    /// TDX: MapGPA converts at most N pages per call, then answers RETRY
    #[arg(long, value_name = "N", value_parser = parse_number, help_heading = "Platform")]
    tdx_pages_per_call: Option<u64>,
    /// SEV-SNP: a Page State Change request processes at most N entries per call, then returns early
    #[arg(long, value_name = "N", value_parser = parse_number, help_heading = "Platform")]
    snp_entries_per_call: Option<u64>,
    /// Arm CCA: RSI_IPA_STATE_SET changes at most N granules per call, then returns a new base short of the top
    #[arg(long, value_name = "N", value_parser = parse_number, help_heading = "Platform")]
    cca_granules_per_call: Option<u64>,
    /// pseries TCE IOMMU in front of every device [default: none]
    #[arg(long, value_enum, value_name = "POLICY", help_heading = "Platform")]
    iommu: Option<IommuArg>,
    /// The IOMMU offers no dynamic DMA window (only the 2 GiB default window)
    #[arg(long, help_heading = "Platform")]
    no_ddw: bool,
    /// A reserved bus range in every window (MSI doorbell, bridge; repeatable)
    #[arg(long = "reserve", value_name = "ADDR:SIZE", value_parser = parse_range, help_heading = "Platform")]
    reserved: Vec<(u64, u64)>,
    /// A device with a DMA mask of BITS bits (repeatable) [default: old:24 legacy:32 wide:40 nic:64]
    #[arg(long = "device", value_name = "NAME:BITS", value_parser = parse_device, help_heading = "Devices")]
    devices: Vec<DeviceSpec>,
    /// The device NAME must be refused at attach: its refusal is a pass, its attach a failure
    #[arg(long = "expect-refused", value_name = "NAME", help_heading = "Devices")]
    expect_refused: Vec<String>,
    /// The device NAME is bound and running under TDISP and the guest accepts it (trusted device I/O):
    /// its private buffers are mapped in place, no bounce (repeatable; needs a confidential guest)
    #[arg(long = "accept", value_name = "NAME", help_heading = "Devices")]
    accept: Vec<String>,
    /// Mapping sizes, comma separated [default: 64,1500,4K,64K,256K]
    #[arg(long, value_name = "LIST", value_parser = parse_sizes, help_heading = "Workload")]
    sizes: Option<SizeList>,
    /// Rounds over every size and direction, at least 1 [default: 4]
    #[arg(long, value_name = "N", value_parser = parse_u32, help_heading = "Workload")]
    rounds: Option<u32>,
    /// Where the guest's own buffers live [default: high, above 4 GiB]
    #[arg(long, value_enum, value_name = "WHERE", help_heading = "Workload")]
    buffers: Option<BuffersArg>,
    /// Skip the containment probe (a device reading private memory directly)
    #[arg(long, help_heading = "Workload")]
    no_probe: bool,
    /// Read options from FILE: one `key value` per line, keys as the flags without the dashes
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Also draw each device's bus address space into FILE (SVG)
    #[arg(long, value_name = "FILE")]
    svg: Option<PathBuf>,
}

/// Everything the run needs, checked.
#[derive(Clone, Debug)]
pub struct Options {
    pub ram: u64,
    pub pools: Vec<(u64, u64)>,
    pub confidential: bool,
    pub personality: Personality,
    pub tdx_pages_per_call: Option<u64>,
    pub snp_entries_per_call: Option<u16>,
    pub cca_granules_per_call: Option<u64>,
    pub iommu: Option<ccdma::IommuPolicy>,
    pub ddw: bool,
    pub reserved: Vec<(u64, u64)>,
    pub devices: Vec<DeviceSpec>,
    pub expect_refused: Vec<String>,
    /// Devices the guest accepts (`--accept`).
    pub accept: Vec<String>,
    pub sizes: Vec<u64>,
    pub rounds: u32,
    pub buffers: Region,
    pub probe: bool,
    pub svg: Option<PathBuf>,
}

/// What the command line asks for.
#[derive(Debug)]
pub enum Parsed {
    Run(Box<Options>),
    /// `--help` (or `-h`): the text to print, exit 0.
    Help(String),
}

fn parse_device(s: &str) -> Result<DeviceSpec, String> {
    let (name, bits) = s.split_once(':').ok_or_else(|| format!("`{s}`: expected NAME:BITS"))?;
    if name.is_empty() {
        return Err(format!("`{s}`: empty name"));
    }
    Ok(DeviceSpec { name: name.to_string(), mask_bits: parse_u32(bits)? })
}

fn parse_sizes(s: &str) -> Result<SizeList, String> {
    let sizes = s.split(',').map(parse_number).collect::<Result<Vec<_>, _>>()?;
    if sizes.contains(&0) {
        return Err("every size must be at least 1 byte".into());
    }
    Ok(SizeList(sizes))
}

/// A clap error as one line (`invalid value '0xq' for '--ram <SIZE>': ...`), for a config line.
fn one_line(e: &clap::Error) -> String {
    let text = e.to_string();
    let first = text.lines().next().unwrap_or("").trim_start_matches("error: ");
    first.to_string()
}

/// A config file's lines as flags (`key value` -> `--key value`), each line checked on its own.
fn config_file_args(path: &Path) -> Result<Vec<String>, String> {
    let name = path.display();
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read config file {name}: {e}"))?;
    let mut args = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let at = format!("{name}:{}", n + 1);
        let line = raw.split('#').next().unwrap_or("").trim();
        let Some(key) = line.split_whitespace().next() else { continue };
        let value = line[key.len()..].trim();
        if key.starts_with('-') {
            return Err(format!(
                "{at}: `{key}`: write keys without dashes (`{}`)",
                key.trim_start_matches('-')
            ));
        }
        if key == "config" {
            return Err(format!("{at}: config files do not nest"));
        }
        // `--key=value`, one word: a value that starts with `-` (`rounds -3`) stays a value.
        let line_args = vec![if value.is_empty() { format!("--{key}") } else { format!("--{key}={value}") }];
        let alone = std::iter::once("ccdma-sim".to_string()).chain(line_args.iter().cloned());
        if let Err(e) = Cli::try_parse_from(alone) {
            return Err(match e.kind() {
                ErrorKind::UnknownArgument if e.to_string().contains(&format!("'--{key}'")) => {
                    format!("{at}: unknown key `{key}`")
                }
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => format!("{at}: unknown key `{key}`"),
                ErrorKind::UnknownArgument | ErrorKind::TooManyValues => {
                    format!("{at}: `{key}` takes no value (`{value}`)")
                }
                _ => format!("{at}: {}", one_line(&e)),
            });
        }
        args.extend(line_args);
    }
    Ok(args)
}

/// Parse the arguments (without the program name). `Err` is the message to print before exiting 2;
/// clap's own errors come with their short usage.
pub fn parse(args: Vec<String>) -> Result<Parsed, String> {
    let argv = || std::iter::once("ccdma-sim".to_string()).chain(args.iter().cloned());
    let mut cli = match Cli::try_parse_from(argv()) {
        Ok(cli) => cli,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            return Ok(Parsed::Help(e.to_string()))
        }
        Err(e) => {
            // The caller ends every error with the same pointer to --help.
            let text = e.to_string();
            let text = text.trim_end().trim_end_matches("For more information, try '--help'.").trim_end();
            return Err(text.trim_start_matches("error: ").to_string());
        }
    };
    if let Some(path) = cli.config.clone() {
        let file = config_file_args(&path)?;
        let all = std::iter::once("ccdma-sim".to_string()).chain(file).chain(args.iter().cloned());
        cli = Cli::try_parse_from(all)
            .map_err(|e| format!("{} with the command line: {}", path.display(), one_line(&e)))?;
    }
    check(cli).map(|o| Parsed::Run(Box::new(o)))
}

/// The command line as [`Options`], with defaults filled in and cross-checks done.
fn check(cli: Cli) -> Result<Options, String> {
    let ram = cli.ram.unwrap_or(6 * GIB);
    if ram == 0 || ram % PAGE != 0 {
        return Err(format!("--ram {ram:#x}: must be a positive multiple of 4 KiB"));
    }
    // The flags override each other and --personality, so at most one of them is set.
    let personality = match (cli.tdx, cli.snp, cli.cca, cli.personality) {
        (true, ..) | (_, _, _, Some(PersonalityArg::Tdx)) => Personality::Tdx,
        (_, true, ..) | (_, _, _, Some(PersonalityArg::Snp)) => Personality::Snp,
        (_, _, true, _) | (_, _, _, Some(PersonalityArg::Cca)) => Personality::Cca,
        _ => Personality::Pseries,
    };
    let confidential = !cli.plain;
    let iommu = match cli.iommu {
        None | Some(IommuArg::None) => None,
        Some(IommuArg::Premapped) => Some(ccdma::IommuPolicy::Premapped),
        Some(IommuArg::Strict) => Some(ccdma::IommuPolicy::Strict),
    };
    if iommu.is_some() && (!confidential || personality != Personality::Pseries) {
        return Err("--iommu models the pseries TCE IOMMU: it needs a confidential pseries guest".into());
    }
    if cli.tdx_pages_per_call == Some(0) {
        return Err("--tdx-pages-per-call must be at least 1".into());
    }
    let snp_entries_per_call = match cli.snp_entries_per_call {
        None => None,
        Some(n @ 1..=253) => Some(n as u16),
        Some(n) => return Err(format!("--snp-entries-per-call {n}: a request holds 1 to 253 entries")),
    };
    if cli.cca_granules_per_call == Some(0) {
        return Err("--cca-granules-per-call must be at least 1".into());
    }
    let rounds = cli.rounds.unwrap_or(4);
    if rounds == 0 {
        return Err("--rounds must be at least 1 (0 rounds would check nothing)".into());
    }
    let mut devices = cli.devices;
    if devices.is_empty() {
        devices = [("old", 24), ("legacy", 32), ("wide", 40), ("nic", 64)]
            .iter()
            .map(|&(n, b)| DeviceSpec { name: n.to_string(), mask_bits: b })
            .collect();
    }
    for (i, d) in devices.iter().enumerate() {
        if devices[..i].iter().any(|e| e.name == d.name) {
            return Err(format!("--device {}: the name `{}` is given twice", d.name, d.name));
        }
    }
    for name in &cli.expect_refused {
        if !devices.iter().any(|d| &d.name == name) {
            let names: Vec<&str> = devices.iter().map(|d| d.name.as_str()).collect();
            return Err(format!("--expect-refused {name}: no such device (devices: {})", names.join(", ")));
        }
    }
    for name in &cli.accept {
        if !devices.iter().any(|d| &d.name == name) {
            let names: Vec<&str> = devices.iter().map(|d| d.name.as_str()).collect();
            return Err(format!("--accept {name}: no such device (devices: {})", names.join(", ")));
        }
        if !confidential {
            return Err(format!("--accept {name}: trusted device I/O needs a confidential guest"));
        }
    }
    for &(addr, size) in &cli.pools {
        if size < PAGE {
            return Err(format!("--pool {addr:#x}:{size}: a pool needs at least one page (4K)"));
        }
    }
    for d in &devices {
        if !(13..=64).contains(&d.mask_bits) {
            return Err(format!(
                "--device {}:{}: a DMA mask is 13 to 64 bits (it must hold a 4 KiB page)",
                d.name, d.mask_bits
            ));
        }
    }
    if let Some(path) = &cli.svg {
        // Found now, not after the whole workload ran: the file is written again at the end.
        std::fs::File::create(path).map_err(|e| format!("--svg: cannot write {}: {e}", path.display()))?;
    }
    let mut pools = cli.pools;
    if pools.is_empty() {
        pools = vec![(LOW_POOL, 4 * MIB), (HIGH_POOL, 16 * MIB)];
    }
    Ok(Options {
        ram,
        pools,
        confidential,
        personality,
        tdx_pages_per_call: cli.tdx_pages_per_call,
        snp_entries_per_call,
        cca_granules_per_call: cli.cca_granules_per_call,
        iommu,
        ddw: !cli.no_ddw,
        reserved: cli.reserved,
        devices,
        expect_refused: cli.expect_refused,
        accept: cli.accept,
        sizes: cli.sizes.map_or_else(|| vec![64, 1500, 4096, 64 << 10, 256 << 10], |s| s.0),
        rounds,
        buffers: match cli.buffers {
            Some(BuffersArg::Low) => Region::Low,
            _ => Region::High,
        },
        probe: !cli.no_probe,
        svg: cli.svg,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Result<Options, String> {
        match parse(args.iter().map(|s| s.to_string()).collect())? {
            Parsed::Run(o) => Ok(*o),
            Parsed::Help(_) => Err("help".into()),
        }
    }

    #[test]
    fn defaults_give_two_pools_and_four_devices() {
        let o = run(&[]).unwrap();
        assert_eq!(o.pools, vec![(LOW_POOL, 4 * MIB), (HIGH_POOL, 16 * MIB)]);
        let masks: Vec<u32> = o.devices.iter().map(|d| d.mask_bits).collect();
        assert_eq!(masks, vec![24, 32, 40, 64]);
        assert_eq!(
            (o.ram, o.rounds, o.confidential, o.personality),
            (6 * GIB, 4, true, Personality::Pseries)
        );
    }

    #[test]
    fn explicit_pools_and_devices_replace_the_defaults() {
        let o = run(&["--pool", "0x100000000:16M", "--device", "x:20", "--tdx"]).unwrap();
        assert_eq!(o.pools, vec![(HIGH_POOL, 16 * MIB)]);
        assert_eq!(o.devices, vec![DeviceSpec { name: "x".into(), mask_bits: 20 }]);
        assert_eq!(o.personality, Personality::Tdx);
        assert!(run(&["--bogus"]).is_err());
        assert!(run(&["--pool"]).is_err());
        // The TCE IOMMU is pseries-only and needs a confidential guest.
        assert_eq!(run(&["--iommu", "strict", "--pseries"]).unwrap().iommu, Some(ccdma::IommuPolicy::Strict));
        assert!(run(&["--iommu", "strict", "--tdx"]).is_err());
        assert!(run(&["--iommu", "strict", "--plain"]).is_err());
        assert_eq!(run(&["--iommu", "none", "--plain"]).unwrap().iommu, None);
    }

    #[test]
    fn the_last_of_competing_flags_wins() {
        assert_eq!(run(&["--tdx", "--pseries"]).unwrap().personality, Personality::Pseries);
        assert_eq!(run(&["--pseries", "--personality", "tdx"]).unwrap().personality, Personality::Tdx);
        assert!(!run(&["--confidential", "--plain"]).unwrap().confidential);
        assert!(run(&["--plain", "--confidential"]).unwrap().confidential);
        assert_eq!(run(&["--ram", "4G", "--ram", "8G"]).unwrap().ram, 8 * GIB);
        assert_eq!(run(&["--sizes", "1,2", "--sizes", "0x1b"]).unwrap().sizes, vec![27]);
    }

    #[test]
    fn every_personality_is_named() {
        for (arg, p) in [
            ("pseries", Personality::Pseries),
            ("tdx", Personality::Tdx),
            ("snp", Personality::Snp),
            ("cca", Personality::Cca),
        ] {
            assert_eq!(run(&[&format!("--{arg}")]).unwrap().personality, p);
            assert_eq!(run(&["--personality", arg]).unwrap().personality, p);
            assert_eq!(run(&["--platform", arg]).unwrap().personality, p);
        }
        assert_eq!(run(&["--snp", "--cca"]).unwrap().personality, Personality::Cca);
        assert_eq!(run(&["--cca", "--platform", "snp"]).unwrap().personality, Personality::Snp);
        assert!(run(&["--iommu", "strict", "--snp"]).is_err());
        assert_eq!(run(&["--snp-entries-per-call", "253"]).unwrap().snp_entries_per_call, Some(253));
        assert!(run(&["--snp-entries-per-call", "254"]).unwrap_err().contains("1 to 253"));
        assert!(run(&["--snp-entries-per-call", "0"]).is_err());
        assert!(run(&["--cca-granules-per-call", "0"]).is_err());
    }

    #[test]
    fn numbers_are_checked() {
        assert_eq!(run(&["--sizes", "0x1b,0xb,4K"]).unwrap().sizes, vec![27, 11, 4096]);
        assert!(run(&["--rounds", "0"]).unwrap_err().contains("--rounds"));
        assert!(run(&["--sizes", "64,0"]).is_err());
        assert!(run(&["--ram", "6Q"]).is_err());
        assert!(run(&["--ram", "4097"]).is_err());
        assert!(run(&["--tdx-pages-per-call", "0"]).is_err());
        assert!(run(&["--device", "nic:70"]).unwrap_err().contains("13 to 64"));
        assert!(run(&["--device", "nic:12"]).unwrap_err().contains("13 to 64"));
        assert_eq!(run(&["--device", "nic:13"]).unwrap().devices[0].mask_bits, 13);
        assert!(run(&["--pool", "0x800000:0"]).unwrap_err().contains("at least one page"));
    }

    #[test]
    fn expected_refusals_name_devices() {
        let o = run(&["--device", "tiny:20", "--device", "nic:64", "--expect-refused", "tiny"]).unwrap();
        assert_eq!(o.expect_refused, vec!["tiny".to_string()]);
        assert!(run(&["--expect-refused", "nope"]).unwrap_err().contains("no such device"));
        assert!(run(&["--device", "a:32", "--device", "a:64"]).unwrap_err().contains("twice"));
    }

    #[test]
    fn accepted_devices_are_named_and_need_a_confidential_guest() {
        let o = run(&["--device", "gpu:64", "--device", "nic:64", "--accept", "gpu"]).unwrap();
        assert_eq!(o.accept, vec!["gpu".to_string()]);
        assert!(run(&["--accept", "nope"]).unwrap_err().contains("no such device"));
        assert!(run(&["--accept", "nic", "--plain"]).unwrap_err().contains("confidential"));
    }

    #[test]
    fn help_is_not_an_error() {
        assert!(matches!(parse(vec!["--help".into()]), Ok(Parsed::Help(_))));
        assert!(matches!(parse(vec!["-h".into()]), Ok(Parsed::Help(_))));
    }
}
