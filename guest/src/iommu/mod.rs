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

pub mod backend;
#[cfg(test)]
mod batching_tests;
pub mod bus_space;
pub mod calls;
pub mod config;
pub(crate) mod counters;
pub(crate) mod domain;
pub mod error;
pub(crate) mod list_pages;
pub mod tce;
pub mod window;

pub(crate) mod attach;
pub(crate) mod setup;

pub use crate::path::{DdwOutcome, PathReason};
pub use backend::IommuBackend;
pub use bus_space::{BusRange, RangeKind};
pub use calls::{
    hcall, DdwQuery, TceCalls, DDW_PAGE_SIZES, TCE_LIST_ENTRIES, TCE_PCI_READ, TCE_PCI_WRITE, TCE_STUFF_BATCH,
};
pub use config::{
    IommuConfig, IommuPolicy, TceBatching, VerifyPolicy, MAX_DOMAINS, MAX_GLOBAL_RESERVATIONS, MAX_LIST_PAGES,
};
pub use counters::IommuStatsSnapshot;
pub use error::{IommuError, PutFailure};
pub use window::WindowGeometry;
