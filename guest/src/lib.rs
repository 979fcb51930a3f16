//! ccdma: the DMA layer for confidential VM guests.
//!
//! In a confidential VM (pseries Secure VM, Intel TDX, AMD SEV-SNP) devices reach only memory the guest
//! has shared. This crate bounces streaming DMA through pools of shared memory, shares coherent
//! buffers, and reaches the platform only through the traits in [`platform`], so the same logic runs in
//! guest firmware, in a test kernel under QEMU, and against the modelled hypervisor on the host.
//!
//! `no_std`, no allocator: pools and their metadata live in memory the caller provides.
//!
//! # A first program
//!
//! A pseries Secure VM (modelled by `ccdma-hv-model` here; a guest kernel passes its own
//! [`Platform`]): one pool, a 32-bit and a 64-bit device, a streaming mapping each way, a
//! scatter-gather list and a coherent buffer.
//!
//! ```
//! use ccdma::{sg::dma_segments, sg::SgEntry, DeviceConfig, DmaDirection, DmaLayer, DmaMask, PhysAddr};
//! use ccdma::{PoolConfig, SlotMeta};
//! // Model only: the repository's modelled hypervisor (6 GiB; its test allocations start at 1 GiB)
//! // plays the platform. A guest kernel passes its own `Platform` instead.
//! use ccdma_hv_model::{HvConfig, Hypervisor};
//! let platform: &'static Hypervisor = Box::leak(Box::new(Hypervisor::new(HvConfig::pseries(6 << 30))));
//! let hv = platform;
//!
//! // 1. The layer and one 4 MiB pool of guest memory (shared with the hypervisor here).
//! let mut layer = DmaLayer::new(platform);
//! let meta = vec![SlotMeta::EMPTY; PoolConfig::default().slots_for(4 << 20)].leak();
//! // SAFETY: the range is guest RAM this program gives the layer for good.
//! let pool_index = unsafe { layer.add_pool(PhysAddr(0x80_0000), 4 << 20, meta, PoolConfig::default())? };
//! assert_eq!(pool_index, 0); // add_pool returns the pool's index
//!
//! // 2. Devices: the layer picks each one's path from its DMA mask.
//! let nic = layer.attach(DeviceConfig::new(1, DmaMask::BITS_32))?;
//! let disk = layer.attach(DeviceConfig::new(2, DmaMask::BITS_64))?;
//! println!("nic: {} ({})", nic.path().name(), layer.path_reason(&nic).unwrap());
//! // Model only: the devices' side, to check what they see.
//! let (nic_dev, disk_dev) = (hv.add_device(1, 32), hv.add_device(2, 64));
//!
//! // 3. Streaming DMA: the buffer is lent to the device for the mapping's life.
//! let packet = [0xAB_u8; 1500];
//! let tx = layer.on(&nic).map_to_device(&packet)?;
//! assert_eq!(nic_dev.read(tx.bus_addr().0, 1500).unwrap(), packet); // model only: the device reads
//! tx.unmap()?;
//! let mut block = [0u8; 4096];
//! let rx = layer.on(&disk).map(&mut block, DmaDirection::FromDevice)?;
//! disk_dev.write(rx.bus_addr().0, &[7; 4096]).unwrap(); // model only: the device writes
//! rx.unmap()?; // the device's bytes are copied into `block` here, once
//! assert_eq!(block, [7; 4096]);
//!
//! // 4. Scatter-gather: three buffers, as few DMA segments as the device allows.
//! let (a, b, c) = ([1u8; 512], [2u8; 700], [3u8; 100]);
//! let mut list = [SgEntry::to_device(&a), SgEntry::to_device(&b), SgEntry::to_device(&c)];
//! let segments = layer.on(&disk).map_sg(&mut list, DmaDirection::ToDevice)?;
//! assert_eq!(segments, 1); // packed into one bounce run
//! for seg in dma_segments(&list) {
//!     // Hand each (bus address, length) to the device's descriptors.
//!     assert_eq!(disk_dev.read(seg.addr.0, seg.len).unwrap()[..512], [1; 512]); // model only
//! }
//! layer.on(&disk).unmap_sg(&mut list, DmaDirection::ToDevice)?;
//!
//! // 5. A coherent buffer (rings): shared for its life, freed by value.
//! let ring_page = hv.alloc(4096, ccdma_hv_model::Region::Low); // model only: a free page of RAM
//! // SAFETY: `ring_page` is a free page of guest RAM this program hands over until the free.
//! let ring = unsafe { layer.alloc_coherent(&nic, PhysAddr(ring_page), 1)? };
//! layer.free_coherent(&nic, ring)?;
//!
//! // 6. Detach hands nothing back once nothing is live.
//! layer.detach(nic)?;
//! layer.detach(disk)?;
//! println!("{}", layer.stats());
//! # Ok::<(), ccdma::DmaError>(())
//! ```
//!
//! `layer.on(&dev)` ([`DeviceDma`]) gives a device's calls without attributes; the full calls on
//! [`DmaLayer`] (`layer.map(&dev, buf, dir, attrs)`, ...) take [`DmaAttrs`] when a mapping needs one.
//!
//! # Soundness: what the type system promises
//!
//! If it compiles without `unsafe`, no call (with any argument values, and whatever the hypervisor
//! or a device answers) writes memory its caller does not own, races, or panics. The shape:
//!
//! - **Ownership of buffers.** The safe face ([`DmaLayer::map`], [`DmaLayer::map_to_device`],
//!   [`DmaLayer::map_sg`] with [`sg::SgEntry::new`]) borrows the buffer for the life of the
//!   [`Mapping`] (or list entry). The layer records each such mapping as owned by its `Mapping`, and
//!   the raw face refuses it ([`DmaError::OwnedByMapping`]), so the only way to end it is through the
//!   `Mapping`: a failed [`Mapping::unmap`] hands the mapping back ([`Refused`]) with the borrow still
//!   held, a failed drop makes the record forget the buffer before the borrow ends, and a forgotten
//!   mapping leaks its slots but is never written again. Every mapping records its device; another
//!   device cannot unmap or sync it ([`DmaError::WrongDevice`]).
//! - **The raw face is `unsafe`.** Calls by address ([`DmaLayer::map_ptr`], [`DmaLayer::map_phys`],
//!   [`DmaLayer::unmap`], [`DmaLayer::sync_for_cpu`], [`DmaLayer::sync_for_device`],
//!   [`sg::SgEntry::phys`], [`DmaLayer::alloc_coherent`], [`DmaLayer::add_pool`]) say in `# Safety`
//!   what the caller guarantees: that the memory named is its own for as long as the layer may
//!   write it. The layer's checks (record, size, direction, device, face) catch honest mistakes on
//!   top of that.
//! - **Lifecycles are values.** A [`Device`] is move-only and [`DmaLayer::detach`] consumes it,
//!   refusing (and handing it back) while any mapping, list or coherent buffer of it is live, on
//!   every path. Because drivers share a device as `&Device`, the borrow checker proves that no map
//!   of a device runs while it is detached, so its IOMMU domain is never republished under a live
//!   user. A [`CoherentBuffer`] is move-only and made only by the layer, so it cannot be forged,
//!   freed twice or freed stale; [`DmaLayer::free_coherent`] consumes it and hands it back when
//!   refused.
//! - **Failure atomicity.** A call that fails leaves the layer as before, or in a documented state
//!   that is safe and usable: a part-way detach leaves the device mapping nothing
//!   ([`DmaError::DetachIncomplete`]) until a retry completes; entries that cannot be cleared are
//!   quarantined with their memory; pages that cannot be made private again are quarantined and
//!   counted.
//! - **Platform traits are contracts.** [`PhysMemory`] is an `unsafe trait`: the layer builds its
//!   pointers from its answers, so its implementer guarantees they describe memory truthfully. The
//!   sharing calls and the TCE interface decide what a device may reach, not what the CPU may touch;
//!   everything they *allege* (window geometry, page shifts, partial progress, statuses) is checked
//!   before use.
//!
//! Misuse that safe code can still commit (leaking a mapping, double unmap through the raw face)
//! is reported by the misuse tracker (feature `debug-tracker`, module [`tracker`]).
//!
//! # Interrupts
//!
//! ccdma's locks spin. A call made from an interrupt handler that interrupted a ccdma call on the
//! same CPU would spin forever on a lock the interrupted call holds. The contract:
//!
//! - Every [`DmaLayer`] call through `&self` that can take a lock (map, unmap, sync, lists, coherent
//!   buffers, attach, detach, accept, revoke, `growth_tick`, reservations) runs with interrupts masked through the platform's
//!   [`Platform::mask_interrupts`] / [`Platform::restore_interrupts`] (a kernel saves and disables
//!   IRQs; EDK2 raises the TPL). A platform that implements them may call any ccdma function from an
//!   interrupt handler. Masking covers the whole call, copies included (a 256 KiB bounce copy is
//!   tens of microseconds), as Linux's `spin_lock_irqsave` covers SWIOTLB's slot search. Calls
//!   through `&mut self` (`add_pool`, `enable_iommu`, ...) need no masking: the borrow proves that
//!   nothing else, a handler included, holds the layer meanwhile.
//! - With the default hooks (they do nothing), no ccdma call may be made from a context that can
//!   interrupt a ccdma call on the same CPU (an interrupt handler, a signal handler, an EDK2 event
//!   notification at a raised TPL).
//!
//! `tests/tests/interrupt_safety.rs` interrupts maps with maps (a signal handler on the host) and
//! fails on a deadlock.
//!
//! # Features and sizes
//!
//! Default features are every part of the layer. A firmware that needs fewer builds with
//! `default-features = false` and names the parts it uses:
//!
//! | feature | part |
//! |---|---|
//! | `growth` | pools that grow from a [`MemorySource`] and shrink when idle |
//! | `trusted-devices` | [`DmaLayer::accept`], [`DmaLayer::revoke`]: private buffers mapped in place |
//! | `scatter-gather` | [`DmaLayer::map_sg`] and the rest of [`sg`] |
//! | `papr-tce` | devices behind [`Platform::tce`] (pseries) |
//! | `native-iommu` | devices behind [`Platform::iommu_backend`] (virtio-iommu and the like) |
//! | `ddw` | dynamic DMA windows over the pools; without it a device whose config asks for one ([`IommuConfig::with_ddw`]) uses the default window, as when the backend has no DDW calls |
//! | `pool-full-report` | the last "pool full" record, [`DmaLayer::last_pool_full`]; without it that is always `None` (the map fails the same way) |
//! | `stats` | the layer's own counters in [`DmaLayer::stats`] (failures by kind, direct maps, bytes from the device, shared and quarantined pages); without it they read 0 (the pools' counts stay) |
//!
//! A part left out keeps its API: the call answers [`DmaError::FeatureDisabled`] naming the feature
//! and changes nothing, and a device the platform puts behind a left-out IOMMU is refused at
//! attach. Its code leaves the image (cut by constants at the part's entry points, not by `#[cfg]`;
//! see `parts.rs`). Also: `debug-tracker` (off by default) and `log-off`. The C library (ccdma-ffi)
//! turns on only what C can reach: its `full` feature is `trusted-devices`, `scatter-gather` and
//! `native-iommu`; `growth` and `papr-tce` are features of it outside `full` (no export enables
//! growth; the C platform has no TCE calls), and it never turns on `ddw`, `pool-full-report` or
//! `stats` (no C IOMMU has DDW calls; no export reads the record or the counters). Its "minimal"
//! image (init, add_pool, attach, map, unmap, detach; log compiled out) has 33,941 bytes of `.text`
//! with `full` at main eaa3bdc (42,821 at main 0d56481, before the IOMMU path's cold code went
//! behind the table `enable_iommu` stores, `iommu/code.rs`) and 19,125 with no part and one pool
//! (x86_64-unknown-none, opt-level s; `bash scripts/budgets.sh`; each part's cost: `bash
//! scripts/parts-text.sh`).
//!
//! The layer's size is set by its capacities, `DmaLayer<'m, P, POOLS, DOMAINS, AREAS>` (pool slots,
//! IOMMU domains, areas per pool; defaults [`MAX_POOLS`], [`iommu::MAX_DOMAINS`], [`MAX_AREAS`]):
//! 28,800 bytes by default, 1,664 for one pool of two areas and no IOMMU domain
//! (`DmaLayer<'m, P, 1, 0, 2>`; 1,408 without the default features; 1,920 with four areas), built
//! with [`DmaLayer::with_capacity`] or in place with `DmaLayer::init_in` (x86_64, a reference as the
//! platform; main daf1766: `size_of` in a program that depends on ccdma, as a user builds it;
//! `tests/tests/layer_size.rs` checks the small figure). `cargo test --release -p ccdma --lib
//! footprint -- --nocapture` prints the parts, but as built for the crate's own tests, where each
//! area carries a test-only counter (256 bytes, not 128): 45,184 by default, 1,920 for
//! `DmaLayer<'m, P, 1, 0, 2>`.
#![no_std]
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks, missing_docs)]

