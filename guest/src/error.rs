//! The crate's one error type. Variants say what a caller can act on.
//!
//! ```
//! # use ccdma::*;
//! # use ccdma_hv_model::{HvConfig, Hypervisor, Region};
//! # let hv: &'static Hypervisor = Box::leak(Box::new(Hypervisor::new(HvConfig::pseries(6 << 30))));
//! # let mut layer = DmaLayer::new(hv);
//! # // SAFETY: the model never hands this range out.
//! # unsafe { layer.add_pool(PhysAddr(0x80_0000), 1 << 20, vec![SlotMeta::EMPTY; 512].leak(), PoolConfig::default()) }.unwrap();
//! let dev = layer.attach(DeviceConfig::new(1, DmaMask::BITS_32))?;
//! // Errors carry their numbers and print them.
//! let huge = vec![0u8; 2 << 20];
//! let e = layer.on(&dev).map_to_device(&huge).unwrap_err();
//! assert!(matches!(e, DmaError::TooLarge { len: 0x20_0000, .. }), "{e}");
//!
//! // A refused call hands its value back ([`Refused`]): nothing is lost.
//! # let buf = hv.alloc(4096, Region::Low);
//! // SAFETY: `buf` is a page of guest RAM this program owns until the unmap.
//! let bus = unsafe { layer.on(&dev).map_phys(PhysAddr(buf), 4096, DmaDirection::ToDevice)? };
//! let refused = layer.detach(dev).unwrap_err();
//! assert!(matches!(refused.error, DmaError::Busy { live: 1 }));
//! let dev = refused.value;
//! // SAFETY: `bus` is this program's raw mapping of `dev`, unmapped once.
//! unsafe { layer.on(&dev).unmap(bus, 4096, DmaDirection::ToDevice)? };
//! layer.detach(dev)?;
//! # Ok::<(), ccdma::DmaError>(())
//! ```

use core::fmt;

use crate::addr::{BusAddr, DmaMask, InvalidMask, PhysAddr};
pub use crate::iommu::error::IommuError;
use crate::path::DdwStep;

/// A status code as the platform returned it: a hypervisor's, ultravisor's or firmware's return
/// value (PAPR's small negative `H_*`/`U_*` codes, TDX's 64-bit statuses with their high bits, a
/// GHCB's or RSI's code) or an instruction's (`PVALIDATE`'s). All 64 bits are kept.
///
/// Stored unaligned (`repr(packed)`: 8 bytes, alignment 1) so that a [`SharingErrorKind`] is 9 bytes
/// and the [`DmaError`] carrying one stays 24 bytes (every `Result<_, DmaError>` of the layer is
/// moved through `?`). Read it by value: `code.0`, `i64::from(code)`, or match it
/// (`SharingErrorKind::Hypervisor(StatusCode(-4))`). `Debug` prints the number alone.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
#[repr(C, packed)]
pub struct StatusCode(pub i64);

impl fmt::Debug for StatusCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let code = self.0;
        fmt::Debug::fmt(&code, f)
    }
}

impl From<i64> for StatusCode {
    fn from(code: i64) -> StatusCode {
        StatusCode(code)
    }
}

impl From<i32> for StatusCode {
    fn from(code: i32) -> StatusCode {
        StatusCode(code.into())
    }
}

impl From<u32> for StatusCode {
    fn from(code: u32) -> StatusCode {
        StatusCode(code.into())
    }
}

impl From<StatusCode> for i64 {
    fn from(code: StatusCode) -> i64 {
        code.0
    }
}

