//! A device: what its driver declares ([`DeviceConfig`]) and its attachment to a layer ([`Device`]).
//!
//! ```
//! # use ccdma::*;
//! # use ccdma_hv_model::{HvConfig, Hypervisor, Region};
//! # let hv: &'static Hypervisor = Box::leak(Box::new(Hypervisor::new(HvConfig::pseries(6 << 30))));
//! # let mut layer = DmaLayer::new(hv);
//! # // SAFETY: the model never hands this range out.
//! # unsafe { layer.add_pool(PhysAddr(0x80_0000), 1 << 20, vec![SlotMeta::EMPTY; 512].leak(), PoolConfig::default()) }.unwrap();
//! // An NVMe-like device: 64-bit streaming, 32-bit coherent, 64 KiB segments, 4 KiB alignment kept.
//! let cfg = DeviceConfig::new(7, DmaMask::BITS_64)
//!     .with_coherent_mask(DmaMask::BITS_32)
//!     .with_max_segment_size(64 << 10)
//!     .with_min_align_mask(0xFFF);
//! let nvme = layer.attach(cfg)?;
//! assert_eq!(nvme.path(), DmaPath::BounceAlways); // confidential guest, no IOMMU
//! assert_eq!(nvme.config().max_segment_size, 64 << 10);
//!
//! let mut sector = [0u8; 512];
//! let m = layer.on(&nvme).map(&mut sector, DmaDirection::FromDevice)?;
//! assert_eq!(nvme.live_counts().mappings, 1); // `layer.detach(nvme)` would not compile here
//! m.unmap()?;
//! layer.detach(nvme)?;
//! # Ok::<(), ccdma::DmaError>(())
//! ```

use core::sync::atomic::{AtomicU32, Ordering};

use crate::addr::DmaMask;
use crate::iommu::domain_ref::DomainRef;
use crate::path::DmaPath;
use crate::pool::{AreaLive, HomePool};
use crate::pool_set::PoolOrder;
use crate::stream::placement::Placement;
use crate::trust::TrustState;

/// A device's DMA limits and trust, as its driver declares them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceConfig {
    /// Highest bus address for streaming mappings.
    pub dma_mask: DmaMask,
    /// Highest bus address for coherent allocations.
    pub coherent_mask: DmaMask,
    /// Largest DMA segment the device takes (bytes).
    pub max_segment_size: u32,
    /// A segment must not cross an address boundary of `mask + 1` (`u64::MAX`: none).
    pub segment_boundary_mask: u64,
    /// Low address bits the device needs preserved between the original and the bounce address
    /// (NVMe-style `min_align_mask`). 0: none.
    pub min_align_mask: u64,
    /// A trusted device (e.g. inside the TCB). Trusted devices still go through the pool in a
    /// confidential guest: the flag only relaxes what is logged, never what is exposed. Only the
    /// platform's acceptance ([`DmaLayer::accept`](crate::DmaLayer::accept)) lets a device reach
    /// private memory.
    pub trusted: bool,
    /// Attach lazily, at the first map or allocation (not at unmap, sync or free).
    pub deferred_attach: bool,
    /// Once accepted ([`DmaLayer::accept`](crate::DmaLayer::accept)) behind an IOMMU, bounce every
    /// buffer that does not cover whole IOMMU pages instead of mapping it in place, as Linux's
    /// dma-iommu does for untrusted devices: an entry names a whole IOMMU page, so a buffer sharing
    /// a page with other private data would expose that data too. Off by default (the device then
    /// reaches the whole IOMMU pages around its buffers). No effect on untrusted devices (they
    /// always bounce) nor without an IOMMU (the device gets the buffer's exact address). A bounced
    /// buffer takes a run of pool slots, so one longer than the pools' longest run is refused
    /// ([`DmaError::TooLarge`](crate::DmaError::TooLarge)) unless it covers whole IOMMU pages.
    pub bounce_partial_pages: bool,
    /// An identifier for logs and the IOMMU (e.g. PCI requester id).
    pub id: u32,
}