mod accept;
pub mod addr;
pub mod coherent;
pub mod coherent_access;
mod cold_lock;
pub mod convenience;
pub mod device;
pub mod device_ids;
pub mod diagnostics;
pub mod direction;
pub mod error;
pub(crate) mod footprint;
pub mod growth;
mod interrupts;
pub mod iommu;
pub mod layer;
mod layer_init;
pub mod mapping;
mod off_counter;
mod parts;
mod parts_attach;
#[cfg(test)]
mod parts_tests;
pub mod path;
pub mod platform;
pub mod pool;
pub mod pool_set;
pub mod sg;
pub mod sharing;
#[cfg(test)]
mod sharing_counts_tests;
pub mod sizing;
pub mod stale_slot;
mod stale_slot_setting;
pub mod stats;
pub mod storage;
pub(crate) mod stream;
pub mod tracker;
pub mod trust;
#[cfg(feature = "virtio-hal")]
pub mod virtio_hal;

/// The crate's README (what crates.io shows), compiled and run as a doctest so its example cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctest;

pub use addr::{BusAddr, DmaMask, InvalidMask, PhysAddr, PAGE_SIZE};
pub use coherent::{CoherentBuffer, FreeError};
pub use convenience::DeviceDma;
pub use device::{Device, DeviceConfig, DevicePeakCounts, LiveCounts};
pub use diagnostics::{GrowthVerdict, PoolFullReport};
pub use direction::{DmaAttrs, DmaDirection};
pub use error::{DmaError, IommuError, Refused, SharingErrorKind, StatusCode};
pub use growth::{GrowthConfig, GrowthStats, MemorySource, PoolRef};
pub use iommu::{
    IommuConfig, IommuPolicy, IommuStatsSnapshot, TceBatching, TceCalls, VerifyPolicy,
    DEFAULT_POOL_LIST_PAGES,
};
pub use layer::DmaLayer;
pub use mapping::Mapping;
pub use path::{DdwOutcome, DdwStep, DmaPath, PathReason};
pub use platform::{BusEncoding, InterruptState, MemorySharing, PartialSharing, PhysMemory, Platform};
pub use pool::{BouncePool, LiveRun, PoolConfig, SlotMeta, MAX_AREAS};
pub use pool_set::MAX_POOLS;
pub use stale_slot::StaleSlotPolicy;
pub use stats::{FailureKind, StatsSnapshot};
pub use stream::raw_records::{RawRecord, RAW_RECORDS, RAW_RECORDS_PER_POOL};
pub use trust::{DeviceTrust, TrustState};
