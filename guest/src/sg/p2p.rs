//! Peer-to-peer segments: how a client reaches memory in another device's BAR, per the topology.

use super::*;

/// How a client device reaches memory in a provider device's BAR, as the PCI topology decides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum P2pRoute {
    /// Both sit below a switch that forwards peer-to-peer traffic itself: the client uses this PCI
    /// bus address, which bypasses the IOMMU and must not be unmapped.
    BusAddress(BusAddr),
    /// Traffic goes up to the host bridge, which routes it: map the BAR's physical range normally.
    ThroughHostBridge,
    /// The client cannot reach the provider's memory.
    NotSupported,
}

/// The platform's knowledge of the PCI topology, for peer-to-peer segments.
///
/// ```
/// # use ccdma::*;
/// # use ccdma_hv_model::{HvConfig, Hypervisor, Region};
/// # let hv: &'static Hypervisor = Box::leak(Box::new(Hypervisor::new(HvConfig::pseries(6 << 30))));
/// # let mut layer = DmaLayer::new(hv);
/// # // SAFETY: the model never hands this range out.
/// # unsafe { layer.add_pool(PhysAddr(0x80_0000), 1 << 20, vec![SlotMeta::EMPTY; 512].leak(), PoolConfig::default()) }.unwrap();
/// use ccdma::sg::{P2pSegment, SgEntry, SgOptions};
/// use ccdma_hv_model::p2p::{Bar, PciTopology};
/// // A NIC and a GPU below one PCI switch that forwards peer-to-peer traffic itself.
/// let mut topo = PciTopology::new();
/// let bridge = topo.host_bridge(false, 0);
/// let port = topo.root_port(bridge);
/// let switch = topo.switch(port, false);
/// topo.endpoint(1, switch, &[]);
/// topo.endpoint(5, switch, &[Bar { phys: 0x2_0000_0000, len: 1 << 20 }]);
///
/// let nic = layer.attach(DeviceConfig::new(1, DmaMask::BITS_64))?;
/// let mut header = [0x11u8; 64];
/// let gpu_memory = P2pSegment { provider: 5, bar: PhysAddr(0x2_0000_0000), len: 4096 };
/// let mut list = [SgEntry::new(&mut header), SgEntry::p2p(gpu_memory)];
/// let opts = SgOptions { p2p: Some(&topo), ..SgOptions::default() };
/// let n = layer.map_sg_with(&nic, &mut list, DmaDirection::ToDevice, DmaAttrs::NONE, &opts)?;
/// assert_eq!(n, 2);
/// // The header is bounced; the GPU's memory is reached at its PCI bus address, never through a pool.
/// assert!(list[0].is_bounced());
/// assert!(list[1].is_p2p_bus_address() && list[1].mapped_at() == Some(BusAddr(0x2_0000_0000)));
/// layer.on(&nic).unmap_sg(&mut list, DmaDirection::ToDevice)?;
/// # Ok::<(), ccdma::DmaError>(())
/// ```
pub trait P2pTopology {
    /// How `client` reaches `[bar, bar + len)`, which the caller says is in `provider`'s BAR. A range
    /// that is not in one of the provider's BARs is [`P2pRoute::NotSupported`].
    fn p2p_route(&self, provider: u32, client: u32, bar: PhysAddr, len: usize) -> P2pRoute;
}

impl<T: P2pTopology + ?Sized> P2pTopology for &T {
    fn p2p_route(&self, provider: u32, client: u32, bar: PhysAddr, len: usize) -> P2pRoute {
        (**self).p2p_route(provider, client, bar, len)
    }
}

/// A segment of peer-to-peer memory: `len` bytes at CPU physical address `bar` inside a BAR of the
/// device `provider`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct P2pSegment {
    /// The device whose BAR holds the memory (its id, as the topology names it).
    pub provider: u32,
    /// CPU physical address of the first byte.
    pub bar: PhysAddr,
    /// Length in bytes.
    pub len: usize,
}

impl<const POOLS: usize, const DOMAINS: usize, const AREAS: usize> Cold<'_, '_, POOLS, DOMAINS, AREAS> {
    /// Resolve one peer-to-peer segment (entry `i`): where it goes. P2P memory is never bounced.
    pub(super) fn place_p2p(
        &self,
        dev: &Device,
        view: &View,
        i: usize,
        seg: P2pSegment,
        lim: &Limits,
        opts: &SgOptions<'_>,
    ) -> Result<Place, DmaError> {
        let client = dev.config().id;
        let route = match opts.p2p {
            Some(t) => t.p2p_route(seg.provider, client, seg.bar, seg.len),
            None => P2pRoute::NotSupported,
        };
        let (bus, place) = match route {
            P2pRoute::NotSupported => {
                self.stats.fail(FailureKind::Invalid);
                return Err(DmaError::P2pUnsupported { provider: seg.provider, client });
            }
            P2pRoute::BusAddress(bus) => (bus, Place::P2pBus { bus }),
            // Behind an IOMMU the range gets entries like any mapping (in the list's window range).
            P2pRoute::ThroughHostBridge if view.window.is_some() => {
                return Ok(Place::Window { bus: BusAddr(0), phys: seg.bar });
            }
            // Without an IOMMU the host bridge routes the BAR's CPU physical address itself.
            P2pRoute::ThroughHostBridge => (BusAddr(seg.bar.0), Place::Direct { bus: BusAddr(seg.bar.0) }),
        };
        if !lim.mask.covers(bus.0, seg.len as u64) {
            self.stats.fail(FailureKind::BeyondMask);
            return Err(DmaError::BeyondMask { addr: bus.0, mask: lim.mask });
        }
        if !lim.within_boundary(bus.0, seg.len as u64) {
            self.stats.fail(FailureKind::TooLarge);
            return Err(DmaError::SegmentLimit { index: i, len: seg.len });
        }
        Ok(place)
    }
}
