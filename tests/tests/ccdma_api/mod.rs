//! The one place where the randomized suites (`random_ops.rs`, `api_props.rs`) call into ccdma.
//!
//! Issue 8 reshapes the public API (`Device` and `CoherentBuffer` move-only, `detach` and
//! `free_coherent` consuming their argument and handing it back inside the error, the raw face by
//! address `unsafe`, specific error variants instead of `InvalidConfig`). Every call the suites make
//! goes through the functions below, already in the shape the new API will have, so the port of the
//! suites touches this file only.
#![allow(dead_code)]

use ccdma::iommu::BusRange;
use ccdma::sg::{SgEntry, SgOptions};
use ccdma::{
    BusAddr, CoherentBuffer, Device, DeviceConfig, DmaAttrs, DmaDirection, DmaError, DmaLayer, IommuConfig,
    Mapping, PhysAddr, PoolConfig, SlotMeta,
};
use ccdma_hv_model::Hypervisor;

/// The platform every suite runs on: a leaked model.
pub type Hv = &'static Hypervisor;
/// The layer type of the suites.
pub type Layer = DmaLayer<'static, Hv>;
/// A safe-face mapping that the random test keeps across operations.
pub type SafeMapping = Mapping<'static, 'static, Hv>;

/// A new layer on `hv`.
pub fn new_layer(hv: Hv) -> Layer {
    DmaLayer::new(hv)
}

/// Add a pool over `[phys, phys + len)` with its metadata sized by `meta_slots` (leaked).
///
/// # Safety
/// The range must be guest RAM used by nothing else for the life of the layer.
pub unsafe fn add_pool(
    layer: &mut Layer,
    phys: u64,
    len: usize,
    meta_slots: usize,
    cfg: PoolConfig,
) -> Result<usize, DmaError> {
    let meta: &'static mut [SlotMeta] = vec![SlotMeta::EMPTY; meta_slots].leak();
    // SAFETY: forwarded from the caller.
    unsafe { layer.add_pool(PhysAddr(phys), len, meta, cfg) }
}

/// Enable the IOMMU path with `ranges` bus-range slots of storage (leaked).
///
/// # Safety
/// The list pages of `cfg.batching`, if any, must be guest RAM nothing else uses for the life of the layer.
pub unsafe fn enable_iommu(layer: &mut Layer, cfg: IommuConfig, ranges: usize) -> Result<(), DmaError> {
    let storage: &'static mut [BusRange] = vec![BusRange::EMPTY; ranges].leak();
    // SAFETY: forwarded from the caller.
    unsafe { layer.enable_iommu(cfg, storage) }
}

/// Attach a device.
pub fn attach(layer: &Layer, cfg: DeviceConfig) -> Result<Device, DmaError> {
    layer.attach(cfg)
}

/// Detach a device, consuming it; refused detaches hand it back.
pub fn detach(layer: &Layer, dev: Device) -> Result<(), (Device, DmaError)> {
    layer.detach(dev).map_err(|r| (r.value, r.error))
}

/// The path of a device now.
pub fn path_of(layer: &Layer, dev: &Device) -> ccdma::DmaPath {
    layer.path_of(dev)
}

/// Safe face: map `buf` in `dir` (to-device mappings borrow it shared).
pub fn map_safe(
    layer: &'static Layer,
    dev: &'static Device,
    buf: &'static mut [u8],
    dir: DmaDirection,
    attrs: DmaAttrs,
) -> Result<SafeMapping, DmaError> {
    match dir {
        DmaDirection::ToDevice => layer.map_to_device(dev, buf, attrs),
        _ => layer.map(dev, buf, dir, attrs),
    }
}

/// Safe face: end a mapping. A refused unmap hands the mapping back.
pub fn unmap_safe(m: SafeMapping) -> Result<(), (Option<SafeMapping>, DmaError)> {
    m.unmap().map_err(|r| (Some(r.value), r.error))
}

/// Safe face: sync for the CPU.
pub fn safe_sync_for_cpu(m: &mut SafeMapping, offset: usize, len: usize) -> Result<(), DmaError> {
    m.sync_for_cpu(offset, len)
}

/// Safe face: sync for the device.
pub fn safe_sync_for_device(m: &mut SafeMapping, offset: usize, len: usize) -> Result<(), DmaError> {
    m.sync_for_device(offset, len)
}

/// Safe face: the buffer as the CPU may read it now.
pub fn safe_buffer(m: &SafeMapping) -> &[u8] {
    m.buffer()
}

/// Safe face: bus address.
pub fn safe_bus(m: &SafeMapping) -> BusAddr {
    m.bus_addr()
}

/// Raw face: map a CPU buffer.
///
/// # Safety
/// As [`DmaLayer::map_ptr`].
pub unsafe fn map_ptr(
    layer: &Layer,
    dev: &Device,
    ptr: *mut u8,
    len: usize,
    dir: DmaDirection,
    attrs: DmaAttrs,
) -> Result<BusAddr, DmaError> {
    // SAFETY: forwarded from the caller.
    unsafe { layer.map_ptr(dev, ptr, len, dir, attrs) }
}

/// Raw face: map a physical range (an `unsafe fn` after issue 8).
///
/// # Safety
/// `[phys, phys + len)` must be memory the caller owns and does not touch while mapped, except
/// between syncs.
pub unsafe fn map_phys(
    layer: &Layer,
    dev: &Device,
    phys: u64,
    len: usize,
    dir: DmaDirection,
    attrs: DmaAttrs,
) -> Result<BusAddr, DmaError> {
    // SAFETY: forwarded from the caller.
    unsafe { layer.map_phys(dev, PhysAddr(phys), len, dir, attrs) }
}

