//! `DmaLayer`: one instance per guest, shared by every CPU. Owns the pools, attaches devices, and
//! implements the streaming API (the raw face; the safe face in [`crate::mapping`] builds on it).
//!
//! ```
//! use ccdma::{DeviceConfig, DmaLayer, DmaMask, PhysAddr, PoolConfig, SlotMeta};
//! # use ccdma_hv_model::{HvConfig, Hypervisor};
//! # let hv: &'static Hypervisor = Box::leak(Box::new(Hypervisor::new(HvConfig::pseries(6 << 30))));
//! let mut layer = DmaLayer::new(hv);
//! // Two pools: one low for 24- and 32-bit devices, one above 4 GiB for the rest.
//! for (phys, len) in [(0x80_0000, 1 << 20), (0x1_0000_0000, 4 << 20)] {
//!     let meta = vec![SlotMeta::EMPTY; PoolConfig::default().slots_for(len)].leak();
//!     // SAFETY: both ranges are guest RAM this program gives the layer for good.
//!     unsafe { layer.add_pool(PhysAddr(phys), len, meta, PoolConfig::default())? };
//! }
//! assert_eq!(layer.pools().count(), 2);
//! assert_eq!(layer.stats().shared_pages, (5 << 20) / 4096); // pools are shared once, at add
//!
//! // One layer serves every CPU: `attach`, maps and detach take `&self`.
//! let dev = layer.attach(DeviceConfig::new(1, DmaMask::BITS_32))?;
//! layer.detach(dev)?;
//! // Pools go back (made private again) only when nothing is live.
//! layer.release_pools()?;
//! assert_eq!(hv.shared_pages(), 0);
//! # Ok::<(), ccdma::DmaError>(())
//! ```

use core::sync::atomic::{AtomicU32, Ordering};

use crate::addr::{pages_spanned, BusAddr, PhysAddr, PAGE_SIZE};
use crate::device::{Device, DeviceConfig};
use crate::device_ids::DeviceIds;
use crate::error::{DmaError, Refused};
use crate::growth::live::LivePools;
use crate::growth::state::Growth;
use crate::growth::table::PoolRef;
use crate::growth::table::PoolTable;
use crate::iommu::counters::IommuCounters;
use crate::iommu::domain::DomainRef;
use crate::iommu::domain::Iommu;
use crate::iommu::MAX_DOMAINS;
use crate::path::{self, DmaPath, PathChoice, PathFacts};
use crate::platform::Platform;
use crate::pool::{BouncePool, PoolConfig, SlotMeta, MAX_AREAS};
use crate::pool_set::{PoolOrder, MAX_POOLS};
use crate::stale_slot::StaleSlotPolicy;
use crate::stats::Stats;
use crate::stats::{FailureKind, StatsSnapshot};
use crate::stream::raw_records::RawRecords;
use crate::tracker::Tracker;

pub(crate) static NEXT_LAYER_ID: AtomicU32 = AtomicU32::new(1);

/// The DMA layer: pools, devices, statistics.
///
/// `POOLS` (at most [`MAX_POOLS`]), `DOMAINS` (at most [`MAX_DOMAINS`]) and `AREAS` (1..=
/// [`MAX_AREAS`]) are the layer's capacities: pool slots (fixed and grown), IOMMU domains (and as
/// many global bus reservations), and areas (locks) per pool, a pool asking more
/// ([`PoolConfig::areas`]) getting `AREAS`. They set its size; the defaults are the most the layer
/// supports. A firmware with one pool and no IOMMU builds `DmaLayer<'m, P, 1, 0, 2>` (1,664 bytes
/// on x86_64, 8 devices; with [`DmaLayer::with_capacity`] or in place with
/// [`DmaLayer::init_in`]); `cargo test --release -p ccdma --lib footprint -- --nocapture` prints
/// the sizes. A capacity outside its range does not compile.
///
/// One copy of the code: the platform is the last field, so a `&DmaLayer<'m, P, ..>` is also a
/// `&DmaLayer<'m, dyn Platform, ..>` (an unsizing coercion, no copy). The streaming calls (map,
/// unmap, sync) are generic over `P` and small, so that the platform's hooks inline into them; the
/// cold paths (attach, detach, IOMMU set-up, growth, coherent buffers, accept) are methods of the
/// `dyn Platform` layer, compiled once per capacity whatever the number of platform types; the
/// public calls of the same names here are one-line shells (see "One copy of the code" in
/// ARCHITECTURE.md). `P` is `?Sized` only for that view: a layer is built over a sized platform.
pub struct DmaLayer<
    'm,
    P: Platform + ?Sized,
    const POOLS: usize = MAX_POOLS,
    const DOMAINS: usize = MAX_DOMAINS,
    const AREAS: usize = MAX_AREAS,
