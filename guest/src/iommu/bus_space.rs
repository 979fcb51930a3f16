//! A bus-address allocator for one device's windows, without an allocator: a sorted array of the
//! ranges in use, in caller-provided storage.
//!
//! Every range is its own entry and is never merged with a neighbour, so freeing frees exactly what was
//! allocated and nothing of a reservation next to it. Reserved ranges (MSI doorbells, host-bridge
//! windows, firmware) are entries too: allocation skips them like any other used range, and a
//! reservation added at run time is refused if a live range overlaps it.
//!
//! ```
//! use ccdma::iommu::bus_space::BusSpace;
//! use ccdma::iommu::{BusRange, IommuError, RangeKind};
//!
//! let mut storage = [BusRange::EMPTY; 8];
//! let mut space = BusSpace::new(&mut storage);
//! space.reserve(0, 0x1000)?; // bus page 0: never handed out
//! space.reserve(0xFEE0_0000, 0x10_0000)?; // an MSI doorbell
//! // Two pages, 4 KiB aligned, below 4 GiB, for a coherent buffer at phys 0x1234_5000.
//! let bus = space.alloc(0x2000, 0x1000, 0, 0, 1 << 32, RangeKind::Coherent, 0x1234_5000)?;
//! assert_eq!(bus, 0x1000); // first fit above the reservation
//! assert_eq!(space.find(bus + 0x1800).map(|r| r.kind), Some(RangeKind::Coherent));
//! // A reservation over a live range is refused and changes nothing.
//! assert_eq!(space.reserve(0x2000, 0x1000), Err(IommuError::ReservationConflict));
//! assert!(space.free(bus, 0x2000, RangeKind::Coherent).is_some());
//! assert_eq!(space.live(), 0); // reservations are not live ranges
//! # Ok::<(), IommuError>(())
//! ```

use crate::error::IommuError;

/// What a used bus range holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RangeKind {
    /// Never handed out.
    Reserved,
    /// Pool `pool` entered once into the window (premapped policy).
    Premap {
        /// Index of the pool in the layer.
        pool: u8,
    },
    /// One streaming mapping (strict policy).
    Mapping,
    /// One coherent buffer.
    Coherent,
    /// One scatter-gather list: its bounce runs (strict policy) and host-bridge P2P ranges, with
    /// unmapped holes between them where alignment asked for them.
    SgList,
    /// Entries that could not be cleared: the range stays used forever so it is never reused.
    Quarantined,
    /// One streaming mapping of an accepted device: entries naming the caller's private pages
    /// themselves (the whole IOMMU pages around the buffer), with the direction's permission.
    Private,
}

/// One used range of bus addresses and the guest's record of what it maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BusRange {
    /// First bus address.
    pub start: u64,
    /// Bytes (whole IOMMU pages for mappings).
    pub len: u64,
    /// What it holds.
    pub kind: RangeKind,
    /// Guest physical address of the first IOMMU page it maps (0 for reservations).
    pub phys: u64,
}

impl BusRange {
    /// An unused entry, for initialising storage (`[BusRange::EMPTY; N]`).
    pub const EMPTY: BusRange = BusRange { start: 0, len: 0, kind: RangeKind::Reserved, phys: 0 };

    /// One past the last byte.
    pub const fn end(&self) -> u64 {
        self.start + self.len
    }
    /// True when `[start, start + len)` overlaps this range.
    pub const fn overlaps(&self, start: u64, len: u64) -> bool {
        start < self.end() && self.start < start + len
    }
}

impl Default for BusRange {
    fn default() -> Self {
        BusRange::EMPTY
    }
}

/// The used ranges of one device's bus space, sorted by start, never overlapping.
pub struct BusSpace<'m> {
    ranges: &'m mut [BusRange],
    used: usize,
    /// Where the next search starts (next fit: recently freed addresses are not reused at once, so a
    /// late device access to a just-unmapped address meets an empty entry rather than new data).
    hint: u64,
}

