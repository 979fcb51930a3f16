//! The platform table's shared-bus-address hook (`ccdma_platform.shared_bus`): every personality of
//! the model (pseries and TDX identity, SEV-SNP with the C-bit cleared, Arm CCA through the
//! unprotected alias) is usable from C. Streaming maps both ways, a list and a coherent buffer of an
//! untrusted 64-bit device hand out bus addresses in the platform's encoding, which the model's
//! devices use byte-exact, and the layer decodes them again at unmap and free.

mod model;

use std::ffi::c_void;

use ccdma::{BusEncoding, PhysAddr};
use ccdma_ffi::*;
use ccdma_hv_model::{HvConfig, Personality, CCA_IPA_BITS};
use model::{CohMem, DevMem, Guest, SgMem, POOL_LEN, POOL_PHYS};

const GIB: u64 = 1 << 30;

fn encoding(e: BusEncoding) -> ccdma_bus_encoding {
    ccdma_bus_encoding { set: e.set, clear: e.clear }
}

/// Runs the I/O of one device over a layer whose table says `shared_bus`; returns the bus addresses
/// it was given (two maps, a list's segments, a coherent buffer).
fn run(config: HvConfig, shared_bus: ccdma_bus_encoding) -> Vec<u64> {
    let g = Guest::with_table(config, |t| t.shared_bus = shared_bus);
    let mut d = DevMem::new();
    assert_eq!(g.attach(&mut d, 40, 64), CCDMA_OK);
    let dev = g.hv.device(40);
    let mut seen = Vec::new();
    let (_, buf) = g.buffer(3000);
    // To the device.
    // SAFETY: the test's buffer of 3000 bytes.
    unsafe { std::slice::from_raw_parts_mut(buf, 3000) }
        .iter_mut()
        .enumerate()
        .for_each(|(i, b)| *b = i as u8);
    let mut bus = 0u64;
    assert_eq!(
        // SAFETY: an initialised layer and device; the buffer lent until unmap.
        unsafe { ccdma_map(g.layer(), d.ptr(), buf.cast(), 3000, CCDMA_TO_DEVICE, &mut bus) },
        CCDMA_OK
    );
    let want: Vec<u8> = (0..3000).map(|i| i as u8).collect();
    assert_eq!(dev.read(bus, 3000).expect("device reads the bounce"), want);
    seen.push(bus);
    // SAFETY: the mapping above.
    assert_eq!(unsafe { ccdma_unmap(g.layer(), d.ptr(), bus, 3000, CCDMA_TO_DEVICE) }, CCDMA_OK);
    // From the device.
    assert_eq!(
        // SAFETY: as above.
        unsafe { ccdma_map(g.layer(), d.ptr(), buf.cast(), 3000, CCDMA_FROM_DEVICE, &mut bus) },
        CCDMA_OK
    );
    dev.write(bus, &[0xC5; 3000]).expect("device writes the bounce");
    seen.push(bus);
    // SAFETY: the mapping above.
    assert_eq!(unsafe { ccdma_unmap(g.layer(), d.ptr(), bus, 3000, CCDMA_FROM_DEVICE) }, CCDMA_OK);
    // SAFETY: the test's buffer.
    assert!(unsafe { std::slice::from_raw_parts(buf, 3000) }.iter().all(|&b| b == 0xC5), "copied back");
    // A list of two buffers.
    let ((_, a), (_, b)) = (g.buffer(700), g.buffer(900));
    let sg = [ccdma_sg_in { ptr: a.cast(), len: 700 }, ccdma_sg_in { ptr: b.cast(), len: 900 }];
    let mut segs = [ccdma_segment { bus: 0, len: 0 }; 2];
    let (mut entries, mut nsegs) = (SgMem::new(), 0usize);
    // SAFETY: buffers lent until unmap; entry memory of the stated size; out pointers valid.
    let rc = unsafe {
        ccdma_map_sg(
            g.layer(),
            d.ptr(),
            sg.as_ptr(),
            2,
            CCDMA_FROM_DEVICE,
            entries.ptr(),
            std::mem::size_of::<SgMem>(),
            segs.as_mut_ptr(),
            &mut nsegs,
        )
    };
    assert_eq!(rc, CCDMA_OK);
    for s in &segs[..nsegs] {
        dev.write(s.bus, &vec![0x77; s.len]).expect("device writes a segment");
        seen.push(s.bus);
    }
    // SAFETY: the list above.
    assert_eq!(unsafe { ccdma_unmap_sg(g.layer(), d.ptr(), entries.ptr(), 2, CCDMA_FROM_DEVICE) }, CCDMA_OK);
    // SAFETY: the test's buffers.
    assert!(unsafe { std::slice::from_raw_parts(b, 900) }.iter().all(|&x| x == 0x77));
    // A coherent buffer.
    let (phys, _) = g.buffer(4096);
    let (mut cpu, mut cbus, mut h) = (std::ptr::null_mut::<c_void>(), 0u64, CohMem::new());
    // SAFETY: the page is the test's; handle memory of the stated size; out pointers valid.
    let rc = unsafe {
        ccdma_alloc_coherent(
            g.layer(),
            d.ptr(),
            phys,
            1,
            h.0.as_mut_ptr().cast(),
            CCDMA_COHERENT_SIZE,
            &mut cpu,
            &mut cbus,
        )
    };
    assert_eq!(rc, CCDMA_OK);
    dev.write(cbus + 100, b"ring").expect("device writes the coherent buffer");
    // SAFETY: the coherent buffer's CPU pointer, one page.
    assert_eq!(unsafe { std::slice::from_raw_parts(cpu.cast::<u8>().add(100), 4) }, b"ring");
    seen.push(cbus);
    // SAFETY: the buffer above.
    assert_eq!(unsafe { ccdma_free_coherent(g.layer(), d.ptr(), h.ptr()) }, CCDMA_OK);
    // SAFETY: the device above, nothing live.
    assert_eq!(unsafe { ccdma_detach(g.layer(), d.ptr()) }, CCDMA_OK);
    // SAFETY: the layer, nothing live.
    assert_eq!(unsafe { ccdma_layer_fini(g.layer()) }, CCDMA_OK);
    assert!(g.hv.faults().is_empty(), "{:?}: faults {:?}", config.personality, g.hv.faults());
    assert_eq!(g.hv.shared_pages(), 0, "everything private again");
    seen
}

