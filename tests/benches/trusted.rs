//! `cargo bench -p ccdma-tests --bench trusted`: the bounce tax the trusted path removes.
//!
//! Two tables. First, map+unmap (safe face) of a private buffer per size, for an untrusted device
//! (bounced) and for the same kind of device accepted by the platform (private buffer mapped in
//! place), on a TDX-style guest without IOMMU and on a pseries guest behind the modelled TCE IOMMU
//! (pool premapped in a DDW, against per-mapping entries naming the private pages). Each figure is
//! the median of several batches after a warm-up (`std::time::Instant`; `CCDMA_BENCH_BATCH_MS`,
//! default 4, sets a batch's length). A model hypercall is a lock and a hash-map update, far cheaper
//! than a real one: the trusted-iommu rows are a lower bound.
//!
//! Second, shared pages per MiB of I/O on each path: 4 MiB moved each way per size by the model's
//! device, counting the page pieces its DMA touched in shared memory (the model's `page_touches`)
//! and the pages the guest copied into shared memory (the layer's bounce bytes / 4 KiB).
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

use std::hint::black_box;
use std::time::Duration;

use ccdma::iommu::BusRange;
use ccdma::{
    Device, DeviceConfig, DmaAttrs, DmaDirection, DmaLayer, DmaMask, DmaPath, IommuConfig, IommuPolicy,
    PhysAddr, PoolConfig, TceBatching, VerifyPolicy,
};
use ccdma_hv_model::{HvConfig, Hypervisor, Region, TceConfig};
use ccdma_tests::{add_pool, model, pattern, GIB, HIGH_POOL, MIB, MID_POOL};

const BATCHES: usize = 11;
const WARM_UP: Duration = Duration::from_millis(10);
const SIZES: [usize; 6] = [64, 1500, 4096, 16 << 10, 64 << 10, 256 << 10];
const BUF: usize = 256 << 10;

/// Median ns per call of `op` (see `ccdma_tests::timing::measure`).
fn measure(batch: Duration, op: &mut dyn FnMut()) -> f64 {
    ccdma_tests::timing::measure(WARM_UP, BATCHES, batch, op).median
}

/// One guest with an untrusted and an accepted device of the same mask, and a private buffer each.
struct Pair {
    hv: &'static Hypervisor,
    layer: DmaLayer<'static, &'static Hypervisor>,
    untrusted: Device,
    accepted: Device,
    bufs: [u64; 2],
}

impl Pair {
    /// TDX-style: no IOMMU, one 16 MiB pool above 4 GiB.
    fn no_iommu() -> Pair {
        let hv = model(HvConfig::tdx(6 * GIB));
        let mut layer = DmaLayer::new(hv);
        add_pool(&mut layer, HIGH_POOL, 16 * MIB, PoolConfig::default()).expect("pool");
        hv.add_device(1, 64);
        hv.add_device(2, 64);
        Pair::with_devices(hv, layer, [DmaPath::BounceAlways, DmaPath::TrustedDirect])
    }

    /// pseries behind the TCE IOMMU, pool premapped (a DDW for the 64-bit devices).
    fn iommu() -> Pair {
        let hv = model(HvConfig::pseries(6 * GIB));
        hv.enable_iommu(TceConfig::default());
        hv.add_iommu_device(1, 64);
        hv.add_iommu_device(2, 64);
        let mut layer = DmaLayer::new(hv);
        add_pool(&mut layer, MID_POOL, 16 * MIB, PoolConfig::default()).expect("pool");
        let list = hv.alloc(4096, Region::Low);
        let cfg = IommuConfig {
            policy: IommuPolicy::Premapped,
            verify: VerifyPolicy::Ends,
            use_ddw: true,
            max_domains: 2,
            batching: TceBatching::SharedPage(PhysAddr(list)),
        };
        // SAFETY: the list page is a fresh allocation nothing else uses.
        unsafe { layer.enable_iommu(cfg, vec![BusRange::EMPTY; 512].leak()) }.expect("iommu");
        Pair::with_devices(hv, layer, [DmaPath::IommuDdw, DmaPath::TrustedIommu])
    }

    fn with_devices(
        hv: &'static Hypervisor,
        layer: DmaLayer<'static, &'static Hypervisor>,
        expect: [DmaPath; 2],
    ) -> Pair {
        let untrusted = layer.attach(DeviceConfig::new(1, DmaMask::BITS_64)).expect("attach");
        let mut accepted = layer.attach(DeviceConfig::new(2, DmaMask::BITS_64)).expect("attach");
        hv.tdisp_bind(2);
        layer.accept(&mut accepted).expect("accept");
        assert_eq!([untrusted.path(), accepted.path()], expect, "the bench measures these paths");
        let bufs = [hv.alloc(BUF as u64, Region::High), hv.alloc(BUF as u64, Region::High)];
        for &b in &bufs {
            hv.memory().write(b, &pattern(BUF, b));
        }
        Pair { hv, layer, untrusted, accepted, bufs }
    }

