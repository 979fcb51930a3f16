//! The IOMMU (TCE) path: devices reach only the bounce pool and shared coherent buffers through a
//! translation window, and devices of every DMA mask get a window range below their mask.
//!
//! The platform is reached through [`TceCalls`] only: PAPR hypercalls on pseries, the modelled
//! hypervisor on the host, virtio-iommu MAP/UNMAP requests in the QEMU test kernel. The trait speaks of
//! windows and entries; nothing here knows which of those it runs on.
//!
//! Pieces: [`bus_space`] (a bus-address allocator per device with exact reservations), [`tce`] (entry
//! programming: batching through one shared list page, bounded busy retry, read-back verification),
//! `domain` (per-device windows and their set-up), and the layer integration in `attach`/`map`.

pub mod bus_space;
pub(crate) mod domain;
pub(crate) mod map;
pub mod tce;

pub(crate) mod attach;

use crate::addr::PhysAddr;
use crate::error::DmaError;

pub use bus_space::{BusRange, RangeKind};
pub use domain::{DdwOutcome, IommuStatsSnapshot, PathReason};

/// PAPR hypercall numbers and return codes, as Linux's `arch/powerpc/include/asm/hvcall.h` defines
/// them. The numbers are informational here (the [`TceCalls`] implementation issues the call); they
/// are named so platform code and reports agree on them.
pub mod hcall {
    /// `H_GET_TCE`.
    pub const H_GET_TCE: u64 = 0x1C;
    /// `H_PUT_TCE`.
    pub const H_PUT_TCE: u64 = 0x20;
    /// `H_STUFF_TCE`.
    pub const H_STUFF_TCE: u64 = 0x138;
    /// `H_PUT_TCE_INDIRECT` (0x13C; 0x124 is `H_BULK_REMOVE`).
    pub const H_PUT_TCE_INDIRECT: u64 = 0x13C;

    /// Success.
    pub const H_SUCCESS: i64 = 0;
    /// Busy: retry.
    pub const H_BUSY: i64 = 1;
    /// Hardware error.
    pub const H_HARDWARE: i64 = -1;
    /// Function not supported (e.g. `H_PUT_TCE_INDIRECT` without the `hcall-multi-tce` feature).
    pub const H_FUNCTION: i64 = -2;
    /// Parameter invalid, out of range or conflicting.
    pub const H_PARAMETER: i64 = -4;
    /// Not permitted.
    pub const H_PERMISSION: i64 = -11;
    /// Out of resources (e.g. TCE table space).
    pub const H_NOT_ENOUGH_RESOURCES: i64 = -44;
    /// First long-busy code (retry after about 1 ms).
    pub const H_LONG_BUSY_START: i64 = 9900;
    /// Last long-busy code (retry after about 100 s).
    pub const H_LONG_BUSY_END: i64 = 9905;
    /// KVM-internal "too hard for real mode" code; never meant for guests, treated as an error.
    pub const H_TOO_HARD: i64 = 9999;

    /// True for codes that ask the caller to retry the same call.
    pub const fn is_busy(rc: i64) -> bool {
        rc == H_BUSY || (rc >= H_LONG_BUSY_START && rc <= H_LONG_BUSY_END)
    }
}

/// TCE permission bit: the device may read the page (`TCE_PCI_READ`).
pub const TCE_PCI_READ: u64 = 1;
/// TCE permission bit: the device may write the page (`TCE_PCI_WRITE`).
pub const TCE_PCI_WRITE: u64 = 2;
/// Entries one `H_PUT_TCE_INDIRECT` takes: a 4 KiB list page of big-endian u64.
pub const TCE_LIST_ENTRIES: usize = 512;
/// Entries one `H_STUFF_TCE` clears (Linux's batch; bounds the time of one call).
pub const TCE_STUFF_BATCH: u64 = 512;

