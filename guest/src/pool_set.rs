//! The layer's set of pools as devices see it: at most [`MAX_POOLS`], and per device the order in
//! which they are tried.

use crate::addr::BusAddr;

/// Most pools one layer can have.
pub const MAX_POOLS: usize = 8;

/// Pools a device may use, best first (highest bus range first, so wide devices leave low pools to the
/// devices that can use nothing else).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PoolOrder {
    idx: [u8; MAX_POOLS],
    len: u8,
}

impl PoolOrder {
    pub(crate) fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.idx[..self.len as usize].iter().map(|&i| i as usize)
    }
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub(crate) const EMPTY: PoolOrder = PoolOrder { idx: [0; MAX_POOLS], len: 0 };
    pub(crate) fn push(&mut self, pool: usize) {
        if (self.len as usize) < MAX_POOLS {
            self.idx[self.len as usize] = pool as u8;
            self.len += 1;
        }
    }
    /// Sort best first: highest bus base first.
    pub(crate) fn sort_by_bus(&mut self, bus: &[BusAddr; MAX_POOLS]) {
        let n = self.len as usize;
        self.idx[..n].sort_unstable_by(|a, b| bus[*b as usize].cmp(&bus[*a as usize]));
    }
}
