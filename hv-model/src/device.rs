//! Device DMA engines. Every access is translated page by page (directly, or through whatever
//! [`BusTranslate`] the device is bound to, e.g. a TCE window), checked against the device's mask and
//! the page state of its target, and refused with a logged [`Fault`] when any check fails. A refused
//! access changes nothing.

use std::sync::Arc;

use crate::faults::{AccessKind, Fault, FaultReason};
use crate::memory::{PageState, PAGE};
use crate::Hypervisor;

/// Turns a device's bus address into a guest physical address, or refuses.
pub trait BusTranslate: Send + Sync {
    /// Translate the page holding `bus` for an access of `kind` by `device`; returns the guest
    /// physical address of `bus` itself.
    fn translate(&self, device: u32, bus: u64, kind: AccessKind) -> Result<u64, FaultReason>;
}

/// No IOMMU: bus address = physical address with some bits set/cleared (SEV C-bit).
#[derive(Clone, Copy, Debug, Default)]
pub struct DirectTranslate {
    /// Bits the platform sets in bus addresses.
    pub set: u64,
    /// Bits the platform clears in bus addresses.
    pub clear: u64,
}

impl BusTranslate for DirectTranslate {
    fn translate(&self, _device: u32, bus: u64, _kind: AccessKind) -> Result<u64, FaultReason> {
        Ok(bus & !self.set & !self.clear)
    }
}

/// A device as the model keeps it.
#[derive(Clone)]
pub(crate) struct DeviceState {
    pub mask_bits: u32,
    pub translate: Arc<dyn BusTranslate>,
}

/// A handle to one device of the model: it performs DMA like hardware would, honest or hostile.
#[derive(Clone, Copy)]
pub struct DeviceRef<'h> {
    pub(crate) hv: &'h Hypervisor,
    pub(crate) id: u32,
}

impl<'h> DeviceRef<'h> {
    /// The device id.
    pub fn id(&self) -> u32 {
        self.id
    }

    fn state(&self) -> DeviceState {
        self.hv.devices.lock().unwrap().get(&self.id).cloned().expect("unknown device")
    }

    /// Check every page of the access and return the physical address of each piece, its length,
    /// and whether it is private memory an accepted device may reach.
    fn resolve(&self, bus: u64, len: usize, kind: AccessKind) -> Result<Vec<(u64, usize, bool)>, Fault> {
        let st = self.state();
        let fault = |at: u64, reason| Fault { device: self.id, bus: at, kind, reason };
        let max = if st.mask_bits >= 64 { u64::MAX } else { (1u64 << st.mask_bits) - 1 };
        let mut pieces = Vec::new();
        let mut cur = bus;
        let end = bus.checked_add(len as u64).ok_or(fault(bus, FaultReason::AboveMask))?;
        while cur < end {
            let chunk = ((PAGE - cur % PAGE).min(end - cur)) as usize;
            if cur + chunk as u64 - 1 > max {
                return Err(fault(cur, FaultReason::AboveMask));
            }
            let phys = st.translate.translate(self.id, cur, kind).map_err(|r| fault(cur, r))?;
            if !self.hv.mem.contains(phys, chunk as u64) {
                return Err(fault(cur, FaultReason::OutsideRam));
            }
            // Outside a confidential guest every page is reachable; inside, only shared ones, and
            // private ones for a device the trusted platform has accepted (`trust.rs`).
            let state = self.hv.mem.state(phys);
            let private = self.hv.config().confidential && state != PageState::Shared;
            if private && !(state == PageState::Private && self.hv.trust.is_accepted(self.id)) {
                return Err(fault(cur, FaultReason::PrivateTarget));
            }
            pieces.push((phys, chunk, private));
            cur += chunk as u64;
        }
        Ok(pieces)
    }

    fn refuse(&self, f: Fault) -> Fault {
        self.hv.faults.lock().unwrap().push(f);
        f
    }

    /// DMA read of `len` bytes at `bus` (data going to the device).
    pub fn read(&self, bus: u64, len: usize) -> Result<Vec<u8>, Fault> {
        let pieces = self.resolve(bus, len, AccessKind::Read).map_err(|f| self.refuse(f))?;
        let mut out = Vec::with_capacity(len);
        for (i, (phys, n, private)) in pieces.into_iter().enumerate() {
            self.hv.trust.touch(self.id, private);
            if private {
                self.hv.trust.record(self.id, phys, n, AccessKind::Read, i == 0);
            }
            out.extend_from_slice(&self.hv.mem.read(phys, n));
        }
        self.hv.device_bytes_read.fetch_add(len as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(out)
    }

    /// DMA write of `data` at `bus` (data coming from the device). All or nothing.
    pub fn write(&self, bus: u64, data: &[u8]) -> Result<(), Fault> {
        let pieces = self.resolve(bus, data.len(), AccessKind::Write).map_err(|f| self.refuse(f))?;
        let mut off = 0;
        for (i, (phys, n, private)) in pieces.into_iter().enumerate() {
            self.hv.trust.touch(self.id, private);
            if private {
                self.hv.trust.record(self.id, phys, n, AccessKind::Write, i == 0);
            }
            self.hv.mem.write(phys, &data[off..off + n]);
            off += n;
        }
        self.hv.device_bytes_written.fetch_add(data.len() as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Hostile: write `data` and then `extra` more bytes of `fill` past it (a device ignoring the
    /// length it was given).
    pub fn write_past(&self, bus: u64, data: &[u8], extra: usize, fill: u8) -> Result<(), Fault> {
        let mut v = data.to_vec();
        v.resize(data.len() + extra, fill);
        self.write(bus, &v)
    }

    /// Hostile: write only the first `n` bytes of `data` (a device that writes less than asked).
    pub fn write_short(&self, bus: u64, data: &[u8], n: usize) -> Result<(), Fault> {
        self.write(bus, &data[..n.min(data.len())])
    }

    /// Probe: would a one-byte access at `bus` succeed? Logs a fault if not (like any access).
    pub fn probe(&self, bus: u64, kind: AccessKind) -> bool {
        match kind {
            AccessKind::Read => self.read(bus, 1).is_ok(),
            AccessKind::Write => {
                // A probe write must not change memory: read the byte first (when allowed) and write
                // it back; if the read is refused the write is tried with a zero byte.
                let old = self.resolve(bus, 1, AccessKind::Read).ok().map(|p| self.hv.mem.read(p[0].0, 1)[0]);
                self.write(bus, &[old.unwrap_or(0)]).is_ok()
            }
        }
    }
}
