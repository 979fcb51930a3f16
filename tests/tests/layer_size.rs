//! Issue 20: a layer sized by its configuration. `DmaLayer<'m, P, POOLS, DOMAINS, AREAS>` holds
//! `POOLS` pool slots of pools of at most `AREAS` areas and `DOMAINS` IOMMU domains; the defaults
//! (`MAX_POOLS`, `MAX_DOMAINS`, `MAX_AREAS`) are the largest layer. The small configuration (one
//! pool of two areas, no IOMMU) is checked against the size the docs claim (issue 20's aim: 2 KiB)
//! and must map and unmap against the modelled hypervisor like the default one: by value, in place
//! and in a static `LayerCell`, four devices at once.

use std::mem::{size_of, MaybeUninit};

use ccdma::storage::LayerCell;

use ccdma::iommu::MAX_DOMAINS;
use ccdma::{
    DeviceConfig, DmaError, DmaLayer, DmaMask, DmaPath, IommuConfig, PhysAddr, PoolConfig, SlotMeta,
    MAX_AREAS, MAX_POOLS,
};
use ccdma_hv_model::{HvConfig, Hypervisor, Region, TceConfig};
use ccdma_tests::{assert_no_faults, model, pattern, GIB, MIB, MID_POOL};

type Plat = &'static Hypervisor;
/// One pool of at most two areas, no IOMMU domain: what a small firmware links.
type Small = DmaLayer<'static, Plat, 1, 0, 2>;

/// The figure `guest/src/lib.rs` and `guest/src/footprint.rs` state for `DmaLayer<P, 1, 0, 2>`
/// with a reference as the platform (run `cargo test --release -p ccdma --lib footprint --
/// --nocapture` for the parts). Issue 20's aim is 2 KiB.
const SMALL_LAYER_BYTES: usize = 1664;

