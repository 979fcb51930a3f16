//! The layer's face of the raw records ([`super::raw_records`]): lending storage, and the record
//! each raw map on a path without pool slots takes and each raw unmap checks. Apart from that
//! module so the layer can hold the records without an import cycle.

use super::raw_records::*;
use crate::addr::BusAddr;
use crate::device::Device;
use crate::direction::DmaDirection;
use crate::error::DmaError;
use crate::stats::FailureKind;

impl<'m, P: crate::platform::Platform, const POOLS: usize, const DOMAINS: usize, const AREAS: usize>
    crate::layer::DmaLayer<'m, P, POOLS, DOMAINS, AREAS>
{
    /// Lend the layer storage for more raw-face mappings on paths without pool slots (direct,
    /// bounce-above-mask's direct part, trusted devices) than the [`RAW_RECORDS_PER_POOL`] per pool
    /// slot it holds itself ([`RAW_RECORDS`] in the default layer).
    /// Each record is 24 bytes; a raw map there fails with [`DmaError::RawRecordsFull`] when all are
    /// in use. Lending again replaces the storage lent before, refused (the new storage handed back
    /// in the error) while a record in it is live.
    pub fn add_raw_records(
        &mut self,
        storage: &'m mut [RawRecord],
    ) -> Result<(), crate::error::Refused<&'m mut [RawRecord]>> {
        let in_use = self.raw.in_use() as u64;
        self.raw
            .lend(storage)
            .map_err(|value| crate::error::Refused { value, error: DmaError::Busy { live: in_use } })
    }

    /// Raw records the layer has (inline and lent), and how many are in use now.
    pub fn raw_records(&self) -> (usize, usize) {
        (self.raw.capacity(), self.raw.in_use())
    }
}

impl<P: crate::platform::Platform, const POOLS: usize, const DOMAINS: usize, const AREAS: usize>
    crate::layer::DmaLayer<'_, P, POOLS, DOMAINS, AREAS>
{
    /// Count a refused claim by its kind.
    fn raw_refused(&self, e: DmaError) -> DmaError {
        let kind = match e {
            DmaError::UnknownMapping(_) => FailureKind::UnknownMapping,
            DmaError::OutOfRange { .. } => FailureKind::OutOfRange,
            DmaError::RawRecordsFull { .. } => FailureKind::PoolExhausted,
            _ => FailureKind::Mismatch,
        };
        self.stats.fail(kind);
        e
    }

    /// A mapping whose bus address is the buffer's own (direct paths): recorded when the raw face
    /// made it (`safe` false), then counted.
    pub(crate) fn direct_mapped(
        &self,
        dev: &Device,
        safe: bool,
        bus: BusAddr,
        len: usize,
        dir: DmaDirection,
    ) -> Result<BusAddr, DmaError> {
        if !safe {
            let t = self.raw.reserve().map_err(|e| self.raw_refused(e))?;
            self.raw.fill(t, dev, bus, len, dir);
        }
        self.stats.mapped(false);
        Ok(bus)
    }

    /// Reserve a record for a raw map about to happen on a path without slots (`None` for the safe face).
    pub(crate) fn raw_reserve(&self, safe: bool) -> Result<Option<Ticket>, DmaError> {
        if safe {
            return Ok(None);
        }
        self.raw.reserve().map(Some).map_err(|e| self.raw_refused(e))
    }

    /// End a raw direct mapping: the claim must match its record exactly; nothing changes otherwise.
    pub(crate) fn raw_direct_unmap(
        &self,
        dev: &Device,
        bus: BusAddr,
        len: usize,
        dir: DmaDirection,
    ) -> Result<(), DmaError> {
        let t = self.raw.check(dev, bus, len, dir, true).map_err(|e| self.raw_refused(e))?;
        self.raw.free(t);
        Ok(())
    }

    /// Check a raw sync's claim on a recorded mapping: its device, exact address and direction, and
    /// `[offset, offset + len)` inside it.
    pub(crate) fn raw_sync_check(
        &self,
        dev: &Device,
        bus: BusAddr,
        offset: usize,
        len: usize,
        dir: DmaDirection,
    ) -> Result<(), DmaError> {
        let t = self.raw.check(dev, bus, len, dir, false).map_err(|e| self.raw_refused(e))?;
        let mapped = self.raw.len_of(t);
        if offset.checked_add(len).is_none_or(|end| end > mapped) {
            return Err(self.raw_refused(DmaError::OutOfRange { offset, mapped }));
        }
        Ok(())
    }
}
