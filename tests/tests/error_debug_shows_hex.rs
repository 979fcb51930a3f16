//! Issue 22: `main() -> Result<_, DmaError>` prints the error's `Debug`; it must name the variant and
//! show bus addresses in hex (as `Display` does), not in decimal.

use ccdma::{DmaError, DmaMask};

#[test]
fn debug_of_no_path_shows_the_bus_end_in_hex_and_names_the_variant() {
    let e = DmaError::NoPath { mask: DmaMask::BITS_32, pools: 1, lowest_pool_bus_end: 0x1_0100_0000 };
    let debug = format!("{e:?}");
    assert!(debug.starts_with("NoPath"), "the variant is named first: {debug}");
    assert!(debug.contains("0x101000000"), "bus end in hex: {debug}");
    assert!(!debug.contains(&0x1_0100_0000u64.to_string()), "no decimal bus address: {debug}");
}

#[test]
fn debug_of_no_iommu_path_shows_the_window_in_hex() {
    let e = DmaError::NoIommuPath {
        mask: DmaMask::BITS_32,
        pools: 2,
        window: (0x1000, 0x8000_0000),
        ddw: ccdma::path::DdwStep::NotTried,
    };
    let debug = format!("{e:?}");
    assert!(debug.starts_with("NoIommuPath"), "{debug}");
    assert!(debug.contains("0x80000000"), "window end in hex: {debug}");
    assert!(!debug.contains("2147483648"), "no decimal window end: {debug}");
}

#[test]
fn debug_of_unaligned_shows_the_address_in_hex() {
    let e = DmaError::Unaligned { addr: 0x12_3456, align: 4096 };
    let debug = format!("{e:?}");
    assert!(debug.starts_with("Unaligned"), "{debug}");
    assert!(debug.contains("0x123456") && !debug.contains("1193046"), "{debug}");
}