#[test]
fn the_small_configuration_is_no_larger_than_claimed() {
    let small = size_of::<Small>();
    let full = size_of::<DmaLayer<'static, Plat>>();
    assert!(
        small <= SMALL_LAYER_BYTES,
        "DmaLayer<P, 1, 0, 2> is {small} bytes, claimed <= {SMALL_LAYER_BYTES}"
    );
    const { assert!(SMALL_LAYER_BYTES <= 2048, "issue 20 aims at 2 KiB") };
    // The default is unchanged: the most pools, domains and areas.
    assert_eq!(full, size_of::<DmaLayer<'static, Plat, MAX_POOLS, MAX_DOMAINS, MAX_AREAS>>());
    assert!(full >= 4 * small, "default {full} bytes against small {small}");
}

#[test]
fn the_small_configuration_maps_and_unmaps_against_the_model() {
    let hv = model(HvConfig::pseries(6 * GIB));
    let place: &'static mut MaybeUninit<Small> = Box::leak(Box::new(MaybeUninit::uninit()));
    let layer = DmaLayer::init_in(place, hv);
    let meta = vec![SlotMeta::EMPTY; PoolConfig::default().slots_for(MIB as usize)].leak();
    // SAFETY: the model never hands this range out; the layer owns it from here.
    let i = unsafe { layer.add_pool(PhysAddr(MID_POOL), MIB as usize, meta, PoolConfig::default()) };
    assert_eq!(i, Ok(0));
    assert_eq!(hv.shared_pages(), MIB / 4096);
    // A second pool has no slot: refused before anything is shared.
    let meta = vec![SlotMeta::EMPTY; 512].leak();
    // SAFETY: as above (refused, so never used).
    let e =
        unsafe { layer.add_pool(PhysAddr(MID_POOL + 2 * MIB), MIB as usize, meta, PoolConfig::default()) };
    assert_eq!(e, Err(DmaError::TooManyPools));
    assert_eq!(hv.shared_pages(), MIB / 4096);

    let dev = layer.attach(DeviceConfig::new(1, DmaMask::BITS_32)).unwrap();
    assert_eq!(dev.path(), DmaPath::BounceAlways);
    let d = hv.add_device(1, 32);
    let phys = hv.alloc(8192, Region::High);
    // SAFETY: fresh allocation, only this slice of it.
    let buf = unsafe { hv.slice_mut(phys, 8192) };
    let data = pattern(8192, 7);
    buf.copy_from_slice(&data);
    let m = layer.on(&dev).map_to_device(buf).unwrap();
    assert_eq!(d.read(m.bus_addr().0, 8192).unwrap(), data);
    assert_eq!(layer.stats().slots_in_use, 4);
    m.unmap().unwrap();
    // The raw face too.
    // SAFETY: the buffer is this program's until the unmap below.
    let bus = unsafe { layer.on(&dev).map_phys(PhysAddr(phys), 512, ccdma::DmaDirection::ToDevice) }.unwrap();
    assert_eq!(d.read(bus.0, 512).unwrap(), data[..512]);
    // SAFETY: this program's raw mapping of `dev`, unmapped once.
    unsafe { layer.on(&dev).unmap(bus, 512, ccdma::DmaDirection::ToDevice) }.unwrap();
    assert_eq!(layer.stats().slots_in_use, 0);
    layer.detach(dev).unwrap();
    layer.release_pools().unwrap();
    assert_eq!(hv.shared_pages(), 0);
    assert_no_faults(hv);
}

#[test]
fn a_layer_without_domains_refuses_the_iommu_and_one_with_them_uses_them() {
    let hv = model(HvConfig::pseries(64 * MIB));
    hv.enable_iommu(TceConfig::default());
    let mut small = Small::with_capacity(hv);
    let ranges = vec![Default::default(); 4].leak();
    // SAFETY: no list page (per-entry calls).
    let e = unsafe { small.enable_iommu(IommuConfig::premapped(), ranges) };
    assert_eq!(e, Err(DmaError::InvalidMaxDomains(IommuConfig::premapped().max_domains)));

    // Two domains: a third device finds none.
    let mut two = DmaLayer::<'static, Plat, 1, 2, 2>::with_capacity(hv);
    let meta = vec![SlotMeta::EMPTY; 512].leak();
    // SAFETY: the model never hands this range out; the layer owns it from here.
    unsafe { two.add_pool(PhysAddr(0x80_0000), MIB as usize, meta, PoolConfig::default()) }.unwrap();
    let ranges = vec![Default::default(); 8].leak();
    // SAFETY: no list page (per-entry calls).
    unsafe { two.enable_iommu(IommuConfig::premapped().with_max_domains(2), ranges) }.unwrap();
    let e = {
        let ranges = vec![Default::default(); 12].leak();
        let mut three = DmaLayer::<'static, Plat, 1, 2, 2>::with_capacity(hv);
        // SAFETY: no list page.
        unsafe { three.enable_iommu(IommuConfig::premapped().with_max_domains(3), ranges) }
    };
    assert_eq!(e, Err(DmaError::InvalidMaxDomains(3)));
    let devs: Vec<_> = (1..=2)
        .map(|id| {
            hv.add_iommu_device(id, 32);
            two.attach(DeviceConfig::new(id, DmaMask::BITS_32)).unwrap()
        })
        .collect();
    hv.add_iommu_device(3, 32);
    assert!(two.attach(DeviceConfig::new(3, DmaMask::BITS_32)).is_err());
    for d in devs {
        let m = two.on(&d).map_to_device(&[1u8; 64]).unwrap();
        m.unmap().unwrap();
        two.detach(d).unwrap();
    }
    assert_no_faults(hv);
}

#[test]
fn a_small_layer_cell_builds_in_place_and_maps() {
    static CELL: LayerCell<Plat, 1, 0, 2> = LayerCell::new();
    assert!(size_of::<LayerCell<Plat, 1, 0, 2>>() <= SMALL_LAYER_BYTES + 128);
    let hv = model(HvConfig::pseries(6 * GIB));
    let layer = CELL
        .init_with(hv, |layer| {
            let meta = vec![SlotMeta::EMPTY; 512].leak();
            // SAFETY: the model never hands this range out; the layer owns it from here.
            unsafe { layer.add_pool(PhysAddr(MID_POOL), MIB as usize, meta, PoolConfig::default()) }
                .map(|_| ())
        })
        .unwrap();
    let dev = layer.attach(DeviceConfig::new(1, DmaMask::BITS_32)).unwrap();
    let d = hv.add_device(1, 32);
    let m = layer.on(&dev).map_to_device(&[3u8; 100]).unwrap();
    assert_eq!(d.read(m.bus_addr().0, 100).unwrap(), [3u8; 100]);
    m.unmap().unwrap();
    layer.detach(dev).unwrap();
    assert_eq!(layer.stats().slots_in_use, 0);
    assert_no_faults(hv);
}

#[test]
fn the_small_configuration_by_value_serves_four_devices() {
    let hv = model(HvConfig::pseries(6 * GIB));
    let mut layer = Small::with_capacity(hv);
    let meta = vec![SlotMeta::EMPTY; 512].leak();
    // SAFETY: the model never hands this range out; the layer owns it from here.
    unsafe { layer.add_pool(PhysAddr(MID_POOL), MIB as usize, meta, PoolConfig::default()) }.unwrap();
    // The default configuration asks four areas: the pool gets the layer's two.
    assert_eq!(layer.pool(0).map(|(p, _)| p.areas()), Some(2));
    let devs: Vec<_> = (1..=4)
        .map(|id| {
            let d = hv.add_device(id, 32);
            (layer.attach(DeviceConfig::new(id, DmaMask::BITS_32)).unwrap(), d)
        })
        .collect();
    let bufs: Vec<Vec<u8>> = (0..4).map(|k| pattern(3000, k)).collect();
    let maps: Vec<_> =
        devs.iter().zip(&bufs).map(|((dev, _), b)| layer.on(dev).map_to_device(b).unwrap()).collect();
    for (((_, d), b), m) in devs.iter().zip(&bufs).zip(&maps) {
        assert_eq!(&d.read(m.bus_addr().0, b.len()).unwrap(), b);
    }
    assert_eq!(layer.stats().slots_in_use, 4 * 2);
    for m in maps {
        m.unmap().unwrap();
    }
    for (dev, _) in devs {
        layer.detach(dev).unwrap();
    }
    assert_eq!(layer.stats().slots_in_use, 0);
    layer.release_pools().unwrap();
    assert_eq!(hv.shared_pages(), 0);
    assert_no_faults(hv);
}

/// The sizes a user of the crate gets (this crate's tests build ccdma without its test-only
/// fields, unlike `cargo test -p ccdma --lib footprint`, whose pool areas carry a test counter).
/// Printed for the docs: `cargo test --release -p ccdma-tests --test layer_size -- --nocapture
/// sizes_a_user_gets`. The bounds are the figures the docs state.
#[test]
fn sizes_a_user_gets() {
    let rows: [(&str, usize, usize); 7] = [
        (
            "DmaLayer<P> (default: 8 pools, 16 domains, 16 areas)",
            size_of::<DmaLayer<'static, Plat>>(),
            28_800,
        ),
        ("DmaLayer<P, 1, 0, 4>", size_of::<DmaLayer<'static, Plat, 1, 0, 4>>(), 1_920),
        ("DmaLayer<P, 1, 0, 2>", size_of::<Small>(), SMALL_LAYER_BYTES),
        ("DmaLayer<P, 1, 4, 2>", size_of::<DmaLayer<'static, Plat, 1, 4, 2>>(), 2_688),
        ("DmaError", size_of::<DmaError>(), 24),
        ("Result<BusAddr, DmaError>", size_of::<Result<ccdma::BusAddr, DmaError>>(), 24),
        ("Device", size_of::<ccdma::Device>(), 192),
    ];
    for (name, bytes, bound) in rows {
        println!("{name:<56} {bytes:>6} bytes (docs: <= {bound})");
        assert!(bytes <= bound, "{name} is {bytes} bytes, the docs say <= {bound}");
    }
}
