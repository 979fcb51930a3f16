//! ccdma-hv-model: the hypervisor as a confidential guest sees it, modelled on the host.
//!
//! Guest memory is sparse with a state per page (private, shared, pending accept/validation); sharing is
//! offered in the pseries (`UV_SHARE_PAGE`), TDX (`MapGPA` + accept), SEV-SNP (Page State Change +
//! `PVALIDATE`) or Arm CCA (`RSI_IPA_STATE_SET`) personality; devices are DMA engines with masks whose
//! every access is checked and, when refused, logged in the fault log. Every call can be made to fail,
//! partially succeed, lie, or stall. A trusted platform (`trust`) binds devices under TDISP and lets
//! the ones the guest accepts reach private memory, logging every such access. The model implements
//! ccdma's platform traits, so the guest layer runs against it unchanged.
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

pub mod calls;
mod cca;
pub mod device;
pub mod faults;
mod ledger;
pub mod memory;
pub mod p2p;
mod platform;
mod sharing;
mod snp;
pub mod source;
pub mod tce;
pub mod trust;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

pub use calls::{CallKind, CallLog, Injection};
pub use cca::CCA_POISON;
pub use device::{BusTranslate, DeviceRef, DirectTranslate};
pub use faults::{AccessKind, Fault, FaultReason, CPU};
pub use ledger::SharingLedger;
pub use memory::{GuestMemory, PageState, PAGE};
pub use sharing::{TDX_INVALID_OPERAND, U_PARAMETER};
pub use snp::SNP_POISON;
pub use source::{ModelSource, SourceCounters};
pub use tce::{Reach, TableInfo, TceConfig, TceCounters};
pub use trust::{PageTouches, PrivateAccess, TDISP_NOT_RUNNING};

use ccdma::BusEncoding;

/// Which confidential-computing interface the model offers for sharing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Personality {
    /// pseries Secure VM: ultracalls.
    Pseries,
    /// Intel TDX: `MapGPA` + accept.
    Tdx,
    /// AMD SEV-SNP: `PVALIDATE` + Page State Change requests (GHCB MSR protocol and shared buffer).
    Snp,
    /// Arm CCA realm: `RSI_IPA_STATE_SET`.
    Cca,
}

impl Personality {
    /// Every personality.
    pub const ALL: [Personality; 4] =
        [Personality::Pseries, Personality::Tdx, Personality::Snp, Personality::Cca];
}

/// How to build a model.
#[derive(Clone, Copy, Debug)]
pub struct HvConfig {
    /// Guest RAM in bytes (page multiple).
    pub ram: u64,
    /// Confidential guest (devices reach only shared pages)?
    pub confidential: bool,
    /// Sharing interface.
    pub personality: Personality,
    /// Bus encoding for devices without IOMMU (identity, or SEV C-bit clear).
    pub bus_encoding: BusEncoding,
    /// TDX: the most pages one `MapGPA` converts before answering RETRY (None: all).
    pub tdx_pages_per_call: Option<u64>,
    /// SEV-SNP: the most entries one GHCB Page State Change request processes before returning with
    /// `cur_entry` short of the end (None: all).
    pub snp_entries_per_call: Option<u16>,
    /// Arm CCA: the most granules one `RSI_IPA_STATE_SET` changes before returning a new base short of
    /// the top (None: all).
    pub cca_granules_per_call: Option<u64>,
}

impl HvConfig {
    /// A confidential pseries guest with `ram` bytes.
    pub fn pseries(ram: u64) -> HvConfig {
        HvConfig {
            ram,
            confidential: true,
            personality: Personality::Pseries,
            bus_encoding: BusEncoding::IDENTITY,
            tdx_pages_per_call: None,
            snp_entries_per_call: None,
            cca_granules_per_call: None,
        }
    }
    /// A confidential TDX guest with `ram` bytes.
    pub fn tdx(ram: u64) -> HvConfig {
        HvConfig { personality: Personality::Tdx, ..HvConfig::pseries(ram) }
    }
    /// A confidential SEV-SNP guest with `ram` bytes; bus addresses clear the C-bit (bit 51).
    pub fn snp(ram: u64) -> HvConfig {
        HvConfig {
            personality: Personality::Snp,
            bus_encoding: BusEncoding::sev(SNP_C_BIT),
            ..HvConfig::pseries(ram)
        }
    }
    /// A confidential Arm CCA realm with `ram` bytes and [`CCA_IPA_BITS`]-bit IPAs; devices reach shared
    /// memory through the unprotected alias (top IPA bit set).
    pub fn cca(ram: u64) -> HvConfig {
        let alias = BusEncoding::cca(CCA_IPA_BITS).unwrap_or(BusEncoding::IDENTITY);
        HvConfig { personality: Personality::Cca, bus_encoding: alias, ..HvConfig::pseries(ram) }
    }
    /// A confidential guest of `personality` with its default bus encoding.
    pub fn confidential(personality: Personality, ram: u64) -> HvConfig {
        match personality {
            Personality::Pseries => HvConfig::pseries(ram),
            Personality::Tdx => HvConfig::tdx(ram),
            Personality::Snp => HvConfig::snp(ram),
            Personality::Cca => HvConfig::cca(ram),
        }
    }
    /// A guest that is not confidential (devices reach all RAM).
    pub fn plain(ram: u64) -> HvConfig {
        HvConfig { confidential: false, ..HvConfig::pseries(ram) }
    }
}

