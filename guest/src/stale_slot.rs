//! What a bounce slot holds when a to-device mapping skips the CPU copy (`SKIP_CPU_SYNC`): until the
//! driver's `sync_for_device`, the device reads whatever is in the slot (issue 21).
//!
//! In a confidential guest every pool is shared with the host from the moment it is added: what an
//! earlier mapping left in a slot was readable by the hypervisor (and so by any device it lets
//! through) all along. Zeroing the slot hides nothing the threat model covers and costs a memset of
//! the mapping per map, so by default it is skipped there ([`StaleSlotPolicy::Leave`]). In a guest
//! whose pools are private (no memory encryption: bouncing only for a device's DMA mask) an earlier
//! mapping's bytes are private data another device should not see, so the default zero-fills
//! ([`StaleSlotPolicy::ZeroFill`]). [`crate::DmaLayer::set_stale_slot_policy`] overrides the default.
//!
//! The policy covers to-device slots only. A slot the device may write (from-device, bidirectional)
//! is always initialised (zeroes, or the original on request: DESIGN.md), since it is copied to the
//! guest's buffer later and stale pool bytes must never reach the guest. Strict IOMMU mappings zero
//! the padding around the data whatever the policy.
//!
//! ```
//! use ccdma::{DmaLayer, StaleSlotPolicy};
//! # use ccdma_hv_model::{HvConfig, Hypervisor};
//! # let hv: &'static Hypervisor = Box::leak(Box::new(Hypervisor::new(HvConfig::pseries(1 << 30))));
//! let mut layer = DmaLayer::new(hv); // a confidential guest
//! assert_eq!(layer.stale_slot_policy(), StaleSlotPolicy::Leave);
//! layer.set_stale_slot_policy(StaleSlotPolicy::ZeroFill); // pay the memset anyway
//! assert_eq!(layer.stale_slot_policy(), StaleSlotPolicy::ZeroFill);
//! ```

/// What a to-device bounce slot mapped with `SKIP_CPU_SYNC` holds until `sync_for_device` (see the
/// module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StaleSlotPolicy {
    /// Zero the slot at map: the device reads zeroes, never an earlier mapping's bytes. The default
    /// in a guest that is not confidential (its pools are private memory).
    ZeroFill,
    /// Leave the slot as its last mapping left it: no memset per map. The default in a confidential
    /// guest, whose pools the host can read anyway.
    Leave,
}
