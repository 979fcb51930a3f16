//! `DmaLayer`: one instance per guest, shared by every CPU. Owns the pools, attaches devices, and
//! implements the streaming API (the raw face; the safe face in [`crate::mapping`] builds on it).

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::addr::{pages_spanned, BusAddr, PhysAddr, PAGE_SIZE};
use crate::device::{DeviceConfig, DmaPath};
use crate::direction::{DmaAttrs, DmaDirection};
use crate::error::{DmaError, Refused};
use crate::iommu::domain::{DomainRef, Iommu, IommuCounters};
use crate::platform::Platform;
use crate::pool::{BouncePool, NewHead, Owner, PoolConfig, RunRequest, SlotMeta, SlotRecord};
use crate::stats::{should_warn, FailureKind, Stats, StatsSnapshot};

/// Most pools one layer can have.
pub const MAX_POOLS: usize = 8;

static NEXT_LAYER_ID: AtomicU32 = AtomicU32::new(1);

/// Pools a device may use, best first (highest bus range first, so wide devices leave low pools to the
/// devices that can use nothing else).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PoolOrder {
    idx: [u8; MAX_POOLS],
    len: u8,
}

impl PoolOrder {
    pub(crate) fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.idx[..self.len as usize].iter().map(|&i| i as usize)
    }
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub(crate) const EMPTY: PoolOrder = PoolOrder { idx: [0; MAX_POOLS], len: 0 };
    pub(crate) fn push(&mut self, pool: usize) {
        if (self.len as usize) < MAX_POOLS {
            self.idx[self.len as usize] = pool as u8;
            self.len += 1;
        }
    }
    /// Sort best first: highest bus base first.
    pub(crate) fn sort_by_bus(&mut self, bus: &[BusAddr; MAX_POOLS]) {
        let n = self.len as usize;
        self.idx[..n].sort_unstable_by(|a, b| bus[*b as usize].cmp(&bus[*a as usize]));
    }
}

/// A device attached to a layer: its configuration, the path chosen for it, and how many of its
/// mappings, scatter-gather lists and coherent buffers are live.
///
/// Move-only: the one value stands for the attachment. Drivers share it as `&Device` (mappings
/// borrow it), and [`DmaLayer::detach`] consumes it, so the borrow checker proves that no map, unmap
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
    /// Live mappings, lists and coherent buffers (detach refuses while non-zero).
    pub(crate) live: AtomicU64,
}

impl Device {
    /// The layer's serial number for this attach (mappings record it; errors name it).
    pub fn serial(&self) -> u32 {
        self.serial
    }
    /// Mappings, scatter-gather lists and coherent buffers of this device live now.
    pub fn live(&self) -> u64 {
        self.live.load(Ordering::Acquire)
    }
    pub(crate) fn live_inc(&self) {
        self.live.fetch_add(1, Ordering::AcqRel);
    }
    /// One live object ended. Saturating: a raw-face caller that breaks its contract on a path
    /// without records (direct) must not wrap the count and hide live mappings.
    pub(crate) fn live_dec(&self) {
        let _ = self.live.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }
    /// The configuration given at attach.
    pub fn config(&self) -> &DeviceConfig {
        &self.config
    }
    /// The path chosen at attach.
    pub fn path(&self) -> DmaPath {
        self.path
    }
    /// Indices of the pools this device maps from, in the order they are tried.
    pub fn pool_indices(&self) -> impl Iterator<Item = usize> + '_ {
        self.pools.iter()
    }
}

/// Where a mapping's original data lives.
#[derive(Clone, Copy)]
pub(crate) struct Original {
    pub cpu: *mut u8,
    pub phys: Option<PhysAddr>,
    /// True when a [`crate::Mapping`] owns the mapping (the raw face then refuses it).
    pub safe: bool,
}

/// A slot run just allocated and filled by `bounce_alloc`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BounceRun {
    /// Pool index.
    pub pool: usize,
    /// Global index of the head slot.
    pub index: usize,
    /// Pool offset of the run.
    pub run_off: usize,
    /// Offset of the data inside the run.
    pub data_off: usize,
    /// Bytes of the run.
    pub run_len: usize,
}