    fn dev(&self, trusted: bool) -> (&Device, u64) {
        if trusted {
            (&self.accepted, self.bufs[1])
        } else {
            (&self.untrusted, self.bufs[0])
        }
    }

    fn map_unmap(&self, trusted: bool, len: usize, dir: DmaDirection) {
        let (dev, phys) = self.dev(trusted);
        // SAFETY: the device's own buffer from `hv.alloc`; the only slice of it alive (each call
        // makes and drops its own).
        let buf = unsafe { self.hv.slice_mut(phys, len) };
        let m = self.layer.map(dev, black_box(buf), dir, DmaAttrs::NONE).expect("map");
        black_box(m.bus_addr());
        m.unmap().expect("unmap");
    }

    /// Move 4 MiB each way in mappings of `len`; returns (shared page pieces the device touched,
    /// pages the guest copied into or out of shared memory), per MiB moved.
    fn shared_pages_per_mib(&self, trusted: bool, len: usize) -> (f64, f64) {
        let (dev, phys) = self.dev(trusted);
        let id = dev.config().id;
        let n = (4 * MIB as usize).div_ceil(len);
        let touches = self.hv.page_touches(id).shared;
        let s = self.layer.stats();
        let copied = s.bytes_to_device + s.bytes_from_device;
        let model_dev = self.hv.device(id);
        for _ in 0..n {
            for dir in [DmaDirection::ToDevice, DmaDirection::FromDevice] {
                // SAFETY: as in `map_unmap`.
                let buf = unsafe { self.hv.slice_mut(phys, len) };
                let m = self.layer.map(dev, buf, dir, DmaAttrs::NONE).expect("map");
                match dir {
                    DmaDirection::ToDevice => drop(model_dev.read(m.bus_addr().0, len).expect("read")),
                    _ => model_dev.write(m.bus_addr().0, &vec![0x5a; len]).expect("write"),
                }
                m.unmap().expect("unmap");
            }
        }
        let mib = (2 * n * len) as f64 / MIB as f64;
        let s = self.layer.stats();
        let touched = (self.hv.page_touches(id).shared - touches) as f64 / mib;
        let pages = (s.bytes_to_device + s.bytes_from_device - copied) as f64 / 4096.0 / mib;
        (touched, pages)
    }

    fn check_clean(&self) {
        let s = self.layer.stats();
        assert_eq!(s.slots_in_use, 0, "slots leaked during the bench");
        assert_eq!(s.total_failures(), 0, "the bench hit failures: {s:?}");
        assert!(self.hv.faults().is_empty(), "{:?}", self.hv.faults());
        assert_eq!(self.hv.private_faults(), 0);
    }
}

fn size_label(bytes: usize) -> String {
    if bytes >= 1024 && bytes % 1024 == 0 {
        format!("{} KiB", bytes / 1024)
    } else {
        format!("{bytes} B")
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let ms = std::env::var("CCDMA_BENCH_BATCH_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(4);
    let batch = Duration::from_millis(ms);
    let pairs = [("no IOMMU (TDX-style)", Pair::no_iommu()), ("TCE IOMMU (pseries)", Pair::iommu())];
    println!(
        "map+unmap ns per operation (median of {BATCHES} batches of ~{ms} ms), safe face, 64-bit devices"
    );
    println!(
        "{:<22} {:<12} {:>8} {:>16} {:>16} {:>9}",
        "platform", "direction", "size", "untrusted (ns)", "accepted (ns)", "speed-up"
    );
    for (name, pair) in &pairs {
        for dir in [DmaDirection::ToDevice, DmaDirection::FromDevice] {
            for len in SIZES {
                let u = measure(batch, &mut || pair.map_unmap(false, len, dir));
                let t = measure(batch, &mut || pair.map_unmap(true, len, dir));
                let d = if dir == DmaDirection::ToDevice { "to-device" } else { "from-device" };
                println!("{name:<22} {d:<12} {:>8} {u:>16.0} {t:>16.0} {:>8.1}x", size_label(len), u / t);
            }
        }
        pair.check_clean();
    }
    println!();
    println!(
        "shared pages per MiB of I/O (4 MiB each way per size; device DMA page pieces in shared memory /"
    );
    println!("pages the guest copied through shared memory)");
    println!(
        "{:<22} {:<20} {:>8} {:>22} {:>22}",
        "platform", "path", "size", "device-touched", "guest-copied"
    );
    for (name, pair) in &pairs {
        for trusted in [false, true] {
            let path = pair.dev(trusted).0.path().name();
            for len in [1500, 4096, 64 << 10] {
                let (touched, copied) = pair.shared_pages_per_mib(trusted, len);
                println!("{name:<22} {path:<20} {:>8} {touched:>22.1} {copied:>22.1}", size_label(len));
            }
        }
        pair.check_clean();
    }
}
