//! Streaming DMA of one buffer, top to bottom: the raw face by address (`unsafe`, for HALs and C),
//! the entry points the safe face ([`crate::mapping`]) uses, and the routing to the path's mechanism:
//! direct use of the buffer, a bounce through a pool ([`bounce`]), or a bounce into a run with its own
//! IOMMU entries ([`strict`]). The guest's own record of each mapping ([`record`]) is what unmap and
//! sync trust; nothing a device or caller alleges later.
//!
//! One map: `map_ptr` -> `map_original` (live count, tracker; `Mapping`: `map_original_inline`, its
//! retry `map_again` out of line) -> `map_bounce` (the paths that bounce, first attempt; a
//! `MapRequest` by reference for `Mapping`, `bounce_map_req`) or `map_route` (every path, and
//! growth's retries) -> `bounce_map` /
//! `strict_map` -> `bounce_in_view` (the device's pool view read in place, pool run, fill) -> bus
//! address; a `Mapping` keeps the run's pool and offset ([`PoolAt`]).
//! One unmap: `unmap`/`Mapping::unmap` -> `unmap_as` -> `unmap_route` -> `locate` or, for a
//! `Mapping` of a bounce run, straight to its recorded pool and offset (`unmap_mapping`, inline:
//! `unmap_mapping_then`, the rest in `unmap_settle`) -> `unmap_in_pool`: the pool checks the claim
//! (`release_or_free_claimed`; `check_record` names a refusal) -> copy back -> free (strict: entries
//! cleared first).

pub(crate) mod bounce;
pub(crate) mod placement;
pub(crate) mod raw_claims;
pub(crate) mod raw_records;
pub(crate) mod record;
pub(crate) mod strict;
pub(crate) mod trusted;

use crate::addr::{BusAddr, PhysAddr, PAGE_SIZE};
use crate::device::{Device, LiveKind};
use crate::direction::{DmaAttrs, DmaDirection};
use crate::error::DmaError;
use crate::layer::DmaLayer;
use crate::path::DmaPath;
use crate::platform::Platform;
use crate::pool::{BouncePool, Claim, SlotRecord, Taken};
use crate::stats::FailureKind;
use crate::tracker::TrackedKind;

/// Where a mapping's original data lives.
#[derive(Clone, Copy)]
pub(crate) struct Original {
    pub cpu: *mut u8,
    pub phys: Option<PhysAddr>,
    /// True when a [`crate::Mapping`] owns the mapping (the raw face then refuses it).
    pub safe: bool,
}

/// A map as the bounce path takes it ([`DmaLayer::bounce_map`]), by reference: built once by the
/// face's first attempt, not copied again into each frame.
#[derive(Clone, Copy)]
pub(crate) struct MapRequest {
    pub orig: Original,
    pub len: usize,
    pub dir: DmaDirection,
    pub attrs: DmaAttrs,
}

/// A map's first attempt ([`DmaLayer::map_bounce`]): `None` when the path does not bounce.
type FirstAttempt = Option<Result<Mapped, DmaError>>;

/// What a map made: the bus address, and for a bounce run where it lies, so the unmap of a
/// [`crate::Mapping`] goes there without a search. Two words: results copied through the map's
/// frames cost store-forwarding stalls when larger (a third word cost the premapped 4 KiB
/// map+unmap ~17 ns, the plain one ~3 ns: RESULTS.md).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Mapped {
    pub bus: BusAddr,
    pub run: RunWord,
}

impl Mapped {
    /// A mapping with no pool run of its own to go back to (direct, trusted, strict).
    pub(crate) fn elsewhere(bus: BusAddr) -> Mapped {
        Mapped { bus, run: RunWord::ELSEWHERE }
    }
}

/// A bounce run's [`PoolAt`] (if any) and whether its device's live count has it already (its home
/// pool counted it, `Device::home_live`), in one word: the offset in bits 0..48, the pool in bits
/// 48..56, the count in bit 63; no run: bits 0..63 all set. A run whose offset does not fit is
/// recorded as none (its unmap then finds it by address, as the raw face's does).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RunWord(u64);