/// The DMA layer: pools, devices, statistics.
pub struct DmaLayer<'m, P: Platform> {
    pub(crate) platform: P,
    pub(crate) pools: [Option<BouncePool<'m>>; MAX_POOLS],
    pub(crate) pool_bus: [BusAddr; MAX_POOLS],
    pub(crate) npools: usize,
    pub(crate) stats: Stats,
    pub(crate) id: u32,
    /// Source of device serials (never 0).
    next_serial: AtomicU32,
    /// The IOMMU path, once enabled (`enable_iommu`).
    pub(crate) iommu: Option<Iommu<'m>>,
    /// Counters of the IOMMU path and coherent buffers.
    pub(crate) iommu_counters: IommuCounters,
    /// The misuse tracker (feature `debug-tracker`).
    #[cfg(feature = "debug-tracker")]
    pub(crate) tracker: crate::tracker::Tracker,
}

impl<'m, P: Platform> DmaLayer<'m, P> {
    /// A layer with no pools yet.
    pub fn new(platform: P) -> Self {
        DmaLayer {
            platform,
            pools: core::array::from_fn(|_| None),
            pool_bus: [BusAddr(0); MAX_POOLS],
            npools: 0,
            stats: Stats::default(),
            id: NEXT_LAYER_ID.fetch_add(1, Ordering::Relaxed),
            next_serial: AtomicU32::new(1),
            iommu: None,
            iommu_counters: IommuCounters::default(),
            #[cfg(feature = "debug-tracker")]
            tracker: Default::default(),
        }
    }

    /// The platform.
    pub fn platform(&self) -> &P {
        &self.platform
    }

