//! Building a mapped list: classify each input (direct, P2P, bounced), group what can be packed,
//! lay the list out in the window (strict), and emit the DMA segments.

use super::pack::can_join;
use super::*;

impl<const POOLS: usize, const DOMAINS: usize, const AREAS: usize> Cold<'_, '_, POOLS, DOMAINS, AREAS> {
    /// Classify and place every entry, lay out the window range (IOMMU paths), emit the segments.
    pub(super) fn build_sg<const CPU_ONLY: bool>(
        &self,
        dev: &Device,
        view: &View,
        list: &mut [SgEntry<'_>],
        dir: DmaDirection,
        attrs: DmaAttrs,
        opts: &SgOptions<'_>,
    ) -> Result<(usize, Option<(u64, u64)>), DmaError> {
        let lim = Limits::of(dev.config())?;
        let span = self.pool_span(view);
        let mut group: Option<Group> = None;
        // One pass, and one past the end to place the last group: each entry is classified, the
        // group open so far is placed when this entry does not join it (one call site for every
        // case), then the entry is placed or opens a group.
        for i in 0..=list.len() {
            let step = match list.get_mut(i) {
                Some(e) => self.classify::<CPU_ONLY>(view, &lim, i, e, dir)?,
                None => Step::End,
            };
            if let Some(g) = &mut group {
                if let Step::Bounce { orig, len } = step {
                    if opts.coalesce && can_join(g, orig, len as u64, &lim, span) {
                        g.count += 1;
                        g.len += len as u64;
                        continue;
                    }
                }
            }
            if let Some(g) = group.take() {
                self.place_group(dev, view, list, g, &lim, dir, attrs)?;
            }
            let place = match step {
                Step::End => break,
                Step::P2p(_) if CPU_ONLY => return Err(DmaError::NotTranslatable),
                Step::P2p(seg) => self.place_p2p(dev, view, i, seg, &lim, opts)?,
                Step::Direct(p) => Place::Direct { bus: BusAddr(p.0) },
                Step::Bounce { orig, len } => {
                    if !lim.boundary_allows(orig & lim.min_align, len as u64) {
                        self.stats.fail(FailureKind::TooLarge);
                        return Err(DmaError::SegmentLimit { index: i, len });
                    }
                    group = Some(Group { start: i, count: 1, orig0: orig, len: len as u64 });
                    continue;
                }
            };
            if let Some(e) = list.get_mut(i) {
                e.place = place;
            }
        }
        let range = self.window_layout(view, list, &lim, dir)?;
        Ok((self.emit_segments(view, list, &lim, opts.coalesce), range))
    }

    /// What entry `i` of the list is (its device limits and path checked): a P2P segment, memory the
    /// device uses as it is, or bytes to bounce (then marked pending, with the address whose
    /// `min_align_mask` bits the copy keeps).
    #[inline(never)]
    fn classify<const CPU_ONLY: bool>(
        &self,
        view: &View,
        lim: &Limits,
        i: usize,
        e: &mut SgEntry<'_>,
        dir: DmaDirection,
    ) -> Result<Step, DmaError> {
        let src = e.src;
        let len = src.len();
        if len == 0 {
            return Err(DmaError::ZeroLength);
        }
        if len as u64 > lim.max_seg {
            self.stats.fail(FailureKind::TooLarge);
            return Err(DmaError::SegmentLimit { index: i, len });
        }
        let (cpu, phys) = match src {
            Source::Cpu { ptr, writable, .. } => {
                if dir.device_writes() && !writable {
                    self.stats.fail(FailureKind::Invalid);
                    return Err(DmaError::WrongDirection);
                }
                let phys = self.cpu_phys(view, lim, ptr, len);
                (Some(ptr), phys)
            }
            // `map_sg_cpu`: no physical-range or P2P code (`place_p2p`, `cpu_ptr`) is linked.
            _ if CPU_ONLY => {
                self.stats.fail(FailureKind::Invalid);
                return Err(DmaError::NotTranslatable);
            }
            Source::P2p(seg) => return Ok(Step::P2p(seg)),
            Source::Phys { phys, .. } => (None, Some(phys)),
        };
        let direct = match view.path {
            DmaPath::Direct => {
                let Some(p) = phys else {
                    self.stats.fail(FailureKind::Invalid);
                    return Err(DmaError::NotTranslatable);
                };
                if !lim.mask.covers(p.0, len as u64) {
                    self.stats.fail(FailureKind::BeyondMask);
                    return Err(DmaError::BeyondMask { addr: p.0, mask: lim.mask });
                }
                if !lim.within_boundary(p.0, len as u64) {
                    self.stats.fail(FailureKind::TooLarge);
                    return Err(DmaError::SegmentLimit { index: i, len });
                }
                Some(p)
            }
            // Below the mask and inside a boundary block: the device can use it as it is.
            DmaPath::BounceAboveMask => phys.filter(|p| lim.direct_ok(p.0, len as u64)),
            // Every other path bounces everything.
            _ => None,
        };
        if let Some(p) = direct {
            return Ok(Step::Direct(p));
        }
        // Bounce: the CPU side of the original, and the address whose low bits the device needs.
        let cpu = match (cpu, phys) {
            (Some(c), _) => c,
            (None, Some(p)) => match self.platform.cpu_ptr(p, len) {
                Some(c) => c.as_ptr(),
                None => {
                    self.stats.fail(FailureKind::Invalid);
                    return Err(DmaError::NotTranslatable);
                }
            },
            (None, None) => return Err(DmaError::NotTranslatable),
        };
        e.place = Place::Pending { cpu };
        Ok(Step::Bounce { orig: phys.map_or(cpu as u64, |p| p.0), len })
    }

    /// The physical address of a CPU buffer, where the path needs it: to use it directly, or for
    /// `min_align_mask` bits above the page offset (the page offset is the same in the virtual address,
    /// so paths that bounce everything skip the translation otherwise, as the single-mapping face
    /// does).
    pub(super) fn cpu_phys(&self, view: &View, lim: &Limits, ptr: *mut u8, len: usize) -> Option<PhysAddr> {
        if view.path.bounces_everything() && lim.min_align < PAGE_SIZE {
            None
        } else {
            self.platform.virt_to_phys(ptr, len)
        }
    }

    /// The address whose `min_align_mask` bits a bounced copy keeps (as `build_sg` chose it).
    pub(super) fn orig_addr(&self, view: &View, lim: &Limits, src: &Source) -> u64 {
        match *src {
            Source::Cpu { ptr, len, .. } => self.cpu_phys(view, lim, ptr, len).map_or(ptr as u64, |p| p.0),
            Source::Phys { phys, .. } => phys.0,
            Source::P2p(s) => s.bar.0,
        }
    }

    /// Write the DMA segments into the list, in list order, merging what may be merged.
    pub(super) fn emit_segments(
        &self,
        view: &View,
        list: &mut [SgEntry<'_>],
        lim: &Limits,
        coalesce: bool,
    ) -> usize {
        let mut out = Outputs { n: 0, open: None, coalesce };
        for i in 0..list.len() {
            let len = list[i].src.len();
            let (bus, class) = match list[i].place {
                Place::Direct { bus } => (bus, Class::Direct),
                Place::P2pBus { bus } => (bus, Class::P2pBus),
                Place::Window { bus, .. } => (bus, Class::Window),
                Place::Bounced { bus, .. } if view.strict() => (bus, Class::Window),
                Place::Bounced { bus, .. } => (bus, Class::Bounce),
                Place::Unmapped | Place::Pending { .. } => continue,
            };
            let seg = DmaSegment { addr: bus, len, p2p_bus_address: class == Class::P2pBus };
            out.push(list, lim, seg, class);
        }
        out.close(list);
        out.n
    }

    pub(super) fn pool_span(&self, view: &View) -> PoolSpan {
        let page = view.run_page();
        let mut span = PoolSpan { max_run: 0, max_unit: 1 };
        for i in view.pools.iter() {
            if let Some(pool) = self.pools.get(i) {
                let max = pool.max_mapping() as u64;
                span.max_run = span.max_run.max(if page > 0 { max & !(page - 1) } else { max });
                span.max_unit = span.max_unit.max((pool.slot_size() as u64).max(page));
            }
        }
        span
    }
}

/// One entry, classified by [`DmaLayer::classify`] (or the end of the list).
#[derive(Clone, Copy)]
enum Step {
    P2p(P2pSegment),
    Direct(PhysAddr),
    Bounce { orig: u64, len: usize },
    End,
}
