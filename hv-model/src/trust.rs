//! The trusted platform's view of devices (the TSM of TDISP: TDX module, AMD-SP, RMM): which devices
//! are bound to the guest and running (TDISP RUN), which the guest has accepted, and what accepted
//! devices did in private memory.
//!
//! An accepted device may reach private memory; every other device faults on it as before
//! (`FaultReason::PrivateTarget`). Behind the IOMMU an accepted device still reaches only what its
//! own window's entries name; without one the platform's trust is the only gate, so the model keeps
//! a log of every private access ([`Hypervisor::private_accesses`]) for tests to check against the
//! guest's live mappings. A device that leaves RUN ([`Hypervisor::tdisp_error`]) loses its acceptance
//! at once: its next access to private memory faults, whatever its window still says.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use ccdma::{DeviceTrust, PhysAddr};

use crate::calls::{CallKind, Injection};
use crate::faults::AccessKind;
use crate::Hypervisor;

/// The status the model answers when a device cannot be accepted (not bound and running).
pub const TDISP_NOT_RUNNING: i64 = -1;

/// One access of an accepted device that landed in private memory (one entry per access and
/// physically contiguous piece).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrivateAccess {
    /// Device id.
    pub device: u32,
    /// Guest physical address of the first byte.
    pub phys: u64,
    /// Bytes.
    pub len: usize,
    /// Read or write.
    pub kind: AccessKind,
}

/// What the trusted platform knows.
#[derive(Default)]
pub(crate) struct TrustModel {
    /// Devices locked, attested, bound to this guest and in TDISP RUN.
    running: Mutex<HashSet<u32>>,
    /// Devices the guest accepted (a subset of `running`).
    accepted: Mutex<HashSet<u32>>,
    /// Every access of an accepted device to private memory.
    log: Mutex<Vec<PrivateAccess>>,
    /// Page pieces each device's successful accesses touched, by the page's state.
    touches: Mutex<HashMap<u32, PageTouches>>,
}

/// How many page pieces (an access split at 4 KiB page boundaries) a device's successful accesses
/// touched in shared and in private memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PageTouches {
    /// Pieces in shared pages (bounce slots, shared coherent buffers).
    pub shared: u64,
    /// Pieces in private pages (an accepted device's own mappings).
    pub private: u64,
}

impl TrustModel {
    pub(crate) fn is_accepted(&self, device: u32) -> bool {
        self.accepted.lock().unwrap().contains(&device)
    }
    /// Count one page piece of a successful access by `device`.
    pub(crate) fn touch(&self, device: u32, private: bool) {
        let mut t = self.touches.lock().unwrap();
        let e = t.entry(device).or_default();
        if private {
            e.private += 1;
        } else {
            e.shared += 1;
        }
    }
    /// Record an access by `device` to private `[phys, phys + len)`, merged with the previous entry
    /// when it continues it (`fresh`: the first piece of a new access).
    pub(crate) fn record(&self, device: u32, phys: u64, len: usize, kind: AccessKind, fresh: bool) {
        let mut log = self.log.lock().unwrap();
        if let Some(last) = log
            .last_mut()
            .filter(|l| !fresh && l.device == device && l.kind == kind && l.phys + l.len as u64 == phys)
        {
            last.len += len;
            return;
        }
        log.push(PrivateAccess { device, phys, len, kind });
    }
}