    /// Add a pool over `[phys, phys + len)` with metadata in `meta` (at least `cfg.slots_for(len)`
    /// entries). In a confidential guest the memory is shared here; if sharing fails part way, what was
    /// shared is made private again (or quarantined) and the error says so.
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
        if self.npools == MAX_POOLS {
            return Err(DmaError::TooManyPools);
        }
        cfg.validate()?;
        let end = phys.0.checked_add(len as u64).ok_or(DmaError::Overflow)?;
        if !phys.is_page_aligned() || len as u64 % PAGE_SIZE != 0 {
            return Err(DmaError::Unaligned { addr: phys.0 | len as u64, align: PAGE_SIZE });
        }
        // Checked before anything is shared: a pool must hold one slot at least.
        if len < cfg.slot_size {
            return Err(DmaError::PoolTooSmall { len, slot_size: cfg.slot_size });
        }
        if let Some(pool) = (0..self.npools).find(|&i| {
            self.pools[i].as_ref().is_some_and(|p| phys.0 < p.phys().0 + p.len() as u64 && p.phys().0 < end)
        }) {
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
        // SAFETY: the caller guarantees the range is ours for 'm; the platform gave its CPU mapping.
        match unsafe { BouncePool::new(phys, cpu, len, meta, cfg) } {
            Ok(pool) => {
                let i = self.npools;
                self.pool_bus[i] = self.platform.shared_bus_addr(phys);
                self.pools[i] = Some(pool);
                self.npools += 1;
                log::debug!("ccdma: pool {i}: {len:#x} bytes at {phys}, bus {}", self.pool_bus[i]);
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

    /// Tear down every pool: unshare its memory (quarantining pages that cannot be made private).
    /// Fails with nothing changed while any mapping is live.
    pub fn release_pools(&mut self) -> Result<(), DmaError> {
        if self.pools().any(|p| p.slots_in_use() != 0) {
            return Err(DmaError::Busy { live: self.pools().map(|p| p.slots_in_use() as u64).sum() });
        }
        // A device window may still translate to the pools: they must stay shared until it is gone.
        if self.iommu_in_use() {
            return Err(DmaError::DomainsInUse);
        }
        let mut result = Ok(());
        for i in 0..self.npools {
            if let Some(pool) = self.pools[i].take() {
                if self.platform.is_confidential() {
                    let pages = pool.len() as u64 / PAGE_SIZE;
                    if let Err(e) = self.unshare_pages(pool.phys(), pages) {
                        result = Err(e);
                    }
                }
            }
        }
        self.npools = 0;
        result
    }

    /// The pools, in the order they were added.
    pub fn pools(&self) -> impl Iterator<Item = &BouncePool<'m>> + '_ {
        self.pools[..self.npools].iter().flatten()
    }

    /// Pool `i` and its bus base (for devices without IOMMU).
    pub fn pool(&self, i: usize) -> Option<(&BouncePool<'m>, BusAddr)> {
        self.pools.get(i)?.as_ref().map(|p| (p, self.pool_bus[i]))
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> StatsSnapshot {
        let mut s = self.stats.snapshot();
        for p in self.pools() {
            s.slots_in_use += p.slots_in_use() as u64;
            s.slots_high_water += p.high_water() as u64;
        }
        s
    }

    /// Share pages; on failure roll back what was shared and quarantine what cannot be rolled back.
    pub(crate) fn share_pages(&self, phys: PhysAddr, pages: u64) -> Result<(), DmaError> {
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
                Err(DmaError::SharingFailed { phys, pages, quarantined, kind: partial.kind })
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
                Err(DmaError::UnsharingFailed { phys, quarantined, kind: partial.kind })
            }
        }
    }

    /// Attach a device: choose its path, or fail naming its mask and the pools.
    pub fn attach(&self, config: DeviceConfig) -> Result<Device, DmaError> {
        let m = config.min_align_mask;
        // 2^n - 1, and below 4 GiB: no device needs more, and it bounds every alignment sum later.
        if m & m.wrapping_add(1) != 0 || m > u64::from(u32::MAX) {
            return Err(DmaError::InvalidMinAlignMask(m));
        }
        let confidential = self.platform.is_confidential();
        if confidential && self.platform.tce().is_some_and(|t| t.default_window(config.id).is_some()) {
            return self.attach_iommu(config);
        }
        let ram_end = self.platform.ram_end().0;
        let path = if !confidential && config.dma_mask.covers(0, ram_end.max(1)) {
            DmaPath::Direct
        } else if !confidential {
            DmaPath::BounceAboveMask
        } else {
            DmaPath::BounceAlways
        };
        let pools = self.reachable_pools(&config);
        if path != DmaPath::Direct && pools.is_empty() {
            self.stats.fail(FailureKind::NoPath);
            let err = DmaError::NoPath {
                mask: config.dma_mask,
                pools: self.npools,
                lowest_pool_bus_end: self.lowest_pool_bus_end(),
            };
            log::warn!("ccdma: attach of device {:#x} failed: {err}", config.id);
            return Err(err);
        }
        log::debug!("ccdma: device {:#x} ({}) -> {}", config.id, config.dma_mask, path.name());
        Ok(self.new_device(config, path, pools, None))
    }

    pub(crate) fn new_device(
        &self,
        config: DeviceConfig,
        path: DmaPath,
        pools: PoolOrder,
        domain: Option<DomainRef>,
    ) -> Device {
        let serial = self.next_serial.fetch_add(1, Ordering::Relaxed);
        Device { config, path, pools, layer: self.id, serial, domain, live: AtomicU64::new(0) }
    }

    /// Detach a device. Refused while it has live mappings, lists or coherent buffers
    /// ([`DmaError::Busy`]), or when its IOMMU entries cannot be cleared: the device comes back in
    /// the error, still attached, and detach can be retried. A detach that failed part way leaves the
    /// device mapping nothing ([`DmaError::DetachIncomplete`]) until a retry completes.
    pub fn detach(&self, dev: Device) -> Result<(), Refused<Device>> {
        if let Err(error) = self.check_device(&dev) {
            return Err(Refused { value: dev, error });
        }
        let live = dev.live();
        if live != 0 {
            crate::tracker::report_leaks(self, &dev);
            return Err(Refused { value: dev, error: DmaError::Busy { live } });
        }
        if dev.domain.is_some() {
            if let Err(error) = self.detach_domain(&dev) {
                return Err(Refused { value: dev, error });
            }
        }
        log::debug!("ccdma: device {:#x} (#{}) detached", dev.config.id, dev.serial);
        Ok(())
    }

    fn lowest_pool_bus_end(&self) -> u64 {
        (0..self.npools)
            .map(|i| self.pool_bus[i].0 + self.pools[i].as_ref().map_or(0, |p| p.len() as u64))
            .min()
            .unwrap_or(0)
    }

    fn reachable_pools(&self, config: &DeviceConfig) -> PoolOrder {
        let mut order = PoolOrder { idx: [0; MAX_POOLS], len: 0 };
        for i in 0..self.npools {
            if let Some(p) = &self.pools[i] {
                if config.dma_mask.covers(self.pool_bus[i].0, p.len() as u64) {
                    order.idx[order.len as usize] = i as u8;
                    order.len += 1;
                }
            }
        }
        let n = order.len as usize;
        let bus = &self.pool_bus;
        order.idx[..n].sort_unstable_by(|a, b| bus[*b as usize].cmp(&bus[*a as usize]));
        order
    }

    pub(crate) fn check_device(&self, dev: &Device) -> Result<(), DmaError> {
        if dev.layer != self.id {
            return Err(DmaError::NotAttached);
        }
        Ok(())
    }

    /// Map by physical address (raw face). Returns the bus address for the device.
    ///
    /// # Safety
    /// `[phys, phys + len)` must be guest RAM that the caller owns: valid for reads (and, unless `dir`
    /// is `ToDevice`, writes) until the mapping is unmapped with [`Self::unmap`], and not used
    /// otherwise meanwhile except between [`Self::sync_for_cpu`] and [`Self::sync_for_device`]. The
    /// layer writes device data there at unmap and sync.
    #[track_caller]
    pub unsafe fn map_phys(
        &self,
        dev: &Device,
        phys: PhysAddr,
        len: usize,
        dir: DmaDirection,
        attrs: DmaAttrs,
    ) -> Result<BusAddr, DmaError> {
        self.check_device(dev)?;
        if len == 0 {
            return Err(DmaError::ZeroLength);
        }
        let cpu = self.platform.cpu_ptr(phys, len).ok_or(DmaError::NotTranslatable)?;
        self.map_original(dev, Original { cpu: cpu.as_ptr(), phys: Some(phys), safe: false }, len, dir, attrs)
    }

    /// Map a CPU buffer (raw face, for HALs such as virtio-drivers').
    ///
    /// # Safety
    /// `ptr` must be valid for reads (and, unless `dir` is `ToDevice`, writes) of `len` bytes until the
    /// mapping is unmapped with [`Self::unmap`], and the caller must not touch it meanwhile except
    /// between `sync_for_cpu` and `sync_for_device`.
    #[track_caller]
    pub unsafe fn map_ptr(
        &self,
        dev: &Device,
        ptr: *mut u8,
        len: usize,
        dir: DmaDirection,
        attrs: DmaAttrs,
    ) -> Result<BusAddr, DmaError> {
        self.check_device(dev)?;
        let phys = self.translate_for(dev, ptr, len);
        self.map_original(dev, Original { cpu: ptr, phys, safe: false }, len, dir, attrs)
    }

    /// The physical address of a CPU buffer, when the device's path needs it. Bounce-always needs it
    /// only for `min_align_mask` bits above the page offset (the page offset is the same in the
    /// virtual address), so the translation is skipped otherwise.
    pub(crate) fn translate_for(&self, dev: &Device, ptr: *mut u8, len: usize) -> Option<PhysAddr> {
        match dev.path {
            DmaPath::BounceAlways if dev.config.min_align_mask < PAGE_SIZE => None,
            _ => self.platform.virt_to_phys(ptr, len),
        }
    }

    /// Map an original for the safe or raw face; counts the device's live mappings and tells the
    /// tracker (feature `debug-tracker`).
    #[track_caller]
    pub(crate) fn map_original(
        &self,
        dev: &Device,
        orig: Original,
        len: usize,
        dir: DmaDirection,
        attrs: DmaAttrs,
    ) -> Result<BusAddr, DmaError> {
        let bus = self.map_route(dev, orig, len, dir, attrs)?;
        dev.live_inc();
        let site = core::panic::Location::caller();
        crate::tracker::mapped(self, dev, bus, len, dir, crate::tracker::TrackedKind::Mapping, site);
        Ok(bus)
    }

    fn map_route(
        &self,
        dev: &Device,
        orig: Original,
        len: usize,
        dir: DmaDirection,
        attrs: DmaAttrs,
    ) -> Result<BusAddr, DmaError> {
        if len == 0 {
            return Err(DmaError::ZeroLength);
        }
        if dev.domain.is_some() {
            return self.iommu_map(dev, orig, len, dir, attrs);
        }
        let mask = dev.config.dma_mask;
        match (dev.path, orig.phys) {
            (DmaPath::Direct, None) => {
                self.stats.fail(FailureKind::Invalid);
                Err(DmaError::NotTranslatable)
            }
            (DmaPath::Direct | DmaPath::BounceAboveMask, Some(p)) if mask.covers(p.0, len as u64) => {
                self.stats.mapped(false);
                Ok(BusAddr(p.0))
            }
            (DmaPath::Direct, Some(p)) => {
                self.stats.fail(FailureKind::BeyondMask);
                Err(DmaError::BeyondMask { addr: p.0, mask })
            }
            _ => self.bounce_map(dev, &dev.pools, &self.pool_bus, orig, len, dir, attrs),
        }
    }

    /// Bounce into one of `order`'s pools, each of which sits at `bus[i]` on the device's bus.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn bounce_map(
        &self,
        dev: &Device,
        order: &PoolOrder,
        bus: &[BusAddr; MAX_POOLS],
        orig: Original,
        len: usize,
        dir: DmaDirection,
        attrs: DmaAttrs,
    ) -> Result<BusAddr, DmaError> {
        let run = self.bounce_alloc(dev, order, orig, len, dir, attrs, 0)?;
        self.stats.mapped(true);
        Ok(BusAddr(bus[run.pool].0 + (run.run_off + run.data_off) as u64))
    }

    /// Allocate a slot run in the first of `order`'s pools that has one and fill it per direction.
    ///
    /// With `iommu_page` (non-zero: strict IOMMU mappings) the run starts on an IOMMU page and covers
    /// whole IOMMU pages, the bytes around the data zeroed, so no page the device can reach holds
    /// another mapping's bytes or stale pool data.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn bounce_alloc(
        &self,
        dev: &Device,
        order: &PoolOrder,
        orig: Original,
        len: usize,
        dir: DmaDirection,
        attrs: DmaAttrs,
        iommu_page: u64,
    ) -> Result<BounceRun, DmaError> {
        let min_align = dev.config.min_align_mask;
        let orig_addr = orig.phys.map_or(orig.cpu as u64, |p| p.0);
        let mut largest = 0;
        for i in order.iter() {
            let Some(pool) = &self.pools[i] else { continue };
            let slot = pool.slot_size() as u64;
            let unit = slot.max(iommu_page);
            let offset = (orig_addr & min_align & (unit - 1)) as usize;
            let max_run = if iommu_page > 0 {
                pool.max_mapping() & !(iommu_page as usize - 1)
            } else {
                pool.max_mapping()
            };
            // Mappings of a page or more start on a page (as SWIOTLB does), except for the bits the
            // device needs preserved; strict mappings always start on an IOMMU page, the preserved bits
            // below it going into the offset.
            let page_bits = if iommu_page > 0 {
                unit - 1
            } else if len as u64 >= PAGE_SIZE {
                PAGE_SIZE - 1
            } else {
                0
            };
            let align_mask = (min_align | page_bits) & !(slot - 1);
            let align_bits = if iommu_page > 0 {
                orig_addr & min_align & align_mask & !(unit - 1)
            } else {
                orig_addr & min_align & align_mask
            };
            // No run crosses a segment (`max_mapping` bytes from the pool's start), so a run whose
            // alignment puts its first candidate `phase` bytes into every segment has that much less
            // room: a request that can never fit is `TooLarge`, not a transient exhaustion.
            let span = align_mask + slot;
            let seg = pool.max_mapping() as u64;
            let phase = if span <= seg && seg % span == 0 {
                (align_bits.wrapping_sub(pool.phys().0) & (span - 1)) as usize
            } else {
                0
            };
            let max_run = max_run.saturating_sub(phase);
            largest = largest.max(max_run.saturating_sub(offset));
            // Longer than any run of this pool: skip before any arithmetic on `len` can overflow.
            if len > max_run {
                continue;
            }
            let Some(total) = offset.checked_add(len) else { continue };
            let run_bytes = if iommu_page > 0 { total.next_multiple_of(iommu_page as usize) } else { total };
            let nslots = run_bytes.div_ceil(slot as usize);
            if nslots * slot as usize > max_run.max(slot as usize) || total > max_run {
                continue;
            }
            let req = RunRequest { nslots, align_mask, align_bits };
            let owner = Owner { device: dev.serial, safe: orig.safe };
            let head = NewHead { offset, len, dir, attrs, orig: orig.cpu, owner };
            let Some(index) = pool.alloc(req, head) else { continue };
            let run_off = index << pool.slot_size().trailing_zeros();
            let run_len = nslots * slot as usize;
            self.fill_slot(pool.cpu_at(run_off + offset), orig.cpu, len, dir, attrs);
            if iommu_page > 0 {
                // SAFETY: `[run_off, run_off + run_len)` is the run just allocated, ours alone.
                unsafe {
                    core::ptr::write_bytes(pool.cpu_at(run_off), 0, offset);
                    core::ptr::write_bytes(pool.cpu_at(run_off + offset + len), 0, run_len - offset - len);
                }
            }
            return Ok(BounceRun { pool: i, index, run_off, data_off: offset, run_len });
        }
        if largest < len {
            self.stats.fail(FailureKind::TooLarge);
            return Err(DmaError::TooLarge { len, max: largest });
        }
        let n = self.stats.fail(FailureKind::PoolExhausted);
        if !attrs.contains(DmaAttrs::NO_WARN) && should_warn(n) {
            log::warn!(
                "ccdma: bounce pool exhausted mapping {len} bytes for device {:#x} ({n} failures so far)",
                dev.config.id
            );
        }
        Err(DmaError::PoolExhausted { len })
    }

