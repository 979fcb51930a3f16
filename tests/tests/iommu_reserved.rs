//! Reserved bus ranges are never handed out, under churn: strict mappings and coherent buffers come and
//! go in a small window (a 24-bit device), reservations are added at run time, refused while a live
//! mapping overlaps them, and survive every unmap exactly.

mod iommu_support;

use ccdma::iommu::{BusRange, RangeKind};
use ccdma::{BusAddr, DmaAttrs, DmaDirection, DmaError, IommuError, IommuPolicy, PhysAddr};
use ccdma_hv_model::{AccessKind, FaultReason, Region};
use ccdma_tests::*;
use iommu_support::*;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 < b.0 + b.1 && b.0 < a.0 + a.1
}

#[test]
fn reserved_ranges_never_returned_under_churn() {
    let g = iommu_guest(Opts::new(IommuPolicy::Strict));
    let (hv, layer) = (g.hv, &g.layer);
    let dev = g.device(7, 24);
    let d = hv.device(7);
    let mut reserved: Vec<(u64, u64)> = RESERVED.to_vec();
    let buf_phys = hv.alloc(64 * 1024, Region::High);
    // From-device mappings copy back into their buffer at unmap: they get their own scratch buffer so
    // the to-device source keeps its pattern.
    let scratch_phys = hv.alloc(64 * 1024, Region::High);
    let coh_phys = hv.alloc(16 * 4096, Region::Low);
    // SAFETY: a fresh allocation; every mapping below borrows a distinct sub-slice via raw maps and the
    // test never touches it while mapped.
    let buf = unsafe { hv.slice_mut(buf_phys, 64 * 1024) };
    buf.copy_from_slice(&pattern(64 * 1024, 5));
    let mut live: Vec<(BusAddr, usize, DmaDirection)> = Vec::new();
    let mut coh: Vec<ccdma::CoherentBuffer> = Vec::new();
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let (mut conflicts, mut accepted) = (0, 0);
    let mut ranges = vec![BusRange::EMPTY; 600];
    for step in 0..3000 {
        match rng.below(10) {
            0..=4 if live.len() < 48 => {
                let len = 1 + rng.below(40_000) as usize;
                let dir = [DmaDirection::ToDevice, DmaDirection::FromDevice, DmaDirection::Bidirectional]
                    [rng.below(3) as usize];
                let at = if dir == DmaDirection::ToDevice { buf_phys } else { scratch_phys };
                // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
                let bus = unsafe { layer.map_phys(&dev, PhysAddr(at), len, dir, DmaAttrs::NONE) }.unwrap();
                let span = (bus.0 & !4095, (bus.0 + len as u64).div_ceil(4096) * 4096 - (bus.0 & !4095));
                for r in &reserved {
                    assert!(!overlaps(span, *r), "step {step}: mapping {span:x?} overlaps reserved {r:x?}");
                }
                assert!(bus.0 + len as u64 <= 1 << 24, "above the 24-bit mask");
                if dir == DmaDirection::ToDevice {
                    let got = d.read(bus.0, len).unwrap();
                    assert!(got == pattern(64 * 1024, 5)[..len], "step {step}: to-device bytes differ");
                }
                live.push((bus, len, dir));
            }
            5 if coh.len() < 4 => {
                let i = coh.len() as u64;
                // SAFETY: each coherent buffer gets its own 4-page part of a fresh allocation.
                let c = unsafe { layer.alloc_coherent(&dev, PhysAddr(coh_phys + i * 4 * 4096), 4) }.unwrap();
                for r in &reserved {
                    assert!(!overlaps((c.bus_addr().0, 4 * 4096), *r), "coherent overlaps reserved {r:x?}");
                }
                coh.push(c);
            }
            6 if !coh.is_empty() => {
                let c = coh.pop().unwrap();
                layer.free_coherent(&dev, c).unwrap();
            }
            7 => {
                // A run-time reservation somewhere in the window below the mask.
                let start = rng.below(1 << 24) & !0xFFF;
                let len = (1 + rng.below(16)) * 4096;
                let live_overlap =
                    live.iter().any(|&(b, l, _)| {
                        overlaps(
                            (b.0 & !4095, (b.0 + l as u64).div_ceil(4096) * 4096 - (b.0 & !4095)),
                            (start, len),
                        )
                    }) || coh.iter().any(|c| overlaps((c.bus_addr().0, 4 * 4096), (start, len)));
                let before = layer.bus_ranges_of(&dev, &mut ranges);
                let snapshot = ranges[..before].to_vec();
                match layer.reserve_bus_range(start, len) {
                    Ok(()) => {
                        assert!(!live_overlap, "step {step}: reservation accepted over a live mapping");
                        reserved.push((start, len));
                        accepted += 1;
                    }
                    Err(DmaError::Iommu(IommuError::ReservationConflict)) => {
                        assert!(live_overlap, "step {step}: reservation refused without a conflict");
                        let after = layer.bus_ranges_of(&dev, &mut ranges);
                        assert_eq!(&ranges[..after], &snapshot[..], "a refused reservation changed nothing");
                        conflicts += 1;
                    }
                    Err(DmaError::Iommu(IommuError::BusSpaceExhausted)) => {}
                    Err(e) => panic!("step {step}: {e}"),
                }
            }
            _ if !live.is_empty() => {
                let (bus, len, dir) = live.swap_remove(rng.below(live.len() as u64) as usize);
                // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
                unsafe { layer.unmap(&dev, bus, len, dir, DmaAttrs::NONE) }.unwrap();
            }
            _ => {}
        }
    }
    assert!(conflicts > 0 && accepted > 0, "churn exercised both outcomes ({conflicts}, {accepted})");
    for (bus, len, dir) in live.drain(..) {
        // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
        unsafe { layer.unmap(&dev, bus, len, dir, DmaAttrs::NONE) }.unwrap();
    }
    for c in coh.drain(..) {
        layer.free_coherent(&dev, c).unwrap();
    }
    // Exactness: only reservations are left, and they cover exactly what was reserved in the window.
    let n = layer.bus_ranges_of(&dev, &mut ranges);
    assert!(ranges[..n].iter().all(|r| r.kind == RangeKind::Reserved), "{:x?}", &ranges[..n]);
    for r in &reserved {
        let covered = ranges[..n].iter().any(|x| x.start <= r.0 && r.0 + r.1 <= x.end());
        assert!(covered, "reservation {r:x?} lost");
    }
    let total: u64 = ranges[..n].iter().map(|r| r.len).sum();
    let mut pages: Vec<u64> = reserved.iter().flat_map(|r| (r.0..r.0 + r.1).step_by(4096)).collect();
    pages.sort();
    pages.dedup();
    assert_eq!(total, pages.len() as u64 * 4096, "reservations hold exactly the reserved pages");
    assert_eq!(hv.tce_counters().live_entries, 0);
    // The model refuses device accesses to its reserved ranges outright.
    assert!(!d.probe(0x1000, AccessKind::Read));
    assert_eq!(hv.faults().last().unwrap().reason, FaultReason::ReservedRange);
    assert_eq!(hv.private_faults(), 0);
}

#[test]
fn premapped_pool_avoids_reservations_and_late_reservation_over_pool_conflicts() {
    let g = iommu_guest(Opts::new(IommuPolicy::Premapped));
    let dev = g.device(3, 32);
    let bus = g.layer.pool_bus_of(&dev, 0).unwrap();
    for r in RESERVED {
        assert!(!overlaps((bus.0, g.opts.pool_len), r), "pool premapped over reserved {r:x?}");
    }
    assert_eq!(
        g.layer.reserve_bus_range(bus.0 + 4096, 4096),
        Err(DmaError::Iommu(IommuError::ReservationConflict)),
        "the premapped pool is live: a reservation over it must be refused"
    );
    g.layer.reserve_bus_range(0x2000_0000, 4096).unwrap();
    // A device attached later gets the layer-wide reservation too.
    let dev2 = g.device(4, 32);
    let mut ranges = vec![BusRange::EMPTY; 16];
    let n = g.layer.bus_ranges_of(&dev2, &mut ranges);
    assert!(ranges[..n].iter().any(|r| r.kind == RangeKind::Reserved && r.start == 0x2000_0000));
}
