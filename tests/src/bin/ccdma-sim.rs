//! `ccdma-sim`: run the ccdma guest layer against the modelled hypervisor and report, per device, the
//! path chosen and why, the bytes moved each way, the hypervisor calls made and the faults the model
//! recorded.
//!
//! The platform (RAM, pools, confidential or not, personality) and the devices (name and DMA mask) come
//! from flags or from a small `key value` file (`--config FILE`); with no arguments it runs a 6 GiB
//! pseries Secure VM with a low and a high pool and devices of 24, 32, 40 and 64 bits. Every transfer is
//! checked byte for byte by the model's device, so the exit status says whether the layer kept its
//! promises: 0 when every attached device moved exact data with no unexpected fault and nothing leaked,
//! 1 otherwise, 2 for bad arguments. A device that cannot attach is a reported result, not a failure.
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::process::ExitCode;

use ccdma::iommu::BusRange;
use ccdma::{
    Device, DeviceConfig, DmaAttrs, DmaDirection, DmaError, DmaLayer, DmaMask, DmaPath, IommuConfig,
    IommuPolicy, PhysAddr, PoolConfig, StatsSnapshot,
};
use ccdma_hv_model::{
    CallKind, DeviceRef, Fault, FaultReason, HvConfig, Hypervisor, Personality, Region, TceConfig,
};
use ccdma_tests::{meta_for, model, pattern, GIB, HIGH_POOL, LOW_POOL, MIB};

const USAGE: &str = "\
usage: ccdma-sim [options]

Platform:
  --ram SIZE                guest RAM (default 6G)
  --pool ADDR:SIZE          add a bounce pool (repeatable; default 0x800000:4M and 0x100000000:16M)
  --confidential            confidential guest: devices reach only shared memory (default)
  --plain                   not confidential: devices reach all RAM
  --personality pseries|tdx sharing interface (default pseries; --pseries / --tdx also work)
  --tdx-pages-per-call N    TDX: MapGPA converts at most N pages per call, then answers RETRY
  --iommu premapped|strict  pseries TCE IOMMU in front of every device (default: none); premapped
                            enters the pools once per device window, strict writes entries per mapping
  --no-ddw                  the IOMMU offers no dynamic DMA window (only the 2 GiB default window)
  --reserve ADDR:SIZE       a reserved bus range in every window (MSI doorbell, bridge; repeatable)
Devices:
  --device NAME:BITS        a device with a DMA mask of BITS bits (repeatable;
                            default old:24 legacy:32 wide:40 nic:64)
Workload:
  --sizes LIST              mapping sizes, comma separated (default 64,1500,4K,64K,256K)
  --rounds N                rounds over every size and direction (default 4)
  --buffers low|high        where the guest's own buffers live (default high: above 4 GiB)
  --no-probe                skip the containment probe (a device reading private memory directly)
Other:
  --config FILE             read options from FILE: one `key value` per line, keys as above without
                            the dashes (`ram 6G`, `pool 0x800000:4M`, `device nic:64`, `tdx`), # comments
  -h, --help                this text

Sizes and addresses take decimal, 0x hex, and K/M/G/T suffixes (powers of 1024).
Exit status: 0 all attached devices verified clean, 1 a check failed, 2 bad arguments.";

/// One device as given on the command line.
#[derive(Clone, Debug)]
struct DeviceSpec {
    name: String,
    mask_bits: u32,
}

/// Everything the command line says.
#[derive(Clone, Debug)]
struct Options {
    ram: u64,
    pools: Vec<(u64, u64)>,
    confidential: bool,
    personality: Personality,
    tdx_pages_per_call: Option<u64>,
    iommu: Option<IommuPolicy>,
    ddw: bool,
    reserved: Vec<(u64, u64)>,
    devices: Vec<DeviceSpec>,
    sizes: Vec<usize>,
    rounds: u32,
    buffers: Region,
    probe: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            ram: 6 * GIB,
            pools: Vec::new(),
            confidential: true,
            personality: Personality::Pseries,
            tdx_pages_per_call: None,
            iommu: None,
            ddw: true,
            reserved: Vec::new(),
            devices: Vec::new(),
            sizes: vec![64, 1500, 4096, 64 << 10, 256 << 10],
            rounds: 4,
            buffers: Region::High,
            probe: true,
        }
    }
}

impl Options {
    /// The defaults the brief asks for: a low pool a 24-bit device reaches, a high one above 4 GiB.
    fn fill_defaults(&mut self) {
        if self.pools.is_empty() {
            self.pools = vec![(LOW_POOL, 4 * MIB), (HIGH_POOL, 16 * MIB)];
        }
        if self.devices.is_empty() {
            self.devices = [("old", 24), ("legacy", 32), ("wide", 40), ("nic", 64)]
                .iter()
                .map(|&(n, b)| DeviceSpec { name: n.to_string(), mask_bits: b })
                .collect();
        }
    }
}