impl Hypervisor {
    /// The TSM has locked, attested and started device `id` for this guest (TDISP RUN): the guest
    /// may now accept it.
    pub fn tdisp_bind(&self, id: u32) {
        self.trust.running.lock().unwrap().insert(id);
    }
    /// Device `id` leaves RUN (error, reset, unbind): the platform withdraws its acceptance at once,
    /// whatever the guest believes, so its next private access faults.
    pub fn tdisp_error(&self, id: u32) {
        self.trust.running.lock().unwrap().remove(&id);
        self.trust.accepted.lock().unwrap().remove(&id);
    }
    /// True while device `id` is accepted.
    pub fn is_accepted(&self, id: u32) -> bool {
        self.trust.is_accepted(id)
    }
    /// Page pieces device `id`'s successful accesses touched, shared and private (in a confidential
    /// guest; outside one every page counts as shared).
    pub fn page_touches(&self, id: u32) -> PageTouches {
        self.trust.touches.lock().unwrap().get(&id).copied().unwrap_or_default()
    }
    /// Every access an accepted device made to private memory, in order.
    pub fn private_accesses(&self) -> Vec<PrivateAccess> {
        self.trust.log.lock().unwrap().clone()
    }
}

/// The status an injected TDISP call fails with (`None`: it lies, reporting success and doing
/// nothing).
fn trust_failure(inj: Injection) -> Option<i64> {
    match inj {
        Injection::LieSuccess => None,
        Injection::Fail(code) | Injection::Partial { code, .. } | Injection::Busy(code) => Some(code),
        _ => Some(-1),
    }
}

impl DeviceTrust for Hypervisor {
    fn accept_device(&self, device: u32) -> Result<(), i64> {
        if let Some(inj) = self.calls.enter(CallKind::TdispAccept) {
            if let Some(code) = trust_failure(inj) {
                return Err(code);
            }
            return Ok(()); // a lie: reported accepted, nothing changed
        }
        if !self.config().confidential || !self.trust.running.lock().unwrap().contains(&device) {
            return Err(TDISP_NOT_RUNNING);
        }
        self.trust.accepted.lock().unwrap().insert(device);
        Ok(())
    }
    fn revoke_device(&self, device: u32) -> Result<(), i64> {
        if let Some(inj) = self.calls.enter(CallKind::TdispRevoke) {
            if let Some(code) = trust_failure(inj) {
                return Err(code); // the device stays accepted
            }
            return Ok(()); // a lie: reported revoked, the device stays accepted
        }
        self.trust.accepted.lock().unwrap().remove(&device);
        Ok(())
    }
    fn private_bus_addr(&self, phys: PhysAddr) -> ccdma::BusAddr {
        // The model's devices see private memory by physical address (no encryption bit).
        ccdma::BusAddr(phys.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{FaultReason, HvConfig, Region};

    #[test]
    fn only_a_running_device_is_accepted_and_only_accepted_devices_reach_private_memory() {
        let hv = Hypervisor::new(HvConfig::tdx(1 << 33));
        let dev = hv.add_device(1, 64);
        let phys = hv.alloc(3 * crate::PAGE, Region::High);
        assert_eq!(hv.accept_device(1), Err(TDISP_NOT_RUNNING));
        assert_eq!(dev.read(phys, 8).unwrap_err().reason, FaultReason::PrivateTarget);
        hv.tdisp_bind(1);
        hv.accept_device(1).unwrap();
        // One access across three pages is one logged entry; a second access is another.
        dev.write(phys + 100, &[7; 2 * crate::PAGE as usize]).unwrap();
        dev.read(phys + 100, 8).unwrap();
        let log = hv.private_accesses();
        assert_eq!(log.len(), 2, "{log:?}");
        assert_eq!((log[0].phys, log[0].len, log[0].kind), (phys + 100, 8192, AccessKind::Write));
        assert_eq!(hv.page_touches(1), PageTouches { shared: 0, private: 4 });
        // The device leaves RUN: acceptance is gone at once, and accepting again is refused.
        hv.tdisp_error(1);
        assert!(!hv.is_accepted(1));
        assert_eq!(dev.read(phys, 8).unwrap_err().reason, FaultReason::PrivateTarget);
        assert_eq!(hv.accept_device(1), Err(TDISP_NOT_RUNNING));
        assert_eq!(hv.private_accesses().len(), 2, "refused accesses are not logged as reached");
    }
}
