//! The UEFI-independent half of the ccdma IOMMU driver: what an `EDKII_IOMMU_PROTOCOL` operation
//! means to ccdma, the tables of live mappings and coherent buffers, and the sharing ledger that
//! stands in for the host (there is no confidential hardware under QEMU/TCG). The driver
//! (`src/bin/ccdma-iommu.rs`) wires these to UEFI boot services; `cargo test` runs them on the host.
#![cfg_attr(not(test), no_std)]

use ccdma::DmaDirection;

/// `EDKII_IOMMU_OPERATION` as a plain number (`MdeModulePkg/Include/Protocol/IoMmu.h`).
pub mod op {
    /// The device reads host memory (32-bit device address).
    pub const BUS_MASTER_READ: u32 = 0;
    /// The device writes host memory (32-bit).
    pub const BUS_MASTER_WRITE: u32 = 1;
    /// Both, continuously, on a buffer from `AllocateBuffer` (32-bit).
    pub const BUS_MASTER_COMMON_BUFFER: u32 = 2;
    /// As `BUS_MASTER_READ`, any 64-bit device address.
    pub const BUS_MASTER_READ64: u32 = 3;
    /// As `BUS_MASTER_WRITE`, 64-bit.
    pub const BUS_MASTER_WRITE64: u32 = 4;
    /// As `BUS_MASTER_COMMON_BUFFER`, 64-bit.
    pub const BUS_MASTER_COMMON_BUFFER64: u32 = 5;
}

/// What one `Map` call asks of ccdma.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum MapKind {
    /// A streaming mapping: bounced through the pool in this direction.
    Stream(DmaDirection),
    /// A common buffer: must lie in a coherent buffer from `AllocateBuffer` (shared already).
    Common,
}

/// One operation: its kind and whether the PCI layer lets the device use 64-bit addresses.
/// PciBusDxe downgrades the 64-bit operations of a device without `DUAL_ADDRESS_CYCLE` and the
/// root bridge those of a bridge without DMA above 4 GiB, so the operation *is* the device's DMA
/// mask as the PCI layer knows it.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub struct Operation {
    /// Streaming or common.
    pub kind: MapKind,
    /// 64-bit device addresses allowed.
    pub wide: bool,
}

impl Operation {
    /// Decodes an `EDKII_IOMMU_OPERATION`; `None` for values outside the enum.
    pub fn decode(value: u32) -> Option<Operation> {
        let wide = value >= op::BUS_MASTER_READ64;
        let kind = match value % 3 {
            0 => MapKind::Stream(DmaDirection::ToDevice),
            1 => MapKind::Stream(DmaDirection::FromDevice),
            _ => MapKind::Common,
        };
        (value <= op::BUS_MASTER_COMMON_BUFFER64).then_some(Operation { kind, wide })
    }
}

/// `EDKII_IOMMU_ATTRIBUTE_*` bits `AllocateBuffer` accepts.
pub mod attr {
    /// Write-combined memory.
    pub const MEMORY_WRITE_COMBINE: u64 = 0x0080;
    /// Cached memory.
    pub const MEMORY_CACHED: u64 = 0x0800;
    /// The device can use 64-bit addresses.
    pub const DUAL_ADDRESS_CYCLE: u64 = 0x8000;
    /// Every legal bit.
    pub const VALID: u64 = MEMORY_WRITE_COMBINE | MEMORY_CACHED | DUAL_ADDRESS_CYCLE;
}

/// `EDKII_IOMMU_ACCESS_*` bits `SetAttribute` accepts.
pub const ACCESS_VALID: u64 = 0x1 | 0x2;

/// A fixed table of records addressed by a token (index + 1, never 0: 0 is `NULL` to UEFI).
pub struct Table<T, const N: usize> {
    slots: [Option<T>; N],
}

impl<T: Copy, const N: usize> Table<T, N> {
    /// An empty table.
    pub const fn new() -> Self {
        Table { slots: [None; N] }
    }

    /// Stores `value`; its token, or `None` when the table is full.
    pub fn insert(&mut self, value: T) -> Option<usize> {
        let i = self.slots.iter().position(Option::is_none)?;
        self.slots[i] = Some(value);
        Some(i + 1)
    }

    /// The record behind `token`.
    pub fn get(&self, token: usize) -> Option<&T> {
        self.slots.get(token.checked_sub(1)?)?.as_ref()
    }

    /// The record behind `token`, for update.
    pub fn get_mut(&mut self, token: usize) -> Option<&mut T> {
        self.slots.get_mut(token.checked_sub(1)?)?.as_mut()
    }

    /// Removes and returns the record behind `token`.
    pub fn take(&mut self, token: usize) -> Option<T> {
        self.slots.get_mut(token.checked_sub(1)?)?.take()
    }

    /// The first token whose record satisfies `f`.
    pub fn find(&self, mut f: impl FnMut(&T) -> bool) -> Option<usize> {
        self.slots.iter().position(|s| s.as_ref().is_some_and(&mut f)).map(|i| i + 1)
    }

    /// Live records.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.slots.iter().flatten()
    }

    /// Number of live records.
    pub fn len(&self) -> usize {
        self.iter().count()
    }

    /// No live record.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<T: Copy, const N: usize> Default for Table<T, N> {
    fn default() -> Self {
        Self::new()
    }
}

/// Bytes per page.
pub const PAGE: u64 = 4096;

/// A run of shared pages.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub struct SharedRun {
    /// First byte (page aligned).
    pub start: u64,
    /// Pages.
    pub pages: u64,
}