    /// Initialise a freshly allocated slot run: the original for data going to the device, zeroes (or
    /// the original, on request) for data coming from it, so neither stale pool data can reach the guest
    /// nor private bytes the host.
    fn fill_slot(&self, slot: *mut u8, orig: *mut u8, len: usize, dir: DmaDirection, attrs: DmaAttrs) {
        let copy = if dir.device_reads() {
            !attrs.contains(DmaAttrs::SKIP_CPU_SYNC)
        } else {
            attrs.contains(DmaAttrs::PRESERVE_UNWRITTEN) && !attrs.contains(DmaAttrs::SKIP_CPU_SYNC)
        };
        if copy {
            // SAFETY: `orig` is valid for `len` bytes (map contract); the slot run is ours alone and
            // holds `len` bytes from `slot`; pool memory never overlaps a caller's buffer.
            unsafe { core::ptr::copy_nonoverlapping(orig, slot, len) };
            self.stats.to_device(len);
        } else {
            // SAFETY: as above, for the slot run.
            unsafe { core::ptr::write_bytes(slot, 0, len) };
        }
    }

    /// Find the pool holding bus address `bus` for this device and the pool offset.
    fn locate(&self, dev: &Device, bus: BusAddr) -> Option<(usize, u64)> {
        let (order, bases) = self.pool_view(dev)?;
        order.iter().find_map(|i| {
            let pool = self.pools[i].as_ref()?;
            let off = bus.0.checked_sub(bases[i].0)?;
            (off < pool.len() as u64).then_some((i, off))
        })
    }