impl DeviceConfig {
    /// A device with `mask` for both streaming and coherent DMA and no other limits.
    pub const fn new(id: u32, mask: DmaMask) -> DeviceConfig {
        DeviceConfig {
            dma_mask: mask,
            coherent_mask: mask,
            max_segment_size: u32::MAX,
            segment_boundary_mask: u64::MAX,
            min_align_mask: 0,
            trusted: false,
            deferred_attach: false,
            bounce_partial_pages: false,
            id,
        }
    }
    /// Builder: coherent mask.
    pub const fn with_coherent_mask(mut self, mask: DmaMask) -> Self {
        self.coherent_mask = mask;
        self
    }
    /// Builder: `min_align_mask`.
    pub const fn with_min_align_mask(mut self, mask: u64) -> Self {
        self.min_align_mask = mask;
        self
    }
    /// Builder: max segment size.
    pub const fn with_max_segment_size(mut self, size: u32) -> Self {
        self.max_segment_size = size;
        self
    }
    /// Builder: segment boundary mask.
    pub const fn with_segment_boundary_mask(mut self, mask: u64) -> Self {
        self.segment_boundary_mask = mask;
        self
    }
    /// The limits every path relies on, checked at attach: a segment boundary mask of `2^n - 1`
    /// and a non-zero max segment size (`map_sg` would refuse every list otherwise).
    pub(crate) fn validate_limits(&self) -> Result<(), crate::error::DmaError> {
        let b = self.segment_boundary_mask;
        if b & b.wrapping_add(1) != 0 {
            return Err(crate::error::DmaError::InvalidSegmentBoundary(b));
        }
        if self.max_segment_size == 0 {
            return Err(crate::error::DmaError::ZeroMaxSegment);
        }
        Ok(())
    }
    /// Builder: bounce accepted buffers that do not cover whole IOMMU pages
    /// ([`DeviceConfig::bounce_partial_pages`]).
    pub const fn with_bounce_partial_pages(mut self, on: bool) -> Self {
        self.bounce_partial_pages = on;
        self
    }
    /// Builder: deferred attach.
    pub const fn with_deferred_attach(mut self, deferred: bool) -> Self {
        self.deferred_attach = deferred;
        self
    }
}

/// A device attached to a layer: its configuration, the path chosen for it, and how many of its
/// mappings, scatter-gather lists and coherent buffers are live.
///
/// Move-only: the one value stands for the attachment. Drivers share it as `&Device` (mappings
/// borrow it), and [`DmaLayer::detach`](crate::DmaLayer::detach) consumes it, so the borrow checker proves that no map, unmap
/// or allocation of the device runs while it is detached, on any CPU: the domain it names cannot be
/// republished under a live user.
#[derive(Debug)]
pub struct Device {
    pub(crate) config: DeviceConfig,
    pub(crate) path: DmaPath,
    pub(crate) pools: PoolOrder,
    pub(crate) layer: u32,
    /// Unique per attach within the layer; recorded in every mapping so another device cannot
    /// unmap or sync it.
    pub(crate) serial: u32,
    /// The device's IOMMU domain, on IOMMU paths.
    pub(crate) domain: Option<DomainRef>,
    /// Live mappings, lists and coherent buffers (detach refuses while non-zero), but for the
    /// mappings its home pool counts (`home_live`).
    pub(crate) live: [AtomicU32; 3],
    /// Its mappings in its home pool (the first its runs were counted in), counted per area by the
    /// pool under the area locks (`pool/dev_live.rs`): no atomic read-modify-write per map or unmap.
    pub(crate) home_live: AreaLive,
    /// Which pool `home_live` counts.
    pub(crate) home: HomePool,
    /// Untrusted, or accepted by the platform (changed only by `accept`/`revoke`, which take
    /// `&mut Device`).
    pub(crate) trust: TrustState,
    /// Diagnostics: most live mappings and lists at once, and failed maps.
    pub(crate) peaks: DevicePeaks,
    /// Bounce placement rules for its first pool's geometry, worked out at attach.
    pub(crate) place: Placement,
}

/// Per-device diagnostics ([`Device::peaks`]).
#[derive(Debug, Default)]
pub(crate) struct DevicePeaks {
    high: [AtomicU32; 2],
    failures: AtomicU32,
}

/// A device's high-water marks and failures ([`Device::peaks`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DevicePeakCounts {
    /// Most streaming mappings live at once. Exact when one CPU at a time maps and unmaps for the
    /// device. With several CPUs at once it is a sum of per-area counters read one after another
    /// (counting them is what keeps atomics off the map path), so it can be off by the maps and
    /// unmaps that ran during that read, in either direction. Detach's `Busy` count is always
    /// exact (see `Device::live`).
    pub mappings_high_water: u32,
    /// Most scatter-gather lists live at once.
    pub lists_high_water: u32,
    /// Maps (single and lists) that failed, for any reason.
    pub map_failures: u32,
}

