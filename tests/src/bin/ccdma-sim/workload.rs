//! The workload: build the modelled platform, add the pools, attach the devices, run transfers the
//! model's device checks byte for byte (`transfer`), tear down. What it finds goes to `report` and
//! `table` for printing.

use std::collections::BTreeMap;

use ccdma::iommu::BusRange;
use ccdma::{Device, DeviceConfig, DmaError, DmaLayer, DmaMask, IommuConfig, PhysAddr, PoolConfig};
use ccdma_hv_model::{CallKind, HvConfig, Hypervisor, Personality, Region, TceConfig, PAGE};
use ccdma_tests::{meta_for, model};

use crate::args::Options;
use crate::report::{self, emit};
use crate::svg::{DeviceDrawing, Live};
use crate::table::{self, DeviceRow, Verdict};
use crate::transfer::Sim;

/// Hypervisor-call counters, ordered.
pub type Calls = BTreeMap<CallKind, u64>;

pub fn call_counts(hv: &Hypervisor) -> Calls {
    hv.calls().counts().into_iter().collect()
}

/// The used bus ranges of a device's windows, as the layer keeps them.
pub fn bus_ranges(layer: &DmaLayer<'static, &'static Hypervisor>, dev: &Device) -> Vec<BusRange> {
    let mut out = vec![BusRange::EMPTY; 256];
    let n = layer.bus_ranges_of(dev, &mut out);
    if n > out.len() {
        out = vec![BusRange::EMPTY; n];
        layer.bus_ranges_of(dev, &mut out);
    }
    out.truncate(n);
    out
}