impl RunWord {
    const COUNTED: u64 = 1 << 63;
    const NONE: u64 = Self::COUNTED - 1;
    const OFF_BITS: u32 = 48;
    /// No pool run, not counted.
    pub(crate) const ELSEWHERE: RunWord = RunWord(Self::NONE);

    #[inline(always)]
    pub(crate) fn new(at: PoolAt, counted: bool) -> RunWord {
        let c = if counted { Self::COUNTED } else { 0 };
        if at.off >> Self::OFF_BITS != 0 {
            return RunWord(Self::NONE | c);
        }
        RunWord(u64::from(at.pool) << Self::OFF_BITS | at.off | c)
    }

    #[inline(always)]
    pub(crate) fn at(self) -> Option<PoolAt> {
        let v = self.0 & !Self::COUNTED;
        (v != Self::NONE)
            .then_some(PoolAt { pool: (v >> Self::OFF_BITS) as u8, off: v & ((1 << Self::OFF_BITS) - 1) })
    }

    /// The device's live count has the mapping already.
    #[inline(always)]
    pub(crate) fn counted(self) -> bool {
        self.0 & Self::COUNTED != 0
    }
}

/// A bounce run's pool and the offset of its data in the pool: what finding its bus address in the
/// device's view gives back (`locate`), the pool's place in that view not moving while the run lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PoolAt {
    pub pool: u8,
    pub off: u64,
}

