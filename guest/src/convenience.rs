//! Short forms: [`DmaLayer::on`] names a device once and gives its calls without the device
//! argument and without attributes ([`DmaAttrs::NONE`]), which is what nearly every caller passes.
//!
//! Every method here has the name of the full call on [`DmaLayer`] it stands for, and does exactly
//! that call: `layer.on(&dev).map(&mut buf, dir)` is `layer.map(&dev, &mut buf, dir, DmaAttrs::NONE)`.
//! Reach for the full call when a mapping needs an attribute ([`DmaAttrs::SKIP_CPU_SYNC`],
//! [`DmaAttrs::PRESERVE_UNWRITTEN`], [`DmaAttrs::NO_WARN`]) or a list needs
//! [`DmaLayer::map_sg_with`]'s options.
//!
//! ```
//! use ccdma::{sg::SgEntry, DeviceConfig, DmaDirection, DmaLayer, DmaMask, PhysAddr, PoolConfig, SlotMeta};
//! # use ccdma_hv_model::{HvConfig, Hypervisor};
//! # let hv: &'static Hypervisor = Box::leak(Box::new(Hypervisor::new(HvConfig::pseries(1 << 30))));
//! let mut layer = DmaLayer::new(hv);
//! let meta = vec![SlotMeta::EMPTY; 512].leak();
//! // SAFETY: the model never hands this range out.
//! unsafe { layer.add_pool(PhysAddr(0x80_0000), 1 << 20, meta, PoolConfig::default())? };
//! let nic = layer.attach(DeviceConfig::new(1, DmaMask::BITS_32))?;
//! # let model_nic = hv.add_device(1, 32);
//! let dma = layer.on(&nic);
//!
//! let tx = dma.map_to_device(b"ping")?;
//! assert_eq!(model_nic.read(tx.bus_addr().0, 4).unwrap(), b"ping");
//! tx.unmap().map_err(|r| r.error)?;
//!
//! let mut reply = [0u8; 4];
//! let rx = dma.map(&mut reply, DmaDirection::FromDevice)?;
//! model_nic.write(rx.bus_addr().0, b"pong").unwrap();
//! rx.unmap().map_err(|r| r.error)?;
//! assert_eq!(&reply, b"pong");
//!
//! let (mut head, mut body) = ([1u8; 64], [2u8; 1000]);
//! let mut list = [SgEntry::new(&mut head), SgEntry::new(&mut body)];
//! dma.map_sg(&mut list, DmaDirection::ToDevice)?;
//! dma.unmap_sg(&mut list, DmaDirection::ToDevice)?;
//! layer.detach(nic)?;
//! # Ok::<(), ccdma::DmaError>(())
//! ```

use crate::addr::{BusAddr, PhysAddr};
use crate::coherent::{CoherentBuffer, FreeError};
use crate::device::Device;
use crate::direction::{DmaAttrs, DmaDirection};
use crate::error::DmaError;
use crate::iommu::MAX_DOMAINS;
use crate::layer::DmaLayer;
use crate::mapping::Mapping;
use crate::platform::Platform;
use crate::pool::MAX_AREAS;
use crate::pool_set::MAX_POOLS;
use crate::sg::SgEntry;

/// One device's calls on one layer, with default attributes. Made by [`DmaLayer::on`]; a pair of
/// references, so it is `Copy` and costs nothing to make per call or keep in a driver.
pub struct DeviceDma<
    'a,
    'm,
    P: Platform,
    const POOLS: usize = MAX_POOLS,
    const DOMAINS: usize = MAX_DOMAINS,
    const AREAS: usize = MAX_AREAS,
> {
    layer: &'a DmaLayer<'m, P, POOLS, DOMAINS, AREAS>,
    dev: &'a Device,
}

impl<P: Platform, const POOLS: usize, const DOMAINS: usize, const AREAS: usize> Clone
    for DeviceDma<'_, '_, P, POOLS, DOMAINS, AREAS>
{
    fn clone(&self) -> Self {
        *self
    }
}
impl<P: Platform, const POOLS: usize, const DOMAINS: usize, const AREAS: usize> Copy
    for DeviceDma<'_, '_, P, POOLS, DOMAINS, AREAS>
{
}

impl<'m, P: Platform, const POOLS: usize, const DOMAINS: usize, const AREAS: usize>
    DmaLayer<'m, P, POOLS, DOMAINS, AREAS>
{
    /// The short forms of `dev`'s calls: no device argument, no attributes (see [`DeviceDma`]).
    pub fn on<'a>(&'a self, dev: &'a Device) -> DeviceDma<'a, 'm, P, POOLS, DOMAINS, AREAS> {
        DeviceDma { layer: self, dev }
    }
}

