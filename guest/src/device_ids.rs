//! The ids of the layer's attached devices: no two live [`crate::Device`]s share an id.
//!
//! The platform knows a device by its id alone (its IOMMU window, its TDISP acceptance), so two
//! attachments of one id would share what the platform grants one of them: an untrusted second
//! attachment of an accepted device's id would reach what the platform lets that id reach. Attach
//! registers the id and refuses one already registered; a completed detach releases it. A device
//! dropped without detach keeps its id (as it keeps its IOMMU domain): it is leaked, not ended.
//!
//! Fixed capacity ([`MAX_DEVICES`]), no allocator; attach and detach only, never the map path.

use spin::Mutex;

use crate::error::DmaError;

/// Devices one layer can have attached at once.
pub const MAX_DEVICES: usize = 64;

pub(crate) struct DeviceIds {
    table: Mutex<IdTable>,
}

struct IdTable {
    ids: [u32; MAX_DEVICES],
    /// Bit `i` set: `ids[i]` is attached.
    used: u64,
}

impl DeviceIds {
    pub(crate) const fn new() -> Self {
        DeviceIds { table: Mutex::new(IdTable { ids: [0; MAX_DEVICES], used: 0 }) }
    }

    /// Register `id`; refused when it is attached already or the table is full.
    pub(crate) fn register(&self, id: u32) -> Result<(), DmaError> {
        let mut t = self.table.lock();
        let mut free = None;
        for (i, &known) in t.ids.iter().enumerate() {
            if t.used & (1 << i) == 0 {
                free = free.or(Some(i));
            } else if known == id {
                return Err(DmaError::DeviceIdInUse(id));
            }
        }
        let i = free.ok_or(DmaError::TooManyDevices { max: MAX_DEVICES })?;
        if let Some(slot) = t.ids.get_mut(i) {
            *slot = id;
        }
        t.used |= 1 << i;
        Ok(())
    }

    /// Release `id` (a completed detach, or an attach that failed after registering).
    pub(crate) fn release(&self, id: u32) {
        let mut t = self.table.lock();
        let used = t.used;
        if let Some(i) = t.ids.iter().enumerate().position(|(i, &known)| used & (1 << i) != 0 && known == id)
        {
            t.used &= !(1 << i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_released() {
        let ids = DeviceIds::new();
        ids.register(5).unwrap();
        assert_eq!(ids.register(5), Err(DmaError::DeviceIdInUse(5)));
        ids.register(0).unwrap();
        ids.release(5);
        ids.register(5).unwrap();
        for id in 100..100 + MAX_DEVICES as u32 - 2 {
            ids.register(id).unwrap();
        }
        assert_eq!(ids.register(7), Err(DmaError::TooManyDevices { max: MAX_DEVICES }));
        ids.release(100);
        ids.register(7).unwrap();
    }
}
