//! The guest's own record of a live mapping: which pool holds a bus address for a device, and the
//! checks a caller's claim on a mapping must pass (device, face, size, direction).

use core::sync::atomic::Ordering;

use crate::addr::BusAddr;
use crate::device::Device;
use crate::direction::DmaDirection;
use crate::error::DmaError;
use crate::growth::live::LivePools;
use crate::layer::DmaLayer;
use crate::path::DmaPath;
use crate::platform::Platform;
use crate::pool::SlotRecord;
use crate::pool_set::{PoolOrder, MAX_POOLS};
use crate::stats::FailureKind;

impl<'m, P: Platform + ?Sized, const POOLS: usize, const DOMAINS: usize, const AREAS: usize>
    DmaLayer<'m, P, POOLS, DOMAINS, AREAS>
{
    /// Find the pool holding bus address `bus` for this device and the pool offset.
    /// A binary search over the device's pools sorted by bus address.
    pub(crate) fn locate(&self, dev: &Device, bus: BusAddr) -> Option<(usize, u64)> {
        self.live_pools(dev)?.find(bus.0)
    }

    /// The pools a device maps from now, best first, and where each starts on its bus (per device
    /// when the pools are premapped into its IOMMU window). Reserve pools are in it only while a pool
    /// is being added, or always for lookups (`for_alloc` false). `None` for a domain that is not set
    /// up (never attached).
    pub(crate) fn pool_view(
        &self,
        dev: &Device,
        for_alloc: bool,
    ) -> Option<(PoolOrder, [BusAddr; MAX_POOLS])> {
        let reserve = !for_alloc || self.growth.growing.load(Ordering::Relaxed);
        match dev.domain {
            None => Some(self.plain.order_for(Some(dev.config.dma_mask), reserve)),
            Some(d) => {
                self.domain_info(d)?;
                Some(self.slot(d)?.live.order_for(None, reserve))
            }
        }
    }

    /// The live pool set a device's bus addresses are looked up in.
    pub(crate) fn live_pools(&self, dev: &Device) -> Option<&LivePools<POOLS>> {
        match dev.domain {
            None => Some(&self.plain),
            Some(d) => {
                self.domain_info(d)?;
                Some(&self.slot(d)?.live)
            }
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
                let pool = self.pools.get(i).ok_or(DmaError::UnknownMapping(bus))?;
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
