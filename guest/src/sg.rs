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
//! Behind an IOMMU (pseries TCE windows):
//! - premapped paths bounce into pools the device's window already holds, as above;
//! - the strict path bounces into runs of whole IOMMU pages, then makes *one* bus allocation for the
//!   whole list, lays the runs out in it (holes where `min_align_mask` or the boundary ask for them)
//!   and enters all their entries in one batch; runs that end and start on an IOMMU page merge;
//! - host-bridge P2P segments get entries in the same kind of list allocation on every IOMMU path.
//!
//! Every failure leaves nothing mapped and the list as it was. At unmap and sync the layer uses only
//! its own record (in the entries, whose fields only this module can write, checked against the
//! pool's record of each run and the domain's record of the list's bus range): a length never comes
//! from the device.

use core::cell::Cell;
use core::marker::PhantomData;
use core::sync::atomic::{AtomicU64, Ordering};

use crate::addr::{BusAddr, DmaMask, PhysAddr, PAGE_SIZE};
use crate::device::{DeviceConfig, DmaPath};
use crate::direction::{DmaAttrs, DmaDirection};
use crate::error::{DmaError, IommuError};
use crate::iommu::attach::{tce_perm, window_below};
use crate::iommu::bus_space::RangeKind;
use crate::iommu::domain::DomainRef;
use crate::iommu::WindowGeometry;
use crate::layer::{Device, DmaLayer, PoolOrder, MAX_POOLS};
use crate::platform::Platform;
use crate::pool::RunRequest;
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

/// What the first entry of a bounce run records about the run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct RunHead {
    /// Slots of the run.
    nslots: u16,
    /// Bytes of the run before the first entry's data: the pool records the run from its first slot,
    /// `lead + data` bytes long.
    lead: u32,
}

/// Where one input segment went: the guest's own record, written only by this module.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Place {
    Unmapped,
    /// Classified for bouncing, run not allocated yet (only inside `map_sg`).
    Pending {
        cpu: *mut u8,
    },
    /// The device uses the memory itself at `bus` (direct, or P2P through the host bridge without an
    /// IOMMU): nothing to undo at unmap.
    Direct {
        bus: BusAddr,
    },
    /// A P2P bus address: bypasses everything; unmap skips it.
    P2pBus {
        bus: BusAddr,
    },
    /// P2P through the host bridge behind an IOMMU: `phys` entered into the list's window range.
    Window {
        bus: BusAddr,
        phys: PhysAddr,
    },
    /// Bounced: the bytes sit at `pool_off` in pool `pool`, the device finds them at `bus`. `run`
    /// opens a run; the entries that follow with `run: None` are packed behind it, back to back.
    Bounced {
        bus: BusAddr,
        pool: u8,
        pool_off: u64,
        run: Option<RunHead>,
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
    ///
    /// # Safety
    /// As for [`DmaLayer::map_phys`]: `[phys, phys + len)` is guest RAM the caller owns, valid for
    /// reads and writes and not used otherwise while the entry is part of a mapped list; the layer
    /// writes device data there at unmap and sync.
    pub unsafe fn phys(phys: PhysAddr, len: usize) -> SgEntry<'static> {
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
            Place::Direct { bus }
            | Place::P2pBus { bus }
            | Place::Window { bus, .. }
            | Place::Bounced { bus, .. } => Some(bus),
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
    /// The list's bus range in the device's IOMMU window (start, bytes), if it has one.
    range: Option<(u64, u64)>,
    /// Serial of the device that mapped it: another device may not unmap or sync it.
    device: u32,
}

impl ListTag {
    const NONE: ListTag = ListTag { list: 0, index: 0, count: 0, range: None, device: 0 };
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
            return Err(DmaError::InvalidSegmentBoundary(b));
        }
        if cfg.max_segment_size == 0 {
            return Err(DmaError::ZeroMaxSegment);
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
    Window,
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
    /// never passes the entry being emitted and the write never lands outside the list.
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
    /// Largest alignment unit of a run's start (slot, or IOMMU page on the strict path).
    max_unit: u64,
}

/// How one device reaches the pools, and on IOMMU paths the window for per-list entries.
#[derive(Clone, Copy)]
struct View<'a> {
    path: DmaPath,
    pools: PoolOrder,
    /// Where each pool starts on the device's bus (premapped or shared address).
    pool_bus: &'a [BusAddr; MAX_POOLS],
    /// The window strict runs and host-bridge P2P ranges are entered into.
    window: Option<WindowGeometry>,
    domain: Option<DomainRef>,
}

