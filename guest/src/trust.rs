//! Trusted device I/O: a device the platform has accepted (TDISP with PCIe IDE: Intel TDX Connect,
//! AMD SEV-TIO, Arm CCA device assignment) reaches private memory directly, while every other device
//! on the same layer keeps bouncing.
//!
//! What the guest trusts is the platform's answer, never a flag of its own: [`DmaLayer::accept`] asks
//! [`DeviceTrust::accept_device`] (the TSM says the device is locked, attested, bound and in the
//! TDISP RUN state) and the device stays untrusted unless the answer is yes.
//! [`DeviceConfig::trusted`](crate::DeviceConfig::trusted) changes nothing here.
//!
//! An accepted device ([`TrustState::Accepted`]) maps private buffers in place: no bounce, no
//! shared page. Behind an IOMMU each mapping gets entries of its own naming the buffer's private
//! pages with the direction's permission, cleared at unmap ([`DmaPath::TrustedIommu`]); the entries
//! cover the whole IOMMU pages around the buffer, so the device may reach the bytes that share a page
//! with it: it is trusted, that is the point, and those entries live only in its own window, never
//! in an untrusted device's. Without an IOMMU the bus address is the buffer's private address
//! ([`DeviceTrust::private_bus_addr`], [`DmaPath::TrustedDirect`]): the platform's trust is then the
//! only gate, and the layer hands the device only the addresses of its live mappings. A buffer
//! beyond the device's mask is bounced, as for an untrusted device. A mapping or coherent buffer
//! with [`DmaAttrs::CC_SHARED`](crate::DmaAttrs::CC_SHARED) is shared as for an untrusted device (a
//! ring the host reads too). Scatter-gather lists of an accepted device still bounce.
//!
//! The trust state changes only while the device is quiesced: [`DmaLayer::accept`] and
//! [`DmaLayer::revoke`] take `&mut Device`, so no [`Mapping`](crate::Mapping) (which borrows the
//! device) can be live, and they still refuse while the raw face or a coherent buffer holds
//! anything ([`DmaError::Busy`]). Revoke clears every entry of the device's window that may name
//! private memory before it returns.
//!
//! ```
//! # use ccdma::*;
//! # use ccdma_hv_model::{HvConfig, Hypervisor, Region};
//! # let hv: &'static Hypervisor = Box::leak(Box::new(Hypervisor::new(HvConfig::tdx(1 << 33))));
//! # let mut layer = DmaLayer::new(hv);
//! # let meta = vec![SlotMeta::EMPTY; 512].leak();
//! # // SAFETY: the model never hands this range out.
//! # unsafe { layer.add_pool(PhysAddr(0x80_0000), 1 << 20, meta, PoolConfig::default()) }.unwrap();
//! let model_dev = hv.add_device(1, 64);
//! hv.tdisp_bind(1); // the TSM has attested the device and put it in RUN
//! let mut dev = layer.attach(DeviceConfig::new(1, DmaMask::BITS_64))?;
//! layer.accept(&mut dev)?;
//! assert_eq!(dev.path(), DmaPath::TrustedDirect);
//! # let phys = hv.alloc(4096, Region::High);
//! # // SAFETY: a fresh allocation.
//! # let buf = unsafe { hv.slice_mut(phys, 4096) };
//! let m = layer.map(&dev, buf, DmaDirection::FromDevice, DmaAttrs::NONE)?;
//! assert_eq!(m.bus_addr().0, phys); // the private buffer itself, no bounce
//! model_dev.write(m.bus_addr().0, b"direct").unwrap();
//! m.unmap().map_err(|r| r.error)?;
//! layer.revoke(&mut dev)?;
//! assert_eq!(dev.path(), DmaPath::BounceAlways);
//! # Ok::<(), ccdma::DmaError>(())
//! ```
//!
//! A live mapping borrows the device, so it cannot be accepted or revoked meanwhile:
//!
//! ```compile_fail,E0502
//! # use ccdma::*;
//! fn busy<P: Platform>(layer: &DmaLayer<'_, P>, dev: &mut Device, buf: &mut [u8]) {
//!     let m = layer.map(dev, buf, DmaDirection::FromDevice, DmaAttrs::NONE).unwrap();
//!     let _ = layer.revoke(dev); // error: `*dev` is also borrowed as immutable
//!     drop(m);
//! }
//! ```