/// Why a sharing or unsharing call failed (as reported by the platform). 9 bytes, alignment 1
/// (its codes are [`StatusCode`]s).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SharingErrorKind {
    /// The hypervisor/ultravisor returned an error code.
    Hypervisor(StatusCode),
    /// Retries without progress exceeded the bound (TDX `MapGPA` RETRY loop).
    NoProgress,
    /// The call claimed progress it cannot have made (resume address outside the request).
    BadResume,
    /// The page must be accepted after conversion to private and accepting failed.
    AcceptFailed,
    /// SEV-SNP `PVALIDATE` failed with this code (`FAIL_INPUT` 1, `FAIL_SIZEMISMATCH` 6, ...; the
    /// instruction's 32-bit code, widened): the page's validation state did not change.
    ValidateFailed(StatusCode),
    /// SEV-SNP `PVALIDATE` reported no change (rFLAGS.CF): the page was not in the validation state the
    /// guest recorded, which only the hypervisor remapping it behind the guest's back can cause.
    ValidationNoChange,
    /// The host rejected the change (Arm CCA `RSI_IPA_STATE_SET` answered `RSI_REJECT`).
    Rejected,
}

/// Every error the layer returns.
///
/// 24 bytes (a compile-time assertion below keeps it so): every fallible call of the layer returns
/// it through `?`, so its size is paid in moves and stack on every path, the map/unmap hot path
/// included. Fields are narrowed only where the value is bounded ([`DmaError::SharingFailed`]'s page
/// counts: a sharing request is at most `u32::MAX` pages), and the few details that did not fit are
/// named where they went (the request's own page count, the coherent allocation's first cause, the
/// DDW attempt's status code).
///
/// `Debug` (what `main() -> Result<_, DmaError>` prints) is the variant's name followed by its
/// `Display` text in parentheses, so addresses read in hex there too.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum DmaError {
    /// A DMA mask with too few bits (cannot hold one page) or more than 64.
    InvalidMask {
        /// The requested bit count (0 when given as a malformed value).
        bits: u32,
    },
    /// A pool's slot size that is not a power of two in 512..=65536.
    InvalidSlotSize(usize),
    /// A pool's longest run that is not 1..=4096 slots.
    InvalidMaxRun(usize),
    /// A pool's area count that is not 1..=16.
    InvalidAreas(usize),
    /// A pool shorter than one slot, or not a whole number of slots.
    PoolTooSmall {
        /// Bytes given.
        len: usize,
        /// The pool's slot size.
        slot_size: usize,
    },
    /// A new pool, or a coherent buffer's pages ([`crate::DmaLayer::alloc_coherent`]), overlapping
    /// pool `pool` of this layer.
    PoolOverlap {
        /// Index of the pool it overlaps.
        pool: usize,
    },
    /// An address that must be aligned and is not.
    Unaligned {
        /// The address given.
        addr: u64,
        /// The alignment it needs (bytes).
        align: u64,
    },
    /// A size or address computation that would overflow (a length near `usize::MAX`, a range that
    /// wraps the address space), or a request to share `2^32` pages (16 TiB) or more at once (the
    /// sharing errors count pages in a `u32`).
    Overflow,
    /// A `min_align_mask` that is not `2^n - 1` below 4 GiB.
    InvalidMinAlignMask(u64),
    /// A segment boundary mask that is not `2^n - 1`.
    InvalidSegmentBoundary(u64),
    /// A max segment size of zero.
    ZeroMaxSegment,
    /// `max_domains` not in 1..=16.
    InvalidMaxDomains(usize),
    /// A per-CPU list page count not in `1..=MAX_LIST_PAGES` (`TceBatching::PerCpuPages`).
    InvalidListPages(usize),
    /// The bus-range storage given to `enable_iommu` holds fewer than 4 ranges per domain.
    RangeStorageTooSmall {
        /// Ranges needed.
        needed: usize,
        /// Ranges given.
        provided: usize,
    },
    /// `enable_iommu` called twice.
    IommuAlreadyEnabled,
    /// The device sits behind an IOMMU (or the call needs one) but `enable_iommu` was not called.
    IommuNotEnabled,
    /// A device with this id is attached to the layer already (detach it first): the platform
    /// knows a device by its id, so two attachments would share its window and its acceptance.
    DeviceIdInUse(u32),
    /// The layer has all the devices attached it can hold
    /// ([`crate::device_ids::DEVICES_PER_POOL`] per pool slot: [`crate::device_ids::MAX_DEVICES`] in
    /// the default layer).
    TooManyDevices {
        /// Devices a layer can have attached at once.
        max: usize,
    },
    /// A raw-face map on a path without pool slots (direct, trusted) found every raw record in use
    /// ([`crate::RAW_RECORDS_PER_POOL`] per pool slot in the layer plus what [`crate::DmaLayer::add_raw_records`] lent).
    RawRecordsFull {
        /// Raw records the layer has.
        capacity: usize,
    },
    /// Every IOMMU domain is held by an attached device.
    NoFreeDomain {
        /// Domains the layer has.
        domains: usize,
    },
    /// The device (or the layer) still has live mappings, scatter-gather lists or coherent buffers:
    /// detach, pool release and IOMMU disable refuse until they are gone.
    Busy {
        /// How many are live.
        live: u64,
    },
    /// Devices still hold IOMMU domains (or entries that could not be cleared still name the pools).
    DomainsInUse,
    /// A detach failed part way: the device's window no longer holds every pool, so it maps nothing
    /// until a retried detach completes.
    DetachIncomplete,
    /// A mapping (or coherent buffer) of another device was named.
    WrongDevice {
        /// The device that owns it (the layer's serial of its attach).
        owner: u32,
        /// The device named.
        given: u32,
    },
    /// A mapping owned by a [`crate::Mapping`] (the safe face) was named through the raw face: only
    /// the `Mapping` may sync or unmap it.
    OwnedByMapping(BusAddr),
    /// The hypervisor reported a window whose geometry is unusable (page shift out of 12..=40, a
    /// range that wraps, an unaligned start).
    BadWindowGeometry {
        /// Its first bus address.
        start: u64,
        /// Its size.
        size: u64,
        /// Its page shift.
        page_shift: u32,
    },
    /// A device would map strictly in a window whose IOMMU pages are larger than the longest run of
    /// every pool: no mapping could ever be placed, so attach refuses.
    IommuPageTooLarge {
        /// The window's IOMMU page size.
        page: u64,
        /// The longest run (bytes) of any pool the device could map from.
        max_run: u64,
    },
    /// A coherent buffer whose pages are not aligned to the IOMMU page of the device's window.
    CoherentUnaligned {
        /// The IOMMU page size.
        page: u64,
    },
    /// The caller-provided metadata storage is too small for the pool.
    MetadataTooSmall {
        /// Slots the pool needs.
        needed: usize,
        /// Slots the storage holds.
        provided: usize,
    },
    /// No more pools can be added.
    TooManyPools,
    /// The platform has no CPU mapping for a physical range.
    NoCpuMapping(PhysAddr),
    /// Sharing pages with the hypervisor failed; everything shared by this call was rolled back
    /// (or quarantined when rolling back failed too). The request's length is the caller's own
    /// (`add_pool`'s `len`, `alloc_coherent`'s `pages`, ...), so it is not repeated here.
    SharingFailed {
        /// The first page of the request.
        phys: PhysAddr,
        /// Pages that could not be made private again and are quarantined (at most the request's
        /// pages, which are at most `u32::MAX`: a larger request is refused with
        /// [`DmaError::Overflow`] before anything is shared).
        quarantined: u32,
        /// What the platform reported.
        kind: SharingErrorKind,
    },
    /// A coherent allocation failed (its window entries could not be written) and then its pages
    /// could not all be made private again: `pages` pages from `phys` stay shared, quarantined. The
    /// caller must never use them again (the host can read them). Why the entries could not be
    /// written (an [`IommuError`]) is logged at error level, not kept here: the caller's action is
    /// the same whatever it was.
    CoherentQuarantined {
        /// The first quarantined page.
        phys: PhysAddr,
        /// Pages quarantined (at most the allocation's pages: see [`DmaError::SharingFailed`]).
        pages: u32,
        /// What the platform reported when the pages were to be made private again.
        kind: SharingErrorKind,
    },
    /// Making pages private again failed; they are quarantined (never reused).
    UnsharingFailed {
        /// The first page of the request.
        phys: PhysAddr,
        /// Pages quarantined (the request's last ones; at most the pages once shared, which are at
        /// most `u32::MAX`: see [`DmaError::SharingFailed`]).
        quarantined: u32,
        /// What the platform reported.
        kind: SharingErrorKind,
    },
    /// No path lets this device reach a pool (or memory): attach failed.
    NoPath {
        /// The device's DMA mask.
        mask: DmaMask,
        /// Number of pools the layer has.
        pools: usize,
        /// Bus end (exclusive) of the lowest pool, 0 when there is none.
        lowest_pool_bus_end: u64,
    },
    /// A zero-length mapping.
    ZeroLength,
    /// The mapping is longer than the largest run of slots (or the device's max segment).
    TooLarge {
        /// Requested bytes.
        len: usize,
        /// Largest mapping possible.
        max: usize,
    },
    /// No pool reachable by the device had a free run of the needed size.
    PoolExhausted {
        /// Bytes requested.
        len: usize,
    },
    /// A buffer the layer needs to address physically has no physical address (not guest RAM).
    NotTranslatable,
    /// The device cannot reach the buffer and it cannot be bounced (direct path).
    BeyondMask {
        /// First address of the buffer.
        addr: u64,
        /// The device mask.
        mask: DmaMask,
    },
    /// A bus address that is not the start of a live mapping of this layer.
    UnknownMapping(BusAddr),
    /// A live mapping was named with a size that differs from the one it was mapped with.
    SizeMismatch {
        /// Bytes recorded at map time.
        mapped: usize,
        /// Bytes given now.
        given: usize,
    },
    /// A live mapping was named with another direction than it was mapped with.
    DirectionMismatch {
        /// Direction recorded at map time.
        mapped: crate::direction::DmaDirection,
        /// Direction given now.
        given: crate::direction::DmaDirection,
    },
    /// A sync range outside the mapping.
    /// (The length given is the caller's own, at the call site, so it is not repeated here.)
    OutOfRange {
        /// Offset given.
        offset: usize,
        /// Mapping length (as the layer recorded it, whatever the caller believes).
        mapped: usize,
    },
    /// The operation is not valid for this direction (e.g. syncing a to-device mapping for the CPU).
    WrongDirection,
    /// The device belongs to another layer instance or was never attached.
    NotAttached,
    /// An IOMMU operation failed; nothing it did is left behind.
    Iommu(IommuError),
    /// A device behind an IOMMU for which no window can serve: attach failed.
    NoIommuPath {
        /// The device's DMA mask.
        mask: DmaMask,
        /// Number of pools the layer has (at most [`crate::MAX_POOLS`]).
        pools: u8,
        /// The default window `[start, end)` (both 0 when the device has none).
        window: (u64, u64),
        /// Why no dynamic window was used: the [`crate::DdwOutcome`]'s step; its status code (a failed
        /// query or create, a failed premap's [`IommuError`]) is logged at info level.
        ddw: DdwStep,
    },
    /// A peer-to-peer segment the client cannot reach: the PCI topology says P2P between this
    /// provider and client is not supported. Nothing of the list stays mapped.
    P2pUnsupported {
        /// The device whose BAR holds the segment.
        provider: u32,
        /// The device that was to reach it.
        client: u32,
    },
    /// A scatter-gather input segment that no DMA segment of this device can hold: longer than its
    /// max segment size, or (when it cannot be bounced) crossing its segment boundary.
    SegmentLimit {
        /// Index of the segment in the list.
        index: usize,
        /// Its length.
        len: usize,
    },
    /// Growth was already enabled on this layer.
    GrowthAlreadyEnabled,
    /// Growing the pools failed (at enable, for the reserve; or a teardown that kept a pool).
    GrowthFailed(crate::growth::verdict::GrowthVerdict),
    /// A scatter-gather list in the wrong state: mapping a list that is mapped (`mapped: true`), or
    /// unmapping/syncing one that is not, or not as this layer mapped it (`mapped: false`).
    SgListState {
        /// Whether the list was found mapped.
        mapped: bool,
    },
    /// The platform offers no trusted device I/O (not confidential, or no
    /// [`crate::Platform::device_trust`]): every device stays untrusted.
    TrustUnavailable,
    /// The platform refused to accept the device (not locked, attested and running under TDISP, or
    /// the call failed): it stays untrusted.
    AcceptRefused {
        /// [`crate::DeviceConfig::id`] of the device.
        device: u32,
        /// The platform's status.
        status: i64,
    },
    /// The platform's revoke call failed. The layer already treats the device as untrusted (its
    /// buffers bounce again and its window names no private page), but the platform may still
    /// let it reach private memory by physical address: reset or remove the device.
    RevokeRefused {
        /// [`crate::DeviceConfig::id`] of the device.
        device: u32,
        /// The platform's status.
        status: i64,
    },
    /// The call needs a part of ccdma this build left out: `feature` names the Cargo feature of the
    /// `ccdma` crate that brings it back (see "Features" in the crate docs). Nothing changed.
    FeatureDisabled {
        /// The Cargo feature, e.g. `"growth"` (`"papr-tce or native-iommu"`: either brings the IOMMU
        /// path back).
        feature: &'static str,
    },
}

