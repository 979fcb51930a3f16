//! Interrupts masked for the length of one ccdma call (the contract in the crate docs).
//!
//! Every call that can take a lock opens with `let _masked = self.masked();`: the platform's
//! [`Platform::mask_interrupts`] runs now and [`Platform::restore_interrupts`] when the guard drops,
//! on every return path. With the default (empty) hooks both calls inline to nothing.
//!
//! The map/unmap/sync entries (`DmaLayer::masked`) inline both hooks. The cold calls (attach,
//! detach, accept, coherent buffers, growth, reservations, scatter-gather lists: every [`Cold`]
//! entry) call two out-of-line, non-generic functions over `&dyn Platform` instead: one copy of each hook's call in the image, not one per call site.
//! Same contract: masked before the first lock, restored when the guard drops.

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

/// Interrupts masked on this CPU until dropped; both hooks called out of line (cold paths).
pub(crate) struct ColdMasked<'a> {
    platform: &'a dyn Platform,
    saved: InterruptState,
}

/// [`Platform::mask_interrupts`] through `dyn`: one copy for every cold call site.
#[inline(never)]
fn mask_dyn(platform: &dyn Platform) -> InterruptState {
    platform.mask_interrupts()
}

/// [`Platform::restore_interrupts`] through `dyn`: one copy for every cold call site.
#[inline(never)]
fn restore_dyn(platform: &dyn Platform, saved: InterruptState) {
    platform.restore_interrupts(saved)
}

impl<'a> ColdMasked<'a> {
    /// Mask interrupts until the guard drops.
    #[inline(always)]
    fn new(platform: &'a dyn Platform) -> Self {
        ColdMasked { platform, saved: mask_dyn(platform) }
    }
}

impl Drop for ColdMasked<'_> {
    #[inline(always)]
    fn drop(&mut self) {
        restore_dyn(self.platform, self.saved);
    }
}

impl<'a, const POOLS: usize, const DOMAINS: usize, const AREAS: usize> Cold<'a, '_, POOLS, DOMAINS, AREAS> {
    /// Mask interrupts until the guard drops (the platform's hooks, called through `dyn`, out of
    /// line).
    #[inline(always)]
    pub(crate) fn masked(&self) -> ColdMasked<'_> {
        ColdMasked::new(&self.platform)
    }
}
