//! A small virtio 1.x stack that is correct on big-endian guests too.
//!
//! virtio 1.x registers, rings and headers are little-endian. virtio-drivers accesses them in the
//! CPU's byte order, which is right only on little-endian machines; the pseries kernel also runs
//! big-endian. So the kernels use this modern-PCI transport ([`pci`]), split virtqueue ([`queue`])
//! and the blk and net devices built on them ([`blk`], [`net`]), with explicit little-endian
//! accesses everywhere. They keep virtio-drivers' interfaces (`Transport`, `Hal`, `Error`,
//! `DeviceStatus`), so DMA still goes through the kernels' HALs (ccdma's `CcdmaHal` bindings).

pub mod blk;
pub mod net;
pub mod pci;
pub mod queue;

/// `VIRTIO_F_VERSION_1`.
pub const F_VERSION_1: u64 = 1 << 32;

/// Little-endian volatile accesses to device memory (MMIO registers, rings).
pub(crate) mod le {
    /// Reads a little-endian `u16` at `ptr`.
    ///
    /// # Safety
    /// `ptr` must be valid for a volatile 2-byte read and 2-byte aligned.
    pub unsafe fn read16(ptr: *const u8) -> u16 {
        // SAFETY: the caller's contract.
        u16::from_le(unsafe { ptr.cast::<u16>().read_volatile() })
    }

    /// Reads a little-endian `u32` at `ptr`.
    ///
    /// # Safety
    /// `ptr` must be valid for a volatile 4-byte read and 4-byte aligned.
    pub unsafe fn read32(ptr: *const u8) -> u32 {
        // SAFETY: the caller's contract.
        u32::from_le(unsafe { ptr.cast::<u32>().read_volatile() })
    }

    /// Writes `value` as a little-endian `u16` at `ptr`.
    ///
    /// # Safety
    /// `ptr` must be valid for a volatile 2-byte write and 2-byte aligned.
    pub unsafe fn write16(ptr: *mut u8, value: u16) {
        // SAFETY: the caller's contract.
        unsafe { ptr.cast::<u16>().write_volatile(value.to_le()) }
    }

    /// Writes `value` as a little-endian `u32` at `ptr`.
    ///
    /// # Safety
    /// `ptr` must be valid for a volatile 4-byte write and 4-byte aligned.
    pub unsafe fn write32(ptr: *mut u8, value: u32) {
        // SAFETY: the caller's contract.
        unsafe { ptr.cast::<u32>().write_volatile(value.to_le()) }
    }

    /// Writes `value` as a little-endian `u64` at `ptr` (two 32-bit halves, low first: the way
    /// virtio's 64-bit PCI registers may be written).
    ///
    /// # Safety
    /// `ptr` must be valid for two volatile 4-byte writes and 4-byte aligned.
    pub unsafe fn write64(ptr: *mut u8, value: u64) {
        // SAFETY: the caller's contract.
        unsafe {
            write32(ptr, value as u32);
            write32(ptr.add(4), (value >> 32) as u32);
        }
    }
}