impl DmaError {
    /// The variant's name (the start of its `Debug` form).
    fn name(&self) -> &'static str {
        #[allow(unreachable_patterns)]
        match self {
            DmaError::InvalidMask { .. } => "InvalidMask",
            DmaError::InvalidSlotSize { .. } => "InvalidSlotSize",
            DmaError::InvalidMaxRun { .. } => "InvalidMaxRun",
            DmaError::InvalidAreas { .. } => "InvalidAreas",
            DmaError::PoolTooSmall { .. } => "PoolTooSmall",
            DmaError::PoolOverlap { .. } => "PoolOverlap",
            DmaError::Unaligned { .. } => "Unaligned",
            DmaError::Overflow => "Overflow",
            DmaError::InvalidMinAlignMask { .. } => "InvalidMinAlignMask",
            DmaError::InvalidSegmentBoundary { .. } => "InvalidSegmentBoundary",
            DmaError::ZeroMaxSegment => "ZeroMaxSegment",
            DmaError::InvalidMaxDomains { .. } => "InvalidMaxDomains",
            DmaError::InvalidListPages { .. } => "InvalidListPages",
            DmaError::RangeStorageTooSmall { .. } => "RangeStorageTooSmall",
            DmaError::IommuAlreadyEnabled => "IommuAlreadyEnabled",
            DmaError::IommuNotEnabled => "IommuNotEnabled",
            DmaError::DeviceIdInUse { .. } => "DeviceIdInUse",
            DmaError::TooManyDevices { .. } => "TooManyDevices",
            DmaError::NoFreeDomain { .. } => "NoFreeDomain",
            DmaError::Busy { .. } => "Busy",
            DmaError::DomainsInUse => "DomainsInUse",
            DmaError::DetachIncomplete => "DetachIncomplete",
            DmaError::WrongDevice { .. } => "WrongDevice",
            DmaError::OwnedByMapping { .. } => "OwnedByMapping",
            DmaError::BadWindowGeometry { .. } => "BadWindowGeometry",
            DmaError::IommuPageTooLarge { .. } => "IommuPageTooLarge",
            DmaError::CoherentUnaligned { .. } => "CoherentUnaligned",
            DmaError::MetadataTooSmall { .. } => "MetadataTooSmall",
            DmaError::TooManyPools => "TooManyPools",
            DmaError::NoCpuMapping { .. } => "NoCpuMapping",
            DmaError::SharingFailed { .. } => "SharingFailed",
            DmaError::CoherentQuarantined { .. } => "CoherentQuarantined",
            DmaError::UnsharingFailed { .. } => "UnsharingFailed",
            DmaError::NoPath { .. } => "NoPath",
            DmaError::ZeroLength => "ZeroLength",
            DmaError::TooLarge { .. } => "TooLarge",
            DmaError::PoolExhausted { .. } => "PoolExhausted",
            DmaError::NotTranslatable => "NotTranslatable",
            DmaError::BeyondMask { .. } => "BeyondMask",
            DmaError::UnknownMapping { .. } => "UnknownMapping",
            DmaError::SizeMismatch { .. } => "SizeMismatch",
            DmaError::DirectionMismatch { .. } => "DirectionMismatch",
            DmaError::OutOfRange { .. } => "OutOfRange",
            DmaError::WrongDirection => "WrongDirection",
            DmaError::NotAttached => "NotAttached",
            DmaError::Iommu { .. } => "Iommu",
            DmaError::NoIommuPath { .. } => "NoIommuPath",
            DmaError::P2pUnsupported { .. } => "P2pUnsupported",
            DmaError::SegmentLimit { .. } => "SegmentLimit",
            DmaError::GrowthAlreadyEnabled => "GrowthAlreadyEnabled",
            DmaError::GrowthFailed { .. } => "GrowthFailed",
            DmaError::SgListState { .. } => "SgListState",
            DmaError::TrustUnavailable => "TrustUnavailable",
            DmaError::AcceptRefused { .. } => "AcceptRefused",
            DmaError::RevokeRefused { .. } => "RevokeRefused",
            DmaError::RawRecordsFull { .. } => "RawRecordsFull",
            DmaError::FeatureDisabled { .. } => "FeatureDisabled",
            _ => "DmaError",
        }
    }
}

