//! Scatter-gather mapping: a list of buffers mapped in one call, handed to the device as few DMA
//! segments as its limits allow.
//!
//! Storage and network drivers map lists, not single buffers. The caller owns the list (no allocator
//! here): each [`SgEntry`] holds one input segment (a borrowed CPU buffer, a physical range, or a
//! peer-to-peer segment in another device's BAR) and, after [`DmaLayer::map_sg`], the layer's own
//! record of where that segment went plus, in the first `n` entries, the `n` DMA segments the device
//! is to use ([`dma_segments`]).
//!
//! What the device sees is the same byte stream as the caller's list: segments are joined only when
//! the join leaves no gap. Three ways of joining:
//! - *merging*: inputs whose bus addresses are contiguous (direct or peer-to-peer) become one segment;
//! - *packing* (bounce paths): consecutive inputs that must be bounced are copied back to back into one
//!   run of pool slots, so the device sees one segment for many small buffers (Linux bounces each
//!   buffer into its own slots);
//! - both stop at the device's max segment size, never cross its segment boundary, and keep the
//!   `min_align_mask` bits of every input at the start of its bytes.
//!
//! Peer-to-peer memory is never bounced. A [`P2pTopology`] says, per (provider, client), whether the
//! client reaches the BAR by its PCI bus address (the segment bypasses everything and is marked, so
//! unmap skips it), through the host bridge (mapped like any physical range), or not at all: then the
//! whole call fails with [`DmaError::P2pUnsupported`].
//!
//! Every failure leaves nothing mapped and the list as it was. At unmap and sync the layer uses only
//! its own record (in the entries, whose fields only this module can write, checked against the
//! pool's record of each run): a length never comes from the device.

use core::marker::PhantomData;
use core::sync::atomic::{AtomicU64, Ordering};

use crate::addr::{BusAddr, DmaMask, PhysAddr};
use crate::device::{DeviceConfig, DmaPath};
use crate::direction::{DmaAttrs, DmaDirection};
use crate::error::DmaError;
use crate::layer::{Device, DmaLayer};
use crate::platform::Platform;
use crate::pool::{BouncePool, RunRequest};
use crate::stats::{should_warn, FailureKind};

/// How a client device reaches memory in a provider device's BAR, as the PCI topology decides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum P2pRoute {
    /// Both sit below a switch that forwards peer-to-peer traffic itself: the client uses this PCI
    /// bus address, which bypasses the IOMMU and must not be unmapped.
    BusAddress(BusAddr),
    /// Traffic goes up to the host bridge, which routes it: map the BAR's physical range normally.
    ThroughHostBridge,
    /// The client cannot reach the provider's memory.
    NotSupported,
}

/// The platform's knowledge of the PCI topology, for peer-to-peer segments.
pub trait P2pTopology {
    /// How `client` reaches `[bar, bar + len)`, which the caller says is in `provider`'s BAR. A range
    /// that is not in one of the provider's BARs is [`P2pRoute::NotSupported`].
    fn p2p_route(&self, provider: u32, client: u32, bar: PhysAddr, len: usize) -> P2pRoute;
}

impl<T: P2pTopology + ?Sized> P2pTopology for &T {
    fn p2p_route(&self, provider: u32, client: u32, bar: PhysAddr, len: usize) -> P2pRoute {
        (**self).p2p_route(provider, client, bar, len)
    }
}

/// A segment of peer-to-peer memory: `len` bytes at CPU physical address `bar` inside a BAR of the
/// device `provider`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct P2pSegment {
    /// The device whose BAR holds the memory (its id, as the topology names it).
    pub provider: u32,
    /// CPU physical address of the first byte.
    pub bar: PhysAddr,
    /// Length in bytes.
    pub len: usize,
}

/// One DMA segment for the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmaSegment {
    /// The address the device uses.
    pub addr: BusAddr,
    /// Length in bytes.
    pub len: usize,
    /// A peer-to-peer PCI bus address (bypasses the IOMMU; never unmapped).
    pub p2p_bus_address: bool,
}

/// Options of [`DmaLayer::map_sg_with`].
#[derive(Clone, Copy)]
pub struct SgOptions<'t> {
    /// Pack bounced segments into shared runs and merge contiguous segments (default). Off, every
    /// input becomes its own DMA segment, as Linux does on its bounce path.
    pub coalesce: bool,
    /// The PCI topology for peer-to-peer segments. Without one, every P2P segment is
    /// [`P2pRoute::NotSupported`].
    pub p2p: Option<&'t dyn P2pTopology>,
}

impl Default for SgOptions<'_> {
    fn default() -> Self {
        SgOptions { coalesce: true, p2p: None }
    }
}