/// The modelled hypervisor.
pub struct Hypervisor {
    config: HvConfig,
    pub(crate) mem: GuestMemory,
    pub(crate) calls: CallLog,
    pub(crate) faults: Mutex<Vec<Fault>>,
    pub(crate) devices: Mutex<HashMap<u32, device::DeviceState>>,
    pub(crate) device_bytes_read: AtomicU64,
    pub(crate) device_bytes_written: AtomicU64,
    alloc_low: AtomicU64,
    alloc_high: AtomicU64,
    /// The IOMMU (TCE tables), off until `enable_iommu`.
    pub(crate) iommu: tce::IommuModel,
    /// The trusted platform's view of devices (TDISP), off until a device is bound.
    pub(crate) trust: trust::TrustModel,
    /// Every sharing conversion, checked and counted.
    pub(crate) ledger: ledger::Ledger,
}

/// The C-bit of the modelled SEV-SNP guest (CPUID 0x8000001F EBX bits 5:0 on current EPYC parts).
pub const SNP_C_BIT: u32 = 51;
/// The IPA width of the modelled Arm CCA realm: the shared alias sets bit 47.
pub const CCA_IPA_BITS: u32 = 48;

/// Where [`Hypervisor::alloc`] places guest buffers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Region {
    /// Below 4 GiB.
    Low,
    /// At or above 4 GiB (falls back to low RAM in guests of 4 GiB or less).
    High,
}

/// Guest buffers handed out by [`Hypervisor::alloc`] start here (room below for pools at fixed places).
pub const ALLOC_LOW_START: u64 = 0x4000_0000;
/// ... and here above 4 GiB.
pub const ALLOC_HIGH_START: u64 = 0x1_4000_0000;