impl fmt::Debug for DmaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}({self})", self.name())
    }
}

impl fmt::Display for DmaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DmaError::InvalidMask { bits } => {
                write!(f, "invalid DMA mask of {bits} bits: give 13 to 64 bits (a mask must hold a 4 KiB page)")
            }
            DmaError::InvalidSlotSize(v) => write!(f, "slot size {v} is not a power of two in 512..=65536"),
            DmaError::InvalidMaxRun(v) => write!(f, "max run of {v} slots is not in 1..=4096"),
            DmaError::InvalidAreas(v) => write!(f, "{v} areas is not in 1..=16"),
            DmaError::PoolTooSmall { len, slot_size } => {
                write!(f, "pool of {len} bytes is not a whole number (>= 1) of {slot_size}-byte slots")
            }
            DmaError::PoolOverlap { pool } => {
                write!(f, "the range overlaps pool {pool}")
            }
            DmaError::Unaligned { addr, align } => write!(f, "address {addr:#x} not aligned to {align:#x}"),
            DmaError::Overflow => write!(f, "size or address arithmetic would overflow"),
            DmaError::GrowthAlreadyEnabled => write!(f, "pool growth is already enabled"),
            DmaError::GrowthFailed(v) => write!(f, "pool growth failed: {v}"),
            DmaError::InvalidMinAlignMask(m) => write!(f, "min_align_mask {m:#x} is not 2^n - 1 below 4 GiB"),
            DmaError::InvalidSegmentBoundary(m) => write!(f, "segment boundary mask {m:#x} is not 2^n - 1"),
            DmaError::ZeroMaxSegment => write!(f, "max segment size is zero"),
            DmaError::InvalidMaxDomains(n) => write!(f, "max_domains {n} is not in 1..=16"),
            DmaError::InvalidListPages(n) => {
                write!(f, "{n} list pages is not in 1..={}", crate::iommu::config::MAX_LIST_PAGES)
            }
            DmaError::RangeStorageTooSmall { needed, provided } => {
                write!(f, "bus range storage holds {provided} ranges, needs {needed}")
            }
            DmaError::IommuAlreadyEnabled => write!(f, "IOMMU path already enabled"),
            DmaError::IommuNotEnabled => write!(f, "IOMMU path not enabled (call enable_iommu first)"),
            DmaError::DeviceIdInUse(id) => {
                write!(f, "device {id:#x} is attached already: detach it before attaching its id again")
            }
            DmaError::TooManyDevices { max } => {
                write!(f, "the layer has {max} devices attached, its most: detach one first")
            }
            DmaError::RawRecordsFull { capacity } => write!(
                f,
                "all {capacity} raw-mapping records are in use: unmap raw mappings first, or lend the layer more \
                 with add_raw_records"
            ),
            DmaError::NoFreeDomain { domains } => write!(f, "all {domains} IOMMU domains are in use"),
            DmaError::Busy { live } => {
                write!(f, "{live} mappings, lists or coherent buffers still live")
            }
            DmaError::DomainsInUse => write!(f, "devices still hold IOMMU domains"),
            DmaError::DetachIncomplete => {
                write!(f, "a detach failed part way: the device maps nothing until detach is retried")
            }
            DmaError::WrongDevice { owner, given } => {
                write!(f, "mapping belongs to device #{owner}, named through device #{given}")
            }
            DmaError::OwnedByMapping(b) => {
                write!(f, "{b} is owned by a Mapping; the raw face may not touch it")
            }
            DmaError::BadWindowGeometry { start, size, page_shift } => write!(
                f,
                "hypervisor window [{start:#x} +{size:#x}] with page shift {page_shift} is unusable"
            ),
            DmaError::CoherentUnaligned { page } => {
                write!(f, "coherent buffer not aligned to the IOMMU page ({page:#x})")
            }
            DmaError::MetadataTooSmall { needed, provided } => {
                write!(f, "slot metadata holds {provided} slots, pool needs {needed}")
            }
            DmaError::TooManyPools => write!(f, "no room for another pool"),
            DmaError::NoCpuMapping(p) => write!(f, "no CPU mapping for {p}"),
            DmaError::SharingFailed { phys, quarantined, kind } => write!(
                f,
                "sharing pages from {phys} failed ({kind:?}); rolled back, {quarantined} quarantined"
            ),
            DmaError::UnsharingFailed { phys, quarantined, kind } => {
                write!(f, "unsharing at {phys} failed ({kind:?}); {quarantined} pages quarantined")
            }
            DmaError::NoPath { mask, pools: 0, .. } => {
                write!(f, "no DMA path for mask {mask}: 0 pools: add a pool (add_pool) below the mask first")
            }
            DmaError::NoPath { mask, pools, lowest_pool_bus_end } => write!(
                f,
                "no DMA path for mask {mask}: {pools} pools, lowest ends at bus {lowest_pool_bus_end:#x} (a bus \
                 address includes any bit the platform sets for shared memory, such as Arm CCA's alias bit): \
                 add a pool that the mask reaches, or give the device a wider mask"
            ),
            DmaError::ZeroLength => write!(f, "zero-length mapping"),
            DmaError::TooLarge { len, max } => write!(
                f,
                "mapping of {len} bytes exceeds {max}, the largest single mapping ({max:#x} bytes): \
                 map it as a scatter-gather list of smaller buffers (map_sg)"
            ),
            DmaError::PoolExhausted { len } => write!(
                f,
                "bounce pool exhausted ({len} bytes): unmap finished mappings, add a pool, or enable growth"
            ),
            DmaError::NotTranslatable => write!(f, "buffer has no guest physical address"),
            DmaError::BeyondMask { addr, mask } => {
                write!(f, "buffer at {addr:#x} beyond mask {mask}")
            }
            DmaError::UnknownMapping(b) => write!(f, "{b} is not a live mapping"),
            DmaError::SizeMismatch { mapped, given } => {
                write!(f, "mapping has {mapped} bytes, caller said {given}")
            }
            DmaError::DirectionMismatch { mapped, given } => {
                write!(f, "mapping is {mapped:?}, caller said {given:?}")
            }
            DmaError::OutOfRange { offset, mapped } => {
                write!(f, "range at offset {offset} runs outside the mapping of {mapped} bytes")
            }
            DmaError::WrongDirection => write!(f, "operation not valid for the mapping's direction"),
            DmaError::NotAttached => write!(f, "device not attached to this layer"),
            DmaError::Iommu(e) => write!(f, "IOMMU: {e}"),
            DmaError::NoIommuPath { mask, pools, window, ddw } => write!(
                f,
                "no IOMMU path for mask {mask}: {pools} pools, default window [{:#x}, {:#x}), {ddw}",
                window.0, window.1
            ),
            DmaError::P2pUnsupported { provider, client } => {
                write!(f, "peer-to-peer from device {provider:#x} to {client:#x} not supported")
            }
            DmaError::SegmentLimit { index, len } => {
                write!(f, "segment {index} ({len} bytes) exceeds the device's segment limits")
            }
            DmaError::SgListState { mapped: true } => write!(f, "scatter-gather list already mapped"),
            DmaError::SgListState { mapped: false } => {
                write!(f, "scatter-gather list not mapped (or not as this layer mapped it)")
            }
            DmaError::TrustUnavailable => write!(f, "the platform offers no trusted device I/O"),
            DmaError::FeatureDisabled { feature } => {
                write!(f, "this build of ccdma leaves out feature `{feature}`, which the call needs")
            }
            DmaError::AcceptRefused { device, status } => {
                write!(f, "the platform refused to accept device {device:#x} (status {status})")
            }
            DmaError::CoherentQuarantined { phys, pages, kind } => write!(
                f,
                "coherent allocation failed (its window entries; the cause is logged) and {pages} pages from \
                 {phys} could not be made private again ({kind:?}): they stay shared, quarantined; never use \
                 them again"
            ),
            DmaError::IommuPageTooLarge { page, max_run } => write!(
                f,
                "strict IOMMU pages of {page:#x} bytes exceed the longest pool run ({max_run:#x} bytes): \
                 no mapping could be placed"
            ),
            DmaError::RevokeRefused { device, status } => write!(
                f,
                "revoking device {device:#x} failed at the platform (status {status}); the layer no longer trusts it"
            ),
        }
    }
}

