//! The ids of the layer's attached devices: no two live [`crate::Device`]s share an id.
//!
//! The platform knows a device by its id alone (its IOMMU window, its TDISP acceptance), so two
//! attachments of one id would share what the platform grants one of them: an untrusted second
//! attachment of an accepted device's id would reach what the platform lets that id reach. Attach
//! registers the id and refuses one already registered; a completed detach releases it. A device
//! dropped without detach keeps its id (as it keeps its IOMMU domain): it is leaked, not ended.
//!
//! Fixed capacity ([`DEVICES_PER_POOL`] per pool slot of the layer's capacity: [`MAX_DEVICES`] in
//! the default layer, 8 in `DmaLayer<P, 1, 0>`), no allocator; attach and detach only, never the
//! map path.

use crate::cold_lock::ColdLock as Mutex;

use crate::error::DmaError;

/// Devices the default layer (`MAX_POOLS` pool slots) can have attached at once: the most any layer
/// can.
pub const MAX_DEVICES: usize = DEVICES_PER_POOL * crate::pool_set::MAX_POOLS;

/// Devices a layer can have attached at once per pool slot of its capacity (`POOLS`).
pub const DEVICES_PER_POOL: usize = 8;

const _: () = assert!(MAX_DEVICES <= u64::BITS as usize, "the used mask is a u64");

pub(crate) struct DeviceIds<const POOLS: usize> {
    table: Mutex<IdTable<POOLS>>,
}

struct IdTable<const POOLS: usize> {
    ids: [[u32; DEVICES_PER_POOL]; POOLS],
    /// Bit `i` set: id `i` (in `ids` flattened) is attached.
    used: u64,
}

impl<const POOLS: usize> DeviceIds<POOLS> {
    /// Devices this table holds.
    const CAPACITY: usize = DEVICES_PER_POOL * POOLS;

    pub(crate) const fn new() -> Self {
        const { assert!(POOLS <= crate::pool_set::MAX_POOLS, "a layer holds at most MAX_POOLS pools") };
        DeviceIds { table: Mutex::new(IdTable { ids: [[0; DEVICES_PER_POOL]; POOLS], used: 0 }) }
    }

    /// Register `id`; refused when it is attached already or the table is full.
    pub(crate) fn register(&self, id: u32) -> Result<(), DmaError> {
        let mut t = self.table.lock();
        let mut free = None;
        for (i, &known) in t.ids.as_flattened().iter().enumerate() {
            if t.used & (1 << i) == 0 {
                free = free.or(Some(i));
            } else if known == id {
                return Err(DmaError::DeviceIdInUse(id));
            }
        }
        let i = free.ok_or(DmaError::TooManyDevices { max: Self::CAPACITY })?;
        if let Some(slot) = t.ids.as_flattened_mut().get_mut(i) {
            *slot = id;
        }
        t.used |= 1 << i;
        Ok(())
    }

    /// Release `id` (a completed detach, or an attach that failed after registering).
    pub(crate) fn release(&self, id: u32) {
        let mut t = self.table.lock();
        let used = t.used;
        if let Some(i) = t
            .ids
            .as_flattened()
            .iter()
            .enumerate()
            .position(|(i, &known)| used & (1 << i) != 0 && known == id)
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
        let ids = DeviceIds::<{ crate::pool_set::MAX_POOLS }>::new();
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

    #[test]
    fn one_pool_slot_holds_eight() {
        let ids = DeviceIds::<1>::new();
        for id in 0..DEVICES_PER_POOL as u32 {
            ids.register(id).unwrap();
        }
        assert_eq!(ids.register(99), Err(DmaError::TooManyDevices { max: DEVICES_PER_POOL }));
        ids.release(3);
        ids.register(99).unwrap();
    }
}