impl Device {
    /// The layer's serial number for this attach (mappings record it; errors name it).
    pub fn serial(&self) -> u32 {
        self.serial
    }
    /// Mappings, scatter-gather lists and coherent buffers of this device live now. Exact whenever
    /// none of them is made or ended meanwhile (a detach, which takes the device by value, always
    /// sees an exact count); while other CPUs map and unmap for it, each of its mappings counts
    /// once its map has returned and stops counting when its unmap returns (or sooner).
    pub fn live(&self) -> u64 {
        self.live.iter().map(|c| u64::from(c.load(Ordering::Acquire))).sum::<u64>()
            + self.home_live.sum(AreaLive::AREAS)
    }
    /// The same, by kind.
    pub fn live_counts(&self) -> LiveCounts {
        let n = |k: LiveKind| u64::from(self.live[k as usize].load(Ordering::Acquire));
        LiveCounts {
            mappings: n(LiveKind::Mapping) + self.home_live.sum(AreaLive::AREAS),
            lists: n(LiveKind::List),
            coherent: n(LiveKind::Coherent),
        }
    }
    pub(crate) fn live_inc(&self, kind: LiveKind) {
        let mut n = u64::from(self.live[kind as usize].fetch_add(1, Ordering::AcqRel)) + 1;
        if kind == LiveKind::Mapping && self.home.is_set() {
            n += self.home_live.sum(AreaLive::AREAS);
        }
        self.note_peak(kind, n);
    }
    /// A mapping its home pool counted (`home_live`) was made: the high-water mark, with that
    /// pool's `areas` counters.
    #[inline]
    pub(crate) fn mapped_at_home(&self, areas: usize) {
        let n = u64::from(self.live[LiveKind::Mapping as usize].load(Ordering::Acquire))
            + self.home_live.sum(areas);
        self.note_peak(LiveKind::Mapping, n);
    }
    /// Raise the high-water mark of `kind` to `n` live (exact with one CPU mapping for the device;
    /// with several, the counts added up may be read at slightly different times).
    #[inline(always)]
    fn note_peak(&self, kind: LiveKind, n: u64) {
        let n = u32::try_from(n).unwrap_or(u32::MAX);
        if let Some(h) = self.peaks.high.get(kind as usize) {
            if h.load(Ordering::Relaxed) < n {
                h.fetch_max(n, Ordering::Relaxed);
            }
        }
    }
    pub(crate) fn map_failed(&self) {
        self.peaks.failures.fetch_add(1, Ordering::Relaxed);
    }
    /// High-water marks of live mappings and lists, and failed maps.
    pub fn peaks(&self) -> DevicePeakCounts {
        DevicePeakCounts {
            mappings_high_water: self.peaks.high[0].load(Ordering::Relaxed),
            lists_high_water: self.peaks.high[1].load(Ordering::Relaxed),
            map_failures: self.peaks.failures.load(Ordering::Relaxed),
        }
    }
    /// One live object ended. Saturating: a raw-face caller that breaks its contract on a path
    /// without records (direct) must not wrap the count and hide live mappings.
    pub(crate) fn live_dec(&self, kind: LiveKind) {
        self.live_dec_inline(kind);
    }
    /// [`Self::live_dec`] inlined, for the unmap hot path only (a call and its frame saved; the
    /// other callers share the outlined copy, which keeps the images' .text down).
    #[inline(always)]
    pub(crate) fn live_dec_inline(&self, kind: LiveKind) {
        let _ =
            self.live[kind as usize].fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }
    /// The configuration given at attach.
    pub fn config(&self) -> &DeviceConfig {
        &self.config
    }
    /// The path chosen at attach, or the trusted path while the device is accepted.
    pub fn path(&self) -> DmaPath {
        self.trust.path_over(self.path, self.domain.is_some())
    }
    /// Accepted and without IOMMU: its private mappings use the buffer's address and have no record.
    pub(crate) fn direct_private(&self) -> bool {
        self.trust.is_accepted() && self.domain.is_none()
    }
    /// Untrusted (every buffer is shared or bounced) or accepted by the platform.
    pub fn trust(&self) -> TrustState {
        self.trust
    }
    /// Indices of the pools this device mapped from when it was attached (set up), in the order they
    /// were tried. Pools grown later are not listed ([`crate::DmaLayer::pool_bus_of`] knows them).
    pub fn pool_indices(&self) -> impl Iterator<Item = usize> + '_ {
        self.pools.iter()
    }
}

/// What a [`Device`] has live, by kind ([`Device::live_counts`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LiveCounts {
    /// Streaming mappings (safe and raw face, including forgotten and orphaned ones).
    pub mappings: u64,
    /// Mapped scatter-gather lists.
    pub lists: u64,
    /// Coherent buffers.
    pub coherent: u64,
}

/// Index into [`Device`]'s live counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LiveKind {
    Mapping = 0,
    List = 1,
    Coherent = 2,
}
