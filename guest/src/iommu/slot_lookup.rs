//! A device's domain slot looked up out of line, for the cold paths (issue 20, one copy of the
//! code).
//!
//! `DmaLayer::slot`, `domain_info` and `attached_or_deferred` are small and inline: the map/unmap
//! path (stream/) keeps them so. Inlined at every cold site too (attach, detach, accept, coherent
//! buffers, scatter-gather lists), each carried its own bounds, option and state checks (33 copies
//! in the C library's full image). The cold sites call these instead: [`slot_of`] and [`info_of`]
//! are compiled once per layer capacity, not per platform type or call site.

use core::sync::atomic::Ordering;

use super::domain::{DomainInfo, DomainRef, DomainSlot, Iommu, DETACHING};
use crate::device::Device;
use crate::error::DmaError;
use crate::layer::DmaLayer;
use crate::platform::Platform;

/// [`DmaLayer::slot`] out of line: the slot `d` names, if the layer has an IOMMU and the slot exists.
#[inline(never)]
fn slot_of<'a, 'm, const D: usize, const N: usize, const A: usize>(
    iommu: &'a Option<Iommu<'m, D, N, A>>,
    d: DomainRef,
) -> Option<&'a DomainSlot<'m, N>> {
    if !crate::parts::IOMMU {
        return None;
    }
    iommu.as_ref()?.domains.get(d.index as usize)?.as_ref()
}

/// [`DmaLayer::domain_info`] out of line: the set-up result of `d`'s slot, if it is set up.
#[inline(never)]
fn info_of<'a, const D: usize, const N: usize, const A: usize>(
    iommu: &'a Option<Iommu<'_, D, N, A>>,
    d: DomainRef,
) -> Option<&'a DomainInfo<N>> {
    slot_of(iommu, d)?.info(d.generation)
}

impl<'m, P: Platform + ?Sized, const POOLS: usize, const DOMAINS: usize, const AREAS: usize>
    DmaLayer<'m, P, POOLS, DOMAINS, AREAS>
{
    /// [`Self::slot`] for a cold path (one out-of-line copy).
    #[inline(always)]
    pub(crate) fn slot_cold(&self, d: DomainRef) -> Option<&DomainSlot<'m, POOLS>> {
        slot_of(&self.iommu, d)
    }

    /// [`Self::domain_info`] for a cold path (one out-of-line copy).
    #[inline(always)]
    pub(crate) fn domain_info_cold(&self, d: DomainRef) -> Option<&DomainInfo<POOLS>> {
        info_of(&self.iommu, d)
    }
}

/// The rest of [`DmaLayer::attached_or_deferred`] once `dev`'s slot is found: its set-up result,
/// or the slot and reference when the device is deferred and sets it up now (`Err`).
#[inline(always)]
#[allow(clippy::type_complexity)]
pub(crate) fn info_or_deferred<'s, 'm, const N: usize>(
    slot: &'s DomainSlot<'m, N>,
    d: DomainRef,
    dev: &Device,
) -> Result<Result<&'s DomainInfo<N>, (&'s DomainSlot<'m, N>, DomainRef)>, DmaError> {
    if let Some(info) = slot.info(d.generation) {
        return Ok(Ok(info));
    }
    if slot.state.load(Ordering::Acquire) == DETACHING {
        return Err(DmaError::DetachIncomplete);
    }
    if !dev.config.deferred_attach {
        return Err(DmaError::NotAttached);
    }
    Ok(Err((slot, d)))
}
