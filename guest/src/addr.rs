//! Address and mask types.
//!
//! Physical (guest physical) and bus addresses are distinct types so a device address can never be used
//! as a CPU address by accident: in a confidential guest with an IOMMU the two differ, and confusing them
//! is exactly how a device ends up reaching private memory.
//!
//! ```
//! use ccdma::{BusAddr, DmaMask, PhysAddr, PAGE_SIZE};
//!
//! let mask = DmaMask::new(32)?;
//! assert_eq!(mask, DmaMask::BITS_32);
//! assert_eq!(mask.max_addr(), 0xFFFF_FFFF);
//! assert!(mask.covers(0xFFFF_F000, PAGE_SIZE)); // the last page below 4 GiB
//! assert!(!mask.covers(0xFFFF_F000, 2 * PAGE_SIZE)); // crosses 4 GiB
//! assert_eq!(DmaMask::from_value(0xFF_FFFF)?.bits(), 24); // Linux's DMA_BIT_MASK(24)
//! assert!(DmaMask::new(8).is_err()); // cannot address one page: refused up front
//!
//! let buf = PhysAddr(0x1_2345);
//! assert_eq!((buf.pfn(), buf.is_page_aligned()), (0x12, false));
//! // A bus address is another type: turning one into the other is always spelled out.
//! let bus = BusAddr(buf.as_u64());
//! assert_eq!(bus.checked_add(0x10), Some(BusAddr(0x1_2355)));
//! # Ok::<(), ccdma::InvalidMask>(())
//! ```

use core::fmt;
use core::num::NonZeroU8;

/// The CPU page size the layer shares and unshares in (4 KiB on every supported platform).
pub const PAGE_SIZE: u64 = 4096;
/// log2 of [`PAGE_SIZE`].
pub const PAGE_SHIFT: u32 = 12;

/// A DMA mask with too few bits (cannot hold one page) or more than 64 (`bits` 0: a value that is not
/// `2^n - 1`). Converts into [`crate::DmaError::InvalidMask`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InvalidMask {
    /// The bit count asked for.
    pub bits: u32,
}

impl fmt::Display for InvalidMask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid DMA mask of {} bits: give 13 to 64 bits (a mask must hold a 4 KiB page)",
            self.bits
        )
    }
}

impl core::error::Error for InvalidMask {}

/// A guest physical address (GPA).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(transparent)]
pub struct PhysAddr(pub u64);

/// An address as a device puts it on the bus (`dma_addr_t`): after any IOMMU, before translation.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(transparent)]
pub struct BusAddr(pub u64);

impl PhysAddr {
    /// The raw value.
    pub const fn as_u64(self) -> u64 {
        self.0
    }
    /// `self + off`, or `None` on overflow.
    pub const fn checked_add(self, off: u64) -> Option<PhysAddr> {
        match self.0.checked_add(off) {
            Some(v) => Some(PhysAddr(v)),
            None => None,
        }
    }
    /// Frame number of the page holding this address.
    pub const fn pfn(self) -> u64 {
        self.0 >> PAGE_SHIFT
    }
    /// True when page aligned.
    pub const fn is_page_aligned(self) -> bool {
        self.0 & (PAGE_SIZE - 1) == 0
    }
}

impl BusAddr {
    /// The raw value.
    pub const fn as_u64(self) -> u64 {
        self.0
    }
    /// `self + off`, or `None` on overflow.
    pub const fn checked_add(self, off: u64) -> Option<BusAddr> {
        match self.0.checked_add(off) {
            Some(v) => Some(BusAddr(v)),
            None => None,
        }
    }
}

impl fmt::Debug for PhysAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "phys:{:#x}", self.0)
    }
}
impl fmt::Display for PhysAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}
impl fmt::Debug for BusAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bus:{:#x}", self.0)
    }
}
impl fmt::Display for BusAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

/// The highest bus address a device can emit, as a bit count: 13..=64 ([`DmaMask::new`] refuses
/// 0..=12, which cannot hold a 4 KiB page, and anything above 64).
///
/// A mapping `[bus, bus + len)` is usable iff `bus + len - 1 <= mask.max_addr()`. Masks that cannot
/// hold a single page are rejected at construction: nothing could ever be mapped for such a device, and
/// accepting them only defers the failure to the first I/O.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DmaMask {
    /// Never zero (13..=64): the niche makes an `Option<DmaMask>` one byte, one argument register.
    bits: NonZeroU8,
}

impl DmaMask {
    /// A 64-bit mask.
    pub const BITS_64: DmaMask = DmaMask { bits: NonZeroU8::MIN.saturating_add(63) };
    /// A 32-bit mask.
    pub const BITS_32: DmaMask = DmaMask { bits: NonZeroU8::MIN.saturating_add(31) };

    /// A mask of `bits` address bits.
    pub const fn new(bits: u32) -> Result<DmaMask, InvalidMask> {
        if bits > 64 || bits <= PAGE_SHIFT {
            return Err(InvalidMask { bits });
        }
        match NonZeroU8::new(bits as u8) {
            Some(bits) => Ok(DmaMask { bits }),
            // Not reached: 13..=64 here.
            None => Err(InvalidMask { bits }),
        }
    }

    /// A mask given as its value (`DMA_BIT_MASK(n)` style); the value must be `2^n - 1`.
    pub const fn from_value(value: u64) -> Result<DmaMask, InvalidMask> {
        if value == 0 || value & value.wrapping_add(1) != 0 {
            return Err(InvalidMask { bits: 0 });
        }
        DmaMask::new(64 - value.leading_zeros())
    }

    /// Number of address bits.
    pub const fn bits(self) -> u32 {
        self.bits.get() as u32
    }

    /// Highest address the device can emit.
    pub const fn max_addr(self) -> u64 {
        let bits = self.bits.get();
        if bits >= 64 {
            u64::MAX
        } else {
            (1u64 << bits) - 1
        }
    }

    /// True when `[start, start + len)` lies at or below the mask (and does not wrap).
    pub const fn covers(self, start: u64, len: u64) -> bool {
        match start.checked_add(len.saturating_sub(1)) {
            Some(last) => last <= self.max_addr(),
            None => false,
        }
    }
}

impl fmt::Debug for DmaMask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DmaMask({} bits)", self.bits)
    }
}
impl fmt::Display for DmaMask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-bit ({:#x})", self.bits, self.max_addr())
    }
}

/// Number of pages spanned by `[phys, phys + len)`.
pub(crate) const fn pages_spanned(phys: u64, len: u64) -> u64 {
    if len == 0 {
        return 0;
    }
    let first = phys >> PAGE_SHIFT;
    let last = (phys + len - 1) >> PAGE_SHIFT;
    last - first + 1
}
