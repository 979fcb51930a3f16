//! Peer-to-peer segments in scatter-gather lists: the model's PCI topology decides per (provider,
//! client); bus-address segments bypass everything and are skipped at unmap, host-bridge segments are
//! mapped like physical ranges, unsupported pairs fail the whole call with nothing left mapped. P2P
//! memory is never bounced.

mod sg_common;

use ccdma::sg::{dma_segments, P2pSegment, SgEntry, SgOptions};
use ccdma::{DeviceConfig, DmaAttrs, DmaDirection, DmaError, DmaMask, PhysAddr};
use ccdma_hv_model::p2p::{Bar, P2pOutcome, PciTopology};
use ccdma_hv_model::{HvConfig, Hypervisor, Region};
use ccdma_tests::*;
use sg_common::*;

/// PCI bus address = CPU physical - this, below host bridge 0.
const HB0_OFFSET: u64 = 0x40_0000_0000;
const MB: u64 = 1 << 20;

/// BAR of each provider (CPU physical).
fn bar(provider: u32) -> u64 {
    match provider {
        10 => 0x48_0000_0000,
        12 => 0x48_2000_0000,
        14 => 0x48_3000_0000,
        15 => 0x48_1000_0000,
        20 => 0x50_0000_0000,
        22 => 0x50_1000_0000,
        _ => unreachable!(),
    }
}

/// Host bridge 0 routes peer traffic; host bridge 1 does not.
///
/// ```text
/// HB0 (p2p) ─ RP ─ switch ─┬ 10 (provider)        HB1 ─ RP ─ switch ─┬ 20 (provider)
///                          ├ 11 (client)                              └ 21 (client)
///                          └ switch ─ 15 (provider)    ─ RP ─ 22 (provider)
///           ─ RP ─ switch (redirects to root) ─┬ 12 (provider)
///                                              └ 13 (client)
///           ─ RP ─ 14 (provider)
/// ```
fn topology() -> PciTopology {
    let mut t = PciTopology::new();
    let b = |p: u32| [Bar { phys: bar(p), len: MB }];
    let hb0 = t.host_bridge(true, HB0_OFFSET);
    let rp = t.root_port(hb0);
    let s0 = t.switch(rp, false);
    t.endpoint(10, s0, &b(10));
    t.endpoint(11, s0, &[]);
    let s0a = t.switch(s0, false);
    t.endpoint(15, s0a, &b(15));
    let rp = t.root_port(hb0);
    let s1 = t.switch(rp, true);
    t.endpoint(12, s1, &b(12));
    t.endpoint(13, s1, &[]);
    let rp = t.root_port(hb0);
    t.endpoint(14, rp, &b(14));
    let hb1 = t.host_bridge(false, 0);
    let rp = t.root_port(hb1);
    let s2 = t.switch(rp, false);
    t.endpoint(20, s2, &b(20));
    t.endpoint(21, s2, &[]);
    let rp = t.root_port(hb1);
    t.endpoint(22, rp, &b(22));
    t
}

#[test]
fn topology_decides_each_pair() {
    use P2pOutcome::*;
    let t = topology();
    for (provider, client, want) in [
        (10, 11, BusAddress),        // same switch
        (15, 11, BusAddress),        // nested switch, nobody redirects
        (10, 10, BusAddress),        // a device reaching its own BAR
        (12, 13, ThroughHostBridge), // the switch redirects to the root port
        (12, 11, ThroughHostBridge), // different root ports, bridge routes
        (14, 11, ThroughHostBridge),
        (20, 11, NotSupported), // different host bridges
        (20, 21, BusAddress),   // a switch below a non-P2P bridge still forwards
        (22, 21, NotSupported), // ... but that bridge does not route between root ports
        (99, 11, NotSupported), // unknown provider
    ] {
        assert_eq!(t.outcome(provider, client), want, "provider {provider} client {client}");
    }
    assert!(t.in_bar(10, bar(10), MB) && !t.in_bar(10, bar(10), MB + 1) && !t.in_bar(10, bar(12), 1));
}

/// A confidential guest (everything bounced), the client devices 11 and 13 (64-bit) and 21.
fn env() -> (&'static Hypervisor, &'static Layer) {
    let (hv, layer) = guest(HvConfig::pseries(6 * GIB), &[(MID_POOL, 4 * MIB)]);
    for id in [11, 13, 21] {
        hv.add_device(id, 64);
    }
    (hv, Box::leak(Box::new(layer)))
}

fn p2p(provider: u32, off: u64, len: usize) -> SgEntry<'static> {
    SgEntry::p2p(P2pSegment { provider, bar: PhysAddr(bar(provider) + off), len })
}

fn client(layer: &Layer, id: u32, bits: u32) -> ccdma::Device {
    layer.attach(DeviceConfig::new(id, DmaMask::new(bits).unwrap())).unwrap()
}