> {
    /// Every pool, by index (fixed ones from `add_pool`, grown ones from the memory source).
    pub(crate) pools: PoolTable<'m, POOLS, AREAS>,
    /// The pools as devices without an IOMMU see them (shared bus addresses), sorted by bus.
    pub(crate) plain: LivePools<POOLS>,
    /// Growing and shrinking (off until `enable_growth`); its lock orders every change of a pool
    /// set or window.
    pub(crate) growth: Growth<'m, POOLS>,
    pub(crate) stats: Stats<POOLS>,
    pub(crate) id: u32,
    /// Source of device serials (never 0).
    pub(crate) next_serial: AtomicU32,
    /// The IOMMU path, once enabled (`enable_iommu`).
    pub(crate) iommu: Option<Iommu<'m, DOMAINS, POOLS, AREAS>>,
    /// Counters of the IOMMU path and coherent buffers.
    pub(crate) iommu_counters: IommuCounters,
    /// The misuse tracker (feature `debug-tracker`; an empty value without it).
    pub(crate) tracker: Tracker,
    /// Ids of the attached devices (no two attachments share one).
    pub(crate) device_ids: DeviceIds<POOLS>,
    /// What to-device `SKIP_CPU_SYNC` slots hold (None: by confidentiality; see [`crate::stale_slot`]).
    pub(crate) stale_slots: Option<StaleSlotPolicy>,
    /// Records of raw-face mappings on paths without pool slots (direct, trusted).
    pub(crate) raw: RawRecords<'m, POOLS>,
    /// The platform: last, so that the layer unsizes to `Cold` (`P: ?Sized`).
    pub(crate) platform: P,
}

/// A layer as its cold paths see it: the platform as a trait object (see [`DmaLayer`]).
pub(crate) type Cold<'a, 'm, const POOLS: usize, const DOMAINS: usize, const AREAS: usize> =
    DmaLayer<'m, dyn Platform + 'a, POOLS, DOMAINS, AREAS>;

/// A [`Cold`] layer of the default capacities: what the `*_once` functions take.
pub(crate) type FullCold<'a, 'm> = Cold<'a, 'm, MAX_POOLS, MAX_DOMAINS, MAX_AREAS>;

impl<'a, 'm, const POOLS: usize, const DOMAINS: usize, const AREAS: usize>
    Cold<'a, 'm, POOLS, DOMAINS, AREAS>
{
    /// This layer as the default capacities' type when those are its capacities (decided at
    /// compile time). Rust compiles a generic function in every crate that uses it, so a program
    /// whose layer is used from two crates (the x86 test kernel and the C interface it links)
    /// would carry two copies of the cold paths; the shells of the default capacities call
    /// non-generic `*_once` functions instead, compiled in this crate only.
    #[inline(always)]
    pub(crate) fn as_full(&self) -> Option<&FullCold<'a, 'm>> {
        if POOLS == MAX_POOLS && DOMAINS == MAX_DOMAINS && AREAS == MAX_AREAS {
            // SAFETY: with equal capacities both are the same type (same metadata: the vtable).
            Some(unsafe { &*(self as *const Self as *const FullCold<'a, 'm>) })
        } else {
            None
        }
    }

    /// [`Self::as_full`] for a layer borrowed mutably.
    #[inline(always)]
    pub(crate) fn as_full_mut(&mut self) -> Option<&mut FullCold<'a, 'm>> {
        if POOLS == MAX_POOLS && DOMAINS == MAX_DOMAINS && AREAS == MAX_AREAS {
            // SAFETY: as in `as_full`; the borrow is moved into the result.
            Some(unsafe { &mut *(self as *mut Self as *mut FullCold<'a, 'm>) })
        } else {
            None
        }
    }
}