/// `ibm,query-pe-dma-window` page-size bits (LoPAR), with the page shift each one names.
pub const DDW_PAGE_SIZES: [(u32, u32); 9] = [
    (0x01, 12),  // 4 KiB
    (0x02, 16),  // 64 KiB
    (0x100, 21), // 2 MiB
    (0x04, 24),  // 16 MiB
    (0x08, 25),  // 32 MiB
    (0x10, 26),  // 64 MiB
    (0x20, 27),  // 128 MiB
    (0x40, 28),  // 256 MiB
    (0x80, 34),  // 16 GiB
];

/// One translation window of a device: a range of bus addresses translated by the TCE table named by
/// `liobn`, in IOMMU pages of `1 << page_shift` bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WindowGeometry {
    /// The table's logical I/O bus number.
    pub liobn: u32,
    /// First bus address.
    pub start: u64,
    /// Bytes.
    pub size: u64,
    /// log2 of the IOMMU page size.
    pub page_shift: u32,
}

impl WindowGeometry {
    /// IOMMU page size in bytes (0 for a page shift of 64 or more, which [`Self::check`] refuses).
    pub const fn page_size(&self) -> u64 {
        match 1u64.checked_shl(self.page_shift) {
            Some(size) => size,
            None => 0,
        }
    }

    /// A window as the hypervisor reported it is an allegation: usable only with a page shift in
    /// 12..=40, a non-empty size that does not wrap, and a start and size in whole IOMMU pages.
    pub fn check(&self) -> Result<(), DmaError> {
        let page = self.page_size();
        let ok = (12..=40).contains(&self.page_shift)
            && self.size != 0
            && self.start.checked_add(self.size).is_some()
            && self.start % page == 0
            && self.size % page == 0;
        if ok {
            Ok(())
        } else {
            Err(DmaError::BadWindowGeometry {
                start: self.start,
                size: self.size,
                page_shift: self.page_shift,
            })
        }
    }
    /// One past the last bus address (saturating).
    pub const fn end(&self) -> u64 {
        self.start.saturating_add(self.size)
    }
}

/// What `ibm,query-pe-dma-window` answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DdwQuery {
    /// Windows the PE may still create.
    pub windows_available: u32,
    /// Largest block of TCEs a new window can have.
    pub largest_block: u64,
    /// Supported IOMMU page sizes, as [`DDW_PAGE_SIZES`] bits.
    pub page_sizes: u32,
}

impl DdwQuery {
    /// True when a page of `1 << shift` bytes is supported.
    pub fn supports_shift(&self, shift: u32) -> bool {
        DDW_PAGE_SIZES.iter().any(|&(bit, s)| s == shift && self.page_sizes & bit != 0)
    }
}

/// The platform's IOMMU programming interface (PAPR TCE hypercalls and DDW RTAS calls, or an
/// equivalent). Every return value is an allegation: the layer checks codes, retries busy answers a
/// bounded number of times, and reads entries back where its [`VerifyPolicy`] says so.
///
/// `device` is [`DeviceConfig::id`](crate::DeviceConfig::id): the platform maps it to the device's
/// partitionable endpoint.
pub trait TceCalls: Sync {
    /// The default window of the device, or `None` when the device sits behind no IOMMU.
    fn default_window(&self, device: u32) -> Option<WindowGeometry>;
    /// The `index`-th bus range of the device's windows that must never be handed out (MSI doorbells,
    /// host-bridge windows, firmware ranges), as `(start, len)`; `None` past the last.
    fn reserved_range(&self, device: u32, index: usize) -> Option<(u64, u64)> {
        let _ = (device, index);
        None
    }
    /// True when `H_PUT_TCE_INDIRECT` may be used (firmware feature `hcall-multi-tce`).
    fn indirect_available(&self) -> bool;
    /// `H_PUT_TCE(liobn, ioba, tce)`.
    fn h_put_tce(&self, liobn: u32, ioba: u64, tce: u64) -> i64;
    /// `H_GET_TCE(liobn, ioba)`: the return code and the entry.
    fn h_get_tce(&self, liobn: u32, ioba: u64) -> (i64, u64);
    /// `H_PUT_TCE_INDIRECT(liobn, ioba, list, count)`: `count` (<= 512) entries from the big-endian list
    /// page at `list`.
    fn h_put_tce_indirect(&self, liobn: u32, ioba: u64, list: PhysAddr, count: u64) -> i64;
    /// `H_STUFF_TCE(liobn, ioba, value, count)`: set `count` entries to `value`.
    fn h_stuff_tce(&self, liobn: u32, ioba: u64, value: u64, count: u64) -> i64;
    /// `ibm,query-pe-dma-window`; `Err` carries the RTAS status.
    fn ddw_query(&self, device: u32) -> Result<DdwQuery, i64>;
    /// `ibm,create-pe-dma-window` with pages of `1 << page_shift` and `1 << window_shift` bytes.
    fn ddw_create(&self, device: u32, page_shift: u32, window_shift: u32) -> Result<WindowGeometry, i64>;
    /// `ibm,remove-pe-dma-window`; returns the RTAS status.
    fn ddw_remove(&self, device: u32, liobn: u32) -> i64;
    /// Called before retrying a busy answer (`code` is the busy code, `attempt` counts from 1). Firmware
    /// may wait as long-busy codes hint; the default retries at once.
    fn backoff(&self, code: i64, attempt: u32) {
        let _ = (code, attempt);
    }
}

