//! How a layer uses the IOMMU: premapped or strict, read-back, DDW, domain count, list page.
//!
//! ```
//! use ccdma::{IommuConfig, IommuPolicy, PhysAddr, VerifyPolicy};
//!
//! // Strict entries per mapping, every entry read back, at most 4 devices, one list page for batches.
//! let cfg = IommuConfig::strict()
//!     .with_verify(VerifyPolicy::All)
//!     .with_max_domains(4)
//!     .with_list_page(PhysAddr(0x7000));
//! assert_eq!(cfg.policy, IommuPolicy::Strict);
//! assert_eq!((cfg.max_domains, cfg.list_page), (4, Some(PhysAddr(0x7000))));
//! // A native backend (virtio-iommu) has no read-back and no dynamic windows.
//! let native = IommuConfig::premapped().with_verify(VerifyPolicy::Off).with_ddw(false);
//! assert!(!native.use_ddw);
//! ```

use crate::addr::PhysAddr;

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
