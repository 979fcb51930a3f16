//! The PVH `hvm_start_info` structure QEMU's boot ROM leaves for the kernel: command line and
//! memory map.
//!
//! Layout (xen/include/public/arch-x86/hvm/start_info.h): magic u32 @0, version u32 @4,
//! flags u32 @8, nr_modules u32 @12, modlist_paddr u64 @16, cmdline_paddr u64 @24,
//! rsdp_paddr u64 @32; version >= 1 adds memmap_paddr u64 @40, memmap_entries u32 @48.
//! Everything is copied into the kernel's own memory once, at boot.

use core::fmt;
use zerocopy::{FromBytes, Immutable, KnownLayout};

use crate::memory;

const START_INFO_MAGIC: u32 = 0x336e_c578;
/// `hvm_memmap_table_entry.type` for usable RAM (E820 numbering).
const MEMMAP_TYPE_RAM: u32 = 1;
const MAX_CMDLINE: usize = 512;
const MAX_RAM_RANGES: usize = 32;

#[repr(C)]
#[derive(FromBytes, Immutable, KnownLayout)]
struct RawStartInfo {
    magic: u32,
    version: u32,
    flags: u32,
    nr_modules: u32,
    modlist_paddr: u64,
    cmdline_paddr: u64,
    rsdp_paddr: u64,
    memmap_paddr: u64,
    memmap_entries: u32,
    reserved: u32,
}

#[repr(C)]
#[derive(FromBytes, Immutable, KnownLayout)]
struct RawMemmapEntry {
    addr: u64,
    size: u64,
    entry_type: u32,
    reserved: u32,
}

/// A range of usable RAM, `start..end`.
#[derive(Clone, Copy, Debug, Default, Eq, PartialEq)]
pub struct RamRange {
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
}

/// What the kernel learned from `hvm_start_info`.
pub struct StartInfo {
    cmdline: [u8; MAX_CMDLINE],
    cmdline_len: usize,
    ram: [RamRange; MAX_RAM_RANGES],
    ram_len: usize,
    /// `hvm_start_info.version`.
    pub version: u32,
}

/// Why `hvm_start_info` could not be used.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum StartInfoError {
    /// The pointer is outside the identity map.
    Unreachable(u64),
    /// Wrong magic number.
    BadMagic(u32),
}

impl fmt::Display for StartInfoError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Self::Unreachable(address) => write!(f, "start_info at {address:#x} is not mapped"),
            Self::BadMagic(magic) => write!(f, "start_info magic {magic:#x}, expected {START_INFO_MAGIC:#x}"),
        }
    }
}

/// Copies `T` from physical memory written by firmware.
fn read_phys<T: FromBytes>(phys: u64) -> Option<T> {
    let ptr = memory::ptr_of(phys, size_of::<T>())?;
    // SAFETY: the range is inside the identity map (checked by `ptr_of`), `T` accepts any bytes,
    // and the read is unaligned-tolerant. Firmware tables are not referenced by anything else.
    Some(unsafe { ptr.as_ptr().cast::<T>().read_unaligned() })
}

impl StartInfo {
    /// Reads and copies the structure at `phys`.
    pub fn parse(phys: u64) -> Result<Self, StartInfoError> {
        let raw: RawStartInfo = read_phys(phys).ok_or(StartInfoError::Unreachable(phys))?;
        if raw.magic != START_INFO_MAGIC {
            return Err(StartInfoError::BadMagic(raw.magic));
        }
        let mut info = Self {
            cmdline: [0; MAX_CMDLINE],
            cmdline_len: 0,
            ram: [RamRange::default(); MAX_RAM_RANGES],
            ram_len: 0,
            version: raw.version,
        };
        if raw.cmdline_paddr != 0 {
            // The command line is NUL-terminated; anything longer than the buffer is cut.
            for index in 0..MAX_CMDLINE {
                match read_phys::<u8>(raw.cmdline_paddr + index as u64) {
                    Some(0) | None => break,
                    Some(byte) => {
                        info.cmdline[index] = byte;
                        info.cmdline_len = index + 1;
                    }
                }
            }
        }
        if raw.version >= 1 && raw.memmap_paddr != 0 {
            for index in 0..raw.memmap_entries as u64 {
                let entry_phys = raw.memmap_paddr + index * size_of::<RawMemmapEntry>() as u64;
                let Some(entry) = read_phys::<RawMemmapEntry>(entry_phys) else {
                    break;
                };
                if entry.entry_type == MEMMAP_TYPE_RAM && info.ram_len < MAX_RAM_RANGES {
                    info.ram[info.ram_len] =
                        RamRange { start: entry.addr, end: entry.addr.saturating_add(entry.size) };
                    info.ram_len += 1;
                }
            }
        }
        Ok(info)
    }

    /// The kernel command line (`-append`), or "" if it is not valid UTF-8.
    pub fn cmdline(&self) -> &str {
        core::str::from_utf8(&self.cmdline[..self.cmdline_len]).unwrap_or("")
    }

    /// Usable RAM, as reported by firmware.
    pub fn ram(&self) -> &[RamRange] {
        &self.ram[..self.ram_len]
    }

    /// Bytes of usable RAM at or above `address`.
    pub fn ram_above(&self, address: u64) -> u64 {
        self.ram().iter().map(|range| range.end.saturating_sub(range.start.max(address))).sum()
    }
}
