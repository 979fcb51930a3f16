//! A translation window: the bus-address range one TCE table (LIOBN) translates for a device.
//!
//! ```
//! use ccdma::iommu::WindowGeometry;
//!
//! // What a hypervisor reports is checked before it is used.
//! let window = WindowGeometry { liobn: 0x8000_0000, start: 0, size: 1 << 30, page_shift: 12 };
//! assert!(window.is_usable());
//! assert_eq!((window.page_size(), window.end()), (4096, 1 << 30));
//! let lying = WindowGeometry { page_shift: 64, ..window }; // would overflow a shift
//! assert!(!lying.is_usable());
//! let ragged = WindowGeometry { size: (1 << 30) + 512, ..window }; // not whole IOMMU pages
//! assert!(!ragged.is_usable());
//! ```

use crate::addr::DmaMask;

/// One translation window of a device: a range of bus addresses translated by the TCE table named by
/// `liobn`, in IOMMU pages of `1 << page_shift` bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WindowGeometry {
    /// The table's logical I/O bus number.
    pub liobn: u32,
    /// First bus address.
    pub start: u64,
    /// Bytes.
    pub size: u64,
    /// log2 of the IOMMU page size.
    pub page_shift: u32,
}

impl WindowGeometry {
    /// IOMMU page size in bytes (0 for a page shift of 64 or more, which [`Self::is_usable`] refuses).
    pub const fn page_size(&self) -> u64 {
        match 1u64.checked_shl(self.page_shift) {
            Some(size) => size,
            None => 0,
        }
    }

    /// A window as the hypervisor reported it is an allegation: usable only with a page shift in
    /// 12..=40, a non-empty size that does not wrap, and a start and size in whole IOMMU pages.
    pub fn is_usable(&self) -> bool {
        // The shift is checked first: `page` is a power of two from here on.
        let page = self.page_size();
        (12..=40).contains(&self.page_shift)
            && self.size != 0
            && self.start.checked_add(self.size).is_some()
            && self.start % page == 0
            && self.size % page == 0
    }
    /// One past the last bus address (saturating).
    pub const fn end(&self) -> u64 {
        self.start.saturating_add(self.size)
    }
}

/// The part of `win` a device with `mask` can address: `[lo, hi)`, empty when `lo >= hi`.
pub(crate) fn window_below(win: &WindowGeometry, mask: DmaMask) -> (u64, u64) {
    (win.start, win.end().min(mask.max_addr().saturating_add(1)))
}