impl<'m, P: Platform> DmaLayer<'m, P> {
    /// A layer with no pools yet and the largest capacities, by value (~28 KiB: firmware with a
    /// small stack builds it in place with [`DmaLayer::init_in`] or
    /// [`LayerCell::init_with`](crate::storage::LayerCell::init_with); a smaller configuration is
    /// [`DmaLayer::with_capacity`]).
    pub fn new(platform: P) -> Self {
        Self::with_capacity(platform)
    }
}

impl<'m, P: Platform, const POOLS: usize, const DOMAINS: usize, const AREAS: usize>
    DmaLayer<'m, P, POOLS, DOMAINS, AREAS>
{
    /// A layer with no pools yet, by value, with the capacities of its type:
    /// `DmaLayer::<_, 1, 0>::with_capacity(platform)` holds one pool and no IOMMU domain. A
    /// capacity above [`MAX_POOLS`] or [`MAX_DOMAINS`] does not compile.
    pub fn with_capacity(platform: P) -> Self {
        const { assert!(DOMAINS <= MAX_DOMAINS, "a layer holds at most MAX_DOMAINS IOMMU domains") };
        DmaLayer {
            pools: PoolTable::new(),
            plain: LivePools::new(),
            growth: Growth::new(),
            stats: Stats::default(),
            id: NEXT_LAYER_ID.fetch_add(1, Ordering::Relaxed),
            next_serial: AtomicU32::new(1),
            iommu: None,
            iommu_counters: IommuCounters::default(),
            tracker: Tracker::default(),
            device_ids: DeviceIds::new(),
            stale_slots: None,
            raw: RawRecords::new(),
            platform,
        }
    }

    /// The layer as its cold paths see it: the platform as `dyn Platform` (no copy).
    #[inline(always)]
    pub(crate) fn cold(&self) -> &Cold<'_, 'm, POOLS, DOMAINS, AREAS> {
        self
    }

    /// [`Self::cold`], borrowed mutably.
    #[inline(always)]
    pub(crate) fn cold_mut(&mut self) -> &mut Cold<'_, 'm, POOLS, DOMAINS, AREAS> {
        self
    }

    /// The misuse tracker (feature `debug-tracker`).
    #[cfg(feature = "debug-tracker")]
    pub fn tracker(&self) -> &crate::tracker::Tracker {
        &self.tracker
    }

    /// Add a pool over `[phys, phys + len)` with metadata in `meta` (at least `cfg.slots_for(len)`
    /// entries). In a confidential guest the memory is shared here; if sharing fails part way, what was
    /// shared is made private again (or quarantined) and the error says so.
    ///
    /// Returns the new pool's index (0 for the first pool, then 1, ... in the order added): the
    /// number [`DmaError::PoolOverlap`] and the layer's statistics name the pool by.
    ///
    /// # Safety
    /// The range must be guest RAM that nothing else uses for as long as the layer lives: the layer
    /// hands it to devices and overwrites it.
    pub unsafe fn add_pool(
        &mut self,
        phys: PhysAddr,
        len: usize,
        meta: &'m mut [SlotMeta],
        cfg: PoolConfig,
    ) -> Result<usize, DmaError> {
        // SAFETY: the caller keeps this call's contract, which is the core's.
        unsafe {
            match self.cold_mut().as_full_mut() {
                Some(c) => add_pool_once(c, phys, len, meta, cfg),
                None => self.cold_mut().add_pool_dyn(phys, len, meta, cfg),
            }
        }
    }

    /// Tear down every pool: unshare its memory (quarantining pages that cannot be made private);
    /// grown pools go back to the memory source. Fails with nothing changed while any mapping is live.
    pub fn release_pools(&mut self) -> Result<(), DmaError> {
        match self.cold_mut().as_full_mut() {
            Some(c) => release_pools_once(c),
            None => self.cold_mut().release_pools_dyn(),
        }
    }

    /// Attach a device: choose its path, or fail naming its mask and the pools.
    pub fn attach(&self, config: DeviceConfig) -> Result<Device, DmaError> {
        match self.cold().as_full() {
            Some(c) => attach_once(c, config),
            None => self.cold().attach_dyn(config),
        }
    }

    /// Detach a device. Refused while it has live mappings, lists or coherent buffers
    /// ([`DmaError::Busy`]), or when its IOMMU entries cannot be cleared: the device comes back in
    /// the error, still attached, and detach can be retried. A detach that failed part way leaves the
    /// device mapping nothing ([`DmaError::DetachIncomplete`]) until a retry completes. An accepted
    /// device is revoked first ([`DmaLayer::revoke`]), so the platform never keeps trusting a device
    /// the guest has let go.
    pub fn detach(&self, dev: Device) -> Result<(), Refused<Device>> {
        match self.cold().as_full() {
            Some(c) => detach_once(c, dev),
            None => self.cold().detach_dyn(dev),
        }
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> StatsSnapshot {
        match self.cold().as_full() {
            Some(c) => stats_once(c),
            None => self.cold().stats_dyn(),
        }
    }

    /// The platform.
    pub fn platform(&self) -> &P {
        &self.platform
    }
}

/// Number of pages a physical range spans (re-exported for platform code).
pub fn span_pages(phys: PhysAddr, len: usize) -> u64 {
    pages_spanned(phys.0, len as u64)
}

impl<'m, P: Platform + ?Sized, const POOLS: usize, const DOMAINS: usize, const AREAS: usize>
    DmaLayer<'m, P, POOLS, DOMAINS, AREAS>
{
    /// The index of a pool (fixed or grown) that overlaps `[phys, end)`.
    pub(crate) fn pool_overlapping(&self, phys: PhysAddr, end: u64) -> Option<usize> {
        self.pools
            .iter()
            .find(|(_, p)| phys.0 < p.phys().0 + p.len() as u64 && p.phys().0 < end)
            .map(|(i, _)| i)
    }

    /// The pools (fixed and grown), by index. Each item holds its pool in place (a grown pool is not
    /// removed while the item lives): do not keep them.
    pub fn pools(&self) -> impl Iterator<Item = PoolRef<'_, 'm, AREAS>> + '_ {
        self.pools.iter().map(|(_, p)| p)
    }

    /// Fixed pool `i` (added with [`Self::add_pool`]) and its bus base for devices without an IOMMU.
    /// Grown pools: [`Self::pool_ref`].
    pub fn pool(&self, i: usize) -> Option<(&BouncePool<'m, AREAS>, BusAddr)> {
        let pool = self.pools.fixed(i)?;
        Some((pool, self.plain.base_of(i).unwrap_or(BusAddr(0))))
    }

    /// Pool `i`, fixed or grown, and its bus base for devices without an IOMMU. The reference holds
    /// the pool in place: do not keep it.
    pub fn pool_ref(&self, i: usize) -> Option<(PoolRef<'_, 'm, AREAS>, BusAddr)> {
        let pool = self.pools.get(i)?;
        Some((pool, self.plain.base_of(i).unwrap_or(BusAddr(0))))
    }

    /// [`DmaLayer::stats`]'s body (on the `dyn Platform` layer: it calls no platform hook).
    pub(crate) fn stats_dyn(&self) -> StatsSnapshot {
        let mut s = self.stats.snapshot();
        for p in self.pools() {
            s.slots_in_use += p.slots_in_use() as u64;
            s.slots_high_water += p.high_water() as u64;
            let t = p.tally();
            s.maps = s.maps.wrapping_add(t.maps);
            s.bounced_maps = s.bounced_maps.wrapping_add(t.maps);
            s.unmaps = s.unmaps.wrapping_add(t.unmaps);
            s.bytes_to_device = s.bytes_to_device.wrapping_add(t.to_device);
        }
        // List pages taken from a pool are not mappings.
        s.slots_in_use = s.slots_in_use.saturating_sub(self.list_pool_slots() as u64);
        s
    }

    fn lowest_pool_bus_end(&self) -> u64 {
        let s = self.plain.snapshot();
        // Checked: an index out of range is skipped, a pool at the top of the bus saturates.
        s.order
            .iter()
            .filter_map(|i| Some(s.bases.get(i)?.0.saturating_add(*s.sizes.get(i)?)))
            .min()
            .unwrap_or(0)
    }

    /// The pools a device without an IOMMU reaches now, best first (reserve pools included).
    pub(crate) fn reachable_pools(&self, config: &DeviceConfig) -> PoolOrder {
        self.plain.order_for(Some(config.dma_mask), true).0
    }

    pub(crate) fn check_device(&self, dev: &Device) -> Result<(), DmaError> {
        if dev.layer != self.id {
            return Err(DmaError::NotAttached);
        }
        Ok(())
    }
}