use crate::addr::{BusAddr, PhysAddr};
use crate::device::Device;
use crate::error::DmaError;
use crate::iommu::bus_space::RangeKind;
use crate::layer::DmaLayer;
use crate::path::{self, DdwOutcome, DmaPath, IommuFacts, PathChoice, PathFacts};
use crate::platform::Platform;

/// The trusted platform's side of device acceptance (the TSM: TDX module, AMD-SP, RMM).
///
/// An implementation answers from the trusted platform component, never from the untrusted
/// hypervisor alone: the layer lets an accepted device reach private memory on its word.
pub trait DeviceTrust: Sync {
    /// Accept device `device` ([`DeviceConfig::id`](crate::DeviceConfig::id)) for direct access to
    /// private memory: `Ok` only when the platform has bound it to this guest and it is running
    /// under TDISP with its link protected (IDE). `Err(status)` otherwise.
    fn accept_device(&self, device: u32) -> Result<(), i64>;
    /// Withdraw the acceptance: from now on the platform refuses the device's accesses to private
    /// memory. Idempotent (revoking a device that is not accepted succeeds).
    fn revoke_device(&self, device: u32) -> Result<(), i64>;
    /// The bus address an accepted device without IOMMU uses for private memory at `phys` (the
    /// platform's private encoding, e.g. with the SEV C-bit set). Identity by default.
    fn private_bus_addr(&self, phys: PhysAddr) -> BusAddr {
        BusAddr(phys.0)
    }
}

/// Whether a device may reach private memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TrustState {
    /// Every buffer is shared or bounced (the paths of DESIGN.md's table).
    #[default]
    Untrusted,
    /// Accepted by the platform: private buffers are mapped in place.
    Accepted,
}

impl TrustState {
    /// True when accepted.
    pub const fn is_accepted(self) -> bool {
        matches!(self, TrustState::Accepted)
    }
    /// The path a device with untrusted path `path` has in this state.
    pub(crate) const fn path_over(self, path: DmaPath, iommu: bool) -> DmaPath {
        match (self, iommu) {
            (TrustState::Untrusted, _) => path,
            (TrustState::Accepted, true) => DmaPath::TrustedIommu,
            (TrustState::Accepted, false) => DmaPath::TrustedDirect,
        }
    }
}

impl<'m, P: Platform> DmaLayer<'m, P> {
    /// Accept `dev` for direct access to private memory, on the platform's word
    /// ([`DeviceTrust::accept_device`]). Accepting an accepted device does nothing.
    ///
    /// Refused, nothing changed: while the device has anything live ([`DmaError::Busy`]); when the
    /// guest is not confidential or the platform has no trusted I/O ([`DmaError::TrustUnavailable`]);
    /// when the platform says no ([`DmaError::AcceptRefused`]). A deferred device is attached to its
    /// IOMMU domain here (its mappings need the window).
    pub fn accept(&self, dev: &mut Device) -> Result<(), DmaError> {
        self.check_device(dev)?;
        if dev.trust.is_accepted() {
            return Ok(());
        }
        let live = dev.live();
        if live != 0 {
            return Err(DmaError::Busy { live });
        }
        let confidential = self.platform.is_confidential();
        let trust =
            self.platform.device_trust().filter(|_| confidential).ok_or(DmaError::TrustUnavailable)?;
        let mut iommu = None;
        if dev.domain.is_some() {
            let info = self.ensure_attached(dev)?;
            // Its private mappings get entries in the window for per-mapping entries.
            info.dynamic.ok_or(DmaError::Iommu(crate::IommuError::NoWindow))?;
            (dev.path, dev.pools) = (info.path, info.pools);
            iommu = Some(IommuFacts {
                premapped: info.path != DmaPath::IommuStrict,
                ddw: DdwOutcome::NotTried,
                ddw_wanted: false,
                pool_fits_default: info.path != DmaPath::IommuStrict,
                default_has_room: true,
            });
        }
        let facts = PathFacts {
            confidential,
            mask_covers_ram: false,
            reachable_pools: dev.pools.iter().count(),
            iommu,
            accepted: true,
        };
        let PathChoice::Trusted(path, reason) = path::choose(&facts) else {
            return Err(DmaError::TrustUnavailable);
        };
        trust.accept_device(dev.config.id).map_err(|status| {
            log::warn!("ccdma: the platform refused to accept device {:#x} ({status})", dev.config.id);
            DmaError::AcceptRefused { device: dev.config.id, status }
        })?;
        dev.trust = TrustState::Accepted;
        log::info!("ccdma: device {:#x} accepted -> {} ({reason})", dev.config.id, path.name());
        Ok(())
    }

