//! The guest's own record of a live mapping: which pool holds a bus address for a device, and the
//! checks a caller's claim on a mapping must pass (device, face, size, direction).

use crate::addr::BusAddr;
use crate::device::Device;
use crate::direction::DmaDirection;
use crate::error::DmaError;
use crate::layer::DmaLayer;
use crate::path::DmaPath;
use crate::platform::Platform;
use crate::pool::SlotRecord;
use crate::pool_set::{PoolOrder, MAX_POOLS};
use crate::stats::FailureKind;

impl<'m, P: Platform> DmaLayer<'m, P> {
    /// Find the pool holding bus address `bus` for this device and the pool offset.
    pub(crate) fn locate(&self, dev: &Device, bus: BusAddr) -> Option<(usize, u64)> {
        let (order, bases) = self.pool_view(dev)?;
        order.iter().find_map(|i| {
            let pool = self.pools[i].as_ref()?;
            let off = bus.0.checked_sub(bases[i].0)?;
            (off < pool.len() as u64).then_some((i, off))
        })
    }

    /// The pools a device maps from and where each starts on its bus (per device when the pools are
    /// premapped into its IOMMU window). `None` for a domain that is not set up (never attached).
    pub(crate) fn pool_view<'a>(
        &'a self,
        dev: &'a Device,
    ) -> Option<(&'a PoolOrder, &'a [BusAddr; MAX_POOLS])> {
        match dev.domain {
            None => Some((&dev.pools, &self.pool_bus)),
            Some(d) => self.domain_info(d).map(|i| (&i.pools, &i.pool_bus)),
        }
    }

    /// Find the live mapping at `bus`, optionally claiming it for release.
    pub(crate) fn record(
        &self,
        dev: &Device,
        bus: BusAddr,
        release: bool,
    ) -> Result<Option<(usize, SlotRecord)>, DmaError> {
        match self.locate(dev, bus) {
            Some((i, off)) => {
                let pool = self.pools[i].as_ref().ok_or(DmaError::UnknownMapping(bus))?;
                match pool.lookup(off, release) {
                    Some(rec) => Ok(Some((i, rec))),
                    None => {
                        self.stats.fail(FailureKind::UnknownMapping);
                        Err(DmaError::UnknownMapping(bus))
                    }
                }
            }
            // Not in any pool: a direct mapping on a path that has them (nothing to undo), else junk.
            None if matches!(dev.path, DmaPath::Direct | DmaPath::BounceAboveMask)
                || dev.direct_private() =>
            {
                Ok(None)
            }
            None => {
                self.stats.fail(FailureKind::UnknownMapping);
                Err(DmaError::UnknownMapping(bus))
            }
        }
    }

    /// The mapping belongs to `dev` and to the caller's face (the raw face never touches what a
    /// `Mapping` owns).
    pub(crate) fn check_owner(
        &self,
        dev: &Device,
        bus: BusAddr,
        safe: bool,
        rec: &SlotRecord,
    ) -> Result<(), DmaError> {
        if rec.owner.device != dev.serial {
            self.stats.fail(FailureKind::Mismatch);
            return Err(DmaError::WrongDevice { owner: rec.owner.device, given: dev.serial });
        }
        if rec.owner.safe != safe {
            self.stats.fail(FailureKind::Mismatch);
            return Err(DmaError::OwnedByMapping(bus));
        }
        Ok(())
    }

    /// Check a caller's claim on a mapping against the guest's record: its device, its face (the raw
    /// face never touches what a `Mapping` owns), then size and direction.
    pub(crate) fn check_record(
        &self,
        dev: &Device,
        bus: BusAddr,
        safe: bool,
        rec: &SlotRecord,
        len: usize,
        dir: DmaDirection,
    ) -> Result<(), DmaError> {
        self.check_owner(dev, bus, safe, rec)?;
        if rec.len != len {
            self.stats.fail(FailureKind::Mismatch);
            return Err(DmaError::SizeMismatch { mapped: rec.len, given: len });
        }
        if rec.dir != dir {
            self.stats.fail(FailureKind::Mismatch);
            return Err(DmaError::DirectionMismatch { mapped: rec.dir, given: dir });
        }
        Ok(())
    }
}