/// How entries are entered into windows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IommuPolicy {
    /// Each pool is entered into the device's window once (a DDW with the largest IOMMU page the pool's
    /// alignment allows when the device is 64-bit, else the default window below its mask); a map then
    /// costs no hypercall. Falls back to [`IommuPolicy::Strict`] for devices whose window cannot hold a
    /// pool below their mask.
    Premapped,
    /// Entries are written per mapping with the direction's permission and cleared at unmap.
    Strict,
}

/// Which written entries are read back with `H_GET_TCE` to catch a hypervisor that reports success
/// without writing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VerifyPolicy {
    /// Never (e.g. a platform without read-back, like virtio-iommu).
    Off,
    /// The first and last entry of every call: catches a call that did nothing at two reads per call.
    Ends,
    /// Every entry.
    All,
}

/// Most devices (domains) with IOMMU state one layer can serve.
pub const MAX_DOMAINS: usize = 16;
/// Most reservations [`crate::DmaLayer::reserve_bus_range`] keeps for domains created later.
pub const MAX_GLOBAL_RESERVATIONS: usize = 8;

/// IOMMU configuration of a layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IommuConfig {
    /// Premapped or strict.
    pub policy: IommuPolicy,
    /// Read-back of written entries.
    pub verify: VerifyPolicy,
    /// Try a dynamic DMA window for 64-bit devices (premapped policy).
    pub use_ddw: bool,
    /// Domains to prepare (1..=[`MAX_DOMAINS`]); the range storage is split evenly between them.
    pub max_domains: usize,
    /// A private page the layer shares once and uses as the `H_PUT_TCE_INDIRECT` list (it only ever
    /// holds entries, which name pool and coherent pages that are shared anyway). `None`: one
    /// `H_PUT_TCE` per entry.
    pub list_page: Option<PhysAddr>,
}

impl IommuConfig {
    /// Premapped, read-back of the ends of every call, DDW allowed, 8 domains, no list page.
    pub const fn premapped() -> IommuConfig {
        IommuConfig {
            policy: IommuPolicy::Premapped,
            verify: VerifyPolicy::Ends,
            use_ddw: true,
            max_domains: 8,
            list_page: None,
        }
    }
    /// As [`IommuConfig::premapped`] with the strict policy.
    pub const fn strict() -> IommuConfig {
        IommuConfig { policy: IommuPolicy::Strict, ..IommuConfig::premapped() }
    }
    /// Builder: the indirect list page.
    pub const fn with_list_page(mut self, page: PhysAddr) -> Self {
        self.list_page = Some(page);
        self
    }
    /// Builder: verification.
    pub const fn with_verify(mut self, verify: VerifyPolicy) -> Self {
        self.verify = verify;
        self
    }
    /// Builder: DDW use.
    pub const fn with_ddw(mut self, use_ddw: bool) -> Self {
        self.use_ddw = use_ddw;
        self
    }
    /// Builder: domain count.
    pub const fn with_max_domains(mut self, n: usize) -> Self {
        self.max_domains = n;
        self
    }
}
