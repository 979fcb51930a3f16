//! The PCI topology as far as peer-to-peer DMA cares: host bridges, root ports, switches (whose
//! downstream ports may redirect peer traffic up to the root port, as ACS P2P Request Redirect does)
//! and endpoints with BARs.
//!
//! For a (provider, client) pair the topology gives one of three answers, following Linux's
//! `pci_p2pdma` rules:
//! - *bus address*: both devices sit below a common switch and no switch on the way redirects, so the
//!   switch forwards the transaction itself; the client uses the BAR's PCI bus address (CPU physical
//!   minus the host bridge's offset), which no IOMMU translates;
//! - *through the host bridge*: the transaction goes up to the root complex (different root ports, or
//!   a redirecting switch on the way) and the host bridge is known to route peer traffic: map the BAR's
//!   CPU physical range like any other;
//! - *not supported*: different host bridges, a host bridge that cannot route peer traffic, an unknown
//!   device, or a range outside the provider's BARs.
//!
//! The model implements ccdma's [`P2pTopology`] so the guest layer asks it directly, and counts its
//! answers so tests can see which route each segment took.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use ccdma::sg::{P2pRoute, P2pTopology};
use ccdma::{BusAddr, PhysAddr};

/// A node of the topology (returned by the builder methods).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NodeId(usize);

/// One of the three answers, without the address (for counters and assertions).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum P2pOutcome {
    /// The client uses the BAR's PCI bus address.
    BusAddress,
    /// Routed by the host bridge; mapped normally.
    ThroughHostBridge,
    /// Not reachable.
    NotSupported,
}

/// A BAR: `len` bytes at CPU physical address `phys`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bar {
    /// CPU physical address of the first byte.
    pub phys: u64,
    /// Length in bytes.
    pub len: u64,
}

#[derive(Clone, Debug)]
enum Kind {
    HostBridge { p2p: bool, bus_offset: u64 },
    RootPort,
    Switch { redirect_to_root: bool },
    Endpoint { bars: Vec<Bar> },
}

#[derive(Clone, Debug)]
struct Node {
    kind: Kind,
    parent: Option<usize>,
}

/// The PCI topology. Built once with the builder methods, then only queried.
#[derive(Default)]
pub struct PciTopology {
    nodes: Vec<Node>,
    endpoints: HashMap<u32, usize>,
    answers: [AtomicU64; 3],
}

impl PciTopology {
    /// An empty topology.
    pub fn new() -> PciTopology {
        PciTopology::default()
    }

    fn add(&mut self, kind: Kind, parent: Option<NodeId>) -> NodeId {
        self.nodes.push(Node { kind, parent: parent.map(|p| p.0) });
        NodeId(self.nodes.len() - 1)
    }

    fn kind(&self, n: NodeId) -> &Kind {
        &self.nodes[n.0].kind
    }

    /// A host bridge (root complex). `p2p`: it routes peer-to-peer traffic between its root ports
    /// (Linux keeps a whitelist of such bridges). A device's PCI bus address is its CPU physical
    /// address minus `bus_offset`.
    pub fn host_bridge(&mut self, p2p: bool, bus_offset: u64) -> NodeId {
        self.add(Kind::HostBridge { p2p, bus_offset }, None)
    }

    /// A root port of `bridge`.
    pub fn root_port(&mut self, bridge: NodeId) -> NodeId {
        assert!(matches!(self.kind(bridge), Kind::HostBridge { .. }), "a root port hangs off a host bridge");
        self.add(Kind::RootPort, Some(bridge))
    }

    /// A switch below `upstream` (a root port or a downstream port of another switch).
    /// `redirect_to_root`: peer traffic is sent up to the root port instead of across (ACS redirect).
    pub fn switch(&mut self, upstream: NodeId, redirect_to_root: bool) -> NodeId {
        assert!(
            matches!(self.kind(upstream), Kind::RootPort | Kind::Switch { .. }),
            "a switch hangs off a root port or a switch"
        );
        self.add(Kind::Switch { redirect_to_root }, Some(upstream))
    }

    /// An endpoint with id `id` (the id ccdma's `DeviceConfig` names it by) below `parent`, with BARs.
    pub fn endpoint(&mut self, id: u32, parent: NodeId, bars: &[Bar]) -> NodeId {
        assert!(
            matches!(self.kind(parent), Kind::RootPort | Kind::Switch { .. }),
            "an endpoint hangs off a root port or a switch"
        );
        assert!(!self.endpoints.contains_key(&id), "device {id} added twice");
        let n = self.add(Kind::Endpoint { bars: bars.to_vec() }, Some(parent));
        self.endpoints.insert(id, n.0);
        n
    }

    /// Ancestors of node `n`, nearest first, ending at its host bridge.
    fn ancestors(&self, n: usize) -> Vec<usize> {
        let mut v = Vec::new();
        let mut cur = self.nodes[n].parent;
        while let Some(p) = cur {
            v.push(p);
            cur = self.nodes[p].parent;
        }
        v
    }