impl<'a, 'm, const POOLS: usize, const DOMAINS: usize, const AREAS: usize>
    Cold<'a, 'm, POOLS, DOMAINS, AREAS>
{
    /// Share pages; on failure roll back what was shared and quarantine what cannot be rolled back.
    /// A request of `2^32` pages (16 TiB) or more is refused before anything is shared: the sharing
    /// errors count pages in a `u32` (`DmaError` stays 24 bytes), and every later unshare names
    /// pages this accepted.
    pub(crate) fn share_pages(&self, phys: PhysAddr, pages: u64) -> Result<(), DmaError> {
        if pages > u64::from(u32::MAX) {
            return Err(DmaError::Overflow);
        }
        match self.platform.share(phys, pages) {
            Ok(()) => {
                self.stats.shared(pages);
                Ok(())
            }
            Err(partial) => {
                self.stats.fail(FailureKind::Sharing);
                let done = partial.pages_done.min(pages);
                let mut quarantined = 0;
                if done > 0 {
                    if let Err(back) = self.platform.unshare(phys, done) {
                        quarantined = done - back.pages_done.min(done);
                        self.stats.shared(quarantined);
                        self.stats.quarantine(quarantined);
                    }
                }
                log::warn!(
                    "ccdma: sharing {pages} pages at {phys} failed ({:?}); {quarantined} quarantined",
                    partial.kind
                );
                // `quarantined <= done <= pages <= u32::MAX` (checked above).
                Err(DmaError::SharingFailed { phys, quarantined: quarantined as u32, kind: partial.kind })
            }
        }
    }

    /// Make pages private again; what cannot be is quarantined (counted, never reused).
    pub(crate) fn unshare_pages(&self, phys: PhysAddr, pages: u64) -> Result<(), DmaError> {
        match self.platform.unshare(phys, pages) {
            Ok(()) => {
                self.stats.unshared(pages);
                Ok(())
            }
            Err(partial) => {
                self.stats.fail(FailureKind::Sharing);
                let done = partial.pages_done.min(pages);
                let quarantined = pages - done;
                self.stats.unshared(done);
                self.stats.quarantine(quarantined);
                log::warn!(
                    "ccdma: unsharing {pages} pages at {phys} failed ({:?}); {quarantined} quarantined",
                    partial.kind
                );
                // Every unshare names pages share_pages accepted (at most u32::MAX of them); should
                // one not, the count saturates rather than wraps.
                let quarantined = u32::try_from(quarantined).unwrap_or(u32::MAX);
                Err(DmaError::UnsharingFailed { phys, quarantined, kind: partial.kind })
            }
        }
    }

    /// [`DmaLayer::attach`], over the platform as `&dyn Platform`.
    pub(crate) fn attach_dyn(&self, config: DeviceConfig) -> Result<Device, DmaError> {
        let _masked = self.masked();
        let m = config.min_align_mask;
        // 2^n - 1, and below 4 GiB: no device needs more, and it bounds every alignment sum later.
        if m & m.wrapping_add(1) != 0 || m > u64::from(u32::MAX) {
            return Err(DmaError::InvalidMinAlignMask(m));
        }
        config.validate_limits()?;
        self.device_ids.register(config.id)?;
        let attached = self.attach_registered(config);
        if attached.is_err() {
            self.device_ids.release(config.id);
        }
        attached
    }

    /// [`Self::attach`] once the id is registered.
    fn attach_registered(&self, config: DeviceConfig) -> Result<Device, DmaError> {
        let confidential = self.platform.is_confidential();
        if confidential {
            self.require_iommu_backend(config.id)?;
        }
        if confidential && self.backend().is_some_and(|b| b.behind_iommu(config.id)) {
            return self.attach_iommu(config);
        }
        let ram_end = self.platform.ram_end().0;
        let pools = self.reachable_pools(&config);
        let facts = PathFacts {
            confidential,
            mask_covers_ram: config.dma_mask.covers(0, ram_end.max(1)),
            // With a memory source, a pool below the mask can be grown at the first map.
            reachable_pools: pools.iter().count() + usize::from(self.growth.source.is_some()),
            iommu: None,
            accepted: false,
        };
        let PathChoice::Plain(path) = path::choose(&facts) else {
            self.stats.fail(FailureKind::NoPath);
            let err = DmaError::NoPath {
                mask: config.dma_mask,
                pools: self.pools.occupied(),
                lowest_pool_bus_end: self.lowest_pool_bus_end(),
            };
            log::warn!("ccdma: attach of device {:#x} failed: {err}", config.id);
            return Err(err);
        };
        log::debug!("ccdma: device {:#x} ({}) -> {}", config.id, config.dma_mask, path.name());
        Ok(self.new_device(config, path, pools, None))
    }

    /// Inlined always: plain attach builds the device in place; the IOMMU paths share one copy
    /// through `new_domain_device` (iommu/attach.rs).
    #[inline(always)]
    pub(crate) fn new_device(
        &self,
        config: DeviceConfig,
        path: DmaPath,
        pools: PoolOrder,
        domain: Option<DomainRef>,
    ) -> Device {
        let serial = self.next_serial.fetch_add(1, Ordering::Relaxed);
        let place = self.placement(&config, &pools);
        Device {
            config,
            path,
            pools,
            place,
            layer: self.id,
            serial,
            domain,
            live: Default::default(),
            home_live: Default::default(),
            home: Default::default(),
            peaks: Default::default(),
            trust: crate::trust::TrustState::Untrusted,
        }
    }

    /// [`DmaLayer::detach`], over the platform as `&dyn Platform`.
    pub(crate) fn detach_dyn(&self, mut dev: Device) -> Result<(), Refused<Device>> {
        let _masked = self.masked();
        if let Err(error) = self.check_device(&dev) {
            return Err(Refused { value: dev, error });
        }
        let live = dev.live();
        if live != 0 {
            crate::tracker::report_leaks(&self.tracker, &dev);
            return Err(Refused { value: dev, error: DmaError::Busy { live } });
        }
        if let Err(error) = self.revoke_dyn(&mut dev) {
            return Err(Refused { value: dev, error });
        }
        if dev.domain.is_some() {
            if let Err(error) = self.detach_domain_by_code(&dev) {
                return Err(Refused { value: dev, error });
            }
        }
        self.device_ids.release(dev.config.id);
        log::debug!("ccdma: device {:#x} (#{}) detached", dev.config.id, dev.serial);
        Ok(())
    }
}