#[test]
fn a_list_of_bus_address_segments_allocates_nothing() {
    let (hv, layer) = env();
    let t = topology();
    let opts = SgOptions { coalesce: true, p2p: Some(&t) };
    let dev = client(layer, 11, 64);
    let base = Baseline::take(hv, layer);
    let stats = layer.stats();
    // Two contiguous pieces of 10's BAR merge; 15's BAR is elsewhere.
    let mut list = [p2p(10, 0, 4096), p2p(10, 4096, 8192), p2p(15, 0x100, 512)];
    for dir in [DmaDirection::ToDevice, DmaDirection::FromDevice, DmaDirection::Bidirectional] {
        assert_eq!(layer.map_sg_with(&dev, &mut list, dir, DmaAttrs::NONE, &opts), Ok(2));
        assert_eq!(layer.stats().slots_in_use, 0, "a P2P segment took bounce slots");
        assert_eq!(layer.stats().bounced_maps, stats.bounced_maps);
        let segs: Vec<_> = dma_segments(&list).collect();
        assert!(segs.iter().all(|s| s.p2p_bus_address));
        assert_eq!((segs[0].addr.0, segs[0].len), (bar(10) - HB0_OFFSET, 12288));
        assert_eq!((segs[1].addr.0, segs[1].len), (bar(15) + 0x100 - HB0_OFFSET, 512));
        assert!(list.iter().all(|e| e.is_p2p_bus_address() && !e.is_bounced()));
        // The model agrees each address is the provider's BAR and that the client may use it.
        assert_eq!(t.resolve_bus(11, segs[0].addr.0, 12288), Some((10, bar(10))));
        assert_eq!(t.resolve_bus(11, segs[1].addr.0, 512), Some((15, bar(15) + 0x100)));
        assert_eq!(t.resolve_bus(13, segs[0].addr.0, 1), None, "13 is behind a redirecting switch");
        layer.sync_sg_for_cpu(&dev, &mut list, dir).unwrap();
        layer.sync_sg_for_device(&dev, &mut list, dir).unwrap();
        layer.unmap_sg(&dev, &mut list, dir, DmaAttrs::NONE).unwrap();
        assert!(list.iter().all(|e| !e.is_mapped()));
    }
    assert_eq!(t.answers(P2pOutcome::BusAddress), 9);
    // Without coalescing each stays its own (marked) segment.
    let opts = SgOptions { coalesce: false, ..opts };
    assert_eq!(layer.map_sg_with(&dev, &mut list, DmaDirection::ToDevice, DmaAttrs::NONE, &opts), Ok(3));
    layer.unmap_sg(&dev, &mut list, DmaDirection::ToDevice, DmaAttrs::NONE).unwrap();
    base.assert_same(hv, layer);
    assert_no_faults(hv);
}

#[test]
fn host_bridge_segments_are_mapped_at_the_bar_and_never_bounced() {
    let (hv, layer) = env();
    let t = topology();
    let opts = SgOptions { coalesce: true, p2p: Some(&t) };
    let dev = client(layer, 13, 64);
    let mut list = [p2p(12, 0x2000, 3000), p2p(14, 0, 100)];
    assert_eq!(layer.map_sg_with(&dev, &mut list, DmaDirection::Bidirectional, DmaAttrs::NONE, &opts), Ok(2));
    let segs: Vec<_> = dma_segments(&list).collect();
    // No IOMMU on this platform: the host bridge routes the BAR's own address.
    assert_eq!((segs[0].addr.0, segs[0].len, segs[0].p2p_bus_address), (bar(12) + 0x2000, 3000, false));
    assert_eq!((segs[1].addr.0, segs[1].len, segs[1].p2p_bus_address), (bar(14), 100, false));
    assert_eq!(layer.stats().slots_in_use, 0);
    assert_eq!(t.answers(P2pOutcome::ThroughHostBridge), 2);
    layer.unmap_sg(&dev, &mut list, DmaDirection::Bidirectional, DmaAttrs::NONE).unwrap();
    // A client whose mask does not reach the BAR: P2P memory cannot be bounced, so the call fails.
    let small = client(layer, 11, 36);
    let mut list = [p2p(14, 0, 100)];
    assert!(matches!(
        layer.map_sg_with(&small, &mut list, DmaDirection::ToDevice, DmaAttrs::NONE, &opts),
        Err(DmaError::BeyondMask { .. })
    ));
    // ... while its bus-address route (below 2^36) works.
    let mut list = [p2p(10, 0, 100)];
    assert_eq!(layer.map_sg_with(&small, &mut list, DmaDirection::ToDevice, DmaAttrs::NONE, &opts), Ok(1));
    layer.unmap_sg(&small, &mut list, DmaDirection::ToDevice, DmaAttrs::NONE).unwrap();
    assert_eq!(layer.stats().slots_in_use, 0);
    assert_no_faults(hv);
}

