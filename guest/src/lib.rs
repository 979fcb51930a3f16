//! ccdma: the DMA layer for confidential VM guests.
//!
//! In a confidential VM (pseries Secure VM, Intel TDX, AMD SEV-SNP) devices reach only memory the guest
//! has shared. This crate bounces streaming DMA through pools of shared memory, shares coherent
//! buffers, and reaches the platform only through the traits in [`platform`], so the same logic runs in
//! guest firmware, in a test kernel under QEMU, and against the modelled hypervisor on the host.
//!
//! `no_std`, no allocator: pools and their metadata live in memory the caller provides.
#![no_std]
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks, missing_docs)]

pub mod addr;
pub mod coherent;
pub mod device;
pub mod direction;
pub mod error;
pub mod iommu;
pub mod layer;
pub mod mapping;
pub mod platform;
pub mod pool;
pub mod sg;
pub mod sharing;
pub mod stats;
pub mod tracker;
#[cfg(feature = "virtio-hal")]
pub mod virtio_hal;

pub use addr::{BusAddr, DmaMask, PhysAddr, PAGE_SIZE};
pub use coherent::{CoherentBuffer, FreeError};
pub use device::{DeviceConfig, DmaPath};
pub use direction::{DmaAttrs, DmaDirection};
pub use error::{DmaError, IommuError, Refused, SharingErrorKind};
pub use iommu::{IommuConfig, IommuPolicy, IommuStatsSnapshot, PathReason, TceCalls, VerifyPolicy};
pub use layer::{Device, DmaLayer, MAX_POOLS};
pub use mapping::Mapping;
pub use platform::{BusEncoding, MemorySharing, PartialSharing, PhysMemory, Platform};
pub use pool::{BouncePool, LiveRun, PoolConfig, SlotMeta};
pub use stats::{FailureKind, StatsSnapshot};
