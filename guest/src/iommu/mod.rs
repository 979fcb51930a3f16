//! The IOMMU (TCE) path: devices reach only the bounce pool and shared coherent buffers through a
//! translation window, and devices of every DMA mask get a window range below their mask.
//!
//! The platform is reached through [`TceCalls`] only: PAPR hypercalls on pseries, the modelled
//! hypervisor on the host, virtio-iommu MAP/UNMAP requests in the QEMU test kernel. The trait speaks of
//! windows and entries; nothing here knows which of those it runs on.
//!
//! Pieces: [`bus_space`] (a bus-address allocator per device with exact reservations), [`tce`] (entry
//! programming: batching through list pages (`list_pages`: one for the layer or one per CPU), bounded busy retry, read-back verification),
//! `domain` (per-device windows and their set-up), and the layer integration in `attach`/`map`.
//!
//! ```
//! use ccdma::iommu::BusRange;
//! use ccdma::{DeviceConfig, DmaLayer, DmaMask, DmaPath, IommuConfig, PhysAddr, PoolConfig, SlotMeta};
//! # use ccdma_hv_model::{HvConfig, Hypervisor, TceConfig};
//! # let hv: &'static Hypervisor = Box::leak(Box::new(Hypervisor::new(HvConfig::pseries(6 << 30))));
//! # hv.enable_iommu(TceConfig::default());
//! # let (model_nic, model_disk) = (hv.add_iommu_device(1, 32), hv.add_iommu_device(2, 64));
//! let mut layer = DmaLayer::new(hv);
//! // SAFETY: the model never hands this range out.
//! unsafe { layer.add_pool(PhysAddr(0x80_0000), 1 << 20, vec![SlotMeta::EMPTY; 512].leak(), PoolConfig::default())? };
//! // Bus-range storage for every device's window (no allocator): 4 devices, 64 ranges each.
//! let ranges = vec![BusRange::EMPTY; 4 * 64].leak();
//! // SAFETY: no list page is named.
//! unsafe { layer.enable_iommu(IommuConfig::premapped().with_max_domains(4), ranges)? };
//!
//! let nic = layer.attach(DeviceConfig::new(1, DmaMask::BITS_32))?;
//! let disk = layer.attach(DeviceConfig::new(2, DmaMask::BITS_64))?;
//! assert_eq!(nic.path(), DmaPath::IommuPremapped); // the pool, once, in the default window
//! assert_eq!(disk.path(), DmaPath::IommuDdw); // the pool, once, in a dynamic window
//! let (_default, ddw) = layer.windows_of(&disk);
//! assert!(ddw.is_some());
//!
//! let m = layer.on(&disk).map_to_device(b"sector")?;
//! assert_eq!(model_disk.read(m.bus_addr().0, 6).unwrap(), b"sector");
//! m.unmap()?;
//! // The windows hold the pool and nothing else: no entry names a private page.
//! assert_eq!(hv.tces_to_private(), 0);
//! # let _ = model_nic;
//! layer.detach(nic)?;
//! layer.detach(disk)?;
//! # Ok::<(), ccdma::DmaError>(())
//! ```

pub mod backend;
// They read the backend counters, which hold no value without an IOMMU backend (OffCounter).
#[cfg(all(test, any(feature = "papr-tce", feature = "native-iommu")))]
mod batching_tests;
pub mod bus_space;
pub mod calls;
pub mod config;
pub(crate) mod counters;
pub(crate) mod domain;
pub mod error;
pub(crate) mod list_pages;
mod list_setup;
pub mod tce;
pub mod window;

pub(crate) mod attach;
pub(crate) mod code;
#[cfg(all(test, feature = "native-iommu"))]
mod code_tests;
mod serves;
pub(crate) mod setup;
mod slot_lookup;

pub use crate::path::{DdwOutcome, PathReason};
pub use backend::IommuBackend;
pub use bus_space::{BusRange, RangeKind};
pub use calls::{
    hcall, DdwQuery, TceCalls, DDW_PAGE_SIZES, TCE_LIST_ENTRIES, TCE_PCI_READ, TCE_PCI_WRITE, TCE_STUFF_BATCH,
};
pub use config::{
    IommuConfig, IommuPolicy, TceBatching, VerifyPolicy, DEFAULT_POOL_LIST_PAGES, MAX_DOMAINS,
    MAX_GLOBAL_RESERVATIONS, MAX_LIST_PAGES,
};
pub use counters::IommuStatsSnapshot;
pub use error::{IommuError, PutFailure};
pub use window::WindowGeometry;