impl<'m, const POOLS: usize, const DOMAINS: usize, const AREAS: usize> Cold<'_, 'm, POOLS, DOMAINS, AREAS> {
    /// [`DmaLayer::add_pool`], over the platform as `&dyn Platform`.
    ///
    /// # Safety
    /// As [`DmaLayer::add_pool`].
    pub(crate) unsafe fn add_pool_dyn(
        &mut self,
        phys: PhysAddr,
        len: usize,
        meta: &'m mut [SlotMeta],
        cfg: PoolConfig,
    ) -> Result<usize, DmaError> {
        let Some(i) = (0..POOLS).find(|&i| self.pools.is_empty(i)) else {
            return Err(DmaError::TooManyPools);
        };
        cfg.validate()?;
        let end = phys.0.checked_add(len as u64).ok_or(DmaError::Overflow)?;
        if !phys.is_page_aligned() || len as u64 % PAGE_SIZE != 0 {
            let addr = if phys.is_page_aligned() { end } else { phys.0 };
            return Err(DmaError::Unaligned { addr, align: PAGE_SIZE });
        }
        // Checked before anything is shared: a pool must hold one slot at least.
        if len < cfg.slot_size {
            return Err(DmaError::PoolTooSmall { len, slot_size: cfg.slot_size });
        }
        if let Some(pool) = self.pool_overlapping(phys, end) {
            return Err(DmaError::PoolOverlap { pool });
        }
        let needed = cfg.slots_for(len);
        if meta.len() < needed {
            return Err(DmaError::MetadataTooSmall { needed, provided: meta.len() });
        }
        let cpu = self.platform.cpu_ptr(phys, len).ok_or(DmaError::NoCpuMapping(phys))?;
        let pages = len as u64 / PAGE_SIZE;
        if self.platform.is_confidential() {
            self.share_pages(phys, pages)?;
        }
        // Built in its table slot, in place: a pool is ~2.4 KiB, too much for a firmware frame.
        // SAFETY: the caller guarantees the range is ours for 'm; the platform gave its CPU mapping.
        let built = self.pools.set_fixed_with(i, |pool| unsafe { pool.init(phys, cpu, len, meta, cfg) });
        match built.map_err(|e| e.unwrap_or(DmaError::TooManyPools)) {
            Ok(()) => {
                let bus = self.platform.shared_bus_addr(phys);
                self.plain.insert(i, bus, len as u64, false);
                log::debug!("ccdma: pool {i}: {len:#x} bytes at {phys}, bus {bus}");
                Ok(i)
            }
            Err(e) => {
                if self.platform.is_confidential() {
                    // Config errors were checked above, so this is unreachable in practice; still give
                    // the pages back.
                    let _ = self.unshare_pages(phys, pages);
                }
                Err(e)
            }
        }
    }

    /// [`DmaLayer::release_pools`], over the platform as `&dyn Platform`.
    pub(crate) fn release_pools_dyn(&mut self) -> Result<(), DmaError> {
        // List pages taken from a pool (`TceBatching::PoolPages`) are no mapping: given back below.
        let live = self.pools().map(|p| p.slots_in_use() as u64).sum::<u64>() - self.list_pool_slots() as u64;
        if live != 0 {
            return Err(DmaError::Busy { live });
        }
        // A device window may still translate to the pools: they must stay shared until it is gone.
        if self.iommu_in_use() {
            return Err(DmaError::DomainsInUse);
        }
        self.drop_pool_list_pages();
        let mut result = self.shrink_all_dyn();
        let confidential = self.platform.is_confidential();
        // What the fixed pools counted stays in the statistics (grown ones handed theirs over as
        // they left): summed first, so the shards take three read-modify-writes, not three a pool
        // (unrolled over the pool slots, those were ~1.5 KB of .text on ppc64).
        let mut tally = crate::pool::PoolTally::default();
        for i in 0..POOLS {
            if let Some(p) = self.pools.fixed(i) {
                tally = tally.plus(p.tally());
            }
        }
        self.stats.absorb(tally);
        let fixed: [Option<(PhysAddr, usize)>; MAX_POOLS] = {
            let mut out = [None; MAX_POOLS];
            for (o, p) in out.iter_mut().zip(self.pools.take_fixed()) {
                *o = Some(p);
            }
            out
        };
        self.plain.clear();
        for (phys, len) in fixed.into_iter().flatten() {
            if confidential {
                if let Err(e) = self.unshare_pages(phys, len as u64 / PAGE_SIZE) {
                    result = Err(e);
                }
            }
        }
        result
    }
}

