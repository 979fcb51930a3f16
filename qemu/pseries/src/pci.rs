//! PCI configuration space through RTAS (`ibm,read-pci-config` / `ibm,write-pci-config`), and
//! BAR assignment: VOF leaves BARs unassigned, so the kernel places them in the bridge's memory
//! windows itself.

use virtio_drivers::transport::pci::bus::{
    BarInfo, Command, ConfigurationAccess, DeviceFunction, DeviceFunctionInfo, MemoryBarType, PciRoot,
};

use core::sync::atomic::{AtomicU64, Ordering};

use crate::devtree::Bridge;
use crate::rtas;

/// CPU minus PCI address of the bridge's 64-bit and 32-bit memory windows (set by [`PciBus::new`]).
static OFFSETS: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];

/// CPU address of PCI memory address `pci` (a BAR address as configuration space holds it).
pub fn cpu_address_of(pci: u64) -> u64 {
    let window = if pci >= 1 << 32 { 0 } else { 1 };
    pci.wrapping_add(OFFSETS[window].load(Ordering::Relaxed))
}

/// Makes [`cpu_address_of`] answer for `bridge`'s memory windows (each bridge maps PCI memory
/// addresses to CPU addresses of its own): set while a transport of one of its devices is opened.
pub fn use_windows_of(bridge: &Bridge) {
    OFFSETS[0].store(bridge.mem64.map_or(0, |(pci, cpu, _)| cpu.wrapping_sub(pci)), Ordering::Relaxed);
    OFFSETS[1].store(bridge.mem32.map_or(0, |(pci, cpu, _)| cpu.wrapping_sub(pci)), Ordering::Relaxed);
}

/// Configuration access to one bridge through RTAS.
pub struct RtasCam {
    buid: u64,
    read: u32,
    write: u32,
}

/// The RTAS configuration address of a register: `bus << 16 | devfn << 8 | register`.
pub fn config_address(function: DeviceFunction) -> u32 {
    u32::from(function.bus) << 16 | u32::from(function.device) << 11 | u32::from(function.function) << 8
}

impl ConfigurationAccess for RtasCam {
    fn read_word(&self, function: DeviceFunction, register: u8) -> u32 {
        let address = config_address(function) | u32::from(register);
        let args = [address, (self.buid >> 32) as u32, self.buid as u32, 4];
        match rtas::call::<2>(self.read, &args) {
            Some([0, value]) => value,
            _ => u32::MAX,
        }
    }

    fn write_word(&mut self, function: DeviceFunction, register: u8, data: u32) {
        let address = config_address(function) | u32::from(register);
        let args = [address, (self.buid >> 32) as u32, self.buid as u32, 4, data];
        let _ = rtas::call::<1>(self.write, &args);
    }

    unsafe fn unsafe_clone(&self) -> Self {
        RtasCam { buid: self.buid, read: self.read, write: self.write }
    }
}

/// Bump allocator over one memory window, in PCI addresses.
#[derive(Clone, Copy)]
struct Window {
    next: u64,
    end: u64,
}

/// The bridge's bus 0.
pub struct PciBus {
    root: PciRoot<RtasCam>,
    cam: RtasCam,
    mem64: Option<Window>,
    mem32: Option<Window>,
}

impl PciBus {
    /// The bridge described by `bridge`, or `None` without RTAS configuration tokens.
    pub fn new(bridge: &Bridge) -> Option<Self> {
        let tokens = rtas::tokens();
        let cam =
            RtasCam { buid: bridge.buid, read: tokens.read_pci_config?, write: tokens.write_pci_config? };
        let window =
            |w: Option<(u64, u64, u64)>| w.map(|(pci, _, size)| Window { next: pci, end: pci + size });
        use_windows_of(bridge);
        let second = RtasCam { buid: cam.buid, read: cam.read, write: cam.write };
        Some(Self {
            root: PciRoot::new(cam),
            cam: second,
            mem64: window(bridge.mem64),
            mem32: window(bridge.mem32),
        })
    }

    /// Every function on bus 0.
    pub fn functions(&self) -> impl Iterator<Item = (DeviceFunction, DeviceFunctionInfo)> + '_ {
        self.root.enumerate_bus(0)
    }

    /// Function 0 of device `slot`, if present.
    pub fn at_slot(&self, slot: u8) -> Option<(DeviceFunction, DeviceFunctionInfo)> {
        self.functions().find(|(function, _)| function.device == slot && function.function == 0)
    }

    /// Gives every unassigned memory BAR of `function` an address in the bridge's windows, then
    /// lets the function decode memory and master DMA.
    pub fn assign_and_enable(&mut self, function: DeviceFunction) -> Result<(), &'static str> {
        let (_, command) = self.root.get_status_command(function);
        self.root.set_command(function, command - Command::MEMORY_SPACE - Command::BUS_MASTER);
        let bars = self.root.bars(function).map_err(|_| "BARs unreadable")?;
        for (index, bar) in bars.iter().enumerate() {
            let Some(BarInfo::Memory { address_type, size, address, .. }) = bar else { continue };
            if *address != 0 || *size == 0 {
                continue;
            }
            let window = match address_type {
                MemoryBarType::Width64 => self.mem64.as_mut(),
                _ => self.mem32.as_mut(),
            }
            .ok_or("no bridge window for a BAR")?;
            let start = window.next.next_multiple_of(*size);
            if start + *size > window.end {
                return Err("bridge window full");
            }
            window.next = start + *size;
            match address_type {
                MemoryBarType::Width64 => self.root.set_bar_64(function, index as u8, start),
                _ => self.root.set_bar_32(function, index as u8, start as u32),
            }
        }
        self.root.set_command(function, command | Command::MEMORY_SPACE | Command::BUS_MASTER);
        Ok(())
    }

    /// Configuration access, for the virtio transport (RTAS calls carry no state between them).
    pub fn cam(&self) -> &RtasCam {
        &self.cam
    }
}