/// Parse `6G`, `4M`, `0x800000`, `1500`, `64KiB`.
fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let lower = t.to_ascii_lowercase();
    let body = lower.strip_suffix("ib").or_else(|| lower.strip_suffix('b')).unwrap_or(&lower);
    let (digits, shift) = match body.chars().last() {
        Some('k') => (&body[..body.len() - 1], 10),
        Some('m') => (&body[..body.len() - 1], 20),
        Some('g') => (&body[..body.len() - 1], 30),
        Some('t') => (&body[..body.len() - 1], 40),
        _ => (body, 0),
    };
    let value = match digits.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(&hex.replace('_', ""), 16),
        None => digits.replace('_', "").parse::<u64>(),
    }
    .map_err(|_| format!("`{s}` is not a size or address"))?;
    value.checked_mul(1 << shift).ok_or_else(|| format!("`{s}` overflows 64 bits"))
}

fn parse_pool(s: &str) -> Result<(u64, u64), String> {
    let (addr, size) = s.split_once(':').ok_or_else(|| format!("pool `{s}`: expected ADDR:SIZE"))?;
    Ok((parse_size(addr)?, parse_size(size)?))
}

fn parse_device(s: &str) -> Result<DeviceSpec, String> {
    let (name, bits) = s.split_once(':').ok_or_else(|| format!("device `{s}`: expected NAME:BITS"))?;
    let mask_bits = bits.trim().parse::<u32>().map_err(|_| format!("device `{s}`: BITS must be a number"))?;
    if name.is_empty() {
        return Err(format!("device `{s}`: empty name"));
    }
    Ok(DeviceSpec { name: name.to_string(), mask_bits })
}

/// Turn a config file into the equivalent flags: `key value` -> `--key value`.
fn config_file_args(path: &str) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let mut args = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let mut words = line.split_whitespace();
        let key = words.next().unwrap_or_default();
        if key == "config" {
            return Err(format!("{path}:{}: config files do not nest", n + 1));
        }
        args.push(format!("--{key}"));
        args.extend(words.map(str::to_string));
    }
    Ok(args)
}