/// [`DmaLayer::add_pool`] of the default capacities, compiled in this crate only (see
/// `Cold::as_full`).
///
/// # Safety
/// As [`DmaLayer::add_pool`].
#[inline(never)]
unsafe fn add_pool_once<'m>(
    c: &mut FullCold<'_, 'm>,
    phys: PhysAddr,
    len: usize,
    meta: &'m mut [SlotMeta],
    cfg: PoolConfig,
) -> Result<usize, DmaError> {
    // SAFETY: the caller keeps this call's contract.
    unsafe { c.add_pool_dyn(phys, len, meta, cfg) }
}

/// [`DmaLayer::release_pools`] of the default capacities, compiled in this crate only (see
/// `Cold::as_full`).
#[inline(never)]
fn release_pools_once(c: &mut FullCold<'_, '_>) -> Result<(), DmaError> {
    c.release_pools_dyn()
}

/// [`DmaLayer::attach`] of the default capacities, compiled in this crate only (see
/// `Cold::as_full`).
#[inline(never)]
fn attach_once(c: &FullCold<'_, '_>, config: DeviceConfig) -> Result<Device, DmaError> {
    c.attach_dyn(config)
}

/// [`DmaLayer::stats`] of the default capacities, compiled in this crate only (see
/// `Cold::as_full`).
#[inline(never)]
fn stats_once(c: &FullCold<'_, '_>) -> StatsSnapshot {
    c.stats_dyn()
}

/// [`DmaLayer::detach`] of the default capacities, compiled in this crate only (see
/// `Cold::as_full`).
#[inline(never)]
fn detach_once(c: &FullCold<'_, '_>, dev: Device) -> Result<(), Refused<Device>> {
    c.detach_dyn(dev)
}