impl core::error::Error for DmaError {}

impl From<IommuError> for DmaError {
    fn from(e: IommuError) -> DmaError {
        DmaError::Iommu(e)
    }
}

/// A call that consumes a value (detach a [`crate::Device`], free a [`crate::CoherentBuffer`], unmap
/// a [`crate::Mapping`]) and was refused hands the value back with the reason, so nothing is lost
/// and the call can be retried.
pub struct Refused<T> {
    /// The value, unchanged and still live.
    pub value: T,
    /// Why the call was refused.
    pub error: DmaError,
}

impl<T> Refused<T> {
    /// Why the call was refused (the same as the `error` field). `.error()` is the one spelling for
    /// every refusal: [`crate::FreeError::error`] has it too.
    pub fn error(&self) -> &DmaError {
        &self.error
    }

    /// Split into the value and the error.
    pub fn into_parts(self) -> (T, DmaError) {
        (self.value, self.error)
    }
}

impl<T> fmt::Debug for Refused<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Refused({:?})", self.error)
    }
}

impl<T> fmt::Display for Refused<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "refused: {}", self.error)
    }
}

impl<T> core::error::Error for Refused<T> {}

/// `?` on a refused call keeps the error; the value is dropped (a dropped `Mapping` still unmaps or
/// gives up its slots safely, a dropped `Device` or `CoherentBuffer` leaks safely).
impl<T> From<Refused<T>> for DmaError {
    fn from(r: Refused<T>) -> DmaError {
        r.error
    }
}

impl From<InvalidMask> for DmaError {
    fn from(e: InvalidMask) -> DmaError {
        DmaError::InvalidMask { bits: e.bits }
    }
}

// The size every `Result<_, DmaError>` of the layer pays (see the type's docs). 56 bytes before
// `StatusCode` and the narrowed fields; CoherentQuarantined, SharingFailed and NoIommuPath set it.
const _: () = assert!(core::mem::size_of::<DmaError>() <= 24, "DmaError grew beyond 24 bytes");
const _: () = assert!(core::mem::size_of::<SharingErrorKind>() <= 9, "SharingErrorKind grew beyond 9 bytes");