    /// Revoke `dev`'s acceptance: it is untrusted again (its buffers bounce on its attach-time path).
    /// Revoking an untrusted device does nothing.
    ///
    /// Refused, nothing changed, while the device has anything live ([`DmaError::Busy`]) or when an
    /// entry of its window that may name private memory (left by a mapping whose entries could not
    /// be cleared) still cannot be cleared ([`DmaError::Iommu`]): no untrusted device ever has a
    /// private page in its window. If the platform's own revoke fails the layer still treats the
    /// device as untrusted and says so ([`DmaError::RevokeRefused`]).
    pub fn revoke(&self, dev: &mut Device) -> Result<(), DmaError> {
        self.check_device(dev)?;
        if !dev.trust.is_accepted() {
            return Ok(());
        }
        let live = dev.live();
        if live != 0 {
            return Err(DmaError::Busy { live });
        }
        self.clear_private_leftovers(dev)?;
        dev.trust = TrustState::Untrusted;
        let trust = self.platform.device_trust().ok_or(DmaError::TrustUnavailable)?;
        if let Err(status) = trust.revoke_device(dev.config.id) {
            log::error!("ccdma: the platform failed to revoke device {:#x} ({status})", dev.config.id);
            return Err(DmaError::RevokeRefused { device: dev.config.id, status });
        }
        log::info!("ccdma: device {:#x} revoked -> {}", dev.config.id, dev.path().name());
        Ok(())
    }

    /// Clear and free the device's quarantined ranges that name memory outside every pool (private
    /// pages a trusted mapping or coherent buffer left behind when its entries would not clear).
    /// Ranges naming pool memory stay quarantined as they were (they name only shared memory).
    fn clear_private_leftovers(&self, dev: &Device) -> Result<(), DmaError> {
        let Some(d) = dev.domain else { return Ok(()) };
        let (Some(slot), Some(info)) = (self.slot(d), self.domain_info(d)) else { return Ok(()) };
        let Some(win) = info.dynamic else { return Ok(()) };
        let tce = self.backend().ok_or(DmaError::Iommu(crate::IommuError::NoWindow))?;
        loop {
            let leftover = slot.space.lock().ranges().iter().copied().find(|r| {
                matches!(r.kind, RangeKind::Quarantined | RangeKind::Private)
                    && !self.pools().any(|p| r.phys >= p.phys().0 && r.phys < p.phys().0 + p.len() as u64)
            });
            let Some(r) = leftover else { return Ok(()) };
            tce.clear(&win, r.start, r.len >> win.page_shift).map_err(|e| {
                log::warn!(
                    "ccdma: revoke of device {:#x}: entries at {:#x} will not clear",
                    dev.config.id,
                    r.start
                );
                DmaError::Iommu(e)
            })?;
            slot.space.lock().free(r.start, r.len, r.kind);
        }
    }
}
