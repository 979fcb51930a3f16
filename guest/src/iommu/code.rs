//! The IOMMU path's cold code as a table that `enable_iommu` stores in the layer's [`Iommu`]
//! (issue 20: the C library's minimal image).
//!
//! A device is attached behind an IOMMU, detached from its domain, or has its deferred domain set
//! up only once the IOMMU path is enabled; before that `attach` refuses it
//! ([`DmaError::IommuNotEnabled`]). That is a run-time fact (the layer's `iommu` field), so a
//! program that never calls `enable_iommu` kept the whole set-up in its image all the same: the
//! branches of attach, detach and a deferred device's first map that lead to it read layer memory
//! the compiler cannot see. Those three calls now go through this table, which only
//! `DmaLayer::enable_iommu` names: a C firmware that links `ccdma_attach`, `ccdma_map` and
//! `ccdma_detach` but not `ccdma_enable_iommu` drops the domain claim and join, the windows' set-up
//! (`setup_domain`, `premap_default`, `premap_pool`, their unwinding) and the domain's detach
//! (`bash scripts/budgets.sh`, main 0d56481 -> min20: minimal image 42,821 -> 34,357 B). Each call
//! is cold (once per attach, detach, or deferred device): the indirect call costs nothing
//! measurable, and the map and unmap paths (premapped views, strict entries) are unchanged.
//!
//! The table is built per platform type (`CodeFor::<P, ..>::CODE`) and its entries are shims that
//! take the layer's address and see it as `DmaLayer<P>` again, then call the same cold functions
//! as before (the default capacities' `*_once` ones: one copy across crates). The platform's vtable
//! is therefore a constant inside each shim, as it is in the public calls' shells, and never passed
//! to an unknown function: in a one-platform image (the C library) the compiler still resolves
//! every platform call of the set-up. Measured on the full C image (`bash scripts/budgets.sh`):
//! entries taking the `dyn` layer, 65,669 B (the C platform's whole vtable kept, its calls
//! indirect); shims taking `&Cold`, 65,621; shims taking the address, 65,221 as a `*const ()`,
//! 65,157 as a `NonNull` (main: 64,997). Each platform pays its shims (`bash
//! scripts/kernel-budgets.sh`: QemuPlatform +112, PseriesPlatform +316).

use core::marker::PhantomData;
use core::ptr::NonNull;

use super::config::MAX_DOMAINS;
use super::domain::{DomainRef, DomainSlot};
use crate::device::{Device, DeviceConfig};
use crate::error::DmaError;
use crate::layer::{Cold, DmaLayer, FullCold};
use crate::platform::Platform;
use crate::pool::MAX_AREAS;
use crate::pool_set::MAX_POOLS;

/// The IOMMU path's cold entries for a layer of these capacities (see the module docs). Each takes
/// the layer by its address alone: a `&Cold` argument would hand the platform's vtable to an unknown
/// function, and a one-platform image would then keep the whole vtable and every platform call of
/// the cold paths indirect (the module docs' figures). A `NonNull`, not a raw pointer: the shims'
/// `as_full` then knows its answer is `Some` for the default capacities (with `*const ()` each shim
/// kept a null test and a second copy of its cold function, compiled in the platform's crate: +5 KB
/// of ccdma in the x86 kernel, `bash scripts/kernel-budgets.sh`).
///
/// Contract of every entry: `layer` is the address of a live `DmaLayer` over the platform type the
/// table was built for ([`CodeFor`]) and of these capacities, borrowed for the call.
#[allow(clippy::type_complexity)]
pub(crate) struct IommuCode<
    const POOLS: usize = MAX_POOLS,
    const DOMAINS: usize = MAX_DOMAINS,
    const AREAS: usize = MAX_AREAS,
> {
    /// Attach a device behind the IOMMU (the path is enabled): `Cold::attach_enabled`.
    pub attach: unsafe fn(layer: NonNull<()>, DeviceConfig) -> Result<Device, DmaError>,
    /// Detach a device from its domain: `Cold::detach_domain`.
    pub detach: unsafe fn(layer: NonNull<()>, &Device) -> Result<(), DmaError>,
    /// Set up a deferred device's domain (its first map): `Cold::attach_deferred`.
    pub set_up: for<'l, 'm> unsafe fn(
        layer: NonNull<()>,
        &'l DomainSlot<'m, POOLS>,
        DomainRef,
        &Device,
    ) -> Result<(), DmaError>,
}