impl<'a, 'm, P: Platform, const POOLS: usize, const DOMAINS: usize, const AREAS: usize>
    DeviceDma<'a, 'm, P, POOLS, DOMAINS, AREAS>
{
    /// The device these calls are for.
    pub fn device(&self) -> &'a Device {
        self.dev
    }

    /// The layer these calls go to.
    pub fn layer(&self) -> &'a DmaLayer<'m, P, POOLS, DOMAINS, AREAS> {
        self.layer
    }

    /// [`DmaLayer::map_to_device`] without attributes: lend `buf` for the device to read.
    #[track_caller]
    pub fn map_to_device(
        &self,
        buf: &'a [u8],
    ) -> Result<Mapping<'a, 'm, P, POOLS, DOMAINS, AREAS>, DmaError> {
        self.layer.map_to_device(self.dev, buf, DmaAttrs::NONE)
    }

    /// [`DmaLayer::map`] without attributes: lend `buf` to the device in any direction.
    #[track_caller]
    pub fn map(
        &self,
        buf: &'a mut [u8],
        dir: DmaDirection,
    ) -> Result<Mapping<'a, 'm, P, POOLS, DOMAINS, AREAS>, DmaError> {
        self.layer.map(self.dev, buf, dir, DmaAttrs::NONE)
    }

    /// [`DmaLayer::map_sg`] without attributes: map a scatter-gather list, returning the number of
    /// DMA segments.
    pub fn map_sg(&self, list: &mut [SgEntry<'_>], dir: DmaDirection) -> Result<usize, DmaError> {
        self.layer.map_sg(self.dev, list, dir, DmaAttrs::NONE)
    }

    /// [`DmaLayer::unmap_sg`] without attributes.
    pub fn unmap_sg(&self, list: &mut [SgEntry<'_>], dir: DmaDirection) -> Result<(), DmaError> {
        self.layer.unmap_sg(self.dev, list, dir, DmaAttrs::NONE)
    }

    /// [`DmaLayer::sync_sg_for_cpu`].
    pub fn sync_sg_for_cpu(&self, list: &mut [SgEntry<'_>], dir: DmaDirection) -> Result<(), DmaError> {
        self.layer.sync_sg_for_cpu(self.dev, list, dir)
    }

    /// [`DmaLayer::sync_sg_for_device`].
    pub fn sync_sg_for_device(&self, list: &mut [SgEntry<'_>], dir: DmaDirection) -> Result<(), DmaError> {
        self.layer.sync_sg_for_device(self.dev, list, dir)
    }

    /// [`DmaLayer::map_ptr`] without attributes (raw face).
    ///
    /// # Safety
    /// As for [`DmaLayer::map_ptr`].
    #[track_caller]
    pub unsafe fn map_ptr(&self, ptr: *mut u8, len: usize, dir: DmaDirection) -> Result<BusAddr, DmaError> {
        // SAFETY: the caller keeps `map_ptr`'s contract; the attributes change nothing it covers.
        unsafe { self.layer.map_ptr(self.dev, ptr, len, dir, DmaAttrs::NONE) }
    }

    /// [`DmaLayer::map_phys`] without attributes (raw face).
    ///
    /// # Safety
    /// As for [`DmaLayer::map_phys`].
    #[track_caller]
    pub unsafe fn map_phys(
        &self,
        phys: PhysAddr,
        len: usize,
        dir: DmaDirection,
    ) -> Result<BusAddr, DmaError> {
        // SAFETY: the caller keeps `map_phys`'s contract.
        unsafe { self.layer.map_phys(self.dev, phys, len, dir, DmaAttrs::NONE) }
    }

    /// [`DmaLayer::unmap`] without attributes (raw face): `len` and `dir` are the map's.
    ///
    /// # Safety
    /// As for [`DmaLayer::unmap`].
    #[track_caller]
    pub unsafe fn unmap(&self, bus: BusAddr, len: usize, dir: DmaDirection) -> Result<(), DmaError> {
        // SAFETY: the caller keeps `unmap`'s contract.
        unsafe { self.layer.unmap(self.dev, bus, len, dir, DmaAttrs::NONE) }
    }

    /// [`DmaLayer::sync_for_cpu`] (raw face).
    ///
    /// # Safety
    /// As for [`DmaLayer::sync_for_cpu`].
    #[track_caller]
    pub unsafe fn sync_for_cpu(
        &self,
        bus: BusAddr,
        offset: usize,
        len: usize,
        dir: DmaDirection,
    ) -> Result<(), DmaError> {
        // SAFETY: the caller keeps `sync_for_cpu`'s contract.
        unsafe { self.layer.sync_for_cpu(self.dev, bus, offset, len, dir) }
    }

    /// [`DmaLayer::sync_for_device`] (raw face).
    ///
    /// # Safety
    /// As for [`DmaLayer::sync_for_device`].
    #[track_caller]
    pub unsafe fn sync_for_device(
        &self,
        bus: BusAddr,
        offset: usize,
        len: usize,
        dir: DmaDirection,
    ) -> Result<(), DmaError> {
        // SAFETY: the caller keeps `sync_for_device`'s contract.
        unsafe { self.layer.sync_for_device(self.dev, bus, offset, len, dir) }
    }

    /// [`DmaLayer::alloc_coherent`]: `pages` pages at `phys` become a coherent buffer of the device.
    ///
    /// # Safety
    /// As for [`DmaLayer::alloc_coherent`].
    #[track_caller]
    pub unsafe fn alloc_coherent(&self, phys: PhysAddr, pages: u64) -> Result<CoherentBuffer, DmaError> {
        // SAFETY: the caller keeps `alloc_coherent`'s contract.
        unsafe { self.layer.alloc_coherent(self.dev, phys, pages) }
    }

    /// [`DmaLayer::free_coherent`].
    #[track_caller]
    pub fn free_coherent(&self, buf: CoherentBuffer) -> Result<(), FreeError> {
        self.layer.free_coherent(self.dev, buf)
    }
}
