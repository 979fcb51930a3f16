//! One device's share of the workload: every size in every direction, mapped by the layer, read and
//! written by the model's device, checked byte for byte.

use std::collections::BTreeMap;

use ccdma::{Device, DmaAttrs, DmaDirection, DmaError, DmaLayer, DmaPath, PhysAddr};
use ccdma_hv_model::{DeviceRef, Fault, FaultReason, Hypervisor, PrivateAccess};
use ccdma_tests::pattern;

use crate::args::Options;
use crate::svg::Live;
/// What happened to one attached device.
#[derive(Default)]
pub struct DeviceReport {
    pub transfers: u64,
    /// Strict IOMMU: device reads of from-device mappings refused for lack of read permission, as they
    /// must be (DESIGN.md invariant 2).
    pub permission_refusals: u64,
    pub verified: u64,
    /// Payload the device was meant to read (to-device and bidirectional mappings).
    pub payload_to_device: u64,
    /// Payload the device wrote for the guest (from-device and bidirectional mappings).
    pub payload_from_device: u64,
    pub mismatches: Vec<String>,
    /// Layer errors by text, with how often each came.
    pub map_errors: BTreeMap<String, u64>,
    pub unexpected_faults: Vec<Fault>,
    pub probe: Option<Result<Fault, String>>,
    /// The probe was not run: an accepted device without IOMMU may reach private memory.
    pub probe_skipped_trusted: bool,
    pub leaked_slots: u64,
    /// Accesses of an accepted device to private memory (the model's log), and those that fell
    /// outside the device's own buffer (each one a failure).
    pub private_accesses: u64,
    pub private_outside: Vec<PrivateAccess>,
}

impl DeviceReport {
    pub fn clean(&self) -> bool {
        self.mismatches.is_empty()
            && self.map_errors.is_empty()
            && self.unexpected_faults.is_empty()
            && self.leaked_slots == 0
            && self.private_outside.is_empty()
            && !matches!(self.probe, Some(Err(_)))
            && self.transfers > 0
    }
}

pub struct Sim<'o> {
    pub opts: &'o Options,
    pub hv: &'static Hypervisor,
    pub layer: DmaLayer<'static, &'static Hypervisor>,
}

pub fn dir_name(dir: DmaDirection) -> &'static str {
    match dir {
        DmaDirection::ToDevice => "to-device",
        DmaDirection::FromDevice => "from-device",
        DmaDirection::Bidirectional => "bidirectional",
    }
}

