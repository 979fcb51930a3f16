//! A device's handle on its domain slot, in a file of its own: the device record holds one
//! (`device.rs`), and the domain table ([`super::domain`]) names the device's types in its cold
//! code table ([`super::domain::IommuCode`]), so the handle cannot live beside the slots without an
//! import cycle (`scripts/import-cycles.py`).

/// A device's handle on its domain slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct DomainRef {
    pub index: u8,
    pub generation: u32,
}
