//! How a layer uses the IOMMU: premapped or strict, read-back, DDW, domain count, how entries are
//! batched ([`TceBatching`]).
//!
//! ```
//! use ccdma::{IommuConfig, IommuPolicy, PhysAddr, TceBatching, VerifyPolicy};
//!
//! // Strict entries per mapping, every entry read back, at most 4 devices, one list page for batches.
//! let cfg = IommuConfig::strict()
//!     .with_verify(VerifyPolicy::All)
//!     .with_max_domains(4)
//!     .with_list_page(PhysAddr(0x7000));
//! assert_eq!(cfg.policy, IommuPolicy::Strict);
//! assert_eq!((cfg.max_domains, cfg.batching), (4, TceBatching::SharedPage(PhysAddr(0x7000))));
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
    /// [`VerifyPolicy::Ends`] for the calls that enter a pool into a window for good (premapped
    /// attach, pool growth: once per pool and device), [`VerifyPolicy::Off`] for entries written per
    /// mapping (a device that falls back to strict entries, coherent buffers): the default of
    /// [`IommuConfig::premapped`], so that a fallback device pays what Linux pays.
    Premap,
}

impl VerifyPolicy {
    /// The policy for entries written per mapping.
    pub(crate) const fn per_mapping(self) -> VerifyPolicy {
        match self {
            VerifyPolicy::Premap => VerifyPolicy::Off,
            v => v,
        }
    }
    /// The policy for the calls that enter a pool into a window for good.
    pub(crate) const fn entering_pools(self) -> VerifyPolicy {
        match self {
            VerifyPolicy::Premap => VerifyPolicy::Ends,
            v => v,
        }
    }
}

/// Most per-CPU list pages [`TceBatching::PerCpuPages`] takes.
pub const MAX_LIST_PAGES: usize = 64;

/// How a layer hands entries to the hypervisor, chosen per layer. The entries themselves are never
/// secret from the hypervisor (it must see them to program the IOMMU, whichever call carries them);
/// what differs is which guest pages are shared for good, how many hypercalls a mapping costs and
/// whether CPUs wait on one another.
///
/// | choice | shared for the layer's life | map `n` entries | clear | CPUs wait on each other |
/// |---|---|---|---|---|
/// | `PoolPages` (strict default) | nothing new: `count` pages of a pool, shared already | `H_PUT_TCE_INDIRECT` per 512 | `H_STUFF_TCE` per 512 | never (try-lock, fall back) |
/// | `PerEntry` | nothing | `n` x `H_PUT_TCE` | `H_STUFF_TCE` per 512 | never |
/// | `PerCpuPages` | `count` list pages | `H_PUT_TCE_INDIRECT` per 512 | `H_STUFF_TCE` per 512 | never (try-lock, fall back) |
/// | `SharedPage` | 1 list page | `H_PUT_TCE_INDIRECT` per 512 | `H_STUFF_TCE` per 512 | yes: one lock for every indirect call |
///
/// A list page holds only entries, and the layer only ever enters memory that is shared already
/// (pool slots, coherent buffers) or is no RAM at all (a peer's BAR): the page tells the hypervisor
/// nothing it does not learn from the call anyway. Its exposure is the page itself: 4 KiB of guest
/// memory that the hypervisor may read and write at any time while the layer lives (the layer only
/// writes it, never reads it back), and a page that must be made private again at
/// [`crate::DmaLayer::disable_iommu`] (quarantined if that fails). A platform without
/// `H_PUT_TCE_INDIRECT` (`TceCalls::indirect_available` false) gets per-entry calls whatever the
/// choice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TceBatching {
    /// The default of [`IommuConfig::strict`]: `count` (1..=[`MAX_LIST_PAGES`]) per-CPU list pages
    /// taken, at [`crate::DmaLayer::enable_iommu`], as one page-aligned slot run of the first fixed
    /// pool that has one, and given back to it at `disable_iommu` (or
    /// [`crate::DmaLayer::release_pools`]). The pool is shared with the host already, so this shares
    /// nothing new and needs no page from the caller; the host can rewrite a page while a batch is
    /// in it, which gives it nothing: it programs the IOMMU from that page anyway. The run counts
    /// nowhere in [`crate::StatsSnapshot::slots_in_use`] and keeps its pool from shrinking. Taken
    /// like [`TceBatching::PerCpuPages`] (try-lock, next free page, else `H_PUT_TCE`). When no pool
    /// has the run at enable, or the platform has no `H_PUT_TCE_INDIRECT` (or a native IOMMU),
    /// nothing is taken and entries go one `H_PUT_TCE` each, as [`TceBatching::PerEntry`].
    PoolPages {
        /// Pages, one per CPU that maps concurrently.
        count: usize,
    },
    /// No list page at all, as Linux does in a secure guest: one `H_PUT_TCE` per entry to map,
    /// `H_STUFF_TCE` (one per 512 entries) to clear. Shares nothing beyond the pools and coherent
    /// buffers; costs one hypercall per IOMMU page mapped.
    PerEntry,
    /// `count` (1..=[`MAX_LIST_PAGES`]) contiguous pages from `first`, zeroed and shared at
    /// [`crate::DmaLayer::enable_iommu`], made private again at `disable_iommu`. A batch uses the page
    /// of the CPU it runs on ([`crate::Platform::cpu_hint`], page `cpu % count`; page 0 first without a
    /// hint), taken with a try-lock: a batch whose page is busy (two callers on one CPU, or no hint)
    /// takes the next free page, and when every page is busy writes that entry with `H_PUT_TCE`
    /// instead of waiting (both counted in [`crate::iommu::IommuStatsSnapshot`]). Exposure: `count`
    /// pages shared.
    PerCpuPages {
        /// Guest physical address of the first page (4 KiB aligned).
        first: PhysAddr,
        /// Pages, one per CPU that maps concurrently.
        count: usize,
    },
    /// One list page for the whole layer, zeroed and shared at `enable_iommu`: every indirect call
    /// of every CPU takes its one lock, so CPUs mapping at once wait on each other. Exposure: one
    /// page shared.
    SharedPage(PhysAddr),
}