impl<'m> BusSpace<'m> {
    /// An empty space over `storage` (its length bounds the ranges live at once, reservations
    /// included).
    pub fn new(storage: &'m mut [BusRange]) -> BusSpace<'m> {
        BusSpace { ranges: storage, used: 0, hint: 0 }
    }

    /// Ranges the storage holds at most.
    pub fn capacity(&self) -> usize {
        self.ranges.len()
    }

    /// The used ranges, sorted by start.
    pub fn ranges(&self) -> &[BusRange] {
        // `used` never exceeds the storage; the `min` says so to the compiler, which then drops the
        // failure branch at each of this call's inlined sites (a compare and a move, no jump).
        self.ranges.get(..self.used.min(self.ranges.len())).unwrap_or(&[])
    }

    /// Used ranges that are not reservations or quarantined (what must be gone at detach).
    pub fn live(&self) -> usize {
        self.ranges()
            .iter()
            .filter(|r| !matches!(r.kind, RangeKind::Reserved | RangeKind::Quarantined))
            .count()
    }

    /// Forget every range (the domain is being torn down).
    pub fn clear(&mut self) {
        self.used = 0;
        self.hint = 0;
    }

    /// Index of the first range that ends after `addr`.
    fn first_ending_after(&self, addr: u64) -> usize {
        self.ranges().partition_point(|r| r.end() <= addr)
    }

    fn insert_at(&mut self, i: usize, r: BusRange) -> Result<(), IommuError> {
        // Checked access: `i <= used < len` always holds here, but the compiler cannot see it.
        let Some(tail) = self.ranges.get_mut(i..=self.used) else {
            return Err(IommuError::BusSpaceExhausted);
        };
        // Shift right by one (the last entry is unused), `r` into the first: no panic path.
        let mut carry = r;
        for slot in tail.iter_mut() {
            carry = core::mem::replace(slot, carry);
        }
        self.used += 1;
        Ok(())
    }

    fn remove_at(&mut self, i: usize) {
        // Checked access: `i < used` always holds here, but the compiler cannot see it.
        if let Some(tail) = self.ranges.get_mut(i..self.used) {
            // Shift left by one over the removed entry: no panic path.
            let mut carry = BusRange::EMPTY;
            for slot in tail.iter_mut().rev() {
                carry = core::mem::replace(slot, carry);
            }
            self.used -= 1;
        }
    }

    /// Reserve `[start, start + len)`: it is never handed out. Overlapping reservations merge; a
    /// reservation overlapping anything live fails with [`IommuError::ReservationConflict`] and
    /// changes nothing.
    pub fn reserve(&mut self, start: u64, len: u64) -> Result<(), IommuError> {
        if len == 0 {
            return Ok(());
        }
        let end = start.checked_add(len).ok_or(IommuError::ReservationConflict)?;
        let first = self.first_ending_after(start);
        let mut last = first;
        let (mut lo, mut hi) = (start, end);
        while let Some(&r) = self.ranges().get(last).filter(|r| r.start < end) {
            if r.kind != RangeKind::Reserved {
                return Err(IommuError::ReservationConflict);
            }
            lo = lo.min(r.start);
            hi = hi.max(r.end());
            last += 1;
        }
        let merged = BusRange { start: lo, len: hi - lo, kind: RangeKind::Reserved, phys: 0 };
        if let Some(slot) = self.ranges.get_mut(first).filter(|_| last > first) {
            // Replace the overlapped reservations by their union (no slot needed).
            *slot = merged;
            for _ in first + 1..last {
                self.remove_at(first + 1);
            }
            Ok(())
        } else {
            self.insert_at(first, merged)
        }
    }

    /// Would [`Self::reserve`] succeed? (Checks overlap with live ranges and room for one more entry.)
    pub fn check_reserve(&self, start: u64, len: u64) -> Result<(), IommuError> {
        let end = start.checked_add(len).ok_or(IommuError::ReservationConflict)?;
        let first = self.first_ending_after(start);
        let overlapping = self.ranges().get(first..).unwrap_or(&[]).iter().take_while(|r| r.start < end);
        if overlapping.clone().any(|r| r.kind != RangeKind::Reserved) {
            return Err(IommuError::ReservationConflict);
        }
        if overlapping.count() == 0 && self.used == self.ranges.len() {
            return Err(IommuError::BusSpaceExhausted);
        }
        Ok(())
    }

    /// Allocate `len` bytes inside `[lo, hi)` at an address `a` with `a % align == phase` (`align` a
    /// power of two), recording `kind` and `phys`. Next fit from the last allocation, wrapping once.
    #[allow(clippy::too_many_arguments)]
    pub fn alloc(
        &mut self,
        len: u64,
        align: u64,
        phase: u64,
        lo: u64,
        hi: u64,
        kind: RangeKind,
        phys: u64,
    ) -> Result<u64, IommuError> {
        if len == 0 || !align.is_power_of_two() || phase >= align || lo >= hi {
            return Err(IommuError::BusSpaceExhausted);
        }
        let from = if self.hint > lo && self.hint < hi { self.hint } else { lo };
        let found = match self.find_gap(len, align, phase, from, hi) {
            Some(a) => Some(a),
            None if from > lo => self.find_gap(len, align, phase, lo, hi),
            None => None,
        };
        let start = found.ok_or(IommuError::BusSpaceExhausted)?;
        let i = self.first_ending_after(start);
        self.insert_at(i, BusRange { start, len, kind, phys })?;
        self.hint = start + len;
        Ok(start)
    }

    /// The first `a >= from` with `a % align == phase` such that `[a, a + len)` is free and below `hi`.
    fn find_gap(&self, len: u64, align: u64, phase: u64, from: u64, hi: u64) -> Option<u64> {
        let place = |g: u64| -> Option<u64> {
            let base = g & !(align - 1);
            let a = base.checked_add(phase)?;
            if a >= g {
                Some(a)
            } else {
                a.checked_add(align)
            }
        };
        let mut gap = from;
        for r in self.ranges().get(self.first_ending_after(from)..).unwrap_or(&[]) {
            let gap_end = r.start.min(hi);
            if let Some(a) = place(gap) {
                if a.checked_add(len).is_some_and(|e| e <= gap_end) {
                    return Some(a);
                }
            }
            gap = gap.max(r.end());
            if gap >= hi {
                return None;
            }
        }
        let a = place(gap)?;
        a.checked_add(len).is_some_and(|e| e <= hi).then_some(a)
    }

    /// True when `len` bytes aligned to `align` are free somewhere in `[lo, hi)`.
    pub fn has_room(&self, len: u64, align: u64, lo: u64, hi: u64) -> bool {
        len > 0 && align.is_power_of_two() && lo < hi && self.find_gap(len, align, 0, lo, hi).is_some()
    }

    /// The used range containing `bus`.
    pub fn find(&self, bus: u64) -> Option<BusRange> {
        let i = self.first_ending_after(bus);
        self.ranges().get(i).filter(|r| r.start <= bus).copied()
    }

    /// Free exactly the range starting at `start` of `len` bytes and kind `kind`; anything else (a
    /// reservation, a range of another size, nothing) is refused and changes nothing.
    pub fn free(&mut self, start: u64, len: u64, kind: RangeKind) -> Option<BusRange> {
        let i = self.first_ending_after(start);
        let r = *self.ranges().get(i)?;
        if r.start != start || r.len != len || r.kind != kind || kind == RangeKind::Reserved {
            return None;
        }
        self.remove_at(i);
        Some(r)
    }

    /// Mark the range starting at `start` quarantined: it stays used and is never freed.
    pub fn quarantine(&mut self, start: u64) {
        let i = self.first_ending_after(start);
        if let Some(r) = self.ranges.get_mut(i).filter(|r| r.start == start) {
            r.kind = RangeKind::Quarantined;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn space(n: usize) -> BusSpace<'static> {
        extern crate std;
        BusSpace::new(std::vec![BusRange::EMPTY; n].leak())
    }

    #[test]
    fn alloc_skips_reservations_and_frees_exactly() {
        let mut s = space(16);
        s.reserve(0x1000, 0x1000).unwrap();
        let a = s.alloc(0x2000, 0x1000, 0, 0, 0x10000, RangeKind::Mapping, 7).unwrap();
        assert!(a >= 0x2000 || a + 0x2000 <= 0x1000, "overlaps reservation: {a:#x}");
        assert_eq!(s.find(a + 5).unwrap().phys, 7);
        // A free of the wrong size or of the reservation changes nothing.
        assert!(s.free(a, 0x1000, RangeKind::Mapping).is_none());
        assert!(s.free(0x1000, 0x1000, RangeKind::Reserved).is_none());
        assert!(s.free(a, 0x2000, RangeKind::Coherent).is_none());
        assert!(s.free(a, 0x2000, RangeKind::Mapping).is_some());
        assert_eq!(s.ranges().len(), 1);
        assert_eq!(s.ranges()[0].kind, RangeKind::Reserved);
    }

    #[test]
    fn reservation_conflicts_with_live_ranges_and_merges_with_reservations() {
        let mut s = space(16);
        let a = s.alloc(0x1000, 0x1000, 0, 0x4000, 0x8000, RangeKind::Mapping, 0).unwrap();
        assert_eq!(s.reserve(a, 1), Err(IommuError::ReservationConflict));
        s.reserve(0, 0x1000).unwrap();
        s.reserve(0x800, 0x1000).unwrap();
        s.reserve(0x2000, 0x100).unwrap();
        s.reserve(0x1000, 0x1000).unwrap();
        // Overlapping reservations merged; the adjacent one stays its own entry.
        assert_eq!(s.ranges()[0], BusRange { start: 0, len: 0x2000, kind: RangeKind::Reserved, phys: 0 });
        assert_eq!(s.ranges()[1].start, 0x2000);
        assert_eq!(s.ranges().len(), 3);
        assert_eq!(s.live(), 1);
    }

    #[test]
    fn alignment_phase_and_bounds() {
        let mut s = space(64);
        let a = s.alloc(0x1000, 0x10000, 0x3000, 0, 1 << 20, RangeKind::Mapping, 0).unwrap();
        assert_eq!(a % 0x10000, 0x3000);
        // Fill the space below 64 KiB with 4 KiB ranges, then it is exhausted.
        let mut s = space(64);
        for _ in 0..16 {
            s.alloc(0x1000, 0x1000, 0, 0, 0x10000, RangeKind::Mapping, 0).unwrap();
        }
        assert_eq!(
            s.alloc(0x1000, 0x1000, 0, 0, 0x10000, RangeKind::Mapping, 0),
            Err(IommuError::BusSpaceExhausted)
        );
        // Next fit wraps to a freed hole.
        s.free(0x5000, 0x1000, RangeKind::Mapping).unwrap();
        assert_eq!(s.alloc(0x1000, 0x1000, 0, 0, 0x10000, RangeKind::Mapping, 0), Ok(0x5000));
    }

    #[test]
    fn storage_full_is_an_error() {
        let mut s = space(2);
        s.reserve(0, 0x1000).unwrap();
        s.alloc(0x1000, 0x1000, 0, 0, 1 << 30, RangeKind::Mapping, 0).unwrap();
        assert_eq!(
            s.alloc(0x1000, 0x1000, 0, 0, 1 << 30, RangeKind::Mapping, 0),
            Err(IommuError::BusSpaceExhausted)
        );
        assert_eq!(s.reserve(1 << 20, 1), Err(IommuError::BusSpaceExhausted));
    }
}