impl View<'_> {
    fn strict(&self) -> bool {
        self.path == DmaPath::IommuStrict
    }
    /// The IOMMU page strict runs cover whole (0 off the strict path).
    fn run_page(&self) -> u64 {
        if self.strict() {
            self.window.map_or(0, |w| w.page_size())
        } else {
            0
        }
    }
}

/// One range of a list's window allocation: a strict bounce run or a host-bridge P2P segment.
#[derive(Clone, Copy)]
struct Item {
    /// Index of its first entry.
    first: usize,
    /// Physical address of the IOMMU page holding its first byte.
    phys: u64,
    /// Offset of the first byte in that page.
    d: u64,
    /// Data bytes.
    len: u64,
    /// `min_align` bits the device must find its first byte at.
    bits: u64,
    /// Pool offset of the first entry's bytes (runs).
    key: u64,
}

impl Item {
    fn npages(&self, page: u64) -> u64 {
        (self.d + self.len).div_ceil(page)
    }
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

    /// Map a scatter-gather list. On error nothing stays mapped and the list is as it was. A device
    /// whose IOMMU attach was deferred is attached here.
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
            self.stats.fail(FailureKind::Invalid);
            return Err(DmaError::SgListState { mapped: true });
        }
        let view = match dev.domain {
            None => self.plain_view(dev),
            Some(d) => {
                let info = self.ensure_attached(dev)?;
                View {
                    path: info.path,
                    pools: info.pools,
                    pool_bus: &info.pool_bus,
                    window: info.dynamic,
                    domain: Some(d),
                }
            }
        };
        match self.build_sg(dev, &view, list, dir, attrs, opts) {
            Ok((n, range)) => {
                let tag = ListTag {
                    list: NEXT_LIST.fetch_add(1, Ordering::Relaxed),
                    index: 0,
                    count: list.len(),
                    range,
                    device: dev.serial,
                };
                for (index, e) in list.iter_mut().enumerate() {
                    e.tag = ListTag { index, ..tag };
                }
                self.count_segments(list, true);
                if let Some(slot) = view.domain.and_then(|d| self.slot(d)) {
                    // Detach waits for the list like for any mapping.
                    slot.live_mappings.fetch_add(1, Ordering::Relaxed);
                }
                dev.live_inc();
                Ok(n)
            }
            Err(e) => {
                self.release_runs(list);
                reset(list);
                Err(e)
            }
        }
    }

    fn plain_view<'a>(&'a self, dev: &Device) -> View<'a> {
        View { path: dev.path, pools: dev.pools, pool_bus: &self.pool_bus, window: None, domain: None }
    }

    /// The view of a device whose list is already mapped: never attaches.
    fn settled_view<'a>(&'a self, dev: &Device) -> Result<View<'a>, DmaError> {
        match dev.domain {
            None => Ok(self.plain_view(dev)),
            Some(d) => match self.domain_info(d) {
                Some(info) => Ok(View {
                    path: info.path,
                    pools: info.pools,
                    pool_bus: &info.pool_bus,
                    window: info.dynamic,
                    domain: Some(d),
                }),
                None => {
                    self.stats.fail(FailureKind::UnknownMapping);
                    Err(DmaError::SgListState { mapped: false })
                }
            },
        }
    }

    /// Map/unmap counters: one per DMA-visible piece (a run, a direct or P2P entry).
    fn count_segments(&self, list: &[SgEntry<'_>], map: bool) {
        for e in list {
            let counted = match e.place {
                Place::Direct { .. } | Place::P2pBus { .. } | Place::Window { .. } => Some(false),
                Place::Bounced { run: Some(_), .. } => Some(true),
                _ => None,
            };
            match counted {
                Some(bounced) if map => self.stats.mapped(bounced),
                Some(_) => self.stats.unmapped(),
                None => {}
            }
        }
    }

    /// Classify and place every entry, lay out the window range (IOMMU paths), emit the segments.
    fn build_sg(
        &self,
        dev: &Device,
        view: &View<'_>,
        list: &mut [SgEntry<'_>],
        dir: DmaDirection,
        attrs: DmaAttrs,
        opts: &SgOptions<'_>,
    ) -> Result<(usize, Option<(u64, u64)>), DmaError> {
        let lim = Limits::of(dev.config())?;
        let span = self.pool_span(view);
        let mut group: Option<Group> = None;
        for i in 0..list.len() {
            let src = list[i].src;
            let len = src.len();
            if len == 0 {
                return Err(DmaError::ZeroLength);
            }
            if len as u64 > lim.max_seg {
                self.stats.fail(FailureKind::TooLarge);
                return Err(DmaError::SegmentLimit { index: i, len });
            }
            let (cpu, phys) = match src {
                Source::P2p(seg) => {
                    if let Some(g) = group.take() {
                        self.place_group(dev, view, list, g, &lim, dir, attrs)?;
                    }
                    self.place_p2p(dev, view, list, i, seg, &lim, opts)?;
                    continue;
                }
                Source::Cpu { ptr, writable, .. } => {
                    if dir.device_writes() && !writable {
                        self.stats.fail(FailureKind::Invalid);
                        return Err(DmaError::WrongDirection);
                    }
                    let phys = self.cpu_phys(view, &lim, ptr, len);
                    (Some(ptr), phys)
                }
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
                if let Some(g) = group.take() {
                    self.place_group(dev, view, list, g, &lim, dir, attrs)?;
                }
                list[i].place = Place::Direct { bus: BusAddr(p.0) };
                continue;
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
                self.place_group(dev, view, list, g, &lim, dir, attrs)?;
            }
            if !lim.boundary_allows(orig & lim.min_align, len as u64) {
                self.stats.fail(FailureKind::TooLarge);
                return Err(DmaError::SegmentLimit { index: i, len });
            }
            group = Some(Group { start: i, count: 1, orig0: orig, len: len as u64 });
        }
        if let Some(g) = group.take() {
            self.place_group(dev, view, list, g, &lim, dir, attrs)?;
        }
        let range = self.window_layout(view, list, &lim, dir)?;
        Ok((self.emit_segments(view, list, &lim, opts.coalesce), range))
    }

    /// The physical address of a CPU buffer, where the path needs it: to use it directly, or for
    /// `min_align_mask` bits above the page offset (the page offset is the same in the virtual address,
    /// so paths that bounce everything skip the translation otherwise, as the single-mapping face
    /// does).
    fn cpu_phys(&self, view: &View<'_>, lim: &Limits, ptr: *mut u8, len: usize) -> Option<PhysAddr> {
        if view.path.bounces_everything() && lim.min_align < PAGE_SIZE {
            None
        } else {
            self.platform.virt_to_phys(ptr, len)
        }
    }

    /// The address whose `min_align_mask` bits a bounced copy keeps (as `build_sg` chose it).
    fn orig_addr(&self, view: &View<'_>, lim: &Limits, src: &Source) -> u64 {
        match *src {
            Source::Cpu { ptr, len, .. } => self.cpu_phys(view, lim, ptr, len).map_or(ptr as u64, |p| p.0),
            Source::Phys { phys, .. } => phys.0,
            Source::P2p(s) => s.bar.0,
        }
    }

    /// Write the DMA segments into the list, in list order, merging what may be merged.
    fn emit_segments(
        &self,
        view: &View<'_>,
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

    /// Resolve and place one peer-to-peer segment. P2P memory is never bounced.
    #[allow(clippy::too_many_arguments)]
    fn place_p2p(
        &self,
        dev: &Device,
        view: &View<'_>,
        list: &mut [SgEntry<'_>],
        i: usize,
        seg: P2pSegment,
        lim: &Limits,
        opts: &SgOptions<'_>,
    ) -> Result<(), DmaError> {
        let client = dev.config().id;
        let route = match opts.p2p {
            Some(t) => t.p2p_route(seg.provider, client, seg.bar, seg.len),
            None => P2pRoute::NotSupported,
        };
        let (bus, place) = match route {
            P2pRoute::NotSupported => {
                self.stats.fail(FailureKind::Invalid);
                return Err(DmaError::P2pUnsupported { provider: seg.provider, client });
            }
            P2pRoute::BusAddress(bus) => (bus, Place::P2pBus { bus }),
            // Behind an IOMMU the range gets entries like any mapping (in the list's window range).
            P2pRoute::ThroughHostBridge if view.window.is_some() => {
                list[i].place = Place::Window { bus: BusAddr(0), phys: seg.bar };
                return Ok(());
            }
            // Without an IOMMU the host bridge routes the BAR's CPU physical address itself.
            P2pRoute::ThroughHostBridge => (BusAddr(seg.bar.0), Place::Direct { bus: BusAddr(seg.bar.0) }),
        };
        if !lim.mask.covers(bus.0, seg.len as u64) {
            self.stats.fail(FailureKind::BeyondMask);
            return Err(DmaError::BeyondMask { addr: bus.0, mask: lim.mask });
        }
        if !lim.within_boundary(bus.0, seg.len as u64) {
            self.stats.fail(FailureKind::TooLarge);
            return Err(DmaError::SegmentLimit { index: i, len: seg.len });
        }
        list[i].place = place;
        Ok(())
    }

    fn pool_span(&self, view: &View<'_>) -> PoolSpan {
        let page = view.run_page();
        let mut span = PoolSpan { max_run: 0, max_unit: 1 };
        for i in view.pools.iter() {
            if let Some(pool) = self.pools.get(i).and_then(|p| p.as_ref()) {
                let max = pool.max_mapping() as u64;
                span.max_run = span.max_run.max(if page > 0 { max & !(page - 1) } else { max });
                span.max_unit = span.max_unit.max((pool.slot_size() as u64).max(page));
            }
        }
        span
    }

    /// Allocate one run for a group, copy (or clear) its bytes and record every entry's place.
    #[allow(clippy::too_many_arguments)]
    fn place_group(
        &self,
        dev: &Device,
        view: &View<'_>,
        list: &mut [SgEntry<'_>],
        g: Group,
        lim: &Limits,
        dir: DmaDirection,
        attrs: DmaAttrs,
    ) -> Result<(), DmaError> {
        // The segment's first byte keeps the first original's `min_align` bits; the later entries keep
        // theirs because the group only took entries whose bits follow on (see `can_join`). Bits
        // below the run's alignment unit go into the lead; those above come from the run's pool
        // alignment (or, strict, from where the window layout puts the run).
        let bits = g.orig0 & lim.min_align;
        let page = view.run_page();
        let mut largest = 0u64;
        for pi in view.pools.iter() {
            let Some(pool) = self.pools.get(pi).and_then(|p| p.as_ref()) else { continue };
            let slot = pool.slot_size() as u64;
            let unit = slot.max(page);
            let lead = bits & (unit - 1);
            let max =
                if page > 0 { pool.max_mapping() as u64 & !(page - 1) } else { pool.max_mapping() as u64 };
            largest = largest.max(max.saturating_sub(lead));
            let data_end = lead + g.len;
            // Strict runs cover whole IOMMU pages, so no page the device reaches holds other data.
            let run_len = if page > 0 { data_end.next_multiple_of(page) } else { data_end };
            let nslots = run_len.div_ceil(slot);
            if nslots * slot > pool.max_mapping() as u64 || data_end > max {
                continue;
            }
            let req = if page > 0 {
                RunRequest { nslots: nslots as usize, align_mask: (unit - 1) & !(slot - 1), align_bits: 0 }
            } else {
                let Some(align) = run_alignment(lim, bits, g.len, view.pool_bus[pi].0, pool.len() as u64)
                else {
                    continue;
                };
                let align_mask = (align - 1) & !(slot - 1);
                RunRequest { nslots: nslots as usize, align_mask, align_bits: bits & align_mask }
            };
            let Some(index) = pool.alloc_sg(req, 0, data_end as usize, dir, attrs, dev.serial) else {
                continue;
            };
            let run_off = (index as u64) << slot.trailing_zeros();
            let start = view.pool_bus[pi].0 + run_off + lead;
            let misplaced = if page > 0 {
                (pool.phys().0 + run_off) % page != 0
            } else {
                start & lim.min_align != bits
                    || !lim.within_boundary(start, g.len)
                    || !lim.mask.covers(start, g.len)
            };
            if misplaced {
                // Only possible if a pool's placement changes low address bits (bus encoding, or a
                // pool not aligned to the IOMMU page): give the run back and try another pool.
                pool.free(index, nslots as usize);
                continue;
            }
            if page > 0 {
                // SAFETY: the run was just allocated for us: `nslots * slot` bytes from `run_off`.
                unsafe {
                    core::ptr::write_bytes(pool.cpu_at(run_off as usize), 0, lead as usize);
                    let tail = run_off + data_end;
                    core::ptr::write_bytes(
                        pool.cpu_at(tail as usize),
                        0,
                        (nslots * slot - data_end) as usize,
                    );
                }
            }
            let head = RunHead { nslots: nslots as u16, lead: lead as u32 };
            let bus_base = if page > 0 { None } else { Some(view.pool_bus[pi].0) };
            self.fill_group(list, g, pool, pi, bus_base, run_off + lead, head, dir, attrs);
            return Ok(());
        }
        if largest < g.len {
            self.stats.fail(FailureKind::TooLarge);
            return Err(DmaError::TooLarge { len: g.len as usize, max: largest as usize });
        }
        let n = self.stats.fail(FailureKind::PoolExhausted);
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
    /// the originals on request), exactly as a single bounced mapping; record each entry's place.
    #[allow(clippy::too_many_arguments)]
    fn fill_group(
        &self,
        list: &mut [SgEntry<'_>],
        g: Group,
        pool: &crate::pool::BouncePool<'_>,
        pi: usize,
        bus_base: Option<u64>,
        data_off: u64,
        head: RunHead,
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
            let pool_off = data_off + pos;
            if copy {
                // SAFETY: the original is valid for `len` bytes (entry contract); the run is ours and
                // holds `[pos, pos + len)` of the group's stream; pool memory never overlaps a caller's
                // buffer.
                unsafe { core::ptr::copy_nonoverlapping(cpu, pool.cpu_at(pool_off as usize), len) };
                self.stats.to_device(len);
            }
            e.place = Place::Bounced {
                // Strict runs get their bus address from the window layout.
                bus: BusAddr(bus_base.map_or(0, |b| b + pool_off)),
                pool: pi as u8,
                pool_off,
                run: (k == g.start).then_some(head),
                cpu,
            };
            pos += len as u64;
        }
    }

    /// The next window item at or after entry `from`, and the index after its entries.
    fn next_item(
        &self,
        list: &[SgEntry<'_>],
        from: usize,
        view: &View<'_>,
        page: u64,
        lim: &Limits,
    ) -> Option<(Item, usize)> {
        let strict = view.strict();
        let mut i = from;
        while let Some(e) = list.get(i) {
            match e.place {
                Place::Bounced { pool, pool_off, run: Some(_), .. } if strict => {
                    let data_phys = self.pools.get(pool as usize)?.as_ref()?.phys().0 + pool_off;
                    let d = data_phys & (page - 1);
                    let mut len = e.src.len() as u64;
                    let mut j = i + 1;
                    while let Some(n) =
                        list.get(j).filter(|n| matches!(n.place, Place::Bounced { run: None, .. }))
                    {
                        len += n.src.len() as u64;
                        j += 1;
                    }
                    let bits = self.orig_addr(view, lim, &e.src) & lim.min_align;
                    return Some((Item { first: i, phys: data_phys - d, d, len, bits, key: pool_off }, j));
                }
                Place::Window { phys, .. } => {
                    let d = phys.0 & (page - 1);
                    let len = e.src.len() as u64;
                    let bits = phys.0 & lim.min_align;
                    return Some((Item { first: i, phys: phys.0 - d, d, len, bits, key: 0 }, i + 1));
                }
                _ => i += 1,
            }
        }
        None
    }

    /// IOMMU paths: one bus range for every strict run and host-bridge P2P segment of the list, their
    /// entries written in one batch. `Ok(None)` when the list has nothing for the window (no
    /// allocation, no hypercall).
    fn window_layout(
        &self,
        view: &View<'_>,
        list: &mut [SgEntry<'_>],
        lim: &Limits,
        dir: DmaDirection,
    ) -> Result<Option<(u64, u64)>, DmaError> {
        let Some(win) = view.window else { return Ok(None) };
        let page = win.page_size();
        // Where each item goes, as offsets from the range's start.
        let mut cursor = 0u64;
        let mut first_phys = None;
        let mut at = 0;
        while let Some((item, next)) = self.next_item(list, at, view, page, lim) {
            let Some(p) = place_item(cursor, &item, lim, page) else {
                self.stats.fail(FailureKind::TooLarge);
                return Err(DmaError::SegmentLimit { index: item.first, len: item.len as usize });
            };
            first_phys.get_or_insert(item.phys);
            cursor = p + item.npages(page) * page;
            at = next;
        }
        let Some(first_phys) = first_phys else { return Ok(None) };
        let span = cursor;
        let (lo, hi) = window_below(&win, lim.mask);
        // The range starts aligned so that offsets keep their meaning: the `min_align` bits above the
        // page, and (only where the window crosses a boundary) the boundary blocks.
        let mut align = page;
        if lim.min_align >= page {
            align =
                align.max(lim.min_align.checked_add(1).ok_or(DmaError::InvalidMinAlignMask(lim.min_align))?);
        }
        if lo < hi && !lim.within_boundary(lo, hi - lo) {
            let need = span.checked_next_power_of_two().unwrap_or(1 << 63);
            align = align.max(need.min(lim.boundary.saturating_add(1)));
        }
        let slot = view.domain.and_then(|d| self.slot(d)).ok_or(DmaError::NotAttached)?;
        let tce = self.platform.tce().ok_or(DmaError::Iommu(IommuError::NoWindow))?;
        let placed = slot.space.lock().alloc(span, align, 0, lo, hi, RangeKind::SgList, first_phys);
        let base = match placed {
            Ok(b) => b,
            Err(e) => {
                self.stats.fail(FailureKind::Iommu);
                return Err(DmaError::Iommu(e));
            }
        };
        // Every entry's bus address, from the same layout.
        let mut cursor = 0u64;
        let mut at = 0;
        while let Some((item, next)) = self.next_item(list, at, view, page, lim) {
            let p = place_item(cursor, &item, lim, page).unwrap_or(cursor);
            let data_bus = base + p + item.d;
            for e in list[item.first..next].iter_mut() {
                match &mut e.place {
                    Place::Bounced { bus, pool_off, .. } => *bus = BusAddr(data_bus + (*pool_off - item.key)),
                    Place::Window { bus, .. } => *bus = BusAddr(data_bus),
                    _ => {}
                }
            }
            cursor = p + item.npages(page) * page;
            at = next;
        }
        let perm = tce_perm(dir);
        let hint = Cell::new(0usize);
        let settled: &[SgEntry<'_>] = list;
        // Holes between items get empty entries: the device faults there.
        let entry = |k: u64| {
            self.window_entry(settled, &hint, base + (k << win.page_shift), view, page, lim)
                .map_or(0, |phys| phys | perm)
        };
        if let Err(f) = self.tce_writer(tce).put_entries(&win, base, span >> win.page_shift, &entry) {
            self.stats.fail(FailureKind::Iommu);
            if f.clean {
                slot.space.lock().free(base, span, RangeKind::SgList);
            } else {
                // Entries may still point at the runs: neither they nor the range are ever reused
                // (the runs stay allocated, forgotten by the list; the range is quarantined).
                slot.space.lock().quarantine(base);
                self.iommu_counters.quarantined_ranges.fetch_add(1, Ordering::Relaxed);
                for e in list.iter_mut() {
                    if matches!(e.place, Place::Bounced { .. }) {
                        e.place = Place::Unmapped;
                    }
                }
            }
            return Err(DmaError::Iommu(f.err));
        }
        Ok(Some((base, span)))
    }

    /// The physical page the list maps at bus page `bus` (`None` for a hole).
    fn window_entry(
        &self,
        list: &[SgEntry<'_>],
        hint: &Cell<usize>,
        bus: u64,
        view: &View<'_>,
        page: u64,
        lim: &Limits,
    ) -> Option<u64> {
        // Items lie in increasing bus order; entries are asked for mostly in order, so start at the
        // last item found and fall back to the start once.
        for start in [hint.get(), 0] {
            let mut at = start;
            while let Some((item, next)) = self.next_item(list, at, view, page, lim) {
                let first_page = list[item.first].mapped_at()?.0 - item.d;
                if bus < first_page {
                    break;
                }
                if bus < first_page + item.npages(page) * page {
                    hint.set(item.first);
                    return Some(item.phys + (bus - first_page));
                }
                at = next;
            }
            if start == 0 {
                break;
            }
        }
        None
    }

    /// Free the runs a list holds (entries not yet reset).
    fn release_runs(&self, list: &[SgEntry<'_>]) {
        for e in list {
            if let Place::Bounced { pool, pool_off, run: Some(h), .. } = e.place {
                if let Some(p) = self.pools.get(pool as usize).and_then(|p| p.as_ref()) {
                    p.free(p.index_of_offset(pool_off - h.lead as u64), h.nslots as usize);
                }
            }
        }
    }

    /// Undo the claims `check_runs` made on the runs of `list[..upto]`.
    fn unclaim(&self, list: &[SgEntry<'_>], upto: usize) {
        for e in list.iter().take(upto) {
            if let Place::Bounced { pool, pool_off, run: Some(h), .. } = e.place {
                if let Some(p) = self.pools.get(pool as usize).and_then(|p| p.as_ref()) {
                    p.unrelease(p.index_of_offset(pool_off - h.lead as u64));
                }
            }
        }
    }

    /// Unmap a list mapped by [`Self::map_sg`]: IOMMU entries cleared first, then device writes copied
    /// back per the guest's own record of each entry (never per a length from the device), runs and
    /// bus range freed; P2P bus-address and direct entries skipped. `dir` must be the mapping's. A
    /// list that is not mapped as this layer mapped it is an error and changes nothing.
    pub fn unmap_sg(
        &self,
        dev: &Device,
        list: &mut [SgEntry<'_>],
        dir: DmaDirection,
        attrs: DmaAttrs,
    ) -> Result<(), DmaError> {
        self.check_device(dev)?;
        self.check_list_device(dev, list)?;
        let view = self.settled_view(dev)?;
        self.check_runs(&view, list, dir, true)?;
        let range = list.first().and_then(|e| e.tag.range);
        if let (Some((start, len)), Some(win)) = (range, view.window) {
            // Entries go first: from here on the device cannot touch the runs, so the copy back reads
            // what it left, and the slots and range can be reused safely.
            let cleared = match self.platform.tce() {
                Some(tce) => self.tce_writer(tce).clear(&win, start, len >> win.page_shift),
                None => Err(IommuError::NoWindow),
            };
            if let Err(e) = cleared {
                self.unclaim(list, list.len());
                self.stats.fail(FailureKind::Iommu);
                log::warn!(
                    "ccdma: unmap of a scatter-gather list at {start:#x} failed clearing ({e:?}); kept"
                );
                return Err(DmaError::Iommu(e));
            }
        }
        if dir.device_writes() && !attrs.contains(DmaAttrs::SKIP_CPU_SYNC) {
            self.copy_back(list);
        }
        self.count_segments(list, false);
        if let Some(slot) = view.domain.and_then(|d| self.slot(d)) {
            if let Some((start, len)) = range {
                slot.space.lock().free(start, len, RangeKind::SgList);
            }
            slot.live_mappings.fetch_sub(1, Ordering::Relaxed);
        }
        self.release_runs(list);
        reset(list);
        dev.live_dec();
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
        self.check_list_device(dev, list)?;
        let view = self.settled_view(dev)?;
        self.check_runs(&view, list, dir, false)?;
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
        self.check_list_device(dev, list)?;
        let view = self.settled_view(dev)?;
        let preserve = self.check_runs(&view, list, dir, false)?;
        if !(dir.device_reads() || preserve) {
            return Ok(());
        }
        for e in list.iter() {
            if let Place::Bounced { pool, pool_off, cpu, .. } = e.place {
                if let Some(p) = self.pools.get(pool as usize).and_then(|p| p.as_ref()) {
                    let len = e.src.len();
                    // SAFETY: `check_runs` proved `[pool_off, pool_off + len)` lies in a live run of
                    // this list; the original is valid for `len` bytes while the entry is mapped.
                    unsafe { core::ptr::copy_nonoverlapping(cpu, p.cpu_at(pool_off as usize), len) };
                    self.stats.to_device(len);
                }
            }
        }
        Ok(())
    }

    /// Copy every bounced entry's bytes from its run to its original: one pass, each shared byte read
    /// once, lengths from the entry (the guest's record), never from the device.
    fn copy_back(&self, list: &[SgEntry<'_>]) {
        for e in list {
            if let Place::Bounced { pool, pool_off, cpu, .. } = e.place {
                if let Some(p) = self.pools.get(pool as usize).and_then(|p| p.as_ref()) {
                    let len = e.src.len();
                    // SAFETY: `check_runs` proved `[pool_off, pool_off + len)` lies in a live run of
                    // this list; the original is valid for writes of `len` bytes while it is mapped.
                    unsafe { core::ptr::copy_nonoverlapping(p.cpu_at(pool_off as usize), cpu, len) };
                    self.stats.from_device(len);
                }
            }
        }
    }

    /// Check that `list` is mapped exactly as this layer mapped it for the device and `dir`: the whole
    /// list in order, its bus range (if any) live in the device's domain, every run live in the pool
    /// with this direction and its entries back to back filling it exactly. With `claim` every run is
    /// also marked for release, so nobody else can unmap it; on error every claim is undone. Returns
    /// whether the runs were mapped with `PRESERVE_UNWRITTEN`.
    /// A mapped list belongs to the device that mapped it.
    fn check_list_device(&self, dev: &Device, list: &[SgEntry<'_>]) -> Result<(), DmaError> {
        match list.first() {
            Some(e) if e.tag.list != 0 && e.tag.device != dev.serial => {
                self.stats.fail(FailureKind::Mismatch);
                Err(DmaError::WrongDevice { owner: e.tag.device, given: dev.serial })
            }
            _ => Ok(()),
        }
    }

    fn check_runs(
        &self,
        view: &View<'_>,
        list: &[SgEntry<'_>],
        dir: DmaDirection,
        claim: bool,
    ) -> Result<bool, DmaError> {
        let mut claimed = 0; // entries [0, claimed) hold every claim made
        let result = self.walk_runs(view, list, dir, claim, &mut claimed);
        if result.is_err() {
            if claim {
                self.unclaim(list, claimed);
            }
            match result {
                Err(DmaError::SgListState { .. }) | Err(DmaError::UnknownMapping(_)) => {
                    self.stats.fail(FailureKind::UnknownMapping)
                }
                _ => self.stats.fail(FailureKind::Mismatch),
            };
        }
        result
    }

    fn walk_runs(
        &self,
        view: &View<'_>,
        list: &[SgEntry<'_>],
        dir: DmaDirection,
        claim: bool,
        claimed: &mut usize,
    ) -> Result<bool, DmaError> {
        /// The run being walked: where its next entry must start and where it ends (pool offsets).
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
        let not_mapped = DmaError::SgListState { mapped: false };
        let Some(tag) = list.first().map(|e| e.tag) else { return Err(not_mapped) };
        if tag.list == 0 || tag.count != list.len() {
            return Err(not_mapped);
        }
        if let Some((start, len)) = tag.range {
            let slot = view.domain.and_then(|d| self.slot(d)).ok_or(not_mapped)?;
            let found = slot.space.lock().find(start);
            if !found.is_some_and(|r| r.start == start && r.len == len && r.kind == RangeKind::SgList) {
                return Err(DmaError::UnknownMapping(BusAddr(start)));
            }
        }
        let mut run: Option<Cursor> = None;
        let mut preserve = false;
        for (i, e) in list.iter().enumerate() {
            if e.tag != (ListTag { index: i, ..tag }) {
                return Err(not_mapped);
            }
            let len = e.src.len() as u64;
            match e.place {
                Place::Unmapped | Place::Pending { .. } => return Err(not_mapped),
                Place::Direct { .. } | Place::P2pBus { .. } | Place::Window { .. } => close(&mut run)?,
                Place::Bounced { bus, pool, pool_off, run: Some(head), .. } => {
                    close(&mut run)?;
                    if !view.pools.iter().any(|p| p == pool as usize) {
                        return Err(DmaError::UnknownMapping(bus));
                    }
                    let p = self.pools.get(pool as usize).and_then(|p| p.as_ref()).ok_or(not_mapped)?;
                    let key = pool_off.checked_sub(head.lead as u64).ok_or(not_mapped)?;
                    let rec = p.lookup_sg(key, claim).ok_or(DmaError::UnknownMapping(bus))?;
                    if claim {
                        *claimed = i + 1;
                    }
                    if rec.dir != dir {
                        return Err(DmaError::DirectionMismatch { mapped: rec.dir, given: dir });
                    }
                    if rec.nslots != head.nslots as usize || rec.len < head.lead as usize {
                        return Err(not_mapped);
                    }
                    let data = rec.len - head.lead as usize;
                    if len > data as u64 {
                        return Err(DmaError::SizeMismatch { mapped: data, given: len as usize });
                    }
                    preserve |= rec.attrs.contains(DmaAttrs::PRESERVE_UNWRITTEN);
                    run = Some(Cursor { pool, next: pool_off + len, end: key + rec.len as u64, len: data });
                }
                Place::Bounced { pool, pool_off, run: None, .. } => match &mut run {
                    Some(c) if c.pool == pool && c.next == pool_off && c.next + len <= c.end => c.next += len,
                    _ => return Err(not_mapped),
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
        && (bits & (span.max_unit - 1)) + new_len <= span.max_run
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

/// Where an item goes in the list's window range: the first IOMMU-page offset at or after `cursor`
/// that gives its first byte the `min_align` bits it needs (the range's start is aligned to keep
/// them) and keeps it inside one boundary block. `None` when no place can.
fn place_item(cursor: u64, item: &Item, lim: &Limits, page: u64) -> Option<u64> {
    let a = lim.min_align.checked_add(1)?;
    let high = lim.min_align & !(page - 1);
    let phase = item.bits & high;
    let fit = |p: u64| -> Option<u64> {
        if high == 0 {
            return Some(p);
        }
        let b = (p - p % a).checked_add(phase)?;
        if b < p {
            b.checked_add(a)
        } else {
            Some(b)
        }
    };
    let mut p = fit(cursor)?;
    if !lim.within_boundary(p + item.d, item.len) {
        // Start over at the next boundary block (a block smaller than a page cannot help).
        let block = lim.boundary.checked_add(1)?;
        if block < page {
            return None;
        }
        p = fit(((p + item.d) | lim.boundary).checked_add(1)?)?;
        if !lim.within_boundary(p + item.d, item.len) {
            return None;
        }
    }
    Some(p)
}

/// Put every entry back to unmapped.
fn reset(list: &mut [SgEntry<'_>]) {
    for e in list {
        e.place = Place::Unmapped;
        e.out = None;
        e.tag = ListTag::NONE;
    }
}
