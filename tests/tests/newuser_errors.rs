//! Issue 22: error texts say what to do, one `.error()` accessor for every refusal, the model's
//! "guest RAM exhausted" names the start address and the RAM size, and `CoherentBuffer`'s safe byte
//! access (`read_at`/`write_at`/`copy_from`) checked against the model's device.

use ccdma::coherent_access::OutOfBounds;
use ccdma::*;
use ccdma_hv_model::{HvConfig, Hypervisor, Region};

fn layer_with_pool(hv: &'static Hypervisor) -> DmaLayer<'static, &'static Hypervisor> {
    let mut layer = DmaLayer::new(hv);
    let meta = vec![SlotMeta::EMPTY; PoolConfig::default().slots_for(1 << 20)].leak();
    // SAFETY: the model never hands this range out.
    unsafe { layer.add_pool(PhysAddr(0x80_0000), 1 << 20, meta, PoolConfig::default()) }.unwrap();
    layer
}

fn hv() -> &'static Hypervisor {
    Box::leak(Box::new(Hypervisor::new(HvConfig::pseries(6 << 30))))
}

#[test]
fn errors_say_what_to_do() {
    let hv = hv();
    let layer = layer_with_pool(hv);
    let dev = layer.attach(DeviceConfig::new(1, DmaMask::BITS_32)).unwrap();
    let huge = vec![0u8; 8 << 20];
    let e = layer.on(&dev).map_to_device(&huge).unwrap_err();
    let text = e.to_string();
    println!("{text}");
    assert!(text.contains("the largest single mapping") && text.contains("map_sg"), "{text}");

    let empty = DmaLayer::new(hv);
    let e = empty.attach(DeviceConfig::new(2, DmaMask::BITS_32)).unwrap_err();
    let text = e.to_string();
    println!("{text}");
    assert!(text.contains("add a pool"), "{text}");

    let e = DmaMask::new(65).unwrap_err();
    println!("{e}");
    assert!(e.to_string().contains("13 to 64"), "{e}");
    let e = DmaError::from(e);
    assert!(e.to_string().contains("13 to 64"), "{e}");
    layer.detach(dev).unwrap();
}

#[test]
fn every_refusal_has_an_error_accessor() {
    let hv = hv();
    let layer = layer_with_pool(hv);
    let dev = layer.attach(DeviceConfig::new(1, DmaMask::BITS_32)).unwrap();
    let other = layer.attach(DeviceConfig::new(2, DmaMask::BITS_32)).unwrap();
    let page = hv.alloc(4096, Region::Low);
    // SAFETY: a free page of model RAM, handed over until the free succeeds.
    let ring = unsafe { layer.on(&dev).alloc_coherent(PhysAddr(page), 1) }.unwrap();
    let FreeError::Refused(refused) = layer.on(&other).free_coherent(ring).unwrap_err() else {
        panic!("a wrong-device free is a refusal")
    };
    // The same spelling for both: Refused::error() and FreeError::error().
    assert!(matches!(refused.error(), DmaError::WrongDevice { .. }));
    let ring = refused.value;
    layer.on(&dev).free_coherent(ring).unwrap();
    layer.detach(dev).unwrap();
    layer.detach(other).unwrap();
}

#[test]
fn the_model_names_its_ram_when_it_runs_out() {
    let hv = Hypervisor::new(HvConfig::pseries(1 << 30));
    let panic =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| hv.alloc(4096, Region::Low))).unwrap_err();
    let text = panic.downcast_ref::<String>().cloned().unwrap_or_default();
    println!("{text}");
    assert!(text.contains("RAM 0x40000000") && text.contains("start at 0x40000000"), "{text}");
}

#[test]
fn coherent_bytes_are_read_and_written_safely_and_bounds_checked() {
    let hv = hv();
    let layer = layer_with_pool(hv);
    let dev = layer.attach(DeviceConfig::new(1, DmaMask::BITS_32)).unwrap();
    let model = hv.add_device(1, 32);
    let page = hv.alloc(8192, Region::Low);
    // SAFETY: two free pages of model RAM, handed over until the free succeeds.
    let mut ring = unsafe { layer.on(&dev).alloc_coherent(PhysAddr(page), 2) }.unwrap();
    // CPU writes, the device reads them at the bus address.
    ring.write_at(4090, b"across a page").unwrap();
    assert_eq!(model.read(ring.bus_addr().0 + 4090, 13).unwrap(), b"across a page");
    ring.copy_from(&[0xA5; 100]).unwrap();
    assert_eq!(model.read(ring.bus_addr().0, 100).unwrap(), [0xA5; 100]);
    // The device writes, the CPU reads.
    model.write(ring.bus_addr().0 + 8000, &[7; 192]).unwrap();
    let mut back = [0u8; 192];
    ring.read_at(8000, &mut back).unwrap();
    assert_eq!(back, [7; 192]);
    // Out of bounds: refused, nothing read or written, no panic.
    let faults = hv.faults().len();
    assert_eq!(ring.write_at(8190, b"abc"), Err(OutOfBounds { offset: 8190, len: 3, buf_len: 8192 }));
    assert_eq!(model.read(ring.bus_addr().0 + 8190, 2).unwrap(), [7, 7]);
    let mut out = [9u8; 4];
    assert!(ring.read_at(usize::MAX, &mut out).is_err());
    assert_eq!(out, [9; 4]);
    assert!(ring.copy_from(&[0; 8193]).is_err());
    assert_eq!(model.read(ring.bus_addr().0, 1).unwrap(), [0xA5]);
    println!("{}", ring.write_at(8190, b"abc").unwrap_err());
    assert!(DmaError::from(ring.read_at(8192, &mut out).unwrap_err()) == DmaError::Overflow);
    assert_eq!(hv.faults().len(), faults, "no device fault from the refused accesses");
    layer.on(&dev).free_coherent(ring).unwrap();
    layer.detach(dev).unwrap();
}

#[test]
fn hal_failures_print_their_cause() {
    use ccdma::virtio_hal::{AllocFailure, HalFailure};
    let f = HalFailure::Alloc { cause: AllocFailure::NoRecord, pages: 2 };
    println!("{f}");
    assert!(f.to_string().contains("no free coherent slot"), "{f}");
}