    /// The pools a device maps from and where each starts on its bus (per device when the pools are
    /// premapped into its IOMMU window). `None` for a domain that is not set up (never attached).
    pub(crate) fn pool_view<'a>(
        &'a self,
        dev: &'a Device,
    ) -> Option<(&'a PoolOrder, &'a [BusAddr; MAX_POOLS])> {
        match dev.domain {
            None => Some((&dev.pools, &self.pool_bus)),
            Some(d) => self.domain_info(d).map(|i| (&i.pools, &i.pool_bus)),
        }
    }

    /// Find the live mapping at `bus`, optionally claiming it for release.
    fn record(
        &self,
        dev: &Device,
        bus: BusAddr,
        release: bool,
    ) -> Result<Option<(usize, SlotRecord)>, DmaError> {
        match self.locate(dev, bus) {
            Some((i, off)) => {
                let pool = self.pools[i].as_ref().ok_or(DmaError::UnknownMapping(bus))?;
                match pool.lookup(off, release) {
                    Some(rec) => Ok(Some((i, rec))),
                    None => {
                        self.stats.fail(FailureKind::UnknownMapping);
                        Err(DmaError::UnknownMapping(bus))
                    }
                }
            }
            // Not in any pool: a direct mapping on a path that has them (nothing to undo), else junk.
            None if matches!(dev.path, DmaPath::Direct | DmaPath::BounceAboveMask) => Ok(None),
            None => {
                self.stats.fail(FailureKind::UnknownMapping);
                Err(DmaError::UnknownMapping(bus))
            }
        }
    }

    /// Check a caller's claim on a mapping against the guest's record: its device, its face (the raw
    /// face never touches what a `Mapping` owns), then size and direction.
    pub(crate) fn check_record(
        &self,
        dev: &Device,
        bus: BusAddr,
        safe: bool,
        rec: &SlotRecord,
        len: usize,
        dir: DmaDirection,
    ) -> Result<(), DmaError> {
        if rec.owner.device != dev.serial {
            self.stats.fail(FailureKind::Mismatch);
            return Err(DmaError::WrongDevice { owner: rec.owner.device, given: dev.serial });
        }
        if rec.owner.safe != safe {
            self.stats.fail(FailureKind::Mismatch);
            return Err(DmaError::OwnedByMapping(bus));
        }
        if rec.len != len {
            self.stats.fail(FailureKind::Mismatch);
            return Err(DmaError::SizeMismatch { mapped: rec.len, given: len });
        }
        if rec.dir != dir {
            self.stats.fail(FailureKind::Mismatch);
            return Err(DmaError::DirectionMismatch { mapped: rec.dir, given: dir });
        }
        Ok(())
    }

    /// Unmap (raw face). `len` and `dir` must be those given at map time; the copy back uses the
    /// guest's own record. A wrong size, direction or device, a mapping owned by a [`crate::Mapping`],
    /// or an address that is not a live mapping is an error and changes nothing.
    ///
    /// # Safety
    /// `bus` must name a mapping this caller made with [`Self::map_ptr`] or [`Self::map_phys`] on
    /// `dev` (or one whose ownership it was handed), so that the memory the copy back writes is
    /// still the one that map's contract lent, and no other CPU unmaps or syncs it at the same time.
    /// The checks above catch honest mistakes; they cannot tell two raw callers apart.
    #[track_caller]
    pub unsafe fn unmap(
        &self,
        dev: &Device,
        bus: BusAddr,
        len: usize,
        dir: DmaDirection,
        attrs: DmaAttrs,
    ) -> Result<(), DmaError> {
        self.unmap_as(dev, bus, len, dir, attrs, false)
    }

    /// Unmap for the safe (`safe`) or raw face.
    #[track_caller]
    pub(crate) fn unmap_as(
        &self,
        dev: &Device,
        bus: BusAddr,
        len: usize,
        dir: DmaDirection,
        attrs: DmaAttrs,
        safe: bool,
    ) -> Result<(), DmaError> {
        let result = self.unmap_route(dev, bus, len, dir, attrs, safe);
        let site = core::panic::Location::caller();
        crate::tracker::unmapped(self, dev, bus, crate::tracker::TrackedKind::Mapping, &result, site);
        if result.is_ok() {
            dev.live_dec();
        }
        result
    }

    fn unmap_route(
        &self,
        dev: &Device,
        bus: BusAddr,
        len: usize,
        dir: DmaDirection,
        attrs: DmaAttrs,
        safe: bool,
    ) -> Result<(), DmaError> {
        self.check_device(dev)?;
        if self.strict_domain(dev, bus)?.is_some() {
            return self.strict_unmap(dev, bus, len, dir, attrs, safe);
        }
        let Some((i, rec)) = self.record(dev, bus, true)? else {
            self.stats.unmapped();
            return Ok(());
        };
        let pool = self.pools[i].as_ref().ok_or(DmaError::UnknownMapping(bus))?;
        if let Err(e) = self.check_record(dev, bus, safe, &rec, len, dir) {
            pool.unrelease(rec.index);
            return Err(e);
        }
        if rec.dir.device_writes() && !attrs.contains(DmaAttrs::SKIP_CPU_SYNC) {
            self.copy_to_original(pool, &rec, 0, rec.len);
        }
        pool.free(rec.index, rec.nslots);
        if dev.domain.is_some() {
            self.iommu_unmapped(dev);
        }
        self.stats.unmapped();
        Ok(())
    }

    /// A `Mapping` is gone but its unmap could not complete (strict entries that would not clear):
    /// forget its original so no later call writes the buffer whose borrow just ended. The run (and
    /// its entries, which name only pool memory) stay allocated for good and the device stays busy.
    pub(crate) fn orphan(&self, dev: &Device, bus: BusAddr) {
        let found = match self.strict_domain(dev, bus) {
            Ok(Some(info)) => self.strict_record(dev, info, bus, true).ok().map(|(i, rec, _)| (i, rec)),
            Ok(None) => self.record(dev, bus, true).ok().flatten(),
            Err(_) => None,
        };
        if let Some((i, rec)) = found {
            if let Some(pool) = &self.pools[i] {
                pool.orphan(rec.index);
            }
        }
        self.stats.fail(FailureKind::Iommu);
        log::error!(
            "ccdma: mapping {bus} of device {:#x} dropped while its unmap failed: its slots and entries stay \
             reserved for good, the buffer is never written again",
            dev.config.id
        );
    }

    /// Make device writes in `[offset, offset + len)` of the mapping visible to the CPU (raw face).
    ///
    /// # Safety
    /// As for [`Self::unmap`]: `bus` is a live raw mapping of this caller on `dev`, and nothing reads
    /// or writes `[offset, offset + len)` of its original while this runs.
    #[track_caller]
    pub unsafe fn sync_for_cpu(
        &self,
        dev: &Device,
        bus: BusAddr,
        offset: usize,
        len: usize,
        dir: DmaDirection,
    ) -> Result<(), DmaError> {
        self.sync(dev, bus, offset, len, dir, true, false)
    }

    /// Make CPU writes in `[offset, offset + len)` of the original visible to the device (raw face).
    ///
    /// # Safety
    /// As for [`Self::sync_for_cpu`].
    #[track_caller]
    pub unsafe fn sync_for_device(
        &self,
        dev: &Device,
        bus: BusAddr,
        offset: usize,
        len: usize,
        dir: DmaDirection,
    ) -> Result<(), DmaError> {
        self.sync(dev, bus, offset, len, dir, false, false)
    }

    /// Sync for the safe (`safe`) or raw face.
    #[allow(clippy::too_many_arguments)]
    #[track_caller]
    pub(crate) fn sync(
        &self,
        dev: &Device,
        bus: BusAddr,
        offset: usize,
        len: usize,
        dir: DmaDirection,
        for_cpu: bool,
        safe: bool,
    ) -> Result<(), DmaError> {
        let result = self.sync_route(dev, bus, offset, len, dir, for_cpu, safe);
        crate::tracker::synced(self, dev, bus, &result, core::panic::Location::caller());
        result
    }

    #[allow(clippy::too_many_arguments)]
    fn sync_route(
        &self,
        dev: &Device,
        bus: BusAddr,
        offset: usize,
        len: usize,
        dir: DmaDirection,
        for_cpu: bool,
        safe: bool,
    ) -> Result<(), DmaError> {
        self.check_device(dev)?;
        let found = match self.strict_domain(dev, bus)? {
            Some(info) => self.strict_record(dev, info, bus, false).map(|(i, rec, _)| Some((i, rec)))?,
            None => self.record(dev, bus, false)?,
        };
        let Some((i, rec)) = found else { return Ok(()) };
        let pool = self.pools[i].as_ref().ok_or(DmaError::UnknownMapping(bus))?;
        if rec.owner.device != dev.serial {
            self.stats.fail(FailureKind::Mismatch);
            return Err(DmaError::WrongDevice { owner: rec.owner.device, given: dev.serial });
        }
        if rec.owner.safe != safe {
            self.stats.fail(FailureKind::Mismatch);
            return Err(DmaError::OwnedByMapping(bus));
        }
        if rec.dir != dir {
            self.stats.fail(FailureKind::Mismatch);
            return Err(DmaError::DirectionMismatch { mapped: rec.dir, given: dir });
        }
        if offset.checked_add(len).is_none_or(|end| end > rec.len) {
            self.stats.fail(FailureKind::OutOfRange);
            return Err(DmaError::OutOfRange { offset, len, mapped: rec.len });
        }
        if for_cpu {
            if rec.dir.device_writes() {
                self.copy_to_original(pool, &rec, offset, len);
            }
        } else if rec.dir.device_reads() || rec.attrs.contains(DmaAttrs::PRESERVE_UNWRITTEN) {
            let slot = pool.cpu_at((rec.index << pool.slot_size().trailing_zeros()) + rec.offset + offset);
            // SAFETY: the record says the original holds `rec.len` bytes and the run holds them too;
            // `offset + len <= rec.len` was checked.
            unsafe { core::ptr::copy_nonoverlapping(rec.orig.add(offset), slot, len) };
            self.stats.to_device(len);
        }
        Ok(())
    }

    /// Copy `[offset, offset + len)` of a mapping from shared memory to the original: one pass, so
    /// the guest reads each shared byte once, whatever the device does meanwhile.
    pub(crate) fn copy_to_original(
        &self,
        pool: &BouncePool<'_>,
        rec: &SlotRecord,
        offset: usize,
        len: usize,
    ) {
        let slot = pool.cpu_at((rec.index << pool.slot_size().trailing_zeros()) + rec.offset + offset);
        // SAFETY: the original is valid for writes of `rec.len` bytes until unmap (map contract) and
        // `offset + len <= rec.len`; the run is live and ours.
        unsafe { core::ptr::copy_nonoverlapping(slot, rec.orig.add(offset), len) };
        self.stats.from_device(len);
    }
}

/// Number of pages a physical range spans (re-exported for platform code).
pub fn span_pages(phys: PhysAddr, len: usize) -> u64 {
    pages_spanned(phys.0, len as u64)
}