#[derive(Clone, Copy, Debug)]
enum Source {
    Cpu { ptr: *mut u8, len: usize, writable: bool },
    Phys { phys: PhysAddr, len: usize },
    P2p(P2pSegment),
}

impl Source {
    fn len(&self) -> usize {
        match *self {
            Source::Cpu { len, .. } | Source::Phys { len, .. } => len,
            Source::P2p(s) => s.len,
        }
    }
}

/// Where one input segment went: the guest's own record, written only by this module.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Place {
    Unmapped,
    /// Classified for bouncing, run not allocated yet (only inside `map_sg`).
    Pending {
        cpu: *mut u8,
    },
    /// The device uses the memory itself at `bus` (direct, or P2P through the host bridge): nothing to
    /// undo at unmap.
    Direct {
        bus: BusAddr,
    },
    /// A P2P bus address: bypasses everything; unmap skips it.
    P2pBus {
        bus: BusAddr,
    },
    /// Bounced: the bytes sit at `bus` in pool `pool`. `first` opens a run (its `bus` is where the
    /// pool recorded the run's data, and `nslots` the run's size); the entries that follow with
    /// `first: false` are packed behind it, back to back.
    Bounced {
        bus: BusAddr,
        pool: u8,
        first: bool,
        nslots: u16,
        cpu: *mut u8,
    },
}

/// One entry of a scatter-gather list: an input segment, and after mapping where it went. The
/// buffer stays borrowed for `'a`, so nothing else touches it while the device may.
#[derive(Debug)]
pub struct SgEntry<'a> {
    src: Source,
    place: Place,
    out: Option<DmaSegment>,
    /// Which mapped list this entry belongs to, and where in it: a list is unmapped or synced only
    /// whole, in the order it was mapped.
    tag: ListTag,
    _buf: PhantomData<&'a mut [u8]>,
}

// SAFETY: an entry is a `&mut [u8]` (Send) plus addresses; the pool and CPU pointers it records name
// memory that the layer and platform keep valid and that only the owner of the entry may use.
unsafe impl Send for SgEntry<'_> {}
// SAFETY: a shared entry exposes no way to reach its buffer.
unsafe impl Sync for SgEntry<'_> {}

impl<'a> SgEntry<'a> {
    fn with(src: Source) -> Self {
        SgEntry { src, place: Place::Unmapped, out: None, tag: ListTag::NONE, _buf: PhantomData }
    }
    /// A buffer the device may read and write.
    pub fn new(buf: &'a mut [u8]) -> Self {
        SgEntry::with(Source::Cpu { ptr: buf.as_mut_ptr(), len: buf.len(), writable: true })
    }
    /// A buffer the device only reads: mapping it with a direction in which the device writes fails
    /// with [`DmaError::WrongDirection`].
    pub fn to_device(buf: &'a [u8]) -> Self {
        SgEntry::with(Source::Cpu { ptr: buf.as_ptr().cast_mut(), len: buf.len(), writable: false })
    }
    /// A raw buffer.
    ///
    /// # Safety
    /// `ptr` must be valid for reads and writes of `len` bytes for `'a`, and not used otherwise while
    /// the entry is mapped.
    pub unsafe fn from_raw(ptr: *mut u8, len: usize) -> Self {
        SgEntry::with(Source::Cpu { ptr, len, writable: true })
    }
    /// A guest physical range (like [`DmaLayer::map_phys`]).
    pub fn phys(phys: PhysAddr, len: usize) -> SgEntry<'static> {
        SgEntry::with(Source::Phys { phys, len })
    }
    /// Peer-to-peer memory in another device's BAR.
    pub fn p2p(seg: P2pSegment) -> SgEntry<'static> {
        SgEntry::with(Source::P2p(seg))
    }
    /// Length of the input segment.
    pub fn len(&self) -> usize {
        self.src.len()
    }
    /// True for a zero-length input (which mapping refuses).
    pub fn is_empty(&self) -> bool {
        self.src.len() == 0
    }
    /// True while the entry is part of a mapped list.
    pub fn is_mapped(&self) -> bool {
        !matches!(self.place, Place::Unmapped | Place::Pending { .. })
    }
    /// After mapping, the DMA segment at this index of the list (`None` at and after the count
    /// `map_sg` returned).
    pub fn dma_segment(&self) -> Option<DmaSegment> {
        self.out
    }
    /// After mapping, the bus address at which the device finds this entry's first byte.
    pub fn mapped_at(&self) -> Option<BusAddr> {
        match self.place {
            Place::Direct { bus } | Place::P2pBus { bus } | Place::Bounced { bus, .. } => Some(bus),
            Place::Unmapped | Place::Pending { .. } => None,
        }
    }
    /// True when this entry was mapped as a peer-to-peer bus address (unmap skips it).
    pub fn is_p2p_bus_address(&self) -> bool {
        matches!(self.place, Place::P2pBus { .. })
    }
    /// True when this entry's bytes were bounced through a pool.
    pub fn is_bounced(&self) -> bool {
        matches!(self.place, Place::Bounced { .. })
    }
}