#[test]
fn unsupported_pair_fails_the_whole_list_and_leaves_nothing_mapped() {
    let (hv, layer) = env();
    let t = topology();
    let opts = SgOptions { coalesce: true, p2p: Some(&t) };
    let dev = client(layer, 11, 64);
    let base = Baseline::take(hv, layer);
    let specs: Vec<Spec> = (0..6)
        .map(|k| Spec { len: 900 + k, page_offset: 0, high: true, phys: false, follows: false })
        .collect();
    let inputs = lay_out(hv, &specs, 40);
    let before = guest_stream(hv, &inputs);
    for bad in [p2p(20, 0, 64), p2p(22, 0, 64), p2p(10, MB - 10, 64) /* runs past the BAR */] {
        let mut list = entries(hv, &inputs[..3]);
        list.push(p2p(10, 0, 4096)); // a good bus-address segment before the bad one
        list.push(bad);
        list.extend(entries(hv, &inputs[3..]));
        let r = layer.map_sg_with(&dev, &mut list, DmaDirection::FromDevice, DmaAttrs::NONE, &opts);
        assert!(matches!(r, Err(DmaError::P2pUnsupported { client: 11, .. })), "{r:?}");
        assert!(list.iter().all(|e| !e.is_mapped() && e.dma_segment().is_none()), "list changed");
        base.assert_same(hv, layer);
    }
    // No topology at all: every P2P segment is unsupported.
    let mut list = [p2p(10, 0, 64)];
    assert_eq!(
        layer.map_sg(&dev, &mut list, DmaDirection::ToDevice, DmaAttrs::NONE),
        Err(DmaError::P2pUnsupported { provider: 10, client: 11 })
    );
    assert_eq!(guest_stream(hv, &inputs), before);
    base.assert_same(hv, layer);
    assert_no_faults(hv);
}

#[test]
fn mixed_lists_bounce_only_guest_memory() {
    let (hv, layer) = env();
    let t = topology();
    let opts = SgOptions { coalesce: true, p2p: Some(&t) };
    let dev = client(layer, 11, 64);
    let d = hv.device(11);
    let base = Baseline::take(hv, layer);
    let specs: Vec<Spec> = (0..4)
        .map(|k| Spec {
            len: 500 * (k + 1),
            page_offset: 64 * k,
            high: k % 2 == 0,
            phys: k == 3,
            follows: false,
        })
        .collect();
    for dir in [DmaDirection::ToDevice, DmaDirection::FromDevice, DmaDirection::Bidirectional] {
        let inputs = lay_out(hv, &specs, 50 + dir as u64);
        let before = guest_stream(hv, &inputs);
        let mut g = entries(hv, &inputs).into_iter();
        // guest, guest, P2P bus address, guest, P2P host bridge, guest
        let mut list = vec![
            g.next().unwrap(),
            g.next().unwrap(),
            p2p(10, 0, 256),
            g.next().unwrap(),
            p2p(12, 0, 256),
            g.next().unwrap(),
        ];
        let n = layer.map_sg_with(&dev, &mut list, dir, DmaAttrs::NONE, &opts).unwrap();
        // The P2P segments split the guest buffers into three packed runs: 5 segments for 6 inputs.
        assert_eq!(n, 5);
        let segs: Vec<_> = dma_segments(&list).collect();
        assert_eq!(
            segs.iter().map(|s| s.p2p_bus_address).collect::<Vec<_>>(),
            [false, true, false, false, false]
        );
        assert_eq!(list[2].mapped_at().unwrap().0, bar(10) - HB0_OFFSET);
        assert_eq!(list[4].mapped_at().unwrap().0, bar(12));
        let guest_entries = [0usize, 1, 3, 5];
        assert!(guest_entries.iter().all(|&k| list[k].is_bounced()));
        assert!(!list[2].is_bounced() && !list[4].is_bounced());
        // The guest buffers round-trip through their bounce copies.
        let mut at = 0;
        let mut written = Vec::new();
        for (&k, inp) in guest_entries.iter().zip(&inputs) {
            let bus = list[k].mapped_at().unwrap().0;
            let seen = d.read(bus, inp.len).unwrap();
            if dir.device_reads() {
                assert_eq!(seen, before[at..at + inp.len]);
            } else {
                assert!(seen.iter().all(|&b| b == 0));
            }
            let data = pattern(inp.len, at as u64 + 7);
            if dir.device_writes() {
                d.write(bus, &data).unwrap();
            }
            written.extend(data);
            at += inp.len;
        }
        layer.unmap_sg(&dev, &mut list, dir, DmaAttrs::NONE).unwrap();
        drop(list);
        let after = guest_stream(hv, &inputs);
        assert_eq!(after, if dir.device_writes() { written } else { before });
        base.assert_same(hv, layer);
    }
    assert_no_faults(hv);
    // The originals stayed private all along: a device cannot reach them.
    let phys = hv.alloc(4096, Region::High);
    assert!(hv.device(21).read(phys, 1).is_err());
    assert_eq!(hv.private_faults(), 1);
}
