//! Issue 20: a layer is built in place, in the caller's memory (`DmaLayer::init_in`,
//! `LayerCell::init_with`, the C `ccdma_layer_init`), and what it builds works like `DmaLayer::new`.
//! The frame sizes themselves are checked by `scripts/budgets.sh` (`-Z emit-stack-sizes`).

use std::mem::MaybeUninit;

use ccdma::storage::{CellInitError, LayerCell, PoolStorage};
use ccdma::{DeviceConfig, DmaError, DmaLayer, DmaMask, IommuConfig, PhysAddr, PoolConfig, SlotMeta};
use ccdma_hv_model::{HvConfig, Hypervisor, TceConfig};

type Plat = &'static Hypervisor;

fn model() -> Plat {
    Box::leak(Box::new(Hypervisor::new(HvConfig::pseries(64 << 20))))
}

#[test]
fn a_layer_built_in_place_maps_like_one_built_by_value() {
    let hv = model();
    let place: &'static mut MaybeUninit<DmaLayer<'static, Plat>> = Box::leak(Box::new(MaybeUninit::uninit()));
    let layer = DmaLayer::init_in(place, hv);
    // SAFETY: the model never hands this range out; the layer owns it from here.
    let i = unsafe {
        layer.add_pool(PhysAddr(0x80_0000), 1 << 20, vec![SlotMeta::EMPTY; 512].leak(), PoolConfig::default())
    };
    assert_eq!(i, Ok(0));
    let dev = layer.attach(DeviceConfig::new(1, DmaMask::BITS_32)).unwrap();
    let m = layer.on(&dev).map_to_device(&[5u8; 3000]).unwrap();
    assert_eq!(layer.pool(0).unwrap().0.slots_in_use(), 2);
    m.unmap().unwrap();
    layer.detach(dev).unwrap();
    layer.release_pools().unwrap();
    assert_eq!(hv.shared_pages(), 0);
    assert!(hv.faults().is_empty(), "{:?}", hv.faults());
}

#[test]
fn a_pool_refused_at_add_leaves_its_slot_free_for_the_next() {
    let hv = model();
    let mut layer = DmaLayer::new(hv);
    // Metadata too small: refused before anything is shared, and the table slot stays free.
    // SAFETY: as above.
    let e = unsafe {
        layer.add_pool(PhysAddr(0x80_0000), 1 << 20, vec![SlotMeta::EMPTY; 10].leak(), PoolConfig::default())
    };
    assert_eq!(e, Err(DmaError::MetadataTooSmall { needed: 512, provided: 10 }));
    assert_eq!((layer.pools().count(), hv.shared_pages()), (0, 0));
    // SAFETY: as above.
    let i = unsafe {
        layer.add_pool(PhysAddr(0x80_0000), 1 << 20, vec![SlotMeta::EMPTY; 512].leak(), PoolConfig::default())
    };
    assert_eq!(i, Ok(0));
    layer.release_pools().unwrap();
}

#[test]
fn the_iommu_part_built_in_place_gives_each_domain_its_share_of_ranges() {
    let hv = model();
    hv.enable_iommu(TceConfig::default());
    let mut layer = DmaLayer::new(hv);
    // SAFETY: as above.
    unsafe {
        layer.add_pool(PhysAddr(0x80_0000), 1 << 20, vec![SlotMeta::EMPTY; 512].leak(), PoolConfig::default())
    }
    .unwrap();
    let ranges = vec![Default::default(); 4 * 3].leak();
    // SAFETY: no list page (per-entry calls).
    unsafe { layer.enable_iommu(IommuConfig::premapped().with_max_domains(3), ranges) }.unwrap();
    let devs: Vec<_> = (1..=3)
        .map(|id| {
            hv.add_iommu_device(id, 32);
            layer.attach(DeviceConfig::new(id, DmaMask::BITS_32)).unwrap()
        })
        .collect();
    // A fourth device finds no domain: exactly three were built.
    hv.add_iommu_device(4, 32);
    assert!(layer.attach(DeviceConfig::new(4, DmaMask::BITS_32)).is_err());
    for d in devs {
        let m = layer.on(&d).map_to_device(&[1u8; 64]).unwrap();
        m.unmap().unwrap();
        layer.detach(d).unwrap();
    }
    assert!(hv.faults().is_empty(), "{:?}", hv.faults());
}

#[test]
fn a_layer_cell_builds_configures_and_freezes_in_place() {
    static META: PoolStorage<512> = PoolStorage::new();
    static CELL: LayerCell<Plat> = LayerCell::new();
    let hv = model();
    let layer = CELL
        .init_with(hv, |layer| {
            let meta = META.take().ok_or(DmaError::TooManyPools)?;
            // SAFETY: the model never hands this range out; the layer owns it from here.
            unsafe { layer.add_pool(PhysAddr(0x80_0000), 1 << 20, meta, PoolConfig::default()) }.map(|_| ())
        })
        .unwrap();
    assert!(std::ptr::eq(layer, CELL.get().unwrap()));
    let dev = layer.attach(DeviceConfig::new(1, DmaMask::BITS_32)).unwrap();
    layer.on(&dev).map_to_device(&[3u8; 100]).unwrap().unmap().unwrap();
    assert_eq!(hv.shared_pages(), 256);
    // A second one is refused and builds nothing.
    let again = CELL.init_with(model(), |_| Ok::<(), DmaError>(()));
    assert_eq!(again.err(), Some(CellInitError::Occupied));
}

#[test]
fn a_failed_configuration_gives_its_pools_back_and_empties_the_cell() {
    static CELL: LayerCell<Plat> = LayerCell::new();
    let hv = model();
    let err = CELL.init_with(hv, |layer| {
        // SAFETY: as above.
        unsafe {
            layer.add_pool(
                PhysAddr(0x80_0000),
                1 << 20,
                vec![SlotMeta::EMPTY; 512].leak(),
                PoolConfig::default(),
            )
        }?;
        assert_eq!(hv.shared_pages(), 256);
        Err(DmaError::TooManyPools)
    });
    assert_eq!(err.err(), Some(CellInitError::Configure(DmaError::TooManyPools)));
    assert_eq!(hv.shared_pages(), 0, "the pool shared by the failed configuration is private again");
    assert!(CELL.get().is_none());
    // The cell is empty again: a second try succeeds.
    assert!(CELL.init_with(hv, |_| Ok::<(), DmaError>(())).is_ok());
}
