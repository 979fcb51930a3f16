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
//! in an untrusted device's. A device that must not see those bytes (Linux's dma-iommu bounces
//! untrusted devices' partial pages the same way) is attached with
//! [`DeviceConfig::bounce_partial_pages`](crate::DeviceConfig::bounce_partial_pages): a buffer that
//! does not cover whole IOMMU pages is then bounced through the pool, and only whole pages map in
//! place. Private entries are written one `H_PUT_TCE` each, never through a shared list page. Without an IOMMU the bus address is the buffer's private address
//! ([`DeviceTrust::private_bus_addr`], [`DmaPath::TrustedDirect`]): the platform's trust is then the
//! only gate, and the layer hands the device only the addresses of its live mappings. A buffer
//! beyond the device's mask, or one that is not guest RAM (no physical address), is bounced, as for
//! an untrusted device. A mapping or coherent buffer with
//! [`DmaAttrs::CC_SHARED`](crate::DmaAttrs::CC_SHARED) is shared as for an untrusted device (a
//! ring the host reads too). Scatter-gather lists of an accepted device still bounce.
//!
//! Where the layer leans on the device being trusted: a safe-face mapping dropped while its entries
//! will not clear hands the buffer back to its owner although the device's entries may still name
//! it (the range stays recorded and the device stays busy, so it is never revoked or detached with
//! it; the error is logged). For an untrusted device the bounce slots are kept instead; an
//! accepted device has no slot to keep, and it is the device's own buffer it could still reach.
//!
//! The trust state changes only while the device is quiesced (`accept.rs`): [`DmaLayer::accept`] and
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
//!
//! [`DmaLayer::accept`]: crate::DmaLayer::accept
//! [`DmaLayer::revoke`]: crate::DmaLayer::revoke
//! [`DmaError::Busy`]: crate::DmaError::Busy

use crate::addr::{BusAddr, PhysAddr};
use crate::path::DmaPath;

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
    /// The guest revoked its trust but the platform's revoke failed, so the platform may still
    /// accept the device. The guest treats it as untrusted (every buffer bounces, as
    /// [`TrustState::Untrusted`]); [`crate::DmaLayer::revoke`] and [`crate::DmaLayer::detach`] ask
    /// the platform again, and detach is refused until the platform confirms.
    RevokePending,
}

impl TrustState {
    /// True when accepted.
    pub const fn is_accepted(self) -> bool {
        // Without `trusted-devices` no device is ever accepted (`accept` refuses): a constant, so
        // the trusted branches of map and unmap leave the image.
        crate::parts::TRUSTED && matches!(self, TrustState::Accepted)
    }
    /// The path a device with untrusted path `path` has in this state.
    pub(crate) const fn path_over(self, path: DmaPath, iommu: bool) -> DmaPath {
        match (self, iommu) {
            (TrustState::Untrusted | TrustState::RevokePending, _) => path,
            (TrustState::Accepted, true) => DmaPath::TrustedIommu,
            (TrustState::Accepted, false) => DmaPath::TrustedDirect,
        }
    }
}
