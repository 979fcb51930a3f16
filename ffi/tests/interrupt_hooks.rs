//! Issue 20: the C platform table's interrupt hooks (`mask_interrupts` / `restore_interrupts`). C
//! firmware gets the interrupt contract the Rust `Platform` has: every call that can take a lock
//! runs masked, each mask restored with exactly the state it returned; one hook alone is refused.

mod model;

use std::ffi::c_void;
use std::sync::atomic::{AtomicUsize, Ordering};

use ccdma_ffi::*;
use ccdma_hv_model::HvConfig;
use model::{table, DevMem, Guest, LayerMem};

static MASKS: AtomicUsize = AtomicUsize::new(0);
static RESTORES: AtomicUsize = AtomicUsize::new(0);
/// Masks not yet restored (a restore with a state other than the depth it masked at fails the test).
static DEPTH: AtomicUsize = AtomicUsize::new(0);
static WRONG: AtomicUsize = AtomicUsize::new(0);

unsafe extern "C" fn mask(_: *mut c_void) -> usize {
    MASKS.fetch_add(1, Ordering::SeqCst);
    DEPTH.fetch_add(1, Ordering::SeqCst) + 1000
}

unsafe extern "C" fn restore(_: *mut c_void, saved: usize) {
    RESTORES.fetch_add(1, Ordering::SeqCst);
    if DEPTH.fetch_sub(1, Ordering::SeqCst) - 1 + 1000 != saved {
        WRONG.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn a_c_table_with_interrupt_hooks_masks_every_map_and_unmap() {
    let g = Guest::with_table(HvConfig::pseries(2 << 30), |t| {
        t.mask_interrupts = Some(mask);
        t.restore_interrupts = Some(restore);
    });
    let mut d = DevMem::new();
    assert_eq!(g.attach(&mut d, 7, 32), CCDMA_OK);
    let (_, buf) = g.buffer(3000);
    let before = MASKS.load(Ordering::SeqCst);
    let mut bus = 0u64;
    // SAFETY: an initialised layer and device of this guest; `buf` is 3000 bytes of its RAM.
    let rc = unsafe { ccdma_map(g.layer(), d.ptr(), buf.cast(), 3000, CCDMA_TO_DEVICE, &mut bus) };
    assert_eq!(rc, CCDMA_OK);
    // SAFETY: as above; the mapping just made.
    let rc = unsafe { ccdma_unmap(g.layer(), d.ptr(), bus, 3000, CCDMA_TO_DEVICE) };
    assert_eq!(rc, CCDMA_OK);
    let masks = MASKS.load(Ordering::SeqCst);
    assert!(masks >= before + 2, "map and unmap each mask interrupts ({} calls)", masks - before);
    assert_eq!(masks, RESTORES.load(Ordering::SeqCst), "every mask is restored");
    assert_eq!(DEPTH.load(Ordering::SeqCst), 0);
    assert_eq!(WRONG.load(Ordering::SeqCst), 0, "each restore gets the state its mask returned");
}

#[test]
fn one_interrupt_hook_alone_is_refused() {
    let hv = Box::new(ccdma_hv_model::Hypervisor::new(HvConfig::pseries(2 << 30)));
    for (m, r) in
        [(Some(mask as unsafe extern "C" fn(*mut c_void) -> usize), None), (None, Some(restore as _))]
    {
        let mut t = table(&hv);
        t.mask_interrupts = m;
        t.restore_interrupts = r;
        let mem = Box::into_raw(LayerMem::new());
        // SAFETY: memory of the stated size and alignment, freed below.
        let rc = unsafe { ccdma_layer_init(mem.cast(), CCDMA_LAYER_SIZE, &t) };
        assert_eq!(rc, CCDMA_ERR_NULL);
        // SAFETY: made by `Box::into_raw` above; no layer was made in it.
        drop(unsafe { Box::from_raw(mem) });
    }
}