    fn host_bridge_of(&self, n: usize) -> Option<(bool, u64)> {
        self.ancestors(n).last().and_then(|&hb| match self.nodes[hb].kind {
            Kind::HostBridge { p2p, bus_offset } => Some((p2p, bus_offset)),
            _ => None,
        })
    }

    /// The route from `client` to `provider`'s memory (whatever range).
    pub fn outcome(&self, provider: u32, client: u32) -> P2pOutcome {
        let (Some(&p), Some(&c)) = (self.endpoints.get(&provider), self.endpoints.get(&client)) else {
            return P2pOutcome::NotSupported;
        };
        if p == c {
            return P2pOutcome::BusAddress;
        }
        let (up_p, up_c) = (self.ancestors(p), self.ancestors(c));
        let (Some(hb_p), Some(hb_c)) = (up_p.last(), up_c.last()) else { return P2pOutcome::NotSupported };
        if hb_p != hb_c {
            return P2pOutcome::NotSupported;
        }
        // Lowest common ancestor, and whether any switch on either way up to it redirects.
        let Some(lca) = up_c.iter().copied().find(|a| up_p.contains(a)) else {
            return P2pOutcome::NotSupported;
        };
        let redirects = |up: &[usize]| {
            up.iter()
                .take_while(|&&a| a != lca)
                .chain(std::iter::once(&lca))
                .any(|&a| matches!(self.nodes[a].kind, Kind::Switch { redirect_to_root: true }))
        };
        let across_switch = matches!(self.nodes[lca].kind, Kind::Switch { .. });
        if across_switch && !redirects(&up_p) && !redirects(&up_c) {
            return P2pOutcome::BusAddress;
        }
        match self.nodes[*hb_p].kind {
            Kind::HostBridge { p2p: true, .. } => P2pOutcome::ThroughHostBridge,
            _ => P2pOutcome::NotSupported,
        }
    }

    /// True when `[phys, phys + len)` lies inside one of `provider`'s BARs.
    pub fn in_bar(&self, provider: u32, phys: u64, len: u64) -> bool {
        let Some(&p) = self.endpoints.get(&provider) else { return false };
        let Kind::Endpoint { bars } = &self.nodes[p].kind else { return false };
        bars.iter().any(|b| {
            len > 0 && phys >= b.phys && phys.checked_add(len).is_some_and(|end| end <= b.phys + b.len)
        })
    }

    /// The PCI bus address of CPU physical `phys` in `provider`'s BAR.
    pub fn pci_bus_addr(&self, provider: u32, phys: u64) -> Option<u64> {
        let &p = self.endpoints.get(&provider)?;
        let (_, offset) = self.host_bridge_of(p)?;
        phys.checked_sub(offset)
    }

    /// What a bus-address access of `len` bytes at `bus` by `client` reaches: the provider and the CPU
    /// physical address in its BAR, if some provider's BAR is there and the client may reach it by
    /// bus address. Tests use it to prove a P2P segment names the right memory.
    pub fn resolve_bus(&self, client: u32, bus: u64, len: u64) -> Option<(u32, u64)> {
        self.endpoints.keys().find_map(|&provider| {
            let phys = bus.checked_add(self.host_bridge_of(self.endpoints[&provider])?.1)?;
            (self.in_bar(provider, phys, len) && self.outcome(provider, client) == P2pOutcome::BusAddress)
                .then_some((provider, phys))
        })
    }

    /// How many times each answer was given to [`P2pTopology::p2p_route`].
    pub fn answers(&self, outcome: P2pOutcome) -> u64 {
        self.answers[outcome as usize].load(Ordering::Relaxed)
    }
}

impl P2pTopology for PciTopology {
    fn p2p_route(&self, provider: u32, client: u32, bar: PhysAddr, len: usize) -> P2pRoute {
        let outcome = if self.in_bar(provider, bar.0, len as u64) {
            self.outcome(provider, client)
        } else {
            P2pOutcome::NotSupported
        };
        let route = match outcome {
            P2pOutcome::BusAddress => match self.pci_bus_addr(provider, bar.0) {
                Some(bus) => P2pRoute::BusAddress(BusAddr(bus)),
                None => P2pRoute::NotSupported,
            },
            P2pOutcome::ThroughHostBridge => P2pRoute::ThroughHostBridge,
            P2pOutcome::NotSupported => P2pRoute::NotSupported,
        };
        let counted = match route {
            P2pRoute::BusAddress(_) => P2pOutcome::BusAddress,
            P2pRoute::ThroughHostBridge => P2pOutcome::ThroughHostBridge,
            P2pRoute::NotSupported => P2pOutcome::NotSupported,
        };
        self.answers[counted as usize].fetch_add(1, Ordering::Relaxed);
        route
    }
}
