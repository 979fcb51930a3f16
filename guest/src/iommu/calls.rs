//! The platform's IOMMU programming interface ([`TceCalls`]: PAPR TCE hypercalls and DDW RTAS calls,
//! or an equivalent) and the PAPR constants it speaks in.
//!
//! The modelled hypervisor implements [`TceCalls`] as PAPR does; a guest kernel implements it with
//! `sc 1` hypercalls and the DDW RTAS calls:
//!
//! ```
//! use ccdma::iommu::{hcall, TceCalls, TCE_PCI_READ};
//! use ccdma_hv_model::{HvConfig, Hypervisor, TceConfig};
//!
//! let hv = Hypervisor::new(HvConfig::pseries(1 << 30));
//! hv.enable_iommu(TceConfig::default());
//! let _nic = hv.add_iommu_device(1, 32);
//! let calls: &dyn TceCalls = &hv;
//! let window = calls.default_window(1).expect("the device sits behind the IOMMU");
//! assert!(window.is_usable());
//! // One read-only entry at the window's second page, read back, cleared.
//! let page = 0x10_0000;
//! assert_eq!(calls.h_put_tce(window.liobn, window.start + 4096, page | TCE_PCI_READ), hcall::H_SUCCESS);
//! assert_eq!(calls.h_get_tce(window.liobn, window.start + 4096), (hcall::H_SUCCESS, page | TCE_PCI_READ));
//! // The page is private: the model counts such entries, which ccdma never writes.
//! assert_eq!(hv.tces_to_private(), 1);
//! assert_eq!(calls.h_put_tce(window.liobn, window.start + 4096, 0), hcall::H_SUCCESS);
//! assert_eq!(hv.tces_to_private(), 0);
//! ```

use super::window::WindowGeometry;
use crate::addr::PhysAddr;
use crate::direction::DmaDirection;

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
/// bounded number of times, and reads entries back where its [`VerifyPolicy`](super::config::VerifyPolicy) says so.
///
/// `device` is [`DeviceConfig::id`](crate::DeviceConfig::id): the platform maps it to the device's
/// partitionable endpoint.
pub trait TceCalls: Sync {
    /// The default window of the device, or `None` when the device sits behind no IOMMU or its
    /// default window was removed (PAPR allows that; a DDW created then may sit at bus 0).
    fn default_window(&self, device: u32) -> Option<WindowGeometry>;
    /// True when the device sits behind the IOMMU, with or without a default window. The default
    /// says so when it has one; a platform on which a default window can be gone (removed by
    /// firmware or by a kernel before a kexec) overrides it, so the device gets a DDW instead of
    /// being taken for one that needs no translation.
    fn behind_iommu(&self, device: u32) -> bool {
        self.default_window(device).is_some()
    }
    /// The partitionable endpoint the device sits on: devices with equal answers share every window
    /// (one default window, one DDW, one TCE table each), so ccdma gives them one domain and one bus
    /// space. QEMU's pseries machine has one endpoint per PCI host bridge. The default names the
    /// endpoint by its default window's LIOBN (devices sharing a LIOBN share a table by definition),
    /// and a device without a default window by its id alone; a platform on which a default window
    /// can be gone (removed for a DDW at bus 0, or by a kernel before a kexec) overrides it with
    /// something stable, such as the host bridge's BUID.
    fn endpoint(&self, device: u32) -> u64 {
        self.default_window(device).map_or(1 << 32 | u64::from(device), |w| u64::from(w.liobn))
    }
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
    /// `ibm,reset-pe-dma-window` (DDW extension 2): remove every DDW of the device's partitionable
    /// endpoint and bring its default window back with no entry; returns the RTAS status. The
    /// default: not offered (-3).
    fn ddw_reset(&self, device: u32) -> i64 {
        let _ = device;
        -3
    }
    /// Called before retrying a busy answer (`code` is the busy code, `attempt` counts from 1). Firmware
    /// may wait as long-busy codes hint; the default retries at once.
    fn backoff(&self, code: i64, attempt: u32) {
        let _ = (code, attempt);
    }
}

/// The permission a mapping's direction allows the device.
pub(crate) const fn tce_perm(dir: DmaDirection) -> u64 {
    let mut p = 0;
    if dir.device_reads() {
        p |= TCE_PCI_READ;
    }
    if dir.device_writes() {
        p |= TCE_PCI_WRITE;
    }
    p
}
