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
//!
//! ```
//! # use ccdma::*;
//! # use ccdma_hv_model::{HvConfig, Hypervisor, Region};
//! # let hv: &'static Hypervisor = Box::leak(Box::new(Hypervisor::new(HvConfig::pseries(6 << 30))));
//! # let mut layer = DmaLayer::new(hv);
//! # // SAFETY: the model never hands this range out.
//! # unsafe { layer.add_pool(PhysAddr(0x80_0000), 1 << 20, vec![SlotMeta::EMPTY; 512].leak(), PoolConfig::default()) }.unwrap();
//! use ccdma::sg::{dma_segments, SgEntry};
//! let disk = layer.attach(DeviceConfig::new(2, DmaMask::BITS_64))?;
//! # let model_disk = hv.add_device(2, 64);
//! let (header, payload) = ([0x11u8; 64], [0x22u8; 4000]);
//! let mut list = [SgEntry::to_device(&header), SgEntry::to_device(&payload)];
//! let n = layer.on(&disk).map_sg(&mut list, DmaDirection::ToDevice)?;
//! assert_eq!(n, 1); // packed into one bounce run: one DMA segment
//! let mut seen = Vec::new();
//! for seg in dma_segments(&list) {
//!     seen.extend(model_disk.read(seg.addr.0, seg.len).unwrap());
//! }
//! assert_eq!(seen.len(), 4064); // the device sees the list's bytes, in order, with no gap
//! assert!(seen[..64].iter().all(|&b| b == 0x11) && seen[64..].iter().all(|&b| b == 0x22));
//! layer.on(&disk).unmap_sg(&mut list, DmaDirection::ToDevice)?;
//! # Ok::<(), ccdma::DmaError>(())
//! ```

use core::cell::Cell;
use core::marker::PhantomData;
use core::sync::atomic::{AtomicU64, Ordering};

use crate::addr::{BusAddr, PhysAddr, PAGE_SIZE};
use crate::device::{Device, LiveKind};
use crate::direction::{DmaAttrs, DmaDirection};
use crate::error::{DmaError, IommuError};
use crate::growth::table::PoolTable;
use crate::iommu::bus_space::RangeKind;
use crate::iommu::calls::tce_perm;
use crate::iommu::domain::DomainRef;
use crate::iommu::window::{window_below, WindowGeometry};
use crate::layer::{Cold, DmaLayer};
use crate::path::DmaPath;
use crate::platform::Platform;
use crate::pool::RunRequest;
use crate::pool_set::{PoolOrder, MAX_POOLS};
use crate::stats::{should_warn, FailureKind};

mod build;
mod emit;
mod p2p;
mod pack;
mod strict;
mod unmap;

use emit::{Class, Limits, Outputs};
pub use p2p::{P2pRoute, P2pSegment, P2pTopology};

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
struct View {
    path: DmaPath,
    pools: PoolOrder,
    /// Where each pool starts on the device's bus (premapped or shared address).
    pool_bus: [BusAddr; MAX_POOLS],
    /// The window strict runs and host-bridge P2P ranges are entered into.
    window: Option<WindowGeometry>,
    domain: Option<DomainRef>,
}

impl View {
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
        // `page` is never 0 (`window_layout` refuses a window whose page size is); 0 pages then.
        if page == 0 {
            return 0;
        }
        (self.d + self.len).div_ceil(page)
    }
}
impl<'m, P: Platform, const POOLS: usize, const DOMAINS: usize, const AREAS: usize>
    DmaLayer<'m, P, POOLS, DOMAINS, AREAS>
{
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
        self.cold().map_sg_checked::<false>(dev, list, dir, attrs, opts)
    }

    /// [`Self::map_sg`] for a list of CPU buffers only ([`SgEntry::new`], [`SgEntry::to_device`],
    /// [`SgEntry::from_raw`]): a physical-range or P2P entry is refused with
    /// [`DmaError::NotTranslatable`] (nothing mapped, the list as it was). The same result as
    /// `map_sg` for such a list; a caller that never builds the other kinds (the C library) links
    /// none of their code (full C image -128 B, `bash scripts/budgets.sh`, issue 20).
    pub fn map_sg_cpu(
        &self,
        dev: &Device,
        list: &mut [SgEntry<'_>],
        dir: DmaDirection,
        attrs: DmaAttrs,
    ) -> Result<usize, DmaError> {
        self.cold().map_sg_checked::<true>(dev, list, dir, attrs, &SgOptions::default())
    }
}