fn parse_args(args: Vec<String>) -> Result<Option<Options>, String> {
    let mut o = Options::default();
    let mut queue: std::collections::VecDeque<String> = args.into();
    while let Some(arg) = queue.pop_front() {
        let mut value = |flag: &str| queue.pop_front().ok_or_else(|| format!("{flag} needs a value"));
        match arg.as_str() {
            "-h" | "--help" => return Ok(None),
            "--ram" => o.ram = parse_size(&value("--ram")?)?,
            "--pool" => o.pools.push(parse_pool(&value("--pool")?)?),
            "--device" => o.devices.push(parse_device(&value("--device")?)?),
            "--confidential" => o.confidential = true,
            "--plain" => o.confidential = false,
            "--pseries" => o.personality = Personality::Pseries,
            "--tdx" => o.personality = Personality::Tdx,
            "--personality" => {
                o.personality = match value("--personality")?.as_str() {
                    "pseries" => Personality::Pseries,
                    "tdx" => Personality::Tdx,
                    other => return Err(format!("unknown personality `{other}` (pseries or tdx)")),
                }
            }
            "--tdx-pages-per-call" => {
                let n = parse_size(&value("--tdx-pages-per-call")?)?;
                if n == 0 {
                    return Err("--tdx-pages-per-call must be at least 1".into());
                }
                o.tdx_pages_per_call = Some(n);
            }
            "--iommu" => {
                o.iommu = match value("--iommu")?.as_str() {
                    "premapped" => Some(IommuPolicy::Premapped),
                    "strict" => Some(IommuPolicy::Strict),
                    "none" => None,
                    other => return Err(format!("--iommu: `{other}` is not premapped, strict or none")),
                }
            }
            "--no-ddw" => o.ddw = false,
            "--reserve" => o.reserved.push(parse_pool(&value("--reserve")?)?),
            "--sizes" => {
                let list = value("--sizes")?;
                o.sizes = list
                    .split(',')
                    .map(|s| parse_size(s).map(|v| v as usize))
                    .collect::<Result<Vec<_>, _>>()?;
                if o.sizes.contains(&0) || o.sizes.is_empty() {
                    return Err("--sizes: every size must be at least 1 byte".into());
                }
            }
            "--rounds" => {
                o.rounds = value("--rounds")?.parse().map_err(|_| "--rounds needs a number".to_string())?
            }
            "--buffers" => {
                o.buffers = match value("--buffers")?.as_str() {
                    "low" => Region::Low,
                    "high" => Region::High,
                    other => return Err(format!("--buffers: `{other}` is not low or high")),
                }
            }
            "--no-probe" => o.probe = false,
            "--config" => {
                let mut file = config_file_args(&value("--config")?)?;
                file.extend(queue.drain(..));
                queue = file.into();
            }
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    if o.ram == 0 || o.ram % ccdma_hv_model::PAGE != 0 {
        return Err(format!("--ram {:#x}: must be a positive multiple of 4 KiB", o.ram));
    }
    if o.iommu.is_some() && (!o.confidential || o.personality != Personality::Pseries) {
        return Err("--iommu models the pseries TCE IOMMU: it needs a confidential pseries guest".into());
    }
    o.fill_defaults();
    Ok(Some(o))
}

/// `4 KiB`, `1500 B`, `16 MiB`, `1.50 MiB` (exact bytes follow where it matters).
fn human(bytes: u64) -> String {
    const UNITS: [(&str, u64); 4] = [("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
    for (unit, size) in UNITS {
        if bytes >= size {
            return if bytes % size == 0 {
                format!("{} {unit}", bytes / size)
            } else {
                format!("{:.2} {unit}", bytes as f64 / size as f64)
            };
        }
    }
    format!("{bytes} B")
}

/// A mapping size as given: `4 KiB`, `1500 B` (units only when exact).
fn size_label(bytes: usize) -> String {
    match bytes {
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{} KiB", b >> 10),
        b => format!("{b} B"),
    }
}

/// Why the layer chose `path` for this device, in words a reader can check against DESIGN.md 6.
fn path_reason(path: DmaPath, mask: DmaMask, ram_end: u64) -> String {
    match path {
        DmaPath::Direct => format!(
            "not confidential and the {}-bit mask covers all RAM (up to {:#x}): the device uses buffers in place",
            mask.bits(),
            ram_end
        ),
        DmaPath::BounceAboveMask => format!(
            "not confidential, but RAM ends at {:#x}, above the {}-bit mask: buffers above the mask bounce \
             through a pool below it, the rest are used in place",
            ram_end,
            mask.bits()
        ),
        DmaPath::BounceAlways => "confidential guest without IOMMU: a device reaches only shared memory, so \
             every buffer is bounced through a shared pool below the mask; bus address = pool address"
            .to_string(),
        // The IOMMU paths: the layer's own reason (`DmaLayer::path_reason`) is appended by the caller.
        DmaPath::IommuDdw => "everything bounces; the pools alone are entered once into a 64-bit dynamic DMA \
             window with large IOMMU pages, so a map costs no hypercall"
            .to_string(),
        DmaPath::IommuPremapped => "everything bounces; the pools alone are entered once into the default \
             window below the mask, so a map costs no hypercall"
            .to_string(),
        DmaPath::IommuStrict => "everything bounces; each mapping gets its own entries below the mask with \
             its direction's permission, cleared at unmap"
            .to_string(),
        DmaPath::IommuDeferred => "behind the IOMMU, attach deferred to the first map".to_string(),
    }
}

/// Hypervisor-call counters as an ordered map.
fn call_counts(hv: &Hypervisor) -> BTreeMap<CallKind, u64> {
    hv.calls().counts().into_iter().collect()
}

/// `UvShare x2, MapGpa x5`, or `none`.
fn calls_delta(before: &BTreeMap<CallKind, u64>, after: &BTreeMap<CallKind, u64>) -> String {
    let parts: Vec<String> = after
        .iter()
        .filter_map(|(k, &n)| {
            let d = n - before.get(k).copied().unwrap_or(0);
            (d > 0).then(|| format!("{k:?} x{d}"))
        })
        .collect();
    if parts.is_empty() {
        "none".to_string()
    } else {
        parts.join(", ")
    }
}

/// What happened to one attached device.
#[derive(Default)]
struct DeviceReport {
    transfers: u64,
    /// Strict IOMMU: device reads of from-device mappings refused for lack of read permission, as
    /// they must be (DESIGN.md invariant 2).
    permission_refusals: u64,
    verified: u64,
    /// Payload the device was meant to read (to-device and bidirectional mappings).
    payload_to_device: u64,
    /// Payload the device wrote for the guest (from-device and bidirectional mappings).
    payload_from_device: u64,
    mismatches: Vec<String>,
    map_errors: BTreeMap<String, u64>,
    unexpected_faults: Vec<Fault>,
    probe: Option<Result<Fault, String>>,
    leaked_slots: u64,
}

impl DeviceReport {
    fn clean(&self) -> bool {
        self.mismatches.is_empty()
            && self.unexpected_faults.is_empty()
            && self.leaked_slots == 0
            && !matches!(self.probe, Some(Err(_)))
    }
}

/// One attached device as the workload drives it: the layer's handle, the model's DMA engine, and the
/// guest buffer its transfers use.
struct Endpoint<'a> {
    dev: &'a Device,
    dref: DeviceRef<'a>,
    buf_phys: u64,
}

struct Sim<'o> {
    opts: &'o Options,
    hv: &'static Hypervisor,
    layer: DmaLayer<'static, &'static Hypervisor>,
}

impl Sim<'_> {
    /// True when the mapping at `bus` was bounced: always in a confidential guest, else when
    /// `bus..bus+len` lies in a pool's bus range.
    fn bounced(&self, bus: u64, len: usize) -> bool {
        self.opts.confidential
            || (0..ccdma::MAX_POOLS).filter_map(|i| self.layer.pool(i)).any(|(p, b)| {
                bus >= b.0 && bus - b.0 < p.len() as u64 && bus - b.0 + len as u64 <= p.len() as u64
            })
    }

    /// One transfer: map, let the model's device do its part and check every byte, unmap, check the
    /// guest's copy. Returns a description of the first mismatch, if any.
    fn transfer(
        &self,
        ep: &Endpoint<'_>,
        len: usize,
        dir: DmaDirection,
        seed: u64,
        report: &mut DeviceReport,
    ) -> Result<(), DmaError> {
        let (hv, dev, dref, buf_phys) = (self.hv, ep.dev, &ep.dref, ep.buf_phys);
        let outgoing = pattern(len, seed);
        let incoming = pattern(len, seed ^ 0x5eed);
        // SAFETY: `buf_phys` is this device's own buffer from `hv.alloc` (never handed out twice) and no
        // other slice of it is alive: each transfer makes and drops its own.
        let buf = unsafe { hv.slice_mut(buf_phys, len) };
        buf.copy_from_slice(&outgoing);
        let what = |msg: &str| format!("{} {len} B: {msg}", dir_name(dir));
        let mut problems = Vec::new();
        match dir {
            DmaDirection::ToDevice => {
                let m = self.layer.map_to_device(dev, buf, DmaAttrs::NONE)?;
                match dref.read(m.bus_addr().0, len) {
                    Ok(got) if got == outgoing => {}
                    Ok(_) => problems.push(what("device read other bytes than the guest mapped")),
                    Err(f) => problems.push(what(&format!("device read refused: {f}"))),
                }
                m.unmap()?;
            }
            DmaDirection::FromDevice | DmaDirection::Bidirectional => {
                let mut m = self.layer.map(dev, buf, dir, DmaAttrs::NONE)?;
                let bus = m.bus_addr().0;
                // What the device finds before it writes: the original for bidirectional mappings,
                // zeroes for a bounced from-device one (no stale pool data, no private bytes). Under a
                // strict IOMMU a from-device mapping is write-only: the read must be refused instead.
                let write_only =
                    dir == DmaDirection::FromDevice && self.layer.path_of(dev) == DmaPath::IommuStrict;
                let expect_before = match dir {
                    DmaDirection::Bidirectional => Some(&outgoing[..]),
                    _ if self.bounced(bus, len) => None,
                    _ => Some(&outgoing[..]),
                };
                match dref.read(bus, len) {
                    Ok(_) if write_only => {
                        problems.push(what("device read a from-device mapping under a strict IOMMU"))
                    }
                    Err(f) if write_only && f.reason == FaultReason::Permission => {
                        report.permission_refusals += 1
                    }
                    Ok(got) => {
                        let ok = match expect_before {
                            Some(exp) => got == exp,
                            None => got.iter().all(|&b| b == 0),
                        };
                        if !ok {
                            problems
                                .push(what("device found unexpected bytes in the mapping before writing"));
                        }
                    }
                    Err(f) => problems.push(what(&format!("device read refused: {f}"))),
                }
                if let Err(f) = dref.write(bus, &incoming) {
                    problems.push(what(&format!("device write refused: {f}")));
                }
                // A sub-range sync: the first half must reach the guest before unmap.
                let half = len / 2;
                if half > 0 {
                    m.sync_for_cpu(0, half)?;
                    if m.buffer()[..half] != incoming[..half] {
                        problems
                            .push(what("sync_for_cpu of the first half did not deliver the device's bytes"));
                    }
                }
                m.unmap()?;
                if hv.memory().read(buf_phys, len) != incoming {
                    problems.push(what("guest buffer differs from what the device wrote"));
                }
            }
        }
        report.transfers += 1;
        if dir.device_reads() {
            report.payload_to_device += len as u64;
        }
        if dir.device_writes() {
            report.payload_from_device += len as u64;
        }
        if problems.is_empty() {
            report.verified += 1;
        }
        report.mismatches.extend(problems);
        Ok(())
    }

    fn run_device(&self, id: u32, dev: &Device, dref: DeviceRef<'static>, buf_phys: u64) -> DeviceReport {
        let ep = Endpoint { dev, dref, buf_phys };
        let mut report = DeviceReport::default();
        let slots_before = self.layer.stats().slots_in_use;
        let mut seed = u64::from(id) << 32;
        for _ in 0..self.opts.rounds {
            for &len in &self.opts.sizes {
                for dir in [DmaDirection::ToDevice, DmaDirection::FromDevice, DmaDirection::Bidirectional] {
                    seed += 1;
                    if let Err(e) = self.transfer(&ep, len, dir, seed, &mut report) {
                        *report
                            .map_errors
                            .entry(format!("{} {}: {e}", dir_name(dir), size_label(len)))
                            .or_default() += 1;
                    }
                }
            }
        }
        report.leaked_slots = self.layer.stats().slots_in_use.saturating_sub(slots_before);
        // Every fault of this device is unexpected except the permission refusals counted above.
        let mut permission_expected = report.permission_refusals;
        report.unexpected_faults = self
            .hv
            .faults()
            .into_iter()
            .filter(|f| f.device == id)
            .filter(|f| {
                let expected = f.reason == FaultReason::Permission && permission_expected > 0;
                permission_expected -= u64::from(expected);
                !expected
            })
            .collect();
        if self.opts.probe && self.opts.confidential {
            // A hostile device aims at the guest's private buffer itself: the model must refuse it.
            report.probe = Some(match ep.dref.read(buf_phys, 64) {
                Ok(_) => Err(format!("device read private memory at {buf_phys:#x}: containment broken")),
                Err(f) => Ok(f),
            });
        }
        report
    }
}

fn dir_name(dir: DmaDirection) -> &'static str {
    match dir {
        DmaDirection::ToDevice => "to-device",
        DmaDirection::FromDevice => "from-device",
        DmaDirection::Bidirectional => "bidirectional",
    }
}

