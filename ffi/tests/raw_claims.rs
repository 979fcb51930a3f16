//! The C face's unmap checks a caller's claim on the paths that use buffers in place (issue 18 item
//! 2): direct (a guest that is not confidential) and trusted-direct (a device the platform accepted).
//! A wrong size, direction, device or address, or a second unmap, is `CCDMA_ERR_MISUSE` and changes
//! nothing: the mapping stays live (detach is refused), the device still reaches it, no fault.

mod model;

use std::ffi::c_int;

use ccdma_ffi::*;
use ccdma_hv_model::HvConfig;
use model::{DevMem, Guest};

const GIB: u64 = 1 << 30;

fn map(g: &Guest, dev: *mut ccdma_device, ptr: *mut u8, len: usize, dir: c_int) -> (c_int, u64) {
    let mut bus = 0u64;
    // SAFETY: the buffer is the test's, lent until unmap.
    let rc = unsafe { ccdma_map(g.layer(), dev, ptr.cast(), len, dir, &mut bus) };
    (rc, bus)
}

fn unmap(g: &Guest, dev: *mut ccdma_device, bus: u64, len: usize, dir: c_int) -> c_int {
    // SAFETY: the test's own mapping (or a wrong claim on it, which the layer refuses).
    unsafe { ccdma_unmap(g.layer(), dev, bus, len, dir) }
}

fn every_bad_claim(g: &Guest, accept: bool, path: c_int) {
    let (mut d, mut e) = (DevMem::new(), DevMem::new());
    assert_eq!(g.attach(&mut d, 1, 64), CCDMA_OK);
    assert_eq!(g.attach(&mut e, 2, 64), CCDMA_OK);
    if accept {
        g.hv.tdisp_bind(1);
        g.hv.tdisp_bind(2);
        // SAFETY: live handles of this layer.
        unsafe {
            assert_eq!(ccdma_accept(g.layer(), d.ptr()), CCDMA_OK);
            assert_eq!(ccdma_accept(g.layer(), e.ptr()), CCDMA_OK);
        }
    }
    // SAFETY: a live device handle.
    assert_eq!(unsafe { ccdma_device_path(g.layer(), d.ptr()) }, path);
    let (phys, buf) = g.buffer(8192);
    let bi = CCDMA_BIDIRECTIONAL;
    let (rc, bus) = map(g, d.ptr(), buf, 6000, bi);
    assert_eq!(rc, CCDMA_OK);
    assert_eq!(bus, phys, "used in place");
    let (never, _) = g.buffer(4096);
    let calls = g.hv.calls().counts();
    let claims: [(&str, *mut ccdma_device, u64, usize, c_int); 7] = [
        ("shorter", d.ptr(), bus, 5999, bi),
        ("longer", d.ptr(), bus, 6001, bi),
        ("direction", d.ptr(), bus, 6000, CCDMA_TO_DEVICE),
        ("device", e.ptr(), bus, 6000, bi),
        ("interior", d.ptr(), bus + 1, 5999, bi),
        ("never mapped", d.ptr(), never, 4096, bi),
        ("never mapped, other device", e.ptr(), never, 4096, bi),
    ];
    let mut accepted = Vec::new();
    for (what, dev, b, len, dir) in claims {
        let rc = unmap(g, dev, b, len, dir);
        if rc != CCDMA_ERR_MISUSE {
            accepted.push(format!("{what}: {rc}"));
        }
    }
    assert!(accepted.is_empty(), "path {path}: wrong claims not refused: {accepted:?}");
    // SAFETY: live handles; the mapping is live.
    assert_eq!(unsafe { ccdma_detach(g.layer(), d.ptr()) }, CCDMA_ERR_BUSY, "the raw mapping is live");
    assert_eq!(g.hv.calls().counts(), calls, "a refused claim reached the platform");
    g.hv.device(1).write(bus, b"in place").unwrap();
    assert_eq!(unmap(g, d.ptr(), bus, 6000, bi), CCDMA_OK);
    assert_eq!(g.hv.memory().read(phys, 8), b"in place");
    assert_eq!(unmap(g, d.ptr(), bus, 6000, bi), CCDMA_ERR_MISUSE, "unmap twice");
    // SAFETY: live handles, nothing mapped.
    unsafe {
        assert_eq!(ccdma_detach(g.layer(), d.ptr()), CCDMA_OK);
        assert_eq!(ccdma_detach(g.layer(), e.ptr()), CCDMA_OK);
    }
    assert!(g.hv.faults().is_empty(), "{:?}", g.hv.faults());
}

#[test]
fn direct_path_checks_every_claim() {
    every_bad_claim(&Guest::new(HvConfig::plain(2 * GIB)), false, CCDMA_PATH_DIRECT);
}

#[test]
fn trusted_direct_path_checks_every_claim() {
    every_bad_claim(&Guest::new(HvConfig::tdx(2 * GIB)), true, CCDMA_PATH_TRUSTED_DIRECT);
}