/// Why the ledger refused a call.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum LedgerError {
    /// A page of the range is shared already (share) or not shared (unshare); pages before it
    /// changed state.
    Inconsistent { pages_done: u64 },
    /// No room for another run.
    Full,
}

/// The host's view of which pages the guest shared: what the hypervisor would enforce on real
/// confidential hardware. Every address the driver gives a device is checked against it.
pub struct Ledger<const N: usize> {
    runs: Table<SharedRun, N>,
    /// Device addresses given outside shared memory.
    pub violations: u64,
    /// Pages shared now.
    pub shared_pages: u64,
    /// Share calls answered.
    pub shares: u64,
    /// Unshare calls answered.
    pub unshares: u64,
}

impl<const N: usize> Ledger<N> {
    /// Nothing shared.
    pub const fn new() -> Self {
        Ledger { runs: Table::new(), violations: 0, shared_pages: 0, shares: 0, unshares: 0 }
    }

    fn run_of(&self, page: u64) -> Option<usize> {
        self.runs.find(|r| page >= r.start && page - r.start < r.pages * PAGE)
    }

    /// Whether the page holding `addr` is shared.
    pub fn is_shared(&self, addr: u64) -> bool {
        self.run_of(addr & !(PAGE - 1)).is_some()
    }

    /// Makes `pages` pages at `start` shared. All must be private.
    pub fn share(&mut self, start: u64, pages: u64) -> Result<(), LedgerError> {
        let start = start & !(PAGE - 1);
        for i in 0..pages {
            if self.is_shared(start + i * PAGE) {
                return Err(LedgerError::Inconsistent { pages_done: 0 });
            }
        }
        self.runs.insert(SharedRun { start, pages }).ok_or(LedgerError::Full)?;
        self.shared_pages += pages;
        self.shares += 1;
        Ok(())
    }

    /// Makes `pages` pages at `start` private again. They must be one run shared by one `share`
    /// or its tail or head (ccdma unshares what it shared).
    pub fn unshare(&mut self, start: u64, pages: u64) -> Result<(), LedgerError> {
        let start = start & !(PAGE - 1);
        let end = start + pages * PAGE;
        let token = self.run_of(start).ok_or(LedgerError::Inconsistent { pages_done: 0 })?;
        let run = *self.runs.get(token).ok_or(LedgerError::Inconsistent { pages_done: 0 })?;
        let run_end = run.start + run.pages * PAGE;
        if end > run_end {
            return Err(LedgerError::Inconsistent { pages_done: 0 });
        }
        let head = SharedRun { start: run.start, pages: (start - run.start) / PAGE };
        let tail = SharedRun { start: end, pages: (run_end - end) / PAGE };
        self.runs.take(token);
        for part in [head, tail] {
            if part.pages > 0 && self.runs.insert(part).is_none() {
                // Cannot happen: one run left, at most two come back and one slot was just freed;
                // still, never claim pages private that stay shared.
                return Err(LedgerError::Full);
            }
        }
        self.shared_pages -= pages;
        self.unshares += 1;
        Ok(())
    }

    /// Checks a range a device is given: every byte must be shared. Counts a violation otherwise.
    pub fn check_device(&mut self, addr: u64, len: u64) -> bool {
        let end = addr.saturating_add(len.max(1));
        let mut page = addr & !(PAGE - 1);
        while page < end {
            if !self.is_shared(page) {
                self.violations += 1;
                return false;
            }
            page += PAGE;
        }
        true
    }
}

impl<const N: usize> Default for Ledger<N> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_decode_to_direction_and_width() {
        let read = Operation::decode(op::BUS_MASTER_READ).unwrap();
        assert_eq!(read, Operation { kind: MapKind::Stream(DmaDirection::ToDevice), wide: false });
        let write64 = Operation::decode(op::BUS_MASTER_WRITE64).unwrap();
        assert_eq!(write64, Operation { kind: MapKind::Stream(DmaDirection::FromDevice), wide: true });
        assert_eq!(Operation::decode(op::BUS_MASTER_COMMON_BUFFER).unwrap().kind, MapKind::Common);
        assert!(Operation::decode(op::BUS_MASTER_COMMON_BUFFER64).unwrap().wide);
        assert_eq!(Operation::decode(6), None);
    }

    #[test]
    fn table_tokens_are_never_zero_and_full_is_refused() {
        let mut t: Table<u32, 2> = Table::new();
        let a = t.insert(7).unwrap();
        let b = t.insert(8).unwrap();
        assert!(a != 0 && b != 0 && a != b);
        assert_eq!(t.insert(9), None);
        assert_eq!(t.get(0), None);
        assert_eq!(t.take(a), Some(7));
        assert_eq!(t.take(a), None);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn ledger_shares_unshares_and_counts_device_addresses_outside() {
        let mut l: Ledger<8> = Ledger::new();
        l.share(0x10000, 4).unwrap();
        assert!(l.check_device(0x10800, 0x3000));
        assert_eq!(l.violations, 0);
        // One byte past the run.
        assert!(!l.check_device(0x13800, 0x900));
        assert_eq!(l.violations, 1);
        assert_eq!(l.share(0x11000, 1), Err(LedgerError::Inconsistent { pages_done: 0 }));
        // Unshare the middle: head and tail stay shared.
        l.unshare(0x11000, 2).unwrap();
        assert!(l.is_shared(0x10000) && !l.is_shared(0x11000) && !l.is_shared(0x12fff));
        assert!(l.is_shared(0x13000));
        assert_eq!(l.shared_pages, 2);
        assert!(l.unshare(0x11000, 1).is_err());
        assert!(!l.check_device(0x10000, 0x2000));
        assert_eq!(l.violations, 2);
    }
}