impl<const POOLS: usize, const DOMAINS: usize, const AREAS: usize> Cold<'_, '_, POOLS, DOMAINS, AREAS> {
    /// [`DmaLayer::map_sg_with`]; with `CPU_ONLY` only CPU-buffer entries are accepted. Out of
    /// line: not copied into the public shells, which are compiled per platform type.
    #[inline(never)]
    fn map_sg_checked<const CPU_ONLY: bool>(
        &self,
        dev: &Device,
        list: &mut [SgEntry<'_>],
        dir: DmaDirection,
        attrs: DmaAttrs,
        opts: &SgOptions<'_>,
    ) -> Result<usize, DmaError> {
        crate::parts::require(crate::parts::SG, "scatter-gather")?;
        let _masked = self.masked();
        self.check_device(dev)?;
        if list.is_empty() {
            return Err(DmaError::ZeroLength);
        }
        if list.iter().any(|e| e.place != Place::Unmapped || e.out.is_some()) {
            self.stats.fail(FailureKind::Invalid);
            return Err(DmaError::SgListState { mapped: true });
        }
        let total = list.iter().fold(0usize, |t, e| t.saturating_add(e.len()));
        let result = self
            .with_growth_cold(dev, total, || self.map_sg_attempt::<CPU_ONLY>(dev, list, dir, attrs, opts));
        if result.is_err() {
            dev.map_failed();
        }
        result
    }

    /// One attempt at [`Self::map_sg_with`] with the pools of now.
    fn map_sg_attempt<const CPU_ONLY: bool>(
        &self,
        dev: &Device,
        list: &mut [SgEntry<'_>],
        dir: DmaDirection,
        attrs: DmaAttrs,
        opts: &SgOptions<'_>,
    ) -> Result<usize, DmaError> {
        let view = match dev.domain {
            None => self.plain_view(dev, true),
            Some(d) => {
                let info = self.ensure_attached_any(dev)?;
                let (pools, pool_bus) = self.pool_view(dev, true).ok_or(DmaError::NotAttached)?;
                View { path: info.path, pools, pool_bus, window: info.dynamic, domain: Some(d) }
            }
        };
        match self.build_sg::<CPU_ONLY>(dev, &view, list, dir, attrs, opts) {
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
                if let Some(slot) = view.domain.and_then(|d| self.slot_cold(d)) {
                    // Detach waits for the list like for any mapping.
                    slot.live_mappings.fetch_add(1, Ordering::Relaxed);
                }
                dev.live_inc(LiveKind::List);
                Ok(n)
            }
            Err(e) => {
                self.release_runs(list);
                reset(list);
                Err(e)
            }
        }
    }

    /// A device without an IOMMU: its pools now (reserve ones for lookups, or while a pool is added).
    /// Out of line: its two callers (map, and unmap/sync's settled view) each inlined the pool
    /// table's read (full image -64 B, `bash scripts/budgets.sh`).
    #[inline(never)]
    fn plain_view(&self, dev: &Device, for_alloc: bool) -> View {
        let reserve = !for_alloc || self.growth.growing.load(Ordering::Relaxed);
        let (pools, pool_bus) = self.plain.order_for(Some(dev.config.dma_mask), reserve);
        View { path: dev.path, pools, pool_bus, window: None, domain: None }
    }

    /// The view of a device whose list is already mapped: never attaches.
    fn settled_view(&self, dev: &Device) -> Result<View, DmaError> {
        match dev.domain {
            None => Ok(self.plain_view(dev, false)),
            Some(d) => match (self.domain_info_cold(d), self.slot_cold(d)) {
                (Some(info), Some(slot)) => {
                    let (pools, pool_bus) = slot.live.order_for(None, true);
                    Ok(View { path: info.path, pools, pool_bus, window: info.dynamic, domain: Some(d) })
                }
                _ => {
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
}

/// Put every entry back to unmapped.
fn reset(list: &mut [SgEntry<'_>]) {
    for e in list {
        e.place = Place::Unmapped;
        e.out = None;
        e.tag = ListTag::NONE;
    }
}