impl Sim<'_> {
    /// True when the mapping at `bus` was bounced: always for an untrusted device in a confidential
    /// guest, never for an accepted device behind an IOMMU, else when `bus..bus+len` lies in a
    /// pool's bus range.
    fn bounced(&self, dev: &Device, bus: u64, len: usize) -> bool {
        match self.layer.path_of(dev) {
            DmaPath::TrustedIommu => return false,
            DmaPath::TrustedDirect => {}
            _ if self.opts.confidential => return true,
            _ => {}
        }
        (0..ccdma::MAX_POOLS).filter_map(|i| self.layer.pool(i)).any(|(p, b)| {
            bus >= b.0 && bus - b.0 < p.len() as u64 && bus - b.0 + len as u64 <= p.len() as u64
        })
    }

    /// One transfer: map, let the model's device do its part and check every byte, unmap, check the
    /// guest's copy. Mismatches go to `report`; a layer error is returned.
    fn transfer(
        &self,
        dev: &Device,
        dref: &DeviceRef<'_>,
        buf_phys: u64,
        (len, dir, seed): (usize, DmaDirection, u64),
        report: &mut DeviceReport,
    ) -> Result<(), DmaError> {
        let hv = self.hv;
        let outgoing = pattern(len, seed);
        let incoming = pattern(len, seed ^ 0x5eed);
        // SAFETY: `buf_phys` is this device's own buffer from `hv.alloc` (never handed out twice) and no
        // other slice of it is alive: each transfer makes and drops its own.
        let buf = unsafe { hv.slice_mut(buf_phys, len) };
        buf.copy_from_slice(&outgoing);
        let what = |msg: &str| format!("{} {len} B: {msg}", dir_name(dir));
        let mut problems = Vec::new();
        if dir == DmaDirection::ToDevice {
            let m = self.layer.map_to_device(dev, buf, DmaAttrs::NONE)?;
            match dref.read(m.bus_addr().0, len) {
                Ok(got) if got == outgoing => {}
                Ok(_) => problems.push(what("device read other bytes than the guest mapped")),
                Err(f) => problems.push(what(&format!("device read refused: {f}"))),
            }
            m.unmap()?;
        } else {
            let mut m = self.layer.map(dev, buf, dir, DmaAttrs::NONE)?;
            let bus = m.bus_addr().0;
            // What the device finds before it writes: the original for bidirectional mappings, zeroes
            // for a bounced from-device one (no stale pool data, no private bytes). Under a strict
            // IOMMU a from-device mapping is write-only: the read must be refused instead.
            let write_only = dir == DmaDirection::FromDevice
                && matches!(self.layer.path_of(dev), DmaPath::IommuStrict | DmaPath::TrustedIommu);
            let expect_before = match dir {
                DmaDirection::Bidirectional => Some(&outgoing[..]),
                _ if self.bounced(dev, bus, len) => None,
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
                        problems.push(what("device found unexpected bytes in the mapping before writing"));
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
                    problems.push(what("sync_for_cpu of the first half did not deliver the device's bytes"));
                }
            }
            m.unmap()?;
            if hv.memory().read(buf_phys, len) != incoming {
                problems.push(what("guest buffer differs from what the device wrote"));
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

    pub fn run_device(
        &self,
        id: u32,
        dev: &Device,
        dref: &DeviceRef<'static>,
        buf_phys: u64,
    ) -> DeviceReport {
        let mut report = DeviceReport::default();
        let slots_before = self.layer.stats().slots_in_use;
        let mut seed = u64::from(id) << 32;
        for _ in 0..self.opts.rounds {
            for &len in &self.opts.sizes {
                for dir in [DmaDirection::ToDevice, DmaDirection::FromDevice, DmaDirection::Bidirectional] {
                    seed += 1;
                    let len = usize::try_from(len).unwrap_or(usize::MAX);
                    if let Err(e) = self.transfer(dev, dref, buf_phys, (len, dir, seed), &mut report) {
                        let key = format!("{} {}: {e}", dir_name(dir), crate::num::size_label(len as u64));
                        *report.map_errors.entry(key).or_default() += 1;
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
        // An accepted device reaches private memory only inside its own buffer (whole IOMMU pages
        // behind an IOMMU, exact bytes without one).
        let max_len = self.opts.sizes.iter().copied().max().unwrap_or(1);
        let (lo, hi) = (buf_phys & !0xfff, (buf_phys + max_len).next_multiple_of(0x1000));
        let private: Vec<PrivateAccess> =
            self.hv.private_accesses().into_iter().filter(|a| a.device == id).collect();
        report.private_accesses = private.len() as u64;
        report.private_outside =
            private.into_iter().filter(|a| a.phys < lo || a.phys + a.len as u64 > hi).collect();
        if self.layer.path_of(dev) == DmaPath::TrustedDirect {
            // Without an IOMMU the platform's trust is the only gate: the device can read its buffer.
            report.probe_skipped_trusted = self.opts.probe;
        } else if self.opts.probe && self.opts.confidential {
            // A hostile device aims at the guest's private buffer itself: the model must refuse it.
            report.probe = Some(match dref.read(buf_phys, 64) {
                Ok(_) => Err(format!("device read private memory at {buf_phys:#x}: containment broken")),
                Err(f) => Ok(f),
            });
        }
        report
    }

    /// Hold one mapping of `len` bytes of the device's buffer and, when the layer grants it, one
    /// coherent page at `coh_phys` while `f` looks at them (for `--svg`), then release both. Returns
    /// what `f` returned and the layer's refusal of the coherent buffer, if any (a 24-bit device
    /// without an IOMMU cannot reach the page: that is an answer, not a failure).
    pub fn hold_live<R>(
        &self,
        dev: &Device,
        (buf_phys, len): (u64, usize),
        coh_phys: u64,
        f: impl FnOnce(&[Live]) -> R,
    ) -> Result<(R, Option<DmaError>), String> {
        // SAFETY: `buf_phys` is this device's own buffer from `hv.alloc` (at least `len` bytes) and its
        // transfers are over, so no other slice of it is alive.
        let buf = unsafe { self.hv.slice_mut(buf_phys, len) };
        let m =
            self.layer.map_to_device(dev, buf, DmaAttrs::NONE).map_err(|e| format!("map for --svg: {e}"))?;
        let mut live = vec![Live { kind: "mapping", bus: m.bus_addr().0, len: len as u64 }];
        // SAFETY: `coh_phys` is a page from `hv.alloc` that nothing else uses; it is freed below.
        let coh = unsafe { self.layer.alloc_coherent(dev, PhysAddr(coh_phys), 1) };
        if let Ok(c) = &coh {
            live.push(Live { kind: "coherent", bus: c.bus_addr().0, len: c.len() as u64 });
        }
        let seen = f(&live);
        let unmapped = m.unmap().map_err(|r| format!("unmap after --svg: {}", r.error));
        let refused = match coh {
            Ok(c) => {
                self.layer.free_coherent(dev, c).map_err(|e| format!("free_coherent after --svg: {e}"))?;
                None
            }
            Err(e) => Some(e),
        };
        unmapped.map(|()| (seen, refused))
    }
}
