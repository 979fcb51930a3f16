//! `DmaMask::max_addr` and `DmaMask::covers` (one checked add, for code size: issue 20) against
//! their definitions, for every mask `DmaMask::new` accepts and the edges of each.

use ccdma::DmaMask;

/// The definition: `2^bits - 1`.
fn max_ref(bits: u32) -> u64 {
    if bits >= 64 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    }
}

/// The definition: `[start, start + len)` at or below the mask without wrapping (`len == 0`: `start`).
fn covers_ref(bits: u32, start: u64, len: u64) -> bool {
    if len == 0 {
        return start <= max_ref(bits);
    }
    start.checked_add(len - 1).is_some_and(|last| last <= max_ref(bits))
}

#[test]
fn max_addr_and_covers_match_their_definitions_for_every_mask() {
    let mut checked = 0;
    for bits in 0..=70u32 {
        let Ok(mask) = DmaMask::new(bits) else {
            assert!(!(13..=64).contains(&bits), "{bits} bits refused");
            continue;
        };
        assert_eq!(mask.max_addr(), max_ref(bits), "{bits} bits");
        let m = max_ref(bits);
        let starts = [0, 1, 0x1000, m / 2, m - 0x1000, m - 1, m, m.wrapping_add(1), u64::MAX - 1, u64::MAX];
        let lens = [0, 1, 2, 0x1000, 0x1001, m / 2, m, m.wrapping_add(1), u64::MAX - 1, u64::MAX];
        for &s in &starts {
            for &l in &lens {
                assert_eq!(
                    mask.covers(s, l),
                    covers_ref(bits, s, l),
                    "{bits} bits, start {s:#x}, len {l:#x}"
                );
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 52 * 100);
}