/// Run everything; `Ok(true)` when every check passed, `Err` when the configuration cannot run.
pub fn run(opts: &Options) -> Result<bool, String> {
    let cfg = HvConfig {
        confidential: opts.confidential,
        tdx_pages_per_call: opts.tdx_pages_per_call,
        snp_entries_per_call: opts.snp_entries_per_call,
        cca_granules_per_call: opts.cca_granules_per_call,
        ..HvConfig::confidential(opts.personality, opts.ram)
    };
    let hv = model(cfg);
    let mut failures: Vec<String> = Vec::new();

    // The guest's own buffers first, so pools can be checked against them.
    let max_len = opts.sizes.iter().copied().max().unwrap_or(PAGE);
    let high_ok = opts.buffers == Region::Low || opts.ram > ccdma_hv_model::ALLOC_HIGH_START + max_len;
    let buf_len = max_len.div_ceil(PAGE).checked_mul(PAGE).ok_or("--sizes: a size is too large")?;
    // Room in the model's two allocation regions: the buffers (high or low), and below 4 GiB the
    // IOMMU list page and, with --svg, a page per device for a coherent buffer.
    let region = if high_ok { opts.buffers } else { Region::Low };
    let devices = opts.devices.len() as u64;
    let all_buffers = buf_len.saturating_mul(devices);
    let low_pages = u64::from(opts.iommu.is_some()) + if opts.svg.is_some() { devices } else { 0 };
    let low_need = low_pages * PAGE + if region == Region::Low { all_buffers } else { 0 };
    let high_need = if region == Region::High { all_buffers } else { 0 };
    let (low, high) = (ccdma_hv_model::ALLOC_LOW_START, ccdma_hv_model::ALLOC_HIGH_START);
    if low.saturating_add(low_need) > opts.ram.min(1 << 32)
        || high.saturating_add(high_need) > opts.ram.max(high)
    {
        return Err(format!(
            "RAM of {} leaves no room for {devices} workload buffers of {} (the model places them from \
             {low:#x} below 4 GiB, {high:#x} above)",
            crate::num::human(opts.ram),
            crate::num::human(buf_len)
        ));
    }
    let buffers: Vec<u64> = opts.devices.iter().map(|_| hv.alloc(max_len, region)).collect();
    let coherent_pages: Vec<u64> = match opts.svg {
        Some(_) => opts.devices.iter().map(|_| hv.alloc(PAGE, Region::Low)).collect(),
        None => Vec::new(),
    };
    // The H_PUT_TCE_INDIRECT list page: private guest memory the layer shares once.
    let list_page = opts.iommu.map(|_| hv.alloc(PAGE, Region::Low));
    for (n, &(phys, len)) in opts.pools.iter().enumerate() {
        let hits = |b: u64, l: u64| phys < b + l && b < phys.saturating_add(len);
        let owner = opts.devices.iter().zip(&buffers).find(|&(_, &b)| hits(b, buf_len));
        if let Some((d, &b)) = owner {
            return Err(format!(
                "pool {n} ({phys:#x}:{}) overlaps the guest buffer of device {} at {b:#x}..{:#x}; the model \
                 hands out buffers from {:#x} (below 4 GiB) and {:#x} (above)",
                crate::num::size_label(len),
                d.name,
                b + buf_len,
                ccdma_hv_model::ALLOC_LOW_START,
                ccdma_hv_model::ALLOC_HIGH_START
            ));
        }
        if let Some(p) = coherent_pages.iter().find(|&&p| hits(p, PAGE)) {
            return Err(format!(
                "pool {n} ({phys:#x}:{}) overlaps a page for --svg at {p:#x}",
                crate::num::size_label(len)
            ));
        }
        if let Some(p) = list_page.filter(|&p| hits(p, PAGE)) {
            return Err(format!(
                "pool {n} ({phys:#x}:{}) overlaps the IOMMU list page at {p:#x}",
                crate::num::size_label(len)
            ));
        }
    }
    if opts.iommu.is_some() {
        hv.enable_iommu(TceConfig { reserved: opts.reserved.clone(), ddw: opts.ddw, ..TceConfig::default() });
    }

    emit(&report::header(opts));
    let mut layer = DmaLayer::new(hv);
    let calls_at_start = call_counts(hv);
    // Which command-line pool each layer pool is (the layer's errors name its own indices).
    let mut arg_of_layer: BTreeMap<usize, usize> = BTreeMap::new();
    for (n, &(phys, len)) in opts.pools.iter().enumerate() {
        let pcfg = PoolConfig::default();
        let added = match usize::try_from(len) {
            Err(_) => Err("size does not fit this host".to_string()),
            // Refused before the slot metadata is allocated (a 1 TiB pool would need gigabytes of it).
            Ok(_) if phys.saturating_add(len) > opts.ram => Err(format!(
                "outside guest RAM (the pool ends at {:#x}, RAM at {:#x})",
                phys.saturating_add(len),
                opts.ram
            )),
            Ok(len_usize) => {
                let meta = meta_for(len, &pcfg);
                // SAFETY: the range was checked above not to overlap any workload buffer or the list
                // page, the model hands out no other memory, and `add_pool` refuses ranges that overlap
                // another pool or leave RAM. The model is leaked, so the memory outlives the layer.
                unsafe { layer.add_pool(PhysAddr(phys), len_usize, meta, pcfg) }
                    .map_err(|e| report::pool_error(&e, &arg_of_layer, &opts.pools))
            }
        };
        match added {
            Ok(i) => {
                arg_of_layer.insert(i, n);
                emit(&report::pool_added(&layer, i, n, opts));
            }
            Err(e) => {
                emit(&report::pool_refused(n, phys, len, &e));
                failures.push(format!("pool {n} not added"));
            }
        }
    }
    if let (Some(policy), Some(page)) = (opts.iommu, list_page) {
        let cfg = IommuConfig { policy, ..IommuConfig::premapped() }.with_list_page(PhysAddr(page));
        let ranges = vec![BusRange::EMPTY; 8 * 512].leak();
        // SAFETY: the list page is a fresh allocation from the model that nothing else uses, and the
        // model (leaked) outlives the layer.
        unsafe { layer.enable_iommu(cfg, ranges) }.map_err(|e| format!("enabling the IOMMU failed: {e}"))?;
        emit(&format!("  IOMMU list page at {page:#x} (shared once for H_PUT_TCE_INDIRECT)\n"));
    }
    emit(&report::setup(hv, &calls_at_start, &layer.stats()));
    emit(&report::workload_line(opts, region));

    let sim = Sim { opts, hv, layer };
    let mut rows: Vec<DeviceRow> = Vec::new();
    let mut attached_devices: Vec<Device> = Vec::new();
    let mut drawings = Vec::new();
    for (k, spec) in opts.devices.iter().enumerate() {
        let id = k as u32 + 1;
        let expected_refusal = opts.expect_refused.contains(&spec.name);
        let accept = opts.accept.contains(&spec.name);
        if accept {
            // The model's TSM has attested the device and put it in RUN: the guest may accept it.
            hv.tdisp_bind(id);
        }
        let mask = DmaMask::new(spec.mask_bits).map_err(DmaError::from);
        let mut out = report::device_header(spec, id, mask);
        // The model's device exists first (behind the IOMMU, attach programs its windows).
        let dref = match opts.iommu {
            Some(_) => hv.add_iommu_device(id, spec.mask_bits),
            None => hv.add_device(id, spec.mask_bits),
        };
        let calls_before = call_counts(hv);
        let mut dev = match mask.and_then(|m| sim.layer.attach(DeviceConfig::new(id, m))) {
            Ok(dev) => dev,
            Err(e) => {
                let verdict = if expected_refusal { Verdict::RefusedAsExpected } else { Verdict::Failed };
                let alias_bit = (opts.confidential && opts.personality == Personality::Cca).then_some(47);
                out += &report::refused(&sim.layer, &e, verdict, alias_bit);
                if !expected_refusal {
                    failures.push(format!("device {} refused", spec.name));
                }
                rows.push(DeviceRow::refused(spec, &e, verdict));
                emit(&out);
                continue;
            }
        };
        let mut accept_failed = false;
        if accept {
            if let Err(e) = sim.layer.accept(&mut dev) {
                out += &format!("  ACCEPT    REFUSED: {e}\n");
                failures.push(format!("device {}: accept refused", spec.name));
                accept_failed = true;
            }
        }
        attached_devices.push(dev);
        let dev = attached_devices.last().expect("just pushed");
        let calls_attach = call_counts(hv);
        out += &report::attached(&sim.layer, dev);
        let stats_before = sim.layer.stats();
        let dev_bytes_before = hv.device_bytes();
        let touches_before = hv.page_touches(id);
        let result = sim.run_device(id, dev, &dref, buffers[k]);
        let bytes = (hv.device_bytes().0 - dev_bytes_before.0, hv.device_bytes().1 - dev_bytes_before.1);
        let calls = (calls_before, calls_attach, call_counts(hv));
        let t = hv.page_touches(id);
        let touches = ccdma_hv_model::PageTouches {
            shared: t.shared - touches_before.shared,
            private: t.private - touches_before.private,
        };
        out += &report::device_result(
            &result,
            &stats_before,
            &sim.layer.stats(),
            bytes,
            touches,
            &calls,
            buffers[k],
        );
        if let Some(&coh) = coherent_pages.get(k) {
            let len = usize::try_from(max_len.min(PAGE)).unwrap_or(1);
            let capture = |live: &[Live]| DeviceDrawing::capture(&sim.layer, dev, &spec.name, live);
            match sim.hold_live(dev, (buffers[k], len), coh, capture) {
                Ok((mut d, refused)) => {
                    if let Some(e) = refused {
                        out += &format!("  svg       no coherent buffer drawn: alloc_coherent: {e}\n");
                        d.note(format!("no coherent buffer drawn: alloc_coherent: {e}"));
                    }
                    drawings.push(d);
                }
                Err(e) => {
                    out += &format!("  ERROR     {e}\n");
                    failures.push(format!("device {}: --svg capture", spec.name));
                }
            }
        }
        let mut verdict = if result.clean() && !accept_failed { Verdict::Ok } else { Verdict::Failed };
        if verdict == Verdict::Failed {
            failures.push(format!("device {}: a check failed", spec.name));
        }
        if expected_refusal {
            out += "  expected  refused (--expect-refused), but it attached\n";
            failures.push(format!("device {}: attached, but expected refused", spec.name));
            verdict = Verdict::Failed;
        }
        out += &format!("  result    {}\n", verdict.word());
        let mut row = DeviceRow::attached(spec, sim.layer.path_of(dev), &result, verdict);
        if expected_refusal {
            if !row.note.is_empty() {
                row.note += "; ";
            }
            row.note += "attached, but expected refused";
        }
        rows.push(row);
        emit(&out);
    }

    // Tear down: detach every device (its windows are cleared and removed), then the IOMMU, then the
    // pools; every pool page goes back to private, and the counters show it.
    let Sim { mut layer, .. } = sim;
    let calls_before = call_counts(hv);
    let end = layer.stats();
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
    let released = layer.release_pools().map_err(|e| e.to_string());
    if let Err(e) = &released {
        teardown_errors.push(format!("releasing the pools: {e}"));
    }
    emit(&report::teardown(
        hv,
        &calls_before,
        &teardown_errors,
        layer.stats().quarantined_pages,
        opts.iommu.is_some(),
    ));
    let tce = hv.tce_counters();
    if opts.iommu.is_some() && (tce.live_entries != 0 || tce.ddws != 0) {
        failures.push("IOMMU entries or DDWs left after teardown".into());
    }
    if !teardown_errors.is_empty() || hv.shared_pages() != 0 || end.slots_in_use != 0 {
        failures.push("teardown".into());
    }
    if let Some(path) = &opts.svg {
        let svg = crate::svg::render(&drawings);
        std::fs::write(path, svg).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        emit(&format!("svg: {} device(s) drawn into {}\n", drawings.len(), path.display()));
    }
    if rows.iter().all(|r| r.transfers == 0) && !rows.iter().all(|r| r.verdict == Verdict::RefusedAsExpected)
    {
        failures.push("no transfer ran".into());
    }
    emit(&table::summary(&rows, end.total_failures(), &failures));
    Ok(failures.is_empty())
}