/// Raw face: unmap by bus address (an `unsafe fn` after issue 8).
///
/// # Safety
/// The mapping, if it is one, must be a raw mapping of the caller whose original is still valid.
pub unsafe fn unmap(
    layer: &Layer,
    dev: &Device,
    bus: BusAddr,
    len: usize,
    dir: DmaDirection,
    attrs: DmaAttrs,
) -> Result<(), DmaError> {
    // SAFETY: forwarded from the caller.
    unsafe { layer.unmap(dev, bus, len, dir, attrs) }
}

/// Raw face: sync for the CPU (an `unsafe fn` after issue 8).
///
/// # Safety
/// As [`unmap`].
pub unsafe fn sync_for_cpu(
    layer: &Layer,
    dev: &Device,
    bus: BusAddr,
    offset: usize,
    len: usize,
    dir: DmaDirection,
) -> Result<(), DmaError> {
    // SAFETY: forwarded from the caller.
    unsafe { layer.sync_for_cpu(dev, bus, offset, len, dir) }
}

/// Raw face: sync for the device (an `unsafe fn` after issue 8).
///
/// # Safety
/// As [`unmap`].
pub unsafe fn sync_for_device(
    layer: &Layer,
    dev: &Device,
    bus: BusAddr,
    offset: usize,
    len: usize,
    dir: DmaDirection,
) -> Result<(), DmaError> {
    // SAFETY: forwarded from the caller.
    unsafe { layer.sync_for_device(dev, bus, offset, len, dir) }
}

/// A scatter-gather entry over a borrowed buffer.
pub fn sg_entry(buf: &'static mut [u8]) -> SgEntry<'static> {
    SgEntry::new(buf)
}

/// A scatter-gather entry over a physical range (`SgEntry::phys` is an `unsafe fn` after issue 8).
///
/// # Safety
/// As [`map_phys`], for as long as the entry is mapped.
pub unsafe fn sg_phys(phys: u64, len: usize) -> SgEntry<'static> {
    // SAFETY: forwarded from the caller.
    unsafe { SgEntry::phys(PhysAddr(phys), len) }
}

/// Map a list.
pub fn map_sg(
    layer: &Layer,
    dev: &Device,
    list: &mut [SgEntry<'static>],
    dir: DmaDirection,
    attrs: DmaAttrs,
    coalesce: bool,
) -> Result<usize, DmaError> {
    layer.map_sg_with(dev, list, dir, attrs, &SgOptions { coalesce, p2p: None })
}

/// Unmap a list.
pub fn unmap_sg(
    layer: &Layer,
    dev: &Device,
    list: &mut [SgEntry<'static>],
    dir: DmaDirection,
    attrs: DmaAttrs,
) -> Result<(), DmaError> {
    layer.unmap_sg(dev, list, dir, attrs)
}

/// Sync a list for the CPU.
pub fn sync_sg_for_cpu(
    layer: &Layer,
    dev: &Device,
    list: &mut [SgEntry<'static>],
    dir: DmaDirection,
) -> Result<(), DmaError> {
    layer.sync_sg_for_cpu(dev, list, dir)
}

/// Sync a list for the device.
pub fn sync_sg_for_device(
    layer: &Layer,
    dev: &Device,
    list: &mut [SgEntry<'static>],
    dir: DmaDirection,
) -> Result<(), DmaError> {
    layer.sync_sg_for_device(dev, list, dir)
}

/// Allocate a coherent buffer over `pages` pages at `phys`.
///
/// # Safety
/// As [`DmaLayer::alloc_coherent`].
pub unsafe fn alloc_coherent(
    layer: &Layer,
    dev: &Device,
    phys: u64,
    pages: u64,
) -> Result<CoherentBuffer, DmaError> {
    // SAFETY: forwarded from the caller.
    unsafe { layer.alloc_coherent(dev, PhysAddr(phys), pages) }
}

/// Free a coherent buffer, consuming it; a refused free hands it back (`Some`), a free that
/// quarantined the pages does not (`None`: the buffer is gone).
pub fn free_coherent(
    layer: &Layer,
    dev: &Device,
    buf: CoherentBuffer,
) -> Result<(), (Option<CoherentBuffer>, DmaError)> {
    layer.free_coherent(dev, buf).map_err(|e| match e {
        ccdma::FreeError::Refused(r) => (Some(r.value), r.error),
        ccdma::FreeError::Quarantined(e) => (None, e),
    })
}

/// A second handle to a coherent buffer: none, `CoherentBuffer` is move-only (a double free does not
/// compile).
pub fn coherent_duplicate(buf: &CoherentBuffer) -> Option<CoherentBuffer> {
    let _ = buf;
    None
}

/// True when the error is a refusal because the device still has live mappings or buffers.
pub fn is_busy(e: &DmaError) -> bool {
    matches!(e, DmaError::Busy { .. })
}

/// Bus ranges of a device's windows that hold mappings, lists, coherent buffers or quarantined
/// entries (not reservations, not premapped pools).
pub fn live_bus_ranges_of(layer: &Layer, dev: &Device) -> usize {
    use ccdma::iommu::bus_space::RangeKind;
    let mut out = vec![BusRange::EMPTY; 8192];
    let n = layer.bus_ranges_of(dev, &mut out);
    out[..n.min(out.len())]
        .iter()
        .filter(|r| !matches!(r.kind, RangeKind::Reserved | RangeKind::Premap { .. }))
        .count()
}

/// The id a device was attached with (the model's device id).
pub fn device_id(dev: &Device) -> u32 {
    dev.config().id
}