impl<const POOLS: usize, const DOMAINS: usize, const AREAS: usize> IommuCode<POOLS, DOMAINS, AREAS> {
    /// This table as the default capacities' type when those are its capacities (see
    /// `Cold::as_full`).
    #[inline(always)]
    pub(crate) fn as_full(code: &'static Self) -> Option<&'static IommuCode> {
        if POOLS == MAX_POOLS && DOMAINS == MAX_DOMAINS && AREAS == MAX_AREAS {
            // SAFETY: with equal capacities both are the same type.
            Some(unsafe { &*(code as *const Self).cast::<IommuCode>() })
        } else {
            None
        }
    }
}

/// The table for layers over `P`.
pub(crate) struct CodeFor<P, const POOLS: usize, const DOMAINS: usize, const AREAS: usize>(PhantomData<P>);

impl<P: Platform, const POOLS: usize, const DOMAINS: usize, const AREAS: usize>
    CodeFor<P, POOLS, DOMAINS, AREAS>
{
    /// What `DmaLayer::<P, ..>::enable_iommu` stores.
    pub(crate) const CODE: IommuCode<POOLS, DOMAINS, AREAS> = IommuCode {
        attach: attach::<P, POOLS, DOMAINS, AREAS>,
        detach: detach::<P, POOLS, DOMAINS, AREAS>,
        set_up: set_up::<P, POOLS, DOMAINS, AREAS>,
    };
}

/// The layer at `layer` as the `DmaLayer<'m, P, ..>` it is.
///
/// # Safety
/// [`IommuCode`]'s contract: `layer` is a live `DmaLayer<'m, P, POOLS, DOMAINS, AREAS>`, borrowed
/// for 'l.
#[inline(always)]
unsafe fn as_layer<'l, 'm, P: Platform, const POOLS: usize, const DOMAINS: usize, const AREAS: usize>(
    layer: NonNull<()>,
) -> &'l DmaLayer<'m, P, POOLS, DOMAINS, AREAS> {
    // SAFETY: the caller's contract.
    unsafe { layer.cast::<DmaLayer<'m, P, POOLS, DOMAINS, AREAS>>().as_ref() }
}

/// The address an entry of [`IommuCode`] takes: the layer's, without the platform's vtable.
#[inline(always)]
pub(crate) fn addr<const POOLS: usize, const DOMAINS: usize, const AREAS: usize>(
    c: &Cold<'_, '_, POOLS, DOMAINS, AREAS>,
) -> NonNull<()> {
    NonNull::from(c).cast::<()>()
}

/// # Safety
/// [`IommuCode`]'s contract, for `P`.
unsafe fn attach<P: Platform, const POOLS: usize, const DOMAINS: usize, const AREAS: usize>(
    layer: NonNull<()>,
    config: DeviceConfig,
) -> Result<Device, DmaError> {
    // SAFETY: this function's contract.
    let c = unsafe { as_layer::<P, POOLS, DOMAINS, AREAS>(layer) }.cold();
    match c.as_full() {
        Some(full) => attach_enabled_once(full, config),
        None => c.attach_enabled(config),
    }
}

/// # Safety
/// [`IommuCode`]'s contract, for `P`.
unsafe fn detach<P: Platform, const POOLS: usize, const DOMAINS: usize, const AREAS: usize>(
    layer: NonNull<()>,
    dev: &Device,
) -> Result<(), DmaError> {
    // SAFETY: this function's contract.
    let c = unsafe { as_layer::<P, POOLS, DOMAINS, AREAS>(layer) }.cold();
    match c.as_full() {
        Some(full) => detach_domain_once(full, dev),
        None => c.detach_domain(dev),
    }
}

/// A deferred device's set-up through the default capacities' `*_once` function when the layer
/// has them (one copy across crates), else the capacity's own.
///
/// # Safety
/// [`IommuCode`]'s contract, for `P`.
unsafe fn set_up<'l, 'm, P: Platform, const POOLS: usize, const DOMAINS: usize, const AREAS: usize>(
    layer: NonNull<()>,
    slot: &'l DomainSlot<'m, POOLS>,
    d: DomainRef,
    dev: &Device,
) -> Result<(), DmaError> {
    // SAFETY: this function's contract (the slot is the layer's).
    let c = unsafe { as_layer::<'_, 'm, P, POOLS, DOMAINS, AREAS>(layer) }.cold();
    match (c.as_full(), slot.as_full()) {
        (Some(full), Some(s)) => super::attach::attach_deferred_once(full, s, d, dev).map(|_| ()),
        _ => c.attach_deferred(slot, d, dev).map(|_| ()),
    }
}

/// `Cold::attach_enabled` of the default capacities, compiled in this crate only (see
/// `Cold::as_full`).
#[inline(never)]
fn attach_enabled_once(c: &FullCold<'_, '_>, config: DeviceConfig) -> Result<Device, DmaError> {
    c.attach_enabled(config)
}

/// `Cold::detach_domain` of the default capacities, compiled in this crate only (see
/// `Cold::as_full`).
#[inline(never)]
fn detach_domain_once(c: &FullCold<'_, '_>, dev: &Device) -> Result<(), DmaError> {
    c.detach_domain(dev)
}

impl<'m, const POOLS: usize, const DOMAINS: usize, const AREAS: usize> Cold<'_, 'm, POOLS, DOMAINS, AREAS> {
    /// Detach `dev` from its domain through the table (`Err(NotAttached)` when the layer has no
    /// IOMMU path: no domain of it can be live).
    pub(crate) fn detach_domain_by_code(&self, dev: &Device) -> Result<(), DmaError> {
        // A constant test first: a build without an IOMMU backend keeps no call through the table.
        let code = self.iommu.as_ref().and_then(|i| i.code).filter(|_| crate::parts::IOMMU);
        let code = code.ok_or(DmaError::NotAttached)?;
        // SAFETY: `enable_iommu` of this layer stored the table, built for the layer's own platform
        // type and capacities (a layer's type never changes); `self` is that layer.
        unsafe { (code.detach)(addr(self), dev) }
    }
}
