//! The guest's record of raw-face mappings on the paths that have no pool slot to keep one: direct,
//! the direct part of bounce-above-mask, trusted-direct (the bus address is the buffer's own) and
//! trusted-IOMMU (entries naming the buffer's own pages). The raw face's claims at unmap and sync
//! (device, exact address, size, direction) are checked against it, as bounced mappings are
//! checked against their slot's record, so a wrong claim is an error that changes nothing.
//!
//! Fixed capacity, no allocator: [`RAW_RECORDS`] records in the default layer
//! ([`RAW_RECORDS_PER_POOL`] per pool slot: `DmaLayer<P, 1, 0>` holds 4), plus whatever storage the
//! caller lends with [`DmaLayer::add_raw_records`](crate::DmaLayer::add_raw_records). A raw map on
//! one of these paths when every record is in use fails with [`DmaError::RawRecordsFull`] and maps
//! nothing. Safe-face mappings ([`crate::Mapping`]) take no record (the `Mapping` is its own), and
//! bounced mappings keep theirs in the pool's slot metadata, so the table costs nothing on those
//! paths. A device dropped without detach keeps its raw records, as it keeps its live count.

use spin::Mutex;

use crate::addr::BusAddr;
use crate::device::Device;
use crate::direction::DmaDirection;
use crate::error::DmaError;

/// Raw-face mappings on record-less paths the default layer (`MAX_POOLS` pool slots) holds records
/// for without caller storage.
pub const RAW_RECORDS: usize = RAW_RECORDS_PER_POOL * crate::pool_set::MAX_POOLS;

/// Records a layer holds inline per pool slot of its capacity (`POOLS`): a smaller configuration
/// holds fewer, and lends more with [`DmaLayer::add_raw_records`](crate::DmaLayer::add_raw_records).
pub const RAW_RECORDS_PER_POOL: usize = 4;

/// One raw mapping on a path without pool slots (storage for
/// [`DmaLayer::add_raw_records`](crate::DmaLayer::add_raw_records): `[RawRecord::EMPTY; N]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawRecord {
    bus: u64,
    len: usize,
    serial: u32,
    dir: DmaDirection,
    state: State,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Free,
    /// Taken by a map in progress, or by an unmap in progress (not found by lookups).
    Claimed,
    Live,
}

impl RawRecord {
    /// An unused record.
    pub const EMPTY: RawRecord =
        RawRecord { bus: 0, len: 0, serial: 0, dir: DmaDirection::Bidirectional, state: State::Free };
}

impl Default for RawRecord {
    fn default() -> Self {
        RawRecord::EMPTY
    }
}

/// A record taken by [`RawRecords::reserve`] or [`RawRecords::claim`]: index into the layer's
/// records (inline first, then the lent storage).
#[derive(Clone, Copy, Debug)]
#[must_use]
pub(crate) struct Ticket(usize);

struct Table<'m, const POOLS: usize> {
    inline: [[RawRecord; RAW_RECORDS_PER_POOL]; POOLS],
    lent: &'m mut [RawRecord],
}

impl<const POOLS: usize> Table<'_, POOLS> {
    const INLINE: usize = RAW_RECORDS_PER_POOL * POOLS;
    /// Out of line: five callers each inlined the split between inline and lent records (minimal,
    /// full -48 B, firmware-minimal -64: `bash scripts/budgets.sh`, issue 20).
    #[inline(never)]
    fn get_mut(&mut self, i: usize) -> Option<&mut RawRecord> {
        match i.checked_sub(Self::INLINE) {
            None => self.inline.as_flattened_mut().get_mut(i),
            Some(j) => self.lent.get_mut(j),
        }
    }
    fn iter(&self) -> impl Iterator<Item = (usize, &RawRecord)> {
        self.inline.as_flattened().iter().chain(self.lent.iter()).enumerate()
    }
    fn capacity(&self) -> usize {
        Self::INLINE + self.lent.len()
    }
}

/// The layer's raw records: [`RAW_RECORDS_PER_POOL`] inline per pool slot (`POOLS`).
pub(crate) struct RawRecords<'m, const POOLS: usize> {
    table: Mutex<Table<'m, POOLS>>,
}

impl<'m, const POOLS: usize> RawRecords<'m, POOLS> {
    pub(crate) const fn new() -> Self {
        RawRecords {
            table: Mutex::new(Table {
                inline: [[RawRecord::EMPTY; RAW_RECORDS_PER_POOL]; POOLS],
                lent: &mut [],
            }),
        }
    }

