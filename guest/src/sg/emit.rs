//! What the list builder checks and writes: the device's segment limits ([`Limits`]) and the DMA
//! segments emitted so far, merged where the device allows ([`Outputs`]).

use super::{DmaSegment, SgEntry};
use crate::addr::DmaMask;
use crate::device::DeviceConfig;
use crate::error::DmaError;

/// The device's limits, as the list builder checks them.
#[derive(Clone, Copy)]
pub(super) struct Limits {
    pub(super) mask: DmaMask,
    pub(super) max_seg: u64,
    /// `2^n - 1`: a segment stays inside one aligned block of `boundary + 1` bytes.
    pub(super) boundary: u64,
    pub(super) min_align: u64,
}

impl Limits {
    pub(super) fn of(cfg: &DeviceConfig) -> Result<Limits, DmaError> {
        let b = cfg.segment_boundary_mask;
        if b & b.wrapping_add(1) != 0 {
            return Err(DmaError::InvalidSegmentBoundary(b));
        }
        if cfg.max_segment_size == 0 {
            return Err(DmaError::ZeroMaxSegment);
        }
        Ok(Limits {
            mask: cfg.dma_mask,
            max_seg: cfg.max_segment_size as u64,
            boundary: b,
            min_align: cfg.min_align_mask,
        })
    }

    /// True when `[addr, addr + len)` does not cross a boundary (and does not wrap).
    pub(super) fn within_boundary(&self, addr: u64, len: u64) -> bool {
        match addr.checked_add(len.saturating_sub(1)) {
            Some(last) => addr & !self.boundary == last & !self.boundary,
            None => false,
        }
    }

    /// True when a segment whose first byte has the `min_align` bits `bits` and is `len` long can be
    /// placed without crossing a boundary: the bits below the boundary that are fixed by `bits` plus
    /// the length must fit in one block.
    pub(super) fn boundary_allows(&self, bits: u64, len: u64) -> bool {
        (bits & self.boundary) as u128 + len as u128 <= self.boundary as u128 + 1
    }

    /// True when a segment at `addr` of `len` bytes may go to the device as it is.
    pub(super) fn direct_ok(&self, addr: u64, len: u64) -> bool {
        len <= self.max_seg && self.mask.covers(addr, len) && self.within_boundary(addr, len)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Class {
    Direct,
    P2pBus,
    Bounce,
    Window,
}

/// The DMA segments written so far, plus the one still open for merging.
pub(super) struct Outputs {
    pub(super) n: usize,
    pub(super) open: Option<(DmaSegment, Class)>,
    pub(super) coalesce: bool,
}

impl Outputs {
    pub(super) fn push(&mut self, list: &mut [SgEntry<'_>], lim: &Limits, seg: DmaSegment, class: Class) {
        if let Some((o, c)) = &mut self.open {
            let len = o.len as u64 + seg.len as u64;
            if self.coalesce
                && *c == class
                && o.addr.0.checked_add(o.len as u64) == Some(seg.addr.0)
                && len <= lim.max_seg
                && lim.within_boundary(o.addr.0, len)
            {
                o.len += seg.len;
                return;
            }
        }
        self.close(list);
        self.open = Some((seg, class));
    }

    /// Write the open segment at index `n`. Every segment starts at a distinct input entry, so `n`
    /// never passes the entry being emitted and the write never lands outside the list.
    pub(super) fn close(&mut self, list: &mut [SgEntry<'_>]) {
        if let Some((o, _)) = self.open.take() {
            if let Some(e) = list.get_mut(self.n) {
                e.out = Some(o);
                self.n += 1;
            }
        }
    }
}