/// Identity of a mapped list, recorded in each of its entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ListTag {
    /// Unique per `map_sg` call (0: none).
    list: u64,
    index: usize,
    count: usize,
}

impl ListTag {
    const NONE: ListTag = ListTag { list: 0, index: 0, count: 0 };
}

/// Source of list identities (never 0).
static NEXT_LIST: AtomicU64 = AtomicU64::new(1);

/// The DMA segments of a mapped list, in order.
pub fn dma_segments<'s>(list: &'s [SgEntry<'_>]) -> impl Iterator<Item = DmaSegment> + 's {
    list.iter().map_while(|e| e.out)
}

/// The device's limits, as the list builder checks them.
#[derive(Clone, Copy)]
struct Limits {
    mask: DmaMask,
    max_seg: u64,
    /// `2^n - 1`: a segment stays inside one aligned block of `boundary + 1` bytes.
    boundary: u64,
    min_align: u64,
}

impl Limits {
    fn of(cfg: &DeviceConfig) -> Result<Limits, DmaError> {
        let b = cfg.segment_boundary_mask;
        if b & b.wrapping_add(1) != 0 {
            return Err(DmaError::InvalidConfig("segment boundary mask must be 2^n - 1"));
        }
        if cfg.max_segment_size == 0 {
            return Err(DmaError::InvalidConfig("max segment size must not be zero"));
        }
        Ok(Limits {
            mask: cfg.dma_mask,
            max_seg: cfg.max_segment_size as u64,
            boundary: b,
            min_align: cfg.min_align_mask,
        })
    }

    /// True when `[addr, addr + len)` does not cross a boundary (and does not wrap).
    fn within_boundary(&self, addr: u64, len: u64) -> bool {
        match addr.checked_add(len.saturating_sub(1)) {
            Some(last) => addr & !self.boundary == last & !self.boundary,
            None => false,
        }
    }

    /// True when a segment whose first byte has the `min_align` bits `bits` and is `len` long can be
    /// placed without crossing a boundary: the bits below the boundary that are fixed by `bits` plus
    /// the length must fit in one block.
    fn boundary_allows(&self, bits: u64, len: u64) -> bool {
        (bits & self.boundary) as u128 + len as u128 <= self.boundary as u128 + 1
    }

    /// True when a segment at `addr` of `len` bytes may go to the device as it is.
    fn direct_ok(&self, addr: u64, len: u64) -> bool {
        len <= self.max_seg && self.mask.covers(addr, len) && self.within_boundary(addr, len)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Class {
    Direct,
    P2pBus,
    Bounce,
}

/// The DMA segments written so far, plus the one still open for merging.
struct Outputs {
    n: usize,
    open: Option<(DmaSegment, Class)>,
    coalesce: bool,
}

impl Outputs {
    fn push(&mut self, list: &mut [SgEntry<'_>], lim: &Limits, seg: DmaSegment, class: Class) {
        if let Some((o, c)) = &mut self.open {
            let len = o.len as u64 + seg.len as u64;
            if self.coalesce
                && *c == class
                && o.addr.0.checked_add(o.len as u64) == Some(seg.addr.0)
                && len <= lim.max_seg
                && lim.within_boundary(o.addr.0, len)
            {
                o.len += seg.len;
                return;
            }
        }
        self.close(list);
        self.open = Some((seg, class));
    }

    /// Write the open segment at index `n`. Every segment starts at a distinct input entry, so `n`
    /// never passes the entry being classified and the write never lands outside the list.
    fn close(&mut self, list: &mut [SgEntry<'_>]) {
        if let Some((o, _)) = self.open.take() {
            if let Some(e) = list.get_mut(self.n) {
                e.out = Some(o);
                self.n += 1;
            }
        }
    }
}

/// Consecutive inputs being packed into one bounce run: the stream `[start, start + count)` of
/// `len` bytes whose first original address is `orig0`.
#[derive(Clone, Copy)]
struct Group {
    start: usize,
    count: usize,
    orig0: u64,
    len: u64,
}

/// What a list's bounce runs may be at most, over the device's pools.
#[derive(Clone, Copy)]
struct PoolSpan {
    max_run: u64,
    max_slot: u64,
}

impl<'m, P: Platform> DmaLayer<'m, P> {
    /// Map a scatter-gather list with the default options (coalescing on, no P2P topology).
    /// Returns the number `n` of DMA segments, written into the first `n` entries
    /// ([`SgEntry::dma_segment`], [`dma_segments`]).
    pub fn map_sg(
        &self,
        dev: &Device,
        list: &mut [SgEntry<'_>],
        dir: DmaDirection,
        attrs: DmaAttrs,
    ) -> Result<usize, DmaError> {
        self.map_sg_with(dev, list, dir, attrs, &SgOptions::default())
    }

    /// Map a scatter-gather list. On error nothing stays mapped and the list is as it was.
    pub fn map_sg_with(
        &self,
        dev: &Device,
        list: &mut [SgEntry<'_>],
        dir: DmaDirection,
        attrs: DmaAttrs,
        opts: &SgOptions<'_>,
    ) -> Result<usize, DmaError> {
        self.check_device(dev)?;
        if list.is_empty() {
            return Err(DmaError::ZeroLength);
        }
        if list.iter().any(|e| e.place != Place::Unmapped || e.out.is_some()) {
            self.counters().fail(FailureKind::Invalid);
            return Err(DmaError::SgListState { mapped: true });
        }
        match self.build_sg(dev, list, dir, attrs, opts) {
            Ok(n) => {
                let id = NEXT_LIST.fetch_add(1, Ordering::Relaxed);
                let count = list.len();
                for (index, e) in list.iter_mut().enumerate() {
                    e.tag = ListTag { list: id, index, count };
                }
                for e in list.iter() {
                    match e.place {
                        Place::Direct { .. } | Place::P2pBus { .. } => self.counters().mapped(false),
                        Place::Bounced { first: true, .. } => self.counters().mapped(true),
                        _ => {}
                    }
                }
                Ok(n)
            }
            Err(e) => {
                self.release_runs(list);
                reset(list);
                Err(e)
            }
        }
    }

    fn build_sg(
        &self,
        dev: &Device,
        list: &mut [SgEntry<'_>],
        dir: DmaDirection,
        attrs: DmaAttrs,
        opts: &SgOptions<'_>,
    ) -> Result<usize, DmaError> {
        let lim = Limits::of(dev.config())?;
        let path = dev.path();
        let span = self.pool_span(dev);
        let mut out = Outputs { n: 0, open: None, coalesce: opts.coalesce };
        let mut group: Option<Group> = None;
        for i in 0..list.len() {
            let src = list[i].src;
            let len = src.len();
            if len == 0 {
                return Err(DmaError::ZeroLength);
            }
            if len as u64 > lim.max_seg {
                self.counters().fail(FailureKind::TooLarge);
                return Err(DmaError::SegmentLimit { index: i, len });
            }
            let (cpu, phys) = match src {
                Source::P2p(seg) => {
                    if let Some(g) = group.take() {
                        self.place_group(dev, list, g, &lim, dir, attrs, &mut out)?;
                    }
                    self.map_p2p(dev, list, i, seg, &lim, opts, &mut out)?;
                    continue;
                }
                Source::Cpu { ptr, writable, .. } => {
                    if dir.device_writes() && !writable {
                        self.counters().fail(FailureKind::Invalid);
                        return Err(DmaError::WrongDirection);
                    }
                    let phys = match path {
                        DmaPath::BounceAlways => None,
                        _ => self.platform().virt_to_phys(ptr, len),
                    };
                    (Some(ptr), phys)
                }
                Source::Phys { phys, .. } => (None, Some(phys)),
            };
            let direct = match path {
                DmaPath::Direct => {
                    let Some(p) = phys else {
                        self.counters().fail(FailureKind::Invalid);
                        return Err(DmaError::NotTranslatable);
                    };
                    if !lim.mask.covers(p.0, len as u64) {
                        self.counters().fail(FailureKind::BeyondMask);
                        return Err(DmaError::BeyondMask { addr: p.0, mask: lim.mask });
                    }
                    if !lim.within_boundary(p.0, len as u64) {
                        self.counters().fail(FailureKind::TooLarge);
                        return Err(DmaError::SegmentLimit { index: i, len });
                    }
                    Some(p)
                }
                // Below the mask and inside a boundary block: the device can use it as it is.
                DmaPath::BounceAboveMask => phys.filter(|p| lim.direct_ok(p.0, len as u64)),
                DmaPath::BounceAlways => None,
                #[allow(unreachable_patterns)]
                _ => return Err(DmaError::InvalidConfig("scatter-gather does not support this path yet")),
            };
            if let Some(p) = direct {
                if let Some(g) = group.take() {
                    self.place_group(dev, list, g, &lim, dir, attrs, &mut out)?;
                }
                list[i].place = Place::Direct { bus: BusAddr(p.0) };
                let seg = DmaSegment { addr: BusAddr(p.0), len, p2p_bus_address: false };
                out.push(list, &lim, seg, Class::Direct);
                continue;
            }
            // Bounce: the CPU side of the original, and the address whose low bits the device needs.
            let cpu = match (cpu, phys) {
                (Some(c), _) => c,
                (None, Some(p)) => match self.platform().cpu_ptr(p, len) {
                    Some(c) => c.as_ptr(),
                    None => {
                        self.counters().fail(FailureKind::Invalid);
                        return Err(DmaError::NotTranslatable);
                    }
                },
                (None, None) => return Err(DmaError::NotTranslatable),
            };
            let orig = phys.map_or(cpu as u64, |p| p.0);
            list[i].place = Place::Pending { cpu };
            if let Some(g) = &mut group {
                if opts.coalesce && can_join(g, orig, len as u64, &lim, span) {
                    g.count += 1;
                    g.len += len as u64;
                    continue;
                }
            }
            if let Some(g) = group.take() {
                self.place_group(dev, list, g, &lim, dir, attrs, &mut out)?;
            }
            if !lim.boundary_allows(orig & lim.min_align, len as u64) {
                self.counters().fail(FailureKind::TooLarge);
                return Err(DmaError::SegmentLimit { index: i, len });
            }
            group = Some(Group { start: i, count: 1, orig0: orig, len: len as u64 });
        }
        if let Some(g) = group.take() {
            self.place_group(dev, list, g, &lim, dir, attrs, &mut out)?;
        }
        out.close(list);
        Ok(out.n)
    }

    /// Resolve and place one peer-to-peer segment. P2P memory is never bounced.
    #[allow(clippy::too_many_arguments)]
    fn map_p2p(
        &self,
        dev: &Device,
        list: &mut [SgEntry<'_>],
        i: usize,
        seg: P2pSegment,
        lim: &Limits,
        opts: &SgOptions<'_>,
        out: &mut Outputs,
    ) -> Result<(), DmaError> {
        let client = dev.config().id;
        let route = match opts.p2p {
            Some(t) => t.p2p_route(seg.provider, client, seg.bar, seg.len),
            None => P2pRoute::NotSupported,
        };
        let (bus, place, class) = match route {
            P2pRoute::NotSupported => {
                self.counters().fail(FailureKind::Invalid);
                return Err(DmaError::P2pUnsupported { provider: seg.provider, client });
            }
            P2pRoute::BusAddress(bus) => (bus, Place::P2pBus { bus }, Class::P2pBus),
            // Without an IOMMU the host bridge routes the BAR's CPU physical address itself.
            P2pRoute::ThroughHostBridge => {
                let bus = BusAddr(seg.bar.0);
                (bus, Place::Direct { bus }, Class::Direct)
            }
        };
        if !lim.mask.covers(bus.0, seg.len as u64) {
            self.counters().fail(FailureKind::BeyondMask);
            return Err(DmaError::BeyondMask { addr: bus.0, mask: lim.mask });
        }
        if !lim.within_boundary(bus.0, seg.len as u64) {
            self.counters().fail(FailureKind::TooLarge);
            return Err(DmaError::SegmentLimit { index: i, len: seg.len });
        }
        list[i].place = place;
        out.push(
            list,
            lim,
            DmaSegment { addr: bus, len: seg.len, p2p_bus_address: class == Class::P2pBus },
            class,
        );
        Ok(())
    }

    fn pool_span(&self, dev: &Device) -> PoolSpan {
        let mut span = PoolSpan { max_run: 0, max_slot: 1 };
        for i in dev.pool_indices() {
            if let Some((pool, _)) = self.pool(i) {
                span.max_run = span.max_run.max(pool.max_mapping() as u64);
                span.max_slot = span.max_slot.max(pool.slot_size() as u64);
            }
        }
        span
    }

    /// Allocate one run for a group, copy (or clear) its bytes, record every entry's place and emit
    /// the group's DMA segment.
    #[allow(clippy::too_many_arguments)]
    fn place_group(
        &self,
        dev: &Device,
        list: &mut [SgEntry<'_>],
        g: Group,
        lim: &Limits,
        dir: DmaDirection,
        attrs: DmaAttrs,
        out: &mut Outputs,
    ) -> Result<(), DmaError> {
        // The segment's first byte keeps the first original's `min_align` bits; the later entries keep
        // theirs because the group only took entries whose bits follow on (see `can_join`).
        let bits = g.orig0 & lim.min_align;
        let mut largest = 0u64;
        for pi in dev.pool_indices() {
            let Some((pool, pool_bus)) = self.pool(pi) else { continue };
            let slot = pool.slot_size() as u64;
            let offset = bits & (slot - 1);
            let max = pool.max_mapping() as u64;
            largest = largest.max(max - offset);
            let run = offset + g.len;
            let nslots = run.div_ceil(slot);
            if nslots * slot > max {
                continue;
            }
            let Some(align) = run_alignment(lim, bits, g.len, pool_bus.0, pool.len() as u64) else {
                continue;
            };
            let align_mask = (align - 1) & !(slot - 1);
            let req = RunRequest { nslots: nslots as usize, align_mask, align_bits: bits & align_mask };
            let Some(index) = pool.alloc_sg(req, offset as usize, g.len as usize, dir, attrs) else {
                continue;
            };
            let run_off = (index as u64) << slot.trailing_zeros();
            let start = pool_bus.0 + run_off + offset;
            if start & lim.min_align != bits
                || !lim.within_boundary(start, g.len)
                || !lim.mask.covers(start, g.len)
            {
                // Only possible if the pool's bus encoding changes low address bits: give the run
                // back and try another pool.
                pool.free(index, nslots as usize);
                continue;
            }
            self.fill_group(list, g, pool, pi, pool_bus, run_off + offset, nslots as u16, dir, attrs);
            let seg = DmaSegment { addr: BusAddr(start), len: g.len as usize, p2p_bus_address: false };
            out.push(list, lim, seg, Class::Bounce);
            return Ok(());
        }
        if largest < g.len {
            self.counters().fail(FailureKind::TooLarge);
            return Err(DmaError::TooLarge { len: g.len as usize, max: largest as usize });
        }
        let n = self.counters().fail(FailureKind::PoolExhausted);
        if !attrs.contains(DmaAttrs::NO_WARN) && should_warn(n) {
            log::warn!(
                "ccdma: bounce pool exhausted mapping a {}-byte scatter-gather run for device {:#x} \
                 ({n} failures so far)",
                g.len,
                dev.config().id
            );
        }
        Err(DmaError::PoolExhausted { len: g.len as usize })
    }

    /// Initialise a new run: originals copied in for data going to the device, zeroes otherwise (or
    /// the originals on request), exactly as a single bounced mapping.
    #[allow(clippy::too_many_arguments)]
    fn fill_group(
        &self,
        list: &mut [SgEntry<'_>],
        g: Group,
        pool: &BouncePool<'_>,
        pi: usize,
        pool_bus: BusAddr,
        data_off: u64,
        nslots: u16,
        dir: DmaDirection,
        attrs: DmaAttrs,
    ) {
        let skip = attrs.contains(DmaAttrs::SKIP_CPU_SYNC);
        let copy = !skip && (dir.device_reads() || attrs.contains(DmaAttrs::PRESERVE_UNWRITTEN));
        if !copy {
            // SAFETY: the run was just allocated for us and holds `g.len` bytes from `data_off`.
            unsafe { core::ptr::write_bytes(pool.cpu_at(data_off as usize), 0, g.len as usize) };
        }
        let mut pos = 0u64;
        for k in g.start..g.start + g.count {
            let Some(e) = list.get_mut(k) else { break };
            let Place::Pending { cpu } = e.place else { continue };
            let len = e.src.len();
            if copy {
                // SAFETY: the original is valid for `len` bytes (entry contract); the run is ours and
                // holds `[pos, pos + len)` of the group's stream; pool memory never overlaps a caller's
                // buffer.
                unsafe { core::ptr::copy_nonoverlapping(cpu, pool.cpu_at((data_off + pos) as usize), len) };
                self.counters().to_device(len);
            }
            let first = k == g.start;
            e.place = Place::Bounced {
                bus: BusAddr(pool_bus.0 + data_off + pos),
                pool: pi as u8,
                first,
                nslots: if first { nslots } else { 0 },
                cpu,
            };
            pos += len as u64;
        }
    }

    /// Free the runs a failed `map_sg` allocated (entries not yet reset).
    fn release_runs(&self, list: &[SgEntry<'_>]) {
        for e in list {
            if let Place::Bounced { bus, pool, first: true, nslots, .. } = e.place {
                if let Some((p, pool_bus)) = self.pool(pool as usize) {
                    let index = p.index_of_offset(bus.0 - pool_bus.0);
                    p.free(index, nslots as usize);
                }
            }
        }
    }

    /// Unmap a list mapped by [`Self::map_sg`]: device writes copied back per the guest's own record
    /// of each entry (never per a length from the device), runs freed, P2P bus-address and direct
    /// entries skipped. `dir` must be the mapping's. A list that is not mapped as this layer mapped it
    /// is an error and changes nothing.
    pub fn unmap_sg(
        &self,
        dev: &Device,
        list: &mut [SgEntry<'_>],
        dir: DmaDirection,
        attrs: DmaAttrs,
    ) -> Result<(), DmaError> {
        self.check_device(dev)?;
        self.check_runs(dev, list, dir, true)?;
        if dir.device_writes() && !attrs.contains(DmaAttrs::SKIP_CPU_SYNC) {
            self.copy_back(list);
        }
        for e in list.iter() {
            match e.place {
                Place::Direct { .. } | Place::P2pBus { .. } => self.counters().unmapped(),
                Place::Bounced { first: true, .. } => self.counters().unmapped(),
                _ => {}
            }
        }
        self.release_runs(list);
        reset(list);
        Ok(())
    }

    /// Make device writes visible in the originals of every bounced entry.
    pub fn sync_sg_for_cpu(
        &self,
        dev: &Device,
        list: &mut [SgEntry<'_>],
        dir: DmaDirection,
    ) -> Result<(), DmaError> {
        self.check_device(dev)?;
        self.check_runs(dev, list, dir, false)?;
        if dir.device_writes() {
            self.copy_back(list);
        }
        Ok(())
    }

    /// Make CPU writes to the originals visible to the device (for directions in which the device
    /// reads, or mappings made with `PRESERVE_UNWRITTEN`).
    pub fn sync_sg_for_device(
        &self,
        dev: &Device,
        list: &mut [SgEntry<'_>],
        dir: DmaDirection,
    ) -> Result<(), DmaError> {
        self.check_device(dev)?;
        let preserve = self.check_runs(dev, list, dir, false)?;
        if !(dir.device_reads() || preserve) {
            return Ok(());
        }
        for e in list.iter() {
            if let Place::Bounced { bus, pool, cpu, .. } = e.place {
                if let Some((p, pool_bus)) = self.pool(pool as usize) {
                    let len = e.src.len();
                    // SAFETY: `check_runs` proved `[bus, bus + len)` lies in a live run of this list;
                    // the original is valid for `len` bytes while the entry is mapped.
                    unsafe {
                        core::ptr::copy_nonoverlapping(cpu, p.cpu_at((bus.0 - pool_bus.0) as usize), len)
                    };
                    self.counters().to_device(len);
                }
            }
        }
        Ok(())
    }

    /// Copy every bounced entry's bytes from its run to its original: one pass, each shared byte read
    /// once, lengths from the entry (the guest's record), never from the device.
    fn copy_back(&self, list: &[SgEntry<'_>]) {
        for e in list {
            if let Place::Bounced { bus, pool, cpu, .. } = e.place {
                if let Some((p, pool_bus)) = self.pool(pool as usize) {
                    let len = e.src.len();
                    // SAFETY: `check_runs` proved `[bus, bus + len)` lies in a live run of this list;
                    // the original is valid for writes of `len` bytes while the entry is mapped.
                    unsafe {
                        core::ptr::copy_nonoverlapping(p.cpu_at((bus.0 - pool_bus.0) as usize), cpu, len)
                    };
                    self.counters().from_device(len);
                }
            }
        }
    }

    /// Check that `list` is mapped exactly as this layer mapped it for `dev` and `dir`: every entry
    /// placed, every run live in the pool with this direction, its entries back to back filling it
    /// exactly. With `claim` every run is also marked for release, so nobody else can unmap it; on
    /// error every claim is undone. Returns whether the runs were mapped with `PRESERVE_UNWRITTEN`.
    fn check_runs(
        &self,
        dev: &Device,
        list: &[SgEntry<'_>],
        dir: DmaDirection,
        claim: bool,
    ) -> Result<bool, DmaError> {
        if list.is_empty() {
            return Err(DmaError::SgListState { mapped: false });
        }
        let mut claimed = 0; // entries [0, claimed) hold every claim made
        let result = self.walk_runs(dev, list, dir, claim, &mut claimed);
        if result.is_err() {
            if claim {
                for e in &list[..claimed] {
                    if let Place::Bounced { bus, pool, first: true, .. } = e.place {
                        if let Some((p, pool_bus)) = self.pool(pool as usize) {
                            p.unrelease(p.index_of_offset(bus.0 - pool_bus.0));
                        }
                    }
                }
            }
            match result {
                Err(DmaError::SgListState { .. }) | Err(DmaError::UnknownMapping(_)) => {
                    self.counters().fail(FailureKind::UnknownMapping)
                }
                _ => self.counters().fail(FailureKind::Mismatch),
            };
        }
        result
    }

    fn walk_runs(
        &self,
        dev: &Device,
        list: &[SgEntry<'_>],
        dir: DmaDirection,
        claim: bool,
        claimed: &mut usize,
    ) -> Result<bool, DmaError> {
        /// The run being walked: where its next entry must start and where it ends.
        struct Cursor {
            pool: u8,
            next: u64,
            end: u64,
            len: usize,
        }
        let close = |run: &mut Option<Cursor>| match run.take() {
            Some(c) if c.next != c.end => {
                Err(DmaError::SizeMismatch { mapped: c.len, given: c.len - (c.end - c.next) as usize })
            }
            _ => Ok(()),
        };
        let mut run: Option<Cursor> = None;
        let mut preserve = false;
        let id = list.first().map_or(0, |e| e.tag.list);
        for (i, e) in list.iter().enumerate() {
            if id == 0 || e.tag != (ListTag { list: id, index: i, count: list.len() }) {
                return Err(DmaError::SgListState { mapped: false });
            }
            let len = e.src.len() as u64;
            match e.place {
                Place::Unmapped | Place::Pending { .. } => {
                    return Err(DmaError::SgListState { mapped: false })
                }
                Place::Direct { .. } | Place::P2pBus { .. } => close(&mut run)?,
                Place::Bounced { bus, pool, first: true, nslots, .. } => {
                    close(&mut run)?;
                    if !dev.pool_indices().any(|p| p == pool as usize) {
                        return Err(DmaError::UnknownMapping(bus));
                    }
                    let (p, pool_bus) = self.pool(pool as usize).ok_or(DmaError::UnknownMapping(bus))?;
                    let off = bus.0.checked_sub(pool_bus.0).ok_or(DmaError::UnknownMapping(bus))?;
                    let rec = p.lookup_sg(off, claim).ok_or(DmaError::UnknownMapping(bus))?;
                    if claim {
                        *claimed = i + 1;
                    }
                    if rec.dir != dir {
                        return Err(DmaError::DirectionMismatch { mapped: rec.dir, given: dir });
                    }
                    if rec.nslots != nslots as usize {
                        return Err(DmaError::SgListState { mapped: false });
                    }
                    preserve |= rec.attrs.contains(DmaAttrs::PRESERVE_UNWRITTEN);
                    if len > rec.len as u64 {
                        return Err(DmaError::SizeMismatch { mapped: rec.len, given: len as usize });
                    }
                    run = Some(Cursor { pool, next: bus.0 + len, end: bus.0 + rec.len as u64, len: rec.len });
                }
                Place::Bounced { bus, pool, first: false, .. } => match &mut run {
                    Some(c) if c.pool == pool && c.next == bus.0 && c.next + len <= c.end => c.next += len,
                    _ => return Err(DmaError::SgListState { mapped: false }),
                },
            }
        }
        close(&mut run)?;
        Ok(preserve)
    }
}

/// May an input whose original starts at `orig` and is `len` long join `g`, keeping the stream
/// gapless and every limit?
fn can_join(g: &Group, orig: u64, len: u64, lim: &Limits, span: PoolSpan) -> bool {
    let new_len = g.len + len;
    let bits = g.orig0 & lim.min_align;
    // The device will find this input at (segment start + g.len); its low bits must be the original's.
    g.orig0.wrapping_add(g.len) & lim.min_align == orig & lim.min_align
        && new_len <= lim.max_seg
        && lim.boundary_allows(bits, new_len)
        && (bits & (span.max_slot - 1)) + new_len <= span.max_run
}

/// The alignment the segment's first byte needs in a pool at `[pool_bus, pool_bus + pool_len)`: its
/// `min_align` bits, and, only where the pool straddles a segment boundary, enough alignment that
/// `len` bytes from the first byte cannot cross one. `None` when no alignment can do it.
fn run_alignment(lim: &Limits, bits: u64, len: u64, pool_bus: u64, pool_len: u64) -> Option<u64> {
    let mut align = lim.min_align.checked_add(1)?;
    if !lim.within_boundary(pool_bus, pool_len) {
        // Aligning the first byte's offset within a block of `need` bytes (a power of two no larger
        // than the boundary block) keeps the segment inside that block.
        let need = ((bits & lim.boundary) + len).checked_next_power_of_two()?;
        let block = lim.boundary.saturating_add(1);
        align = align.max(need.min(block));
    }
    Some(align)
}

/// Put every entry back to unmapped.
fn reset(list: &mut [SgEntry<'_>]) {
    for e in list {
        e.place = Place::Unmapped;
        e.tag = ListTag::NONE;
        e.out = None;
    }
}