impl<'m, P: Platform, const POOLS: usize, const DOMAINS: usize, const AREAS: usize>
    DmaLayer<'m, P, POOLS, DOMAINS, AREAS>
{
    /// Map by physical address (raw face). Returns the bus address for the device.
    ///
    /// # Safety
    /// `[phys, phys + len)` must be guest RAM that the caller owns: valid for reads (and, unless `dir`
    /// is `ToDevice`, writes) until the mapping is unmapped with [`Self::unmap`], and not used
    /// otherwise meanwhile except between [`Self::sync_for_cpu`] and [`Self::sync_for_device`]. The
    /// layer writes device data there at unmap and sync.
    ///
    /// On a path that uses the buffer in place (direct, the direct part of bounce-above-mask,
    /// trusted) the mapping takes one of the layer's raw records ([`crate::RAW_RECORDS`], plus
    /// [`Self::add_raw_records`]), which unmap and sync check the claim against; with all in use
    /// the map fails with [`DmaError::RawRecordsFull`] and maps nothing.
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
        let orig = Original { cpu: cpu.as_ptr(), phys: Some(phys), safe: false };
        self.map_original(dev, orig, len, dir, attrs).map(|m| m.bus)
    }

    /// Map a CPU buffer (raw face, for HALs such as virtio-drivers').
    ///
    /// # Safety
    /// `ptr` must be valid for reads (and, unless `dir` is `ToDevice`, writes) of `len` bytes until the
    /// mapping is unmapped with [`Self::unmap`], and the caller must not touch it meanwhile except
    /// between `sync_for_cpu` and `sync_for_device`.
    ///
    /// Raw records as for [`Self::map_phys`].
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
        self.map_original(dev, Original { cpu: ptr, phys, safe: false }, len, dir, attrs).map(|m| m.bus)
    }

    /// The physical address of a CPU buffer, when the device's path needs it. A path that always
    /// bounces (without an IOMMU, premapped or strict) needs it only for `min_align_mask` bits above
    /// the page offset (the page offset is the same in the virtual address: the run's placement
    /// reads `orig.phys.map_or(orig.cpu, ..)` for those bits alone), so the translation is skipped
    /// otherwise. Direct paths, bounce-above-mask and accepted devices always translate.
    #[inline]
    pub(crate) fn translate_for(&self, dev: &Device, ptr: *mut u8, len: usize) -> Option<PhysAddr> {
        let bounces = matches!(
            dev.path,
            DmaPath::BounceAlways | DmaPath::IommuDdw | DmaPath::IommuPremapped | DmaPath::IommuStrict
        );
        if bounces && dev.config.min_align_mask < PAGE_SIZE && !dev.trust.is_accepted() {
            return None;
        }
        self.platform.virt_to_phys(ptr, len)
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
    ) -> Result<Mapped, DmaError> {
        let _masked = self.masked();
        // The paths that bounce (the common case) make their first attempt here, inline; every
        // other path, and growth after a first attempt that found no room, go through the route
        // (which would choose the same mechanism for the same device and buffer).
        let req = &MapRequest { orig, len, dir, attrs };
        let first = self.map_bounce::<false>(dev, req);
        let mapped = match first {
            Some(Ok(m)) => m,
            mut first => {
                // A deferred device's first map: its domain is set up here, once, and the map goes
                // the route (the attempts never set up: the set-up's frames stay off the growth
                // retry's chain, issue 20). Maps of a set-up domain never come here for it.
                if crate::parts::IOMMU
                    && dev.domain.is_some()
                    && len != 0
                    && matches!(first, None | Some(Err(DmaError::NotAttached)))
                {
                    match self.set_up_deferred(dev) {
                        Ok(true) => first = None,
                        Ok(false) => {}
                        Err(e) => {
                            dev.map_failed();
                            return Err(e);
                        }
                    }
                }
                let attempt = || match first.take() {
                    Some(result) => result,
                    None => self.map_route(dev, orig, len, dir, attrs),
                };
                match self.with_growth(dev, len, attempt) {
                    Ok(m) => m,
                    Err(e) => {
                        dev.map_failed();
                        return Err(e);
                    }
                }
            }
        };
        if !mapped.run.counted() {
            dev.live_inc(LiveKind::Mapping);
        }
        let site = core::panic::Location::caller();
        crate::tracker::mapped(&self.tracker, dev, mapped.bus, len, dir, TrackedKind::Mapping, site);
        Ok(mapped)
    }

    /// [`Self::map_original`] for the safe face's map (`map_buffer`), inline there: the first
    /// attempt of a bounce ([`Self::map_bounce`]) and its success in line, everything past a first
    /// attempt that did not map out of line ([`Self::map_again`]). (The raw faces keep
    /// `map_original` out of line, with its retry in it: that is the shorter way for a refused map.)
    #[track_caller]
    #[inline(always)]
    pub(crate) fn map_original_inline<R>(
        &self,
        dev: &Device,
        req: &MapRequest,
        ok: impl Fn(Mapped) -> R,
        err: impl Fn(DmaError) -> R,
    ) -> R {
        let _masked = self.masked();
        let site = core::panic::Location::caller();
        let done = |mapped: Mapped| {
            if !mapped.run.counted() {
                dev.live_inc(LiveKind::Mapping);
            }
            crate::tracker::mapped(
                &self.tracker,
                dev,
                mapped.bus,
                req.len,
                req.dir,
                TrackedKind::Mapping,
                site,
            );
            ok(mapped)
        };
        let again = |first: FirstAttempt| match self.map_again(dev, req, first) {
            Ok(m) => done(m),
            Err(e) => err(e),
        };
        // The paths that bounce (the common case) make their first attempt here, inline; every
        // other path, and growth after a first attempt that found no room, go through the route
        // (which would choose the same mechanism for the same device and buffer). Each attempt's
        // result is tested where its call wrote it and ends in `ok` or `err` there (merged first,
        // the results were copied in memory before the test).
        self.map_bounce_then::<true, _>(
            dev,
            req,
            |first| match first {
                Ok(m) => done(m),
                first => again(Some(first)),
            },
            || again(None),
        )
    }

    /// A map past a first attempt (`first`) that did not map: a deferred device's domain set up,
    /// the route, growth; a failure counted on the device. What `map_original` does past its first
    /// attempt, for [`Self::map_original_inline`].
    #[inline(never)]
    fn map_again(&self, dev: &Device, req: &MapRequest, mut first: FirstAttempt) -> Result<Mapped, DmaError> {
        let MapRequest { orig, len, dir, attrs } = *req;
        // A deferred device's first map: its domain is set up here, once, and the map goes
        // the route (the attempts never set up: the set-up's frames stay off the growth
        // retry's chain, issue 20). Maps of a set-up domain never come here for it.
        if crate::parts::IOMMU
            && dev.domain.is_some()
            && len != 0
            && matches!(first, None | Some(Err(DmaError::NotAttached)))
        {
            match self.set_up_deferred(dev) {
                Ok(true) => first = None,
                Ok(false) => {}
                Err(e) => {
                    dev.map_failed();
                    return Err(e);
                }
            }
        }
        let attempt = || match first.take() {
            Some(result) => result,
            None => self.map_route(dev, orig, len, dir, attrs),
        };
        self.with_growth(dev, len, attempt).inspect_err(|_| dev.map_failed())
    }

    /// The first attempt of a map on a path that bounces: untrusted devices (accepted ones map in
    /// place) without an IOMMU on the bounce-always path, or behind one (premapped or strict); `None`
    /// for every other case, which [`Self::map_route`] routes. For these cases the route makes the
    /// very same call, so this is only a shorter way to it.
    #[inline(always)]
    fn map_bounce<const BY_REF: bool>(
        &self,
        dev: &Device,
        req: &MapRequest,
    ) -> Option<Result<Mapped, DmaError>> {
        self.map_bounce_then::<BY_REF, _>(dev, req, Some, || None)
    }

    /// [`Self::map_bounce`], an attempt's result handed to `then` where its call wrote it, `none`
    /// called where there is none: `map_original_inline` tests each result in place, not wrapped
    /// in an `Option` and merged with the others in memory first (each a copy before the test).
    #[inline(always)]
    fn map_bounce_then<const BY_REF: bool, R>(
        &self,
        dev: &Device,
        req: &MapRequest,
        then: impl FnOnce(Result<Mapped, DmaError>) -> R,
        none: impl FnOnce() -> R,
    ) -> R {
        if req.len == 0 || dev.trust.is_accepted() {
            return none();
        }
        let MapRequest { orig, len, dir, attrs } = *req;
        if crate::parts::IOMMU && dev.domain.is_some() {
            // Premapped: the pools as the domain's window holds them (no mask: the window holds
            // only pools the device reaches). Strict, deferred or not-ready domains go out of line.
            let Some(view) = self.premapped_view(dev) else {
                // The safe face's original read in place: a copy made for this call was hoisted
                // above the test of the domain, made on every map. The raw faces' as it was (their
                // refused map is shorter with the copy).
                let orig = if BY_REF { &req.orig } else { &orig };
                return then(self.iommu_map(dev, orig, len, dir, attrs));
            };
            return then(if BY_REF {
                self.bounce_map_req(dev, view, None, req)
            } else {
                self.bounce_map(dev, view, None, orig, len, dir, attrs)
            });
        }
        if dev.path != DmaPath::BounceAlways {
            return none();
        }
        let mask = Some(dev.config.dma_mask);
        then(if BY_REF {
            self.bounce_map_req(dev, &self.plain, mask, req)
        } else {
            self.bounce_map(dev, &self.plain, mask, orig, len, dir, attrs)
        })
    }

    fn map_route(
        &self,
        dev: &Device,
        orig: Original,
        len: usize,
        dir: DmaDirection,
        attrs: DmaAttrs,
    ) -> Result<Mapped, DmaError> {
        if len == 0 {
            return Err(DmaError::ZeroLength);
        }
        // An accepted device maps private buffers in place; a buffer with no physical address (not
        // guest RAM) is bounced as for an untrusted device.
        if dev.trust.is_accepted() && !attrs.contains(DmaAttrs::CC_SHARED) && orig.phys.is_some() {
            return self.trusted_map(dev, orig, len, dir, attrs);
        }
        if crate::parts::IOMMU && dev.domain.is_some() {
            return self.iommu_map(dev, &orig, len, dir, attrs);
        }
        let mask = dev.config.dma_mask;
        match (dev.path, orig.phys) {
            (DmaPath::Direct, None) => {
                self.stats.fail(FailureKind::Invalid);
                Err(DmaError::NotTranslatable)
            }
            (DmaPath::Direct | DmaPath::BounceAboveMask, Some(p)) if mask.covers(p.0, len as u64) => {
                self.direct_mapped(dev, orig.safe, BusAddr(p.0), len, dir).map(Mapped::elsewhere)
            }
            (DmaPath::Direct, Some(p)) => {
                self.stats.fail(FailureKind::BeyondMask);
                Err(DmaError::BeyondMask { addr: p.0, mask })
            }
            _ => self.bounce_map(dev, &self.plain, Some(mask), orig, len, dir, attrs),
        }
    }

    /// Unmap (raw face). `len` and `dir` must be those given at map time; the copy back uses the
    /// guest's own record (the pool slot's, or the raw record of a mapping used in place). A wrong
    /// size, direction or device, a mapping owned by a [`crate::Mapping`], or an address that is not
    /// a live mapping (an address inside one included) is an error and changes nothing, on every
    /// path. Where a `Mapping` uses its buffer in place (direct paths) it has no record the raw face
    /// can see: its address is [`DmaError::UnknownMapping`] there.
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
        let _masked = self.masked();
        let routed = self.unmap_route(dev, bus, len, dir, attrs, safe);
        let result = routed.map(|_| ());
        let site = core::panic::Location::caller();
        crate::tracker::unmapped(&self.tracker, dev, bus, TrackedKind::Mapping, &result, site);
        if matches!(routed, Ok(false)) {
            dev.live_dec(LiveKind::Mapping);
        }
        result
    }

    /// The unmap's route; `Ok(true)` when it took the device's live count down itself (a bounce
    /// run: [`Self::unmap_in_pool`]).
    fn unmap_route(
        &self,
        dev: &Device,
        bus: BusAddr,
        len: usize,
        dir: DmaDirection,
        attrs: DmaAttrs,
        safe: bool,
    ) -> Result<bool, DmaError> {
        self.check_device(dev)?;
        if let Some(done) = self.trusted_unmap(dev, bus, len, dir, safe) {
            return done.map(|()| false);
        }
        if self.strict_domain(dev, bus)?.is_some() {
            return self.strict_unmap(dev, bus, len, dir, attrs, safe).map(|()| false);
        }
        let Some((i, off)) = self.locate(dev, bus) else {
            // Not in any pool: a direct mapping on a path that has them (nothing to undo but the raw
            // face's record, which must match the claim), else junk.
            if matches!(dev.path, DmaPath::Direct | DmaPath::BounceAboveMask) || dev.direct_private() {
                if !safe {
                    self.raw_direct_unmap(dev, bus, len, dir)?;
                }
                self.stats.unmapped();
                return Ok(false);
            }
            self.stats.fail(FailureKind::UnknownMapping);
            return Err(DmaError::UnknownMapping(bus));
        };
        self.unmap_in_pool(dev, bus, PoolAt { pool: i as u8, off }, len, dir, attrs, safe).map(|()| true)
    }

    /// Unmap a [`crate::Mapping`] (safe face): a bounce run goes straight to the pool and offset
    /// its map recorded (`at`), everything else the way of [`Self::unmap_as`].
    ///
    /// What the record lets this skip, and why nothing is lost: `check_device` (the mapping was made
    /// on this layer and device, both fixed for its life, and map checked them); the trusted and
    /// strict routes (`at` is recorded only for bounce runs of the plain and premapped views, and a
    /// device's domain cannot change while it has live mappings: detach refuses); `locate` (it
    /// would find exactly `at`: the map computed the bus address as the pool's base in the device's
    /// view plus `at.off`, and that base does not move while the run lives). The pool still checks
    /// the head at `at` against the claim, as for the raw face.
    #[track_caller]
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn unmap_mapping(
        &self,
        dev: &Device,
        bus: BusAddr,
        run: RunWord,
        len: usize,
        dir: DmaDirection,
        attrs: DmaAttrs,
    ) -> Result<(), DmaError> {
        self.unmap_mapping_then(dev, bus, run, len, dir, attrs, |result| result)
    }

    /// [`Self::unmap_mapping`], its result handed to `then` on each way out, so that the common end
    /// gives `then` a constant `Ok(())` where it is: no result of the out-of-line ways merged with
    /// it in memory and copied before `then` (`Mapping::unmap`) tests it.
    #[track_caller]
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn unmap_mapping_then<R>(
        &self,
        dev: &Device,
        bus: BusAddr,
        run: RunWord,
        len: usize,
        dir: DmaDirection,
        attrs: DmaAttrs,
        then: impl FnOnce(Result<(), DmaError>) -> R,
    ) -> R {
        let Some(at) = run.at() else { return then(self.unmap_as(dev, bus, len, dir, attrs, true)) };
        let _masked = self.masked();
        let site = core::panic::Location::caller();
        let tracked = |result: Result<(), DmaError>| {
            crate::tracker::unmapped(&self.tracker, dev, bus, TrackedKind::Mapping, &result, site);
            result
        };
        let Some(pool) = self.pools.get(at.pool as usize) else {
            return then(tracked(Err(DmaError::UnknownMapping(bus))));
        };
        let claim = Claim {
            device: dev.serial,
            safe: true,
            len,
            dir,
            sync: !attrs.contains(DmaAttrs::SKIP_CPU_SYNC),
        };
        // The common end (the run freed, and counted by its pool for the layer and for its device)
        // returns at once; any other (an error, a copy back, a count the pool did not take) goes to
        // `unmap_settle`, out of line, which does what `unmap_in_pool` does with it.
        let result = match pool.release_or_free_claimed(at.off, &dev.home_live, &claim) {
            Some(Ok(Taken::Freed { counted: true, dev: true })) => {
                drop(pool);
                return then(tracked(Ok(())));
            }
            taken => self.unmap_settle(dev, bus, &pool, taken, true, len, dir),
        };
        drop(pool);
        then(tracked(result))
    }

    /// Unmap the bounce run whose data is at `at`: check the claim against the pool's record, copy
    /// back per direction, free; the device's live count taken down (by the pool for a run of its
    /// home pool, `Device::home_live`).
    #[allow(clippy::too_many_arguments)]
    #[inline]
    fn unmap_in_pool(
        &self,
        dev: &Device,
        bus: BusAddr,
        at: PoolAt,
        len: usize,
        dir: DmaDirection,
        attrs: DmaAttrs,
        safe: bool,
    ) -> Result<(), DmaError> {
        let PoolAt { pool: i, off } = at;
        let pool = self.pools.get(i as usize).ok_or(DmaError::UnknownMapping(bus))?;
        // One area lock: the record is checked and, when nothing is to be copied out, freed at once;
        // otherwise released, copied out of (outside the lock), then freed.
        let claim =
            Claim { device: dev.serial, safe, len, dir, sync: !attrs.contains(DmaAttrs::SKIP_CPU_SYNC) };
        // A run its pool counted (every run a plain or premapped map makes) counts its unmap when
        // freed, under the area lock; any other is counted on the layer's shards below.
        let (counted, dev_counted) = match pool.release_or_free_claimed(off, &dev.home_live, &claim) {
            None => {
                self.stats.fail(FailureKind::UnknownMapping);
                return Err(DmaError::UnknownMapping(bus));
            }
            Some(Err(rec)) => return Err(self.refused_claim(dev, bus, safe, &rec, len, dir)),
            Some(Ok(Taken::Freed { counted, dev })) => (counted, dev),
            Some(Ok(Taken::Released(rec))) => {
                self.copy_to_original(&pool, &rec, 0, rec.len);
                pool.free(rec.index, rec.nslots);
                (rec.counted, rec.dev_counted)
            }
        };
        if !dev_counted {
            dev.live_dec(LiveKind::Mapping);
        }
        // A premapped run is counted live by its device alone (see `premapped_view`).
        if !counted {
            self.stats.unmapped();
        }
        Ok(())
    }

    /// A bounce run's unmap past the pool's answer (`taken`), out of line: see [`Self::unmap_mapping_then`].
    #[inline(never)]
    #[allow(clippy::too_many_arguments)]
    fn unmap_settle(
        &self,
        dev: &Device,
        bus: BusAddr,
        pool: &BouncePool<'m, AREAS>,
        taken: Option<Result<Taken, SlotRecord>>,
        safe: bool,
        len: usize,
        dir: DmaDirection,
    ) -> Result<(), DmaError> {
        let (counted, dev_counted) = match taken {
            None => return Err(self.unknown_run(bus)),
            Some(Err(rec)) => return Err(self.refused_claim(dev, bus, safe, &rec, len, dir)),
            Some(Ok(Taken::Freed { counted, dev })) => (counted, dev),
            Some(Ok(Taken::Released(rec))) => {
                self.copy_to_original(pool, &rec, 0, rec.len);
                pool.free(rec.index, rec.nslots);
                (rec.counted, rec.dev_counted)
            }
        };
        if !dev_counted {
            dev.live_dec(LiveKind::Mapping);
        }
        if !counted {
            self.stats.unmapped();
        }
        Ok(())
    }

    /// An unmap whose recorded pool holds no such mapping, counted.
    #[cold]
    #[inline(never)]
    fn unknown_run(&self, bus: BusAddr) -> DmaError {
        self.stats.fail(FailureKind::UnknownMapping);
        DmaError::UnknownMapping(bus)
    }

    /// The error of a claim the pool refused ([`Self::unmap_in_pool`]): [`Self::check_record`]'s,
    /// which counts it. Out of line: never on a good unmap.
    #[cold]
    #[inline(never)]
    fn refused_claim(
        &self,
        dev: &Device,
        bus: BusAddr,
        safe: bool,
        rec: &SlotRecord,
        len: usize,
        dir: DmaDirection,
    ) -> DmaError {
        match self.check_record(dev, bus, safe, rec, len, dir) {
            Err(e) => e,
            // Not reached: the pool refuses exactly what `check_record` refuses.
            Ok(()) => DmaError::UnknownMapping(bus),
        }
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
            if let Some(pool) = self.pools.get(i) {
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
        let _masked = self.masked();
        let result = self.sync_route(dev, bus, offset, len, dir, for_cpu, safe);
        crate::tracker::synced(&self.tracker, dev, bus, &result, core::panic::Location::caller());
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
        if let Some(done) = self.trusted_sync(dev, bus, offset, len, dir, safe) {
            return done;
        }
        let found = match self.strict_domain(dev, bus)? {
            Some(info) => self.strict_record(dev, info, bus, false).map(|(i, rec, _)| Some((i, rec)))?,
            None => self.record(dev, bus, false)?,
        };
        let Some((i, rec)) = found else {
            // A direct mapping: nothing to copy; the raw face's claim is checked against its record.
            return if safe { Ok(()) } else { self.raw_sync_check(dev, bus, offset, len, dir) };
        };
        let pool = self.pools.get(i).ok_or(DmaError::UnknownMapping(bus))?;
        self.check_owner(dev, bus, safe, &rec)?;
        if rec.dir != dir {
            self.stats.fail(FailureKind::Mismatch);
            return Err(DmaError::DirectionMismatch { mapped: rec.dir, given: dir });
        }
        if offset.checked_add(len).is_none_or(|end| end > rec.len) {
            self.stats.fail(FailureKind::OutOfRange);
            return Err(DmaError::OutOfRange { offset, mapped: rec.len });
        }
        if for_cpu {
            if rec.dir.device_writes() {
                self.copy_to_original(&pool, &rec, offset, len);
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
}