    /// Lend more storage; what was lent before is kept if it holds live records (`Err` hands the new
    /// storage back untouched).
    pub(crate) fn lend(&self, storage: &'m mut [RawRecord]) -> Result<(), &'m mut [RawRecord]> {
        let mut t = self.table.lock();
        if t.lent.iter().any(|r| r.state != State::Free) {
            return Err(storage);
        }
        storage.fill(RawRecord::EMPTY);
        t.lent = storage;
        Ok(())
    }

    /// Records in all (inline and lent).
    pub(crate) fn capacity(&self) -> usize {
        self.table.lock().capacity()
    }

    /// Records in use.
    pub(crate) fn in_use(&self) -> usize {
        self.table.lock().iter().filter(|(_, r)| r.state != State::Free).count()
    }

    /// Take a free record for a map about to happen; [`DmaError::RawRecordsFull`] when none is.
    pub(crate) fn reserve(&self) -> Result<Ticket, DmaError> {
        let mut t = self.table.lock();
        let capacity = t.capacity();
        let i = t.iter().find(|(_, r)| r.state == State::Free).map(|(i, _)| i);
        match i.and_then(|i| Some((i, t.get_mut(i)?))) {
            Some((i, r)) => {
                r.state = State::Claimed;
                Ok(Ticket(i))
            }
            None => Err(DmaError::RawRecordsFull { capacity }),
        }
    }

    /// The map succeeded: record it.
    pub(crate) fn fill(&self, t: Ticket, dev: &Device, bus: BusAddr, len: usize, dir: DmaDirection) {
        if let Some(r) = self.table.lock().get_mut(t.0) {
            *r = RawRecord { bus: bus.0, len, serial: dev.serial, dir, state: State::Live };
        }
    }

    /// The map failed, or the unmap completed: the record is free again.
    pub(crate) fn free(&self, t: Ticket) {
        if let Some(r) = self.table.lock().get_mut(t.0) {
            *r = RawRecord::EMPTY;
        }
    }

    /// The unmap failed: the claimed record is live again.
    pub(crate) fn unclaim(&self, t: Ticket) {
        if let Some(r) = self.table.lock().get_mut(t.0) {
            r.state = State::Live;
        }
    }

    /// Check a claim on the raw mapping at `bus` (exact address, device, size, direction); when it
    /// holds and `claim` is set, take the record for an unmap (found by no one else until
    /// [`Self::free`] or [`Self::unclaim`]). Nothing changes when the claim fails.
    pub(crate) fn check(
        &self,
        dev: &Device,
        bus: BusAddr,
        len: usize,
        dir: DmaDirection,
        claim: bool,
    ) -> Result<Ticket, DmaError> {
        let mut t = self.table.lock();
        let mut best: Option<(usize, RawRecord)> = None;
        // Rank: an exact match, then this device's record at `bus`, then any record at `bus`.
        let rank = |r: &RawRecord| match (r.serial == dev.serial, r.len == len && r.dir == dir) {
            (true, true) => 3,
            (true, false) => 2,
            _ => 1,
        };
        for (i, r) in t.iter() {
            if r.state == State::Live && r.bus == bus.0 && best.is_none_or(|(_, b)| rank(r) > rank(&b)) {
                best = Some((i, *r));
            }
        }
        let (i, rec) = best.ok_or(DmaError::UnknownMapping(bus))?;
        if rec.serial != dev.serial {
            return Err(DmaError::WrongDevice { owner: rec.serial, given: dev.serial });
        }
        if rec.len != len && claim {
            return Err(DmaError::SizeMismatch { mapped: rec.len, given: len });
        }
        if rec.dir != dir {
            return Err(DmaError::DirectionMismatch { mapped: rec.dir, given: dir });
        }
        if claim {
            if let Some(r) = t.get_mut(i) {
                r.state = State::Claimed;
            }
        }
        Ok(Ticket(i))
    }

    /// The length of the raw mapping `check` found (for a sync's range check).
    pub(crate) fn len_of(&self, t: Ticket) -> usize {
        self.table.lock().iter().nth(t.0).map_or(0, |(_, r)| r.len)
    }

    /// True when a live raw record of `dev` starts in `[start, end)`.
    pub(crate) fn any_within(&self, dev: &Device, start: u64, end: u64) -> bool {
        self.table
            .lock()
            .iter()
            .any(|(_, r)| r.state != State::Free && r.serial == dev.serial && r.bus >= start && r.bus < end)
    }
}
