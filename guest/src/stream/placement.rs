//! Where a bounce run may go in a pool: the arithmetic of [`RunAlign`](super::bounce::RunAlign) on
//! a device's `min_align_mask` and a pool's geometry. A device's rules for the geometry of its first
//! pool are worked out once, at attach ([`Placement`]); a map then looks them up and only combines
//! them with the buffer's address. Any other pool (another slot size, a pool grown or added later)
//! and strict IOMMU runs take the general route, [`Rule::general`], with the same results.

use crate::addr::PAGE_SIZE;

/// How one run may be placed in one pool, for one buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Rule {
    /// Offset of the data in the run (the preserved `min_align_mask` bits below a slot or IOMMU page).
    pub offset: usize,
    /// Longest run, after the alignment phase every segment loses.
    pub max_run: usize,
    /// Slot addresses must satisfy `addr & align_mask == align_bits`.
    pub align_mask: u64,
    pub align_bits: u64,
}

impl Rule {
    /// The rule for a pool of `slot`-byte slots, `seg`-byte segments (`max_mapping`), at `phys`, for
    /// a buffer at `orig_addr` of `len` bytes: whole IOMMU pages of `iommu_page` bytes when given.
    #[inline]
    pub(crate) fn general(
        min_align: u64,
        slot: u64,
        seg: u64,
        phys: u64,
        iommu_page: Option<u64>,
        len: usize,
        orig_addr: u64,
    ) -> Rule {
        let unit = slot.max(iommu_page.unwrap_or(0));
        let offset = (orig_addr & min_align & (unit - 1)) as usize;
        let max_run = match iommu_page {
            Some(page) => seg as usize & !(page as usize - 1),
            None => seg as usize,
        };
        // Mappings of a page or more start on a page (as SWIOTLB does), except for the bits the
        // device needs preserved; strict mappings always start on an IOMMU page, the preserved bits
        // below it going into the offset.
        let page_bits = if iommu_page.is_some() {
            unit - 1
        } else if len as u64 >= PAGE_SIZE {
            PAGE_SIZE - 1
        } else {
            0
        };
        let align_mask = (min_align | page_bits) & !(slot - 1);
        let align_bits = if iommu_page.is_some() {
            orig_addr & min_align & align_mask & !(unit - 1)
        } else {
            orig_addr & min_align & align_mask
        };
        // No run crosses a segment (`seg` bytes from the pool's start), so a run whose alignment
        // puts its first candidate `phase` bytes into every segment has that much less room: a
        // request that can never fit is `TooLarge`, not a transient exhaustion.
        // `span` is a power of two (`min_align` and the page bits are `2^n - 1` masks, `slot` a power
        // of two): a mask test, no division (none by 0 either).
        let span = align_mask.wrapping_add(slot);
        let phase = if span.is_power_of_two() && span <= seg && seg & (span - 1) == 0 {
            (align_bits.wrapping_sub(phys) & (span - 1)) as usize
        } else {
            0
        };
        Rule { offset, max_run: max_run.saturating_sub(phase), align_mask, align_bits }
    }
}

/// What [`Rule::general`] gives without an IOMMU for one size class, short of the buffer's address.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Class {
    align_mask: u64,
    /// `min_align & align_mask`: the address bits the run keeps.
    keep: u64,
    /// `span - 1` when a segment holds whole spans (the phase applies), else 0.
    phase_mask: u64,
}

/// A device's bounce placement rules for one pool geometry (slot size and segment), worked out at
/// attach. Only the buffer's address and the pool's base are combined with them per map.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Placement {
    /// The geometry these rules hold for: `slot` 0 means none (every pool takes the general route).
    slot: u64,
    seg: u64,
    /// `min_align & (slot - 1)`: the offset bits.
    off_mask: u64,
    /// Shorter than a page, and a page or more.
    class: [Class; 2],
}

impl Placement {
    /// Rules for `min_align` in pools of `slot`-byte slots and `seg`-byte segments (both powers of two
    /// in every pool; anything else gets no rules, and the general route).
    pub(crate) fn new(min_align: u64, slot: u64, seg: u64) -> Placement {
        if !slot.is_power_of_two() {
            return Placement::default();
        }
        let class = |page_bits: u64| {
            let align_mask = (min_align | page_bits) & !(slot - 1);
            let span = align_mask.wrapping_add(slot);
            let whole = span.is_power_of_two() && span <= seg && seg & (span - 1) == 0;
            Class { align_mask, keep: min_align & align_mask, phase_mask: if whole { span - 1 } else { 0 } }
        };
        Placement { slot, seg, off_mask: min_align & (slot - 1), class: [class(0), class(PAGE_SIZE - 1)] }
    }

    /// The rule for a pool of this geometry, else `None`.
    #[inline(always)]
    pub(crate) fn lookup(&self, slot: u64, seg: u64, phys: u64, len: usize, orig_addr: u64) -> Option<Rule> {
        if slot != self.slot || seg != self.seg {
            return None;
        }
        let c = self.class[usize::from(len as u64 >= PAGE_SIZE)];
        let align_bits = orig_addr & c.keep;
        let phase = (align_bits.wrapping_sub(phys) & c.phase_mask) as usize;
        Some(Rule {
            offset: (orig_addr & self.off_mask) as usize,
            max_run: (seg as usize).saturating_sub(phase),
            align_mask: c.align_mask,
            align_bits,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The looked-up rule is the general one, for every mask, geometry, base, size and address tried.
    #[test]
    fn lookup_agrees_with_the_general_rule() {
        let masks = [0u64, 0x7, 0x1ff, 0x7ff, 0xfff, 0x1fff, 0xffff, 0x3_ffff, u64::MAX >> 1, u64::MAX];
        let geometries =
            [(2048u64, 256u64 << 10), (4096, 256 << 10), (512, 64 << 10), (2048, 2048), (8192, 24 << 10)];
        let bases = [0u64, 0x1_0000_0800, 0x3000];
        let lens = [100usize, 4095, 4096, 65536, 300_000];
        let addrs = [0u64, 0x123, 0x1_2345, u64::MAX - 5];
        for m in masks {
            for (slot, seg) in geometries {
                let p = Placement::new(m, slot, seg);
                for phys in bases {
                    for len in lens {
                        for a in addrs {
                            let want = Rule::general(m, slot, seg, phys, None, len, a);
                            let got = p.lookup(slot, seg, phys, len, a);
                            assert_eq!(
                                got,
                                Some(want),
                                "mask {m:#x} slot {slot} seg {seg} phys {phys:#x} len {len} addr {a:#x}"
                            );
                            assert_eq!(p.lookup(slot * 2, seg, phys, len, a), None);
                        }
                    }
                }
            }
        }
    }
}
