//! What the kernel needs from the device tree: RAM, the command line, and the PCI host bridge
//! with its TCE window and dynamic-DMA-window (DDW) RTAS tokens.

use core::ops::Range;

use crate::of::{self, Node};

/// Most RAM ranges kept.
pub const MAX_RAM: usize = 8;

/// The PCI host bridge (PHB) the devices sit on.
#[derive(Clone, Copy, Debug, Default)]
pub struct Bridge {
    /// Bus unit ID: the bridge's `reg` address, which RTAS PCI and DDW calls take.
    pub buid: u64,
    /// `ibm,dma-window`: LIOBN, bus start and size of the default window.
    pub liobn: u32,
    /// First bus address of the default window.
    pub window_start: u64,
    /// Bytes of the default window.
    pub window_size: u64,
    /// `ibm,ddw-applicable`: query, create and remove tokens (absent: no DDW on this bridge).
    pub ddw: Option<[u32; 3]>,
    /// `ibm,ddw-extensions`: the reset token (extension 1), if offered.
    pub ddw_reset: Option<u32>,
    /// 64-bit memory window: PCI address, CPU address, size.
    pub mem64: Option<(u64, u64, u64)>,
    /// 32-bit memory window: PCI address, CPU address, size.
    pub mem32: Option<(u64, u64, u64)>,
}

/// The machine as the device tree describes it.
pub struct Tree {
    /// RAM ranges from every `memory` node.
    pub ram: [Range<u64>; MAX_RAM],
    /// How many of `ram` are used.
    pub ram_count: usize,
    /// `/chosen/bootargs`.
    pub bootargs: [u8; 256],
    /// Bytes of `bootargs` (without NUL).
    pub bootargs_len: usize,
    /// The first PCI host bridge, if any.
    pub bridge: Option<Bridge>,
    /// The second PCI host bridge (`-device spapr-pci-host-bridge,index=1`), if any.
    pub bridge1: Option<Bridge>,
}

fn u64_of(hi: u32, lo: u32) -> u64 {
    u64::from(hi) << 32 | u64::from(lo)
}

impl Tree {
    /// Walks the tree.
    pub fn read() -> Self {
        let mut tree = Tree {
            ram: [const { 0..0 }; MAX_RAM],
            ram_count: 0,
            bootargs: [0; 256],
            bootargs_len: 0,
            bridge: None,
            bridge1: None,
        };
        if let Some(chosen) = of::find(b"/chosen\0") {
            let len = of::getprop(chosen, b"bootargs\0", &mut tree.bootargs).unwrap_or(0);
            let len = len.min(tree.bootargs.len());
            tree.bootargs_len = tree.bootargs[..len].iter().position(|&b| b == 0).unwrap_or(len);
        }
        let Some(root) = of::find(b"/\0") else { return tree };
        let mut name = [0u8; 32];
        for node in of::children(root) {
            match of::name(node, &mut name) {
                "memory" => tree.add_memory(node),
                "pci" if tree.bridge.is_none() => tree.bridge = Some(read_bridge(node)),
                "pci" if tree.bridge1.is_none() => tree.bridge1 = Some(read_bridge(node)),
                _ => {}
            }
        }
        tree
    }

    fn add_memory(&mut self, node: Node) {
        // Root #address-cells = #size-cells = 2 on pseries.
        let Some((cells, count)) = of::cells::<16>(node, b"reg\0") else { return };
        for entry in cells[..count.min(16)].chunks_exact(4) {
            let (start, size) = (u64_of(entry[0], entry[1]), u64_of(entry[2], entry[3]));
            if size > 0 && self.ram_count < MAX_RAM {
                self.ram[self.ram_count] = start..start + size;
                self.ram_count += 1;
            }
        }
    }

    /// The command line.
    pub fn bootargs(&self) -> &str {
        core::str::from_utf8(&self.bootargs[..self.bootargs_len]).unwrap_or("")
    }

    /// The RAM ranges.
    pub fn ram(&self) -> &[Range<u64>] {
        &self.ram[..self.ram_count]
    }
}

fn read_bridge(node: Node) -> Bridge {
    let mut bridge = Bridge::default();
    if let Some((reg, n)) = of::cells::<4>(node, b"reg\0") {
        if n >= 2 {
            bridge.buid = u64_of(reg[0], reg[1]);
        }
    }
    // <liobn, bus address (2 cells), size (2 cells)>
    if let Some((window, n)) = of::cells::<5>(node, b"ibm,dma-window\0") {
        if n >= 5 {
            bridge.liobn = window[0];
            bridge.window_start = u64_of(window[1], window[2]);
            bridge.window_size = u64_of(window[3], window[4]);
        }
    }
    if let Some((tokens, n)) = of::cells::<3>(node, b"ibm,ddw-applicable\0") {
        if n >= 3 {
            bridge.ddw = Some(tokens);
        }
    }
    if let Some((ext, n)) = of::cells::<4>(node, b"ibm,ddw-extensions\0") {
        if n >= 2 && ext[0] >= 1 {
            bridge.ddw_reset = Some(ext[1]);
        }
    }
    // ranges: <pci space+address (3 cells), cpu address (2), size (2)>
    if let Some((ranges, n)) = of::cells::<28>(node, b"ranges\0") {
        for entry in ranges[..n.min(28)].chunks_exact(7) {
            let pci = u64_of(entry[1], entry[2]);
            let cpu = u64_of(entry[3], entry[4]);
            let size = u64_of(entry[5], entry[6]);
            match (entry[0] >> 24) & 3 {
                2 => bridge.mem32 = Some((pci, cpu, size)),
                3 => bridge.mem64 = Some((pci, cpu, size)),
                _ => {}
            }
        }
    }
    bridge
}
