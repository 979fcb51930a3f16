//! Scatter-gather rows of the bench: `map_sg` + `unmap_sg` of one 16-buffer network-like list (64..=1514
//! bytes each, scattered in RAM, to the device) on every path, with and without packing, beside the
//! same 16 buffers mapped one by one through the single-mapping face. The size column is the list's
//! total bytes, so the ratio compares with one memcpy of all of them.

use std::hint::black_box;

use ccdma::iommu::BusRange;
use ccdma::sg::{SgEntry, SgOptions};
use ccdma::{
    DeviceConfig, DmaAttrs, DmaDirection, DmaLayer, DmaMask, DmaPath, IommuConfig, PhysAddr, PoolConfig,
};
use ccdma_hv_model::{HvConfig, Hypervisor, Region, TceConfig};
use ccdma_tests::{add_pool, model, pattern, GIB, MIB, MID_POOL};

use super::Bench;

const N: usize = 16;

/// A guest for one path, a device, and 16 buffers of the list.
struct SgFixture {
    layer: DmaLayer<'static, &'static Hypervisor>,
    dev: ccdma::Device,
    hv: &'static Hypervisor,
    bufs: [(u64, usize); N],
    /// Live bus ranges before any list (the premapped pool's own).
    ranges: usize,
}

impl SgFixture {
    fn new(path: DmaPath) -> SgFixture {
        let (cfg, bits) = match path {
            DmaPath::Direct => (HvConfig::plain(6 * GIB), 64),
            DmaPath::BounceAboveMask => (HvConfig::plain(6 * GIB), 32),
            _ => (HvConfig::pseries(6 * GIB), 32),
        };
        let hv = model(cfg);
        let iommu = matches!(path, DmaPath::IommuPremapped | DmaPath::IommuStrict);
        if iommu {
            hv.enable_iommu(TceConfig::default());
            hv.add_iommu_device(1, bits);
        }
        let mut layer = DmaLayer::new(hv);
        if path != DmaPath::Direct {
            add_pool(&mut layer, MID_POOL, 16 * MIB, PoolConfig::default()).expect("pool");
        }
        if iommu {
            let list = hv.alloc(4096, Region::Low);
            let cfg =
                if path == DmaPath::IommuStrict { IommuConfig::strict() } else { IommuConfig::premapped() };
            let cfg = cfg.with_list_page(PhysAddr(list)).with_max_domains(1);
            // SAFETY: the list page is a fresh allocation nothing else uses.
            unsafe { layer.enable_iommu(cfg, vec![BusRange::EMPTY; 256].leak()) }.expect("iommu");
        }
        let dev = layer.attach(DeviceConfig::new(1, DmaMask::new(bits).unwrap())).expect("attach");
        assert_eq!(layer.path_of(&dev), path);
        // Buffers above 4 GiB (bounced on the bounce-above-mask path), each in its own pages.
        let lens = pattern(2 * N, 11);
        let bufs = std::array::from_fn(|k| {
            let len = 64 + u16::from_le_bytes([lens[2 * k], lens[2 * k + 1]]) as usize % (1514 - 64 + 1);
            let phys = hv.alloc(4096, Region::High) + (k as u64 * 192) % 2048;
            hv.memory().write(phys, &pattern(len, k as u64));
            (phys, len)
        });
        let ranges = layer.live_bus_ranges();
        SgFixture { layer, dev, hv, bufs, ranges }
    }

    fn bytes(&self) -> usize {
        self.bufs.iter().map(|b| b.1).sum()
    }

    /// One `map_sg` + `unmap_sg` of the list; returns the segment count.
    fn map_unmap_sg(&self, coalesce: bool) -> usize {
        // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
        let mut list: [SgEntry<'static>; N] =
            std::array::from_fn(|k| unsafe { SgEntry::phys(PhysAddr(self.bufs[k].0), self.bufs[k].1) });
        let opts = SgOptions { coalesce, p2p: None };
        let dir = DmaDirection::ToDevice;
        let n = self
            .layer
            .map_sg_with(&self.dev, black_box(&mut list), dir, DmaAttrs::NONE, &opts)
            .expect("map_sg");
        black_box(list[0].dma_segment());
        self.layer.unmap_sg(&self.dev, &mut list, dir, DmaAttrs::NONE).expect("unmap_sg");
        n
    }

    /// The same buffers mapped and unmapped one by one (what a driver without `map_sg` does).
    fn map_unmap_each(&self) {
        let dir = DmaDirection::ToDevice;
        let mut bus = [ccdma::BusAddr(0); N];
        for (b, &(phys, len)) in bus.iter_mut().zip(&self.bufs) {
            // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
            *b = unsafe { self.layer.map_phys(&self.dev, PhysAddr(phys), len, dir, DmaAttrs::NONE) }
                .expect("map");
        }
        for (b, &(_, len)) in bus.iter().zip(&self.bufs) {
            // SAFETY: the test owns the buffer behind this raw mapping and keeps it alive, untouched, until the mapping ends.
            unsafe { self.layer.unmap(&self.dev, black_box(*b), len, dir, DmaAttrs::NONE) }.expect("unmap");
        }
    }

    fn check_clean(&self) {
        let s = self.layer.stats();
        assert_eq!(s.slots_in_use, 0, "slots leaked during the bench");
        assert_eq!(s.total_failures(), 0, "the bench hit failures: {s:?}");
        assert_eq!(self.layer.live_bus_ranges(), self.ranges);
        assert!(self.hv.faults().is_empty());
    }
}

/// Add the scatter-gather rows; returns a note line per path on the segments the device saw.
pub(crate) fn rows(bench: &mut Bench) -> Vec<String> {
    let mut notes = Vec::new();
    for (name, path) in [
        ("direct", DmaPath::Direct),
        ("bounce-above-mask", DmaPath::BounceAboveMask),
        ("bounce-always", DmaPath::BounceAlways),
        ("iommu premapped", DmaPath::IommuPremapped),
        ("iommu strict", DmaPath::IommuStrict),
    ] {
        let f = SgFixture::new(path);
        let bytes = f.bytes();
        let packed = f.map_unmap_sg(true);
        let unpacked = f.map_unmap_sg(false);
        bench.row(&format!("sg 16 {name} map_sg+unmap_sg"), bytes, || {
            f.map_unmap_sg(true);
        });
        if path != DmaPath::Direct {
            bench.row(&format!("sg 16 {name} unpacked"), bytes, || {
                f.map_unmap_sg(false);
            });
        }
        bench.row(&format!("sg 16 {name} 16x map+unmap"), bytes, || f.map_unmap_each());
        f.check_clean();
        notes.push(format!(
            "sg 16 {name}: {packed} DMA segment(s) packed, {unpacked} unpacked, {bytes} bytes"
        ));
    }
    notes
}