impl Hypervisor {
    /// A new model.
    pub fn new(config: HvConfig) -> Hypervisor {
        Hypervisor {
            config,
            mem: GuestMemory::new(config.ram),
            calls: CallLog::default(),
            faults: Mutex::new(Vec::new()),
            devices: Mutex::new(HashMap::new()),
            device_bytes_read: AtomicU64::new(0),
            device_bytes_written: AtomicU64::new(0),
            alloc_low: AtomicU64::new(ALLOC_LOW_START),
            alloc_high: AtomicU64::new(ALLOC_HIGH_START),
            iommu: Default::default(),
            trust: Default::default(),
            ledger: Default::default(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &HvConfig {
        &self.config
    }
    /// Guest memory (guest-side access and page states).
    pub fn memory(&self) -> &GuestMemory {
        &self.mem
    }
    /// Counters and fault injection.
    pub fn calls(&self) -> &CallLog {
        &self.calls
    }

    /// Every refused device access so far.
    pub fn faults(&self) -> Vec<Fault> {
        self.faults.lock().unwrap().clone()
    }
    /// Forget the fault log.
    pub fn clear_faults(&self) {
        self.faults.lock().unwrap().clear();
    }
    /// Faults of the guest CPU using a page it had not re-validated or re-accepted (never, for a correct
    /// guest).
    pub fn unvalidated_faults(&self) -> usize {
        self.faults.lock().unwrap().iter().filter(|f| f.reason == FaultReason::Unvalidated).count()
    }
    /// Log a guest fault for every page of `[phys, phys + len)` converted to private that the guest has
    /// not re-validated or re-accepted.
    pub(crate) fn check_guest_use(&self, phys: u64, len: u64, kind: AccessKind) {
        for page in self.mem.unaccepted_in(phys, len) {
            self.faults.lock().unwrap().push(Fault {
                device: CPU,
                bus: page,
                kind,
                reason: FaultReason::Unvalidated,
            });
        }
    }
    /// Log a guest fault for every page of `[phys, phys + len)` the hypervisor still shares, on the
    /// personalities where the guest can know (see [`FaultReason::StillShared`]).
    pub(crate) fn check_taken_back(&self, phys: u64, len: u64) {
        if !matches!(self.config.personality, Personality::Snp | Personality::Cca) {
            return;
        }
        for page in (0..len / PAGE).map(|i| phys + i * PAGE) {
            if self.mem.state(page) == PageState::Shared {
                let f = Fault {
                    device: CPU,
                    bus: page,
                    kind: AccessKind::Write,
                    reason: FaultReason::StillShared,
                };
                self.faults.lock().unwrap().push(f);
            }
        }
    }
    /// Faults that targeted private memory (invariant 1 says: never, for a correct guest).
    pub fn private_faults(&self) -> usize {
        self.faults.lock().unwrap().iter().filter(|f| f.reason == FaultReason::PrivateTarget).count()
    }
    /// Pages shared now.
    pub fn shared_pages(&self) -> u64 {
        self.mem.shared_pages()
    }
    /// Bytes devices read / wrote successfully.
    pub fn device_bytes(&self) -> (u64, u64) {
        (self.device_bytes_read.load(Ordering::Relaxed), self.device_bytes_written.load(Ordering::Relaxed))
    }

    /// Add a device with a DMA mask of `mask_bits`, reaching memory directly (no IOMMU).
    pub fn add_device(&self, id: u32, mask_bits: u32) -> DeviceRef<'_> {
        let e = self.config.bus_encoding;
        self.add_device_with(id, mask_bits, Arc::new(DirectTranslate { set: e.set, clear: e.clear }))
    }

    /// Add a device whose accesses go through `translate` (e.g. a TCE window).
    pub fn add_device_with(
        &self,
        id: u32,
        mask_bits: u32,
        translate: Arc<dyn BusTranslate>,
    ) -> DeviceRef<'_> {
        self.devices.lock().unwrap().insert(id, device::DeviceState { mask_bits, translate });
        DeviceRef { hv: self, id }
    }

    /// Rebind a device to another translation (attach to a window).
    pub fn bind_device(&self, id: u32, translate: Arc<dyn BusTranslate>) {
        if let Some(d) = self.devices.lock().unwrap().get_mut(&id) {
            d.translate = translate;
        }
    }

    /// A handle to an existing device.
    pub fn device(&self, id: u32) -> DeviceRef<'_> {
        assert!(self.devices.lock().unwrap().contains_key(&id), "unknown device {id}");
        DeviceRef { hv: self, id }
    }

    /// Hand out `len` bytes of private guest RAM (page aligned, never handed out twice).
    pub fn alloc(&self, len: u64, region: Region) -> u64 {
        let len = len.div_ceil(PAGE) * PAGE;
        let high = region == Region::High && self.config.ram > ALLOC_HIGH_START;
        let cursor = if high { &self.alloc_high } else { &self.alloc_low };
        let at = cursor.fetch_add(len, Ordering::Relaxed);
        let limit = if high { self.config.ram } else { self.config.ram.min(1 << 32) };
        let start = if high { ALLOC_HIGH_START } else { ALLOC_LOW_START };
        assert!(
            at.checked_add(len).is_some_and(|end| end <= limit),
            "model guest RAM exhausted: alloc({len:#x}, {region:?}) at {at:#x} passes the end {limit:#x} \
             (RAM {ram:#x}; {region:?} allocations start at {start:#x}: give the model more RAM, e.g. \
             HvConfig::pseries(6 << 30))",
            ram = self.config.ram,
        );
        at
    }

    /// A guest buffer as a mutable slice (guest-side access to memory handed out by [`Self::alloc`]).
    ///
    /// # Safety
    /// `[phys, phys + len)` must not be aliased by another live slice; `alloc` never hands out the
    /// same range twice, so slices of distinct allocations are fine.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn slice_mut(&self, phys: u64, len: usize) -> &mut [u8] {
        let p = self.mem.ptr(phys, len as u64).expect("slice outside guest RAM");
        // SAFETY: inside the mapping; exclusivity is the caller's promise.
        unsafe { std::slice::from_raw_parts_mut(p.as_ptr(), len) }
    }
}

#[cfg(test)]
mod alloc_message_tests {
    use super::*;

    /// Issue 22: a model too small for its allocator says where allocations start and how much RAM
    /// it has, instead of only "exhausted".
    #[test]
    fn a_model_too_small_to_allocate_names_the_start_and_the_ram() {
        let hv = Hypervisor::new(HvConfig::pseries(1 << 30));
        let err = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| hv.alloc(4096, Region::Low)))
            .expect_err("1 GiB of RAM has nothing to allocate from");
        let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(msg.contains("start at 0x40000000") && msg.contains("RAM 0x40000000"), "{msg}");
    }
}
