//! Accepting and revoking a device ([`crate::trust`]): the platform's answer decides, and the state
//! changes only while the device is quiesced (`&mut Device`, and nothing live on the raw face or in
//! coherent buffers). Revoke clears every entry of the device's window that may name private memory
//! before it returns.

use crate::device::Device;
use crate::error::DmaError;
use crate::iommu::bus_space::RangeKind;
use crate::layer::DmaLayer;
use crate::layer::{Cold, FullCold};
use crate::path::{self, DdwOutcome, DmaPath, IommuFacts, PathChoice, PathFacts};
use crate::platform::Platform;
use crate::trust::TrustState;

impl<'a, 'm, const POOLS: usize, const DOMAINS: usize, const AREAS: usize>
    Cold<'a, 'm, POOLS, DOMAINS, AREAS>
{
    /// [`DmaLayer::accept`], over the platform as `&dyn Platform`.
    pub(crate) fn accept_dyn(&self, dev: &mut Device) -> Result<(), DmaError> {
        crate::parts::require(crate::parts::TRUSTED, "trusted-devices")?;
        let _masked = self.masked();
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
            (dev.path, dev.pools) = (info.path, info.pools.widen());
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
        // Devices sharing its IOMMU endpoint would reach its private pages: refused while it does not
        // have the endpoint to itself, and no other device joins while it is accepted.
        self.mark_accepted(dev, true)?;
        trust.accept_device(dev.config.id).map_err(|status| {
            log::warn!("ccdma: the platform refused to accept device {:#x} ({status})", dev.config.id);
            let _ = self.mark_accepted(dev, false);
            DmaError::AcceptRefused { device: dev.config.id, status }
        })?;
        dev.trust = TrustState::Accepted;
        log::info!("ccdma: device {:#x} accepted -> {} ({reason})", dev.config.id, path.name());
        Ok(())
    }

    /// [`DmaLayer::revoke`], over the platform as `&dyn Platform`.
    pub(crate) fn revoke_dyn(&self, dev: &mut Device) -> Result<(), DmaError> {
        let _masked = self.masked();
        self.check_device(dev)?;
        match dev.trust {
            TrustState::Untrusted => return Ok(()),
            // Nothing of the trusted paths is live (the state is untrusted already): only the
            // platform's answer is missing.
            TrustState::RevokePending => {}
            TrustState::Accepted => {
                let live = dev.live();
                if live != 0 {
                    return Err(DmaError::Busy { live });
                }
                self.clear_private_leftovers(dev)?;
                dev.trust = TrustState::RevokePending;
                // No entry of the endpoint names its private pages any more: others may join.
                let _ = self.mark_accepted(dev, false);
            }
        }
        let trust = self.platform.device_trust().ok_or(DmaError::TrustUnavailable)?;
        if let Err(status) = trust.revoke_device(dev.config.id) {
            log::error!("ccdma: the platform failed to revoke device {:#x} ({status})", dev.config.id);
            return Err(DmaError::RevokeRefused { device: dev.config.id, status });
        }
        dev.trust = TrustState::Untrusted;
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

impl<'m, P: Platform, const POOLS: usize, const DOMAINS: usize, const AREAS: usize>
    DmaLayer<'m, P, POOLS, DOMAINS, AREAS>
{
    /// Accept `dev` for direct access to private memory, on the platform's word
    /// ([`DeviceTrust::accept_device`](crate::DeviceTrust::accept_device)). Accepting an accepted device does nothing.
    ///
    /// Refused, nothing changed: while the device has anything live ([`DmaError::Busy`]); when the
    /// guest is not confidential or the platform has no trusted I/O ([`DmaError::TrustUnavailable`]);
    /// when the platform says no ([`DmaError::AcceptRefused`]); when the device shares its IOMMU
    /// endpoint with other attached devices ([`IommuError::EndpointShared`](crate::IommuError::EndpointShared)):
    /// they would reach its private pages. A deferred device is attached to its
    /// IOMMU domain here (its mappings need the window).
    pub fn accept(&self, dev: &mut Device) -> Result<(), DmaError> {
        match self.cold().as_full() {
            Some(c) => accept_once(c, dev),
            None => self.cold().accept_dyn(dev),
        }
    }

    /// Revoke `dev`'s acceptance: it is untrusted again (its buffers bounce on its attach-time path).
    /// Revoking an untrusted device does nothing.
    ///
    /// Refused, nothing changed, while the device has anything live ([`DmaError::Busy`]) or when an
    /// entry of its window that may name private memory (left by a mapping whose entries could not
    /// be cleared) still cannot be cleared ([`DmaError::Iommu`]): no untrusted device ever has a
    /// private page in its window. If the platform's own revoke fails the layer still treats the
    /// device as untrusted ([`TrustState::RevokePending`]: its buffers bounce) and says so
    /// ([`DmaError::RevokeRefused`]); the next `revoke` or [`DmaLayer::detach`] asks the platform
    /// again, and detach is refused until the platform confirms.
    pub fn revoke(&self, dev: &mut Device) -> Result<(), DmaError> {
        match self.cold().as_full() {
            Some(c) => revoke_once(c, dev),
            None => self.cold().revoke_dyn(dev),
        }
    }
}

/// [`DmaLayer::accept`] of the default capacities, compiled in this crate only (see
/// `Cold::as_full`).
#[inline(never)]
fn accept_once(c: &FullCold<'_, '_>, dev: &mut Device) -> Result<(), DmaError> {
    c.accept_dyn(dev)
}

/// [`DmaLayer::revoke`] of the default capacities, compiled in this crate only (see
/// `Cold::as_full`).
#[inline(never)]
fn revoke_once(c: &FullCold<'_, '_>, dev: &mut Device) -> Result<(), DmaError> {
    c.revoke_dyn(dev)
}