/// Is `bus` the encoding of a shared page of the pool or of the test's buffers, under `e`?
fn encoded(e: BusEncoding, bus: u64) -> bool {
    let phys = e.phys(ccdma::BusAddr(bus));
    e.bus(phys).0 == bus && (phys.0 >= POOL_PHYS && phys.0 < POOL_PHYS + POOL_LEN as u64 || phys.0 >= GIB)
}

#[test]
fn every_personality_is_usable_from_c_through_the_shared_bus_hook() {
    for p in Personality::ALL {
        let config = HvConfig::confidential(p, 2 * GIB);
        let e = config.bus_encoding;
        let seen = run(config, encoding(e));
        assert!(seen.iter().all(|&bus| encoded(e, bus)), "{p:?}: {seen:x?} not in {e:?}");
        if p == Personality::Cca {
            let alias = 1u64 << (CCA_IPA_BITS - 1);
            assert!(seen.iter().all(|&bus| bus & alias != 0), "CCA: every bus address through the alias");
        }
    }
}

#[test]
fn without_the_hook_a_cca_device_is_handed_protected_addresses() {
    // The check above can fail: an identity table on a CCA realm hands out the protected IPA.
    let config = HvConfig::confidential(Personality::Cca, 2 * GIB);
    let seen = run(config, ccdma_bus_encoding::IDENTITY);
    assert!(!seen.iter().any(|&bus| encoded(config.bus_encoding, bus)), "{seen:x?}");
    assert_eq!(BusEncoding::IDENTITY.phys(ccdma::BusAddr(seen[0])), PhysAddr(seen[0]));
}

#[test]
fn a_table_whose_encoding_sets_and_clears_one_bit_is_refused() {
    let hv = ccdma_hv_model::Hypervisor::new(HvConfig::snp(2 * GIB));
    let mut t = model::table(&hv);
    t.shared_bus = ccdma_bus_encoding { set: 1 << 51, clear: 1 << 51 };
    let mut mem = model::LayerMem::new();
    // SAFETY: layer memory of the stated size; the table forwards to `hv`.
    assert_eq!(unsafe { ccdma_layer_init(mem.ptr().cast(), CCDMA_LAYER_SIZE, &t) }, CCDMA_ERR_INVALID);
    assert_eq!(hv.shared_pages(), 0);
}
