//! Interrupts masked for the length of one ccdma call (the contract in the crate docs).
//!
//! Every call that can take a lock opens with `let _masked = self.masked();`: the platform's
//! [`Platform::mask_interrupts`] runs now and [`Platform::restore_interrupts`] when the guard drops,
//! on every return path. With the default (empty) hooks both calls inline to nothing.

use crate::layer::Cold;
use crate::layer::DmaLayer;
use crate::platform::{InterruptState, Platform};

/// Interrupts masked on this CPU until dropped.
pub(crate) struct Masked<'a, P: Platform + ?Sized> {
    platform: &'a P,
    saved: InterruptState,
}

impl<P: Platform + ?Sized> Drop for Masked<'_, P> {
    #[inline(always)]
    fn drop(&mut self) {
        self.platform.restore_interrupts(self.saved);
    }
}

impl<P: Platform, const POOLS: usize, const DOMAINS: usize, const AREAS: usize>
    DmaLayer<'_, P, POOLS, DOMAINS, AREAS>
{
    /// Mask interrupts until the guard drops.
    #[inline(always)]
    pub(crate) fn masked(&self) -> Masked<'_, P> {
        Masked { platform: &self.platform, saved: self.platform.mask_interrupts() }
    }
}

impl<'a, const POOLS: usize, const DOMAINS: usize, const AREAS: usize> Cold<'a, '_, POOLS, DOMAINS, AREAS> {
    /// Mask interrupts until the guard drops (the platform's hooks, called through `dyn`).
    #[inline(always)]
    pub(crate) fn masked(&self) -> Masked<'_, dyn Platform + 'a> {
        Masked { platform: &self.platform, saved: self.platform.mask_interrupts() }
    }
}
