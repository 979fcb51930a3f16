//! The layer's stale-slot policy setting (the policy itself: [`crate::stale_slot`]). Apart from
//! that module so the layer can hold the policy without an import cycle.

use crate::direction::DmaDirection;
use crate::layer::DmaLayer;
use crate::platform::Platform;
use crate::stale_slot::StaleSlotPolicy;

impl<P: Platform + ?Sized, const POOLS: usize, const DOMAINS: usize, const AREAS: usize>
    DmaLayer<'_, P, POOLS, DOMAINS, AREAS>
{
    /// The layer's policy for to-device `SKIP_CPU_SYNC` slots: the one set with
    /// [`Self::set_stale_slot_policy`], else [`StaleSlotPolicy::Leave`] in a confidential guest and
    /// [`StaleSlotPolicy::ZeroFill`] otherwise.
    pub fn stale_slot_policy(&self) -> StaleSlotPolicy {
        self.stale_slots.unwrap_or(if self.platform.is_confidential() {
            StaleSlotPolicy::Leave
        } else {
            StaleSlotPolicy::ZeroFill
        })
    }

    /// Set the policy for to-device `SKIP_CPU_SYNC` slots (see [`crate::stale_slot`]).
    pub fn set_stale_slot_policy(&mut self, policy: StaleSlotPolicy) {
        self.stale_slots = Some(policy);
    }

    /// True when a slot just allocated for a `dir` mapping that skips the CPU copy is left as it was
    /// (to-device only: a slot the device may write is copied to the guest later).
    #[inline]
    pub(crate) fn leaves_stale_slot(&self, dir: DmaDirection) -> bool {
        dir == DmaDirection::ToDevice && self.stale_slot_policy() == StaleSlotPolicy::Leave
    }
}