fn stats_line(before: &StatsSnapshot, after: &StatsSnapshot) -> (u64, u64, u64, u64) {
    (
        after.maps - before.maps,
        after.bounced_maps - before.bounced_maps,
        after.bytes_to_device - before.bytes_to_device,
        after.bytes_from_device - before.bytes_from_device,
    )
}

fn run(opts: &Options) -> Result<bool, String> {
    let cfg = HvConfig {
        confidential: opts.confidential,
        personality: opts.personality,
        tdx_pages_per_call: opts.tdx_pages_per_call,
        ..HvConfig::pseries(opts.ram)
    };
    let hv = model(cfg);
    let mut out = String::new();
    let kind = match (opts.confidential, opts.personality) {
        (true, Personality::Pseries) => "pseries Secure VM (confidential, ultravisor sharing)",
        (true, Personality::Tdx) => "TDX guest (confidential, MapGPA sharing)",
        (false, p) => {
            if p == Personality::Pseries {
                "pseries guest, not confidential"
            } else {
                "TDX-personality guest, not confidential"
            }
        }
    };
    let iommu_desc = match opts.iommu {
        None => "no IOMMU".to_string(),
        Some(p) => format!(
            "TCE IOMMU ({} policy, {})",
            if p == IommuPolicy::Strict { "strict" } else { "premapped" },
            if opts.ddw { "DDW offered" } else { "no DDW" }
        ),
    };
    let _ = writeln!(out, "ccdma-sim: {kind}, {} RAM, {iommu_desc}", human(opts.ram));

    // The guest's own buffers first, so pools can be checked against them.
    let max_len = opts.sizes.iter().copied().max().unwrap_or(4096) as u64;
    let high_ok = opts.buffers == Region::Low || opts.ram > ccdma_hv_model::ALLOC_HIGH_START + max_len;
    let low_limit = opts.ram.min(1 << 32);
    let needed = max_len.div_ceil(ccdma_hv_model::PAGE) * ccdma_hv_model::PAGE * opts.devices.len() as u64;
    if ccdma_hv_model::ALLOC_LOW_START + needed > low_limit && !(opts.buffers == Region::High && high_ok) {
        return Err(format!(
            "RAM of {} leaves no room for the workload buffers (the model places them from {:#x})",
            human(opts.ram),
            ccdma_hv_model::ALLOC_LOW_START
        ));
    }
    let buffers: Vec<u64> = opts.devices.iter().map(|_| hv.alloc(max_len, opts.buffers)).collect();
    let buf_len = max_len.div_ceil(ccdma_hv_model::PAGE) * ccdma_hv_model::PAGE;
    // The H_PUT_TCE_INDIRECT list page: private guest memory the layer shares once.
    let list_page = opts.iommu.map(|_| hv.alloc(ccdma_hv_model::PAGE, Region::Low));
    let taken: Vec<(u64, u64)> =
        buffers.iter().map(|&b| (b, buf_len)).chain(list_page.map(|p| (p, ccdma_hv_model::PAGE))).collect();
    if opts.iommu.is_some() {
        hv.enable_iommu(TceConfig { reserved: opts.reserved.clone(), ddw: opts.ddw, ..TceConfig::default() });
    }

    let mut layer = DmaLayer::new(hv);
    let _ = writeln!(out, "pools:");
    let calls_at_start = call_counts(hv);
    for (n, &(phys, len)) in opts.pools.iter().enumerate() {
        if let Some((b, _)) = taken.iter().find(|&&(b, l)| phys < b + l && b < phys.saturating_add(len)) {
            let _ = writeln!(
                out,
                "  pool {n} at {phys:#x} ({}): NOT ADDED: overlaps the workload buffer at {b:#x} \
                 (the model hands out buffers from {:#x} and {:#x})",
                human(len),
                ccdma_hv_model::ALLOC_LOW_START,
                ccdma_hv_model::ALLOC_HIGH_START
            );
            continue;
        }
        let pcfg = PoolConfig::default();
        let Ok(len_usize) = usize::try_from(len) else {
            let _ = writeln!(out, "  pool {n} at {phys:#x}: NOT ADDED: size does not fit this host");
            continue;
        };
        let meta = meta_for(len, &pcfg);
        // SAFETY: the range was just checked not to overlap any workload buffer, the model hands out no
        // other memory, and `add_pool` refuses ranges that overlap another pool or leave RAM. The model
        // is leaked, so the memory lives as long as the layer.
        match unsafe { layer.add_pool(PhysAddr(phys), len_usize, meta, pcfg) } {
            Ok(i) => {
                let (p, bus) = layer.pool(i).expect("pool just added");
                let _ = writeln!(
                    out,
                    "  #{i}  phys {phys:#x}..{:#x} ({}), {}, {} slots of {}, largest mapping {}{}",
                    phys + len,
                    human(len),
                    if opts.iommu.is_some() {
                        "bus per device window".to_string()
                    } else {
                        format!("bus {bus}")
                    },
                    p.slots(),
                    human(p.slot_size() as u64),
                    human(p.max_mapping() as u64),
                    if opts.confidential { ", shared with the hypervisor" } else { "" }
                );
            }
            Err(e) => {
                let hint = if phys.saturating_add(len) > opts.ram { " (outside guest RAM)" } else { "" };
                let _ = writeln!(out, "  pool {n} at {phys:#x} ({}): NOT ADDED: {e}{hint}", human(len));
            }
        }
    }
    if let (Some(policy), Some(page)) = (opts.iommu, list_page) {
        let cfg = IommuConfig { policy, ..IommuConfig::premapped() }.with_list_page(PhysAddr(page));
        let ranges = vec![BusRange::EMPTY; 8 * 512].leak();
        // SAFETY: the list page is a fresh allocation from the model that nothing else uses, and the
        // model (leaked) outlives the layer.
        unsafe { layer.enable_iommu(cfg, ranges) }.map_err(|e| format!("enabling the IOMMU failed: {e}"))?;
        let _ = writeln!(out, "  IOMMU list page at {page:#x} (shared once for H_PUT_TCE_INDIRECT)");
    }
    let setup = layer.stats();
    let _ = writeln!(
        out,
        "  set-up calls: {}; pages shared now: {} (model) / {} (layer)",
        calls_delta(&calls_at_start, &call_counts(hv)),
        hv.shared_pages(),
        setup.shared_pages
    );
    let region = match opts.buffers {
        Region::High if high_ok => "above 4 GiB",
        Region::High => "below 4 GiB (RAM too small for high buffers)",
        Region::Low => "below 4 GiB",
    };
    let _ = writeln!(
        out,
        "workload: sizes {} x 3 directions x {} rounds per device; guest buffers {region}; \
         every byte checked by the model's device",
        opts.sizes.iter().map(|&s| size_label(s)).collect::<Vec<_>>().join(", "),
        opts.rounds
    );
    print!("{out}");

    let sim = Sim { opts, hv, layer };
    let mut all_clean = true;
    let (mut attached, mut refused, mut transfers, mut verified) = (0, 0, 0, 0);
    let mut attached_devices: Vec<Device> = Vec::new();
    for (k, spec) in opts.devices.iter().enumerate() {
        let id = k as u32 + 1;
        let mut out = String::new();
        let mask = DmaMask::new(spec.mask_bits);
        let _ = writeln!(
            out,
            "\ndevice {} (id {id}, mask {})",
            spec.name,
            mask.map_or_else(|_| format!("{} bits", spec.mask_bits), |m| m.to_string())
        );
        // The model's device exists first (behind the IOMMU, attach programs its windows).
        let dref = match opts.iommu {
            Some(_) => hv.add_iommu_device(id, spec.mask_bits),
            None => hv.add_device(id, spec.mask_bits),
        };
        let calls_before = call_counts(hv);
        let dev = match mask.and_then(|m| sim.layer.attach(DeviceConfig::new(id, m))) {
            Ok(dev) => dev,
            Err(e) => {
                refused += 1;
                let _ = writeln!(out, "  ATTACH FAILED: {e}");
                if let DmaError::NoPath { .. } = e {
                    let pools: Vec<String> = (0..ccdma::MAX_POOLS)
                        .filter_map(|i| sim.layer.pool(i))
                        .map(|(p, b)| format!("bus {b}..{:#x}", b.0 + p.len() as u64))
                        .collect();
                    let _ = writeln!(
                        out,
                        "  (no pool lies below the mask; pools: {})",
                        if pools.is_empty() { "none".to_string() } else { pools.join(", ") }
                    );
                }
                print!("{out}");
                continue;
            }
        };
        attached += 1;
        attached_devices.push(dev);
        let dev = attached_devices.last().expect("just pushed");
        let calls_attach = call_counts(hv);
        let path = sim.layer.path_of(dev);
        let layer_reason = sim.layer.path_reason(dev).map_or(String::new(), |r| format!(" [layer: {r}]"));
        let _ = writeln!(
            out,
            "  path      {}: {}{layer_reason}",
            path.name(),
            path_reason(path, dev.config().dma_mask, opts.ram)
        );
        let pools: Vec<String> = dev
            .pool_indices()
            .map(|i| {
                let (p, b) = sim.layer.pool(i).expect("attached pool");
                let bus = match path {
                    DmaPath::IommuStrict => "bus per mapping".to_string(),
                    _ => format!("bus {}", sim.layer.pool_bus_of(dev, i).unwrap_or(b)),
                };
                format!("#{i} ({bus}, {})", human(p.len() as u64))
            })
            .collect();
        if !pools.is_empty() {
            let _ = writeln!(out, "  pools     {} (in the order tried)", pools.join(", "));
        }
        let (window, ddw) = sim.layer.windows_of(dev);
        for (what, w) in [("window", window), ("DDW", ddw)] {
            if let Some(w) = w {
                let _ = writeln!(
                    out,
                    "  {what:<9} LIOBN {:#x}: bus {:#x}..{:#x}, {} IOMMU pages",
                    w.liobn,
                    w.start,
                    w.start.saturating_add(w.size),
                    human(w.page_size())
                );
            }
        }
        let stats_before = sim.layer.stats();
        let dev_bytes_before = hv.device_bytes();
        let report = sim.run_device(id, dev, dref, buffers[k]);
        let stats_after = sim.layer.stats();
        let dev_bytes_after = hv.device_bytes();
        let (maps, bounced, copied_in, copied_out) = stats_line(&stats_before, &stats_after);
        let dev_read = dev_bytes_after.0 - dev_bytes_before.0;
        let dev_wrote = dev_bytes_after.1 - dev_bytes_before.1;
        let (to_dev, from_dev) = (report.payload_to_device, report.payload_from_device);
        let _ = writeln!(
            out,
            "  moved     to device {to_dev} B ({}), from device {from_dev} B ({}); the model's device DMA \
             read {dev_read} B (with its zero-fill checks), wrote {dev_wrote} B",
            human(to_dev),
            human(from_dev)
        );
        let _ = writeln!(
            out,
            "  bounced   {bounced} of {maps} maps; copies into shared memory {copied_in} B, back to the guest (incl. sub-range syncs) \
             {copied_out} B"
        );
        let _ = writeln!(
            out,
            "  calls     at attach: {}; during the workload: {}",
            calls_delta(&calls_before, &calls_attach),
            calls_delta(&calls_attach, &call_counts(hv))
        );
        let _ =
            writeln!(out, "  faults    {} unexpected during the workload", report.unexpected_faults.len());
        if report.permission_refusals > 0 {
            let _ = writeln!(
                out,
                "            + {} expected: device reads of write-only (from-device) mappings refused: Permission",
                report.permission_refusals
            );
        }
        for f in report.unexpected_faults.iter().take(5) {
            let _ = writeln!(out, "            UNEXPECTED {f}");
        }
        match &report.probe {
            Some(Ok(f)) => {
                let _ = writeln!(
                    out,
                    "            + 1 expected: containment probe (device reads the private buffer at {:#x}) \
                     refused: {:?}",
                    buffers[k], f.reason
                );
            }
            Some(Err(msg)) => {
                let _ = writeln!(out, "            CONTAINMENT FAILURE: {msg}");
            }
            None => {}
        }
        for (err, n) in &report.map_errors {
            let _ = writeln!(out, "  error     {err} (x{n})");
        }
        let _ = writeln!(
            out,
            "  verified  {} of {} transfers exact; slots leaked: {}",
            report.verified, report.transfers, report.leaked_slots
        );
        for m in report.mismatches.iter().take(5) {
            let _ = writeln!(out, "            MISMATCH {m}");
        }
        transfers += report.transfers;
        verified += report.verified;
        all_clean &= report.clean();
        print!("{out}");
    }

    // Tear down: every pool page goes back to private, and the counters show it.
    let Sim { mut layer, .. } = sim;
    let calls_before = call_counts(hv);
    let end = layer.stats();
    // Detach every device (its windows are cleared and removed), then the IOMMU, then the pools.
    let mut teardown_errors = Vec::new();
    for dev in attached_devices {
        let id = dev.config().id;
        if let Err(e) = layer.detach(dev) {
            teardown_errors.push(format!("detach of device {id:#x}: {}", e.error));
        }
    }
    if let Err(e) = layer.disable_iommu() {
        teardown_errors.push(format!("disabling the IOMMU: {e}"));
    }
    for e in &teardown_errors {
        println!("\nTEARDOWN ERROR: {e}");
    }
    let released = layer.release_pools();
    let after = layer.stats();
    println!(
        "\nteardown: {}; calls {}; pages shared now {} (model); quarantined {}",
        match &released {
            Ok(()) => "pools released".to_string(),
            Err(e) => format!("RELEASE FAILED: {e}"),
        },
        calls_delta(&calls_before, &call_counts(hv)),
        hv.shared_pages(),
        after.quarantined_pages
    );
    if opts.iommu.is_some() {
        let tce = hv.tce_counters();
        println!(
            "IOMMU after teardown: {} live entries, {} DDWs (entries written {}, cleared {})",
            tce.live_entries, tce.ddws, tce.entries_written, tce.entries_cleared
        );
        all_clean &= tce.live_entries == 0 && tce.ddws == 0;
    }
    all_clean &=
        teardown_errors.is_empty() && released.is_ok() && hv.shared_pages() == 0 && end.slots_in_use == 0;
    println!(
        "summary: {attached} devices attached, {refused} refused; {verified}/{transfers} transfers exact; \
         {} failures counted by the layer; {}",
        end.total_failures(),
        if all_clean { "OK" } else { "FAILED" }
    );
    Ok(all_clean)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opts = match parse_args(args) {
        Ok(Some(o)) => o,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("ccdma-sim: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(&opts) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("ccdma-sim: {e}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_suffixes_and_hex() {
        assert_eq!(parse_size("6G"), Ok(6 << 30));
        assert_eq!(parse_size("4MiB"), Ok(4 << 20));
        assert_eq!(parse_size("0x800000"), Ok(0x80_0000));
        assert_eq!(parse_size("1500"), Ok(1500));
        assert_eq!(parse_size("64k"), Ok(64 << 10));
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("0xffffffffffffffffK").is_err());
    }

    #[test]
    fn defaults_give_two_pools_and_four_devices() {
        let o = parse_args(vec![]).unwrap().unwrap();
        assert_eq!(o.pools, vec![(LOW_POOL, 4 * MIB), (HIGH_POOL, 16 * MIB)]);
        let masks: Vec<u32> = o.devices.iter().map(|d| d.mask_bits).collect();
        assert_eq!(masks, vec![24, 32, 40, 64]);
    }

    #[test]
    fn explicit_pools_and_devices_replace_the_defaults() {
        let args = ["--pool", "0x100000000:16M", "--device", "x:20", "--tdx"].map(String::from).to_vec();
        let o = parse_args(args).unwrap().unwrap();
        assert_eq!(o.pools, vec![(HIGH_POOL, 16 * MIB)]);
        assert_eq!(o.devices.len(), 1);
        assert_eq!(o.personality, Personality::Tdx);
        assert!(parse_args(vec!["--bogus".into()]).is_err());
        // The TCE IOMMU is pseries-only and needs a confidential guest.
        let iommu = |extra: &str| parse_args(["--iommu", "strict", extra].map(String::from).to_vec());
        assert_eq!(iommu("--pseries").unwrap().unwrap().iommu, Some(IommuPolicy::Strict));
        assert!(iommu("--tdx").is_err());
        assert!(iommu("--plain").is_err());
        assert!(parse_args(vec!["--pool".into()]).is_err());
    }
}