/// Most devices (domains) with IOMMU state one layer can serve.
pub const MAX_DOMAINS: usize = 16;
/// Most reservations [`crate::DmaLayer::reserve_bus_range`] keeps for domains created later: one
/// per domain slot of the layer (its `DOMAINS` capacity), so this many in the default layer and none
/// in a layer that can have no domain.
pub const MAX_GLOBAL_RESERVATIONS: usize = MAX_DOMAINS;

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
    /// How entries reach the hypervisor: one call per entry, per-CPU list pages, or one list page
    /// for the layer ([`TceBatching`], which says what each one shares and costs).
    pub batching: TceBatching,
}

/// List pages of [`IommuConfig::strict`]'s default batching ([`TceBatching::PoolPages`]): 8 KiB of
/// the first pool.
pub const DEFAULT_POOL_LIST_PAGES: usize = 2;

impl IommuConfig {
    /// Premapped, DDW allowed, 8 domains; read-back of the ends of the calls that enter a pool into
    /// a window ([`VerifyPolicy::Premap`]: once per pool and device, at attach or growth), none per
    /// mapping; no list page (one `H_PUT_TCE` per entry: [`TceBatching::PerEntry`]).
    ///
    /// A device whose window cannot hold a pool below its mask (and that gets no DDW) falls back to
    /// strict entries per mapping. With these defaults it pays what Linux pays in a secure guest,
    /// never more. Hypercalls per map+unmap of `n` 4 KiB IOMMU pages on such a device
    /// (`n <= 512`; each further 512 adds one `H_STUFF_TCE`, and one `H_PUT_TCE_INDIRECT` when
    /// batched; `tests/tests/premapped_fallback_vs_linux.rs` pins them):
    ///
    /// | configuration | 4 KiB | 64 KiB | 256 KiB | `n` |
    /// |---|---|---|---|---|
    /// | Linux, secure guest | 2 | 17 | 65 | `n + 1` |
    /// | this default (`PerEntry`, `Premap`) | 2 | 17 | 65 | `n + 1` |
    /// | `.with_batching(TceBatching::PoolPages { count: DEFAULT_POOL_LIST_PAGES })` | 2 | 2 | 2 | 2 |
    /// | `.with_verify(VerifyPolicy::Ends)` (paranoid; the default before issue 21) | 4 | 35 | 131 | `2n + 3` (`n = 1`: 4) |
    /// | `.with_verify(VerifyPolicy::All)` (paranoid) | 4 | 49 | 193 | `3n + 1` |
    ///
    /// `PoolPages` takes its 8 KiB of the first pool at `enable_iommu` whether or not a device
    /// ever falls back, which is why it is not the premapped default. `Ends` and `All` also read
    /// back every entering of a pool and every clear.
    pub const fn premapped() -> IommuConfig {
        IommuConfig {
            policy: IommuPolicy::Premapped,
            verify: VerifyPolicy::Premap,
            use_ddw: true,
            max_domains: 8,
            batching: TceBatching::PerEntry,
        }
    }
    /// The strict policy with the batching and read-back that never cost more hypercalls than
    /// Linux in a secure guest (one `H_PUT_TCE` per entry, one `H_STUFF_TCE` to clear: `n + 1`):
    /// list pages from the pool ([`TceBatching::PoolPages`], [`DEFAULT_POOL_LIST_PAGES`]) and no
    /// read-back ([`VerifyPolicy::Off`]); DDW allowed, 8 domains.
    ///
    /// Hypercalls per map+unmap of `n` 4 KiB IOMMU pages (`n <= 512`; each further 512 adds one
    /// call of each kind; `tests/tests/strict_hypercalls_vs_linux.rs` pins them):
    ///
    /// | configuration | 4 KiB | 64 KiB | 256 KiB | `n` |
    /// |---|---|---|---|---|
    /// | Linux, secure guest | 2 | 17 | 65 | `n + 1` |
    /// | this default (`PoolPages`, `Off`) | 2 | 2 | 2 | 2 |
    /// | `.with_verify(VerifyPolicy::Ends)` | 4 | 6 | 6 | 6 (`n = 1`: 4) |
    /// | `.with_verify(VerifyPolicy::All)` | 4 | 34 | 130 | `2n + 2` |
    /// | `.with_batching(TceBatching::PerEntry)` | 2 | 17 | 65 | `n + 1` |
    /// | `PerEntry` + `Ends` (the default before issue 21) | 4 | 35 | 131 | `2n + 3` (`n = 1`: 4) |
    ///
    /// Read-back (`H_GET_TCE`) catches a hypervisor that reports success without writing an entry
    /// (the device then fails its DMA) or without clearing one (the device keeps reaching a slot in
    /// shared memory, which the host can reach anyway): it guards against a faulty hypervisor, not a
    /// hostile one, so it is an option. A failed write or clear is rolled back and reported whatever
    /// the read-back.
    pub const fn strict() -> IommuConfig {
        IommuConfig {
            policy: IommuPolicy::Strict,
            verify: VerifyPolicy::Off,
            batching: TceBatching::PoolPages { count: DEFAULT_POOL_LIST_PAGES },
            ..IommuConfig::premapped()
        }
    }
    /// Builder: one indirect list page for the whole layer ([`TceBatching::SharedPage`]).
    pub const fn with_list_page(mut self, page: PhysAddr) -> Self {
        self.batching = TceBatching::SharedPage(page);
        self
    }
    /// Builder: how entries are batched.
    pub const fn with_batching(mut self, batching: TceBatching) -> Self {
        self.batching = batching;
        self
    }
    /// The list page(s) the layer shares: `(first, count)`, contiguous; `None` for
    /// [`TceBatching::PerEntry`] and [`TceBatching::PoolPages`] (which shares nothing new).
    pub const fn list_pages(&self) -> Option<(PhysAddr, usize)> {
        match self.batching {
            TceBatching::PerEntry | TceBatching::PoolPages { .. } => None,
            TceBatching::SharedPage(p) => Some((p, 1)),
            TceBatching::PerCpuPages { first, count } => Some((first, count)),
        }
    }
    /// Builder: verification.
    pub const fn with_verify(mut self, verify: VerifyPolicy) -> Self {
        self.verify = verify;
        self
    }
    /// Builder: DDW use (a build without ccdma's `ddw` feature never tries one: the default window).
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
